//! The demo (`integration/demo`): a 2-node netns cluster with the chapter's namespaces and
//! pods, the reachability matrix, then the chapter's example policies applied one by one with
//! `kubectl` against the API stand-in, each followed by the new matrix (changed cells marked)
//! and how long it took from the write until every agent had programmed it.

use crate::cluster::{ApiWrite, Binaries, Cluster, ClusterConfig, WatchedKind};
use crate::matrix::{render, Mark, Matrix};
use crate::scenario::{
    Addresses, Destination, Family, Labels, PodRef, PodSpec, PortSpec, Protocol,
};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, node: usize, l: &[(&str, &str)]) -> PodSpec {
    PodSpec {
        namespace: ns.into(),
        name: name.into(),
        node: Some(node),
        labels: labels(l),
        ports: vec![PortSpec {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
            container: Default::default(),
        }],
    }
}

/// The chapter's policies, in order: (file name, what it shows, manifest; `{{ podIP }}`
/// templates are filled in from the running pods).
const POLICIES: &[(&str, &str, &str)] = &[
    (
        "01-default-deny-ingress.yaml",
        "default deny: no pod in foo accepts connections",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: foo}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#,
    ),
    (
        "02-allow-client-to-server.yaml",
        "only pods labelled app=client (in foo) may reach the server on port 80",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-to-server, namespace: foo}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    ports:
    - {protocol: TCP, port: 80}
"#,
    ),
    (
        "03-allow-from-trusted-namespaces.yaml",
        "and every pod of a namespace labelled team=trusted (bar)",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-trusted-namespaces, namespace: foo}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: trusted}}
"#,
    ),
    (
        "04-allow-cidr.yaml",
        "and one address block: baz/monitor's IP (an ipBlock)",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-monitoring-cidr, namespace: foo}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - ipBlock: {cidr: "{{ podHostCIDR baz/monitor }}"}
"#,
    ),
    (
        "05-limit-egress.yaml",
        "foo/client may only talk to the server (egress limited: the external host too)",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress-to-server-only, namespace: foo}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: server}}
    ports:
    - {protocol: TCP, port: 80}
"#,
    ),
];

pub fn run(
    nodes: usize,
    family: Family,
    bins: Binaries,
    image: Option<std::sync::Arc<crate::cluster::image::ImageMode>>,
    colour: bool,
    pause: bool,
) -> Result<()> {
    let bold = |s: &str| {
        if colour {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        bail!("kubectl not found in PATH");
    }
    println!(
        "{}",
        bold(&format!("Starting a {nodes}-node netns cluster..."))
    );
    let t0 = Instant::now();
    let mut config = ClusterConfig::new(nodes, bins);
    config.image = image;
    config.external_ports = vec![(80, Protocol::Tcp)];
    let mut cluster = Cluster::start(config)?;
    let (_proxy, kubeconfig) = cluster.expose_api_on_loopback()?;
    let mut last = None;
    for (ns, l) in [
        ("foo", labels(&[("team", "foo")])),
        ("bar", labels(&[("team", "trusted")])),
        ("baz", labels(&[("team", "ops")])),
    ] {
        let mut l = l;
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        last = Some(cluster.create_namespace(ns, &l)?);
    }
    if let Some(w) = last {
        cluster.wait_programmed(w)?;
    }
    let pods = [
        pod("foo", "server", 1, &[("app", "server")]),
        pod("foo", "client", 2, &[("app", "client")]),
        pod("foo", "other", 1, &[("app", "other")]),
        pod("bar", "client", 2, &[("app", "client")]),
        pod("baz", "monitor", nodes.min(2), &[("app", "monitor")]),
    ];
    let mut last = None;
    for p in &pods {
        let node = cluster.place(p)?;
        last = Some(cluster.create_pod(p, node)?);
    }
    if let Some(w) = last {
        cluster.wait_programmed(w)?;
    }
    println!("cluster up in {:.1}s: {nodes} nodes, API stand-in at {} (from the nodes), kubeconfig for you: {}",
        t0.elapsed().as_secs_f64(), cluster.api_url(), kubeconfig.display());
    for p in &pods {
        let r = p.key();
        let c = &cluster.pods[&r];
        println!(
            "  pod {:<12} node-{}  {:<12} labels {}",
            r.to_string(),
            c.node,
            c.ip(family).map(|i| i.to_string()).unwrap_or_default(),
            crate::scenario::fmt_labels(&p.labels)
        );
    }
    println!(
        "  external host  {:<18} a server on the nodes' network with no route to pod addresses:\n                 \
         pods reach it because their traffic leaving the pod network is masqueraded to their node's address",
        cluster.external_ip(family).to_string()
    );
    let refs: Vec<PodRef> = pods.iter().map(PodSpec::key).collect();
    let destinations: Vec<Destination> = refs
        .iter()
        .cloned()
        .map(Destination::Pod)
        .chain([Destination::External])
        .collect();
    let cells: Vec<(PodRef, Destination)> = refs
        .iter()
        .flat_map(|s| destinations.iter().map(move |d| (s.clone(), d.clone())))
        .collect();
    let probe = |cluster: &Cluster| cluster.probe(Protocol::Tcp, 80, family, &cells, None, 1);
    let mut matrix = probe(&cluster)?;
    println!(
        "\n{}",
        bold("Reachability on TCP/80 (rows: from, columns: to; . = allowed, X = blocked):")
    );
    print!("{}", render(&matrix, &|_, _| Mark::Plain, colour));

    let dir = cluster.dir.join("demo");
    std::fs::create_dir_all(&dir)?;
    for (file, what, manifest) in POLICIES {
        if pause {
            println!("\n(press Enter for the next policy)");
            let mut s = String::new();
            std::io::stdin().read_line(&mut s)?;
        }
        let manifest = crate::scenario::substitute_in_str(
            manifest,
            &Addresses {
                pod_ip: &|p: &PodRef| cluster.pod_ip(p, family),
                external: Some(cluster.external_ip(family)),
            },
        )?;
        let path = dir.join(file);
        std::fs::write(&path, &manifest)?;
        println!("\n{} {what}", bold("==>"));
        for line in manifest.lines() {
            println!("    {line}");
        }
        println!("$ kubectl apply -f {file}");
        let rv = kubectl_apply(&kubeconfig, &path)?;
        let written = Instant::now();
        let took = cluster.wait_programmed(ApiWrite {
            kind: WatchedKind::NetworkPolicies,
            resource_version: rv,
            at: written,
        })?;
        println!(
            "programmed on all {} nodes {:.0} ms after kubectl returned (resourceVersion {rv})",
            cluster.nodes.len(),
            took.as_secs_f64() * 1000.0
        );
        let next = probe(&cluster)?;
        let changed = |s: &str, d: &str| {
            if matrix.get(s, d) != next.get(s, d) {
                Mark::Changed
            } else {
                Mark::Plain
            }
        };
        print!("{}", render(&next, &changed, colour));
        let n = changed_cells(&matrix, &next);
        println!("({n} cell(s) changed, marked *)");
        matrix = next;
    }
    println!("\n{}", bold("Tearing the cluster down."));
    cluster.teardown()?;
    Ok(())
}

fn changed_cells(a: &Matrix, b: &Matrix) -> usize {
    b.cells()
        .into_iter()
        .filter(|(s, d, v)| a.get(s, d) != Some(*v))
        .count()
}

/// `kubectl apply -f FILE` against the stand-in; returns the resourceVersion it wrote.
fn kubectl_apply(kubeconfig: &Path, file: &Path) -> Result<u64> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args([
            "apply",
            "--validate=false",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
            "-f",
        ])
        .arg(file)
        .output()
        .context("run kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl apply -f {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("kubectl printed {text:?}, not a resourceVersion"))
}
