//! What an operator debugging a node sees of the plugin: the line it answers when run by
//! hand, and its optional log file (`logFile`, `logLevel`), which never touches stdout and
//! never fails a command.

// `pub`: the harness is shared by every test binary and each uses a part of it.
pub mod common;

use common::code::*;
use common::*;
use palisade_testutil::kernel_tests_enabled;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run by hand (no `CNI_COMMAND`, or an empty one), the plugin says what it is on stderr and
/// exits 0 at once, without waiting for stdin: stdin here is a pipe nobody ever closes.
#[test]
fn run_by_hand_it_names_itself_and_exits() {
    for command in [None, Some("")] {
        let mut cmd = Command::new(plugin_bin());
        cmd.env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = command {
            cmd.env("CNI_COMMAND", c);
        }
        let mut child = cmd.spawn().unwrap();
        let _keep_stdin_open = child.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("CNI_COMMAND={command:?}: the plugin waits on stdin");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(0), "{err}");
        assert_eq!(out, "", "stdout is the runtime's");
        assert_eq!(
            err,
            format!("CNI plugin palisade v{}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// With `logFile`, every invocation leaves one line (command, attachment, pod, outcome,
/// time) and stdout stays the result JSON alone; `logLevel: debug` adds the config received
/// and the steps; an error is logged with its code; a bad `logLevel` is refused (code 7)
/// before anything is done; a log file that cannot be written does not fail the command;
/// without `logFile`, nothing is written.
#[test]
fn log_file_on_request_and_never_on_stdout() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = Node::new("oplog");
    let log = node.dir.path().join("log/palisade.log");
    let mut conf = node.conf("1.1.0", Stack::Dual);
    conf["logFile"] = serde_json::json!(log);
    let a = node.pod("a");
    let out = node.run("ADD", &a, &conf);
    let result: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is the result JSON alone ({e}): {:?}", out.stdout));
    let ips = result_ips(&result);
    node.del(&a, &conf);
    let text = std::fs::read_to_string(&log).expect("the log file and its directory exist");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "info: one line per invocation\n{text}");
    let add = lines[0];
    assert!(
        add.contains(" INFO palisade[")
            && add.contains(&format!(
                "ADD {}/eth0 pod default/p netns {}: ok ",
                a.cid,
                a.netns_path()
            ))
            && ips.iter().all(|ip| add.contains(ip.as_str()))
            && add.ends_with(" ms)"),
        "{add}"
    );
    assert!(
        lines[1].contains(&format!("DEL {}/eth0", a.cid)) && lines[1].contains(": ok ("),
        "{}",
        lines[1]
    );
    // The time leads each line: RFC 3339 UTC.
    assert_eq!(&add[4..5], "-");
    assert_eq!(&add[23..25], "Z ");

    // debug: the config too, and still nothing on stdout but the result.
    conf["logLevel"] = serde_json::json!("debug");
    let b = node.pod("b");
    let out = node.run("ADD", &b, &conf);
    assert!(
        serde_json::from_str::<serde_json::Value>(out.stdout.trim()).is_ok(),
        "{out}"
    );
    node.del(&b, &conf);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains(" DEBUG ") && l.contains("config: {") && l.contains(&node.tag)),
        "{text}"
    );

    // An error is logged with its code (and still answered on stdout as JSON).
    conf["logLevel"] = serde_json::json!("error");
    let mut gone = conf.clone();
    gone["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.244.9.0/30"}]]);
    let c = node.pod("c");
    let out = node.run_env(
        "ADD",
        &c,
        &gone,
        &[("CNI_NETNS", Some("/nonexistent/netns"))],
    );
    assert_eq!(out.err_code(), UNKNOWN_CONTAINER, "{out}");
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    assert!(
        last.contains(" ERROR ") && last.contains(": error 3: "),
        "{last}"
    );

    // A bad level is a config error, answered before anything happens.
    conf["logLevel"] = serde_json::json!("verbose");
    let out = node.run("ADD", &node.pod("d"), &conf);
    assert_eq!(out.err_code(), INVALID_CONFIG, "{out}");
    assert!(out.stdout.contains("logLevel"), "{out}");

    // A log file that cannot be written never fails the command.
    let mut unwritable = node.conf("1.1.0", Stack::V4);
    unwritable["logFile"] = serde_json::json!("/proc/palisade-cannot-write-here/log");
    let e = node.pod("e");
    node.add(&e, &unwritable);
    node.del(&e, &unwritable);

    // Off by default: the file is not touched by a config without logFile.
    let before = std::fs::read_to_string(&log).unwrap();
    let plain = node.conf("1.1.0", Stack::V4);
    let f = node.pod("f");
    node.add(&f, &plain);
    node.del(&f, &plain);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), before);
    node.assert_no_leak("log file");
}
