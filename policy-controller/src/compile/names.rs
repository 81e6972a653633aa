//! The names of the compiled objects and what they mean: chains, maps and sets are named
//! from what they stand for (stable hashes), and rule comments and log prefixes name the
//! policy and rule. Explanations (`palisadectl explain`) and the denied-packet log read them
//! back with [`describe_chain`], [`parse_rule_comment`] and [`parse_log_prefix`].

use crate::model::policy::{Direction, PolicyKind, PolicyRef, RuleRef, Tier};
use crate::ruleset::{Family, RuleVerdict, Ruleset, Value, Verdict};
use serde::Serialize;
use std::net::IpAddr;

pub const FORWARD_CHAIN: &str = "forward";
pub const INPUT_CHAIN: &str = "input";
/// Priority of both base chains: `filter` (0). See the module documentation of `compile`.
pub const FILTER_PRIORITY: i32 = 0;
/// Prefix of every NFLOG message: `palisade drop <ingress|egress> <chain>[ <rule>]`.
pub const LOG_PREFIX: &str = "palisade drop";

/// The chain of one tier's stage of one direction's evaluation: it dispatches the pod (by
/// its address) to its class chain of that tier, then goes on to the next stage.
pub fn stage_chain(direction: Direction, tier: Tier) -> &'static str {
    match (direction, tier) {
        (Direction::Egress, Tier::Admin) => "egress-admin",
        (Direction::Egress, Tier::NetworkPolicy) => "egress-np",
        (Direction::Egress, Tier::Baseline) => "egress-baseline",
        (Direction::Ingress, Tier::Admin) => "ingress-admin",
        (Direction::Ingress, Tier::NetworkPolicy) => "ingress-np",
        (Direction::Ingress, Tier::Baseline) => "ingress-baseline",
    }
}

/// Where a direction's evaluation starts.
pub fn first_stage(direction: Direction) -> &'static str {
    stage_chain(direction, Tier::Admin)
}

/// The verdict map of a stage: a pod's address → its class chain of that tier. The
/// NetworkPolicy tier's maps keep their short historic names (`ingress4`, `egress6`).
pub fn dispatch_map_name(direction: Direction, tier: Tier, family: Family) -> String {
    let tier = match tier {
        Tier::Admin => "-admin",
        Tier::NetworkPolicy => "",
        Tier::Baseline => "-baseline",
    };
    format!("{direction}{tier}{}", fam(family))
}

pub(crate) fn fam(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "4",
        Family::Ipv6 => "6",
    }
}

/// 16 hex digits of FNV-1a 64 over the canonical JSON of `v`: stable across runs, releases
/// and machines (std's hasher is not).
pub(crate) fn hash_of<T: Serialize + ?Sized>(v: &T) -> String {
    let text = serde_json::to_string(v).expect("serialisable");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The chain of one policy's rules for one direction: `pi-`/`pe-` for a NetworkPolicy,
/// `cnp-in-`/`cnp-eg-` for a ClusterNetworkPolicy.
pub fn policy_chain_name(direction: Direction, policy: &PolicyRef) -> String {
    match (policy.kind, direction) {
        (PolicyKind::NetworkPolicy, Direction::Ingress) => {
            format!("pi-{}", hash_of(&(&policy.namespace, &policy.name)))
        }
        (PolicyKind::NetworkPolicy, Direction::Egress) => {
            format!("pe-{}", hash_of(&(&policy.namespace, &policy.name)))
        }
        (PolicyKind::ClusterNetworkPolicy, Direction::Ingress) => {
            format!("cnp-in-{}", hash_of(&policy.name))
        }
        (PolicyKind::ClusterNetworkPolicy, Direction::Egress) => {
            format!("cnp-eg-{}", hash_of(&policy.name))
        }
    }
}

/// The class chain of the pods that one list of policies (in evaluation order) selects in
/// one tier and direction: `in-`/`eg-` (NetworkPolicy), `in-admin-`, `eg-baseline-`, ...
pub fn class_chain_name(direction: Direction, tier: Tier, policies: &[PolicyRef]) -> String {
    let d = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    let t = match tier {
        Tier::Admin => "-admin",
        Tier::NetworkPolicy => "",
        Tier::Baseline => "-baseline",
    };
    format!("{d}{t}-{}", hash_of(policies))
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
    /// A NetworkPolicy class chain (its default deny) or a ClusterNetworkPolicy's chain.
    pub chain: String,
    /// The policy rule that denied, for a ClusterNetworkPolicy's `Deny`.
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

/// The ClusterNetworkPolicy whose rules chain `chain` is (names are hashes of the policy's
/// name: this tries each policy's).
pub fn cluster_policy_of_chain(
    state: &crate::model::ClusterState,
    chain: &str,
) -> Option<PolicyRef> {
    let direction = policy_chain_of(chain)?;
    state
        .cluster_network_policies
        .keys()
        .map(|name| PolicyRef::cluster(name.as_str()))
        .find(|p| policy_chain_name(direction, p) == chain)
}

/// What a chain of a compiled ruleset is for, for logs and explanations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChainRole {
    /// `forward`, `input` and the stage chains.
    Base,
    /// The class chain of one tier of pods selected by `policies` (in evaluation order);
    /// `addresses` are those pods' addresses on this node (from the dispatch maps).
    Class {
        direction: Direction,
        tier: Tier,
        policies: Vec<PolicyRef>,
        addresses: Vec<IpAddr>,
    },
    /// The chain of one policy's rules for one direction.
    Policy {
        direction: Direction,
        policy: PolicyRef,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainDescription {
    pub chain: String,
    pub role: ChainRole,
}

fn class_of(chain: &str) -> Option<(Direction, Tier)> {
    for direction in Direction::BOTH {
        let d = match direction {
            Direction::Ingress => "in",
            Direction::Egress => "eg",
        };
        let Some(rest) = chain.strip_prefix(d) else {
            continue;
        };
        for (t, tier) in [
            ("-admin-", Tier::Admin),
            ("-baseline-", Tier::Baseline),
            ("-", Tier::NetworkPolicy),
        ] {
            if let Some(hash) = rest.strip_prefix(t) {
                if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Some((direction, tier));
                }
            }
        }
    }
    None
}

fn policy_chain_of(chain: &str) -> Option<Direction> {
    if chain.starts_with("pi-") || chain.starts_with("cnp-in-") {
        Some(Direction::Ingress)
    } else if chain.starts_with("pe-") || chain.starts_with("cnp-eg-") {
        Some(Direction::Egress)
    } else {
        None
    }
}

/// Map a chain name (e.g. from an NFLOG prefix, see [`parse_log_prefix`]) back to the
/// policies and pods it stands for, using the ruleset that produced it (the names are
/// hashes).
pub fn describe_chain(ruleset: &Ruleset, chain: &str) -> Option<ChainDescription> {
    let c = ruleset.chains.get(chain)?;
    let role = if c.base.is_some()
        || Tier::ALL
            .iter()
            .any(|t| Direction::BOTH.iter().any(|d| stage_chain(*d, *t) == chain))
    {
        ChainRole::Base
    } else if let Some(direction) = policy_chain_of(chain) {
        // The class chains that jump here carry the policy's name as the jump's comment.
        let policy = ruleset
            .chains
            .values()
            .flat_map(|c| &c.rules)
            .find(|r| r.verdict == Some(RuleVerdict::Verdict(Verdict::Jump(chain.to_string()))))
            .and_then(|r| r.comment.as_deref())
            .and_then(PolicyRef::parse)?;
        ChainRole::Policy { direction, policy }
    } else {
        let (direction, tier) = class_of(chain)?;
        let policies = c
            .rules
            .iter()
            .filter(|r| matches!(r.verdict, Some(RuleVerdict::Verdict(Verdict::Jump(_)))))
            .filter_map(|r| r.comment.as_deref().and_then(PolicyRef::parse))
            .collect();
        let target = Verdict::Jump(chain.to_string());
        let addresses = ruleset
            .maps
            .values()
            .flat_map(|m| &m.elements)
            .filter(|(_, v)| **v == target)
            .filter_map(|(k, _)| match k.first() {
                Some(Value::Addr(ip)) => Some(*ip),
                _ => None,
            })
            .collect();
        ChainRole::Class {
            direction,
            tier,
            policies,
            addresses,
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
            for t in Tier::ALL {
                let class = class_chain_name(d, t, &[np.clone(), cnp.clone()]);
                assert!(class.len() <= 31, "{class}");
                assert_eq!(class_of(&class), Some((d, t)), "{class}");
                assert!(dispatch_map_name(d, t, Family::Ipv6).len() <= 31);
            }
            for p in [&np, &cnp] {
                let chain = policy_chain_name(d, p);
                assert!(chain.len() <= 31);
                assert_eq!(policy_chain_of(&chain), Some(d));
                assert_eq!(class_of(&chain), None, "{chain}");
            }
        }
        assert_eq!(
            dispatch_map_name(Direction::Ingress, Tier::NetworkPolicy, Family::Ipv4),
            "ingress4"
        );
        assert_eq!(
            dispatch_map_name(Direction::Egress, Tier::Baseline, Family::Ipv6),
            "egress-baseline6"
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
