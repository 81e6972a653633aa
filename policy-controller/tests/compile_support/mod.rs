//! Shared by the compiler's integration tests: a scenario-file runner (the format of
//! `/work/shared/scenario-format.md`) that plays a scenario offline on a [`ClusterState`]
//! with synthetic pod IPs, and small builders.

use palisade_policy::eval::reference::Endpoint;
use palisade_policy::model::api::{self, ClusterNetworkPolicy, NetworkPolicy};
use palisade_policy::model::validate::prune_cluster_network_policy;
use palisade_policy::model::{ClusterState, Labels, NodeInfo, ObjectKey, PodInfo, Protocol};
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where scenario files live: the shared samples (`../shared/<folder>` beside the checkout,
/// else the copies in `integration/shared-samples/`, as `tests/run-all.sh` picks them) and
/// the project's own.
pub fn scenario_dirs() -> Vec<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = |folder: &str| {
        let beside = manifest.join("../../shared").join(folder);
        if beside.is_dir() {
            beside
        } else {
            manifest.join("../integration/shared-samples").join(folder)
        }
    };
    vec![
        shared("scenarios-sample"),
        shared("scenarios-sample-cnp"),
        shared("scenarios-sample-external"),
        manifest.join("../integration/scenarios"),
    ]
}

/// Every `*.yaml` under `dir`, recursively, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub const NODES: usize = 2;

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The netns cluster's external host (`integration/src/cluster`), as `{{ externalCIDR }}` and
/// the `external` destination stand for it: beyond every node's uplink, in no pod CIDR.
pub const EXTERNAL: &str = "192.0.2.253";

/// One probe cell to check: after step `step`, `src` → `dst` on `proto`/`port` should be
/// `expected`.
#[derive(Debug, Clone)]
pub struct Cell {
    pub step: usize,
    pub src: ObjectKey,
    /// A pod, or the external host's address.
    pub dst: Endpoint,
    pub proto: Protocol,
    pub port: u16,
    pub expected: bool,
    /// The scenario's `cluster.masquerade`: without it nothing outside the pod network can
    /// answer a pod.
    pub masquerade: bool,
}

/// A scenario being played: the cluster state after the steps so far.
pub struct Player {
    pub id: String,
    pub state: ClusterState,
    next_pod: usize,
    next_host: [u32; NODES + 1],
    generated: usize,
    ignore_loopback: bool,
    pub masquerade: bool,
}

impl Player {
    pub fn new(doc: &Value) -> Player {
        let mut p = Player {
            id: doc["id"].as_str().unwrap_or("?").to_string(),
            state: ClusterState::default(),
            next_pod: 0,
            next_host: [2; NODES + 1],
            generated: 0,
            ignore_loopback: doc["ignore_loopback"].as_bool().unwrap_or(false),
            masquerade: doc["cluster"]["masquerade"].as_bool().unwrap_or(true),
        };
        for n in 1..=NODES {
            p.state.nodes.insert(
                node_name(n),
                NodeInfo {
                    name: node_name(n),
                    internal_ips: vec![format!("192.168.0.{n}").parse().unwrap()],
                    pod_cidrs: vec![format!("10.{n}.0.0/16").parse().unwrap()],
                    // As the netns cluster publishes its nodes.
                    labels: [("kubernetes.io/hostname".to_string(), node_name(n))].into(),
                    addresses: vec![format!("192.168.0.{n}").parse().unwrap()],
                },
            );
        }
        for ns in doc["model"]["namespaces"].as_array().into_iter().flatten() {
            let name = ns["name"].as_str().expect("namespace name");
            p.state.upsert_namespace(name, labels_of(&ns["labels"]));
        }
        for pod in doc["model"]["pods"].as_array().into_iter().flatten() {
            p.create_pod(pod);
        }
        p
    }

    fn create_pod(&mut self, pod: &Value) {
        let node = match pod["node"].as_u64() {
            Some(n) => n as usize,
            None => self.next_pod % NODES + 1,
        };
        self.next_pod += 1;
        let host = self.next_host[node];
        self.next_host[node] += 1;
        let ip = format!("10.{node}.{}.{}", host / 250, host % 250 + 2);
        let mut main_ports = Vec::new();
        let mut sidecar_ports = Vec::new();
        for port in pod["ports"].as_array().into_iter().flatten() {
            let cp = serde_json::json!({
                "name": port["name"], "containerPort": port["port"], "protocol": port["protocol"],
            });
            match port["container"].as_str() {
                Some("init-sidecar") => sidecar_ports.push(cp),
                _ => main_ports.push(cp),
            }
        }
        let api_pod: api::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": pod["namespace"], "name": pod["name"], "labels": pod["labels"].as_object().cloned().unwrap_or_default()},
            "spec": {
                "nodeName": node_name(node),
                "containers": [{"name": "main", "ports": main_ports}],
                "initContainers": [{"name": "init-sidecar", "restartPolicy": "Always", "ports": sidecar_ports}],
            },
            "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
        }))
        .expect("pod");
        let mut info = PodInfo::from_api(&api_pod);
        // Set directly: `model::api::PodStatus` spells the field `podIps` (camelCase of the
        // Rust name) where the API says `podIPs`; this runner is not about that parsing.
        info.ips = vec![ip.parse().expect("synthetic IP")];
        self.state.pods.insert(info.key.clone(), info);
    }

    fn pod_ip(&self, key: &str) -> IpAddr {
        let (ns, name) = key.split_once('/').expect("ns/pod");
        self.state.pods[&ObjectKey::new(ns, name)].ips[0]
    }

    /// Replace `{{ podIP ns/pod }}`, `{{ podHostCIDR ns/pod }}`, `{{ podCIDR ns/pod N }}`.
    fn substitute(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("unterminated template") + start;
            let words: Vec<&str> = rest[start + 2..end].split_whitespace().collect();
            out.push_str(&match words[..] {
                ["externalCIDR"] => format!("{EXTERNAL}/32"),
                ["podIP", pod] => self.pod_ip(pod).to_string(),
                ["podHostCIDR", pod] => format!("{}/32", self.pod_ip(pod)),
                ["podCIDR", pod, len] => {
                    let len: u8 = len.parse().expect("prefix length");
                    ipnet::IpNet::new(self.pod_ip(pod), len)
                        .unwrap()
                        .trunc()
                        .to_string()
                }
                _ => panic!("unknown template {words:?}"),
            });
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn substitute_value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.substitute(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.substitute_value(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), self.substitute_value(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Apply one action step. Returns `false` when the step was skipped (a policy the API
    /// server must reject).
    pub fn apply(&mut self, step: &Value) -> bool {
        let action = step["action"].as_str().expect("action");
        match action {
            "apply_policy" => {
                if step["expect"].as_str() == Some("rejected") {
                    return false;
                }
                let raw = self.substitute_value(&step["policy"]);
                if raw["kind"] == "ClusterNetworkPolicy" {
                    let mut policy: ClusterNetworkPolicy =
                        serde_json::from_value(raw).expect("policy parses");
                    // As the API server stores it.
                    prune_cluster_network_policy(&mut policy);
                    self.state
                        .cluster_network_policies
                        .insert(policy.metadata.name.clone(), policy);
                    return true;
                }
                let mut policy: NetworkPolicy = serde_json::from_value(raw).expect("policy parses");
                if policy.metadata.namespace.is_empty() {
                    policy.metadata.namespace = "default".into();
                }
                if policy.metadata.name.is_empty() {
                    self.generated += 1;
                    policy.metadata.name = format!(
                        "{}{:05}",
                        policy.metadata.generate_name.clone().unwrap_or_default(),
                        self.generated
                    );
                }
                let key = ObjectKey::new(&policy.metadata.namespace, &policy.metadata.name);
                self.state.network_policies.insert(key, policy);
            }
            "delete_policy" if step["kind"] == "ClusterNetworkPolicy" => {
                let name = step["name"].as_str().unwrap();
                self.state.cluster_network_policies.remove(name);
            }
            "delete_policy" => {
                let key = ObjectKey::new(
                    step["namespace"].as_str().unwrap(),
                    step["name"].as_str().unwrap(),
                );
                self.state.network_policies.remove(&key);
            }
            "update_pod_labels" => {
                let (ns, name) = step["pod"].as_str().unwrap().split_once('/').unwrap();
                let pod = self
                    .state
                    .pods
                    .get_mut(&ObjectKey::new(ns, name))
                    .expect("pod exists");
                update_labels(&mut pod.labels, step);
            }
            "update_namespace_labels" => {
                let name = step["namespace"].as_str().unwrap();
                let mut labels = self.state.namespaces.get(name).cloned().unwrap_or_default();
                update_labels(&mut labels, step);
                self.state.upsert_namespace(name, labels);
            }
            "create_pod" => self.create_pod(&step["pod"]),
            "delete_pod" => {
                let (ns, name) = step["pod"].as_str().unwrap().split_once('/').unwrap();
                self.state.pods.remove(&ObjectKey::new(ns, name));
            }
            other => panic!("{}: unknown action {other}", self.id),
        }
        true
    }

    /// The cells of a probe step (loopback cells skipped when the scenario says so).
    pub fn cells(&self, step_index: usize, probe: &Value) -> Vec<Cell> {
        let proto = Protocol::parse_api(probe["protocol"].as_str()).expect("protocol");
        let port = probe["port"].as_u64().expect("port") as u16;
        let mut out = Vec::new();
        for (src, row) in probe["matrix"].as_object().expect("matrix") {
            for (dst, expected) in row.as_object().expect("matrix row") {
                if self.ignore_loopback && src == dst {
                    continue;
                }
                let key = |s: &str| {
                    let (ns, name) = s.split_once('/').unwrap();
                    ObjectKey::new(ns, name)
                };
                out.push(Cell {
                    step: step_index,
                    src: key(src),
                    dst: if dst == "external" {
                        Endpoint::Ip(EXTERNAL.parse().unwrap())
                    } else {
                        Endpoint::Pod(key(dst))
                    },
                    proto,
                    port,
                    expected: expected.as_bool().expect("bool cell"),
                    masquerade: self.masquerade,
                });
            }
        }
        out
    }
}

fn labels_of(v: &Value) -> Labels {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn update_labels(labels: &mut Labels, step: &Value) {
    if let Some(replace) = step.get("replace").filter(|v| !v.is_null()) {
        *labels = labels_of(replace);
    }
    labels.extend(labels_of(&step["merge"]));
    for k in step["remove"].as_array().into_iter().flatten() {
        labels.remove(k.as_str().unwrap_or_default());
    }
}

/// Parse a scenario file into JSON.
pub fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // YAML 1.1 booleans would turn a namespace named `y` or `n` into `true`/`false`.
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<Value>(&text, options)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Play every scenario found, calling `check` on each probe cell with the state at that
/// point; returns (scenarios played, cells checked, failures as text).
pub fn play_all(
    mut check: impl FnMut(&ClusterState, &Cell) -> Result<(), String>,
) -> (usize, usize, Vec<String>) {
    let mut scenarios = 0;
    let mut cells = 0;
    let mut failures = Vec::new();
    for dir in scenario_dirs() {
        if !dir.is_dir() {
            println!("note: no scenario folder {}, skipped", dir.display());
            continue;
        }
        for path in yaml_files(&dir) {
            let doc = load(&path);
            let kinds = doc["steps"].to_string();
            if kinds.contains("\"ClusterNetworkPolicy\"") {
                // Not a policy kind this compiler knows yet.
                println!(
                    "note: {} uses ClusterNetworkPolicy, skipped",
                    path.display()
                );
                continue;
            }
            let mut player = Player::new(&doc);
            scenarios += 1;
            for (i, step) in doc["steps"].as_array().into_iter().flatten().enumerate() {
                if let Some(probe) = step.get("probe") {
                    for cell in player.cells(i, probe) {
                        cells += 1;
                        if let Err(e) = check(&player.state, &cell) {
                            failures.push(format!(
                                "{} step {}: {} -> {} {}/{}: {e}",
                                player.id, cell.step, cell.src, cell.dst, cell.proto, cell.port
                            ));
                        }
                    }
                } else {
                    player.apply(step);
                }
            }
        }
    }
    (scenarios, cells, failures)
}
