//! The reference pages in docs/palisadectl/ keep up with the command line: every subcommand
//! has a page that names each of its flags, the README names the global flags, and the exit
//! codes it lists are those of `ctl::exit`. The completion scripts complete what exists.

use clap::CommandFactory;
use palisade_policy::ctl::{exit, Cli};
use std::path::{Path, PathBuf};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/palisadectl")
}

fn long_flags(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .filter(|l| l != "--help" && l != "--version")
        .collect()
}

#[test]
fn every_command_and_flag_has_its_reference() {
    let cli = Cli::command();
    let readme = std::fs::read_to_string(docs().join("README.md")).unwrap();
    for global in ["--kubeconfig", "--context", "--color"] {
        assert!(
            readme.contains(&format!("`{global}")),
            "README.md lacks {global}"
        );
    }
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let page = docs().join(format!("{name}.md"));
        let text = std::fs::read_to_string(&page)
            .unwrap_or_else(|_| panic!("no reference page {}", page.display()));
        assert!(
            text.starts_with(&format!("# palisadectl {name}\n")),
            "{name}.md title"
        );
        assert!(
            readme.contains(&format!("({name}.md)")),
            "README.md does not link {name}.md"
        );
        for flag in long_flags(sub) {
            assert!(
                text.contains(&format!("`{flag}")),
                "{name}.md does not describe {flag}"
            );
        }
        for short in sub.get_arguments().filter_map(|a| a.get_short()) {
            if short != 'h' {
                assert!(
                    text.contains(&format!("`-{short}")),
                    "{name}.md does not describe -{short}"
                );
            }
        }
    }
}

#[test]
fn the_exit_codes_listed_are_the_ones_used() {
    let readme = std::fs::read_to_string(docs().join("README.md")).unwrap();
    let table: Vec<u8> = readme
        .split("## Exit codes")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        table,
        [
            exit::OK,
            exit::ERROR,
            exit::USAGE,
            exit::DISAGREEMENT,
            exit::NOT_READY
        ]
    );
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("4 status: the agent is not ready"), "{help}");
}

/// The bash script, sourced in a real bash, completes subcommands, flags and values.
#[test]
fn bash_completion_completes() {
    let script = std::env::temp_dir().join(format!("palisadectl-{}.bash", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisadectl"))
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&script, &out.stdout).unwrap();
    let complete = |words: &[&str]| -> String {
        let words_array: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _palisadectl palisadectl '{}' '{}'; echo \"${{COMPREPLY[*]}}\"",
            script.display(),
            words_array.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &program])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete(&["palisadectl", "dr"]), "drops");
    assert_eq!(
        complete(&["palisadectl", "reach", "-o", ""]),
        "table wide json yaml dot svg"
    );
    assert_eq!(complete(&["palisadectl", "drops", "--dir"]), "--direction");
    assert!(complete(&["palisadectl", "completion", ""]).ends_with(" bash zsh fish"));
    let _ = std::fs::remove_file(&script);
    for (shell, marker) in [
        ("zsh", "#compdef palisadectl"),
        ("fish", "complete -c palisadectl"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisadectl"))
            .args(["completion", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(marker) && text.contains("drops"),
            "{shell}: {text}"
        );
    }
}
