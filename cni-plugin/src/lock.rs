//! The one locking discipline for the plugin's on-disk state (the IPAM store of each network,
//! the hostPort records) and for a pod's namespace file: an exclusive `flock`, waited for
//! with a short back-off up to [`LOCK_TIMEOUT`], after which the caller answers "try again
//! later" (code 11). The kernel drops a flock with its process, also on `kill -9`, so a
//! crashed invocation never leaves a state locked.
//!
//! State files are replaced atomically ([`write_atomically`]: a temp file renamed over the
//! old one), so a crash at any instant leaves the old or the new state, never a torn one.
//! No fsync: see `ipam/store.rs` for why.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for another invocation's lock before answering "try again later".
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the lock file in a state directory.
pub const LOCK_FILE: &str = "lock";

/// Take an exclusive `flock` on `f`, waiting up to `timeout` (then `ErrorKind::TimedOut`).
pub fn flock_with_timeout(f: &File, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
            _ => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "lock timeout"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Why a state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another invocation held it for longer than [`LOCK_TIMEOUT`].
    #[error("{} is locked by another invocation for more than {}s", .dir.display(), LOCK_TIMEOUT.as_secs())]
    TimedOut { dir: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// The exclusive lock on a state directory (`<dir>/lock`), held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Create `dir` if needed and lock it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io(&path))?;
        flock_with_timeout(&file, LOCK_TIMEOUT).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => LockError::TimedOut {
                dir: dir.to_path_buf(),
            },
            _ => LockError::Io { path, source: e },
        })?;
        Ok(DirLock { _file: file })
    }
}

/// Replace `path` with `bytes` atomically: write `<path>.tmp`, then rename it over `path`.
/// A reader sees the old or the new content, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("palisade-lock-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_held_lock_times_out() {
        let d = tmpdir("held");
        let _held = DirLock::acquire(&d).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(d.join(LOCK_FILE))
            .unwrap();
        let e = flock_with_timeout(&f, Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(_held);
        flock_with_timeout(&f, Duration::from_millis(30)).unwrap();
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn atomic_writes_leave_no_temp_file() {
        let d = tmpdir("write");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("state.json");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!d.join("state.json.tmp").exists());
        let _ = std::fs::remove_dir_all(d);
    }
}
