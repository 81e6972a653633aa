//! The dataplane: renders a [`crate::ruleset::Ruleset`] into nftables transactions for the
//! table `inet palisade`, diffs against what is programmed and applies only the difference.

use crate::ruleset::Ruleset;

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
}

/// A programmable dataplane: the real one runs `nft`, the fake applies in memory.
pub trait Dataplane {
    /// Make the programmed table equal `desired`, in one atomic transaction.
    fn apply(&mut self, desired: &Ruleset) -> Result<ApplyStats, DataplaneError>;
    /// Forget what is believed programmed; the next apply re-reads the table and converges.
    fn invalidate(&mut self);
}
