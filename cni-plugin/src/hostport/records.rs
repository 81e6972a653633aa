//! Per attachment (container ID, ifname) a JSON record under `<data_dir>/hostport/` of the
//! entries that may be in the kernel for it, read and written only under the directory's
//! lock (`crate::lock`, the same discipline as the IPAM store) and replaced atomically.
//!
//! Records carry the kernel boot ID: nftables state does not survive a reboot, so records of
//! an earlier boot are treated as not programmed (DEL and GC just remove them).
//!
//! Format 2 stores typed entries (`entries.rs`). Records written before (no `version`, nft
//! text in `elements`) are read once, turned into entries and rewritten in format 2, so an
//! upgrade keeps every mapping removable.

use super::entries::{self, Entry};
use super::HostPortError;
use crate::lock::{write_atomically, DirLock, LockError};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

const FORMAT: u32 = 2;

/// What the plugin programmed for one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    pub version: u32,
    pub container_id: String,
    pub ifname: String,
    /// Kernel boot ID when written: nft state does not outlive a boot, records do.
    pub boot_id: String,
    /// The CNI network the attachment belongs to, when the caller said
    /// (`HostPorts::for_network`): GC of one network leaves the others' records alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Every entry that may be in the kernel for this attachment.
    pub entries: Vec<Entry>,
}

impl AttachmentRecord {
    pub fn new(container_id: &str, ifname: &str, boot_id: &str, network: Option<String>) -> Self {
        AttachmentRecord {
            version: FORMAT,
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            boot_id: boot_id.to_string(),
            network,
            entries: Vec::new(),
        }
    }

    pub fn owner(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }
}

/// A record of format 1, as far as it is read to convert it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OldRecord {
    container_id: String,
    ifname: String,
    boot_id: String,
    elements: Vec<OldElement>,
    #[serde(default)]
    network: Option<String>,
}

#[derive(Deserialize)]
struct OldElement {
    set: String,
    key: String,
    #[serde(default)]
    value: Option<String>,
}

impl OldRecord {
    fn convert(self) -> Result<AttachmentRecord, String> {
        let mut r = AttachmentRecord::new(
            &self.container_id,
            &self.ifname,
            &self.boot_id,
            self.network,
        );
        for e in &self.elements {
            r.entries
                .extend(entries::from_nft_text(&e.set, &e.key, e.value.as_deref())?);
        }
        // In the order format 2 keeps them (sorted, as `entries_for` makes them).
        r.entries.sort();
        r.entries.dedup();
        Ok(r)
    }
}

/// `<data_dir>/hostport/`: the lock file and one record per attachment.
pub struct RecordDir {
    dir: PathBuf,
    pub boot_id: String,
}

impl RecordDir {
    pub fn dir_of(data_dir: &Path) -> PathBuf {
        data_dir.join("hostport")
    }

    pub fn open(data_dir: &Path) -> Result<RecordDir, HostPortError> {
        let dir = Self::dir_of(data_dir);
        fs::create_dir_all(&dir).map_err(|e| {
            HostPortError::store(
                "cannot create hostPort state directory",
                format!("{}: {e}", dir.display()),
            )
        })?;
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(RecordDir { dir, boot_id })
    }

    /// The exclusive lock on the directory, held until dropped.
    pub fn lock(&self) -> Result<DirLock, HostPortError> {
        DirLock::acquire(&self.dir).map_err(|e| match e {
            LockError::TimedOut { .. } => HostPortError::busy(format!("hostPort state {e}")),
            LockError::Io { .. } => {
                HostPortError::store("cannot lock hostPort state", e.to_string())
            }
        })
    }

    pub fn path_of(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(record_file_name(container_id, ifname))
    }

    /// The record of one attachment. Call under the lock: an old-format record is
    /// rewritten.
    pub fn read(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AttachmentRecord>, HostPortError> {
        self.read_path(&self.path_of(container_id, ifname))
    }

    /// Every record in the directory. Call under the lock, as [`RecordDir::read`].
    pub fn read_all(&self) -> Result<Vec<AttachmentRecord>, HostPortError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            HostPortError::store(
                "cannot list hostPort state",
                format!("{}: {e}", self.dir.display()),
            )
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") {
                if let Some(r) = self.read_path(&path)? {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(AttachmentRecord::owner);
        Ok(out)
    }

    fn read_path(&self, path: &Path) -> Result<Option<AttachmentRecord>, HostPortError> {
        let corrupt = |e: String| {
            HostPortError::store(
                "corrupt hostPort record",
                format!("{}: {e}", path.display()),
            )
        };
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(HostPortError::store(
                    "cannot read hostPort record",
                    format!("{}: {e}", path.display()),
                ))
            }
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if value.get("version").is_some() {
            let r: AttachmentRecord =
                serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
            if r.version != FORMAT {
                return Err(corrupt(format!("unknown record version {}", r.version)));
            }
            return Ok(Some(r));
        }
        // Format 1: convert, and rewrite so it is read as format 2 from now on.
        let old: OldRecord = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        let r = old.convert().map_err(corrupt)?;
        self.write(&r)?;
        Ok(Some(r))
    }

    pub fn is_current(&self, r: &AttachmentRecord) -> bool {
        r.boot_id == self.boot_id
    }

    /// Write atomically. No fsync: the nft state the record describes does not survive a
    /// crash of the machine either, and stale records of an earlier boot are recognised by
    /// boot ID.
    pub fn write(&self, r: &AttachmentRecord) -> Result<(), HostPortError> {
        let path = self.path_of(&r.container_id, &r.ifname);
        let body = serde_json::to_vec_pretty(r).expect("records serialize");
        write_atomically(&path, &body).map_err(|e| {
            HostPortError::store(
                "cannot write hostPort record",
                format!("{}: {e}", path.display()),
            )
        })
    }

    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), HostPortError> {
        let path = self.path_of(container_id, ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostPortError::store(
                "cannot remove hostPort record",
                format!("{}: {e}", path.display()),
            )),
        }
    }
}

/// The record file of one attachment, in `<data_dir>/hostport/`.
pub fn record_file_name(container_id: &str, ifname: &str) -> String {
    format!("{}@{}.json", escape(container_id), escape(ifname))
}

/// File-name-safe, injective encoding of a container ID or ifname (the spec allows almost any
/// character in both).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    if out.starts_with('.') {
        out.replace_range(0..1, "%2e");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostport::mappings::tests::{ip, tcp};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "palisade-hostport-records-{}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entries() -> Vec<Entry> {
        entries::entries_for(&[ip("10.0.0.1")], &[tcp(80, 80)]).unwrap()
    }

    #[test]
    fn record_file_names_are_safe_and_distinct() {
        assert_eq!(escape("abc-123_x.y"), "abc-123_x.y");
        assert_eq!(escape("../etc"), "%2e.%2fetc");
        assert_ne!(escape("a/b"), escape("a%2fb"));
        assert_ne!(record_file_name("a@b", "c"), record_file_name("a", "b@c"));
    }

    #[test]
    fn records_round_trip() {
        let dir = tmpdir("rt");
        let records = RecordDir::open(&dir).unwrap();
        let mut r = AttachmentRecord::new("c1", "eth0", &records.boot_id, Some("net-a".into()));
        r.entries = entries();
        {
            let _l = records.lock().unwrap();
            records.write(&r).unwrap();
        }
        assert_eq!(records.read("c1", "eth0").unwrap(), Some(r.clone()));
        assert_eq!(records.read_all().unwrap(), vec![r]);
        records.remove("c1", "eth0").unwrap();
        records.remove("c1", "eth0").unwrap();
        assert_eq!(records.read_all().unwrap(), vec![]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_old_record_is_read_once_and_rewritten_typed() {
        let dir = tmpdir("old");
        let records = RecordDir::open(&dir).unwrap();
        let path = records.path_of("c1", "eth0");
        // As the plugin wrote it before records were typed.
        let old = serde_json::json!({
            "containerId": "c1", "ifname": "eth0", "bootId": records.boot_id,
            "elements": [
                {"set": "hairpin4", "key": "10.0.0.1 . 10.0.0.1"},
                {"set": "ports4", "key": "6 . 80", "value": "10.0.0.1 . 80"}
            ],
            "network": "net-a"
        });
        fs::write(&path, old.to_string()).unwrap();
        let r = records.read("c1", "eth0").unwrap().unwrap();
        let mut want = entries();
        want.sort();
        let mut got = r.entries.clone();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(r.network.as_deref(), Some("net-a"));
        let rewritten: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(rewritten["version"], 2, "{rewritten}");
        assert!(rewritten.get("elements").is_none(), "{rewritten}");
        assert_eq!(records.read("c1", "eth0").unwrap(), Some(r));

        fs::write(
            &path,
            serde_json::json!({"containerId": "c1", "ifname": "eth0", "bootId": "x",
                "elements": [{"set": "ports4", "key": "nonsense"}]})
            .to_string(),
        )
        .unwrap();
        let e = records.read("c1", "eth0").unwrap_err();
        assert!(e.msg.contains("corrupt"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
