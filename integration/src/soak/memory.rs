//! The agents' resident memory over the run: `VmRSS` of every agent process every few
//! seconds, with the uptime of the incarnation it belongs to (agents are killed and
//! restarted during the soak, and a freshly started agent is smaller than one that has
//! worked for a while).
//!
//! What is compared (like with like): per node, the median RSS of the samples taken in the
//! first quarter of the run against the median of those taken in the last quarter, counting
//! only samples of incarnations that had been up for at least the warm-up time (they have
//! listed the cluster, programmed the table and served CNI requests). Node 1's agent is never
//! killed, so its comparison is of one process 0-25% and 75-100% into the run (a leak is not
//! reset by a restart there); the other nodes compare whichever incarnations were warm then.
//! The figure is the largest growth over the nodes that could be measured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(2);

/// Per node (index = node - 1): the agent's pid and when that incarnation started.
pub type AgentPids = Arc<Mutex<Vec<Option<(u32, Instant)>>>>;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub node: usize,
    /// Seconds into the run.
    pub at: f64,
    /// Seconds since this incarnation started.
    pub uptime: f64,
    pub rss_kib: u64,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(pids: AgentPids, run_start: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let now = pids.lock().map(|p| p.clone()).unwrap_or_default();
                for (i, entry) in now.iter().enumerate() {
                    let Some((pid, started)) = entry else {
                        continue;
                    };
                    if let Some(rss_kib) = vm_rss_kib(*pid) {
                        samples.push(Sample {
                            node: i + 1,
                            at: run_start.elapsed().as_secs_f64(),
                            uptime: started.elapsed().as_secs_f64(),
                            rss_kib,
                        });
                    }
                }
                std::thread::sleep(INTERVAL);
            }
            samples
        });
        Sampler { stop, thread }
    }

    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// `VmRSS` of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One node's comparison.
#[derive(Debug, Clone)]
pub struct NodeGrowth {
    pub node: usize,
    /// Median RSS (KiB) of the warm samples of the first and last quarter, and their counts.
    pub first: Option<(u64, usize)>,
    pub last: Option<(u64, usize)>,
}

impl NodeGrowth {
    /// Growth in percent, when both quarters have warm samples.
    pub fn percent(&self) -> Option<f64> {
        let (a, _) = self.first?;
        let (b, _) = self.last?;
        Some((b as f64 - a as f64) * 100.0 / a as f64)
    }
}

/// Compare the first and last quarter of a run of `duration` seconds per node, using
/// samples of incarnations up at least `warm` seconds.
pub fn compare(samples: &[Sample], nodes: usize, duration: f64, warm: f64) -> Vec<NodeGrowth> {
    let quarter = duration / 4.0;
    (1..=nodes)
        .map(|node| {
            let median_of = |pred: &dyn Fn(&Sample) -> bool| {
                let mut v: Vec<u64> = samples
                    .iter()
                    .filter(|s| s.node == node && s.uptime >= warm && pred(s))
                    .map(|s| s.rss_kib)
                    .collect();
                v.sort_unstable();
                (!v.is_empty()).then(|| (v[v.len() / 2], v.len()))
            };
            NodeGrowth {
                node,
                first: median_of(&|s| s.at <= quarter),
                last: median_of(&|s| s.at >= duration - quarter),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarters_compare_warm_samples_only() {
        let s = |node, at, uptime, rss_kib| Sample {
            node,
            at,
            uptime,
            rss_kib,
        };
        let samples = vec![
            s(1, 1.0, 1.0, 5_000), // cold: ignored
            s(1, 20.0, 20.0, 10_000),
            s(1, 24.0, 24.0, 10_000),
            s(1, 80.0, 30.0, 12_000),
            s(1, 90.0, 5.0, 1_000), // a fresh incarnation: ignored
            s(2, 90.0, 90.0, 9_000),
        ];
        let g = compare(&samples, 2, 100.0, 10.0);
        assert_eq!(g[0].first, Some((10_000, 2)));
        assert_eq!(g[0].last, Some((12_000, 1)));
        assert!((g[0].percent().unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(g[1].first, None);
        assert_eq!(g[1].percent(), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(vm_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
