//! The dataplane: renders a [`crate::ruleset::Ruleset`] into nftables transactions for the
//! table `inet palisade`, diffs against what is programmed and applies only the difference.
//!
//! - [`canon`]: the canonical form of a model (the model as nft lists it back);
//! - [`plan`]: the diff, an ordered list of [`Op`]s forming one transaction;
//! - `tracker`: what is programmed, and which objects changed since (only those are
//!   canonicalized, validated and diffed);
//! - `text`: models and commands → nft's own syntax (what is shown, and what is sent when
//!   the names allow), `json`: commands → nft JSON (what is sent otherwise);
//! - [`parse`]: nft's JSON listing → model (adoption on start, counters);
//! - [`NftDataplane`] runs nft (element-only transactions go as a netlink batch, see
//!   `netlink`); [`FakeDataplane`] applies the same commands in memory.
//!
//! Both dataplanes keep what they believe is programmed. The first apply (and the first after
//! an error or [`Dataplane::invalidate`]) reads the table back and converges from what is
//! really there, in one transaction that never deletes the table: unchanged chains, sets and
//! elements stay untouched, so traffic never sees an empty or half-built table.

pub mod canon;
mod fake;
mod json;
mod kernel;
mod netlink;
pub mod parse;
pub mod plan;
mod text;
mod tracker;

pub use canon::canonicalize;
pub use fake::FakeDataplane;
pub use json::transaction as transaction_json;
pub use kernel::{describe, LastApply, NftDataplane, NftOptions};
pub use parse::{parse_listing, Listing, RuleCounter};
pub use plan::{plan, validate, Op, Programmed, SetType};
pub use text::{op_text, render_full, render_table, script as transaction_script, SCRIPT_WORDS};

use crate::ruleset::{Ruleset, Touched};

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Number of commands in the transaction sent (0: nothing to do).
    pub commands: usize,
    /// Whether this was a full resync rather than a diff.
    pub full: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// nft refused the transaction; carries nft's own error text.
    #[error("nft: {0}")]
    Nft(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The model cannot be programmed (a rule names a missing set, a jump to a base chain,
    /// ...): a bug in whoever built it. Nothing was sent.
    #[error("invalid ruleset: {0}")]
    Invalid(String),
}

/// A programmable dataplane: the real one runs `nft`, the fake applies in memory.
pub trait Dataplane {
    /// Make the programmed table equal `desired`, in one atomic transaction.
    fn apply(&mut self, desired: &Ruleset) -> Result<ApplyStats, DataplaneError> {
        self.apply_touched(desired, &Touched::all())
    }
    /// [`Dataplane::apply`], told which objects may differ from the model of the last apply
    /// ([`Touched`], from the compiler): the others are not even looked at. Any error makes
    /// the next apply a full resync, so a hint is never lost with a failed apply.
    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &Touched,
    ) -> Result<ApplyStats, DataplaneError>;
    /// Forget what is believed programmed; the next apply re-reads the table and converges.
    fn invalidate(&mut self);
}
