//! `palisadectl`'s exit codes, one meaning each, so scripts can tell "not ready" from "could
//! not ask" (docs/palisadectl/README.md lists them too).

/// The command answered (for `explain`, whatever the verdict).
pub const OK: u8 = 0;
/// Nothing was answered: unreadable input, no API server or agent to ask, bad selector.
pub const ERROR: u8 = 1;
/// The command line itself is wrong (clap's code for usage errors).
pub const USAGE: u8 = 2;
/// The compiled ruleset and the reference evaluator (or the programmed table) disagree: the
/// answer printed may be wrong, and Palisade has a bug.
pub const DISAGREEMENT: u8 = 3;
/// `status`: the agent answered, but it is not ready: its first full sync is not programmed
/// yet, or the node routes are not in place.
pub const NOT_READY: u8 = 4;
