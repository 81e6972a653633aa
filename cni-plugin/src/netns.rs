//! Entering a pod's network namespace without leaking it into the rest of the process.
//!
//! The trap: `setns(2)` changes the namespace of the *calling thread* only. A thread that
//! entered the pod namespace and then ran unrelated work (a pooled or reused thread) would
//! quietly create links, routes or sysctls in the wrong namespace. So we never call it on
//! the main thread: each use spawns a short-lived scoped thread that enters the namespace,
//! does one thing and exits, and the thread is never reused.
//!
//! What crosses back is either a plain value or a netlink socket: a socket stays bound to the
//! namespace it was created in, so the main thread can drive it afterwards
//! (see `machine.md`). `/proc/sys/net` follows the opening thread's namespace, so sysctls
//! of pod interfaces are written from inside such a thread too. `/sys/class/net` does not
//! (sysfs keeps the mounting namespace's view), which is why nothing here reads it.

use crate::netlink::Socket;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)`: the type of namespace an nsfs file refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open handle on a network namespace (e.g. `/var/run/netns/x` or `/proc/PID/ns/net`).
pub struct Netns {
    file: File,
    pub path: String,
}

impl Netns {
    /// Open `path` and make sure it is a network namespace (not any file a caller passed).
    pub fn open(path: &str) -> io::Result<Self> {
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
            path: path.to_string(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The open namespace file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Run `f` on a fresh thread inside this namespace and return its result. The thread
    /// exits afterwards, so the namespace switch cannot leak into later work.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: fd is a valid network namespace fd for the life of `self`.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("thread inside the pod netns panicked")))
        })
    }

    /// A netlink socket that talks to this namespace, usable from any thread.
    pub fn netlink(&self) -> io::Result<Socket> {
        self.run(Socket::open)?
    }
}
