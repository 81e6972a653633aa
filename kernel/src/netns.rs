//! Network namespaces: one handle type ([`Netns`]) and one way to run work inside one.
//!
//! The trap: `setns(2)` changes the namespace of the *calling thread* only. A thread that
//! entered a namespace and then ran unrelated work (a pooled or reused thread: a tokio worker,
//! `spawn_blocking`) would quietly create links, routes or sysctls in the wrong namespace. So
//! nothing here ever calls it on a thread it does not own: [`Netns::run`] spawns a scoped
//! thread that enters the namespace, does one thing and exits; [`Netns::spawn`] starts a
//! dedicated thread that stays in the namespace for its whole life (a server bound inside it)
//! and is never handed other work.
//!
//! What crosses back is a plain value or a socket: a socket stays bound to the namespace it
//! was created in, so any thread can drive it afterwards (netlink sockets, listeners,
//! connections). `/proc/sys/net` follows the opening thread's namespace, so sysctls are
//! written from inside such a thread too. `/sys/class/net` does not (sysfs keeps the
//! mounting namespace's view), which is why nothing here reads it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)`: the type of namespace an nsfs file refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open handle on a network namespace (`/run/netns/x`, `/proc/PID/ns/net`, a runtime's
/// bind mount). Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

/// Why work could not run inside a namespace. `f`'s own failure is in its return value.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open network namespace {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("setns {path}: {source}")]
    Enter { path: String, source: io::Error },
    #[error("the thread inside network namespace {path} panicked")]
    Panicked { path: String },
}

impl NetnsError {
    /// The I/O error behind it, if any (a panic has none).
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            NetnsError::Open { source, .. } | NetnsError::Enter { source, .. } => Some(source),
            NetnsError::Panicked { .. } => None,
        }
    }
}

impl From<NetnsError> for io::Error {
    fn from(e: NetnsError) -> io::Error {
        match e.io() {
            Some(source) => io::Error::new(source.kind(), e.to_string()),
            None => io::Error::other(e.to_string()),
        }
    }
}

impl Netns {
    /// Open `path` and make sure it is a network namespace, not any file a caller passed
    /// (`NS_GET_NSTYPE` answers for nsfs files only).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Netns> {
        let path = path.as_ref();
        let file = File::open(path)?;
        // SAFETY: ioctl on a valid fd with no argument.
        let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if ty < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a namespace file",
            ));
        }
        if ty != libc::CLONE_NEWNET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a network namespace",
            ));
        }
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// [`Netns::open`] with the path in the error.
    pub fn open_named(path: impl AsRef<Path>) -> Result<Netns, NetnsError> {
        Netns::open(&path).map_err(|source| NetnsError::Open {
            path: path.as_ref().display().to_string(),
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The open namespace file (to lock it, or to pass its fd in `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Run `f` on a fresh scoped thread inside this namespace and return its result. The
    /// thread exits afterwards, so the switch cannot leak into later work.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_this_thread()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(self.panicked()))
        })
    }

    /// Start a dedicated thread that enters this namespace and runs `f` there for as long as
    /// it likes (a server whose sockets and runtime live inside). Nothing else ever runs on
    /// that thread. The join handle yields `f`'s result, or why the thread could not enter.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<Result<T, NetnsError>>> {
        let ns = Netns {
            file: self.file.try_clone()?,
            path: self.path.clone(),
        };
        Ok(std::thread::spawn(move || {
            ns.enter_this_thread()?;
            drop(ns);
            Ok(f())
        }))
    }

    /// `setns` the calling thread. Private: only threads made by `run` and `spawn` call it.
    fn enter_this_thread(&self) -> Result<(), NetnsError> {
        // SAFETY: setns on a valid namespace fd; it affects only the calling thread, which is
        // one of ours and ends when its work is done.
        if unsafe { libc::setns(self.fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Enter {
                path: self.path.display().to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn panicked(&self) -> NetnsError {
        NetnsError::Panicked {
            path: self.path.display().to_string(),
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Run `f` inside the namespace at `path` (opened for this call): [`Netns::open_named`]
/// then [`Netns::run`].
pub fn run_in<T: Send>(
    path: impl AsRef<Path>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    Netns::open_named(path)?.run(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let e = Netns::open("/proc/self/status").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let e = Netns::open_named("/nonexistent/netns").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
