//! The real dataplane: runs `nft` as a child process (optionally inside a network namespace
//! through `nsenter`), sends each transaction as one JSON document on stdin (`nft -j -f -`:
//! one file is one atomic transaction), and reads the table back as JSON. A transaction of
//! element changes only (pod churn) goes as one netlink batch instead ([`super::netlink`]).

use super::parse::{parse_listing, Listing, RuleCounter};
use super::plan::Op;
use super::tracker::Tracker;
use super::{text, ApplyStats, Dataplane, DataplaneError};
use crate::ruleset::Ruleset;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How to reach nft.
#[derive(Debug, Clone)]
pub struct NftOptions {
    /// The table (family `inet`) this dataplane owns.
    pub table: String,
    /// The nft binary.
    pub nft: PathBuf,
    /// Run nft inside this network namespace (`nsenter --net=<path>`); for tests.
    pub netns: Option<PathBuf>,
    /// Send element-only transactions as a netlink batch rather than through nft.
    pub netlink_elements: bool,
}

impl Default for NftOptions {
    fn default() -> NftOptions {
        NftOptions {
            table: palisade_common::POLICY_TABLE.to_string(),
            nft: PathBuf::from("nft"),
            netns: None,
            netlink_elements: true,
        }
    }
}

/// Timing and size of the last transaction (for metrics and benchmarks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastApply {
    /// Bytes of JSON sent to nft.
    pub bytes: usize,
    /// Wall time of the nft run that applied it.
    pub nft_time: Duration,
    /// Wall time of the listing read and parse for a resync (zero for a diff).
    pub list_time: Duration,
    /// Time spent in this process: validate, canonicalize, diff, render JSON.
    pub cpu_time: Duration,
    /// The transaction went as a netlink batch (element changes only), not through nft.
    pub via_netlink: bool,
    /// The kernel refused the netlink batch and the same commands went through nft: the
    /// refusal, for the log (a bug in the batch encoder if nft then succeeded).
    pub netlink_refused: Option<String>,
}

#[derive(Debug)]
pub struct NftDataplane {
    opts: NftOptions,
    tracker: Tracker,
    last: LastApply,
    /// The netlink socket element batches go on, kept open (see [`super::netlink::socket`]);
    /// dropped after any error, so a fresh one starts clean.
    socket: Option<std::os::fd::OwnedFd>,
}

impl NftDataplane {
    pub fn new(opts: NftOptions) -> NftDataplane {
        NftDataplane {
            opts,
            tracker: Tracker::new(),
            last: LastApply::default(),
            socket: None,
        }
    }

    /// The table `inet palisade` with the `nft` on PATH.
    pub fn with_defaults() -> NftDataplane {
        NftDataplane::new(NftOptions::default())
    }

    pub fn options(&self) -> &NftOptions {
        &self.opts
    }

    pub fn last_apply(&self) -> &LastApply {
        &self.last
    }

    fn command(&self) -> Command {
        match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&self.opts.nft);
                c
            }
            None => Command::new(&self.opts.nft),
        }
    }

    /// Runs nft with `args` and `input` on stdin; stdout on success, stderr in the error.
    fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, DataplaneError> {
        let what = format!("nft {}", args.join(" "));
        let mut child = self
            .command()
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| DataplaneError::Io {
                context: format!("spawn {what} ({})", self.opts.nft.display()),
                source,
            })?;
        if let Some(input) = input {
            // nft reads the whole file before it writes anything, so writing all of stdin
            // before reading its output cannot deadlock.
            let mut stdin = child.stdin.take().expect("piped");
            stdin
                .write_all(input)
                .map_err(|source| DataplaneError::Io {
                    context: format!("write transaction to {what}"),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| DataplaneError::Io {
                context: format!("wait for {what}"),
                source,
            })?;
        if !out.status.success() {
            return Err(DataplaneError::Nft(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Reads the table back; `None` when it does not exist.
    pub fn list(&self) -> Result<Option<Listing>, DataplaneError> {
        match self.run(&["-j", "list", "table", "inet", &self.opts.table], None) {
            Ok(json) => parse_listing(&json, &self.opts.table)
                .map(Some)
                .map_err(DataplaneError::Nft),
            // nft says "No such file or directory" for a missing table.
            Err(DataplaneError::Nft(e)) if e.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The programmed table as nft's own text listing (for `palisadectl`).
    pub fn list_text(&self) -> Result<String, DataplaneError> {
        self.run(&["list", "table", "inet", &self.opts.table], None)
    }

    /// Every counted rule's packets and bytes, with its chain and comment.
    pub fn list_rules_with_counters(&self) -> Result<Vec<RuleCounter>, DataplaneError> {
        Ok(self.list()?.map(|l| l.counters).unwrap_or_default())
    }

    /// Sends one transaction. On failure nothing changed (nft transactions are atomic); the
    /// error carries nft's message and the transaction in text form.
    pub fn send(&mut self, ops: &[Op]) -> Result<(), DataplaneError> {
        let t = Instant::now();
        let doc = super::json::transaction(&self.opts.table, ops);
        self.last.cpu_time += t.elapsed();
        self.last.bytes = doc.len();
        let t = Instant::now();
        let res = self.run(&["-j", "-f", "-"], Some(doc.as_bytes()));
        self.last.nft_time = t.elapsed();
        res.map(|_| ()).map_err(|e| match e {
            DataplaneError::Nft(msg) => {
                DataplaneError::Nft(format!("{msg}\ntransaction:\n{}", describe(ops)))
            }
            other => other,
        })
    }

    /// Tries the element fast path; `false` when the commands must go through nft (not
    /// element-only, netlink unavailable, or refused by the kernel).
    fn send_netlink(&mut self, desired: &Ruleset, ops: &[Op]) -> bool {
        let t = Instant::now();
        let Some(batch) = super::netlink::encode(&self.opts.table, desired, ops) else {
            self.last.cpu_time += t.elapsed();
            return false;
        };
        self.last.cpu_time += t.elapsed();
        self.last.bytes = batch.len();
        let t = Instant::now();
        let res = match self.socket.take() {
            Some(s) => Ok(s),
            None => super::netlink::socket(self.opts.netns.as_deref()),
        }
        .and_then(|sock| super::netlink::send(&sock, &batch).map(|()| sock));
        self.last.nft_time = t.elapsed();
        let res = res.map(|sock| self.socket = Some(sock));
        match res {
            Ok(()) => {
                self.last.via_netlink = true;
                true
            }
            Err(super::netlink::BatchError::Unavailable(_)) => false,
            Err(e @ super::netlink::BatchError::Refused(_)) => {
                let msg = format!("{e}; commands sent through nft instead:\n{}", describe(ops));
                tracing::warn!(error = %msg, "netlink element batch refused");
                self.last.netlink_refused = Some(msg);
                false
            }
        }
    }

    /// Deletes the table (everything Palisade programmed); absent is fine.
    pub fn delete_table(&mut self) -> Result<(), DataplaneError> {
        self.tracker.invalidate();
        let doc = serde_json::json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": &self.opts.table}}},
            {"delete": {"table": {"family": "inet", "name": &self.opts.table}}},
        ]});
        self.run(&["-j", "-f", "-"], Some(doc.to_string().as_bytes()))
            .map(|_| ())
    }
}

/// The commands in readable form, cut after 200 lines (errors go to the log).
pub fn describe(ops: &[Op]) -> String {
    const MAX: usize = 200;
    let mut lines: Vec<String> = Vec::new();
    for op in ops {
        if lines.len() >= MAX {
            lines.push(format!("... ({} commands in all)", ops.len()));
            break;
        }
        lines.push(text::op_text(op));
    }
    lines.join("\n")
}

impl Dataplane for NftDataplane {
    fn apply(&mut self, desired: &Ruleset) -> Result<ApplyStats, DataplaneError> {
        self.last = LastApply::default();
        let full = !self.tracker.known();
        if full {
            let t = Instant::now();
            let listing = self.list()?;
            self.last.list_time = t.elapsed();
            self.tracker.adopt(listing.map(|l| l.programmed));
        }
        let t = Instant::now();
        let diff = self.tracker.diff(desired)?;
        self.last.cpu_time = t.elapsed();
        let commands = diff.ops.len();
        let via_netlink =
            commands > 0 && self.opts.netlink_elements && self.send_netlink(&diff.model, &diff.ops);
        if commands > 0 && !via_netlink {
            if let Err(e) = self.send(&diff.ops) {
                // The kernel kept the old table; re-read it before the next attempt.
                self.tracker.invalidate();
                return Err(e);
            }
        }
        self.tracker.commit(diff);
        #[cfg(debug_assertions)]
        self.tracker.check(desired);
        Ok(ApplyStats { commands, full })
    }

    fn invalidate(&mut self) {
        self.tracker.invalidate();
    }
}
