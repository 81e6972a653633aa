//! The soak run (`tests/soak.sh`, `palisade-soak`): a netns cluster with its agents, worked
//! for a long time by everything that happens to a node, then checked for what was left
//! behind. Not part of CI: it prints its figures and fails if one is non-zero or false.
//!
//! The run alternates churn phases and quiet phases:
//! - churn ([`SoakOptions::churn`]): pods ADDed and DELed through the real plugin as a
//!   runtime would (a fraction with hostPorts), some ADDs SIGKILLed a few milliseconds in
//!   and followed by the runtime's DEL; random NetworkPolicies and ClusterNetworkPolicies
//!   applied and deleted, pod and namespace labels changed, through the API stand-in; at
//!   random moments the agent of a node other than node 1 SIGKILLed and restarted (node 1's
//!   runs the whole time: the memory reference), the API stand-in restarted with the
//!   same objects, or its history expired so that watches resuming get 410 Expired;
//! - quiet: wait until every agent programmed the last write of every kind, let the
//!   settle time pass, compute every matrix cell with the reference evaluator from the API's
//!   state, and let the prober ([`prober`]) compare one full round against it.
//!
//! Meanwhile the long-lived connections ([`connections`]) send a heartbeat every second and
//! the agents' memory is sampled ([`memory`]). At the end: the leak checks and the
//! programmed table against a fresh compile ([`checks`]).
//!
//! The random choices come from [`world::World`], seeded by `--seed` (printed first): the
//! same seed makes the same sequence of choices, so a failure is replayed by running again
//! with it (the interleaving with the agents' own timing still varies).

pub mod checks;
pub mod connections;
pub mod memory;
pub mod prober;
pub mod world;

use crate::cluster::probe::Cell;
use crate::cluster::{cleanup, ApiWrite, Binaries, Cluster, ClusterConfig};
use crate::scenario::{Family, Labels, PodRef, PolicyKind};
use anyhow::{anyhow, Context, Result};
use palisade_policy::eval::reference::{explain_in_family, Endpoint};
use palisade_policy::model::{ObjectKey, Protocol as PolicyProtocol};
use palisade_policy::ruleset::Family as RulesetFamily;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use world::{World, KEEP_NAMESPACE, MATRIX_PORTS, RANDOM_NAMESPACES, STABLE_PER_NAMESPACE};

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    pub nodes: usize,
    pub seed: u64,
    pub family: Family,
    pub bins: Binaries,
    /// Length of a churn phase.
    pub churn: Duration,
    /// Time after the last change is programmed before a probe round may count.
    pub settle: Duration,
    /// Churned pods alive at most.
    pub max_churn_pods: usize,
    pub verbose: bool,
}

/// What the run counted, and what the checks found.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub elapsed: Duration,
    pub phases: usize,
    pub counts: BTreeMap<&'static str, usize>,
    /// Failures of the cluster's operations during the run (an ADD or DEL that failed, a
    /// change not programmed in time, an agent not ready after its restart).
    pub errors: Vec<String>,
    pub leaks: checks::Leaks,
    pub table_differences: Vec<String>,
    pub probes: prober::ProbeReport,
    /// Settled windows in which no probe round could be compared in time.
    pub uncompared_windows: usize,
    pub connections: Vec<connections::ConnectionReport>,
    pub memory: Vec<memory::NodeGrowth>,
    pub memory_warm_secs: f64,
}

/// Largest agent memory growth allowed between the first and the last quarter.
pub const MEMORY_GROWTH_LIMIT_PERCENT: f64 = 10.0;

impl SoakReport {
    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn dropped(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| c.dropped.is_some())
            .count()
    }

    /// The largest growth over the nodes that have warm samples in both quarters; `None`
    /// when node 1 (whose agent runs the whole time) has not.
    fn memory_growth(&self) -> Option<f64> {
        self.memory.first()?.percent()?;
        let all = self.memory.iter().filter_map(|g| g.percent());
        Some(all.fold(f64::MIN, f64::max))
    }

    /// Every failing figure, one line each (empty: the soak passed).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let others = [
            ("table differences", &self.table_differences),
            ("errors", &self.errors),
        ];
        for (what, list) in self.leaks.kinds().into_iter().chain(others) {
            if !list.is_empty() {
                f.push(format!("{what}: {}", list.len()));
            }
        }
        if self.probes.mismatch_count > 0 {
            f.push(format!("probe mismatches: {}", self.probes.mismatch_count));
        }
        if !self.probes.errors.is_empty() {
            f.push(format!("prober errors: {}", self.probes.errors.len()));
        }
        if self.probes.compared_rounds == 0 || self.uncompared_windows > 0 {
            f.push(format!(
                "settled windows without a compared probe round: {}",
                self.uncompared_windows
            ));
        }
        if self.dropped() > 0 {
            f.push(format!(
                "long-lived connections dropped: {}",
                self.dropped()
            ));
        }
        match self.memory_growth() {
            Some(g) if g > MEMORY_GROWTH_LIMIT_PERCENT => f.push(format!(
                "agent memory growth {g:.1}% > {MEMORY_GROWTH_LIMIT_PERCENT}%"
            )),
            Some(_) => {}
            None => f.push(
                "agent memory growth: not measurable (a quarter without warm samples)".into(),
            ),
        }
        f
    }

    /// The figures, as printed at the end.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "soak figures (seed {}, {:.0}s, {} phases):",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.phases
        );
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(o, "  done: {}", counts.join(", "));
        for (what, list) in self.leaks.kinds() {
            line(&mut o, what, list.len(), list);
        }
        let _ = writeln!(
            o,
            "  programmed table == fresh compile of the final state: {}",
            self.table_differences.is_empty()
        );
        for d in self.table_differences.iter().take(20) {
            let _ = writeln!(o, "      {d}");
        }
        let p = &self.probes;
        let _ = writeln!(
            o,
            "  probe rounds: {} ({} compared in settled windows, {} cells); mismatches with the reference evaluator: {}",
            p.rounds, p.compared_rounds, p.compared_cells, p.mismatch_count
        );
        for m in &p.mismatches {
            let _ = writeln!(o, "      {m}");
        }
        let _ = writeln!(
            o,
            "  settled windows without a compared round: {}",
            self.uncompared_windows
        );
        line(&mut o, "prober errors", p.errors.len(), &p.errors);
        let beats: u64 = self.connections.iter().map(|c| c.heartbeats).sum();
        let _ = writeln!(
            o,
            "  long-lived connections dropped: {} of {} ({beats} heartbeats answered)",
            self.dropped(),
            self.connections.len()
        );
        for c in &self.connections {
            if let Some((at, why)) = &c.dropped {
                let _ = writeln!(
                    o,
                    "      {} at {at:.0}s after {} heartbeats: {why}",
                    c.name, c.heartbeats
                );
            }
        }
        let _ = writeln!(
            o,
            "  agent memory (VmRSS, median of samples with uptime >= {:.0}s, first vs last quarter):",
            self.memory_warm_secs
        );
        for g in &self.memory {
            let fmt = |q: Option<(u64, usize)>| match q {
                Some((kib, n)) => format!("{kib} KiB ({n} samples)"),
                None => "no warm sample".into(),
            };
            let pct = g
                .percent()
                .map(|p| format!("{p:+.1}%"))
                .unwrap_or_else(|| "n/a".into());
            let _ = writeln!(
                o,
                "      node-{}: {} -> {}: {pct}",
                g.node,
                fmt(g.first),
                fmt(g.last)
            );
        }
        let _ = writeln!(
            o,
            "  agent memory growth (largest): {}",
            self.memory_growth()
                .map(|g| format!("{g:.1}%"))
                .unwrap_or_else(|| "n/a".into())
        );
        line(&mut o, "errors", self.errors.len(), &self.errors);
        let failures = self.failures();
        if failures.is_empty() {
            let _ = writeln!(o, "soak PASSED");
        } else {
            let _ = writeln!(o, "soak FAILED: {}", failures.join("; "));
        }
        o
    }
}

fn line(o: &mut String, what: &str, n: usize, details: &[String]) {
    let _ = writeln!(o, "  {what}: {n}");
    for d in details.iter().take(20) {
        let _ = writeln!(o, "      {d}");
    }
    if details.len() > 20 {
        let _ = writeln!(o, "      ... {} more", details.len() - 20);
    }
}

/// The driver's state beside the cluster.
struct Run {
    world: World,
    report: SoakReport,
    /// The newest write of each kind (what "programmed everywhere" waits for).
    writes: Vec<ApiWrite>,
    churn_pods: Vec<PodRef>,
    next_churn: usize,
    pids: memory::AgentPids,
    start: Instant,
    family: Family,
    verbose: bool,
}

impl Run {
    fn wrote(&mut self, w: ApiWrite) {
        self.writes.retain(|o| o.kind != w.kind);
        self.writes.push(w);
    }

    fn error(&mut self, what: impl AsRef<str>, e: anyhow::Error) {
        let line = format!(
            "{:.0}s {}: {e:#}",
            self.start.elapsed().as_secs_f64(),
            what.as_ref()
        );
        eprintln!("soak: {line}");
        self.report.errors.push(line);
    }

    fn note(&self, msg: impl AsRef<str>) {
        if self.verbose {
            eprintln!(
                "[{:6.1}s] {}",
                self.start.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }

    fn record_pid(&self, cluster: &Cluster, node: usize) {
        if let Ok(mut p) = self.pids.lock() {
            p[node - 1] = cluster.agent_pid(node).map(|pid| (pid, Instant::now()));
        }
    }
}

/// Run the soak; the report says whether it passed. `Err`: the cluster could not be set up.
pub fn run(opts: &SoakOptions) -> Result<SoakReport> {
    println!(
        "soak: seed {} ({} nodes, {}, {:?}; replay with --seed {})",
        opts.seed, opts.nodes, opts.family, opts.duration, opts.seed
    );
    let mut config = ClusterConfig::new(opts.nodes, opts.bins.clone());
    config.verbose = opts.verbose;
    let mut cluster = Cluster::start(config).context("start the netns cluster")?;
    let start = Instant::now();
    let mut run = Run {
        world: World::new(opts.seed, opts.nodes, opts.family == Family::V6),
        report: SoakReport {
            seed: opts.seed,
            ..SoakReport::default()
        },
        writes: Vec::new(),
        churn_pods: Vec::new(),
        next_churn: 0,
        pids: Arc::new(Mutex::new(vec![None; opts.nodes])),
        start,
        family: opts.family,
        verbose: opts.verbose,
    };
    let result = soak(opts, &mut cluster, &mut run);
    let teardown = cluster.teardown();
    result?;
    teardown?;
    run.report.elapsed = start.elapsed();
    Ok(run.report)
}

fn soak(opts: &SoakOptions, cluster: &mut Cluster, run: &mut Run) -> Result<()> {
    let (matrix_pods, keep_pods) = populate(cluster, run, opts.max_churn_pods)?;
    for node in 1..=opts.nodes {
        run.record_pid(cluster, node);
    }
    let sampler = memory::Sampler::start(run.pids.clone(), run.start);

    // Long-lived connections: around the ring of keep pods, both ways.
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners = Vec::new();
    for k in &keep_pods {
        listeners.push(connections::start_echo(
            &cluster.pods[k].netns,
            stop.clone(),
        )?);
    }
    let mut conns = Vec::new();
    for (i, a) in keep_pods.iter().enumerate() {
        let b = &keep_pods[(i + 1) % keep_pods.len()];
        for (src, dst) in [(a, b), (b, a)] {
            let ip = cluster
                .pod_ip(dst, run.family)
                .ok_or_else(|| anyhow!("{dst} has no {} address", run.family))?;
            conns.push((format!("{src}->{dst}"), cluster.pods[src].netns.clone(), ip));
        }
    }
    let long_lived = connections::LongLived::start(conns, run.start, listeners, stop)?;

    // The probe matrix over the stable and keep pods.
    let mut cells = Vec::new();
    for s in &matrix_pods {
        for d in matrix_pods.iter().filter(|d| *d != s) {
            let (src, dst) = (&cluster.pods[s], &cluster.pods[d]);
            cells.push(Cell {
                src: s.to_string(),
                dst: d.to_string(),
                src_control: src.control.clone(),
                dst_control: dst.control.clone(),
                dst_ip: dst
                    .ip(run.family)
                    .ok_or_else(|| anyhow!("{d} has no {} address", run.family))?,
                expected: None,
            });
        }
    }
    let prober = prober::Prober::start(
        cells,
        MATRIX_PORTS.to_vec(),
        cluster.config.probe_timeout,
        cluster.config.probe_concurrency,
        run.start,
    );

    // A quiet phase's settle and compare take time too: stop starting churn phases early
    // enough to end near the asked duration.
    while run.start.elapsed() + opts.churn < opts.duration && !cleanup::interrupted() {
        run.report.phases += 1;
        prober.unsettled();
        churn(opts, cluster, run);
        quiet(opts, cluster, run, &matrix_pods, &prober);
        let (rounds, compared, mismatches) = prober.progress();
        let dropped = connections::DROPPED.lock().map(|d| d.len()).unwrap_or(0);
        let rss: Vec<String> = (1..=opts.nodes)
            .map(|n| {
                cluster
                    .agent_pid(n)
                    .and_then(memory::vm_rss_kib)
                    .map_or_else(|| "-".into(), |k| k.to_string())
            })
            .collect();
        println!(
            "[{:5.0}s] phase {}: {} churned pods alive; probe rounds {rounds} ({compared} compared, {mismatches} mismatches); connections dropped {dropped}; errors {}; agent RSS KiB {}",
            run.start.elapsed().as_secs_f64(),
            run.report.phases,
            run.churn_pods.len(),
            run.report.errors.len(),
            rss.join("/")
        );
    }

    // The final state: the last quiet phase settled it; the table is compared with it.
    let state = checks::api_state(cluster.api())?;
    for node in &cluster.nodes {
        match checks::table_differences(cluster, node, &state) {
            Ok(d) => run.report.table_differences.extend(d),
            Err(e) => run
                .report
                .table_differences
                .push(format!("{}: {e:#}", node.name)),
        }
    }
    run.report.probes = prober.stop();
    run.report.connections = long_lived.stop();
    let samples = sampler.stop();
    let duration = run.start.elapsed().as_secs_f64();
    run.report.memory_warm_secs = (duration / 8.0).min(30.0);
    run.report.memory =
        memory::compare(&samples, opts.nodes, duration, run.report.memory_warm_secs);
    run.report.leaks = checks::find_leaks(cluster)?;
    Ok(())
}

/// Namespaces, the keep policy, the keep pods and the stable matrix pods. Returns the matrix
/// pods (stable and keep) and the keep pods.
fn populate(
    cluster: &mut Cluster,
    run: &mut Run,
    opts_max_churn_pods: usize,
) -> Result<(Vec<PodRef>, Vec<PodRef>)> {
    let mut keep_labels = Labels::new();
    keep_labels.insert("soak/role".into(), "keep".into());
    let w = cluster.create_namespace(KEEP_NAMESPACE, &keep_labels)?;
    run.wrote(w);
    for ns in RANDOM_NAMESPACES {
        let labels = run.world.namespace_labels();
        let w = cluster.create_namespace(ns, &labels)?;
        run.wrote(w);
    }
    let (_, w) = cluster
        .apply_policy(world::keep_policy())?
        .map_err(|e| anyhow!("the keep policy was refused: {e}"))?;
    run.wrote(w);
    let mut matrix = Vec::new();
    let mut keep = Vec::new();
    for node in 1..=cluster.nodes.len() {
        let mut labels = Labels::new();
        labels.insert("app".into(), "keep".into());
        let spec = world::matrix_pod(KEEP_NAMESPACE, &format!("keep-{node}"), node, labels);
        let w = cluster.create_pod(&spec, node)?;
        run.wrote(w);
        keep.push(spec.key());
    }
    for ns in RANDOM_NAMESPACES {
        for i in 1..=STABLE_PER_NAMESPACE {
            let node = (i - 1) % cluster.nodes.len() + 1;
            let labels = run.world.pod_labels();
            let spec = world::matrix_pod(ns, &format!("s{i}"), node, labels);
            let w = cluster.create_pod(&spec, node)?;
            run.wrote(w);
            matrix.push(spec.key());
        }
    }
    for policy in run.world.initial_policies() {
        let (_, w) = cluster
            .apply_policy(policy.clone())?
            .map_err(|e| anyhow!("the API refused {policy}: {e}"))?;
        run.wrote(w);
    }
    // As many churned pods as there will be on average.
    for _ in 0..opts_max_churn_pods / 2 {
        add_pod(cluster, run);
    }
    for w in run.writes.clone() {
        cluster.wait_programmed(w)?;
    }
    matrix.extend(keep.iter().cloned());
    Ok((matrix, keep))
}

/// Random moments of a churn phase at which the rarer events happen.
struct Scheduled {
    agent_restart: Option<Instant>,
    api_restart: Option<Instant>,
    expire: Option<Instant>,
}

fn due(at: &mut Option<Instant>) -> bool {
    if at.is_some_and(|t| Instant::now() >= t) {
        *at = None;
        true
    } else {
        false
    }
}

fn churn(opts: &SoakOptions, cluster: &mut Cluster, run: &mut Run) {
    let phase_start = Instant::now();
    let end = phase_start + opts.churn;
    let at = |w: &mut World, p: f64| {
        w.chance(p)
            .then(|| phase_start + opts.churn.mul_f64(w.rng.f64()))
    };
    let mut plan = Scheduled {
        agent_restart: at(&mut run.world, if opts.nodes > 1 { 0.4 } else { 0.0 }),
        api_restart: at(&mut run.world, 0.3),
        expire: at(&mut run.world, 0.35),
    };
    let offset = |t: Option<Instant>| t.map(|t| t.duration_since(phase_start));
    run.note(format!(
        "churn phase: agent restart at {:?}, API restart at {:?}, 410 at {:?}",
        offset(plan.agent_restart),
        offset(plan.api_restart),
        offset(plan.expire)
    ));
    while Instant::now() < end && !cleanup::interrupted() {
        if due(&mut plan.agent_restart) {
            // Node 1's agent is never killed: its one incarnation is the memory reference.
            let node = run.world.rng.usize(2..=opts.nodes.max(2)).min(opts.nodes);
            cluster.kill_agent(node);
            run.record_pid(cluster, node);
            let down = Duration::from_millis(run.world.rng.u64(0..2000));
            run.note(format!("agent of node-{node} killed, restart in {down:?}"));
            std::thread::sleep(down);
            match cluster.restart_agent(node) {
                Ok(()) => run.report.count("agent restarts"),
                Err(e) => run.error(format!("restart the agent of node-{node}"), e),
            }
            run.record_pid(cluster, node);
        }
        if due(&mut plan.api_restart) {
            match cluster.restart_api() {
                Ok(n) => {
                    run.note(format!("API stand-in restarted with {n} objects"));
                    run.report.count("API restarts");
                }
                Err(e) => run.error("restart the API stand-in", e),
            }
        }
        if due(&mut plan.expire) {
            // Watches resuming after this get 410 Expired and relist.
            let faults = cluster.api().faults();
            faults.expire_history();
            faults.drop_watches();
            run.note("API history expired, watches dropped");
            run.report.count("410 Expired");
        }
        churn_step(opts, cluster, run);
        std::thread::sleep(Duration::from_millis(run.world.rng.u64(0..100)));
    }
}

/// One random change.
fn churn_step(opts: &SoakOptions, cluster: &mut Cluster, run: &mut Run) {
    let roll = run.world.rng.u32(..100);
    let full = run.churn_pods.len() >= opts.max_churn_pods;
    match roll {
        0..=29 if !full => add_pod(cluster, run),
        0..=54 if !run.churn_pods.is_empty() => {
            let i = run.world.rng.usize(..run.churn_pods.len());
            let key = run.churn_pods.swap_remove(i);
            match cluster.delete_pod(&key) {
                Ok(w) => {
                    run.wrote(w);
                    run.report.count("pod DEL");
                }
                Err(e) => run.error(format!("delete pod {key}"), e),
            }
        }
        0..=54 => add_pod(cluster, run),
        55..=64 => {
            let (spec, node, host_ports) = new_churn_pod(run);
            let delay = run.world.kill_delay();
            match cluster.interrupted_add(&spec, node, delay, &host_ports) {
                Ok(finished) => run.report.count(if finished {
                    "killed ADD (after it finished) + DEL"
                } else {
                    "killed ADD (mid-way) + DEL"
                }),
                Err(e) => run.error(format!("ADD of {} killed after {delay:?}", spec.key()), e),
            }
        }
        65..=76 => {
            let policy = run.world.network_policy();
            apply(cluster, run, policy, "NetworkPolicy applied");
        }
        77..=80 => {
            let (ns, name) = run.world.network_policy_name();
            delete_policy(cluster, run, PolicyKind::NetworkPolicy, ns, &name);
        }
        81..=86 => {
            let policy = run.world.cluster_network_policy();
            apply(cluster, run, policy, "ClusterNetworkPolicy applied");
        }
        87..=88 => {
            let name = run.world.cluster_network_policy_name();
            delete_policy(cluster, run, PolicyKind::ClusterNetworkPolicy, "", &name);
        }
        89..=96 => {
            let candidates: Vec<PodRef> = cluster
                .pods
                .keys()
                .filter(|k| k.namespace != KEEP_NAMESPACE)
                .cloned()
                .collect();
            let key = candidates[run.world.rng.usize(..candidates.len())].clone();
            let labels = run.world.pod_labels();
            match cluster.set_pod_labels(&key, &labels) {
                Ok(w) => {
                    run.wrote(w);
                    run.report.count("pod label changes");
                }
                Err(e) => run.error(format!("label pod {key}"), e),
            }
        }
        _ => {
            let ns = run.world.random_namespace();
            let mut labels = run.world.namespace_labels();
            labels.insert(crate::scenario::NAMESPACE_NAME_LABEL.into(), ns.into());
            match cluster.set_namespace_labels(ns, &labels) {
                Ok(w) => {
                    run.wrote(w);
                    run.report.count("namespace label changes");
                }
                Err(e) => run.error(format!("label namespace {ns}"), e),
            }
        }
    }
}

fn new_churn_pod(run: &mut Run) -> (crate::scenario::PodSpec, usize, Vec<(u16, u16)>) {
    let seq = run.next_churn;
    run.next_churn += 1;
    let ns = run.world.random_namespace();
    let node = run.world.node();
    let labels = run.world.pod_labels();
    let mut spec = world::matrix_pod(ns, &format!("c{seq}"), node, labels);
    spec.ports.truncate(1);
    // A unique host port per pod: two pods cannot publish one on a node.
    let host_ports = if run.world.chance(0.3) {
        vec![(30000 + (seq % 30000) as u16, 80)]
    } else {
        Vec::new()
    };
    (spec, node, host_ports)
}

fn add_pod(cluster: &mut Cluster, run: &mut Run) {
    let (spec, node, host_ports) = new_churn_pod(run);
    match cluster.create_pod_with_host_ports(&spec, node, &host_ports) {
        Ok(w) => {
            run.wrote(w);
            run.churn_pods.push(spec.key());
            run.report.count(if host_ports.is_empty() {
                "pod ADD"
            } else {
                "pod ADD with hostPort"
            });
        }
        Err(e) => run.error(format!("create pod {}", spec.key()), e),
    }
}

fn apply(cluster: &mut Cluster, run: &mut Run, policy: serde_json::Value, what: &'static str) {
    match cluster.apply_policy(policy.clone()) {
        Ok(Ok((_, w))) => {
            run.wrote(w);
            run.report.count(what);
        }
        // The generator only makes valid policies: a refusal is a bug of one or the other.
        Ok(Err(e)) => run.error(format!("the API refused {policy}"), anyhow!("{e}")),
        Err(e) => run.error("apply a policy", e),
    }
}

fn delete_policy(cluster: &mut Cluster, run: &mut Run, kind: PolicyKind, ns: &str, name: &str) {
    let exists = match kind {
        PolicyKind::NetworkPolicy => cluster
            .api()
            .get(crate::apiserver::Kind::NetworkPolicy, Some(ns), name)
            .is_some(),
        PolicyKind::ClusterNetworkPolicy => cluster
            .api()
            .get(crate::apiserver::Kind::ClusterNetworkPolicy, None, name)
            .is_some(),
    };
    if !exists {
        return;
    }
    match cluster.delete_policy(kind, ns, name) {
        Ok(w) => {
            run.wrote(w);
            run.report.count("policies deleted");
        }
        Err(e) => run.error(format!("delete policy {name}"), e),
    }
}

/// Wait until the cluster settled, then have one probe round compared with the reference.
fn quiet(
    opts: &SoakOptions,
    cluster: &mut Cluster,
    run: &mut Run,
    matrix_pods: &[PodRef],
    prober: &prober::Prober,
) {
    for w in run.writes.clone() {
        if let Err(e) = cluster.wait_programmed(w) {
            run.error("wait until every agent programmed the last change", e);
        }
    }
    std::thread::sleep(opts.settle);
    let state = match checks::api_state(cluster.api()) {
        Ok(s) => s,
        Err(e) => return run.error("read the API's state", e),
    };
    let family = match run.family {
        Family::V4 => RulesetFamily::Ipv4,
        Family::V6 => RulesetFamily::Ipv6,
    };
    let mut expected = prober::Verdicts::new();
    for s in matrix_pods {
        for d in matrix_pods.iter().filter(|d| *d != s) {
            for port in MATRIX_PORTS {
                let src = Endpoint::Pod(ObjectKey::new(&s.namespace, s.name.as_str()));
                let dst = Endpoint::Pod(ObjectKey::new(&d.namespace, d.name.as_str()));
                match explain_in_family(&state, &src, &dst, PolicyProtocol::Tcp, port, family) {
                    Ok(e) => {
                        expected.insert((port, s.to_string(), d.to_string()), e.allowed());
                    }
                    Err(e) => {
                        return run.error(format!("reference for {s} -> {d}"), anyhow!("{e}"))
                    }
                }
            }
        }
    }
    if !prober.settled(expected, Duration::from_secs(120)) {
        run.report.uncompared_windows += 1;
    }
}
