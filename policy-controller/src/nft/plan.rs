//! The diff: what is programmed + what is desired → the ordered commands of one transaction.
//!
//! Order inside the transaction (the kernel checks references command by command, even
//! though the whole transaction commits atomically):
//!
//! 1. create the table (cold start), new chains, and update base-chain policies: chains exist
//!    before any map element or rule jumps to them;
//! 2. flush chains whose rules change, chains that use a set being recreated, and chains
//!    about to be deleted: their rules release every reference to sets, maps and chains;
//! 3. delete set and map elements that go (before adds: interval sets refuse overlaps, and a
//!    map element is the last reference to a chain being deleted);
//! 4. delete sets and maps that go or whose type/flags change;
//! 5. delete chains that go (and base chains whose hook or priority changes);
//! 6. create recreated chains, new and recreated sets and maps;
//! 7. add set and map elements;
//! 8. add the rules of new, recreated and flushed chains.
//!
//! Flushing a chain and refilling it in one transaction is atomic: no packet ever sees the
//! chain empty, so this is how a chain's rules are replaced without opening or closing
//! traffic.

use crate::ruleset::{
    BaseChain, Chain, KeyType, Match, Rule, RuleVerdict, Ruleset, Value, Verdict,
};
use std::collections::{BTreeMap, BTreeSet};

/// One command of a transaction: the dataplane's internal command list. The real dataplane
/// renders it as nft JSON, the fake applies it in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddTable,
    /// Create a chain, or (for an existing base chain) update its policy.
    AddChain {
        name: String,
        base: Option<BaseChain>,
    },
    FlushChain {
        name: String,
    },
    DeleteChain {
        name: String,
    },
    AddSet {
        name: String,
        spec: SetType,
    },
    DeleteSet {
        name: String,
        spec: SetType,
    },
    AddElements {
        set: String,
        elements: Vec<Vec<Value>>,
    },
    DeleteElements {
        set: String,
        elements: Vec<Vec<Value>>,
    },
    AddMapElements {
        map: String,
        elements: Vec<(Vec<Value>, Verdict)>,
    },
    DeleteMapElements {
        map: String,
        keys: Vec<Vec<Value>>,
    },
    /// Append one model rule (rendered as one or more nft rules, see `json`).
    AddRule {
        chain: String,
        rule: Rule,
    },
}

/// The type of a set or a verdict map: changing any part means delete + recreate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetType {
    pub key: Vec<KeyType>,
    pub interval: bool,
    /// A verdict map rather than a set.
    pub map: bool,
    pub comment: Option<String>,
}

impl SetType {
    fn same_type(&self, other: &SetType) -> bool {
        self.key == other.key && self.interval == other.interval && self.map == other.map
    }
}

/// What is believed to be programmed: the canonical model, plus the names of objects that
/// were read back from the kernel but could not be understood (foreign rules, unknown set
/// types). Those are replaced rather than diffed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Programmed {
    pub model: Ruleset,
    /// Chains whose rules could not be parsed: flushed and refilled (or deleted).
    pub stale_chains: BTreeSet<String>,
    /// Sets/maps whose type could not be parsed: deleted and recreated (or deleted).
    pub stale_sets: BTreeSet<String>,
}

impl Programmed {
    pub fn exact(model: Ruleset) -> Programmed {
        Programmed {
            model,
            ..Programmed::default()
        }
    }
}

/// Set or verdict map, seen through one lens (nft keeps both in one namespace).
enum SetLike<'a> {
    Set(&'a crate::ruleset::Set),
    Map(&'a crate::ruleset::VerdictMap),
}

impl SetLike<'_> {
    fn spec(&self) -> SetType {
        match self {
            SetLike::Set(s) => SetType {
                key: s.key.clone(),
                interval: s.interval,
                map: false,
                comment: s.comment.clone(),
            },
            SetLike::Map(m) => SetType {
                key: m.key.clone(),
                interval: m.interval,
                map: true,
                comment: m.comment.clone(),
            },
        }
    }
}

fn set_likes(rs: &Ruleset) -> BTreeMap<&str, SetLike<'_>> {
    let mut out: BTreeMap<&str, SetLike<'_>> = BTreeMap::new();
    for (n, s) in &rs.sets {
        out.insert(n, SetLike::Set(s));
    }
    for (n, m) in &rs.maps {
        out.insert(n, SetLike::Map(m));
    }
    out
}

/// The sets and maps a chain's rules reference.
pub(crate) fn chain_set_refs(chain: &Chain) -> BTreeSet<&str> {
    chain.rules.iter().flat_map(rule_set_refs).collect()
}

/// The sets and maps one rule names (lookups, then a verdict map), in rule order.
fn rule_set_refs(rule: &Rule) -> impl Iterator<Item = &str> {
    let lookups = rule.matches.iter().filter_map(|m| match m {
        Match::Lookup { set, .. } => Some(set.as_str()),
        _ => None,
    });
    let vmap = match &rule.verdict {
        Some(RuleVerdict::Vmap { map, .. }) => Some(map.as_str()),
        _ => None,
    };
    lookups.chain(vmap)
}

/// The chains a rule jumps or goes to.
pub(crate) fn rule_chain_refs(rule: &Rule) -> Option<&str> {
    match &rule.verdict {
        Some(RuleVerdict::Verdict(Verdict::Jump(c) | Verdict::Goto(c))) => Some(c),
        _ => None,
    }
}

fn same_hook(a: &Option<BaseChain>, b: &Option<BaseChain>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.chain_type == b.chain_type && a.hook == b.hook && a.priority == b.priority
        }
        _ => false,
    }
}

/// The commands that turn `current` (`None`: the table does not exist) into `desired`.
/// Both models must be canonical ([`super::canonicalize`]).
pub fn plan(current: Option<&Programmed>, desired: &Ruleset) -> Vec<Op> {
    let empty = Programmed::default();
    let cur = current.unwrap_or(&empty);
    let old = &cur.model;

    let mut ops = Vec::new();
    if current.is_none() {
        ops.push(Op::AddTable);
    }

    // Chains: classify.
    let mut new_chains = Vec::new();
    let mut recreate_chains = Vec::new();
    let mut rewrite_chains: BTreeSet<&str> = BTreeSet::new();
    let mut policy_updates = Vec::new();
    for (name, c) in &desired.chains {
        match old.chains.get(name) {
            None => new_chains.push(name.as_str()),
            Some(oc) if !same_hook(&oc.base, &c.base) => recreate_chains.push(name.as_str()),
            Some(oc) => {
                if oc.base != c.base {
                    policy_updates.push(name.as_str());
                }
                if oc.rules != c.rules || cur.stale_chains.contains(name) {
                    rewrite_chains.insert(name);
                }
            }
        }
    }
    let delete_chains: Vec<&str> = old
        .chains
        .keys()
        .filter(|n| !desired.chains.contains_key(*n))
        .map(String::as_str)
        .collect();

    // Sets and maps: classify.
    let old_sl = set_likes(old);
    let new_sl = set_likes(desired);
    let mut new_sets = Vec::new();
    let mut recreate_sets: BTreeSet<&str> = BTreeSet::new();
    let mut kept_sets = Vec::new();
    for (name, s) in &new_sl {
        match old_sl.get(name) {
            None => new_sets.push(*name),
            Some(os) if !os.spec().same_type(&s.spec()) || cur.stale_sets.contains(*name) => {
                recreate_sets.insert(name);
            }
            Some(_) => kept_sets.push(*name),
        }
    }
    let delete_sets: Vec<&str> = old_sl
        .keys()
        .filter(|n| !new_sl.contains_key(*n))
        .copied()
        .collect();

    // A recreated set must lose every user first: rewrite the kept chains that use it.
    if !recreate_sets.is_empty() {
        for (name, c) in &desired.chains {
            if old.chains.contains_key(name)
                && !recreate_chains.contains(&name.as_str())
                && chain_set_refs(c).iter().any(|s| recreate_sets.contains(s))
            {
                rewrite_chains.insert(name);
            }
        }
    }

    // 1. new chains, policy updates
    for name in &new_chains {
        ops.push(Op::AddChain {
            name: name.to_string(),
            base: desired.chains[*name].base.clone(),
        });
    }
    for name in &policy_updates {
        ops.push(Op::AddChain {
            name: name.to_string(),
            base: desired.chains[*name].base.clone(),
        });
    }
    // 2. flush
    let needs_flush = |name: &str| {
        cur.stale_chains.contains(name) || old.chains.get(name).is_some_and(|c| !c.rules.is_empty())
    };
    for name in rewrite_chains
        .iter()
        .copied()
        .chain(delete_chains.iter().copied())
        .chain(recreate_chains.iter().copied())
    {
        if needs_flush(name) {
            ops.push(Op::FlushChain {
                name: name.to_string(),
            });
        }
    }
    // 3. element deletes of kept sets and maps; 7. element adds (collected now)
    let mut adds = Vec::new();
    for name in &kept_sets {
        match (&old_sl[name], &new_sl[name]) {
            (SetLike::Set(o), SetLike::Set(n)) => {
                let del: Vec<_> = o.elements.difference(&n.elements).cloned().collect();
                let add: Vec<_> = n.elements.difference(&o.elements).cloned().collect();
                if !del.is_empty() {
                    ops.push(Op::DeleteElements {
                        set: name.to_string(),
                        elements: del,
                    });
                }
                if !add.is_empty() {
                    adds.push(Op::AddElements {
                        set: name.to_string(),
                        elements: add,
                    });
                }
            }
            (SetLike::Map(o), SetLike::Map(n)) => {
                let del: Vec<_> = o
                    .elements
                    .iter()
                    .filter(|(k, v)| n.elements.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone())
                    .collect();
                let add: Vec<_> = n
                    .elements
                    .iter()
                    .filter(|(k, v)| o.elements.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !del.is_empty() {
                    ops.push(Op::DeleteMapElements {
                        map: name.to_string(),
                        keys: del,
                    });
                }
                if !add.is_empty() {
                    adds.push(Op::AddMapElements {
                        map: name.to_string(),
                        elements: add,
                    });
                }
            }
            _ => unreachable!("same_type() compares the kind"),
        }
    }
    // 4. delete sets and maps
    for name in delete_sets.iter().chain(recreate_sets.iter()) {
        ops.push(Op::DeleteSet {
            name: name.to_string(),
            spec: old_sl[name].spec(),
        });
    }
    // 5. delete chains
    for name in delete_chains.iter().chain(recreate_chains.iter()) {
        ops.push(Op::DeleteChain {
            name: name.to_string(),
        });
    }
    // 6. recreated chains, new and recreated sets
    for name in &recreate_chains {
        ops.push(Op::AddChain {
            name: name.to_string(),
            base: desired.chains[*name].base.clone(),
        });
    }
    let mut created: Vec<&str> = new_sets
        .iter()
        .chain(recreate_sets.iter())
        .copied()
        .collect();
    if created.len() > MANY_SETS {
        most_used_first(desired, &mut created);
    }
    for name in &created {
        ops.push(Op::AddSet {
            name: name.to_string(),
            spec: new_sl[name].spec(),
        });
        match &new_sl[name] {
            SetLike::Set(s) if !s.elements.is_empty() => adds.push(Op::AddElements {
                set: name.to_string(),
                elements: s.elements.iter().cloned().collect(),
            }),
            SetLike::Map(m) if !m.elements.is_empty() => adds.push(Op::AddMapElements {
                map: name.to_string(),
                elements: m
                    .elements
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            _ => {}
        }
    }
    // 7. element adds
    ops.extend(adds);
    // 8. rules
    let mut filled: Vec<&str> = new_chains.clone();
    filled.extend(recreate_chains.iter().copied());
    filled.extend(rewrite_chains.iter().copied());
    filled.sort_unstable();
    for name in filled {
        for rule in &desired.chains[name].rules {
            ops.push(Op::AddRule {
                chain: name.to_string(),
                rule: rule.clone(),
            });
        }
    }
    ops
}

/// From how many created sets on [`most_used_first`] orders them (a cold start).
const MANY_SETS: usize = 64;

/// Orders sets to be created by how many rules of `desired` use them, most first (ties by
/// name). The kernel finds the set a rule names by walking the table's sets in creation
/// order, comparing names, for every rule it adds: with hundreds of sets and thousands of
/// rules, that walk is a fifth of a cold start's time in nft, and most rules name a few
/// shared sets (ports, node-local pods).
fn most_used_first(desired: &Ruleset, sets: &mut [&str]) {
    let mut uses: BTreeMap<&str, usize> = BTreeMap::new();
    for r in desired.chains.values().flat_map(|c| &c.rules) {
        for set in rule_set_refs(r) {
            *uses.entry(set).or_default() += 1;
        }
    }
    sets.sort_by(|a, b| {
        let (ua, ub) = (uses.get(a).copied(), uses.get(b).copied());
        ub.cmp(&ua).then(a.cmp(b))
    });
}

/// Checks that `rs` can be programmed: every referenced set, map and chain exists with the
/// right kind, no name is both a set and a map, and names fit nft's limits.
pub fn validate(rs: &Ruleset) -> Result<(), String> {
    for n in rs.chains.keys().chain(rs.sets.keys()).chain(rs.maps.keys()) {
        check_name(n)?;
    }
    if let Some(n) = rs.sets.keys().find(|n| rs.maps.contains_key(*n)) {
        return Err(format!("{n:?} is both a set and a map"));
    }
    for (name, c) in &rs.chains {
        check_chain(rs, name, c)?;
    }
    for (name, m) in &rs.maps {
        check_map(rs, name, m)?;
    }
    Ok(())
}

/// [`validate`] for a model whose other objects were validated before and still exist with
/// the same kind, key and base-ness: checks only the named objects (new or changed).
pub(crate) fn validate_objects<'a>(
    rs: &Ruleset,
    chains: impl IntoIterator<Item = &'a str>,
    sets: impl IntoIterator<Item = &'a str>,
    maps: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    for name in chains {
        check_name(name)?;
        check_chain(rs, name, &rs.chains[name])?;
    }
    for name in sets {
        check_name(name)?;
        if rs.maps.contains_key(name) {
            return Err(format!("{name:?} is both a set and a map"));
        }
    }
    for name in maps {
        check_name(name)?;
        if rs.sets.contains_key(name) {
            return Err(format!("{name:?} is both a set and a map"));
        }
        check_map(rs, name, &rs.maps[name])?;
    }
    Ok(())
}

fn check_name(n: &str) -> Result<(), String> {
    const MAX_NAME: usize = 255;
    if n.is_empty() || n.len() > MAX_NAME {
        return Err(format!("invalid object name {n:?} (1..=255 bytes)"));
    }
    Ok(())
}

/// A jump or goto target must be a regular chain of the model.
fn check_target(rs: &Ruleset, from: &dyn Fn() -> String, target: &str) -> Result<(), String> {
    match rs.chains.get(target) {
        None => Err(format!("{} jumps to missing chain {target:?}", from())),
        Some(c) if c.base.is_some() => Err(format!("{} jumps to base chain {target:?}", from())),
        Some(_) => Ok(()),
    }
}

fn check_chain(rs: &Ruleset, cname: &str, c: &Chain) -> Result<(), String> {
    for (i, r) in c.rules.iter().enumerate() {
        // Only built for an error message: thousands of rules are checked per apply.
        let at = || format!("chain {cname:?} rule {i}");
        for m in &r.matches {
            if let Match::Lookup { fields, set, .. } = m {
                let s = rs
                    .sets
                    .get(set)
                    .ok_or_else(|| format!("{} looks up missing set {set:?}", at()))?;
                if s.key.len() != fields.len() {
                    return Err(format!(
                        "{}: {} fields for set {set:?} of {} key components",
                        at(),
                        fields.len(),
                        s.key.len()
                    ));
                }
            }
        }
        if let Some(RuleVerdict::Vmap { map, .. }) = &r.verdict {
            if !rs.maps.contains_key(map) {
                return Err(format!("{} uses missing map {map:?}", at()));
            }
        }
        if let Some(t) = rule_chain_refs(r) {
            check_target(rs, &at, t)?;
        }
    }
    Ok(())
}

fn check_map(rs: &Ruleset, mname: &str, m: &crate::ruleset::VerdictMap) -> Result<(), String> {
    for v in m.elements.values() {
        if let Verdict::Jump(t) | Verdict::Goto(t) = v {
            check_target(rs, &|| format!("map {mname:?}"), t)?;
        }
    }
    Ok(())
}
