//! The client side of the plugin ↔ agent unix socket (`palisade_common::AgentRequest`):
//! one JSON line out, one JSON line back.
//!
//! An absent socket, or one nobody listens on, is detected at once (ENOENT/ECONNREFUSED) so
//! ADD never waits for nothing: the pod is fail-closed by the agent's table until the agent
//! programs it (DESIGN.md "New pods are isolated before their first packet").

use crate::config::AgentConf;
use palisade_common::{AgentRequest, AgentResponse};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum Outcome {
    /// No agent listens: socket missing or connection refused.
    NoAgent,
    Answered(AgentResponse),
    /// The agent did not answer usably in time (timeout, broken pipe, bad JSON).
    Failed(String),
}

/// Send `req` and wait at most `timeout` for the answer.
pub fn call(conf: &AgentConf, req: &AgentRequest, timeout: Duration) -> Outcome {
    if !conf.socket.exists() {
        return Outcome::NoAgent;
    }
    let deadline = Instant::now() + timeout;
    let stream = match connect(&conf.socket, timeout) {
        Ok(s) => s,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
            return Outcome::NoAgent
        }
        Err(e) => return Outcome::Failed(format!("connect {}: {e}", conf.socket.display())),
    };
    match exchange(stream, req, deadline) {
        Ok(resp) => Outcome::Answered(resp),
        Err(e) => Outcome::Failed(format!("{}: {e}", conf.socket.display())),
    }
}

/// connect(2) with a timeout: a unix stream connect blocks while the listener's backlog is
/// full, bounded by SO_SNDTIMEO (unix(7)), which std's `UnixStream::connect` cannot set.
fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned by the UnixStream right after.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    // SAFETY: addr is a valid sockaddr_un of the given size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn exchange(
    stream: UnixStream,
    req: &AgentRequest,
    deadline: Instant,
) -> std::io::Result<AgentResponse> {
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(remaining))?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "agent closed the connection without answering",
        )),
        Ok(_) => serde_json::from_str(answer.trim()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad answer {answer:?}: {e}"),
            )
        }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out waiting for the agent",
            ))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn conf(dir: &Path) -> AgentConf {
        AgentConf {
            socket: dir.join("agent.sock"),
            timeout: Duration::from_millis(300),
            required: true,
        }
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("palisade-agent-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_missing_or_dead_socket_is_no_agent_at_once() {
        let d = tmpdir("dead");
        let c = conf(&d);
        let t = Instant::now();
        assert!(matches!(
            call(&c, &AgentRequest::Status, c.timeout),
            Outcome::NoAgent
        ));
        // A socket file nobody listens on: ECONNREFUSED.
        drop(UnixListener::bind(&c.socket).unwrap());
        assert!(matches!(
            call(&c, &AgentRequest::Status, c.timeout),
            Outcome::NoAgent
        ));
        assert!(t.elapsed() < Duration::from_millis(250));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn an_answer_is_read_and_silence_times_out() {
        let d = tmpdir("live");
        let c = conf(&d);
        let l = UnixListener::bind(&c.socket).unwrap();
        let server = std::thread::spawn(move || {
            // First connection: answer. Second: read and stay silent.
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert!(line.contains("\"op\":\"status\""), "{line}");
            (&s).write_all(b"{\"ok\":true,\"ready\":true}\n").unwrap();
            let (s2, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s2).read_line(&mut line).unwrap();
            std::thread::sleep(Duration::from_millis(600));
        });
        match call(&c, &AgentRequest::Status, c.timeout) {
            Outcome::Answered(r) => assert!(r.ok && r.ready),
            other => panic!("{other:?}"),
        }
        match call(&c, &AgentRequest::Status, c.timeout) {
            Outcome::Failed(m) => assert!(m.contains("timed out"), "{m}"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(d);
    }
}
