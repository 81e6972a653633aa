//! The Dockerfile builds for the platform it is asked for: it names no architecture of its
//! own, takes the target from TARGETARCH through image/platform.sh (which maps amd64 and
//! arm64 and refuses others), and copies only files that exist. (No container engine runs
//! here to build it; image/test-image.sh builds and runs the same tree without one.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_dockerfile_names_no_architecture_and_copies_what_exists() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for arch in ["x86_64", "aarch64", "amd64", "arm64"] {
        assert!(
            !instructions.iter().any(|l| l.contains(arch)),
            "an instruction names {arch}"
        );
    }
    assert!(
        text.contains("FROM --platform=$BUILDPLATFORM rust:"),
        "the Rust stage cross-compiles"
    );
    assert!(text.contains("ARG TARGETARCH"));
    for line in &instructions {
        let Some(rest) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            if *src != "." {
                assert!(root().join(src).exists(), "COPY {src}: no such file");
            }
        }
    }
}

#[test]
fn platform_script_maps_both_architectures_in_plain_sh() {
    let run = |arch: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "TARGETARCH={arch}; . '{}' && echo \"$RUST_TARGET $GNU_TRIPLE $DEB_ARCH\"",
                root().join("image/platform.sh").display()
            ))
            .output()
            .unwrap()
    };
    let out = run("arm64");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "aarch64-unknown-linux-gnu aarch64-linux-gnu arm64"
    );
    let out = run("amd64");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "x86_64-unknown-linux-gnu x86_64-linux-gnu amd64"
    );
    let out = run("riscv64");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported TARGETARCH 'riscv64'"));
}
