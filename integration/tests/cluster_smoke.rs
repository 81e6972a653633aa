//! Smoke test of the netns cluster: 2 nodes, 3 pods, one policy, probes — through the same
//! runner the scenario files use. Needs root and the `palisade` and `palisade-agent`
//! binaries built into the same target dir (`cargo build -p palisade-cni -p palisade-policy
//! --bins`), or `PALISADE_BIN_DIR`.

use palisade_integration::cluster::Binaries;
use palisade_integration::cluster::RouteMode;
use palisade_integration::runner::{run_scenario, RunOptions};
use palisade_integration::scenario::{Family, Scenario};

fn bins() -> Binaries {
    Binaries::for_tests(env!("CARGO_BIN_EXE_palisade-testpod"))
}

fn opts(family: Family) -> RunOptions {
    RunOptions {
        family,
        nodes: 2,
        bins: bins(),
        routes: RouteMode::Agent,
        agent_args: Vec::new(),
        colour: false,
        verbose: true,
        retry_blocked: 1,
        topology: Default::default(),
        overlay: Default::default(),
        image: None,
    }
}

const SMOKE: &str = r#"
id: smoke
title: server x/a admits only app=client, on port 80
ignore_loopback: true
model:
  namespaces: [{name: x}]
  pods:
  - {namespace: x, name: a, node: 1, labels: {app: server}, ports: [{port: 80}, {port: 81}]}
  - {namespace: x, name: b, node: 2, labels: {app: client}, ports: [{port: 80}, {port: 81}]}
  - {namespace: x, name: c, node: 1, labels: {app: other}, ports: [{port: 80}, {port: 81}]}
steps:
- probe:
    port: 80
    matrix:
      x/a: {x/b: true, x/c: true}
      x/b: {x/a: true, x/c: true}
      x/c: {x/a: true, x/b: true}
- action: apply_policy
  policy:
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: server, namespace: x}
    spec:
      podSelector: {matchLabels: {app: server}}
      ingress:
      - from: [{podSelector: {matchLabels: {app: client}}}]
        ports: [{port: 80}]
- probe:
    port: 80
    matrix:
      x/a: {x/b: true, x/c: true}
      x/b: {x/a: true, x/c: true}
      x/c: {x/a: false, x/b: true}
- probe:
    port: 81
    matrix:
      x/b: {x/a: false, x/c: true}
"#;

#[test]
fn two_nodes_three_pods_one_policy() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    for family in [Family::V4, Family::V6] {
        let s = Scenario::parse(SMOKE).unwrap();
        let r = run_scenario(&s, &opts(family));
        assert!(r.passed, "{family}:\n{}", r.report);
        assert_eq!(r.probes, 3);
    }
}

/// The runner must not be vacuous: a wrong expectation fails and names the cell.
#[test]
fn a_wrong_expectation_fails_with_the_differing_cell() {
    if !palisade_testutil::kernel_tests_enabled() {
        return;
    }
    let wrong = SMOKE.replace(
        "x/c: {x/a: false, x/b: true}",
        "x/c: {x/a: true, x/b: true}",
    );
    let s = Scenario::parse(&wrong).unwrap();
    let r = run_scenario(&s, &opts(Family::V4));
    assert!(!r.passed);
    assert!(
        r.report
            .contains("x/c -> x/a: expected allowed, observed blocked"),
        "{}",
        r.report
    );
}
