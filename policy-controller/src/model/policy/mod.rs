//! The normalized policy model: what every policy kind means, in one shape, for the
//! compiler. Each API kind has its translator ([`network_policy`] for
//! `networking.k8s.io/v1` NetworkPolicy, [`cluster_network_policy`] for
//! `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy); the compiler reads only
//! [`Policy`] and never the API objects, so a new kind is a new translator, not a new
//! compiler path.
//!
//! # Evaluation (per direction: the source's egress, the destination's ingress)
//!
//! Tiers in order: [`Tier::Admin`], [`Tier::NetworkPolicy`], [`Tier::Baseline`], then the
//! default, allow.
//!
//! - **Admin and Baseline** are *first match*: the policies of the tier that select the pod
//!   in that direction, ordered by [`Policy::order`] (priority, lower first; then the policy
//!   name), their rules in written order. The first rule that matches decides: [`Action::Accept`]
//!   or [`Action::Deny`] end the direction's evaluation, [`Action::Pass`] skips the rest of the
//!   tier. No match: on to the next tier.
//! - **NetworkPolicy** is a *union with isolation*: when at least one policy of the tier
//!   selects the pod in that direction, the tier is final for it: allowed iff some
//!   [`Action::Allow`] rule of those policies matches, else denied. A pod none selects goes on
//!   to Baseline.
//!
//! Two policies of one tier with the same priority: the API leaves their order undefined
//! ("the implementation can apply any of the matching policies"). Palisade orders them by
//! name, so every node and every restart decides the same way.
//!
//! A connection passes iff the source's egress and the destination's ingress both allow it:
//! an egress Accept does not bypass the destination's ingress evaluation.

pub mod cluster_network_policy;
pub mod network_policy;

use super::selector::{describe_selector, PodSelection};
use super::{Name, ObjectKey, Protocol};
use crate::model::api::LabelSelector;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use cluster_network_policy::from_cluster_network_policy;
pub use network_policy::from_network_policy;

/// Which API a policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    NetworkPolicy,
    ClusterNetworkPolicy,
}

/// A policy's identity: `ns/name` for a NetworkPolicy, `ClusterNetworkPolicy/name` for the
/// cluster-scoped kind (a namespace name is lower-case, so the two never read alike).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    /// Empty for a ClusterNetworkPolicy.
    pub namespace: Name,
    pub name: Name,
}

/// The prefix of a ClusterNetworkPolicy's display name.
pub const CLUSTER_POLICY_PREFIX: &str = "ClusterNetworkPolicy/";

impl PolicyRef {
    pub fn network(key: &ObjectKey) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::NetworkPolicy,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }

    pub fn cluster(name: impl Into<Name>) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::ClusterNetworkPolicy,
            namespace: Name::default(),
            name: name.into(),
        }
    }

    /// The NetworkPolicy's key (`None` for a ClusterNetworkPolicy).
    pub fn object_key(&self) -> Option<ObjectKey> {
        (self.kind == PolicyKind::NetworkPolicy)
            .then(|| ObjectKey::new(&self.namespace, self.name.clone()))
    }

    /// Parse what [`fmt::Display`] writes (the first word of `s`).
    pub fn parse(s: &str) -> Option<PolicyRef> {
        let first = s.split(' ').next()?;
        if let Some(name) = first.strip_prefix(CLUSTER_POLICY_PREFIX) {
            return (!name.is_empty()).then(|| PolicyRef::cluster(name));
        }
        let (ns, name) = first.split_once('/')?;
        (!ns.is_empty() && !name.is_empty()).then(|| PolicyRef::network(&ObjectKey::new(ns, name)))
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PolicyKind::NetworkPolicy => write!(f, "{}/{}", self.namespace, self.name),
            PolicyKind::ClusterNetworkPolicy => write!(f, "{CLUSTER_POLICY_PREFIX}{}", self.name),
        }
    }
}

/// Traffic into the subject pod or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The tiers, in evaluation order (`Ord` follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tier {
    Admin,
    NetworkPolicy,
    Baseline,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Admin, Tier::NetworkPolicy, Tier::Baseline];
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::NetworkPolicy => "NetworkPolicy",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Allowed; the direction's evaluation ends (Admin, Baseline).
    Accept,
    /// Dropped; the direction's evaluation ends (Admin, Baseline).
    Deny,
    /// The rest of the tier is skipped; evaluation goes on with the next tier.
    Pass,
    /// NetworkPolicy: allowed. The tier denies what no `Allow` of the policies that select a
    /// pod matches (isolation).
    Allow,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
            Action::Allow => "Allow",
        })
    }
}

/// One policy of any kind, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub id: PolicyRef,
    pub tier: Tier,
    /// Lower first within the tier (0 for NetworkPolicy, where order does not matter).
    pub priority: u32,
    /// The pods the policy applies to (host-network pods never, whatever the selectors say).
    pub subject: PodSelection,
    /// `None`: the policy does not affect ingress. `Some(rules)`: it does, with these rules
    /// in written order (for a NetworkPolicy `Some(vec![])` isolates and allows nothing).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// The order of policies within a tier: priority, then the identity (names; see the
    /// module documentation for why).
    pub fn order(&self) -> (u32, &PolicyRef) {
        (self.priority, &self.id)
    }
}

/// One rule: if the far end matches one of `peers` and the packet one of `ports`, `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The rule's `name` (ClusterNetworkPolicy), for messages.
    pub name: Option<String>,
    pub action: Action,
    /// `None`: every peer, inside or outside the cluster. Otherwise the union.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every protocol and port. Otherwise the union.
    pub ports: Option<Vec<PortMatch>>,
}

/// The far end of a rule: the source for ingress, the destination for egress.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// Pods (live, not host-network, with an address) the selection holds.
    Pods(PodSelection),
    /// Addresses in `cidr` (its network) and in none of `except` (same family, truncated).
    Network { cidr: IpNet, except: Vec<IpNet> },
    /// The addresses (`status.addresses`) of the nodes the selector matches.
    Nodes(LabelSelector),
}

impl Peer {
    /// Short human description.
    pub fn describe(&self) -> String {
        match self {
            Peer::Pods(s) => s.describe(),
            Peer::Network { cidr, except } if except.is_empty() => cidr.to_string(),
            Peer::Network { cidr, except } => {
                let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                format!("{cidr} except {}", ex.join(","))
            }
            Peer::Nodes(sel) => format!("nodes~{}", describe_selector(sel)),
        }
    }
}

/// A destination port condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortMatch {
    /// `protocol` to a port in `first..=last` (a protocol alone is `0..=65535`).
    Ports {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
    /// A port the destination pod declares as `name` for `protocol`: for ingress the subject
    /// pod itself, for egress the pod found at the destination address (whichever peer
    /// matched it, an address block included); nothing when the destination is no pod.
    Named { name: String, protocol: Protocol },
}

/// One rule of one policy: `ns/name ingress[2]`, `ClusterNetworkPolicy/name egress[0]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub direction: Direction,
    /// Position in the written list of the direction's rules.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}
