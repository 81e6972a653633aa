//! The install manifests in `conf/` hold what the seed chapter teaches about privileges:
//! no privileged containers, ALL capabilities dropped and only the needed ones added back
//! (each with its reason in a comment), read-only root filesystems, no privilege
//! escalation, seccomp RuntimeDefault, hostPath limited to the paths used, RBAC limited to
//! get/list/watch on what the agent reads. And the conflist template renders to a config
//! the real `palisade` binary accepts.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["conf", "conf/uninstall"] {
        for e in std::fs::read_dir(repo_root().join(dir)).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Every YAML document of every manifest in conf/ (and conf/uninstall/), with its file.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for f in manifest_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for d in docs.into_iter().filter(|d| !d.is_null()) {
            out.push((f.display().to_string(), d));
        }
    }
    out
}

fn pod_specs() -> Vec<(String, Value)> {
    manifests()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "DaemonSet")
        .map(|(f, d)| {
            (
                format!("{f}:{}", d["metadata"]["name"]),
                d["spec"]["template"]["spec"].clone(),
            )
        })
        .collect()
}

fn containers(spec: &Value) -> Vec<Value> {
    let mut all = Vec::new();
    for key in ["initContainers", "containers"] {
        if let Some(cs) = spec[key].as_array() {
            all.extend(cs.iter().cloned());
        }
    }
    all
}

#[test]
fn every_container_runs_with_least_privilege() {
    let specs = pod_specs();
    assert!(
        specs.len() >= 2,
        "expected the agent and the uninstall DaemonSets: {specs:?}"
    );
    for (name, spec) in specs {
        let pod_seccomp = spec["securityContext"]["seccompProfile"]["type"].as_str();
        for c in containers(&spec) {
            let cname = format!("{name}/{}", c["name"]);
            let sc = &c["securityContext"];
            assert_ne!(sc["privileged"], Value::Bool(true), "{cname}: privileged");
            assert_eq!(
                sc["allowPrivilegeEscalation"],
                Value::Bool(false),
                "{cname}"
            );
            assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true), "{cname}");
            let drop: Vec<&str> = sc["capabilities"]["drop"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            assert_eq!(drop, ["ALL"], "{cname}: must drop ALL capabilities");
            for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
                assert_eq!(
                    cap, "NET_ADMIN",
                    "{cname}: only NET_ADMIN may be added back"
                );
            }
            let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
            assert_eq!(seccomp, Some("RuntimeDefault"), "{cname}: seccomp");
            // Root only where a container needs it, and then said explicitly.
            let uid = sc["runAsUser"].as_i64();
            assert!(uid.is_some(), "{cname}: runAsUser must be explicit");
            if uid != Some(0) {
                assert_eq!(sc["runAsNonRoot"], Value::Bool(true), "{cname}");
            }
        }
    }
}

#[test]
fn added_capabilities_and_root_carry_their_reason_in_a_comment() {
    let mut checked = 0;
    for path in manifest_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.starts_with("add:") || t.starts_with("runAsUser: 0") {
                checked += 1;
                // The reason stands in the comment lines just above (or right below).
                let commented = lines[i.saturating_sub(3)..=i]
                    .iter()
                    .chain(lines.get(i + 1))
                    .any(|l| l.trim_start().starts_with('#'));
                assert!(
                    commented,
                    "{}:{}: `{t}` without a reason",
                    path.display(),
                    i + 1
                );
            }
        }
    }
    assert!(
        checked >= 3,
        "expected root and NET_ADMIN grants to check, found {checked}"
    );
}

#[test]
fn host_paths_are_only_the_ones_used_and_read_only_where_only_read() {
    let allowed = ["/opt/cni/bin", "/etc/cni/net.d", "/run/palisade"];
    for (name, spec) in pod_specs() {
        let mut host_volumes = Vec::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(path) = v["hostPath"]["path"].as_str() {
                assert!(
                    allowed.contains(&path),
                    "{name}: unexpected hostPath {path}"
                );
                host_volumes.push(v["name"].as_str().unwrap().to_string());
            }
        }
        for vol in &host_volumes {
            let used = containers(&spec).iter().any(|c| {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["name"] == **vol)
            });
            assert!(
                used,
                "{name}: hostPath volume {vol} is mounted by no container"
            );
        }
        for c in containers(&spec) {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                if m["name"] == "config" {
                    assert_eq!(m["readOnly"], Value::Bool(true), "{name}: config mount");
                }
            }
        }
    }
}

#[test]
fn agent_daemonset_runs_everywhere_on_the_host_network() {
    let (_, spec) = pod_specs()
        .into_iter()
        .find(|(n, _)| n.contains("palisade-agent"))
        .unwrap();
    assert_eq!(spec["hostNetwork"], Value::Bool(true));
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    let tolerates_all = spec["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["operator"] == "Exists" && t.get("key").is_none());
    assert!(tolerates_all, "must tolerate every taint");
}

#[test]
fn rbac_grants_only_reads_of_what_the_agent_watches() {
    let role = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "ClusterRole")
        .unwrap()
        .1;
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(verbs, ["get", "list", "watch"], "{rule}");
        for r in rule["resources"].as_array().unwrap() {
            granted.push(r.as_str().unwrap().to_string());
        }
    }
    granted.sort();
    assert_eq!(granted, ["namespaces", "networkpolicies", "nodes", "pods"]);
}

/// A built binary of the workspace: in `PALISADE_BIN_DIR`, else the newer of
/// target/{release,debug} (an old release build must not stand in for a fresh debug one).
fn built_binary(name: &str, package: &str) -> PathBuf {
    if let Ok(d) = std::env::var("PALISADE_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "{name} binary not built: run `cargo build -p {package}` or set PALISADE_BIN_DIR"
            )
        })
}

fn palisade_binary() -> PathBuf {
    built_binary("palisade", "palisade-cni")
}

/// Every ConfigMap setting reaches the agent: each `$(VAR)` in a command is an env entry of
/// its container, each `configMapKeyRef` names a key the ConfigMap has, each key of the
/// ConfigMap is used, and each `--flag` the agent container passes is one `palisade-agent
/// run` knows. (What kubelet does with them, the image-mode netns cluster runs for real.)
#[test]
fn configmap_keys_are_wired_to_agent_flags() {
    let all = manifests();
    let cm = &all
        .iter()
        .find(|(f, d)| d["kind"] == "ConfigMap" && f.ends_with("20-configmap.yaml"))
        .unwrap()
        .1;
    let keys: Vec<&str> = cm["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let ds = &all
        .iter()
        .find(|(f, d)| d["kind"] == "DaemonSet" && f.ends_with("40-daemonset.yaml"))
        .unwrap()
        .1;
    let spec = &ds["spec"]["template"]["spec"];
    let mut used_keys: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| {
            v["configMap"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|i| i["key"].as_str().map(str::to_string))
        .collect();
    let help = Command::new(built_binary("palisade-agent", "palisade-policy"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for c in containers(spec) {
        let env: Vec<&Value> = c["env"]
            .as_array()
            .map(|e| e.iter().collect())
            .unwrap_or_default();
        for e in &env {
            if let Some(key) = e["valueFrom"]["configMapKeyRef"]["key"].as_str() {
                assert!(keys.contains(&key), "{}: no ConfigMap key {key}", c["name"]);
                used_keys.push(key.to_string());
            }
        }
        let words = c["command"]
            .as_array()
            .into_iter()
            .chain(c["args"].as_array())
            .flatten()
            .filter_map(Value::as_str);
        for word in words {
            let mut rest = word;
            while let Some(start) = rest.find("$(") {
                let end = rest[start..].find(')').unwrap() + start;
                let var = &rest[start + 2..end];
                assert!(
                    env.iter().any(|e| e["name"] == var),
                    "{}: {word} uses $({var}), which is not in its env",
                    c["name"]
                );
                rest = &rest[end + 1..];
            }
            if c["name"] == "agent" {
                if let Some(flag) = word.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        help.contains(&format!("--{flag}")),
                        "palisade-agent run has no --{flag}"
                    );
                }
            }
        }
    }
    for key in keys {
        assert!(
            used_keys.iter().any(|k| k == key),
            "ConfigMap key {key} reaches no container"
        );
    }
}

#[test]
fn conflist_template_renders_to_a_config_the_plugin_accepts() {
    let cm = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
        .unwrap()
        .1;
    let template = cm["data"]["conflist.template"].as_str().unwrap();
    let cidrs = [
        "10.244.1.0/24".parse().unwrap(),
        "fd00:10:244:1::/64".parse().unwrap(),
    ];
    let rendered = palisade_policy::install::render_conflist(template, "node-1", &cidrs).unwrap();
    let conflist: Value = serde_json::from_str(&rendered).unwrap();
    let plugin = conflist["plugins"][0].clone();
    assert_eq!(plugin["type"], "palisade");
    // The plugin's stdin is the plugin object with the list's name and version, as libcni
    // builds it; a temp dataDir so STATUS checks a directory this test owns.
    let data_dir = std::env::temp_dir().join(format!("palisade-conf-test-{}", std::process::id()));
    let mut conf = plugin.clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["ipam"]["dataDir"] = Value::String(data_dir.display().to_string());
    // No agent runs for this test: point at a socket path that does not exist.
    conf["agent"]["socket"] = Value::String(data_dir.join("absent.sock").display().to_string());
    let bin = palisade_binary();
    for command in ["VERSION", "STATUS"] {
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{command} on the rendered conflist failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if command == "VERSION" {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let versions = v["supportedVersions"].as_array().unwrap();
            assert!(versions.contains(&conflist["cniVersion"]), "{v}");
        }
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
