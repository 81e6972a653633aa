//! The last step of DEL, after DEL has returned: the kernel freeing the veth pair.
//!
//! Deleting a network device ends in `rcu_barrier()` (`netdev_run_todo`), and again when the
//! device is still held by routes cached from its traffic: 15–45 ms on this kernel, nearly
//! all of a DEL (see `commands/del.rs`). By the time DEL hands that wait to
//! [`delete_detached`], the pod is off the network already: its host end is down (the pair
//! carries nothing, and the kernel removed every route through it in the same step), its
//! port mappings are gone and its addresses are released. What is left is a down device that
//! no route leads to, whose memory the kernel frees after the grace periods.
//!
//! The deletion runs in a grandchild that outlives the plugin by those milliseconds. It has a
//! session of its own (a signal to the runtime's process group does not reach it), `/dev/null`
//! as stdin, stdout and stderr (the runtime reads the plugin's stdout to its end: it must not
//! wait for this process), and no other inherited file but the one the caller keeps open for
//! it (DEL's nf_tables socket, whose close waits for a grace period too). The intermediate
//! child exits at once and the plugin reaps it, so the grandchild is re-parented to init (or
//! the nearest subreaper) like any daemon.
//!
//! If the deletion never happens (the grandchild is killed), the down pair goes with the pod's
//! network namespace when the runtime removes it, an ADD of the same attachment replaces it,
//! and GC of the network deletes it (DEL marked it with [`deleted_alias`]); it never carries
//! traffic in between.

use palisade_kernel::rtnl::Rtnl;
use std::io;
use std::os::fd::RawFd;

/// Delete link `index` of the current network namespace from a detached process. Returns once
/// that process exists; an error means it could not be started (the caller deletes inline).
pub fn delete_detached(index: u32, keep: Option<RawFd>) -> io::Result<()> {
    // SAFETY: DEL forks with no other thread alive (the plugin's helper threads, in the pod
    // netns or for netlink, are all joined by then). The children make only system calls
    // (and small allocations for the netlink request, which glibc's fork handlers make safe
    // even after a multi-threaded parent, as in the unit test) and leave with `_exit`,
    // running no destructor and flushing no buffer of the parent's.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe {
            libc::setsid();
            match libc::fork() {
                0 => grandchild(index, keep),
                -1 => libc::_exit(1),
                _ => libc::_exit(0),
            }
        },
        pid => {
            let mut status = 0;
            loop {
                // SAFETY: `pid` is our child; `status` is a valid out pointer.
                if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else {
                Err(io::Error::other(
                    "the process that deletes the veth could not fork",
                ))
            }
        }
    }
}

fn grandchild(index: u32, keep: Option<RawFd>) -> ! {
    // SAFETY: plain system calls on file descriptors of this process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        } else {
            for fd in 0..3 {
                libc::close(fd);
            }
        }
        close_from(3, keep);
    }
    crate::commands::crash_point(crate::commands::TEARDOWN_STEP);
    if let Ok(mut sock) = Rtnl::open() {
        let _ = sock.delete_link_index(index);
    }
    // SAFETY: leave without running anything of the parent's (see delete_detached).
    unsafe { libc::_exit(0) }
}

/// Close every descriptor from `first` up, except `keep`.
unsafe fn close_from(first: RawFd, keep: Option<RawFd>) {
    let close_range = |lo: RawFd, hi: RawFd| {
        if lo <= hi {
            // SAFETY: close_range only closes descriptors of this process.
            unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0u32) };
        }
    };
    match keep {
        Some(k) if k >= first => {
            close_range(first, k - 1);
            close_range(k + 1, RawFd::MAX);
        }
        _ => close_range(first, RawFd::MAX),
    }
}

/// The `ifalias` DEL gives the host end of a pair it takes down, naming the network: GC of
/// that network deletes a down veth carrying it (the detached deletion did not happen).
pub fn deleted_alias(network: &str) -> String {
    format!("palisade: deleted from network {network}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detached process closes what it does not keep: a pipe whose write end only the
    /// parent holds reaches EOF when the parent closes it, although a child had inherited it.
    /// (The kernel side, that the link goes, is in tests/lifecycle.rs.)
    #[test]
    fn the_detached_process_holds_no_inherited_descriptor() {
        let mut fds = [0; 2];
        // Close-on-exec, so that no other test's exec'd process holds it: the fork here
        // does not exec, so the children inherit both ends all the same.
        // SAFETY: `fds` is a valid out array of two.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (r, w) = (fds[0], fds[1]);
        // Index 0 names no link: the kernel refuses the delete (EINVAL) and changes nothing.
        delete_detached(0, None).expect("spawn");
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(w) };
        let mut buf = [0u8; 1];
        // Bounded: a leaked write end would block this read; the grandchild is gone well
        // before 10 s, so poll with a timeout instead of hanging the test.
        let mut pfd = libc::pollfd {
            fd: r,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(
            ready, 1,
            "the read end never saw EOF: a child kept the write end"
        );
        // SAFETY: reading into a valid buffer from our own descriptor.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "expected EOF");
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(r) };
    }
}
