//! The names of the compiled objects and what they mean: chains, maps and sets are named
//! from what they stand for (stable hashes), and rule comments and log prefixes name the
//! policy and rule. Explanations (`palisadectl explain`) and the denied-packet log read them
//! back with [`describe_chain`], [`parse_rule_comment`] and [`parse_log_prefix`].

use crate::model::policy::{Direction, PolicyRef, RuleRef};
use crate::ruleset::{Family, RuleVerdict, Ruleset, Value, Verdict};
use serde::Serialize;
use std::net::IpAddr;

pub const FORWARD_CHAIN: &str = "forward";
pub const INPUT_CHAIN: &str = "input";
/// Priority of both base chains: `filter` (0). See the module documentation of `compile`.
pub const FILTER_PRIORITY: i32 = 0;
/// Prefix of every NFLOG message: `palisade drop <ingress|egress> <chain>[ <rule>]`.
pub const LOG_PREFIX: &str = "palisade drop";

/// Where a direction's evaluation starts: the chain that dispatches this node's pods some
/// policy selects (by address) to the peer classification, and allows the others.
pub fn first_stage(direction: Direction) -> &'static str {
    match direction {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    }
}

/// `eg` / `in`: the prefix of a direction's generated chains.
pub(crate) fn short(direction: Direction) -> &'static str {
    match direction {
        Direction::Egress => "eg",
        Direction::Ingress => "in",
    }
}

/// The chain that classifies the peer address (exact, then blocks, then the world class).
pub fn peers_chain(direction: Direction) -> String {
    format!("{}-peers", first_stage(direction))
}

/// The chain of what happens when no rule matched: isolated pods' default deny, else allowed.
pub fn default_chain(direction: Direction) -> String {
    format!("{}-default", first_stage(direction))
}

/// The verdict map of the first stage: a pod's address → the peer chain.
pub fn dispatch_map_name(direction: Direction, family: Family) -> String {
    format!("{}{}", first_stage(direction), fam(family))
}

/// The chain of a rule that allows (`eg-ok-<hash>`): its one rule names the policy rule.
pub fn allow_chain_name(rule: &RuleRef) -> String {
    format!("{}-ok-{}", short(rule.direction), hash_of(rule))
}

/// The chain of a ClusterNetworkPolicy `Deny` rule (`in-deny-<hash>`): log and drop.
pub fn deny_chain_name(rule: &RuleRef) -> String {
    format!("{}-deny-{}", short(rule.direction), hash_of(rule))
}

/// The default deny of the pods that these NetworkPolicies (in order) isolate.
pub fn isolation_chain_name(direction: Direction, policies: &[PolicyRef]) -> String {
    format!("{}-iso-{}", short(direction), hash_of(policies))
}

pub(crate) fn fam(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "4",
        Family::Ipv6 => "6",
    }
}

/// 16 hex digits of [`palisade_common::stable_hash`] over the canonical JSON of `v`: stable
/// across runs, releases and machines.
pub(crate) fn hash_of<T: Serialize + ?Sized>(v: &T) -> String {
    let text = serde_json::to_string(v).expect("serialisable");
    format!("{:016x}", palisade_common::stable_hash(&[text.as_bytes()]))
}

/// The comment of the rules compiled from one policy rule: `ns/name ingress[0]`, or for a
/// ClusterNetworkPolicy with its action, `ClusterNetworkPolicy/name egress[2] Deny`.
pub fn rule_comment(rule: &RuleRef, action: Option<crate::model::policy::Action>) -> String {
    match action {
        Some(a) => format!("{rule} {a}"),
        None => rule.to_string(),
    }
}

/// Parse a policy rule's comment (see [`rule_comment`]) into the rule it names.
pub fn parse_rule_comment(s: &str) -> Option<RuleRef> {
    let mut words = s.split(' ');
    let policy = PolicyRef::parse(words.next()?)?;
    let (dir, idx) = words.next()?.strip_suffix(']')?.split_once('[')?;
    let direction = match dir {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    Some(RuleRef {
        policy,
        direction,
        index: idx.parse().ok()?,
    })
}

/// An NFLOG prefix the compiled ruleset writes, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPrefix {
    pub direction: Direction,
    /// The isolation chain (a NetworkPolicy default deny) or a ClusterNetworkPolicy rule's
    /// deny chain.
    pub chain: String,
    /// Unused by this compiled form (older agents wrote a rule index after the chain).
    pub rule: Option<usize>,
}

/// `palisade drop <direction> <chain>[ <rule index>]`.
pub fn log_prefix(direction: Direction, chain: &str, rule: Option<usize>) -> String {
    match rule {
        Some(i) => format!("{LOG_PREFIX} {direction} {chain} {i}"),
        None => format!("{LOG_PREFIX} {direction} {chain}"),
    }
}

/// Parse what [`log_prefix`] writes.
pub fn parse_log_prefix(prefix: &str) -> Option<LogPrefix> {
    let rest = prefix.trim_end().strip_prefix(LOG_PREFIX)?.trim_start();
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let direction = match words.next()? {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    let chain = words.next()?.to_string();
    let rule = match words.next() {
        Some(w) => Some(w.parse().ok()?),
        None => None,
    };
    Some(LogPrefix {
        direction,
        chain,
        rule,
    })
}

/// The ClusterNetworkPolicy rule whose deny chain `chain` is (names are hashes of the rule:
/// this tries each rule of each policy).
pub fn cluster_rule_of_chain(state: &crate::model::ClusterState, chain: &str) -> Option<RuleRef> {
    let direction = if chain.starts_with("in-deny-") {
        Direction::Ingress
    } else if chain.starts_with("eg-deny-") {
        Direction::Egress
    } else {
        return None;
    };
    state.cluster_network_policies.values().find_map(|p| {
        let policy = PolicyRef::cluster(p.metadata.name.as_str());
        let rules = match direction {
            Direction::Ingress => p.spec.ingress.as_ref().map_or(0, Vec::len),
            Direction::Egress => p.spec.egress.as_ref().map_or(0, Vec::len),
        };
        (0..rules)
            .map(|index| RuleRef {
                policy: policy.clone(),
                direction,
                index,
            })
            .find(|r| deny_chain_name(r) == chain)
    })
}

/// What a chain of a compiled ruleset is for, for logs and explanations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChainRole {
    /// `forward`, `input`, and each direction's stage, peer and default chains.
    Base,
    /// A peer class: the far end's address is one of those that the same peer conditions
    /// hold.
    PeerClass { direction: Direction },
    /// Allowed by this rule.
    Allow { direction: Direction, rule: RuleRef },
    /// Denied by this ClusterNetworkPolicy rule.
    Deny { direction: Direction, rule: RuleRef },
    /// The default deny of the pods these NetworkPolicies isolate (in evaluation order);
    /// `addresses` are those pods' addresses on this node (from the default maps).
    Isolation {
        direction: Direction,
        policies: Vec<PolicyRef>,
        addresses: Vec<IpAddr>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainDescription {
    pub chain: String,
    pub role: ChainRole,
}

/// The direction and kind (`ok`, `deny`, `iso`, or `` for a peer class) of a generated
/// chain's name: `<in|eg>-[<kind>-]<16 hex digits>`.
fn generated(chain: &str) -> Option<(Direction, &str)> {
    let (d, rest) = chain.split_once('-')?;
    let direction = match d {
        "in" => Direction::Ingress,
        "eg" => Direction::Egress,
        _ => return None,
    };
    let (kind, hash) = match rest.rsplit_once('-') {
        Some((kind, hash)) => (kind, hash),
        None => ("", rest),
    };
    (hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some((direction, kind))
}

/// Map a chain name (e.g. from an NFLOG prefix, see [`parse_log_prefix`]) back to the
/// policies and pods it stands for, using the ruleset that produced it (the names are
/// hashes; the chains' rule comments name policies and rules).
pub fn describe_chain(ruleset: &Ruleset, chain: &str) -> Option<ChainDescription> {
    let c = ruleset.chains.get(chain)?;
    let rule_of = |c: &crate::ruleset::Chain| {
        c.rules
            .iter()
            .filter_map(|r| r.comment.as_deref())
            .find_map(parse_rule_comment)
    };
    let role = if c.base.is_some()
        || Direction::BOTH.iter().any(|d| {
            first_stage(*d) == chain || peers_chain(*d) == chain || default_chain(*d) == chain
        }) {
        ChainRole::Base
    } else {
        match generated(chain)? {
            (direction, "") => ChainRole::PeerClass { direction },
            (direction, "ok") => ChainRole::Allow {
                direction,
                rule: rule_of(c)?,
            },
            (direction, "deny") => ChainRole::Deny {
                direction,
                rule: rule_of(c)?,
            },
            (direction, "iso") => {
                // The rules after the drop name the policies.
                let policies = c
                    .rules
                    .iter()
                    .skip_while(|r| r.verdict != Some(RuleVerdict::Verdict(Verdict::Drop)))
                    .skip(1)
                    .filter_map(|r| r.comment.as_deref().and_then(PolicyRef::parse))
                    .collect();
                let target = Verdict::Goto(chain.to_string());
                let addresses = ruleset
                    .maps
                    .iter()
                    .filter(|(name, _)| {
                        [Family::Ipv4, Family::Ipv6]
                            .iter()
                            .any(|f| **name == format!("{}{}", default_chain(direction), fam(*f)))
                    })
                    .flat_map(|(_, m)| &m.elements)
                    .filter(|(_, v)| **v == target)
                    .filter_map(|(k, _)| match k.first() {
                        Some(Value::Addr(ip)) => Some(*ip),
                        _ => None,
                    })
                    .collect();
                ChainRole::Isolation {
                    direction,
                    policies,
                    addresses,
                }
            }
            _ => return None,
        }
    };
    Some(ChainDescription {
        chain: chain.to_string(),
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectKey;

    #[test]
    fn names_fit_and_read_back() {
        let np = PolicyRef::network(&ObjectKey::new("x", "web"));
        let cnp = PolicyRef::cluster("deny-all");
        for d in Direction::BOTH {
            let iso = isolation_chain_name(d, std::slice::from_ref(&np));
            assert_eq!(generated(&iso), Some((d, "iso")), "{iso}");
            for p in [&np, &cnp] {
                let rule = RuleRef {
                    policy: p.clone(),
                    direction: d,
                    index: 7,
                };
                for (name, kind) in [
                    (allow_chain_name(&rule), "ok"),
                    (deny_chain_name(&rule), "deny"),
                ] {
                    assert!(name.len() <= 31, "{name}");
                    assert_eq!(generated(&name), Some((d, kind)), "{name}");
                }
            }
            assert_eq!(generated(&peers_chain(d)), None);
            assert!(dispatch_map_name(d, Family::Ipv6).len() <= 31);
        }
        assert_eq!(
            dispatch_map_name(Direction::Ingress, Family::Ipv4),
            "ingress4"
        );
    }

    #[test]
    fn comments_and_log_prefixes_round_trip() {
        let rule = RuleRef {
            policy: PolicyRef::cluster("deny-y"),
            direction: Direction::Egress,
            index: 2,
        };
        let c = rule_comment(&rule, Some(crate::model::policy::Action::Deny));
        assert_eq!(c, "ClusterNetworkPolicy/deny-y egress[2] Deny");
        assert_eq!(parse_rule_comment(&c), Some(rule));
        let np = parse_rule_comment("x/web ingress[3]").unwrap();
        assert_eq!(np.policy, PolicyRef::network(&ObjectKey::new("x", "web")));
        assert_eq!(parse_rule_comment("x/web"), None);
        let p = log_prefix(Direction::Ingress, "cnp-in-0123456789abcdef", Some(4));
        assert_eq!(
            parse_log_prefix(&p),
            Some(LogPrefix {
                direction: Direction::Ingress,
                chain: "cnp-in-0123456789abcdef".into(),
                rule: Some(4)
            })
        );
        assert_eq!(
            parse_log_prefix("palisade drop egress eg-00").map(|p| (p.chain, p.rule)),
            Some(("eg-00".to_string(), None))
        );
        assert_eq!(parse_log_prefix("palisade drop sideways x"), None);
    }
}
