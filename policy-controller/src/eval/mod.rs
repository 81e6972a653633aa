//! Two independent answers to "is this packet allowed?": [`reference`] evaluates the
//! NetworkPolicy API semantics directly, `interp` walks a compiled ruleset. Property tests
//! require them to agree.
