//! Denied-packet logging: the compiled ruleset logs the packets a policy drops to an NFLOG
//! group (rate-limited in the kernel); this reader receives them through
//! `palisade_kernel::nflog` (netfilter netlink, `NFNL_SUBSYS_ULOG`), maps addresses to pods through the compiler's state and emits one
//! structured log line per denied connection attempt, naming both pods, the port, the
//! direction and the policies that isolate the pod.
//!
//! It runs on its own OS thread with a plain blocking netlink socket: nothing here may ever
//! slow traffic, so the agent caps lines per second on top of the kernel's rate limit, and a
//! full socket buffer (ENOBUFS) only loses log lines.

use super::drops::DropEvent;
use super::metrics::error_kind;
use super::status::AgentShared;
use crate::compile::Compiler;
use crate::model::selector::selector_matches;
use crate::model::{ClusterState, ObjectKey, PodInfo, Protocol};
use anyhow::Result;
use palisade_kernel::nflog::{LoggedPacket, Nflog};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Enough of a packet for the IP and transport headers.
const COPY_RANGE: u32 = 128;

/// The fields of the IP/transport header the log line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IANA protocol number.
    pub proto: u8,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// Parse the IP header (v4 or v6) and the transport ports of a logged packet: the kernel
/// crate hands over the payload as bytes (NFLOG's netlink is decoded by
/// `netlink-packet-netfilter`; the packet itself is not netlink).
pub fn parse_flow(ip: &[u8]) -> Option<Flow> {
    let version = ip.first()? >> 4;
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match version {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip.len() < 20 || ihl < 20 {
                return None;
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (
                src.into(),
                dst.into(),
                ip[9],
                ip.get(ihl..).unwrap_or_default(),
            )
        }
        6 => {
            if ip.len() < 40 {
                return None;
            }
            let a: [u8; 16] = ip[8..24].try_into().ok()?;
            let b: [u8; 16] = ip[24..40].try_into().ok()?;
            (
                Ipv6Addr::from(a).into(),
                Ipv6Addr::from(b).into(),
                ip[6],
                &ip[40..],
            )
        }
        _ => return None,
    };
    let has_ports = matches!(proto, 6 | 17 | 132) && l4.len() >= 4;
    Some(Flow {
        src,
        dst,
        proto,
        src_port: has_ports.then(|| u16::from_be_bytes([l4[0], l4[1]])),
        dst_port: has_ports.then(|| u16::from_be_bytes([l4[2], l4[3]])),
    })
}

/// Direction of the drop as named by the log prefix the compiler writes
/// (`palisade drop <direction> <chain>`); `unknown` for any other prefix.
pub fn direction_of(prefix: &str) -> &'static str {
    match crate::compile::parse_log_prefix(prefix).map(|p| p.direction) {
        Some(crate::model::policy::Direction::Ingress) => "ingress",
        Some(crate::model::policy::Direction::Egress) => "egress",
        None => "unknown",
    }
}

fn pod_by_ip<'a>(state: &'a ClusterState, ip: &IpAddr) -> Option<&'a PodInfo> {
    state
        .pods
        .values()
        .find(|p| !p.host_network && p.ips.contains(ip))
}

/// Policies that isolate `pod` in `direction` (select it and have that policy type).
pub fn isolating_policies(state: &ClusterState, pod: &PodInfo, direction: &str) -> Vec<ObjectKey> {
    state
        .network_policies
        .iter()
        .filter(|(key, p)| {
            let (ingress, egress) = p.spec.effective_policy_types();
            key.namespace == pod.key.namespace
                && match direction {
                    "ingress" => ingress,
                    "egress" => egress,
                    _ => ingress || egress,
                }
                && selector_matches(&p.spec.pod_selector, &pod.labels)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Token bucket for log lines plus suppression of repeats of one flow (SYN retransmits).
#[derive(Debug)]
pub struct LogLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
    recent: HashMap<Flow, Instant>,
}

const REPEAT_WINDOW: Duration = Duration::from_secs(2);

impl LogLimiter {
    pub fn new(lines_per_second: u32) -> LogLimiter {
        LogLimiter {
            rate: f64::from(lines_per_second),
            tokens: f64::from(lines_per_second),
            last: Instant::now(),
            recent: HashMap::new(),
        }
    }

    /// Whether to log this flow now.
    pub fn admit(&mut self, flow: &Flow, now: Instant) -> bool {
        // The source port makes a retransmit the same attempt and a new connection a new one.
        if let Some(seen) = self.recent.get(flow) {
            if now.duration_since(*seen) < REPEAT_WINDOW {
                return false;
            }
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        if self.recent.len() > 4096 {
            self.recent
                .retain(|_, t| now.duration_since(*t) < REPEAT_WINDOW);
        }
        self.recent.insert(*flow, now);
        true
    }
}

/// Start the reader thread. Returns an error at once when the group cannot be bound.
pub fn spawn(
    group: u16,
    lines_per_second: u32,
    compiler: Arc<Mutex<Compiler>>,
    shared: Arc<AgentShared>,
) -> Result<()> {
    let sock = Nflog::bind(group, COPY_RANGE)?;
    std::thread::Builder::new()
        .name("palisade-nflog".into())
        .spawn(move || read_loop(sock, lines_per_second, compiler, shared))?;
    tracing::info!(
        group,
        lines_per_second,
        "denied-packet logging on NFLOG group"
    );
    Ok(())
}

fn read_loop(
    mut sock: Nflog,
    lines_per_second: u32,
    compiler: Arc<Mutex<Compiler>>,
    shared: Arc<AgentShared>,
) {
    let mut limiter = LogLimiter::new(lines_per_second);
    loop {
        let packets = match sock.recv() {
            Ok(p) => p,
            Err(e) if e.errno() == Some(libc::ENOBUFS) => {
                // The kernel dropped log messages: only log lines are lost.
                shared.metrics.deny_log_dropped();
                continue;
            }
            Err(e) if e.source.kind() == std::io::ErrorKind::InvalidData => {
                shared.metrics.error(error_kind::NFLOG);
                tracing::debug!(error = %e, "NFLOG message");
                continue;
            }
            Err(e) => {
                shared.metrics.error(error_kind::NFLOG);
                tracing::error!(error = %e, "NFLOG socket failed; denied-packet logging stops");
                return;
            }
        };
        for p in packets {
            report(&p, &mut limiter, &compiler, &shared);
        }
    }
}

fn report(
    p: &LoggedPacket,
    limiter: &mut LogLimiter,
    compiler: &Mutex<Compiler>,
    shared: &AgentShared,
) {
    let Some(flow) = parse_flow(&p.payload) else {
        return;
    };
    let direction = direction_of(&p.prefix);
    let denied = DeniedPacket::describe(&flow, direction, &p.prefix, compiler);
    let policy_label = if denied.policies.is_empty() {
        p.prefix.clone()
    } else {
        denied.policies.join(",")
    };
    shared.metrics.denied(&policy_label, direction);
    let protocol =
        Protocol::from_number(flow.proto).map_or_else(|| flow.proto.to_string(), |p| p.to_string());
    // Every logged packet reaches the followers (the kernel's log rate limit bounds them);
    // only the log lines are limited further.
    shared.drops.publish(DropEvent {
        time: jiff::Timestamp::now().to_string(),
        node: shared.node.clone(),
        direction: direction.to_string(),
        protocol: protocol.clone(),
        src_pod: denied.src_pod.clone(),
        src_ip: flow.src.to_string(),
        src_port: flow.src_port,
        dst_pod: denied.dst_pod.clone(),
        dst_ip: flow.dst.to_string(),
        dst_port: flow.dst_port,
        policies: denied.policies.clone(),
        prefix: p.prefix.clone(),
    });
    if !limiter.admit(&flow, Instant::now()) {
        shared.metrics.deny_log_dropped();
        return;
    }
    tracing::info!(
        target: "palisade::denied",
        src_pod = denied.src_pod.as_deref().unwrap_or("-"),
        src_ip = %flow.src,
        dst_pod = denied.dst_pod.as_deref().unwrap_or("-"),
        dst_ip = %flow.dst,
        protocol = %protocol,
        dst_port = flow.dst_port.unwrap_or(0),
        direction,
        policies = %denied.policies.join(","),
        prefix = %p.prefix,
        "denied connection attempt"
    );
}

/// The pods and policies behind one denied packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedPacket {
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
    pub policies: Vec<String>,
}

impl DeniedPacket {
    pub fn describe(
        flow: &Flow,
        direction: &str,
        prefix: &str,
        compiler: &Mutex<Compiler>,
    ) -> DeniedPacket {
        let compiler = compiler.lock().unwrap_or_else(|e| e.into_inner());
        let state = compiler.state();
        let src = pod_by_ip(state, &flow.src);
        let dst = pod_by_ip(state, &flow.dst);
        let isolated = match direction {
            "egress" => src,
            _ => dst,
        };
        let parsed = crate::compile::parse_log_prefix(prefix);
        // A ClusterNetworkPolicy's Deny names its rule's deny chain.
        let cluster_rule = parsed
            .as_ref()
            .and_then(|p| crate::compile::names::cluster_rule_of_chain(state, &p.chain))
            .map(|rule| rule.to_string());
        let mut policies: Vec<String> = match cluster_rule {
            Some(rule) => vec![rule],
            None => isolated
                .map(|pod| isolating_policies(state, pod, direction))
                .unwrap_or_default()
                .iter()
                .map(|k| k.to_string())
                .collect(),
        };
        if policies.is_empty() {
            // No policy selects the pod: the drop is the new-pod guard (its IP is not
            // programmed yet) or a class chain named in the prefix.
            if let Some(p) = parsed {
                policies.push(format!("chain {}", p.chain));
            }
        }
        DeniedPacket {
            src_pod: src.map(|p| p.key.to_string()),
            dst_pod: dst.map(|p| p.key.to_string()),
            policies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn a_logged_tcp_packet_names_its_flow_and_direction() {
        let p = LoggedPacket {
            prefix: "palisade drop ingress pod-in-x".into(),
            out_ifindex: Some(7),
            payload: ipv4_tcp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80),
            ..LoggedPacket::default()
        };
        let flow = parse_flow(&p.payload).unwrap();
        assert_eq!(flow.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (flow.proto, flow.src_port, flow.dst_port),
            (6, Some(40000), Some(80))
        );
        assert_eq!(direction_of(&p.prefix), "ingress");
        assert_eq!(direction_of("something else"), "unknown");
    }

    #[test]
    fn parses_ipv6_udp() {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        let flow = parse_flow(&p).unwrap();
        assert_eq!(
            (flow.dst, flow.proto, flow.src_port, flow.dst_port),
            (IpAddr::V6(dst), 17, Some(5000), Some(53))
        );
    }

    #[test]
    fn limiter_caps_lines_and_suppresses_retransmits() {
        let mut l = LogLimiter::new(2);
        let t0 = Instant::now();
        let flow = |port| Flow {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: 6,
            src_port: Some(port),
            dst_port: Some(80),
        };
        assert!(l.admit(&flow(1), t0));
        assert!(
            !l.admit(&flow(1), t0 + Duration::from_millis(500)),
            "retransmit"
        );
        assert!(l.admit(&flow(2), t0));
        assert!(!l.admit(&flow(3), t0), "over the rate");
        assert!(l.admit(&flow(4), t0 + Duration::from_secs(1)));
    }

    /// A ClusterNetworkPolicy's Deny logs its rule's deny chain: the line names that rule.
    #[test]
    fn a_cluster_policy_deny_names_its_rule() {
        use crate::compile::names::{deny_chain_name, log_prefix};
        use crate::compile::{CompileOptions, Compiler};
        use crate::model::policy::{Direction, PolicyRef, RuleRef};
        use crate::ruleset::Statement;
        let mut state = ClusterState::default();
        state.upsert_namespace("x", Default::default());
        let mut pod = |name: &str, ip: &str| {
            let p = PodInfo {
                key: ObjectKey::new("x", name),
                node: Some("n1".into()),
                labels: Default::default(),
                ips: vec![ip.parse().unwrap()],
                host_network: false,
                terminating: false,
                named_ports: vec![],
            };
            state.pods.insert(p.key.clone(), p);
        };
        pod("a", "10.0.0.1");
        pod("b", "10.0.0.2");
        let cnp: crate::model::api::ClusterNetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny-x"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Pass", "from": [{"pods": {"podSelector": {"matchLabels": {"a": "b"}}}}]},
                                 {"action": "Deny", "from": [{"namespaces": {}}]}]},
        }))
        .unwrap();
        state.cluster_network_policies.insert("deny-x".into(), cnp);
        let compiler = Mutex::new(Compiler::with_state(
            CompileOptions {
                node: "n1".into(),
                fail_closed_new_pods: true,
                nflog_group: Some(100),
                masquerade: crate::compile::MasqueradeOptions::enabled(),
            },
            state,
        ));
        let chain = deny_chain_name(&RuleRef {
            policy: PolicyRef::cluster("deny-x"),
            direction: Direction::Ingress,
            index: 1,
        });
        let prefix = log_prefix(Direction::Ingress, &chain, None);
        // The compiled ruleset logs that rule's drops with exactly this prefix.
        let ruleset = compiler.lock().unwrap().ruleset();
        assert!(
            ruleset.chains[&chain].rules.iter().any(|r| matches!(
                r.statements.first(),
                Some(Statement::Log { prefix: p, .. }) if *p == prefix
            )),
            "{:?}",
            ruleset.chains.get(&chain)
        );
        let flow = Flow {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: 6,
            src_port: Some(40000),
            dst_port: Some(80),
        };
        let denied = DeniedPacket::describe(&flow, "ingress", &prefix, &compiler);
        assert_eq!(denied.policies, ["ClusterNetworkPolicy/deny-x ingress[1]"]);
        assert_eq!(denied.src_pod.as_deref(), Some("x/a"));
        assert_eq!(direction_of(&prefix), "ingress");
    }
}
