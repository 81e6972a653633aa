//! On the netns cluster, `palisadectl explain --agent` run on a node names the policy that a
//! real dropped packet hit, with a non-zero counter on the nft rule that dropped it.
//!
//! Needs root and the `palisade`, `palisade-agent` and `palisadectl` binaries (or
//! `PALISADE_BIN_DIR`). It reads the agent's `GET /debug/state` and the counters of the
//! compiled default-deny rules.

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

#[test]
fn explain_names_the_policy_a_dropped_packet_hit() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let (bins, ctl) = bins();
    let mut c = Cluster::start(ClusterConfig::new(2, bins)).expect("start the cluster");
    let w = c.create_namespace("x", &Labels::new()).unwrap();
    c.wait_programmed(w).unwrap();
    for (spec, node) in [
        (pod("server", 1, "server"), 1),
        (pod("client", 2, "client"), 2),
    ] {
        let w = c.create_pod(&spec, node).unwrap();
        c.wait_programmed(w).unwrap();
    }
    let (_, w) = c
        .apply_policy(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "x", "name": "deny-to-server"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]},
        }))
        .unwrap()
        .expect("the API accepts the policy");
    c.wait_programmed(w).unwrap();

    let (client, server) = (
        PodRef::parse("x/client").unwrap(),
        PodRef::parse("x/server").unwrap(),
    );
    let m = c
        .probe(
            Protocol::Tcp,
            80,
            Family::V4,
            &[(client.clone(), Destination::Pod(server.clone()))],
            None,
            0,
        )
        .unwrap();
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
            "http://127.0.0.1:9464",
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
