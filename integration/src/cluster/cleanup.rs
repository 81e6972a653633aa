//! The run's cleanup registry: every process, namespace and directory the harness makes is
//! recorded here the moment it exists, so that a Ctrl-C (SIGINT), SIGTERM or a panic removes
//! it as surely as a normal teardown does. The normal path removes things itself and
//! `forget`s them; [`cleanup_all`] removes whatever is still recorded. Things that need more
//! than a kill or a delete (image mode's podman containers) are recorded as a teardown
//! function, run before anything else goes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A teardown function and the id that forgets it.
type Teardown = (u64, Box<dyn FnOnce() + Send>);

#[derive(Default)]
struct Registry {
    /// Teardown functions (run first, newest first).
    teardowns: Vec<Teardown>,
    next_teardown: u64,
    processes: Vec<u32>,
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
    /// Set once a signal asked to stop: from then on anything registered (the main thread
    /// may still be creating a pod) is removed at once instead of recorded.
    interrupted: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    teardowns: Vec::new(),
    next_teardown: 0,
    processes: Vec::new(),
    netns: Vec::new(),
    dirs: Vec::new(),
    interrupted: false,
});

/// Whether a SIGINT/SIGTERM is being handled: the main thread must not exit on its own
/// (the signal thread exits with 128+signal once everything is removed).
pub fn interrupted() -> bool {
    registry().interrupted
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register_process(pid: u32) {
    let mut r = registry();
    if r.interrupted {
        kill(pid);
    } else {
        r.processes.push(pid);
    }
}

fn kill(pid: u32) {
    super::netns::kill_and_wait(pid);
}

fn delete_netns(name: &str) {
    super::netns::kill_processes_in(name);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", name])
        .status();
}

/// Record a function that removes something this run made; returns the id that
/// [`forget_teardown`] takes once the normal path removed it.
pub fn register_teardown(f: Box<dyn FnOnce() + Send>) -> u64 {
    let mut r = registry();
    if r.interrupted {
        drop(r);
        f();
        return u64::MAX;
    }
    r.next_teardown += 1;
    let id = r.next_teardown;
    r.teardowns.push((id, f));
    id
}

pub fn forget_teardown(id: u64) {
    registry().teardowns.retain(|(i, _)| *i != id);
}

pub fn forget_process(pid: u32) {
    registry().processes.retain(|p| *p != pid);
}

pub fn register_netns(name: &str) {
    let mut r = registry();
    if r.interrupted {
        delete_netns(name);
    } else {
        r.netns.push(name.to_string());
    }
}

pub fn forget_netns(name: &str) {
    registry().netns.retain(|n| n != name);
}

pub fn register_dir(path: &Path) {
    let mut r = registry();
    if r.interrupted {
        let _ = std::fs::remove_dir_all(path);
    } else {
        r.dirs.push(path.to_path_buf());
    }
}

pub fn forget_dir(path: &Path) {
    registry().dirs.retain(|d| d != path);
}

/// Run every recorded teardown function, kill every recorded process (SIGKILL, by PID: only
/// processes this run started), delete every recorded namespace (newest first: pods before
/// nodes before the segment) and directory. Safe to call more than once and from the signal thread.
pub fn cleanup_all() {
    cleanup(false);
}

fn cleanup(interrupt: bool) {
    let (teardowns, processes, netns, dirs) = {
        let mut r = registry();
        r.interrupted |= interrupt;
        (
            std::mem::take(&mut r.teardowns),
            std::mem::take(&mut r.processes),
            std::mem::take(&mut r.netns),
            std::mem::take(&mut r.dirs),
        )
    };
    for (_, f) in teardowns.into_iter().rev() {
        f();
    }
    for pid in processes {
        kill(pid);
    }
    for name in netns.iter().rev() {
        delete_netns(name);
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// On SIGINT or SIGTERM: clean up everything recorded, then exit with 128+signal. Call once,
/// early in `main`.
pub fn install_signal_cleanup() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("cleanup-on-signal".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("\ninterrupted (signal {sig}): removing the cluster");
                cleanup(true);
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// What a harness binary needs before it builds a cluster: root, [`install_signal_cleanup`],
/// and a panic hook that removes everything recorded too.
pub fn prepare_root_harness() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the netns cluster needs root (network namespaces, veths, nftables)");
    }
    install_signal_cleanup()?;
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        cleanup_all();
    }));
    Ok(())
}

/// A harness binary's `main`: run `real_main`, on error remove everything and exit 2, else
/// exit with its code. After Ctrl-C the work fails half-way while the signal thread removes
/// everything and exits with 128+signal: this does not race it with another exit status.
pub fn harness_main(name: &str, real_main: impl FnOnce() -> anyhow::Result<i32>) -> ! {
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            cleanup_all();
            eprintln!("{name}: {e:#}");
            2
        }
    };
    while interrupted() {
        std::thread::park();
    }
    std::process::exit(code);
}
