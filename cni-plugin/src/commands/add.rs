//! ADD: wire one pod interface into the node with a routed veth.
//!
//! Steps (each one idempotent, so a repeated ADD converges to the same state and result):
//! IPAM reserve → veth pair (pod end born in the pod netns) → host sysctls → pod addresses →
//! pod routes/neighbours → host routes → hostPort → agent. A failure at any step undoes
//! every earlier one (no leaked IP, link or mapping) before the error is returned; a crash
//! (see [`crash_point`]) leaves a state that DEL or GC removes, because the attachment is on
//! disk before any kernel object exists.

use super::{crash_point, host_prefix, require_link, warn, GATEWAY_V4, GATEWAY_V6};
use crate::agent::{self, Outcome};
use crate::config::{Attachment, Env, NetConf};
use crate::error::{CniError, Result};
use crate::hostport::{self, PortMapping};
use crate::ipam;
use crate::lock::{flock_with_timeout, LOCK_TIMEOUT};
use crate::sysctl;
use crate::types::{CniResult, Interface, IpConfig, Route};
use ipnet::IpNet;
use palisade_common::AgentRequest;
use palisade_kernel::rtnl::{
    Family, Link, Mac, Route as KernelRoute, RouteMode, Rtnl, Scope, VethEnd, PROTOCOL_BOOT,
};
use palisade_kernel::Netns;
use serde_json::Map;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How long ADD waits for the pod to join its addresses' solicited-node groups: the node's
/// first neighbour solicitation would otherwise be retransmitted after 1 s.
const SOLICITED_NODE_WAIT: Duration = Duration::from_secs(1);

/// Waits (polling each millisecond, up to `limit`) until `ifname` of the calling thread's
/// network namespace has joined the solicited-node multicast group of every address in
/// `addrs`, as `/proc/thread-self/net/igmp6` lists them (`/proc/self` would show the main
/// thread's namespace, not this thread's). Whether it joined; `true` when the list cannot be
/// read (no IPv6 multicast accounting to wait for).
fn wait_for_solicited_node_groups(ifname: &str, addrs: &[Ipv6Addr], limit: Duration) -> bool {
    let groups: Vec<String> = addrs
        .iter()
        .map(|a| {
            let o = a.octets();
            format!(
                "ff0200000000000000000001ff{:02x}{:02x}{:02x}",
                o[13], o[14], o[15]
            )
        })
        .collect();
    let start = Instant::now();
    loop {
        let Ok(table) = std::fs::read_to_string("/proc/thread-self/net/igmp6") else {
            return true;
        };
        // Lines: index, interface, group (32 hex digits), users, flags, timer.
        let joined = groups.iter().all(|g| {
            table.lines().any(|l| {
                let mut f = l.split_whitespace().skip(1);
                f.next() == Some(ifname) && f.next() == Some(g.as_str())
            })
        });
        if joined {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn add(env: &Env, conf: &NetConf) -> Result<CniResult> {
    let att = env.attachment();
    let netns = open_netns(env.netns.as_deref().expect("CNI_NETNS validated for ADD"))?;
    let mappings = conf.port_mappings()?;
    // Concurrent ADDs of one pod (a runtime retrying while the first still runs) go one
    // after the other: each holds an exclusive lock on the pod's namespace file for its whole
    // run, so one's undo cannot take back what another built. The kernel drops the lock when
    // the process ends, also on kill -9.
    match flock_with_timeout(netns.file(), LOCK_TIMEOUT) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(CniError::TryAgain(format!(
                "another ADD of a pod in {} has run for more than {}s",
                netns.path().display(),
                LOCK_TIMEOUT.as_secs()
            )))
        }
        Err(e) => warn(format!("cannot lock {}: {e}", netns.path().display())),
    }
    let mut undo = Undo::default();
    let result = build(env, conf, att, &netns, &mappings, &mut undo);
    if result.is_err() {
        undo.run(env, conf, att);
    }
    result
}

/// Open `CNI_NETNS`: a missing path means the container is gone (code 3), a path that is not
/// a network namespace is a bad environment (code 4).
pub fn open_netns(path: &str) -> Result<Netns> {
    Netns::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CniError::ContainerUnknown {
            path: path.to_string(),
        },
        std::io::ErrorKind::InvalidInput => CniError::InvalidEnv {
            var: "CNI_NETNS",
            reason: format!("{path}: {e}"),
        },
        _ => CniError::Netns {
            path: path.to_string(),
            source: e,
        },
    })
}

/// An rtnetlink socket in the node's namespace (the plugin's own).
pub fn open_host_socket() -> Result<Rtnl> {
    Ok(Rtnl::open()?)
}

/// An rtnetlink socket in the pod's namespace.
pub fn open_pod_socket(netns: &Netns) -> Result<Rtnl> {
    Ok(netns.run(Rtnl::open)??)
}

/// What a failed ADD has to take back, in reverse order.
#[derive(Default)]
struct Undo {
    ipam: bool,
    veth: Option<String>,
    hostport: bool,
}

impl Undo {
    /// Best effort: each failure is logged and the rest still runs.
    fn run(&self, env: &Env, conf: &NetConf, att: &Attachment) {
        if self.hostport {
            let hostports = hostport::HostPorts::new(&conf.hostport_dir());
            if let Err(e) = hostports.del(&att.container_id, &att.ifname) {
                warn(format!("undo ADD: remove port mappings: {e}"));
            }
        }
        if let Some(name) = &self.veth {
            // Deleting the host end removes the pod end and every route through them.
            if let Err(e) = open_host_socket().and_then(|mut s| Ok(s.delete_link(name)?)) {
                warn(format!("undo ADD: {e}"));
            }
        }
        if self.ipam {
            if let Err(e) = ipam::release(conf, env, att) {
                warn(format!("undo ADD: release IPAM: {e}"));
            }
        }
    }
}

fn build(
    env: &Env,
    conf: &NetConf,
    att: &Attachment,
    netns: &Netns,
    mappings: &[PortMapping],
    undo: &mut Undo,
) -> Result<CniResult> {
    let host_ifname = att.host_ifname();

    // 1. Addresses, and the attachment on disk before anything exists in the kernel.
    // Undo releases the addresses only if this invocation recorded them: a concurrent ADD
    // of the same attachment that loses must not free the winner's record.
    let reservation = ipam::reserve(conf, env, att, &mut undo.ipam)?;
    crash_point("ipam-reserved");
    let ips = reservation.ips.clone();
    let has_v4 = ips.iter().any(IpAddr::is_ipv4);
    let has_v6 = ips.iter().any(IpAddr::is_ipv6);

    // 2. The veth pair.
    let mut host = open_host_socket()?;
    let mut pod = open_pod_socket(netns)?;
    let (host_link, pod_link) =
        ensure_veth(conf, att, netns, &host_ifname, &mut host, &mut pod, undo)?;
    let host_mac = host_link.mac.ok_or_else(|| {
        CniError::LinkConflict(format!("host veth {host_ifname} has no MAC address"))
    })?;

    // 3. Node side: forwarding, anti-spoofing, the pod's IPv6 gateway address.
    if has_v4 {
        sysctl::ensure("net.ipv4.ip_forward", "1")?;
        // Strict reverse-path filtering: the host route to the pod points at this veth, so a
        // pod can only send from its own addresses.
        sysctl::ensure_path(&sysctl::if_path("ipv4", &host_ifname, "rp_filter"), "1")?;
    }
    if has_v6 {
        sysctl::ensure("net.ipv6.conf.all.forwarding", "1")?;
        let gw6: IpNet = IpNet::new(GATEWAY_V6.into(), 64).expect("valid");
        host.add_address(&host_link, gw6, true)?;
    }
    if !host_link.up {
        host.set_up(&host_link)?;
    }
    crash_point("host-sysctls");

    // 4. Pod side addresses. DAD off first: the pod's /128 and link-local would otherwise stay
    // tentative (unusable) for about a second.
    if has_v6 {
        let path = sysctl::if_path("ipv6", &att.ifname, "accept_dad");
        netns.run(|| sysctl::ensure_path(&path, "0"))??;
    }
    // Up before the addresses: an IPv6 address added to a down link joins its solicited-node
    // group only some milliseconds after the link comes up, so the node's first neighbour
    // solicitation for a just-added pod was lost and its first packet waited for the 1 s
    // retransmit (lifecycle.rs, `ipv6_address_is_not_tentative`).
    if !pod_link.up {
        pod.set_up(&pod_link)?;
    }
    for ip in &ips {
        pod.add_address(&pod_link, host_prefix(*ip), ip.is_ipv6())?;
    }
    // The address is usable at once, but the kernel joins its solicited-node group from a
    // work queue a little later (at once on a quiet machine, not always under load); until
    // then the pod ignores the node's neighbour solicitation for it, and the pod's first
    // reply waits for the node's 1 s retransmit. ADD returns once the pod has joined.
    if has_v6 {
        let v6: Vec<Ipv6Addr> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            })
            .collect();
        let ifname = att.ifname.as_str();
        if !netns.run(|| wait_for_solicited_node_groups(ifname, &v6, SOLICITED_NODE_WAIT))? {
            warn(format!(
                "{ifname}: not yet in the solicited-node groups of {v6:?} after \
                 {SOLICITED_NODE_WAIT:?}; the pod's first IPv6 packets may wait for ND"
            ));
        }
    }
    crash_point("pod-addresses");

    // 5. Pod routes through the link-local gateways, resolved by permanent neighbours. The
    // default route belongs to the pod's first attachment: a second interface of the same pod
    // (`net1`) keeps the existing one, or deleting `net1` would leave the pod without any.
    // The default routes this attachment owns, for the result (a repeated ADD finds its own
    // route already there and must report it again).
    let mut result_routes = Vec::new();
    for (present, gw) in [
        (has_v4, IpAddr::V4(GATEWAY_V4)),
        (has_v6, IpAddr::V6(GATEWAY_V6)),
    ] {
        if !present {
            continue;
        }
        pod.replace_permanent_neighbour(&pod_link, gw, host_mac)?;
        let default_dst = if gw.is_ipv4() {
            default_v4()
        } else {
            default_v6()
        };
        let routes = pod.routes(Some(Family::of(gw)), None)?;
        if let Some(existing) = routes.iter().find(|r| r.dst == default_dst) {
            if existing.gateway == Some(gw) && existing.oif == Some(pod_link.index) {
                result_routes.push(default_route(default_dst, gw));
            }
            continue;
        }
        if gw.is_ipv4() {
            // fe80::1 is on-link on every interface by definition; 169.254.1.1 needs a route.
            let onlink = KernelRoute {
                dst: host_prefix(gw),
                gateway: None,
                oif: Some(pod_link.index),
                scope: Scope::Link,
                protocol: PROTOCOL_BOOT,
                onlink: false,
            };
            pod.add_route(&onlink, RouteMode::Replace)?;
        }
        let default = KernelRoute {
            dst: default_dst,
            gateway: Some(gw),
            oif: Some(pod_link.index),
            scope: Scope::Universe,
            protocol: PROTOCOL_BOOT,
            onlink: false,
        };
        pod.add_route(&default, RouteMode::KeepExisting)?;
        result_routes.push(default_route(default_dst, gw));
    }
    crash_point("pod-routes");

    // 6. Node routes to the pod.
    for ip in &ips {
        let scope = if ip.is_ipv4() {
            Scope::Link
        } else {
            Scope::Universe
        };
        let route = KernelRoute {
            dst: host_prefix(*ip),
            gateway: None,
            oif: Some(host_link.index),
            scope,
            protocol: PROTOCOL_BOOT,
            onlink: false,
        };
        host.add_route(&route, RouteMode::Replace)?;
    }
    crash_point("host-routes");

    // 7. hostPort.
    if !mappings.is_empty() {
        undo.hostport = true;
        hostport::HostPorts::new(&conf.hostport_dir())
            .for_network(&conf.name)
            .add(&att.container_id, &att.ifname, &ips, mappings)
            .map_err(|source| CniError::HostPort {
                context: "add port mappings",
                source,
            })?;
        crash_point("hostport");
    }

    // 8. Tell the agent, so the pod's policy is in force before ADD returns.
    notify_agent(env, conf, att, &host_ifname, &ips)?;

    // 9. The result.
    let ours = CniResult {
        interfaces: vec![
            Interface {
                name: host_ifname,
                mac: Some(host_mac.to_string()),
                mtu: Some(host_link.mtu),
                ..Default::default()
            },
            Interface {
                name: att.ifname.clone(),
                mac: pod_link.mac.map(|m| m.to_string()),
                mtu: Some(pod_link.mtu),
                sandbox: Some(netns.path().display().to_string()),
                ..Default::default()
            },
        ],
        ips: ips
            .iter()
            .map(|ip| IpConfig {
                address: host_prefix(*ip),
                gateway: None,
                interface: Some(1),
                extra: Map::new(),
            })
            .collect(),
        routes: result_routes,
        dns: if conf.dns.is_empty() {
            reservation.dns
        } else {
            conf.dns.clone()
        },
    };
    Ok(match conf.prev_result.clone() {
        Some(prev) => CniResult::merge_after(prev, ours),
        None => ours,
    })
}

/// Create the pair, or adopt the one a previous ADD of this attachment made.
fn ensure_veth(
    conf: &NetConf,
    att: &Attachment,
    netns: &Netns,
    host_ifname: &str,
    host: &mut Rtnl,
    pod: &mut Rtnl,
    undo: &mut Undo,
) -> Result<(Link, Link)> {
    let existing_host = host.link(host_ifname)?;
    let existing_pod = pod.link(&att.ifname)?;
    let pair = |h: &Link, p: &Link| h.peer_index == Some(p.index) && p.peer_index == Some(h.index);
    match (existing_host, existing_pod) {
        // A repeated ADD: the pair is ours (each end names the other as its peer), and up.
        (Some(h), Some(p)) if pair(&h, &p) && h.up => {
            undo.veth = Some(host_ifname.to_string());
            return Ok((h, p));
        }
        // Our pair, but down: a DEL of this attachment took it down and its deletion is
        // still under way (`teardown`), or never ran. It is on its way out: replace it.
        (Some(h), Some(p)) if pair(&h, &p) => {
            host.delete_link_index(h.index)?;
        }
        (_, Some(p)) => {
            return Err(CniError::LinkConflict(format!(
                "interface {} already exists in {} (index {}, kind {}) and is not the peer of {host_ifname}",
                att.ifname,
                netns.path().display(),
                p.index,
                p.kind.as_deref().unwrap_or("unknown")
            )))
        }
        // The host end of an earlier attempt whose pod end died with its netns (or of a DEL
        // whose background deletion has not run yet).
        (Some(_), None) => {
            host.delete_link(host_ifname)?;
        }
        (None, None) => {}
    }
    let host_end = VethEnd {
        name: host_ifname,
        mac: Mac::random(),
        mtu: conf.mtu,
    };
    let pod_end = VethEnd {
        name: &att.ifname,
        mac: Mac::random(),
        mtu: conf.mtu,
    };
    host.create_veth(&host_end, &pod_end, netns)?;
    undo.veth = Some(host_ifname.to_string());
    crash_point("veth-created");
    let h = require_link(host, host_ifname, "node")?;
    let p = require_link(pod, &att.ifname, "pod")?;
    Ok((h, p))
}

fn notify_agent(
    env: &Env,
    conf: &NetConf,
    att: &Attachment,
    host_ifname: &str,
    ips: &[IpAddr],
) -> Result<()> {
    let req = AgentRequest::PodAdded {
        namespace: env.args.pod_namespace.clone().unwrap_or_default(),
        name: env.args.pod_name.clone().unwrap_or_default(),
        container_id: att.container_id.clone(),
        host_ifname: host_ifname.to_string(),
        ips: ips.to_vec(),
    };
    let problem = match agent::call(&conf.agent, &req, conf.agent.timeout) {
        // Nobody listens: the agent's table keeps the pod fail-closed until it catches up.
        Outcome::NoAgent => return Ok(()),
        Outcome::Answered(r) if r.ok => None,
        Outcome::Answered(r) => Some(format!(
            "refused pod: {}",
            r.error.unwrap_or_else(|| "no reason given".into())
        )),
        Outcome::Failed(m) => Some(m),
    };
    crash_point("agent");
    match problem {
        None => Ok(()),
        Some(m) if conf.agent.required => Err(CniError::Agent(m)),
        Some(m) => {
            warn(format!("agent (not required): {m}"));
            Ok(())
        }
    }
}

fn default_v4() -> IpNet {
    "0.0.0.0/0".parse().expect("valid")
}

fn default_v6() -> IpNet {
    "::/0".parse().expect("valid")
}

fn default_route(dst: IpNet, gw: IpAddr) -> Route {
    Route {
        dst,
        gw: Some(gw),
        extra: Map::new(),
    }
}
