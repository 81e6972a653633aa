//! The node routes reconciler with the VXLAN overlay against the real kernel (root, in test
//! namespaces only), on the three nodes of `overlay_support` (two subnets, a router that
//! knows no pod CIDR).

// `pub`: the support modules are shared by several test binaries, each using a part of them.
pub mod nft_support;
pub mod overlay_support;

use nft_support::netns::{
    attempts, bind_udp_retrying, probe_payload, recv_payload, rst_on_close, tcp_blocked, tcp_open,
    udp_source, Expect,
};
use overlay_support::*;
use palisade_policy::agent::routes::overlay::OverlayMode;
use palisade_testutil::{kernel_tests_enabled, TestNetns};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// `ip route get` of `dst` on a node, as text.
fn path(n: &Node, dst: IpAddr) -> String {
    n.ns.sh(&format!("ip route get {dst}")).unwrap()
}

/// Every pod pair over both families: TCP connects (to the listener every pod has on 7000), and the receiver sees the sender's own
/// address (nothing in between rewrites it).
fn assert_all_reach(s: &Subnets, what: &str) {
    for a in &s.nodes {
        for b in s.nodes.iter().filter(|b| b.name != a.name) {
            for (src, dst) in [(a.pod4, b.pod4), (a.pod6, b.pod6)] {
                assert!(
                    tcp_open(&a.pod, at(dst, 7000)),
                    "{what}: {} -> {} ({dst})",
                    a.name,
                    b.name
                );
                assert_eq!(
                    udp_source(&a.pod, &b.pod, at(dst, 5353), None),
                    Some(src),
                    "{what}: {} -> {} keeps its source",
                    a.name,
                    b.name
                );
            }
        }
    }
}

#[test]
fn each_mode_reaches_what_it_can_and_switches_in_place() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = Subnets::new("ovl");
    let objects = s.dual_stack();
    let (n1, n2, n3) = (s.node(1), s.node(2), s.node(3));

    // never: today's routes. Inside the subnet they work; the router knows no pod CIDR, so
    // the node across it is unreachable, and the kernel's refusal is reported.
    let r = s.reconcile(OverlayMode::Never, &objects);
    let errs = errors(&r);
    assert!(
        errs.len() == 3
            && errs[0].contains("add route 10.244.2.0/24 via 198.51.100.2 proto 180")
            && errs[0].contains("Nexthop has invalid gateway"),
        "{errs:#?}"
    );
    assert!(tcp_open(&n1.pod, at(n3.pod4, 7000)));
    assert!(
        tcp_open(&n1.pod, at(n3.pod6, 7000)),
        "{}",
        diagnostics(&[n1, n3])
    );
    assert!(tcp_blocked(&n1.pod, at(n2.pod4, 7000)));
    assert!(tcp_blocked(&n1.pod, at(n2.pod6, 7000)));
    assert!(!n1.ns.sh_ok("ip link show vxlan4.palisade"));

    // cross-subnet: n1 and n3 stay direct, n2 goes over the overlay.
    let r = s.reconcile(OverlayMode::CrossSubnet, &objects);
    assert!(errors(&r).is_empty(), "{:#?}", errors(&r));
    let p1 = r[0].as_ref().unwrap();
    assert_eq!((p1.routes, p1.overlay_routes), (4, 2), "{p1:?}");
    assert!(path(n1, n3.pod4).contains("via 192.0.2.3 dev eth0"));
    assert!(path(n1, n3.pod6).contains("via 2001:db8::3 dev eth0"));
    assert!(path(n1, n2.pod4).contains("via 10.244.2.0 dev vxlan4.palisade"));
    assert!(path(n1, n2.pod6).contains("via fd00:10:244:2:: dev vxlan6.palisade"));
    assert_all_reach(&s, "cross-subnet");

    // always: everything over the overlay.
    let r = s.reconcile(OverlayMode::Always, &objects);
    assert!(errors(&r).is_empty(), "{:#?}", errors(&r));
    assert!(path(n1, n3.pod4).contains("dev vxlan4.palisade"));
    assert!(path(n3, n1.pod6).contains("dev vxlan6.palisade"));
    let before = n1
        .ns
        .sh("ip -s link show vxlan4.palisade | awk '/TX:/{getline; print $2}'")
        .unwrap();
    assert_all_reach(&s, "always");
    let after = n1
        .ns
        .sh("ip -s link show vxlan4.palisade | awk '/TX:/{getline; print $2}'")
        .unwrap();
    assert!(
        after.trim().parse::<u64>().unwrap() > before.trim().parse::<u64>().unwrap(),
        "the probes went through the VXLAN link: {before} -> {after}"
    );
    let fdb = n1.ns.sh("bridge fdb show dev vxlan4.palisade").unwrap();
    assert!(
        fdb.contains("02:50:c6:33:64:02 dst 198.51.100.2 self permanent"),
        "{fdb}"
    );
    assert!(
        fdb.contains("02:50:c0:00:02:03 dst 192.0.2.3 self permanent"),
        "{fdb}"
    );
    assert_eq!(
        fdb.lines().count(),
        2,
        "nothing else, no flooding entry: {fdb}"
    );

    // A node leaves: its route and entries go, the others stay.
    let mut fewer = objects.clone();
    fewer.remove("n3");
    let r = s.reconcile(OverlayMode::Always, &fewer);
    assert!(r[0].is_ok(), "{:?}", r[0]);
    let fdb = n1.ns.sh("bridge fdb show dev vxlan4.palisade").unwrap();
    assert_eq!(fdb.lines().count(), 1, "{fdb}");
    assert!(!n1
        .ns
        .sh("ip neigh show dev vxlan4.palisade")
        .unwrap()
        .contains("10.244.3.0"));
    assert!(
        !n1.ns.sh_ok(&format!("ip route get {}", n3.pod4)),
        "no route left"
    );
    assert!(tcp_open(&n1.pod, at(n2.pod4, 7000)));

    // Back to never: the VXLAN links and everything on them are gone.
    s.reconcile(OverlayMode::Never, &objects);
    for n in &s.nodes {
        let links = n.ns.sh("ip -br link").unwrap();
        assert!(!links.contains("vxlan"), "{links}");
    }
    assert!(tcp_open(&n1.pod, at(n3.pod4, 7000)));
    assert!(tcp_blocked(&n1.pod, at(n2.pod4, 7000)));
}

/// What a node's overlay looks like, as `ip` and `bridge` print it.
fn overlay_dump(n: &Node) -> String {
    n.ns.sh("ip -d link show type vxlan; ip addr show type vxlan; \
         bridge fdb show dev vxlan4.palisade; bridge fdb show dev vxlan6.palisade; \
         ip neigh show dev vxlan4.palisade; ip -6 neigh show dev vxlan6.palisade; \
         ip route show proto 180; ip -6 route show proto 180")
        .unwrap()
}

#[test]
fn a_restarted_reconciler_adopts_everything_without_a_blip() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = Subnets::new("ovr");
    let objects = s.dual_stack();
    let r = s.reconcile(OverlayMode::CrossSubnet, &objects);
    assert!(errors(&r).is_empty(), "{:#?}", errors(&r));
    let (n1, n2) = (s.node(1), s.node(2));

    // A TCP connection from pod 1 to pod 2, over the overlay, open across the restart.
    let listener = n2.pod.run(|| TcpListener::bind(("::", 7100)).unwrap());
    let mut client = n1
        .pod
        .run(|| TcpStream::connect_timeout(&at(n2.pod4, 7100), Duration::from_secs(2)).unwrap());
    let (mut server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let roundtrip = |client: &mut TcpStream, server: &mut TcpStream, token: &[u8]| {
        client.write_all(token).unwrap();
        let mut buf = vec![0; token.len()];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(buf, token);
    };
    roundtrip(&mut client, &mut server, b"before");

    let before: Vec<String> = s.nodes.iter().map(overlay_dump).collect();
    assert!(before[0].contains("vxlan4.palisade") && before[0].contains("onlink"));
    // Every change of links, addresses, routes and neighbours (forwarding entries included)
    // in node 1 while a new reconciler, knowing nothing, converges on the same Nodes.
    // In a directory removed when dropped: also when an assertion below fails.
    let log_dir = palisade_testutil::TempDir::new("ovr-monitor");
    let log = log_dir.path().join("monitor.log");
    let monitor = n1
        .ns
        .command("sh")
        .arg("-c")
        .arg(format!(
            "exec ip monitor link address route neigh > {}",
            log.display()
        ))
        .spawn()
        .unwrap();
    // `logged` waits until a line shows up in the monitor's log; its text then.
    let logged = |line: &dyn Fn(&str) -> bool, within: Duration| -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(line) {
                return Some(text);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Markers: addresses of a documentation range on the node's loopback, which `ours`
    // ignores. The monitor listens once it reports a change made after it started: add and
    // remove one until it does (a change made before it subscribed is never reported).
    let started = std::time::Instant::now();
    while logged(&|l| l.contains("203.0.113.77"), Duration::from_millis(200)).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ip monitor reported no change in 30 s"
        );
        n1.ns
            .sh("ip addr add 203.0.113.77/32 dev lo && ip addr del 203.0.113.77/32 dev lo")
            .unwrap();
    }
    let again = s.reconcile(OverlayMode::CrossSubnet, &objects);
    assert!(errors(&again).is_empty(), "{:#?}", errors(&again));
    assert_eq!(
        again[0].as_ref().unwrap(),
        r[0].as_ref().unwrap(),
        "the same state reported"
    );
    // Netlink hands one socket its events in order: once a change made after the reconciler
    // returned is in the log, so is every change the reconciler made.
    n1.ns.sh("ip addr add 203.0.113.78/32 dev lo").unwrap();
    let quiet = logged(&|l| l.contains("203.0.113.78"), Duration::from_secs(30))
        .expect("ip monitor did not report the marker within 30 s");
    let ours = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                l.contains("palisade")
                    || l.contains("proto 180")
                    || l.contains("10.244.")
                    || l.contains("fd00:10:244:")
            })
            // The kernel's neighbour cache changes state on its own timers (a pod's entry
            // going STALE): not the reconciler's doing, whose neighbours are permanent.
            .filter(|l| {
                l.contains("PERMANENT")
                    || ![
                        "REACHABLE",
                        "STALE",
                        "DELAY",
                        "PROBE",
                        "FAILED",
                        "INCOMPLETE",
                    ]
                    .iter()
                    .any(|state| l.split_whitespace().any(|w| w == *state))
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        ours(&quiet),
        Vec::<String>::new(),
        "nothing of ours changed: {quiet}"
    );
    let after: Vec<String> = s.nodes.iter().map(overlay_dump).collect();
    assert_eq!(before, after);
    roundtrip(&mut client, &mut server, b"after the restart");

    // The monitor is not blind: a node that leaves shows up in it at once.
    let mut fewer = objects.clone();
    fewer.remove("n2");
    s.reconcile(OverlayMode::CrossSubnet, &fewer);
    let changed = logged(
        &|l| !ours(l).is_empty() && l.starts_with("Deleted") && l.contains("10.244.2.0"),
        Duration::from_secs(30),
    );
    let mut monitor = monitor;
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(
        changed.is_some(),
        "the route of the node that left was not reported within 30 s"
    );
    rst_on_close(&client);
}

#[test]
fn a_single_family_underlay_carries_both_pod_families() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = Subnets::new("ovf");
    // IPv4-only Nodes: IPv6 pods over IPv4; then IPv6-only Nodes: IPv4 pods over IPv6.
    for (objects, link, other) in [
        (
            s.objects(|n| vec![n.ipv4]),
            "vxlan4.palisade",
            "vxlan6.palisade",
        ),
        (
            s.objects(|n| vec![n.ipv6]),
            "vxlan6.palisade",
            "vxlan4.palisade",
        ),
    ] {
        let r = s.reconcile(OverlayMode::Always, &objects);
        assert!(errors(&r).is_empty(), "{:#?}", errors(&r));
        let n1 = s.node(1);
        assert!(
            !n1.ns.sh_ok(&format!("ip link show {other}")),
            "only {link}"
        );
        for n in [s.node(2), s.node(3)] {
            assert!(path(n1, n.pod4).contains(link), "{}", path(n1, n.pod4));
            assert!(path(n1, n.pod6).contains(link), "{}", path(n1, n.pod6));
        }
        assert_all_reach(&s, link);
        let mtu = s.set_pod_mtus(OverlayMode::Always, &objects);
        assert_eq!(
            mtu,
            if link == "vxlan4.palisade" {
                1450
            } else {
                1430
            }
        );
    }
}

/// Send `len` bytes over TCP from `from` to `to` and return what arrived (checked byte for
/// byte).
fn tcp_transfer(from: &TestNetns, to_ns: &TestNetns, to: SocketAddr, len: usize) -> usize {
    let listener = to_ns.run(|| TcpListener::bind(("::", to.port())).unwrap());
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(*b, ((got + k) % 251) as u8, "byte {}", got + k);
                    }
                    got += n;
                }
                Err(e) => panic!("after {got} bytes: {e}"),
            }
        }
    });
    let mut c = from.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap());
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
    c.write_all(&data).unwrap();
    drop(c);
    reader.join().unwrap()
}

/// A UDP datagram of `payload` bytes from `from` to `to`: `Err` with the send's error, or
/// whether it arrived whole. `dont_fragment` sets IP(V6)_PMTUDISC_DO on the sender. Sent
/// again until `OPEN_DEADLINE` if `expect` is open.
fn udp_datagram(
    from: &TestNetns,
    to_ns: &TestNetns,
    to: SocketAddr,
    payload: usize,
    dont_fragment: bool,
    expect: Expect,
) -> std::io::Result<bool> {
    let rx = to_ns.run(|| bind_udp_retrying(to.port()));
    let tx =
        from.run(|| UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap());
    if dont_fragment {
        palisade_testutil::set_dont_fragment(&tx, to.is_ipv6());
    }
    let data = probe_payload(payload);
    assert_eq!(
        data.len(),
        payload,
        "a payload shorter than the probe's token"
    );
    let what = format!("{payload} bytes over UDP {} -> {to}", from.name());
    let arrived = attempts(expect, &what, |timeout| {
        tx.send_to(&data, to)?;
        recv_payload(&rx, &data, timeout)
    });
    match arrived {
        Ok(_) => Ok(true),
        // `recv_payload`'s "nothing arrived"; anything else is the send's error.
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(false),
        Err(e) => Err(e),
    }
}

#[test]
fn pods_with_the_overlay_mtu_need_no_fragmentation_and_pmtu_is_the_kernels() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = Subnets::new("ovm");
    let objects = s.dual_stack();
    let r = s.reconcile(OverlayMode::Always, &objects);
    assert!(errors(&r).is_empty(), "{:#?}", errors(&r));
    // Both underlays in use: the IPv6 one's 70 bytes decide.
    let mtu = s.set_pod_mtus(OverlayMode::Always, &objects);
    assert_eq!(mtu, 1430);
    let (n1, n2) = (s.node(1), s.node(2));
    let vx = n1.ns.sh("ip -br link show type vxlan").unwrap();
    assert!(
        vx.contains("vxlan4.palisade") && vx.contains("vxlan6.palisade"),
        "{vx}"
    );
    assert!(n1
        .ns
        .sh("ip link show vxlan4.palisade")
        .unwrap()
        .contains("mtu 1450"));
    assert!(n1
        .ns
        .sh("ip link show vxlan6.palisade")
        .unwrap()
        .contains("mtu 1430"));

    for (dst, header) in [(n2.pod4, 28usize), (n2.pod6, 48)] {
        // A large transfer: full-size segments fit the overlay.
        let sent = 32 << 20;
        assert_eq!(
            tcp_transfer(&n1.pod, &n2.pod, at(dst, 7200), sent),
            sent,
            "{dst}"
        );
        let fits = mtu as usize - header;
        // The largest datagram that fits the pod's MTU arrives in one packet, with DF.
        assert!(udp_datagram(&n1.pod, &n2.pod, at(dst, 7300), fits, true, Expect::Open).unwrap());
        // One byte more: the pod's kernel fragments it (the default) and it arrives whole...
        assert!(udp_datagram(
            &n1.pod,
            &n2.pod,
            at(dst, 7300),
            fits + 1,
            false,
            Expect::Open
        )
        .unwrap());
        // ...or, with fragmentation forbidden, refuses to send it.
        let e = udp_datagram(
            &n1.pod,
            &n2.pod,
            at(dst, 7300),
            fits + 1,
            true,
            Expect::Blocked,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{dst}: {e}");
    }

    // A pod that kept the underlay's MTU (created before the overlay was turned on): TCP
    // still works (the node answers too-big packets with ICMP and the sender lowers its path
    // MTU), and a full-size datagram that may not be fragmented is dropped at the node.
    n1.ns.sh("ip link set pal1 mtu 1500").unwrap();
    n1.pod.sh("ip link set eth0 mtu 1500").unwrap();
    for (dst, header) in [(n2.pod4, 28usize), (n2.pod6, 48)] {
        let sent = 4 << 20;
        assert_eq!(
            tcp_transfer(&n1.pod, &n2.pod, at(dst, 7201), sent),
            sent,
            "{dst}"
        );
        let full = 1500 - header;
        let first = udp_datagram(&n1.pod, &n2.pod, at(dst, 7301), full, true, Expect::Blocked);
        assert!(
            matches!(first, Ok(false))
                || first
                    .as_ref()
                    .is_err_and(|e| e.raw_os_error() == Some(libc::EMSGSIZE)),
            "{dst}: {first:?}"
        );
    }
}

/// What `install-cni` writes into the conflist as the pods' MTU, measured in a node.
#[test]
fn the_pod_mtu_is_measured_on_the_node_s_own_link() {
    if !kernel_tests_enabled() {
        return;
    }
    let s = Subnets::new("ovu");
    let n1 = s.node(1);
    n1.ns.sh("ip link set eth0 mtu 9000").unwrap();
    let measure = |mode: OverlayMode, ips: Vec<IpAddr>| {
        n1.ns
            .run(|| palisade_policy::install::pod_mtu_here(mode, &ips))
    };
    let both = vec![n1.ipv4, n1.ipv6];
    assert_eq!(measure(OverlayMode::Never, both.clone()).unwrap(), 9000);
    assert_eq!(
        measure(OverlayMode::Always, both.clone()).unwrap(),
        9000 - 70
    );
    assert_eq!(
        measure(OverlayMode::CrossSubnet, vec![n1.ipv4]).unwrap(),
        9000 - 50
    );
    let e = measure(OverlayMode::Always, vec![ip("203.0.113.9")]).unwrap_err();
    assert!(
        format!("{e:#}").contains("none of the node's InternalIPs (203.0.113.9)"),
        "{e:#}"
    );
}
