//! `palisadectl` on bad input: exact messages naming file, document and field, exit code 1.

use std::path::Path;
use std::process::Command;

use palisade_testutil::TempDir;

fn ctl_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run palisadectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";

#[test]
fn wrong_type_names_file_document_and_field() {
    let d = TempDir::new("type");
    let text = format!(
        "{NS}---\n{NS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\n\
         spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: {{number: 80}}\n"
    );
    std::fs::write(d.0.join("policies.yaml"), text).unwrap();
    let (code, out, err) = ctl_in(&d.0, &["reach", "-f", "policies.yaml", "--port", "80"]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err,
        "error: policies.yaml: document 3: spec.ingress[0].ports[0].port: invalid type: a mapping (expected a port number or a port name)\n"
    );
}

#[test]
fn items_of_a_list_are_numbered() {
    let d = TempDir::new("list");
    std::fs::write(
        d.0.join("pods.yaml"),
        "apiVersion: v1\nkind: List\nitems:\n- {kind: Pod, metadata: {name: a}}\n- {kind: Pod, metadata: {name: b}, spec: {hostNetwork: maybe}}\n",
    )
    .unwrap();
    let (code, _, err) = ctl_in(&d.0, &["reach", "-f", "pods.yaml", "--port", "80"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: pods.yaml: document 1: items[1]: spec.hostNetwork: invalid type: string \"maybe\", expected a boolean"),
        "{err}"
    );
}

#[test]
fn missing_kind_missing_file_and_broken_yaml() {
    let d = TempDir::new("misc");
    std::fs::write(d.0.join("a.yaml"), "metadata: {name: a}\n").unwrap();
    let (code, _, err) = ctl_in(&d.0, &["reach", "-f", "a.yaml", "--port", "80"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: a.yaml: document 1: kind: missing (every object needs apiVersion and kind)\n"
    );

    let (code, _, err) = ctl_in(&d.0, &["reach", "-f", "nope.yaml", "--port", "80"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: nope.yaml: cannot read: "), "{err}");

    std::fs::write(d.0.join("b.yaml"), "kind: Pod\nmetadata: {name: [\n").unwrap();
    let (code, _, err) = ctl_in(&d.0, &["reach", "-f", "b.yaml", "--port", "80"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: b.yaml: invalid YAML"), "{err}");
}

#[test]
fn invalid_policies_are_reported_and_skipped() {
    let d = TempDir::new("invalid");
    std::fs::write(
        d.0.join("all.yaml"),
        format!(
            "{NS}---\nkind: Pod\nmetadata: {{name: a, namespace: x}}\nspec: {{nodeName: n1}}\nstatus: {{podIPs: [{{ip: 10.0.0.1}}]}}\n---\n\
             kind: Pod\nmetadata: {{name: b, namespace: x}}\nspec: {{nodeName: n1}}\nstatus: {{podIPs: [{{ip: 10.0.0.2}}]}}\n---\n\
             kind: NetworkPolicy\nmetadata: {{name: deny-all, namespace: x}}\nspec:\n  podSelector: {{matchExpressions: [{{key: a, operator: Bogus}}]}}\n"
        ),
    )
    .unwrap();
    let (code, out, err) = ctl_in(
        &d.0,
        &["reach", "-f", "all.yaml", "--port", "80", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: all.yaml: document 4: NetworkPolicy x/deny-all is invalid and skipped (the API server would reject it): spec.podSelector.matchExpressions[0].operator: "),
        "{err}"
    );
    // Skipped: nothing is isolated.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["80/TCP"]["x/a"]["x/b"], serde_json::Value::Bool(true));
}

#[test]
fn usage_errors() {
    let d = TempDir::new("usage");
    let (code, _, err) = ctl_in(&d.0, &["reach", "-f", "x", "--protocol", "ICMP"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = ctl_in(&d.0, &["reach", "-f", "x", "--agent"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = ctl_in(&d.0, &["reach", "-f", "x", "-l", "app in (web"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "error: -l: unable to parse requirement: missing ')': \"app in (web\"\n"
    );
}

/// Without -f or --agent, the API server is found as kubectl finds it; with nothing to find,
/// the message says what was looked at.
#[test]
fn no_kubeconfig_anywhere_says_where_it_looked() {
    let d = TempDir::new("nokubeconfig");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisadectl"));
        cmd.args(args)
            .current_dir(&d.0)
            .env("HOME", &d.0)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[], &["reach", "--port", "80"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("KUBECONFIG is unset and")
            && err.contains(".kube/config does not exist")
            && err.contains("not a pod"),
        "{err}"
    );
    let (code, err) = run(
        &[("KUBECONFIG", "/nonexistent/a:/nonexistent/b")],
        &["reach"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("KUBECONFIG=/nonexistent/a:/nonexistent/b names no existing file"),
        "{err}"
    );
    let (code, err) = run(&[], &["--kubeconfig", "/nonexistent/kc", "reach"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--kubeconfig /nonexistent/kc: no such file"),
        "{err}"
    );
}
