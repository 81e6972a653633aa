//! Two independent answers to "is this packet allowed?": [`reference`] evaluates the policy
//! APIs' semantics directly, [`interp`] walks a compiled ruleset. Property tests
//! and the scenario files require them to agree.

pub mod interp;
pub mod reference;
