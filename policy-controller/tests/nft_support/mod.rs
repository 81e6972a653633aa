//! Ruleset builders shared by the dataplane tests and benchmarks (`tests/nft_*.rs`,
//! `tests/datapath_*.rs`). Rulesets are built by hand here, in the shape the compiler
//! produces (DESIGN.md "Policy"), so the dataplane is tested on its own.

use palisade_policy::ruleset::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn addr(s: &str) -> Value {
    Value::Addr(s.parse().unwrap())
}

pub fn prefix(s: &str) -> Value {
    Value::Prefix(s.parse().unwrap())
}

pub fn lookup(fields: &[Field], set: &str) -> Match {
    Match::Lookup {
        fields: fields.to_vec(),
        set: set.to_string(),
        negate: false,
    }
}

pub fn vmap(fields: &[Field], map: &str) -> Rule {
    Rule {
        matches: vec![],
        statements: vec![],
        verdict: Some(RuleVerdict::Vmap {
            fields: fields.to_vec(),
            map: map.to_string(),
        }),
        comment: None,
    }
}

pub fn set(key: &[KeyType], interval: bool, elements: Vec<Vec<Value>>) -> Set {
    Set {
        key: key.to_vec(),
        interval,
        elements: elements.into_iter().collect(),
        comment: None,
    }
}

pub fn base(hook: Hook, policy: ChainPolicy) -> Option<BaseChain> {
    Some(BaseChain {
        chain_type: ChainType::Filter,
        hook,
        priority: 0,
        policy,
    })
}

/// The forward chain's head: conntrack, then dispatch by destination pod.
pub fn forward_chain() -> Chain {
    Chain {
        base: base(Hook::Forward, ChainPolicy::Accept),
        rules: vec![
            Rule::new(
                vec![Match::CtState(vec![CtState::Established, CtState::Related])],
                Verdict::Accept,
            ),
            Rule::new(vec![Match::CtState(vec![CtState::Invalid])], Verdict::Drop),
            vmap(&[Field::DstAddr(Family::Ipv4)], "ingress4"),
            vmap(&[Field::DstAddr(Family::Ipv6)], "ingress6"),
        ],
    }
}

/// Two pods A and B; B's ingress chain allows from A what `allow4`/`allow6` list
/// (`addr . proto . port`), counts and drops the rest.
pub fn two_pods(a4: &str, b4: &str, a6: &str, b6: &str, allowed: &[(u8, u16)]) -> Ruleset {
    let mut rs = Ruleset::default();
    rs.chains.insert("forward".into(), forward_chain());
    rs.chains.insert(
        "in-b".into(),
        Chain {
            base: None,
            rules: vec![
                Rule::new(
                    vec![lookup(
                        &[Field::SrcAddr(Family::Ipv4), Field::L4Proto, Field::DstPort],
                        "allow4",
                    )],
                    Verdict::Accept,
                )
                .with_comment("ns/allow ingress[0]"),
                Rule::new(
                    vec![lookup(
                        &[Field::SrcAddr(Family::Ipv6), Field::L4Proto, Field::DstPort],
                        "allow6",
                    )],
                    Verdict::Accept,
                )
                .with_comment("ns/allow ingress[0]"),
                Rule {
                    matches: vec![],
                    statements: vec![
                        Statement::Counter,
                        Statement::Log {
                            group: 5,
                            prefix: "palisade drop in-b".into(),
                            rate_per_second: Some(10),
                        },
                    ],
                    verdict: Some(RuleVerdict::Verdict(Verdict::Drop)),
                    comment: Some("ingress denied".into()),
                },
            ],
        },
    );
    let k4 = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
    let k6 = [KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService];
    rs.sets.insert(
        "allow4".into(),
        set(
            &k4,
            true,
            allowed
                .iter()
                .map(|(p, port)| vec![addr(a4), Value::Proto(*p), Value::Port(*port)])
                .collect(),
        ),
    );
    rs.sets.insert(
        "allow6".into(),
        set(
            &k6,
            true,
            allowed
                .iter()
                .map(|(p, port)| vec![addr(a6), Value::Proto(*p), Value::Port(*port)])
                .collect(),
        ),
    );
    let map = |k: KeyType, ip: &str| VerdictMap {
        key: vec![k],
        interval: false,
        elements: [(vec![addr(ip)], Verdict::Jump("in-b".into()))]
            .into_iter()
            .collect(),
        comment: Some("ingress dispatch".into()),
    };
    rs.maps
        .insert("ingress4".into(), map(KeyType::Ipv4Addr, b4));
    rs.maps
        .insert("ingress6".into(), map(KeyType::Ipv6Addr, b6));
    rs
}

/// Cluster pod `i`'s IPv4 address (10.128.0.0/9 ...).
pub fn pod_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a80_0000u32 + i))
}

pub fn pod_ip6(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(
        0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
    ))
}

/// A ruleset the size of "`cluster_pods` pods, `policies` policies, `local_pods` pods on
/// this node", in the compiler's shape: per policy a chain matching a peer set (about
/// `peers_per_policy` cluster pods) and an interval port set; per local pod a dispatch-map
/// element to a class chain that jumps to its policies; `local4` for fail-closed.
pub fn synthetic(
    cluster_pods: u32,
    policies: u32,
    local_pods: u32,
    peers_per_policy: u32,
    local_base: u32,
) -> Ruleset {
    let mut rs = Ruleset::default();
    let mut fwd = forward_chain();
    fwd.rules.insert(
        2,
        Rule::new(
            vec![
                Match::Cmp {
                    field: Field::OifName,
                    op: CmpOp::Eq,
                    value: Value::IfPrefix("pal".into()),
                },
                Match::Lookup {
                    fields: vec![Field::DstAddr(Family::Ipv4)],
                    set: "local4".into(),
                    negate: true,
                },
            ],
            Verdict::Drop,
        )
        .with_comment("fail-closed: pod not programmed yet"),
    );
    rs.chains.insert("forward".into(), fwd);
    let ports_key = [KeyType::InetProto, KeyType::InetService];
    for p in 0..policies {
        let peers = format!("peers4-{p:04}");
        let ports = format!("ports-{p:04}");
        rs.sets.insert(
            peers.clone(),
            set(
                &[KeyType::Ipv4Addr],
                false,
                (0..peers_per_policy)
                    .map(|k| vec![Value::Addr(pod_ip((p * 7919 + k * 13) % cluster_pods))])
                    .collect(),
            ),
        );
        rs.sets.insert(
            ports.clone(),
            set(
                &ports_key,
                true,
                vec![
                    vec![Value::Proto(6), Value::Port(80 + (p % 100) as u16)],
                    vec![Value::Proto(6), Value::PortRange(8000, 8100)],
                    vec![Value::Proto(17), Value::Port(53)],
                ],
            ),
        );
        rs.chains.insert(
            format!("pi-{p:04}"),
            Chain {
                base: None,
                rules: vec![Rule::new(
                    vec![
                        lookup(&[Field::SrcAddr(Family::Ipv4)], &peers),
                        lookup(&[Field::L4Proto, Field::DstPort], &ports),
                    ],
                    Verdict::Accept,
                )
                .with_comment(format!("ns-{}/policy-{p} ingress[0]", p % 50))],
            },
        );
    }
    let mut ingress4 = VerdictMap {
        key: vec![KeyType::Ipv4Addr],
        ..VerdictMap::default()
    };
    let mut local4 = set(&[KeyType::Ipv4Addr], false, vec![]);
    let per_class = policies.div_ceil(local_pods.max(1)).max(1);
    for l in 0..local_pods {
        let class = format!("in-{l:04}");
        let mut rules: Vec<Rule> = (0..per_class)
            .map(|k| (l * per_class + k) % policies.max(1))
            .map(|p| Rule::new(vec![], Verdict::Jump(format!("pi-{p:04}"))))
            .collect();
        rules.push(Rule::new(vec![], Verdict::Drop).with_comment("ingress denied"));
        rs.chains.insert(class.clone(), Chain { base: None, rules });
        let ip = pod_ip(local_base + l);
        ingress4
            .elements
            .insert(vec![Value::Addr(ip)], Verdict::Jump(class));
        local4.elements.insert(vec![Value::Addr(ip)]);
    }
    rs.maps.insert("ingress4".into(), ingress4);
    rs.maps.insert(
        "ingress6".into(),
        VerdictMap {
            key: vec![KeyType::Ipv6Addr],
            ..VerdictMap::default()
        },
    );
    rs.sets.insert("local4".into(), local4);
    rs
}

/// Number of set and map elements in a ruleset.
pub fn element_count(rs: &Ruleset) -> usize {
    rs.sets.values().map(|s| s.elements.len()).sum::<usize>()
        + rs.maps.values().map(|m| m.elements.len()).sum::<usize>()
}

pub mod netns;
