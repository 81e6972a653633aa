//! Real runtimes as clients of the palisade CNI plugin: the harness shared by the podman and
//! containerd tests (`tests/podman.rs`, `tests/containerd.rs`).
//!
//! Each test builds a [`TestNode`]: a node network namespace on a segment with a "remote node"
//! namespace, and a temporary directory holding the CNI bin dir (the `palisade` binary and
//! the reference `loopback` plugin), the CNI config dir and the plugin's `ipam.dataDir`. The
//! runtime under test runs inside the node namespace (`nsenter --net=...`, never
//! `ip netns exec`, which remounts /sys), with every state directory inside the temporary
//! directory, so nothing outside it and the test's namespaces is touched. On drop, every
//! process still mentioning the temporary directory is killed (by PID), then the directory and
//! the namespaces are removed.
//!
//! The plugin binary is `$PALISADE_BIN` if set, else `palisade` in the test executable's own
//! profile directory (`<target>/debug/` for `cargo test`), else
//! `$CARGO_TARGET_DIR/debug/palisade`, else `<workspace>/target/debug/palisade`. Cargo does not
//! build another package's binary for these tests: run `cargo build -p palisade-cni` first.
//!
//! Running (root; slow, about 20 s; each runtime is its own test binary, so one can be
//! selected):
//!
//! ```text
//! cargo build -p palisade-cni
//! cargo test -p palisade-runtime-tests                      # all
//! cargo test -p palisade-runtime-tests --test podman        # podman 4 CNI backend
//! cargo test -p palisade-runtime-tests --test containerd    # containerd CRI + ctr run --cni
//! PALISADE_SKIP_RUNTIME_TESTS=1 cargo test --workspace      # skip them
//! ```
//!
//! A missing runtime or tool fails the test with what to install (`apt-get install podman
//! runc containerd umoci busybox-static conntrack`).

pub mod cri;

use anyhow::{bail, Context, Result};
use palisade_testutil::{run_prefix, TestNetns};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The node's address on the segment, the remote node's, and the pod range of the node.
pub const NODE_IP: &str = "192.168.78.1";
pub const REMOTE_IP: &str = "192.168.78.2";
pub const POD_SUBNET: &str = "10.248.0.0/24";
/// The port the test pods serve HTTP on (busybox httpd), and the hostPort published for it.
pub const POD_PORT: u16 = 8080;
pub const HOST_PORT: u16 = 18080;
/// What the pods' HTTP server answers.
pub const POD_GREETING: &str = "hello from a palisade runtime test pod";

/// Runtime tests need root and the runtimes; like kernel tests they fail loudly unless
/// skipped with `PALISADE_SKIP_RUNTIME_TESTS=1` (or `PALISADE_SKIP_KERNEL_TESTS=1`).
pub fn runtime_tests_enabled() -> bool {
    if std::env::var("PALISADE_SKIP_RUNTIME_TESTS").as_deref() == Ok("1") {
        eprintln!("runtime test skipped: PALISADE_SKIP_RUNTIME_TESTS=1");
        return false;
    }
    palisade_testutil::kernel_tests_enabled()
}

/// The `palisade` binary under test (see the crate docs for the lookup order).
pub fn palisade_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("PALISADE_BIN={} does not exist", p.display());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut candidates = Vec::new();
    // The test executable is `<target>/<profile>/deps/<test>-<hash>`: the binary built by the
    // same cargo invocation profile sits two levels up.
    if let Some(profile_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        candidates.push(profile_dir.join("palisade"));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug/palisade"));
    }
    candidates.push(workspace.join("target/debug/palisade"));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize()?);
        }
    }
    bail!(
        "the palisade binary was not found (looked at {candidates:?}); build it with \
         `cargo build -p palisade-cni` or point PALISADE_BIN at it"
    )
}

/// The path of a program the test needs, or an error saying what to install.
pub fn require(program: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let p = dir.join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{program} is not installed: this runtime test needs it (apt-get install {package})")
}

/// Run a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How long a runtime step that takes a second or two on an idle machine (a daemon coming
/// up, a container's server binding, a task exiting, a pair deleted after DEL) may take on a
/// loaded CI machine.
pub const RUNTIME_DEADLINE: Duration = Duration::from_secs(60);

/// Poll `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node namespace with a remote node on its segment, and the runtime's temporary directory.
pub struct TestNode {
    pub tag: String,
    pub ns: TestNetns,
    pub remote: TestNetns,
    /// `/tmp/palt<PID>-<tag>`: CNI bin and config dirs, plugin data, runtime state.
    pub dir: PathBuf,
    pub network: String,
}

impl TestNode {
    pub fn new(tag: &str) -> Result<TestNode> {
        let ns = TestNetns::new(&format!("rt{tag}"))?;
        let remote = TestNetns::new(&format!("rt{tag}-r"))?;
        ns.veth_to("eth0", &remote, "eth0")?;
        ns.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
             ip addr add {NODE_IP}/24 dev eth0"
        ))?;
        remote.sh(&format!(
            "ip addr add {REMOTE_IP}/24 dev eth0 && ip route add {POD_SUBNET} via {NODE_IP}"
        ))?;
        let dir = std::env::temp_dir().join(format!("{}-{tag}", run_prefix()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "net.d", "data", "rootfs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let node = TestNode {
            tag: tag.to_string(),
            ns,
            remote,
            network: format!("palrt{tag}"),
            dir,
        };
        std::fs::copy(palisade_bin()?, node.dir.join("bin/palisade"))
            .context("copy the palisade binary into the CNI bin dir")?;
        // containerd's CRI plugin sets up the pod's loopback with the reference plugin.
        let loopback = ["/usr/lib/cni/loopback", "/opt/cni/bin/loopback"]
            .into_iter()
            .find(|p| Path::new(p).is_file());
        if let Some(lo) = loopback {
            std::fs::copy(lo, node.dir.join("bin/loopback"))?;
        }
        busybox_rootfs(&node.dir.join("rootfs"))?;
        Ok(node)
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The network config list runtimes load: palisade alone, hostPort capability on.
    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [{
                "type": "palisade",
                "capabilities": { "portMappings": true },
                "agent": { "socket": self.dir.join("agent.sock"), "required": false },
                "ipam": {
                    "type": "palisade",
                    "ranges": [[{ "subnet": POD_SUBNET }]],
                    "dataDir": self.data_dir(),
                }
            }]
        })
    }

    /// Write the config list as `<conf_dir>/10-<network>.conflist`.
    pub fn write_conflist(&self) -> Result<PathBuf> {
        let p = self
            .conf_dir()
            .join(format!("10-{}.conflist", self.network));
        std::fs::write(&p, serde_json::to_vec_pretty(&self.conflist())?)?;
        Ok(p)
    }

    /// A command run inside the node namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Node-side pod veths (the agreed prefix).
    pub fn pod_veths(&self) -> Vec<String> {
        let out = self.ns.sh("ip -o link show").unwrap_or_default();
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(palisade_common::HOST_VETH_PREFIX))
            .collect()
    }

    /// Files under the plugin's data dir whose content names `needle` (a container ID or an
    /// IP address): what is left of an attachment after DEL should be nothing.
    pub fn data_files_naming(&self, needle: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.data_dir()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if std::fs::read_to_string(&p).is_ok_and(|s| s.contains(needle))
                    || p.to_string_lossy().contains(needle)
                {
                    out.push(p);
                }
            }
        }
        out
    }

    /// IPAM attachment records (palisade's `<dataDir>/<network>/ipam.json`) holding `needle`
    /// as container ID or as one of their IPs. (Not a plain text search: the store keeps the
    /// last address handed out, for round-robin, after the attachment is gone.)
    pub fn ipam_records_holding(&self, needle: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.data_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(e.path().join("ipam.json")) else {
                continue;
            };
            let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            for a in state["attachments"].as_array().into_iter().flatten() {
                let by_id = a["containerId"].as_str() == Some(needle);
                let by_ip = a["ips"]
                    .as_array()
                    .is_some_and(|ips| ips.iter().any(|ip| ip.as_str() == Some(needle)));
                if by_id || by_ip {
                    out.push(a.clone());
                }
            }
        }
        out
    }

    /// `nft list table inet palisade-hostport` in the node, or `None` when it does not exist.
    pub fn hostport_table(&self) -> Option<String> {
        let out = self
            .ns
            .exec(
                "nft",
                &["list", "table", "inet", palisade_common::HOSTPORT_TABLE],
            )
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// HTTP GET `http://{host}:{port}/` from a namespace; returns the body. (Not busybox
    /// wget: the static Debian busybox's wget segfaults.) Runs on a thread that entered the
    /// namespace (`palisade_kernel::Netns::run`).
    pub fn http_get(from: &TestNetns, url: &str) -> Result<String> {
        let target = url
            .strip_prefix("http://")
            .and_then(|r| r.strip_suffix('/'))
            .with_context(|| format!("unsupported URL {url}"))?;
        let addr: std::net::SocketAddr = target.parse().with_context(|| format!("URL {url}"))?;
        let name = from.name();
        palisade_kernel::netns::run_in(from.path(), || -> Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .with_context(|| format!("GET {url} from {name}: connect"))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .with_context(|| format!("GET {url} from {name}: read"))?;
            let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
            if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
                bail!(
                    "GET {url} from {name}: {}",
                    head.lines().next().unwrap_or("")
                );
            }
            Ok(body.trim().to_string())
        })?
    }

    /// GET until it answers (the server in a fresh container may take a moment to bind).
    pub fn http_get_eventually(from: &TestNetns, url: &str) -> Result<String> {
        let mut last = None;
        let got = wait_for(RUNTIME_DEADLINE, || match Self::http_get(from, url) {
            Ok(s) => Some(s),
            Err(e) => {
                last = Some(e);
                None
            }
        });
        got.ok_or_else(|| last.unwrap_or_else(|| anyhow::anyhow!("GET {url}: timeout")))
    }

    pub fn ping(from: &TestNetns, ip: &str) -> bool {
        from.sh_ok(&format!("busybox ping -c1 -W2 {ip} >/dev/null"))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        kill_processes_mentioning(&self.dir);
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kill (SIGKILL, by PID) every process whose command line mentions `dir` or whose root
/// directory lies inside it: conmon, containerd, shims and containers a failed test left
/// behind. Nothing else carries the per-run path.
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    for _ in 0..3 {
        let mut killed = false;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            // Container processes do not name the directory, but their root lies inside it.
            let root = std::fs::read_link(e.path().join("root")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) || root.starts_with(dir) {
                // SAFETY: kill(2) on a PID we just read; at worst it is already gone.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed = true;
            }
        }
        if !killed {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Unmount everything mounted below `dir` (container rootfs and shm mounts of runtimes that
/// were killed), deepest first.
pub fn unmount_below(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

/// A minimal root filesystem: static busybox with the applets the tests use, and a web root
/// for `httpd -h /www`.
pub fn busybox_rootfs(root: &Path) -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("busybox is not installed (apt-get install busybox-static)")?;
    for d in ["bin", "www", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in ["sh", "httpd", "sleep", "ip", "cat", "nc", "wget"] {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    std::fs::write(root.join("www/index.html"), format!("{POD_GREETING}\n"))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}
