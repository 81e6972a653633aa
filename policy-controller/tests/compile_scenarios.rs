//! The sample scenario files (`shared/scenarios-sample`, and `integration/scenarios` when
//! present) played offline: every probe cell must agree with the reference evaluator and
//! with the compiled ruleset walked by the interpreter. A cell towards the external host is
//! allowed when policy allows it and the packet leaves its node masqueraded (the external
//! host has no route back to pod addresses): the reference's policy verdict and the
//! scenario's `cluster.masquerade`, or the interpreter's verdict and its masquerade hop.

// `pub`: the support module is shared by several test binaries, each using a part of it.
pub mod compile_support;

use compile_support::play_all;
use palisade_policy::eval::reference::{self, Endpoint};

#[test]
fn scenarios_agree_with_reference_evaluator() {
    let (scenarios, cells, failures) = play_all(|state, cell| {
        let external = matches!(cell.dst, Endpoint::Ip(_));
        let got = reference::allowed(
            state,
            &Endpoint::Pod(cell.src.clone()),
            &cell.dst,
            cell.proto,
            cell.port,
        ) && (!external || cell.masquerade);
        if got == cell.expected {
            Ok(())
        } else {
            let why = reference::explain(
                state,
                &Endpoint::Pod(cell.src.clone()),
                &cell.dst,
                cell.proto,
                cell.port,
            );
            Err(format!(
                "expected {}, reference says {got}: {why:?}",
                cell.expected
            ))
        }
    });
    println!(
        "{scenarios} scenarios, {cells} cells, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn scenarios_agree_with_compiled_rulesets() {
    use palisade_policy::compile::{CompileOptions, MasqueradeOptions};
    use palisade_policy::eval::interp::{check_ruleset, Reachability};
    let (scenarios, cells, failures) = play_all(|state, cell| {
        let mut reach = Reachability::new(
            state,
            CompileOptions {
                node: String::new(),
                fail_closed_new_pods: true,
                nflog_group: None,
                masquerade: if cell.masquerade {
                    MasqueradeOptions::enabled()
                } else {
                    MasqueradeOptions::disabled()
                },
            },
        );
        for node in state.nodes.keys() {
            let problems = check_ruleset(reach.ruleset(node));
            if !problems.is_empty() {
                return Err(format!("ruleset of {node} is malformed: {problems:?}"));
            }
        }
        let verdict = reach
            .check(
                &Endpoint::Pod(cell.src.clone()),
                &cell.dst,
                cell.proto,
                cell.port,
            )
            .map_err(|e| e.to_string())?;
        let answered = match cell.dst {
            Endpoint::Ip(_) => verdict.hops.iter().any(|h| h.outcome.masqueraded),
            Endpoint::Pod(_) => true,
        };
        if (verdict.allowed && answered) == cell.expected {
            Ok(())
        } else {
            let hits: Vec<String> = verdict
                .hops
                .iter()
                .map(|h| {
                    format!(
                        "{} {:?} {}: {:?}",
                        h.node,
                        h.hook,
                        if h.outcome.accepted { "accept" } else { "drop" },
                        h.outcome
                            .trace
                            .iter()
                            .map(|t| format!(
                                "{}[{}] {}",
                                t.chain,
                                t.rule,
                                t.comment.clone().unwrap_or_default()
                            ))
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            Err(format!(
                "expected {}, compiled says {} (masqueraded: {}): {}",
                cell.expected,
                verdict.allowed,
                answered,
                hits.join(" | ")
            ))
        }
    });
    println!(
        "{scenarios} scenarios, {cells} cells, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
