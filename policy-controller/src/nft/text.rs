//! The canonical nft text of a model: sorted, one element per line, rate-limited logs split
//! exactly as they are programmed (see `json`). For logs, `palisadectl` and golden files;
//! what is sent to nft is [`script`] when every name allows, JSON otherwise (see `json`).

use super::json::{chain_type_name, ct_state_name, hook_name, key_type_name};
use crate::ruleset::{
    ChainPolicy, CmpOp, Family, Field, KeyType, Match, Rule, RuleVerdict, Ruleset, Statement,
    Value, Verdict,
};
use std::fmt::Write;

/// The whole table `inet palisade` as nft text.
pub fn render_full(rs: &Ruleset) -> String {
    render_table(palisade_common::POLICY_TABLE, rs)
}

/// The whole table `inet <table>` as nft text.
pub fn render_table(table: &str, rs: &Ruleset) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {table} {{");
    for (name, set) in &rs.sets {
        let _ = writeln!(s, "\tset {name} {{");
        let _ = writeln!(s, "\t\ttype {}", key_types(&set.key));
        if set.interval {
            let _ = writeln!(s, "\t\tflags interval");
        }
        if let Some(c) = &set.comment {
            let _ = writeln!(s, "\t\tcomment {}", quote(c));
        }
        let elems: Vec<String> = set.elements.iter().map(|e| key_text(e)).collect();
        write_elements(&mut s, &elems);
        let _ = writeln!(s, "\t}}");
    }
    for (name, map) in &rs.maps {
        let _ = writeln!(s, "\tmap {name} {{");
        let _ = writeln!(s, "\t\ttype {} : verdict", key_types(&map.key));
        if map.interval {
            let _ = writeln!(s, "\t\tflags interval");
        }
        if let Some(c) = &map.comment {
            let _ = writeln!(s, "\t\tcomment {}", quote(c));
        }
        let elems: Vec<String> = map
            .elements
            .iter()
            .map(|(k, v)| format!("{} : {}", key_text(k), verdict_text(v)))
            .collect();
        write_elements(&mut s, &elems);
        let _ = writeln!(s, "\t}}");
    }
    for (name, chain) in &rs.chains {
        let _ = writeln!(s, "\tchain {name} {{");
        if let Some(b) = &chain.base {
            let policy = match b.policy {
                ChainPolicy::Accept => "accept",
                ChainPolicy::Drop => "drop",
            };
            let _ = writeln!(
                s,
                "\t\ttype {} hook {} priority {}; policy {policy};",
                chain_type_name(b.chain_type),
                hook_name(b.hook),
                b.priority
            );
        }
        for r in &chain.rules {
            for line in rule_lines(r) {
                let _ = writeln!(s, "\t\t{line}");
            }
        }
        let _ = writeln!(s, "\t}}");
    }
    s.push_str("}\n");
    s
}

fn write_elements(s: &mut String, elems: &[String]) {
    if elems.is_empty() {
        return;
    }
    let _ = writeln!(s, "\t\telements = {{");
    for (i, e) in elems.iter().enumerate() {
        let sep = if i + 1 < elems.len() { "," } else { "" };
        let _ = writeln!(s, "\t\t\t{e}{sep}");
    }
    let _ = writeln!(s, "\t\t}}");
}

fn quote(s: &str) -> String {
    // nft's lexer has no escapes inside quoted strings; show a quote as an apostrophe.
    format!("\"{}\"", s.replace('"', "'"))
}

fn key_types(k: &[KeyType]) -> String {
    k.iter()
        .map(|k| key_type_name(*k))
        .collect::<Vec<_>>()
        .join(" . ")
}

fn key_text(k: &[Value]) -> String {
    k.iter().map(value_text).collect::<Vec<_>>().join(" . ")
}

pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::Addr(a) => a.to_string(),
        Value::Prefix(n) => n.to_string(),
        Value::AddrRange(a, b) => format!("{a}-{b}"),
        Value::Proto(p) => p.to_string(),
        Value::Port(p) => p.to_string(),
        Value::PortRange(a, b) => format!("{a}-{b}"),
        Value::IfName(n) => quote(n),
        Value::IfPrefix(p) => quote(&format!("{p}*")),
        Value::NfProto(Family::Ipv4) => "ipv4".into(),
        Value::NfProto(Family::Ipv6) => "ipv6".into(),
    }
}

fn field_text(f: Field) -> &'static str {
    match f {
        Field::SrcAddr(Family::Ipv4) => "ip saddr",
        Field::DstAddr(Family::Ipv4) => "ip daddr",
        Field::SrcAddr(Family::Ipv6) => "ip6 saddr",
        Field::DstAddr(Family::Ipv6) => "ip6 daddr",
        Field::L4Proto => "meta l4proto",
        Field::DstPort => "th dport",
        Field::IifName => "iifname",
        Field::OifName => "oifname",
        Field::NfProto => "meta nfproto",
    }
}

fn fields_text(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| field_text(*f))
        .collect::<Vec<_>>()
        .join(" . ")
}

pub(crate) fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn match_text(m: &Match) -> String {
    match m {
        Match::Cmp { field, op, value } => {
            let op = if *op == CmpOp::Ne { "!= " } else { "" };
            format!("{} {op}{}", field_text(*field), value_text(value))
        }
        Match::Lookup {
            fields,
            set,
            negate,
        } => {
            let op = if *negate { "!= " } else { "" };
            format!("{} {op}@{set}", fields_text(fields))
        }
        Match::CtState(states) => format!(
            "ct state {}",
            states
                .iter()
                .map(|s| ct_state_name(*s))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// The nft rule lines of one model rule (more than one for a rate-limited log).
pub(crate) fn rule_lines(rule: &Rule) -> Vec<String> {
    let matches: Vec<String> = rule.matches.iter().map(match_text).collect();
    let comment = rule
        .comment
        .as_ref()
        .map(|c| format!("comment {}", quote(c)));
    let finish = |mut parts: Vec<String>| {
        parts.extend(comment.clone());
        parts.join(" ")
    };
    let mut out = Vec::new();
    let mut cur = matches.clone();
    for st in &rule.statements {
        match st {
            Statement::Counter => cur.push("counter".into()),
            Statement::Log {
                group,
                prefix,
                rate_per_second,
            } => {
                if let Some(r) = rate_per_second {
                    cur.push(format!("limit rate {r}/second"));
                }
                cur.push(format!("log group {group} prefix {}", quote(prefix)));
                if rate_per_second.is_some() {
                    out.push(finish(std::mem::replace(&mut cur, matches.clone())));
                }
            }
            Statement::Masquerade => cur.push("masquerade fully-random".into()),
        }
    }
    match &rule.verdict {
        Some(RuleVerdict::Verdict(v)) => cur.push(verdict_text(v)),
        Some(RuleVerdict::Vmap { fields, map }) => {
            cur.push(format!("{} vmap @{map}", fields_text(fields)))
        }
        None => {}
    }
    if cur.len() > matches.len() || out.is_empty() {
        out.push(finish(cur));
    }
    out
}

/// One command as nft-like text (for logs and error messages): as in [`script`], without
/// the table.
pub fn op_text(op: &super::plan::Op) -> String {
    let mut s = String::new();
    write_op(&mut s, "", op);
    s.pop(); // the last newline
    s
}

/// One command in nft's syntax, each nft command on a line of its own (a rule with a
/// rate-limited log is several). `table` is what names the table before every object name,
/// `inet <table> ` in a script, empty for a log line. An empty element list, which nft
/// refuses, is left out of a script and shown as `{  }` in a log line.
fn write_op(s: &mut String, table: &str, op: &super::plan::Op) {
    use super::plan::Op;
    let t = table;
    let elements = |s: &mut String, command: String, items: &mut dyn Iterator<Item = String>| {
        let mut items = items.peekable();
        if items.peek().is_none() {
            if t.is_empty() {
                let _ = writeln!(s, "{command} {{  }}");
            }
            return;
        }
        s.push_str(&command);
        let mut first = true;
        for e in items {
            s.push_str(if first { " { " } else { ", " });
            s.push_str(&e);
            first = false;
        }
        s.push_str(" }\n");
    };
    match op {
        Op::AddTable => {
            s.push_str("add table");
            if !t.is_empty() {
                s.push(' ');
                s.push_str(t.trim_end());
            }
            s.push('\n');
        }
        Op::AddChain { name, base: None } => {
            let _ = writeln!(s, "add chain {t}{name}");
        }
        Op::AddChain {
            name,
            base: Some(b),
        } => {
            let _ = writeln!(
                s,
                "add chain {t}{name} {{ type {} hook {} priority {}; policy {}; }}",
                chain_type_name(b.chain_type),
                hook_name(b.hook),
                b.priority,
                match b.policy {
                    ChainPolicy::Accept => "accept",
                    ChainPolicy::Drop => "drop",
                }
            );
        }
        Op::FlushChain { name } => {
            let _ = writeln!(s, "flush chain {t}{name}");
        }
        Op::DeleteChain { name } => {
            let _ = writeln!(s, "delete chain {t}{name}");
        }
        Op::AddSet { name, spec } => {
            let kind = if spec.map { "map" } else { "set" };
            let verdict = if spec.map { " : verdict" } else { "" };
            let flags = if spec.interval {
                " flags interval;"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "add {kind} {t}{name} {{ type {}{verdict};{flags} }}",
                key_types(&spec.key)
            );
        }
        Op::DeleteSet { name, spec } => {
            let kind = if spec.map { "map" } else { "set" };
            let _ = writeln!(s, "delete {kind} {t}{name}");
        }
        Op::AddElements { set, elements: e } => elements(
            s,
            format!("add element {t}{set}"),
            &mut e.iter().map(|k| key_text(k)),
        ),
        Op::DeleteElements { set, elements: e } => elements(
            s,
            format!("delete element {t}{set}"),
            &mut e.iter().map(|k| key_text(k)),
        ),
        Op::AddMapElements { map, elements: e } => elements(
            s,
            format!("add element {t}{map}"),
            &mut e
                .iter()
                .map(|(k, v)| format!("{} : {}", key_text(k), verdict_text(v))),
        ),
        Op::DeleteMapElements { map, keys } => elements(
            s,
            format!("delete element {t}{map}"),
            &mut keys.iter().map(|k| key_text(k)),
        ),
        Op::AddRule { chain, rule } => {
            for line in rule_lines(rule) {
                let _ = writeln!(s, "add rule {t}{chain} {line}");
            }
        }
    }
}

/// Names the compiler gives objects that are whole words (everything else it names
/// `<kind>-<hash>`), and the agent's table: checked to be plain identifiers for nft's lexer
/// by the kernel test `script_names_are_identifiers`.
pub const SCRIPT_WORDS: &[&str] = &[
    palisade_common::POLICY_TABLE,
    "forward",
    "input",
    "output",
    "local4",
    "local6",
    "egress4",
    "egress6",
    "ingress4",
    "ingress6",
];

/// Whether `name` reaches nft's parser as a plain identifier. nft's text syntax cannot quote
/// a name, and a name that is a keyword (`fwd`, `ip6`, `ct`, ...) is a syntax error or worse.
/// No nft keyword contains `-`, and flex takes the longest match, so a lower-case name with a
/// hyphen that starts with a letter is always one identifier token.
fn script_name(name: &str) -> bool {
    let b = name.as_bytes();
    let plain = !b.is_empty()
        && b.len() <= 255
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !name.ends_with('-');
    plain && (name.contains('-') || SCRIPT_WORDS.contains(&name))
}

/// Whether a quoted string survives nft's lexer unchanged: it has no escapes, so no `"`, and
/// nothing that is not printable ASCII.
fn script_string(s: &str) -> bool {
    s.bytes()
        .all(|c| (b' '..=b'~').contains(&c) && c != b'"' && c != b'\\')
}

fn script_values(v: &[Value]) -> bool {
    v.iter().all(|v| match v {
        Value::IfName(n) | Value::IfPrefix(n) => script_string(n),
        _ => true,
    })
}

fn script_verdict(v: &Verdict) -> bool {
    match v {
        Verdict::Jump(c) | Verdict::Goto(c) => script_name(c),
        _ => true,
    }
}

fn script_rule(r: &Rule) -> bool {
    r.comment.as_deref().is_none_or(script_string)
        && r.matches.iter().all(|m| match m {
            Match::Cmp { value, .. } => script_values(std::slice::from_ref(value)),
            Match::Lookup { set, .. } => script_name(set),
            Match::CtState(_) => true,
        })
        && r.statements.iter().all(|s| match s {
            Statement::Counter | Statement::Masquerade => true,
            Statement::Log { prefix, .. } => script_string(prefix),
        })
        && match &r.verdict {
            Some(RuleVerdict::Verdict(v)) => script_verdict(v),
            Some(RuleVerdict::Vmap { map, .. }) => script_name(map),
            None => true,
        }
}

fn script_op(op: &super::plan::Op) -> bool {
    use super::plan::Op;
    match op {
        Op::AddTable => true,
        Op::AddChain { name, .. } | Op::FlushChain { name } | Op::DeleteChain { name } => {
            script_name(name)
        }
        Op::AddSet { name, .. } | Op::DeleteSet { name, .. } => script_name(name),
        Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
            script_name(set) && elements.iter().all(|e| script_values(e))
        }
        Op::AddMapElements { map, elements } => {
            script_name(map)
                && elements
                    .iter()
                    .all(|(k, v)| script_values(k) && script_verdict(v))
        }
        Op::DeleteMapElements { map, keys } => {
            script_name(map) && keys.iter().all(|k| script_values(k))
        }
        Op::AddRule { chain, rule } => script_name(chain) && script_rule(rule),
    }
}

/// The transaction in nft's own syntax, for `nft -f -`: what is sent when every name and
/// string in it passes through nft's lexer unchanged (`None` otherwise; the caller sends
/// JSON then). nft parses this about a third faster than the same transaction as JSON, and
/// it is a fraction of the size. Set and map comments are left out, as in JSON (nft 1.0.6's
/// JSON input drops them, and [`super::canon`] expects them absent).
pub fn script(table: &str, ops: &[super::plan::Op]) -> Option<String> {
    if !script_name(table) || !ops.iter().all(script_op) {
        return None;
    }
    let t = format!("inet {table} ");
    let mut s = String::with_capacity(64 * ops.len());
    for op in ops {
        write_op(&mut s, &t, op);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::plan::{Op, SetType};
    use crate::ruleset::{BaseChain, ChainType, Hook, KeyType};

    fn rule(chain: &str, r: Rule) -> Op {
        Op::AddRule {
            chain: chain.into(),
            rule: r,
        }
    }

    #[test]
    fn a_transaction_is_fully_qualified_nft_syntax() {
        let dispatch = SetType {
            key: vec![KeyType::Ipv4Addr],
            interval: false,
            map: true,
            comment: None,
        };
        let ops = vec![
            Op::AddTable,
            Op::AddChain {
                name: "forward".into(),
                base: Some(BaseChain {
                    chain_type: ChainType::Filter,
                    hook: Hook::Forward,
                    priority: -5,
                    policy: ChainPolicy::Accept,
                }),
            },
            Op::AddChain {
                name: "pi-00ab".into(),
                base: None,
            },
            Op::AddSet {
                name: "ports-01".into(),
                spec: SetType {
                    key: vec![KeyType::InetProto, KeyType::InetService],
                    interval: true,
                    map: false,
                    comment: Some("not sent".into()),
                },
            },
            Op::AddSet {
                name: "ingress4".into(),
                spec: dispatch.clone(),
            },
            Op::AddElements {
                set: "ports-01".into(),
                elements: vec![
                    vec![Value::Proto(6), Value::Port(80)],
                    vec![Value::Proto(17), Value::PortRange(53, 60)],
                ],
            },
            Op::AddMapElements {
                map: "ingress4".into(),
                elements: vec![(
                    vec![Value::Addr("10.0.0.1".parse().unwrap())],
                    Verdict::Jump("pi-00ab".into()),
                )],
            },
            Op::DeleteElements {
                set: "ports-01".into(),
                elements: vec![],
            },
            rule(
                "pi-00ab",
                Rule::new(
                    vec![Match::Lookup {
                        fields: vec![Field::L4Proto, Field::DstPort],
                        set: "ports-01".into(),
                        negate: false,
                    }],
                    Verdict::Accept,
                )
                .with_comment("ns/p ingress[0]"),
            ),
            Op::FlushChain {
                name: "pi-00ab".into(),
            },
            Op::DeleteSet {
                name: "ingress4".into(),
                spec: dispatch.clone(),
            },
        ];
        // The log form: the same commands without the table, one per op.
        let logged: Vec<String> = ops.iter().map(op_text).collect();
        assert_eq!(
            logged,
            [
                "add table",
                "add chain forward { type filter hook forward priority -5; policy accept; }",
                "add chain pi-00ab",
                "add set ports-01 { type inet_proto . inet_service; flags interval; }",
                "add map ingress4 { type ipv4_addr : verdict; }",
                "add element ports-01 { 6 . 80, 17 . 53-60 }",
                "add element ingress4 { 10.0.0.1 : jump pi-00ab }",
                "delete element ports-01 {  }",
                "add rule pi-00ab meta l4proto . th dport @ports-01 accept comment \"ns/p ingress[0]\"",
                "flush chain pi-00ab",
                "delete map ingress4",
            ]
        );
        let s = script("palt-1", &ops).unwrap();
        assert_eq!(
            s,
            "add table inet palt-1\n\
             add chain inet palt-1 forward { type filter hook forward priority -5; policy accept; }\n\
             add chain inet palt-1 pi-00ab\n\
             add set inet palt-1 ports-01 { type inet_proto . inet_service; flags interval; }\n\
             add map inet palt-1 ingress4 { type ipv4_addr : verdict; }\n\
             add element inet palt-1 ports-01 { 6 . 80, 17 . 53-60 }\n\
             add element inet palt-1 ingress4 { 10.0.0.1 : jump pi-00ab }\n\
             add rule inet palt-1 pi-00ab meta l4proto . th dport @ports-01 accept comment \"ns/p ingress[0]\"\n\
             flush chain inet palt-1 pi-00ab\n\
             delete map inet palt-1 ingress4\n"
        );
    }

    #[test]
    fn names_and_strings_the_lexer_would_change_make_it_json() {
        let chain = |name: &str| {
            vec![Op::AddChain {
                name: name.into(),
                base: None,
            }]
        };
        assert!(script("palisade", &chain("pe-1f")).is_some());
        assert!(script("palisade", &chain("local4")).is_some());
        // Keywords, words not known to be plain, odd characters, a trailing hyphen.
        for bad in [
            "fwd", "ip6", "allow4", "Pi-1", "pi_1", "pi-1-", "pi 1", "1-a", "",
        ] {
            assert!(script("palisade", &chain(bad)).is_none(), "{bad:?}");
        }
        assert!(script("palt1", &chain("pe-1f")).is_none(), "table name");
        let commented = |c: &str| {
            vec![rule(
                "pe-1f",
                Rule::new(vec![], Verdict::Accept).with_comment(c),
            )]
        };
        assert!(script("palisade", &commented("ns/p egress[0]")).is_some());
        for bad in ["say \"hi\"", "back\\slash", "new\nline", "naïve"] {
            assert!(script("palisade", &commented(bad)).is_none(), "{bad:?}");
        }
        let jump = vec![rule(
            "pe-1f",
            Rule::new(vec![], Verdict::Goto("fwd".into())),
        )];
        assert!(script("palisade", &jump).is_none(), "jump target");
        let ifname = vec![Op::AddElements {
            set: "ifs-1".into(),
            elements: vec![vec![Value::IfName("we\"ird".into())]],
        }];
        assert!(script("palisade", &ifname).is_none(), "interface name");
    }
}
