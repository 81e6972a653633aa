//! `httpGet` probes as kubelet runs them for a hostNetwork pod: an HTTP GET from the node's
//! network namespace to the probe's host and port, each attempt bounded by `timeoutSeconds`;
//! any status from 200 to 399 is a success.
//!
//! Kubelet probes every `periodSeconds` (5 s for the agent's readiness) and marks the pod
//! ready after `successThreshold` successes in a row. The runner applies the same condition
//! but tries every 50 ms: the period only decides how late kubelet notices readiness, and a
//! 5 s wait per cluster start would add minutes to a scenario run without testing anything.

use super::podspec::HttpProbe;
use crate::cluster::netns::ClusterNetns;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One attempt: Ok when the answer is 2xx or 3xx.
pub fn attempt(netns: &ClusterNetns, probe: &HttpProbe) -> Result<()> {
    let addr = SocketAddr::new(probe.host, probe.port);
    let (code, body) = netns.http_get(addr, &probe.path, &probe.headers, probe.timeout)?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        bail!(
            "GET http://{addr}{} answered {code}: {}",
            probe.path,
            body.trim()
        )
    }
}

/// Wait until `probe` succeeds `successThreshold` times in a row (after its initial delay),
/// or fail at `deadline` with the last failure. `alive` is asked between attempts and ends
/// the wait with its error (the container exited). `settled` accepts a failure that the
/// caller expects (the error's text): the wait ends there too, as started but not ready.
pub fn wait_ready(
    netns: &ClusterNetns,
    probe: &HttpProbe,
    started: Instant,
    deadline: Instant,
    alive: &mut dyn FnMut() -> Result<()>,
    settled: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let first = started + probe.initial_delay;
    if let Some(wait) = first.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let mut successes = 0;
    loop {
        alive()?;
        match attempt(netns, probe) {
            Ok(()) => {
                successes += 1;
                if successes >= probe.success_threshold {
                    return Ok(());
                }
            }
            Err(e) if settled(&format!("{e:#}")) => return Ok(()),
            Err(e) => {
                successes = 0;
                if Instant::now() > deadline {
                    return Err(e.context(format!(
                        "readiness probe GET http://{}:{}{} still failing",
                        probe.host, probe.port, probe.path
                    )));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
