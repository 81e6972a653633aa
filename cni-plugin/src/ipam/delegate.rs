//! Running another IPAM plugin as the CNI spec says ("Delegated plugins (IPAM)"): found by
//! its `type` in `CNI_PATH`, executed with the same environment and the same network
//! configuration on stdin, its result (or error JSON) read from stdout.

use crate::error::{CniError, Result};
use crate::types::CniResult;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Find `plugin` in the `CNI_PATH` directories.
pub fn find(plugin: &str, cni_path: &[PathBuf]) -> Result<PathBuf> {
    if cni_path.is_empty() {
        return Err(CniError::InvalidEnv {
            var: "CNI_PATH",
            reason: format!("missing, needed to find the IPAM plugin {plugin:?}"),
        });
    }
    cni_path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| is_executable(p))
        .ok_or_else(|| CniError::Delegate {
            plugin: plugin.to_string(),
            reason: format!("not found in CNI_PATH {}", join(cni_path)),
        })
}

fn join(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Execute the delegate with `CNI_COMMAND=command` (everything else inherited) and `stdin`.
/// Returns its stdout parsed as JSON when it printed any.
pub fn exec(
    plugin: &str,
    cni_path: &[PathBuf],
    command: &str,
    stdin: &[u8],
) -> Result<Option<Value>> {
    let bin = find(plugin, cni_path)?;
    let fail = |reason: String| CniError::Delegate {
        plugin: plugin.to_string(),
        reason,
    };
    let spawn = || {
        Command::new(&bin)
            .env("CNI_COMMAND", command)
            // Our own crash hook must not fire inside the delegate (it does not know it anyway).
            .env_remove("PALISADE_TEST_CRASH_AT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // ETXTBSY: the binary was just written and some process forked while it was open for
    // writing. libcni retries the same way (5 times, 1 s apart); shorter waits suffice here.
    let mut attempt = 0;
    let mut child = loop {
        match spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 5 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            }
            other => break other.map_err(|e| fail(format!("exec {}: {e}", bin.display())))?,
        }
    };
    // A delegate that exits without reading stdin gives EPIPE here; its exit status tells more.
    let _ = child.stdin.take().expect("piped").write_all(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("wait: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Value> = if stdout.trim().is_empty() {
        None
    } else {
        serde_json::from_str(stdout.trim()).ok()
    };
    if !out.status.success() {
        if let Some(err) = parsed.as_ref().filter(|v| v.get("code").is_some()) {
            return Err(CniError::DelegateFailed {
                plugin: plugin.to_string(),
                code: err["code"].as_u64().unwrap_or(999) as u32,
                msg: err["msg"].as_str().unwrap_or("").to_string(),
                details: err["details"].as_str().unwrap_or("").to_string(),
            });
        }
        return Err(fail(format!(
            "{command} failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if parsed.is_none() && !stdout.trim().is_empty() {
        return Err(fail(format!(
            "{command} printed something that is not JSON: {}",
            stdout.trim()
        )));
    }
    Ok(parsed)
}

/// ADD through the delegate: its (abbreviated) result.
pub fn add(plugin: &str, cni_path: &[PathBuf], stdin: &[u8]) -> Result<CniResult> {
    let v = exec(plugin, cni_path, "ADD", stdin)?.ok_or_else(|| CniError::Delegate {
        plugin: plugin.to_string(),
        reason: "ADD printed no result".into(),
    })?;
    let r = CniResult::from_value(&v).map_err(|e| CniError::Delegate {
        plugin: plugin.to_string(),
        reason: format!("ADD result: {e}"),
    })?;
    if r.ips.is_empty() {
        return Err(CniError::Delegate {
            plugin: plugin.to_string(),
            reason: "ADD result has no ips".into(),
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_plugin(dir: &Path, name: &str, script: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "palisade-delegate-test-{}-{tag}",
            std::process::id()
        ))
    }

    #[test]
    fn a_delegate_result_is_parsed_and_its_stdin_is_our_config() {
        let d = dir("ok");
        // Echo back an address only if stdin carried our config and CNI_COMMAND is ADD.
        fake_plugin(
            &d,
            "fake-ipam",
            r#"in=$(cat); case "$in" in *'"name":"n"'*) ;; *) exit 3;; esac
[ "$CNI_COMMAND" = ADD ] || exit 4
echo '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.5/24","gateway":"10.9.0.1"}]}'"#,
        );
        let r = add(
            "fake-ipam",
            &[PathBuf::from("/nonexistent"), d.clone()],
            br#"{"name":"n"}"#,
        )
        .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.5/24");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_delegate_error_json_passes_through_with_its_code() {
        let d = dir("err");
        fake_plugin(
            &d,
            "fake-ipam",
            r#"cat >/dev/null; echo '{"code":11,"msg":"busy","details":"later"}'; exit 1"#,
        );
        let e = exec("fake-ipam", std::slice::from_ref(&d), "ADD", b"{}").unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(e.msg().contains("busy"));
        assert_eq!(e.details(), "later");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_missing_delegate_is_code_107_and_missing_cni_path_code_4() {
        let e = exec(
            "no-such-ipam",
            &[PathBuf::from("/nonexistent")],
            "ADD",
            b"{}",
        )
        .unwrap_err();
        assert_eq!(e.code(), 107);
        assert_eq!(exec("x", &[], "ADD", b"{}").unwrap_err().code(), 4);
    }
}
