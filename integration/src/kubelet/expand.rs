//! `$(VAR)` references in a container's `command`, `args` and env `value`s, expanded the way
//! kubelet expands them (k8s.io/kubernetes `third_party/forked/golang/expansion`, documented
//! under "Define a command and arguments": "Dependent environment variables"):
//!
//! - `$(NAME)` becomes NAME's value when NAME is defined, and stays `$(NAME)` verbatim when it
//!   is not (no error, no empty string);
//! - `$$` is an escaped `$`: `$$(NAME)` becomes the literal `$(NAME)`;
//! - a `$` followed by anything else, a `$(` without a closing `)`, or a `$` at the end stay as
//!   written.
//!
//! There is no crate for this; it is kubelet's own syntax, so it is written out here.

/// Expand `input` with `lookup` (None: undefined, left as written).
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A `$` at the very end is kept.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // Incomplete reference: "$(" is copied and scanning goes on after it.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            // Kubelet copies the `$` and the one byte after it; for a non-ASCII character
            // we copy the whole character (kubelet would split it; no manifest does that).
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = chars.as_str();
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn vars(name: &str) -> Option<String> {
        match name {
            "NODE_NAME" => Some("node-1".into()),
            "EMPTY" => Some(String::new()),
            "NESTED" => Some("$(NODE_NAME)".into()),
            _ => None,
        }
    }

    fn x(s: &str) -> String {
        expand(s, &vars)
    }

    #[test]
    fn defined_references_are_replaced() {
        assert_eq!(x("--node-name=$(NODE_NAME)"), "--node-name=node-1");
        assert_eq!(x("$(NODE_NAME)$(NODE_NAME)"), "node-1node-1");
        assert_eq!(x("a$(EMPTY)b"), "ab");
    }

    #[test]
    fn undefined_references_stay_verbatim() {
        assert_eq!(x("--x=$(NOPE)"), "--x=$(NOPE)");
        assert_eq!(x("$()"), "$()");
    }

    #[test]
    fn escapes_and_stray_dollars() {
        assert_eq!(x("$$(NODE_NAME)"), "$(NODE_NAME)");
        assert_eq!(x("$$$(NODE_NAME)"), "$node-1");
        assert_eq!(x("$$"), "$");
        assert_eq!(x("cost: 5$"), "cost: 5$");
        assert_eq!(x("$NODE_NAME"), "$NODE_NAME");
        assert_eq!(x("${NODE_NAME}"), "${NODE_NAME}");
        assert_eq!(x("$(NODE_NAME"), "$(NODE_NAME");
        assert_eq!(x("$(a$(NODE_NAME)"), "$(a$(NODE_NAME)");
        assert_eq!(x("é$é"), "é$é");
    }

    #[test]
    fn values_are_not_expanded_twice() {
        assert_eq!(x("$(NESTED)"), "$(NODE_NAME)");
    }
}
