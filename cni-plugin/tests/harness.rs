//! The harness itself, checked against Debian's reference `ptp` + `host-local`: when the
//! plugin's tests fail, this one passing shows the failure is the plugin's, not the harness's
//! (netns entry, connectivity probes, leak detection).

// `pub`: the harness is shared by every test binary and each uses a part of it.
pub mod common;

use common::*;
use palisade_testutil::kernel_tests_enabled;
use serde_json::{json, Value};
use std::path::Path;

fn ptp_conf(node: &Node) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "harness",
        "type": "ptp",
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": POD_SUBNET_V4 }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": node.data_dir(),
        }
    })
}

fn run_ptp(node: &Node, cmd: &str, pod: &Pod, conf: &Value) -> CniOutput {
    let netns = pod.netns_path();
    exec_in_netns(
        node.ns.path(),
        Path::new("/usr/lib/cni/ptp"),
        &[],
        &[
            ("CNI_COMMAND", Some(cmd)),
            ("CNI_CONTAINERID", Some(pod.cid.as_str())),
            ("CNI_NETNS", Some(netns.as_str())),
            ("CNI_IFNAME", Some("eth0")),
            ("CNI_PATH", Some("/usr/lib/cni")),
        ],
        &serde_json::to_vec(conf).unwrap(),
    )
}

#[test]
fn harness_works_with_reference_plugins() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("harness");
    let conf = ptp_conf(&node);
    let a = node.pod("a");
    let b = node.pod("b");
    run_ptp(&node, "ADD", &a, &conf).ok();
    let rb = run_ptp(&node, "ADD", &b, &conf).ok();
    assert_pod_reaches_node(&a, Stack::V4);
    assert_tcp(&b, &result_ips(&rb)[0], &a);

    // The leak check sees a leftover attachment (b still there)...
    run_ptp(&node, "DEL", &a, &conf).ok();
    let leaked = std::panic::catch_unwind(|| node.assert_no_leak("b still attached"));
    assert!(leaked.is_err(), "leak check missed a live attachment");
    // ...and nothing once everything is deleted.
    run_ptp(&node, "DEL", &b, &conf).ok();
    node.assert_no_leak("reference plugins");
}
