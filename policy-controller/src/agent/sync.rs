//! The sync worker: the one task that owns the index, the compiler and the dataplane.
//!
//! Watch events and CNI announcements are folded into the index and the compiler as they
//! arrive (cheap, proportional to the change) and mark the state dirty. A sync (compile the
//! ruleset, let the dataplane program the difference) runs `delay` after the first dirtying
//! event, where `delay` is the min interval, stretched to the duration of the last sync when
//! syncs are slow (so a flood of events cannot keep the agent busy programming), and never
//! longer than the max interval. A CNI announcement syncs at once: the plugin's ADD is
//! waiting for it.
//!
//! `/status` reports, per kind, the resourceVersion of the newest event folded in before a
//! sync began, once that sync is programmed. A failed sync invalidates the dataplane (the
//! next apply re-reads the table) and is retried with exponential backoff; nothing is ever
//! flushed, so the last programmed rules stay in force.

use super::metrics::{error_kind, RulesetSize};
use super::routes::NodeRoutes;
use super::status::{AgentShared, LastSync};
use crate::compile::{Change, Compiler};
use crate::kube::index::{Announced, ClusterEvent, Index};
use crate::model::ObjectKey;
use crate::nft::Dataplane;
use palisade_common::AgentResponse;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Timing of the worker.
#[derive(Debug, Clone)]
pub struct SyncTuning {
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// First retry delay after a failed sync; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long a CNI announcement waits for its pod to appear in the watch before the agent
    /// answers with an error (the plugin usually gives up earlier).
    pub announce_timeout: Duration,
    /// Test hook (`--test-sync-gate`, hidden): while this file exists no sync starts;
    /// changes are still folded in and are programmed once it is gone. Lets a test hold the
    /// agent in "knows the change, has not programmed it" for as long as its checks take
    /// (a fixed delay ran out on a loaded machine before the checks did). `None` unless
    /// that option is given.
    pub test_gate: Option<PathBuf>,
}

impl Default for SyncTuning {
    fn default() -> Self {
        SyncTuning {
            min_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(1000),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            announce_timeout: Duration::from_secs(60),
            test_gate: None,
        }
    }
}

/// A request from the CNI socket.
#[derive(Debug)]
pub enum CniCommand {
    PodAdded {
        key: ObjectKey,
        container_id: String,
        ips: Vec<IpAddr>,
        reply: oneshot::Sender<AgentResponse>,
    },
    PodDeleted {
        container_id: String,
    },
}

#[derive(Debug)]
enum WaitFor {
    /// The pod is not in the watch yet.
    Pod,
    /// Programmed once a sync with at least this id succeeds.
    Sync(u64),
}

#[derive(Debug)]
struct Waiter {
    key: ObjectKey,
    wait: WaitFor,
    deadline: Instant,
    reply: oneshot::Sender<AgentResponse>,
}

/// The worker. Build with [`SyncWorker::new`], then `run` it.
pub struct SyncWorker {
    index: Index,
    compiler: Arc<Mutex<Compiler>>,
    dataplane: Box<dyn Dataplane + Send>,
    routes: Option<NodeRoutes>,
    shared: Arc<AgentShared>,
    tuning: SyncTuning,
    /// Changes are folded; a sync is owed.
    dirty_since: Option<Instant>,
    urgent: bool,
    routes_dirty: bool,
    /// After a failed route update: when to try again (without owing a sync).
    routes_retry_at: Option<Instant>,
    /// After a successful one: when to check again anyway, so that what someone else changed
    /// (a deleted VXLAN link, a flushed neighbour table, a new MTU on the node's link) is
    /// put right without waiting for a Node to change.
    routes_resync_at: Option<Instant>,
    /// Receipt times of events whose changes are not programmed yet.
    pending_events: Vec<Instant>,
    /// Id the next sync will carry; waiters for a change folded now need this one.
    next_sync_id: u64,
    waiters: Vec<Waiter>,
    retry: Option<(Instant, Duration)>,
    last_sync_duration: Duration,
    changes: Vec<Change>,
    /// A sync is owed and held by the test gate (logged once per hold).
    held_at_test_gate: bool,
}

const ROUTES_RETRY: Duration = Duration::from_secs(2);
const ROUTES_RESYNC: Duration = Duration::from_secs(60);
const MAX_PENDING_EVENT_TIMES: usize = 200_000;
/// How often a held sync looks at the test gate file again.
const TEST_GATE_POLL: Duration = Duration::from_millis(20);

fn lock(c: &Mutex<Compiler>) -> std::sync::MutexGuard<'_, Compiler> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run blocking work (nft, netlink) without stalling other tasks on a multi-thread runtime; on a
/// current-thread runtime (tests) just run it.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl SyncWorker {
    pub fn new(
        index: Index,
        compiler: Arc<Mutex<Compiler>>,
        dataplane: Box<dyn Dataplane + Send>,
        routes: Option<NodeRoutes>,
        shared: Arc<AgentShared>,
        tuning: SyncTuning,
    ) -> SyncWorker {
        if routes.is_some() {
            shared.set_routes_problem(Some("not reconciled yet".into()));
        }
        SyncWorker {
            index,
            compiler,
            dataplane,
            routes,
            shared,
            tuning,
            dirty_since: None,
            urgent: false,
            routes_dirty: true,
            routes_retry_at: None,
            routes_resync_at: None,
            pending_events: Vec::new(),
            next_sync_id: 1,
            waiters: Vec::new(),
            retry: None,
            last_sync_duration: Duration::ZERO,
            changes: Vec::new(),
            held_at_test_gate: false,
        }
    }

    /// Run until both inputs are closed.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<ClusterEvent>,
        mut cni: mpsc::Receiver<CniCommand>,
    ) {
        let (mut events_open, mut cni_open) = (true, true);
        while events_open || cni_open {
            let deadline = self.next_deadline();
            tokio::select! {
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => {
                        self.on_cluster_event(ev);
                        // Drain what is already queued: one fold pass, one compiler lock.
                        for _ in 0..1024 {
                            match events.try_recv() {
                                Ok(ev) => self.on_cluster_event(ev),
                                Err(_) => break,
                            }
                        }
                        self.flush_changes();
                    }
                    None => events_open = false,
                },
                cmd = cni.recv(), if cni_open => match cmd {
                    Some(cmd) => {
                        self.on_cni(cmd);
                        self.flush_changes();
                    }
                    None => cni_open = false,
                },
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.expire_waiters();
                    if self.sync_due() && !self.hold_at_test_gate() {
                        self.sync().await;
                    } else if [self.routes_retry_at, self.routes_resync_at]
                        .into_iter()
                        .flatten()
                        .any(|at| at <= Instant::now())
                    {
                        self.sync_routes();
                    }
                }
            }
        }
        self.shared.set_worker_stopped();
    }

    fn mark_dirty(&mut self) {
        if self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
    }

    fn on_cluster_event(&mut self, ev: ClusterEvent) {
        let received = Instant::now();
        let kind = ev.kind();
        let is_node = kind == crate::kube::ResourceKind::Nodes;
        let before = self.changes.len();
        let folded = self.index.fold(ev, &mut self.changes);
        if let Some(err) = folded.failed {
            tracing::debug!(%kind, "{err}");
            self.shared.metrics.error(error_kind::WATCH);
        }
        if let Some(msg) = folded.malformed {
            tracing::warn!(%kind, "{msg}; skipped");
            self.shared.metrics.error(error_kind::MALFORMED_OBJECT);
        }
        for key in folded.pods_touched {
            for w in &mut self.waiters {
                if w.key == key && matches!(w.wait, WaitFor::Pod) {
                    w.wait = WaitFor::Sync(self.next_sync_id);
                    self.urgent = true;
                }
            }
        }
        if self.changes.len() > before {
            if is_node {
                self.routes_dirty = true;
            }
            if self.pending_events.len() < MAX_PENDING_EVENT_TIMES {
                self.pending_events.push(received);
            }
        }
        // Every folded event dirties: even one with no effect advances the resourceVersion
        // that `/status` reports once a sync has run.
        self.mark_dirty();
    }

    fn on_cni(&mut self, cmd: CniCommand) {
        match cmd {
            CniCommand::PodAdded {
                key,
                container_id,
                ips,
                reply,
            } => {
                tracing::debug!(pod = %key, %container_id, ?ips, "CNI announced pod");
                let announced =
                    self.index
                        .pod_announced(key.clone(), container_id, ips, &mut self.changes);
                let wait = match announced {
                    Announced::Known => WaitFor::Sync(self.next_sync_id),
                    Announced::Pending => WaitFor::Pod,
                };
                self.waiters.push(Waiter {
                    key,
                    wait,
                    deadline: Instant::now() + self.tuning.announce_timeout,
                    reply,
                });
                self.pending_events.push(Instant::now());
                self.urgent = true;
                self.mark_dirty();
            }
            CniCommand::PodDeleted { container_id } => {
                self.index.pod_unannounced(&container_id, &mut self.changes);
                if !self.changes.is_empty() {
                    self.mark_dirty();
                }
            }
        }
    }

    /// Hand the folded changes to the compiler.
    fn flush_changes(&mut self) {
        if self.changes.is_empty() {
            return;
        }
        let mut compiler = lock(&self.compiler);
        for change in self.changes.drain(..) {
            compiler.apply(change);
        }
    }

    fn batching_delay(&self) -> Duration {
        self.last_sync_duration
            .max(self.tuning.min_interval)
            .min(self.tuning.max_interval)
    }

    fn sync_due(&self) -> bool {
        let Some(since) = self.dirty_since else {
            return false;
        };
        if !self.index.initial_list_done() {
            return false;
        }
        let now = Instant::now();
        if let Some((at, _)) = self.retry {
            if now < at {
                return false;
            }
        }
        self.urgent || now >= since + self.batching_delay()
    }

    /// Whether a due sync must wait for the test gate (`SyncTuning::test_gate`) to go away.
    fn hold_at_test_gate(&mut self) -> bool {
        let Some(gate) = &self.tuning.test_gate else {
            return false;
        };
        let closed = gate.exists();
        if closed && !self.held_at_test_gate {
            tracing::info!(gate = %gate.display(), "sync held while the test gate file exists");
        } else if !closed && self.held_at_test_gate {
            tracing::info!(gate = %gate.display(), "test gate file removed; syncing");
        }
        self.held_at_test_gate = closed;
        closed
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline = self
            .waiters
            .iter()
            .map(|w| w.deadline)
            .chain(self.routes_retry_at)
            .chain(self.routes_resync_at)
            .min();
        if let (Some(since), true) = (self.dirty_since, self.index.initial_list_done()) {
            let mut at = if self.urgent {
                Instant::now()
            } else {
                since + self.batching_delay()
            };
            if let Some((retry_at, _)) = self.retry {
                at = at.max(retry_at);
            }
            if self.held_at_test_gate {
                at = at.max(Instant::now() + TEST_GATE_POLL);
            }
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        deadline
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].deadline <= now {
                let w = self.waiters.swap_remove(i);
                let error = match w.wait {
                    WaitFor::Pod => format!(
                        "pod {} not seen in the API watch within {:?}",
                        w.key, self.tuning.announce_timeout
                    ),
                    WaitFor::Sync(_) => format!(
                        "pod {} not programmed within {:?}",
                        w.key, self.tuning.announce_timeout
                    ),
                };
                tracing::warn!("{error}");
                self.index.announcement_settled(&w.key);
                let _ = w.reply.send(AgentResponse {
                    ok: false,
                    error: Some(error),
                    ready: self.shared.ready(),
                });
            } else {
                i += 1;
            }
        }
    }

    async fn sync(&mut self) {
        let sync_id = self.next_sync_id;
        self.next_sync_id += 1;
        let versions = self.index.resource_versions();
        let events = std::mem::take(&mut self.pending_events);
        self.dirty_since = None;
        self.urgent = false;
        let started = std::time::Instant::now();
        let compiler = self.compiler.clone();
        let dataplane = &mut self.dataplane;
        let (result, size) = blocking(|| {
            // Borrowed, not cloned: at 10k pods the copy would cost more than the diff.
            let mut compiler = lock(&compiler);
            // Only what the compiler rebuilt since the last apply is diffed; a failed apply
            // makes the dataplane resync in full next time, so the hint is never lost.
            let (ruleset, touched) = compiler.ruleset_and_touched();
            let size = RulesetSize::of(ruleset);
            (dataplane.apply_touched(ruleset, &touched), size)
        });
        let duration = started.elapsed();
        self.last_sync_duration = duration;
        match result {
            Ok(stats) => {
                let programmed = Instant::now();
                self.retry = None;
                self.shared.metrics.observe_sync(duration, true, Some(size));
                self.shared.metrics.observe_event_latencies(
                    events
                        .iter()
                        .map(|t| programmed.saturating_duration_since(*t)),
                );
                let first = !self.shared.ready();
                self.shared.update(|s| {
                    s.programmed_resource_versions = versions;
                    s.last_sync = Some(LastSync {
                        duration_ms: duration.as_secs_f64() * 1000.0,
                        commands: stats.commands,
                        full: stats.full,
                    });
                    s.last_error = None;
                    s.invalid_policies = self.index.invalid_policies();
                    s.malformed_objects = self
                        .index
                        .malformed_objects()
                        .map(|(k, key, e)| (k, key.to_string(), e.to_string()))
                        .collect();
                    s.pods = self.index.pod_count();
                });
                let snapshot = self.shared.snapshot();
                self.shared.metrics.set_state(
                    snapshot.pods,
                    snapshot.invalid_policies.len(),
                    snapshot.malformed_objects.len(),
                );
                if first {
                    self.shared.set_programmed();
                    tracing::info!(
                        duration_ms = duration.as_secs_f64() * 1000.0,
                        commands = stats.commands,
                        "first full sync programmed; ready"
                    );
                } else {
                    tracing::debug!(
                        duration_ms = duration.as_secs_f64() * 1000.0,
                        commands = stats.commands,
                        full = stats.full,
                        "sync programmed"
                    );
                }
                self.answer_waiters(sync_id);
            }
            Err(err) => {
                let backoff = self.retry.map_or(self.tuning.retry_min, |(_, d)| {
                    (d * 2).min(self.tuning.retry_max)
                });
                tracing::error!(error = %err, retry_in_ms = backoff.as_millis() as u64, "sync failed; rules last programmed stay in force");
                self.shared.metrics.observe_sync(duration, false, None);
                self.shared.metrics.error(error_kind::NFT);
                self.shared.update(|s| s.last_error = Some(err.to_string()));
                self.dataplane.invalidate();
                self.retry = Some((Instant::now() + backoff, backoff));
                // Still owed: the same changes (and their waiters) go with the retry.
                self.pending_events = events;
                self.mark_dirty();
            }
        }
        if self.routes_dirty && self.routes_retry_at.is_none() {
            self.sync_routes();
        }
    }

    fn answer_waiters(&mut self, programmed: u64) {
        let mut i = 0;
        while i < self.waiters.len() {
            if matches!(self.waiters[i].wait, WaitFor::Sync(id) if id <= programmed) {
                let w = self.waiters.swap_remove(i);
                self.index.announcement_settled(&w.key);
                let _ = w.reply.send(AgentResponse {
                    ok: true,
                    error: None,
                    ready: true,
                });
            } else {
                i += 1;
            }
        }
    }

    fn sync_routes(&mut self) {
        let Some(routes) = &self.routes else {
            self.routes_dirty = false;
            return;
        };
        self.routes_retry_at = None;
        self.routes_resync_at = None;
        let nodes = self.index.nodes();
        match blocking(|| routes.reconcile(nodes)) {
            Ok(programmed) => {
                self.routes_dirty = false;
                self.shared
                    .metrics
                    .set_routes(programmed.routes, programmed.overlay_routes);
                self.shared.update(|s| s.routes = programmed);
                self.shared.set_routes_problem(None);
                self.routes_resync_at = Some(Instant::now() + ROUTES_RESYNC);
            }
            Err(err) => {
                let error = format!("{err:#}");
                tracing::error!(error = %error, "node routes not in place; retried at the next sync");
                self.shared.set_routes_problem(Some(error));
                self.shared.metrics.error(error_kind::ROUTES);
                self.routes_retry_at = Some(Instant::now() + ROUTES_RETRY);
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::CompileOptions;
    use crate::kube::index::tests::mk_pod;
    use crate::kube::{ResourceKind, Slim, WatchEvent};
    use crate::nft::{ApplyStats, DataplaneError};
    use crate::ruleset::{Ruleset, Touched};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Records when each apply happened; fails while `fail` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        applies: Arc<Mutex<Vec<Instant>>>,
        invalidations: Arc<Mutex<usize>>,
        fail: Arc<AtomicBool>,
    }

    impl Dataplane for Recorder {
        fn apply_touched(
            &mut self,
            _desired: &Ruleset,
            _touched: &Touched,
        ) -> Result<ApplyStats, DataplaneError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(DataplaneError::Nft("injected".into()));
            }
            self.applies.lock().unwrap().push(Instant::now());
            Ok(ApplyStats {
                commands: 1,
                full: false,
            })
        }
        fn invalidate(&mut self) {
            *self.invalidations.lock().unwrap() += 1;
        }
    }

    struct Harness {
        events: mpsc::Sender<ClusterEvent>,
        cni: mpsc::Sender<CniCommand>,
        shared: Arc<AgentShared>,
        compiler: Arc<Mutex<Compiler>>,
        dp: Recorder,
        _worker: tokio::task::JoinHandle<()>,
    }

    fn start(tuning: SyncTuning) -> Harness {
        let dp = Recorder::default();
        let shared = Arc::new(AgentShared::new("n1"));
        let compiler = Arc::new(Mutex::new(Compiler::new(CompileOptions {
            node: "n1".into(),
            fail_closed_new_pods: true,
            nflog_group: None,
            masquerade: crate::compile::MasqueradeOptions::enabled(),
        })));
        let worker = SyncWorker::new(
            Index::new("n1"),
            compiler.clone(),
            Box::new(dp.clone()),
            None,
            shared.clone(),
            tuning,
        );
        let (events, erx) = mpsc::channel(1024);
        let (cni, crx) = mpsc::channel(16);
        Harness {
            events,
            cni,
            shared,
            compiler,
            dp,
            _worker: tokio::spawn(worker.run(erx, crx)),
        }
    }

    fn pod_event(name: &str, rv: u64, ip: Option<&str>) -> ClusterEvent {
        ClusterEvent::Pod(WatchEvent::Applied {
            object: Slim::new(
                name,
                "x",
                &rv.to_string(),
                Ok(mk_pod("x", name, "n1", ip, &[("app", name)])),
            ),
            initial: false,
        })
    }

    async fn list_everything(h: &Harness, rv: u64) {
        let wrap: [fn(String) -> ClusterEvent; 5] = [
            |rv| {
                ClusterEvent::Pod(WatchEvent::Listed {
                    resource_version: rv,
                })
            },
            |rv| {
                ClusterEvent::Namespace(WatchEvent::Listed {
                    resource_version: rv,
                })
            },
            |rv| {
                ClusterEvent::Policy(WatchEvent::Listed {
                    resource_version: rv,
                })
            },
            |rv| {
                ClusterEvent::Node(WatchEvent::Listed {
                    resource_version: rv,
                })
            },
            |rv| {
                ClusterEvent::ClusterPolicy(WatchEvent::Listed {
                    resource_version: rv,
                })
            },
        ];
        for w in wrap {
            h.events.send(w(rv.to_string())).await.unwrap();
        }
    }

    fn applies(h: &Harness) -> Vec<Instant> {
        h.dp.applies.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_programmed_before_every_kind_is_listed() {
        let h = start(SyncTuning::default());
        h.events
            .send(pod_event("a", 3, Some("10.0.0.1")))
            .await
            .unwrap();
        h.events
            .send(ClusterEvent::Pod(WatchEvent::Listed {
                resource_version: "3".into(),
            }))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            applies(&h).is_empty(),
            "partial state must not be programmed"
        );
        assert!(!h.shared.ready());
        list_everything(&h, 7).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(applies(&h).len(), 1);
        assert!(h.shared.ready());
        let status = h.shared.status_json();
        assert_eq!(status["programmedResourceVersions"]["pods"], "7");
        assert_eq!(status["programmedResourceVersions"]["nodes"], "7");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_is_one_sync_after_the_min_interval() {
        let h = start(SyncTuning::default());
        list_everything(&h, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(applies(&h).len(), 1);
        let t0 = Instant::now();
        for i in 0..200u64 {
            h.events
                .send(pod_event(&format!("p{i}"), 10 + i, Some("10.0.0.1")))
                .await
                .unwrap();
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a = applies(&h);
        assert_eq!(a.len(), 2, "200 events in 4 ms coalesce into one sync");
        let waited = a[1] - t0;
        assert!(
            waited >= Duration::from_millis(10) && waited < Duration::from_millis(20),
            "{waited:?}"
        );
        assert_eq!(
            h.shared.status_json()["programmedResourceVersions"]["pods"],
            "209"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_still_syncs_at_least_every_interval() {
        let h = start(SyncTuning {
            min_interval: Duration::from_millis(50),
            ..SyncTuning::default()
        });
        list_everything(&h, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One event every 5 ms for a second: batching must not starve programming.
        for i in 0..200u64 {
            h.events
                .send(pod_event(&format!("p{i}"), 10 + i, Some("10.0.0.1")))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let a = applies(&h);
        let gaps: Vec<Duration> = a.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
        assert!(a.len() >= 15 && a.len() <= 25, "{} syncs", a.len());
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_millis(60)),
            "{gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_syncs_invalidate_back_off_and_keep_the_old_versions() {
        let h = start(SyncTuning::default());
        list_everything(&h, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.dp.fail.store(true, Ordering::SeqCst);
        h.events
            .send(pod_event("a", 5, Some("10.0.0.1")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let invalidations = *h.dp.invalidations.lock().unwrap();
        // Retries at 200, 400, 800 ms … after the first failure: a handful, not hundreds.
        assert!((2..=5).contains(&invalidations), "{invalidations}");
        assert_eq!(
            h.shared.status_json()["programmedResourceVersions"]["pods"],
            "1"
        );
        assert!(h.shared.status_json()["lastError"]
            .as_str()
            .unwrap()
            .contains("injected"));
        h.dp.fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            h.shared.status_json()["programmedResourceVersions"]["pods"],
            "5"
        );
        assert_eq!(
            h.shared.metrics.errors(error_kind::NFT) as usize,
            invalidations
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_pod_is_answered_after_the_sync_that_programs_it() {
        let h = start(SyncTuning {
            min_interval: Duration::from_millis(500),
            ..SyncTuning::default()
        });
        list_everything(&h, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Not in the watch yet: the answer waits for the pod.
        let (reply, answer) = oneshot::channel();
        let t0 = Instant::now();
        h.cni
            .send(CniCommand::PodAdded {
                key: ObjectKey::new("x", "new"),
                container_id: "c1".into(),
                ips: vec!["10.0.0.7".parse().unwrap()],
                reply,
            })
            .await
            .unwrap();
        let mut answer = std::pin::pin!(answer);
        tokio::select! {
            _ = &mut answer => panic!("answered before the pod was known"),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let before = applies(&h).len();
        h.events.send(pod_event("new", 9, None)).await.unwrap();
        let r = answer.await.unwrap();
        assert!(r.ok && r.ready, "{r:?}");
        // Synced at once, not after the 500 ms batching interval.
        let a = applies(&h);
        assert_eq!(a.len(), before + 1);
        assert!(a[a.len() - 1] - t0 < Duration::from_millis(350));
    }

    #[tokio::test(start_paused = true)]
    async fn an_announcement_for_a_pod_that_never_comes_times_out() {
        let h = start(SyncTuning {
            announce_timeout: Duration::from_secs(3),
            ..SyncTuning::default()
        });
        list_everything(&h, 1).await;
        let (reply, answer) = oneshot::channel();
        h.cni
            .send(CniCommand::PodAdded {
                key: ObjectKey::new("x", "ghost"),
                container_id: "c1".into(),
                ips: vec!["10.0.0.8".parse().unwrap()],
                reply,
            })
            .await
            .unwrap();
        let r = answer.await.unwrap();
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("not seen"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_test_gate_holds_every_sync_while_its_file_exists() {
        /// Removes the gate file also when an assertion fails.
        struct Gate(std::path::PathBuf);
        impl Drop for Gate {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let gate = Gate(
            std::env::temp_dir().join(format!("palisade-sync-gate-unit-{}", std::process::id())),
        );
        std::fs::write(&gate.0, "").unwrap();
        let h = start(SyncTuning {
            test_gate: Some(gate.0.clone()),
            ..SyncTuning::default()
        });
        list_everything(&h, 1).await;
        h.events
            .send(pod_event("a", 5, Some("10.0.0.1")))
            .await
            .unwrap();
        // Far beyond every batching interval: still nothing programmed, not even the first
        // sync, but the change is folded in (what the agent knows, `/debug/state`).
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(applies(&h).is_empty(), "a sync ran through the closed gate");
        assert!(!h.shared.ready());
        assert!(lock(&h.compiler)
            .state()
            .pods
            .contains_key(&ObjectKey::new("x", "a")));
        // Gone: the owed sync runs within a poll or two, with everything folded meanwhile.
        std::fs::remove_file(&gate.0).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(applies(&h).len(), 1);
        assert!(h.shared.ready());
        assert_eq!(
            h.shared.status_json()["programmedResourceVersions"]["pods"],
            "5"
        );
        // Closed again: a later change waits again, and only for as long as the file is there.
        std::fs::write(&gate.0, "").unwrap();
        h.events
            .send(pod_event("b", 6, Some("10.0.0.2")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(applies(&h).len(), 1, "held again");
        std::fs::remove_file(&gate.0).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(applies(&h).len(), 2);
        assert_eq!(
            h.shared.status_json()["programmedResourceVersions"]["pods"],
            "6"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_syncs_stretch_the_batching_interval_up_to_the_max() {
        let mut w = SyncWorker::new(
            Index::new("n1"),
            Arc::new(Mutex::new(Compiler::new(CompileOptions {
                node: "n1".into(),
                fail_closed_new_pods: true,
                nflog_group: None,
                masquerade: crate::compile::MasqueradeOptions::enabled(),
            }))),
            Box::new(Recorder::default()),
            None,
            Arc::new(AgentShared::new("n1")),
            SyncTuning::default(),
        );
        assert_eq!(w.batching_delay(), Duration::from_millis(10));
        w.last_sync_duration = Duration::from_millis(300);
        assert_eq!(w.batching_delay(), Duration::from_millis(300));
        w.last_sync_duration = Duration::from_secs(5);
        assert_eq!(w.batching_delay(), Duration::from_millis(1000));
        let _ = ResourceKind::Pods;
    }
}
