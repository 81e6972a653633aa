//! The scenario runner: one fresh netns cluster per scenario file, the model applied, then
//! the steps in order, each change waited for on every agent before the next probe.

use crate::apiserver::ApiError;
use crate::cluster::topology::Topology;
use crate::cluster::{ApiWrite, Binaries, Cluster, ClusterConfig, RouteMode};
use crate::matrix::{compare, render_comparison};
use crate::scenario::{
    substitute_templates, Addresses, Destination, Expect, Family, PodRef, Scenario, ScenarioKind,
    Step, NAMESPACE_NAME_LABEL,
};
use anyhow::{anyhow, Context, Result};
use palisade_policy::agent::routes::overlay::OverlayMode;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How to run scenarios.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub family: Family,
    pub nodes: usize,
    pub bins: Binaries,
    pub routes: RouteMode,
    pub agent_args: Vec<String>,
    /// ANSI colours in matrices (only on a terminal).
    pub colour: bool,
    pub verbose: bool,
    /// Times a cell observed blocked is probed again before it counts.
    pub retry_blocked: usize,
    /// The nodes' network and the agents' overlay (a scenario's `cluster:` may pin either).
    pub topology: Topology,
    pub overlay: OverlayMode,
    /// Image mode: the nodes run Palisade from the image under its DaemonSet.
    pub image: Option<std::sync::Arc<crate::cluster::image::ImageMode>>,
}

/// The outcome of one scenario.
#[derive(Debug)]
pub struct ScenarioResult {
    pub id: String,
    pub passed: bool,
    /// What went wrong (empty when passed).
    pub report: String,
    pub duration: Duration,
    pub probes: usize,
    /// Not run here, and why (counted apart from passed and failed).
    pub skipped: Option<String>,
}

/// Every `*.yaml` under the given files/folders (recursively), sorted per folder.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(anyhow!("{} does not exist", p.display()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Run one scenario on a fresh cluster.
pub fn run_scenario(s: &Scenario, opts: &RunOptions) -> ScenarioResult {
    let t0 = Instant::now();
    let mut report = String::new();
    let mut probes = 0;
    let mut cluster_cfg =
        ClusterConfig::new(s.cluster.nodes.unwrap_or(opts.nodes), opts.bins.clone());
    cluster_cfg.routes = opts.routes;
    cluster_cfg.agent_args = opts.agent_args.clone();
    cluster_cfg.verbose = opts.verbose;
    cluster_cfg.image = opts.image.clone();
    cluster_cfg.masquerade = s.cluster.masquerade;
    cluster_cfg.external_ports = s.served_ports();
    cluster_cfg.topology = s.cluster.topology.unwrap_or(opts.topology);
    cluster_cfg.overlay = s.cluster.overlay.unwrap_or(opts.overlay);
    let outcome = Cluster::start(cluster_cfg).and_then(|mut cluster| {
        let r = execute(s, opts, &mut cluster, &mut report, &mut probes);
        if r.is_err() || !report.is_empty() {
            report.push_str(&cluster.agent_logs_tail(25));
        }
        let td = cluster.teardown();
        r.and(td)
    });
    if let Err(e) = outcome {
        let _ = writeln!(report, "  error: {e:#}");
    }
    ScenarioResult {
        id: s.id.clone(),
        passed: report.is_empty(),
        report,
        duration: t0.elapsed(),
        probes,
        skipped: None,
    }
}

fn wait(cluster: &mut Cluster, w: ApiWrite, opts: &RunOptions, what: &str) -> Result<()> {
    let took = cluster
        .wait_programmed(w)
        .with_context(|| format!("waiting for `{what}` to be programmed"))?;
    if opts.verbose {
        eprintln!("    {what}: programmed on every node {took:?} after the write");
    }
    Ok(())
}

/// Apply the model and run the steps. Expectation failures go to `report`; `Err` is a harness
/// or cluster failure that ends the scenario.
fn execute(
    s: &Scenario,
    opts: &RunOptions,
    cluster: &mut Cluster,
    report: &mut String,
    probes: &mut usize,
) -> Result<()> {
    let mut last_ns = None;
    for ns in &s.model.namespaces {
        last_ns = Some(cluster.create_namespace(&ns.name, &ns.effective_labels())?);
    }
    if let Some(w) = last_ns {
        wait(cluster, w, opts, "model namespaces")?;
    }
    let mut last_pod = None;
    for pod in &s.model.pods {
        let node = cluster.place(pod)?;
        last_pod = Some(cluster.create_pod(pod, node)?);
    }
    if let Some(w) = last_pod {
        wait(cluster, w, opts, "model pods")?;
    }

    for (i, step) in s.steps.iter().enumerate() {
        let what = format!("step {} ({})", i + 1, step.describe());
        if opts.verbose {
            eprintln!("  {what}");
        }
        match step {
            Step::ApplyPolicy { expect, policy, .. } => {
                let family = opts.family;
                let addrs = Addresses {
                    pod_ip: &|p: &PodRef| cluster.pod_ip(p, family),
                    external: Some(cluster.external_ip(family)),
                };
                let policy =
                    substitute_templates(policy, &addrs).map_err(|e| anyhow!("{what}: {e}"))?;
                match (cluster.apply_policy(policy)?, expect) {
                    (Ok((_, w)), Some(Expect::Rejected)) => {
                        let _ = writeln!(
                            report,
                            "  {what}: the API accepted a policy the scenario expects rejected"
                        );
                        wait(cluster, w, opts, &what)?;
                    }
                    (Ok((_, w)), _) => wait(cluster, w, opts, &what)?,
                    (Err(e), Some(Expect::Rejected)) if e.code == 422 => {}
                    (Err(e), Some(Expect::Rejected)) => {
                        let _ = writeln!(
                            report,
                            "  {what}: expected 422 Invalid, the API answered {}",
                            describe_api_error(&e)
                        );
                    }
                    (Err(e), _) => {
                        let _ = writeln!(
                            report,
                            "  {what}: the API rejected a policy the scenario expects accepted: {}",
                            describe_api_error(&e)
                        );
                        if s.kind == ScenarioKind::Reachability {
                            // The probes after it would test a different policy set.
                            let _ = writeln!(report, "  (remaining steps skipped)");
                            return Ok(());
                        }
                    }
                }
            }
            Step::DeletePolicy {
                kind,
                namespace,
                name,
            } => {
                let w = cluster.delete_policy(*kind, namespace, name)?;
                wait(cluster, w, opts, &what)?;
            }
            Step::UpdatePodLabels { pod, change } => {
                let current = cluster
                    .pods
                    .get(pod)
                    .ok_or_else(|| anyhow!("{what}: no pod {pod}"))?
                    .labels
                    .clone();
                let w = cluster.set_pod_labels(pod, &change.apply_to(&current))?;
                wait(cluster, w, opts, &what)?;
            }
            Step::UpdateNamespaceLabels { namespace, change } => {
                let current = cluster
                    .namespace_labels(namespace)
                    .ok_or_else(|| anyhow!("{what}: no namespace {namespace}"))?
                    .clone();
                let mut wanted = change.apply_to(&current);
                // The API server keeps this label whatever the client asks.
                wanted.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.clone());
                let w = cluster.set_namespace_labels(namespace, &wanted)?;
                wait(cluster, w, opts, &what)?;
            }
            Step::CreatePod { pod } => {
                let node = cluster.place(pod)?;
                let w = cluster.create_pod(pod, node)?;
                wait(cluster, w, opts, &what)?;
            }
            Step::DeletePod { pod } => {
                let w = cluster.delete_pod(pod)?;
                wait(cluster, w, opts, &what)?;
            }
            Step::Probe(p) => {
                *probes += 1;
                let cells: Vec<(PodRef, Destination)> = p
                    .expected
                    .cells()
                    .into_iter()
                    .map(|(a, b, _)| Ok((PodRef::parse(a)?, Destination::parse(b)?)))
                    .collect::<Result<_, crate::scenario::ScenarioError>>()?;
                let t = Instant::now();
                let observed = cluster.probe(
                    p.protocol,
                    p.port,
                    opts.family,
                    &cells,
                    Some(&p.expected),
                    opts.retry_blocked,
                )?;
                if opts.verbose {
                    eprintln!("    {} cells probed in {:?}", cells.len(), t.elapsed());
                }
                let diffs = compare(&p.expected, &observed, s.ignore_loopback);
                if diffs.iter().any(|d| !d.ignored) {
                    let _ = writeln!(
                        report,
                        "  {what} over {}: {} cell(s) differ",
                        opts.family,
                        diffs.iter().filter(|d| !d.ignored).count()
                    );
                    for line in
                        render_comparison(&p.expected, &observed, s.ignore_loopback, opts.colour)
                            .lines()
                    {
                        let _ = writeln!(report, "  {line}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn describe_api_error(e: &ApiError) -> String {
    let mut s = format!("{} {}: {}", e.code, e.reason, e.message);
    for c in &e.details.causes {
        let _ = write!(s, "; {}: {}", c.field, c.message);
    }
    s
}

/// Run every scenario file on a fresh netns cluster; see [`run_all`] for the output.
/// Returns whether all passed.
pub fn run_files(files: &[PathBuf], opts: &RunOptions, jobs: usize) -> bool {
    let setup = format!(
        "over {} with {} node(s), topology {}, overlay {}{}{}",
        opts.family,
        opts.nodes,
        opts.topology,
        opts.overlay,
        if opts.image.is_some() {
            " (image mode)"
        } else {
            ""
        },
        if jobs > 1 {
            format!(", {jobs} at a time")
        } else {
            String::new()
        }
    );
    run_all(
        files,
        &setup,
        jobs,
        &crate::cluster::cleanup::interrupted,
        &|s| run_scenario(s, opts),
    )
}

/// Run every scenario file with `run`, `jobs` of them at a time (each on its own cluster),
/// print a line per scenario in file order and the details of failures, and end with
/// `N passed, M failed` (`, K skipped` when some were). `setup` describes where they ran
/// (for the timing line on stderr). Stops quietly once `interrupted` says so. Returns
/// whether all passed.
///
/// Several at a time: a scenario spends most of its time waiting (agents starting, a
/// blocked probe's timeout, the kernel tearing down network namespaces), not on the CPU.
pub fn run_all(
    files: &[PathBuf],
    setup: &str,
    jobs: usize,
    interrupted: &(dyn Fn() -> bool + Sync),
    run: &(dyn Fn(&Scenario) -> ScenarioResult + Sync),
) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    let mut passed = 0;
    let mut failed = 0;
    let mut skipped = 0;
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<(Scenario, ScenarioResult), String>)>();
    let all_printed = std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, files.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= files.len() || interrupted() {
                    return;
                }
                let outcome = match Scenario::from_file(&files[i]) {
                    Ok(s) => {
                        let r = run(&s);
                        Ok((s, r))
                    }
                    Err(e) => Err(format!("{e}")),
                };
                if tx.send((i, outcome)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        // Printed in file order: a result that finishes early waits for those before it.
        let mut pending = std::collections::BTreeMap::new();
        let mut printed = 0;
        for (i, outcome) in rx {
            if interrupted() {
                // Ctrl-C: this scenario's failure is the interruption; say nothing more.
                return false;
            }
            pending.insert(i, outcome);
            while let Some(outcome) = pending.remove(&printed) {
                let f = &files[printed];
                printed += 1;
                let (s, r) = match outcome {
                    Ok(sr) => sr,
                    Err(e) => {
                        println!("FAIL {}: {e}", f.display());
                        failed += 1;
                        continue;
                    }
                };
                if let Some(why) = &r.skipped {
                    skipped += 1;
                    println!("skip {}: {why}", r.id);
                } else if r.passed {
                    passed += 1;
                    println!(
                        "ok   {} [{:.1}s, {} probes] {}",
                        r.id,
                        r.duration.as_secs_f64(),
                        r.probes,
                        s.title
                    );
                } else {
                    failed += 1;
                    println!(
                        "FAIL {} [{:.1}s] {}\n     file: {}",
                        r.id,
                        r.duration.as_secs_f64(),
                        s.title,
                        f.display()
                    );
                    print!("{}", r.report);
                }
            }
        }
        printed == files.len()
    });
    if !all_printed {
        return false;
    }
    eprintln!(
        "{} scenario(s) {setup} in {:.1}s",
        files.len(),
        t0.elapsed().as_secs_f64()
    );
    if skipped > 0 {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn project_scenarios() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let files = collect_files(&[dir]).unwrap();
        assert!(files.len() > 10, "{files:?}");
        files[..10].to_vec()
    }

    /// Several at a time: every file runs exactly once, out-of-order finishes do not lose
    /// one, and one failure fails the whole run.
    #[test]
    fn run_all_with_jobs_runs_each_file_once_and_reports_failure() {
        let files = project_scenarios();
        let ids: Vec<String> = files
            .iter()
            .map(|f| Scenario::from_file(f).unwrap().id)
            .collect();
        for (jobs, failing) in [(1, None), (3, None), (4, Some(ids[2].clone()))] {
            let ran = Mutex::new(Vec::new());
            let run = |s: &Scenario| {
                // Later files finish first.
                let k = ids.iter().position(|i| *i == s.id).unwrap();
                std::thread::sleep(Duration::from_millis(5 * (10 - k as u64)));
                ran.lock().unwrap().push(s.id.clone());
                ScenarioResult {
                    id: s.id.clone(),
                    passed: failing.as_deref() != Some(s.id.as_str()),
                    report: "  failed on purpose\n".into(),
                    duration: Duration::ZERO,
                    probes: 0,
                    skipped: None,
                }
            };
            let ok = run_all(&files, "test", jobs, &|| false, &run);
            assert_eq!(ok, failing.is_none(), "jobs {jobs}");
            let mut ran = ran.into_inner().unwrap();
            ran.sort();
            let mut want = ids.clone();
            want.sort();
            assert_eq!(ran, want, "jobs {jobs}");
        }
    }
}
