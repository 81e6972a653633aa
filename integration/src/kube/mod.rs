//! The real-cluster mode of the scenario runner (`palisade-scenarios kube`): the same
//! scenario files, matrices and summary as the netns runner, driven with `kubectl` on
//! whatever cluster it points at (kind in `integration/kind/run.sh`).
//!
//! The logic that does not need a cluster is pure and unit-tested: [`manifest`] (scenario →
//! Namespace and Pod objects, node placement, label changes) and [`probe`] (the probe's
//! command line, judging its outcome, reading pod status). [`runner`] strings them together
//! with [`kubectl`] subprocesses.

pub mod kubectl;
pub mod manifest;
pub mod probe;
pub mod runner;

pub use runner::{run_files, run_scenario, KubeOptions};
