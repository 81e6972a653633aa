//! Kernel-test helpers: a node namespace routing between two pod namespaces, and sockets
//! opened inside a namespace (`TestNetns::run`: the kernel crate's helper; a socket stays
//! in the namespace it was created in).

use palisade_policy::nft::{NftDataplane, NftOptions};
use palisade_testutil::TestNetns;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

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

/// Whether a TCP connection from `ns` to `to` is established within the timeout.
pub fn tcp_connects(ns: &TestNetns, to: SocketAddr) -> bool {
    ns.run(|| TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok())
}

/// Bind `[::]:port`, retrying for up to a second while it is in use. The previous probe's
/// socket on the same port is closed when its `udp_reaches` returns, but a process another
/// test thread is spawning at that instant holds a copy of every descriptor until its exec
/// (close-on-exec), and keeps the port bound that long: a one-off "Address already in use".
fn bind_udp_retrying(port: u16) -> UdpSocket {
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

/// Whether a UDP datagram from `from` reaches `to_ns` on `to`.
pub fn udp_reaches(from: &TestNetns, to_ns: &TestNetns, to: SocketAddr) -> bool {
    let rx = to_ns.run(|| bind_udp_retrying(to.port()));
    rx.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let tx = from.run(|| {
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        UdpSocket::bind(any).expect("bind udp client")
    });
    let token = format!("probe-{}", std::process::id());
    tx.send_to(token.as_bytes(), to).expect("send udp");
    let mut buf = [0u8; 64];
    loop {
        match rx.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == token.as_bytes() => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}
