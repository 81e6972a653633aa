//! Palisade's policy controller.
//!
//! How a NetworkPolicy (or ClusterNetworkPolicy) becomes nftables, stage by stage (DESIGN.md
//! "The agent"):
//!
//! 1. [`model`]: cluster state (pods, namespaces, policies, nodes) from the API objects;
//!    [`model::validate`] rejects what the API server would.
//! 2. [`model::policy`]: every policy kind translated into one normalized model (tier,
//!    priority, rule order, action, subject, peers, ports); the compiler reads only that.
//! 3. [`compile`]: normalized policies + state + node name → [`ruleset::Ruleset`] (pure: no
//!    kube, no nft).
//! 4. [`nft`]: ruleset → diff against what is programmed → one nftables transaction.
//!
//! [`eval`] holds the reference evaluator of the API semantics and the interpreter that walks
//! a compiled ruleset; property tests require them to agree.

pub mod agent;
pub mod compile;
pub mod ctl;
pub mod eval;
pub mod install;
pub mod kube;
pub mod model;
pub mod nft;
pub mod ruleset;
