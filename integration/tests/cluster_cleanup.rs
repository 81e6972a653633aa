//! The netns cluster leaves nothing behind: after a normal teardown, after SIGINT in the
//! middle of a run, and after a crash (a leftover with a dead PID is swept on the next start).

use palisade_integration::cluster::{netns, Binaries, Cluster, ClusterConfig};
use palisade_integration::scenario::{Labels, PodSpec, PortSpec, Protocol};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests here count namespaces carrying this process's prefix: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn bins() -> Binaries {
    let mut b = match std::env::var_os("PALISADE_BIN_DIR") {
        Some(d) => Binaries::in_dir(&PathBuf::from(d)),
        None => Binaries::next_to_current_exe().unwrap(),
    };
    b.testpod = PathBuf::from(env!("CARGO_BIN_EXE_palisade-testpod"));
    assert!(
        b.cni.exists() && b.agent.is_some(),
        "build palisade and palisade-agent first: cargo build -p palisade-cni -p palisade-policy --bins"
    );
    b
}

fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir(netns::NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

fn pids_in(ns: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn teardown_removes_namespaces_processes_and_files() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = format!("{}-", netns::run_prefix());
    let mut cluster = Cluster::start(ClusterConfig::new(2, bins())).unwrap();
    let w = cluster.create_namespace("x", &Labels::new()).unwrap();
    cluster.wait_programmed(w).unwrap();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let spec = PodSpec {
            namespace: "x".into(),
            name: name.to_string(),
            node: Some(i + 1),
            labels: Labels::new(),
            ports: vec![PortSpec {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
                container: Default::default(),
            }],
        };
        let w = cluster.create_pod(&spec, i + 1).unwrap();
        cluster.wait_programmed(w).unwrap();
    }
    let names = namespaces_with_prefix(&prefix);
    assert_eq!(
        names.len(),
        6,
        "segment + 2 nodes + 2 pods + the external host: {names:?}"
    );
    let pids: Vec<u32> = names.iter().flat_map(|n| pids_in(n)).collect();
    assert_eq!(
        pids.len(),
        5,
        "2 agents + 2 test pods + the external host's: {pids:?}"
    );
    let dir = cluster.dir.clone();
    cluster.teardown().unwrap();
    drop(cluster);
    assert!(namespaces_with_prefix(&prefix).is_empty());
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the teardown");
    }
    assert!(!dir.exists(), "{} survived", dir.display());
}

#[test]
fn sigint_mid_run_removes_everything() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let b = bins();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let file = std::fs::read_dir(&scenario)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("pods-created-and-deleted"))
        .expect("scenario file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade-scenarios"))
        .arg("run")
        .arg("--bin-dir")
        .arg(b.cni.parent().unwrap())
        .arg(&file)
        .env("PATH", std::env::var("PATH").unwrap())
        .spawn()
        .unwrap();
    let prefix = format!("pali{}-", child.id());
    // Wait until its cluster has pods (more than segment + nodes), then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while namespaces_with_prefix(&prefix).len() < 4 {
        assert!(Instant::now() < deadline, "the run never built its cluster");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<u32> = namespaces_with_prefix(&prefix)
        .iter()
        .flat_map(|n| pids_in(n))
        .collect();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after SIGINT: {status}"
    );
    assert!(
        namespaces_with_prefix(&prefix).is_empty(),
        "{:?}",
        namespaces_with_prefix(&prefix)
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived SIGINT");
    }
    assert!(!std::env::temp_dir()
        .join(format!("pali{}-0", status_pid(&prefix)))
        .exists());
}

fn status_pid(prefix: &str) -> &str {
    prefix.trim_start_matches("pali").trim_end_matches('-')
}

#[test]
fn leftovers_of_a_dead_run_are_swept_on_start() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A PID that is certainly dead: a child that has exited and been reaped.
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let name = format!("pali{dead}-0n1");
    assert!(Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success());
    let dir = std::env::temp_dir().join(format!("pali{dead}-0"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = Cluster::start(ClusterConfig::new(1, bins())).unwrap();
    assert!(
        !Path::new(netns::NETNS_DIR).join(&name).exists(),
        "stale netns not swept"
    );
    assert!(!dir.exists(), "stale run dir not swept");
    cluster.teardown().unwrap();
}
