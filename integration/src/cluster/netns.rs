//! Network namespaces of one run, named `pali<PID>-<tag>`, and the small amount of
//! per-thread namespace switching the harness needs.
//!
//! Namespaces are created with `ip netns add` (a bind mount under `/run/netns`), configured
//! with `ip -n`, and programs run inside with `nsenter --net=` (which, unlike `ip netns exec`,
//! does not remount /sys). The harness process itself stays in the root namespace; when it
//! must open a socket inside one of its namespaces it does so through `palisade_kernel`'s
//! namespace helper (a short-lived thread that entered it; the socket keeps its namespace
//! after the thread is gone).

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const NETNS_DIR: &str = "/run/netns";
/// Every name of the cluster harness starts with this and the PID of the run.
pub const RUN_PREFIX_ROOT: &str = "pali";

/// `pali<PID>`: the prefix of every namespace, link and directory of this process's run.
pub fn run_prefix() -> String {
    format!("{RUN_PREFIX_ROOT}{}", std::process::id())
}

/// A network namespace of this run. Removal is explicit ([`ClusterNetns::remove`]) and also done by
/// the run's cleanup registry, so that a panic or a signal removes it too.
#[derive(Debug, Clone)]
pub struct ClusterNetns {
    name: String,
    path: PathBuf,
}

impl ClusterNetns {
    /// Create `<prefix>-<tag>` with loopback up.
    pub fn create(tag: &str) -> Result<ClusterNetns> {
        let name = format!("{}-{tag}", run_prefix());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("run ip netns add")?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        super::cleanup::register_netns(&name);
        let ns = ClusterNetns {
            path: PathBuf::from(NETNS_DIR).join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <ns> ARGS...`; fails with ip's stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run ip")?;
        check(&out, &format!("ip -n {} {}", self.name, args.join(" ")))
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Set sysctls (`key=value`) inside the namespace (`/proc/sys/net` shows the namespace
    /// of the process that opens it, so `sysctl` must run inside).
    pub fn sysctl(&self, settings: &[&str]) -> Result<()> {
        let mut c = self.command("sysctl");
        c.arg("-q").arg("-w").args(settings).stdin(Stdio::null());
        let out = c.output().context("run sysctl")?;
        check(
            &out,
            &format!("sysctl -w {} in {}", settings.join(" "), self.name),
        )?;
        Ok(())
    }

    /// Kill every process still inside and delete the namespace. Errors are returned, not
    /// swallowed, so teardown can report them all.
    pub fn remove(&self) -> Result<()> {
        kill_processes_in(&self.name);
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
            .context("run ip netns del")?;
        super::cleanup::forget_netns(&self.name);
        if !out.status.success() && self.path.exists() {
            bail!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Run `f` inside this namespace (the kernel crate's one helper: a scoped thread that
    /// entered it) and return its result. Sockets created by `f` belong to this namespace
    /// for their whole life.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        palisade_kernel::netns::run_in(&self.path, f)
            .with_context(|| format!("in netns {}", self.name))?
    }

    /// Open a TCP connection from inside this namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.run_inside(move || {
            TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))
        })
        .with_context(|| format!("in netns {}", self.name))
    }

    /// `GET path` from `addr`, connecting from inside this namespace; HTTP/1.0, so the
    /// answer ends at EOF and is never chunked. Returns the status code and the body.
    pub fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = self.connect(addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let host = match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        s.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("malformed HTTP answer from {addr}: {text}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no status code in {head:?}"))?;
        Ok((code, body.to_string()))
    }

    /// Bind a TCP listener inside this namespace.
    pub fn listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.run_inside(move || TcpListener::bind(addr).with_context(|| format!("bind {addr}")))
            .with_context(|| format!("in netns {}", self.name))
    }
}

/// A finished command's stdout, or an error naming `what` with its status and stderr.
pub fn check(out: &Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SIGKILL every process inside the namespace `name`. These are processes the harness
/// started there (agents, test pods); the namespace is ours, named with our prefix.
pub fn kill_processes_in(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<u32>() {
                kill_and_wait(pid);
            }
        }
    }
}

/// SIGKILL `pid` and wait (up to 5 s) until it has really died: SIGKILL is delivered
/// asynchronously, and a caller that removes a namespace or exits right after `kill` would
/// otherwise leave a process still tearing down. Reaps it when it is our child.
pub fn kill_and_wait(pid: u32) {
    // SAFETY: kill and waitpid have no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // SAFETY: as above; WNOHANG never blocks, ECHILD (not our child) is fine.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let dead = match state {
            None => true,
            // Field 3 (after the parenthesised comm) is the state; Z and X are dead.
            Some(s) => s
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|st| st == "Z" || st == "X"),
        };
        if dead || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Names of namespaces under /run/netns that belong to a harness run whose process is gone
/// (`pali<PID>-...` with no /proc/<PID>).
pub fn stale_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| stale_pid(name).is_some())
        .collect()
}

/// `Some(pid)` when `name` is `pali<PID>...` and that process no longer exists.
pub fn stale_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(RUN_PREFIX_ROOT)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    let after = &rest[digits.len()..];
    if !(after.is_empty() || after.starts_with('-')) {
        return None;
    }
    let pid: u32 = digits.parse().ok()?;
    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Remove what crashed earlier runs left: their namespaces (and the processes inside) and
/// their run directories. Returns what was removed, for a log line.
pub fn sweep_stale_runs(run_dir_parent: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for name in stale_namespaces() {
        kill_processes_in(&name);
        let ok = Command::new("ip")
            .args(["netns", "del", &name])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            removed.push(format!("netns {name}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(run_dir_parent) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale_pid(&name).is_none() || !e.path().is_dir() {
                continue;
            }
            // An image-mode storage: its containers go first (runc state, conmon).
            if crate::kubelet::podman::is_store(&e.path()) {
                crate::kubelet::podman::sweep_stale_store(&e.path());
            }
            if std::fs::remove_dir_all(e.path()).is_ok() {
                removed.push(format!("dir {}", e.path().display()));
            }
        }
    }
    removed
}
