//! Compiler unit tests: builders in the style of `mk_pod`/`mk_policy`, golden structure tests
//! for a small cluster, and incremental == from-scratch after every kind of change.

use super::*;
use crate::compile::names::{class_chain_name, policy_chain_name};
use crate::eval::interp::{check_ruleset, classify, Packet};
use crate::model::api::{
    IntOrString, IpBlock, LabelSelector, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ObjectMeta,
};
use crate::model::policy::{Direction, Tier};
use crate::model::{NamedPort, Protocol};
use crate::ruleset::Statement;
use crate::ruleset::{CtState, Hook, RuleVerdict, Value, Verdict};
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

#[test]
fn golden_node_1() {
    let r = compile(&small_cluster(), &opts("n1"));
    assert!(check_ruleset(&r).is_empty(), "{:?}", check_ruleset(&r));
    let text = dump(&r);
    println!("{text}");
    // Shape: base chains, one class chain and one policy chain for x/web (the only isolated
    // pod here), the sets those reference, and the guard's sets.
    let chains: Vec<&str> = r.chains.keys().map(String::as_str).collect();
    let web_from_db = PolicyRef::network(&ObjectKey::new("x", "web-from-db"));
    let class = class_chain_name(
        Direction::Ingress,
        Tier::NetworkPolicy,
        std::slice::from_ref(&web_from_db),
    );
    let policy = policy_chain_name(Direction::Ingress, &web_from_db);
    let mut expected = vec![
        "forward",
        "input",
        "egress-admin",
        "egress-np",
        "egress-baseline",
        "ingress-admin",
        "ingress-np",
        "ingress-baseline",
        class.as_str(),
        policy.as_str(),
    ];
    expected.sort();
    assert_eq!(chains, expected);
    assert_eq!(
        r.maps["ingress4"].elements.iter().collect::<Vec<_>>(),
        vec![(
            &vec![Value::Addr("10.0.1.2".parse().unwrap())],
            &Verdict::Jump(class.clone())
        )]
    );
    assert_eq!(r.maps["ingress6"].elements.len(), 1);
    assert!(r.maps["egress4"].elements.is_empty() && r.maps["egress6"].elements.is_empty());
    // No ClusterNetworkPolicy: the other tiers' maps are there, empty.
    assert_eq!(r.maps.len(), 12);
    assert!(r
        .maps
        .iter()
        .filter(|(n, _)| n.contains('-'))
        .all(|(_, m)| m.elements.is_empty()));
    // Class chain: jump to the policy, log, drop.
    let rules = &r.chains[&class].rules;
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0].comment.as_deref(), Some("x/web-from-db"));
    assert!(
        matches!(&rules[1].statements[0], Statement::Log { group: 5, prefix, .. } if *prefix == format!("palisade drop ingress {class}"))
    );
    assert_eq!(rules[2].verdict, Some(RuleVerdict::Verdict(Verdict::Drop)));
    // Policy chain: per family, one numeric-port rule and one named-port rule.
    let prules = &r.chains[&policy].rules;
    assert_eq!(prules.len(), 4, "{text}");
    assert!(prules
        .iter()
        .all(|r| r.comment.as_deref() == Some("x/web-from-db ingress[0]")));
    // Sets: the peer selector (pods app=db of x, both nodes), its v6 twin, numeric ports,
    // named ports resolved on the local target, and the local pods.
    let mut kinds: Vec<String> = r
        .sets
        .keys()
        .map(|n| n.split('-').next().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["local4", "local6", "named4", "named6", "pods4", "pods6", "ports"]
    );
    let pods4 = r
        .sets
        .iter()
        .find(|(n, _)| n.starts_with("pods4-"))
        .unwrap()
        .1;
    assert_eq!(
        pods4.elements,
        ["10.0.1.3", "10.0.2.3"]
            .iter()
            .map(|a| vec![Value::Addr(a.parse().unwrap())])
            .collect()
    );
    let named4 = r
        .sets
        .iter()
        .find(|(n, _)| n.starts_with("named4-"))
        .unwrap()
        .1;
    assert_eq!(
        named4.elements,
        [vec![
            Value::Addr("10.0.1.2".parse().unwrap()),
            Value::Proto(6),
            Value::Port(8080)
        ]]
        .into_iter()
        .collect()
    );
    let ports = r
        .sets
        .iter()
        .find(|(n, _)| n.starts_with("ports-"))
        .unwrap()
        .1;
    assert!(ports.interval);
    assert_eq!(
        ports.elements,
        [vec![Value::Proto(6), Value::Port(80)]]
            .into_iter()
            .collect()
    );
    assert_eq!(r.sets["local4"].elements.len(), 2);
}

#[test]
fn golden_node_2_ip_block_and_end_port() {
    let r = compile(&small_cluster(), &opts("n2"));
    assert!(check_ruleset(&r).is_empty(), "{:?}", check_ruleset(&r));
    println!("{}", dump(&r));
    let block = r
        .sets
        .iter()
        .find(|(n, _)| n.starts_with("block4-"))
        .unwrap()
        .1;
    assert!(block.interval);
    let prefixes: Vec<String> = block
        .elements
        .iter()
        .map(|e| match &e[0] {
            Value::Prefix(p) => p.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    // 10.0.0.0/8 minus 10.0.9.0/24.
    assert_eq!(
        prefixes,
        vec![
            "10.0.0.0/21",
            "10.0.8.0/24",
            "10.0.10.0/23",
            "10.0.12.0/22",
            "10.0.16.0/20",
            "10.0.32.0/19",
            "10.0.64.0/18",
            "10.0.128.0/17",
            "10.1.0.0/16",
            "10.2.0.0/15",
            "10.4.0.0/14",
            "10.8.0.0/13",
            "10.16.0.0/12",
            "10.32.0.0/11",
            "10.64.0.0/10",
            "10.128.0.0/9"
        ]
    );
    let ports = r
        .sets
        .iter()
        .find(|(n, _)| n.starts_with("ports-"))
        .unwrap()
        .1;
    assert_eq!(
        ports.elements,
        [vec![Value::Proto(17), Value::PortRange(53, 60)]]
            .into_iter()
            .collect()
    );
    // y/other is egress-isolated here: UDP 53 into 10.0.1.3 allowed, 10.0.9.1 and TCP denied.
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
    let chain = policy_chain_name(
        Direction::Egress,
        &PolicyRef::network(&ObjectKey::new("y", "dns-out")),
    );
    // One rule: the block and the named ports of every pod (one family: the block's).
    assert_eq!(r.chains[&chain].rules.len(), 1, "{}", dump(&r));
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
    let class = class_chain_name(
        Direction::Ingress,
        Tier::NetworkPolicy,
        std::slice::from_ref(&web_from_db),
    );
    let prefix = r.chains[&class]
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
        ChainRole::Class {
            direction: Direction::Ingress,
            tier: Tier::NetworkPolicy,
            policies: vec![web_from_db.clone()],
            addresses: vec!["10.0.1.2".parse().unwrap(), "fd00:1::2".parse().unwrap()],
        }
    );
    let policy = policy_chain_name(Direction::Ingress, &web_from_db);
    assert_eq!(
        describe_chain(&r, &policy).unwrap().role,
        ChainRole::Policy {
            direction: Direction::Ingress,
            policy: web_from_db
        }
    );
    assert_eq!(
        describe_chain(&r, "ingress-np").unwrap().role,
        ChainRole::Base
    );
    let rule = parse_rule_comment("x/web-from-db ingress[3]").unwrap();
    assert_eq!(rule.index, 3);
}

#[test]
fn equal_selectors_share_one_set_and_names_are_stable() {
    let mut s = small_cluster();
    // A second policy with the same peer selector written differently (empty expression
    // list): it must reuse the pods set.
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
    assert_eq!(r.sets.keys().filter(|n| n.starts_with("pods4-")).count(), 1);
    assert_eq!(r, compile(&s, &opts("n1")), "deterministic");
    // Two policies select x/web: one class chain jumping to both.
    let class = class_chain_name(
        Direction::Ingress,
        Tier::NetworkPolicy,
        &[
            PolicyRef::network(&ObjectKey::new("x", "again")),
            PolicyRef::network(&ObjectKey::new("x", "web-from-db")),
        ],
    );
    assert_eq!(r.chains[&class].rules.len(), 4);
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

/// Pod churn is reported by exact element changes, and an address two pods hold (one
/// leaving, one arriving with the reused address) stays in a set until neither gives it.
#[test]
fn pod_changes_are_reported_by_their_elements_and_a_shared_address_stays() {
    let o = opts("n1");
    let mut c = Compiler::with_state(o.clone(), small_cluster());
    let (_, touched) = c.ruleset_and_touched();
    assert!(touched.all);
    let db_set = |c: &mut Compiler| -> String {
        let rs = c.ruleset_ref();
        rs.sets
            .iter()
            .find(|(n, s)| {
                n.starts_with("pods4-")
                    && s.elements
                        .contains(&vec![Value::Addr("10.0.2.3".parse().unwrap())])
            })
            .map(|(n, _)| n.clone())
            .expect("the app=db set")
    };
    let name = db_set(&mut c);
    let addr = |s: &str| vec![Value::Addr(s.parse().unwrap())];
    // A second db pod on another node with the address of db2.
    let twin = mk_pod("x", "twin", "n3", &["10.0.2.3"], &[("app", "db")]);
    c.apply(Change::UpsertPod(twin));
    let (rs, touched) = c.ruleset_and_touched();
    assert!(rs.sets[&name].elements.contains(&addr("10.0.2.3")));
    assert!(!touched.sets.contains(&name), "{touched:?}");
    assert!(touched.elements.get(&name).is_none_or(|d| d.is_empty()));
    // db2 goes: the address stays (twin gives it), its IPv6 address goes from its set.
    c.apply(Change::DeletePod(ObjectKey::new("x", "db2")));
    let (rs, touched) = c.ruleset_and_touched();
    assert!(rs.sets[&name].elements.contains(&addr("10.0.2.3")));
    assert!(touched.elements.get(&name).is_none_or(|d| d.is_empty()));
    let v6: Vec<_> = touched
        .elements
        .values()
        .filter(|d| d.removed.contains(&addr("fd00:2::3")))
        .collect();
    assert_eq!(v6.len(), 1, "{touched:?}");
    assert_eq!(c.ruleset(), compile(c.state(), &o));
    // twin goes too: now the address goes, as one removed element.
    c.apply(Change::DeletePod(ObjectKey::new("x", "twin")));
    let (rs, touched) = c.ruleset_and_touched();
    assert!(!rs.sets[&name].elements.contains(&addr("10.0.2.3")));
    let d = &touched.elements[&name];
    assert!(d.added.is_empty() && d.removed == [addr("10.0.2.3")].into());
    assert_eq!(c.ruleset(), compile(c.state(), &o));
}
