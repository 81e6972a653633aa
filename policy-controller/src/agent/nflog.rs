//! Denied-packet logging: the compiled ruleset logs the packets a policy drops to an NFLOG
//! group (rate-limited in the kernel); this reader receives them over netfilter netlink
//! (`NFNL_SUBSYS_ULOG`), maps addresses to pods through the compiler's state and emits one
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
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// Enough of a packet for the IP and transport headers.
const COPY_RANGE: u32 = 128;

/// One packet as NFLOG delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoggedPacket {
    pub prefix: String,
    pub in_ifindex: Option<u32>,
    pub out_ifindex: Option<u32>,
    pub payload: Vec<u8>,
}

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

fn nla_align(n: usize) -> usize {
    (n + 3) & !3
}

/// Walk netlink attributes: `(type without flags, payload)`.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[nla_align(len).min(buf.len())..];
        Some((ty, payload))
    })
}

/// Parse the netlink messages in one datagram; NFLOG packet messages are returned, errors
/// (negative acks) reported.
pub fn parse_datagram(mut buf: &[u8]) -> Result<Vec<LoggedPacket>> {
    let mut packets = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        let body = &buf[16..len];
        if ty == NLMSG_ERROR && body.len() >= 4 {
            let errno = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            if errno != 0 {
                bail!("nfnetlink: {}", io::Error::from_raw_os_error(-errno));
            }
        } else if ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET && body.len() >= 4 {
            // Skip `struct nfgenmsg` (4 bytes).
            let mut p = LoggedPacket::default();
            for (aty, data) in attributes(&body[4..]) {
                match aty {
                    NFULA_PREFIX => {
                        let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                        p.prefix = String::from_utf8_lossy(&data[..end]).into_owned();
                    }
                    NFULA_PAYLOAD => p.payload = data.to_vec(),
                    NFULA_IFINDEX_INDEV if data.len() >= 4 => {
                        p.in_ifindex =
                            Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
                    }
                    NFULA_IFINDEX_OUTDEV if data.len() >= 4 => {
                        p.out_ifindex =
                            Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
                    }
                    NFULA_PACKET_HDR => {}
                    _ => {}
                }
            }
            packets.push(p);
        }
        buf = &buf[nla_align(len).min(buf.len())..];
    }
    Ok(packets)
}

/// Parse the IP header (v4 or v6) and the transport ports, if the packet carries them.
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
    match crate::compile::parse_log_prefix(prefix) {
        Some((crate::eval::reference::Direction::Ingress, _)) => "ingress",
        Some((crate::eval::reference::Direction::Egress, _)) => "egress",
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
        .policies
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

fn nl_message(ty: u16, flags: u16, group: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    // struct nfgenmsg: family AF_UNSPEC, version 0, res_id = group (big endian).
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&group.to_be_bytes());
    for (aty, data) in attrs {
        let len = 4 + data.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&aty.to_ne_bytes());
        body.extend_from_slice(data);
        body.resize(nla_align(body.len()), 0);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&body);
    msg
}

/// A netlink socket bound to one NFLOG group, in the calling thread's network namespace.
pub struct NflogSocket {
    fd: OwnedFd,
}

impl NflogSocket {
    pub fn bind(group: u16) -> Result<NflogSocket> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            bail!(
                "socket(AF_NETLINK, NETLINK_NETFILTER): {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (kernel assigns pid).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            bail!("bind netlink socket: {}", io::Error::last_os_error());
        }
        let rcvbuf: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with a c_int value; failure only leaves the default size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&rcvbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let sock = NflogSocket { fd };
        let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        sock.request(&nl_message(
            ty,
            flags,
            group,
            &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])],
        ))
        .map_err(|e| anyhow::anyhow!("bind NFLOG group {group}: {e}"))?;
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        // Deliver each packet at once (queue threshold 1), not batched for a second.
        let attrs = [
            (NFULA_CFG_MODE, mode),
            (NFULA_CFG_QTHRESH, 1u32.to_be_bytes().to_vec()),
            (NFULA_CFG_TIMEOUT, 1u32.to_be_bytes().to_vec()),
        ];
        sock.request(&nl_message(ty, flags, group, &attrs))
            .map_err(|e| anyhow::anyhow!("configure NFLOG group {group}: {e}"))?;
        Ok(sock)
    }

    fn request(&self, msg: &[u8]) -> Result<()> {
        // SAFETY: sending a byte buffer we own.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            bail!("send: {}", io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        let n = self.recv(&mut buf)?;
        parse_datagram(&buf[..n])?;
        Ok(())
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer we own, of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Start the reader thread. Returns an error at once when the group cannot be bound.
pub fn spawn(
    group: u16,
    lines_per_second: u32,
    compiler: Arc<Mutex<Compiler>>,
    shared: Arc<AgentShared>,
) -> Result<()> {
    let sock = NflogSocket::bind(group)?;
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
    sock: NflogSocket,
    lines_per_second: u32,
    compiler: Arc<Mutex<Compiler>>,
    shared: Arc<AgentShared>,
) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut limiter = LogLimiter::new(lines_per_second);
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // The kernel dropped log messages: only log lines are lost.
                shared.metrics.deny_log_dropped();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shared.metrics.error(error_kind::NFLOG);
                tracing::error!(error = %e, "NFLOG socket failed; denied-packet logging stops");
                return;
            }
        };
        let packets = match parse_datagram(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                shared.metrics.error(error_kind::NFLOG);
                tracing::debug!(error = %e, "NFLOG message");
                continue;
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
        let mut policies: Vec<String> = isolated
            .map(|pod| isolating_policies(state, pod, direction))
            .unwrap_or_default()
            .iter()
            .map(|k| k.to_string())
            .collect();
        if policies.is_empty() {
            // No policy selects the pod: the drop is the new-pod guard (its IP is not
            // programmed yet) or a class chain named in the prefix.
            if let Some((_, chain)) = crate::compile::parse_log_prefix(prefix) {
                policies.push(format!("chain {chain}"));
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
    fn parses_an_nflog_packet_message() {
        let payload = ipv4_tcp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80);
        let mut prefix = b"palisade drop ingress pod-in-x".to_vec();
        prefix.push(0);
        let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
        let msg = nl_message(
            ty,
            0,
            100,
            &[
                (NFULA_PACKET_HDR, vec![8, 0, 2, 0]),
                (NFULA_PREFIX, prefix),
                (NFULA_IFINDEX_OUTDEV, 7u32.to_be_bytes().to_vec()),
                (NFULA_PAYLOAD, payload),
            ],
        );
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        let packets = parse_datagram(&two).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].prefix, "palisade drop ingress pod-in-x");
        assert_eq!(packets[0].out_ifindex, Some(7));
        let flow = parse_flow(&packets[0].payload).unwrap();
        assert_eq!(flow.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((flow.proto, flow.dst_port), (6, Some(80)));
        assert_eq!(direction_of(&packets[0].prefix), "ingress");
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
    fn an_error_ack_is_reported() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&(-libc::EBUSY).to_ne_bytes());
        msg.extend_from_slice(&[0; 16]);
        assert!(parse_datagram(&msg)
            .unwrap_err()
            .to_string()
            .contains("busy"));
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
}
