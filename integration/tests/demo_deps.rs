//! `bash integration/demo` on a machine that lacks what it needs, as a newcomer runs it: the
//! package manager and the toolchain are stand-ins first in PATH (`dpkg-query` says nftables
//! is not installed, `apt-get` installs or fails as told, `cargo` only records that a build
//! started), so this runs anywhere without touching the machine's packages.
//!
//! - apt-get cannot install nftables: one line names the package and how to get it, and no
//!   build starts;
//! - apt-get can: nftables is installed first, then the build starts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A directory of stand-ins; every call is appended to `log`, in order.
struct Stubs {
    dir: PathBuf,
}

impl Stubs {
    fn new(tag: &str, apt_works: bool) -> Stubs {
        let dir =
            std::env::temp_dir().join(format!("palisade-demo-deps-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("missing"), "nftables\n").unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\nd={}\n{body}", dir.display())).unwrap();
            Command::new("chmod").arg("+x").arg(&p).status().unwrap();
        };
        // dpkg-query -W -f='${Status}' PKG: installed unless listed in `missing`.
        write(
            "dpkg-query",
            "for p; do :; done\n\
             grep -qx \"$p\" \"$d/missing\" && exit 1\n\
             printf 'install ok installed'\n",
        );
        write(
            "apt-get",
            &format!(
                "echo \"apt-get $*\" >> \"$d/log\"\n\
                 [ \"$1\" = update ] && exit 0\n\
                 {}",
                if apt_works {
                    "for p; do grep -vx \"$p\" \"$d/missing\" > \"$d/m2\"; mv \"$d/m2\" \"$d/missing\"; done\nexit 0\n"
                } else {
                    "echo 'E: Unable to locate package nftables' >&2\nexit 100\n"
                }
            ),
        );
        write("cargo", "echo \"cargo $*\" >> \"$d/log\"\nexit 3\n");
        write("kubectl", "exit 0\n");
        Stubs { dir }
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Run `bash integration/demo` with the stand-ins first in PATH.
    fn demo(&self) -> (Option<i32>, String) {
        let path = format!(
            "{}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .arg(repo_root().join("integration/demo"))
            .env("PATH", path)
            .env_remove("PALISADE_NO_BUILD")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn a_package_that_cannot_be_installed_is_named_before_any_build() {
    let stubs = Stubs::new("fails", false);
    let (code, stderr) = stubs.demo();
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("palisade: "))
        .collect();
    let want_lines = if is_root() { 1 } else { 2 };
    assert_eq!(lines.len(), want_lines, "{stderr}");
    let nft = lines
        .iter()
        .find(|l| l.contains("nftables"))
        .expect("a line for nftables");
    assert!(
        nft.contains("missing package nftables")
            && nft.contains("`apt-get install nftables`")
            && nft.contains("nft"),
        "{nft}"
    );
    if is_root() {
        assert!(nft.contains("apt-get install failed"), "{nft}");
    }
    assert!(
        !stubs.log().iter().any(|l| l.starts_with("cargo")),
        "a build started: {:?}",
        stubs.log()
    );
}

#[test]
fn a_missing_package_is_installed_before_the_build() {
    if !is_root() {
        eprintln!("not root: the demo refuses before installing anything (checked above)");
        return;
    }
    let stubs = Stubs::new("works", true);
    let (code, stderr) = stubs.demo();
    // The stand-in cargo fails the build: the demo stops there, after installing.
    assert_eq!(code, Some(3), "{stderr}");
    let log = stubs.log();
    let install = log
        .iter()
        .position(|l| l.starts_with("apt-get install") && l.ends_with(" nftables"))
        .unwrap_or_else(|| panic!("nftables not installed: {log:?}"));
    let build = log
        .iter()
        .position(|l| l.starts_with("cargo build"))
        .unwrap_or_else(|| panic!("no build: {log:?}"));
    assert!(install < build, "{log:?}");
    assert!(!stderr.contains("palisade: missing"), "{stderr}");
}
