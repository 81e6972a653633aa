//! The canonical nft text of a model: sorted, one element per line, rate-limited logs split
//! exactly as they are programmed (see `json`). For logs, `palisadectl` and golden files;
//! what is sent to nft is JSON (see `json` for why).

use super::json::{ct_state_name, hook_name, key_type_name};
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
                "\t\ttype filter hook {} priority {}; policy {policy};",
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

/// One command as nft-like text (for logs and error messages).
pub fn op_text(op: &super::plan::Op) -> String {
    use super::plan::Op;
    let elems = |v: &[Vec<Value>]| v.iter().map(|e| key_text(e)).collect::<Vec<_>>().join(", ");
    match op {
        Op::AddTable => "add table".into(),
        Op::AddChain { name, base: None } => format!("add chain {name}"),
        Op::AddChain {
            name,
            base: Some(b),
        } => format!(
            "add chain {name} {{ type filter hook {} priority {}; policy {}; }}",
            hook_name(b.hook),
            b.priority,
            if b.policy == ChainPolicy::Drop {
                "drop"
            } else {
                "accept"
            }
        ),
        Op::FlushChain { name } => format!("flush chain {name}"),
        Op::DeleteChain { name } => format!("delete chain {name}"),
        Op::AddSet { name, spec } => format!(
            "add {} {name} {{ type {}{}; }}",
            if spec.map { "map" } else { "set" },
            key_types(&spec.key),
            match (spec.map, spec.interval) {
                (true, true) => " : verdict; flags interval",
                (true, false) => " : verdict",
                (false, true) => "; flags interval",
                (false, false) => "",
            }
        ),
        Op::DeleteSet { name, spec } => {
            format!("delete {} {name}", if spec.map { "map" } else { "set" })
        }
        Op::AddElements { set, elements } => format!("add element {set} {{ {} }}", elems(elements)),
        Op::DeleteElements { set, elements } => {
            format!("delete element {set} {{ {} }}", elems(elements))
        }
        Op::AddMapElements { map, elements } => format!(
            "add element {map} {{ {} }}",
            elements
                .iter()
                .map(|(k, v)| format!("{} : {}", key_text(k), verdict_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Op::DeleteMapElements { map, keys } => {
            format!("delete element {map} {{ {} }}", elems(keys))
        }
        Op::AddRule { chain, rule } => rule_lines(rule)
            .into_iter()
            .map(|l| format!("add rule {chain} {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}
