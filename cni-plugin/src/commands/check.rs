//! CHECK: compare what the kernel, the IPAM store and hostPort hold with the `prevResult` of
//! the last ADD (SPEC.md "CHECK"). Every difference is collected and reported together.
//! Only what this plugin created is checked: a later plugin in the chain may change other
//! things (the spec requires tolerating that).

use super::add::{open_host_socket, open_netns, open_pod_socket};
use super::{host_prefix, GATEWAY_V4, GATEWAY_V6};
use crate::config::{Env, NetConf};
use crate::error::{CniError, Result};
use crate::{hostport, ipam};
use palisade_kernel::rtnl::{Family, Link, Mac, Route, Rtnl};
use std::net::IpAddr;

pub fn check(env: &Env, conf: &NetConf) -> Result<()> {
    if !conf.version.supports_check() {
        return Err(CniError::IncompatibleVersion(format!(
            "CHECK is not supported by cniVersion {} (needs 0.4.0 or later)",
            conf.version.as_str()
        )));
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs prevResult"))?;
    let att = env.attachment();
    let netns_path = env.netns.as_deref().expect("CNI_NETNS validated for CHECK");
    let netns = open_netns(netns_path)?;
    let host_ifname = att.host_ifname();
    let mut diffs = Vec::new();

    let pod_idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == att.ifname && i.in_sandbox());
    let expected_pod_mac = match pod_idx {
        None => {
            diffs.push(format!(
                "prevResult lists no interface {} inside a sandbox",
                att.ifname
            ));
            None
        }
        Some(i) => {
            let iface = &prev.interfaces[i];
            if iface.sandbox.as_deref() != Some(netns_path) {
                diffs.push(format!(
                    "prevResult puts {} in sandbox {:?}, CNI_NETNS is {netns_path}",
                    att.ifname, iface.sandbox
                ));
            }
            iface.mac.as_deref().and_then(Mac::parse)
        }
    };
    if !prev
        .interfaces
        .iter()
        .any(|i| i.name == host_ifname && !i.in_sandbox())
    {
        diffs.push(format!("prevResult lists no host interface {host_ifname}"));
    }
    let ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == pod_idx)
        .map(|ip| ip.address.addr())
        .collect();
    if ips.is_empty() {
        diffs.push(format!("prevResult has no address for {}", att.ifname));
    }

    let mut host = open_host_socket()?;
    let mut pod = open_pod_socket(&netns)?;
    let host_link = host.link(&host_ifname)?;
    let pod_link = pod.link(&att.ifname)?;
    match &host_link {
        None => diffs.push(format!("host veth {host_ifname} is missing")),
        Some(h) => {
            if !h.up {
                diffs.push(format!("host veth {host_ifname} is down"));
            }
            check_host_routes(&mut host, h, &ips, &mut diffs)?;
        }
    }
    match &pod_link {
        None => diffs.push(format!(
            "interface {} is missing in {netns_path}",
            att.ifname
        )),
        Some(p) => {
            if let (Some(want), Some(have)) = (expected_pod_mac, p.mac) {
                if want != have {
                    diffs.push(format!(
                        "{} has MAC {have}, prevResult says {want}",
                        att.ifname
                    ));
                }
            }
            if !p.up {
                diffs.push(format!("{} is down", att.ifname));
            }
            if let Some(h) = &host_link {
                if h.peer_index != Some(p.index) {
                    diffs.push(format!(
                        "{host_ifname} is not the veth peer of {}",
                        att.ifname
                    ));
                }
            }
            check_pod(
                &mut pod,
                p,
                host_link.as_ref().and_then(|h| h.mac),
                &ips,
                &mut diffs,
            )?;
        }
    }

    diffs.extend(ipam::check(conf, env, att, &ips)?);

    let mappings = conf.port_mappings()?;
    if !mappings.is_empty() {
        if let Err(e) = hostport::HostPorts::new(&conf.hostport_dir()).check(
            &att.container_id,
            &att.ifname,
            &ips,
            &mappings,
        ) {
            diffs.push(format!("port mappings: {e}"));
        }
    }

    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckFailed { diffs })
    }
}

fn family(v4: bool) -> Family {
    if v4 {
        Family::V4
    } else {
        Family::V6
    }
}

/// A route to `dst` via `gw`, through `oif` when given (`None`: any interface, because a
/// pod's default route belongs to its first attachment, see `RouteMode::KeepExisting`).
fn has_route(routes: &[Route], dst: ipnet::IpNet, gw: Option<IpAddr>, oif: Option<u32>) -> bool {
    routes
        .iter()
        .any(|r| r.dst == dst && r.gateway == gw && oif.is_none_or(|o| r.oif == Some(o)))
}

fn check_host_routes(
    host: &mut Rtnl,
    h: &Link,
    ips: &[IpAddr],
    diffs: &mut Vec<String>,
) -> Result<()> {
    for v4 in [true, false] {
        let want: Vec<&IpAddr> = ips.iter().filter(|ip| ip.is_ipv4() == v4).collect();
        if want.is_empty() {
            continue;
        }
        let routes = host.routes(Some(family(v4)), None)?;
        for ip in want {
            if !has_route(&routes, host_prefix(*ip), None, Some(h.index)) {
                diffs.push(format!(
                    "node has no route {} dev {}",
                    host_prefix(*ip),
                    h.name
                ));
            }
        }
    }
    Ok(())
}

fn check_pod(
    pod: &mut Rtnl,
    p: &Link,
    host_mac: Option<Mac>,
    ips: &[IpAddr],
    diffs: &mut Vec<String>,
) -> Result<()> {
    let addrs = pod.addresses(p.index)?;
    for ip in ips {
        if !addrs.contains(&host_prefix(*ip)) {
            diffs.push(format!("{} lacks address {}", p.name, host_prefix(*ip)));
        }
    }
    for (v4, gw) in [
        (true, IpAddr::V4(GATEWAY_V4)),
        (false, IpAddr::V6(GATEWAY_V6)),
    ] {
        if !ips.iter().any(|ip| ip.is_ipv4() == v4) {
            continue;
        }
        let routes = pod.routes(Some(family(v4)), None)?;
        let default: ipnet::IpNet = if v4 { "0.0.0.0/0" } else { "::/0" }
            .parse()
            .expect("valid");
        if !has_route(&routes, default, Some(gw), None) {
            diffs.push(format!("pod has no route {default} via {gw}"));
        }
        if v4 && !has_route(&routes, host_prefix(gw), None, None) {
            diffs.push(format!("pod has no route {gw} scope link"));
        }
        let neigh = pod.neighbours(family(v4))?;
        match neigh.iter().find(|n| n.ip == gw && n.index == p.index) {
            None => diffs.push(format!("pod has no neighbour entry for {gw} on {}", p.name)),
            Some(n) => {
                if !n.permanent {
                    diffs.push(format!(
                        "pod neighbour {gw} is not PERMANENT (state {})",
                        n.state
                    ));
                }
                if host_mac.is_some() && n.mac != host_mac {
                    diffs.push(format!(
                        "pod neighbour {gw} has lladdr {:?}, host veth MAC is {:?}",
                        n.mac.map(|m| m.to_string()),
                        host_mac.map(|m| m.to_string())
                    ));
                }
            }
        }
    }
    Ok(())
}
