//! Commands → nft JSON (`nft -j -f -`).
//!
//! JSON rather than nft's text syntax: in text, chain and set names go through nft's lexer,
//! so a name that happens to be a keyword (`fwd`, `forward`, `ip`, ...) is a syntax error
//! and names cannot be quoted; in JSON every name is just a string. Things checked on nft
//! 1.0.6 that this file relies on:
//! - an interface-name wildcard is the plain string `"pal*"` (nft turns a trailing `*` into a
//!   prefix match when it evaluates the expression, for JSON as for text);
//! - a CIDR must be a `prefix` object: a string `"10.0.0.0/8"` would be resolved as a host
//!   name;
//! - set comments are ignored by the JSON parser (see `canon`).
//!
//! A rule with a rate-limited log becomes several nft rules. `limit` in nft is a match: once
//! the rate is exceeded, the rest of the rule is skipped, so `limit rate 5/second log drop`
//! would drop only 5 packets per second and let the rest fall through. Hence
//! `<matches> [statements] limit rate N/second log ...` (no verdict), then a continuation rule
//! `<matches> [remaining statements] <verdict>` with the same matches and comment; the
//! continuation is left out when it would carry nothing. The matches are evaluated twice,
//! which only costs on the (logged) deny path.

use super::plan::{Op, SetType};
use crate::ruleset::{
    ChainType, CmpOp, CtState, Family, Field, Hook, KeyType, Match, Rule, RuleVerdict, Statement,
    Value, Verdict,
};
use serde_json::{json, Value as Json};

pub(crate) const FAMILY: &str = "inet";

/// The whole transaction as one JSON document for `nft -j -f -`.
pub fn transaction(table: &str, ops: &[Op]) -> String {
    let mut cmds = Vec::with_capacity(ops.len());
    for op in ops {
        op_json(table, op, &mut cmds);
    }
    json!({ "nftables": cmds }).to_string()
}

fn op_json(table: &str, op: &Op, out: &mut Vec<Json>) {
    match op {
        Op::AddTable => out.push(json!({"add": {"table": {"family": FAMILY, "name": table}}})),
        Op::AddChain { name, base } => {
            let mut c = json!({"family": FAMILY, "table": table, "name": name});
            if let Some(b) = base {
                c["type"] = json!(chain_type_name(b.chain_type));
                c["hook"] = json!(hook_name(b.hook));
                c["prio"] = json!(b.priority);
                c["policy"] = json!(match b.policy {
                    crate::ruleset::ChainPolicy::Accept => "accept",
                    crate::ruleset::ChainPolicy::Drop => "drop",
                });
            }
            out.push(json!({"add": {"chain": c}}));
        }
        Op::FlushChain { name } => {
            out.push(json!({"flush": {"chain": {"family": FAMILY, "table": table, "name": name}}}))
        }
        Op::DeleteChain { name } => {
            out.push(json!({"delete": {"chain": {"family": FAMILY, "table": table, "name": name}}}))
        }
        Op::AddSet { name, spec } => {
            let kind = if spec.map { "map" } else { "set" };
            out.push(json!({"add": {kind: set_json(table, name, spec)}}));
        }
        Op::DeleteSet { name, spec } => {
            let kind = if spec.map { "map" } else { "set" };
            out.push(json!({"delete": {kind: {"family": FAMILY, "table": table, "name": name}}}));
        }
        Op::AddElements { set, elements } => {
            let elem: Vec<Json> = elements.iter().map(|e| key_json(e)).collect();
            out.push(json!({"add": {"element": {"family": FAMILY, "table": table, "name": set, "elem": elem}}}));
        }
        Op::DeleteElements { set, elements } => {
            let elem: Vec<Json> = elements.iter().map(|e| key_json(e)).collect();
            out.push(json!({"delete": {"element": {"family": FAMILY, "table": table, "name": set, "elem": elem}}}));
        }
        Op::AddMapElements { map, elements } => {
            let elem: Vec<Json> = elements
                .iter()
                .map(|(k, v)| json!([key_json(k), verdict_json(v)]))
                .collect();
            out.push(json!({"add": {"element": {"family": FAMILY, "table": table, "name": map, "elem": elem}}}));
        }
        Op::DeleteMapElements { map, keys } => {
            let elem: Vec<Json> = keys.iter().map(|k| key_json(k)).collect();
            out.push(json!({"delete": {"element": {"family": FAMILY, "table": table, "name": map, "elem": elem}}}));
        }
        Op::AddRule { chain, rule } => {
            for expr in split_rule(rule) {
                let mut r = json!({"family": FAMILY, "table": table, "chain": chain, "expr": expr});
                if let Some(c) = &rule.comment {
                    r["comment"] = json!(c);
                }
                out.push(json!({"add": {"rule": r}}));
            }
        }
    }
}

fn set_json(table: &str, name: &str, spec: &SetType) -> Json {
    let ty: Json = if spec.key.len() == 1 {
        json!(key_type_name(spec.key[0]))
    } else {
        json!(spec
            .key
            .iter()
            .map(|k| key_type_name(*k))
            .collect::<Vec<_>>())
    };
    let mut s = json!({"family": FAMILY, "table": table, "name": name, "type": ty});
    if spec.map {
        s["map"] = json!("verdict");
    }
    if spec.interval {
        s["flags"] = json!(["interval"]);
    }
    s
}

pub(crate) fn chain_type_name(t: ChainType) -> &'static str {
    match t {
        ChainType::Filter => "filter",
        ChainType::Nat => "nat",
    }
}

pub(crate) fn hook_name(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

pub(crate) fn key_type_name(k: KeyType) -> &'static str {
    match k {
        KeyType::Ipv4Addr => "ipv4_addr",
        KeyType::Ipv6Addr => "ipv6_addr",
        KeyType::InetProto => "inet_proto",
        KeyType::InetService => "inet_service",
        KeyType::IfName => "ifname",
    }
}

pub(crate) fn ct_state_name(s: CtState) -> &'static str {
    match s {
        CtState::New => "new",
        CtState::Established => "established",
        CtState::Related => "related",
        CtState::Invalid => "invalid",
        CtState::Untracked => "untracked",
    }
}

fn key_json(key: &[Value]) -> Json {
    if key.len() == 1 {
        value_json(&key[0])
    } else {
        json!({"concat": key.iter().map(value_json).collect::<Vec<_>>()})
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Addr(a) => json!(a.to_string()),
        Value::Prefix(n) => {
            json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}})
        }
        Value::AddrRange(a, b) => json!({"range": [a.to_string(), b.to_string()]}),
        Value::Proto(p) => json!(p),
        Value::Port(p) => json!(p),
        Value::PortRange(a, b) => json!({"range": [a, b]}),
        // A literal name must not end in `*` (that would be a wildcard): escape it.
        Value::IfName(n) if n.ends_with('*') => json!(format!("{}\\*", &n[..n.len() - 1])),
        Value::IfName(n) => json!(n),
        Value::IfPrefix(p) => json!(format!("{p}*")),
        Value::NfProto(Family::Ipv4) => json!("ipv4"),
        Value::NfProto(Family::Ipv6) => json!("ipv6"),
    }
}

fn field_json(f: Field) -> Json {
    let payload =
        |proto: &str, field: &str| json!({"payload": {"protocol": proto, "field": field}});
    match f {
        Field::SrcAddr(Family::Ipv4) => payload("ip", "saddr"),
        Field::DstAddr(Family::Ipv4) => payload("ip", "daddr"),
        Field::SrcAddr(Family::Ipv6) => payload("ip6", "saddr"),
        Field::DstAddr(Family::Ipv6) => payload("ip6", "daddr"),
        Field::DstPort => payload("th", "dport"),
        Field::L4Proto => json!({"meta": {"key": "l4proto"}}),
        Field::IifName => json!({"meta": {"key": "iifname"}}),
        Field::OifName => json!({"meta": {"key": "oifname"}}),
        Field::NfProto => json!({"meta": {"key": "nfproto"}}),
    }
}

fn fields_json(fields: &[Field]) -> Json {
    if fields.len() == 1 {
        field_json(fields[0])
    } else {
        json!({"concat": fields.iter().map(|f| field_json(*f)).collect::<Vec<_>>()})
    }
}

fn match_json(m: &Match) -> Json {
    match m {
        Match::Cmp { field, op, value } => json!({"match": {
            "op": if *op == CmpOp::Eq { "==" } else { "!=" },
            "left": field_json(*field),
            "right": value_json(value),
        }}),
        Match::Lookup {
            fields,
            set,
            negate,
        } => json!({"match": {
            "op": if *negate { "!=" } else { "==" },
            "left": fields_json(fields),
            "right": format!("@{set}"),
        }}),
        Match::CtState(states) => json!({"match": {
            "op": "in",
            "left": {"ct": {"key": "state"}},
            "right": states.iter().map(|s| ct_state_name(*s)).collect::<Vec<_>>(),
        }}),
    }
}

pub(crate) fn verdict_json(v: &Verdict) -> Json {
    match v {
        Verdict::Accept => json!({"accept": null}),
        Verdict::Drop => json!({"drop": null}),
        Verdict::Return => json!({"return": null}),
        Verdict::Jump(c) => json!({"jump": {"target": c}}),
        Verdict::Goto(c) => json!({"goto": {"target": c}}),
    }
}

/// The nft rules (expression lists) one model rule becomes; see the module docs.
pub(crate) fn split_rule(rule: &Rule) -> Vec<Vec<Json>> {
    let matches: Vec<Json> = rule.matches.iter().map(match_json).collect();
    let mut out = Vec::new();
    let mut cur = matches.clone();
    for st in &rule.statements {
        match st {
            Statement::Counter => cur.push(json!({"counter": null})),
            Statement::Log {
                group,
                prefix,
                rate_per_second,
            } => {
                let log = json!({"log": {"group": group, "prefix": prefix}});
                match rate_per_second {
                    None => cur.push(log),
                    Some(rate) => {
                        cur.push(json!({"limit": {"rate": rate, "per": "second"}}));
                        cur.push(log);
                        out.push(std::mem::replace(&mut cur, matches.clone()));
                    }
                }
            }
            Statement::Masquerade => cur.push(json!({"masquerade": {"flags": ["fully-random"]}})),
        }
    }
    match &rule.verdict {
        Some(RuleVerdict::Verdict(v)) => cur.push(verdict_json(v)),
        Some(RuleVerdict::Vmap { fields, map }) => {
            cur.push(json!({"vmap": {"key": fields_json(fields), "data": format!("@{map}")}}))
        }
        None => {}
    }
    // The continuation carries something beyond the matches, or it is the only rule.
    if cur.len() > matches.len() || out.is_empty() {
        out.push(cur);
    }
    out
}
