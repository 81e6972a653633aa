//! The on-disk IPAM state of one network: `<dataDir>/<network>/ipam.json`, read and written
//! only under the exclusive lock of `<dataDir>/<network>/` (`crate::lock`, shared with the
//! hostPort records).
//!
//! Crash safety: the state file is replaced atomically (write `ipam.json.tmp`, then rename it
//! over `ipam.json`), so a `kill -9` at any instant leaves either the old or the new state,
//! never a torn one, and the kernel drops the flock with the process.
//!
//! Deliberately no fsync: it protects only against power loss, and costs about 9 ms on this
//! machine's disk, more than the whole ADD budget (half of ptp + host-local, which does not
//! fsync either). After a power loss every pod is gone anyway; ext4 (`auto_da_alloc`) flushes
//! a file renamed over another before the rename commits, so the file is the old or the new
//! state; and the runtime's GC after the reboot releases whatever the old state still holds.

use crate::error::{CniError, Result};
use crate::lock::{write_atomically, DirLock, LockError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "ipam.json";
const STATE_VERSION: u32 = 1;

/// Everything we know about one attachment, recorded BEFORE its veth is created so that DEL
/// or GC can undo a half-done ADD after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    pub container_id: String,
    pub ifname: String,
    pub host_ifname: String,
    pub ips: Vec<IpAddr>,
    /// IPs came from a delegated IPAM plugin (released by its DEL, not by us).
    #[serde(default)]
    pub delegated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamState {
    pub version: u32,
    pub attachments: Vec<AttachmentRecord>,
    /// Last address handed out per range set (index as a string key), for round-robin.
    #[serde(default)]
    pub last_reserved: BTreeMap<String, IpAddr>,
}

impl AttachmentRecord {
    /// The host veth to delete for this record. Only a name with our prefix is trusted: a
    /// damaged or hand-edited state file must never make DEL/GC delete, say, the node's
    /// `eth0`.
    pub fn host_link(&self) -> Option<&str> {
        let n = self.host_ifname.as_str();
        (n.starts_with(palisade_common::HOST_VETH_PREFIX) && n.len() <= 15).then_some(n)
    }
}

impl IpamState {
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<&AttachmentRecord> {
        self.attachments
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
    }

    pub fn remove(&mut self, container_id: &str, ifname: &str) -> Option<AttachmentRecord> {
        let i = self
            .attachments
            .iter()
            .position(|a| a.container_id == container_id && a.ifname == ifname)?;
        Some(self.attachments.remove(i))
    }
}

/// The state directory of one network.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The state, held under the lock until dropped.
pub struct Locked {
    _lock: DirLock,
    dir: PathBuf,
    pub state: IpamState,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the exclusive lock (creating the directory on first use) and read the state.
    pub fn lock(&self) -> Result<Locked> {
        let lock = DirLock::acquire(&self.dir).map_err(|e| match e {
            LockError::TimedOut { .. } => CniError::TryAgain(format!("IPAM state {e}")),
            LockError::Io { path, source } => {
                CniError::store(path.display(), format!("lock: {source}"))
            }
        })?;
        let state = self.read()?;
        Ok(Locked {
            _lock: lock,
            dir: self.dir.clone(),
            state,
        })
    }

    /// Read the state without the lock (a consistent snapshot thanks to atomic renames).
    pub fn read(&self) -> Result<IpamState> {
        let path = self.dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state: IpamState = serde_json::from_slice(&bytes)
                    .map_err(|e| CniError::store(path.display(), format!("corrupt state: {e}")))?;
                if state.version != STATE_VERSION {
                    return Err(CniError::store(
                        path.display(),
                        format!("unknown state version {}", state.version),
                    ));
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IpamState {
                version: STATE_VERSION,
                ..Default::default()
            }),
            Err(e) => Err(CniError::store(path.display(), format!("read: {e}"))),
        }
    }
}

impl Locked {
    /// Replace the state file atomically with the current state (see the module doc on why
    /// there is no fsync).
    pub fn commit(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        write_atomically(&path, &bytes)
            .map_err(|e| CniError::store(path.display(), format!("write: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    pub fn tmpdir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("palisade-store-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn record(cid: &str) -> AttachmentRecord {
        AttachmentRecord {
            container_id: cid.into(),
            ifname: "eth0".into(),
            host_ifname: "pal0".into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            delegated: false,
        }
    }

    #[test]
    fn state_survives_a_round_trip_and_no_temp_file_is_left() {
        let d = tmpdir("rt");
        let s = Store::new(&d);
        {
            let mut l = s.lock().unwrap();
            assert!(l.state.attachments.is_empty());
            l.state.attachments.push(record("c1"));
            l.commit().unwrap();
        }
        let st = s.read().unwrap();
        assert_eq!(st.find("c1", "eth0"), Some(&record("c1")));
        assert!(!d.join("ipam.json.tmp").exists());
        assert!(d.join(STATE_FILE).exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_stale_temp_file_from_a_crash_is_ignored_and_replaced() {
        let d = tmpdir("stale");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ipam.json.tmp"), b"{ torn").unwrap();
        let s = Store::new(&d);
        let mut l = s.lock().unwrap();
        l.state.attachments.push(record("c1"));
        l.commit().unwrap();
        drop(l);
        assert_eq!(s.read().unwrap().attachments.len(), 1);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn only_prefixed_host_links_are_trusted() {
        let mut r = record("c1");
        r.host_ifname = palisade_common::host_veth_name("c1", "eth0");
        assert!(r.host_link().is_some());
        r.host_ifname = "eth0".into();
        assert_eq!(r.host_link(), None);
    }

    #[test]
    fn a_corrupt_state_file_is_an_ipam_store_error() {
        let d = tmpdir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(STATE_FILE), b"{ torn").unwrap();
        assert_eq!(Store::new(&d).read().unwrap_err().code(), 102);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_lock_serialises_parallel_read_modify_write() {
        let d = tmpdir("par");
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let d = d.clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    for j in 0..10 {
                        // Each lock() opens its own file description, so flock excludes
                        // threads of one process just as it excludes processes.
                        let mut l = Store::new(&d).lock().unwrap();
                        l.state.attachments.push(record(&format!("c{i}-{j}")));
                        l.commit().unwrap();
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(Store::new(&d).read().unwrap().attachments.len(), n * 10);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_held_lock_times_out_as_try_again() {
        let d = tmpdir("held");
        let s = Store::new(&d);
        let _held = s.lock().unwrap();
        // Another invocation (a thread opens its own file description, as a process does)
        // gives up after the timeout; a short timeout stands in for the 10 s here.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join(crate::lock::LOCK_FILE))
            .unwrap();
        let e =
            crate::lock::flock_with_timeout(&f, std::time::Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let _ = std::fs::remove_dir_all(d);
    }
}
