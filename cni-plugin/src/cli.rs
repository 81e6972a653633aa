//! The process edge: env (`CNI_*`) + stdin (network config) → command → result JSON on
//! stdout, or the spec's error JSON and a non-zero exit. This is the only place where errors
//! become JSON.

use crate::config::{self, Command, Env, NetConf};
use crate::error::{CniError, Result};
use crate::{commands, log, version};
use serde_json::Value;
use std::io::{Read, Write};

/// The line a person gets who runs the plugin by hand (on stderr, exit 0), as the reference
/// plugins answer without `CNI_COMMAND`.
pub fn about() -> String {
    format!("CNI plugin palisade v{}", env!("CARGO_PKG_VERSION"))
}

/// Run the command the environment names and return the process exit code.
pub fn run() -> i32 {
    // No CNI_COMMAND: a person, not a runtime. Answer who we are instead of waiting on stdin.
    if std::env::var_os("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        eprintln!("{}", about());
        return 0;
    }
    let started = std::time::Instant::now();
    let env = Env::from_lookup(|k| std::env::var(k).ok());
    let (raw, outcome) = match (read_stdin(env.as_ref().ok().map(|e| e.command)), &env) {
        (Err(e), _) => (Vec::new(), Err(e)),
        (Ok(raw), Ok(env)) => {
            let outcome = dispatch(env, &raw);
            log_outcome(env, &outcome, started.elapsed());
            (raw, outcome)
        }
        (Ok(raw), Err(_)) => (raw, env.map(|_| None)),
    };
    let (out, code) = match outcome {
        Ok(out) => (out, 0),
        Err(e) => (
            Some(e.to_json(config::best_effort_version(&raw).as_str())),
            1,
        ),
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, &v);
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
    }
    code
}

/// Read the network configuration. VERSION may be run by hand from a terminal without any
/// stdin: don't block on a TTY then.
fn read_stdin(command: Option<Command>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    // SAFETY: isatty on fd 0 has no preconditions.
    if command == Some(Command::Version) && unsafe { libc::isatty(0) } == 1 {
        return Ok(buf);
    }
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|source| CniError::Io {
            context: "read network configuration from stdin".into(),
            source,
        })?;
    Ok(buf)
}

/// What one invocation asks for, parsed and validated from its environment and stdin before
/// any command touches the kernel or the disk.
#[derive(Debug)]
pub enum Request {
    /// VERSION: the answer needs nothing else.
    Version(Value),
    /// Every other command, over its network configuration.
    Command(Box<NetConf>),
}

/// The parse-only front of [`run`]: every command goes through it, and the fuzz targets
/// (`fuzz/`) drive it without running a command.
pub fn parse_request(env: &Env, raw: &[u8]) -> Result<Request> {
    if env.command == Command::Version {
        return Ok(Request::Version(version::version_info(
            config::requested_version(raw).as_deref(),
        )));
    }
    config::parse_netconf(raw).map(|conf| Request::Command(Box::new(conf)))
}

fn dispatch(env: &Env, raw: &[u8]) -> Result<Option<Value>> {
    let conf = match parse_request(env, raw)? {
        Request::Version(answer) => return Ok(Some(answer)),
        Request::Command(conf) => *conf,
    };
    log::init(conf.log.as_ref());
    log::debug(format_args!(
        "{:?} config: {}",
        env.command,
        String::from_utf8_lossy(raw)
    ));
    match env.command {
        Command::Add => Ok(Some(commands::add::add(env, &conf)?.to_json(&conf.version))),
        Command::Del => commands::del::del(env, &conf).map(|()| None),
        Command::Check => commands::check::check(env, &conf).map(|()| None),
        Command::Gc => commands::gc::gc(env, &conf).map(|()| None),
        Command::Status => commands::status::status(env, &conf).map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}

/// The invocation's line in the log file: `ADD c1/eth0 pod x/a netns /run/netns/p: ok
/// 10.244.1.5/24 (3.1 ms)`, or the error's code and message.
fn log_outcome(env: &Env, outcome: &Result<Option<Value>>, took: std::time::Duration) {
    let level = if outcome.is_ok() {
        log::Level::Info
    } else {
        log::Level::Error
    };
    if !log::enabled(level) {
        return;
    }
    let mut what = format!("{:?}", env.command).to_uppercase();
    if let Some(a) = &env.attachment {
        what.push_str(&format!(" {}/{}", a.container_id, a.ifname));
    }
    if let (Some(ns), Some(name)) = (&env.args.pod_namespace, &env.args.pod_name) {
        what.push_str(&format!(" pod {ns}/{name}"));
    }
    if let Some(netns) = env.netns.as_ref().filter(|n| !n.is_empty()) {
        what.push_str(&format!(" netns {netns}"));
    }
    let result = match outcome {
        Ok(Some(v)) if v.get("ips").is_some() => {
            let ips: Vec<&str> = v["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ip| ip["address"].as_str())
                .collect();
            format!("ok {}", ips.join(" "))
        }
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error {}: {}", e.code(), e.msg()),
    };
    log::write(
        level,
        format_args!("{what}: {result} ({:.1} ms)", took.as_secs_f64() * 1000.0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(command: Command) -> Env {
        Env {
            command,
            attachment: Some(config::Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }),
            netns: Some("/nonexistent/netns".into()),
            args: config::CniArgs::default(),
            cni_path: Vec::new(),
        }
    }

    fn conf(version: &str, data_dir: &std::path::Path) -> Vec<u8> {
        json!({
            "cniVersion": version, "name": "t", "type": "palisade",
            "agent": {"socket": data_dir.join("no-agent.sock")},
            "ipam": {"type": "palisade", "ranges": [[{"subnet": "10.0.0.0/30"}]], "dataDir": data_dir}
        })
        .to_string()
        .into_bytes()
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("palisade-main-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn version_needs_no_config() {
        let out = dispatch(&env(Command::Version), b"").unwrap().unwrap();
        assert_eq!(out["supportedVersions"], json!(version::SUPPORTED));
        let out = dispatch(&env(Command::Version), br#"{"cniVersion":"0.4.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
    }

    #[test]
    fn decoding_and_version_errors_come_before_any_work() {
        let d = tmpdir("early");
        assert_eq!(dispatch(&env(Command::Add), b"{").unwrap_err().code(), 6);
        assert_eq!(
            dispatch(&env(Command::Gc), &conf("1.0.0", &d))
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            dispatch(&env(Command::Status), &conf("0.4.0", &d))
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            dispatch(&env(Command::Check), &conf("0.3.1", &d))
                .unwrap_err()
                .code(),
            1
        );
        // CHECK without prevResult: invalid config, before the (missing) netns is looked at.
        assert_eq!(
            dispatch(&env(Command::Check), &conf("1.0.0", &d))
                .unwrap_err()
                .code(),
            7
        );
        // ADD into a netns that does not exist: container unknown, and nothing reserved.
        assert_eq!(
            dispatch(&env(Command::Add), &conf("1.0.0", &d))
                .unwrap_err()
                .code(),
            3
        );
        assert!(!d.join("t").join("ipam.json").exists());
        let _ = std::fs::remove_dir_all(d);
    }

    // STATUS reads the forwarding switches of the namespace it runs in: these run on a node
    // of their own (a private netns with forwarding on), whatever the host's settings.
    #[test]
    fn status_is_ready_with_a_writable_state_dir_and_no_required_agent() {
        let d = tmpdir("status");
        commands::status::on_forwarding_node(|| {
            assert!(dispatch(&env(Command::Status), &conf("1.1.0", &d))
                .unwrap()
                .is_none());
            // Agent required but absent: not available (50).
            let mut c: Value = serde_json::from_slice(&conf("1.1.0", &d)).unwrap();
            c["agent"]["required"] = json!(true);
            let e = dispatch(&env(Command::Status), c.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.code(), 50);
        });
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn status_reports_an_exhausted_range() {
        let d = tmpdir("full");
        let state = d.join("t");
        std::fs::create_dir_all(&state).unwrap();
        // 10.0.0.0/30 has two usable addresses: both taken.
        std::fs::write(
            state.join("ipam.json"),
            json!({"version": 1, "attachments": [
                {"containerId": "a", "ifname": "eth0", "hostIfname": "pal1", "ips": ["10.0.0.1"]},
                {"containerId": "b", "ifname": "eth0", "hostIfname": "pal2", "ips": ["10.0.0.2"]}
            ]})
            .to_string(),
        )
        .unwrap();
        commands::status::on_forwarding_node(|| {
            let e = dispatch(&env(Command::Status), &conf("1.1.0", &d)).unwrap_err();
            assert_eq!(e.code(), 50);
            assert!(e.msg().contains("exhausted"), "{}", e.msg());
        });
        let _ = std::fs::remove_dir_all(d);
    }
}
