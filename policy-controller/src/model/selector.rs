//! Label selectors (`metav1.LabelSelector`) and the pod selections NetworkPolicy builds from
//! them.
//!
//! Semantics follow `k8s.io/apimachinery/pkg/labels` exactly:
//! - an empty selector (no `matchLabels`, no `matchExpressions`) selects everything;
//! - all `matchLabels` and all `matchExpressions` must hold (AND);
//! - `In` needs the key present with one of the values; `NotIn` holds when the key is absent
//!   or its value is none of the values; `Exists` / `DoesNotExist` test the key only.
//!
//! A selector with an unknown operator selects nothing: validation rejects such policies, and
//! matching nothing is the safe reading if one slips through.

use super::api::{LabelSelector, LabelSelectorRequirement, NetworkPolicyPeer};
use super::Labels;
use serde::{Deserialize, Serialize};

/// Whether `selector` selects an object with `labels`.
pub fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    if let Some(match_labels) = &selector.match_labels {
        if !match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    if let Some(exprs) = &selector.match_expressions {
        if !exprs.iter().all(|r| requirement_matches(r, labels)) {
            return false;
        }
    }
    true
}

/// One `matchExpressions` entry.
pub fn requirement_matches(req: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// A label selector in its string form (`kubectl -l`, the API's `labelSelector` parameter),
/// parsed as apimachinery's `labels.Parse` reads the forms people write: `k=v`, `k==v`,
/// `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`, joined by commas (AND). Each term becomes
/// the `matchExpressions` entry that means the same (`k!=v` is `NotIn`: it also holds when
/// the key is absent, as in apimachinery).
pub fn parse_label_selector(s: &str) -> Result<LabelSelector, String> {
    let bad = |why: &str| format!("unable to parse requirement: {why}: {s:?}");
    let req = |key: &str, operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: key.trim().to_string(),
        operator: operator.to_string(),
        values,
    };
    let mut expressions = Vec::new();
    for term in split_top_level(s) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let one = |v: &str| Some(vec![v.trim().to_string()]);
        let r = if let Some(key) = term.strip_prefix('!') {
            req(key, "DoesNotExist", None)
        } else if let Some((key, value)) = term.split_once("!=") {
            req(key, "NotIn", one(value))
        } else if let Some((key, value)) = term.split_once("==") {
            req(key, "In", one(value))
        } else if let Some((key, value)) = term.split_once('=') {
            req(key, "In", one(value))
        } else if let Some(open) = term.find('(') {
            let close = term.rfind(')').ok_or_else(|| bad("missing ')'"))?;
            let head: Vec<&str> = term[..open].split_whitespace().collect();
            let values: Vec<String> = term[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            match head.as_slice() {
                [key, op] if op.eq_ignore_ascii_case("in") => req(key, "In", Some(values)),
                [key, op] if op.eq_ignore_ascii_case("notin") => req(key, "NotIn", Some(values)),
                _ => return Err(bad("expected 'in' or 'notin'")),
            }
        } else if term.contains(char::is_whitespace) {
            return Err(bad("unexpected whitespace"));
        } else {
            req(term, "Exists", None)
        };
        if r.key.is_empty() {
            return Err(bad("empty key"));
        }
        expressions.push(r);
    }
    Ok(LabelSelector {
        match_labels: None,
        match_expressions: Some(expressions),
    })
}

/// Split on commas that are not inside parentheses (`a in (x,y),b`).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Whether the selector is empty, i.e. selects everything.
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// A selector in canonical form: empty lists become `None`, expressions and their values are
/// sorted and deduplicated. Two selectors that select the same objects by construction (same
/// terms in another order) become equal, so they can share one nftables set.
pub fn canonical_selector(selector: &LabelSelector) -> LabelSelector {
    let match_labels = selector.match_labels.clone().filter(|m| !m.is_empty());
    let match_expressions = selector
        .match_expressions
        .as_ref()
        .map(|exprs| {
            let mut exprs: Vec<LabelSelectorRequirement> = exprs
                .iter()
                .map(|r| {
                    let values = r.values.as_ref().map(|vs| {
                        let mut vs = vs.clone();
                        vs.sort();
                        vs.dedup();
                        vs
                    });
                    LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: r.operator.clone(),
                        // `Exists` with `values: []` and without values are the same term.
                        values: values.filter(|v| !v.is_empty()),
                    }
                })
                .collect();
            exprs.sort();
            exprs.dedup();
            exprs
        })
        .filter(|e| !e.is_empty());
    LabelSelector {
        match_labels,
        match_expressions,
    }
}

/// Which namespaces a pod selection looks in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NamespaceScope {
    /// Exactly this namespace (a policy's own namespace: targets, or a peer with only a
    /// `podSelector`).
    Named(String),
    /// Every namespace whose labels the (canonical) selector matches.
    Matching(LabelSelector),
}

/// A set of pods described by selectors: the policy's targets, or one selector peer. Held in
/// canonical form, so equal selections are equal values (and share one nftables set).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodSelection {
    pub namespaces: NamespaceScope,
    /// Canonical pod selector; empty selects every pod of the scope.
    pub pods: LabelSelector,
}

impl PodSelection {
    /// The pods a policy applies to: its `podSelector` in its own namespace.
    pub fn targets(namespace: &str, pod_selector: &LabelSelector) -> PodSelection {
        PodSelection {
            namespaces: NamespaceScope::Named(namespace.to_string()),
            pods: canonical_selector(pod_selector),
        }
    }

    /// Every pod in every namespace (a rule with no peers resolves named ports against it).
    pub fn everything() -> PodSelection {
        PodSelection {
            namespaces: NamespaceScope::Matching(LabelSelector::default()),
            pods: LabelSelector::default(),
        }
    }

    /// The pods a selector peer (`podSelector` and/or `namespaceSelector`) stands for, in a
    /// policy of `policy_namespace`; `None` for an `ipBlock` peer (or an empty peer, which
    /// validation rejects).
    ///
    /// - `podSelector` alone: pods of the policy's namespace;
    /// - `namespaceSelector` alone: every pod of the matching namespaces;
    /// - both: pods matching `podSelector` in the matching namespaces (AND).
    pub fn of_peer(policy_namespace: &str, peer: &NetworkPolicyPeer) -> Option<PodSelection> {
        if peer.ip_block.is_some() {
            return None;
        }
        match (&peer.pod_selector, &peer.namespace_selector) {
            (None, None) => None,
            (Some(pods), None) => Some(PodSelection {
                namespaces: NamespaceScope::Named(policy_namespace.to_string()),
                pods: canonical_selector(pods),
            }),
            (pods, Some(namespaces)) => Some(PodSelection {
                namespaces: NamespaceScope::Matching(canonical_selector(namespaces)),
                pods: pods.as_ref().map(canonical_selector).unwrap_or_default(),
            }),
        }
    }

    /// Whether a namespace with these labels is in scope.
    pub fn namespace_matches(&self, namespace: &str, namespace_labels: Option<&Labels>) -> bool {
        match &self.namespaces {
            NamespaceScope::Named(n) => n == namespace,
            // A namespace we have not seen (yet) has no labels we could match; only an empty
            // selector, which selects all namespaces, includes it.
            NamespaceScope::Matching(sel) => match namespace_labels {
                Some(labels) => selector_matches(sel, labels),
                None => selector_is_empty(sel),
            },
        }
    }

    /// Whether a pod with `pod_labels` in `namespace` (whose labels are given) is selected.
    /// Liveness (host network, terminating, IPs) is the caller's business.
    pub fn matches(
        &self,
        namespace: &str,
        namespace_labels: Option<&Labels>,
        pod_labels: &Labels,
    ) -> bool {
        self.namespace_matches(namespace, namespace_labels)
            && selector_matches(&self.pods, pod_labels)
    }

    /// Short human description, for set comments and explanations.
    pub fn describe(&self) -> String {
        let ns = match &self.namespaces {
            NamespaceScope::Named(n) => format!("ns={n}"),
            NamespaceScope::Matching(sel) => format!("ns~{}", describe_selector(sel)),
        };
        format!("{ns} pods~{}", describe_selector(&self.pods))
    }
}

/// `app=web,tier in (a,b),!legacy` in the style of `kubectl get -l`; `*` for empty.
pub fn describe_selector(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        terms.push(format!("{k}={v}"));
    }
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or(&[]).join(",");
        terms.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            op => format!("{} {op}? ({values})", r.key),
        });
    }
    if terms.is_empty() {
        "*".to_string()
    } else {
        terms.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: if values.is_empty() {
                    None
                } else {
                    Some(values.iter().map(|v| v.to_string()).collect())
                },
            }]),
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        assert!(selector_matches(
            &LabelSelector::default(),
            &labels(&[("a", "1")])
        ));
        let empty_lists = LabelSelector {
            match_labels: Some(Labels::new()),
            match_expressions: Some(vec![]),
        };
        assert!(selector_matches(&empty_lists, &labels(&[])));
        assert!(selector_is_empty(&empty_lists));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "front")])),
            match_expressions: None,
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "back")])
        ));
    }

    #[test]
    fn operator_in() {
        let sel = expr("app", "In", &["web", "db"]);
        assert!(selector_matches(&sel, &labels(&[("app", "db")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "cache")])));
        assert!(
            !selector_matches(&sel, &labels(&[])),
            "In with the key absent"
        );
    }

    #[test]
    fn operator_not_in_matches_absent_key() {
        let sel = expr("app", "NotIn", &["web"]);
        assert!(selector_matches(&sel, &labels(&[("app", "db")])));
        assert!(!selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(
            selector_matches(&sel, &labels(&[])),
            "NotIn with the key absent"
        );
    }

    #[test]
    fn operator_exists_and_does_not_exist() {
        let exists = expr("app", "Exists", &[]);
        let absent = expr("app", "DoesNotExist", &[]);
        let with = labels(&[("app", "")]);
        let without = labels(&[("other", "x")]);
        assert!(selector_matches(&exists, &with));
        assert!(!selector_matches(&exists, &without));
        assert!(!selector_matches(&absent, &with));
        assert!(selector_matches(&absent, &without));
    }

    #[test]
    fn unknown_operator_selects_nothing() {
        let sel = expr("app", "Like", &["w*"]);
        assert!(!selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(!selector_matches(&sel, &labels(&[])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut sel = expr("tier", "NotIn", &["back"]);
        sel.match_labels = Some(labels(&[("app", "web")]));
        assert!(selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "back")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("tier", "front")])));
    }

    #[test]
    fn canonical_form_ignores_order_and_empty_lists() {
        let a = LabelSelector {
            match_labels: Some(Labels::new()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "b".into(),
                    operator: "In".into(),
                    values: Some(vec!["2".into(), "1".into()]),
                },
                LabelSelectorRequirement {
                    key: "a".into(),
                    operator: "Exists".into(),
                    values: Some(vec![]),
                },
            ]),
        };
        let b = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "a".into(),
                    operator: "Exists".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "b".into(),
                    operator: "In".into(),
                    values: Some(vec!["1".into(), "2".into(), "1".into()]),
                },
            ]),
        };
        assert_eq!(canonical_selector(&a), canonical_selector(&b));
        assert_eq!(
            canonical_selector(&LabelSelector {
                match_labels: Some(Labels::new()),
                match_expressions: Some(vec![])
            }),
            LabelSelector::default()
        );
    }

    #[test]
    fn peer_scopes() {
        let pods = Some(LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: None,
        });
        let ns = Some(LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            match_expressions: None,
        });
        let team_a = labels(&[("team", "a")]);
        let team_b = labels(&[("team", "b")]);
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);

        // podSelector alone: the policy's namespace only, whatever its labels.
        let only_pods = NetworkPolicyPeer {
            pod_selector: pods.clone(),
            ..Default::default()
        };
        let s = PodSelection::of_peer("x", &only_pods).unwrap();
        assert!(s.matches("x", Some(&team_b), &web));
        assert!(!s.matches("y", Some(&team_a), &web));
        assert!(!s.matches("x", Some(&team_b), &db));

        // namespaceSelector alone: every pod of matching namespaces.
        let only_ns = NetworkPolicyPeer {
            namespace_selector: ns.clone(),
            ..Default::default()
        };
        let s = PodSelection::of_peer("x", &only_ns).unwrap();
        assert!(s.matches("y", Some(&team_a), &db));
        assert!(!s.matches("x", Some(&team_b), &web));

        // Both: AND.
        let both = NetworkPolicyPeer {
            pod_selector: pods,
            namespace_selector: ns,
            ..Default::default()
        };
        let s = PodSelection::of_peer("x", &both).unwrap();
        assert!(s.matches("y", Some(&team_a), &web));
        assert!(!s.matches("y", Some(&team_a), &db));
        assert!(!s.matches("y", Some(&team_b), &web));

        // An empty namespaceSelector selects every namespace, even one not seen yet.
        let all_ns = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            ..Default::default()
        };
        let s = PodSelection::of_peer("x", &all_ns).unwrap();
        assert!(s.matches("unknown", None, &db));

        let block = NetworkPolicyPeer {
            ip_block: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(PodSelection::of_peer("x", &block), None);
    }
}
