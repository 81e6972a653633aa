//! What a dataplane believes is programmed, and the diff of a new desired model against it.
//!
//! A pod change touches a handful of sets, maps and chains out of thousands. Canonicalizing
//! and diffing the whole model per change would cost more than the change itself, so the
//! tracker remembers a fingerprint of every object of the last desired model it programmed
//! (a 64-bit foldhash digest under a random seed, so no fixed pair of inputs collides: a
//! changed object passes for unchanged with a chance of about 2^-64) and canonicalizes,
//! validates and diffs only the objects whose fingerprint changed, appeared or went. The
//! result is the same transaction the full diff would give (debug builds check that after
//! every apply).
//!
//! Fingerprinting every object still costs a few milliseconds at 10k pods. When the model's
//! producer says which objects it rebuilt since the last model ([`Touched`], from the
//! incremental compiler), only those (and objects that appeared) are fingerprinted; the rest
//! are taken as unchanged. The property test `incremental_compiler_agrees_with_full_compile`
//! checks that the compiler's report covers every object that changed.
//!
//! A set reported by its exact element changes ([`Touched::elements`], pod churn) is not
//! even looked at: its fingerprint is a sum of per-element digests (a multiset hash), so it
//! follows the changes alone, and the changes are the commands. A one-pod change then costs
//! the elements of that pod, not those of the sets it is in.
//!
//! The whole model is diffed instead when there is nothing to compare against (adoption of
//! a table read back from the kernel, or after an error) and when an object changes kind
//! (a set's type, a set becoming a map, a chain becoming a base chain): that makes every user
//! of the object part of the change, which only the full diff sees.

use super::canon::{canonical_chain, canonical_key, canonical_map, canonical_set, canonicalize};
use super::plan::{plan, validate, validate_objects, Op, Programmed};
use super::DataplaneError;
use crate::ruleset::{
    Chain, ElementDelta, MapDelta, Ruleset, Set, Touched, Value, Verdict, VerdictMap,
};
use foldhash::quality::{FoldHasher, RandomState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};

type Print = u64;

/// Fingerprints of the objects of one (raw, not canonical) desired model.
#[derive(Debug, Clone, Default)]
struct Prints {
    chains: HashMap<String, Print>,
    sets: HashMap<String, Print>,
    maps: HashMap<String, Print>,
}

#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    /// `None`: unknown (the next apply lists the table first) or no table.
    programmed: Option<Programmed>,
    /// Fingerprints of the desired model `programmed` was made from; `None` after adoption.
    prints: Option<Prints>,
    /// Random per tracker: no fixed pair of inputs collides.
    seed: RandomState,
}

/// A diff, to be committed once the kernel took its commands.
#[derive(Debug)]
pub(crate) struct Diff {
    /// The commands of the transaction.
    pub ops: Vec<Op>,
    /// The canonical desired objects the commands were planned for: the whole model, or only
    /// the objects that changed (element commands only ever name sets and maps in it).
    pub model: Ruleset,
    /// Whether the whole model was diffed.
    pub whole: bool,
    /// The fingerprints after the diff: all of them (whole), or those of the changed objects
    /// (partial; the rest stay).
    prints: Prints,
    /// Names of the objects that went.
    gone: Vec<Gone>,
    /// Sets changed by these elements only: `model` holds them without elements (for their
    /// key), and the programmed set takes the changes on commit.
    deltas: Vec<(String, ElementDelta)>,
    /// The same for verdict maps.
    map_deltas: Vec<(String, MapDelta)>,
}

/// What changed between the fingerprints of the last programmed model and a new one.
struct Changes<'t> {
    chains: Vec<(String, Print)>,
    sets: Vec<(String, Print)>,
    maps: Vec<(String, Print)>,
    gone: Vec<Gone>,
    /// Sets changed by elements only, with their new fingerprints.
    deltas: Vec<(&'t String, &'t ElementDelta, Print)>,
    /// Maps changed by elements only, with their new fingerprints.
    map_deltas: Vec<(&'t String, &'t MapDelta, Print)>,
}

#[derive(Debug)]
enum Gone {
    Chain(String),
    Set(String),
    Map(String),
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            programmed: None,
            prints: None,
            seed: RandomState::default(),
        }
    }

    /// Whether the programmed state is known (else the caller reads the table and adopts it).
    pub fn known(&self) -> bool {
        self.programmed.is_some()
    }

    /// Start from what was read back (`None`: the table does not exist).
    pub fn adopt(&mut self, programmed: Option<Programmed>) {
        self.programmed = programmed;
        self.prints = None;
    }

    /// Forget everything: the next apply lists the table again.
    pub fn invalidate(&mut self) {
        self.programmed = None;
        self.prints = None;
    }

    fn print(&self, f: impl Fn(&mut FoldHasher<'static>)) -> Print {
        let mut h = self.seed.build_hasher();
        f(&mut h);
        h.finish()
    }

    fn prints_of(&self, rs: &Ruleset) -> Prints {
        Prints {
            chains: rs
                .chains
                .iter()
                .map(|(n, c)| (n.clone(), self.print(|h| hash_chain(c, h))))
                .collect(),
            sets: rs
                .sets
                .iter()
                .map(|(n, s)| (n.clone(), self.set_print(s)))
                .collect(),
            maps: rs
                .maps
                .iter()
                .map(|(n, m)| (n.clone(), self.map_print(m)))
                .collect(),
        }
    }

    /// A map's fingerprint: its type's digest plus the sum of its elements' digests (see
    /// [`Tracker::set_print`]).
    fn map_print(&self, m: &VerdictMap) -> Print {
        let mut p = self.print(|h| hash_map_type(m, h));
        for (k, v) in &m.elements {
            p = p.wrapping_add(self.map_element_print(k, v));
        }
        p
    }

    fn map_element_print(&self, k: &[Value], v: &Verdict) -> Print {
        self.print(|h| {
            k.hash(h);
            v.hash(h);
        })
    }

    /// `print` after `delta`.
    fn map_delta_print(&self, print: Print, delta: &MapDelta) -> Print {
        let mut p = print;
        for (k, v) in &delta.removed {
            p = p.wrapping_sub(self.map_element_print(k, v));
        }
        for (k, v) in &delta.added {
            p = p.wrapping_add(self.map_element_print(k, v));
        }
        p
    }

    /// A set's fingerprint: its type's digest plus the sum of its elements' digests, so that
    /// element changes update it without looking at the rest ([`Tracker::element_print`]).
    fn set_print(&self, s: &Set) -> Print {
        let mut p = self.print(|h| hash_set_type(s, h));
        for e in &s.elements {
            p = p.wrapping_add(self.element_print(e));
        }
        p
    }

    fn element_print(&self, e: &[Value]) -> Print {
        self.print(|h| e.hash(h))
    }

    /// `print` after `delta`.
    fn delta_print(&self, print: Print, delta: &ElementDelta) -> Print {
        let mut p = print;
        for e in &delta.removed {
            p = p.wrapping_sub(self.element_print(e));
        }
        for e in &delta.added {
            p = p.wrapping_add(self.element_print(e));
        }
        p
    }

    /// The objects of `objs` whose fingerprint differs from `old` or is new, and the names
    /// in `old` that `objs` lacks. Allocates only for those. With `only`, an object known
    /// before is fingerprinted only if `only` names it (the producer's word that the others
    /// are unchanged, see [`Touched`]).
    fn changed<T>(
        &self,
        objs: &BTreeMap<String, T>,
        old: &HashMap<String, Print>,
        only: Option<&BTreeSet<String>>,
        print: impl Fn(&T) -> Print,
        gone: impl Fn(String) -> Gone,
        out_gone: &mut Vec<Gone>,
    ) -> Vec<(String, Print)> {
        let mut changed = Vec::new();
        let mut kept = 0;
        for (name, obj) in objs {
            match old.get(name.as_str()) {
                Some(q) => {
                    kept += 1;
                    if only.is_some_and(|t| !t.contains(name)) {
                        continue;
                    }
                    let p = print(obj);
                    if *q != p {
                        changed.push((name.clone(), p));
                    }
                }
                None => changed.push((name.clone(), print(obj))),
            }
        }
        if kept < old.len() {
            out_gone.extend(
                old.keys()
                    .filter(|n| !objs.contains_key(n.as_str()))
                    .map(|n| gone(n.clone())),
            );
        }
        changed
    }

    /// Validates `desired` and plans the transaction from what is programmed to it. Nothing
    /// changes in the tracker until [`Tracker::commit`] (after an error from the kernel, call
    /// [`Tracker::invalidate`]), except that an invalid model makes the tracker forget
    /// everything, as any error does.
    ///
    /// `touched` names the objects that may differ from the last model given (see
    /// [`Touched`]); the others are taken as unchanged without looking at them. After an
    /// error that report is gone, hence the full resync next time.
    pub fn diff(&mut self, desired: &Ruleset, touched: &Touched) -> Result<Diff, DataplaneError> {
        let res = self.diff_inner(desired, touched);
        if res.is_err() {
            self.invalidate();
        }
        res
    }

    fn diff_inner(&mut self, desired: &Ruleset, touched: &Touched) -> Result<Diff, DataplaneError> {
        if let (Some(old), Some(programmed)) = (&self.prints, &self.programmed) {
            let mut gone = Vec::new();
            let only = |names| (!touched.all).then_some(names);
            // Sets told by their element changes: their fingerprints follow the changes. One
            // the programmed model lacks, or holds with intervals, is diffed in full instead:
            // the kernel holds an interval set's canonical elements, not the model's (adjacent
            // intervals of a single-field set are one, and pod addresses often are adjacent;
            // a concatenation's fields are respelled), so the model's changes are not the
            // kernel's. The full diff of the canonical elements is, and goes by netlink all
            // the same (`netlink::encode`).
            let mut deltas = Vec::new();
            let mut full_sets;
            let mut only_sets = only(&touched.sets);
            if !touched.all && !touched.elements.is_empty() {
                full_sets = touched.sets.clone();
                for (name, delta) in &touched.elements {
                    let exact = programmed.model.sets.get(name).is_some_and(|s| !s.interval)
                        && !programmed.stale_sets.contains(name)
                        && desired.sets.get(name).is_some_and(|s| !s.interval);
                    match old.sets.get(name) {
                        Some(p) if exact => {
                            if !delta.is_empty() {
                                deltas.push((name, delta, self.delta_print(*p, delta)));
                            }
                        }
                        _ => {
                            full_sets.insert(name.clone());
                        }
                    }
                }
                only_sets = Some(&full_sets);
            }
            // The same for maps.
            let mut map_deltas = Vec::new();
            let mut full_maps;
            let mut only_maps = only(&touched.maps);
            if !touched.all && !touched.map_elements.is_empty() {
                full_maps = touched.maps.clone();
                // A map's canonical form spells each key alone (no merging, unlike an
                // interval set's), so interval maps follow their changes too.
                for (name, delta) in &touched.map_elements {
                    let exact = match (programmed.model.maps.get(name), desired.maps.get(name)) {
                        (Some(p), Some(d)) => p.key == d.key && p.interval == d.interval,
                        _ => false,
                    };
                    match old.maps.get(name) {
                        Some(p) if exact => {
                            if !delta.is_empty() {
                                map_deltas.push((name, delta, self.map_delta_print(*p, delta)));
                            }
                        }
                        _ => {
                            full_maps.insert(name.clone());
                        }
                    }
                }
                only_maps = Some(&full_maps);
            }
            let changes = Changes {
                chains: self.changed(
                    &desired.chains,
                    &old.chains,
                    only(&touched.chains),
                    |c| self.print(|h| hash_chain(c, h)),
                    Gone::Chain,
                    &mut gone,
                ),
                sets: self.changed(
                    &desired.sets,
                    &old.sets,
                    only_sets,
                    |s| self.set_print(s),
                    Gone::Set,
                    &mut gone,
                ),
                maps: self.changed(
                    &desired.maps,
                    &old.maps,
                    only_maps,
                    |m| self.map_print(m),
                    Gone::Map,
                    &mut gone,
                ),
                gone,
                deltas,
                map_deltas,
            };
            if let Some(diff) = partial(changes, programmed, desired)? {
                return Ok(diff);
            }
            // An object changed kind: diff the whole model.
        }
        self.whole(desired, self.prints_of(desired))
    }

    fn whole(&self, desired: &Ruleset, prints: Prints) -> Result<Diff, DataplaneError> {
        validate(desired).map_err(DataplaneError::Invalid)?;
        let model = canonicalize(desired);
        let ops = plan(self.programmed.as_ref(), &model);
        Ok(Diff {
            ops,
            model,
            whole: true,
            prints,
            gone: Vec::new(),
            deltas: Vec::new(),
            map_deltas: Vec::new(),
        })
    }

    /// The kernel took the diff's commands: it is what is programmed now.
    pub fn commit(&mut self, diff: Diff) {
        if diff.whole {
            self.programmed = Some(Programmed::exact(diff.model));
            self.prints = Some(diff.prints);
            return;
        }
        // A partial diff is only made against a programmed model and its fingerprints.
        let (Some(p), Some(prints)) = (&mut self.programmed, &mut self.prints) else {
            return;
        };
        let mut model = diff.model;
        for (n, delta) in &diff.deltas {
            model.sets.remove(n);
            if let Some(set) = p.model.sets.get_mut(n) {
                delta.apply_to(&mut set.elements);
            }
        }
        for (n, delta) in &diff.map_deltas {
            model.maps.remove(n);
            if let Some(map) = p.model.maps.get_mut(n) {
                delta.apply_to(&mut map.elements);
            }
        }
        for g in diff.gone {
            match g {
                Gone::Chain(n) => {
                    p.model.chains.remove(&n);
                    prints.chains.remove(&n);
                }
                Gone::Set(n) => {
                    p.model.sets.remove(&n);
                    prints.sets.remove(&n);
                }
                Gone::Map(n) => {
                    p.model.maps.remove(&n);
                    prints.maps.remove(&n);
                }
            }
        }
        p.model.chains.extend(model.chains);
        p.model.sets.extend(model.sets);
        p.model.maps.extend(model.maps);
        prints.chains.extend(diff.prints.chains);
        prints.sets.extend(diff.prints.sets);
        prints.maps.extend(diff.prints.maps);
    }

    /// Debug check: the programmed model is the canonical form of `desired`.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub fn check(&self, desired: &Ruleset) {
        if let Some(p) = &self.programmed {
            assert!(
                p.model == canonicalize(desired),
                "incremental dataplane diverged from the desired model"
            );
        }
    }
}

/// The diff of only the changed objects, or `None` when an object changed kind.
fn partial(
    changes: Changes,
    programmed: &Programmed,
    desired: &Ruleset,
) -> Result<Option<Diff>, DataplaneError> {
    let Changes {
        chains,
        sets,
        maps,
        gone,
        deltas,
        map_deltas,
    } = changes;
    let cur = &programmed.model;
    let kind_changed = chains.iter().any(|(n, _)| {
        cur.chains
            .get(n)
            .is_some_and(|c| c.base.is_some() != desired.chains[n].base.is_some())
    }) || sets.iter().any(|(n, _)| {
        cur.maps.contains_key(n)
            || cur
                .sets
                .get(n)
                .is_some_and(|s| !same_set_type(s, &desired.sets[n]))
    }) || maps.iter().any(|(n, _)| {
        cur.sets.contains_key(n)
            || cur.maps.get(n).is_some_and(|m| {
                m.key != desired.maps[n].key || m.interval != desired.maps[n].interval
            })
    });
    if kind_changed {
        return Ok(None);
    }
    // Something went: an unchanged object may still name it, which only the whole check sees.
    if gone.is_empty() {
        validate_objects(
            desired,
            chains.iter().map(|(n, _)| n.as_str()),
            sets.iter().map(|(n, _)| n.as_str()),
            maps.iter().map(|(n, _)| n.as_str()),
        )
    } else {
        validate(desired)
    }
    .map_err(DataplaneError::Invalid)?;

    // The programmed and desired versions of every object that changed or went.
    let mut before = Programmed::default();
    let mut after = Ruleset::default();
    let mut prints = Prints::default();
    for (n, p) in chains {
        if let Some(c) = cur.chains.get(&n) {
            before.model.chains.insert(n.clone(), c.clone());
        }
        after
            .chains
            .insert(n.clone(), canonical_chain(&desired.chains[&n]));
        prints.chains.insert(n, p);
    }
    for (n, p) in sets {
        if let Some(s) = cur.sets.get(&n) {
            before.model.sets.insert(n.clone(), s.clone());
        }
        after
            .sets
            .insert(n.clone(), canonical_set(&desired.sets[&n]));
        prints.sets.insert(n, p);
    }
    for (n, p) in maps {
        if let Some(m) = cur.maps.get(&n) {
            before.model.maps.insert(n.clone(), m.clone());
        }
        after
            .maps
            .insert(n.clone(), canonical_map(&desired.maps[&n]));
        prints.maps.insert(n, p);
    }
    for g in &gone {
        match g {
            Gone::Chain(n) => {
                if let Some(c) = cur.chains.get(n) {
                    before.model.chains.insert(n.clone(), c.clone());
                }
            }
            Gone::Set(n) => {
                if let Some(s) = cur.sets.get(n) {
                    before.model.sets.insert(n.clone(), s.clone());
                }
            }
            Gone::Map(n) => {
                if let Some(m) = cur.maps.get(n) {
                    before.model.maps.insert(n.clone(), m.clone());
                }
            }
        }
    }
    let mut ops = plan(Some(&before), &after);
    // Element changes of kept sets depend on no other command of the transaction.
    let mut delta_sets = Vec::with_capacity(deltas.len());
    for (n, delta, p) in deltas {
        if !delta.removed.is_empty() {
            ops.push(Op::DeleteElements {
                set: n.clone(),
                elements: delta.removed.iter().cloned().collect(),
            });
        }
        if !delta.added.is_empty() {
            ops.push(Op::AddElements {
                set: n.clone(),
                elements: delta.added.iter().cloned().collect(),
            });
        }
        let cur_set = &cur.sets[n];
        after.sets.insert(
            n.clone(),
            Set {
                key: cur_set.key.clone(),
                interval: cur_set.interval,
                ..Set::default()
            },
        );
        prints.sets.insert(n.clone(), p);
        delta_sets.push((n.clone(), delta.clone()));
    }
    let mut delta_maps = Vec::with_capacity(map_deltas.len());
    // Map elements name chains: their deletions go first (a chain going in this transaction
    // must no longer be named when it is deleted), their additions last (a chain they name
    // may come in this transaction). A key whose verdict changed is in both.
    let mut first = Vec::new();
    for (n, delta, p) in map_deltas {
        let cur_map = &cur.maps[n];
        let canon = |k: &Vec<Value>| canonical_key(cur_map.interval, k);
        let delta = MapDelta {
            added: delta
                .added
                .iter()
                .map(|(k, v)| (canon(k), v.clone()))
                .collect(),
            removed: delta
                .removed
                .iter()
                .map(|(k, v)| (canon(k), v.clone()))
                .collect(),
        };
        if !delta.removed.is_empty() {
            first.push(Op::DeleteMapElements {
                map: n.clone(),
                keys: delta.removed.keys().cloned().collect(),
            });
        }
        if !delta.added.is_empty() {
            ops.push(Op::AddMapElements {
                map: n.clone(),
                elements: delta
                    .added
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        after.maps.insert(
            n.clone(),
            VerdictMap {
                key: cur_map.key.clone(),
                interval: cur_map.interval,
                ..VerdictMap::default()
            },
        );
        prints.maps.insert(n.clone(), p);
        delta_maps.push((n.clone(), delta));
    }
    if !first.is_empty() {
        first.append(&mut ops);
        ops = first;
    }
    Ok(Some(Diff {
        ops,
        model: after,
        whole: false,
        prints,
        gone,
        deltas: delta_sets,
        map_deltas: delta_maps,
    }))
}

fn same_set_type(a: &Set, b: &Set) -> bool {
    a.key == b.key && a.interval == b.interval
}

fn hash_chain(c: &Chain, h: &mut FoldHasher<'static>) {
    c.base.hash(h);
    c.rules.hash(h);
}

/// Everything of a set but its elements (those are summed, see [`Tracker::set_print`]).
fn hash_set_type(s: &Set, h: &mut FoldHasher<'static>) {
    s.key.hash(h);
    s.interval.hash(h);
    s.comment.hash(h);
}

/// Everything of a map but its elements (those are summed, see [`Tracker::map_print`]).
fn hash_map_type(m: &VerdictMap, h: &mut FoldHasher<'static>) {
    m.key.hash(h);
    m.interval.hash(h);
    m.comment.hash(h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{
        BaseChain, ChainPolicy, ChainType, Family, Field, Hook, KeyType, Match, Rule, Value,
        Verdict,
    };

    fn ip(s: &str) -> Vec<Value> {
        vec![Value::Addr(s.parse().unwrap())]
    }

    /// A base chain jumping to `pods` for sources in `peers`; `pods` accepts sources in
    /// `others`; a map dispatching to `pods`.
    fn model() -> Ruleset {
        let mut rs = Ruleset::default();
        for (name, elems) in [
            ("peers", ["10.0.0.1", "10.0.0.2"]),
            ("others", ["10.0.1.1", "10.0.1.2"]),
        ] {
            rs.sets.insert(
                name.into(),
                Set {
                    key: vec![KeyType::Ipv4Addr],
                    elements: elems.iter().map(|e| ip(e)).collect(),
                    ..Set::default()
                },
            );
        }
        let from = |set: &str| Match::Lookup {
            fields: vec![Field::SrcAddr(Family::Ipv4)],
            set: set.into(),
            negate: false,
        };
        rs.chains.insert(
            "forward".into(),
            Chain {
                base: Some(BaseChain {
                    chain_type: ChainType::Filter,
                    hook: Hook::Forward,
                    priority: 0,
                    policy: ChainPolicy::Accept,
                }),
                rules: vec![Rule::new(vec![from("peers")], Verdict::Jump("pods".into()))],
            },
        );
        rs.chains.insert(
            "pods".into(),
            Chain {
                base: None,
                rules: vec![Rule::new(vec![from("others")], Verdict::Accept)],
            },
        );
        rs.maps.insert(
            "dispatch".into(),
            VerdictMap {
                key: vec![KeyType::Ipv4Addr],
                elements: [(ip("10.0.2.1"), Verdict::Jump("pods".into()))].into(),
                ..VerdictMap::default()
            },
        );
        rs
    }

    fn programmed(rs: &Ruleset) -> Tracker {
        let mut t = Tracker::new();
        t.adopt(None);
        let d = t.diff(rs, &Touched::all()).unwrap();
        assert!(d.whole, "the first diff has nothing to compare against");
        t.commit(d);
        t
    }

    #[test]
    fn only_a_changed_object_is_diffed() {
        let rs = model();
        let mut t = programmed(&rs);
        let mut next = rs.clone();
        next.sets
            .get_mut("peers")
            .unwrap()
            .elements
            .insert(ip("10.0.0.3"));
        let d = t.diff(&next, &Touched::all()).unwrap();
        assert!(!d.whole);
        assert_eq!(d.model.sets.keys().collect::<Vec<_>>(), ["peers"]);
        assert!(d.model.chains.is_empty() && d.model.maps.is_empty());
        assert_eq!(
            d.ops,
            vec![Op::AddElements {
                set: "peers".into(),
                elements: vec![ip("10.0.0.3")]
            }]
        );
        t.commit(d);
        t.check(&next);
        // Nothing changed: nothing to do.
        let d = t.diff(&next, &Touched::all()).unwrap();
        assert!(!d.whole && d.ops.is_empty());
    }

    #[test]
    fn an_object_that_goes_is_deleted_and_forgotten() {
        let rs = model();
        let mut t = programmed(&rs);
        let mut next = rs.clone();
        next.maps.remove("dispatch");
        let d = t.diff(&next, &Touched::all()).unwrap();
        assert!(!d.whole);
        assert!(
            matches!(d.ops.as_slice(), [Op::DeleteSet { name, spec }] if name == "dispatch" && spec.map)
        );
        t.commit(d);
        t.check(&next);
    }

    #[test]
    fn a_set_that_goes_while_an_unchanged_chain_uses_it_is_refused() {
        let rs = model();
        let mut t = programmed(&rs);
        let mut next = rs.clone();
        next.sets.remove("others"); // "pods" (unchanged) still looks it up
        assert!(
            matches!(t.diff(&next, &Touched::all()), Err(DataplaneError::Invalid(m)) if m.contains("others"))
        );
        // Any error makes the tracker forget what is programmed (a full resync follows).
        assert!(!t.known());
        // A chain that changes to jump to a base chain is refused by the partial check too.
        let mut t = programmed(&rs);
        let mut next = rs.clone();
        next.chains.get_mut("pods").unwrap().rules[0].verdict = Some(
            crate::ruleset::RuleVerdict::Verdict(Verdict::Jump("forward".into())),
        );
        assert!(
            matches!(t.diff(&next, &Touched::all()), Err(DataplaneError::Invalid(m)) if m.contains("base chain"))
        );
        assert!(!t.known());
    }

    #[test]
    fn a_change_of_kind_diffs_the_whole_model() {
        let rs = model();
        let mut t = programmed(&rs);
        // "others" becomes an interval set: recreated, so the unchanged chain "pods" that
        // uses it must be flushed and refilled around it, which only the whole diff sees.
        let mut next = rs.clone();
        next.sets.get_mut("others").unwrap().interval = true;
        let d = t.diff(&next, &Touched::all()).unwrap();
        assert!(d.whole);
        assert!(
            d.ops.contains(&Op::FlushChain {
                name: "pods".into()
            }),
            "{:?}",
            d.ops
        );
        t.commit(d);
        t.check(&next);
    }
}
