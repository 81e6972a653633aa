//! Two independent answers to "is this packet allowed?": [`reference`] evaluates the
//! NetworkPolicy API semantics directly, [`interp`] walks a compiled ruleset. Property tests
//! and the scenario files require them to agree.

pub mod interp;
pub mod reference;
