//! Prometheus metrics in the text exposition format (version 0.0.4), hand-rolled: a handful
//! of counters, gauges and two histograms do not justify a registry crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Bucket bounds (seconds) shared by the latency histograms: 1 ms … 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if v <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Size of the desired ruleset model after the last sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RulesetSize {
    pub chains: usize,
    pub rules: usize,
    pub sets: usize,
    pub maps: usize,
    pub elements: usize,
}

impl RulesetSize {
    pub fn of(rs: &crate::ruleset::Ruleset) -> RulesetSize {
        RulesetSize {
            chains: rs.chains.len(),
            rules: rs.chains.values().map(|c| c.rules.len()).sum(),
            sets: rs.sets.len(),
            maps: rs.maps.len(),
            elements: rs.sets.values().map(|s| s.elements.len()).sum::<usize>()
                + rs.maps.values().map(|m| m.elements.len()).sum::<usize>(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    sync_duration: Histogram,
    event_to_programmed: Histogram,
    syncs: BTreeMap<&'static str, u64>,
    ruleset: RulesetSize,
    errors: BTreeMap<&'static str, u64>,
    denied: BTreeMap<(String, &'static str), u64>,
    invalid_policies: usize,
    malformed_objects: usize,
    pods: usize,
    ready: bool,
    routes: usize,
    overlay_routes: usize,
    deny_log_dropped: u64,
}

/// All metrics of the agent; cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                sync_duration: Histogram::new(),
                event_to_programmed: Histogram::new(),
                syncs: BTreeMap::new(),
                ruleset: RulesetSize::default(),
                errors: BTreeMap::new(),
                denied: BTreeMap::new(),
                invalid_policies: 0,
                malformed_objects: 0,
                pods: 0,
                ready: false,
                routes: 0,
                overlay_routes: 0,
                deny_log_dropped: 0,
            }),
        }
    }
}

/// Label values of `palisade_errors_total{kind}`: one stable name per failure class.
pub mod error_kind {
    pub const WATCH: &str = "watch";
    pub const MALFORMED_OBJECT: &str = "malformed_object";
    pub const NFT: &str = "nft";
    pub const ROUTES: &str = "routes";
    pub const CNI_SOCKET: &str = "cni_socket";
    pub const NFLOG: &str = "nflog";
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn observe_sync(&self, duration: Duration, ok: bool, size: Option<RulesetSize>) {
        let mut m = self.lock();
        m.sync_duration.observe(duration.as_secs_f64());
        *m.syncs.entry(if ok { "ok" } else { "error" }).or_default() += 1;
        if let Some(size) = size {
            m.ruleset = size;
        }
    }

    pub fn observe_event_latencies(&self, latencies: impl Iterator<Item = Duration>) {
        let mut m = self.lock();
        for l in latencies {
            m.event_to_programmed.observe(l.as_secs_f64());
        }
    }

    pub fn error(&self, kind: &'static str) {
        *self.lock().errors.entry(kind).or_default() += 1;
    }

    pub fn denied(&self, policy: &str, direction: &'static str) {
        *self
            .lock()
            .denied
            .entry((policy.to_string(), direction))
            .or_default() += 1;
    }

    pub fn deny_log_dropped(&self) {
        self.lock().deny_log_dropped += 1;
    }

    pub fn set_state(&self, pods: usize, invalid_policies: usize, malformed_objects: usize) {
        let mut m = self.lock();
        m.pods = pods;
        m.invalid_policies = invalid_policies;
        m.malformed_objects = malformed_objects;
    }

    pub fn set_ready(&self, ready: bool) {
        self.lock().ready = ready;
    }

    pub fn set_routes(&self, routes: usize, overlay_routes: usize) {
        let mut m = self.lock();
        m.routes = routes;
        m.overlay_routes = overlay_routes;
    }

    pub fn errors(&self, kind: &str) -> u64 {
        self.lock().errors.get(kind).copied().unwrap_or(0)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::with_capacity(4096);
        m.sync_duration.render(
            &mut out,
            "palisade_sync_duration_seconds",
            "Time of one sync: compile the ruleset and program the difference.",
        );
        m.event_to_programmed.render(
            &mut out,
            "palisade_event_to_programmed_seconds",
            "Time from receiving a watch event (or CNI announcement) to its effect being programmed.",
        );
        let _ = writeln!(
            out,
            "# HELP palisade_syncs_total Syncs by result.\n# TYPE palisade_syncs_total counter"
        );
        for result in ["ok", "error"] {
            let _ = writeln!(
                out,
                "palisade_syncs_total{{result=\"{result}\"}} {}",
                m.syncs.get(result).copied().unwrap_or(0)
            );
        }
        let gauges: [(&str, &str, usize); 8] = [
            (
                "palisade_ruleset_chains",
                "Chains in the desired ruleset.",
                m.ruleset.chains,
            ),
            (
                "palisade_ruleset_rules",
                "Rules in the desired ruleset.",
                m.ruleset.rules,
            ),
            (
                "palisade_ruleset_sets",
                "Named sets in the desired ruleset.",
                m.ruleset.sets,
            ),
            (
                "palisade_ruleset_maps",
                "Verdict maps in the desired ruleset.",
                m.ruleset.maps,
            ),
            (
                "palisade_ruleset_elements",
                "Elements in all sets and maps of the desired ruleset.",
                m.ruleset.elements,
            ),
            (
                "palisade_invalid_policies",
                "NetworkPolicies that fail validation and are not enforced.",
                m.invalid_policies,
            ),
            (
                "palisade_malformed_objects",
                "Watched objects that do not decode (skipped).",
                m.malformed_objects,
            ),
            (
                "palisade_pods",
                "Pods in the agent's index (cluster-wide).",
                m.pods,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP palisade_node_routes Routes to other nodes' pod CIDRs owned by the agent.\n# TYPE palisade_node_routes gauge\npalisade_node_routes {}",
            m.routes
        );
        let _ = writeln!(
            out,
            "# HELP palisade_overlay_routes Of palisade_node_routes, those over the VXLAN overlay.\n# TYPE palisade_overlay_routes gauge\npalisade_overlay_routes {}",
            m.overlay_routes
        );
        let _ = writeln!(
            out,
            "# HELP palisade_ready Whether the first full sync is programmed.\n# TYPE palisade_ready gauge\npalisade_ready {}",
            u8::from(m.ready)
        );
        let _ = writeln!(
            out,
            "# HELP palisade_errors_total Errors by kind.\n# TYPE palisade_errors_total counter"
        );
        for kind in [
            error_kind::WATCH,
            error_kind::MALFORMED_OBJECT,
            error_kind::NFT,
            error_kind::ROUTES,
            error_kind::CNI_SOCKET,
            error_kind::NFLOG,
        ] {
            let _ = writeln!(
                out,
                "palisade_errors_total{{kind=\"{kind}\"}} {}",
                m.errors.get(kind).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP palisade_denied_packets_total Denied packets seen on the NFLOG group, by policy and direction.\n# TYPE palisade_denied_packets_total counter"
        );
        for ((policy, direction), n) in &m.denied {
            let _ = writeln!(
                out,
                "palisade_denied_packets_total{{policy=\"{}\",direction=\"{direction}\"}} {n}",
                escape_label(policy)
            );
        }
        let _ = writeln!(
            out,
            "# HELP palisade_deny_log_suppressed_total Denied-packet log lines dropped by the agent's rate limit.\n# TYPE palisade_deny_log_suppressed_total counter\npalisade_deny_log_suppressed_total {}",
            m.deny_log_dropped
        );
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.observe_sync(Duration::from_millis(3), true, None);
        m.observe_sync(Duration::from_millis(30), true, None);
        m.denied("x/\"p\"", "ingress");
        let text = m.render();
        assert!(
            text.contains("palisade_sync_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("palisade_sync_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("palisade_sync_duration_seconds_count 2"));
        assert!(text
            .contains(r#"palisade_denied_packets_total{policy="x/\"p\"",direction="ingress"} 1"#));
    }
}
