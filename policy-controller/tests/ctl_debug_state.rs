//! `agent/debug_state.rs` (the agent's `/debug/state` document) read back by palisadectl's
//! decoder gives the same cluster state: `reach --agent` answers from exactly what the agent
//! compiles.

use palisade_policy::agent::debug_state;
use palisade_policy::ctl::{live, manifests, reach};
use palisade_policy::model::Protocol;
use std::path::Path;

#[test]
fn the_agent_state_round_trips_through_palisadectl() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ctl/manifests");
    let loaded = manifests::build_state(&manifests::load_paths(&[dir]).unwrap());
    let doc = debug_state::debug_state("node-1", &loaded.state);
    assert_eq!(doc["node"], "node-1");
    let objects = live::objects_from_debug_state("debug", &doc).unwrap();
    let again = manifests::build_state(&objects);
    assert!(
        again.diagnostics.warnings.is_empty(),
        "{:?}",
        again.diagnostics
    );
    assert_eq!(again.state, loaded.state);
    // And so the same matrix (named ports survive, so port 80 by name still resolves).
    let pods = reach::matrix_pods(&again.state, None);
    let targets = [(80, Protocol::Tcp), (53, Protocol::Udp)];
    assert_eq!(
        reach::compute(&again.state, &pods, &targets).0,
        reach::compute(&loaded.state, &pods, &targets).0
    );
}

#[test]
fn the_body_comes_from_the_compiler() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ctl/manifests");
    let loaded = manifests::build_state(&manifests::load_paths(&[dir]).unwrap());
    let compiler = std::sync::Mutex::new(palisade_policy::compile::Compiler::with_state(
        palisade_policy::compile::CompileOptions {
            node: "node-2".into(),
            fail_closed_new_pods: true,
            nflog_group: None,
            masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
        },
        loaded.state.clone(),
    ));
    let body = debug_state::debug_state_body(&compiler);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "node-2");
    assert_eq!(v["pods"].as_array().unwrap().len(), loaded.state.pods.len());
    assert_eq!(v["networkpolicies"].as_array().unwrap().len(), 2);
    assert_eq!(v["networkpolicies"][0]["kind"], "NetworkPolicy");
}
