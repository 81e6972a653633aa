//! The agent's reading of an nftables listing (`nft -j list table inet palisade`), which it
//! adopts on start-up as the programmed state: `nft::parse_listing`, then the diff the
//! dataplane plans from what it adopted and its rendering as an nft script.
//!
//! Input: the listing's bytes (seeds: real listings of tables the agent programmed).
//!
//! Properties: no panic; when a listing parses, planning from it to any desired ruleset
//! (here: nothing, and the table it describes) renders; a table that already holds exactly
//! the desired ruleset needs no change.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::nft::{self, Programmed};
use palisade_policy::ruleset::Ruleset;

const TABLE: &str = palisade_common::POLICY_TABLE;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(listing) = nft::parse_listing(text, TABLE) else {
        return;
    };
    let adopted = &listing.programmed;
    for desired in [&Ruleset::default(), &adopted.model] {
        let ops = nft::plan(Some(adopted), desired);
        let _ = nft::transaction_script(TABLE, &ops);
    }
    // What the listing described exactly (nothing stale) is what is programmed: no change.
    let exact = Programmed::exact(adopted.model.clone());
    let ops = nft::plan(Some(&exact), &adopted.model);
    assert!(
        ops.is_empty(),
        "{} ops to reach the programmed table",
        ops.len()
    );
});
