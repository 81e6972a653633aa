//! Prometheus metrics in the text exposition format (version 0.0.4), hand-rolled: a handful
//! of counters, gauges and two histograms do not justify a registry crate. Names follow
//! Prometheus' conventions (<https://prometheus.io/docs/practices/naming/>): the `palisade_`
//! prefix, base units in the name (`_seconds`, `_bytes`), `_total` on counters only, an
//! `_info` gauge of 1 for the build, and the standard `process_*` names of the official
//! clients' process collector, so existing dashboards and alerts apply.

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
            "# HELP palisade_ready Whether the agent is ready: the first full sync is programmed and the node routes are in place.\n# TYPE palisade_ready gauge\npalisade_ready {}",
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
        let _ = writeln!(
            out,
            "# HELP palisade_build_info The running agent's version (value 1).\n# TYPE palisade_build_info gauge\npalisade_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            escape_label(env!("CARGO_PKG_VERSION")),
            escape_label(option_env!("PALISADE_GIT_REVISION").unwrap_or("unknown")),
        );
        if let Some(p) = ProcessStats::read() {
            p.render(&mut out);
        }
        out
    }
}

/// The process collector's metrics, from `/proc/self` (proc(5)). Our own: five numbers from
/// two files do not justify the procfs crate and its dependencies.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl ProcessStats {
    /// `None` where /proc is not mounted.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: sysconf and getrlimit only read; rlimit is plain data.
        let (ticks, page, max_fds) = unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur
            } else {
                0
            };
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
                max,
            )
        };
        Self::parse_stat(&stat, boot_time, ticks.max(1) as f64, page.max(1) as u64).map(|p| {
            ProcessStats {
                open_fds,
                max_fds,
                ..p
            }
        })
    }

    /// Fields of `/proc/self/stat` after the command name (which may hold spaces and
    /// parentheses, hence the split at the last `)`): utime 14, stime 15, num_threads 20,
    /// starttime 22, vsize 23, rss 24 (1-based, as proc(5) counts them).
    pub fn parse_stat(stat: &str, boot_time: u64, ticks: f64, page: u64) -> Option<ProcessStats> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state).
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds: 0,
            max_fds: 0,
        })
    }

    fn render(&self, out: &mut String) {
        let metrics: [(&str, &str, &str, f64); 7] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                self.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
            (
                "process_threads",
                "gauge",
                "Number of OS threads in the process.",
                self.threads as f64,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds as f64,
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                self.max_fds as f64,
            ),
        ];
        for (name, kind, help, v) in metrics {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
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

    #[test]
    fn build_info_and_process_metrics() {
        let text = Metrics::default().render();
        assert!(
            text.contains(&format!(
                "palisade_build_info{{version=\"{}\",",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing:\n{text}"
            );
        }
        let p = ProcessStats::read().unwrap();
        assert!(
            p.resident_bytes > 0 && p.open_fds >= 3 && p.max_fds >= p.open_fds && p.threads >= 1
        );
    }

    #[test]
    fn stat_fields_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456 10 18446744073709551615";
        let p = ProcessStats::parse_stat(stat, 1_700_000_000, 100.0, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!((p.virtual_bytes, p.resident_bytes), (123456, 40960));
    }

    /// Every metric follows Prometheus' naming rules: a HELP and a TYPE per family, counters
    /// and only counters end in `_total`, histograms carry a unit, names are snake case.
    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::default();
        m.observe_sync(Duration::from_millis(3), true, None);
        m.denied("x/p", "ingress");
        let text = m.render();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "{name} twice"
                );
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{name}"
                );
                assert!(
                    name.starts_with("palisade_") || name.starts_with("process_"),
                    "{name}"
                );
                assert_eq!(
                    kind == "counter",
                    name.ends_with("_total"),
                    "{name}: {kind}"
                );
                if kind == "histogram" {
                    assert!(
                        name.ends_with("_seconds"),
                        "{name}: histogram without a unit"
                    );
                }
                if kind == "gauge" && name.ends_with("_info") {
                    assert!(
                        text.contains(&format!("\n{name}{{")),
                        "{name}: info without labels"
                    );
                }
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(types.contains_key(family), "{name}: sample before its TYPE");
            }
        }
        assert!(types.len() > 20, "{types:?}");
    }
}
