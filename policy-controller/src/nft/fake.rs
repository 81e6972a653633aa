//! An in-memory dataplane: applies the same command lists as [`super::NftDataplane`] to a
//! model of the table, with the kernel's reference checks (a set in use cannot be deleted,
//! a rule cannot name a missing set, a chain still jumped to cannot go, interval elements
//! cannot overlap, ...), all-or-nothing like an nft transaction. For fast golden tests
//! without root: the dump is canonical nft text.

use super::plan::{chain_set_refs, rule_chain_refs, Op, Programmed, SetType};
use super::tracker::Tracker;
use super::{text, ApplyStats, Dataplane, DataplaneError};
use crate::ruleset::{
    Chain, ChainType, Hook, Match, RuleVerdict, Ruleset, Set, Statement, Touched, Value, Verdict,
    VerdictMap,
};

#[derive(Debug, Clone)]
pub struct FakeDataplane {
    table_name: String,
    /// The table as the "kernel" holds it; `None`: no table.
    table: Option<Ruleset>,
    /// What the dataplane believes is programmed (like the real one): unknown means the
    /// next apply adopts `table` first.
    tracker: Tracker,
    /// Every transaction sent, in order.
    pub transactions: Vec<Vec<Op>>,
    /// Make the next transaction fail (as if nft rejected it).
    pub fail_next: bool,
}

impl FakeDataplane {
    pub fn new(table_name: &str) -> FakeDataplane {
        FakeDataplane {
            table_name: table_name.to_string(),
            table: None,
            tracker: Tracker::new(),
            transactions: Vec::new(),
            fail_next: false,
        }
    }

    /// Start from an existing table (e.g. left by a previous agent), as the kernel holds it.
    pub fn with_table(table_name: &str, existing: Ruleset) -> FakeDataplane {
        let mut f = FakeDataplane::new(table_name);
        f.table = Some(existing);
        f
    }

    /// The table as the fake "kernel" holds it.
    pub fn table(&self) -> Option<&Ruleset> {
        self.table.as_ref()
    }

    /// The commands of the last transaction sent.
    pub fn last_ops(&self) -> &[Op] {
        self.transactions.last().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Canonical nft text of the table ("" when there is none).
    pub fn dump(&self) -> String {
        self.table
            .as_ref()
            .map(|t| text::render_table(&self.table_name, t))
            .unwrap_or_default()
    }

    /// Applies one transaction: all commands or none.
    pub fn commit(&mut self, ops: &[Op]) -> Result<(), DataplaneError> {
        let mut t = self.table.clone();
        for (i, op) in ops.iter().enumerate() {
            apply_op(&mut t, op)
                .map_err(|e| DataplaneError::Nft(format!("command {i} ({op:?}): {e}")))?;
        }
        self.table = t;
        Ok(())
    }
}

impl Dataplane for FakeDataplane {
    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &Touched,
    ) -> Result<ApplyStats, DataplaneError> {
        let full = !self.tracker.known();
        if full {
            // Adoption: what the kernel holds, as a listing would show it.
            self.tracker
                .adopt(self.table.clone().map(Programmed::exact));
        }
        let diff = self.tracker.diff(desired, touched)?;
        let n = diff.ops.len();
        if n > 0 {
            let fail = std::mem::take(&mut self.fail_next);
            let res = if fail {
                Err(DataplaneError::Nft("injected failure".into()))
            } else {
                self.commit(&diff.ops)
            };
            self.transactions.push(diff.ops.clone());
            if let Err(e) = res {
                self.tracker.invalidate();
                return Err(e);
            }
        }
        self.tracker.commit(diff);
        #[cfg(debug_assertions)]
        self.tracker.check(desired);
        Ok(ApplyStats { commands: n, full })
    }

    fn invalidate(&mut self) {
        self.tracker.invalidate();
    }
}

fn set_kind_spec(rs: &Ruleset, name: &str) -> Option<SetType> {
    if let Some(s) = rs.sets.get(name) {
        return Some(SetType {
            key: s.key.clone(),
            interval: s.interval,
            map: false,
            comment: None,
        });
    }
    rs.maps.get(name).map(|m| SetType {
        key: m.key.clone(),
        interval: m.interval,
        map: true,
        comment: None,
    })
}

fn set_in_use(rs: &Ruleset, name: &str) -> bool {
    rs.chains.values().any(|c| chain_set_refs(c).contains(name))
}

fn chain_in_use(rs: &Ruleset, name: &str) -> bool {
    rs.chains
        .values()
        .flat_map(|c| &c.rules)
        .any(|r| rule_chain_refs(r) == Some(name))
        || rs
            .maps
            .values()
            .flat_map(|m| m.elements.values())
            .any(|v| matches!(v, Verdict::Jump(c) | Verdict::Goto(c) if c == name))
}

fn check_target(rs: &Ruleset, target: &str) -> Result<(), String> {
    match rs.chains.get(target) {
        None => Err(format!("No such file or directory: chain {target}")),
        Some(c) if c.base.is_some() => Err(format!(
            "Operation not supported: jump to base chain {target}"
        )),
        Some(_) => Ok(()),
    }
}

/// The span of a one-component interval element, for the overlap check nft makes.
fn span(v: &Value) -> Option<(u8, u128, u128)> {
    let ip = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => (4u8, u128::from(u32::from(*a))),
        std::net::IpAddr::V6(a) => (6u8, u128::from(*a)),
    };
    match v {
        Value::Addr(a) => {
            let (k, x) = ip(a);
            Some((k, x, x))
        }
        Value::Prefix(n) => {
            let (k, lo) = ip(&n.network());
            Some((k, lo, ip(&n.broadcast()).1))
        }
        Value::AddrRange(a, b) => {
            let (k, lo) = ip(a);
            Some((k, lo, ip(b).1))
        }
        Value::Port(p) => Some((0, u128::from(*p), u128::from(*p))),
        Value::PortRange(a, b) => Some((0, u128::from(*a), u128::from(*b))),
        _ => None,
    }
}

fn overlaps(set: &Set, e: &[Value]) -> bool {
    if !set.interval || e.len() != 1 {
        return false;
    }
    let Some((k, lo, hi)) = span(&e[0]) else {
        return false;
    };
    set.elements.iter().any(|x| {
        x != e && span(&x[0]).is_some_and(|(k2, lo2, hi2)| k2 == k && lo2 <= hi && lo <= hi2)
    })
}

fn apply_op(table: &mut Option<Ruleset>, op: &Op) -> Result<(), String> {
    if let Op::AddTable = op {
        table.get_or_insert_with(Ruleset::default);
        return Ok(());
    }
    let rs = table.as_mut().ok_or("No such file or directory: table")?;
    match op {
        Op::AddTable => unreachable!(),
        Op::AddChain { name, base } => match rs.chains.get_mut(name) {
            Some(c) => match (&c.base, base) {
                (None, None) => {}
                (Some(a), Some(b))
                    if a.chain_type == b.chain_type
                        && a.hook == b.hook
                        && a.priority == b.priority =>
                {
                    c.base = Some(b.clone())
                }
                _ => {
                    return Err(format!(
                        "Device or resource busy: chain {name} changes hook"
                    ))
                }
            },
            None => {
                rs.chains.insert(
                    name.clone(),
                    Chain {
                        base: base.clone(),
                        rules: Vec::new(),
                    },
                );
            }
        },
        Op::FlushChain { name } => {
            rs.chains
                .get_mut(name)
                .ok_or(format!("No such file or directory: chain {name}"))?
                .rules
                .clear();
        }
        Op::DeleteChain { name } => {
            if !rs.chains.contains_key(name) {
                return Err(format!("No such file or directory: chain {name}"));
            }
            if chain_in_use(rs, name) {
                return Err(format!(
                    "Device or resource busy: chain {name} is jumped to"
                ));
            }
            rs.chains.remove(name);
        }
        Op::AddSet { name, spec } => match set_kind_spec(rs, name) {
            Some(old)
                if old.key == spec.key && old.interval == spec.interval && old.map == spec.map => {}
            Some(_) => return Err(format!("File exists: set {name} with another type")),
            None if spec.map => {
                rs.maps.insert(
                    name.clone(),
                    VerdictMap {
                        key: spec.key.clone(),
                        interval: spec.interval,
                        ..VerdictMap::default()
                    },
                );
            }
            None => {
                rs.sets.insert(
                    name.clone(),
                    Set {
                        key: spec.key.clone(),
                        interval: spec.interval,
                        ..Set::default()
                    },
                );
            }
        },
        Op::DeleteSet { name, spec } => {
            match set_kind_spec(rs, name) {
                Some(s) if s.map == spec.map => {}
                _ => return Err(format!("No such file or directory: set {name}")),
            }
            if set_in_use(rs, name) {
                return Err(format!("Device or resource busy: set {name} in use"));
            }
            rs.sets.remove(name);
            rs.maps.remove(name);
        }
        Op::AddElements { set, elements } => {
            let s = rs
                .sets
                .get_mut(set)
                .ok_or(format!("No such file or directory: set {set}"))?;
            for e in elements {
                if e.len() != s.key.len() {
                    return Err(format!("Invalid argument: element arity in {set}"));
                }
                if overlaps(s, e) {
                    return Err(format!(
                        "interval overlaps with an existing one: {e:?} in {set}"
                    ));
                }
                s.elements.insert(e.clone());
            }
        }
        Op::DeleteElements { set, elements } => {
            let s = rs
                .sets
                .get_mut(set)
                .ok_or(format!("No such file or directory: set {set}"))?;
            for e in elements {
                if !s.elements.remove(e) {
                    return Err(format!("No such file or directory: element {e:?} in {set}"));
                }
            }
        }
        Op::AddMapElements { map, elements } => {
            for (_, v) in elements {
                if let Verdict::Jump(t) | Verdict::Goto(t) = v {
                    check_target(rs, t)?;
                }
            }
            let m = rs
                .maps
                .get_mut(map)
                .ok_or(format!("No such file or directory: map {map}"))?;
            for (k, v) in elements {
                if k.len() != m.key.len() {
                    return Err(format!("Invalid argument: element arity in {map}"));
                }
                match m.elements.get(k) {
                    Some(old) if old != v => {
                        return Err(format!("File exists: {k:?} in {map} maps elsewhere"))
                    }
                    _ => {
                        m.elements.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Op::DeleteMapElements { map, keys } => {
            let m = rs
                .maps
                .get_mut(map)
                .ok_or(format!("No such file or directory: map {map}"))?;
            for k in keys {
                if m.elements.remove(k).is_none() {
                    return Err(format!("No such file or directory: element {k:?} in {map}"));
                }
            }
        }
        Op::AddRule { chain, rule } => {
            for m in &rule.matches {
                if let Match::Lookup { set, .. } = m {
                    if !rs.sets.contains_key(set) {
                        return Err(format!("No such file or directory: set {set}"));
                    }
                }
            }
            if let Some(RuleVerdict::Vmap { map, .. }) = &rule.verdict {
                if !rs.maps.contains_key(map) {
                    return Err(format!("No such file or directory: map {map}"));
                }
            }
            if let Some(t) = rule_chain_refs(rule) {
                check_target(rs, t)?;
            }
            let c = rs
                .chains
                .get_mut(chain)
                .ok_or(format!("No such file or directory: chain {chain}"))?;
            // The kernel validates a masquerade expression against the chain it lands in:
            // only a nat chain at postrouting may hold one.
            let nat_postrouting = c
                .base
                .as_ref()
                .is_some_and(|b| b.chain_type == ChainType::Nat && b.hook == Hook::Postrouting);
            if rule.statements.contains(&Statement::Masquerade) && !nat_postrouting {
                return Err(format!(
                    "Operation not supported: masquerade in chain {chain} (not nat at postrouting)"
                ));
            }
            c.rules.push(rule.clone());
        }
    }
    Ok(())
}
