//! The real agent binary in a node network namespace with the real `nft`, pods wired by hand
//! the way the CNI plugin wires them (routed veth, node side named `pal…`), and the kube API
//! stand-in listening inside the node namespace. Root only; every namespace, link and
//! process is removed at the end (the `TestNetns` fixture kills what runs inside).

use palisade_common::{host_veth_name, AgentRequest, AgentResponse};
use palisade_integration::apiserver::{ApiServer, Kind};
use palisade_testutil::{kernel_tests_enabled, TestNetns};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce(&ApiServer) + Send>;

/// The API stand-in, bound inside a network namespace: its listener is created on a thread
/// that entered the namespace (`palisade_kernel::Netns::spawn`: it runs its own
/// current-thread runtime and nothing else), and every call goes through that thread.
struct ApiInNetns {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<Result<(), palisade_kernel::NetnsError>>>,
    url: String,
}

impl ApiInNetns {
    fn start(netns: &Path) -> ApiInNetns {
        let ns = palisade_kernel::Netns::open(netns).unwrap();
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let api = ApiServer::start("127.0.0.1:0".parse().unwrap())
                        .await
                        .unwrap();
                    ready_tx.send(api.url()).unwrap();
                    while let Some(job) = jobs_rx.recv().await {
                        job(&api);
                    }
                    api.shutdown().await;
                });
            })
            .unwrap();
        let url = ready_rx.recv().unwrap();
        ApiInNetns {
            jobs: Some(jobs_tx),
            thread: Some(thread),
            url,
        }
    }

    fn run<R: Send + 'static>(&self, f: impl FnOnce(&ApiServer) -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move |api| {
                let _ = tx.send(f(api));
            }))
            .unwrap();
        rx.recv().unwrap()
    }

    fn create(&self, kind: Kind, obj: Value) -> u64 {
        let v = self.run(move |api| api.create(kind, obj)).unwrap();
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn delete(&self, kind: Kind, ns: Option<&'static str>, name: &'static str) -> u64 {
        let v = self.run(move |api| api.delete(kind, ns, name)).unwrap();
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for ApiInNetns {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GET on the agent's debug socket (a unix socket: reachable from any network namespace).
fn debug_get(socket: &std::path::Path, path: &str) -> Option<(u16, String)> {
    let (code, mut body) = palisade_policy::agent::http::unix_get(socket, path).ok()?;
    let mut text = String::new();
    body.read_to_string(&mut text).ok()?;
    Some((code, text))
}

struct NodeFixture {
    node: TestNetns,
    api: ApiInNetns,
    dir: PathBuf,
    agent: Option<Child>,
    port: u16,
    pods: Vec<TestNetns>,
    servers: Vec<Child>,
}

const NODE: &str = "node-1";

/// How long a condition may take on a loaded CI machine (they take milliseconds when idle).
const WAIT: Duration = Duration::from_secs(30);

impl NodeFixture {
    fn new(tag: &str) -> NodeFixture {
        let node = TestNetns::new(&format!("{tag}-node")).unwrap();
        node.sh("sysctl -qw net.ipv4.ip_forward=1").unwrap();
        let api = ApiInNetns::start(node.path());
        let dir =
            std::env::temp_dir().join(format!("palisade-agent-kt-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/index.html"), "hello\n").unwrap();
        let url = api.url.clone();
        std::fs::write(
            dir.join("kubeconfig"),
            palisade_integration::apiserver::kubeconfig_yaml(&url),
        )
        .unwrap();
        api.create(Kind::Namespace, json!({"metadata": {"name": "open"}}));
        api.create(Kind::Namespace, json!({"metadata": {"name": "locked"}}));
        api.create(
            Kind::Node,
            json!({"metadata": {"name": NODE}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
                   "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.1"}]}}),
        );
        // Default deny for ingress in `locked`.
        api.create(
            Kind::NetworkPolicy,
            json!({"metadata": {"namespace": "locked", "name": "default-deny"},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        );
        NodeFixture {
            node,
            api,
            dir,
            agent: None,
            port: 0,
            pods: Vec::new(),
            servers: Vec::new(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn debug_socket(&self) -> PathBuf {
        self.dir.join("debug.sock")
    }

    fn start_agent(&mut self, extra: &[&str]) {
        static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let _ = PORT.compare_exchange(
            0,
            19000 + (std::process::id() % 5000) as u16,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
        self.port = PORT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let listen = format!("127.0.0.1:{}", self.port);
        let mut cmd = self.node.command(env!("CARGO_BIN_EXE_palisade-agent"));
        cmd.args(["run", "--node-name", NODE, "--kubeconfig"])
            .arg(self.dir.join("kubeconfig"))
            .arg("--cni-socket")
            .arg(self.socket())
            .args(["--metrics-listen", &listen, "--log-level", "debug"])
            .arg("--debug-socket")
            .arg(self.debug_socket())
            // Denied-packet logging only where a test asks for it.
            .args(if extra.contains(&"--nflog-group") {
                &[][..]
            } else {
                &["--nflog-group", "0"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.agent = Some(cmd.spawn().unwrap());
    }

    fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // nsenter execs the agent, so this is the agent's own pid.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self) -> Option<Value> {
        let (_, body) = debug_get(&self.debug_socket(), "/status")?;
        serde_json::from_str(&body).ok()
    }

    fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; status {:?}\nagent log:\n{}",
                    self.status(),
                    std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `GET path` on the metrics listener, inside the node's netns: (status code, response).
    /// A plain socket, read to the end (`busybox nc` may exit at its input's end before the
    /// answer arrives).
    fn metrics_get(&self, path: &str) -> (u16, String) {
        let port = self.port;
        let request = format!("GET {path} HTTP/1.0\r\n\r\n");
        let out = self.node.run(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    }

    fn readyz(&self) -> (u16, String) {
        self.metrics_get("/readyz")
    }

    /// `palisade_errors_total{kind="watch"}`: list and watch requests that failed.
    fn watch_errors(&self) -> u64 {
        let (_, body) = self.metrics_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("palisade_errors_total{kind=\"watch\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn wait_ready(&self) {
        self.wait_status("ready", |s| s["ready"] == true);
    }

    fn wait_programmed(&self, kind: &str, rv: u64) {
        self.wait_status(&format!("{kind} >= {rv}"), |s| {
            s["programmedResourceVersions"][kind]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v >= rv)
        });
    }

    /// Wire a pod netns like the CNI plugin does and start a web server in it. Returns the
    /// index into `self.pods`.
    fn wire_pod(&mut self, tag: &str, ip: &str) -> usize {
        let pod = TestNetns::new(tag).unwrap();
        let host_if = host_veth_name(&format!("{}-{tag}", pod.name()), "eth0");
        self.node
            .sh(&format!(
                "ip link add {host_if} type veth peer name eth0 netns {pod} && ip link set {host_if} up",
                pod = pod.name()
            ))
            .unwrap();
        let mac_of = |ns: &TestNetns, dev: &str| {
            ns.sh(&format!("ip -br link show dev {dev}"))
                .unwrap()
                .split_whitespace()
                .nth(2)
                .unwrap()
                .to_string()
        };
        let host_mac = mac_of(&self.node, &host_if);
        pod.sh(&format!(
            "ip link set eth0 up && ip addr add {ip}/32 dev eth0 && \
             ip route add 169.254.1.1 dev eth0 scope link && \
             ip route add default via 169.254.1.1 dev eth0 && \
             ip neigh replace 169.254.1.1 lladdr {host_mac} dev eth0 nud permanent"
        ))
        .unwrap();
        let pod_mac = mac_of(&pod, "eth0");
        self.node
            .sh(&format!(
                "ip route add {ip}/32 dev {host_if} && ip neigh replace {ip} lladdr {pod_mac} dev {host_if} nud permanent"
            ))
            .unwrap();
        let www = self.dir.join("www");
        let server = pod
            .spawn(
                "busybox",
                &["httpd", "-f", "-p", "80", "-h", www.to_str().unwrap()],
            )
            .unwrap();
        self.servers.push(server);
        // Serving before this returns: a check that the pod cannot be reached must not pass
        // only because its server had not bound yet (a loaded machine). Asked on the pod's own
        // loopback, which no node rule sees.
        let deadline = Instant::now() + WAIT;
        while pod
            .run(|| std::net::TcpStream::connect(("127.0.0.1", 80)))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "httpd in {tag} not listening after {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.pods.push(pod);
        self.pods.len() - 1
    }

    /// Create the Pod object (with its IP in the status, as the kubelet would publish it).
    fn create_pod(&self, ns: &str, name: &str, ip: &str) -> u64 {
        self.api.create(
            Kind::Pod,
            json!({"metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
                   "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
                   "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        )
    }

    fn announce(&self, ns: &str, name: &str, ip: &str) -> AgentResponse {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        let req = AgentRequest::PodAdded {
            namespace: ns.into(),
            name: name.into(),
            container_id: format!("cid-{name}"),
            host_ifname: "eth0".into(),
            ips: vec![ip.parse().unwrap()],
        };
        let mut line = serde_json::to_string(&req).unwrap();
        line.push('\n');
        s.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    }

    /// The table and the agent's log, for failure messages.
    fn debug(&self) -> String {
        format!(
            "nft:\n{}\nstatus: {:?}\nagent log:\n{}",
            self.node.sh("nft list ruleset").unwrap_or_default(),
            self.status(),
            std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
        )
    }

    /// Can pod `from` open an HTTP connection to `ip`?
    fn reachable(&self, from: usize, ip: &str) -> bool {
        // busybox wget crashes in these namespaces; a raw HTTP request through nc does not.
        self.pods[from].sh_ok(&format!("{} | grep -q '200 OK'", http_probe(ip)))
    }

    /// Wait (up to [`WAIT`]) until `done` holds; on timeout, fail with `what` and the table
    /// and agent log.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}\n{}",
                self.debug()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until pod `from` gets an answer from `ip` (a path expected open that a loaded
    /// machine may open late).
    fn wait_reachable(&self, from: usize, ip: &str, what: &str) {
        self.wait_for(&format!("{what}: {ip} reachable"), || {
            self.reachable(from, ip)
        });
    }

    /// Wait until the agent knows the pod (its `/debug/state`, the state it compiles from).
    fn wait_known(&self, ns: &str, name: &str) {
        self.wait_for(&format!("the agent knows pod {ns}/{name}"), || {
            debug_get(&self.debug_socket(), "/debug/state")
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|state| {
                    state["pods"].as_array().is_some_and(|pods| {
                        pods.iter().any(|p| {
                            p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name
                        })
                    })
                })
        });
    }

    /// Wait until the agent's log has a line containing `text`, and return that line.
    fn wait_log(&self, text: &str) -> String {
        let mut found = None;
        self.wait_for(&format!("an agent log line with {text:?}"), || {
            let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
            found = log.lines().find(|l| l.contains(text)).map(str::to_string);
            found.is_some()
        });
        found.unwrap()
    }
}

/// A shell pipeline that sends one HTTP request to `ip:80` with a 1 s timeout.
fn http_probe(ip: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 1 {ip} 80")
}

impl Drop for NodeFixture {
    fn drop(&mut self) {
        self.kill_agent();
        for mut s in self.servers.drain(..) {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn new_pods_are_isolated_before_their_first_packet() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut f = NodeFixture::new("kt-first");
    let client = f.wire_pod("kt-first-c", "10.244.1.2");
    f.create_pod("open", "client", "10.244.1.2");
    let web = f.wire_pod("kt-first-w", "10.244.1.3");
    f.create_pod("open", "web", "10.244.1.3");
    // A gated agent: while this file exists it folds changes in but programs nothing.
    let gate = f.dir.join("sync-gate");
    f.start_agent(&["--test-sync-gate", gate.to_str().unwrap()]);
    f.wait_ready();
    assert!(
        f.reachable(client, "10.244.1.3"),
        "control: a programmed pod without policy is reachable\n{}",
        f.debug()
    );
    let _ = web;

    // A new pod, wired and serving, that the agent does not know yet: no packet gets in, in
    // an open namespace as in a default-deny one.
    f.wire_pod("kt-first-n", "10.244.1.4");
    f.wire_pod("kt-first-l", "10.244.1.5");
    assert!(
        !f.reachable(client, "10.244.1.4"),
        "unprogrammed pod reachable (open ns)"
    );
    assert!(
        !f.reachable(client, "10.244.1.5"),
        "unprogrammed pod reachable (locked ns)"
    );
    // The agent learns of the pods but holds the sync that would program them (the file
    // predates the Pod objects, so no sync can have programmed them): still nothing, for as
    // long as the checks take.
    std::fs::write(&gate, "").unwrap();
    f.create_pod("open", "new", "10.244.1.4");
    f.create_pod("locked", "isolated", "10.244.1.5");
    f.wait_known("open", "new");
    f.wait_log("sync held while the test gate file exists");
    for _ in 0..3 {
        assert!(
            !f.reachable(client, "10.244.1.4"),
            "a pod the agent knows but has not programmed is reachable\n{}",
            f.debug()
        );
    }
    std::fs::remove_file(&gate).unwrap();
    // The CNI ADD answer comes once programmed: from then on policy decides.
    let r = f.announce("open", "new", "10.244.1.4");
    assert!(r.ok, "{r:?}");
    let r = f.announce("locked", "isolated", "10.244.1.5");
    assert!(r.ok, "{r:?}");
    f.wait_reachable(client, "10.244.1.4", "programmed pod in an open namespace");
    assert!(!f.reachable(client, "10.244.1.5"), "default deny holds");

    // Agent down: its table stays, the guard keeps a brand-new pod closed, programmed pods
    // keep their policy.
    f.kill_agent();
    f.wire_pod("kt-first-d", "10.244.1.6");
    f.create_pod("open", "while-down", "10.244.1.6");
    assert!(
        !f.reachable(client, "10.244.1.6"),
        "a pod created while the agent is down is reachable"
    );
    assert!(f.reachable(client, "10.244.1.3"));
    assert!(!f.reachable(client, "10.244.1.5"));
    // Back up: adopts the table and programs the pod.
    f.start_agent(&[]);
    f.wait_ready();
    let r = f.announce("open", "while-down", "10.244.1.6");
    assert!(r.ok, "{r:?}");
    assert!(f.reachable(client, "10.244.1.6"));
}

#[test]
fn agent_restart_under_a_stream_of_connections_loses_none() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut f = NodeFixture::new("kt-restart");
    let client = f.wire_pod("kt-restart-c", "10.244.1.2");
    f.create_pod("open", "client", "10.244.1.2");
    f.wire_pod("kt-restart-w", "10.244.1.3");
    f.create_pod("open", "web", "10.244.1.3");
    f.wire_pod("kt-restart-l", "10.244.1.4");
    f.create_pod("locked", "db", "10.244.1.4");
    let logging = ["--nflog-group", "100", "--log-format", "json"];
    f.start_agent(&logging);
    f.wait_ready();
    assert!(f.reachable(client, "10.244.1.3"));
    // New connections one after another, each with a 1 s timeout, from before the agent
    // goes down until well after it is back: the stream runs until told to stop, and says
    // how many succeeded so far (timed sleeps hoped it had started, and that its 4 s outlasted
    // a restart that a loaded machine makes slower).
    let progress = f.dir.join("stream-ok");
    let stop = f.dir.join("stream-stop");
    let script = format!(
        "ok=0; fail=0; \
         while [ ! -e {stop} ]; do \
           if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 1 10.244.1.3 80 | grep -q '200 OK'; then ok=$((ok+1)); echo $ok > {progress}.new; mv {progress}.new {progress}; else fail=$((fail+1)); fi; \
         done; echo $ok $fail",
        stop = stop.display(),
        progress = progress.display()
    );
    let succeeded = || -> u64 {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let wait_succeeded = |f: &NodeFixture, n: u64| {
        let deadline = Instant::now() + WAIT;
        while succeeded() < n {
            assert!(
                Instant::now() < deadline,
                "the connection stream made {} of {n} connections in {WAIT:?}\n{}",
                succeeded(),
                f.debug()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let stream = f.pods[client]
        .command("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_succeeded(&f, 1);
    f.kill_agent();
    // The agent stays away for a moment.
    std::thread::sleep(Duration::from_millis(300));
    f.start_agent(&logging);
    f.wait_ready();
    wait_succeeded(&f, succeeded() + 10);
    std::fs::write(&stop, "").unwrap();
    let out = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    eprintln!(
        "connections during restart: {} ok, {} failed",
        counts[0], counts[1]
    );
    assert!(
        counts[0] > 10,
        "too few connections to mean anything: {text}"
    );
    assert_eq!(counts[1], 0, "connections lost across the agent restart");
    assert!(
        !f.reachable(client, "10.244.1.4"),
        "policy still enforced after the restart"
    );
    // The denied attempt is logged by the agent from NFLOG, naming pods and policy.
    let line = f.wait_log("denied connection attempt");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["src_pod"], "open/client", "{line}");
    assert_eq!(v["dst_pod"], "locked/db", "{line}");
    assert_eq!(v["direction"], "ingress", "{line}");
    assert_eq!(v["dst_port"], 80, "{line}");
    assert_eq!(v["policies"], "locked/default-deny", "{line}");
    // The same drop on the debug socket's stream, filtered by the agent.
    let (code, body) = debug_get(&f.debug_socket(), "/drops?namespace=locked&last=5").unwrap();
    assert_eq!(code, 200, "{body}");
    let drops: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let d = drops
        .iter()
        .find(|d| d["dstPod"] == "locked/db")
        .unwrap_or_else(|| panic!("no drop towards locked/db in {body}"));
    assert_eq!(
        (
            &d["srcPod"],
            &d["dstPort"],
            &d["direction"],
            &d["protocol"],
            &d["node"]
        ),
        (
            &json!("open/client"),
            &json!(80),
            &json!("ingress"),
            &json!("TCP"),
            &json!(NODE)
        ),
        "{d}"
    );
    assert_eq!(d["policies"], json!(["locked/default-deny"]));
    let (_, other) = debug_get(&f.debug_socket(), "/drops?namespace=elsewhere").unwrap();
    assert!(other.is_empty(), "filtered out: {other}");
    let s = f.status().unwrap();
    assert_eq!(
        s["lastSync"]["full"], true,
        "the first apply after start adopts the table: {s}"
    );
}

#[test]
fn api_outage_keeps_policy_enforced_and_node_routes_follow_nodes() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut f = NodeFixture::new("kt-outage");
    let client = f.wire_pod("kt-outage-c", "10.244.1.2");
    f.create_pod("open", "client", "10.244.1.2");
    f.wire_pod("kt-outage-w", "10.244.1.3");
    f.create_pod("open", "web", "10.244.1.3");
    f.wire_pod("kt-outage-l", "10.244.1.4");
    f.create_pod("locked", "db", "10.244.1.4");
    // A segment for node routes: the node's InternalIP side and a peer node's address.
    let segment = TestNetns::new("kt-outage-seg").unwrap();
    f.node.veth_to("seg0", &segment, "seg1").unwrap();
    f.node.sh("ip addr add 192.168.77.1/24 dev seg0").unwrap();
    f.start_agent(&["--manage-routes", "true"]);
    f.wait_ready();
    assert!(f.reachable(client, "10.244.1.3"));
    assert!(!f.reachable(client, "10.244.1.4"));

    let rv = f.api.create(
        Kind::Node,
        json!({"metadata": {"name": "node-2"}, "spec": {"podCIDRs": ["10.244.2.0/24"]},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.2"}]}}),
    );
    f.wait_programmed("nodes", rv);
    let deadline = Instant::now() + WAIT;
    while !f
        .node
        .sh("ip route show proto 180")
        .unwrap()
        .contains("10.244.2.0/24 via 192.168.77.2")
    {
        assert!(
            Instant::now() < deadline,
            "route to node-2's pod CIDR not installed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A route the agent cannot program (an operator's route holds node-3's pod CIDR) makes
    // the node not ready, with the reason, until the agent's retry succeeds.
    f.node
        .sh("ip route add 10.244.3.0/24 via 192.168.77.9 dev seg0")
        .unwrap();
    let rv = f.api.create(
        Kind::Node,
        json!({"metadata": {"name": "node-3"}, "spec": {"podCIDRs": ["10.244.3.0/24"]},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.3"}]}}),
    );
    f.wait_programmed("nodes", rv);
    f.wait_status("not ready: routes", |s| {
        s["ready"] == false
            && s["notReadyReason"].as_str().is_some_and(|r| {
                r.contains("node routes not in place") && r.contains("10.244.3.0/24")
            })
    });
    let (code, body) = f.readyz();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("10.244.3.0/24"), "{body}");
    f.node.sh("ip route del 10.244.3.0/24").unwrap();
    f.wait_ready();
    assert_eq!(f.readyz().0, 200);
    assert!(f
        .node
        .sh("ip route show proto 180")
        .unwrap()
        .contains("10.244.3.0/24 via 192.168.77.3"));
    let rv = f.api.delete(Kind::Node, None, "node-3");
    f.wait_programmed("nodes", rv);

    // The API goes away: nothing changes in the dataplane. The outage lasts until healed
    // (not a window that a loaded machine could see end before the checks ran), and the
    // checks start once the agent has really lost the API: a failed watch is counted.
    let errors = f.watch_errors();
    f.api
        .run(|api| api.faults().refuse_connections(Duration::from_secs(3600)));
    let deadline = Instant::now() + WAIT;
    while f.watch_errors() <= errors {
        assert!(
            Instant::now() < deadline,
            "the agent never noticed the outage\n{}",
            f.debug()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        f.reachable(client, "10.244.1.3"),
        "allowed traffic broken during the outage"
    );
    assert!(
        !f.reachable(client, "10.244.1.4"),
        "policy lost during the outage"
    );
    assert_eq!(f.status().unwrap()["ready"], true);
    f.api.run(|api| api.faults().heal());
    // Back: changes made meanwhile converge.
    let rv = f.api.create(
        Kind::NetworkPolicy,
        json!({"metadata": {"namespace": "locked", "name": "allow-open"},
               "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector":
                   {"matchLabels": {"kubernetes.io/metadata.name": "open"}}}]}]}}),
    );
    f.wait_programmed("networkpolicies", rv);
    assert!(
        f.reachable(client, "10.244.1.4"),
        "policy created after the outage not in force"
    );
    let rv = f.api.delete(Kind::Node, None, "node-2");
    f.wait_programmed("nodes", rv);
    let deadline = Instant::now() + WAIT;
    while f
        .node
        .sh("ip route show proto 180")
        .unwrap()
        .contains("10.244.2.0/24")
    {
        assert!(
            Instant::now() < deadline,
            "route of a deleted node not removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(segment);
}
