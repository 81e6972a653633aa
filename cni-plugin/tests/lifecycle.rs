//! ADD / CHECK / DEL / GC / STATUS of the real `palisade` binary on the real kernel, over
//! every supported spec version and IPv4, IPv6 and dual-stack.

// `pub`: the harness is shared by every test binary and each uses a part of it.
pub mod common;

use common::*;
use palisade_testutil::kernel_tests_enabled;
use serde_json::{json, Value};

/// For every spec version: two pods on one node get addresses of every requested family,
/// reach the node and each other (TCP), CHECK passes and then fails once a route the plugin
/// installed is removed, DEL removes everything and is idempotent.
fn lifecycle(stack: Stack, tag: &str) {
    let node = Node::new(tag);
    for version in SPEC_VERSIONS {
        let ctx = format!("{stack:?} {version}");
        let conf = node.conf(version, stack);
        let a = node.pod(&format!("a{}", version.replace('.', "")));
        let b = node.pod(&format!("b{}", version.replace('.', "")));
        let ra = node.add(&a, &conf);
        let rb = node.add(&b, &conf);
        assert_result_shape(version, &ra, &a, stack);
        assert_result_shape(version, &rb, &b, stack);
        let (ips_a, ips_b) = (result_ips(&ra), result_ips(&rb));
        for ip in ips_a.iter().chain(&ips_b) {
            assert!(
                ips_a.iter().chain(&ips_b).filter(|x| *x == ip).count() == 1,
                "{ctx}: {ip} given twice: {ips_a:?} {ips_b:?}"
            );
        }

        // The kernel state matches the result: the node side is a veth with the agreed
        // prefix, and the pod IPs are on the pod interface.
        assert!(
            node.pod_links().contains(&a.host_veth()),
            "{ctx}: host veth {} missing: {:?}",
            a.host_veth(),
            node.pod_links()
        );
        let pod_addrs =
            a.ns.sh(&format!("ip -o addr show dev {}", a.ifname))
                .unwrap();
        for ip in &ips_a {
            assert!(
                pod_addrs.contains(ip.as_str()),
                "{ctx}: {ip} not on pod: {pod_addrs}"
            );
        }

        assert_pod_reaches_node(&a, stack);
        assert_pod_reaches_node(&b, stack);
        for ip in &ips_b {
            assert_tcp(&b, ip, &a);
        }

        if version != "0.3.1" {
            let ok = node.check(&a, &conf, &ra);
            ok.ok();
            // Break what the plugin installed in the pod: its default route.
            let fam = if stack.has_v4() { "-4" } else { "-6" };
            a.ns.sh(&format!("ip {fam} route del default")).unwrap();
            let broken = node.check(&a, &conf, &ra);
            assert_eq!(
                broken.err_code(),
                code::CHECK_MISMATCH,
                "{ctx}: CHECK of a pod without its default route: {broken}"
            );
            // b is untouched and still passes.
            node.check(&b, &conf, &rb).ok();
        }

        node.del(&a, &conf);
        node.del(&b, &conf);
        node.assert_pod_gone(&a, &ips_a, &ctx);
        node.assert_pod_gone(&b, &ips_b, &ctx);
        // DEL is idempotent (runtimes call it twice).
        node.del(&a, &conf);
        node.assert_no_leak(&ctx);
    }
}

#[test]
fn lifecycle_ipv4_every_version() {
    if !kernel_tests_enabled() {
        return;
    }
    lifecycle(Stack::V4, "lc4");
}

#[test]
fn lifecycle_ipv6_every_version() {
    if !kernel_tests_enabled() {
        return;
    }
    lifecycle(Stack::V6, "lc6");
}

#[test]
fn lifecycle_dual_stack_every_version() {
    if !kernel_tests_enabled() {
        return;
    }
    lifecycle(Stack::Dual, "lcd");
}

/// A repeated ADD for a known (container, ifname) returns the same IPs (DESIGN.md, IPAM).
#[test]
fn repeated_add_returns_the_same_ips() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("readd");
    let conf = node.conf("1.0.0", Stack::Dual);
    let p = node.pod("p");
    let first = result_ips(&node.add(&p, &conf));
    let second = result_ips(&node.add(&p, &conf));
    assert_eq!(first, second, "second ADD changed the IPs");
    assert_pod_reaches_node(&p, Stack::Dual);
    node.del(&p, &conf);
    node.assert_no_leak("repeated ADD");
}

/// DEL succeeds and frees everything when the pod netns is already gone or `CNI_NETNS` is
/// empty (containerd sends it empty).
#[test]
fn del_with_netns_gone_or_empty() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("delgone");
    let conf = node.conf("1.0.0", Stack::Dual);

    let gone = node.pod("gone");
    let ips_gone = result_ips(&node.add(&gone, &conf));
    let gone_path = gone.netns_path();
    // Remove the pod netns before DEL (the runtime already tore the sandbox down): the
    // kernel destroys the veth pair with it. A fresh netns keeps `Pod` usable for the checks.
    let Pod { ns, cid, ifname } = gone;
    drop(ns);
    let gone = Pod {
        ns: std::sync::Arc::new(palisade_testutil::TestNetns::new("delgone-tmp").unwrap()),
        cid,
        ifname,
    };
    assert!(!std::path::Path::new(&gone_path).exists());
    node.run_env(
        "DEL",
        &gone,
        &conf,
        &[("CNI_NETNS", Some(gone_path.as_str()))],
    )
    .ok();
    node.assert_pod_gone(&gone, &ips_gone, "DEL with netns gone");

    let empty = node.pod("empty");
    let ips_empty = result_ips(&node.add(&empty, &conf));
    node.run_env("DEL", &empty, &conf, &[("CNI_NETNS", Some(""))])
        .ok();
    node.assert_pod_gone(&empty, &ips_empty, "DEL with empty CNI_NETNS");
    // With CNI_NETNS empty the plugin could not enter the pod: the node side must still be
    // gone (deleting the host veth removes its peer).
    node.assert_no_leak("DEL without netns");
}

/// DEL cuts the pod off before it returns: in the first snapshot after it, the host end is
/// down (or gone), no route leads to the pod's addresses, the pod end has no carrier and the
/// addresses are released. The pair itself goes after that, deleted by the detached process
/// (the pod netns stays, so nothing else would delete it). With `deleteVethInBackground`
/// false the pair is gone when DEL returns.
#[test]
fn del_cuts_the_pod_off_before_it_returns() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("delcut");
    let conf = node.conf("1.1.0", Stack::Dual);
    for (round, background) in [(0, true), (1, false), (2, true)] {
        let ctx = format!("round {round}, background {background}");
        let mut conf = conf.clone();
        conf["deleteVethInBackground"] = background.into();
        let p = node.pod(&format!("p{round}"));
        let ips = result_ips(&node.add(&p, &conf));
        assert_pod_reaches_node(&p, Stack::Dual);
        node.del(&p, &conf);

        let host_end = node
            .ns
            .sh(&format!("ip -o link show dev {}", p.host_veth()));
        let pod_end = p.ns.sh(&format!("ip -o link show dev {}", p.ifname));
        if !background {
            assert!(
                host_end.is_err(),
                "{ctx}: host end still there: {host_end:?}"
            );
            assert!(pod_end.is_err(), "{ctx}: pod end still there: {pod_end:?}");
        }
        if let Ok(l) = &host_end {
            assert!(!node.link_is_up(&p.host_veth()), "{ctx}: host end up: {l}");
        }
        if let Ok(l) = &pod_end {
            assert!(
                l.contains("NO-CARRIER") || !l.contains("LOWER_UP"),
                "{ctx}: pod end still has a carrier: {l}"
            );
        }
        assert_eq!(node.ipam_attachments(), 0, "{ctx}: addresses not released");
        // Routes at once, then the pair within the deadline.
        node.assert_pod_gone(&p, &ips, &ctx);
    }
    node.assert_no_leak("DEL cuts off");
}

/// An ADD of the same attachment right after its DEL (a runtime re-creating a sandbox with
/// the same container ID in the same netns) gets a working pair, and the background
/// deletion of the old pair (by interface index, not by the name the new pair reuses) never
/// takes it. The kernel unlists the old pair as soon as that deletion starts, well before it
/// returns, so the ADD rarely sees it: `del_whose_background_deletion_never_ran`
/// (crash_safety.rs) covers an ADD that finds it.
#[test]
fn add_right_after_del_of_the_same_attachment() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("readel");
    let conf = node.conf("1.0.0", Stack::Dual);
    let p = node.pod("p");
    node.add(&p, &conf);
    for round in 0..5 {
        let old = node
            .link_index(&p.host_veth())
            .expect("host veth before DEL");
        node.del(&p, &conf);
        node.add(&p, &conf);
        // Once the background deletion of the old pair has run (15-45 ms here, longer on a
        // loaded machine), the new pair must still be there.
        assert!(
            node.wait_index_gone(old),
            "round {round}: the old pair (index {old}) still exists {TEARDOWN_DEADLINE:?} after DEL"
        );
        assert!(
            node.link_is_up(&p.host_veth()),
            "round {round}: the new host end is gone or down"
        );
        assert_pod_reaches_node(&p, Stack::Dual);
    }
    node.del(&p, &conf);
    node.assert_no_leak("ADD after DEL");
}

/// One container with two attachments (eth0, net1): distinct IPs, both work, each DEL
/// removes only its own.
#[test]
fn two_attachments_of_one_container() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("multi");
    let conf = node.conf("1.0.0", Stack::V4);
    let a0 = node.pod("a");
    let a1 = node.second_attachment(&a0, "net1");
    let r0 = node.add(&a0, &conf);
    let out = node.run("ADD", &a1, &conf);
    if !out.success {
        // Whatever the reason, a failed ADD must leave nothing of net1 behind.
        node.assert_pod_gone(&a1, &[], "failed ADD of a second attachment");
        panic!("ADD of a second attachment (net1) of one container failed: {out}");
    }
    let r1 = out.ok();
    assert_result_shape("1.0.0", &r1, &a1, Stack::V4);
    let (ip0, ip1) = (result_ips(&r0), result_ips(&r1));
    assert_ne!(ip0, ip1, "two attachments got the same IP");
    assert_ne!(a0.host_veth(), a1.host_veth());
    node.del(&a1, &conf);
    assert!(!a0.ns.sh_ok("ip link show dev net1"), "net1 not removed");
    assert!(
        a0.ns.sh_ok("ip link show dev eth0"),
        "DEL of net1 removed eth0"
    );
    assert_pod_reaches_node(&a0, Stack::V4);
    node.check(&a0, &conf, &r0).ok();
    node.del(&a0, &conf);
    node.assert_no_leak("two attachments");
}

/// GC (CNI 1.1) frees what the runtime no longer lists and keeps what it lists.
#[test]
fn gc_frees_only_unlisted_attachments() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("gc");
    let conf = node.conf("1.1.0", Stack::Dual);
    let keep = node.pod("keep");
    let lost = node.pod("lost");
    let r_keep = node.add(&keep, &conf);
    let r_lost = node.add(&lost, &conf);
    node.gc(&conf, &[(&keep.cid, &keep.ifname)]).ok();
    assert!(
        node.state_files_mentioning(&lost.cid).is_empty(),
        "GC kept the IPAM reservation of an unlisted attachment"
    );
    assert!(
        !node.state_files_mentioning(&keep.cid).is_empty(),
        "GC freed the reservation of a listed attachment"
    );
    node.check(&keep, &conf, &r_keep).ok();
    // A new pod must not get the IPs of the kept one (they are still reserved).
    let newer = node.pod("newer");
    let r_new = node.add(&newer, &conf);
    for ip in result_ips(&r_new) {
        assert!(
            !result_ips(&r_keep).contains(&ip),
            "{ip} handed out twice after GC"
        );
    }
    for p in [&keep, &lost, &newer] {
        node.del(p, &conf);
    }
    let _ = r_lost;
    node.assert_no_leak("GC");
}

/// STATUS (CNI 1.1) succeeds on a healthy node, with no pod and no agent.
#[test]
fn status_succeeds_on_a_healthy_node() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("status");
    let conf = node.conf("1.1.0", Stack::Dual);
    let out = node.run_netless("STATUS", &conf);
    let v = out.ok();
    assert!(
        v.is_null() || v.is_object(),
        "STATUS prints nothing or an object: {out}"
    );
    node.assert_no_leak("STATUS");
}

/// An ICMP echo from `from` to `ip` is answered (three tries of 1 s: the first packet of a
/// path may wait for neighbour resolution).
fn pings(from: &Pod, ip: &str) -> bool {
    (0..3).any(|_| from.ns.sh_ok(&format!("busybox ping -c 1 -W 1 {ip}")))
}

/// STATUS is 51 exactly while the node does not forward a family the network uses: two
/// running pods then lose pod-to-pod traffic of that family (it is routed through the node),
/// and STATUS names the switch. A network without pods is not affected; STATUS
/// only reads (the switch stays off); forwarding on again → success and traffic flows. The
/// switches flipped are the test node's own (its netns), never the root namespace's.
#[test]
fn status_is_51_while_the_node_does_not_forward() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("st51fwd");
    let dual = node.conf("1.1.0", Stack::Dual);
    // A second network with no pod yet: forwarding off costs it nothing (its first ADD
    // turns forwarding on), so it stays available.
    let mut fresh = node.conf("1.1.0", Stack::Dual);
    fresh["name"] = json!(format!("{}-fresh", fresh["name"].as_str().unwrap()));
    let a = node.pod("a");
    let b = node.pod("b");
    node.add(&a, &dual);
    let ips_b = result_ips(&node.add(&b, &dual));
    let (b4, b6) = (
        ips_b.iter().find(|ip| !is_v6(ip)).unwrap().clone(),
        ips_b.iter().find(|ip| is_v6(ip)).unwrap().clone(),
    );
    let status = |conf: &Value| node.run_netless("STATUS", conf);
    let sysctl = |kv: &str| node.ns.sh(&format!("sysctl -qw {kv}")).unwrap();
    let read = |k: &str| {
        node.ns
            .sh(&format!("sysctl -n {k}"))
            .unwrap()
            .trim()
            .to_string()
    };

    status(&dual).ok();
    assert!(pings(&a, &b4) && pings(&a, &b6), "pods must talk before");

    // IPv4 forwarding off.
    sysctl("net.ipv4.ip_forward=0");
    let out = status(&dual);
    assert_eq!(out.err_code(), code::LIMITED_CONNECTIVITY, "{out}");
    let err = out.json().unwrap();
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("IPv4 forwarding is off"), "{out}");
    assert!(!msg.contains("IPv6"), "only IPv4 is off: {out}");
    assert!(
        err["details"]
            .as_str()
            .is_some_and(|d| d.contains("net.ipv4.ip_forward=1")),
        "details say what to do: {out}"
    );
    status(&fresh).ok();
    assert_eq!(read("net.ipv4.ip_forward"), "0", "STATUS must not write");
    assert!(!pings(&a, &b4), "IPv4 pod-to-pod works without forwarding?");
    assert!(pings(&a, &b6), "IPv6 is still forwarded");
    sysctl("net.ipv4.ip_forward=1");
    status(&dual).ok();
    assert!(pings(&a, &b4), "IPv4 back with forwarding");

    // IPv6 forwarding off, then both.
    sysctl("net.ipv6.conf.all.forwarding=0");
    let out = status(&dual);
    assert_eq!(out.err_code(), code::LIMITED_CONNECTIVITY, "{out}");
    assert!(out.stdout.contains("IPv6 forwarding is off"), "{out}");
    assert!(!pings(&a, &b6), "IPv6 pod-to-pod works without forwarding?");
    sysctl("net.ipv4.ip_forward=0");
    let out = status(&dual);
    assert_eq!(out.err_code(), code::LIMITED_CONNECTIVITY, "{out}");
    assert!(
        out.stdout.contains("IPv4 forwarding is off")
            && out.stdout.contains("IPv6 forwarding is off"),
        "both listed: {out}"
    );

    sysctl("net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
    status(&dual).ok();
    assert!(pings(&a, &b4) && pings(&a, &b6), "pods talk again");
    node.del(&a, &dual);
    node.del(&b, &dual);
    node.assert_no_leak("STATUS 51, forwarding");
}

/// A request without `capabilities` (the spec has the runtime remove it; libcni keeps it,
/// other runtimes do not) still gets its `runtimeConfig.portMappings`: the host port answers
/// from another pod through the node's address, and DEL removes the mapping.
#[test]
fn host_port_without_the_capabilities_key() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("hpnocap");
    let base = node.conf("1.1.0", Stack::V4);
    assert!(base.get("capabilities").is_none(), "{base}");
    let mut with_pm = base.clone();
    with_pm["runtimeConfig"] = serde_json::json!({ "portMappings": [
        { "hostPort": 18091, "containerPort": 80, "protocol": "tcp" }
    ]});
    let web = node.pod("web");
    let client = node.pod("client");
    node.add(&web, &with_pm);
    node.add(&client, &base);
    assert!(
        reaches_via(&web, &client, NODE_ADDR_V4, 18091, true),
        "hostPort without capabilities"
    );
    assert!(
        node.hostport_elements().iter().any(|e| e.contains("18091")),
        "{:?}",
        node.hostport_elements()
    );
    node.del(&web, &with_pm);
    assert!(
        !node.hostport_elements().iter().any(|e| e.contains("18091")),
        "DEL removes the mapping: {:?}",
        node.hostport_elements()
    );
    node.del(&client, &base);
    node.assert_no_leak("hostPort without capabilities");
}

/// STATUS is 51 while this network's port mappings are recorded but the table
/// `inet palisade-hostport` is gone (as after `nft flush ruleset`): the host port then stops
/// answering. Another network without mappings is not affected. GC rebuilds the table from
/// the records → success, and the host port answers again. With no mapping recorded, a
/// missing table is no problem.
#[test]
fn status_is_51_while_the_host_port_table_is_missing() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("st51hp");
    let base = node.conf("1.1.0", Stack::V4);
    let mut with_pm = base.clone();
    with_pm["capabilities"] = serde_json::json!({ "portMappings": true });
    with_pm["runtimeConfig"] = serde_json::json!({ "portMappings": [
        { "hostPort": 18090, "containerPort": 80, "protocol": "tcp" }
    ]});
    let mut other = base.clone();
    other["name"] = serde_json::json!("palnet-st51hp-other");
    let web = node.pod("web");
    let client = node.pod("client");
    node.add(&web, &with_pm);
    node.add(&client, &base);
    node.run_netless("STATUS", &base).ok();
    assert!(
        reaches_via(&web, &client, NODE_ADDR_V4, 18090, true),
        "hostPort before"
    );

    node.ns
        .sh(&format!(
            "nft delete table inet {}",
            palisade_common::HOSTPORT_TABLE
        ))
        .unwrap();
    let out = node.run_netless("STATUS", &base);
    assert_eq!(out.err_code(), code::LIMITED_CONNECTIVITY, "{out}");
    assert!(
        out.stdout.contains(palisade_common::HOSTPORT_TABLE) && out.stdout.contains(&web.cid),
        "msg names the table and the attachment: {out}"
    );
    node.run_netless("STATUS", &other).ok();
    assert!(
        !reaches_via(&web, &client, NODE_ADDR_V4, 18090, false),
        "hostPort answers without its table?"
    );

    node.gc(
        &base,
        &[(&web.cid, &web.ifname), (&client.cid, &client.ifname)],
    )
    .ok();
    node.run_netless("STATUS", &base).ok();
    assert!(
        reaches_via(&web, &client, NODE_ADDR_V4, 18090, true),
        "hostPort after GC rebuilt the table"
    );

    node.del(&web, &with_pm);
    node.del(&client, &base);
    assert!(node.hostport_elements().is_empty());
    node.run_netless("STATUS", &base).ok();
    node.assert_no_leak("STATUS 51, hostPort");
}

/// VERSION lists every version the tests use.
#[test]
fn version_lists_supported_versions() {
    let out = std::process::Command::new(plugin_bin())
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(br#"{"cniVersion":"1.1.0"}"#)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "VERSION failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("VERSION prints JSON");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for ver in SPEC_VERSIONS {
        assert!(supported.contains(&ver), "{ver} missing from {supported:?}");
    }
}

/// Whether `nc` from `client` to `addr:port` is answered by a listener on `server:80`.
/// Expected open, it is tried until [`SETTLE_DEADLINE`] (first packets may wait for
/// neighbour resolution); expected closed, once (the listener is known to be up).
fn reaches_via(server: &Pod, client: &Pod, addr: &str, port: u16, expect_open: bool) -> bool {
    let _listener = PongServer::start(server, 80);
    if expect_open {
        pong_eventually(client, addr, port).is_ok()
    } else {
        pong(client, addr, port).is_ok()
    }
}

/// hostPort through the plugin binary: ADD programs the mapping (another pod and the pod
/// itself, hairpin, reach it through the node's address), CHECK passes, DEL removes the map
/// elements.
#[test]
fn host_port_through_the_plugin() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("hport");
    let base = node.conf("1.0.0", Stack::Dual);
    let mut with_pm = base.clone();
    with_pm["capabilities"] = serde_json::json!({ "portMappings": true });
    with_pm["runtimeConfig"] = serde_json::json!({ "portMappings": [
        { "hostPort": 18080, "containerPort": 80, "protocol": "tcp" }
    ]});
    let web = node.pod("web");
    let client = node.pod("client");
    let r_web = node.add(&web, &with_pm);
    node.add(&client, &base);
    assert!(
        !node.hostport_elements().is_empty(),
        "ADD with portMappings programmed nothing"
    );
    assert!(
        reaches_via(&web, &client, NODE_ADDR_V4, 18080, true),
        "client pod cannot reach hostPort {NODE_ADDR_V4}:18080"
    );
    assert!(
        reaches_via(&web, &client, NODE_ADDR_V6, 18080, true),
        "client pod cannot reach hostPort [{NODE_ADDR_V6}]:18080"
    );
    assert!(
        reaches_via(&web, &web, NODE_ADDR_V4, 18080, true),
        "hairpin: the pod cannot reach itself through its hostPort"
    );
    node.check(&web, &with_pm, &r_web).ok();
    node.del(&web, &with_pm);
    assert!(
        node.hostport_elements().is_empty(),
        "DEL left hostPort elements"
    );
    assert!(
        !reaches_via(&web, &client, NODE_ADDR_V4, 18080, false),
        "hostPort still answers after DEL"
    );
    node.del(&client, &base);
    node.assert_no_leak("hostPort");
}

/// `mtu` reaches both veth ends.
#[test]
fn mtu_is_applied_to_both_ends() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("mtu");
    let mut conf = node.conf("1.1.0", Stack::V4);
    conf["mtu"] = serde_json::json!(1400);
    let p = node.pod("p");
    let r = node.add(&p, &conf);
    let pod_if = p.ns.sh("ip -o link show dev eth0").unwrap();
    let host_if = node
        .ns
        .sh(&format!("ip -o link show dev {}", p.host_veth()))
        .unwrap();
    assert!(pod_if.contains("mtu 1400"), "pod end: {pod_if}");
    assert!(host_if.contains("mtu 1400"), "host end: {host_if}");
    let pod_entry = r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_string())
        .cloned()
        .unwrap();
    assert_eq!(pod_entry["mtu"], 1400, "1.1.0 result mtu: {r}");
    node.del(&p, &conf);
    node.assert_no_leak("mtu");
}

/// The host veth is strict about source addresses (README: `rp_filter=1`): a pod that adds
/// an address it was not given cannot use it, its own address works.
#[test]
fn pod_cannot_send_from_a_foreign_address() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("spoof");
    let conf = node.conf("1.0.0", Stack::V4);
    let p = node.pod("p");
    let r = node.add(&p, &conf);
    let own = &result_ips(&r)[0];
    p.ns.sh("ip addr add 10.244.1.250/32 dev eth0").unwrap();
    assert!(
        p.ns.sh_ok(&format!("busybox ping -c1 -W2 -I {own} {NODE_ADDR_V4}")),
        "own address {own} does not work"
    );
    assert!(
        !p.ns.sh_ok(&format!(
            "busybox ping -c1 -W2 -I 10.244.1.250 {NODE_ADDR_V4}"
        )),
        "a pod reached the node from an address it was not given"
    );
    node.del(&p, &conf);
    node.assert_no_leak("spoof");
}

/// The pod's IPv6 address is usable at once (DAD off): no `tentative` flag right after ADD,
/// solicited-node group joined and local route in place, first echo answered,
/// and `accept_dad=0` on the pod interface (README, "What ADD builds"). The kernel's own
/// link-local address may still be tentative; nothing uses it (the gateway neighbour is
/// static).
#[test]
fn ipv6_address_is_not_tentative() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("dad");
    let conf = node.conf("1.0.0", Stack::Dual);
    let p = node.pod("p");
    let ips = result_ips(&node.add(&p, &conf));
    let ip: std::net::Ipv6Addr = ips.iter().find(|ip| is_v6(ip)).unwrap().parse().unwrap();
    // Live the moment ADD returns. The first echo to the node makes the node solicit the
    // pod's address; an address added while the pod link was still down joined its
    // solicited-node group a few milliseconds after ADD returned, that first solicitation
    // was dropped, and the node solicited again after its 1 s retransmit timer. Count the
    // node's solicitations rather than time the echo: a loaded machine can delay a reply
    // past any timeout, but only a dropped solicitation makes the node send a second one.
    let solicits = || -> u64 {
        let snmp = node.ns.sh("cat /proc/net/snmp6").unwrap();
        snmp.lines()
            .find_map(|l| l.strip_prefix("Icmp6OutNeighborSolicits"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Icmp6OutNeighborSolicits in the node's /proc/net/snmp6")
    };
    let before = solicits();
    let first =
        p.ns.exec("busybox", &["ping", "-c", "1", "-W", "5", NODE_ADDR_V6])
            .unwrap();
    assert!(
        first.status.success(),
        "the first echo to the node got no answer"
    );
    let sent = solicits() - before;
    assert!(
        sent <= 1,
        "the node solicited the pod's address {sent} times for one echo: the first \
         solicitation went unanswered (ND retransmits after 1 s)"
    );
    let o = ip.octets();
    let solicited = std::net::Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    let state =
        p.ns.sh("ip -6 maddr show dev eth0; ip -6 route show table local")
            .unwrap();
    assert!(
        state.contains(&format!("inet6 {solicited}\n")),
        "pod has not joined {solicited}:\n{state}"
    );
    assert!(
        state.contains(&format!("local {ip} dev eth0")),
        "no local route to {ip}:\n{state}"
    );
    let addrs = p.ns.sh("ip -6 addr show dev eth0 scope global").unwrap();
    assert!(
        addrs.contains("fd00:244:1::"),
        "no pod IPv6 address: {addrs}"
    );
    assert!(
        !addrs.contains("tentative"),
        "pod IPv6 address still tentative: {addrs}"
    );
    let accept_dad =
        p.ns.sh("cat /proc/sys/net/ipv6/conf/eth0/accept_dad")
            .unwrap();
    assert_eq!(
        accept_dad.trim(),
        "0",
        "README: accept_dad=0 on the pod interface"
    );
    node.del(&p, &conf);
    node.assert_no_leak("dad");
}

/// DEL of an attachment that was never added succeeds (runtimes DEL after a failed ADD).
#[test]
fn del_of_unknown_attachment_succeeds() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("delunk");
    let conf = node.conf("1.0.0", Stack::Dual);
    let p = node.pod("p");
    node.del(&p, &conf);
    node.assert_no_leak("DEL of unknown attachment");
}

/// CNI 1.1 `cniVersions` without `cniVersion`: the highest common version is used.
#[test]
fn cni_versions_list_negotiates_the_highest_common() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("nego");
    let mut conf = node.conf("1.1.0", Stack::V4);
    conf.as_object_mut().unwrap().remove("cniVersion");
    conf["cniVersions"] = serde_json::json!(["0.4.0", "1.0.0", "1.1.0", "9.9.9"]);
    let p = node.pod("p");
    let r = node.add(&p, &conf);
    assert_result_shape("1.1.0", &r, &p, Stack::V4);
    node.del(&p, &conf);
    node.assert_no_leak("cniVersions");
}

/// A delegated IPAM plugin (Debian's host-local) is executed from `CNI_PATH`; DEL releases
/// its reservation through it.
#[test]
fn delegated_ipam_host_local() {
    delegated_ipam_host_local_at("1.0.0");
}

/// Debian 12's host-local speaks up to 1.0.0: with a 1.1.0 config, it is called at 1.0.0
/// (it would refuse 1.1.0 with "incompatible CNI versions") and its result comes back in
/// 1.1.0's shape; STATUS and GC, which 1.0.0 lacks, are not sent to it.
#[test]
fn delegated_ipam_older_than_the_config() {
    delegated_ipam_host_local_at("1.1.0");
}

fn delegated_ipam_host_local_at(version: &str) {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new(&format!("deleg{}", version.replace('.', "")));
    let hl_dir = node.dir.path().join("host-local");
    let mut conf = node.conf(version, Stack::Dual);
    conf["ipam"] = serde_json::json!({
        "type": "host-local",
        "ranges": [[{ "subnet": POD_SUBNET_V4 }], [{ "subnet": POD_SUBNET_V6 }]],
        "dataDir": hl_dir,
    });
    let a = node.pod("a");
    let b = node.pod("b");
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    assert_result_shape(version, &ra, &a, Stack::Dual);
    assert_pod_reaches_node(&a, Stack::Dual);
    assert_tcp(&b, &result_ips(&rb)[0], &a);
    if version == "1.1.0" {
        node.run_netless("STATUS", &conf).ok();
        node.gc(&conf, &[(&a.cid, &a.ifname), (&b.cid, &b.ifname)])
            .ok();
    }
    let reserved = std::fs::read_dir(hl_dir.join(format!("palnet-{}", node.tag)))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        reserved >= 4,
        "host-local holds {reserved} files for two dual-stack pods"
    );
    node.check(&a, &conf, &ra).ok();
    node.del(&a, &conf);
    node.del(&b, &conf);
    let mut left = Vec::new();
    if let Ok(d) = std::fs::read_dir(hl_dir.join(format!("palnet-{}", node.tag))) {
        for e in d.flatten() {
            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
            if content.contains(&a.cid) || content.contains(&b.cid) {
                left.push(e.path().display().to_string());
            }
        }
    }
    assert!(
        left.is_empty(),
        "host-local reservations not released: {left:?}"
    );
    node.assert_no_leak("delegated IPAM");
}

/// The spec's edge with a delegate written for it: an IPAM plugin that speaks only 1.0.0
/// (and refuses any other config version, as the reference plugins do) serves a pod of a
/// 1.1.0 network in a real namespace: it sees our config with `cniVersion` 1.0.0 and nothing
/// else changed, its 1.0.0 result becomes our 1.1.0 result, the pod gets its address and
/// reaches the node, DEL goes through it, and a delegate with no version in common is a
/// clear code-1 error that leaves nothing behind.
#[test]
fn delegate_that_speaks_only_1_0_0() {
    if !kernel_tests_enabled() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new("onlyv100");
    let bin = node.dir.path().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let write_plugin = |versions: &str| {
        let script = format!(
            r#"#!/bin/sh
in=$(cat)
if [ "$CNI_COMMAND" = VERSION ]; then echo '{{"cniVersion":"1.0.0","supportedVersions":{versions}}}'; exit 0; fi
echo "$CNI_COMMAND $in" >> "$(dirname "$0")/calls"
case "$in" in *'"cniVersion":"1.0.0"'*) ;; *) echo '{{"code":1,"msg":"incompatible CNI versions"}}'; exit 1;; esac
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.244.1.77/24","gateway":"10.244.1.1"}}],"dns":{{"nameservers":["192.0.2.53"]}}}}'
exit 0
"#
        );
        let p = bin.join("only-one-zero");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_plugin(r#"["1.0.0"]"#);
    let cni_path = format!("{}:{}", bin.display(), cni_path());
    let mut conf = node.conf("1.1.0", Stack::V4);
    conf["ipam"] = serde_json::json!({"type": "only-one-zero", "subnet": POD_SUBNET_V4});
    let a = node.pod("a");
    let r = node
        .run_env("ADD", &a, &conf, &[("CNI_PATH", Some(&cni_path))])
        .ok();
    assert_result_shape("1.1.0", &r, &a, Stack::V4);
    assert_eq!(result_ips(&r), ["10.244.1.77"], "{r}");
    assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53", "{r}");
    assert_pod_reaches_node(&a, Stack::V4);
    node.run_env("DEL", &a, &conf, &[("CNI_PATH", Some(&cni_path))])
        .ok();
    let calls = std::fs::read_to_string(bin.join("calls")).unwrap();
    let mut ours = conf.clone();
    ours["cniVersion"] = serde_json::json!("1.0.0");
    let commands: Vec<&str> = calls
        .lines()
        .map(|line| {
            let (command, json) = line.split_once(' ').unwrap();
            let sent: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(
                sent, ours,
                "{command}: only cniVersion differs from our config"
            );
            command
        })
        .collect();
    assert_eq!(commands, ["ADD", "DEL"]);
    node.assert_no_leak("delegate at 1.0.0");

    // No common version: refused before anything is made.
    write_plugin(r#"["0.1.0","0.2.0"]"#);
    let b = node.pod("b");
    let out = node.run_env("ADD", &b, &conf, &[("CNI_PATH", Some(&cni_path))]);
    assert_eq!(out.err_code(), 1, "{out:?}");
    let msg = out.json().unwrap()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("only-one-zero") && msg.contains("0.2.0"),
        "{msg}"
    );
    node.assert_no_leak("refused delegate");
}

/// The agent hears about the pod during ADD (namespace/name from `CNI_ARGS`, container ID,
/// host veth, IPs) and ADD returns only after the agent answered (DESIGN.md: the pod is
/// programmed before its first packet); DEL tells it the pod is gone.
#[test]
fn agent_is_told_before_add_returns() {
    if !kernel_tests_enabled() {
        return;
    }
    use palisade_common::AgentRequest;
    let node = Node::new("agent");
    let agent = FakeAgent::start_delayed(
        &node.agent_socket(),
        FakeAgent::ok(),
        std::time::Duration::from_millis(300),
    );
    let conf = node.conf("1.0.0", Stack::Dual);
    let p = node.pod("p");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1";
    let r = node
        .run_env("ADD", &p, &conf, &[("CNI_ARGS", Some(args))])
        .ok();
    let add_returned = std::time::Instant::now();
    let mut ips: Vec<std::net::IpAddr> =
        result_ips(&r).iter().map(|i| i.parse().unwrap()).collect();
    ips.sort();
    let added: Vec<AgentRequest> = agent.requests.lock().unwrap().clone();
    let told = added.iter().find_map(|r| match r {
        AgentRequest::PodAdded {
            namespace,
            name,
            container_id,
            host_ifname,
            ips,
        } => Some((
            namespace.clone(),
            name.clone(),
            container_id.clone(),
            host_ifname.clone(),
            ips.clone(),
        )),
        _ => None,
    });
    let (ns, name, cid, host_if, mut told_ips) =
        told.unwrap_or_else(|| panic!("agent got no podAdded: {added:?}"));
    told_ips.sort();
    assert_eq!((ns.as_str(), name.as_str()), ("shop", "cart-1"));
    assert_eq!(cid, p.cid);
    assert_eq!(host_if, p.host_veth());
    assert_eq!(told_ips, ips);
    let answered = agent.answered.lock().unwrap()[0];
    assert!(
        answered < add_returned,
        "ADD returned before the agent answered"
    );

    node.del(&p, &conf);
    let all = agent.requests.lock().unwrap().clone();
    assert!(
        all.iter().any(
            |r| matches!(r, AgentRequest::PodDeleted { container_id, .. } if *container_id == p.cid)
        ),
        "agent got no podDeleted: {all:?}"
    );
    node.assert_no_leak("agent");
}

/// CHECK notices every kind of drift from what ADD built (code 108), on the pod side, on the
/// node side and against the IPAM reservation; DEL still cleans up the drifted pod.
#[test]
fn check_detects_each_kind_of_drift() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("drift");
    let conf = node.conf("1.1.0", Stack::Dual);
    type Drift = fn(&Node, &Pod, &mut Value);
    let drifts: [(&str, Drift); 8] = [
        ("pod IPv4 default route removed", |_, p, _| {
            p.ns.sh("ip -4 route del default").unwrap();
        }),
        ("pod IPv6 default route removed", |_, p, _| {
            p.ns.sh("ip -6 route del default").unwrap();
        }),
        ("pod IPv4 address removed", |_, p, r| {
            let ip = result_ips(r).into_iter().find(|i| !is_v6(i)).unwrap();
            p.ns.sh(&format!("ip addr del {ip}/32 dev eth0")).unwrap();
        }),
        ("pod gateway neighbour removed", |_, p, _| {
            p.ns.sh("ip neigh del 169.254.1.1 dev eth0").unwrap();
        }),
        ("host route removed", |n, _, r| {
            let ip = result_ips(r).into_iter().find(|i| !is_v6(i)).unwrap();
            n.ns.sh(&format!("ip route del {ip}/32")).unwrap();
        }),
        ("host veth down", |n, p, _| {
            n.ns.sh(&format!("ip link set {} down", p.host_veth()))
                .unwrap();
        }),
        ("prevResult names another IP", |_, _, r| {
            let ips = r["ips"].as_array_mut().unwrap();
            let v4 = ips
                .iter_mut()
                .find(|i| !i["address"].as_str().unwrap().contains(':'));
            v4.unwrap()["address"] = serde_json::json!("10.244.1.251/32");
        }),
        ("pod interface removed", |_, p, _| {
            p.ns.sh("ip link del eth0").unwrap();
        }),
    ];
    let mut failures = Vec::new();
    for (i, (what, drift)) in drifts.iter().enumerate() {
        let p = node.pod(&format!("d{i}"));
        let mut r = node.add(&p, &conf);
        node.check(&p, &conf, &r).ok();
        drift(&node, &p, &mut r);
        let out = node.check(&p, &conf, &r);
        if out.success {
            failures.push(format!("[{what}] CHECK passed"));
        } else if out.json().and_then(|j| j["code"].as_u64()) != Some(code::CHECK_MISMATCH) {
            failures.push(format!("[{what}] want code 108: {out}"));
        }
        node.del(&p, &conf);
    }
    node.assert_no_leak("drift");
    assert!(
        failures.is_empty(),
        "CHECK missed drift:\n{}",
        failures.join("\n")
    );
}

/// Allocation is round-robin (README, "On-disk state"): a just-freed address is not handed
/// out again at once.
#[test]
fn freed_address_is_not_reused_at_once() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("rr");
    let conf = node.conf("1.0.0", Stack::Dual);
    let a = node.pod("a");
    let ips_a = result_ips(&node.add(&a, &conf));
    node.del(&a, &conf);
    let b = node.pod("b");
    let ips_b = result_ips(&node.add(&b, &conf));
    for ip in &ips_b {
        assert!(!ips_a.contains(ip), "{ip} reused right after it was freed");
    }
    node.del(&b, &conf);
    node.assert_no_leak("round robin");
}

/// Two palisade networks sharing one `dataDir` (the default path is shared): GC of one
/// network, whose runtime list naturally omits the other network's pods, must leave the
/// other network's attachment whole (veth, route, IPAM entry, port mappings).
#[test]
fn gc_of_one_network_leaves_another_alone() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("gc2net");
    let with_ports = |mut c: Value, name: &str, subnet: &str, port: u16| {
        c["name"] = serde_json::json!(name);
        c["ipam"]["ranges"] = serde_json::json!([[{ "subnet": subnet }]]);
        c["capabilities"] = serde_json::json!({ "portMappings": true });
        c["runtimeConfig"] = serde_json::json!({ "portMappings": [
            { "hostPort": port, "containerPort": 80, "protocol": "tcp" }
        ]});
        c
    };
    let net_a = with_ports(
        node.conf("1.1.0", Stack::V4),
        "net-a",
        "10.244.1.0/24",
        18081,
    );
    let net_b = with_ports(
        node.conf("1.1.0", Stack::V4),
        "net-b",
        "10.245.1.0/24",
        18082,
    );
    let pa = node.pod("a");
    let pb = node.pod("b");
    node.add(&pa, &net_a);
    let rb = node.add(&pb, &net_b);
    let elements_before = node.hostport_elements().len();

    node.gc(&net_a, &[(&pa.cid, &pa.ifname)]).ok();

    assert!(
        node.pod_links().contains(&pb.host_veth()),
        "GC of net-a deleted net-b's veth"
    );
    node.check(&pb, &net_b, &rb).ok();
    assert_eq!(
        node.hostport_elements().len(),
        elements_before,
        "GC of net-a changed hostPort elements; net-b's mapping must stay"
    );
    let client = node.pod("client");
    node.add(&client, &node.conf("1.0.0", Stack::V4));
    assert_tcp(&pb, &result_ips(&rb)[0], &client);

    node.del(&pa, &net_a);
    node.del(&pb, &net_b);
    node.del(&client, &node.conf("1.0.0", Stack::V4));
    node.assert_no_leak("two networks");
}
