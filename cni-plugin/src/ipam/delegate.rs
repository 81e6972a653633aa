//! Running another IPAM plugin as the CNI spec says ("Delegated plugins (IPAM)"): found by
//! its `type` in `CNI_PATH`, executed with the same environment and the same network
//! configuration on stdin, its result (or error JSON) read from stdout.
//!
//! The delegate may be older than the config: Debian 12's `host-local` speaks up to 1.0.0
//! and refuses a 1.1.0 config with "incompatible CNI versions". As libcni does for the
//! plugins of a list, the delegate is asked for its `VERSION` first and called with the
//! newest version both support (`cniVersion` rewritten, nothing else); its result, in that
//! version's shape, is parsed into our version-independent [`CniResult`] and answered in the
//! config's version. A command its version lacks is not sent (CHECK before 0.4.0, GC and
//! STATUS before 1.1.0), again as libcni skips them.

use crate::config::NetConf;
use crate::error::{CniError, Result};
use crate::types::CniResult;
use crate::version::CniVersion;
use serde_json::Value;
use std::borrow::Cow;
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

/// A delegated IPAM plugin as one invocation calls it: found in `CNI_PATH` and asked for its
/// versions once.
#[derive(Debug)]
pub struct Delegate<'a> {
    plugin: &'a str,
    bin: PathBuf,
    /// The version it is called with, and the config it gets (ours, or ours with that
    /// `cniVersion`).
    version: CniVersion,
    config: Cow<'a, [u8]>,
}

impl<'a> Delegate<'a> {
    pub fn new(plugin: &'a str, cni_path: &[PathBuf], conf: &'a NetConf) -> Result<Delegate<'a>> {
        let bin = find(plugin, cni_path)?;
        let ours = conf.version.clone();
        let probe = serde_json::json!({ "cniVersion": ours.as_str() }).to_string();
        // A delegate that cannot say (a VERSION that fails or prints nonsense) is called with
        // our version and answers for itself.
        let theirs: Option<Vec<String>> = run(plugin, &bin, "VERSION", probe.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v.get("supportedVersions")?.clone()).ok());
        crate::log::debug(format_args!(
            "IPAM plugin {plugin} ({}) supports {theirs:?}; the config is {}",
            bin.display(),
            ours.as_str()
        ));
        let Some(theirs) = theirs.filter(|t| !t.iter().any(|v| v == ours.as_str())) else {
            return Ok(Delegate {
                plugin,
                bin,
                version: ours,
                config: Cow::Borrowed(&conf.raw),
            });
        };
        let version = ours.highest_common(&theirs).ok_or_else(|| {
            CniError::IncompatibleVersion(format!(
                "IPAM plugin {plugin} supports {theirs:?}, none of them at or below the config's {} that Palisade also speaks",
                ours.as_str()
            ))
        })?;
        crate::log::debug(format_args!(
            "calling IPAM plugin {plugin} at {}",
            version.as_str()
        ));
        let mut value: Value = serde_json::from_slice(&conf.raw)
            .map_err(|e| CniError::Decode(format!("stdin is not JSON: {e}")))?;
        value["cniVersion"] = Value::from(version.as_str());
        Ok(Delegate {
            plugin,
            bin,
            version,
            config: Cow::Owned(serde_json::to_vec(&value).expect("JSON value serializes")),
        })
    }

    /// The version the delegate is called with.
    pub fn version(&self) -> &CniVersion {
        &self.version
    }

    /// Run `command`; `Ok(None)` also when the delegate's version has no such command (it is
    /// not sent).
    pub fn call(&self, command: &str) -> Result<Option<Value>> {
        if !self.version.has_command(command) {
            return Ok(None);
        }
        run(self.plugin, &self.bin, command, &self.config)
    }

    /// ADD: its (abbreviated) result.
    pub fn add(&self) -> Result<CniResult> {
        let fail = |reason: String| CniError::Delegate {
            plugin: self.plugin.to_string(),
            reason,
        };
        let v = self
            .call("ADD")?
            .ok_or_else(|| fail("ADD printed no result".into()))?;
        let r = CniResult::from_value(&v).map_err(|e| fail(format!("ADD result: {e}")))?;
        if r.ips.is_empty() {
            return Err(fail("ADD result has no ips".into()));
        }
        Ok(r)
    }
}

/// Execute `bin` with `CNI_COMMAND=command` (everything else inherited) and `stdin`.
/// Returns its stdout parsed as JSON when it printed any.
fn run(plugin: &str, bin: &Path, command: &str, stdin: &[u8]) -> Result<Option<Value>> {
    let fail = |reason: String| CniError::Delegate {
        plugin: plugin.to_string(),
        reason,
    };
    let spawn = || {
        Command::new(bin)
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

    fn conf(version: &str) -> NetConf {
        crate::config::parse_netconf(
            serde_json::json!({
                "cniVersion": version, "name": "n", "type": "palisade",
                "ipam": {"type": "fake-ipam", "subnet": "10.9.0.0/24"},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    /// A delegate that answers VERSION with `versions`, records every other call's stdin in
    /// `calls`, refuses a config of another version as real plugins do, and prints a 1.0.0
    /// ADD result.
    fn versioned_plugin(dir: &Path, versions: &str) {
        fake_plugin(
            dir,
            "fake-ipam",
            &format!(
                r#"in=$(cat)
if [ "$CNI_COMMAND" = VERSION ]; then echo '{{"cniVersion":"1.0.0","supportedVersions":{versions}}}'; exit 0; fi
echo "$CNI_COMMAND $in" >> "$(dirname "$0")/calls"
v=$(echo "$in" | sed -n 's/.*"cniVersion":"\([^"]*\)".*/\1/p')
case '{versions}' in *""$v""*) ;; *) echo '{{"code":1,"msg":"incompatible CNI versions"}}'; exit 1;; esac
[ "$CNI_COMMAND" = ADD ] && echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.9.0.5/24","gateway":"10.9.0.1"}}]}}'
exit 0"#
            ),
        );
    }

    fn calls(d: &Path) -> String {
        std::fs::read_to_string(d.join("calls")).unwrap_or_default()
    }

    #[test]
    fn a_delegate_result_is_parsed_and_its_stdin_is_our_config() {
        let d = dir("ok");
        versioned_plugin(&d, r#"["0.4.0","1.0.0","1.1.0"]"#);
        let c = conf("1.1.0");
        let del =
            Delegate::new("fake-ipam", &[PathBuf::from("/nonexistent"), d.clone()], &c).unwrap();
        assert_eq!(del.version().as_str(), "1.1.0");
        let r = del.add().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.9.0.5/24");
        // A delegate that speaks our version gets our config byte for byte.
        assert_eq!(
            calls(&d),
            format!("ADD {}\n", String::from_utf8_lossy(&c.raw))
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn an_older_delegate_is_called_with_the_newest_common_version() {
        let d = dir("older");
        versioned_plugin(&d, r#"["0.3.1","0.4.0","1.0.0"]"#);
        let c = conf("1.1.0");
        let del = Delegate::new("fake-ipam", std::slice::from_ref(&d), &c).unwrap();
        assert_eq!(del.version().as_str(), "1.0.0");
        assert_eq!(del.add().unwrap().ips.len(), 1);
        assert!(del.call("CHECK").is_ok());
        // GC and STATUS do not exist in 1.0.0: not sent.
        assert_eq!(del.call("GC").unwrap(), None);
        assert_eq!(del.call("STATUS").unwrap(), None);
        let log = calls(&d);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        for (line, command) in lines.iter().zip(["ADD", "CHECK"]) {
            let (cmd, json) = line.split_once(' ').unwrap();
            assert_eq!(cmd, command);
            let sent: Value = serde_json::from_str(json).unwrap();
            assert_eq!(sent["cniVersion"], "1.0.0");
            // Only the version changed.
            let mut ours: Value = serde_json::from_slice(&c.raw).unwrap();
            ours["cniVersion"] = Value::from("1.0.0");
            assert_eq!(sent, ours);
        }
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn no_common_version_is_code_1_naming_both() {
        let d = dir("ancient");
        versioned_plugin(&d, r#"["0.1.0","0.2.0"]"#);
        let c = conf("1.0.0");
        let e = Delegate::new("fake-ipam", std::slice::from_ref(&d), &c).unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(
            e.msg().contains("0.2.0") && e.msg().contains("1.0.0"),
            "{}",
            e.msg()
        );
        assert_eq!(calls(&d), "", "nothing but VERSION was run");
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
        // VERSION fails too: the delegate is called with our version and answers for itself.
        let c = conf("1.0.0");
        let e = Delegate::new("fake-ipam", std::slice::from_ref(&d), &c)
            .unwrap()
            .call("ADD")
            .unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(e.msg().contains("busy"));
        assert_eq!(e.details(), "later");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_missing_delegate_is_code_107_and_missing_cni_path_code_4() {
        let c = conf("1.0.0");
        let e = Delegate::new("no-such-ipam", &[PathBuf::from("/nonexistent")], &c).unwrap_err();
        assert_eq!(e.code(), 107);
        assert_eq!(Delegate::new("x", &[], &c).unwrap_err().code(), 4);
    }
}
