//! The real dataplane: runs `nft` as a child process (optionally inside a network namespace
//! through `nsenter`), sends each transaction as one document on stdin (`nft -f -`: one file
//! is one atomic transaction) and reads the table back as JSON. The document is nft's own
//! syntax ([`super::text::script`]), or JSON when a name or string cannot be written in that
//! syntax. A transaction of element changes only (pod churn) goes as one netlink batch
//! instead ([`super::netlink`]).

use super::parse::{parse_listing, Listing, RuleCounter};
use super::plan::Op;
use super::tracker::Tracker;
use super::{text, ApplyStats, Dataplane, DataplaneError};
use crate::ruleset::{Ruleset, Touched};
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
    /// A cold start (no table yet) with at least this many set elements goes in three
    /// steps, its elements as netlink batches (`NftDataplane::staged_cold_start`); needs
    /// `netlink_elements`.
    pub staged_min_elements: usize,
}

impl Default for NftOptions {
    fn default() -> NftOptions {
        NftOptions {
            table: palisade_common::POLICY_TABLE.to_string(),
            nft: PathBuf::from("nft"),
            netns: None,
            netlink_elements: true,
            staged_min_elements: 4096,
        }
    }
}

/// Timing and size of the last transaction (for metrics and benchmarks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastApply {
    /// Bytes sent (nft script, nft JSON or netlink batch).
    pub bytes: usize,
    /// The transaction went to nft in its own syntax rather than JSON (see
    /// [`super::text::script`]).
    pub script: bool,
    /// Wall time of the nft run that applied it.
    pub nft_time: Duration,
    /// Wall time of the listing read and parse for a resync (zero for a diff).
    pub list_time: Duration,
    /// Time spent in this process: validate, canonicalize, diff, render the transaction.
    pub cpu_time: Duration,
    /// The transaction went as a netlink batch (element changes only), not through nft.
    pub via_netlink: bool,
    /// The transaction was a cold start in three steps (see
    /// `NftDataplane::staged_cold_start`).
    pub staged: bool,
    /// Wall time of the three steps of a staged cold start (structure through nft, element
    /// batches, base chains through nft; zero otherwise), part of `nft_time`.
    pub staged_steps: [Duration; 3],
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
    socket: Option<palisade_kernel::nftables::Nfnl>,
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
        // nft's own syntax when every name allows it (always, for the compiler's names),
        // JSON otherwise.
        let script = text::script(&self.opts.table, ops);
        self.last.script = script.is_some();
        let (args, doc): (&[&str], String) = match script {
            Some(script) => (&["-f", "-"], script),
            None => (
                &["-j", "-f", "-"],
                super::json::transaction(&self.opts.table, ops),
            ),
        };
        self.last.cpu_time += t.elapsed();
        self.last.bytes += doc.len();
        let t = Instant::now();
        let res = self.run(args, Some(doc.as_bytes()));
        self.last.nft_time += t.elapsed();
        res.map(|_| ()).map_err(|e| match e {
            DataplaneError::Nft(msg) => {
                DataplaneError::Nft(format!("{msg}\ntransaction:\n{}", describe(ops)))
            }
            other => other,
        })
    }

    /// The kept netlink socket, or a new one; the caller puts it back after a success.
    fn take_socket(
        &mut self,
    ) -> Result<palisade_kernel::nftables::Nfnl, super::netlink::BatchError> {
        match self.socket.take() {
            Some(s) => Ok(s),
            None => super::netlink::socket(self.opts.netns.as_deref()),
        }
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
        let res = self
            .take_socket()
            .and_then(|mut sock| super::netlink::send(&mut sock, &batch).map(|()| sock));
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

    /// A cold start (no table yet) with many set elements, in three steps instead of one nft
    /// transaction: (1) through nft, the table, its sets and maps (empty), its regular chains
    /// and their rules; (2) as netlink batches, every element, of interval sets too (nft
    /// parses tens of thousands of elements far slower than the kernel takes them: about
    /// 0.5 s for 100k interval elements); (3) through nft, the base chains and their rules.
    ///
    /// Traffic sees exactly what one transaction would give: until (3) the table has no base
    /// chain, so no hook, and packets pass as if it did not exist (as they did before it
    /// existed); (3) attaches the complete table at once. If a step fails, the error is
    /// returned and the next apply reads back what was made and converges in one transaction
    /// as after any error.
    ///
    /// Takes the commands out of `diff` when it applies (`None` when it does not, and `diff`
    /// is sent as usual).
    fn staged_cold_start(
        &mut self,
        diff: &mut super::tracker::Diff,
    ) -> Option<Result<(), DataplaneError>> {
        if !self.opts.netlink_elements || !diff.whole || diff.ops.first() != Some(&Op::AddTable) {
            return None;
        }
        let model = &diff.model;
        let additions = |op: &Op| super::netlink::element_additions(model, op);
        if diff.ops.iter().filter_map(additions).sum::<usize>() < self.opts.staged_min_elements {
            return None;
        }
        let t = Instant::now();
        let (mut structure, mut elements, mut hooks) = (Vec::new(), Vec::new(), Vec::new());
        for op in std::mem::take(&mut diff.ops) {
            let base = |chain: &str| model.chains.get(chain).is_some_and(|c| c.base.is_some());
            match &op {
                Op::AddChain { name, .. } | Op::AddRule { chain: name, .. } if base(name) => {
                    hooks.push(op)
                }
                _ if additions(&op).is_some() => elements.push(op),
                _ => structure.push(op),
            }
        }
        let batches = super::netlink::encode_additions(&self.opts.table, model, &elements);
        self.last.cpu_time += t.elapsed();
        self.last.staged = true;
        Some((|| {
            let t = Instant::now();
            self.send(&structure)?;
            self.last.staged_steps[0] = t.elapsed();
            let t = Instant::now();
            let sent = match batches {
                Some(batches) => self.send_batches(&batches),
                None => false,
            };
            if !sent {
                self.send(&elements)?;
            }
            self.last.staged_steps[1] = t.elapsed();
            let t = Instant::now();
            let res = if hooks.is_empty() {
                Ok(())
            } else {
                self.send(&hooks)
            };
            self.last.staged_steps[2] = t.elapsed();
            res
        })())
    }

    /// Sends element batches one by one on the kept socket; `false` when netlink is not
    /// usable or the kernel refused one (already sent ones are harmless to send again
    /// through nft: adding an element that exists is no error).
    fn send_batches(&mut self, batches: &[palisade_kernel::nftables::Batch]) -> bool {
        let t = Instant::now();
        let res = self.take_socket().and_then(|mut s| {
            for b in batches {
                self.last.bytes += b.len();
                super::netlink::send(&mut s, b)?;
            }
            Ok(s)
        });
        self.last.nft_time += t.elapsed();
        match res {
            Ok(s) => {
                self.socket = Some(s);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "element batches of a cold start; sending them through nft");
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
    fn apply_touched(
        &mut self,
        desired: &Ruleset,
        touched: &Touched,
    ) -> Result<ApplyStats, DataplaneError> {
        self.last = LastApply::default();
        let full = !self.tracker.known();
        if full {
            let t = Instant::now();
            let listing = self.list()?;
            self.last.list_time = t.elapsed();
            self.tracker.adopt(listing.map(|l| l.programmed));
        }
        let t = Instant::now();
        let mut diff = self.tracker.diff(desired, touched)?;
        self.last.cpu_time = t.elapsed();
        let commands = diff.ops.len();
        if let Some(Err(e)) = self.staged_cold_start(&mut diff) {
            self.tracker.invalidate();
            return Err(e);
        }
        let commands_left = diff.ops.len();
        let via_netlink = commands_left > 0
            && self.opts.netlink_elements
            && self.send_netlink(&diff.model, &diff.ops);
        if commands_left > 0 && !via_netlink {
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
