//! The scenario files as oracles for `palisadectl reach`: for every probe of every
//! reachability scenario (`integration/scenarios/` and the shared samples `scenarios-sample/`
//! and `scenarios-sample-cnp/`, beside the checkout or in `integration/shared-samples/`), the
//! cluster state at that step (namespaces, pods with synthetic IPs laid out like the netns
//! cluster's, policies with templates substituted) is written out as manifests, the real
//! `palisadectl reach -o json --port P --protocol X` runs on them, and every cell the probe
//! lists must match (pod → itself skipped with `ignore_loopback`).
//!
//! No root, no kernel: this checks the compiler + interpreter path that palisadectl and the
//! agent share against the expectations of the scenario files, quickly and everywhere.
//! Build the binary first: `cargo build -p palisade-policy --bin palisadectl` (or set
//! `PALISADE_BIN_DIR`).

use palisade_integration::cluster::EXTERNAL_IPV4;
use palisade_integration::scenario::{
    policy_kind, substitute_templates, Addresses, ContainerKind, PodRef, PodSpec, PolicyKind,
    Scenario, ScenarioKind, Step, EXTERNAL, NAMESPACE_NAME_LABEL,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Nodes of the simulated cluster: the runner's default.
const NODES: usize = 2;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `PALISADE_BIN_DIR`, next to this test binary (`<target>/<profile>/`), or the workspace's
/// `target/{release,debug}`.
fn palisadectl() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("PALISADE_BIN_DIR") {
        candidates.push(PathBuf::from(d).join("palisadectl"));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let dir = if dir.ends_with("deps") {
                dir.parent().unwrap()
            } else {
                dir
            };
            candidates.push(dir.join("palisadectl"));
        }
    }
    for profile in ["release", "debug"] {
        candidates.push(
            workspace_root()
                .join("target")
                .join(profile)
                .join("palisadectl"),
        );
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "palisadectl binary not found (looked at {candidates:?}); build it first: \
             cargo build -p palisade-policy --bin palisadectl, or set PALISADE_BIN_DIR"
            )
        })
}

fn scenario_files() -> Vec<PathBuf> {
    let mut dirs = vec![workspace_root().join("integration/scenarios")];
    for folder in ["scenarios-sample", "scenarios-sample-cnp"] {
        let beside = workspace_root().join("../shared").join(folder);
        dirs.push(if beside.is_dir() {
            beside
        } else {
            workspace_root()
                .join("integration/shared-samples")
                .join(folder)
        });
    }
    let mut files = palisade_integration::runner::collect_files(&dirs).expect("scenario folders");
    files.sort();
    files
}

struct SimPod {
    spec: PodSpec,
    node: usize,
    ip: IpAddr,
}

/// The cluster as the scenario steps leave it.
struct Sim {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: BTreeMap<PodRef, SimPod>,
    /// By kind, namespace (empty for the cluster-scoped kind) and name.
    policies: BTreeMap<(PolicyKind, String, String), Value>,
    round_robin: usize,
    next_host: [u8; NODES],
    generated: usize,
}

impl Sim {
    fn new(s: &Scenario) -> Sim {
        let mut sim = Sim {
            namespaces: s
                .model
                .namespaces
                .iter()
                .map(|n| (n.name.clone(), n.effective_labels()))
                .collect(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            round_robin: 0,
            next_host: [10; NODES],
            generated: 0,
        };
        for p in &s.model.pods {
            sim.create_pod(p);
        }
        sim
    }

    /// Placement and addresses as the netns cluster makes them: `node` or round-robin,
    /// node i's pods in 10.244.i.0/24.
    fn create_pod(&mut self, spec: &PodSpec) {
        let node = spec.node.unwrap_or_else(|| {
            let n = self.round_robin % NODES + 1;
            self.round_robin += 1;
            n
        });
        let slot = (node - 1) % NODES;
        let host = self.next_host[slot];
        self.next_host[slot] += 1;
        let ip = IpAddr::V4(Ipv4Addr::new(10, 244, node as u8, host));
        self.pods.insert(
            spec.key(),
            SimPod {
                spec: spec.clone(),
                node,
                ip,
            },
        );
    }

    fn apply(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::ApplyPolicy {
                expect: Some(palisade_integration::scenario::Expect::Rejected),
                ..
            } => {}
            Step::ApplyPolicy { policy, .. } => {
                let pods = &self.pods;
                let addrs = Addresses {
                    pod_ip: &|r: &PodRef| pods.get(r).map(|p| p.ip),
                    external: Some(IpAddr::V4(EXTERNAL_IPV4)),
                };
                let mut p = substitute_templates(policy, &addrs).map_err(|e| e.to_string())?;
                let kind = policy_kind(&p);
                let ns = match kind {
                    PolicyKind::NetworkPolicy => p["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string(),
                    PolicyKind::ClusterNetworkPolicy => String::new(),
                };
                if p["metadata"]["name"].as_str().unwrap_or("").is_empty() {
                    let prefix = p["metadata"]["generateName"]
                        .as_str()
                        .unwrap_or("policy-")
                        .to_string();
                    self.generated += 1;
                    p["metadata"]["name"] = json!(format!("{prefix}gen{}", self.generated));
                }
                let name = p["metadata"]["name"].as_str().unwrap().to_string();
                self.policies.insert((kind, ns, name), p);
            }
            Step::DeletePolicy {
                kind,
                namespace,
                name,
            } => {
                self.policies
                    .remove(&(*kind, namespace.clone(), name.clone()));
            }
            Step::UpdatePodLabels { pod, change } => {
                let p = self.pods.get_mut(pod).ok_or(format!("no pod {pod}"))?;
                p.spec.labels = change.apply_to(&p.spec.labels);
            }
            Step::UpdateNamespaceLabels { namespace, change } => {
                let labels = self.namespaces.entry(namespace.clone()).or_default();
                let mut new = change.apply_to(labels);
                new.insert(NAMESPACE_NAME_LABEL.into(), namespace.clone());
                *labels = new;
            }
            Step::CreatePod { pod } => self.create_pod(pod),
            Step::DeletePod { pod } => {
                self.pods.remove(pod);
            }
            Step::Probe(_) => {}
        }
        Ok(())
    }

    /// Every object as one JSON `List` (the policies as written, after substitution).
    fn manifests(&self) -> Value {
        let mut items = Vec::new();
        for (name, labels) in &self.namespaces {
            items.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
        }
        for p in self.pods.values() {
            let ports = |kind: ContainerKind| -> Vec<Value> {
                p.spec
                    .ports
                    .iter()
                    .filter(|x| x.container == kind)
                    .map(|x| {
                        let mut v =
                            json!({"containerPort": x.port, "protocol": x.protocol.as_str()});
                        if let Some(n) = &x.name {
                            v["name"] = json!(n);
                        }
                        v
                    })
                    .collect()
            };
            let mut spec = json!({
                "nodeName": format!("node-{}", p.node),
                "containers": [{"name": "main", "ports": ports(ContainerKind::Main)}],
            });
            let sidecar = ports(ContainerKind::InitSidecar);
            if !sidecar.is_empty() {
                spec["initContainers"] =
                    json!([{"name": "init-sidecar", "restartPolicy": "Always", "ports": sidecar}]);
            }
            items.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": p.spec.namespace, "name": p.spec.name, "labels": p.spec.labels},
                "spec": spec,
                "status": {"phase": "Running", "podIPs": [{"ip": p.ip.to_string()}]},
            }));
        }
        for ((kind, _, _), p) in &self.policies {
            let mut p = p.clone();
            p["kind"] = json!(format!("{kind:?}"));
            items.push(p);
        }
        json!({"apiVersion": "v1", "kind": "List", "items": items})
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn palisadectl_reach_matches_every_scenario_probe() {
    let bin = palisadectl();
    let files = scenario_files();
    assert!(!files.is_empty(), "no scenario files found");
    let dir =
        TempDir(std::env::temp_dir().join(format!("palisadectl-scenarios-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let manifest = dir.0.join("state.json");
    let (mut scenarios, mut probes, mut cells) = (0, 0, 0);
    let mut failures = Vec::new();
    for file in &files {
        let s = Scenario::from_file(file).unwrap_or_else(|e| panic!("{e}"));
        if s.kind != ScenarioKind::Reachability {
            continue;
        }
        scenarios += 1;
        let mut sim = Sim::new(&s);
        for (i, step) in s.steps.iter().enumerate() {
            let where_ = format!("{} step {} ({})", file.display(), i + 1, step.describe());
            if let Err(e) = sim.apply(step) {
                failures.push(format!("{where_}: {e}"));
                break;
            }
            let Step::Probe(probe) = step else { continue };
            probes += 1;
            std::fs::write(
                &manifest,
                serde_json::to_string_pretty(&sim.manifests()).unwrap(),
            )
            .unwrap();
            let out = Command::new(&bin)
                .args(["reach", "-f"])
                .arg(&manifest)
                .args(["-o", "json", "--color", "never", "--port"])
                .arg(probe.port.to_string())
                .args(["--protocol", probe.protocol.as_str()])
                .output()
                .expect("run palisadectl");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                failures.push(format!(
                    "{where_}: palisadectl exited {}: {stderr}",
                    out.status
                ));
                continue;
            }
            let got: Value = match serde_json::from_slice(&out.stdout) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{where_}: output is not JSON: {e}"));
                    continue;
                }
            };
            let key = format!("{}/{}", probe.port, probe.protocol);
            for (src, dst, expected) in probe.expected.cells() {
                // `reach` answers between pods; the external host's cells depend on
                // masquerade too and are checked on the netns cluster.
                if s.ignore_loopback && src == dst || dst == EXTERNAL {
                    continue;
                }
                cells += 1;
                match got[&key][src][dst].as_bool() {
                    Some(v) if v == expected => {}
                    observed => failures.push(format!(
                        "{where_}: {key} {src} -> {dst}: expected {}, palisadectl says {}",
                        if expected { "allowed" } else { "denied" },
                        match observed {
                            Some(true) => "allowed".to_string(),
                            Some(false) => "denied".to_string(),
                            None => format!("nothing (stderr: {})", stderr.trim()),
                        }
                    )),
                }
            }
        }
    }
    eprintln!(
        "{scenarios} reachability scenarios, {probes} probes, {cells} cells checked, {} failures",
        failures.len()
    );
    assert!(probes > 0, "no probe found in {} files", files.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `reach --kubeconfig`: the objects listed from an API server (the stand-in, on loopback)
/// give the same matrix as the same objects given as a manifest.
#[test]
fn reach_from_the_api_server_equals_reach_from_manifests() {
    use palisade_integration::apiserver::{ApiServer, ApiServerConfig, Kind};
    let bin = palisadectl();
    let dir = TempDir(
        std::env::temp_dir().join(format!("palisadectl-kubeconfig-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let api =
        ApiServer::start_in_thread("127.0.0.1:0".parse().unwrap(), ApiServerConfig::default())
            .unwrap();
    let kubeconfig = dir.0.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let mut items = Vec::new();
    for ns in ["x", "y"] {
        items.push((
            Kind::Namespace,
            json!({"metadata": {"name": ns, "labels": {"team": ns}}}),
        ));
    }
    for (ns, name, ip, app) in [
        ("x", "a", "10.244.1.2", "server"),
        ("x", "b", "10.244.2.2", "client"),
        ("y", "c", "10.244.1.3", "client"),
    ] {
        items.push((Kind::Pod, json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "main", "ports": [{"containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        })));
    }
    items.push((
        Kind::NetworkPolicy,
        json!({
            "metadata": {"namespace": "x", "name": "server"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]},
        }),
    ));
    // y's pods reach x's server on 80, whatever NetworkPolicy says (Admin tier).
    items.push((
        Kind::ClusterNetworkPolicy,
        json!({
            "metadata": {"name": "y-to-servers"},
            "spec": {"tier": "Admin", "priority": 5,
                     "subject": {"pods": {"podSelector": {"matchLabels": {"app": "server"}}}},
                     "ingress": [{"action": "Accept", "from": [{"namespaces": {"matchLabels": {"team": "y"}}}],
                                  "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]},
        }),
    ));
    let mut manifest = Vec::new();
    for (kind, obj) in items {
        let stored = api
            .create(kind, obj.clone())
            .unwrap_or_else(|e| panic!("{e:?}"));
        // The stand-in may drop status on create, as POST does: then set it as kubelet would.
        if kind == Kind::Pod && stored["status"]["podIPs"].is_null() {
            let mut with_status = stored.clone();
            with_status["status"] = obj["status"].clone();
            api.update(kind, with_status)
                .unwrap_or_else(|e| panic!("{e:?}"));
        }
        let mut o = obj;
        o["kind"] = json!(kind.name());
        manifest.push(o);
    }
    let file = dir.0.join("objects.json");
    std::fs::write(
        &file,
        json!({"kind": "List", "items": manifest}).to_string(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from_api = run(&[
        "reach",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--port",
        "80",
        "-o",
        "json",
    ]);
    let from_file = run(&[
        "reach",
        "-f",
        file.to_str().unwrap(),
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(from_api, from_file);
    let v: Value = serde_json::from_str(&from_api).unwrap();
    assert_eq!(v["80/TCP"]["x/b"]["x/a"], json!(true));
    // NetworkPolicy alone denies y/c, the ClusterNetworkPolicy listed from the API accepts.
    assert_eq!(v["80/TCP"]["y/c"]["x/a"], json!(true));
    assert_eq!(v["80/TCP"]["y/c"]["x/b"], json!(true));

    // Without --kubeconfig, kubectl's loading rules. A second kubeconfig whose
    // current-context names a server nobody listens on, and which also defines a context of
    // the stand-in's name pointing elsewhere (first file wins, whole).
    let other = dir.0.join("other");
    std::fs::write(
        &other,
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n\
         clusters:\n- {name: dead, cluster: {server: \"http://127.0.0.1:1\"}}\n\
         contexts:\n- {name: dead, context: {cluster: dead, user: u}}\n\
         - {name: palisade-standin, context: {cluster: dead, user: u}}\n\
         users:\n- {name: u, user: {}}\n",
    )
    .unwrap();
    let home = dir.0.join("home");
    std::fs::create_dir_all(home.join(".kube")).unwrap();
    let env_run = |kubeconfig_env: Option<String>, args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .env("HOME", &home)
            .env_remove("KUBERNETES_SERVICE_HOST");
        match kubeconfig_env {
            Some(v) => cmd.env("KUBECONFIG", v),
            None => cmd.env_remove("KUBECONFIG"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let reach = ["reach", "--port", "80", "-o", "json"];
    let list = |files: &[&Path]| std::env::join_paths(files).unwrap().into_string().unwrap();
    let missing = dir.0.join("missing");
    // A missing file in the list is skipped; the first existing file's current-context wins.
    let (code, out, err) = env_run(Some(list(&[&missing, &kubeconfig, &other])), &reach);
    assert_eq!((code, out.as_str()), (Some(0), from_api.as_str()), "{err}");
    // The other order: the dead server's context is current, and --context picks ours...
    let (code, _, err) = env_run(Some(list(&[&other, &kubeconfig])), &reach);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    // ...except that a context named like ours in the first file wins over ours.
    let (code, _, err) = env_run(
        Some(list(&[&other, &kubeconfig])),
        &["--context", "palisade-standin", "reach", "--port", "80"],
    );
    assert_eq!(
        code,
        Some(1),
        "first file's context of that name wins: {err}"
    );
    let (code, out, err) = env_run(
        Some(list(&[&kubeconfig, &other])),
        &[
            "--context",
            "palisade-standin",
            "reach",
            "--port",
            "80",
            "-o",
            "json",
        ],
    );
    assert_eq!((code, out.as_str()), (Some(0), from_api.as_str()), "{err}");
    // No $KUBECONFIG: ~/.kube/config.
    std::fs::copy(&kubeconfig, home.join(".kube/config")).unwrap();
    let (code, out, err) = env_run(None, &reach);
    assert_eq!((code, out.as_str()), (Some(0), from_api.as_str()), "{err}");
}
