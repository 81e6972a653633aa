//! The prober: fills a reachability matrix by asking each source pod's test pod (over its
//! control socket) to connect to the destination, many cells in parallel.
//!
//! A blocked cell costs a full timeout, so cells run in parallel (bounded) and one matrix
//! takes about one timeout per retry round. Retries: a cell observed blocked that is expected
//! allowed (or has no expectation) is probed again (`retry_blocked` times), because a first
//! packet can be lost for reasons that are not policy (neighbour resolution racing the first
//! SYN). A cell observed allowed is never retried: a connection that got through is a fact,
//! and retrying it could hide a leak.

use crate::matrix::Matrix;
use crate::scenario::Protocol;
use crate::testpod::{random_u64, Control};
use anyhow::{anyhow, bail, Result};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One cell to probe.
#[derive(Debug, Clone)]
pub struct Cell {
    pub src: String,
    pub dst: String,
    pub src_control: PathBuf,
    pub dst_control: PathBuf,
    pub dst_ip: IpAddr,
    /// What the scenario expects, if anything (decides whether a blocked cell is retried).
    pub expected: Option<bool>,
}

/// Probe every cell; blocked ones are retried up to `retry_blocked` times.
pub fn run(
    cells: &[Cell],
    protocol: Protocol,
    port: u16,
    timeout: Duration,
    concurrency: usize,
    retry_blocked: usize,
) -> Result<Matrix> {
    let mut results: Vec<Option<bool>> = vec![None; cells.len()];
    let mut todo: Vec<usize> = (0..cells.len()).collect();
    for round in 0..=retry_blocked {
        if todo.is_empty() {
            break;
        }
        let out = run_round(cells, &todo, protocol, port, timeout, concurrency)?;
        let mut next = Vec::new();
        for (i, allowed) in out {
            results[i] = Some(allowed);
            if !allowed && cells[i].expected != Some(false) && round < retry_blocked {
                next.push(i);
            }
        }
        todo = next;
    }
    let mut m = Matrix::default();
    for (c, r) in cells.iter().zip(results) {
        m.set(&c.src, &c.dst, r.unwrap_or(false));
    }
    Ok(m)
}

fn run_round(
    cells: &[Cell],
    todo: &[usize],
    protocol: Protocol,
    port: u16,
    timeout: Duration,
    concurrency: usize,
) -> Result<Vec<(usize, bool)>> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1).min(todo.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(k) else { break };
                match probe_cell(&cells[i], protocol, port, timeout) {
                    Ok(allowed) => results.lock().unwrap().push((i, allowed)),
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push(format!("{} -> {}: {e:#}", cells[i].src, cells[i].dst)),
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if !errors.is_empty() {
        bail!("probing failed: {}", errors.join("; "));
    }
    Ok(results.into_inner().unwrap())
}

/// Probe one cell: `Ok(true)` allowed, `Ok(false)` blocked, `Err` when the probe itself could
/// not be run (a test pod gone: a harness failure, never counted as "blocked").
pub fn probe_cell(c: &Cell, protocol: Protocol, port: u16, timeout: Duration) -> Result<bool> {
    let ms = timeout.as_millis();
    let mut src = Control::connect(&c.src_control)?;
    match protocol {
        Protocol::Tcp | Protocol::Udp => {
            let verb = if protocol == Protocol::Tcp {
                "tcp"
            } else {
                "udp"
            };
            let answer = src.request(&format!("{verb} {} {port} {ms}", c.dst_ip))?;
            verdict(&answer)
        }
        Protocol::Sctp => {
            let tag = (random_u64() as u32).max(1);
            let answer = src.request(&format!("sctp-send {} {port} {tag}", c.dst_ip))?;
            if answer != "sent" {
                bail!("sctp-send: {answer}");
            }
            let mut dst = Control::connect(&c.dst_control)?;
            let deadline = Instant::now() + timeout;
            loop {
                match dst.request(&format!("sctp-seen {port} {tag}"))?.as_str() {
                    "yes" => return Ok(true),
                    "no" if Instant::now() >= deadline => return Ok(false),
                    "no" => std::thread::sleep(Duration::from_millis(20)),
                    other => bail!("sctp-seen: {other}"),
                }
            }
        }
    }
}

fn verdict(answer: &str) -> Result<bool> {
    if answer == "allowed" {
        Ok(true)
    } else if answer.starts_with("blocked") {
        Ok(false)
    } else {
        Err(anyhow!("test pod answered {answer:?}"))
    }
}
