//! On the netns cluster, `palisadectl explain --agent` run on a node names the policy that a
//! real dropped packet hit, with a non-zero counter on the nft rule that dropped it.
//!
//! Needs root and the `palisade`, `palisade-agent` and `palisadectl` binaries (or
//! `PALISADE_BIN_DIR`). It reads the agent's `GET /debug/state` (on its debug socket) and the
//! counters of the compiled default-deny rules. `palisadectl drops -f` follows the denials
//! of a real cluster as they happen.

use palisade_integration::cluster::{Binaries, Cluster, ClusterConfig};
use palisade_integration::matrix::Matrix;
use palisade_integration::scenario::{
    ContainerKind, Destination, Family, Labels, PodRef, PodSpec, PortSpec, Protocol,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn bins() -> (Binaries, PathBuf) {
    let mut b = match std::env::var_os("PALISADE_BIN_DIR") {
        Some(d) => Binaries::in_dir(&PathBuf::from(d)),
        None => Binaries::next_to_current_exe().unwrap(),
    };
    b.testpod = PathBuf::from(env!("CARGO_BIN_EXE_palisade-testpod"));
    let ctl = b.cni.parent().unwrap().join("palisadectl");
    assert!(
        b.cni.exists() && b.agent.is_some() && ctl.exists(),
        "build palisade, palisade-agent and palisadectl first: cargo build -p palisade-cni -p palisade-policy --bins (looked in {})",
        b.cni.parent().unwrap().display()
    );
    (b, ctl)
}

fn pod(name: &str, node: usize, app: &str) -> PodSpec {
    PodSpec {
        namespace: "x".into(),
        name: name.into(),
        node: Some(node),
        labels: [("app".to_string(), app.to_string())].into(),
        ports: vec![PortSpec {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
            container: ContainerKind::Main,
        }],
    }
}

/// One TCP probe on port 80 over IPv4 of each `(source, destination, expected)` pod pair. A
/// cell expected allowed but seen blocked is probed again, as the scenario runner does (a
/// first SYN can be lost to neighbour resolution, and the probe times out after 1 s); a cell
/// expected blocked never is, so a leak still shows.
fn probe80(c: &Cluster, pairs: &[(&str, &str, bool)]) -> Matrix {
    let mut expected = Matrix::default();
    let pairs: Vec<(PodRef, Destination)> = pairs
        .iter()
        .map(|&(s, d, allowed)| {
            expected.set(s, d, allowed);
            (
                PodRef::parse(s).unwrap(),
                Destination::Pod(PodRef::parse(d).unwrap()),
            )
        })
        .collect();
    c.probe(Protocol::Tcp, 80, Family::V4, &pairs, Some(&expected), 2)
        .unwrap()
}

/// The drops `palisadectl drops -o json --last 1000` prints for `args` (a filter and one or
/// more `--agent SOCKET`).
fn agent_drops(ctl: &Path, args: &[&OsStr]) -> Vec<Value> {
    let out = std::process::Command::new(ctl)
        .args(["drops", "-o", "json", "--last", "1000"])
        .args(args)
        .output()
        .expect("run palisadectl drops");
    assert!(
        out.status.success(),
        "palisadectl drops: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How long a drop may take to travel NFLOG → agent → palisadectl on a loaded machine.
const DROP_DEADLINE: Duration = Duration::from_secs(30);

/// A 2-node cluster with namespace x, the pods `(name, node)` (label app=name, port 80), and
/// `policy` applied, all programmed; and palisadectl's path.
fn cluster(pods: &[(&str, usize)], policy: Value) -> (Cluster, PathBuf) {
    let (bins, ctl) = bins();
    let mut c = Cluster::start(ClusterConfig::new(2, bins)).expect("start the cluster");
    let w = c.create_namespace("x", &Labels::new()).unwrap();
    c.wait_programmed(w).unwrap();
    for &(name, node) in pods {
        let w = c.create_pod(&pod(name, node, name), node).unwrap();
        c.wait_programmed(w).unwrap();
    }
    let (_, w) = c
        .apply_policy(policy)
        .unwrap()
        .expect("the API accepts the policy");
    c.wait_programmed(w).unwrap();
    (c, ctl)
}

#[test]
fn explain_names_the_policy_a_dropped_packet_hit() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let (c, ctl) = cluster(
        &[("server", 1), ("client", 2)],
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "deny-to-server"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]},
        }),
    );

    let m = probe80(&c, &[("x/client", "x/server", false)]);
    assert_eq!(
        m.get("x/client", "x/server"),
        Some(false),
        "the packet must be dropped"
    );

    // Ingress is enforced on the server's node: ask that node's agent and table.
    let out = c.nodes[0]
        .netns
        .command(&ctl)
        .args([
            "explain",
            "--agent",
            c.nodes[0].debug_socket.to_str().unwrap(),
            "--from",
            "x/client",
            "--to",
            "x/server",
        ])
        .args(["--port", "80", "-o", "json", "--color", "never"])
        .output()
        .expect("run palisadectl in node-1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "palisadectl failed: {stderr}\n{}",
        c.agent_logs_tail(20)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["allowed"], false, "{r:#}");
    assert_eq!(r["ingress"]["verdict"], "denied", "{r:#}");
    assert_eq!(
        r["ingress"]["isolatedBy"],
        json!(["x/deny-to-server"]),
        "{r:#}"
    );
    assert_eq!(r["disagreements"], json!([]), "{r:#}\n{stderr}");
    let live = r["live"]
        .as_array()
        .expect("live hops from the programmed table");
    let dropped = live
        .iter()
        .find(|h| h["accepted"] == false)
        .expect("a dropping hop on node-1");
    let drop_rule = dropped["rules"]
        .as_array()
        .unwrap()
        .last()
        .expect("the rule that dropped");
    assert!(
        drop_rule["packets"].as_u64().is_some_and(|p| p > 0),
        "the drop rule's counter must have seen the packet: {drop_rule:#}"
    );
}

/// `palisadectl drops -f` on a node follows that node's denials as they happen: started
/// before any traffic, it prints each denied connection towards the isolated server (named
/// with both pods, port, direction and policy) while the allowed ones never appear, and its
/// filter keeps other namespaces' drops out.
#[test]
fn drops_follow_streams_denials_as_they_happen() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    use std::io::BufRead;
    let (mut c, ctl) = cluster(
        &[("server", 1), ("friend", 1), ("client", 2)],
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "only-friend"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "friend"}}}]}]},
        }),
    );

    let node1 = c.nodes[0].debug_socket.clone();
    // Nothing was dropped in x yet: the agent's ring has nothing a follower could replay, so
    // every line below is a drop that happened after this point.
    let before = agent_drops(
        &ctl,
        &[
            "-n".as_ref(),
            "x".as_ref(),
            "--agent".as_ref(),
            node1.as_ref(),
        ],
    );
    assert!(before.is_empty(), "drops before any traffic: {before:#?}");

    // `--last 20` (not 0): the agent hands a follower the recent drops and the stream under
    // one lock, so a drop that happens while this palisadectl is still connecting (a loaded
    // machine) comes from the ring, once, instead of being missed.
    let mut follow = std::process::Command::new(&ctl)
        .args([
            "drops", "-f", "-o", "json", "--last", "20", "-n", "x", "--agent",
        ])
        .arg(&node1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start palisadectl drops -f");
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Source ports of the denied attempts streamed so far.
    let mut seen = BTreeSet::new();
    for round in 0..3 {
        let m = probe80(
            &c,
            &[
                ("x/client", "x/server", false),
                ("x/friend", "x/server", true),
            ],
        );
        assert_eq!(m.get("x/client", "x/server"), Some(false));
        assert_eq!(m.get("x/friend", "x/server"), Some(true));
        // This round's denied attempt streams: a drop from a source port not seen before.
        // SYN retransmits of earlier attempts may come first (a loaded machine streams them
        // late); every line must still be a denial of the client, never the allowed friend.
        let deadline = Instant::now() + DROP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "round {round}: no new drop streamed within {DROP_DEADLINE:?} (ports so \
                     far {seen:?})\n{}",
                    c.agent_logs_tail(20)
                )
            });
            let d: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(
                (
                    &d["srcPod"],
                    &d["dstPod"],
                    &d["dstPort"],
                    &d["direction"],
                    &d["node"]
                ),
                (
                    &json!("x/client"),
                    &json!("x/server"),
                    &json!(80),
                    &json!("ingress"),
                    &json!("node-1")
                ),
                "only denied connections stream: {line}"
            );
            assert_eq!(d["policies"], json!(["x/only-friend"]), "{line}");
            if seen.insert(d["srcPort"].to_string()) {
                break;
            }
        }
    }
    // A filter for another namespace sees none of them.
    let other = std::process::Command::new(&ctl)
        .args(["drops", "-n", "y", "-o", "json", "--agent"])
        .arg(&node1)
        .output()
        .unwrap();
    assert!(other.status.success());
    assert!(
        other.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&other.stdout)
    );
    let _ = follow.kill();
    let _ = follow.wait();

    // Egress is denied on the source's node: both agents together tell the whole story.
    let (_, w) = c
        .apply_policy(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "client-no-egress"},
            "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]},
        }))
        .unwrap()
        .expect("the API accepts the policy");
    c.wait_programmed(w).unwrap();
    let m = probe80(&c, &[("x/client", "x/server", false)]);
    assert_eq!(m.get("x/client", "x/server"), Some(false));
    // NFLOG reaches the agents asynchronously: ask both until node-2's egress drop is there.
    let both_args: [&OsStr; 6] = [
        "--pod".as_ref(),
        "x/client".as_ref(),
        "--agent".as_ref(),
        node1.as_ref(),
        "--agent".as_ref(),
        c.nodes[1].debug_socket.as_ref(),
    ];
    let deadline = Instant::now() + DROP_DEADLINE;
    let drops = loop {
        let drops = agent_drops(&ctl, &both_args);
        if drops.iter().any(|d| d["direction"] == "egress") {
            break drops;
        }
        assert!(
            Instant::now() < deadline,
            "no egress drop from node-2 within {DROP_DEADLINE:?} in {drops:#?}\n{}",
            c.agent_logs_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let egress = drops
        .iter()
        .find(|d| d["direction"] == "egress")
        .expect("checked above");
    assert_eq!(
        (&egress["node"], &egress["srcPod"], &egress["dstPod"]),
        (&json!("node-2"), &json!("x/client"), &json!("x/server"))
    );
    assert_eq!(egress["policies"], json!(["x/client-no-egress"]));
    assert!(drops
        .iter()
        .any(|d| d["node"] == "node-1" && d["direction"] == "ingress"));
    let times: Vec<&str> = drops.iter().map(|d| d["time"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "merged in time order: {times:?}"
    );
}
