//! The real-cluster scenario runner: each scenario's model and steps done with `kubectl` on
//! whatever cluster it points at, probes with `kubectl exec ... /agnhost connect`.
//!
//! A real cluster gives no signal that a change is in force on every node, so a probe step
//! probes its whole matrix in rounds until one round matches or the convergence timeout
//! passes (upstream's netpol suite retries the same way), and then reports the last round.

use super::kubectl::{args, Kubectl, Run};
use super::manifest::{
    label_args, namespace_labels_after, namespace_manifest, place, pod_manifest, probe_container,
    schedulable_nodes, RUN_LABEL,
};
use super::probe::{classify, classify_write, exec_args, pod_state, ProbeOutcome, WriteOutcome};
use crate::matrix::{compare, render_comparison, Matrix};
use crate::runner::ScenarioResult;
use crate::scenario::{
    policy_kind, substitute_templates, Addresses, Expect, Family, Labels, PodRef, PodSpec,
    PolicyKind, Probe, Scenario, ScenarioKind, Step,
};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How to run scenarios on a real cluster.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub kubectl: Kubectl,
    pub family: Family,
    /// The agnhost image pods run.
    pub image: String,
    /// How long a probe step retries until its matrix matches.
    pub converge_timeout: Duration,
    /// How long pods may take to be Ready, and namespaces to be deleted.
    pub ready_timeout: Duration,
    /// `agnhost connect --timeout`: after this a cell counts as blocked.
    pub connect_timeout: Duration,
    /// Probes run at once (each is a `kubectl exec`).
    pub parallel: usize,
    /// Pause after a change before the first probe round, so that a round does not see
    /// the state before the change and pass by luck.
    pub settle: Duration,
    /// Marks every namespace this run creates (label [`RUN_LABEL`]).
    pub run_id: String,
    pub colour: bool,
    pub verbose: bool,
}

/// Limit for one kubectl call that should answer at once.
const API_CALL: Duration = Duration::from_secs(60);

// ---- interruption ------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a SIGINT/SIGTERM arrived: the signal thread deletes this run's namespaces and
/// exits the process; the main thread must stop changing the cluster.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// On SIGINT/SIGTERM: stop, delete every namespace labelled with this run's id (waiting for
/// the deletion), exit with 128+signal.
pub fn install_signal_cleanup(kubectl: Kubectl, run_id: String, limit: Duration) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("kube-cleanup-on-signal".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!("\ninterrupted (signal {sig}): deleting this run's namespaces");
                // Twice: a namespace the main thread was creating at the signal may appear
                // after the first pass.
                for _ in 0..2 {
                    let r = kubectl.run(&delete_run_namespaces_args(&run_id, limit), None, limit);
                    if let Ok(r) = r {
                        eprint!("{}", r.stdout);
                    }
                    // Cluster-scoped, so not inside those namespaces (an error when the CRD
                    // is not installed: then there is nothing to delete).
                    let r = kubectl.run(
                        &delete_run_cluster_policies_args(&run_id, limit),
                        None,
                        limit,
                    );
                    if let Ok(r) = r {
                        eprint!("{}", r.stdout);
                    }
                }
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// `kubectl delete namespace -l palisade.dev/scenario-run=<id> --wait ...`.
pub fn delete_run_namespaces_args(run_id: &str, limit: Duration) -> Vec<String> {
    vec![
        "delete".into(),
        "namespace".into(),
        "-l".into(),
        format!("{RUN_LABEL}={run_id}"),
        "--ignore-not-found".into(),
        "--wait=true".into(),
        format!("--timeout={}s", limit.as_secs().max(1)),
    ]
}

/// `kubectl delete clusternetworkpolicies -l palisade.dev/scenario-run=<id> ...`.
pub fn delete_run_cluster_policies_args(run_id: &str, limit: Duration) -> Vec<String> {
    let mut a = delete_run_namespaces_args(run_id, limit);
    a[1] = "clusternetworkpolicies".into();
    a
}

/// A run id: 12 hex digits (a valid label value).
pub fn new_run_id() -> String {
    format!("{:012x}", crate::testpod::random_u64() & 0xffff_ffff_ffff)
}

// ---- one scenario --------------------------------------------------------------------------

/// A pod the scenario made, as the harness knows it.
#[derive(Debug, Clone)]
struct LivePod {
    labels: Labels,
    /// The container probes from this pod run in.
    container: String,
    ip: IpAddr,
}

/// One scenario's objects on the cluster.
struct Session<'a> {
    opts: &'a KubeOptions,
    /// Namespaces this scenario created, with their current labels.
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodRef, LivePod>,
    /// Named policies that exist (create vs replace).
    policies: BTreeSet<(String, String)>,
    /// Schedulable nodes, fetched when a pod first asks for one.
    nodes: Option<Vec<String>>,
    /// Something changed since the last probe round.
    changed: bool,
}

impl<'a> Session<'a> {
    fn new(opts: &'a KubeOptions) -> Session<'a> {
        Session {
            opts,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeSet::new(),
            nodes: None,
            changed: false,
        }
    }

    fn kubectl(&self, a: &[String], stdin: Option<&str>, limit: Duration) -> Result<Run> {
        if interrupted() {
            bail!("interrupted");
        }
        self.opts.kubectl.run(a, stdin, limit)
    }

    fn kubectl_ok(&self, a: &[String], stdin: Option<&str>, limit: Duration) -> Result<String> {
        if interrupted() {
            bail!("interrupted");
        }
        self.opts.kubectl.ok(a, stdin, limit)
    }

    fn create_namespaces(&mut self, s: &Scenario) -> Result<()> {
        for ns in &s.model.namespaces {
            let manifest = namespace_manifest(ns, &self.opts.run_id);
            let r = self.kubectl(
                &args(&["create", "-f", "-"]),
                Some(&manifest.to_string()),
                API_CALL,
            )?;
            if !r.success() {
                if r.stderr.contains("AlreadyExists") || r.stderr.contains("already exists") {
                    bail!(
                        "namespace {:?} already exists: the scenario needs that exact name \
                         (policies select namespaces by name) and will not touch a namespace \
                         it did not create; delete it first (leftovers of interrupted runs \
                         carry the label {RUN_LABEL})",
                        ns.name
                    );
                }
                bail!("create namespace {}: {}", ns.name, r.stderr.trim());
            }
            let labels = manifest["metadata"]["labels"].clone();
            self.namespaces
                .insert(ns.name.clone(), serde_json::from_value(labels)?);
        }
        Ok(())
    }

    fn node_for(&mut self, pod: &PodSpec) -> Result<Option<String>> {
        if pod.node.is_none() {
            return Ok(None);
        }
        if self.nodes.is_none() {
            let out = self.kubectl_ok(&args(&["get", "nodes", "-o", "json"]), None, API_CALL)?;
            let nodes: Value = serde_json::from_str(&out).context("kubectl get nodes")?;
            self.nodes = Some(schedulable_nodes(&nodes));
        }
        place(pod, self.nodes.as_deref().unwrap_or_default()).map_err(|e| anyhow!(e))
    }

    /// Create pods and wait until every one is Ready with an address.
    fn create_pods(&mut self, pods: &[PodSpec]) -> Result<()> {
        if pods.is_empty() {
            return Ok(());
        }
        for pod in pods {
            let node = self.node_for(pod)?;
            let manifest =
                pod_manifest(pod, &self.opts.image, node.as_deref()).map_err(|e| anyhow!(e))?;
            self.create_pod(&pod.key(), &manifest.to_string())?;
        }
        let ips = self.wait_ready(pods)?;
        for (pod, ip) in pods.iter().zip(ips) {
            self.pods.insert(
                pod.key(),
                LivePod {
                    labels: pod.labels.clone(),
                    container: probe_container(pod),
                    ip,
                },
            );
        }
        self.changed = true;
        Ok(())
    }

    /// `kubectl create` one pod. A namespace refuses pods until the controller made its
    /// `default` ServiceAccount: that refusal is retried.
    fn create_pod(&self, key: &PodRef, manifest: &str) -> Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            let r = self.kubectl(&args(&["create", "-f", "-"]), Some(manifest), API_CALL)?;
            if r.success() {
                return Ok(());
            }
            if !r.stderr.contains("serviceaccount") || Instant::now() >= deadline {
                bail!("create pod {key}: {}", r.stderr.trim());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Poll the pods' namespaces until every pod is Ready with an address of the family.
    fn wait_ready(&self, pods: &[PodSpec]) -> Result<Vec<IpAddr>> {
        let t0 = Instant::now();
        let namespaces: BTreeSet<&str> = pods.iter().map(|p| p.namespace.as_str()).collect();
        loop {
            let mut objects: BTreeMap<PodRef, Value> = BTreeMap::new();
            for ns in &namespaces {
                let out = self.kubectl_ok(
                    &args(&["get", "pods", "-n", ns, "-o", "json"]),
                    None,
                    API_CALL,
                )?;
                let list: Value = serde_json::from_str(&out).context("kubectl get pods")?;
                for item in list["items"].as_array().into_iter().flatten() {
                    let key = PodRef {
                        namespace: ns.to_string(),
                        name: item["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    };
                    objects.insert(key, item.clone());
                }
            }
            let mut ips = Vec::new();
            let mut waiting = Vec::new();
            for pod in pods {
                let state = objects
                    .get(&pod.key())
                    .map(|o| pod_state(o, self.opts.family));
                match state {
                    Some(st) if st.usable() => ips.push(st.ip.expect("usable pods have an IP")),
                    Some(st) if st.finished => bail!("pod {} ended before it was ready", pod.key()),
                    Some(st) if st.ip.is_none() && !st.all_ips.is_empty() => bail!(
                        "pod {} has no {} address (it has {:?}): the cluster does not give pods \
                         that family",
                        pod.key(),
                        self.opts.family,
                        st.all_ips
                    ),
                    Some(st) => waiting.push(format!("{} {:?}", pod.key(), st.waiting)),
                    None => waiting.push(format!("{} (not found)", pod.key())),
                }
            }
            if waiting.is_empty() {
                if self.opts.verbose {
                    eprintln!("    {} pod(s) ready in {:?}", pods.len(), t0.elapsed());
                }
                return Ok(ips);
            }
            if t0.elapsed() >= self.opts.ready_timeout {
                bail!(
                    "pods not ready after {:?}: {}",
                    self.opts.ready_timeout,
                    waiting.join("; ")
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn apply_policy(&mut self, policy: &Value) -> Result<WriteOutcome> {
        let mut policy = policy.clone();
        if policy_kind(&policy) == PolicyKind::ClusterNetworkPolicy {
            // Cluster-scoped: deleted with the scenario by name, or by this label after an
            // interruption.
            policy["metadata"]["labels"][RUN_LABEL] = Value::String(self.opts.run_id.clone());
        }
        let policy = &policy;
        let meta = &policy["metadata"];
        let namespace = match policy_kind(policy) {
            PolicyKind::NetworkPolicy => meta["namespace"].as_str().unwrap_or("default"),
            // Cluster-scoped: no namespace in the key.
            PolicyKind::ClusterNetworkPolicy => "",
        };
        let key = meta["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(|n| (namespace.to_string(), n.to_string()));
        // Both modes upsert: replace what exists (a PUT of the whole object), else create.
        let verb = match &key {
            Some(k) if self.policies.contains(k) => "replace",
            _ => "create",
        };
        let r = self.kubectl(
            &args(&[verb, "-f", "-"]),
            Some(&policy.to_string()),
            API_CALL,
        )?;
        let outcome = classify_write(r.success(), &r.stderr);
        if outcome == WriteOutcome::Accepted {
            self.policies.extend(key);
            self.changed = true;
        }
        Ok(outcome)
    }

    fn delete_policy(&mut self, kind: PolicyKind, namespace: &str, name: &str) -> Result<()> {
        let command = match kind {
            PolicyKind::NetworkPolicy => args(&[
                "delete",
                "networkpolicy",
                "-n",
                namespace,
                name,
                "--wait=true",
            ]),
            PolicyKind::ClusterNetworkPolicy => {
                args(&["delete", "clusternetworkpolicy", name, "--wait=true"])
            }
        };
        self.kubectl_ok(&command, None, API_CALL)?;
        self.policies
            .remove(&(namespace.to_string(), name.to_string()));
        self.changed = true;
        Ok(())
    }

    fn set_pod_labels(&mut self, pod: &PodRef, wanted: Labels) -> Result<()> {
        if interrupted() {
            bail!("interrupted");
        }
        let live = self
            .pods
            .get_mut(pod)
            .ok_or_else(|| anyhow!("no pod {pod}"))?;
        let changes = label_args(&live.labels, &wanted);
        if !changes.is_empty() {
            let mut a = args(&[
                "label",
                "--overwrite",
                "pod",
                "-n",
                &pod.namespace,
                &pod.name,
            ]);
            a.extend(changes);
            self.opts.kubectl.ok(&a, None, API_CALL)?;
        }
        live.labels = wanted;
        self.changed = true;
        Ok(())
    }

    fn set_namespace_labels(&mut self, namespace: &str, wanted: Labels) -> Result<()> {
        if interrupted() {
            bail!("interrupted");
        }
        let current = self
            .namespaces
            .get_mut(namespace)
            .ok_or_else(|| anyhow!("no namespace {namespace}"))?;
        let changes = label_args(current, &wanted);
        if !changes.is_empty() {
            let mut a = args(&["label", "--overwrite", "namespace", namespace]);
            a.extend(changes);
            self.opts.kubectl.ok(&a, None, API_CALL)?;
        }
        *current = wanted;
        self.changed = true;
        Ok(())
    }

    fn delete_pod(&mut self, pod: &PodRef) -> Result<()> {
        self.kubectl_ok(
            &args(&[
                "delete",
                "pod",
                "-n",
                &pod.namespace,
                &pod.name,
                "--wait=true",
            ]),
            None,
            self.opts.ready_timeout,
        )?;
        self.pods.remove(pod);
        self.changed = true;
        Ok(())
    }

    /// One probe of every cell, `parallel` at a time.
    fn probe_round(&self, p: &Probe, cells: &[(PodRef, PodRef)]) -> Result<Vec<ProbeOutcome>> {
        let mut jobs = Vec::new();
        for (src, dst) in cells {
            let from = self
                .pods
                .get(src)
                .ok_or_else(|| anyhow!("probe from {src}: no such pod"))?;
            let to = self
                .pods
                .get(dst)
                .ok_or_else(|| anyhow!("probe to {dst}: no such pod"))?;
            jobs.push(exec_args(
                src,
                &from.container,
                to.ip,
                p.port,
                p.protocol,
                self.opts.connect_timeout,
            ));
        }
        let limit = self.opts.connect_timeout + Duration::from_secs(30);
        let results: Mutex<Vec<Option<ProbeOutcome>>> = Mutex::new(vec![None; jobs.len()]);
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..self.opts.parallel.clamp(1, jobs.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs.len() || interrupted() {
                        break;
                    }
                    let outcome = match self.opts.kubectl.run(&jobs[i], None, limit) {
                        Ok(r) => classify(r.code, &r.stderr),
                        Err(e) => ProbeOutcome::Error(format!("{e:#}")),
                    };
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
                });
            }
        });
        if interrupted() {
            bail!("interrupted");
        }
        Ok(results
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .map(|o| o.unwrap_or_else(|| ProbeOutcome::Error("not run".into())))
            .collect())
    }

    /// Probe in rounds until the observation matches or the convergence timeout passes.
    /// Returns the report lines of a mismatch (empty when it matched).
    fn probe(&mut self, p: &Probe, ignore_loopback: bool, what: &str) -> Result<String> {
        let cells: Vec<(PodRef, PodRef)> = p
            .expected
            .cells()
            .into_iter()
            .map(|(a, b, _)| Ok((PodRef::parse(a)?, PodRef::parse(b)?)))
            .collect::<Result<_, crate::scenario::ScenarioError>>()?;
        if self.changed {
            std::thread::sleep(self.opts.settle);
            self.changed = false;
        }
        let t0 = Instant::now();
        let mut round = 0;
        loop {
            round += 1;
            let outcomes = self.probe_round(p, &cells)?;
            let (observed, errors) = observation(&cells, &outcomes);
            let differing = compare(&p.expected, &observed, ignore_loopback)
                .into_iter()
                .filter(|d| !d.ignored)
                .count();
            if differing == 0 {
                if self.opts.verbose {
                    eprintln!("    matched in round {round}, {:?}", t0.elapsed());
                }
                return Ok(String::new());
            }
            if self.opts.verbose {
                eprintln!("    round {round}: {differing} cell(s) differ");
            }
            if t0.elapsed() >= self.opts.converge_timeout {
                let mut report = String::new();
                let _ = writeln!(
                    report,
                    "  {what} over {}: {differing} cell(s) differ after {round} round(s) in {:.0?}",
                    self.opts.family,
                    t0.elapsed()
                );
                for line in
                    render_comparison(&p.expected, &observed, ignore_loopback, self.opts.colour)
                        .lines()
                {
                    let _ = writeln!(report, "  {line}");
                }
                for e in errors {
                    let _ = writeln!(report, "  probe error {e}");
                }
                return Ok(report);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Delete the ClusterNetworkPolicies and the namespaces this scenario created and wait
    /// until they are gone.
    fn teardown(&mut self) -> Result<()> {
        let cluster_policies: Vec<String> = self
            .policies
            .iter()
            .filter(|(ns, _)| ns.is_empty())
            .map(|(_, name)| name.clone())
            .collect();
        if !cluster_policies.is_empty() {
            let mut a = args(&[
                "delete",
                "clusternetworkpolicy",
                "--ignore-not-found",
                "--wait=true",
            ]);
            a.extend(cluster_policies);
            self.opts
                .kubectl
                .ok(&a, None, API_CALL)
                .context("delete the scenario's ClusterNetworkPolicies")?;
            self.policies.retain(|(ns, _)| !ns.is_empty());
        }
        if self.namespaces.is_empty() {
            return Ok(());
        }
        let mut a = args(&["delete", "namespace", "--ignore-not-found", "--wait=true"]);
        a.push(format!(
            "--timeout={}s",
            self.opts.ready_timeout.as_secs().max(1)
        ));
        a.extend(self.namespaces.keys().cloned());
        // Not through `self.kubectl`: this runs after an interruption too.
        self.opts
            .kubectl
            .ok(&a, None, self.opts.ready_timeout + API_CALL)
            .context("delete the scenario's namespaces")?;
        self.namespaces.clear();
        Ok(())
    }
}

/// The observed matrix of a round (cells whose probe failed to run are left out) and the
/// probe errors as `src -> dst: message`.
pub fn observation(cells: &[(PodRef, PodRef)], outcomes: &[ProbeOutcome]) -> (Matrix, Vec<String>) {
    let mut observed = Matrix::default();
    let mut errors = Vec::new();
    for ((src, dst), outcome) in cells.iter().zip(outcomes) {
        match outcome {
            ProbeOutcome::Connected => observed.set(&src.to_string(), &dst.to_string(), true),
            ProbeOutcome::Blocked(_) => observed.set(&src.to_string(), &dst.to_string(), false),
            ProbeOutcome::Error(e) => errors.push(format!("{src} -> {dst}: {e}")),
        }
    }
    (observed, errors)
}

fn execute(
    s: &Scenario,
    session: &mut Session,
    report: &mut String,
    probes: &mut usize,
) -> Result<()> {
    let opts = session.opts;
    session.create_namespaces(s)?;
    session.create_pods(&s.model.pods)?;

    for (i, step) in s.steps.iter().enumerate() {
        let what = format!("step {} ({})", i + 1, step.describe());
        if opts.verbose {
            eprintln!("  {what}");
        }
        match step {
            Step::ApplyPolicy { expect, policy, .. } => {
                let addrs = Addresses {
                    pod_ip: &|p: &PodRef| session.pods.get(p).map(|l| l.ip),
                    // A real cluster has no external host of ours (see `run_scenario`).
                    external: None,
                };
                let policy =
                    substitute_templates(policy, &addrs).map_err(|e| anyhow!("{what}: {e}"))?;
                match (session.apply_policy(&policy)?, expect) {
                    (WriteOutcome::Accepted, Some(Expect::Rejected)) => {
                        let _ = writeln!(
                            report,
                            "  {what}: the API accepted a policy the scenario expects rejected"
                        );
                    }
                    (WriteOutcome::Accepted, _) => {}
                    (WriteOutcome::Invalid(_), Some(Expect::Rejected)) => {}
                    (WriteOutcome::Failed(e), Some(Expect::Rejected)) => {
                        let _ =
                            writeln!(report, "  {what}: expected 422 Invalid, kubectl said: {e}");
                    }
                    (WriteOutcome::Invalid(e) | WriteOutcome::Failed(e), _) => {
                        let _ = writeln!(
                            report,
                            "  {what}: the API rejected a policy the scenario expects accepted: {e}"
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
            } => session
                .delete_policy(*kind, namespace, name)
                .context(what)?,
            Step::UpdatePodLabels { pod, change } => {
                let current = &session
                    .pods
                    .get(pod)
                    .ok_or_else(|| anyhow!("{what}: no pod {pod}"))?
                    .labels;
                let wanted = change.apply_to(current);
                session.set_pod_labels(pod, wanted).context(what)?;
            }
            Step::UpdateNamespaceLabels { namespace, change } => {
                let current = session
                    .namespaces
                    .get(namespace)
                    .ok_or_else(|| anyhow!("{what}: no namespace {namespace}"))?;
                let wanted = namespace_labels_after(current, change, namespace, &opts.run_id);
                session
                    .set_namespace_labels(namespace, wanted)
                    .context(what)?;
            }
            Step::CreatePod { pod } => session
                .create_pods(std::slice::from_ref(pod))
                .context(what)?,
            Step::DeletePod { pod } => session.delete_pod(pod).context(what)?,
            Step::Probe(p) => {
                *probes += 1;
                report.push_str(&session.probe(p, s.ignore_loopback, &what)?);
            }
        }
    }
    Ok(())
}

/// Run one scenario on the cluster; its namespaces are deleted afterwards whatever happened.
pub fn run_scenario(s: &Scenario, opts: &KubeOptions) -> ScenarioResult {
    let t0 = Instant::now();
    // The external host is the netns cluster's (a namespace on the nodes' segment); a real
    // cluster's outside world is not ours to stand up or to send probes to. Nor is its
    // network ours to rebuild in another topology or with another overlay.
    let skip = if s.uses_external_host() {
        Some("uses the netns cluster's external host")
    } else if s.cluster.pins_network() {
        Some("pins the netns cluster's topology or overlay")
    } else {
        None
    };
    if let Some(why) = skip {
        return ScenarioResult {
            id: s.id.clone(),
            passed: true,
            report: String::new(),
            duration: t0.elapsed(),
            probes: 0,
            skipped: Some(why.into()),
        };
    }
    let mut report = String::new();
    let mut probes = 0;
    let mut session = Session::new(opts);
    let r = execute(s, &mut session, &mut report, &mut probes);
    let td = session.teardown();
    for e in [r.err(), td.err()].into_iter().flatten() {
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

/// Run every file on the cluster; prints like the netns runner, ending with
/// `N passed, M failed`. Returns whether all passed.
pub fn run_files(files: &[std::path::PathBuf], opts: &KubeOptions) -> bool {
    let setup = format!(
        "over {} on the cluster kubectl points at (run {})",
        opts.family, opts.run_id
    );
    // One at a time: the probes of one scenario already run --parallel at once.
    crate::runner::run_all(files, &setup, 1, &interrupted, &|s| run_scenario(s, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> PodRef {
        PodRef::parse(s).unwrap()
    }

    #[test]
    fn a_round_becomes_a_matrix_and_probe_errors_stay_out_of_it() {
        let cells = vec![
            (r("x/a"), r("x/b")),
            (r("x/b"), r("x/a")),
            (r("x/a"), r("y/c")),
        ];
        let outcomes = vec![
            ProbeOutcome::Connected,
            ProbeOutcome::Blocked("TIMEOUT".into()),
            ProbeOutcome::Error("kubectl exec exited 1: boom".into()),
        ];
        let (m, errors) = observation(&cells, &outcomes);
        assert_eq!(m.get("x/a", "x/b"), Some(true));
        assert_eq!(m.get("x/b", "x/a"), Some(false));
        assert_eq!(m.get("x/a", "y/c"), None);
        assert_eq!(m.len(), 2);
        assert_eq!(errors, ["x/a -> y/c: kubectl exec exited 1: boom"]);
    }

    #[test]
    fn leftovers_are_found_by_the_run_label() {
        let a = delete_run_namespaces_args("00ab", Duration::from_secs(90));
        assert_eq!(
            a,
            [
                "delete",
                "namespace",
                "-l",
                "palisade.dev/scenario-run=00ab",
                "--ignore-not-found",
                "--wait=true",
                "--timeout=90s"
            ]
        );
        let id = new_run_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_run_id());
    }
}
