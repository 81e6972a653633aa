//! The ruleset model: the contract between the policy compiler (`compile`, which produces it
//! from cluster state), the interpreter (`eval::interp`, which classifies packets by walking
//! it) and the dataplane (`nft`, which renders it, diffs it and programs it).
//!
//! It mirrors the nftables objects of one `inet` table closely enough that rendering is
//! mechanical, but it is plain data: no nft syntax, no I/O. Everything is ordered
//! (`BTreeMap`/`BTreeSet`) so that equal models compare equal and dumps are canonical.
//!
//! Shape (DESIGN.md "Policy"): few, stable chains; the data that changes with pods and
//! selectors lives in set and map elements, so that a pod coming or going is a few element
//! updates, never a rule rewrite.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One `inet` table's worth of chains, sets and verdict maps, keyed by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
    pub maps: BTreeMap<String, VerdictMap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

/// The type of one component of a set or map key (nft: `ipv4_addr`, `ipv6_addr`,
/// `inet_proto`, `inet_service`, `ifname`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    IfName,
}

/// A packet field a rule can match on or look up in a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Field {
    /// `ip saddr` / `ip6 saddr`
    SrcAddr(Family),
    /// `ip daddr` / `ip6 daddr`
    DstAddr(Family),
    /// `meta l4proto`
    L4Proto,
    /// `th dport` (TCP, UDP, SCTP, ... destination port)
    DstPort,
    /// `meta iifname`
    IifName,
    /// `meta oifname`
    OifName,
    /// `meta nfproto` (ipv4 / ipv6)
    NfProto,
}

impl Field {
    /// The key type of this field when used in a set lookup.
    pub fn key_type(self) -> KeyType {
        match self {
            Field::SrcAddr(Family::Ipv4) | Field::DstAddr(Family::Ipv4) => KeyType::Ipv4Addr,
            Field::SrcAddr(Family::Ipv6) | Field::DstAddr(Family::Ipv6) => KeyType::Ipv6Addr,
            Field::L4Proto => KeyType::InetProto,
            Field::DstPort => KeyType::InetService,
            Field::IifName | Field::OifName => KeyType::IfName,
            Field::NfProto => KeyType::InetProto,
        }
    }
}

/// One component of a set element or a compared value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Value {
    Addr(IpAddr),
    /// A CIDR; only in interval sets (or as a compared value).
    Prefix(IpNet),
    /// An inclusive address range; only in interval sets.
    AddrRange(IpAddr, IpAddr),
    Proto(u8),
    Port(u16),
    /// An inclusive port range (endPort); only in interval sets.
    PortRange(u16, u16),
    IfName(String),
    /// Interface-name wildcard: every name starting with this prefix (nft `"pal*"`).
    IfPrefix(String),
    /// `meta nfproto` value.
    NfProto(Family),
}

/// A named set: `key` is one type or a concatenation (`ipv4_addr . inet_proto . inet_service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub key: Vec<KeyType>,
    /// `flags interval`: elements may hold prefixes and ranges.
    pub interval: bool,
    pub elements: BTreeSet<Vec<Value>>,
    /// Free text, rendered as the set's comment (what selector or rule it stands for).
    pub comment: Option<String>,
}

/// A named verdict map (`type ... : verdict`), used for dispatch: packet key → jump chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictMap {
    pub key: Vec<KeyType>,
    pub interval: bool,
    pub elements: BTreeMap<Vec<Value>, Verdict>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    Ne,
}

/// A condition of a rule; a rule applies when all its matches hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Match {
    /// `field == value` / `field != value` (a `Prefix` value matches addresses inside it,
    /// an `IfPrefix` names starting with it, ranges values inside them).
    Cmp {
        field: Field,
        op: CmpOp,
        value: Value,
    },
    /// `fields @set` (concatenated with `.` when several), or `!= @set` when `negate`.
    Lookup {
        fields: Vec<Field>,
        set: String,
        negate: bool,
    },
    /// `ct state { ... }`: the packet's conntrack state is one of these.
    CtState(Vec<CtState>),
}

/// A statement a rule executes before its verdict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Statement {
    Counter,
    /// `log group N prefix "..."` (NFLOG), optionally rate-limited to `rate_per_second`.
    Log {
        group: u16,
        prefix: String,
        rate_per_second: Option<u32>,
    },
    /// `masquerade fully-random`: the connection's source becomes the address of the
    /// interface the packet leaves by. Terminal, like a verdict (the kernel's masquerade
    /// expression sets the verdict itself), so it is a rule's last statement and the rule has
    /// no verdict. The kernel takes it only in a `nat` chain at `postrouting`.
    ///
    /// Always `fully-random` (the source port is drawn at random for every connection): with
    /// sequential port allocation, two connections from pods of one node racing to the same
    /// destination can pick the same port and the second one's SYN is dropped at conntrack
    /// insertion; kube-proxy, Calico and Cilium set the same flag for that reason.
    Masquerade,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// How a rule ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuleVerdict {
    Verdict(Verdict),
    /// `fields vmap @map`: look the key up in a verdict map; no element means continue.
    Vmap {
        fields: Vec<Field>,
        map: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub statements: Vec<Statement>,
    /// `None`: fall through to the next rule (only useful with statements).
    pub verdict: Option<RuleVerdict>,
    /// Rendered as the rule's comment; names the policy/rule for explanations and logs.
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChainPolicy {
    Accept,
    Drop,
}

/// What a base chain does with packets (nft's chain `type`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum ChainType {
    /// Accepts and drops (the policy chains).
    #[default]
    Filter,
    /// Rewrites addresses; sees only the first packet of each connection (masquerade).
    Nat,
}

/// A base chain is attached to a netfilter hook.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BaseChain {
    #[serde(default)]
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub policy: ChainPolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// `Some` for a base chain attached to a hook; `None` for a regular chain.
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

impl Rule {
    pub fn new(matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule {
            matches,
            statements: Vec::new(),
            verdict: Some(RuleVerdict::Verdict(verdict)),
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

/// Which objects of a ruleset may differ from an earlier version of it: what its producer
/// (the incremental compiler) rebuilt since that version. A dataplane given this diffs only
/// these objects and those that appeared or went, instead of looking at every object.
///
/// A set whose elements only changed can be reported by its exact element changes instead
/// ([`Touched::elements`]): pod churn changes a few elements of sets holding thousands, and
/// the dataplane then sends and records those without looking at the rest of the set.
///
/// Over-reporting is harmless (an object named here but unchanged produces no command);
/// under-reporting would leave a change unprogrammed, so whoever cannot tell says `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Anything may have changed.
    pub all: bool,
    pub chains: BTreeSet<String>,
    /// Sets that may differ in anything.
    pub sets: BTreeSet<String>,
    pub maps: BTreeSet<String>,
    /// Sets (not named in `sets`) that differ exactly by these elements: each one in
    /// `added` is new to the set, each one in `removed` was in it. Only for sets without
    /// `flags interval` (whose elements are their canonical form).
    pub elements: BTreeMap<String, ElementDelta>,
    /// Verdict maps (not named in `maps`, without `flags interval`) that differ exactly by
    /// these elements.
    pub map_elements: BTreeMap<String, MapDelta>,
}

/// The exact element changes of one verdict map, see [`Touched::map_elements`]: `removed`
/// holds the entries of the map as it was (key → its verdict then) that are gone or whose
/// verdict changed, `added` the entries of the map now that it did not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapDelta {
    pub added: BTreeMap<Vec<Value>, Verdict>,
    pub removed: BTreeMap<Vec<Value>, Verdict>,
}

impl MapDelta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// `key → verdict` was added to the map (after the changes recorded so far; the key was
    /// not in it then).
    pub fn add(&mut self, key: Vec<Value>, verdict: Verdict) {
        if self.removed.get(&key) == Some(&verdict) {
            self.removed.remove(&key);
        } else {
            self.added.insert(key, verdict);
        }
    }

    /// `key → verdict` was removed from the map (after the changes recorded so far).
    pub fn remove(&mut self, key: Vec<Value>, verdict: Verdict) {
        if self.added.remove(&key).is_none() {
            self.removed.insert(key, verdict);
        }
    }

    /// Apply to the elements the delta was recorded against.
    pub fn apply_to(&self, elements: &mut BTreeMap<Vec<Value>, Verdict>) {
        for k in self.removed.keys() {
            elements.remove(k);
        }
        elements.extend(self.added.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// The exact element changes of one set, see [`Touched::elements`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementDelta {
    pub added: BTreeSet<Vec<Value>>,
    pub removed: BTreeSet<Vec<Value>>,
}

impl ElementDelta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// `e` was added to the set (after the changes recorded so far).
    pub fn add(&mut self, e: Vec<Value>) {
        if !self.removed.remove(&e) {
            self.added.insert(e);
        }
    }

    /// `e` was removed from the set (after the changes recorded so far).
    pub fn remove(&mut self, e: Vec<Value>) {
        if !self.added.remove(&e) {
            self.removed.insert(e);
        }
    }

    /// Apply to the elements the delta was recorded against.
    pub fn apply_to(&self, elements: &mut BTreeSet<Vec<Value>>) {
        for e in &self.removed {
            elements.remove(e);
        }
        elements.extend(self.added.iter().cloned());
    }
}

impl Touched {
    /// Anything may have changed.
    pub fn all() -> Touched {
        Touched {
            all: true,
            chains: BTreeSet::new(),
            sets: BTreeSet::new(),
            maps: BTreeSet::new(),
            elements: BTreeMap::new(),
            map_elements: BTreeMap::new(),
        }
    }

    /// Nothing changed (yet).
    pub fn none() -> Touched {
        Touched {
            all: false,
            ..Touched::all()
        }
    }

    /// Records that chain `name` was rebuilt (nothing to record when `all`).
    pub fn chain(&mut self, name: &str) {
        if !self.all {
            self.chains.insert(name.to_string());
        }
    }

    /// Records that set `name` was rebuilt.
    pub fn set(&mut self, name: &str) {
        if !self.all {
            self.elements.remove(name);
            self.sets.insert(name.to_string());
        }
    }

    /// The element changes of set `name` to record into, or `None` when they need no
    /// recording (everything, or the whole set, counts as touched already).
    pub fn set_elements(&mut self, name: &str) -> Option<&mut ElementDelta> {
        if self.all || self.sets.contains(name) {
            return None;
        }
        Some(self.elements.entry(name.to_string()).or_default())
    }

    /// Records that map `name` was rebuilt.
    pub fn map(&mut self, name: &str) {
        if !self.all {
            self.map_elements.remove(name);
            self.maps.insert(name.to_string());
        }
    }

    /// The element changes of map `name` to record into, or `None` when they need no
    /// recording (everything, or the whole map, counts as touched already).
    pub fn map_elements(&mut self, name: &str) -> Option<&mut MapDelta> {
        if self.all || self.maps.contains(name) {
            return None;
        }
        Some(self.map_elements.entry(name.to_string()).or_default())
    }

    /// Everything `other` names too (changes since an earlier point; `other` is the later).
    pub fn merge(&mut self, other: Touched) {
        if self.all || other.all {
            *self = Touched::all();
            return;
        }
        self.chains.extend(other.chains);
        for name in other.maps {
            self.map(&name);
        }
        for (name, delta) in other.map_elements {
            if let Some(mine) = self.map_elements(&name) {
                for (k, v) in delta.removed {
                    mine.remove(k, v);
                }
                for (k, v) in delta.added {
                    mine.add(k, v);
                }
            }
        }
        for name in other.sets {
            self.set(&name);
        }
        for (name, delta) in other.elements {
            if let Some(mine) = self.set_elements(&name) {
                for e in delta.removed {
                    mine.remove(e);
                }
                for e in delta.added {
                    mine.add(e);
                }
            }
        }
    }
}

impl Default for Touched {
    fn default() -> Touched {
        Touched::all()
    }
}
