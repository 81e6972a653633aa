//! Golden tests of the dataplane against the in-memory fake (no root): after every apply
//! the fake's table equals the desired model, the transaction is minimal, and the fake's
//! kernel-like reference checks prove the command order is valid.

// `pub`: the support module is shared by several test binaries, each using a part of it.
pub mod nft_support;

use nft_support::*;
use palisade_policy::nft::{
    canonicalize, parse_listing, plan, render_table, transaction_json, Dataplane, DataplaneError,
    FakeDataplane, Op,
};
use palisade_policy::ruleset::*;
use proptest::prelude::*;

const A4: &str = "10.70.1.2";
const B4: &str = "10.70.2.2";
const A6: &str = "fd70:1::2";
const B6: &str = "fd70:2::2";

fn base_rs() -> Ruleset {
    two_pods(A4, B4, A6, B6, &[(6, 8080)])
}

fn apply_ok(dp: &mut FakeDataplane, rs: &Ruleset) -> usize {
    let stats = dp.apply(rs).expect("apply");
    assert_eq!(
        dp.table(),
        Some(&canonicalize(rs)),
        "fake table equals the desired model"
    );
    stats.commands
}

#[test]
fn cold_start_builds_everything_in_one_transaction() {
    let mut dp = FakeDataplane::new("palisade");
    let stats = dp.apply(&base_rs()).unwrap();
    assert!(stats.full);
    assert_eq!(dp.table(), Some(&canonicalize(&base_rs())));
    assert_eq!(dp.transactions.len(), 1);
    assert_eq!(dp.last_ops()[0], Op::AddTable);
    // Applying the same model again sends nothing.
    let again = dp.apply(&base_rs()).unwrap();
    assert_eq!(again.commands, 0);
    assert!(!again.full);
    assert_eq!(dp.transactions.len(), 1);
}

#[test]
fn one_pod_ip_is_one_element_command() {
    let mut dp = FakeDataplane::new("palisade");
    apply_ok(&mut dp, &base_rs());
    let mut rs = base_rs();
    rs.sets.get_mut("allow4").unwrap().elements.insert(vec![
        addr("10.70.9.9"),
        Value::Proto(6),
        Value::Port(8080),
    ]);
    assert_eq!(apply_ok(&mut dp, &rs), 1);
    assert!(
        matches!(&dp.last_ops()[0], Op::AddElements { set, elements } if set == "allow4" && elements.len() == 1)
    );
    // ... and removing it again is one delete.
    assert_eq!(apply_ok(&mut dp, &base_rs()), 1);
    assert!(matches!(&dp.last_ops()[0], Op::DeleteElements { .. }));
    // A dispatch element for a new local pod: one map command.
    let mut rs = base_rs();
    rs.maps
        .get_mut("ingress4")
        .unwrap()
        .elements
        .insert(vec![addr("10.70.3.3")], Verdict::Jump("in-b".into()));
    assert_eq!(apply_ok(&mut dp, &rs), 1);
}

#[test]
fn changing_one_chain_rewrites_only_that_chain() {
    let mut dp = FakeDataplane::new("palisade");
    apply_ok(&mut dp, &base_rs());
    let mut rs = base_rs();
    rs.chains.get_mut("in-b").unwrap().rules.insert(
        0,
        Rule::new(
            vec![Match::Cmp {
                field: Field::L4Proto,
                op: CmpOp::Eq,
                value: Value::Proto(1),
            }],
            Verdict::Accept,
        ),
    );
    let n = apply_ok(&mut dp, &rs);
    let ops = dp.last_ops();
    assert_eq!(
        ops[0],
        Op::FlushChain {
            name: "in-b".into()
        }
    );
    assert!(ops[1..]
        .iter()
        .all(|o| matches!(o, Op::AddRule { chain, .. } if chain == "in-b")));
    assert_eq!(n, 1 + 4);
}

#[test]
fn a_sequence_of_changes_converges_with_valid_ordering() {
    let mut dp = FakeDataplane::new("palisade");
    let mut rs = base_rs();
    apply_ok(&mut dp, &rs);

    // A new policy chain with its own set, jumped to from in-b, and a new dispatch target.
    let mut rs2 = rs.clone();
    rs2.sets.insert(
        "peers-x".into(),
        set(
            &[KeyType::Ipv4Addr],
            true,
            vec![vec![prefix("10.0.0.0/8")], vec![addr("192.168.1.1")]],
        ),
    );
    rs2.chains.insert(
        "pi-x".into(),
        Chain {
            base: None,
            rules: vec![Rule::new(
                vec![lookup(&[Field::SrcAddr(Family::Ipv4)], "peers-x")],
                Verdict::Accept,
            )],
        },
    );
    rs2.chains
        .get_mut("in-b")
        .unwrap()
        .rules
        .insert(0, Rule::new(vec![], Verdict::Jump("pi-x".into())));
    rs2.chains.insert(
        "in-c".into(),
        Chain {
            base: None,
            rules: vec![Rule::new(vec![], Verdict::Drop)],
        },
    );
    rs2.maps
        .get_mut("ingress4")
        .unwrap()
        .elements
        .insert(vec![addr("10.70.3.3")], Verdict::Jump("in-c".into()));
    apply_ok(&mut dp, &rs2);

    // Re-point a dispatch element, then delete the chain it pointed to.
    let mut rs3 = rs2.clone();
    rs3.maps
        .get_mut("ingress4")
        .unwrap()
        .elements
        .insert(vec![addr("10.70.3.3")], Verdict::Jump("in-b".into()));
    rs3.chains.remove("in-c");
    apply_ok(&mut dp, &rs3);

    // Change the type of a set that is in use (interval → not, v4 → v6): delete + recreate
    // after its user is flushed.
    let mut rs4 = rs3.clone();
    rs4.sets.insert(
        "peers-x".into(),
        set(&[KeyType::Ipv6Addr], false, vec![vec![addr("fd00::1")]]),
    );
    rs4.chains.get_mut("pi-x").unwrap().rules[0] = Rule::new(
        vec![lookup(&[Field::SrcAddr(Family::Ipv6)], "peers-x")],
        Verdict::Accept,
    );
    apply_ok(&mut dp, &rs4);
    assert!(dp
        .last_ops()
        .iter()
        .any(|o| matches!(o, Op::DeleteSet { name, .. } if name == "peers-x")));

    // Same set type change while the rule text stays the same (a map key change).
    let mut rs5 = rs4.clone();
    rs5.maps.get_mut("ingress6").unwrap().interval = true;
    apply_ok(&mut dp, &rs5);
    assert!(dp.last_ops().contains(&Op::FlushChain {
        name: "forward".into()
    }));

    // Policy change of the base chain: an update, no flush.
    let mut rs6 = rs5.clone();
    rs6.chains
        .get_mut("forward")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .policy = ChainPolicy::Drop;
    assert_eq!(apply_ok(&mut dp, &rs6), 1);

    // Hook change: the base chain is recreated.
    let mut rs7 = rs6.clone();
    rs7.chains
        .get_mut("forward")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .priority = 10;
    apply_ok(&mut dp, &rs7);
    assert!(dp.last_ops().contains(&Op::DeleteChain {
        name: "forward".into()
    }));

    // Remove the policy chain and its set together; then back to the start; then empty.
    apply_ok(&mut dp, &rs);
    apply_ok(&mut dp, &Ruleset::default());
    assert_eq!(
        dp.table(),
        Some(&Ruleset::default()),
        "the table itself stays"
    );
    rs = base_rs();
    apply_ok(&mut dp, &rs);
}

#[test]
fn adoption_converges_without_recreating_the_table() {
    // The table some earlier agent left: one chain differs, one element is extra.
    let mut old = base_rs();
    old.sets.get_mut("allow4").unwrap().elements.insert(vec![
        addr("10.9.9.9"),
        Value::Proto(17),
        Value::Port(53),
    ]);
    old.chains.insert(
        "stale".into(),
        Chain {
            base: None,
            rules: vec![Rule::new(vec![], Verdict::Accept)],
        },
    );
    let mut dp = FakeDataplane::with_table("palisade", canonicalize(&old));
    let stats = dp.apply(&base_rs()).unwrap();
    assert!(stats.full);
    assert_eq!(dp.table(), Some(&canonicalize(&base_rs())));
    let ops = dp.last_ops();
    assert!(!ops.contains(&Op::AddTable));
    assert!(!ops
        .iter()
        .any(|o| matches!(o, Op::FlushChain { name } if name == "forward" || name == "in-b")));
    assert_eq!(
        ops.len(),
        3,
        "delete element, flush + delete stale chain: {ops:?}"
    );

    // Adopting an identical table sends nothing at all.
    let mut dp = FakeDataplane::with_table("palisade", canonicalize(&base_rs()));
    assert_eq!(dp.apply(&base_rs()).unwrap().commands, 0);
}

#[test]
fn a_failed_transaction_changes_nothing_and_forces_a_resync() {
    let mut dp = FakeDataplane::new("palisade");
    apply_ok(&mut dp, &base_rs());
    let before = dp.dump();
    let mut rs = base_rs();
    rs.sets.get_mut("allow6").unwrap().elements.clear();
    dp.fail_next = true;
    assert!(matches!(dp.apply(&rs), Err(DataplaneError::Nft(_))));
    assert_eq!(dp.dump(), before);
    let stats = dp.apply(&rs).unwrap();
    assert!(
        stats.full,
        "after an error the next apply re-reads the table"
    );
    assert_eq!(dp.table(), Some(&canonicalize(&rs)));
}

#[test]
fn invalid_models_are_refused_before_sending() {
    let mut dp = FakeDataplane::new("palisade");
    let mut rs = base_rs();
    rs.chains
        .get_mut("in-b")
        .unwrap()
        .rules
        .push(Rule::new(vec![], Verdict::Jump("nowhere".into())));
    assert!(matches!(dp.apply(&rs), Err(DataplaneError::Invalid(_))));
    let mut rs = base_rs();
    rs.chains.get_mut("in-b").unwrap().rules.push(Rule::new(
        vec![lookup(&[Field::DstPort], "missing")],
        Verdict::Accept,
    ));
    assert!(matches!(dp.apply(&rs), Err(DataplaneError::Invalid(_))));
    assert!(dp.transactions.is_empty());
}

#[test]
fn render_full_golden() {
    let text = render_table("palisade", &canonicalize(&base_rs()));
    let expected = r#"table inet palisade {
	set allow4 {
		type ipv4_addr . inet_proto . inet_service
		flags interval
		elements = {
			10.70.1.2 . 6 . 8080
		}
	}
	set allow6 {
		type ipv6_addr . inet_proto . inet_service
		flags interval
		elements = {
			fd70:1::2 . 6 . 8080
		}
	}
	map ingress4 {
		type ipv4_addr : verdict
		elements = {
			10.70.2.2 : jump in-b
		}
	}
	map ingress6 {
		type ipv6_addr : verdict
		elements = {
			fd70:2::2 : jump in-b
		}
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state established,related accept
		ct state invalid drop
		ip daddr vmap @ingress4
		ip6 daddr vmap @ingress6
	}
	chain in-b {
		ip saddr . meta l4proto . th dport @allow4 accept comment "ns/allow ingress[0]"
		ip6 saddr . meta l4proto . th dport @allow6 accept comment "ns/allow ingress[0]"
		counter limit rate 10/second log group 5 prefix "palisade drop in-b" comment "ingress denied"
		drop comment "ingress denied"
	}
}
"#;
    assert_eq!(text, expected);
}

#[test]
fn rate_limited_log_is_split_so_the_limit_never_skips_the_drop() {
    let rs = base_rs();
    let ops = plan(None, &canonicalize(&rs));
    let doc: serde_json::Value = serde_json::from_str(&transaction_json("t", &ops)).unwrap();
    let rules: Vec<&serde_json::Value> = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["add"].get("rule"))
        .filter(|r| r["chain"] == "in-b")
        .collect();
    assert_eq!(rules.len(), 4);
    let log_rule = rules[2]["expr"].as_array().unwrap();
    assert_eq!(log_rule.len(), 3, "counter, limit, log: {log_rule:?}");
    assert!(log_rule[1].get("limit").is_some() && log_rule[2].get("log").is_some());
    assert_eq!(rules[3]["expr"], serde_json::json!([{"drop": null}]));
}

/// A listing captured from nft 1.0.6 (`nft -j list table inet t`) parses into the model.
#[test]
fn parses_an_nft_1_0_6_listing() {
    let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table":{"family":"inet","name":"t","handle":1}},
{"set":{"family":"inet","name":"c3","table":"t","type":["ipv4_addr","inet_proto","inet_service"],"handle":4,"flags":["interval"],"elem":[{"concat":[{"prefix":{"addr":"10.0.0.0","len":24}},"tcp",{"range":[80,90]}]},{"concat":["10.0.0.1","udp",53]}]}},
{"set":{"family":"inet","name":"if","table":"t","type":"ifname","handle":5,"flags":["interval"],"elem":["eth0","pal*"]}},
{"map":{"family":"inet","name":"d4","table":"t","type":"ipv4_addr","handle":6,"map":"verdict","elem":[["10.0.0.1",{"jump":{"target":"forward"}}]]}},
{"chain":{"family":"inet","table":"t","name":"forward","handle":1}},
{"chain":{"family":"inet","table":"t","name":"fwd","handle":2,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":7,"expr":[{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":8,"expr":[{"vmap":{"key":{"payload":{"protocol":"ip","field":"daddr"}},"data":"@d4"}}]}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":9,"comment":"hi there","expr":[{"match":{"op":"==","left":{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"right":"@c3"}},{"counter":{"packets":3,"bytes":180}},{"accept":null}]}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":10,"expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"pal*"}},{"limit":{"rate":10,"burst":5,"per":"second"}},{"log":{"prefix":"deny x: ","group":3}}]}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":11,"expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"pal*"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":12,"expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.0.0.0","len":8}}}},{"match":{"op":"==","left":{"payload":{"protocol":"th","field":"dport"}},"right":{"range":[80,90]}}},{"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},{"accept":null}]}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":13,"expr":[{"match":{"op":"!=","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@s4"}},{"return":null}]}},
{"rule":{"family":"inet","table":"t","chain":"fwd","handle":14,"expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":1}}]}}
]}"#;
    let l = parse_listing(listing, "t").unwrap();
    let m = &l.programmed.model;
    assert_eq!(l.table_handle, 1);
    assert_eq!(l.chain_handles["fwd"], 2);
    assert_eq!(m.sets["c3"].elements.len(), 2);
    assert!(m.sets["c3"].elements.contains(&vec![
        prefix("10.0.0.0/24"),
        Value::Proto(6),
        Value::PortRange(80, 90)
    ]));
    assert!(m.sets["if"]
        .elements
        .contains(&vec![Value::IfPrefix("pal".into())]));
    assert_eq!(
        m.maps["d4"].elements[&vec![addr("10.0.0.1")]],
        Verdict::Jump("forward".into())
    );
    let fwd = &m.chains["fwd"];
    // 8 nft rules: the limit+log pair merges into one model rule, the mangle rule is foreign.
    assert_eq!(fwd.rules.len(), 6);
    assert_eq!(
        fwd.rules[3].statements,
        vec![Statement::Log {
            group: 3,
            prefix: "deny x: ".into(),
            rate_per_second: Some(10)
        }]
    );
    assert_eq!(
        fwd.rules[3].verdict,
        Some(RuleVerdict::Verdict(Verdict::Drop))
    );
    assert!(
        l.programmed.stale_chains.contains("fwd"),
        "the mangle rule makes the chain stale"
    );
    assert_eq!(l.counters.len(), 1);
    assert_eq!((l.counters[0].packets, l.counters[0].bytes), (3, 180));
    assert_eq!(l.counters[0].comment.as_deref(), Some("hi there"));
}

/// The masquerade chain as nft 1.0.6 lists it (flags as a string when there is one) parses
/// back to the model; a masquerade the agent would not write (no fully-random, an address)
/// makes its chain stale; the fake refuses masquerade outside a nat chain at postrouting, as
/// the kernel does.
#[test]
fn masquerade_parses_back_and_lives_only_in_a_nat_chain() {
    let rule = |masq: &str| {
        format!(
            r#"{{"rule":{{"family":"inet","table":"t","chain":"nat","handle":3,"comment":"out","expr":[{{"match":{{"op":"==","left":{{"meta":{{"key":"iifname"}}}},"right":"pal*"}}}},{{"match":{{"op":"!=","left":{{"payload":{{"protocol":"ip","field":"daddr"}}}},"right":"@p4"}}}},{masq}]}}}}"#
        )
    };
    let listing = |masq: &str| {
        format!(
            r#"{{"nftables": [{{"table":{{"family":"inet","name":"t","handle":1}}}},
{{"set":{{"family":"inet","name":"p4","table":"t","type":"ipv4_addr","handle":2,"flags":["interval"],"elem":[{{"prefix":{{"addr":"10.244.0.0","len":16}}}}]}}}},
{{"chain":{{"family":"inet","table":"t","name":"nat","handle":1,"type":"nat","hook":"postrouting","prio":100,"policy":"accept"}}}},
{}]}}"#,
            rule(masq)
        )
    };
    let l = parse_listing(&listing(r#"{"masquerade":{"flags":"fully-random"}}"#), "t").unwrap();
    assert!(l.programmed.stale_chains.is_empty());
    let nat = &l.programmed.model.chains["nat"];
    let base = nat.base.as_ref().unwrap();
    assert_eq!(
        (base.chain_type, base.hook, base.priority),
        (ChainType::Nat, Hook::Postrouting, 100)
    );
    assert_eq!(nat.rules[0].statements, vec![Statement::Masquerade]);
    assert_eq!(nat.rules[0].verdict, None);
    for foreign in [
        r#"{"masquerade":null}"#,
        r#"{"masquerade":{"flags":["fully-random","persistent"]}}"#,
        r#"{"masquerade":{"flags":"fully-random","port":{"range":[1024,2048]}}}"#,
    ] {
        let l = parse_listing(&listing(foreign), "t").unwrap();
        assert!(l.programmed.stale_chains.contains("nat"), "{foreign}");
    }

    // Through the fake: programmed and dumped as nft text.
    let mut rs = Ruleset::default();
    rs.sets.insert(
        "p4".into(),
        set(
            &[KeyType::Ipv4Addr],
            true,
            vec![vec![prefix("10.244.0.0/16")]],
        ),
    );
    let parsed = parse_listing(
        &listing(r#"{"masquerade":{"flags":["fully-random"]}}"#),
        "t",
    )
    .unwrap();
    rs.chains
        .insert("nat".into(), parsed.programmed.model.chains["nat"].clone());
    let mut dp = FakeDataplane::new("palisade");
    apply_ok(&mut dp, &rs);
    assert!(dp.dump().contains(
        "type nat hook postrouting priority 100; policy accept;\n\t\tiifname \"pal*\" ip daddr != @p4 masquerade fully-random comment \"out\""
    ), "{}", dp.dump());

    // The same rule in a filter chain: refused, nothing changes.
    let mut wrong = rs.clone();
    wrong
        .chains
        .get_mut("nat")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .chain_type = ChainType::Filter;
    let before = dp.dump();
    let err = dp.apply(&wrong).unwrap_err();
    assert!(err.to_string().contains("masquerade"), "{err}");
    assert_eq!(dp.dump(), before);
}

// Random sequences of models over a small universe of names: every transaction must pass
// the fake's kernel-like checks (order of creation and deletion) and reach the model.
fn arb_ruleset() -> impl Strategy<Value = Ruleset> {
    let chain_names = ["c0", "c1", "c2", "c3"];
    (
        proptest::collection::vec(any::<bool>(), 4),
        proptest::collection::vec(
            (
                any::<bool>(),
                any::<bool>(),
                proptest::collection::vec(0u8..8, 0..4),
            ),
            3,
        ),
        proptest::collection::vec((0usize..4, 0usize..4, 0usize..3), 0..6),
        proptest::collection::vec((0u8..6, 0usize..4), 0..5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            move |(chains_on, sets, rules, map_elems, base_drop, map_interval)| {
                let mut rs = Ruleset::default();
                let present: Vec<&str> = chain_names
                    .iter()
                    .zip(&chains_on)
                    .filter(|(_, on)| **on)
                    .map(|(n, _)| *n)
                    .collect();
                let mut set_names = Vec::new();
                for (i, (on, v6, elems)) in sets.iter().enumerate() {
                    if !on {
                        continue;
                    }
                    let name = format!("s{i}");
                    let (k, mk): (KeyType, fn(u8) -> Value) = if *v6 {
                        (KeyType::Ipv6Addr, |x| {
                            Value::Addr(format!("fd00::{x}").parse().unwrap())
                        })
                    } else {
                        (KeyType::Ipv4Addr, |x| {
                            Value::Addr(format!("10.0.0.{x}").parse().unwrap())
                        })
                    };
                    rs.sets.insert(
                        name.clone(),
                        set(&[k], i == 2, elems.iter().map(|x| vec![mk(*x)]).collect()),
                    );
                    set_names.push((name, *v6));
                }
                for c in &present {
                    rs.chains.insert(c.to_string(), Chain::default());
                }
                rs.chains.insert(
                    "forward".into(),
                    Chain {
                        base: base(
                            Hook::Forward,
                            if base_drop {
                                ChainPolicy::Drop
                            } else {
                                ChainPolicy::Accept
                            },
                        ),
                        rules: vec![],
                    },
                );
                for (from, to, s) in rules {
                    let from = if present.is_empty() {
                        "forward"
                    } else {
                        present[from % present.len()]
                    };
                    let mut matches = vec![];
                    if let Some((name, v6)) = set_names.get(s) {
                        let fam = if *v6 { Family::Ipv6 } else { Family::Ipv4 };
                        matches.push(lookup(&[Field::SrcAddr(fam)], name));
                    }
                    let verdict = match present.get(to) {
                        Some(t) if *t != from && from != "forward" && t > &from => {
                            Verdict::Jump(t.to_string())
                        }
                        Some(t) if from == "forward" => Verdict::Jump(t.to_string()),
                        _ => Verdict::Accept,
                    };
                    rs.chains
                        .get_mut(from)
                        .unwrap()
                        .rules
                        .push(Rule::new(matches, verdict));
                }
                let mut map = VerdictMap {
                    key: vec![KeyType::Ipv4Addr],
                    interval: map_interval,
                    ..VerdictMap::default()
                };
                for (x, t) in map_elems {
                    let v = match present.get(t) {
                        Some(c) => Verdict::Jump(c.to_string()),
                        None => Verdict::Drop,
                    };
                    map.elements
                        .insert(vec![Value::Addr(format!("10.1.0.{x}").parse().unwrap())], v);
                }
                rs.maps.insert("m".into(), map);
                rs.chains
                    .get_mut("forward")
                    .unwrap()
                    .rules
                    .push(vmap(&[Field::DstAddr(Family::Ipv4)], "m"));
                rs
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn any_sequence_of_models_converges(seq in proptest::collection::vec(arb_ruleset(), 1..6)) {
        let mut dp = FakeDataplane::new("palisade");
        for rs in &seq {
            dp.apply(rs).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(dp.table(), Some(&canonicalize(rs)));
        }
        // A fresh dataplane adopting the final table has nothing to do.
        let mut fresh = FakeDataplane::with_table("palisade", dp.table().unwrap().clone());
        prop_assert_eq!(fresh.apply(seq.last().unwrap()).unwrap().commands, 0);
    }
}
