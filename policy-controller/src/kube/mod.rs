//! The agent's view of the API server: list/watch of Pods, Namespaces, NetworkPolicies,
//! Nodes and ClusterNetworkPolicies ([`watch`]) decoded into the slim types ([`resource`])
//! and folded by the slim [`index`] into [`crate::compile::Change`]s; [`config`] finds the API
//! server as kubectl does.

pub mod config;
pub mod index;
pub mod resource;
pub mod watch;

pub use index::{ClusterEvent, Index};
pub use resource::{ResourceKind, Slim, WatchedKind};
pub use watch::{run_watch, WatchEvent, WatchTuning};

use crate::model::api;
use ::kube::{Api, Client};
use tokio::sync::mpsc;

/// Start the watches on the current runtime; every event goes to `tx`.
pub fn spawn_watches(
    client: Client,
    tuning: WatchTuning,
    tx: mpsc::Sender<ClusterEvent>,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(run_watch(
            Api::<Slim<api::Pod>>::all(client.clone()),
            tuning.clone(),
            tx.clone(),
            ClusterEvent::Pod,
        )),
        tokio::spawn(run_watch(
            Api::<Slim<api::Namespace>>::all(client.clone()),
            tuning.clone(),
            tx.clone(),
            ClusterEvent::Namespace,
        )),
        tokio::spawn(run_watch(
            Api::<Slim<api::NetworkPolicy>>::all(client.clone()),
            tuning.clone(),
            tx.clone(),
            ClusterEvent::Policy,
        )),
        tokio::spawn(run_watch(
            Api::<Slim<api::Node>>::all(client.clone()),
            tuning.clone(),
            tx.clone(),
            ClusterEvent::Node,
        )),
        tokio::spawn(run_watch(
            Api::<Slim<api::ClusterNetworkPolicy>>::all(client),
            tuning,
            tx,
            ClusterEvent::ClusterPolicy,
        )),
    ]
}
