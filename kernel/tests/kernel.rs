//! The kernel layer against the real kernel, inside namespaces this test creates (root;
//! `PALISADE_SKIP_KERNEL_TESTS=1` skips): a veth born in another namespace, addresses,
//! routes, neighbours, a static VXLAN overlay (link, forwarding entries, onlink routes),
//! nf_tables element batches (exact and interval elements, one command of 5000 elements) and
//! questions, a conntrack flush. `ip` and `nft` only look at the result (test tooling).

use palisade_kernel::conntrack::UdpFlows;
use palisade_kernel::nftables::{
    Batch, BatchError, Data, Element, Field, Interval, MapData, Nfnl, Verdict,
};
use palisade_kernel::rtnl::{
    Family, FdbEntry, Mac, Route, RouteMode, Rtnl, Scope, VethEnd, Vxlan, VxlanLink,
};
use palisade_kernel::{Netns, NetnsError};
use palisade_testutil::{kernel_tests_enabled, TestNetns};

#[test]
fn work_runs_inside_a_namespace_on_its_own_thread() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = TestNetns::new("k-run").unwrap();
    let ns = Netns::open(t.path()).unwrap();
    let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let inside = ns
        .run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    assert_ne!(inside, outside);
    assert_eq!(
        inside,
        std::fs::read_link(t.path()).unwrap_or(inside.clone())
    );
    // The caller never moved.
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        outside
    );
    let e = ns.run(|| panic!("inside")).unwrap_err();
    assert!(matches!(e, NetnsError::Panicked { .. }), "{e}");
    // A dedicated thread stays inside for its whole life.
    let h = ns
        .spawn(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    assert_eq!(h.join().unwrap().unwrap(), inside);
}

#[test]
fn a_routed_veth_is_built_and_read_back() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = TestNetns::new("k-node").unwrap();
    let pod = TestNetns::new("k-pod").unwrap();
    let node_ns = Netns::open(node.path()).unwrap();
    let pod_ns = Netns::open(pod.path()).unwrap();
    let mut host = Rtnl::open_in(&node_ns).unwrap();
    let mut inner = Rtnl::open_in(&pod_ns).unwrap();
    let (hmac, pmac) = (Mac::random(), Mac::random());
    let h = VethEnd {
        name: "palk0",
        mac: hmac,
        mtu: 1400,
    };
    let p = VethEnd {
        name: "eth0",
        mac: pmac,
        mtu: 1400,
    };
    host.create_veth(&h, &p, &pod_ns).unwrap();
    // Again: EEXIST, with the request named.
    let e = host.create_veth(&h, &p, &pod_ns).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
    assert!(
        e.to_string()
            .starts_with("create veth palk0 (peer eth0 in "),
        "{e}"
    );

    let hl = host.link("palk0").unwrap().unwrap();
    let pl = inner.link("eth0").unwrap().unwrap();
    assert_eq!((hl.mac, pl.mac), (Some(hmac), Some(pmac)));
    assert_eq!((hl.mtu, pl.mtu), (1400, 1400));
    assert_eq!(hl.kind.as_deref(), Some("veth"));
    assert_eq!(hl.peer_index, Some(pl.index));
    assert_eq!(pl.peer_index, Some(hl.index));
    assert!(hl.up && !pl.up);
    assert!(inner.link("nope").unwrap().is_none());
    inner.set_up(&pl).unwrap();
    assert!(inner.link("eth0").unwrap().unwrap().up);

    inner
        .add_address(&pl, "10.70.0.2/32".parse().unwrap(), false)
        .unwrap();
    inner
        .add_address(&pl, "fd70::2/128".parse().unwrap(), true)
        .unwrap();
    let addrs = inner.addresses(pl.index).unwrap();
    assert!(
        addrs.contains(&"10.70.0.2/32".parse().unwrap()),
        "{addrs:?}"
    );
    assert!(addrs.contains(&"fd70::2/128".parse().unwrap()), "{addrs:?}");
    let v6 = pod.sh("ip -6 addr show dev eth0").unwrap();
    // (The link-local address is the kernel's own, with DAD as the namespace has it.)
    assert!(
        v6.contains("inet6 fd70::2/128 scope global nodad \n"),
        "{v6}"
    );

    let gw = "169.254.1.1".parse().unwrap();
    inner.replace_permanent_neighbour(&pl, gw, hmac).unwrap();
    let n = inner.neighbours(Family::V4).unwrap();
    let n = n.iter().find(|n| n.ip == gw).unwrap();
    assert!(n.permanent, "{n:?}");
    assert_eq!((n.mac, n.index), (Some(hmac), pl.index));

    let onlink = Route {
        dst: "169.254.1.1/32".parse().unwrap(),
        gateway: None,
        oif: Some(pl.index),
        scope: Scope::Link,
        protocol: palisade_kernel::rtnl::PROTOCOL_BOOT,
        onlink: false,
    };
    inner.add_route(&onlink, RouteMode::Replace).unwrap();
    let default = Route {
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some(gw),
        oif: Some(pl.index),
        scope: Scope::Universe,
        protocol: palisade_kernel::rtnl::PROTOCOL_BOOT,
        onlink: false,
    };
    inner.add_route(&default, RouteMode::KeepExisting).unwrap();
    // Already there: kept, no error; an exclusive add says EEXIST.
    inner.add_route(&default, RouteMode::KeepExisting).unwrap();
    let e = inner.add_route(&default, RouteMode::Exclusive).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST));
    let routes = inner.routes(Some(Family::V4), None).unwrap();
    assert!(routes.contains(&onlink), "{routes:?}");
    assert!(routes.contains(&default), "{routes:?}");
    assert_eq!(
        pod.sh("ip -4 route show default").unwrap().trim(),
        "default via 169.254.1.1 dev eth0"
    );
    // Node side: a host route to the pod, then the pair taken down with an alias.
    let to_pod = Route {
        dst: "10.70.0.2/32".parse().unwrap(),
        gateway: None,
        oif: Some(hl.index),
        scope: Scope::Link,
        protocol: palisade_kernel::rtnl::PROTOCOL_BOOT,
        onlink: false,
    };
    host.add_route(&to_pod, RouteMode::Replace).unwrap();
    // The node answers from an address of its own; the pod replies through its gateway.
    node.sh("ip addr add 10.70.9.1/32 dev lo").unwrap();
    assert!(node.sh_ok("busybox ping -c1 -W2 10.70.0.2"));
    host.set_down(&hl, "palisade: test").unwrap();
    let down = host.link("palk0").unwrap().unwrap();
    assert!(!down.up);
    assert_eq!(down.alias.as_deref(), Some("palisade: test"));
    assert!(!host
        .routes(Some(Family::V4), None)
        .unwrap()
        .contains(&to_pod));
    assert!(host.links().unwrap().iter().any(|l| l.name == "palk0"));
    assert!(host.delete_link_index(down.index).unwrap());
    assert!(!host.delete_link("palk0").unwrap());
    assert!(
        inner.link("eth0").unwrap().is_none(),
        "the peer goes with the pair"
    );
}

const TABLE: &str = "palisade-ktest";

fn table(ns: &TestNetns) {
    ns.sh(&format!(
        "nft -f - <<'EOF'
table inet {TABLE} {{
  set peers4 {{ type ipv4_addr; }}
  map ports4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  chain in-0001 {{ }}
  map dispatch4 {{ type ipv4_addr : verdict; }}
  chain input {{ type filter hook input priority 0; ip daddr vmap @dispatch4; counter; }}
}}
EOF"
    ))
    .unwrap();
}

#[test]
fn element_batches_apply_atomically_and_read_back() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = TestNetns::new("k-nft").unwrap();
    table(&t);
    let ns = Netns::open(t.path()).unwrap();
    let mut nf = Nfnl::open_in(&ns).unwrap();
    assert!(nf.table_exists(TABLE).unwrap());
    assert!(!nf.table_exists("palisade-nope").unwrap());
    assert_eq!(
        nf.rule_counts(TABLE).unwrap(),
        [("input".to_string(), 2)].into()
    );

    let ip = |s: &str| Field::from(s.parse::<std::net::IpAddr>().unwrap());
    let dnat = Element::map(
        Data(vec![Field::Proto(6), Field::Port(8080)]),
        MapData::Value(Data(vec![ip("10.70.0.2"), Field::Port(80)])),
    );
    let mut b = Batch::new(TABLE);
    b.add("peers4", &[Element::set(Data::one(ip("10.70.0.9")))]);
    b.add("ports4", std::slice::from_ref(&dnat));
    b.add(
        "dispatch4",
        &[Element::map(
            Data::one(ip("10.70.0.2")),
            MapData::Verdict(Verdict::Jump("in-0001".into())),
        )],
    );
    nf.apply(&b).unwrap();
    let listed = t.sh(&format!("nft list table inet {TABLE}")).unwrap();
    assert!(listed.contains("elements = { 10.70.0.9 }"), "{listed}");
    assert!(listed.contains("tcp . 8080 : 10.70.0.2 . 80"), "{listed}");
    assert!(listed.contains("10.70.0.2 : jump in-0001"), "{listed}");
    assert_eq!(
        nf.elements(TABLE, "ports4").unwrap(),
        vec![(
            dnat.key.bytes(),
            Some(Data(vec![ip("10.70.0.2"), Field::Port(80)]).bytes())
        )]
    );

    // A batch the kernel refuses (deleting what is not there) changes nothing at all.
    let mut bad = Batch::new(TABLE);
    bad.add("peers4", &[Element::set(Data::one(ip("10.70.0.10")))]);
    bad.delete("peers4", &[Data::one(ip("10.70.0.11"))]);
    match nf.apply(&bad) {
        Err(BatchError::Refused(e)) => assert_eq!(e.errno(), Some(libc::ENOENT), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let peers = nf.elements(TABLE, "peers4").unwrap();
    assert_eq!(peers, vec![(vec![10, 70, 0, 9], None)]);

    let mut del = Batch::new(TABLE);
    del.delete("peers4", &[Data::one(ip("10.70.0.9"))]);
    nf.apply(&del).unwrap();
    assert!(nf.elements(TABLE, "peers4").unwrap().is_empty());
    let mut gone = Batch::new(TABLE);
    gone.delete_table();
    nf.apply(&gone).unwrap();
    assert!(!nf.table_exists(TABLE).unwrap());
    match nf.apply(&gone) {
        Err(BatchError::Refused(e)) => assert_eq!(e.errno(), Some(libc::ENOENT), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The elements of set or map `set` of table `table` as `nft -j list set` (or `list map`)
/// shows them, in nft's text: `a`, `a/len`, `a-b`, concatenations joined by ` . `, map values after ` : `.
fn listed_elements(ns: &TestNetns, table: &str, set: &str) -> Vec<String> {
    fn text(e: &serde_json::Value) -> String {
        use serde_json::Value as J;
        match e {
            J::String(s) => s.clone(),
            J::Number(n) => n.to_string(),
            J::Array(kv) if kv.len() == 2 => format!("{} : {}", text(&kv[0]), text(&kv[1])),
            J::Object(o) => match o.iter().next() {
                Some((k, v)) if k == "prefix" => format!("{}/{}", text(&v["addr"]), v["len"]),
                Some((k, J::Array(r))) if k == "range" => {
                    format!("{}-{}", text(&r[0]), text(&r[1]))
                }
                Some((k, J::Array(c))) if k == "concat" => {
                    c.iter().map(text).collect::<Vec<_>>().join(" . ")
                }
                Some((k, J::Object(t))) if k == "jump" || k == "goto" => {
                    format!("{k} {}", text(&t["target"]))
                }
                Some((k, v)) if k == "elem" => text(&v["val"]),
                _ => panic!("unexpected element {e}"),
            },
            _ => panic!("unexpected element {e}"),
        }
    }
    let out = ns
        .sh(&format!(
            "nft -j list set inet {table} {set} 2>/dev/null || nft -j list map inet {table} {set}"
        ))
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = doc["nftables"].as_array().unwrap();
    let obj = list
        .iter()
        .find_map(|o| o.get("set").or_else(|| o.get("map")))
        .unwrap_or_else(|| panic!("no set {set} in {out}"));
    let mut elems: Vec<String> = obj["elem"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    elems.sort();
    elems
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn interval_elements_go_by_netlink_as_nft_sends_them() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = TestNetns::new("k-nfti").unwrap();
    t.sh(&format!(
        "nft -f - <<'EOF'
table inet {TABLE} {{
  set r4 {{ type ipv4_addr; flags interval; }}
  set r6 {{ type ipv6_addr; flags interval; }}
  set ports {{ type inet_service; flags interval; }}
  chain in-0001 {{ }}
  map v4 {{ type ipv4_addr : verdict; flags interval; }}
  map c4 {{ type ipv4_addr . inet_proto . inet_service : verdict; flags interval; }}
  set c6 {{ type ipv6_addr . inet_proto . inet_service; flags interval; }}
  chain out {{ type filter hook output priority 0; ip daddr @r4 udp dport 9 counter; }}
}}
EOF"
    ))
    .unwrap();
    let ns = Netns::open(t.path()).unwrap();
    let mut nf = Nfnl::open_in(&ns).unwrap();
    let f = |s: &str| match s.parse::<std::net::IpAddr>() {
        Ok(a) => Field::from(a),
        Err(_) => Field::Port(s.parse().unwrap()),
    };
    // `a-b` or `a`, fields joined by ` . `; a bare number in a concatenation's middle is a
    // protocol.
    let iv = |s: &str| {
        let (mut first, mut last) = (Vec::new(), Vec::new());
        for (i, part) in s.split(" . ").enumerate() {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b) = if i == 1 {
                (
                    Field::Proto(a.parse().unwrap()),
                    Field::Proto(b.parse().unwrap()),
                )
            } else {
                (f(a), f(b))
            };
            first.push(a);
            last.push(b);
        }
        Interval::new(Data(first), Data(last)).unwrap()
    };
    let set = |s: &[&str]| s.iter().map(|e| Element::set(iv(e))).collect::<Vec<_>>();
    let apply = |nf: &mut Nfnl, f: &dyn Fn(&mut Batch)| {
        let mut b = Batch::new(TABLE);
        f(&mut b);
        nf.apply(&b)
    };

    // Single-field sets: ranges, prefixes, one address, and intervals up to the top of the
    // key space (no end element).
    apply(&mut nf, &|b| {
        b.add_intervals(
            "r4",
            &set(&[
                "127.0.0.2-127.0.0.9",
                "10.0.0.0-10.0.0.255",
                "10.0.1.5",
                "255.255.255.0-255.255.255.255",
            ]),
        );
        b.add_intervals(
            "r6",
            &set(&[
                "fd00::-fd00::ffff:ffff:ffff:ffff",
                "fd00:1::1-fd00:1::9",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ]),
        );
        b.add_intervals("ports", &set(&["1", "80-90", "65535"]));
    })
    .unwrap();
    assert_eq!(
        listed_elements(&t, TABLE, "r4"),
        sorted(&[
            "127.0.0.2-127.0.0.9",
            "10.0.0.0/24",
            "10.0.1.5",
            "255.255.255.0/24"
        ])
    );
    assert_eq!(
        listed_elements(&t, TABLE, "r6"),
        sorted(&[
            "fd00::/64",
            "fd00:1::1-fd00:1::9",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124"
        ])
    );
    assert_eq!(
        listed_elements(&t, TABLE, "ports"),
        sorted(&["1", "80-90", "65535"])
    );

    // Packets match the set without the end element at 0 that nft adds with the first
    // elements of an empty set: below, inside and just past the first interval.
    let send = |dst: &str| {
        t.run(|| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"x", (dst, 9)).unwrap();
        })
    };
    let counted = || {
        let out = t.sh(&format!("nft list chain inet {TABLE} out")).unwrap();
        let n = out.split("counter packets ").nth(1).unwrap();
        n.split_whitespace().next().unwrap().parse::<u64>().unwrap()
    };
    send("127.0.0.1");
    send("127.0.0.10");
    assert_eq!(counted(), 0, "outside the interval");
    send("127.0.0.2");
    send("127.0.0.5");
    send("127.0.0.9");
    assert_eq!(counted(), 3, "inside the interval");

    // Deleting intervals takes them out exactly, the open one too.
    apply(&mut nf, &|b| {
        b.delete_intervals(
            "r4",
            &[
                iv("127.0.0.2-127.0.0.9"),
                iv("255.255.255.0-255.255.255.255"),
            ],
        );
        b.delete_intervals("ports", &[iv("65535"), iv("80-90")]);
    })
    .unwrap();
    assert_eq!(
        listed_elements(&t, TABLE, "r4"),
        sorted(&["10.0.0.0/24", "10.0.1.5"])
    );
    assert_eq!(listed_elements(&t, TABLE, "ports"), sorted(&["1"]));
    send("127.0.0.5");
    assert_eq!(counted(), 3, "the interval went");

    // Part of an interval is no element: refused, and nothing changed (the addition in the
    // same batch neither).
    match apply(&mut nf, &|b| {
        b.add_intervals("r4", &set(&["10.9.0.1"]));
        b.delete_intervals("r4", &[iv("10.0.0.0-10.0.0.127")]);
    }) {
        Err(BatchError::Refused(e)) => assert_eq!(e.errno(), Some(libc::ENOENT), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An overlap is refused too.
    assert!(matches!(
        apply(&mut nf, &|b| b
            .add_intervals("r4", &set(&["10.0.0.128-10.0.1.0"]))),
        Err(BatchError::Refused(_))
    ));
    assert_eq!(
        listed_elements(&t, TABLE, "r4"),
        sorted(&["10.0.0.0/24", "10.0.1.5"])
    );

    // Interval verdict maps: adjacent intervals (one's end element and the next one's
    // start share a key) and concatenations with ranges in any field.
    let jump = MapData::Verdict(Verdict::Jump("in-0001".into()));
    let goto = MapData::Verdict(Verdict::Goto("in-0001".into()));
    apply(&mut nf, &|b| {
        b.add_intervals(
            "v4",
            &[
                Element::map(iv("10.0.0.0-10.0.0.127"), jump.clone()),
                Element::map(iv("10.0.0.128-10.0.0.255"), goto.clone()),
                Element::map(iv("10.0.1.0-10.0.1.0"), goto.clone()),
            ],
        );
        b.add_intervals(
            "c4",
            &[
                Element::map(iv("10.244.1.5 . 6 . 80-90"), goto.clone()),
                Element::map(iv("10.0.0.0-10.0.0.255 . 17 . 53"), jump.clone()),
                Element::map(iv("10.0.0.1 . 6-17 . 1-65535"), jump.clone()),
            ],
        );
        b.add_intervals(
            "c6",
            &set(&["fd00::-fd00::ff . 6 . 443", "fd00::1:5 . 17 . 0-65535"]),
        );
    })
    .unwrap();
    assert_eq!(
        listed_elements(&t, TABLE, "v4"),
        sorted(&[
            "10.0.0.0/25 : jump in-0001",
            "10.0.0.128/25 : goto in-0001",
            "10.0.1.0 : goto in-0001"
        ])
    );
    assert_eq!(
        listed_elements(&t, TABLE, "c4"),
        sorted(&[
            "10.244.1.5 . tcp . 80-90 : goto in-0001",
            "10.0.0.0/24 . udp . 53 : jump in-0001",
            "10.0.0.1 . 6-17 . 1-65535 : jump in-0001"
        ])
    );
    assert_eq!(
        listed_elements(&t, TABLE, "c6"),
        sorted(&["fd00::/120 . tcp . 443", "fd00::1:5 . udp . 0-65535"])
    );
    apply(&mut nf, &|b| {
        b.delete_intervals("v4", &[iv("10.0.0.0-10.0.0.127")]);
        b.delete_intervals("c4", &[iv("10.244.1.5 . 6 . 80-90")]);
        b.delete_intervals("c6", &[iv("fd00::1:5 . 17 . 0-65535")]);
    })
    .unwrap();
    assert_eq!(
        listed_elements(&t, TABLE, "v4"),
        sorted(&["10.0.0.128/25 : goto in-0001", "10.0.1.0 : goto in-0001"])
    );
    assert_eq!(
        listed_elements(&t, TABLE, "c4"),
        sorted(&[
            "10.0.0.0/24 . udp . 53 : jump in-0001",
            "10.0.0.1 . 6-17 . 1-65535 : jump in-0001"
        ])
    );
    assert_eq!(
        listed_elements(&t, TABLE, "c6"),
        sorted(&["fd00::/120 . tcp . 443"])
    );
}

#[test]
fn udp_flows_to_a_port_are_forgotten() {
    if !kernel_tests_enabled() {
        return;
    }
    let a = TestNetns::new("k-ct-a").unwrap();
    let b = TestNetns::new("k-ct-b").unwrap();
    a.veth_to("cta", &b, "ctb").unwrap();
    a.sh("ip addr add 10.71.0.1/24 dev cta").unwrap();
    b.sh("ip addr add 10.71.0.2/24 dev ctb").unwrap();
    // Tracking starts with a rule that uses conntrack in the receiving namespace.
    b.sh("nft add table inet ktrack && nft add chain inet ktrack in '{ type filter hook input priority 0; ct state new counter; }'")
        .unwrap();
    let send = |port: u16| {
        a.run(|| {
            let s = std::net::UdpSocket::bind("10.71.0.1:0").unwrap();
            s.send_to(b"x", ("10.71.0.2", port)).unwrap();
        })
    };
    send(5353);
    send(5454);
    // b makes its conntrack entries when it receives the datagrams, in softirq, which a
    // loaded machine defers to ksoftirqd: wait until both are there before forgetting one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let flows = b.sh("conntrack -L -p udp 2>/dev/null").unwrap();
        if flows.contains("dport=5353") && flows.contains("dport=5454") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the two flows never appeared in conntrack: {flows}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ns = Netns::open(b.path()).unwrap();
    let mut nf = Nfnl::open_in(&ns).unwrap();
    let flows = |port| UdpFlows {
        ipv6: false,
        port,
        dst: None,
    };
    let deleted = nf.forget_udp_flows(&[flows(5353)]).unwrap();
    assert_eq!(deleted, 1);
    let left = b.sh("conntrack -L -p udp 2>/dev/null").unwrap();
    assert!(!left.contains("dport=5353"), "{left}");
    assert!(left.contains("dport=5454"), "{left}");
    assert_eq!(nf.forget_udp_flows(&[flows(5353)]).unwrap(), 0);
}

#[test]
fn nflog_delivers_logged_packets_with_prefix_and_payload() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = TestNetns::new("k-nflog").unwrap();
    t.sh("ip addr add 10.72.0.1/32 dev lo && nft -f - <<'EOF'
table inet ktestlog {
  chain out { type filter hook output priority 0; udp dport 9999 log prefix \"ktest deny\" group 7; }
}
EOF")
        .unwrap();
    let ns = Netns::open(t.path()).unwrap();
    let mut log = ns
        .run(|| palisade_kernel::nflog::Nflog::bind(7, 128))
        .unwrap()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // The reader blocks: it runs on a thread of its own, and the test waits at most 30 s (a
    // loaded machine; it takes milliseconds otherwise).
    std::thread::spawn(move || {
        let _ = tx.send(log.recv());
    });
    t.run(|| {
        let s = std::net::UdpSocket::bind("10.72.0.1:0").unwrap();
        s.send_to(b"hello", "10.72.0.1:9999").unwrap();
    });
    let packets = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("no NFLOG message within 30 s")
        .unwrap();
    assert_eq!(packets.len(), 1, "{packets:?}");
    let p = &packets[0];
    assert_eq!(p.prefix, "ktest deny");
    assert!(p.out_ifindex.is_some(), "{p:?}");
    // IPv4 header: version 4, protocol UDP, destination 10.72.0.1; then the UDP port.
    assert_eq!(p.payload[0] >> 4, 4);
    assert_eq!(p.payload[9], 17);
    assert_eq!(&p.payload[16..20], &[10, 72, 0, 1]);
    assert_eq!(&p.payload[22..24], &9999u16.to_be_bytes());
}

/// Two namespaces joined by a veth (the underlay), each with a VXLAN link that has no group
/// and no learning: forwarding entries, permanent neighbours and onlink routes made through
/// the crate carry a ping from one inner address to the other, and read back as made.
#[test]
fn a_static_vxlan_overlay_is_built_and_read_back() {
    if !kernel_tests_enabled() {
        return;
    }
    let a = TestNetns::new("k-vx-a").unwrap();
    let b = TestNetns::new("k-vx-b").unwrap();
    a.veth_to("ua", &b, "ub").unwrap();
    a.sh("ip addr add 192.0.2.1/24 dev ua && ip -6 addr add 2001:db8::1/64 dev ua nodad")
        .unwrap();
    b.sh("ip addr add 192.0.2.2/24 dev ub && ip -6 addr add 2001:db8::2/64 dev ub nodad")
        .unwrap();
    let mac_a = Mac([0x02, 0x50, 192, 0, 2, 1]);
    let mac_b = Mac([0x02, 0x50, 192, 0, 2, 2]);
    let ns_a = Netns::open(a.path()).unwrap();
    let ns_b = Netns::open(b.path()).unwrap();
    for (underlay, name) in [("v4", "kvx4"), ("v6", "kvx6")] {
        let (ua, ub): (std::net::IpAddr, std::net::IpAddr) = if underlay == "v4" {
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap())
        } else {
            (
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            )
        };
        let mut links = Vec::new();
        for (ns, local, mac, inner, peer_mac, peer_local, peer_inner) in [
            (&ns_a, ua, mac_a, "10.80.1.0", mac_b, ub, "10.80.2.0"),
            (&ns_b, ub, mac_b, "10.80.2.0", mac_a, ua, "10.80.1.0"),
        ] {
            let mut rtnl = Rtnl::open_in(ns).unwrap();
            let spec = VxlanLink {
                name: name.into(),
                mac,
                mtu: 1400,
                vxlan: Vxlan {
                    vni: 4242,
                    port: 4789,
                    local: Some(local),
                    learning: false,
                },
            };
            rtnl.create_vxlan(&spec).unwrap();
            let e = rtnl.create_vxlan(&spec).unwrap_err();
            assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
            assert!(e.to_string().starts_with(&format!(
                "create vxlan {name} (id 4242, dstport 4789, local {local})"
            )));
            let link = rtnl.link(name).unwrap().unwrap();
            assert_eq!(link.kind.as_deref(), Some("vxlan"));
            assert_eq!(link.vxlan.as_ref(), Some(&spec.vxlan));
            assert_eq!((link.mac, link.mtu, link.up), (Some(mac), 1400, true));
            rtnl.set_mtu(&link, 1350).unwrap();
            let link = rtnl.link(name).unwrap().unwrap();
            assert_eq!(link.mtu, 1350);

            let inner: std::net::IpAddr = inner.parse().unwrap();
            let peer_inner: std::net::IpAddr = peer_inner.parse().unwrap();
            rtnl.add_address(&link, ipnet::IpNet::from(inner), false)
                .unwrap();
            let entry = FdbEntry {
                mac: peer_mac,
                dst: peer_local,
            };
            rtnl.replace_fdb(&link, &entry).unwrap();
            rtnl.replace_fdb(&link, &entry).unwrap();
            assert_eq!(rtnl.fdb(&link).unwrap(), vec![entry]);
            rtnl.replace_permanent_neighbour(&link, peer_inner, peer_mac)
                .unwrap();
            let n = rtnl.neighbours_on(&link, Family::V4).unwrap();
            assert_eq!(n.len(), 1, "{n:?}");
            assert!(n[0].permanent && n[0].mac == Some(peer_mac) && n[0].ip == peer_inner);
            let net = ipnet::IpNet::new(peer_inner, 24).unwrap();
            let route = Route::onlink_via(net, peer_inner, link.index, 180);
            rtnl.add_route(&route, RouteMode::Exclusive).unwrap();
            let ours = rtnl.routes(Some(Family::V4), Some(180)).unwrap();
            assert_eq!(ours, vec![route.clone()]);
            links.push((ns, link, entry, peer_inner, route));
        }
        let listed = a.sh(&format!("bridge fdb show dev {name}")).unwrap();
        assert!(
            listed.contains(&format!("{mac_b} dst {ub} self permanent")),
            "{listed}"
        );
        assert!(
            a.sh(&format!("ip route show proto 180 dev {name}"))
                .unwrap()
                .contains("10.80.2.0/24 via 10.80.2.0 onlink"),
            "onlink as ip reads it"
        );
        assert!(
            a.sh_ok("busybox ping -c1 -W2 -I 10.80.1.0 10.80.2.0"),
            "ping over the {underlay} underlay"
        );
        // Taken apart again: the route, the neighbour, the entry.
        for (ns, link, entry, peer_inner, route) in links {
            let mut rtnl = Rtnl::open_in(ns).unwrap();
            assert!(rtnl.delete_route(&route).unwrap());
            assert!(rtnl.delete_neighbour(&link, peer_inner).unwrap());
            assert!(!rtnl.delete_neighbour(&link, peer_inner).unwrap());
            assert!(rtnl.delete_fdb(&link, &entry).unwrap());
            assert!(!rtnl.delete_fdb(&link, &entry).unwrap());
            assert!(rtnl.fdb(&link).unwrap().is_empty());
            let inner = rtnl.addresses(link.index).unwrap();
            assert_eq!(inner.len(), 1, "{inner:?}");
            assert!(rtnl.delete_address(&link, inner[0]).unwrap());
            assert!(!rtnl.delete_address(&link, inner[0]).unwrap());
            assert!(rtnl.delete_link_index(link.index).unwrap());
        }
        assert!(!a.sh_ok("busybox ping -c1 -W1 10.80.2.0"));
    }
}

/// One batch adding 5000 elements of a concatenated v6 interval verdict map whose verdicts
/// name chains of the longest name the kernel takes: far more than one netlink attribute
/// can hold (about 1.7 MB of elements), so the batch carries many messages, and the kernel
/// holds exactly the elements afterwards; one batch deleting them all leaves none.
#[test]
fn a_large_element_command_goes_as_many_messages_in_one_batch() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = TestNetns::new("k-nftl").unwrap();
    // 255 bytes: NFT_CHAIN_MAXNAMELEN with its NUL.
    let chains: Vec<String> = (0..4)
        .map(|i| format!("in-{i}-{}", "x".repeat(250)))
        .collect();
    let defs: String = chains
        .iter()
        .map(|c| format!("  chain {c} {{ }}\n"))
        .collect();
    t.sh(&format!(
        "nft -f - <<'EOF'
table inet {TABLE} {{
{defs}  map big6 {{ type ipv6_addr . inet_proto . inet_service : verdict; flags interval; }}
}}
EOF"
    ))
    .unwrap();
    let ns = Netns::open(t.path()).unwrap();
    let mut nf = Nfnl::open_in(&ns).unwrap();
    let addr = |i: u32| std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i) << 8);
    // Even: one address, a port range. Odd: a /120, one port. Jumps and gotos to all four.
    let (mut elements, mut expected) = (Vec::new(), Vec::new());
    for i in 0..5000u32 {
        let chain = chains[i as usize % 4].clone();
        let (verdict, text) = if i % 3 == 0 {
            (Verdict::Goto(chain.clone()), format!("goto {chain}"))
        } else {
            (Verdict::Jump(chain.clone()), format!("jump {chain}"))
        };
        let port = 1000 + (i % 50) as u16;
        let (first, last, key) = if i % 2 == 0 {
            (
                vec![Field::Ipv6(addr(i)), Field::Proto(6), Field::Port(port)],
                vec![
                    Field::Ipv6(addr(i)),
                    Field::Proto(6),
                    Field::Port(port + 100),
                ],
                format!("{} . tcp . {port}-{}", addr(i), port + 100),
            )
        } else {
            let top = std::net::Ipv6Addr::from(u128::from(addr(i)) | 0xff);
            (
                vec![Field::Ipv6(addr(i)), Field::Proto(17), Field::Port(port)],
                vec![Field::Ipv6(top), Field::Proto(17), Field::Port(port)],
                format!("{}/120 . udp . {port}", addr(i)),
            )
        };
        let iv = Interval::new(Data(first), Data(last)).unwrap();
        elements.push(Element::map(iv, MapData::Verdict(verdict)));
        expected.push(format!("{key} : {text}"));
    }
    expected.sort();

    let mut add = Batch::new(TABLE);
    add.add_intervals("big6", &elements);
    assert!(
        add.commands().len() > 40,
        "{} messages",
        add.commands().len()
    );
    nf.apply(&add).unwrap();
    assert_eq!(listed_elements(&t, TABLE, "big6"), expected);

    let mut del = Batch::new(TABLE);
    let keys: Vec<Interval> = elements.iter().map(|e| e.key.clone()).collect();
    del.delete_intervals("big6", &keys);
    nf.apply(&del).unwrap();
    assert_eq!(listed_elements(&t, TABLE, "big6"), Vec::<String>::new());
}
