//! `palisadectl` outputs compared byte for byte with `tests/golden/ctl/*.txt`, run on the
//! manifests in `tests/golden/ctl/manifests/` (the real binary, from that folder, so that
//! file names in messages are stable). `UPDATE_GOLDEN=1` rewrites the golden files; review
//! the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ctl")
}

/// Runs palisadectl in the golden folder; returns (exit code, stdout, stderr).
fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .current_dir(golden_dir())
        .env_remove("NO_COLOR")
        .output()
        .expect("run palisadectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn reach_table_every_declared_port() {
    let (code, out, err) = ctl(&["reach", "-f", "manifests", "--color", "never"]);
    assert_eq!(code, 0, "{err}");
    check_golden("reach-all-ports.txt", &out);
    check_golden("reach-all-ports.stderr.txt", &err);
}

#[test]
fn reach_one_namespace_one_port() {
    let (code, out, err) = ctl(&[
        "reach",
        "-f",
        "manifests",
        "-n",
        "x",
        "--port",
        "80",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    check_golden("reach-x-80.txt", &out);
}

#[test]
fn reach_json_has_the_documented_shape() {
    let (code, out, err) = ctl(&[
        "reach",
        "-f",
        "manifests",
        "--port",
        "80",
        "--protocol",
        "TCP",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    check_golden("reach-80.json.txt", &out);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["80/TCP"]["x/client"]["x/web"],
        serde_json::Value::Bool(true)
    );
    assert_eq!(
        v["80/TCP"]["z/batch"]["x/web"],
        serde_json::Value::Bool(false)
    );
    // The probe may only talk to namespace x.
    assert_eq!(
        v["80/TCP"]["y/probe"]["z/batch"],
        serde_json::Value::Bool(false)
    );
    assert_eq!(
        v["80/TCP"]["y/probe"]["x/client"],
        serde_json::Value::Bool(true)
    );
}

#[test]
fn reach_yaml() {
    let (code, out, err) = ctl(&[
        "reach",
        "-f",
        "manifests",
        "--port",
        "53",
        "--protocol",
        "udp",
        "-o",
        "yaml",
    ]);
    assert_eq!(code, 0, "{err}");
    check_golden("reach-53-udp.yaml.txt", &out);
}

#[test]
fn colour_only_when_asked_for_off_a_terminal() {
    let (_, plain, _) = ctl(&["reach", "-f", "manifests", "--port", "80"]);
    assert!(!plain.contains('\x1b'), "{plain:?}");
    let (_, coloured, _) = ctl(&[
        "reach",
        "-f",
        "manifests",
        "--port",
        "80",
        "--color",
        "always",
    ]);
    assert!(coloured.contains("\x1b[32m✓\x1b[0m"), "{coloured:?}");
    assert!(coloured.contains("\x1b[31m✗\x1b[0m"), "{coloured:?}");
}

#[test]
fn explain_denied_names_the_isolating_policy() {
    let (code, out, err) = ctl(&[
        "explain",
        "-f",
        "manifests",
        "--from",
        "y/probe",
        "--to",
        "x/web",
        "--port",
        "80",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DENIED"), "{out}");
    assert!(out.contains("isolated by x/web-from-clients"), "{out}");
    assert!(out.contains("reference evaluator: agrees"), "{out}");
    check_golden("explain-probe-web-80.txt", &out);
}

#[test]
fn explain_allowed_names_the_rule() {
    let (code, out, err) = ctl(&[
        "explain",
        "-f",
        "manifests",
        "--from",
        "x/client",
        "--to",
        "x/web",
        "--port",
        "80",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ALLOWED"), "{out}");
    assert!(
        out.contains("allowed by x/web-from-clients ingress[0]"),
        "{out}"
    );
    check_golden("explain-client-web-80.txt", &out);
}

#[test]
fn explain_egress_denial_and_external_endpoints() {
    let (code, out, err) = ctl(&[
        "explain",
        "-f",
        "manifests",
        "--from",
        "y/probe",
        "--to",
        "203.0.113.7",
        "--port",
        "443",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("egress of y/probe: DENIED: isolated by y/probe-egress"),
        "{out}"
    );
    check_golden("explain-probe-external-443.txt", &out);
    let (code, out, err) = ctl(&[
        "explain",
        "-f",
        "manifests",
        "--from",
        "203.0.113.7",
        "--to",
        "x/web",
        "--port",
        "53",
        "--protocol",
        "UDP",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["allowed"], serde_json::Value::Bool(false));
    assert_eq!(v["ingress"]["verdict"], "denied");
    assert_eq!(v["disagreements"], serde_json::json!([]));
}

/// ClusterNetworkPolicies: the tier, policy and rule that decided, and a Pass on the way.
#[test]
fn explain_names_the_tier_policy_and_rule_of_cluster_policies() {
    for (golden, from, to, port, protocol) in [
        (
            "explain-cnp-pass-then-networkpolicy.txt",
            "y/probe",
            "x/web",
            "80",
            "TCP",
        ),
        (
            "explain-cnp-admin-deny.txt",
            "y/probe",
            "x/web",
            "53",
            "UDP",
        ),
        (
            "explain-cnp-baseline-deny.txt",
            "x/client",
            "203.0.113.7",
            "443",
            "TCP",
        ),
    ] {
        let (code, out, err) = ctl(&[
            "explain",
            "-f",
            "manifests",
            "cluster-policies.yaml",
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
            "--protocol",
            protocol,
            "--color",
            "never",
        ]);
        assert_eq!(code, 0, "{err}");
        check_golden(golden, &out);
        assert!(
            err.contains("ClusterNetworkPolicy broken-range is invalid and skipped")
                && err.contains("Start port must be less than End port"),
            "{err}"
        );
    }
}

#[test]
fn reach_with_cluster_policies() {
    let (code, out, err) = ctl(&[
        "reach",
        "-f",
        "manifests",
        "cluster-policies.yaml",
        "--port",
        "80",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    check_golden("reach-80-cluster-policies.txt", &out);
}
