//! The real-cluster mode (`palisade-scenarios kube`) without a real cluster:
//!
//! - the Pod and Namespace objects it makes from every checked-in scenario pass a real
//!   Kubernetes schema validator (`kubernetes-validate --strict`, from tests/install-deps.sh);
//! - the whole driver runs with the real `kubectl` against the kube API stand-in (loopback
//!   only), a test thread playing kubelet (pods become Ready with IPs): every step kind goes
//!   through kubectl as intended, API validation scenarios pass, an existing namespace is
//!   refused and left alone, and the scenario's namespaces are gone afterwards. Probes cannot
//!   run there (the stand-in has no `exec`): they show up as probe errors, never as verdicts.
//!
//! Skipped (with a note) where kubectl or kubernetes-validate is not installed.

use palisade_integration::apiserver::{ApiServer, ApiServerConfig, Kind};
use palisade_integration::kube::kubectl::Kubectl;
use palisade_integration::kube::manifest::{
    namespace_manifest, pod_manifest, DEFAULT_AGNHOST_IMAGE, RUN_LABEL,
};
use palisade_integration::kube::{run_scenario, KubeOptions};
use palisade_integration::scenario::{Family, Scenario, Step};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

fn kubectl_path() -> Option<PathBuf> {
    find(&["/usr/bin/kubectl", "/usr/local/bin/kubectl"])
}

fn validator_path() -> Option<PathBuf> {
    let venv = std::env::var("PALISADE_VENV").unwrap_or_else(|_| "/opt/palisade-venv".into());
    find(&[&format!("{venv}/bin/kubernetes-validate")])
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("palisade-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn all_scenarios() -> Vec<Scenario> {
    let files = palisade_integration::runner::collect_files(&[scenarios_dir()]).unwrap();
    files
        .iter()
        .map(|f| Scenario::from_file(f).unwrap())
        .collect()
}

// ---- manifests through a real validator ----------------------------------------------------

fn validate(validator: &Path, version: &str, files: &[PathBuf]) -> std::process::Output {
    Command::new(validator)
        .args(["--strict", "--quiet", "-k", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate")
}

#[test]
fn every_scenario_object_passes_the_kubernetes_schema() {
    let Some(validator) = validator_path() else {
        eprintln!("kubernetes-validate is not installed (tests/install-deps.sh): skipping");
        return;
    };
    let scratch = Scratch::new("validate");
    let mut files = Vec::new();
    let mut sidecars = 0;
    for s in all_scenarios() {
        let mut objects: Vec<Value> = s
            .model
            .namespaces
            .iter()
            .map(|ns| namespace_manifest(ns, "0123456789ab"))
            .collect();
        let created = s.steps.iter().filter_map(|st| match st {
            Step::CreatePod { pod } => Some(pod.clone()),
            _ => None,
        });
        for (i, pod) in s.model.pods.iter().cloned().chain(created).enumerate() {
            // Pinned and unpinned pods alike.
            let node = (i % 2 == 0).then_some("kind-worker");
            objects.push(pod_manifest(&pod, DEFAULT_AGNHOST_IMAGE, node).unwrap());
        }
        for (i, o) in objects.iter().enumerate() {
            sidecars += usize::from(o["spec"]["initContainers"].is_array());
            let f = scratch.0.join(format!("{}-{i}.json", s.id));
            std::fs::write(&f, o.to_string()).unwrap();
            files.push(f);
        }
    }
    assert!(files.len() > 300, "only {} objects", files.len());
    assert!(sidecars > 0, "no sidecar pod among the scenarios");
    // Sidecars (restartPolicy on init containers) exist in the API from 1.28 on.
    for version in ["1.29.0", "1.37.0"] {
        let out = validate(&validator, version, &files);
        assert!(
            out.status.success(),
            "kubernetes-validate {version} refused some objects:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The validator does look: a typo'd field and a bad port are refused.
    let mut bad = pod_manifest(
        &all_scenarios()[0].model.pods[0],
        DEFAULT_AGNHOST_IMAGE,
        None,
    )
    .unwrap();
    bad["spec"]["containers"][0]["restartPolcy"] = json!("Always");
    let f = scratch.0.join("bad.json");
    std::fs::write(&f, bad.to_string()).unwrap();
    let out = validate(&validator, "1.37.0", &[f]);
    assert!(!out.status.success(), "a misspelt field passed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("restartPolcy"));
}

// ---- the driver against the stand-in ----------------------------------------------------------

/// The stand-in, and real kubectl through a wrapper that logs every call and keeps each
/// call's stdin.
struct Rig {
    server: ApiServer,
    scratch: Scratch,
    wrapper: PathBuf,
}

impl Rig {
    fn start(tag: &str) -> Option<Rig> {
        let Some(kubectl) = kubectl_path() else {
            eprintln!("kubectl is not installed: skipping the kube driver test");
            return None;
        };
        let scratch = Scratch::new(tag);
        let server =
            ApiServer::start_in_thread("127.0.0.1:0".parse().unwrap(), ApiServerConfig::default())
                .expect("start the stand-in");
        server
            .write_kubeconfig(&scratch.0.join("kubeconfig"))
            .unwrap();
        let wrapper = scratch.0.join("kubectl");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n\
                 in={dir}/stdin.$$\n\
                 cat > \"$in\"\n\
                 printf '%s %s\\n' $$ \"$*\" >> {dir}/calls.log\n\
                 exec {kubectl} \"$@\" < \"$in\"\n",
                dir = scratch.0.display(),
                kubectl = kubectl.display()
            ),
        )
        .unwrap();
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&wrapper)
            .status()
            .unwrap();
        assert!(status.success());
        Some(Rig {
            server,
            scratch,
            wrapper,
        })
    }

    fn options(&self) -> KubeOptions {
        let mut kubectl = Kubectl::new(self.wrapper.clone());
        kubectl.kubeconfig = Some(self.scratch.0.join("kubeconfig"));
        kubectl.cache_dir = Some(self.scratch.0.join("cache"));
        KubeOptions {
            kubectl,
            family: Family::V4,
            image: "agnhost:test".into(),
            converge_timeout: Duration::ZERO,
            ready_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            parallel: 4,
            settle: Duration::ZERO,
            run_id: "0000000000aa".into(),
            colour: false,
            verbose: false,
        }
    }

    /// Every kubectl call as `(pid, arguments after the global ones)`.
    fn calls(&self) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(self.scratch.0.join("calls.log")).unwrap_or_default();
        log.lines()
            .map(|l| {
                let (pid, rest) = l.split_once(' ').unwrap();
                let args: Vec<&str> = rest
                    .split(' ')
                    .filter(|a| !a.starts_with("--kubeconfig=") && !a.starts_with("--cache-dir="))
                    .collect();
                (pid.to_string(), args.join(" "))
            })
            .collect()
    }

    fn stdin_of(&self, pid: &str) -> Value {
        let text = std::fs::read_to_string(self.scratch.0.join(format!("stdin.{pid}"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn namespace_names(&self) -> Vec<String> {
        self.server
            .list(Kind::Namespace, None)
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Run `f` while a thread plays kubelet: every new pod gets Ready with an address
    /// (10.244.0.N and fd00::N). Returns what `f` returned and the Pod objects as created.
    fn with_kubelet<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<Value>) {
        let stop = AtomicBool::new(false);
        let seen = Mutex::new(Vec::new());
        let out = std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut next = 1;
                while !stop.load(Ordering::SeqCst) {
                    for pod in self.server.list(Kind::Pod, None) {
                        if pod["status"]["conditions"].is_array() {
                            continue;
                        }
                        let meta = &pod["metadata"];
                        let status = json!({"status": {
                            "phase": "Running",
                            "podIP": format!("10.244.0.{next}"),
                            "podIPs": [{"ip": format!("10.244.0.{next}")},
                                       {"ip": format!("fd00::{next}")}],
                            "conditions": [{"type": "Ready", "status": "True"}],
                        }});
                        next += 1;
                        self.server
                            .merge_patch(
                                Kind::Pod,
                                meta["namespace"].as_str(),
                                meta["name"].as_str().unwrap(),
                                &status,
                            )
                            .unwrap();
                        seen.lock().unwrap().push(pod);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let out = f();
            stop.store(true, Ordering::SeqCst);
            out
        });
        (out, seen.into_inner().unwrap())
    }
}

const WALKTHROUGH: &str = r#"
id: kube-driver-walkthrough
title: every step kind, through kubectl
kind: reachability
ignore_loopback: true
model:
  namespaces:
  - {name: kx, labels: {kubernetes.io/metadata.name: kx, team: a}}
  - {name: ky, labels: {kubernetes.io/metadata.name: ky}}
  pods:
  - namespace: kx
    name: a
    node: 2
    labels: {pod: a, app: web}
    ports:
    - {name: serve-80-tcp, port: 80, protocol: TCP}
    - {name: metrics, port: 9090, protocol: TCP, container: init-sidecar}
  - namespace: ky
    name: b
    labels: {pod: b}
    ports:
    - {name: dns, port: 53, protocol: UDP}
steps:
- action: apply_policy
  mode: create
  policy:
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: p, namespace: kx}
    spec:
      podSelector: {}
      ingress:
      - from:
        - ipBlock: {cidr: "{{ podHostCIDR ky/b }}"}
- action: apply_policy
  mode: update
  policy:
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: p, namespace: kx}
    spec:
      podSelector: {matchLabels: {tier: front}}
      ingress:
      - from:
        - ipBlock: {cidr: "{{ podCIDR ky/b 24 }}"}
- action: apply_policy
  mode: create
  expect: rejected
  policy:
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: bad, namespace: kx}
    spec:
      podSelector: {}
      ingress:
      - ports:
        - {port: 81, endPort: 80}
- action: update_pod_labels
  pod: kx/a
  merge: {tier: front}
  remove: [app]
- action: update_namespace_labels
  namespace: ky
  merge: {team: b}
- action: create_pod
  pod: {namespace: ky, name: c, labels: {pod: c}, ports: [{port: 80, protocol: TCP}]}
- probe:
    protocol: TCP
    port: 80
    matrix:
      ky/b: {kx/a: true}
      ky/c: {kx/a: false}
- action: delete_pod
  pod: ky/c
- action: delete_policy
  namespace: kx
  name: p
"#;

#[test]
fn every_step_goes_through_kubectl_and_the_namespaces_are_gone_afterwards() {
    let Some(rig) = Rig::start("walk") else {
        return;
    };
    for (name, taint) in [
        ("node-c", None),
        ("node-a", Some("NoSchedule")),
        ("node-b", None),
    ] {
        let mut node = json!({"metadata": {"name": name}, "spec": {}});
        if let Some(effect) = taint {
            node["spec"]["taints"] = json!([{"key": "k", "effect": effect}]);
        }
        rig.server.create(Kind::Node, node).unwrap();
    }
    let scenario = Scenario::parse(WALKTHROUGH).unwrap();
    let opts = rig.options();
    let (result, pods) = rig.with_kubelet(|| run_scenario(&scenario, &opts));

    // Probes cannot run on the stand-in: errors, not verdicts; nothing else went wrong.
    assert!(!result.passed);
    assert_eq!(result.probes, 1);
    let report = &result.report;
    assert!(report.contains("2 cell(s) differ"), "{report}");
    assert!(
        report.contains("probe error ky/b -> kx/a: kubectl exec exited"),
        "{report}"
    );
    assert!(
        report.contains("probe error ky/c -> kx/a: kubectl exec exited"),
        "{report}"
    );
    assert!(!report.contains("error:"), "a step failed:\n{report}");
    assert!(
        !report.contains("expects"),
        "a policy was judged wrongly:\n{report}"
    );

    // The pods as created: pinned to the 2nd schedulable node (sorted), sidecar as init.
    let a = pods.iter().find(|p| p["metadata"]["name"] == "a").unwrap();
    assert_eq!(a["spec"]["nodeName"], "node-c");
    assert_eq!(a["spec"]["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(a["metadata"]["labels"], json!({"pod": "a", "app": "web"}));
    let b = pods.iter().find(|p| p["metadata"]["name"] == "b").unwrap();
    assert!(b["spec"].get("nodeName").is_none());
    assert_eq!(pods.len(), 3);
    let ip_of = |name: &str| {
        let p = pods
            .iter()
            .position(|p| p["metadata"]["name"] == name)
            .unwrap();
        format!("10.244.0.{}", p + 1)
    };

    let calls = rig.calls();
    let args: Vec<&str> = calls.iter().map(|(_, a)| a.as_str()).collect();
    let find = |prefix: &str| {
        args.iter()
            .position(|a| a.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `kubectl {prefix}` in {args:#?}"))
    };
    // Policies: created, then replaced (same name), templates filled in with pod IPs.
    let creates: Vec<usize> = (0..args.len())
        .filter(|i| args[*i] == "create -f -")
        .collect();
    // 2 namespaces, 3 pods, 2 policies (one of them refused).
    assert_eq!(creates.len(), 7, "{args:#?}");
    let first_policy = rig.stdin_of(&calls[creates[4]].0);
    assert_eq!(first_policy["metadata"]["name"], "p");
    assert_eq!(
        first_policy["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
        format!("{}/32", ip_of("b"))
    );
    let replace = find("replace -f -");
    let replaced = rig.stdin_of(&calls[replace].0);
    assert_eq!(
        replaced["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
        "10.244.0.0/24"
    );
    let ns = rig.stdin_of(&calls[creates[0]].0);
    assert_eq!(ns["metadata"]["labels"][RUN_LABEL], "0000000000aa");
    assert_eq!(
        find("get nodes -o json"),
        args.iter()
            .rposition(|a| a.starts_with("get nodes"))
            .unwrap()
    );

    let label_pod = find("label --overwrite pod -n kx a tier=front app-");
    let label_ns = find("label --overwrite namespace ky team=b");
    let probe_b = find(&format!(
        "exec -n ky b -c cont-53-udp -- /agnhost connect {}:80 --timeout=1s --protocol=tcp",
        ip_of("a")
    ));
    find("exec -n ky c -c cont-80-tcp -- /agnhost connect");
    let delete_pod = find("delete pod -n ky c --wait=true");
    let delete_policy = find("delete networkpolicy -n kx p --wait=true");
    let delete_ns = find("delete namespace --ignore-not-found --wait=true");
    assert!(replace < label_pod && label_pod < label_ns && label_ns < probe_b);
    assert!(probe_b < delete_pod && delete_pod < delete_policy && delete_policy < delete_ns);
    assert!(args[delete_ns].ends_with(" kx ky"), "{}", args[delete_ns]);
    assert_eq!(delete_ns, args.len() - 1, "kubectl ran after the teardown");

    assert_eq!(rig.namespace_names(), ["default"]);
    assert!(rig.server.list(Kind::Pod, None).is_empty());
    assert!(rig.server.list(Kind::NetworkPolicy, None).is_empty());
}

#[test]
fn api_validation_scenarios_pass_through_kubectl() {
    let Some(rig) = Rig::start("apival") else {
        return;
    };
    let opts = rig.options();
    let scenarios: Vec<Scenario> = all_scenarios()
        .into_iter()
        .filter(|s| s.id.contains("api-validation"))
        .collect();
    // NetworkPolicy's three and ClusterNetworkPolicy's (cluster-scoped, through the CRD).
    assert_eq!(scenarios.len(), 4);
    for s in &scenarios {
        let r = run_scenario(s, &opts);
        assert!(r.passed, "{}:\n{}", s.id, r.report);
        assert_eq!(rig.namespace_names(), ["default"], "after {}", s.id);
    }
    // Each rejected policy reached the API (and was refused there, not by kubectl).
    let refused = rig
        .calls()
        .iter()
        .filter(|(_, a)| a == "create -f -")
        .count();
    assert!(refused > 10, "only {refused} creates");
}

#[test]
fn an_existing_namespace_is_refused_and_left_alone() {
    let Some(rig) = Rig::start("exists") else {
        return;
    };
    rig.server
        .create(
            Kind::Namespace,
            json!({"metadata": {"name": "y", "labels": {"owner": "someone-else"}}}),
        )
        .unwrap();
    // Namespaces x, y, z: x is made, y exists, so the scenario stops and x is removed.
    let s = all_scenarios()
        .into_iter()
        .find(|s| {
            s.model
                .namespaces
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                == ["x", "y", "z"]
        })
        .expect("a scenario with namespaces x, y, z");
    let r = run_scenario(&s, &rig.options());
    assert!(!r.passed);
    assert!(
        r.report.contains("namespace \"y\" already exists"),
        "{}",
        r.report
    );
    assert_eq!(r.probes, 0);
    let y = rig
        .server
        .get(Kind::Namespace, None, "y")
        .expect("y is still there");
    assert_eq!(y["metadata"]["labels"]["owner"], "someone-else");
    assert!(y["metadata"]["labels"].get(RUN_LABEL).is_none());
    let mut names = rig.namespace_names();
    names.sort();
    assert_eq!(names, ["default", "y"]);
}
