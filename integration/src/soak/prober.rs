//! The probe matrix, running for the whole soak on its own thread: every matrix pod to every
//! other on each matrix port, round after round. A round is compared with the reference
//! evaluator only when the cluster was settled for all of it: the driver publishes the
//! expected verdicts (computed from the API's state once every agent programmed the last
//! change) under a new epoch, and withdraws them before the next change; a round that began
//! and ended in one settled epoch is compared, every other round only counted.

use crate::cluster::probe::{self, Cell};
use crate::scenario::Protocol;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// `(port, source, destination)` → allowed.
pub type Verdicts = BTreeMap<(u16, String, String), bool>;

#[derive(Default)]
struct Shared {
    epoch: u64,
    expected: Option<Arc<Verdicts>>,
    /// Rounds compared in the current epoch.
    compared_in_epoch: usize,
    rounds: usize,
    compared_rounds: usize,
    compared_cells: usize,
    mismatches: Vec<String>,
    mismatch_count: usize,
    errors: Vec<String>,
}

pub struct Prober {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the prober saw over the run.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub rounds: usize,
    pub compared_rounds: usize,
    pub compared_cells: usize,
    pub mismatch_count: usize,
    /// The first mismatches, one line each.
    pub mismatches: Vec<String>,
    pub errors: Vec<String>,
}

const KEEP_LINES: usize = 30;

impl Prober {
    /// `cells`: one per (source, destination) pair, without expectations; probed on every
    /// port of `ports`.
    pub fn start(
        cells: Vec<Cell>,
        ports: Vec<u16>,
        timeout: Duration,
        concurrency: usize,
        run_start: Instant,
    ) -> Prober {
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (shared2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let (epoch, expected) = {
                    let s = lock(&shared2.0);
                    (s.epoch, s.expected.clone())
                };
                let mut observed = Vec::new();
                let mut failed = None;
                for &port in &ports {
                    let with_expectations: Vec<Cell> = cells
                        .iter()
                        .map(|c| Cell {
                            expected: expected.as_ref().and_then(|e| {
                                e.get(&(port, c.src.clone(), c.dst.clone())).copied()
                            }),
                            ..c.clone()
                        })
                        .collect();
                    // A blocked cell expected allowed is probed once more: a first packet can
                    // be lost for reasons that are not policy (see `probe`).
                    match probe::run(
                        &with_expectations,
                        Protocol::Tcp,
                        port,
                        timeout,
                        concurrency,
                        1,
                    ) {
                        Ok(m) => observed.push((port, m)),
                        Err(e) => failed = Some(format!("{e:#}")),
                    }
                }
                let (lock_, cvar) = &*shared2;
                let mut s = lock(lock_);
                s.rounds += 1;
                if let Some(e) = failed {
                    if s.errors.len() < KEEP_LINES {
                        s.errors.push(e);
                    }
                    continue;
                }
                let Some(expected) = expected.filter(|_| s.epoch == epoch) else {
                    continue;
                };
                let at = run_start.elapsed().as_secs_f64();
                for (port, m) in &observed {
                    for (src, dst, allowed) in m.cells() {
                        s.compared_cells += 1;
                        let want = expected.get(&(*port, src.to_string(), dst.to_string()));
                        if want != Some(&allowed) {
                            s.mismatch_count += 1;
                            if s.mismatches.len() < KEEP_LINES {
                                s.mismatches.push(format!(
                                    "{at:.0}s TCP {port} {src} -> {dst}: observed {}, reference {}",
                                    verdict(Some(&allowed)),
                                    verdict(want)
                                ));
                            }
                        }
                    }
                }
                s.compared_rounds += 1;
                s.compared_in_epoch += 1;
                cvar.notify_all();
            }
        });
        Prober {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// The cluster is settled: compare rounds that start from now on with `expected`, and
    /// wait (up to `timeout`) until one such round is compared. Returns whether one was.
    pub fn settled(&self, expected: Verdicts, timeout: Duration) -> bool {
        let (lock_, cvar) = &*self.shared;
        let mut s = lock(lock_);
        s.epoch += 1;
        s.expected = Some(Arc::new(expected));
        s.compared_in_epoch = 0;
        let deadline = Instant::now() + timeout;
        while s.compared_in_epoch == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = cvar
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    /// Changes start again: rounds from now on are not compared.
    pub fn unsettled(&self) {
        let mut s = lock(&self.shared.0);
        s.epoch += 1;
        s.expected = None;
    }

    pub fn progress(&self) -> (usize, usize, usize) {
        let s = lock(&self.shared.0);
        (s.rounds, s.compared_rounds, s.mismatch_count)
    }

    pub fn stop(mut self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let s = lock(&self.shared.0);
        ProbeReport {
            rounds: s.rounds,
            compared_rounds: s.compared_rounds,
            compared_cells: s.compared_cells,
            mismatch_count: s.mismatch_count,
            mismatches: s.mismatches.clone(),
            errors: s.errors.clone(),
        }
    }
}

fn verdict(v: Option<&bool>) -> &'static str {
    match v {
        Some(true) => "allowed",
        Some(false) => "denied",
        None => "unknown",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
