//! ClusterNetworkPolicy validation: what the API server checks for this custom resource,
//! from its CRD (`conf/05-crd-clusternetworkpolicies.yaml`: upstream's v1alpha2 API with
//! `nodes` and without `domainNames`): the OpenAPI schema (required fields,
//! enums, bounds, item and property counts) and the CEL rules (`start < end`, `isCIDR`,
//! no named port towards `networks`/`nodes`). Messages as the apiextensions server words them,
//! so that the stand-in's 422 reads like a real cluster's.
//!
//! Before validating, the API server prunes what the schema does not know
//! ([`prune_cluster_network_policy`]): an ingress rule's `to`, an ingress peer's `nodes` and
//! `networks`, and anything unknown (the slim types never held it).
//!
//! Deviation from upstream, on purpose: `tcp: {}` (`udp`, `sctp`) is accepted and means every
//! port of the protocol. Upstream's schema wants a `destinationPort` there; the shared
//! scenario samples use the empty form.
//!
//! Label selectors are not checked by the schema (upstream's CRD takes any `operator`
//! string); [`selector_errors`] checks them as for the built-in kinds, for the agent and
//! palisadectl, which cannot enforce a selector that has no meaning.

use super::{validate_label_selector, validate_meta, BadValue, Errors, FieldError};
use crate::model::api::{
    ClusterNetworkPolicy, ClusterNetworkPolicyPeer, ClusterNetworkPolicyProtocol,
    ClusterNetworkPolicyRule, CnpPort, LabelSelector, NamespacedPod, ProtocolPort,
};

const MAX_ITEMS: usize = 25;
const MAX_RULE_NAME: usize = 100;
const MAX_CIDR_LEN: usize = 43;
/// The messages of the CRD's CEL rules (`conf/05-crd-clusternetworkpolicies.yaml`; a test
/// there holds them equal).
pub const NAMED_PORT_RULE: &str = "networks/nodes peer cannot be set with namedPorts since there are no namedPorts for networks/nodes";
pub const RANGE_RULE: &str = "Start port must be less than End port";
pub const CIDR_RULE: &str = "Invalid CIDR format provided";

/// Drop what the CRD's schema does not have, as the API server's pruning does: `to` of
/// ingress rules, `from` of egress rules, and `nodes`/`networks` of ingress peers.
pub fn prune_cluster_network_policy(policy: &mut ClusterNetworkPolicy) {
    for rule in policy.spec.ingress.iter_mut().flatten() {
        rule.to = None;
        for peer in rule.from.iter_mut().flatten() {
            peer.nodes = None;
            peer.networks = None;
        }
    }
    for rule in policy.spec.egress.iter_mut().flatten() {
        rule.from = None;
    }
}

/// Every error the API server reports for this (pruned) object; empty: valid.
pub fn validate_cluster_network_policy(policy: &ClusterNetworkPolicy) -> Vec<FieldError> {
    let mut errs = Errors::default();
    validate_meta(&policy.metadata, false, &mut errs);
    let spec = &policy.spec;
    match spec.tier.as_deref() {
        None => errs.required("spec.tier", ""),
        Some("Admin" | "Baseline") => {}
        Some(other) => errs.not_supported("spec.tier", other, &["Admin", "Baseline"]),
    }
    match spec.priority {
        None => errs.required("spec.priority", ""),
        Some(p) => bounds(&mut errs, "spec.priority", p, 0, 1000),
    }
    match &spec.subject {
        None => errs.required("spec.subject", ""),
        Some(subject) => {
            let set =
                usize::from(subject.namespaces.is_some()) + usize::from(subject.pods.is_some());
            exactly_one(&mut errs, "spec.subject", set);
            if let Some(pods) = &subject.pods {
                namespaced_pod(&mut errs, "spec.subject.pods", pods);
            }
        }
    }
    for (direction, rules) in [("ingress", &spec.ingress), ("egress", &spec.egress)] {
        let Some(rules) = rules else { continue };
        let path = format!("spec.{direction}");
        if rules.len() > MAX_ITEMS {
            too_many(&mut errs, &path, rules.len());
        }
        for (i, rule) in rules.iter().enumerate() {
            validate_rule(
                &mut errs,
                &format!("{path}[{i}]"),
                rule,
                direction == "ingress",
            );
        }
    }
    errs.0
}

/// What the agent and palisadectl refuse to enforce: the object pruned as the API server
/// stores it (in place), then the schema's and CEL rules' errors and the selectors' errors.
pub fn enforceability_errors(policy: &mut ClusterNetworkPolicy) -> Vec<FieldError> {
    prune_cluster_network_policy(policy);
    let mut errors = validate_cluster_network_policy(policy);
    errors.extend(selector_errors(policy));
    errors
}

/// Label selectors that select nothing sensible (unknown operator, values where none belong,
/// bad keys or values): the checks of the built-in kinds, which the CRD leaves out.
pub fn selector_errors(policy: &ClusterNetworkPolicy) -> Vec<FieldError> {
    let mut errs = Errors::default();
    let spec = &policy.spec;
    if let Some(subject) = &spec.subject {
        if let Some(ns) = &subject.namespaces {
            validate_label_selector(ns, "spec.subject.namespaces", &mut errs);
        }
        if let Some(pods) = &subject.pods {
            pod_selectors(&mut errs, "spec.subject.pods", pods);
        }
    }
    for (direction, rules) in [("ingress", &spec.ingress), ("egress", &spec.egress)] {
        for (i, rule) in rules.iter().flatten().enumerate() {
            let (list, peers) = if direction == "ingress" {
                ("from", &rule.from)
            } else {
                ("to", &rule.to)
            };
            for (j, peer) in peers.iter().flatten().enumerate() {
                let path = format!("spec.{direction}[{i}].{list}[{j}]");
                let one = |errs: &mut Errors, name: &str, sel: &Option<LabelSelector>| {
                    if let Some(sel) = sel {
                        validate_label_selector(sel, &format!("{path}.{name}"), errs);
                    }
                };
                one(&mut errs, "namespaces", &peer.namespaces);
                one(&mut errs, "nodes", &peer.nodes);
                if let Some(pods) = &peer.pods {
                    pod_selectors(&mut errs, &format!("{path}.pods"), pods);
                }
            }
        }
    }
    errs.0
}

fn pod_selectors(errs: &mut Errors, path: &str, pods: &NamespacedPod) {
    if let Some(ns) = &pods.namespace_selector {
        validate_label_selector(ns, &format!("{path}.namespaceSelector"), errs);
    }
    if let Some(p) = &pods.pod_selector {
        validate_label_selector(p, &format!("{path}.podSelector"), errs);
    }
}

fn validate_rule(errs: &mut Errors, path: &str, rule: &ClusterNetworkPolicyRule, ingress: bool) {
    match rule.action.as_deref() {
        None => errs.required(&format!("{path}.action"), ""),
        Some("Accept" | "Deny" | "Pass") => {}
        Some(other) => errs.not_supported(
            &format!("{path}.action"),
            other,
            &["Accept", "Deny", "Pass"],
        ),
    }
    if let Some(name) = &rule.name {
        if name.len() > MAX_RULE_NAME {
            too_long(errs, &format!("{path}.name"), MAX_RULE_NAME);
        }
    }
    let (list, peers) = if ingress {
        ("from", &rule.from)
    } else {
        ("to", &rule.to)
    };
    let peers_path = format!("{path}.{list}");
    match peers {
        None => errs.required(&peers_path, ""),
        Some(peers) => {
            items(errs, &peers_path, peers.len());
            for (j, peer) in peers.iter().enumerate() {
                validate_peer(errs, &format!("{peers_path}[{j}]"), peer);
            }
        }
    }
    if let Some(protocols) = &rule.protocols {
        let protocols_path = format!("{path}.protocols");
        items(errs, &protocols_path, protocols.len());
        for (j, protocol) in protocols.iter().enumerate() {
            validate_protocol(errs, &format!("{protocols_path}[{j}]"), protocol);
        }
    }
    // The egress rule's CEL rule (upstream's experimental validation).
    let towards_addresses = rule
        .to
        .iter()
        .flatten()
        .any(|p| p.networks.is_some() || p.nodes.is_some());
    let named = rule
        .protocols
        .iter()
        .flatten()
        .any(|p| p.destination_named_port.is_some());
    if !ingress && towards_addresses && named {
        errs.invalid(path, BadValue::Str("object"), NAMED_PORT_RULE);
    }
}

fn validate_peer(errs: &mut Errors, path: &str, peer: &ClusterNetworkPolicyPeer) {
    let set = [
        peer.namespaces.is_some(),
        peer.pods.is_some(),
        peer.nodes.is_some(),
        peer.networks.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    exactly_one(errs, path, set);
    if let Some(pods) = &peer.pods {
        namespaced_pod(errs, &format!("{path}.pods"), pods);
    }
    if let Some(networks) = &peer.networks {
        let networks_path = format!("{path}.networks");
        items(errs, &networks_path, networks.len());
        for (k, cidr) in networks.iter().enumerate() {
            let item = format!("{networks_path}[{k}]");
            // `x-kubernetes-list-type: set`.
            if networks[..k].contains(cidr) {
                errs.push(
                    super::FieldErrorKind::Duplicate,
                    &item,
                    Some(BadValue::Str(cidr)),
                    "",
                );
            }
            if cidr.len() > MAX_CIDR_LEN {
                too_long(errs, &item, MAX_CIDR_LEN);
            } else if cidr.parse::<ipnet::IpNet>().is_err() {
                errs.invalid(
                    &item,
                    BadValue::Str("string"),
                    "Invalid CIDR format provided",
                );
            }
        }
    }
}

fn namespaced_pod(errs: &mut Errors, path: &str, pods: &NamespacedPod) {
    if pods.pod_selector.is_none() {
        errs.required(&format!("{path}.podSelector"), "");
    }
}

fn validate_protocol(errs: &mut Errors, path: &str, protocol: &ClusterNetworkPolicyProtocol) {
    let set = [
        protocol.tcp.is_some(),
        protocol.udp.is_some(),
        protocol.sctp.is_some(),
        protocol.destination_named_port.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    exactly_one(errs, path, set);
    for (name, port) in [
        ("tcp", &protocol.tcp),
        ("udp", &protocol.udp),
        ("sctp", &protocol.sctp),
    ] {
        if let Some(ProtocolPort {
            destination_port: Some(port),
        }) = port
        {
            validate_port(errs, &format!("{path}.{name}.destinationPort"), port);
        }
    }
}

fn validate_port(errs: &mut Errors, path: &str, port: &CnpPort) {
    exactly_one(
        errs,
        path,
        usize::from(port.number.is_some()) + usize::from(port.range.is_some()),
    );
    if let Some(n) = port.number {
        bounds(errs, &format!("{path}.number"), n, 1, 65535);
    }
    if let Some(range) = &port.range {
        let range_path = format!("{path}.range");
        for (name, value) in [("start", range.start), ("end", range.end)] {
            match value {
                None => errs.required(&format!("{range_path}.{name}"), ""),
                Some(v) => bounds(errs, &format!("{range_path}.{name}"), v, 1, 65535),
            }
        }
        if let (Some(start), Some(end)) = (range.start, range.end) {
            if start >= end {
                errs.invalid(&range_path, BadValue::Str("object"), RANGE_RULE);
            }
        }
    }
}

// ---- the schema's messages (apiextensions / kube-openapi validate) ----

fn bounds(errs: &mut Errors, path: &str, value: i64, min: i64, max: i64) {
    if value < min {
        errs.invalid(
            path,
            BadValue::Int(value),
            &format!("{path} in body should be greater than or equal to {min}"),
        );
    }
    if value > max {
        errs.invalid(
            path,
            BadValue::Int(value),
            &format!("{path} in body should be less than or equal to {max}"),
        );
    }
}

/// `minProperties: 1`, `maxProperties: 1`.
fn exactly_one(errs: &mut Errors, path: &str, set: usize) {
    if set == 0 {
        errs.invalid(
            path,
            BadValue::Int(0),
            &format!("{path} in body should have at least 1 properties"),
        );
    } else if set > 1 {
        errs.invalid(
            path,
            BadValue::Int(set as i64),
            &format!("{path} in body should have at most 1 properties"),
        );
    }
}

/// `minItems: 1`, `maxItems: 25`.
fn items(errs: &mut Errors, path: &str, n: usize) {
    if n == 0 {
        errs.invalid(
            path,
            BadValue::Int(0),
            &format!("{path} in body should have at least 1 items"),
        );
    } else if n > MAX_ITEMS {
        too_many(errs, path, n);
    }
}

fn too_many(errs: &mut Errors, path: &str, n: usize) {
    errs.push(
        super::FieldErrorKind::TooMany,
        path,
        Some(BadValue::Int(n as i64)),
        &format!("must have at most {MAX_ITEMS} items"),
    );
}

fn too_long(errs: &mut Errors, path: &str, max: usize) {
    errs.push(
        super::FieldErrorKind::TooLong,
        path,
        None,
        &format!("may not be more than {max} bytes"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cnp(spec: serde_json::Value) -> ClusterNetworkPolicy {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "c"}, "spec": spec}))
            .unwrap()
    }

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let mut p = cnp(spec);
        prune_cluster_network_policy(&mut p);
        validate_cluster_network_policy(&p)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}})
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut b = base();
        b[key] = value;
        b
    }

    #[test]
    fn a_minimal_policy_and_the_samples_forms_are_valid() {
        assert_eq!(errors(base()), Vec::<String>::new());
        let ok = with(
            "egress",
            serde_json::json!([{"action": "Accept", "to": [{"networks": ["10.0.0.0/8", "fd00::/64"]}],
                "protocols": [{"tcp": {}}, {"udp": {"destinationPort": {"range": {"start": 1, "end": 2}}}}]}]),
        );
        assert_eq!(errors(ok), Vec::<String>::new());
    }

    #[test]
    fn required_fields_enums_and_bounds() {
        assert_eq!(
            errors(serde_json::json!({})),
            vec![
                "spec.tier: Required value",
                "spec.priority: Required value",
                "spec.subject: Required value"
            ]
        );
        assert_eq!(
            errors(serde_json::json!({"tier": "Developer", "priority": 1001, "subject": {"namespaces": {}, "pods": {}}})),
            vec![
                "spec.tier: Unsupported value: \"Developer\": supported values: \"Admin\", \"Baseline\"",
                "spec.priority: Invalid value: 1001: spec.priority in body should be less than or equal to 1000",
                "spec.subject: Invalid value: 2: spec.subject in body should have at most 1 properties",
                "spec.subject.pods.podSelector: Required value",
            ]
        );
    }

    #[test]
    fn rules_peers_and_protocols() {
        let e = errors(with(
            "ingress",
            serde_json::json!([
                {"action": "Allow", "from": []},
                {"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]},
                {"from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 0}}, "udp": {}},
                    {"sctp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}]},
            ]),
        ));
        assert_eq!(
            e,
            vec![
                "spec.ingress[0].action: Unsupported value: \"Allow\": supported values: \"Accept\", \"Deny\", \"Pass\"",
                "spec.ingress[0].from: Invalid value: 0: spec.ingress[0].from in body should have at least 1 items",
                // `networks` is not an ingress peer: pruned, the peer is empty.
                "spec.ingress[1].from[0]: Invalid value: 0: spec.ingress[1].from[0] in body should have at least 1 properties",
                "spec.ingress[2].action: Required value",
                "spec.ingress[2].protocols[0]: Invalid value: 2: spec.ingress[2].protocols[0] in body should have at most 1 properties",
                "spec.ingress[2].protocols[0].tcp.destinationPort.number: Invalid value: 0: spec.ingress[2].protocols[0].tcp.destinationPort.number in body should be greater than or equal to 1",
                "spec.ingress[2].protocols[1].sctp.destinationPort.range: Invalid value: \"object\": Start port must be less than End port",
            ]
        );
    }

    #[test]
    fn networks_and_the_named_port_rule() {
        let e = errors(with(
            "egress",
            serde_json::json!([
                {"action": "Deny", "to": [{"networks": ["10.0.0.0/8", "10.0.0.0/8", "10.0.0/8"]}]},
                {"action": "Accept", "to": [{"nodes": {}}], "protocols": [{"destinationNamedPort": "http"}]},
                {"action": "Accept", "to": [{"pods": {"podSelector": {}}}], "protocols": [{"destinationNamedPort": "http"}]},
            ]),
        ));
        assert_eq!(
            e,
            vec![
                "spec.egress[0].to[0].networks[1]: Duplicate value: \"10.0.0.0/8\"",
                "spec.egress[0].to[0].networks[2]: Invalid value: \"string\": Invalid CIDR format provided",
                format!("spec.egress[1]: Invalid value: \"object\": {NAMED_PORT_RULE}").as_str(),
            ]
        );
        let too_many: Vec<serde_json::Value> = (0..26)
            .map(|_| serde_json::json!({"action": "Pass", "to": [{"namespaces": {}}]}))
            .collect();
        assert_eq!(
            errors(with("egress", serde_json::json!(too_many))),
            vec!["spec.egress: Too many: 26: must have at most 25 items"]
        );
    }

    #[test]
    fn metadata_is_cluster_scoped() {
        let mut p = cnp(base());
        p.metadata.namespace = "x".into();
        p.metadata.name = "Bad_Name".into();
        let e: Vec<String> = validate_cluster_network_policy(&p)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(e, vec!["metadata.name", "metadata.namespace"]);
    }

    #[test]
    fn selectors_are_checked_apart() {
        let p = cnp(serde_json::json!({"tier": "Admin", "priority": 1,
            "subject": {"pods": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}}}}));
        assert!(validate_cluster_network_policy(&p).is_empty());
        let e = selector_errors(&p);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].field,
            "spec.subject.pods.podSelector.matchExpressions[0].operator"
        );
    }
}
