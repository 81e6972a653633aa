//! `palisadectl reach|status|drops --agent SOCKET` against a stand-in agent debug socket
//! that serves `/status`, `/debug/state` (the document `agent/debug_state.rs` produces) and
//! `/drops`. No root: the programmed table is asked for in a namespace path that
//! does not exist, which `status` must report as unreadable rather than fail on.

use palisade_policy::agent::debug_state;
use palisade_policy::ctl::manifests;
use palisade_testutil::TempDir;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

/// A stand-in agent's socket; its directory (socket and request log) goes with it.
struct StandIn {
    socket: String,
    _dir: TempDir,
}

/// Serves `routes` (request target → body) on a unix socket until the test process ends.
/// Requests are recorded in `requests` next to the socket.
fn stand_in_agent(routes: Vec<(&'static str, String)>) -> StandIn {
    let dir = TempDir::new("palisadectl-live");
    let socket = dir.path().join("debug.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let log = dir.path().join("requests");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let target = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let _ = writeln!(f, "{target}");
            // Read the headers to the blank line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = target.split('?').next().unwrap_or("");
            let mut stream = stream;
            let reply = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => format!(
                    "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.0 404 Not Found\r\ncontent-length: 10\r\n\r\nnot found\n".to_string(),
            };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    StandIn {
        socket: socket.to_string_lossy().into_owned(),
        _dir: dir,
    }
}

fn golden_manifests() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ctl/manifests")
}

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reach_from_the_agent_state_equals_reach_from_the_manifests() {
    let loaded = manifests::build_state(&manifests::load_paths(&[golden_manifests()]).unwrap());
    let state = debug_state::debug_state("node-1", &loaded.state).to_string();
    let agent = stand_in_agent(vec![("/debug/state", state)]);
    let files = golden_manifests();
    let (code, from_files, err) = ctl(&[
        "reach",
        "-f",
        files.to_str().unwrap(),
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, from_agent, err) = ctl(&[
        "reach",
        "--agent",
        &agent.socket,
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(from_agent, from_files);
    assert!(from_agent.contains("\"x/web\""), "{from_agent}");
}

#[test]
fn an_agent_without_debug_state_is_a_clear_error() {
    let agent = stand_in_agent(vec![]);
    let (code, _, err) = ctl(&["reach", "--agent", &agent.socket, "--port", "80"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 404") && err.contains("no /debug/state endpoint"),
        "{err}"
    );
}

#[test]
fn status_prints_readiness_versions_and_invalid_policies() {
    let status = serde_json::json!({
        "ready": true, "node": "node-1",
        "programmedResourceVersions": {"pods": "12", "namespaces": "3", "networkpolicies": "7", "nodes": "2"},
        "lastSync": {"durationMs": 4.5, "commands": 9, "full": false},
        "lastError": null,
        "invalidPolicies": [{"namespace": "x", "name": "bad", "errors": ["spec.ingress[0].ports[0].port: Invalid value: 0"]}],
        "masquerade": {"ipv4": true, "ipv6": false, "nonMasqueradeCIDRs": ["10.0.0.0/8", "192.0.2.0/24"], "clusterCIDRs": []},
    });
    let agent = stand_in_agent(vec![("/status", status.to_string())]);
    let (code, out, err) = ctl(&[
        "status",
        "--agent",
        &agent.socket,
        "--nft-netns",
        "/nonexistent/palisadectl-test-netns",
    ]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "ready                yes",
        "last sync            4.5 ms, 9 commands",
        "programmed versions  namespaces=3 networkpolicies=7 nodes=2 pods=12",
        "invalid policies     1",
        "masquerade           IPv4 on, IPv6 off; not to 10.0.0.0/8, 192.0.2.0/24",
        "  x/bad: spec.ingress[0].ports[0].port: Invalid value: 0",
        "table inet palisade  not readable: ",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let (code, out, _) = ctl(&[
        "status",
        "--agent",
        &agent.socket,
        "--nft-netns",
        "/nonexistent/x",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["agent"]["ready"], true);
    assert!(v["table"]["error"].is_string(), "{v}");
}

#[test]
fn status_of_an_agent_not_ready_exits_4_and_no_agent_exits_1() {
    let status = serde_json::json!({"ready": false, "node": "node-1"});
    let agent = stand_in_agent(vec![("/status", status.to_string())]);
    let (code, out, _) = ctl(&[
        "status",
        "--agent",
        &agent.socket,
        "--nft-netns",
        "/nonexistent/x",
    ]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("ready                no"), "{out}");
    let (code, out, err) = ctl(&["status", "--agent", "/nonexistent/debug.sock"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("/nonexistent/debug.sock") && err.contains("no agent listens here"),
        "{err}"
    );
}

#[test]
fn drops_prints_the_agents_drops_and_sends_the_filter() {
    let drop = |src: &str, dst: &str, port: u16| {
        serde_json::json!({
            "time": "2026-12-07T08:15:02.123456789Z", "node": "node-1", "direction": "ingress",
            "protocol": "TCP", "srcPod": src, "srcIp": "10.244.2.7", "srcPort": 40312,
            "dstPod": dst, "dstIp": "10.244.1.5", "dstPort": port,
            "policies": ["x/deny-all"], "prefix": "palisade drop ingress pod-in-x"
        })
        .to_string()
    };
    let body = format!(
        "{}\n{{\"lost\":2}}\n{}\n",
        drop("y/client", "x/db", 5432),
        drop("y/other", "x/web", 80)
    );
    let agent = stand_in_agent(vec![("/drops", body)]);
    let (code, out, err) = ctl(&[
        "drops",
        "--agent",
        &agent.socket,
        "-n",
        "x",
        "--pod",
        "db",
        "--last",
        "7",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "TIME          NODE    DIRECTION  FROM      TO     PORT      POLICIES",
            "08:15:02.123  node-1  ingress    y/client  x/db   5432/TCP  x/deny-all",
            "08:15:02.123  node-1  ingress    y/other   x/web  80/TCP    x/deny-all",
        ],
        "{out}"
    );
    assert!(err.contains("skipped 2 drops"), "{err}");
    let requests =
        std::fs::read_to_string(Path::new(&agent.socket).with_file_name("requests")).unwrap();
    assert_eq!(requests.trim(), "/drops?last=7&namespace=x&pod=db");
    let (_, json, _) = ctl(&["drops", "--agent", &agent.socket, "-o", "json"]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["dstPort"], 5432);
    let (_, wide, _) = ctl(&[
        "drops",
        "--agent",
        &agent.socket,
        "-o",
        "wide",
        "--color",
        "never",
    ]);
    assert!(
        wide.lines()
            .nth(1)
            .unwrap()
            .ends_with("10.244.2.7  10.244.1.5  40312     palisade drop ingress pod-in-x"),
        "{wide}"
    );
}

/// Kernel test: the compiled ruleset of node-1 programmed with the real nft into a test
/// namespace; `explain --agent ... --nft-netns` walks the packet through the table read back
/// from the kernel, with the nft rule handles, and finds it agrees with the compiled path.
#[test]
fn explain_walks_the_programmed_table() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    use palisade_policy::nft::{Dataplane, NftDataplane, NftOptions};
    let loaded = manifests::build_state(&manifests::load_paths(&[golden_manifests()]).unwrap());
    let netns = palisade_testutil::TestNetns::new("ctl").unwrap();
    let ruleset = palisade_policy::compile::compile(
        &loaded.state,
        &palisade_policy::compile::CompileOptions {
            node: "node-1".into(),
            fail_closed_new_pods: true,
            nflog_group: None,
            masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
        },
    );
    let mut nft = NftDataplane::new(NftOptions {
        netns: Some(netns.path().to_path_buf()),
        ..NftOptions::default()
    });
    nft.apply(&ruleset).unwrap();
    let state = debug_state::debug_state("node-1", &loaded.state).to_string();
    let agent = stand_in_agent(vec![("/debug/state", state)]);
    let (code, out, err) = ctl(&[
        "explain",
        "--agent",
        &agent.socket,
        "--nft-netns",
        netns.path().to_str().unwrap(),
        "--from",
        "y/probe",
        "--to",
        "x/web",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["ingress"]["isolatedBy"],
        serde_json::json!(["x/web-from-clients"])
    );
    assert_eq!(r["disagreements"], serde_json::json!([]), "{err}");
    let live = r["live"].as_array().expect("live hops");
    assert_eq!(live.len(), 1, "{r:#}");
    assert_eq!(live[0]["accepted"], false);
    // The programmed walk hits the same rules as the compiled one, and every rule it names
    // was found in the kernel's listing by its handle.
    assert_eq!(
        live[0]["rules"].as_array().unwrap().len(),
        r["hops"][0]["rules"].as_array().unwrap().len()
    );
    let (code, text, _) = ctl(&[
        "explain",
        "--agent",
        &agent.socket,
        "--nft-netns",
        netns.path().to_str().unwrap(),
        "--from",
        "y/probe",
        "--to",
        "x/web",
        "--port",
        "80",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0);
    assert!(text.contains("programmed table (nft, live):"), "{text}");
}
