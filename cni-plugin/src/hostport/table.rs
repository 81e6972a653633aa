//! The table's skeleton in nft's own syntax, and the `nft` process that applies it.
//!
//! ```text
//! table inet palisade-hostport {
//!   set layout_v1      { type mark }   exists only in a table of layout 1 (guards the fast path)
//!   map ports4         { type inet_proto . inet_service : ipv4_addr . inet_service }
//!   map addr_ports4    { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
//!   map ports6 / addr_ports6   the same for IPv6
//!   set hairpin4       { type ipv4_addr . ipv4_addr }   podIP . podIP
//!   set hairpin6       { type ipv6_addr . ipv6_addr }
//!   chain hostports    host-IP-specific map first, then the any-address map, per family
//!   chain prerouting   nat hook, `fib daddr type local jump hostports` (from other nodes and pods)
//!   chain output       nat hook, same for the node's own connections (loopback excluded)
//!   chain postrouting  nat hook, `ct status dnat ip saddr . ip daddr @hairpin4 masquerade`
//! }
//! ```
//!
//! Only the rebuild of the whole table (missing, of another layout, or GC) goes through
//! `nft`: its rules are expressions that nft compiles, and the script is their readable
//! source. (Sending them by netlink would mean encoding the `nat`, `fib`, `ct` and `masq`
//! expressions by hand: `netlink-packet-netfilter` 0.4 has only meta, payload, cmp,
//! bitwise, immediate and lookup.) Elements go by netlink (`kernel.rs`); the script here carries them only when the
//! table is rebuilt with them, in the same transaction. nft is run directly with stderr
//! captured (the `nftables` crate loses nft's error text).

use super::entries::Entry;
use super::HostPortError;
use palisade_common::HOSTPORT_TABLE;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bump when the table layout (maps, chains, rules) changes: an older table is then rebuilt.
pub const LAYOUT_VERSION: u32 = 1;

/// The set whose only element guards element updates: it exists only in a table of layout
/// [`LAYOUT_VERSION`], so a batch that adds to it fails on any other table.
pub fn layout_set() -> String {
    format!("layout_v{LAYOUT_VERSION}")
}

/// Chains and their rule counts that [`full_table_script`] creates (checked by CHECK).
pub const CHAINS: [(&str, usize); 4] = [
    ("hostports", 4),
    ("prerouting", 1),
    ("output", 2),
    ("postrouting", 2),
];

/// `add element` lines for `entries`.
fn add_elements(s: &mut String, entries: &[Entry]) {
    for e in entries {
        let _ = writeln!(
            s,
            "add element inet {HOSTPORT_TABLE} {} {{ {} }}",
            e.set(),
            e.element()
        );
    }
}

/// The whole table, built from scratch: layout plus the given entries. Starts with
/// "add table; delete table" so that whatever was there (an older layout, elements nobody
/// owns) is replaced atomically.
pub fn full_table_script(entries: &[Entry]) -> String {
    let t = format!("inet {HOSTPORT_TABLE}");
    let mut s = String::new();
    let _ = write!(
        s,
        "add table {t}\n\
         delete table {t}\n\
         add table {t} {{ comment \"hostPort DNAT of the palisade CNI plugin\"; }}\n\
         add set {t} layout_v{LAYOUT_VERSION} {{ type mark; }}\n\
         add element {t} layout_v{LAYOUT_VERSION} {{ 1 }}\n\
         add map {t} ports4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map {t} addr_ports4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map {t} ports6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add map {t} addr_ports6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add set {t} hairpin4 {{ type ipv4_addr . ipv4_addr; }}\n\
         add set {t} hairpin6 {{ type ipv6_addr . ipv6_addr; }}\n\
         add chain {t} hostports\n\
         add rule {t} hostports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @addr_ports4\n\
         add rule {t} hostports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4\n\
         add rule {t} hostports meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @addr_ports6\n\
         add rule {t} hostports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @ports6\n\
         add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add rule {t} prerouting fib daddr type local jump hostports\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add rule {t} output meta nfproto ipv4 ip daddr != 127.0.0.0/8 fib daddr type local jump hostports\n\
         add rule {t} output meta nfproto ipv6 ip6 daddr != ::1 fib daddr type local jump hostports\n\
         add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add rule {t} postrouting ct status dnat ip saddr . ip daddr @hairpin4 masquerade\n\
         add rule {t} postrouting ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade\n"
    );
    add_elements(&mut s, entries);
    s
}

/// Remove the table, whether or not it exists.
pub fn delete_table_script() -> String {
    format!("add table inet {HOSTPORT_TABLE}\ndelete table inet {HOSTPORT_TABLE}\n")
}

/// The element update of `kernel::apply` in nft's syntax, for when netlink cannot be used
/// at all: the layout guard, "add, then delete" of what goes (see `kernel.rs`), what comes.
pub fn elements_script(remove: &[Entry], add: &[Entry]) -> String {
    let mut s = format!(
        "add element inet {HOSTPORT_TABLE} {} {{ 1 }}\n",
        layout_set()
    );
    for e in remove {
        add_elements(&mut s, std::slice::from_ref(e));
        let _ = writeln!(
            s,
            "delete element inet {HOSTPORT_TABLE} {} {{ {} }}",
            e.set(),
            e.element().key
        );
    }
    add_elements(&mut s, add);
    s
}

/// The `nft` binary, run in the plugin's namespace or (`in_netns`) in another one.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
    netns: Option<PathBuf>,
}

impl Nft {
    pub fn new(netns: Option<&Path>) -> Nft {
        Nft {
            program: find_nft(),
            netns: netns.map(Path::to_path_buf),
        }
    }

    fn command(&self) -> Command {
        match &self.netns {
            None => Command::new(&self.program),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&self.program);
                c
            }
        }
    }

    fn cannot_run(&self, e: std::io::Error) -> HostPortError {
        HostPortError::nftables("cannot run nft", format!("{}: {e}", self.program.display()))
    }

    /// Apply a script as one transaction (`nft -f -`).
    pub fn apply(&self, script: &str) -> Result<(), HostPortError> {
        let mut child = self
            .command()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.cannot_run(e))?;
        // nft reads all of stdin before it writes anything, so writing first cannot deadlock.
        let write = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().map_err(|e| self.cannot_run(e))?;
        if let Some(Err(e)) = write {
            return Err(HostPortError::nftables(
                "cannot write to nft",
                e.to_string(),
            ));
        }
        if !out.status.success() {
            return Err(HostPortError::nftables(
                format!("nft transaction on table inet {HOSTPORT_TABLE} failed"),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    /// Whether the table exists, asked of `nft` (when netlink cannot be used).
    pub fn table_exists(&self) -> Result<bool, HostPortError> {
        let out = self
            .command()
            .args(["list", "table", "inet", HOSTPORT_TABLE])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .map_err(|e| self.cannot_run(e))?;
        if out.status.success() {
            return Ok(true);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(false);
        }
        Err(HostPortError::nftables(
            format!("nft list table inet {HOSTPORT_TABLE} failed"),
            err.trim(),
        ))
    }
}

/// Runtimes exec plugins with their own, sometimes minimal, PATH: fall back to the usual
/// places of the nft binary.
fn find_nft() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostport::entries::entries_for;
    use crate::hostport::mappings::tests::{ip, tcp};

    #[test]
    fn the_fallback_guards_the_layout_and_removes_by_add_then_delete() {
        let old = entries_for(&[ip("10.0.0.1")], &[tcp(80, 80)]).unwrap();
        assert_eq!(
            elements_script(&old[1..], &old[..1]),
            "add element inet palisade-hostport layout_v1 { 1 }\n\
             add element inet palisade-hostport hairpin4 { 10.0.0.1 . 10.0.0.1 }\n\
             delete element inet palisade-hostport hairpin4 { 10.0.0.1 . 10.0.0.1 }\n\
             add element inet palisade-hostport ports4 { 6 . 80 : 10.0.0.1 . 80 }\n"
        );
    }

    #[test]
    fn full_table_replaces_whatever_was_there_and_declares_every_chain() {
        let s = full_table_script(&[]);
        assert!(s.starts_with(
            "add table inet palisade-hostport\ndelete table inet palisade-hostport\n"
        ));
        for (chain, rules) in CHAINS {
            assert!(
                s.contains(&format!("add chain inet palisade-hostport {chain}")),
                "{chain}"
            );
            let n = s
                .lines()
                .filter(|l| l.starts_with(&format!("add rule inet palisade-hostport {chain} ")))
                .count();
            assert_eq!(n, rules, "{chain}");
        }
    }
}
