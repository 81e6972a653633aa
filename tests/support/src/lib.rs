//! Fixtures for kernel tests: network namespaces that carry a per-run prefix and are removed
//! when dropped (also when the test panics), plus a sweep for leftovers of runs that were
//! killed outright.
//!
//! Rules every kernel test follows (see `DESIGN.md`, "What runs where in tests"):
//! nothing is created in the root network namespace; every namespace, link and process is
//! named with [`run_prefix`]; traffic only flows between namespaces the test created.
//!
//! Namespaces are named `palt<PID>-<tag>`. [`sweep_stale`] removes namespaces whose PID no
//! longer exists, so a run killed with SIGKILL is cleaned up by the next one.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

const NETNS_DIR: &str = "/run/netns";
const ROOT_PREFIX: &str = "palt";

/// The prefix of everything this test process creates: `palt<PID>`.
pub fn run_prefix() -> String {
    format!("{ROOT_PREFIX}{}", std::process::id())
}

/// A short unique name (at most 15 characters, the kernel's limit for link names) for a link
/// or other object of this run: `<p><counter><pid-suffix>` where `p` is a one-letter tag.
pub fn unique_link_name(tag: char) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    format!("{tag}{pid}x{n}").chars().take(15).collect()
}

/// Kernel tests need root; they fail loudly without it rather than pass by skipping, unless
/// the caller opted out with `PALISADE_SKIP_KERNEL_TESTS=1`.
/// Returns `false` when the test should return early (opted out).
pub fn kernel_tests_enabled() -> bool {
    if std::env::var("PALISADE_SKIP_KERNEL_TESTS").as_deref() == Ok("1") {
        eprintln!("kernel test skipped: PALISADE_SKIP_KERNEL_TESTS=1");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel tests need root (set PALISADE_SKIP_KERNEL_TESTS=1 to skip them)"
    );
    sweep_stale();
    true
}

/// Remove namespaces left by earlier test runs whose process is gone.
pub fn sweep_stale() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    *done = true;
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(ROOT_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if pid.is_empty() {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_netns_processes(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

fn kill_netns_processes(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// Run `f` inside the network namespace at `path` and return what it returns: the kernel
/// crate's one helper (`palisade_kernel::Netns::run`, a scoped thread that entered the
/// namespace), so sockets opened by `f` belong to `path`'s namespace. Panics if the
/// namespace cannot be entered, or with `f`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    palisade_kernel::netns::run_in(path, f).unwrap_or_else(|e| panic!("{e}"))
}

/// A network namespace owned by the test; removed (with every process inside) on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    /// Create `palt<PID>-<tag>` with loopback up.
    pub fn new(tag: &str) -> Result<TestNetns> {
        let name = format!("{}-{tag}", run_prefix());
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let ns = TestNetns {
            path: PathBuf::from(NETNS_DIR).join(&name),
            name,
        };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`in_netns`] for this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path, f)
    }

    /// A command that runs inside this namespace (`nsenter --net=...`, which unlike
    /// `ip netns exec` does not remount /sys).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Run a program with arguments inside the namespace and return its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {program} in {}", self.name))
    }

    /// Run a shell script inside the namespace; fails with its stderr when it exits non-zero.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.exec("sh", &["-c", script])?;
        if !out.status.success() {
            bail!(
                "in netns {}: `{script}` failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run a shell script inside the namespace and report only whether it succeeded.
    pub fn sh_ok(&self, script: &str) -> bool {
        self.exec("sh", &["-c", script])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Start a background process inside the namespace; it is killed when the namespace is
    /// dropped (every process in the namespace is).
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Child> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {program} in {}", self.name))
    }

    /// Connect this namespace and `other` with a veth pair `(a_if here, b_if there)`, both up.
    /// Created with the peer placed straight into `other` (one netlink request, nothing in the
    /// root namespace).
    pub fn veth_to(&self, a_if: &str, other: &TestNetns, b_if: &str) -> Result<()> {
        self.sh(&format!(
            "ip link add {a_if} type veth peer name {b_if} netns {} && ip link set {a_if} up",
            other.name
        ))?;
        other.sh(&format!("ip link set {b_if} up"))?;
        Ok(())
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        kill_netns_processes(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A directory under the system temp dir, named with the process and `tag`, removed when
/// dropped (also when the test panics).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "palisade-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_fit_the_kernel_limit() {
        for _ in 0..100 {
            assert!(unique_link_name('v').len() <= 15);
        }
        assert_ne!(unique_link_name('v'), unique_link_name('v'));
    }

    #[test]
    fn netns_is_created_and_removed() {
        if !kernel_tests_enabled() {
            return;
        }
        let path;
        {
            let a = TestNetns::new("fixture-a").unwrap();
            let b = TestNetns::new("fixture-b").unwrap();
            path = a.path().to_path_buf();
            assert!(path.exists());
            a.veth_to("va", &b, "vb").unwrap();
            a.sh("ip addr add 10.99.0.1/30 dev va").unwrap();
            b.sh("ip addr add 10.99.0.2/30 dev vb").unwrap();
            assert!(a.sh_ok("busybox ping -c1 -W2 10.99.0.2"));
            assert!(!a.sh_ok("false"));
        }
        assert!(!path.exists(), "netns must be removed on drop");
    }
}
