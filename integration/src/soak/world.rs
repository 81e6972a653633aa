//! The soak's cluster and the random changes made to it, all drawn from one seeded generator
//! (the same seed draws the same sequence of choices; timing still differs between runs).
//!
//! Three kinds of namespaces:
//! - `soak-keep`: the long-lived connections' pods. One fixed NetworkPolicy isolates them
//!   (ingress only from `soak-keep`, so the probe matrix sees it denying the others) and
//!   nothing random ever selects them: random NetworkPolicies live in the random namespaces,
//!   random ClusterNetworkPolicies' subjects need the label `soak/random=yes` that `soak-keep`
//!   never has, and labels of `soak-keep` and its pods never change. Every connection between
//!   keep pods therefore stays allowed by every policy the soak creates.
//! - `soak-a`, `soak-b` (`soak/random=yes`): the probe matrix's stable pods, the churned pods,
//!   random policies and label changes.

use crate::scenario::{Labels, PodSpec, PortSpec, Protocol};
use serde_json::{json, Value};

pub const KEEP_NAMESPACE: &str = "soak-keep";
pub const RANDOM_NAMESPACES: [&str; 2] = ["soak-a", "soak-b"];
/// The label of the namespaces random policies may select as subjects.
pub const RANDOM_LABEL: &str = "soak/random";
/// Ports every matrix pod serves (TCP), named `http` and `alt`.
pub const MATRIX_PORTS: [u16; 2] = [80, 81];
/// Stable pods per random namespace.
pub const STABLE_PER_NAMESPACE: usize = 3;
/// How many random NetworkPolicy names per namespace and ClusterNetworkPolicy names exist
/// (so that applying one often replaces an earlier one).
const NP_NAMES: usize = 5;
const CNP_NAMES: usize = 4;

const APPS: [&str; 3] = ["web", "db", "api"];
const TIERS: [&str; 2] = ["front", "back"];
const TEAMS: [&str; 2] = ["a", "b"];

/// The soak's random choices.
pub struct World {
    pub rng: fastrand::Rng,
    pub nodes: usize,
    /// The pod CIDR of the whole cluster in the run's family (for `ipBlock`s).
    pub cluster_cidr: &'static str,
    /// One node's pod CIDR in the run's family (an `except`).
    pub except_cidr: &'static str,
}

impl World {
    pub fn new(seed: u64, nodes: usize, v6: bool) -> World {
        World {
            rng: fastrand::Rng::with_seed(seed),
            nodes,
            cluster_cidr: if v6 {
                "fd00:10:244::/48"
            } else {
                "10.244.0.0/16"
            },
            except_cidr: if v6 {
                "fd00:10:244:2::/64"
            } else {
                "10.244.2.0/24"
            },
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.usize(..items.len())]
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.f64() < p
    }

    pub fn random_namespace(&mut self) -> &'static str {
        self.pick(&RANDOM_NAMESPACES)
    }

    /// A random node, 1-based.
    pub fn node(&mut self) -> usize {
        self.rng.usize(1..=self.nodes)
    }

    /// Labels of a random pod.
    pub fn pod_labels(&mut self) -> Labels {
        let mut l = Labels::new();
        l.insert("app".into(), self.pick(&APPS).into());
        if self.chance(0.7) {
            l.insert("tier".into(), self.pick(&TIERS).into());
        }
        l
    }

    /// Labels of a random namespace (`kubernetes.io/metadata.name` is added by the API).
    pub fn namespace_labels(&mut self) -> Labels {
        let mut l = Labels::new();
        l.insert(RANDOM_LABEL.into(), "yes".into());
        l.insert("team".into(), self.pick(&TEAMS).into());
        if self.chance(0.5) {
            l.insert("env".into(), "prod".into());
        }
        l
    }

    fn selector(&mut self) -> Value {
        match self.rng.u8(..4) {
            0 => json!({}),
            1 => json!({"matchLabels": {"app": self.pick(&APPS)}}),
            2 => json!({"matchExpressions": [{"key": "tier", "operator": "In",
                                               "values": [self.pick(&TIERS)]}]}),
            _ => json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
        }
    }

    fn namespace_selector(&mut self) -> Value {
        match self.rng.u8(..3) {
            0 => json!({}),
            1 => json!({"matchLabels": {"team": self.pick(&TEAMS)}}),
            _ => json!({"matchLabels": {"env": "prod"}}),
        }
    }

    fn np_peer(&mut self) -> Value {
        match self.rng.u8(..5) {
            0 => json!({"podSelector": self.selector()}),
            1 => json!({"namespaceSelector": self.namespace_selector()}),
            2 => json!({"podSelector": self.selector(),
                        "namespaceSelector": self.namespace_selector()}),
            3 => json!({"ipBlock": {"cidr": self.cluster_cidr, "except": [self.except_cidr]}}),
            _ => json!({"namespaceSelector": {"matchLabels":
                          {"kubernetes.io/metadata.name": KEEP_NAMESPACE}}}),
        }
    }

    fn np_ports(&mut self) -> Value {
        let mut ports = Vec::new();
        for _ in 0..self.rng.usize(..3) {
            ports.push(match self.rng.u8(..4) {
                0 => json!({"protocol": "TCP", "port": 80}),
                1 => json!({"protocol": "TCP", "port": "http"}),
                2 => json!({"protocol": "TCP", "port": "alt"}),
                _ => json!({"protocol": "TCP", "port": 80, "endPort": 81}),
            });
        }
        Value::Array(ports)
    }

    fn np_rules(&mut self, peer_field: &str) -> Value {
        let mut rules = Vec::new();
        for _ in 0..self.rng.usize(..3) {
            let mut rule = json!({});
            let peers: Vec<Value> = (0..self.rng.usize(..3)).map(|_| self.np_peer()).collect();
            if !peers.is_empty() {
                rule[peer_field] = Value::Array(peers);
            }
            let ports = self.np_ports();
            if ports.as_array().is_some_and(|p| !p.is_empty()) {
                rule["ports"] = ports;
            }
            rules.push(rule);
        }
        Value::Array(rules)
    }

    /// A random NetworkPolicy in a random namespace (one of a few names, so it often
    /// replaces one).
    pub fn network_policy(&mut self) -> Value {
        let (namespace, name) = self.network_policy_name();
        self.network_policy_named(namespace, &name)
    }

    /// One of every policy name the soak uses, so that the cluster holds about as much
    /// policy from the start as later (the agents' memory is compared between the first and
    /// the last quarter of the run).
    pub fn initial_policies(&mut self) -> Vec<Value> {
        let mut all = Vec::new();
        for namespace in RANDOM_NAMESPACES {
            for i in 0..NP_NAMES {
                all.push(self.network_policy_named(namespace, &format!("np-{i}")));
            }
        }
        for i in 0..CNP_NAMES {
            all.push(self.cluster_network_policy_named(&format!("cnp-{i}")));
        }
        all
    }

    fn network_policy_named(&mut self, namespace: &str, name: &str) -> Value {
        let types: &[&str] = match self.rng.u8(..3) {
            0 => &["Ingress"],
            1 => &["Egress"],
            _ => &["Ingress", "Egress"],
        };
        let mut spec = json!({"podSelector": self.selector(), "policyTypes": types});
        if types.contains(&"Ingress") {
            spec["ingress"] = self.np_rules("from");
        }
        if types.contains(&"Egress") {
            spec["egress"] = self.np_rules("to");
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": namespace, "name": name},
            "spec": spec,
        })
    }

    /// The name and namespace of a NetworkPolicy that may exist.
    pub fn network_policy_name(&mut self) -> (&'static str, String) {
        let namespace = self.random_namespace();
        (namespace, format!("np-{}", self.rng.usize(..NP_NAMES)))
    }

    pub fn cluster_network_policy_name(&mut self) -> String {
        format!("cnp-{}", self.rng.usize(..CNP_NAMES))
    }

    fn cnp_peer(&mut self) -> Value {
        match self.rng.u8(..3) {
            0 => json!({"namespaces": self.namespace_selector()}),
            1 => json!({"pods": {"namespaceSelector": self.namespace_selector(),
                                 "podSelector": self.selector()}}),
            _ => json!({"namespaces": {}}),
        }
    }

    fn cnp_rules(&mut self, peer_field: &str) -> Value {
        let mut rules = Vec::new();
        for _ in 0..self.rng.usize(1..3) {
            let action = self.pick(&["Accept", "Deny", "Pass"]);
            let mut rule = json!({"action": action, peer_field: [self.cnp_peer()]});
            if self.chance(0.5) {
                let port = self.pick(&["80", "81"]);
                rule["protocols"] = json!([{"tcp": {"destinationPort":
                                                    {"number": port.parse::<u16>().unwrap_or(80)}}}]);
            }
            rules.push(rule);
        }
        Value::Array(rules)
    }

    /// A random ClusterNetworkPolicy whose subject is only ever pods of the random
    /// namespaces.
    pub fn cluster_network_policy(&mut self) -> Value {
        let name = self.cluster_network_policy_name();
        self.cluster_network_policy_named(&name)
    }

    fn cluster_network_policy_named(&mut self, name: &str) -> Value {
        let random_namespaces = json!({"matchLabels": {RANDOM_LABEL: "yes"}});
        let subject = if self.chance(0.5) {
            json!({"namespaces": random_namespaces})
        } else {
            json!({"pods": {"namespaceSelector": random_namespaces,
                            "podSelector": self.selector()}})
        };
        let mut spec = json!({
            "tier": self.pick(&["Admin", "Baseline"]),
            "priority": self.rng.u16(1..50),
            "subject": subject,
        });
        if self.chance(0.7) {
            spec["ingress"] = self.cnp_rules("from");
        }
        if spec.get("ingress").is_none() || self.chance(0.4) {
            spec["egress"] = self.cnp_rules("to");
        }
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": spec,
        })
    }

    /// A few milliseconds into ADD: before the plugin's process has started, inside its
    /// work, or after it finished.
    pub fn kill_delay(&mut self) -> std::time::Duration {
        std::time::Duration::from_micros(self.rng.u64(500..25_000))
    }
}

/// A pod serving the matrix ports (named `http` and `alt`).
pub fn matrix_pod(namespace: &str, name: &str, node: usize, labels: Labels) -> PodSpec {
    PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        node: Some(node),
        labels,
        ports: MATRIX_PORTS
            .iter()
            .zip(["http", "alt"])
            .map(|(port, name)| PortSpec {
                name: Some(name.into()),
                port: *port,
                protocol: Protocol::Tcp,
                container: Default::default(),
            })
            .collect(),
    }
}

/// The fixed policy of `soak-keep`: its pods accept only each other.
pub fn keep_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": KEEP_NAMESPACE, "name": "keep-only-each-other"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {}}]}],
        },
    })
}
