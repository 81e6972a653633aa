//! Crash safety and concurrency of the real binary.
//!
//! - For every ADD step of `cni-plugin/README.md` "Testing hooks", ADD aborts right after
//!   that step (`PALISADE_TEST_CRASH_AT`, like `kill -9` there); then DEL, or GC without the
//!   attachment, must leave no IP, link, route or hostPort element behind.
//! - DEL's detached deletion of the pair killed before it runs: the pod is cut off all the
//!   same, and an ADD of the attachment or GC of its network removes the left pair.
//! - 200 pods on one node, ADD with 24 concurrent processes then DEL with 24: no address is
//!   handed out twice and nothing leaks.

// `pub`: the harness is shared by every test binary and each uses a part of it.
pub mod common;

use common::*;
use palisade_testutil::kernel_tests_enabled;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The ADD steps of README "Testing hooks", in order. `hostport` is reached only with port
/// mappings and `agent` only when the agent socket exists, so the config below has both.
const CRASH_STEPS: [&str; 8] = [
    "ipam-reserved",
    "veth-created",
    "host-sysctls",
    "pod-addresses",
    "pod-routes",
    "host-routes",
    "hostport",
    "agent",
];

/// Keeps this list honest: every step the README documents is in `CRASH_STEPS`.
#[test]
fn crash_steps_cover_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("cni-plugin/README.md");
    let section = readme
        .split("## Testing hooks")
        .nth(1)
        .expect("README has a Testing hooks section");
    let section = section.split("\n## ").next().unwrap();
    let documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert!(!documented.is_empty(), "no steps found in the README table");
    for step in &documented {
        assert!(
            CRASH_STEPS.contains(step),
            "README step {step} is not tested"
        );
    }
    for step in CRASH_STEPS {
        assert!(
            documented.contains(&step),
            "tested step {step} is not in the README"
        );
    }
}

/// A config that reaches every step: dual-stack, one port mapping, a listening agent.
fn full_conf(node: &Node, host_port: u16) -> Value {
    let mut c = node.conf("1.1.0", Stack::Dual);
    c["capabilities"] = json!({ "portMappings": true });
    c["runtimeConfig"] = json!({ "portMappings": [
        { "hostPort": host_port, "containerPort": 80, "protocol": "tcp" }
    ]});
    c
}

/// After a crash the pod may be half-built; `cleanup` must leave nothing.
fn crash_then(cleanup: &str, tag: &str) {
    let node = Node::new(tag);
    let _agent = FakeAgent::start(&node.agent_socket(), FakeAgent::ok());
    let mut failures = Vec::new();
    for (i, step) in CRASH_STEPS.iter().enumerate() {
        let conf = full_conf(&node, 30000 + i as u16);
        let pod = node.pod(&format!("s{i}"));
        let crashed = node.run_env(
            "ADD",
            &pod,
            &conf,
            &[("PALISADE_TEST_CRASH_AT", Some(step))],
        );
        // abort() ends the process by SIGABRT: no exit code.
        if crashed.exit.is_some() {
            failures.push(format!("[{step}] ADD did not crash: {crashed}"));
        }
        // The crash really left the state the README describes for this step, so the
        // cleanup below has real work to do (otherwise this test would prove nothing).
        let reached = |s: &str| i >= CRASH_STEPS.iter().position(|x| *x == s).unwrap();
        let mut half_built = Vec::new();
        if node.ipam_attachments() != 1 {
            half_built.push("IPAM attachment recorded".to_string());
        }
        if reached("veth-created") != node.pod_links().contains(&pod.host_veth()) {
            half_built.push(format!("host veth present = {}", reached("veth-created")));
        }
        let pod_routes = node
            .ns
            .sh("ip route show | grep -c ' dev pal' || true")
            .unwrap();
        if reached("host-routes") != (pod_routes.trim() != "0") {
            half_built.push(format!("host route present = {}", reached("host-routes")));
        }
        let has_elements = !node.hostport_elements().is_empty();
        if reached("hostport") != has_elements {
            half_built.push(format!(
                "hostPort elements present = {}",
                reached("hostport")
            ));
        }
        if !half_built.is_empty() {
            failures.push(format!(
                "[{step}] state after the crash differs: want {half_built:?}"
            ));
        }
        let cleaned = match cleanup {
            "DEL" => node.run("DEL", &pod, &conf),
            _ => node.gc(&conf, &[]),
        };
        if !cleaned.success {
            failures.push(format!("[{step}] {cleanup} after crash failed: {cleaned}"));
            continue;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            node.assert_pod_gone(&pod, &[], &format!("crash at {step}, {cleanup}"));
            node.assert_no_leak(&format!("crash at {step}, {cleanup}"));
        }));
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            failures.push(format!("[{step}] {msg}"));
            // Clean by DEL so the next step starts from the baseline again.
            node.run("DEL", &pod, &conf);
        }
        // The address space is whole again: a new pod gets an address and works.
        if i == CRASH_STEPS.len() - 1 {
            let fresh = node.pod("fresh");
            let conf = node.conf("1.1.0", Stack::Dual);
            node.add(&fresh, &conf);
            assert_pod_reaches_node(&fresh, Stack::Dual);
            node.del(&fresh, &conf);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} crash steps leaked or failed ({cleanup}):\n{}",
        failures.len(),
        CRASH_STEPS.len(),
        failures.join("\n")
    );
    node.assert_no_leak(cleanup);
}

#[test]
fn crash_at_every_add_step_then_del() {
    if !kernel_tests_enabled() {
        return;
    }
    crash_then("DEL", "crdel");
}

#[test]
fn crash_at_every_add_step_then_gc() {
    if !kernel_tests_enabled() {
        return;
    }
    crash_then("GC", "crgc");
}

/// DEL's detached process killed before it deletes the pair (`PALISADE_TEST_CRASH_AT=
/// veth-teardown`): DEL still succeeds and the pod is cut off (host end down and marked, no
/// route to its addresses, pod end without carrier, addresses released); an ADD of the same
/// attachment replaces the left pair with a working one; GC of another network leaves a
/// left pair alone and GC of its own network deletes it.
#[test]
fn del_whose_background_deletion_never_ran() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("tdkill");
    let conf = node.conf("1.1.0", Stack::Dual);
    let mut other = conf.clone();
    other["name"] = json!("another-network");
    let kill = [("PALISADE_TEST_CRASH_AT", Some("veth-teardown"))];
    let p = node.pod("p");
    let index = |name: &str| node.link_index(name);

    let ips = result_ips(&node.add(&p, &conf));
    let first = index(&p.host_veth()).expect("host veth after ADD");
    node.run_env("DEL", &p, &conf, &kill).ok();
    // Long enough for the detached process to have deleted the pair, had it not died.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let host = node
        .ns
        .sh(&format!("ip -d -o link show dev {}", p.host_veth()))
        .expect("the pair stays when its deletion never ran");
    assert!(!node.link_is_up(&p.host_veth()), "host end up: {host}");
    assert!(
        host.contains(&format!(
            "alias palisade: deleted from network {}",
            conf["name"].as_str().unwrap()
        )),
        "host end not marked: {host}"
    );
    let pod_end =
        p.ns.sh(&format!("ip -o link show dev {}", p.ifname))
            .unwrap();
    assert!(
        pod_end.contains("NO-CARRIER"),
        "pod end still has a carrier: {pod_end}"
    );
    node.assert_no_route_to(&ips, "background deletion killed");
    assert_eq!(node.ipam_attachments(), 0, "addresses not released");

    // The same attachment again: the left pair is replaced, the new one works.
    node.add(&p, &conf);
    let second = index(&p.host_veth()).expect("host veth after the second ADD");
    assert_ne!(first, second, "the second ADD adopted the down pair");
    assert!(node.link_is_up(&p.host_veth()), "the new pair is down");
    assert_pod_reaches_node(&p, Stack::Dual);

    // Left again: GC of another network does not touch it, GC of its own deletes it.
    node.run_env("DEL", &p, &conf, &kill).ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    node.gc(&other, &[]).ok();
    assert!(
        index(&p.host_veth()).is_some(),
        "GC of another network deleted the pair"
    );
    node.gc(&conf, &[]).ok();
    assert!(
        index(&p.host_veth()).is_none(),
        "GC of its network left the pair"
    );
    node.assert_no_leak("DEL whose background deletion never ran");
}

/// Runs `f` over `items` with `workers` threads (each spawning plugin processes).
fn parallel<T: Sync>(items: &[T], workers: usize, f: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                f(item);
            });
        }
    });
}

#[test]
fn two_hundred_pods_in_parallel() {
    if !kernel_tests_enabled() {
        return;
    }
    const PODS: usize = 200;
    const WORKERS: usize = 24;
    let node = Node::new("par");
    // A /24 (254 usable) and a /64: room for 200 without wrapping round-robin allocation.
    let conf = node.conf("1.0.0", Stack::Dual);
    let pods: Vec<Pod> = (0..PODS).map(|i| node.pod(&format!("p{i}"))).collect();

    let results = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    parallel(&pods, WORKERS, |p| {
        let out = node.run("ADD", p, &conf);
        if out.success {
            results.lock().unwrap().push((p.cid.clone(), out.ok()));
        } else {
            failures
                .lock()
                .unwrap()
                .push(format!("ADD {}: {out}", p.cid));
        }
    });
    let failures_add = failures.lock().unwrap().clone();
    let results = results.into_inner().unwrap();

    let mut seen = HashSet::new();
    let mut dups = Vec::new();
    for (cid, r) in &results {
        let ips = result_ips(r);
        assert_eq!(ips.len(), 2, "{cid}: dual-stack result has {ips:?}");
        for ip in ips {
            if !seen.insert(ip.clone()) {
                dups.push(format!("{ip} ({cid})"));
            }
        }
    }
    let links = node.pod_links().len();
    let v4_routes = node
        .ns
        .sh("ip -4 route show | grep -c ' dev pal' || true")
        .unwrap();
    let attachments = node.ipam_attachments();

    // DEL everything (also the pods whose ADD failed: DEL is idempotent), in parallel.
    parallel(&pods, WORKERS, |p| {
        let out = node.run("DEL", p, &conf);
        if !out.success {
            failures
                .lock()
                .unwrap()
                .push(format!("DEL {}: {out}", p.cid));
        }
    });
    let all_failures = failures.into_inner().unwrap();

    assert!(
        failures_add.is_empty(),
        "{} ADDs failed:\n{}",
        failures_add.len(),
        failures_add.join("\n")
    );
    assert!(dups.is_empty(), "addresses handed out twice: {dups:?}");
    assert_eq!(links, PODS, "host veths after {PODS} ADDs");
    assert_eq!(
        v4_routes.trim(),
        PODS.to_string(),
        "IPv4 host routes after {PODS} ADDs"
    );
    assert_eq!(attachments, PODS, "IPAM attachments after {PODS} ADDs");
    assert!(
        all_failures.is_empty(),
        "DEL failures:\n{}",
        all_failures.join("\n")
    );
    node.assert_no_leak("200 parallel pods");
}

/// Concurrent ADDs of one attachment (a runtime retrying while the first is still running):
/// every ADD that succeeds returns the same IPs, and what remains is one consistent
/// attachment that CHECK accepts and DEL removes entirely.
#[test]
fn concurrent_adds_of_one_attachment() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("same");
    let conf = node.conf("1.0.0", Stack::Dual);
    let pod = node.pod("p");
    let outs: Vec<CniOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| node.run("ADD", &pod, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<Value> = outs.iter().filter(|o| o.success).map(|o| o.ok()).collect();
    assert!(!ok.is_empty(), "no concurrent ADD succeeded: {outs:#?}");
    for r in &ok {
        assert_eq!(
            result_ips(r),
            result_ips(&ok[0]),
            "concurrent ADDs disagree on the IPs"
        );
    }
    for o in outs.iter().filter(|o| !o.success) {
        o.err_code(); // a loser must still report a well-formed CNI error
    }
    assert_eq!(node.ipam_attachments(), 1, "state: {:?}", node.ipam_state());
    node.check(&pod, &conf, &ok[0]).ok();
    assert_pod_reaches_node(&pod, Stack::Dual);
    node.del(&pod, &conf);
    node.assert_no_leak("concurrent ADDs of one attachment");
}
