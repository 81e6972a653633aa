//! What runs inside every test pod's network namespace (`palisade-testpod serve`): one
//! listener per declared port and a control socket through which the harness makes the pod
//! probe others.
//!
//! - TCP: a listener that accepts and closes. UDP: an echo server. Both bound to `[::]`, which
//!   on Linux (bindv6only=0) also takes IPv4.
//! - SCTP: the kernel here has no SCTP sockets (`machine.md`), so a raw `IPPROTO_SCTP` socket
//!   per family records the INIT chunks arriving for the declared ports, keyed by the INIT's
//!   initiate tag. The prober sends an INIT with a fresh random tag from the source pod and
//!   asks the destination pod whether it saw that tag: an answer that can't come from an
//!   earlier probe.
//! - Control: a unix socket (a path in the run directory, so reachable from the harness in
//!   the root namespace: unix sockets are not bound to network namespaces). One request per
//!   line, one answer per line:
//!
//! | request | answer |
//! | --- | --- |
//! | `ping` | `pong` |
//! | `tcp IP PORT TIMEOUT_MS` | `allowed` or `blocked <why>` (connect from this pod) |
//! | `udp IP PORT TIMEOUT_MS` | `allowed` or `blocked <why>` (echo answered or not) |
//! | `sctp-send IP PORT TAG` | `sent` or `error <why>` (one INIT with initiate tag TAG) |
//! | `sctp-seen PORT TAG` | `yes` or `no` (an INIT with tag TAG arrived for PORT) |

use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IPPROTO_SCTP: i32 = 132;

/// The listeners of one pod.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    pub sctp: Vec<u16>,
}

/// Bind every listener, then the control socket (its existence means "ready"), then serve
/// forever.
pub fn serve(control: &Path, listeners: &Listeners) -> Result<()> {
    for &port in &listeners.tcp {
        let l = TcpListener::bind(("::", port)).with_context(|| format!("bind TCP {port}"))?;
        std::thread::spawn(move || {
            for conn in l.incoming() {
                drop(conn);
            }
        });
    }
    for &port in &listeners.udp {
        let s = UdpSocket::bind(("::", port)).with_context(|| format!("bind UDP {port}"))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
    let seen: Arc<Mutex<HashSet<(u16, u32)>>> = Arc::default();
    if !listeners.sctp.is_empty() {
        for family in [libc::AF_INET, libc::AF_INET6] {
            let fd = raw_sctp_socket(family)?;
            let ports: HashSet<u16> = listeners.sctp.iter().copied().collect();
            let seen = seen.clone();
            std::thread::spawn(move || record_inits(fd, family, &ports, &seen));
        }
    }
    let _ = std::fs::remove_file(control);
    let tmp = control.with_extension("binding");
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).with_context(|| format!("bind {}", tmp.display()))?;
    // Appear under the final name only once listening: the harness waits for the path.
    std::fs::rename(&tmp, control).with_context(|| format!("rename to {}", control.display()))?;
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let seen = seen.clone();
        std::thread::spawn(move || {
            let _ = handle_control(conn, &seen);
        });
    }
    Ok(())
}

fn handle_control(conn: UnixStream, seen: &Mutex<HashSet<(u16, u32)>>) -> Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let answer = answer(&line, seen);
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

fn answer(line: &str, seen: &Mutex<HashSet<(u16, u32)>>) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let verdict = |r: Result<()>| match r {
        Ok(()) => "allowed".to_string(),
        Err(e) => format!("blocked {e:#}"),
    };
    let parse = |ip: &str, port: &str| -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
    };
    match words.as_slice() {
        ["ping"] => "pong".into(),
        ["tcp", ip, port, ms] => match (parse(ip, port), ms.parse()) {
            (Some(a), Ok(ms)) => verdict(probe_tcp(a, Duration::from_millis(ms))),
            _ => format!("error bad request {line:?}"),
        },
        ["udp", ip, port, ms] => match (parse(ip, port), ms.parse()) {
            (Some(a), Ok(ms)) => verdict(probe_udp(a, Duration::from_millis(ms))),
            _ => format!("error bad request {line:?}"),
        },
        ["sctp-send", ip, port, tag] => match (ip.parse(), port.parse(), tag.parse()) {
            (Ok(ip), Ok(port), Ok(tag)) => match send_sctp_init(ip, port, tag) {
                Ok(()) => "sent".into(),
                Err(e) => format!("error {e:#}"),
            },
            _ => format!("error bad request {line:?}"),
        },
        ["sctp-seen", port, tag] => match (port.parse::<u16>(), tag.parse::<u32>()) {
            (Ok(port), Ok(tag)) => {
                let s = seen.lock().unwrap_or_else(|e| e.into_inner());
                if s.contains(&(port, tag)) {
                    "yes"
                } else {
                    "no"
                }
                .into()
            }
            _ => format!("error bad request {line:?}"),
        },
        _ => format!("error unknown request {line:?}"),
    }
}

/// Connect; allowed iff the handshake completes in time (a RST or a timeout = blocked).
pub fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => anyhow::anyhow!("timeout"),
        std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!("refused"),
        _ => anyhow::anyhow!("{e}"),
    })?;
    drop(s);
    Ok(())
}

/// Send a random payload; allowed iff the same payload comes back in time.
pub fn probe_udp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(local)?;
    s.connect(addr)?;
    let nonce = random_u64().to_be_bytes();
    s.send(&nonce)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timeout");
        }
        s.set_read_timeout(Some(left))?;
        match s.recv(&mut buf) {
            Ok(n) if buf[..n] == nonce => return Ok(()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("timeout")
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!("refused"),
            Err(e) => bail!("{e}"),
        }
    }
}

pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the buffer is valid for 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // Fall back on the clock: uniqueness is all that is needed.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(b)
}

fn raw_sctp_socket(family: i32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, IPPROTO_SCTP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw SCTP socket");
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Record (destination port, initiate tag) of every INIT arriving for one of `ports`.
fn record_inits(fd: OwnedFd, family: i32, ports: &HashSet<u16>, seen: &Mutex<HashSet<(u16, u32)>>) {
    let mut buf = [0u8; 65536];
    loop {
        // SAFETY: buf is valid for its length; no address is requested.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let pkt = &buf[..n as usize];
        // IPv4 raw sockets deliver the IP header, IPv6 ones only the payload.
        let sctp = if family == libc::AF_INET {
            let Some(&b0) = pkt.first() else { continue };
            let ihl = usize::from(b0 & 0x0f) * 4;
            match pkt.get(ihl..) {
                Some(p) => p,
                None => continue,
            }
        } else {
            pkt
        };
        if let Some((port, tag)) = parse_init(sctp) {
            if ports.contains(&port) {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((port, tag));
            }
        }
    }
}

/// `(destination port, initiate tag)` when `sctp` is an SCTP packet whose first chunk is INIT.
pub fn parse_init(sctp: &[u8]) -> Option<(u16, u32)> {
    if sctp.len() < 32 || sctp[12] != 1 {
        return None;
    }
    let port = u16::from_be_bytes([sctp[2], sctp[3]]);
    let tag = u32::from_be_bytes([sctp[16], sctp[17], sctp[18], sctp[19]]);
    Some((port, tag))
}

/// An SCTP packet holding one INIT chunk (RFC 9260 §3.3.2), with a valid CRC32c: conntrack
/// checks it, and a bad checksum would be dropped as invalid before any policy applies.
pub fn sctp_init_packet(src_port: u16, dst_port: u16, initiate_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.push(1); // chunk type INIT
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&initiate_tag.to_be_bytes()); // initial TSN
                                                      // The CRC32c goes on the wire least significant byte first (RFC 9260 Appendix A; Linux
                                                      // stores cpu_to_le32 of it).
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// CRC32c (Castagnoli), bitwise: packets here are 32 bytes.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Send one INIT with `tag` to `ip`:`port` through a raw socket (the kernel adds the IP
/// header and picks the source address).
pub fn send_sctp_init(ip: IpAddr, port: u16, tag: u32) -> Result<()> {
    let src_port = 20000 + (random_u64() % 40000) as u16;
    let pkt = sctp_init_packet(src_port, port, tag);
    let family = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = raw_sctp_socket(family)?;
    let rc = match ip {
        IpAddr::V4(v4) => {
            // SAFETY: zeroed sockaddr_in is a valid value; fields set below.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            // SAFETY: pointers and lengths describe valid memory.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            }
        }
        IpAddr::V6(v6) => {
            // SAFETY: zeroed sockaddr_in6 is a valid value; fields set below. The port must
            // stay 0 (for raw IPv6 sockets it would name the protocol).
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = v6.octets();
            // SAFETY: pointers and lengths describe valid memory.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("send SCTP INIT");
    }
    Ok(())
}

/// A client of one pod's control socket.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    pub fn connect(path: &Path) -> Result<Control> {
        let s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Control {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// Send one request line and return the answer line.
    pub fn request(&mut self, line: &str) -> Result<String> {
        writeln!(self.writer, "{line}").context("write to test pod")?;
        let mut answer = String::new();
        self.reader
            .read_line(&mut answer)
            .context("read from test pod")?;
        if answer.is_empty() {
            bail!("test pod closed its control socket");
        }
        Ok(answer.trim_end().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_reference_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_packets_parse_back() {
        let p = sctp_init_packet(1234, 80, 0xdead_beef);
        assert_eq!(p.len(), 32);
        assert_eq!(parse_init(&p), Some((80, 0xdead_beef)));
        // Checksum verifies: CRC over the packet with the field zeroed equals the field.
        let mut z = p.clone();
        z[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(crc32c(&z).to_le_bytes(), p[8..12]);
    }
}
