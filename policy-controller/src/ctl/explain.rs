//! `palisadectl explain`: allowed or denied, and why, from the compiled path.
//!
//! The packet is walked through the compiled ruleset of every node it crosses
//! ([`Reachability::check`]); the rules it hits carry comments naming the policy and rule
//! (`ns/name ingress[0]`, `ClusterNetworkPolicy/name egress[1] Deny`), and class chains name
//! the tier and the policies that select a pod. That is the answer: per direction, the tier,
//! policy and rule that decided, and the `Pass` rules on the way. The reference evaluator answers the same question from the API semantics
//! ([`reference::explain`]); when the two disagree, something is wrong in Palisade and the
//! report says so loudly. Against a live node, the hops on that node are walked once more
//! through the table really programmed there, with the nft rule handles and counters.

use super::style::{Colour, Style};
use crate::compile::{describe_chain, ChainRole};
use crate::eval::interp::{classify, Hit, HopResult, PathVerdict, Reachability};
use crate::eval::reference::{self, DirectionVerdict, Endpoint, Explanation};
use crate::model::policy::{Direction, PolicyKind, PolicyRef, RuleRef, Tier};
use crate::model::{ClusterState, ObjectKey, Protocol};
use crate::nft::Listing;
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// What one direction (the source's egress, the destination's ingress) decided on the
/// compiled path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "verdict"
)]
pub enum Side {
    /// No tier decided: allowed by default (or Palisade does not enforce there: `reason` from
    /// the reference evaluator).
    NotIsolated {
        reason: Option<String>,
        passed: Vec<String>,
    },
    /// NetworkPolicy isolation, allowed by these rules.
    Allowed {
        isolated_by: Vec<String>,
        allowed_by: Vec<String>,
        passed: Vec<String>,
    },
    /// NetworkPolicy isolation, no rule allows it.
    Denied {
        isolated_by: Vec<String>,
        passed: Vec<String>,
    },
    /// An Admin or Baseline ClusterNetworkPolicy rule accepted or denied it.
    Decided {
        tier: Tier,
        rule: String,
        accepted: bool,
        passed: Vec<String>,
    },
    /// The compiled path ended before this direction was looked at (egress dropped first).
    NotReached,
}

/// One rule a packet hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleHit {
    pub chain: String,
    pub index: usize,
    pub comment: Option<String>,
    /// nft rule handle and counters, from the programmed table (live only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    pub node: String,
    pub hook: String,
    pub accepted: bool,
    pub rules: Vec<RuleHit>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub from: String,
    pub to: String,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub allowed: bool,
    pub egress: Side,
    pub ingress: Side,
    /// Where the compiled path dropped the packet: `node hook: chain[i] "comment"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_at: Option<String>,
    /// The compiled path, hook by hook.
    pub hops: Vec<Hop>,
    /// The same question asked of the programmed table of the live node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<Hop>>,
    pub reference: Explanation,
    /// Empty when the compiled path, the reference evaluator (and the programmed table)
    /// agree.
    pub disagreements: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Path(#[from] crate::eval::interp::PathError),
    #[error(transparent)]
    Endpoint(#[from] reference::EndpointError),
}

/// `ns/pod`, `pod` (in `default_ns`) or an IP address.
pub fn parse_endpoint(s: &str, default_ns: &str) -> Endpoint {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Endpoint::Ip(ip);
    }
    match s.split_once('/') {
        Some((ns, name)) => Endpoint::Pod(ObjectKey::new(ns, name)),
        None => Endpoint::Pod(ObjectKey::new(default_ns, s)),
    }
}

/// Explain one packet. `live`: the programmed table of node `.0`, to walk that node's hops
/// through it as well.
pub fn explain(
    state: &ClusterState,
    src: &Endpoint,
    dst: &Endpoint,
    protocol: Protocol,
    port: u16,
    live: Option<(&str, &Listing)>,
) -> Result<Report, ExplainError> {
    let mut reach = Reachability::with_defaults(state);
    let path = reach.check(src, dst, protocol, port)?;
    let family = path
        .hops
        .first()
        .map(|h| crate::ruleset::Family::of(&h.packet.src));
    let reference = match family {
        Some(f) => reference::explain_in_family(state, src, dst, protocol, port, f)?,
        None => reference::explain(state, src, dst, protocol, port)?,
    };
    let (egress, ingress) = sides(&mut reach, state, &path, &reference);
    let hops: Vec<Hop> = path
        .hops
        .iter()
        .map(|h| Hop {
            node: h.node.clone(),
            hook: format!("{:?}", h.hook).to_lowercase(),
            accepted: h.outcome.accepted,
            rules: h.outcome.trace.iter().map(rule_hit).collect(),
        })
        .collect();
    let dropped_at = path.hops.iter().find(|h| !h.outcome.accepted).map(|h| {
        let rule = match h.outcome.trace.last() {
            Some(hit) => match &hit.comment {
                Some(c) => format!("{}[{}] {c:?}", hit.chain, hit.rule),
                None => format!("{}[{}]", hit.chain, hit.rule),
            },
            None => "the chain policy".to_string(),
        };
        let hook = format!("{:?}", h.hook).to_lowercase();
        format!("{} {hook}: {rule}", h.node)
    });
    let mut disagreements = cross_check(path.allowed, &egress, &ingress, &reference);
    let live_hops =
        live.map(|(node, listing)| walk_programmed(node, listing, &path.hops, &mut disagreements));
    Ok(Report {
        from: src.to_string(),
        to: dst.to_string(),
        src_ip: reference.src_ip,
        dst_ip: reference.dst_ip,
        protocol,
        port,
        allowed: path.allowed,
        egress,
        ingress,
        dropped_at,
        hops,
        live: live_hops,
        reference,
        disagreements,
    })
}

fn rule_hit(h: &Hit) -> RuleHit {
    RuleHit {
        chain: h.chain.clone(),
        index: h.rule,
        comment: h.comment.clone(),
        handle: None,
        packets: None,
        bytes: None,
    }
}

/// What the trace says about one direction.
#[derive(Default)]
struct Story {
    isolated_by: Option<Vec<String>>,
    allowed_by: Vec<String>,
    denied: bool,
    decided: Option<(Tier, String, bool)>,
}

/// The policies whose isolation chain the local pod at `addr` defaults to in `direction`,
/// read off the ruleset's default maps (a NetworkPolicy allow only decides for an isolated
/// pod, whose default is that chain).
fn isolating(ruleset: &crate::ruleset::Ruleset, direction: Direction, addr: IpAddr) -> Vec<String> {
    let map = format!(
        "{}{}",
        crate::compile::names::default_chain(direction),
        match addr {
            IpAddr::V4(_) => "4",
            IpAddr::V6(_) => "6",
        }
    );
    let target = ruleset
        .maps
        .get(&map)
        .and_then(|m| m.elements.get(&vec![crate::ruleset::Value::Addr(addr)]));
    match target {
        Some(crate::ruleset::Verdict::Goto(chain)) => match describe_chain(ruleset, chain) {
            Some(d) => match d.role {
                ChainRole::Isolation { policies, .. } => names(&policies),
                _ => Vec::new(),
            },
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The tier of a ClusterNetworkPolicy (Admin when unknown).
fn tier_of(state: &ClusterState, policy: &PolicyRef) -> Tier {
    state
        .cluster_network_policies
        .get(policy.name.as_str())
        .and_then(crate::model::policy::from_cluster_network_policy)
        .map_or(Tier::Admin, |p| p.tier)
}

/// Read each direction's story off the trace: the chain a decision jumps to names the rule
/// that allowed or denied, or the policies whose isolation denied. `Pass` rules are folded
/// into the compiled decisions (they leave no trace): the `passed` lists come from the
/// reference evaluator.
fn sides(
    reach: &mut Reachability<'_>,
    state: &ClusterState,
    path: &PathVerdict,
    reference: &Explanation,
) -> (Side, Side) {
    let mut stories = [Story::default(), Story::default()];
    let idx = |d: Direction| match d {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    };
    let mut stopped_early = false;
    for hop in &path.hops {
        let ruleset = reach.ruleset(&hop.node).clone();
        let mut last_direction = None;
        for hit in &hop.outcome.trace {
            let Some(role) = describe_chain(&ruleset, &hit.chain).map(|d| d.role) else {
                continue;
            };
            match role {
                ChainRole::Allow { direction, rule } => {
                    last_direction = Some(direction);
                    let story = &mut stories[idx(direction)];
                    if rule.policy.kind == PolicyKind::NetworkPolicy {
                        let local = match direction {
                            Direction::Egress => hop.packet.src,
                            Direction::Ingress => hop.packet.dst,
                        };
                        story.isolated_by = Some(isolating(&ruleset, direction, local));
                        story.allowed_by = vec![rule.to_string()];
                    } else {
                        story.decided =
                            Some((tier_of(state, &rule.policy), rule.to_string(), true));
                    }
                }
                ChainRole::Deny { direction, rule } => {
                    last_direction = Some(direction);
                    stories[idx(direction)].decided =
                        Some((tier_of(state, &rule.policy), rule.to_string(), false));
                }
                ChainRole::Isolation {
                    direction,
                    policies,
                    ..
                } => {
                    last_direction = Some(direction);
                    let story = &mut stories[idx(direction)];
                    story.isolated_by = Some(names(&policies));
                    story.denied = true;
                }
                ChainRole::PeerClass { direction } => last_direction = Some(direction),
                ChainRole::Base => {}
            }
        }
        if !hop.outcome.accepted {
            match last_direction {
                Some(Direction::Egress) => stopped_early = same_node_after(path, hop),
                Some(Direction::Ingress) => {}
                None => stopped_early = true,
            }
        }
    }
    let side = |d: Direction, verdict: &DirectionVerdict| -> Side {
        let story = &stories[idx(d)];
        let passed = rule_names(verdict.passed());
        if let Some((tier, rule, accepted)) = &story.decided {
            return Side::Decided {
                tier: *tier,
                rule: rule.clone(),
                accepted: *accepted,
                passed,
            };
        }
        match &story.isolated_by {
            Some(policies) if story.denied => Side::Denied {
                isolated_by: policies.clone(),
                passed,
            },
            Some(policies) if !story.allowed_by.is_empty() => Side::Allowed {
                isolated_by: policies.clone(),
                allowed_by: story.allowed_by.clone(),
                passed,
            },
            Some(_) => Side::NotReached,
            None if d == Direction::Ingress
                && stopped_early
                && !matches!(verdict, DirectionVerdict::NotEnforced { .. }) =>
            {
                Side::NotReached
            }
            None => Side::NotIsolated {
                reason: match verdict {
                    DirectionVerdict::NotEnforced { reason } => Some(reason.clone()),
                    _ => None,
                },
                passed,
            },
        }
    };
    (
        side(Direction::Egress, &reference.egress),
        side(Direction::Ingress, &reference.ingress),
    )
}

/// An egress drop on a node where the destination's ingress would be checked too (same node,
/// one forward hook): the ingress side was never reached.
fn same_node_after(path: &PathVerdict, hop: &HopResult) -> bool {
    path.hops.len() == 1 || path.hops.iter().all(|h| h.node == hop.node)
}

fn names(keys: &[PolicyRef]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

fn rule_names(rules: &[RuleRef]) -> Vec<String> {
    rules.iter().map(|r| r.to_string()).collect()
}

fn cross_check(
    allowed: bool,
    egress: &Side,
    ingress: &Side,
    reference: &Explanation,
) -> Vec<String> {
    let mut out = Vec::new();
    if allowed != reference.allowed() {
        out.push(format!(
            "the compiled ruleset {} the packet but the reference evaluator {} it",
            if allowed { "allows" } else { "denies" },
            if reference.allowed() {
                "allows"
            } else {
                "denies"
            }
        ));
    }
    for (d, side, verdict) in [
        (Direction::Egress, egress, &reference.egress),
        (Direction::Ingress, ingress, &reference.ingress),
    ] {
        let isolation = |compiled: &[String], reference: &[PolicyRef]| {
            (sorted(compiled) != sorted(&names(reference))).then(|| {
                format!(
                    "isolated by {compiled:?} (compiled) vs {:?} (reference)",
                    names(reference)
                )
            })
        };
        let problem = match (side, verdict) {
            (Side::NotReached, _) => None,
            (
                Side::NotIsolated { .. },
                DirectionVerdict::NotIsolated { .. } | DirectionVerdict::NotEnforced { .. },
            ) => None,
            (
                Side::Allowed {
                    isolated_by,
                    allowed_by,
                    ..
                },
                DirectionVerdict::Allowed {
                    isolated_by: ref_iso,
                    allowed_by: ref_allowed,
                    ..
                },
            ) => {
                let refs: BTreeSet<String> = ref_allowed.iter().map(RuleRef::to_string).collect();
                isolation(isolated_by, ref_iso).or_else(|| {
                    allowed_by
                        .iter()
                        .find(|r| !refs.contains(*r))
                        .map(|r| format!("compiled path allowed by {r}, which the reference evaluator does not list ({refs:?})"))
                })
            }
            (
                Side::Denied { isolated_by, .. },
                DirectionVerdict::Denied {
                    isolated_by: ref_iso,
                    ..
                },
            ) => isolation(isolated_by, ref_iso),
            (
                Side::Decided {
                    tier,
                    rule,
                    accepted,
                    ..
                },
                DirectionVerdict::Decided {
                    tier: ref_tier,
                    rule: ref_rule,
                    accepted: ref_accepted,
                    ..
                },
            ) => (tier != ref_tier || *rule != ref_rule.to_string() || accepted != ref_accepted)
                .then(|| {
                    format!(
                        "decided by {rule} ({tier}, {}) (compiled) vs {ref_rule} ({ref_tier}, {}) (reference)",
                        accept_word(*accepted),
                        accept_word(*ref_accepted)
                    )
                }),
            (side, verdict) => Some(format!(
                "compiled path says {}, reference evaluator says {}",
                side_word(side),
                verdict_word(verdict)
            )),
        };
        if let Some(p) = problem {
            out.push(format!("{d}: {p}"));
        }
    }
    out
}

fn accept_word(accepted: bool) -> &'static str {
    if accepted {
        "Accept"
    } else {
        "Deny"
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn side_word(s: &Side) -> &'static str {
    match s {
        Side::NotIsolated { .. } => "not isolated",
        Side::Allowed { .. } => "allowed",
        Side::Denied { .. } => "denied",
        Side::Decided { accepted: true, .. } => "accepted by a cluster policy",
        Side::Decided {
            accepted: false, ..
        } => "denied by a cluster policy",
        Side::NotReached => "not reached",
    }
}

fn verdict_word(v: &DirectionVerdict) -> &'static str {
    match v {
        DirectionVerdict::NotEnforced { .. } => "not enforced",
        DirectionVerdict::NotIsolated { .. } => "not isolated",
        DirectionVerdict::Allowed { .. } => "allowed",
        DirectionVerdict::Denied { .. } => "denied",
        DirectionVerdict::Decided { accepted: true, .. } => "accepted by a cluster policy",
        DirectionVerdict::Decided {
            accepted: false, ..
        } => "denied by a cluster policy",
    }
}

/// Walk the hops on `node` through the programmed table, with handles and counters.
fn walk_programmed(
    node: &str,
    listing: &Listing,
    hops: &[HopResult],
    disagreements: &mut Vec<String>,
) -> Vec<Hop> {
    let mut out = Vec::new();
    for h in hops.iter().filter(|h| h.node == node) {
        let hook = format!("{:?}", h.hook).to_lowercase();
        match classify(&listing.programmed.model, h.hook, &h.packet) {
            Ok(outcome) => {
                if outcome.accepted != h.outcome.accepted {
                    disagreements.push(format!(
                        "node {node} {hook}: the programmed table {} the packet but the compiled ruleset {} it (is the agent in sync?)",
                        if outcome.accepted { "accepts" } else { "drops" },
                        if h.outcome.accepted { "accepts" } else { "drops" },
                    ));
                }
                let rules = outcome
                    .trace
                    .iter()
                    .map(|hit| {
                        let mut r = rule_hit(hit);
                        // A rate-limited log and its continuation share one model index: the
                        // last nft rule of the index carries the verdict.
                        if let Some(c) = listing
                            .counters
                            .iter()
                            .rev()
                            .find(|c| c.chain == hit.chain && c.rule_index == hit.rule)
                        {
                            r.handle = Some(c.handle);
                            r.packets = Some(c.packets);
                            r.bytes = Some(c.bytes);
                        }
                        r
                    })
                    .collect();
                out.push(Hop {
                    node: node.to_string(),
                    hook,
                    accepted: outcome.accepted,
                    rules,
                });
            }
            Err(e) => disagreements.push(format!(
                "node {node} {hook}: cannot walk the programmed table: {e}"
            )),
        }
    }
    if out.is_empty() {
        disagreements.push(format!(
            "the packet crosses no hook of node {node}: the live table cannot confirm the verdict"
        ));
    }
    out
}

fn describe_side(d: Direction, who: &str, side: &Side, port: &str, other: &str) -> String {
    let after = |passed: &[String]| {
        if passed.is_empty() {
            String::new()
        } else {
            format!(" (after Pass by {})", passed.join(", "))
        }
    };
    match side {
        Side::NotIsolated {
            reason: Some(r), ..
        } => {
            format!("{d} of {who}: not enforced ({r})")
        }
        Side::NotIsolated {
            reason: None,
            passed,
        } => format!(
            "{d} of {who}: allowed: no policy decides its {d}{}",
            after(passed)
        ),
        Side::Allowed {
            isolated_by,
            allowed_by,
            passed,
        } => format!(
            "{d} of {who}: allowed by {} (isolated by {}){}",
            allowed_by.join(", "),
            isolated_by.join(", "),
            after(passed)
        ),
        Side::Denied {
            isolated_by,
            passed,
        } => format!(
            "{d} of {who}: DENIED: isolated by {}, and no rule of {} allows {port} {} {other}{}",
            isolated_by.join(", "),
            if isolated_by.len() == 1 { "it" } else { "them" },
            if d == Direction::Egress { "to" } else { "from" },
            after(passed)
        ),
        Side::Decided {
            tier,
            rule,
            accepted,
            passed,
        } => format!(
            "{d} of {who}: {} by {rule} ({tier} tier, {}){}",
            if *accepted { "allowed" } else { "DENIED" },
            accept_word(*accepted),
            after(passed)
        ),
        Side::NotReached => format!("{d} of {who}: not reached (the packet was dropped before)"),
    }
}

fn hop_lines(out: &mut String, hops: &[Hop]) {
    for h in hops {
        out.push_str(&format!(
            "  {} {}: {}\n",
            h.node,
            h.hook,
            if h.accepted { "accepted" } else { "dropped" }
        ));
        for r in &h.rules {
            let mut line = format!("    {}[{}]", r.chain, r.index);
            if let Some(c) = &r.comment {
                line.push_str(&format!("  {c:?}"));
            }
            if let Some(handle) = r.handle {
                line.push_str(&format!("  handle {handle}"));
            }
            if let (Some(p), Some(b)) = (r.packets, r.bytes) {
                line.push_str(&format!("  counter packets {p} bytes {b}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
}

/// The human form.
pub fn render_text(r: &Report, style: Style) -> String {
    let port = format!("{}/{}", r.port, r.protocol);
    let mut out = String::new();
    let verdict = if r.allowed {
        style.paint(Colour::Green, "ALLOWED")
    } else {
        style.paint(Colour::Red, "DENIED")
    };
    out.push_str(&format!("{} -> {} {port}: {verdict}\n", r.from, r.to));
    out.push_str(&format!(
        "  from {} ({})\n  to   {} ({})\n",
        r.from, r.src_ip, r.to, r.dst_ip
    ));
    out.push_str(&describe_side(
        Direction::Egress,
        &r.from,
        &r.egress,
        &port,
        &r.to,
    ));
    out.push('\n');
    out.push_str(&describe_side(
        Direction::Ingress,
        &r.to,
        &r.ingress,
        &port,
        &r.from,
    ));
    out.push('\n');
    if let Some(d) = &r.dropped_at {
        out.push_str(&format!("dropped at {d}\n"));
    }
    out.push_str("compiled path (the rules the agent programs):\n");
    if r.hops.is_empty() {
        out.push_str("  no filtered hook on the way\n");
    }
    hop_lines(&mut out, &r.hops);
    if let Some(live) = &r.live {
        out.push_str("programmed table (nft, live):\n");
        hop_lines(&mut out, live);
    }
    if r.disagreements.is_empty() {
        out.push_str("reference evaluator: agrees\n");
    }
    out
}

/// The loud warning for stderr (empty when everything agrees).
pub fn render_disagreements(r: &Report, style: Style) -> String {
    let mut out = String::new();
    for d in &r.disagreements {
        out.push_str(&style.paint(Colour::Red, &format!("WARNING: DISAGREEMENT: {d}")));
        out.push('\n');
    }
    if !r.disagreements.is_empty() {
        out.push_str("This is a bug in Palisade (compiler, reference evaluator or agent sync); please report it with these manifests.\n");
    }
    out
}
