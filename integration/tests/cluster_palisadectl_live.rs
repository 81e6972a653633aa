//! On the netns cluster, `palisadectl explain --agent` run on a node names the policy that a
//! real dropped packet hit, with a non-zero counter on the nft rule that dropped it.
//!
//! Needs root and the `palisade`, `palisade-agent` and `palisadectl` binaries (or
//! `PALISADE_BIN_DIR`). It reads the agent's `GET /debug/state` (on its debug socket) and the
//! counters of the compiled default-deny rules. `palisadectl drops -f` follows the denials
//! of a real cluster as they happen.

use palisade_integration::cluster::{Binaries, Cluster, ClusterConfig};
use palisade_integration::scenario::{
    ContainerKind, Destination, Family, Labels, PodRef, PodSpec, PortSpec, Protocol,
};
use serde_json::{json, Value};
use std::path::PathBuf;

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

/// One TCP probe on port 80 over IPv4 of each `(source, destination)` pod pair.
fn probe80(c: &Cluster, pairs: &[(&str, &str)]) -> palisade_integration::matrix::Matrix {
    let pairs: Vec<(PodRef, Destination)> = pairs
        .iter()
        .map(|(s, d)| {
            (
                PodRef::parse(s).unwrap(),
                Destination::Pod(PodRef::parse(d).unwrap()),
            )
        })
        .collect();
    c.probe(Protocol::Tcp, 80, Family::V4, &pairs, None, 0)
        .unwrap()
}

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

    let m = probe80(&c, &[("x/client", "x/server")]);
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

    // `--last 20` (not 0): nothing was dropped yet, so nothing from before prints, and
    // the agent hands a follower the recent drops and the stream under one lock: a drop
    // that happens while this palisadectl is still connecting (a loaded machine) comes
    // from the ring, once, instead of being missed.
    let mut follow = std::process::Command::new(&ctl)
        .args([
            "drops", "-f", "-o", "json", "--last", "20", "-n", "x", "--agent",
        ])
        .arg(&c.nodes[0].debug_socket)
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
    // Nothing dropped yet: nothing printed.
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(500))
        .is_err());

    let mut seen = Vec::new();
    for round in 0..3 {
        let m = probe80(&c, &[("x/client", "x/server"), ("x/friend", "x/server")]);
        assert_eq!(m.get("x/client", "x/server"), Some(false));
        assert_eq!(m.get("x/friend", "x/server"), Some(true));
        // Each denied attempt streams while the follower runs, within moments.
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| {
                panic!("round {round}: no drop streamed\n{}", c.agent_logs_tail(20))
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
            "{line}"
        );
        assert_eq!(d["policies"], json!(["x/only-friend"]), "{line}");
        seen.push(d["srcPort"].clone());
        // SYN retransmits of the same attempt may follow; drain them.
        while let Ok(more) = rx.recv_timeout(std::time::Duration::from_millis(300)) {
            let m: Value = serde_json::from_str(&more).unwrap();
            assert_eq!(
                m["srcPod"], "x/client",
                "only denied connections stream: {more}"
            );
        }
    }
    seen.dedup();
    assert_eq!(seen.len(), 3, "three attempts, three connections: {seen:?}");
    // A filter for another namespace sees none of them.
    let other = std::process::Command::new(&ctl)
        .args(["drops", "-n", "y", "-o", "json", "--agent"])
        .arg(&c.nodes[0].debug_socket)
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
    let m = probe80(&c, &[("x/client", "x/server")]);
    assert_eq!(m.get("x/client", "x/server"), Some(false));
    let both = std::process::Command::new(&ctl)
        .args([
            "drops", "-o", "json", "--last", "1000", "--pod", "x/client", "--agent",
        ])
        .arg(&c.nodes[0].debug_socket)
        .arg("--agent")
        .arg(&c.nodes[1].debug_socket)
        .output()
        .unwrap();
    assert!(
        both.status.success(),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    let drops: Vec<Value> = String::from_utf8(both.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let egress = drops
        .iter()
        .find(|d| d["direction"] == "egress")
        .unwrap_or_else(|| panic!("no egress drop from node-2 in {drops:#?}"));
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
