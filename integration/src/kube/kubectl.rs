//! `kubectl` as a subprocess: the one way the real-cluster mode talks to the cluster.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which kubectl, and which cluster it talks to.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub binary: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `--cache-dir` (tests give each run its own discovery cache).
    pub cache_dir: Option<PathBuf>,
}

/// The result of one kubectl run.
#[derive(Debug, Clone)]
pub struct Run {
    /// `None`: killed (the time limit passed, or a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl Kubectl {
    pub fn new(binary: PathBuf) -> Kubectl {
        Kubectl {
            binary,
            kubeconfig: None,
            context: None,
            cache_dir: None,
        }
    }

    /// The arguments every invocation starts with.
    pub fn global_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(k) = &self.kubeconfig {
            args.push(format!("--kubeconfig={}", k.display()));
        }
        if let Some(c) = &self.context {
            args.push(format!("--context={c}"));
        }
        if let Some(d) = &self.cache_dir {
            args.push(format!("--cache-dir={}", d.display()));
        }
        args
    }

    /// Run `kubectl <global args> <args>` with `stdin` fed in, killed after `limit`.
    pub fn run(&self, args: &[String], stdin: Option<&str>, limit: Duration) -> Result<Run> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.global_args())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("run {}", self.binary.display()))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A kubectl that fails early closes stdin: its stderr says why, not this error.
            let _ = pipe.write_all(text.as_bytes());
        }
        // Read both pipes on threads so a chatty kubectl never blocks on a full pipe.
        let mut out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let out_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = out_thread.join().unwrap_or_default();
        let mut stderr = err_thread.join().unwrap_or_default();
        if status.is_none() {
            stderr.push_str(&format!("\n(killed after {limit:?})"));
        }
        Ok(Run {
            code: status.and_then(|s| s.code()),
            stdout,
            stderr,
        })
    }

    /// [`Kubectl::run`] that must succeed; returns stdout.
    pub fn ok(&self, args: &[String], stdin: Option<&str>, limit: Duration) -> Result<String> {
        let r = self.run(args, stdin, limit)?;
        if r.success() {
            Ok(r.stdout)
        } else {
            anyhow::bail!("kubectl {} failed: {}", args.join(" "), r.stderr.trim())
        }
    }
}

/// `["a", "b"]` → `vec!["a".to_string(), "b".to_string()]`.
pub fn args<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items.iter().map(|s| s.as_ref().to_string()).collect()
}
