//! Benchmarks of the agent pipeline (printed, not asserted; run with
//! `cargo test --release -p palisade-policy --test agent_bench -- --ignored --nocapture`).
//!
//! - event → programmed latency (p50/p99) under pod churn, on a simulated cluster of 10k pods
//!   and 1k policies, through the real sync worker (index → compiler → FakeDataplane), side by
//!   side with the same churn on an empty cluster as the baseline;
//! - resident memory per cluster pod with 10k and 50k pods (index + compiler state + compiled
//!   ruleset), each measured in a fresh child process.

use palisade_policy::agent::{AgentShared, CniCommand, SyncTuning, SyncWorker};
use palisade_policy::compile::{CompileOptions, Compiler};
use palisade_policy::kube::{ClusterEvent, Index, Slim, WatchEvent};
use palisade_policy::model::api;
use palisade_policy::nft::FakeDataplane;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const NODE: &str = "node-0";
const NODES: usize = 100;

fn pod(i: usize, rv: u64, generation: usize) -> ClusterEvent {
    let ns = format!("ns-{}", i % 100);
    let name = format!("pod-{i}");
    let p: api::Pod = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "resourceVersion": rv.to_string(),
                     "labels": {"app": format!("app-{}", i % 10), "role": format!("role-{}", (i + generation) % 5),
                                "pod-template-hash": "5d8f7c9b6"}},
        "spec": {"nodeName": format!("node-{}", i % NODES),
                 "containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running"},
    }))
    .unwrap();
    let mut p = p;
    let ip = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
    p.status.pod_ips = vec![api::PodIp { ip }];
    ClusterEvent::Pod(WatchEvent::Applied {
        object: Slim::new(&name, &ns, &rv.to_string(), Ok(p)),
        initial: false,
    })
}

fn policy(i: usize, rv: u64) -> ClusterEvent {
    let ns = format!("ns-{}", i % 100);
    let name = format!("policy-{i}");
    let p: api::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", i % 10)}},
                 "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("role-{}", i % 5)}}},
                                       {"namespaceSelector": {"matchLabels": {"team": format!("team-{}", i % 7)}}}],
                              "ports": [{"port": 8080}, {"port": "http"}]}],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", i % 200)]}}],
                             "ports": [{"protocol": "UDP", "port": 53}]}]},
    }))
    .unwrap();
    ClusterEvent::Policy(WatchEvent::Applied {
        object: Slim::new(&name, &ns, &rv.to_string(), Ok(p)),
        initial: false,
    })
}

fn namespace(i: usize, rv: u64) -> ClusterEvent {
    let name = format!("ns-{i}");
    let n: api::Namespace = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"team": format!("team-{}", i % 7)}}}),
    )
    .unwrap();
    ClusterEvent::Namespace(WatchEvent::Applied {
        object: Slim::new(&name, "", &rv.to_string(), Ok(n)),
        initial: false,
    })
}

fn node(i: usize, rv: u64) -> ClusterEvent {
    let name = format!("node-{i}");
    let n: api::Node = serde_json::from_value(json!({"metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", i / 256, i % 256)}]}}))
    .unwrap();
    ClusterEvent::Node(WatchEvent::Applied {
        object: Slim::new(&name, "", &rv.to_string(), Ok(n)),
        initial: false,
    })
}

fn listed(rv: u64) -> Vec<ClusterEvent> {
    let r = || rv.to_string();
    vec![
        ClusterEvent::Pod(WatchEvent::Listed {
            resource_version: r(),
        }),
        ClusterEvent::Namespace(WatchEvent::Listed {
            resource_version: r(),
        }),
        ClusterEvent::Policy(WatchEvent::Listed {
            resource_version: r(),
        }),
        ClusterEvent::Node(WatchEvent::Listed {
            resource_version: r(),
        }),
    ]
}

fn opts() -> CompileOptions {
    CompileOptions {
        node: NODE.into(),
        fail_closed_new_pods: true,
        nflog_group: Some(100),
        masquerade: palisade_policy::compile::MasqueradeOptions::enabled(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies (event sent → its resourceVersion reported programmed) for `churn` pod updates
/// at `rate` per second on a cluster of `pods` pods and `policies` policies.
async fn churn_latencies(
    pods: usize,
    policies: usize,
    churn: usize,
    rate: u32,
) -> (Vec<Duration>, Duration) {
    let shared = Arc::new(AgentShared::new(NODE));
    let compiler = Arc::new(Mutex::new(Compiler::new(opts())));
    let worker = SyncWorker::new(
        Index::new(NODE),
        compiler,
        Box::new(FakeDataplane::new("palisade")),
        None,
        shared.clone(),
        SyncTuning::default(),
    );
    let (tx, rx) = mpsc::channel(8192);
    let (_cni_tx, cni_rx) = mpsc::channel::<CniCommand>(1);
    let worker = tokio::spawn(worker.run(rx, cni_rx));
    let mut rv = 1u64;
    let start = Instant::now();
    for i in 0..100 {
        tx.send(namespace(i, rv)).await.unwrap();
        rv += 1;
    }
    for i in 0..NODES {
        tx.send(node(i, rv)).await.unwrap();
        rv += 1;
    }
    for i in 0..policies {
        tx.send(policy(i, rv)).await.unwrap();
        rv += 1;
    }
    for i in 0..pods {
        tx.send(pod(i, rv, 0)).await.unwrap();
        rv += 1;
    }
    for ev in listed(rv) {
        tx.send(ev).await.unwrap();
    }
    while !shared.ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let initial = start.elapsed();

    // Churn: relabel pods (half of them on this node, so the local ruleset changes too) at a
    // steady rate, and watch the programmed resourceVersion advance.
    let programmed_at: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let watcher = {
        let shared = shared.clone();
        let programmed_at = programmed_at.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                let v = shared.snapshot().programmed_resource_versions[0];
                if v != last {
                    programmed_at.lock().unwrap().insert(v, Instant::now());
                    last = v;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let mut sent = Vec::with_capacity(churn);
    let interval = Duration::from_secs(1) / rate;
    let total = pods.max(1);
    for k in 0..churn {
        rv += 1;
        // Every other event touches a pod of this node (i % NODES == 0).
        let i = if k % 2 == 0 {
            (k * NODES) % total
        } else {
            (k * 7919) % total
        };
        tx.send(pod(i, rv, k + 1)).await.unwrap();
        sent.push((rv, Instant::now()));
        tokio::time::sleep(interval).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.snapshot().programmed_resource_versions[0] < rv && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    watcher.abort();
    worker.abort();
    let programmed = programmed_at.lock().unwrap();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(rv, t)| {
            programmed
                .range(rv..)
                .next()
                .map(|(_, p)| p.saturating_duration_since(*t))
        })
        .collect();
    lat.sort();
    (lat, initial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (release)"]
async fn bench_event_to_programmed_latency() {
    let (base, base_init) = churn_latencies(0, 0, 1000, 200).await;
    let (big, big_init) = churn_latencies(10_000, 1_000, 1000, 200).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("event -> programmed, 1000 pod relabels at 200/s, sync worker + FakeDataplane:");
    println!(
        "  baseline (empty cluster):         p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={}, initial sync {:.0} ms)",
        ms(percentile(&base, 0.5)),
        ms(percentile(&base, 0.99)),
        ms(*base.last().unwrap()),
        base.len(),
        ms(base_init)
    );
    println!(
        "  10k pods, 1k policies, 100 nodes: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={}, initial sync {:.0} ms)",
        ms(percentile(&big, 0.5)),
        ms(percentile(&big, 0.99)),
        ms(*big.last().unwrap()),
        big.len(),
        ms(big_init)
    );
    println!(
        "  ratio 10k/baseline: p50 {:.2}x  p99 {:.2}x   (target p99 <= 50 ms)",
        ms(percentile(&big, 0.5)) / ms(percentile(&base, 0.5)),
        ms(percentile(&big, 0.99)) / ms(percentile(&base, 0.99))
    );
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Child side of the memory benchmark: feed `PALISADE_BENCH_PODS` pods (and 1k policies)
/// through the index and the compiler, compile, and print the RSS growth.
#[test]
#[ignore = "child process of bench_memory_per_pod"]
fn bench_memory_child() {
    let Ok(n) = std::env::var("PALISADE_BENCH_PODS") else {
        return;
    };
    let n: usize = n.parse().unwrap();
    let policies: usize = std::env::var("PALISADE_BENCH_POLICIES")
        .unwrap()
        .parse()
        .unwrap();
    let before = rss_bytes();
    let mut index = Index::new(NODE);
    let mut compiler = Compiler::new(opts());
    let mut changes = Vec::new();
    let mut rv = 1;
    let mut feed = |ev: ClusterEvent, index: &mut Index, compiler: &mut Compiler| {
        index.fold(ev, &mut changes);
        for c in changes.drain(..) {
            compiler.apply(c);
        }
    };
    for i in 0..100 {
        feed(namespace(i, rv), &mut index, &mut compiler);
        rv += 1;
    }
    for i in 0..NODES {
        feed(node(i, rv), &mut index, &mut compiler);
        rv += 1;
    }
    for i in 0..policies {
        feed(policy(i, rv), &mut index, &mut compiler);
        rv += 1;
    }
    for i in 0..n {
        feed(pod(i, rv, 0), &mut index, &mut compiler);
        rv += 1;
    }
    let rules = compiler.ruleset_ref().sets.len();
    let after = rss_bytes();
    println!("RSS_DELTA {} {}", after.saturating_sub(before), rules);
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (release)"]
fn bench_memory_per_pod() {
    let exe = std::env::current_exe().unwrap();
    let measure = |pods: usize, policies: usize| -> u64 {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "bench_memory_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PALISADE_BENCH_PODS", pods.to_string())
            .env("PALISADE_BENCH_POLICIES", policies.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // The harness prints the test name on the same line before the child's output.
        let line = text
            .lines()
            .find_map(|l| l.split("RSS_DELTA ").nth(1))
            .unwrap_or_else(|| panic!("child printed no result: {text}"));
        line.split_whitespace().next().unwrap().parse().unwrap()
    };
    let base = measure(0, 1_000);
    println!("agent memory (index + compiler state + compiled ruleset), 1k policies, 100 nodes:");
    println!("  baseline, 0 pods: {:.1} MiB", base as f64 / 1048576.0);
    for pods in [10_000usize, 50_000] {
        let rss = measure(pods, 1_000);
        let per_pod = rss.saturating_sub(base) as f64 / pods as f64;
        println!(
            "  {pods:>6} pods: {:.1} MiB total, {:.0} bytes per cluster pod over the baseline (target <= 2048)",
            rss as f64 / 1048576.0,
            per_pod
        );
    }
}
