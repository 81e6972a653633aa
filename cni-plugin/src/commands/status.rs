//! STATUS (CNI 1.1): can this plugin serve ADD right now, and do the pods it already made
//! still have the connectivity it gave them?
//!
//! - Code 51 ("the plugin is not available, and existing containers in the network may have
//!   limited connectivity") when the node itself breaks running pods:
//!   - forwarding is off for a family of the network's existing pods (`net.ipv4.ip_forward`,
//!     `net.ipv6.conf.all.forwarding`, read in the namespace the plugin runs in, i.e. the
//!     node's): their traffic that is routed through the node (to other pods, other nodes,
//!     the outside) is dropped. Only families of recorded attachments count: with no pod
//!     yet, forwarding off is no failure (the first ADD turns it on; a runtime that waits
//!     for STATUS before its first ADD would otherwise wait forever);
//!   - port mappings of this network are recorded as programmed in this boot while the table
//!     `inet palisade-hostport` is gone (a flushed ruleset): those host ports no longer reach
//!     their pods.
//!
//!   Every finding is listed in `msg`, what to do about each in `details`. 51 comes first:
//!   it implies "not available". STATUS only reads: it turns nothing back on (ADD enables
//!   forwarding again, ADD with port mappings or GC rebuilds the table).
//! - Code 50 ("the plugin is not available, i.e. cannot service ADD requests"): the IPAM
//!   state directory is not writable, a range set is exhausted, a forwarding sysctl of a
//!   family in use cannot be read, or `agent.required` is set and the agent is not ready or
//!   unreachable (without `required`, the agent's last rules stay in force without it).
//!
//! All of it is cheap: two small `/proc/sys` reads, a directory listing and, only when port
//! mappings are recorded, one netlink question to nf_tables.

use super::warn;
use crate::agent::{self, Outcome};
use crate::config::{Env, NetConf};
use crate::error::{CniError, Result};
use crate::{hostport, ipam, sysctl};
use palisade_common::{AgentRequest, HOSTPORT_TABLE};

/// Forwarding switches per family: (family, sysctl key).
const FORWARDING: [(&str, &str); 2] = [
    ("IPv4", "net.ipv4.ip_forward"),
    ("IPv6", "net.ipv6.conf.all.forwarding"),
];

pub fn status(env: &Env, conf: &NetConf) -> Result<()> {
    if !conf.version.supports_gc_and_status() {
        return Err(CniError::IncompatibleVersion(format!(
            "STATUS is not supported by cniVersion {} (needs 1.1.0)",
            conf.version.as_str()
        )));
    }
    limited_connectivity(conf)?;
    ipam::status(conf, env)?;
    let socket = conf.agent.socket.display();
    let problem = match agent::call(&conf.agent, &AgentRequest::Status, conf.agent.timeout) {
        Outcome::NoAgent => Some(format!("agent socket {socket} is absent or nobody listens")),
        Outcome::Answered(r) if r.ok && r.ready => None,
        Outcome::Answered(r) => Some(format!(
            "agent is not ready{}",
            r.error.map(|e| format!(": {e}")).unwrap_or_default()
        )),
        Outcome::Failed(m) => Some(m),
    };
    match problem {
        None => Ok(()),
        Some(m) if conf.agent.required => Err(CniError::NotAvailable(m)),
        Some(m) => {
            if conf.agent.socket.exists() {
                warn(format!("agent (not required): {m}"));
            }
            Ok(())
        }
    }
}

/// The address families (IPv4, IPv6) of the pods this network has now. Forwarding matters
/// only for pods that exist: on a fresh node it may still be off (the first ADD turns it
/// on), and a runtime that holds ADDs back while STATUS fails would otherwise never get there.
fn families(conf: &NetConf) -> (bool, bool) {
    let ips: Vec<std::net::IpAddr> = ipam::store(conf)
        .read()
        .map(|s| s.attachments.into_iter().flat_map(|a| a.ips).collect())
        .unwrap_or_default();
    (
        ips.iter().any(|ip| ip.is_ipv4()),
        ips.iter().any(|ip| ip.is_ipv6()),
    )
}

/// Code 51 when the node breaks running pods (see the module doc); code 50 when a forwarding
/// sysctl of a family in use cannot be read (ADD could not set it either).
fn limited_connectivity(conf: &NetConf) -> Result<()> {
    let (v4, v6) = families(conf);
    let mut reasons = Vec::new();
    let mut remedies = Vec::new();
    let mut unreadable = None;
    for ((family, key), used) in FORWARDING.into_iter().zip([v4, v6]) {
        if !used {
            continue;
        }
        match sysctl::read(key) {
            Ok(v) if v == "0" => {
                reasons.push(format!(
                    "{family} forwarding is off on the node ({key} = 0)"
                ));
                remedies.push(format!(
                    "{family}: pods reach nothing beyond the node until `sysctl -w {key}=1` \
                     (the next ADD sets it too); find what turned it off"
                ));
            }
            Ok(_) => {}
            Err(e) => unreadable = unreadable.or(Some(e)),
        }
    }
    match hostport::HostPorts::new(&conf.hostport_dir())
        .for_network(&conf.name)
        .lost_mappings()
    {
        Ok(lost) if lost.is_empty() => {}
        Ok(lost) => {
            const SHOWN: usize = 5;
            let more = lost.len().saturating_sub(SHOWN);
            reasons.push(format!(
                "nftables table inet {HOSTPORT_TABLE} is missing while {} attachment(s) have \
                 port mappings ({}{})",
                lost.len(),
                lost[..lost.len().min(SHOWN)].join(", "),
                if more > 0 {
                    format!(", and {more} more")
                } else {
                    String::new()
                }
            ));
            remedies.push(format!(
                "hostPort: their host ports do not reach the pods; the table was removed by \
                 someone else (e.g. `nft flush ruleset` in a firewall reload); CNI GC of this \
                 network or the next ADD with port mappings rebuilds it from the records in \
                 {}/hostport",
                conf.hostport_dir().display()
            ));
        }
        // Not knowing is no reason to mark the node unavailable: CHECK and GC report it.
        Err(e) => warn(format!("STATUS: cannot check the hostPort table: {e}")),
    }
    if !reasons.is_empty() {
        return Err(CniError::LimitedConnectivity {
            reasons,
            details: remedies.join("; "),
        });
    }
    match unreadable {
        None => Ok(()),
        Some(e) => Err(CniError::NotAvailable(format!(
            "cannot read the node's forwarding setting: {e}"
        ))),
    }
}

/// Run `f` on a fresh thread in a network namespace of its own (gone when the thread
/// ends), so `/proc/sys/net` there is private: the root namespace's forwarding switches
/// are never touched (and their value does not decide a test). `None`: skipped.
#[cfg(test)]
pub(crate) fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare of this thread's network namespace only; the thread ends
            // after `f`.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                if std::env::var("PALISADE_SKIP_KERNEL_TESTS").as_deref() == Ok("1") {
                    eprintln!("skipped (needs a private netns): {e}");
                    return None;
                }
                panic!("unshare(CLONE_NEWNET): {e} (needs root, or PALISADE_SKIP_KERNEL_TESTS=1)");
            }
            Some(f())
        })
        .join()
        .expect("thread in a private netns panicked")
    })
}

/// [`in_private_netns`] with forwarding on for both families, like a node.
#[cfg(test)]
pub(crate) fn on_forwarding_node<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    in_private_netns(|| {
        for (_, key) in FORWARDING {
            std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), "1").unwrap();
        }
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Command};
    use serde_json::json;

    fn set(key: &str, v: &str) {
        std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), v).unwrap();
    }

    fn conf(ranges: serde_json::Value, dir: &std::path::Path) -> NetConf {
        config::parse_netconf(
            json!({
                "cniVersion": "1.1.0", "name": "t", "type": "palisade",
                "agent": {"socket": dir.join("no-agent.sock")},
                "ipam": {"type": "palisade", "ranges": ranges, "dataDir": dir}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    /// Records pods with these addresses, as ADD does.
    fn record_pods(conf: &NetConf, ips: &[&str]) {
        let mut locked = ipam::store(conf).lock().unwrap();
        for (i, ip) in ips.iter().enumerate() {
            locked
                .state
                .attachments
                .push(crate::ipam::store::AttachmentRecord {
                    container_id: format!("c{i}"),
                    ifname: "eth0".into(),
                    host_ifname: format!("pal{i}"),
                    ips: vec![ip.parse().unwrap()],
                    delegated: false,
                });
        }
        locked.commit().unwrap();
    }

    fn env() -> Env {
        Env {
            command: Command::Status,
            attachment: None,
            netns: None,
            args: config::CniArgs::default(),
            cni_path: Vec::new(),
        }
    }

    #[test]
    fn forwarding_off_for_a_family_in_use_is_51_and_names_it() {
        let d = std::env::temp_dir().join(format!("palisade-status-fwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let v4 = json!([[{"subnet": "10.0.0.0/24"}]]);
        let v6 = json!([[{"subnet": "fd00::/64"}]]);
        let dual = json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]);
        in_private_netns(|| {
            // A fresh node: no pod yet, forwarding off is no failure.
            set("net.ipv4.ip_forward", "0");
            set("net.ipv6.conf.all.forwarding", "0");
            status(&env(), &conf(dual.clone(), &d)).unwrap();
            set("net.ipv4.ip_forward", "1");
            set("net.ipv6.conf.all.forwarding", "1");
            record_pods(&conf(dual.clone(), &d), &["10.0.0.2", "fd00::2"]);
            for r in [&v4, &v6, &dual] {
                status(&env(), &conf(r.clone(), &d)).unwrap();
            }
            set("net.ipv4.ip_forward", "0");
            let e = status(&env(), &conf(dual.clone(), &d)).unwrap_err();
            assert_eq!(e.code(), 51, "{e}");
            assert!(e.msg().contains("IPv4 forwarding is off"), "{}", e.msg());
            assert!(!e.msg().contains("IPv6"), "{}", e.msg());
            assert!(
                e.details().contains("net.ipv4.ip_forward=1"),
                "{}",
                e.details()
            );
            // A network without IPv4 pods is not affected.
            let d6 = d.join("v6only");
            record_pods(&conf(v6.clone(), &d6), &["fd00::3"]);
            status(&env(), &conf(v6.clone(), &d6)).unwrap();
            set("net.ipv6.conf.all.forwarding", "0");
            let e = status(&env(), &conf(dual.clone(), &d)).unwrap_err();
            assert_eq!(e.code(), 51);
            assert!(
                e.msg().contains("IPv4") && e.msg().contains("IPv6"),
                "{}",
                e.msg()
            );
            // STATUS reads only.
            assert_eq!(sysctl::read("net.ipv4.ip_forward").unwrap(), "0");
            set("net.ipv4.ip_forward", "1");
            set("net.ipv6.conf.all.forwarding", "1");
            status(&env(), &conf(dual.clone(), &d)).unwrap();
        });
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn limited_connectivity_comes_before_not_available() {
        let d = std::env::temp_dir().join(format!("palisade-status-both-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut c = conf(json!([[{"subnet": "10.0.0.0/24"}]]), &d);
        c.agent.required = true; // and absent: 50 on its own
        record_pods(&c, &["10.0.0.2"]);
        in_private_netns(|| {
            set("net.ipv4.ip_forward", "1");
            assert_eq!(status(&env(), &c).unwrap_err().code(), 50);
            set("net.ipv4.ip_forward", "0");
            assert_eq!(status(&env(), &c).unwrap_err().code(), 51);
        });
        let _ = std::fs::remove_dir_all(d);
    }
}
