//! nft's JSON listing (`nft -j list table inet <name>`) → the model, for adoption on start
//! and for checking what is really programmed; plus rule counters and object handles.
//!
//! Whatever cannot be understood (a rule with an expression Palisade never writes, a set of
//! a type outside the model) is not guessed at: its chain or set is marked stale, and the
//! next transaction replaces it.

use super::canon::canonical_value;
use super::plan::Programmed;
use crate::ruleset::{
    BaseChain, Chain, ChainPolicy, ChainType, CmpOp, CtState, Family, Field, Hook, KeyType, Match,
    Rule, RuleVerdict, Set, Statement, Value, Verdict, VerdictMap,
};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Everything read back from one listing of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub programmed: Programmed,
    pub table_handle: u64,
    /// Chain name → kernel handle (stable while the chain exists).
    pub chain_handles: BTreeMap<String, u64>,
    /// Set/map name → kernel handle.
    pub set_handles: BTreeMap<String, u64>,
    /// Every rule's counter (rules without a `counter` statement are left out).
    pub counters: Vec<RuleCounter>,
}

/// The counter of one nft rule, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    pub chain: String,
    /// Kernel handle of the nft rule.
    pub handle: u64,
    /// Position of the model rule within its chain (a rate-limited log and its continuation
    /// share one index).
    pub rule_index: usize,
    pub comment: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

/// Parses a listing of table `inet <table>`. Objects of other tables are ignored.
pub fn parse_listing(json: &str, table: &str) -> Result<Listing, String> {
    let doc: Json = serde_json::from_str(json).map_err(|e| format!("nft JSON listing: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Json::as_array)
        .ok_or("nft JSON listing: no \"nftables\" array")?;
    let mut out = Listing::default();
    // nft rules per chain in listing order, merged into model rules afterwards.
    let mut raw_rules: BTreeMap<String, Vec<RawRule>> = BTreeMap::new();
    for item in items {
        let Some((kind, obj)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let in_table = obj.get("family").and_then(Json::as_str) == Some("inet")
            && obj.get("table").and_then(Json::as_str) == Some(table);
        match kind.as_str() {
            "table"
                if obj.get("family").and_then(Json::as_str) == Some("inet")
                    && obj.get("name").and_then(Json::as_str) == Some(table) =>
            {
                out.table_handle = handle(obj);
            }
            "set" | "map" if in_table => {
                let name = str_field(obj, "name")?;
                out.set_handles.insert(name.clone(), handle(obj));
                parse_set(kind == "map", &name, obj, &mut out.programmed);
            }
            "chain" if in_table => {
                let name = str_field(obj, "name")?;
                out.chain_handles.insert(name.clone(), handle(obj));
                let base = match obj.get("hook") {
                    None => None,
                    Some(_) => {
                        let parsed = parse_base(obj);
                        if parsed.is_none() {
                            out.programmed.stale_chains.insert(name.clone());
                        }
                        // A base chain we cannot express gets a priority no model uses, so
                        // that it is deleted and recreated rather than kept.
                        Some(parsed.unwrap_or(BaseChain {
                            chain_type: ChainType::Filter,
                            hook: Hook::Prerouting,
                            priority: i32::MIN,
                            policy: ChainPolicy::Accept,
                        }))
                    }
                };
                out.programmed.model.chains.insert(
                    name.clone(),
                    Chain {
                        base,
                        rules: Vec::new(),
                    },
                );
                raw_rules.entry(name).or_default();
            }
            "rule" if in_table => {
                let chain = str_field(obj, "chain")?;
                let raw = parse_rule(obj);
                raw_rules.entry(chain).or_default().push(raw);
            }
            _ => {}
        }
    }
    for (chain, raws) in raw_rules {
        let mut rules: Vec<Rule> = Vec::new();
        let mut open = false; // the last model rule ended in a rate-limited log
        for raw in raws {
            let Some(rule) = raw.rule else {
                out.programmed.stale_chains.insert(chain.clone());
                continue;
            };
            let merged = match rules.last_mut() {
                Some(last)
                    if open && last.matches == rule.matches && last.comment == rule.comment =>
                {
                    last.statements.extend(rule.statements.iter().cloned());
                    last.verdict = rule.verdict.clone();
                    true
                }
                _ => false,
            };
            if !merged {
                rules.push(rule);
            }
            let last = rules.last().expect("just pushed or merged");
            open = last.verdict.is_none()
                && matches!(
                    last.statements.last(),
                    Some(Statement::Log {
                        rate_per_second: Some(_),
                        ..
                    })
                );
            if let Some((packets, bytes)) = raw.counter {
                out.counters.push(RuleCounter {
                    chain: chain.clone(),
                    handle: raw.handle,
                    rule_index: rules.len() - 1,
                    comment: last.comment.clone(),
                    packets,
                    bytes,
                });
            }
        }
        match out.programmed.model.chains.get_mut(&chain) {
            Some(c) => c.rules = rules,
            // Rules listed for a chain that was not: treat the chain as foreign.
            None => {
                out.programmed.stale_chains.insert(chain);
            }
        }
    }
    Ok(out)
}

fn handle(obj: &Json) -> u64 {
    obj.get("handle").and_then(Json::as_u64).unwrap_or(0)
}

fn str_field(obj: &Json, key: &str) -> Result<String, String> {
    obj.get(key)
        .and_then(Json::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("nft JSON listing: object without {key:?}: {obj}"))
}

fn parse_base(obj: &Json) -> Option<BaseChain> {
    let chain_type = match obj.get("type").and_then(Json::as_str)? {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        _ => return None,
    };
    let hook = match obj.get("hook").and_then(Json::as_str)? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let priority = i32::try_from(obj.get("prio").and_then(Json::as_i64)?).ok()?;
    let policy = match obj.get("policy").and_then(Json::as_str).unwrap_or("accept") {
        "accept" => ChainPolicy::Accept,
        "drop" => ChainPolicy::Drop,
        _ => return None,
    };
    Some(BaseChain {
        chain_type,
        hook,
        priority,
        policy,
    })
}

fn parse_key_type(s: &str) -> Option<KeyType> {
    Some(match s {
        "ipv4_addr" => KeyType::Ipv4Addr,
        "ipv6_addr" => KeyType::Ipv6Addr,
        "inet_proto" => KeyType::InetProto,
        "inet_service" => KeyType::InetService,
        "ifname" => KeyType::IfName,
        _ => return None,
    })
}

fn parse_set(is_map: bool, name: &str, obj: &Json, p: &mut Programmed) {
    let key: Option<Vec<KeyType>> = match obj.get("type") {
        Some(Json::String(s)) => parse_key_type(s).map(|k| vec![k]),
        Some(Json::Array(a)) => a
            .iter()
            .map(|t| t.as_str().and_then(parse_key_type))
            .collect(),
        _ => None,
    };
    let flags: Vec<&str> = obj
        .get("flags")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let interval = flags.contains(&"interval");
    let flags_ok = flags.iter().all(|f| *f == "interval");
    let verdict_map = obj.get("map").and_then(Json::as_str) == Some("verdict");
    let comment = obj
        .get("comment")
        .and_then(Json::as_str)
        .map(str::to_string);
    let elems = obj
        .get("elem")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let mut stale = key.is_none() || !flags_ok || (is_map && !verdict_map);
    let key = key.unwrap_or_default();
    if is_map {
        let mut m = VerdictMap {
            key: key.clone(),
            interval,
            comment,
            ..VerdictMap::default()
        };
        for e in &elems {
            let parsed = e
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((parse_key(&key, interval, &a[0])?, parse_verdict(&a[1])?)));
            match parsed {
                Some((k, v)) => {
                    m.elements.insert(k, v);
                }
                None => stale = true,
            }
        }
        p.model.maps.insert(name.to_string(), m);
    } else {
        let mut s = Set {
            key: key.clone(),
            interval,
            comment,
            ..Set::default()
        };
        for e in &elems {
            match parse_key(&key, interval, e) {
                Some(k) => {
                    s.elements.insert(k);
                }
                None => stale = true,
            }
        }
        p.model.sets.insert(name.to_string(), s);
    }
    if stale {
        p.stale_sets.insert(name.to_string());
    }
}

/// An element key; `{"elem": {"val": ...}}` wrappers (elements with comments or timeouts)
/// are unwrapped.
fn parse_key(key: &[KeyType], interval: bool, e: &Json) -> Option<Vec<Value>> {
    if let Some(inner) = e.get("elem").and_then(|x| x.get("val")) {
        return parse_key(key, interval, inner);
    }
    let parts: Vec<&Json> = match e.get("concat").and_then(Json::as_array) {
        Some(a) => a.iter().collect(),
        None => vec![e],
    };
    if parts.len() != key.len() {
        return None;
    }
    parts
        .iter()
        .zip(key)
        .map(|(v, k)| parse_value(*k, v).map(|v| canonical_value(v, interval)))
        .collect()
}

fn parse_ip(v: &Json) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

fn parse_value(k: KeyType, v: &Json) -> Option<Value> {
    match k {
        KeyType::Ipv4Addr | KeyType::Ipv6Addr => {
            let want_v4 = k == KeyType::Ipv4Addr;
            let val = if let Some(p) = v.get("prefix") {
                let addr = parse_ip(p.get("addr")?)?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                Value::Prefix(ipnet::IpNet::new(addr, len).ok()?)
            } else if let Some(r) = v.get("range").and_then(Json::as_array) {
                Value::AddrRange(parse_ip(r.first()?)?, parse_ip(r.get(1)?)?)
            } else {
                Value::Addr(parse_ip(v)?)
            };
            let is_v4 = match &val {
                Value::Addr(a) | Value::AddrRange(a, _) => a.is_ipv4(),
                Value::Prefix(n) => matches!(n, ipnet::IpNet::V4(_)),
                _ => return None,
            };
            (is_v4 == want_v4).then_some(val)
        }
        KeyType::InetProto => Some(Value::Proto(parse_proto(v)?)),
        KeyType::InetService => {
            if let Some(r) = v.get("range").and_then(Json::as_array) {
                Some(Value::PortRange(as_u16(r.first()?)?, as_u16(r.get(1)?)?))
            } else {
                Some(Value::Port(as_u16(v)?))
            }
        }
        KeyType::IfName => {
            let s = v.as_str()?;
            if let Some(lit) = s.strip_suffix("\\*") {
                Some(Value::IfName(format!("{lit}*")))
            } else if let Some(p) = s.strip_suffix('*') {
                Some(Value::IfPrefix(p.to_string()))
            } else {
                Some(Value::IfName(s.to_string()))
            }
        }
    }
}

fn as_u16(v: &Json) -> Option<u16> {
    u16::try_from(v.as_u64()?).ok()
}

fn parse_proto(v: &Json) -> Option<u8> {
    if let Some(n) = v.as_u64() {
        return u8::try_from(n).ok();
    }
    // nft prints protocol names from /etc/protocols when it has them.
    Some(match v.as_str()? {
        "icmp" => 1,
        "igmp" => 2,
        "tcp" => 6,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" => 58,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        other => other.parse().ok()?,
    })
}

fn parse_verdict(v: &Json) -> Option<Verdict> {
    let (k, inner) = v.as_object()?.iter().next()?;
    Some(match k.as_str() {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "return" => Verdict::Return,
        "jump" => Verdict::Jump(inner.get("target")?.as_str()?.to_string()),
        "goto" => Verdict::Goto(inner.get("target")?.as_str()?.to_string()),
        _ => return None,
    })
}

fn parse_field(v: &Json) -> Option<Field> {
    if let Some(p) = v.get("payload") {
        return Some(
            match (p.get("protocol")?.as_str()?, p.get("field")?.as_str()?) {
                ("ip", "saddr") => Field::SrcAddr(Family::Ipv4),
                ("ip", "daddr") => Field::DstAddr(Family::Ipv4),
                ("ip6", "saddr") => Field::SrcAddr(Family::Ipv6),
                ("ip6", "daddr") => Field::DstAddr(Family::Ipv6),
                ("th", "dport") => Field::DstPort,
                _ => return None,
            },
        );
    }
    let m = v.get("meta")?;
    Some(match m.get("key")?.as_str()? {
        "l4proto" => Field::L4Proto,
        "iifname" => Field::IifName,
        "oifname" => Field::OifName,
        "nfproto" => Field::NfProto,
        _ => return None,
    })
}

fn parse_fields(v: &Json) -> Option<Vec<Field>> {
    match v.get("concat").and_then(Json::as_array) {
        Some(a) => a.iter().map(parse_field).collect(),
        None => Some(vec![parse_field(v)?]),
    }
}

fn parse_ct_states(v: &Json) -> Option<Vec<CtState>> {
    let one = |x: &Json| -> Option<Vec<CtState>> {
        if let Some(bits) = x.as_u64() {
            // `nft -n` prints the bitmask values.
            let all = [
                (1, CtState::Invalid),
                (2, CtState::Established),
                (4, CtState::Related),
                (8, CtState::New),
                (64, CtState::Untracked),
            ];
            return Some(
                all.iter()
                    .filter(|(b, _)| bits & b != 0)
                    .map(|(_, s)| *s)
                    .collect(),
            );
        }
        Some(vec![match x.as_str()? {
            "new" => CtState::New,
            "established" => CtState::Established,
            "related" => CtState::Related,
            "invalid" => CtState::Invalid,
            "untracked" => CtState::Untracked,
            _ => return None,
        }])
    };
    let mut out = Vec::new();
    match v.as_array() {
        Some(a) => {
            for x in a {
                out.extend(one(x)?);
            }
        }
        None => out.extend(one(v)?),
    }
    Some(out)
}

fn parse_nfproto(v: &Json) -> Option<Value> {
    match (v.as_str(), v.as_u64()) {
        (Some("ipv4"), _) | (_, Some(2)) => Some(Value::NfProto(Family::Ipv4)),
        (Some("ipv6"), _) | (_, Some(10)) => Some(Value::NfProto(Family::Ipv6)),
        _ => None,
    }
}

fn parse_match(m: &Json) -> Option<Match> {
    let op = m.get("op")?.as_str()?;
    let left = m.get("left")?;
    let right = m.get("right")?;
    if left
        .get("ct")
        .and_then(|c| c.get("key"))
        .and_then(Json::as_str)
        == Some("state")
    {
        if op != "in" && op != "==" {
            return None;
        }
        return Some(Match::CtState(parse_ct_states(right)?));
    }
    let negate = match op {
        "==" => false,
        "!=" => true,
        _ => return None,
    };
    let fields = parse_fields(left)?;
    if let Some(set) = right.as_str().and_then(|s| s.strip_prefix('@')) {
        return Some(Match::Lookup {
            fields,
            set: set.to_string(),
            negate,
        });
    }
    let [field] = fields[..] else { return None };
    let value = if field == Field::NfProto {
        parse_nfproto(right)?
    } else {
        parse_value(field.key_type(), right)?
    };
    Some(Match::Cmp {
        field,
        op: if negate { CmpOp::Ne } else { CmpOp::Eq },
        value: canonical_value(value, false),
    })
}

struct RawRule {
    handle: u64,
    /// `None`: the rule holds something outside the model.
    rule: Option<Rule>,
    counter: Option<(u64, u64)>,
}

fn parse_rule(obj: &Json) -> RawRule {
    let mut counter = None;
    let rule = (|| {
        let exprs = obj.get("expr")?.as_array()?;
        let mut r = Rule {
            matches: Vec::new(),
            statements: Vec::new(),
            verdict: None,
            comment: obj
                .get("comment")
                .and_then(Json::as_str)
                .map(str::to_string),
        };
        let mut pending_limit: Option<u32> = None;
        for e in exprs {
            if r.verdict.is_some() || r.statements.last() == Some(&Statement::Masquerade) {
                return None; // nothing follows a verdict in rules Palisade writes
            }
            let (k, v) = e.as_object()?.iter().next()?;
            if pending_limit.is_some() && k != "log" {
                return None;
            }
            match k.as_str() {
                "match" if r.statements.is_empty() => r.matches.push(parse_match(v)?),
                "counter" => {
                    let p = v.get("packets").and_then(Json::as_u64).unwrap_or(0);
                    let b = v.get("bytes").and_then(Json::as_u64).unwrap_or(0);
                    counter = Some((p, b));
                    r.statements.push(Statement::Counter);
                }
                "limit" => {
                    if v.get("per").and_then(Json::as_str) != Some("second")
                        || v.get("inv").and_then(Json::as_bool) == Some(true)
                        || v.get("rate_unit").is_some_and(|u| u != "packets")
                    {
                        return None;
                    }
                    pending_limit = Some(u32::try_from(v.get("rate")?.as_u64()?).ok()?);
                }
                "log" => {
                    let group = u16::try_from(v.get("group")?.as_u64()?).ok()?;
                    let prefix = v
                        .get("prefix")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .to_string();
                    r.statements.push(Statement::Log {
                        group,
                        prefix,
                        rate_per_second: pending_limit.take(),
                    });
                }
                // Palisade writes it with exactly one flag, `fully-random` (nft lists a
                // single flag as a string, several as an array).
                "masquerade" => {
                    let flags: Vec<&str> = match v.get("flags")? {
                        Json::String(f) => vec![f.as_str()],
                        Json::Array(a) => a.iter().filter_map(Json::as_str).collect(),
                        _ => return None,
                    };
                    if flags != ["fully-random"] || v.as_object()?.len() != 1 {
                        return None;
                    }
                    r.statements.push(Statement::Masquerade);
                }
                "vmap" => {
                    let fields = parse_fields(v.get("key")?)?;
                    let map = v.get("data")?.as_str()?.strip_prefix('@')?.to_string();
                    r.verdict = Some(RuleVerdict::Vmap { fields, map });
                }
                _ => r.verdict = Some(RuleVerdict::Verdict(parse_verdict(e)?)),
            }
        }
        if pending_limit.is_some() {
            return None;
        }
        Some(r)
    })();
    RawRule {
        handle: handle(obj),
        rule,
        counter,
    }
}
