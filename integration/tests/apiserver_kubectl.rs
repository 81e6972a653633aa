//! The real `kubectl` (v1.32 on these machines) against the API stand-in: discovery, tables,
//! `-o json/yaml`, create/replace/label/delete, `get --watch`, and the 422 of an invalid
//! policy as kubectl prints it. Skipped (with a note) where kubectl is not installed.

use palisade_integration::apiserver::{ApiServer, ApiServerConfig, Kind};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn kubectl_path() -> Option<PathBuf> {
    ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("palisade-apiserver-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    /// kubectl keeps a discovery cache; one per test run so runs do not share it.
    cache: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=20s")
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubectl")
    }

    /// Run, require success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn setup(tag: &str) -> Option<(ApiServer, Kubectl, Scratch)> {
    setup_with(tag, ApiServerConfig::default())
}

fn setup_with(tag: &str, config: ApiServerConfig) -> Option<(ApiServer, Kubectl, Scratch)> {
    let Some(binary) = kubectl_path() else {
        eprintln!("kubectl is not installed: skipping the kubectl test");
        return None;
    };
    let scratch = Scratch::new(tag);
    let server = ApiServer::start_in_thread("127.0.0.1:0".parse().unwrap(), config)
        .expect("start the stand-in");
    let kubeconfig = scratch.0.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let kubectl = Kubectl {
        binary,
        kubeconfig,
        cache: scratch.0.join("cache"),
    };
    Some((server, kubectl, scratch))
}

const NAMESPACE_AND_POLICY: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: kt
  labels:
    team: a
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: kt
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: a
    ports:
    - port: 80
";

const POLICY_REPLACED: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: kt
spec:
  podSelector:
    matchLabels:
      app: api
  ingress:
  - ports:
    - port: 8080
      protocol: UDP
";

const POLICY_INVALID: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad-range
  namespace: kt
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 9000
      endPort: 8000
";

fn get_json(kubectl: &Kubectl, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl.ok(&all)).expect("kubectl -o json prints JSON")
}

#[test]
fn kubectl_create_get_label_replace_delete() {
    let Some((server, kubectl, scratch)) = setup("crud") else {
        return;
    };
    let version = kubectl.ok(&["version", "-o", "json"]);
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["minor"], "32");

    let manifest = scratch.file("ns-and-policy.yaml", NAMESPACE_AND_POLICY);
    let out = kubectl.ok(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(out.contains("namespace/kt created"), "{out}");
    assert!(
        out.contains("networkpolicy.networking.k8s.io/allow-web created"),
        "{out}"
    );

    // Tables.
    let out = kubectl.ok(&["get", "namespaces"]);
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS") && header.contains("AGE"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("kt ") && l.contains("Active")),
        "{out}"
    );
    let out = kubectl.ok(&["get", "netpol", "-n", "kt"]);
    assert!(
        out.lines().next().unwrap().contains("POD-SELECTOR"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("allow-web") && l.contains("app=web")),
        "{out}"
    );

    // -o json / yaml round-trip what was sent.
    let policy = get_json(&kubectl, &["get", "networkpolicy", "allow-web", "-n", "kt"]);
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], 80);
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["app"], "web");
    let yaml = kubectl.ok(&[
        "get",
        "networkpolicies.networking.k8s.io",
        "allow-web",
        "-n",
        "kt",
        "-o",
        "yaml",
    ]);
    assert!(
        yaml.contains("kind: NetworkPolicy") && yaml.contains("team: a"),
        "{yaml}"
    );
    let ns = get_json(&kubectl, &["get", "ns", "kt"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "kt"
    );

    // label: set, overwrite, remove.
    kubectl.ok(&["label", "namespace", "kt", "env=prod"]);
    kubectl.ok(&["label", "namespace", "kt", "team=b", "--overwrite"]);
    kubectl.ok(&["label", "namespace", "kt", "env-"]);
    let labels = &server.get(Kind::Namespace, None, "kt").unwrap()["metadata"]["labels"];
    assert_eq!(
        labels,
        &json!({"kubernetes.io/metadata.name": "kt", "team": "b"})
    );

    // replace -f.
    let replaced = scratch.file("replaced.yaml", POLICY_REPLACED);
    let out = kubectl.ok(&["replace", "-f", replaced.to_str().unwrap()]);
    assert!(out.contains("replaced"), "{out}");
    let stored = server
        .get(Kind::NetworkPolicy, Some("kt"), "allow-web")
        .unwrap();
    assert_eq!(
        stored["spec"]["ingress"][0]["ports"][0],
        json!({"port": 8080, "protocol": "UDP"})
    );
    assert!(stored["spec"]["ingress"][0].get("from").is_none());

    // Pods (created by the harness) in tables, wide.
    server
        .create(
            Kind::Pod,
            json!({"metadata": {"namespace": "kt", "name": "web-1", "labels": {"app": "web"}},
                   "spec": {"nodeName": "node-1", "containers": [{"name": "main"}]},
                   "status": {"phase": "Running", "podIP": "10.244.1.7"}}),
        )
        .unwrap();
    let out = kubectl.ok(&["get", "pods", "-n", "kt", "-o", "wide"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("web-1"))
        .expect("pod row");
    assert!(
        row.contains("Running") && row.contains("10.244.1.7") && row.contains("node-1"),
        "{out}"
    );
    let out = kubectl.ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        "app=web",
        "--field-selector",
        "spec.nodeName=node-1",
    ]);
    assert!(out.contains("web-1"), "{out}");

    // delete.
    let out = kubectl.ok(&["delete", "netpol", "allow-web", "-n", "kt"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(server
        .get(Kind::NetworkPolicy, Some("kt"), "allow-web")
        .is_none());
    let out = kubectl.run(&["get", "netpol", "allow-web", "-n", "kt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn kubectl_falls_back_to_legacy_discovery() {
    let config = ApiServerConfig {
        aggregated_discovery: false,
        ..ApiServerConfig::default()
    };
    let Some((server, kubectl, _scratch)) = setup_with("legacy", config) else {
        return;
    };
    server
        .create(
            Kind::Namespace,
            json!({"metadata": {"name": "kt", "labels": {"team": "a"}}}),
        )
        .unwrap();
    server
        .create(
            Kind::NetworkPolicy,
            json!({"metadata": {"name": "p", "namespace": "kt"}, "spec": {"podSelector": {}}}),
        )
        .unwrap();
    let out = kubectl.ok(&["get", "netpol", "-A"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("kt") && l.contains(" p ")),
        "{out}"
    );
    kubectl.ok(&["label", "ns", "kt", "team=b", "--overwrite"]);
    assert_eq!(
        server.get(Kind::Namespace, None, "kt").unwrap()["metadata"]["labels"]["team"],
        "b"
    );
}

#[test]
fn kubectl_prints_the_422_of_an_invalid_policy() {
    let Some((server, kubectl, scratch)) = setup("invalid") else {
        return;
    };
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "kt"}}))
        .unwrap();
    let manifest = scratch.file("invalid.yaml", POLICY_INVALID);
    let out = kubectl.run(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        // kubectl rewords the Status from its causes, as it does against a real cluster.
        stderr.contains("The NetworkPolicy \"bad-range\" is invalid")
            && stderr.contains("spec.ingress[0].ports[0].endPort: Invalid value: 9000: must be greater than or equal to `port`"),
        "{stderr}"
    );
    assert!(server
        .get(Kind::NetworkPolicy, Some("kt"), "bad-range")
        .is_none());
}

#[test]
fn kubectl_get_watch_streams_changes() {
    let Some((server, kubectl, _scratch)) = setup("watch") else {
        return;
    };
    server
        .create(Kind::Namespace, json!({"metadata": {"name": "kt"}}))
        .unwrap();
    let policy = |name: &str| json!({"metadata": {"name": name, "namespace": "kt"}, "spec": {"podSelector": {}}});
    server.create(Kind::NetworkPolicy, policy("first")).unwrap();
    let mut child = kubectl
        .command(&["get", "netpol", "-n", "kt", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl get --watch");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    let found = line.starts_with(needle);
                    seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!("kubectl --watch did not print {needle:?}; saw {seen:#?}"),
            }
        }
    };
    wait_for("NAME");
    wait_for("first");
    server
        .create(Kind::NetworkPolicy, policy("second"))
        .unwrap();
    wait_for("second");
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(
        !stderr.contains("error"),
        "kubectl --watch stderr: {stderr}"
    );
}

#[test]
fn the_binary_writes_a_kubeconfig_kubectl_uses() {
    let Some(binary) = kubectl_path() else {
        eprintln!("kubectl is not installed: skipping");
        return;
    };
    let scratch = Scratch::new("binary");
    let kubeconfig = scratch.0.join("kubeconfig");
    let mut server = Command::new(env!("CARGO_BIN_EXE_palisade-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn palisade-apiserver");
    /// Kill the server however the test ends.
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first_line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first_line)
        .expect("read the listening line");
    let _guard = KillOnDrop(&mut server);
    let url = first_line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let config = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(config.contains(&format!("server: {url}")), "{config}");
    let kubectl = Kubectl {
        binary,
        kubeconfig: kubeconfig.clone(),
        cache: scratch.0.join("cache"),
    };
    let mut child = kubectl
        .command(&["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: from-stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = kubectl.ok(&["get", "ns", "-o", "name"]);
    assert!(
        names.lines().any(|l| l == "namespace/from-stdin"),
        "{names}"
    );
}

const CLUSTER_POLICY: &str = "\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: deny-ops
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces:
      matchLabels:
        team: a
  ingress:
  - name: no-ops
    action: Deny
    from:
    - namespaces:
        matchLabels:
          team: ops
";

const CLUSTER_POLICY_INVALID: &str = "\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: bad-tier
spec:
  tier: Developer
  priority: 10
  subject:
    namespaces: {}
";

/// ClusterNetworkPolicy through kubectl: create, the CRD's printer columns, the short name,
/// replace, the 422 of an invalid one, delete.
#[test]
fn kubectl_serves_cluster_network_policies() {
    let Some((server, kubectl, scratch)) = setup("cnp") else {
        return;
    };
    let manifest = scratch.file("cnp.yaml", CLUSTER_POLICY);
    let out = kubectl.ok(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(
        out.contains("clusternetworkpolicy.policy.networking.k8s.io/deny-ops created"),
        "{out}"
    );
    let out = kubectl.ok(&["get", "clusternetworkpolicies"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TIER", "PRIORITY", "AGE"], "{out}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["deny-ops", "Admin", "10"], "{out}");
    let by_short_name = kubectl.ok(&["get", "cnp", "deny-ops", "-o", "json"]);
    let stored: Value = serde_json::from_str(&by_short_name).unwrap();
    assert_eq!(stored["spec"]["ingress"][0]["name"], "no-ops");

    let replaced = scratch.file(
        "cnp-replaced.yaml",
        &CLUSTER_POLICY.replace("priority: 10", "priority: 30"),
    );
    let out = kubectl.ok(&["replace", "-f", replaced.to_str().unwrap()]);
    assert!(out.contains("replaced"), "{out}");
    assert_eq!(
        server
            .get(Kind::ClusterNetworkPolicy, None, "deny-ops")
            .unwrap()["spec"]["priority"],
        30
    );

    let invalid = scratch.file("cnp-invalid.yaml", CLUSTER_POLICY_INVALID);
    let out = kubectl.run(&["create", "-f", invalid.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("The ClusterNetworkPolicy \"bad-tier\" is invalid")
            && stderr.contains(
                "spec.tier: Unsupported value: \"Developer\": supported values: \"Admin\", \"Baseline\""
            ),
        "{stderr}"
    );

    let out = kubectl.ok(&["delete", "clusternetworkpolicy", "deny-ops"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(server
        .get(Kind::ClusterNetworkPolicy, None, "deny-ops")
        .is_none());
}
