//! The agent against the kube API stand-in (`palisade_integration::apiserver`): the real
//! kube-rs list/watch path, the CNI socket and `/status`, with the in-memory
//! `FakeDataplane` (no root needed).

use palisade_common::{AgentRequest, AgentResponse};
use palisade_integration::apiserver::{ApiServer, Kind};
use palisade_policy::agent::{self, AgentConfig, NewPods, RunningAgent, SyncTuning};
use palisade_policy::model::ObjectKey;
use palisade_policy::nft::FakeDataplane;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// How long a step that takes milliseconds on an idle machine (a watch event folded, a sync,
/// an answer on the CNI socket) may take on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);

struct TestAgent {
    running: RunningAgent,
    dir: PathBuf,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.running.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestAgent {
    async fn start(api: &ApiServer, node: &str) -> TestAgent {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "palisade-agent-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let choice = palisade_policy::kube::config::KubeconfigChoice {
            path: Some(kubeconfig.clone()),
            context: None,
        };
        let client = palisade_policy::kube::config::client(&choice)
            .await
            .unwrap()
            .0;
        let config = AgentConfig {
            node_name: node.into(),
            kubeconfig: Some(kubeconfig),
            cni_socket: dir.join("run/agent.sock"),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            debug_socket: dir.join("run/debug.sock"),
            new_pods: NewPods::FailClosed,
            nflog_group: None,
            deny_log_rate: 10,
            manage_routes: false,
            overlay: Default::default(),
            vxlan: Default::default(),
            masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
            table: "palisade".into(),
            nft: "nft".into(),
            sync: SyncTuning::default(),
        };
        let running = agent::start(config, client, Box::new(FakeDataplane::new("palisade")))
            .await
            .unwrap();
        TestAgent { running, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/agent.sock")
    }

    async fn status(&self) -> Value {
        serde_json::from_str(&debug_get(&self.running.debug_socket, "/status").await.1).unwrap()
    }

    /// Wait until `/status` satisfies `pred` (the way the scenario runner waits).
    async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status().await;
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every kind's programmed resourceVersion is at least the server's current one
    /// for `kind`.
    async fn wait_programmed(&self, kind: &str, rv: u64) -> Value {
        self.wait_status(&format!("{kind} >= {rv}"), |s| programmed(s, kind) >= rv)
            .await
    }

    /// The names of the ClusterNetworkPolicies the agent compiles from.
    fn cluster_policies(&self) -> Vec<String> {
        let c = self.running.compiler.lock().unwrap();
        c.state().cluster_network_policies.keys().cloned().collect()
    }

    fn has_pod(&self, ns: &str, name: &str) -> bool {
        let c = self.running.compiler.lock().unwrap();
        c.state().pods.contains_key(&ObjectKey::new(ns, name))
    }

    fn pod_ips(&self, ns: &str, name: &str) -> Vec<String> {
        let c = self.running.compiler.lock().unwrap();
        c.state()
            .pods
            .get(&ObjectKey::new(ns, name))
            .map(|p| p.ips.iter().map(|i| i.to_string()).collect())
            .unwrap_or_default()
    }
}

fn programmed(s: &Value, kind: &str) -> u64 {
    s["programmedResourceVersions"][kind]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_over(tokio::net::TcpStream::connect(addr).await.unwrap(), path).await
}

/// GET on the agent's debug socket.
async fn debug_get(socket: &std::path::Path, path: &str) -> (u16, String) {
    get_over(tokio::net::UnixStream::connect(socket).await.unwrap(), path).await
}

/// HTTP/1.0 GET on a connected stream: the body ends at EOF.
async fn get_over(
    mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    path: &str,
) -> (u16, String) {
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn rv_of(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn pod(ns: &str, name: &str, node: &str, ip: Option<&str>, labels: Value) -> Value {
    let mut p = json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 80}]}]},
    });
    if let Some(ip) = ip {
        p["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]});
    }
    p
}

fn seed(api: &ApiServer) {
    api.create(
        Kind::Namespace,
        json!({"metadata": {"name": "x", "labels": {"team": "a"}}}),
    )
    .unwrap();
    api.create(
        Kind::Node,
        json!({"metadata": {"name": "node-1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}}),
    )
    .unwrap();
    api.create(
        Kind::Pod,
        pod(
            "x",
            "a",
            "node-1",
            Some("10.244.1.2"),
            json!({"app": "web"}),
        ),
    )
    .unwrap();
    api.create(
        Kind::Pod,
        pod("x", "b", "node-1", Some("10.244.1.3"), json!({"app": "db"})),
    )
    .unwrap();
    api.create(
        Kind::NetworkPolicy,
        json!({"metadata": {"namespace": "x", "name": "deny-all"}, "spec": {"podSelector": {}}}),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_programs_the_cluster_and_reports_programmed_versions() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    seed(&api);
    let agent = TestAgent::start(&api, "node-1").await;
    let rv = api.resource_version();
    let s = agent.wait_status("ready", |s| s["ready"] == true).await;
    assert_eq!(s["node"], "node-1");
    // Ready means the listed state is programmed: every kind at least at its list version.
    assert!(programmed(&s, "pods") >= rv - 1, "{s}");
    assert_eq!(http_get(agent.running.metrics_addr, "/readyz").await.0, 200);
    assert_eq!(
        http_get(agent.running.metrics_addr, "/healthz").await.0,
        200
    );
    assert!(agent.has_pod("x", "a") && agent.has_pod("x", "b"));
    assert_eq!(
        agent.pod_ips("x", "a"),
        vec!["10.244.1.2"],
        "status.podIPs is read"
    );
    {
        let c = agent.running.compiler.lock().unwrap();
        assert_eq!(
            c.state().nodes["node-1"].pod_cidrs.len(),
            1,
            "spec.podCIDRs is read"
        );
    }
    assert!(s["lastSync"]["durationMs"].as_f64().is_some());

    // A label change is programmed and reported with its own resourceVersion.
    let changed = api
        .patch_labels(Kind::Pod, Some("x"), "a", &[("app", Some("api"))])
        .unwrap();
    agent.wait_programmed("pods", rv_of(&changed)).await;
    {
        let c = agent.running.compiler.lock().unwrap();
        assert_eq!(
            c.state().pods[&ObjectKey::new("x", "a")].labels["app"],
            "api"
        );
    }
    // A deletion too.
    let deleted = api.delete(Kind::Pod, Some("x"), "b").unwrap();
    agent.wait_programmed("pods", rv_of(&deleted)).await;
    assert!(!agent.has_pod("x", "b"));
    // Policies and namespaces.
    let p = api
        .create(
            Kind::NetworkPolicy,
            json!({"metadata": {"namespace": "x", "name": "allow-web"},
                   "spec": {"podSelector": {"matchLabels": {"app": "api"}},
                            "ingress": [{"ports": [{"port": "http"}]}]}}),
        )
        .unwrap();
    agent.wait_programmed("networkpolicies", rv_of(&p)).await;
    assert_eq!(
        agent
            .running
            .compiler
            .lock()
            .unwrap()
            .state()
            .network_policies
            .len(),
        2
    );
    let ns = api
        .patch_labels(Kind::Namespace, None, "x", &[("team", Some("b"))])
        .unwrap();
    agent.wait_programmed("namespaces", rv_of(&ns)).await;

    let metrics = http_get(agent.running.metrics_addr, "/metrics").await.1;
    assert!(
        metrics.contains("palisade_sync_duration_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("palisade_event_to_programmed_seconds_bucket"));
    assert!(metrics.contains("palisade_ready 1"));
    // Metrics and probes on the node's port; what names pods and policies only on the
    // node-local socket (mode 0600).
    let (code, body) = http_get(agent.running.metrics_addr, "/debug/state").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("debug socket"), "{body}");
    assert_eq!(http_get(agent.running.metrics_addr, "/status").await.0, 404);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&agent.running.debug_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, body) = debug_get(&agent.running.debug_socket, "/debug/state").await;
    assert_eq!(code, 200);
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["pods"].as_array().unwrap().len(), 1, "{state}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_and_expired_history_converge_by_relisting() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    seed(&api);
    let agent = TestAgent::start(&api, "node-1").await;
    agent.wait_status("ready", |s| s["ready"] == true).await;

    // Watches dropped mid-stream: resumed from the last version, nothing lost.
    api.faults().drop_watches();
    let c = api
        .create(
            Kind::Pod,
            pod("x", "c", "node-1", Some("10.244.1.4"), json!({"app": "c"})),
        )
        .unwrap();
    agent.wait_programmed("pods", rv_of(&c)).await;
    assert!(agent.has_pod("x", "c"));

    // The API refuses connections while objects change and the history is compacted: the
    // resumed watch gets 410 Gone, the agent relists and notices the deletion it missed.
    api.faults().refuse_connections(Duration::from_secs(2));
    api.delete(Kind::Pod, Some("x"), "a").unwrap();
    let d = api
        .create(
            Kind::Pod,
            pod("x", "d", "node-1", Some("10.244.1.5"), json!({"app": "d"})),
        )
        .unwrap();
    api.faults().expire_history();
    // Meanwhile the last programmed state stays (here: the agent stays ready).
    let status = agent.status().await;
    assert_eq!(status["ready"], true);
    assert_eq!(
        status["masquerade"],
        json!({"ipv4": true, "ipv6": true, "nonMasqueradeCIDRs": [], "clusterCIDRs": []})
    );
    agent.wait_programmed("pods", rv_of(&d)).await;
    assert!(
        !agent.has_pod("x", "a"),
        "deletion missed during the outage must be found by the relist"
    );
    assert!(agent.has_pod("x", "d"));
    let metrics = http_get(agent.running.metrics_addr, "/metrics").await.1;
    let watch_errors: u64 = metrics
        .lines()
        .find(|l| l.starts_with("palisade_errors_total{kind=\"watch\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(watch_errors > 0, "the outage is counted: {metrics}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_that_do_not_decode_are_reported_and_skipped() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    seed(&api);
    // A pod whose containerPort is a string: the stand-in (like the real server for some
    // client/server skews) stores it; the slim type cannot parse it.
    let mut bad = pod(
        "x",
        "bad",
        "node-1",
        Some("10.244.1.9"),
        json!({"app": "bad"}),
    );
    bad["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("eighty");
    api.create(Kind::Pod, bad).unwrap();
    let agent = TestAgent::start(&api, "node-1").await;
    let s = agent.wait_status("ready", |s| s["ready"] == true).await;
    let malformed = s["malformedObjects"].as_array().unwrap();
    assert_eq!(malformed.len(), 1, "{s}");
    assert_eq!(malformed[0]["key"], "x/bad");
    assert!(
        agent.has_pod("x", "a"),
        "the rest of the list is programmed"
    );
    assert!(!agent.has_pod("x", "bad"));
    // A later good version of it is taken and the report clears.
    let fixed = api
        .update(
            Kind::Pod,
            pod(
                "x",
                "bad",
                "node-1",
                Some("10.244.1.9"),
                json!({"app": "bad"}),
            ),
        )
        .unwrap();
    let s = agent.wait_programmed("pods", rv_of(&fixed)).await;
    assert!(agent.has_pod("x", "bad"));
    assert_eq!(s["malformedObjects"].as_array().unwrap().len(), 0, "{s}");
    api.shutdown().await;
}

async fn cni_request(socket: &std::path::Path, req: &AgentRequest) -> AgentResponse {
    let s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_string(req).unwrap();
    line.push('\n');
    w.write_all(line.as_bytes()).await.unwrap();
    let mut reply = String::new();
    BufReader::new(r).read_line(&mut reply).await.unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_announcements_are_answered_once_programmed() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    seed(&api);
    let agent = TestAgent::start(&api, "node-1").await;
    agent.wait_status("ready", |s| s["ready"] == true).await;
    let mode = std::fs::metadata(agent.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let status = cni_request(&agent.socket(), &AgentRequest::Status).await;
    assert!(status.ok && status.ready);

    // The pod exists but the kubelet has not published its IP: the announced IP is merged.
    api.create(
        Kind::Pod,
        pod("x", "early", "node-1", None, json!({"app": "early"})),
    )
    .unwrap();
    let added = |name: &str, ip: &str, cid: &str| AgentRequest::PodAdded {
        namespace: "x".into(),
        name: name.into(),
        container_id: cid.into(),
        host_ifname: "pal0000000001".into(),
        ips: vec![ip.parse().unwrap()],
    };
    // Wait until the agent has the pod, so this exercises the "known" path.
    let deadline = Instant::now() + WAIT;
    while !agent.has_pod("x", "early") {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = cni_request(&agent.socket(), &added("early", "10.244.1.20", "c-early")).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(agent.pod_ips("x", "early"), vec!["10.244.1.20"]);

    // Announced before the watch delivers the pod: the answer waits for it.
    let socket = agent.socket();
    let pending =
        tokio::spawn(
            async move { cni_request(&socket, &added("late", "10.244.1.21", "c-late")).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "answered before the pod was known");
    api.create(
        Kind::Pod,
        pod("x", "late", "node-1", None, json!({"app": "late"})),
    )
    .unwrap();
    let r = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(agent.pod_ips("x", "late"), vec!["10.244.1.21"]);

    // CNI DEL drops the announced IPs again (the status still has none).
    let r = cni_request(
        &agent.socket(),
        &AgentRequest::PodDeleted {
            container_id: "c-late".into(),
            ips: vec![],
        },
    )
    .await;
    assert!(r.ok);
    let deadline = Instant::now() + WAIT;
    while !agent.pod_ips("x", "late").is_empty() {
        assert!(Instant::now() < deadline, "announced IPs not dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Garbage on the socket gets an error line, not a crash.
    let s = tokio::net::UnixStream::connect(agent.socket())
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(b"{\"op\":\"nope\"}\n").await.unwrap();
    let mut reply = String::new();
    BufReader::new(r).read_line(&mut reply).await.unwrap();
    let reply: AgentResponse = serde_json::from_str(&reply).unwrap();
    assert!(!reply.ok && reply.error.unwrap().contains("bad request"));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_cni_renders_the_node_conflist_and_uninstall_removes_it() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    seed(&api);
    let dir = std::env::temp_dir().join(format!("palisade-agent-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    api.write_kubeconfig(&dir.join("kubeconfig")).unwrap();
    let template = json!({"cniVersion": "1.0.0", "name": "palisade", "plugins": [
        {"type": "palisade", "ipam": {"ranges": "__PALISADE_POD_CIDR_RANGES__"}}]});
    let template = serde_json::to_string(&template).unwrap();
    std::fs::write(dir.join("template.json"), template).unwrap();
    std::fs::write(dir.join("plugin"), b"#!/bin/sh\n").unwrap();
    let exe = env!("CARGO_BIN_EXE_palisade-agent");
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .arg("install-cni")
            .args(["--node-name", "node-1", "--kubeconfig"])
            .arg(d.join("kubeconfig"))
            .arg("--cni-bin-dir")
            .arg(d.join("bin"))
            .arg("--cni-conf-dir")
            .arg(d.join("conf"))
            .arg("--template")
            .arg(d.join("template.json"))
            .arg("--plugin-binary")
            .arg(d.join("plugin"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conflist = std::fs::read_to_string(dir.join("conf/10-palisade.conflist")).unwrap();
    assert!(conflist.contains("10.244.1.0/24"), "{conflist}");
    assert!(dir.join("bin/palisade").exists());
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .arg("uninstall")
            .arg("--cni-bin-dir")
            .arg(d.join("bin"))
            .arg("--cni-conf-dir")
            .arg(d.join("conf"))
            // `false` as nft: "no such table", so nothing in the kernel is touched here.
            .args(["--nft", "false"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.join("conf/10-palisade.conflist").exists());
    assert!(!dir.join("bin/palisade").exists());
    let _ = std::fs::remove_dir_all(&dir);
    api.shutdown().await;
}

/// ClusterNetworkPolicies: watched, enforced, reported with their resourceVersion; one the
/// API accepts but whose selector has no meaning (the CRD does not check operators) is
/// reported invalid in `/status` and skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policies_are_watched_and_invalid_ones_reported() {
    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    seed(&api);
    let agent = TestAgent::start(&api, "node-1").await;
    agent.wait_status("ready", |s| s["ready"] == true).await;
    let cnp = api
        .create(
            Kind::ClusterNetworkPolicy,
            json!({"metadata": {"name": "admin-deny"},
                   "spec": {"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
                            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}),
        )
        .unwrap();
    agent
        .wait_programmed("clusternetworkpolicies", rv_of(&cnp))
        .await;
    assert_eq!(agent.cluster_policies(), ["admin-deny"]);
    let bad = api
        .create(
            Kind::ClusterNetworkPolicy,
            json!({"metadata": {"name": "bad-operator"},
                   "spec": {"tier": "Baseline", "priority": 5,
                            "subject": {"pods": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}}},
                            "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}}),
        )
        .unwrap();
    let s = agent
        .wait_programmed("clusternetworkpolicies", rv_of(&bad))
        .await;
    let invalid = &s["invalidPolicies"];
    assert_eq!(invalid.as_array().unwrap().len(), 1, "{s:#}");
    assert_eq!(invalid[0]["kind"], "ClusterNetworkPolicy");
    assert_eq!(invalid[0]["name"], "bad-operator");
    assert!(invalid[0]["errors"][0]
        .as_str()
        .unwrap()
        .contains("spec.subject.pods.podSelector.matchExpressions[0].operator"));
    assert_eq!(
        agent.cluster_policies(),
        ["admin-deny"],
        "the invalid one skipped"
    );
    let (_, body) = debug_get(&agent.running.debug_socket, "/debug/state").await;
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state["clusternetworkpolicies"][0]["metadata"]["name"],
        "admin-deny"
    );
    let gone = api
        .delete(Kind::ClusterNetworkPolicy, None, "admin-deny")
        .unwrap();
    agent
        .wait_programmed("clusternetworkpolicies", rv_of(&gone))
        .await;
    assert!(agent.cluster_policies().is_empty());
    api.shutdown().await;
}

/// A cluster without the ClusterNetworkPolicy CRD: the list is a 404, which means "none";
/// the agent is ready and enforces everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cluster_network_policy_crd_means_none() {
    let config = palisade_integration::apiserver::ApiServerConfig {
        cluster_network_policy_crd: false,
        ..Default::default()
    };
    let api = ApiServer::start_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    seed(&api);
    let agent = TestAgent::start(&api, "node-1").await;
    let s = agent.wait_status("ready", |s| s["ready"] == true).await;
    assert_eq!(s["lastError"], Value::Null, "{s:#}");
    assert!(agent.has_pod("x", "a"));
    let p = api
        .create(
            Kind::NetworkPolicy,
            json!({"metadata": {"namespace": "x", "name": "more"}, "spec": {"podSelector": {}}}),
        )
        .unwrap();
    agent.wait_programmed("networkpolicies", rv_of(&p)).await;
    assert!(agent.cluster_policies().is_empty());
    api.shutdown().await;
}
