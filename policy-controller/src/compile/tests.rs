//! Compiler unit tests: builders in the style of `mk_pod`/`mk_policy`, golden structure tests
//! for a small cluster, and incremental == from-scratch after every kind of change.

use super::*;
use crate::eval::interp::{check_ruleset, classify, Packet};
use crate::model::api::{
    IntOrString, IpBlock, LabelSelector, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ObjectMeta,
};
use crate::model::policy::{Direction, RuleRef};
use crate::model::{NamedPort, Protocol};
use crate::ruleset::Statement;
use crate::ruleset::{CtState, Hook, RuleVerdict, Value, Verdict};
use std::collections::BTreeSet;
use std::fmt::Write;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mk_pod(ns: &str, name: &str, node: &str, ips: &[&str], l: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        key: ObjectKey::new(ns, name),
        node: Some(node.into()),
        labels: labels(l),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        host_network: false,
        terminating: false,
        named_ports: vec![],
    }
}

fn sel(l: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(l)),
        match_expressions: None,
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: None,
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

fn named(name: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: None,
        port: Some(IntOrString::String(name.into())),
        end_port: None,
    }
}

fn mk_policy(ns: &str, name: &str, spec: NetworkPolicySpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        },
        spec,
        ..Default::default()
    }
}

fn opts(node: &str) -> CompileOptions {
    CompileOptions {
        node: node.into(),
        fail_closed_new_pods: true,
        nflog_group: Some(5),
        masquerade: crate::compile::MasqueradeOptions::enabled(),
    }
}

/// A small cluster: x/web (n1) only accepts TCP 80 and its named port `http` from app=db pods
/// of its namespace; x/db on n1, x/db2 on n2; y/other on n2 egress-isolated to 10.0.0.0/8
/// except 10.0.9.0/24, on UDP 53..60.
fn small_cluster() -> ClusterState {
    let mut s = ClusterState::default();
    s.upsert_namespace("x", labels(&[("team", "a")]));
    s.upsert_namespace("y", labels(&[]));
    let mut web = mk_pod(
        "x",
        "web",
        "n1",
        &["10.0.1.2", "fd00:1::2"],
        &[("app", "web")],
    );
    web.named_ports.push(NamedPort {
        name: "http".into(),
        port: 8080,
        protocol: Protocol::Tcp,
    });
    for p in [
        web,
        mk_pod("x", "db", "n1", &["10.0.1.3"], &[("app", "db")]),
        mk_pod(
            "x",
            "db2",
            "n2",
            &["10.0.2.3", "fd00:2::3"],
            &[("app", "db")],
        ),
        mk_pod("y", "other", "n2", &["10.0.2.4"], &[("app", "db")]),
    ] {
        s.pods.insert(p.key.clone(), p);
    }
    s.network_policies.insert(
        ObjectKey::new("x", "web-from-db"),
        mk_policy(
            "x",
            "web-from-db",
            NetworkPolicySpec {
                pod_selector: sel(&[("app", "web")]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(sel(&[("app", "db")])),
                        ..Default::default()
                    }]),
                    ports: Some(vec![tcp(80), named("http")]),
                }]),
                ..Default::default()
            },
        ),
    );
    s.network_policies.insert(
        ObjectKey::new("y", "dns-out"),
        mk_policy(
            "y",
            "dns-out",
            NetworkPolicySpec {
                pod_selector: LabelSelector::default(),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        ip_block: Some(IpBlock {
                            cidr: "10.0.0.0/8".into(),
                            except: Some(vec!["10.0.9.0/24".into()]),
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(vec![NetworkPolicyPort {
                        protocol: Some("UDP".into()),
                        port: Some(IntOrString::Int(53)),
                        end_port: Some(60),
                    }]),
                }]),
                ..Default::default()
            },
        ),
    );
    s
}

/// A compact, canonical text form of a ruleset, for golden comparisons.
fn dump(r: &Ruleset) -> String {
    let mut out = String::new();
    for (name, c) in &r.chains {
        match &c.base {
            Some(b) => writeln!(
                out,
                "chain {name} {:?} {} {:?}",
                b.hook, b.priority, b.policy
            ),
            None => writeln!(out, "chain {name}"),
        }
        .unwrap();
        for rule in &c.rules {
            let m: Vec<String> = rule.matches.iter().map(|m| format!("{m:?}")).collect();
            let s: Vec<String> = rule.statements.iter().map(|s| format!("{s:?}")).collect();
            writeln!(
                out,
                "  {} {} -> {:?} # {}",
                m.join(" "),
                s.join(" "),
                rule.verdict,
                rule.comment.as_deref().unwrap_or("")
            )
            .unwrap();
        }
    }
    for (name, s) in &r.sets {
        writeln!(
            out,
            "set {name} {:?}{} # {}",
            s.key,
            if s.interval { " interval" } else { "" },
            s.comment.as_deref().unwrap_or("")
        )
        .unwrap();
        for e in &s.elements {
            writeln!(out, "  {e:?}").unwrap();
        }
    }
    for (name, m) in &r.maps {
        writeln!(out, "map {name} {:?}", m.key).unwrap();
        for (k, v) in &m.elements {
            writeln!(out, "  {k:?} : {v:?}").unwrap();
        }
    }
    out
}

fn packet(src: &str, dst: &str, proto: Protocol, dport: u16, iif: &str, oif: &str) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: proto.number(),
        dport,
        iifname: iif.into(),
        oifname: oif.into(),
        ct_state: CtState::New,
    }
}

/// The class chain the exact peer map sends `addr` to.
fn class_of(r: &Ruleset, direction: Direction, addr: &str) -> String {
    let ip: std::net::IpAddr = addr.parse().unwrap();
    let map = format!(
        "{}-peer{}",
        first_stage(direction),
        if ip.is_ipv4() { 4 } else { 6 }
    );
    match &r.maps[&map].elements[&vec![Value::Addr(ip)]] {
        Verdict::Goto(c) => c.clone(),
        other => panic!("{other:?}"),
    }
}

fn web_from_db_rule() -> RuleRef {
    RuleRef {
        policy: PolicyRef::network(&ObjectKey::new("x", "web-from-db")),
        direction: Direction::Ingress,
        index: 0,
    }
}

#[test]
fn golden_node_1() {
    let r = compile(&small_cluster(), &opts("n1"));
    assert!(check_ruleset(&r).is_empty(), "{:?}", check_ruleset(&r));
    let text = dump(&r);
    println!("{text}");
    let web_from_db = PolicyRef::network(&ObjectKey::new("x", "web-from-db"));
    let ok = names::allow_chain_name(&web_from_db_rule());
    let iso = names::isolation_chain_name(Direction::Ingress, std::slice::from_ref(&web_from_db));
    let db_class = class_of(&r, Direction::Ingress, "10.0.1.3");
    assert_eq!(class_of(&r, Direction::Ingress, "10.0.2.3"), db_class);
    assert_eq!(class_of(&r, Direction::Ingress, "fd00:2::3"), db_class);
    // The world class: where addresses in no selection and no block go.
    let world = match &r.chains["ingress-peers"].rules.last().unwrap().verdict {
        Some(RuleVerdict::Verdict(Verdict::Goto(c))) => c.clone(),
        other => panic!("{other:?}"),
    };
    // Shape: base chains, each direction's stage, peer and default chains, the classes
    // (the world of each direction, app=db of x for ingress), the allowing rule's chain and
    // x/web's default deny. Nothing grows with the policies but the classes and outcomes.
    let chains: Vec<&str> = r.chains.keys().map(String::as_str).collect();
    let eg_world = match &r.chains["egress-peers"].rules.last().unwrap().verdict {
        Some(RuleVerdict::Verdict(Verdict::Goto(c))) => c.clone(),
        other => panic!("{other:?}"),
    };
    let mut expected = vec![
        "forward",
        "input",
        "egress",
        "egress-peers",
        "egress-default",
        "ingress",
        "ingress-peers",
        "ingress-default",
        world.as_str(),
        eg_world.as_str(),
        db_class.as_str(),
        ok.as_str(),
        iso.as_str(),
    ];
    expected.sort();
    assert_eq!(chains, expected, "{text}");
    // Only x/web (10.0.1.2, fd00:1::2) is selected, for ingress only.
    let addr = |s: &str| vec![Value::Addr(s.parse().unwrap())];
    assert_eq!(
        r.maps["ingress4"].elements,
        [(addr("10.0.1.2"), Verdict::Goto("ingress-peers".into()))].into()
    );
    assert_eq!(r.maps["ingress6"].elements.len(), 1);
    assert!(r.maps["egress4"].elements.is_empty() && r.maps["egress6"].elements.is_empty());
    // Its default: denied by its isolation, which logs and names the policy.
    assert_eq!(
        r.maps["ingress-default4"].elements,
        [(addr("10.0.1.2"), Verdict::Goto(iso.clone()))].into()
    );
    let rules = &r.chains[&iso].rules;
    assert!(
        matches!(&rules[0].statements[0], Statement::Log { group: 5, prefix, .. } if *prefix == format!("palisade drop ingress {iso}"))
    );
    assert_eq!(rules[1].verdict, Some(RuleVerdict::Verdict(Verdict::Drop)));
    assert_eq!(rules[2].comment.as_deref(), Some("x/web-from-db"));
    // From app=db of x: TCP 80 and the named port http (8080 on x/web), allowed by the rule.
    // Single ports: the hash map of exceptions (no background: the rest is the default).
    let ports4 = &r.maps[&format!("{db_class}-x4")];
    assert!(!ports4.interval);
    assert!(r.maps[&format!("{db_class}-p4")].elements.is_empty());
    assert!(r.maps[&format!("{db_class}-a4")].elements.is_empty());
    let web = |proto: u8, port: u16| {
        vec![
            Value::Addr("10.0.1.2".parse().unwrap()),
            Value::Proto(proto),
            Value::Port(port),
        ]
    };
    assert_eq!(
        ports4.elements,
        [
            (web(6, 80), Verdict::Goto(ok.clone())),
            (web(6, 8080), Verdict::Goto(ok.clone()))
        ]
        .into()
    );
    assert_eq!(
        r.chains[&ok].rules[0].comment.as_deref(),
        Some("x/web-from-db ingress[0]")
    );
    // Nothing else decides anything: the world class's maps are empty.
    for m in ["p4", "p6", "n4", "n6"] {
        assert!(r.maps[&format!("{world}-{m}")].elements.is_empty(), "{m}");
    }
    assert_eq!(r.sets["local4"].elements.len(), 2);
    let to_web = |src: &str, proto, port| {
        classify(
            &r,
            Hook::Forward,
            &packet(src, "10.0.1.2", proto, port, "eth0", "pal0000000002"),
        )
        .unwrap()
        .accepted
    };
    assert!(to_web("10.0.2.3", Protocol::Tcp, 80));
    assert!(to_web("10.0.2.3", Protocol::Tcp, 8080));
    assert!(!to_web("10.0.2.3", Protocol::Tcp, 81));
    assert!(!to_web("10.0.2.3", Protocol::Udp, 80));
    assert!(
        !to_web("10.0.2.4", Protocol::Tcp, 80),
        "y/other is not of x"
    );
    let mut icmp = packet(
        "10.0.2.3",
        "10.0.1.2",
        Protocol::Tcp,
        0,
        "eth0",
        "pal0000000002",
    );
    icmp.proto = 1;
    assert!(!classify(&r, Hook::Forward, &icmp).unwrap().accepted);
}

#[test]
fn golden_node_2_ip_block_and_end_port() {
    let r = compile(&small_cluster(), &opts("n2"));
    assert!(check_ruleset(&r).is_empty(), "{:?}", check_ruleset(&r));
    println!("{}", dump(&r));
    // 10.0.0.0/8 except 10.0.9.0/24: two ranges, one class.
    let ranges: Vec<(Vec<Value>, Verdict)> = r.maps["egress-net4"]
        .elements
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(
        ranges[0].0,
        vec![Value::AddrRange(ip("10.0.0.0"), ip("10.0.8.255"))]
    );
    assert_eq!(
        ranges[1].0,
        vec![Value::AddrRange(ip("10.0.10.0"), ip("10.255.255.255"))]
    );
    assert_eq!(ranges[0].1, ranges[1].1);
    let Verdict::Goto(block_class) = &ranges[0].1 else {
        panic!()
    };
    // y/other (10.0.2.4) may send UDP 53..60 there: one range element.
    let ok = names::allow_chain_name(&RuleRef {
        policy: PolicyRef::network(&ObjectKey::new("y", "dns-out")),
        direction: Direction::Egress,
        index: 0,
    });
    assert_eq!(
        r.maps[&format!("{block_class}-p4")].elements,
        [(
            vec![
                Value::Addr(ip("10.0.2.4")),
                Value::Proto(17),
                Value::PortRange(53, 60)
            ],
            Verdict::Goto(ok)
        )]
        .into()
    );
    let from_other = |dst: &str, proto, port| {
        classify(
            &r,
            Hook::Forward,
            &packet("10.0.2.4", dst, proto, port, "pal0000000004", "eth0"),
        )
        .unwrap()
        .accepted
    };
    assert!(from_other("10.0.1.3", Protocol::Udp, 53));
    assert!(from_other("10.0.1.3", Protocol::Udp, 60));
    assert!(!from_other("10.0.1.3", Protocol::Udp, 61));
    assert!(!from_other("10.0.9.1", Protocol::Udp, 53));
    assert!(!from_other("10.0.1.3", Protocol::Tcp, 53));
    // Through `input` (to the node itself) the same egress policy applies.
    let to_node = classify(
        &r,
        Hook::Input,
        &packet(
            "10.0.2.4",
            "192.168.0.2",
            Protocol::Tcp,
            22,
            "pal0000000004",
            "",
        ),
    )
    .unwrap();
    assert!(!to_node.accepted);
    // Neighbour discovery from an egress-isolated pod still works.
    let nd = classify(
        &r,
        Hook::Input,
        &packet(
            "fd00:2::4",
            "ff02::1:ff00:1",
            Protocol::Udp,
            0,
            "pal0000000004",
            "",
        ),
    )
    .unwrap();
    assert!(nd.accepted);
}

#[test]
fn node_traffic_and_replies_pass() {
    let r = compile(&small_cluster(), &opts("n1"));
    // The node itself is not forwarded: nothing on `output`.
    assert!(r
        .chains
        .values()
        .filter_map(|c| c.base.as_ref())
        .all(|b| b.hook != Hook::Output));
    // A reply towards an isolated pod passes on conntrack.
    let mut p = packet(
        "10.0.2.4",
        "10.0.1.2",
        Protocol::Tcp,
        5555,
        "eth0",
        "pal0000000002",
    );
    assert!(!classify(&r, Hook::Forward, &p).unwrap().accepted);
    p.ct_state = CtState::Established;
    assert!(classify(&r, Hook::Forward, &p).unwrap().accepted);
    // Fail-closed: a pod veth whose address the agent does not know.
    let unknown = packet(
        "10.0.2.4",
        "10.0.1.99",
        Protocol::Tcp,
        80,
        "eth0",
        "pal0000000099",
    );
    let out = classify(&r, Hook::Forward, &unknown).unwrap();
    assert!(!out.accepted);
    assert_eq!(
        out.trace.last().unwrap().comment.as_deref(),
        Some("fail-closed: pod not programmed yet")
    );
    let mut open = opts("n1");
    open.fail_closed_new_pods = false;
    let r = compile(&small_cluster(), &open);
    assert!(classify(&r, Hook::Forward, &unknown).unwrap().accepted);
    assert!(!r.sets.contains_key("local4"));
}

/// A named port behind an ipBlock peer is the port of the pod at the destination address
/// (issue 15): allowed to a pod in the block that declares it, nothing for an address that is
/// no pod's.
#[test]
fn named_port_through_ip_block_resolves_on_the_destination_pod() {
    let mut s = small_cluster();
    s.network_policies.insert(
        ObjectKey::new("y", "dns-out"),
        mk_policy(
            "y",
            "dns-out",
            NetworkPolicySpec {
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        ip_block: Some(IpBlock {
                            cidr: "10.0.0.0/8".into(),
                            except: None,
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(vec![named("http")]),
                }]),
                ..Default::default()
            },
        ),
    );
    let r = compile(&s, &opts("n2"));
    assert!(check_ruleset(&r).is_empty(), "{:?}", check_ruleset(&r));
    // x/web (the one pod declaring http) is a class of its own for egress.
    assert_ne!(
        class_of(&r, Direction::Egress, "10.0.1.2"),
        match r.maps["egress-net4"].elements.values().next() {
            Some(Verdict::Goto(c)) => c.clone(),
            other => panic!("{other:?}"),
        }
    );
    let from_other = |dst: &str, port| {
        classify(
            &r,
            Hook::Forward,
            &packet(
                "10.0.2.4",
                dst,
                Protocol::Tcp,
                port,
                "pal0000000004",
                "eth0",
            ),
        )
        .unwrap()
        .accepted
    };
    assert!(from_other("10.0.1.2", 8080), "x/web declares http=8080");
    assert!(!from_other("10.0.1.2", 8081));
    assert!(!from_other("10.0.1.3", 8080), "x/db declares no http");
    assert!(!from_other("10.0.9.9", 8080), "no pod at this address");
}

#[test]
fn log_prefix_and_chain_descriptions_round_trip() {
    let r = compile(&small_cluster(), &opts("n1"));
    let web_from_db = PolicyRef::network(&ObjectKey::new("x", "web-from-db"));
    let iso = names::isolation_chain_name(Direction::Ingress, std::slice::from_ref(&web_from_db));
    let prefix = r.chains[&iso]
        .rules
        .iter()
        .flat_map(|r| &r.statements)
        .find_map(|s| match s {
            Statement::Log { prefix, .. } => Some(prefix.clone()),
            _ => None,
        })
        .unwrap();
    let parsed = parse_log_prefix(&prefix).unwrap();
    assert_eq!(parsed.direction, Direction::Ingress);
    assert_eq!(parsed.rule, None);
    let d = describe_chain(&r, &parsed.chain).unwrap();
    assert_eq!(
        d.role,
        ChainRole::Isolation {
            direction: Direction::Ingress,
            policies: vec![web_from_db],
            addresses: vec!["10.0.1.2".parse().unwrap(), "fd00:1::2".parse().unwrap()],
        }
    );
    let ok = names::allow_chain_name(&web_from_db_rule());
    assert_eq!(
        describe_chain(&r, &ok).unwrap().role,
        ChainRole::Allow {
            direction: Direction::Ingress,
            rule: web_from_db_rule()
        }
    );
    let class = class_of(&r, Direction::Ingress, "10.0.1.3");
    assert_eq!(
        describe_chain(&r, &class).unwrap().role,
        ChainRole::PeerClass {
            direction: Direction::Ingress
        }
    );
    for base in ["ingress", "egress-peers", "ingress-default", "forward"] {
        assert_eq!(describe_chain(&r, base).unwrap().role, ChainRole::Base);
    }
    let rule = parse_rule_comment("x/web-from-db ingress[3]").unwrap();
    assert_eq!(rule.index, 3);
}

#[test]
fn equal_selectors_share_one_class_and_names_are_stable() {
    let mut s = small_cluster();
    let mut p2 = s.network_policies[&ObjectKey::new("x", "web-from-db")].clone();
    p2.metadata.name = "again".into();
    if let Some(rules) = p2.spec.ingress.as_mut() {
        rules[0].from.as_mut().unwrap()[0]
            .pod_selector
            .as_mut()
            .unwrap()
            .match_expressions = Some(vec![]);
    }
    s.network_policies.insert(ObjectKey::new("x", "again"), p2);
    let r = compile(&s, &opts("n1"));
    assert_eq!(r, compile(&s, &opts("n1")), "deterministic");
    // Both policies' peers are one condition: the db pods form one class besides the world.
    let classes: BTreeSet<&String> = r.maps["ingress-peer4"]
        .elements
        .values()
        .map(|v| match v {
            Verdict::Goto(c) => c,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(classes.len(), 1, "{}", dump(&r));
    // The first policy in order decides (an allow of either would do): `again` < `web-from-db`.
    let db_class = class_of(&r, Direction::Ingress, "10.0.1.3");
    let again = names::allow_chain_name(&RuleRef {
        policy: PolicyRef::network(&ObjectKey::new("x", "again")),
        direction: Direction::Ingress,
        index: 0,
    });
    assert!(r.maps[&format!("{db_class}-x4")]
        .elements
        .values()
        .all(|v| *v == Verdict::Goto(again.clone())));
    // Isolated by both.
    let iso = names::isolation_chain_name(
        Direction::Ingress,
        &[
            PolicyRef::network(&ObjectKey::new("x", "again")),
            PolicyRef::network(&ObjectKey::new("x", "web-from-db")),
        ],
    );
    assert!(r.chains.contains_key(&iso), "{}", dump(&r));
}

/// Incremental compiles equal full compiles after every kind of change.
#[test]
fn incremental_equals_full_compile() {
    let base = small_cluster();
    for node in ["n1", "n2"] {
        let o = opts(node);
        let mut c = Compiler::with_state(o.clone(), base.clone());
        let check = |c: &mut Compiler, what: &str| {
            let full = compile(c.state(), &o);
            assert_eq!(c.ruleset(), full, "{node}: after {what}");
        };
        check(&mut c, "start");
        let mut remote = mk_pod("x", "db3", "n3", &["10.0.3.3"], &[("app", "db")]);
        c.apply(Change::UpsertPod(remote.clone()));
        check(&mut c, "remote pod added");
        remote.labels = labels(&[("app", "cache")]);
        c.apply(Change::UpsertPod(remote.clone()));
        check(&mut c, "remote pod relabelled");
        remote.ips.push("fd00:3::3".parse().unwrap());
        remote.labels = labels(&[("app", "db")]);
        c.apply(Change::UpsertPod(remote.clone()));
        check(&mut c, "remote pod got an IPv6 address");
        let mut web2 = mk_pod("x", "web2", node, &["10.0.9.9"], &[("app", "web")]);
        c.apply(Change::UpsertPod(web2.clone()));
        check(&mut c, "local pod added");
        web2.named_ports.push(NamedPort {
            name: "http".into(),
            port: 9090,
            protocol: Protocol::Tcp,
        });
        c.apply(Change::UpsertPod(web2.clone()));
        check(&mut c, "local pod named port");
        web2.terminating = true;
        c.apply(Change::UpsertPod(web2));
        check(&mut c, "local pod terminating");
        c.apply(Change::UpsertNamespace {
            name: "y".into(),
            labels: labels(&[("team", "a")]),
        });
        check(&mut c, "namespace relabelled");
        let mut p = c.state().network_policies[&ObjectKey::new("x", "web-from-db")].clone();
        p.spec.ingress.as_mut().unwrap()[0].from = Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(sel(&[("team", "a")])),
            ..Default::default()
        }]);
        c.apply(Change::UpsertPolicy(Box::new(p)));
        check(&mut c, "policy changed to a namespaceSelector");
        c.apply(Change::UpsertNamespace {
            name: "y".into(),
            labels: labels(&[]),
        });
        check(&mut c, "namespace label removed");
        c.apply(Change::DeletePod(ObjectKey::new("x", "db3")));
        check(&mut c, "remote pod deleted");
        c.apply(Change::DeletePod(ObjectKey::new("x", "web2")));
        check(&mut c, "local pod deleted");
        c.apply(Change::DeletePolicy(ObjectKey::new("y", "dns-out")));
        check(&mut c, "policy deleted");
        c.apply(Change::DeleteNamespace("x".into()));
        check(&mut c, "namespace deleted");
    }
}

/// A pod change on another node changes the peer maps only, and an address two pods hold
/// (one leaving, one arriving with the reused address) keeps its class until neither gives it.
#[test]
fn remote_pod_changes_touch_peer_maps_only_and_a_shared_address_stays() {
    let o = opts("n1");
    let mut c = Compiler::with_state(o.clone(), small_cluster());
    let (_, touched) = c.ruleset_and_touched();
    assert!(touched.all);
    let addr = |s: &str| vec![Value::Addr(s.parse().unwrap())];
    let db_class = class_of(c.ruleset_ref(), Direction::Ingress, "10.0.2.3");
    // A second db pod on another node with the address of db2.
    let twin = mk_pod("x", "twin", "n3", &["10.0.2.3"], &[("app", "db")]);
    c.apply(Change::UpsertPod(twin));
    let (rs, touched) = c.ruleset_and_touched();
    assert_eq!(class_of(rs, Direction::Ingress, "10.0.2.3"), db_class);
    assert!(
        touched.chains.is_empty() && touched.maps.is_empty(),
        "{touched:?}"
    );
    // db2 goes: the address stays (twin gives it), its IPv6 address goes.
    c.apply(Change::DeletePod(ObjectKey::new("x", "db2")));
    let (rs, touched) = c.ruleset_and_touched();
    assert_eq!(class_of(rs, Direction::Ingress, "10.0.2.3"), db_class);
    assert!(!rs.maps["ingress-peer6"]
        .elements
        .contains_key(&addr("fd00:2::3")));
    assert!(
        touched.maps.is_empty() && touched.chains.is_empty(),
        "{touched:?}"
    );
    let gone = &touched.map_elements["ingress-peer6"];
    assert!(gone.added.is_empty());
    assert_eq!(
        gone.removed,
        [(addr("fd00:2::3"), Verdict::Goto(db_class.clone()))].into()
    );
    assert_eq!(c.ruleset(), compile(c.state(), &o));
    // twin goes too: now the address goes.
    c.apply(Change::DeletePod(ObjectKey::new("x", "twin")));
    let (rs, touched) = c.ruleset_and_touched();
    assert!(!rs.maps["ingress-peer4"]
        .elements
        .contains_key(&addr("10.0.2.3")));
    assert!(touched.maps.is_empty(), "{touched:?}");
    assert_eq!(
        touched.map_elements["ingress-peer4"].removed,
        [(addr("10.0.2.3"), Verdict::Goto(db_class.clone()))].into()
    );
    assert_eq!(c.ruleset(), compile(c.state(), &o));
}

#[test]
fn port_decisions_are_exceptions_over_a_background() {
    use super::decide::Outcome;
    use super::flat::{port_layout, Placed};
    use crate::model::Protocol::{Tcp, Udp};
    let rule = |i| RuleRef {
        policy: PolicyRef::network(&ObjectKey::new("x", "p")),
        direction: Direction::Ingress,
        index: i,
    };
    let default = Outcome::Isolated(vec![PolicyRef::network(&ObjectKey::new("x", "p"))]);
    let allow = Outcome::Allow(Some(rule(0)));
    let deny = Outcome::Deny(rule(1));
    // One allowed port: an exception over the default (no background element).
    let ports = vec![(Tcp, 80, 80, allow.clone())];
    assert_eq!(
        port_layout(&ports, &default),
        vec![(6, vec![(Placed::Port(80), Some(&allow))])]
    );
    // Everything allowed but one denied port: the allow is the background.
    let ports = vec![
        (Tcp, 0, 79, allow.clone()),
        (Tcp, 80, 80, deny.clone()),
        (Tcp, 81, 65535, allow.clone()),
    ];
    assert_eq!(
        port_layout(&ports, &default),
        vec![(
            6,
            vec![
                (Placed::Protocol, Some(&allow)),
                (Placed::Port(80), Some(&deny))
            ]
        )]
    );
    // A range stays a range; the gaps of a background are the default's, as exceptions.
    let ports = vec![
        (Udp, 53, 60, deny.clone()),
        (Udp, 100, 65534, allow.clone()),
    ];
    assert_eq!(
        port_layout(&ports, &default),
        vec![(
            17,
            vec![
                (Placed::Protocol, Some(&allow)),
                (Placed::Range(0, 52), None),
                (Placed::Range(53, 60), Some(&deny)),
                (Placed::Range(61, 99), None),
                (Placed::Port(65535), None),
            ]
        )]
    );
    // Nothing for a protocol without decisions.
    assert!(port_layout(&[], &default).is_empty());
}
