//! Long-lived TCP connections between keep pods, with a heartbeat every second for the whole
//! run. Both ends are sockets of this process opened inside the pods' network namespaces (a
//! socket belongs to the namespace it was made in): an echo listener in the destination pod,
//! a client in the source pod. Every heartbeat must come back within [`ANSWER_TIMEOUT`]; a
//! reset, an end of stream, a wrong answer or a timeout drops the connection, and a dropped
//! connection is a failure of the soak (policy allows these connections at every moment).

use crate::cluster::netns::ClusterNetns;
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The echo port in keep pods (no test pod listener uses it).
pub const ECHO_PORT: u16 = 7000;
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Long enough for a loaded machine, far shorter than TCP gives up on a silently dropped
/// flow (minutes of retransmissions).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection's outcome.
#[derive(Debug, Clone)]
pub struct ConnectionReport {
    pub name: String,
    pub heartbeats: u64,
    /// Why and when (seconds into the run) it dropped.
    pub dropped: Option<(f64, String)>,
}

/// The running connections; [`LongLived::stop`] ends them and reports.
pub struct LongLived {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<ConnectionReport>>,
    _listeners: Vec<std::thread::JoinHandle<()>>,
}

/// Serve an echo of each line on `ECHO_PORT` inside `netns` (every family).
pub fn start_echo(
    netns: &ClusterNetns,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let listener = netns.listen(SocketAddr::new(
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        ECHO_PORT,
    ))?;
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || accept_loop(listener, stop)))
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                std::thread::spawn(move || echo(conn));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn echo(conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}

impl LongLived {
    /// Connect from each `(name, source netns, destination address)` and start its heartbeat.
    /// The destinations must run [`start_echo`].
    pub fn start(
        connections: Vec<(String, ClusterNetns, IpAddr)>,
        run_start: Instant,
        listeners: Vec<std::thread::JoinHandle<()>>,
        stop: Arc<AtomicBool>,
    ) -> Result<LongLived> {
        let mut threads = Vec::new();
        for (name, netns, ip) in connections {
            let addr = SocketAddr::new(ip, ECHO_PORT);
            let stream = netns
                .connect(addr, Duration::from_secs(5))
                .with_context(|| format!("long-lived connection {name}"))?;
            stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                heartbeat(name, stream, &stop, run_start)
            }));
        }
        Ok(LongLived {
            stop,
            threads,
            _listeners: listeners,
        })
    }

    /// How many connections dropped so far is only known at the end: stop and report.
    pub fn stop(self) -> Vec<ConnectionReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| ConnectionReport {
                    name: "?".into(),
                    heartbeats: 0,
                    dropped: Some((0.0, "heartbeat thread panicked".into())),
                })
            })
            .collect()
    }
}

/// Heartbeats sent and answered so far, over all connections (for progress lines).
pub static HEARTBEATS: AtomicU64 = AtomicU64::new(0);
/// Connections dropped so far (for progress lines).
pub static DROPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn heartbeat(
    name: String,
    stream: TcpStream,
    stop: &AtomicBool,
    run_start: Instant,
) -> ConnectionReport {
    let mut report = ConnectionReport {
        name: name.clone(),
        heartbeats: 0,
        dropped: None,
    };
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            report.dropped = Some((run_start.elapsed().as_secs_f64(), format!("clone: {e}")));
            return report;
        }
    };
    let mut input = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        let beat = format!("{name} {}", report.heartbeats);
        let t = Instant::now();
        let outcome = writeln!(out, "{beat}")
            .map_err(|e| format!("send: {e}"))
            .and_then(|()| {
                line.clear();
                match input.read_line(&mut line) {
                    Ok(0) => Err("connection closed by the peer".to_string()),
                    Ok(_) if line.trim_end() == beat => Ok(()),
                    Ok(_) => Err(format!("wrong answer {:?} to {beat:?}", line.trim_end())),
                    Err(e) => Err(format!("no answer within {ANSWER_TIMEOUT:?}: {e}")),
                }
            });
        if let Err(why) = outcome {
            let at = run_start.elapsed().as_secs_f64();
            if let Ok(mut d) = DROPPED.lock() {
                d.push(format!("{name} at {at:.0}s: {why}"));
            }
            report.dropped = Some((at, why));
            return report;
        }
        report.heartbeats += 1;
        HEARTBEATS.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(HEARTBEAT.saturating_sub(t.elapsed()));
    }
    report
}
