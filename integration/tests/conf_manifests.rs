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

/// `kubectl kustomize DIR`: the objects as `kubectl apply -k` creates them (the generated
/// ConfigMap with its hashed name, the references to it rewritten, the images: entry).
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(dir)
        .output()
        .expect("run kubectl kustomize (kubectl is a test dependency)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

fn rendered_conf() -> Vec<(String, Value)> {
    kustomize(&repo_root().join("conf"))
        .into_iter()
        .map(|d| ("kubectl kustomize conf".to_string(), d))
        .collect()
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
    assert_eq!(
        granted,
        [
            "clusternetworkpolicies",
            "namespaces",
            "networkpolicies",
            "nodes",
            "pods"
        ]
    );
}

/// The ClusterNetworkPolicy CRD names the resource the agent watches and the stand-in serves,
/// and its schema and CEL rules say what `model::validate` checks (the stand-in's and the
/// agent's validation are written from it).
#[test]
fn cluster_network_policy_crd_matches_what_palisade_serves_and_checks() {
    use palisade_integration::apiserver::Kind;
    use palisade_policy::model::validate::{CIDR_RULE, NAMED_PORT_RULE, RANGE_RULE};
    let crd = manifests()
        .into_iter()
        .find(|(_, d)| d["kind"] == "CustomResourceDefinition")
        .expect("a CRD in conf/")
        .1;
    let kind = Kind::ClusterNetworkPolicy;
    let spec = &crd["spec"];
    assert_eq!(spec["group"], kind.group());
    assert_eq!(
        crd["metadata"]["name"],
        format!("{}.{}", kind.plural(), kind.group())
    );
    assert_eq!(spec["names"]["kind"], kind.name());
    assert_eq!(spec["names"]["plural"], kind.plural());
    assert_eq!(spec["names"]["singular"], kind.singular());
    assert_eq!(
        spec["names"]["shortNames"],
        serde_json::json!(kind.short_names())
    );
    assert_eq!(spec["scope"], "Cluster");
    let version = &spec["versions"][0];
    assert_eq!(version["name"], kind.version());
    assert!(version["served"] == true && version["storage"] == true);
    assert!(version["subresources"]["status"].is_object());
    // A `*.k8s.io` group: without the approval annotation the API server refuses the CRD.
    assert!(crd["metadata"]["annotations"]["api-approved.kubernetes.io"]
        .as_str()
        .is_some_and(|u| u.starts_with("https://")));
    let schema = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        schema["required"],
        serde_json::json!(["tier", "priority", "subject"])
    );
    assert_eq!(
        schema["properties"]["tier"]["enum"],
        serde_json::json!(["Admin", "Baseline"])
    );
    let priority = &schema["properties"]["priority"];
    assert_eq!(
        (priority["minimum"].as_i64(), priority["maximum"].as_i64()),
        (Some(0), Some(1000))
    );
    let egress = &schema["properties"]["egress"]["items"];
    assert_eq!(
        egress["properties"]["action"]["enum"],
        serde_json::json!(["Accept", "Deny", "Pass"])
    );
    let keys = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&egress["properties"]["to"]["items"]["properties"]),
        ["namespaces", "networks", "nodes", "pods"]
    );
    let ingress = &schema["properties"]["ingress"]["items"]["properties"];
    assert_eq!(
        keys(&ingress["from"]["items"]["properties"]),
        ["namespaces", "pods"]
    );
    // Every CEL message the CRD carries is one the validator reports.
    let text = serde_json::to_string(&crd).unwrap();
    for message in [NAMED_PORT_RULE, RANGE_RULE, CIDR_RULE] {
        assert!(
            text.contains(&format!("\"message\":\"{message}\"")),
            "{message}"
        );
    }
    let messages = text.matches("\"message\":").count();
    // The range rule under tcp, udp and sctp in both directions, the CIDR and named-port rules.
    assert_eq!(messages, 6 + 2);
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
    let all = rendered_conf();
    let cm = &all
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
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
        .find(|(_, d)| d["kind"] == "DaemonSet")
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
    let cm = rendered_conf()
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

/// Prometheus reaches the agents: the agent listens on the port its container declares as
/// `metrics`, the probes use that port (so they test what Prometheus scrapes), the headless
/// Service and the example PodMonitor select the agent pods and name that port, and the
/// debug socket lives in the directory shared with the node (where palisadectl reads it).
#[test]
fn metrics_port_is_declared_probed_and_selected() {
    let all = manifests();
    let ds = &all
        .iter()
        .find(|(f, d)| d["kind"] == "DaemonSet" && f.ends_with("40-daemonset.yaml"))
        .unwrap()
        .1;
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let agent = containers(&ds["spec"]["template"]["spec"])
        .into_iter()
        .find(|c| c["name"] == "agent")
        .unwrap();
    let args: Vec<&str> = agent["command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--metrics-listen=:9464"), "{args:?}");
    assert!(
        args.contains(&"--debug-socket=/run/palisade/debug.sock"),
        "{args:?}"
    );
    assert!(agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/run/palisade"));
    let port = agent["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(port["containerPort"], 9464);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["port"], "metrics", "{probe}");
        assert!(
            agent[probe]["httpGet"]["host"].is_null(),
            "{probe}: the pod's (node's) address"
        );
    }
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels[k] == *v)
    };
    let svc = &all
        .iter()
        .find(|(_, d)| d["kind"] == "Service")
        .expect("a Service in conf/")
        .1;
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "headless: one endpoint per agent"
    );
    assert!(selects(&svc["spec"]["selector"]));
    assert_eq!(svc["metadata"]["namespace"], ds["metadata"]["namespace"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");

    let text =
        std::fs::read_to_string(repo_root().join("conf/monitoring/podmonitor.yaml")).unwrap();
    let pm: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    assert!(selects(&pm["spec"]["selector"]["matchLabels"]));
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    let kustomization =
        std::fs::read_to_string(repo_root().join("conf/kustomization.yaml")).unwrap();
    assert!(
        !kustomization.contains("monitoring"),
        "the PodMonitor needs the operator's CRD: not in the default install"
    );
}

/// A changed setting restarts the agents: the generated ConfigMap's name carries a hash of
/// its content, so the DaemonSet's pod template changes with it and the DaemonSet rolls the
/// agents one node at a time; an unchanged conf/ renders the same names.
#[test]
fn a_changed_setting_is_a_new_pod_template() {
    let copy = std::env::temp_dir().join(format!("palisade-conf-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    let status = Command::new("cp")
        .args(["-r"])
        .arg(repo_root().join("conf"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let find =
        |objs: &[Value], kind: &str| objs.iter().find(|d| d["kind"] == kind).unwrap().clone();
    let before = kustomize(&copy);
    assert_eq!(before, kustomize(&copy), "rendering is deterministic");
    let env = copy.join("config/agent.env");
    let text = std::fs::read_to_string(&env).unwrap();
    assert!(text.contains("\ndeny-log-rate=10\n"));
    std::fs::write(
        &env,
        text.replace("\ndeny-log-rate=10\n", "\ndeny-log-rate=50\n"),
    )
    .unwrap();
    let after = kustomize(&copy);
    let _ = std::fs::remove_dir_all(&copy);
    let (cm0, cm1) = (find(&before, "ConfigMap"), find(&after, "ConfigMap"));
    let name0 = cm0["metadata"]["name"].as_str().unwrap();
    let name1 = cm1["metadata"]["name"].as_str().unwrap();
    assert!(name0.starts_with("palisade-config-") && name1.starts_with("palisade-config-"));
    assert_ne!(name0, name1, "the content hash is in the name");
    assert_eq!(cm1["data"]["deny-log-rate"], "50");
    let (ds0, ds1) = (find(&before, "DaemonSet"), find(&after, "DaemonSet"));
    let t0 = serde_json::to_string(&ds0["spec"]["template"]).unwrap();
    let t1 = serde_json::to_string(&ds1["spec"]["template"]).unwrap();
    assert!(t0.contains(name0) && !t0.contains(name1));
    assert!(
        t1.contains(name1) && !t1.contains(name0),
        "every reference follows the new name"
    );
    assert_eq!(ds1["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds1["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert!(
        ds1["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].is_object(),
        "the rollout waits for each agent to be ready"
    );
}

/// The image is this release's: the workspace version (what the binaries report) is the tag
/// in the kustomization's images: entry, in every DaemonSet, and what image/version.sh prints
/// for build-oci.sh and the Dockerfile's instructions.
#[test]
fn the_image_is_pinned_to_the_workspace_version() {
    let version = env!("CARGO_PKG_VERSION");
    let want = format!("palisade/palisade:{version}");
    let script = Command::new("bash")
        .arg(repo_root().join("image/version.sh"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&script.stdout).trim(), version);
    let mut images = 0;
    for (file, spec) in pod_specs().into_iter().chain(
        rendered_conf()
            .into_iter()
            .filter(|(_, d)| d["kind"] == "DaemonSet")
            .map(|(f, d)| (f, d["spec"]["template"]["spec"].clone())),
    ) {
        for c in containers(&spec) {
            assert_eq!(c["image"], want.as_str(), "{file}: {}", c["name"]);
            assert_eq!(
                c["imagePullPolicy"], "IfNotPresent",
                "{file}: a release tag never moves"
            );
            images += 1;
        }
    }
    assert!(images >= 6, "{images}");
    let kustomization =
        std::fs::read_to_string(repo_root().join("conf/kustomization.yaml")).unwrap();
    let k: Value = serde_saphyr::from_str(&kustomization).unwrap();
    assert_eq!(k["images"][0]["name"], "palisade/palisade");
    assert_eq!(k["images"][0]["newTag"], version);
}
