//! The nft dataplane against the real kernel, inside test namespaces (root; never the root
//! namespace): what is programmed equals the model after every apply, a restart adopts the
//! table without recreating it, a rejected transaction changes nothing, and packets follow
//! the set elements (TCP/UDP, IPv4/IPv6).

// `pub`: the support module is shared by several test binaries, each using a part of it.
pub mod nft_support;

use nft_support::netns::*;
use nft_support::*;
use palisade_policy::nft::{canonicalize, Dataplane, DataplaneError, NftDataplane};
use palisade_policy::ruleset::*;
use palisade_testutil::{kernel_tests_enabled, TestNetns};
use std::net::SocketAddr;

fn table_name() -> String {
    format!("palt-{}", std::process::id())
}

/// `rs` with every object renamed `t-<name>` (and every reference with it): names the
/// dataplane can send in nft's own syntax, where the plain test names (`allow4`, `blocks`,
/// ...) make it fall back to JSON.
fn hyphenated(rs: &Ruleset) -> Ruleset {
    let n = |s: &String| format!("t-{s}");
    let verdict = |v: &Verdict| match v {
        Verdict::Jump(c) => Verdict::Jump(n(c)),
        Verdict::Goto(c) => Verdict::Goto(n(c)),
        v => v.clone(),
    };
    let chain = |c: &Chain| {
        let mut c = c.clone();
        for r in &mut c.rules {
            for m in &mut r.matches {
                if let Match::Lookup { set, .. } = m {
                    *set = n(set);
                }
            }
            r.verdict = match r.verdict.take() {
                Some(RuleVerdict::Verdict(v)) => Some(RuleVerdict::Verdict(verdict(&v))),
                Some(RuleVerdict::Vmap { fields, map }) => Some(RuleVerdict::Vmap {
                    fields,
                    map: n(&map),
                }),
                None => None,
            };
        }
        c
    };
    Ruleset {
        chains: rs.chains.iter().map(|(k, c)| (n(k), chain(c))).collect(),
        sets: rs.sets.iter().map(|(k, v)| (n(k), v.clone())).collect(),
        maps: rs
            .maps
            .iter()
            .map(|(k, m)| {
                let mut m = m.clone();
                m.elements = m
                    .elements
                    .iter()
                    .map(|(e, v)| (e.clone(), verdict(v)))
                    .collect();
                (n(k), m)
            })
            .collect(),
    }
}

fn single(tag: &str) -> (TestNetns, NftDataplane) {
    single_with_table(tag, table_name())
}

fn single_with_table(tag: &str, table: String) -> (TestNetns, NftDataplane) {
    let ns = TestNetns::new(tag).unwrap();
    let dp = NftDataplane::new(palisade_policy::nft::NftOptions {
        table,
        netns: Some(ns.path().to_path_buf()),
        ..Default::default()
    });
    (ns, dp)
}

/// The table as the kernel holds it equals the model, with nothing left unparsed.
fn assert_programmed(dp: &NftDataplane, rs: &Ruleset) {
    let l = dp.list().unwrap().expect("table exists");
    assert!(
        l.programmed.stale_chains.is_empty(),
        "unparsed chains {:?}",
        l.programmed.stale_chains
    );
    assert!(
        l.programmed.stale_sets.is_empty(),
        "unparsed sets {:?}",
        l.programmed.stale_sets
    );
    let want = canonicalize(rs);
    if l.programmed.model != want {
        panic!(
            "programmed table differs from the model\n--- kernel:\n{}\n--- model:\n{}",
            palisade_policy::nft::render_table("x", &l.programmed.model),
            palisade_policy::nft::render_table("x", &want)
        );
    }
}

/// Every construct of the model: interval sets with prefixes and ranges, concatenations,
/// ifname wildcards, verdict maps (interval and concatenated), comments, logs, base chains.
fn rich() -> Ruleset {
    let mut rs = two_pods(A4, B4, A6, B6, &[(6, 8080), (17, 5353)]);
    rs.sets.insert(
        "blocks".into(),
        set(
            &[KeyType::Ipv4Addr],
            true,
            vec![
                vec![prefix("10.0.0.0/8")],
                vec![Value::AddrRange(
                    "192.168.1.10".parse().unwrap(),
                    "192.168.1.20".parse().unwrap(),
                )],
                vec![addr("172.16.0.1")],
            ],
        ),
    );
    rs.sets.insert(
        "blocks-ports".into(),
        set(
            &[KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
            true,
            vec![
                vec![
                    prefix("fd00::/64"),
                    Value::Proto(6),
                    Value::PortRange(80, 90),
                ],
                vec![addr("fd01::1"), Value::Proto(132), Value::Port(9)],
            ],
        ),
    );
    rs.sets.insert(
        "vethifs".into(),
        set(
            &[KeyType::IfName],
            true,
            vec![
                vec![Value::IfPrefix("pal".into())],
                vec![Value::IfName("eth0".into())],
            ],
        ),
    );
    rs.maps.insert(
        "portmap".into(),
        VerdictMap {
            key: vec![KeyType::Ipv4Addr, KeyType::InetService],
            interval: true,
            elements: [
                (
                    vec![prefix("10.1.0.0/16"), Value::PortRange(1, 1023)],
                    Verdict::Jump("in-b".into()),
                ),
                (vec![addr("10.2.0.1"), Value::Port(22)], Verdict::Drop),
            ]
            .into_iter()
            .collect(),
            comment: None,
        },
    );
    rs.chains.insert(
        "extras".into(),
        Chain {
            base: None,
            rules: vec![
                Rule::new(
                    vec![
                        Match::Cmp {
                            field: Field::NfProto,
                            op: CmpOp::Eq,
                            value: Value::NfProto(Family::Ipv4),
                        },
                        lookup(&[Field::SrcAddr(Family::Ipv4)], "blocks"),
                        Match::Cmp {
                            field: Field::DstPort,
                            op: CmpOp::Eq,
                            value: Value::PortRange(1000, 2000),
                        },
                    ],
                    Verdict::Return,
                )
                .with_comment("ipBlock with endPort"),
                Rule::new(
                    vec![lookup(
                        &[Field::SrcAddr(Family::Ipv6), Field::L4Proto, Field::DstPort],
                        "blocks-ports",
                    )],
                    Verdict::Accept,
                ),
                Rule::new(
                    vec![
                        Match::Cmp {
                            field: Field::OifName,
                            op: CmpOp::Eq,
                            value: Value::IfPrefix("pal".into()),
                        },
                        Match::Lookup {
                            fields: vec![Field::IifName],
                            set: "vethifs".into(),
                            negate: true,
                        },
                        Match::Cmp {
                            field: Field::L4Proto,
                            op: CmpOp::Ne,
                            value: Value::Proto(17),
                        },
                        Match::Cmp {
                            field: Field::DstAddr(Family::Ipv6),
                            op: CmpOp::Ne,
                            value: prefix("fe80::/10"),
                        },
                    ],
                    Verdict::Goto("in-b".into()),
                ),
                Rule {
                    matches: vec![Match::Cmp {
                        field: Field::NfProto,
                        op: CmpOp::Eq,
                        value: Value::NfProto(Family::Ipv4),
                    }],
                    statements: vec![Statement::Log {
                        group: 2,
                        prefix: "palisade v4".into(),
                        rate_per_second: None,
                    }],
                    verdict: Some(RuleVerdict::Vmap {
                        fields: vec![Field::DstAddr(Family::Ipv4), Field::DstPort],
                        map: "portmap".into(),
                    }),
                    comment: Some("x".repeat(200)),
                },
                Rule {
                    matches: vec![],
                    statements: vec![Statement::Log {
                        group: 3,
                        prefix: "rate only".into(),
                        rate_per_second: Some(5),
                    }],
                    verdict: None,
                    comment: Some("log only".into()),
                },
                Rule::new(
                    vec![Match::CtState(vec![CtState::New, CtState::Untracked])],
                    Verdict::Drop,
                ),
                Rule::new(
                    vec![Match::Cmp {
                        field: Field::NfProto,
                        op: CmpOp::Eq,
                        value: Value::NfProto(Family::Ipv6),
                    }],
                    Verdict::Accept,
                ),
            ],
        },
    );
    rs.chains.insert(
        "input".into(),
        Chain {
            base: Some(BaseChain {
                chain_type: ChainType::Filter,
                hook: Hook::Input,
                priority: -5,
                policy: ChainPolicy::Accept,
            }),
            rules: vec![Rule::new(
                vec![Match::Cmp {
                    field: Field::IifName,
                    op: CmpOp::Eq,
                    value: Value::IfPrefix("pal".into()),
                }],
                Verdict::Jump("extras".into()),
            )],
        },
    );
    // A nat chain with masquerade (compile::masquerade's shape), using an interval set.
    rs.chains.insert(
        "masq".into(),
        Chain {
            base: Some(BaseChain {
                chain_type: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: 100,
                policy: ChainPolicy::Accept,
            }),
            rules: vec![Rule {
                matches: vec![
                    Match::Cmp {
                        field: Field::IifName,
                        op: CmpOp::Eq,
                        value: Value::IfPrefix("pal".into()),
                    },
                    Match::Lookup {
                        fields: vec![Field::DstAddr(Family::Ipv4)],
                        set: "blocks".into(),
                        negate: true,
                    },
                ],
                statements: vec![Statement::Masquerade],
                verdict: None,
                comment: Some("to outside the pod network".into()),
            }],
        },
    );
    rs
}

#[test]
fn programs_reads_back_and_follows_a_sequence_of_changes_as_json() {
    sequence_of_changes(false);
}

/// The same sequence with names nft's own syntax can carry: every transaction goes as an nft
/// script instead of JSON.
#[test]
fn programs_reads_back_and_follows_a_sequence_of_changes_as_script() {
    sequence_of_changes(true);
}

fn sequence_of_changes(script: bool) {
    if !kernel_tests_enabled() {
        return;
    }
    // A table name without a hyphen cannot go in nft's syntax: everything goes as JSON.
    // The script variant also starts cold in three steps (see `staged_cold_start`), whatever
    // the number of elements.
    let (ns, mut dp) = if script {
        let ns = TestNetns::new("nft-seqs").unwrap();
        let dp = NftDataplane::new(palisade_policy::nft::NftOptions {
            table: table_name(),
            netns: Some(ns.path().to_path_buf()),
            staged_min_elements: 1,
            ..Default::default()
        });
        (ns, dp)
    } else {
        single_with_table("nft-seqj", format!("paltj{}", std::process::id()))
    };
    let m = |rs: &Ruleset| if script { hyphenated(rs) } else { rs.clone() };
    // Applies a model and checks what the kernel then holds and which syntax carried it.
    let apply = |dp: &mut NftDataplane, rs: &Ruleset| {
        let stats = dp.apply(&m(rs)).unwrap();
        let last = dp.last_apply();
        if stats.commands > 0 && !last.via_netlink {
            assert_eq!(last.script, script, "sent as an nft script: {stats:?}");
        }
        assert_programmed(dp, &m(rs));
        stats
    };
    // A table someone else owns in the same namespace must survive everything.
    ns.sh("nft add table inet bystander && nft add chain inet bystander c")
        .unwrap();

    let rs = rich();
    let s = apply(&mut dp, &rs);
    assert!(s.full);
    assert_eq!(
        dp.last_apply().staged,
        script,
        "a cold start in three steps"
    );

    // One element in: one command.
    let mut rs2 = rs.clone();
    rs2.sets.get_mut("allow4").unwrap().elements.insert(vec![
        addr("10.70.9.9"),
        Value::Proto(6),
        Value::Port(80),
    ]);
    assert_eq!(apply(&mut dp, &rs2).commands, 1);

    // Interval set: a wider prefix swallowing an element (merged, delete + add in order).
    let mut rs3 = rs2.clone();
    rs3.sets
        .get_mut("blocks")
        .unwrap()
        .elements
        .insert(vec![prefix("172.16.0.0/12")]);
    apply(&mut dp, &rs3);

    // A chain's rules change; a map element re-points; a set changes type under its user.
    let mut rs4 = rs3.clone();
    rs4.chains.get_mut("in-b").unwrap().rules.insert(
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
    rs4.maps
        .get_mut("portmap")
        .unwrap()
        .elements
        .insert(vec![addr("10.2.0.1"), Value::Port(22)], Verdict::Accept);
    rs4.sets.insert(
        "vethifs".into(),
        set(
            &[KeyType::IfName],
            false,
            vec![vec![Value::IfName("eth1".into())]],
        ),
    );
    apply(&mut dp, &rs4);

    // Base chain policy and hook priority change.
    let mut rs5 = rs4.clone();
    rs5.chains.get_mut("input").unwrap().base = Some(BaseChain {
        chain_type: ChainType::Filter,
        hook: Hook::Input,
        priority: 10,
        policy: ChainPolicy::Drop,
    });
    rs5.chains
        .get_mut("forward")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .policy = ChainPolicy::Drop;
    apply(&mut dp, &rs5);

    // Drop the extras: chains, sets and maps deleted after their users.
    let rs6 = two_pods(A4, B4, A6, B6, &[(6, 8080)]);
    apply(&mut dp, &rs6);
    apply(&mut dp, &Ruleset::default());

    // Resync from what is programmed after invalidate: nothing to do.
    apply(&mut dp, &rs);
    dp.invalidate();
    let s = dp.apply(&m(&rs)).unwrap();
    assert!(s.full);
    assert_eq!(s.commands, 0, "adopting an identical table sends nothing");

    dp.delete_table().unwrap();
    assert!(dp.list().unwrap().is_none());
    assert!(
        ns.sh_ok("nft list chain inet bystander c"),
        "other tables are never touched"
    );
}

/// Every whole-word name the dataplane sends in nft's own syntax
/// (`palisade_policy::nft::SCRIPT_WORDS`) really is an identifier there: as the table, as
/// chains (jumped to), as sets (looked up) and as verdict maps, and nft holds exactly that.
#[test]
fn script_names_are_identifiers() {
    if !kernel_tests_enabled() {
        return;
    }
    let words = palisade_policy::nft::SCRIPT_WORDS;
    for table in words {
        let (_ns, mut dp) = single_with_table("nft-words", table.to_string());
        for as_map in [false, true] {
            let mut rs = Ruleset::default();
            let mut user = Chain::default();
            for w in words {
                rs.chains.insert(w.to_string(), Chain::default());
                user.rules
                    .push(Rule::new(vec![], Verdict::Jump(w.to_string())));
                if as_map {
                    let mut m = VerdictMap {
                        key: vec![KeyType::Ipv4Addr],
                        ..VerdictMap::default()
                    };
                    m.elements
                        .insert(vec![addr("10.9.0.1")], Verdict::Goto(w.to_string()));
                    rs.maps.insert(w.to_string(), m);
                    user.rules.push(vmap(&[Field::SrcAddr(Family::Ipv4)], w));
                } else {
                    rs.sets.insert(
                        w.to_string(),
                        set(&[KeyType::Ipv4Addr], false, vec![vec![addr("10.9.0.1")]]),
                    );
                    user.rules.push(Rule::new(
                        vec![lookup(&[Field::SrcAddr(Family::Ipv4)], w)],
                        Verdict::Accept,
                    ));
                }
            }
            rs.chains.insert("t-user".into(), user);
            dp.apply(&rs)
                .unwrap_or_else(|e| panic!("table {table}, maps {as_map}: {e}"));
            assert!(dp.last_apply().script, "table {table} went as a script");
            assert_programmed(&dp, &rs);
            // Deleting everything: every name also in a delete command.
            dp.apply(&Ruleset::default()).unwrap();
            assert!(dp.last_apply().script);
            assert_programmed(&dp, &Ruleset::default());
        }
    }
}

/// A directory removed when dropped (also when the test fails).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cold start in three steps whose last step (attaching the base chains) fails: what was
/// made has no base chain, so no hook and no effect on any packet; the next apply reads it
/// back and converges.
#[test]
fn a_cold_start_in_steps_attaches_nothing_until_its_last_step() {
    use std::os::unix::fs::PermissionsExt;
    if !kernel_tests_enabled() {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("{}-nftwrap", table_name())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let refuse = dir.0.join("refuse");
    let wrapper = dir.0.join("nft");
    // nft, except that while `refuse` exists it refuses any input that names a hook.
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nin=$(cat)\nif [ -e {r} ] && printf '%s' \"$in\" | grep -q hook; then\n  \
             echo 'refused by the test' >&2; exit 1\nfi\nprintf '%s' \"$in\" | exec nft \"$@\"\n",
            r = refuse.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&refuse, "").unwrap();

    let ns = TestNetns::new("nft-staged").unwrap();
    let mut dp = NftDataplane::new(palisade_policy::nft::NftOptions {
        table: table_name(),
        nft: wrapper.clone(),
        netns: Some(ns.path().to_path_buf()),
        staged_min_elements: 1,
        ..Default::default()
    });
    let rs = hyphenated(&rich());
    match dp.apply(&rs) {
        Err(DataplaneError::Nft(msg)) => assert!(msg.contains("refused by the test"), "{msg}"),
        other => panic!("the last step must fail: {other:?}"),
    }
    assert!(dp.last_apply().staged);
    let made = dp.list().unwrap().expect("the first steps made the table");
    let model = &made.programmed.model;
    assert!(
        model.chains.values().all(|c| c.base.is_none()),
        "no base chain before the last step"
    );
    assert!(
        model.chains.contains_key("t-in-b"),
        "regular chains were made"
    );
    assert_eq!(
        model.sets["t-allow4"].elements,
        canonicalize(&rs).sets["t-allow4"].elements,
        "elements went in as netlink batches"
    );
    assert!(
        !ns.sh("nft list ruleset").unwrap().contains("hook"),
        "nothing is attached to a hook"
    );

    std::fs::remove_file(&refuse).unwrap();
    let s = dp.apply(&rs).unwrap();
    assert!(s.full, "after an error the table is read back");
    assert!(!dp.last_apply().staged, "the table exists: one transaction");
    assert_programmed(&dp, &rs);
}

#[test]
fn a_restart_adopts_the_table_without_recreating_it() {
    if !kernel_tests_enabled() {
        return;
    }
    let (ns, mut first) = single("nft-adopt");
    let rs = rich();
    first.apply(&rs).unwrap();
    let before = first.list().unwrap().unwrap();

    // A new agent: its model differs in one chain, one set element and one map element.
    let mut rs2 = rs.clone();
    rs2.chains.get_mut("extras").unwrap().rules.pop();
    rs2.sets.get_mut("allow6").unwrap().elements.clear();
    rs2.maps
        .get_mut("ingress4")
        .unwrap()
        .elements
        .insert(vec![addr("10.70.3.3")], Verdict::Jump("in-b".into()));
    let mut second = NftDataplane::new(first.options().clone());
    let s = second.apply(&rs2).unwrap();
    assert!(s.full);
    assert!(
        s.commands <= 1 + 7 + 2,
        "flush extras + its 7 rules, 2 element commands: {}",
        s.commands
    );
    assert_programmed(&second, &rs2);
    let after = second.list().unwrap().unwrap();
    assert_eq!(
        before.table_handle, after.table_handle,
        "the table was not recreated"
    );
    assert_eq!(
        before.chain_handles, after.chain_handles,
        "no chain was recreated"
    );
    assert_eq!(
        before.set_handles, after.set_handles,
        "no set was recreated"
    );
    // The rules of unchanged chains keep their handles: they were not flushed.
    let handles = |l: &palisade_policy::nft::Listing, chain: &str| -> Vec<u64> {
        l.counters
            .iter()
            .filter(|c| c.chain == chain)
            .map(|c| c.handle)
            .collect()
    };
    assert_eq!(handles(&before, "in-b"), handles(&after, "in-b"));
    assert!(!handles(&after, "in-b").is_empty());
    drop(ns);
}

#[test]
fn a_rejected_transaction_reports_nft_and_changes_nothing() {
    if !kernel_tests_enabled() {
        return;
    }
    let (_ns, mut dp) = single("nft-reject");
    let rs = two_pods(A4, B4, A6, B6, &[(6, 8080)]);
    dp.apply(&rs).unwrap();
    // Overlapping elements in a concatenated interval set pass the model checks but the
    // kernel refuses them; the same transaction also adds a chain.
    let mut bad = rs.clone();
    let allow = bad.sets.get_mut("allow4").unwrap();
    allow
        .elements
        .insert(vec![prefix("10.0.0.0/8"), Value::Proto(6), Value::Port(80)]);
    allow.elements.insert(vec![
        prefix("10.1.0.0/16"),
        Value::Proto(6),
        Value::Port(80),
    ]);
    bad.chains.insert("new-chain".into(), Chain::default());
    match dp.apply(&bad) {
        Err(DataplaneError::Nft(msg)) => {
            assert!(msg.contains("Error"), "nft's own message: {msg}");
            assert!(
                msg.contains("add element allow4"),
                "the transaction text: {msg}"
            );
        }
        other => panic!("expected an nft error, got {other:?}"),
    }
    assert_programmed(&dp, &rs);
    // The next apply re-reads the table and works.
    let s = dp.apply(&rs).unwrap();
    assert!(s.full);
    assert_eq!(s.commands, 0);
}

#[test]
fn packets_follow_the_set_elements() {
    if !kernel_tests_enabled() {
        return;
    }
    let t = Topology::new("nft-traffic");
    let mut dp = t.dataplane(&table_name());
    let tcp4: SocketAddr = format!("{B4}:8080").parse().unwrap();
    let tcp6: SocketAddr = format!("[{B6}]:8080").parse().unwrap();
    let udp4: SocketAddr = format!("{B4}:5353").parse().unwrap();
    let udp6: SocketAddr = format!("[{B6}]:5353").parse().unwrap();
    tcp_server(&t.b, 8080);
    tcp_server(&t.b, 8081);
    let tcp4_other: SocketAddr = format!("{B4}:8081").parse().unwrap();

    // No table: everything flows.
    assert!(tcp_open(&t.a, tcp4) && tcp_open(&t.a, tcp6));
    assert!(udp_open(&t.a, &t.b, udp4) && udp_open(&t.a, &t.b, udp6));

    // TCP 8080 allowed, UDP 5353 not.
    let rs = two_pods(A4, B4, A6, B6, &[(6, 8080)]);
    dp.apply(&rs).unwrap();
    assert!(tcp_open(&t.a, tcp4), "tcp4 allowed");
    assert!(tcp_open(&t.a, tcp6), "tcp6 allowed");
    assert!(tcp_blocked(&t.a, tcp4_other), "tcp4 to another port denied");
    assert!(udp_blocked(&t.a, &t.b, udp4), "udp4 denied");
    assert!(udp_blocked(&t.a, &t.b, udp6), "udp6 denied");
    // The reverse direction is not dispatched (A has no ingress chain): allowed.
    let back = tcp_server(&t.a, 8080);
    assert!(tcp_open(
        &t.b,
        format!("{A4}:{}", back.port()).parse().unwrap()
    ));

    // Flip: UDP allowed, TCP denied, by element changes only.
    let rs2 = two_pods(A4, B4, A6, B6, &[(17, 5353)]);
    let s = dp.apply(&rs2).unwrap();
    assert_eq!(s.commands, 4, "a delete and an add per set");
    assert!(udp_open(&t.a, &t.b, udp4), "udp4 allowed");
    assert!(udp_open(&t.a, &t.b, udp6), "udp6 allowed");
    assert!(tcp_blocked(&t.a, tcp4), "tcp4 denied");
    assert!(tcp_blocked(&t.a, tcp6), "tcp6 denied");

    // The counted drop rule saw the denied packets.
    let counters = dp.list_rules_with_counters().unwrap();
    let denied = counters
        .iter()
        .find(|c| c.chain == "in-b" && c.comment.as_deref() == Some("ingress denied"))
        .expect("counter of the drop rule");
    assert!(denied.packets >= 4, "denied packets counted: {denied:?}");

    // Removing B from dispatch opens it again.
    let mut rs3 = rs2.clone();
    rs3.maps.get_mut("ingress4").unwrap().elements.clear();
    dp.apply(&rs3).unwrap();
    assert!(tcp_open(&t.a, tcp4), "not isolated: allowed");
    assert!(tcp_blocked(&t.a, tcp6), "v6 still isolated");
}

/// A model with every kind of set the element fast path encodes: plain v4 and v6 address
/// sets, a concatenated `addr . proto . port` set, and v4/v6 dispatch verdict maps with every
/// verdict; plus `rich`'s interval sets and map (and its set of interface names, which
/// always goes through nft).
fn churn_model(pods: &[u32]) -> Ruleset {
    let mut rs = rich();
    let v4: Vec<Vec<Value>> = pods.iter().map(|&i| vec![Value::Addr(pod_ip(i))]).collect();
    let v6: Vec<Vec<Value>> = pods
        .iter()
        .map(|&i| vec![Value::Addr(pod_ip6(i))])
        .collect();
    rs.sets.insert(
        "peers4".into(),
        set(&[KeyType::Ipv4Addr], false, v4.clone()),
    );
    rs.sets.insert(
        "peers6".into(),
        set(&[KeyType::Ipv6Addr], false, v6.clone()),
    );
    rs.sets.insert(
        "named4".into(),
        set(
            &[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
            false,
            pods.iter()
                .map(|&i| {
                    vec![
                        Value::Addr(pod_ip(i)),
                        Value::Proto([6, 17, 132][i as usize % 3]),
                        Value::Port(8000 + i as u16),
                    ]
                })
                .collect(),
        ),
    );
    let verdicts = [
        Verdict::Jump("in-b".into()),
        Verdict::Goto("extras".into()),
        Verdict::Accept,
        Verdict::Drop,
        Verdict::Return,
    ];
    for (name, keys) in [("ingress4", &v4), ("ingress6", &v6)] {
        let m = rs.maps.get_mut(name).unwrap();
        for (n, k) in keys.iter().enumerate() {
            m.elements
                .insert(k.clone(), verdicts[n % verdicts.len()].clone());
        }
    }
    for (family, set) in [(Family::Ipv4, "peers4"), (Family::Ipv6, "peers6")] {
        rs.chains.get_mut("extras").unwrap().rules.push(Rule::new(
            vec![lookup(&[Field::SrcAddr(family)], set)],
            Verdict::Accept,
        ));
    }
    rs.chains.get_mut("extras").unwrap().rules.push(Rule::new(
        vec![lookup(
            &[Field::DstAddr(Family::Ipv4), Field::L4Proto, Field::DstPort],
            "named4",
        )],
        Verdict::Accept,
    ));
    rs
}

#[test]
fn element_churn_goes_as_a_netlink_batch_and_matches_the_model() {
    if !kernel_tests_enabled() {
        return;
    }
    let (_ns, mut dp) = single("nft-netlink");
    let mut pods: Vec<u32> = (1..=12).collect();
    let rs = churn_model(&pods);
    dp.apply(&rs).unwrap();
    assert!(!dp.last_apply().via_netlink, "the cold apply runs nft");
    assert_programmed(&dp, &rs);

    // Pods come and go: every change is element-only, every one goes as a batch, and the
    // kernel's table equals the model after each.
    for step in 0..8u32 {
        pods.retain(|p| (p + step) % 5 != 0);
        pods.extend([100 + step * 3, 101 + step * 3]);
        let rs = churn_model(&pods);
        let s = dp.apply(&rs).unwrap();
        assert!(s.commands > 0, "step {step} changed nothing");
        assert!(dp.last_apply().via_netlink, "step {step} ran nft");
        assert!(dp.last_apply().netlink_refused.is_none());
        assert_programmed(&dp, &rs);
    }
    // A changed verdict of an existing map element: delete + add in one batch.
    let mut rs = churn_model(&pods);
    let key = vec![Value::Addr(pod_ip(pods[0]))];
    let m = rs.maps.get_mut("ingress4").unwrap();
    let other = match m.elements[&key] {
        Verdict::Drop => Verdict::Accept,
        _ => Verdict::Drop,
    };
    m.elements.insert(key, other);
    dp.apply(&rs).unwrap();
    assert!(dp.last_apply().via_netlink);
    assert_programmed(&dp, &rs);

    // Interval sets and maps go by netlink too: a wider prefix swallowing an element of a
    // single-field set (the merged interval replaces it), a concatenated interval set and
    // an interval verdict map.
    let mut with_block = rs.clone();
    let blocks = &mut with_block.sets.get_mut("blocks").unwrap().elements;
    blocks.insert(vec![prefix("100.64.0.0/10")]);
    blocks.insert(vec![prefix("172.16.0.0/12")]);
    with_block
        .sets
        .get_mut("blocks-ports")
        .unwrap()
        .elements
        .insert(vec![
            addr("fd02::7"),
            Value::Proto(17),
            Value::PortRange(53, 54),
        ]);
    let portmap = &mut with_block.maps.get_mut("portmap").unwrap().elements;
    portmap.remove(&vec![addr("10.2.0.1"), Value::Port(22)]);
    portmap.insert(
        vec![prefix("10.3.0.0/24"), Value::PortRange(8000, 8080)],
        // (not `extras`: the map is used there, a loop the kernel refuses)
        Verdict::Goto("in-b".into()),
    );
    dp.apply(&with_block).unwrap();
    assert!(dp.last_apply().via_netlink, "interval sets go by netlink");
    assert!(dp.last_apply().netlink_refused.is_none());
    assert_programmed(&dp, &with_block);
    // Interface names are not encoded: that change goes through nft.
    let mut names = with_block.clone();
    names
        .sets
        .get_mut("vethifs")
        .unwrap()
        .elements
        .remove(&vec![Value::IfName("eth0".into())]);
    dp.apply(&names).unwrap();
    assert!(!dp.last_apply().via_netlink, "interface names run nft");
    assert_programmed(&dp, &names);
    dp.apply(&with_block).unwrap();
    assert_programmed(&dp, &with_block);

    // Someone else removed an element behind our back: the batch deleting it is refused,
    // nothing changes, the same commands through nft fail too, and the next apply re-reads
    // the table and converges.
    let gone = pod_ip(pods[1]);
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", _ns.path().display()))
        .args(["nft", "delete", "element", "inet", &table_name(), "peers4"])
        .arg(format!("{{ {gone} }}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let mut fewer = with_block.clone();
    fewer
        .sets
        .get_mut("peers4")
        .unwrap()
        .elements
        .remove(&vec![Value::Addr(gone)]);
    fewer
        .sets
        .get_mut("peers4")
        .unwrap()
        .elements
        .insert(vec![Value::Addr(pod_ip(999))]);
    assert!(dp.apply(&fewer).is_err(), "deleting a missing element");
    let refused = dp
        .last_apply()
        .netlink_refused
        .clone()
        .expect("refusal noted");
    assert!(refused.contains("delete element peers4"), "{refused}");
    // Nothing of that batch was applied (the add of pod 999 neither).
    let mut expect_now = with_block.clone();
    expect_now
        .sets
        .get_mut("peers4")
        .unwrap()
        .elements
        .remove(&vec![Value::Addr(gone)]);
    assert_programmed(&dp, &expect_now);
    let s = dp.apply(&fewer).unwrap();
    assert!(s.full, "re-read after the error");
    assert_programmed(&dp, &fewer);
}

/// The sets and maps of the interval property test: name, key, map or set.
const INTERVAL_OBJECTS: [(&str, &[KeyType], bool); 6] = [
    ("t-s4", &[KeyType::Ipv4Addr], false),
    ("t-s6", &[KeyType::Ipv6Addr], false),
    ("t-ports", &[KeyType::InetService], false),
    ("t-m4", &[KeyType::Ipv4Addr], true),
    (
        "t-mc4",
        &[KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
        true,
    ),
    (
        "t-sc6",
        &[KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService],
        false,
    ),
];

/// Variant `v` (1..=6) of slot `s` (0..8) of a key space of `bits` bits: the slots are the
/// eighths of the space (by their top three bits), so slot 0 holds the key 0 and slot 7 the
/// top key. Different slots never overlap; whole slots and a slot's last keys touch the next
/// slot (adjacent intervals, which a single-field set merges).
fn slot_bounds(bits: u32, s: usize, v: usize) -> (u128, u128) {
    let width = 1u128 << (bits - 3);
    let lo = s as u128 * width;
    let hi = lo + (width - 1);
    match v {
        1 => (lo, hi),
        2 => (lo + 5, lo + 5),
        3 => (lo + 16, lo + 40),
        4 => (lo, lo + width / 2 - 1),
        5 => (hi - 9, hi),
        _ => (lo, lo),
    }
}

/// [`slot_bounds`] as an address value, spelled as a prefix where it is one (as the
/// compiler spells CIDRs) and as a range otherwise.
fn slot_addr(v6: bool, s: usize, v: usize) -> Value {
    let (lo, hi) = slot_bounds(if v6 { 128 } else { 32 }, s, v);
    let ip = |x: u128| -> std::net::IpAddr {
        if v6 {
            std::net::Ipv6Addr::from(x).into()
        } else {
            std::net::Ipv4Addr::from(x as u32).into()
        }
    };
    if lo == hi {
        return Value::Addr(ip(lo));
    }
    let len = (hi - lo + 1).trailing_zeros();
    let bits = if v6 { 128 } else { 32 };
    if (hi - lo + 1).is_power_of_two() && lo % (1u128 << len) == 0 {
        Value::Prefix(ipnet::IpNet::new(ip(lo), (bits - len) as u8).unwrap())
    } else {
        Value::AddrRange(ip(lo), ip(hi))
    }
}

fn slot_port(s: usize, v: usize) -> Value {
    let (lo, hi) = slot_bounds(16, s, v);
    if lo == hi {
        Value::Port(lo as u16)
    } else {
        Value::PortRange(lo as u16, hi as u16)
    }
}

/// The model for `state` ((object, slot) -> variant): the objects of [`INTERVAL_OBJECTS`],
/// all with `flags interval`, and two chains the map elements jump and go to.
fn interval_model(state: &std::collections::BTreeMap<(usize, usize), usize>) -> Ruleset {
    let mut rs = Ruleset::default();
    for c in ["t-c0", "t-c1"] {
        rs.chains.insert(c.into(), Chain::default());
    }
    let verdicts = [
        Verdict::Jump("t-c0".into()),
        Verdict::Goto("t-c1".into()),
        Verdict::Accept,
        Verdict::Drop,
    ];
    for (o, (name, key, map)) in INTERVAL_OBJECTS.iter().enumerate() {
        let elements = state.range((o, 0)..(o + 1, 0)).map(|(&(_, s), &v)| {
            let k = match key.len() {
                1 => match key[0] {
                    KeyType::InetService => vec![slot_port(s, v)],
                    k => vec![slot_addr(k == KeyType::Ipv6Addr, s, v)],
                },
                _ => vec![
                    slot_addr(key[0] == KeyType::Ipv6Addr, s, v),
                    Value::Proto([6, 17][v % 2]),
                    slot_port((s + v) % 8, v),
                ],
            };
            (k, verdicts[(s + v) % verdicts.len()].clone())
        });
        if *map {
            rs.maps.insert(
                name.to_string(),
                VerdictMap {
                    key: key.to_vec(),
                    interval: true,
                    elements: elements.collect(),
                    comment: None,
                },
            );
        } else {
            let keys = elements.map(|(k, _)| k).collect();
            rs.sets.insert(name.to_string(), set(key, true, keys));
        }
    }
    rs
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random sequences of interval element additions and deletions (disjoint, as the model
    /// holds them; adjacent ones merged by the canonical form as nft would list them): sent
    /// by netlink, they leave every set and map equal to the model, and nft lists the table
    /// exactly as it lists the same sequence sent through nft.
    #[test]
    fn interval_elements_by_netlink_follow_the_model_as_nft_does(
        steps in proptest::collection::vec(
            proptest::collection::vec((0usize..6, 0usize..8, 0usize..7), 1..10),
            1..8,
        )
    ) {
        if !kernel_tests_enabled() {
            return Ok(());
        }
        let ns = TestNetns::new("nft-ivprop").unwrap();
        let table = table_name();
        let text_table = format!("{table}-text");
        let dataplane = |table: &str, netlink: bool| {
            NftDataplane::new(palisade_policy::nft::NftOptions {
                table: table.to_string(),
                netns: Some(ns.path().to_path_buf()),
                netlink_elements: netlink,
                ..Default::default()
            })
        };
        let mut by_netlink = dataplane(&table, true);
        let mut by_text = dataplane(&text_table, false);
        let mut state = std::collections::BTreeMap::new();
        let rs = interval_model(&state);
        by_netlink.apply(&rs).unwrap();
        by_text.apply(&rs).unwrap();
        for (i, step) in steps.iter().enumerate() {
            for &(o, s, v) in step {
                if v == 0 {
                    state.remove(&(o, s));
                } else {
                    state.insert((o, s), v);
                }
            }
            let rs = interval_model(&state);
            let stats = by_netlink.apply(&rs).unwrap();
            let last = by_netlink.last_apply();
            proptest::prop_assert!(last.netlink_refused.is_none(), "step {}: {:?}", i, last);
            proptest::prop_assert!(
                stats.commands == 0 || last.via_netlink,
                "step {} went through nft", i
            );
            by_text.apply(&rs).unwrap();
            proptest::prop_assert!(!by_text.last_apply().via_netlink);
            assert_programmed(&by_netlink, &rs);
            assert_programmed(&by_text, &rs);
            let listed = by_netlink.list_text().unwrap();
            let text_listed = by_text.list_text().unwrap().replace(&text_table, &table);
            proptest::prop_assert_eq!(listed, text_listed, "step {}", i);
        }
    }
}
