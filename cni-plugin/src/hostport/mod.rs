//! hostPort: DNAT from the node to pods, in the plugin's own nftables table
//! `inet palisade-hostport` (see DESIGN.md "hostPort").
//!
//! | file | job |
//! | --- | --- |
//! | `mappings.rs` | `runtimeConfig.portMappings` parsed and checked |
//! | `entries.rs` | what the mappings publish, as typed entries (elements of the table) |
//! | `records.rs` | the per-attachment records on disk, under the shared state lock |
//! | `table.rs` | the table's skeleton in nft syntax and the `nft` process for it |
//! | `kernel.rs` | element batches and table questions through `palisade_kernel` |
//! | `conntrack.rs` | forgetting UDP flows to a newly published port |
//! | this file | the operations: ADD, DEL, CHECK, STATUS's question, GC |
//!
//! Chains are static; a pod coming or going only adds or removes map elements. That matters
//! for speed as much as for clarity: on this kernel any transaction that touches a chain or a
//! rule costs about 10 ms more than one that only touches elements (the commit waits for an
//! RCU grace period), so ADD and DEL touch elements only ("fast path", one netlink batch) and
//! the whole table is rebuilt by `nft` only when it is missing or of another layout
//! ("resync"), or by GC.
//!
//! # State and crash safety
//!
//! An attachment's record is written BEFORE its elements reach the kernel, naming everything
//! that may be there after the change (old and new), so a crash in between leaves a record
//! that DEL or GC can clean up from; it is removed only after its elements left. Every
//! operation runs under the exclusive lock of the record directory, so concurrent plugin
//! processes serialise their read-modify-write; each transaction is atomic in the kernel.
//!
//! The table belongs to the node's network namespace, the records to `data_dir`: every
//! network using hostPort on one node must use the same `data_dir` (the resync rebuilds the
//! table from the records it finds there). With several such networks, callers name the
//! network ([`HostPorts::for_network`]) so that GC of one keeps the others' records.
//!
//! Two attachments cannot publish the same (protocol, host port, host IP): ADD refuses it,
//! naming the holder.
//!
//! DEL hands the netlink socket back ([`Pending`]) so closing it, which waits for an RCU
//! grace period after deletions, can wait until the caller's own kernel work is done; DEL of
//! an attachment without a record touches nothing (one `stat`).
//!
//! # What is supported
//!
//! - TCP, UDP and SCTP; IPv4 and IPv6. A mapping applies to the first pod IP of each family;
//!   a mapping with a host IP applies only to the pod IP of that family, and an unspecified
//!   host IP (`0.0.0.0`, `::`) means "any address of that family" (as the portmap plugin).
//! - Reached from other nodes and pods (prerouting), from the node itself (output) and from
//!   the pod itself through a node address (hairpin, masqueraded to a node address).
//! - NOT supported: `127.0.0.1:hostPort` / `[::1]:hostPort` from the node. The kernel refuses
//!   to route a packet with a loopback source out of a veth unless `route_localnet` is set,
//!   and IPv6 never does it. Loopback destinations are excluded from the output DNAT so a
//!   node-local service bound to 127.0.0.1 on the same port keeps working.

mod conntrack;
mod entries;
mod kernel;
mod mappings;
/// Public for the fuzz targets (`fuzz/`), which read records back as the commands do.
pub mod records;
mod table;

pub use entries::{entries_for, Entry};
pub use mappings::{parse_port_mappings, PortMapping, Proto};

use palisade_kernel::nftables::{BatchError, Nfnl};
use palisade_kernel::Netns;
use records::{AttachmentRecord, RecordDir};
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::ErrorKind as IoErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use table::{delete_table_script, elements_script, full_table_script, Nft};

/// What kind of failure a [`HostPortError`] is; it decides the CNI code (`CniError::code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The runtime's `portMappings` are malformed or collide with each other.
    Invalid,
    /// Another invocation held the record directory's lock too long.
    Busy,
    /// The records on disk could not be read or written.
    Store,
    /// A host port is published by another attachment already.
    InUse,
    /// nftables (the kernel or `nft`) refused or could not be asked.
    Nftables,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortError {
    pub kind: ErrorKind,
    pub msg: String,
    pub details: String,
}

impl HostPortError {
    fn new(kind: ErrorKind, msg: impl Into<String>, details: impl Into<String>) -> Self {
        HostPortError {
            kind,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, msg, details)
    }

    pub(crate) fn busy(details: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, "hostPort state busy", details)
    }

    pub(crate) fn store(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(ErrorKind::Store, msg, details)
    }

    pub(crate) fn nftables(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(ErrorKind::Nftables, msg, details)
    }
}

impl fmt::Display for HostPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.msg, self.details)
    }
}

impl std::error::Error for HostPortError {}

/// What a removal of elements or of the table leaves to finish: the nf_tables netlink socket
/// that did it. The removal itself is complete (committed) already; closing the socket waits
/// until the kernel has freed what was removed (`palisade_kernel::nftables::Nfnl`), holding
/// the namespace's nf_tables commit mutex, which deleting a network device needs too.
/// Dropped after the caller's own slow kernel work (DEL: the veth), the wait has passed and
/// closing is free.
#[derive(Default)]
pub struct Pending {
    /// Held for its `Drop` (the close), or handed to [`crate::teardown`].
    socket: Option<Nfnl>,
}

impl Pending {
    /// The socket, for a process that takes over the wait (DEL's background teardown).
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.socket.as_ref().map(Nfnl::raw_fd)
    }
}

/// hostPort operations on one node: the record directory under `data_dir`, the table in the
/// plugin's network namespace (or, [`HostPorts::in_netns`], in another one).
#[derive(Debug, Clone)]
pub struct HostPorts {
    data_dir: PathBuf,
    network: Option<String>,
    netns: Option<PathBuf>,
    nft: Nft,
}

impl HostPorts {
    pub fn new(data_dir: &Path) -> HostPorts {
        HostPorts {
            data_dir: data_dir.to_path_buf(),
            network: None,
            netns: None,
            nft: Nft::new(None),
        }
    }

    /// Record attachments as belonging to CNI network `name`, and scope GC to that network.
    /// The table (and `data_dir`) are node-wide: several networks with hostPorts on one node
    /// need this, or GC of one would drop the records of the others.
    pub fn for_network(mut self, name: &str) -> HostPorts {
        self.network = Some(name.to_string());
        self
    }

    /// Work on the table of the network namespace at `netns` (a `/run/netns/NAME` path)
    /// instead of the plugin's own: netlink sockets are opened inside it, `nft` runs there.
    pub fn in_netns(mut self, netns: &Path) -> HostPorts {
        self.netns = Some(netns.to_path_buf());
        self.nft = Nft::new(Some(netns));
        self
    }

    fn nfnl(&self) -> Result<Nfnl, palisade_kernel::Error> {
        match &self.netns {
            None => Nfnl::open(),
            Some(path) => {
                let ns = Netns::open(path).map_err(|e| {
                    palisade_kernel::Error::new(format!("open {}", path.display()), e)
                })?;
                Nfnl::open_in(&ns)
            }
        }
    }

    /// Remove `remove` and add `add` by netlink (see `kernel.rs`); `nft` only when netlink
    /// cannot be used at all. A refusal (table missing, another layout, a key held by an
    /// element nobody recorded) goes to the caller, which rebuilds the table. The socket
    /// comes back in the [`Pending`].
    fn apply_elements(&self, remove: &[Entry], add: &[Entry]) -> Result<Pending, HostPortError> {
        let sent = self
            .nfnl()
            .map_err(BatchError::Unavailable)
            .and_then(|mut nf| {
                kernel::apply(&mut nf, remove, add)?;
                Ok(nf)
            });
        match sent {
            Ok(nf) => Ok(Pending { socket: Some(nf) }),
            Err(BatchError::Refused(e)) => Err(HostPortError::nftables(
                "nf_tables element update refused",
                e.to_string(),
            )),
            Err(BatchError::Unavailable(netlink_err)) => self
                .nft
                .apply(&elements_script(remove, add))
                .map(|()| Pending::default())
                .map_err(|e| HostPortError {
                    details: format!("{} (netlink was not usable: {netlink_err})", e.details),
                    ..e
                }),
        }
    }

    /// Remove the whole table (idempotent): one netlink batch, or `nft` when netlink cannot
    /// be used or the kernel refuses for another reason than "no such table" (nft then says
    /// why). The socket comes back in the [`Pending`].
    fn delete_table(&self) -> Result<Pending, HostPortError> {
        let deleted = self
            .nfnl()
            .map_err(BatchError::Unavailable)
            .and_then(|mut nf| {
                kernel::delete_table(&mut nf)?;
                Ok(nf)
            });
        match deleted {
            Ok(nf) => Ok(Pending { socket: Some(nf) }),
            Err(_) => self
                .nft
                .apply(&delete_table_script())
                .map(|()| Pending::default()),
        }
    }

    /// Program the mappings of one attachment, replacing what it had before.
    pub fn add(
        &self,
        container_id: &str,
        ifname: &str,
        pod_ips: &[IpAddr],
        mappings: &[PortMapping],
    ) -> Result<(), HostPortError> {
        let wanted = entries_for(pod_ips, mappings)?;
        if wanted.is_empty() {
            return self.del(container_id, ifname);
        }
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let (mine, others): (Vec<_>, Vec<_>) = records
            .read_all()?
            .into_iter()
            .partition(|r| r.container_id == container_id && r.ifname == ifname);
        let others: Vec<AttachmentRecord> = others
            .into_iter()
            .filter(|r| records.is_current(r))
            .collect();
        let previous: Vec<Entry> = mine
            .into_iter()
            .find(|r| records.is_current(r))
            .map(|r| r.entries)
            .unwrap_or_default();

        // Refuse a host port that another attachment holds, naming the holder: the kernel
        // would refuse it too, with a far less helpful message.
        for r in &others {
            if let Some(e) = r
                .entries
                .iter()
                .find(|e| wanted.iter().any(|w| w.same_key(e)))
            {
                return Err(HostPortError::new(
                    ErrorKind::InUse,
                    "host port already in use",
                    format!("{e} is held by attachment {}", r.owner()),
                ));
            }
        }

        // Record first: everything that may be in the kernel after the transaction, old and
        // new, so a crash before the rewrite below still lets DEL remove all of it.
        let mut record =
            AttachmentRecord::new(container_id, ifname, &records.boot_id, self.network.clone());
        record.entries = union(&previous, &wanted);
        records.write(&record)?;

        let stale: Vec<Entry> = previous
            .iter()
            .filter(|e| !wanted.contains(e) && !others.iter().any(|r| r.entries.contains(e)))
            .cloned()
            .collect();
        let result = self.apply_elements(&stale, &wanted).or_else(|fast_err| {
            let mut everything: Vec<Entry> = others
                .iter()
                .flat_map(|r| r.entries.iter().cloned())
                .collect();
            everything.extend(wanted.iter().cloned());
            self.nft
                .apply(&full_table_script(&everything))
                .map(|()| Pending::default())
                .map_err(|full_err| HostPortError {
                    details: format!(
                        "{} (the element-only update had failed first: {})",
                        full_err.details, fast_err.details
                    ),
                    ..full_err
                })
        });
        match result {
            Ok(pending) => {
                let newly_published: Vec<&Entry> =
                    wanted.iter().filter(|e| !previous.contains(e)).collect();
                let socket = pending.socket.map_or_else(|| self.nfnl().ok(), Some);
                if let Some(mut nf) = socket {
                    conntrack::forget_udp_flows(&mut nf, &newly_published);
                }
                if record.entries != wanted {
                    record.entries = wanted;
                    records.write(&record)?;
                }
                Ok(())
            }
            Err(e) => {
                // Nothing changed in the kernel (transactions are atomic): restore the record.
                record.entries = previous;
                if record.entries.is_empty() {
                    records.remove(container_id, ifname)?;
                } else {
                    records.write(&record)?;
                }
                Err(e)
            }
        }
    }

    /// Remove every mapping of one attachment (idempotent; removes the table with the last).
    pub fn del(&self, container_id: &str, ifname: &str) -> Result<(), HostPortError> {
        self.del_pending(container_id, ifname).map(drop)
    }

    /// [`HostPorts::del`], leaving the netlink socket that did it to the caller ([`Pending`]).
    pub fn del_pending(&self, container_id: &str, ifname: &str) -> Result<Pending, HostPortError> {
        // Most attachments have no mappings: then there is nothing to lock, create or ask
        // nftables. Looking without the lock is safe: a record is written before its elements
        // reach the kernel and removed only after they left it, so "no record now" means "no
        // element now", exactly what a DEL ordered before a concurrent ADD would find.
        let path =
            RecordDir::dir_of(&self.data_dir).join(records::record_file_name(container_id, ifname));
        if matches!(fs::symlink_metadata(&path), Err(e) if e.kind() == IoErrorKind::NotFound) {
            return Ok(Pending::default());
        }
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let Some(mine) = records.read(container_id, ifname)? else {
            return Ok(Pending::default());
        };
        let mut pending = Pending::default();
        if records.is_current(&mine) {
            let others: Vec<AttachmentRecord> = records
                .read_all()?
                .into_iter()
                .filter(|r| records.is_current(r) && r.owner() != mine.owner())
                .collect();
            pending = self.remove_entries(&mine.entries, &others)?;
        }
        records.remove(container_id, ifname)?;
        Ok(pending)
    }

    /// Remove `entries`; `remaining` are the records that stay programmed. An entry that a
    /// remaining record also holds (a hairpin entry of a pod IP that a stale record still
    /// names) stays.
    fn remove_entries(
        &self,
        entries: &[Entry],
        remaining: &[AttachmentRecord],
    ) -> Result<Pending, HostPortError> {
        if remaining.iter().all(|r| r.entries.is_empty()) {
            return self.delete_table();
        }
        let held = |e: &&Entry| remaining.iter().any(|r| r.entries.contains(e));
        let removable: Vec<Entry> = entries.iter().filter(|e| !held(e)).cloned().collect();
        self.apply_elements(&removable, &[]).or_else(|_| {
            let everything: Vec<Entry> = remaining
                .iter()
                .flat_map(|r| r.entries.iter().cloned())
                .collect();
            self.nft
                .apply(&full_table_script(&everything))
                .map(|()| Pending::default())
        })
    }

    /// Verify the mappings of one attachment are recorded and programmed as given.
    pub fn check(
        &self,
        container_id: &str,
        ifname: &str,
        pod_ips: &[IpAddr],
        mappings: &[PortMapping],
    ) -> Result<(), HostPortError> {
        let mut wanted = entries_for(pod_ips, mappings)?;
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let mut recorded = records
            .read(container_id, ifname)?
            .filter(|r| records.is_current(r))
            .map(|r| r.entries)
            .unwrap_or_default();
        if wanted.is_empty() && recorded.is_empty() {
            return Ok(());
        }
        wanted.sort();
        recorded.sort();
        if recorded != wanted {
            let list = |entries: &[Entry]| {
                entries
                    .iter()
                    .map(Entry::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(HostPortError::nftables(
                "hostPort mappings differ from what was added",
                format!(
                    "attachment {container_id}/{ifname}: recorded [{}], expected [{}]",
                    list(&recorded),
                    list(&wanted)
                ),
            ));
        }
        let mut nf = self.nfnl().map_err(|e| {
            HostPortError::nftables("cannot read the hostPort table", e.to_string())
        })?;
        kernel::verify(&mut nf, &format!("{container_id}/{ifname}"), &wanted)
    }

    /// STATUS: the attachments (container ID/ifname) whose mappings are recorded as
    /// programmed in this boot while the table is gone (someone flushed the ruleset, e.g. a
    /// firewall reload): their host ports do not reach the pods until the table is rebuilt
    /// (by the next ADD with port mappings, or GC). Empty when the table exists or nothing is
    /// recorded. With [`HostPorts::for_network`], records of other networks are not counted.
    /// Changes nothing (at most it creates the lock file of an existing record directory).
    pub fn lost_mappings(&self) -> Result<Vec<String>, HostPortError> {
        if !RecordDir::dir_of(&self.data_dir).is_dir() {
            return Ok(Vec::new());
        }
        let records = RecordDir::open(&self.data_dir)?;
        // Under the lock: an ADD between its record write and its table creation, or a DEL
        // between its table removal and its record removal, is not mistaken for a loss.
        let _lock = records.lock()?;
        let held: Vec<String> = records
            .read_all()?
            .into_iter()
            .filter(|r| {
                records.is_current(r)
                    && !r.entries.is_empty()
                    && (self.network.is_none() || r.network.is_none() || r.network == self.network)
            })
            .map(|r| r.owner())
            .collect();
        if held.is_empty() || self.table_exists()? {
            return Ok(Vec::new());
        }
        Ok(held)
    }

    /// Whether our table exists: one netlink question, or `nft` when netlink cannot be used.
    fn table_exists(&self) -> Result<bool, HostPortError> {
        match self
            .nfnl()
            .and_then(|mut nf| nf.table_exists(palisade_common::HOSTPORT_TABLE))
        {
            Ok(exists) => Ok(exists),
            Err(_) => self.nft.table_exists(),
        }
    }

    /// Remove the mappings of every attachment not in `valid` ((container ID, ifname) pairs),
    /// and every element no record owns: the table is rebuilt from the remaining records in
    /// one transaction (or removed when none remain). With [`HostPorts::for_network`], records
    /// of other networks are kept whatever `valid` says.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<(), HostPortError> {
        let records = RecordDir::open(&self.data_dir)?;
        let _lock = records.lock()?;
        let (keep, drop): (Vec<_>, Vec<_>) = records.read_all()?.into_iter().partition(|r| {
            let other_network =
                self.network.is_some() && r.network.is_some() && r.network != self.network;
            records.is_current(r)
                && (other_network
                    || valid
                        .iter()
                        .any(|(c, i)| *c == r.container_id && *i == r.ifname))
        });
        let everything: Vec<Entry> = keep
            .iter()
            .flat_map(|r| r.entries.iter().cloned())
            .collect();
        if everything.is_empty() {
            self.nft.apply(&delete_table_script())?;
        } else {
            self.nft.apply(&full_table_script(&everything))?;
        }
        for r in drop {
            records.remove(&r.container_id, &r.ifname)?;
        }
        Ok(())
    }
}

fn union(a: &[Entry], b: &[Entry]) -> Vec<Entry> {
    a.iter()
        .chain(b)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
