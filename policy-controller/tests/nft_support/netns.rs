//! Kernel-test helpers: a node namespace routing between two pod namespaces, sockets
//! opened inside a namespace (`TestNetns::run`: the kernel crate's helper; a socket stays
//! in the namespace it was created in), and probes that say what they expect: a path
//! expected open is tried again until [`OPEN_DEADLINE`] (a first packet lost to neighbour
//! resolution, or a loaded machine, must not read as "blocked"), a path expected blocked is
//! tried once (trying again would only take longer; a leak still shows as a connection).

use palisade_policy::nft::{NftDataplane, NftOptions};
use palisade_testutil::TestNetns;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// node ⟷ pod A (`10.70.1.2`, `fd70:1::2`) and node ⟷ pod B (`10.70.2.2`, `fd70:2::2`);
/// the node forwards. Node-side veths are `pala` and `palb` (the pod prefix).
pub struct Topology {
    pub node: TestNetns,
    pub a: TestNetns,
    pub b: TestNetns,
}

pub const A4: &str = "10.70.1.2";
pub const B4: &str = "10.70.2.2";
pub const A6: &str = "fd70:1::2";
pub const B6: &str = "fd70:2::2";

impl Topology {
    pub fn new(tag: &str) -> Topology {
        let node = TestNetns::new(&format!("{tag}-node")).unwrap();
        let a = TestNetns::new(&format!("{tag}-a")).unwrap();
        let b = TestNetns::new(&format!("{tag}-b")).unwrap();
        // No DAD anywhere (also for link-local addresses): a tentative address delays the
        // first IPv6 packets by about a second.
        for ns in [&node, &a, &b] {
            ns.sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
                .unwrap();
        }
        node.veth_to("pala", &a, "eth0").unwrap();
        node.veth_to("palb", &b, "eth0").unwrap();
        node.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
             ip addr add 10.70.1.1/24 dev pala && ip addr add 10.70.2.1/24 dev palb && \
             ip -6 addr add fd70:1::1/64 dev pala nodad && ip -6 addr add fd70:2::1/64 dev palb nodad",
        )
        .unwrap();
        for (ns, n) in [(&a, 1), (&b, 2)] {
            ns.sh(&format!(
                "ip addr add 10.70.{n}.2/24 dev eth0 && ip route add default via 10.70.{n}.1 && \
                 ip -6 addr add fd70:{n}::2/64 dev eth0 nodad && ip -6 route add default via fd70:{n}::1"
            ))
            .unwrap();
        }
        // Resolve neighbours once so that the first probe is not slowed by it.
        a.sh("busybox ping -c1 -W2 10.70.2.2 >/dev/null && busybox ping -c1 -W2 fd70:2::2 >/dev/null")
            .unwrap();
        Topology { node, a, b }
    }

    /// A dataplane programming `table` inside the node namespace.
    pub fn dataplane(&self, table: &str) -> NftDataplane {
        NftDataplane::new(NftOptions {
            table: table.to_string(),
            netns: Some(self.node.path().to_path_buf()),
            ..NftOptions::default()
        })
    }
}

/// A TCP listener (dual-stack) in `ns` that accepts and closes connections in the background.
pub fn tcp_server(ns: &TestNetns, port: u16) -> SocketAddr {
    let l = ns.run(|| TcpListener::bind(("::", port)).expect("bind tcp"));
    // std listens with a backlog of 128: a client looping on connect outruns this accept
    // thread, the queue overflows, and the dropped SYN costs a one-second retransmit. Listen
    // again with a deep queue (Linux updates the backlog of a listening socket).
    // SAFETY: a valid listening socket fd.
    unsafe {
        libc::listen(l.as_raw_fd(), 4096);
    }
    let local = l.local_addr().unwrap();
    std::thread::spawn(move || {
        // Keep accepted connections open for a while: closing at once would reset a
        // connection before a busy client has even seen it established. The client closes
        // first (with RST), so dropping them later is quiet.
        let mut open = std::collections::VecDeque::new();
        for s in l.incoming().flatten() {
            rst_on_close(&s);
            open.push_back(s);
            if open.len() > 4096 {
                open.pop_front();
            }
        }
    });
    local
}

/// New TCP connections per second from inside `from` to `to` over `seconds`, each closed
/// with RST (benchmarks: the datapath's and the overlay's).
pub fn connection_rate(from: &TestNetns, to: SocketAddr, seconds: f64) -> f64 {
    from.run(|| {
        let start = Instant::now();
        let (mut n, mut failed) = (0u64, 0u64);
        let mut first_error = None;
        while start.elapsed().as_secs_f64() < seconds {
            match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                Ok(s) => {
                    rst_on_close(&s);
                    n += 1;
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if failed > 0 {
            println!("  ({failed} connects failed, first: {first_error:?})");
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

/// Bulk TCP throughput in Gbit/s from inside `from` to an `iperf3 -s -p 5201` at `to`
/// (`iperf3 -t 5`, what the receiver counted).
pub fn iperf3_gbit(from: &TestNetns, to: &str) -> f64 {
    let out = from
        .exec(
            "iperf3",
            &[
                "-c",
                to,
                "-p",
                "5201",
                "-t",
                "5",
                "--connect-timeout",
                "2000",
                "-J",
            ],
        )
        .expect("iperf3 client");
    assert!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

/// Close with RST (SO_LINGER 0): no TIME_WAIT on either side, so connection loops never run
/// into a 4-tuple that is still waiting.
pub fn rst_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Bind `[::]:port`, retrying for up to a second while it is in use. The previous probe's
/// socket on the same port is closed when its probe returns, but a process another
/// test thread is spawning at that instant holds a copy of every descriptor until its exec
/// (close-on-exec), and keeps the port bound that long: a one-off "Address already in use".
pub fn bind_udp_retrying(port: u16) -> UdpSocket {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match UdpSocket::bind(("::", port)) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            r => return r.expect("bind udp"),
        }
    }
}

/// How long a probe of a path expected open keeps trying. Between these namespaces a
/// connection takes well under a millisecond on an idle machine.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// How long one attempt waits (a handshake, a datagram's arrival). The only attempt of a
/// probe expected blocked; the first of one expected open, whose later attempts wait twice
/// as long each (a slow machine is slow for every attempt).
const ATTEMPT: Duration = Duration::from_millis(700);

/// What a probe expects, which decides how often it tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Tried until it gets through or [`OPEN_DEADLINE`] has passed.
    Open,
    /// Tried once.
    Blocked,
}

/// Run `attempt(timeout)` as `expect` says and return its first success, or its last error.
/// The failed attempts of a probe expected open are printed (the test's output, shown when
/// it fails).
pub fn attempts<T>(
    expect: Expect,
    what: &str,
    mut attempt: impl FnMut(Duration) -> io::Result<T>,
) -> io::Result<T> {
    let deadline = Instant::now() + OPEN_DEADLINE;
    let mut timeout = ATTEMPT;
    let mut n = 0;
    loop {
        n += 1;
        let started = Instant::now();
        let error = match attempt(timeout) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if expect == Expect::Blocked || Instant::now() >= deadline {
            return Err(error);
        }
        eprintln!(
            "{what}: attempt {n} failed after {:?}: {error}",
            started.elapsed()
        );
        // A refusal comes at once: do not spin through the deadline.
        std::thread::sleep(Duration::from_millis(100));
        timeout = (timeout * 2).min(deadline.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            return Err(error);
        }
    }
}

/// Whether a TCP connection from `ns` to `to` is established: for a path expected open,
/// tried until [`OPEN_DEADLINE`].
pub fn tcp_open(ns: &TestNetns, to: SocketAddr) -> bool {
    tcp_probe(ns, to, Expect::Open)
}

/// Whether one TCP connection attempt from `ns` to `to` fails (within [`ATTEMPT`]): for a
/// path expected blocked.
pub fn tcp_blocked(ns: &TestNetns, to: SocketAddr) -> bool {
    !tcp_probe(ns, to, Expect::Blocked)
}

fn tcp_probe(ns: &TestNetns, to: SocketAddr, expect: Expect) -> bool {
    let what = format!("TCP {} -> {to}", ns.name());
    ns.run(|| {
        attempts(expect, &what, |timeout| {
            TcpStream::connect_timeout(&to, timeout)
        })
        .is_ok()
    })
}

/// Whether a UDP datagram from `from` reaches `to_ns` on `to`: for a path expected open,
/// sent again until one arrives or [`OPEN_DEADLINE`] has passed.
pub fn udp_open(from: &TestNetns, to_ns: &TestNetns, to: SocketAddr) -> bool {
    udp_probe(from, to_ns, to, None, Expect::Open).is_some()
}

/// Whether one UDP datagram from `from` to `to` fails to arrive in `to_ns` (within
/// [`ATTEMPT`]): for a path expected blocked.
pub fn udp_blocked(from: &TestNetns, to_ns: &TestNetns, to: SocketAddr) -> bool {
    udp_probe(from, to_ns, to, None, Expect::Blocked).is_none()
}

/// The source address a UDP datagram from `from` (bound to `bind`, else any address)
/// arrives with at `to` (in `to_ns`), or `None` when nothing arrives: what masquerade
/// rewrote, or what the overlay kept. Expects the datagram to arrive (sent again until
/// [`OPEN_DEADLINE`]); the first one that does decides.
pub fn udp_source(
    from: &TestNetns,
    to_ns: &TestNetns,
    to: SocketAddr,
    bind: Option<IpAddr>,
) -> Option<IpAddr> {
    udp_probe(from, to_ns, to, bind, Expect::Open)
}

/// Datagrams carrying one token from `from` to `to`; the source address of the first that
/// arrives in `to_ns`.
fn udp_probe(
    from: &TestNetns,
    to_ns: &TestNetns,
    to: SocketAddr,
    bind: Option<IpAddr>,
    expect: Expect,
) -> Option<IpAddr> {
    let rx = to_ns.run(|| bind_udp_retrying(to.port()));
    let tx = from.run(|| {
        let any = if to.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        UdpSocket::bind((bind.unwrap_or(any), 0)).expect("bind udp client")
    });
    let token = probe_payload(0);
    let what = format!("UDP {} -> {to} in {}", from.name(), to_ns.name());
    attempts(expect, &what, |timeout| {
        tx.send_to(&token, to)?;
        recv_payload(&rx, &token, timeout)
    })
    .ok()
    .map(|source| match source.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

/// A datagram payload of at least `len` bytes that no other probe of this run sends: a
/// late datagram of an earlier probe to the same port (one of its retries) is never taken
/// for this probe's.
pub fn probe_payload(len: usize) -> Vec<u8> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let mut payload = format!(
        "probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes();
    if payload.len() < len {
        payload.resize(len, 0x5a);
    }
    payload
}

/// Wait up to `timeout` for a datagram equal to `payload` on `rx` (others are skipped) and
/// return its source address.
pub fn recv_payload(rx: &UdpSocket, payload: &[u8], timeout: Duration) -> io::Result<SocketAddr> {
    let until = Instant::now() + timeout;
    let mut buf = vec![0u8; payload.len() + 1];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "nothing arrived"));
        }
        rx.set_read_timeout(Some(left))?;
        match rx.recv_from(&mut buf) {
            Ok((n, source)) if buf[..n] == *payload => return Ok(source),
            Ok(_) => continue,
            // What a read timeout reports.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}
