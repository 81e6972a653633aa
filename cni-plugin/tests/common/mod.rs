//! Shared harness of the plugin's kernel tests and benchmark.
//!
//! Every test builds a [`Node`]: a network namespace of its own playing the Kubernetes node
//! (forwarding on, a node address on `lo` for pods to reach), a temporary directory holding
//! the IPAM state (`ipam.dataDir`), the result cache and config files, and a snapshot of the
//! node's links, routes and nftables taken before any pod exists. Pods are further network
//! namespaces ([`Pod`]) whose path is passed as `CNI_NETNS`.
//!
//! The plugin binary is executed the way a runtime does it: a fresh process with the CNI
//! environment and the config on stdin, running in the node namespace. The process enters the
//! node namespace with `setns` between fork and exec rather than through `nsenter`, so the
//! measured latency (benchmark) is the plugin's own and not that of a second exec.
//!
//! Leak checks compare the node with its snapshot: a test that ends with every pod deleted
//! must leave exactly the links, routes and nftables elements it started with, and no IPAM
//! file naming any container ID it used.

use palisade_testutil::TestNetns;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every spec version the plugin supports; lifecycle tests run over all of them.
pub const SPEC_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The node's own addresses, on its `lo`: what "a pod reaches the node" pings.
pub const NODE_ADDR_V4: &str = "10.250.0.1";
pub const NODE_ADDR_V6: &str = "fd00:250::1";
/// Pod ranges of the test node (each node is its own namespace, so tests may reuse them).
pub const POD_SUBNET_V4: &str = "10.244.1.0/24";
pub const POD_SUBNET_V6: &str = "fd00:244:1::/64";

/// Well-known CNI error codes (CNI spec, "Error" section), then palisade's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u64 = 1;
    pub const UNSUPPORTED_FIELD: u64 = 2;
    pub const UNKNOWN_CONTAINER: u64 = 3;
    pub const INVALID_ENV: u64 = 4;
    pub const IO_FAILURE: u64 = 5;
    pub const DECODE_FAILURE: u64 = 6;
    pub const INVALID_CONFIG: u64 = 7;
    pub const TRY_AGAIN_LATER: u64 = 11;
    pub const NOT_AVAILABLE: u64 = 50;
    pub const LIMITED_CONNECTIVITY: u64 = 51;
    // palisade's own codes (cni-plugin/README.md, "Errors")
    pub const NETLINK: u64 = 100;
    pub const NO_FREE_ADDRESS: u64 = 101;
    pub const IPAM_STORE: u64 = 102;
    pub const HOSTPORT: u64 = 103;
    pub const AGENT: u64 = 104;
    pub const NETNS: u64 = 105;
    pub const SYSCTL: u64 = 106;
    pub const DELEGATE_NOT_FOUND: u64 = 107;
    pub const CHECK_MISMATCH: u64 = 108;
}

/// Which address families a network config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    V4,
    V6,
    Dual,
}

impl Stack {
    pub fn has_v4(self) -> bool {
        matches!(self, Stack::V4 | Stack::Dual)
    }
    pub fn has_v6(self) -> bool {
        matches!(self, Stack::V6 | Stack::Dual)
    }
    pub fn all() -> [Stack; 3] {
        [Stack::V4, Stack::V6, Stack::Dual]
    }
}

pub fn plugin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_palisade"))
}

/// The directory holding the built `palisade` (for `CNI_PATH`).
pub fn plugin_dir() -> PathBuf {
    plugin_bin()
        .parent()
        .expect("binary has a parent")
        .to_path_buf()
}

/// A unique container ID for this test process: tests run in parallel threads and the host
/// veth name is a hash of (container ID, ifname), so IDs must never repeat within a run.
pub fn container_id(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

/// A temporary directory removed on drop (the tests' one helper for it). A STATUS test
/// makes a data dir read-only; root ignores that, so removal still works.
pub use palisade_testutil::TempDir;

/// What one plugin execution returned.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub what: String,
    /// Exit code; `None` when killed by a signal (a crash hook aborts).
    pub exit: Option<i32>,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CniOutput {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }

    /// The result of a successful command (panics with everything the plugin said otherwise).
    pub fn ok(&self) -> Value {
        assert!(self.success, "{} failed: {self}", self.what);
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        self.json()
            .unwrap_or_else(|| panic!("{}: stdout is not JSON: {self}", self.what))
    }

    /// The CNI error code of a failed command, after checking that it failed (non-zero exit)
    /// and printed a well-formed error object (`code`, `msg`) on stdout.
    pub fn err_code(&self) -> u64 {
        assert!(
            !self.success,
            "{} was expected to fail but succeeded: {self}",
            self.what
        );
        assert!(
            self.exit.is_some(),
            "{} died from a signal: {self}",
            self.what
        );
        let j = self
            .json()
            .unwrap_or_else(|| panic!("{}: error output is not JSON: {self}", self.what));
        let code = j["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: error JSON has no numeric code: {self}", self.what));
        assert!(
            j["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: error JSON has no msg: {self}",
            self.what
        );
        code
    }
}

impl std::fmt::Display for CniOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit={:?} stdout=[{}] stderr=[{}]",
            self.exit,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
    fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;
const RLIMIT_CORE: i32 = 4;

/// Run `program` inside the network namespace at `netns` with exactly the CNI variables
/// given (`None` removes one inherited from the test process), feeding `stdin`.
pub fn exec_in_netns(
    netns: &Path,
    program: &Path,
    args: &[&str],
    env: &[(&str, Option<&str>)],
    stdin: &[u8],
) -> CniOutput {
    let ns = File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Nothing of the test runner's own environment may leak into the plugin's CNI inputs.
    for (k, _) in std::env::vars() {
        if k.starts_with("CNI_") || k.starts_with("PALISADE_TEST_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; setns and
    // setrlimit are plain syscalls and `fd` stays open in the parent (`ns` lives until after
    // spawn).
    unsafe {
        cmd.pre_exec(move || {
            if setns(fd, CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The crash hooks abort(): no core files in the crate directory.
            let no_core = RLimit { cur: 0, max: 0 };
            setrlimit(RLIMIT_CORE, &no_core);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    drop(ns);
    {
        let mut si = child.stdin.take().expect("piped stdin");
        // The plugin may reject its input before reading it all: a broken pipe is fine.
        let _ = si.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait for plugin");
    let elapsed = start.elapsed();
    CniOutput {
        what: format!("{} {}", program.display(), args.join(" ")),
        exit: out.status.code(),
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

/// One attachment a runtime asks for: a container, its netns and interface name.
#[derive(Debug)]
pub struct Pod {
    /// Shared when one container has several attachments (ifnames) in one netns.
    pub ns: Arc<TestNetns>,
    pub cid: String,
    pub ifname: String,
}

impl Pod {
    pub fn netns_path(&self) -> String {
        self.ns.path().display().to_string()
    }
    pub fn host_veth(&self) -> String {
        palisade_common::host_veth_name(&self.cid, &self.ifname)
    }
}

/// How long after DEL returns its (down) veth pair may still exist: the detached process
/// that deletes it needs 15–45 ms here; the margin is for a loaded CI machine (load 8 on 2
/// cores), where it is one process among many.
pub const TEARDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// How long a condition that takes milliseconds on an idle machine (a listener binding, the
/// kernel installing a route) may take on a loaded CI machine.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// The kernel state of a node that pods must not change once they are deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub links: BTreeSet<String>,
    pub routes: BTreeSet<String>,
}

/// A test node: its netns, its state directory and the snapshot taken before any pod.
pub struct Node {
    pub ns: TestNetns,
    pub tag: String,
    pub dir: TempDir,
    baseline: NodeSnapshot,
    /// Every container ID used on this node, for the IPAM leak check.
    cids: Mutex<Vec<String>>,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let ns = TestNetns::new(&format!("{tag}-n")).expect("create node netns");
        // A Kubernetes node forwards; a fresh namespace does not. The node's address lives on
        // `lo` (dummy links don't exist in this kernel).
        ns.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
             ip addr add {NODE_ADDR_V4}/32 dev lo && ip addr add {NODE_ADDR_V6}/128 dev lo nodad"
        ))
        .expect("node setup");
        // The IPv6 local route of the new address is installed asynchronously: wait for it, or
        // the baseline snapshot would miss it and every later leak check would flag it.
        let deadline = Instant::now() + SETTLE_DEADLINE;
        while !ns.sh_ok(&format!(
            "ip -6 route show table local | grep -q '{NODE_ADDR_V6} '"
        )) {
            assert!(
                Instant::now() < deadline,
                "no local route to {NODE_ADDR_V6} after {SETTLE_DEADLINE:?}: {}",
                ns.sh("ip -6 route show table local").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.path().join("ipam")).unwrap();
        let mut node = Node {
            ns,
            tag: tag.to_string(),
            dir,
            baseline: NodeSnapshot {
                links: BTreeSet::new(),
                routes: BTreeSet::new(),
            },
            cids: Mutex::new(Vec::new()),
        };
        node.baseline = node.snapshot();
        node
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The plugin's `ipam.json` of network `palnet-<tag>` (README, "On-disk state").
    pub fn ipam_state(&self) -> Option<Value> {
        let p = self
            .data_dir()
            .join(format!("palnet-{}", self.tag))
            .join("ipam.json");
        let bytes = std::fs::read(&p).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    }

    /// Number of attachments recorded in the IPAM state.
    pub fn ipam_attachments(&self) -> usize {
        self.ipam_state()
            .and_then(|s| s["attachments"].as_array().map(|a| a.len()))
            .unwrap_or(0)
    }

    /// The agent socket of this node. Nothing listens there unless a test starts a
    /// [`FakeAgent`]: the plugin must then notice at once and go on (DESIGN.md: "An absent
    /// socket is detected at once").
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The plugin's network config for `stack`, in the keys documented by
    /// `cni-plugin/README.md`.
    pub fn conf(&self, version: &str, stack: Stack) -> Value {
        let mut ranges = Vec::new();
        if stack.has_v4() {
            ranges.push(json!([{ "subnet": POD_SUBNET_V4 }]));
        }
        if stack.has_v6() {
            ranges.push(json!([{ "subnet": POD_SUBNET_V6 }]));
        }
        self.conf_with_ranges(version, Value::Array(ranges))
    }

    pub fn conf_with_ranges(&self, version: &str, ranges: Value) -> Value {
        json!({
            "cniVersion": version,
            "name": format!("palnet-{}", self.tag),
            "type": "palisade",
            "agent": { "socket": self.agent_socket() },
            // The plugin's own state when a test swaps in a delegate IPAM (whose `ipam`
            // keys are the delegate's): in the node's temp dir, never the machine's
            // /var/lib/cni/palisade. With the built-in IPAM `ipam.dataDir` below wins.
            "dataDir": self.data_dir(),
            "ipam": {
                "type": "palisade",
                "ranges": ranges,
                "dataDir": self.data_dir(),
            }
        })
    }

    /// A new pod namespace with a unique container ID.
    pub fn pod(&self, name: &str) -> Pod {
        self.pod_if(name, "eth0")
    }

    pub fn pod_if(&self, name: &str, ifname: &str) -> Pod {
        let ns = TestNetns::new(&format!("{}-{name}", self.tag)).expect("create pod netns");
        let cid = container_id(&format!("{}-{name}", self.tag));
        self.remember_cid(&cid);
        Pod {
            ns: Arc::new(ns),
            cid,
            ifname: ifname.to_string(),
        }
    }

    /// A second attachment of the same container (same netns and container ID).
    pub fn second_attachment(&self, pod: &Pod, ifname: &str) -> Pod {
        Pod {
            ns: pod.ns.clone(),
            cid: pod.cid.clone(),
            ifname: ifname.to_string(),
        }
    }

    pub fn remember_cid(&self, cid: &str) {
        self.cids.lock().unwrap().push(cid.to_string());
    }

    /// Run the plugin in the node netns with the standard environment of `pod`.
    pub fn run(&self, command: &str, pod: &Pod, conf: &Value) -> CniOutput {
        self.run_env(command, pod, conf, &[])
    }

    /// Like [`Node::run`] with extra or overridden variables (`None` removes one).
    pub fn run_env(
        &self,
        command: &str,
        pod: &Pod,
        conf: &Value,
        extra: &[(&str, Option<&str>)],
    ) -> CniOutput {
        let netns = pod.netns_path();
        let cni_path = cni_path();
        let mut env: Vec<(&str, Option<&str>)> = vec![
            ("CNI_COMMAND", Some(command)),
            ("CNI_CONTAINERID", Some(&pod.cid)),
            ("CNI_NETNS", Some(&netns)),
            ("CNI_IFNAME", Some(&pod.ifname)),
            ("CNI_PATH", Some(&cni_path)),
            (
                "CNI_ARGS",
                Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"),
            ),
        ];
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k, *v));
        }
        let stdin = serde_json::to_vec(conf).unwrap();
        let mut out = self.exec_plugin(&env, &stdin);
        out.what = format!("{command} {} ({})", pod.cid, pod.ifname);
        out
    }

    /// Execute the plugin in the node netns with exactly `env` and raw `stdin`.
    pub fn exec_plugin(&self, env: &[(&str, Option<&str>)], stdin: &[u8]) -> CniOutput {
        exec_in_netns(self.ns.path(), &plugin_bin(), &[], env, stdin)
    }

    /// Run a command with no pod netns (GC, STATUS): only `CNI_COMMAND` and `CNI_PATH`.
    pub fn run_netless(&self, command: &str, conf: &Value) -> CniOutput {
        let cni_path = cni_path();
        let env = [
            ("CNI_COMMAND", Some(command)),
            ("CNI_PATH", Some(cni_path.as_str())),
        ];
        let mut out = self.exec_plugin(&env, &serde_json::to_vec(conf).unwrap());
        out.what = command.to_string();
        out
    }

    pub fn add(&self, pod: &Pod, conf: &Value) -> Value {
        self.run("ADD", pod, conf).ok()
    }

    pub fn del(&self, pod: &Pod, conf: &Value) {
        self.run("DEL", pod, conf).ok();
    }

    /// CHECK with the ADD result as `prevResult`, as libcni sends it.
    pub fn check(&self, pod: &Pod, conf: &Value, prev: &Value) -> CniOutput {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        self.run("CHECK", pod, &c)
    }

    /// GC (CNI 1.1) keeping only `valid` (container ID, ifname) attachments.
    pub fn gc(&self, conf: &Value, valid: &[(&str, &str)]) -> CniOutput {
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = Value::Array(
            valid
                .iter()
                .map(|(cid, ifn)| json!({ "containerID": cid, "ifname": ifn }))
                .collect(),
        );
        self.run_netless("GC", &c)
    }

    /// Links and routes of the node, in a comparable form.
    pub fn snapshot(&self) -> NodeSnapshot {
        let links = self
            .ns
            .sh("ip -o link show")
            .expect("ip link")
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect();
        let mut routes = BTreeSet::new();
        for fam in ["-4", "-6"] {
            let out = self
                .ns
                .sh(&format!("ip {fam} route show table all"))
                .expect("ip route");
            routes.extend(out.lines().map(|l| format!("{fam} {}", l.trim())));
        }
        NodeSnapshot { links, routes }
    }

    /// Host veths of pods (the agent relies on the prefix).
    pub fn pod_links(&self) -> Vec<String> {
        self.snapshot()
            .links
            .into_iter()
            .filter(|l| l.starts_with(palisade_common::HOST_VETH_PREFIX))
            .collect()
    }

    /// Elements in any set or map of the plugin's hostPort table (absent table: none).
    pub fn hostport_elements(&self) -> Vec<String> {
        let out = self
            .ns
            .exec(
                "nft",
                &[
                    "-j",
                    "list",
                    "table",
                    "inet",
                    palisade_common::HOSTPORT_TABLE,
                ],
            )
            .expect("run nft");
        if !out.status.success() {
            return Vec::new(); // no such table
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("nft -j output");
        let mut elems = Vec::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            for kind in ["map", "set"] {
                if let Some(m) = item.get(kind) {
                    for e in m["elem"].as_array().into_iter().flatten() {
                        elems.push(format!("{}: {e}", m["name"]));
                    }
                }
            }
        }
        elems
    }

    /// Files of the IPAM state that mention `needle` (a container ID or an IP).
    pub fn state_files_mentioning(&self, needle: &str) -> Vec<String> {
        let mut hits = Vec::new();
        walk(&self.data_dir(), &mut |p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let content = std::fs::read(p).unwrap_or_default();
            if name.as_deref().is_some_and(|n| n.contains(needle))
                || String::from_utf8_lossy(&content).contains(needle)
            {
                hits.push(p.display().to_string());
            }
        });
        hits
    }

    /// The node is back to its state before the first pod: same links and routes, no
    /// hostPort element, no IPAM file naming any container ID this node has seen.
    ///
    /// A DEL returns before the kernel has freed the pair it took down (`teardown.rs`), so a
    /// pod's host veth may still be listed for a few milliseconds: it must be down at once
    /// (its routes are checked at once too) and gone within [`TEARDOWN_DEADLINE`].
    pub fn assert_no_leak(&self, context: &str) {
        let now = self.snapshot();
        for l in now.links.difference(&self.baseline.links) {
            assert!(
                !self.link_is_up(l),
                "{context}: {l} is still up after its DEL"
            );
        }
        let now = self.wait_for_links(|links| *links == self.baseline.links);
        let extra_links: Vec<_> = now.links.difference(&self.baseline.links).collect();
        let gone_links: Vec<_> = self.baseline.links.difference(&now.links).collect();
        assert!(
            extra_links.is_empty() && gone_links.is_empty(),
            "{context}: node links changed {TEARDOWN_DEADLINE:?} after the last DEL: \
             leaked {extra_links:?}, removed {gone_links:?}"
        );
        let extra_routes: Vec<_> = now.routes.difference(&self.baseline.routes).collect();
        let gone_routes: Vec<_> = self.baseline.routes.difference(&now.routes).collect();
        assert!(
            extra_routes.is_empty() && gone_routes.is_empty(),
            "{context}: node routes changed: leaked {extra_routes:?}, removed {gone_routes:?}"
        );
        let elems = self.hostport_elements();
        assert!(
            elems.is_empty(),
            "{context}: hostPort elements leaked: {elems:?}"
        );
        assert_eq!(
            self.ipam_attachments(),
            0,
            "{context}: IPAM attachments remain: {:?}",
            self.ipam_state()
        );
        for cid in self.cids.lock().unwrap().iter() {
            let hits = self.state_files_mentioning(cid);
            assert!(
                hits.is_empty(),
                "{context}: IPAM state still names {cid}: {hits:?}"
            );
        }
    }

    /// Only `pod` is gone: no host veth, no route to its IPs, no IPAM file naming it, and
    /// its interface is gone from the pod netns.
    ///
    /// Everything but the pair is checked at once; the host veth must be down at once and
    /// gone within [`TEARDOWN_DEADLINE`], the pod interface too (see `assert_no_leak`).
    pub fn assert_pod_gone(&self, pod: &Pod, ips: &[String], context: &str) {
        assert!(
            !self.link_is_up(&pod.host_veth()),
            "{context}: host veth {} of {} is still up after its DEL",
            pod.host_veth(),
            pod.cid
        );
        self.assert_no_route_to(ips, context);
        let hits = self.state_files_mentioning(&pod.cid);
        assert!(
            hits.is_empty(),
            "{context}: IPAM state still names {}: {hits:?}",
            pod.cid
        );
        let links = self.wait_for_links(|links| !links.contains(&pod.host_veth()));
        assert!(
            !links.links.contains(&pod.host_veth()),
            "{context}: host veth {} of {} still exists {TEARDOWN_DEADLINE:?} after DEL",
            pod.host_veth(),
            pod.cid
        );
        if pod.ns.path().exists() {
            assert!(
                !pod.ns.sh_ok(&format!("ip link show dev {}", pod.ifname)),
                "{context}: {} still exists in the pod netns",
                pod.ifname
            );
        }
    }

    /// No route in any table of the node leads to one of `ips` (host routes are /32, /128).
    pub fn assert_no_route_to(&self, ips: &[String], context: &str) {
        for ip in ips {
            let len = if is_v6(ip) { 128 } else { 32 };
            let r = self
                .ns
                .sh(&format!("ip route show table all exact {ip}/{len}"))
                .unwrap();
            assert!(r.trim().is_empty(), "{context}: route to {ip} remains: {r}");
        }
    }

    /// `name` exists in the node netns and is administratively up.
    pub fn link_is_up(&self, name: &str) -> bool {
        self.ns
            .sh(&format!("ip -o link show dev {name}"))
            .ok()
            .and_then(|l| {
                let flags = l.split('<').nth(1)?.split('>').next()?.to_string();
                Some(flags.split(',').any(|f| f == "UP"))
            })
            .unwrap_or(false)
    }

    /// The interface index of link `name` in the node, if it exists.
    pub fn link_index(&self, name: &str) -> Option<u32> {
        self.ns
            .sh(&format!("ip -o link show dev {name}"))
            .ok()
            .and_then(|l| l.split(':').next()?.trim().parse().ok())
    }

    /// Waits until no link of the node has interface index `index` (a pair whose deletion
    /// runs in the background, found by index since its name may be taken again), for up to
    /// [`TEARDOWN_DEADLINE`]; whether it is gone.
    pub fn wait_index_gone(&self, index: u32) -> bool {
        let deadline = Instant::now() + TEARDOWN_DEADLINE;
        loop {
            let listed = self.ns.sh("ip -o link show").expect("ip link");
            if !listed
                .lines()
                .any(|l| l.split(':').next().and_then(|i| i.trim().parse().ok()) == Some(index))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Snapshots until `done` holds for its links or [`TEARDOWN_DEADLINE`] has passed; the
    /// last snapshot.
    pub fn wait_for_links(&self, done: impl Fn(&BTreeSet<String>) -> bool) -> NodeSnapshot {
        let deadline = std::time::Instant::now() + TEARDOWN_DEADLINE;
        loop {
            let now = self.snapshot();
            if done(&now.links) || std::time::Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

/// `CNI_PATH`: the built plugin first (it may be its own IPAM), then Debian's plugins.
pub fn cni_path() -> String {
    format!("{}:/usr/lib/cni", plugin_dir().display())
}

/// The pod IPs of a result, without prefix length.
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap().to_string())
        .collect()
}

pub fn is_v6(ip: &str) -> bool {
    ip.contains(':')
}

/// Assert the spec shape of an ADD result for `version`:
/// - `cniVersion` echoes the config's;
/// - `interfaces` contains the pod interface (name = CNI_IFNAME, `sandbox` = CNI_NETNS) and
///   the host veth (no `sandbox`), and with 1.1.0 the pod interface's `mtu`;
/// - every IP has an `interface` index pointing at that pod interface, an address in CIDR
///   form, and a `version` field ("4"/"6") exactly when the version is before 1.0.0 (1.0.0
///   dropped it);
/// - one address per requested family.
pub fn assert_result_shape(version: &str, result: &Value, pod: &Pod, stack: Stack) {
    let ctx = format!("result of {version} ADD {}: {result}", pod.cid);
    assert_eq!(result["cniVersion"], version, "{ctx}");
    let ifaces = result["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: no interfaces"));
    let pod_idx = ifaces
        .iter()
        .position(|i| i["name"] == pod.ifname.as_str() && i["sandbox"] == pod.netns_path().as_str())
        .unwrap_or_else(|| {
            panic!(
                "{ctx}: no interface {} with sandbox {}",
                pod.ifname,
                pod.netns_path()
            )
        });
    for i in ifaces {
        assert!(i["name"].is_string(), "{ctx}: interface without name");
    }
    // The host veth is listed without sandbox: chained portmap/bandwidth look for it there
    // (README, "Result").
    assert!(
        ifaces
            .iter()
            .any(|i| i["name"] == pod.host_veth().as_str() && i.get("sandbox").is_none()),
        "{ctx}: host veth {} not listed without sandbox",
        pod.host_veth()
    );
    if version == "1.1.0" {
        assert!(
            ifaces[pod_idx]["mtu"].as_u64().is_some(),
            "{ctx}: 1.1.0 interfaces carry mtu"
        );
    }
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: no ips"));
    let legacy = version.starts_with("0.");
    let (mut v4, mut v6) = (0, 0);
    for ip in ips {
        let addr = ip["address"]
            .as_str()
            .unwrap_or_else(|| panic!("{ctx}: ip without address"));
        let (a, len) = addr
            .split_once('/')
            .unwrap_or_else(|| panic!("{ctx}: {addr} not CIDR"));
        let len: u8 = len
            .parse()
            .unwrap_or_else(|_| panic!("{ctx}: bad prefix in {addr}"));
        let family = if a.parse::<std::net::Ipv4Addr>().is_ok() {
            v4 += 1;
            assert!(len <= 32, "{ctx}");
            "4"
        } else {
            a.parse::<std::net::Ipv6Addr>()
                .unwrap_or_else(|_| panic!("{ctx}: bad IP {a}"));
            v6 += 1;
            assert!(len <= 128, "{ctx}");
            "6"
        };
        if legacy {
            assert_eq!(ip["version"], family, "{ctx}: {version} ips need version");
        } else {
            assert!(
                ip.get("version").is_none(),
                "{ctx}: {version} ips must not have version"
            );
        }
        assert_eq!(
            ip["interface"].as_u64(),
            Some(pod_idx as u64),
            "{ctx}: ip interface index must point to the pod interface"
        );
    }
    assert_eq!(v4, usize::from(stack.has_v4()), "{ctx}: IPv4 count");
    assert_eq!(v6, usize::from(stack.has_v6()), "{ctx}: IPv6 count");
}

/// `pod` pings the node address of every family of `stack`.
pub fn assert_pod_reaches_node(pod: &Pod, stack: Stack) {
    let mut targets = Vec::new();
    if stack.has_v4() {
        targets.push(NODE_ADDR_V4);
    }
    if stack.has_v6() {
        targets.push(NODE_ADDR_V6);
    }
    for t in targets {
        let out = pod
            .ns
            .exec("busybox", &["ping", "-c", "1", "-W", "2", t])
            .unwrap();
        assert!(
            out.status.success(),
            "pod {} cannot ping node {t}: {}\npod state:\n{}",
            pod.cid,
            String::from_utf8_lossy(&out.stdout),
            pod.ns
                .sh("ip addr; ip route; ip -6 route; ip neigh")
                .unwrap_or_default()
        );
    }
}

/// A `busybox nc` listener on `port` in a pod, answering "pong" to every connection; it is
/// listening when [`PongServer::start`] returns, and killed when dropped.
pub struct PongServer(std::process::Child);

impl PongServer {
    /// Start it and wait until the pod itself gets its answer on its loopback (binding takes a
    /// moment, longer on a loaded machine): a connection refused later is then not the
    /// listener's doing.
    pub fn start(server: &Pod, port: u16) -> PongServer {
        let child = server
            .ns
            .spawn(
                "busybox",
                &["nc", "-ll", "-p", &port.to_string(), "-e", "echo", "pong"],
            )
            .expect("spawn nc listener");
        let listener = PongServer(child);
        let deadline = Instant::now() + SETTLE_DEADLINE;
        while let Err(out) = pong(server, "127.0.0.1", port) {
            assert!(
                Instant::now() < deadline,
                "nc listener of {} on port {port} not answering after {SETTLE_DEADLINE:?}: {out}",
                server.cid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        listener
    }
}

impl Drop for PongServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One TCP connection from `client` to `addr:port` (2 s): `Ok` if a [`PongServer`] answered,
/// else what `nc` printed.
pub fn pong(client: &Pod, addr: &str, port: u16) -> Result<(), String> {
    let out = client
        .ns
        .sh(&format!("busybox nc -w 2 {addr} {port} </dev/null"))
        .unwrap_or_else(|e| e.to_string());
    if out.contains("pong") {
        Ok(())
    } else {
        Err(out)
    }
}

/// [`pong`] until it answers or [`SETTLE_DEADLINE`] has passed: for a path expected open,
/// whose first packets may wait for neighbour resolution.
pub fn pong_eventually(client: &Pod, addr: &str, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        match pong(client, addr, port) {
            Ok(()) => return Ok(()),
            Err(out) if Instant::now() >= deadline => return Err(out),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// TCP from `client` to `server_ip` on a port `server` listens on (busybox nc).
pub fn assert_tcp(server: &Pod, server_ip: &str, client: &Pod) {
    let port = 8080;
    let _listener = PongServer::start(server, port);
    if let Err(last) = pong_eventually(client, server_ip, port) {
        panic!("TCP {} -> {server_ip}:{port} failed: {last}", client.cid);
    }
}

/// Latency statistics of a benchmark series.
pub struct Stats {
    pub median: Duration,
    pub p99: Duration,
    pub n: usize,
}

pub fn stats(samples: &[Duration]) -> Stats {
    let mut s = samples.to_vec();
    s.sort();
    let pick = |q: f64| s[((s.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: pick(0.5),
        p99: pick(0.99),
        n: s.len(),
    }
}

/// A stand-in for `palisade-agent` on the node's socket: records every request and answers
/// with `response` (one JSON object per line, as in `palisade_common`).
pub struct FakeAgent {
    pub requests: Arc<Mutex<Vec<palisade_common::AgentRequest>>>,
    pub answered: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl FakeAgent {
    pub fn start(path: &Path, response: palisade_common::AgentResponse) -> FakeAgent {
        Self::start_delayed(path, response, Duration::ZERO)
    }

    /// Like [`FakeAgent::start`], answering each request only after `delay` (an agent busy
    /// programming the pod); `answered` records when each answer was sent.
    pub fn start_delayed(
        path: &Path,
        response: palisade_common::AgentResponse,
        delay: Duration,
    ) -> FakeAgent {
        use std::io::{BufRead, BufReader};
        use std::os::unix::net::UnixListener;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {path:?}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (req, st, ans) = (requests.clone(), stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => break,
                };
                let (req, response, ans) = (req.clone(), response.clone(), ans.clone());
                // One thread per connection: parallel ADDs must not wait on each other here.
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).ok();
                    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut w = conn.try_clone().unwrap();
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { break };
                        if line.trim().is_empty() {
                            continue;
                        }
                        match serde_json::from_str(&line) {
                            Ok(r) => req.lock().unwrap().push(r),
                            Err(e) => panic!("agent got a malformed request {line:?}: {e}"),
                        }
                        std::thread::sleep(delay);
                        let mut out = serde_json::to_vec(&response).unwrap();
                        out.push(b'\n');
                        ans.lock().unwrap().push(Instant::now());
                        if w.write_all(&out).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        FakeAgent {
            requests,
            answered,
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        }
    }

    pub fn ok() -> palisade_common::AgentResponse {
        palisade_common::AgentResponse {
            ok: true,
            error: None,
            ready: true,
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
