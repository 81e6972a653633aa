//! `palisade` first in a conflist with Debian's reference `portmap`, `bandwidth` and
//! `tuning`, executed the way libcni does (prevResult chaining, result cache, DEL in reverse)
//! by `tests/tools/cni-exec.sh` (a copy of the project's shared tool).
//!
//! Each chained plugin finds what it needs in palisade's result: portmap the pod IP, bandwidth
//! the host veth (the interface without `sandbox`), tuning the pod interface. The test checks
//! that each of them really acted, then that DEL leaves nothing.

// `pub`: the harness is shared by every test binary and each uses a part of it.
pub mod common;

use common::*;
use palisade_testutil::kernel_tests_enabled;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const CONFLIST_VERSION: &str = "1.0.0"; // Debian's reference plugins stop at 1.0.0

fn cni_exec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/cni-exec.sh")
}

fn conflist(node: &Node) -> Value {
    // Dual-stack: Debian's portmap (1.1.1) CHECK looks for its per-container chain in both
    // the ip and ip6 nat tables whatever the pod's families, so an IPv4-only pod fails its
    // CHECK ("could not check ipv6 dnat") with any primary plugin, ptp included.
    let mut palisade = node.conf(CONFLIST_VERSION, Stack::Dual);
    let obj = palisade.as_object_mut().unwrap();
    obj.remove("cniVersion");
    obj.remove("name");
    json!({
        "cniVersion": CONFLIST_VERSION,
        "name": format!("palnet-{}", node.tag),
        "plugins": [
            palisade,
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "bandwidth",
              "ingressRate": 100_000_000u64, "ingressBurst": 1_000_000u64,
              "egressRate": 100_000_000u64, "egressBurst": 1_000_000u64 },
            { "type": "tuning", "sysctl": { "net.core.somaxconn": "777" } }
        ]
    })
}

/// Run cni-exec.sh inside the node netns (the reference plugins act on the netns they run in).
fn chain(node: &Node, list: &Path, cmd: &str, pod: &Pod, runtime_config: &str) -> CniOutput {
    let cache = node.dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let cni_path = cni_path();
    let netns = pod.netns_path();
    let mut out = exec_in_netns(
        node.ns.path(),
        &cni_exec(),
        &[list.to_str().unwrap(), cmd, &pod.cid, &netns, &pod.ifname],
        &[
            ("CNI_PATH", Some(cni_path.as_str())),
            ("CNI_CACHE_DIR", Some(cache)),
            ("CNI_RUNTIME_CONFIG", Some(runtime_config)),
            (
                "CNI_ARGS",
                Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
            ),
        ],
        b"",
    );
    out.what = format!("cni-exec.sh {cmd} {}", pod.cid);
    out
}

#[test]
fn palisade_portmap_bandwidth_tuning_chain() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("chain");
    let list = node.dir.path().join("chain.conflist");
    std::fs::write(&list, serde_json::to_vec_pretty(&conflist(&node)).unwrap()).unwrap();

    let web = node.pod("web");
    let client = node.pod("client");
    let mappings = r#"{"portMappings":[{"hostPort":18080,"containerPort":80,"protocol":"tcp"}]}"#;
    let r_web = chain(&node, &list, "ADD", &web, mappings).ok();
    let r_client = chain(&node, &list, "ADD", &client, "{}").ok();
    assert_result_shape(CONFLIST_VERSION, &r_web, &web, Stack::Dual);
    assert_result_shape(CONFLIST_VERSION, &r_client, &client, Stack::Dual);

    // tuning wrote the pod's sysctl (per netns).
    let somaxconn = web.ns.sh("cat /proc/sys/net/core/somaxconn").unwrap();
    assert_eq!(somaxconn.trim(), "777", "tuning did not act on the pod");
    // bandwidth shaped the host veth palisade reported.
    let qdisc = node
        .ns
        .sh(&format!("tc qdisc show dev {}", web.host_veth()))
        .unwrap();
    assert!(
        qdisc.contains("tbf"),
        "bandwidth found no host veth to shape: {qdisc}"
    );
    // portmap: the client reaches web through the node's address and the host port.
    let listener = PongServer::start(&web, 80);
    let reached = pong_eventually(&client, NODE_ADDR_V4, 18080).is_ok();
    drop(listener);
    assert!(reached, "hostPort 18080 via portmap did not reach the pod");
    assert_pod_reaches_node(&client, Stack::Dual);

    // CHECK: Debian's portmap 1.1.1 cannot pass CHECK here with any primary plugin (it
    // looks for its IPv4 rules in the ip6 nat table; reproduced with ptp + portmap), so the
    // full list must fail exactly there, i.e. after palisade passed. The same cached result
    // checked by the list without portmap (same network name, same cache) must pass.
    let mut without_portmap = conflist(&node);
    without_portmap["plugins"].as_array_mut().unwrap().remove(1);
    let list_np = node.dir.path().join("chain-noportmap.conflist");
    std::fs::write(
        &list_np,
        serde_json::to_vec_pretty(&without_portmap).unwrap(),
    )
    .unwrap();
    for pod in [&web, &client] {
        chain(&node, &list_np, "CHECK", pod, "").ok();
        let full = chain(&node, &list, "CHECK", pod, "");
        if !full.success {
            assert!(
                full.stdout.contains("could not check ipv6 dnat"),
                "full-list CHECK failed other than by portmap's known ip6 check: {full}"
            );
        }
    }

    chain(&node, &list, "DEL", &web, "").ok();
    chain(&node, &list, "DEL", &client, "").ok();
    // DEL again, without the cache: still fine.
    chain(&node, &list, "DEL", &web, "").ok();
    node.assert_pod_gone(&web, &result_ips(&r_web), "chain DEL");
    node.assert_pod_gone(&client, &result_ips(&r_client), "chain DEL");
    node.assert_no_leak("chain DEL");
    let nat = node.ns.sh("iptables-save 2>/dev/null || true").unwrap();
    assert!(
        !nat.contains(&web.cid),
        "portmap rules of {} remain:\n{nat}",
        web.cid
    );
}
