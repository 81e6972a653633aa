//! The netns cluster: nodes and pods as network namespaces on one machine, wired by the real
//! `palisade` CNI binary, policed by one real `palisade-agent` per node, fed by the kube API
//! stand-in ([`crate::apiserver`]).
//!
//! # Layout (one run = one cluster; `P` = `pali<PID>-<k>`, k counts clusters of the process)
//!
//! ```text
//!   netns P-seg:  bridge br0  192.0.2.254/24  2001:db8::fe/64   ← API stand-in listens here
//!                  │ s1          │ s2                              (:6443, in-process)
//!   netns P-n1:   eth0 192.0.2.1, 2001:db8::1   netns P-n2: eth0 192.0.2.2, 2001:db8::2
//!                 pod CIDRs 10.244.1.0/24,                     10.244.2.0/24,
//!                           fd00:10:244:1::/64                 fd00:10:244:2::/64
//!                 palisade-agent (metrics 127.0.0.1:9464)      palisade-agent
//!                 (debug socket <run dir>/node-1/debug.sock)
//!                  │ pal… (routed veth, made by `palisade`)
//!   netns P-p1-x-a: eth0 10.244.1.2/32, fd00:10:244:1::2/128, palisade-testpod
//!
//!   netns P-ext:  eth0 192.0.2.253, 2001:db8::fd on br0: the external host (not a node),
//!                 palisade-testpod on every port the scenario's pods serve
//! ```
//!
//! The external host stands for a server outside the cluster (a package mirror, an API on the
//! internet seen from a cloud VPC): it shares the nodes' network but has no route to any pod
//! CIDR, so a pod reaches it only when its traffic is masqueraded to its node's address
//! (`ClusterConfig::masquerade`, the agents' default). Nothing in the cluster routes beyond
//! the segment: nodes have no default route, and the segment has no uplink, so no packet of
//! a run can leave for the machine's own network.
//!
//! With `--topology two-subnets` ([`topology`]) the segment namespace holds a second bridge
//! (`198.51.100.254/24`, `2001:db8:2::fe/64`) for the even nodes and routes between the two,
//! knowing no pod CIDR: pods on nodes of different subnets meet only over the agents' VXLAN
//! overlay (`ClusterConfig::overlay`).
//!
//! Nothing lives in the root network namespace. The API stand-in runs inside the harness
//! process, but its listening socket was bound from a thread inside the segment namespace,
//! so it belongs there and every node reaches it over the bridge. The harness itself reaches
//! the agents' status endpoints and the demo's `kubectl` reaches the stand-in through sockets
//! opened from threads that entered the right namespace ([`netns::ClusterNetns::connect`]).
//!
//! Every name carries the run prefix; everything is recorded in [`cleanup`] the moment it
//! exists and removed by [`Cluster::teardown`], by `Drop` (panics), or by the signal handler.
//!
//! In image mode ([`image`]) the agents are not the host's binaries: each node runs the image
//! under the DaemonSet of `conf/`, and its pods are wired by the plugin that pod installed.

pub mod cleanup;
pub mod image;
pub mod netns;
pub mod probe;
pub mod topology;

use crate::apiserver::{ApiError, ApiServer, ApiServerConfig, Kind};
use crate::matrix::Matrix;
use crate::scenario::{
    policy_kind, ContainerKind, Destination, Family, Labels, PodRef, PodSpec, PolicyKind, Protocol,
};
use anyhow::{anyhow, bail, Context, Result};
use netns::ClusterNetns;
use palisade_policy::agent::routes::overlay::OverlayMode;
use palisade_policy::agent::status::ROUTES_NOT_IN_PLACE as ROUTE_PROBLEM;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use topology::{Subnet, Topology};

/// Port of the API stand-in on the segment bridge.
pub const API_PORT: u16 = 6443;
/// Port of each agent's metrics listener, on the node namespace's loopback.
pub const AGENT_METRICS_PORT: u16 = 9464;
/// The external host's addresses on the segment (documentation ranges, like the nodes').
pub const EXTERNAL_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 253);
pub const EXTERNAL_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfd);

/// Where the binaries are. `agent: None` runs the cluster without agents (wiring only: no
/// policy is enforced; the harness installs the cross-node routes itself).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub cni: PathBuf,
    pub agent: Option<PathBuf>,
    pub testpod: PathBuf,
}

impl Binaries {
    /// The binaries next to the running executable (`target/<profile>/`), which is where
    /// `cargo build` puts them and where `run-scenarios` finds them.
    pub fn next_to_current_exe() -> Result<Binaries> {
        let exe = std::env::current_exe().context("current_exe")?;
        let mut dir = exe.parent().context("exe dir")?.to_path_buf();
        // Test binaries live in target/<profile>/deps.
        if dir.ends_with("deps") {
            dir.pop();
        }
        Ok(Binaries::in_dir(&dir))
    }

    /// What the cluster tests run: the binaries in `$PALISADE_BIN_DIR` (CI's release build)
    /// or next to the test binary, with `testpod` (cargo's `CARGO_BIN_EXE_palisade-testpod`
    /// of the calling test); panics with the build command when the plugin or agent is missing.
    pub fn for_tests(testpod: &str) -> Binaries {
        let mut b = match std::env::var_os("PALISADE_BIN_DIR") {
            Some(d) => Binaries::in_dir(&PathBuf::from(d)),
            None => Binaries::next_to_current_exe().unwrap(),
        };
        b.testpod = PathBuf::from(testpod);
        assert!(
            b.cni.exists() && b.agent.is_some(),
            "build palisade and palisade-agent first: cargo build -p palisade-cni -p \
             palisade-policy --bins (looked in {})",
            b.cni.parent().unwrap().display()
        );
        b
    }

    pub fn in_dir(dir: &Path) -> Binaries {
        let agent = dir.join("palisade-agent");
        Binaries {
            cni: dir.join("palisade"),
            agent: agent.exists().then_some(agent),
            testpod: dir.join("palisade-testpod"),
        }
    }
}

/// Who installs the routes to the other nodes' pod CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// The agent does (DESIGN.md: it keeps a route per other node via its InternalIP).
    Agent,
    /// The harness adds them once at start (for runs without agents, or agents without that
    /// feature).
    Harness,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub bins: Binaries,
    pub routes: RouteMode,
    /// Extra arguments for every `palisade-agent`.
    pub agent_args: Vec<String>,
    /// How long a change may take to be programmed on every node.
    pub programming_timeout: Duration,
    /// Per-probe timeout (TCP connect, UDP answer, SCTP arrival).
    pub probe_timeout: Duration,
    /// Parallel probes.
    pub probe_concurrency: usize,
    /// Print each step of the cluster's life on stderr.
    pub verbose: bool,
    /// Image mode: every node runs Palisade from the image, as the DaemonSet says
    /// ([`image`]); `bins.cni` and `bins.agent` are then not used.
    pub image: Option<Arc<image::ImageMode>>,
    /// The agents masquerade pod traffic leaving the pod CIDRs (their default); `false`
    /// starts them with masquerade off in both families.
    pub masquerade: bool,
    /// What the external host listens on.
    pub external_ports: Vec<(u16, Protocol)>,
    /// The nodes' network ([`topology`]).
    pub topology: Topology,
    /// The agents' `--overlay`.
    pub overlay: OverlayMode,
}

impl ClusterConfig {
    pub fn new(nodes: usize, bins: Binaries) -> ClusterConfig {
        ClusterConfig {
            nodes,
            routes: RouteMode::Agent,
            bins,
            agent_args: Vec::new(),
            programming_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_millis(1000),
            probe_concurrency: 32,
            verbose: false,
            image: None,
            masquerade: true,
            external_ports: Vec::new(),
            topology: Topology::Single,
            overlay: OverlayMode::Never,
        }
    }
}

/// One node: a network namespace on the segment, its pod CIDRs, its agent.
pub struct Node {
    pub index: usize,
    pub name: String,
    pub netns: ClusterNetns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Its subnet of the nodes' network.
    pub subnet: Subnet,
    pub pod_cidr_v4: String,
    pub pod_cidr_v6: String,
    pub dir: PathBuf,
    pub agent_socket: PathBuf,
    /// The agent's debug socket (`/status`, `/debug/state`, `/drops`).
    pub debug_socket: PathBuf,
    pub conflist: Value,
    agent: Option<Child>,
    /// Image mode: the node's pod of the DaemonSet.
    pod: Option<image::NodePod>,
    pub agent_log: PathBuf,
}

/// One pod: a network namespace behind a veth made by `palisade`, running the test pod.
pub struct Pod {
    pub spec: PodSpec,
    pub node: usize,
    pub netns: ClusterNetns,
    pub container_id: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    pub control: PathBuf,
    pub labels: Labels,
    /// `runtimeConfig.portMappings` passed to CNI (hostPort).
    pub port_mappings: Vec<Value>,
    testpod: Option<Child>,
}

impl Pod {
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| family.matches(ip))
    }
}

/// The external host: a namespace on the segment that is not a node and has no route to any
/// pod CIDR, running the test pod's listeners.
pub struct ExternalHost {
    pub netns: ClusterNetns,
    pub control: PathBuf,
    testpod: Option<Child>,
}

/// A running cluster.
pub struct Cluster {
    pub config: ClusterConfig,
    pub prefix: String,
    pub dir: PathBuf,
    pub segment: ClusterNetns,
    pub nodes: Vec<Node>,
    pub api: Option<ApiServer>,
    pub pods: BTreeMap<PodRef, Pod>,
    pub external: Option<ExternalHost>,
    namespaces: BTreeMap<String, Labels>,
    api_addr: SocketAddr,
    next_pod: usize,
    round_robin: usize,
    torn_down: bool,
}

/// The kinds the agents report programmed resourceVersions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchedKind {
    Pods,
    Namespaces,
    NetworkPolicies,
    Nodes,
    ClusterNetworkPolicies,
}

impl WatchedKind {
    pub fn status_key(self) -> &'static str {
        match self {
            WatchedKind::Pods => "pods",
            WatchedKind::Namespaces => "namespaces",
            WatchedKind::NetworkPolicies => "networkpolicies",
            WatchedKind::Nodes => "nodes",
            WatchedKind::ClusterNetworkPolicies => "clusternetworkpolicies",
        }
    }
}

/// A write to the API that the agents must program before the next probe.
#[derive(Debug, Clone, Copy)]
pub struct ApiWrite {
    pub kind: WatchedKind,
    pub resource_version: u64,
    pub at: Instant,
}

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The API kind and the agents' status key of a policy kind.
fn policy_kinds(kind: PolicyKind) -> (Kind, WatchedKind) {
    match kind {
        PolicyKind::NetworkPolicy => (Kind::NetworkPolicy, WatchedKind::NetworkPolicies),
        PolicyKind::ClusterNetworkPolicy => (
            Kind::ClusterNetworkPolicy,
            WatchedKind::ClusterNetworkPolicies,
        ),
    }
}

fn api_err(e: ApiError) -> anyhow::Error {
    let causes: Vec<String> = e
        .details
        .causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    anyhow!(
        "API {} {}: {}{}",
        e.code,
        e.reason,
        e.message,
        if causes.is_empty() {
            String::new()
        } else {
            format!(" ({})", causes.join("; "))
        }
    )
}

fn rv_of(obj: &Value) -> Result<u64> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("object without a numeric metadata.resourceVersion: {obj}"))
}

impl Cluster {
    /// Build the segment, the nodes, the API stand-in and the agents, and wait until every
    /// agent is ready. On error everything made so far is removed.
    pub fn start(config: ClusterConfig) -> Result<Cluster> {
        let swept = netns::sweep_stale_runs(&std::env::temp_dir());
        for s in swept {
            eprintln!("removed leftover of a crashed run: {s}");
        }
        // In image mode the plugin comes from the image.
        let mut needed = vec![("palisade-testpod", &config.bins.testpod)];
        if config.image.is_none() {
            needed.push(("palisade", &config.bins.cni));
        }
        for (what, p) in needed {
            if !p.exists() {
                bail!(
                    "{what} binary not found at {} (build it first)",
                    p.display()
                );
            }
        }
        let k = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}-{k}", netns::run_prefix());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        cleanup::register_dir(&dir);
        let segment = match ClusterNetns::create(&format!("{k}seg")) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                cleanup::forget_dir(&dir);
                return Err(e);
            }
        };
        let mut cluster = Cluster {
            config,
            prefix,
            dir,
            segment,
            nodes: Vec::new(),
            api: None,
            pods: BTreeMap::new(),
            external: None,
            namespaces: BTreeMap::new(),
            api_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254)), API_PORT),
            next_pod: 0,
            round_robin: 0,
            torn_down: false,
        };
        // On error, Drop removes what exists.
        cluster.build()?;
        Ok(cluster)
    }

    fn log(&self, msg: impl AsRef<str>) {
        if self.config.verbose {
            eprintln!("[cluster {}] {}", self.prefix, msg.as_ref());
        }
    }

    fn build(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let seg = self.segment.clone();
        // No DAD anywhere in our namespaces: addresses are ours alone, and DAD would delay
        // every IPv6 address by a second or more.
        seg.sysctl(&[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        let topology = self.config.topology;
        if topology == Topology::TwoSubnets && !self.has_agents_routing() {
            bail!(
                "the two-subnets topology needs the agents' routes (no --no-agent, no --routes \
                 harness): only the overlay crosses its router"
            );
        }
        for subnet in topology.subnets() {
            let (v4, v6) = subnet.router();
            seg.ip(&["link", "add", subnet.bridge, "type", "bridge"])?;
            seg.ip(&["addr", "add", &format!("{v4}/24"), "dev", subnet.bridge])?;
            seg.ip(&[
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                subnet.bridge,
                "nodad",
            ])?;
            seg.ip(&["link", "set", subnet.bridge, "up"])?;
        }
        if topology.subnets().len() > 1 {
            // The router between the subnets: it forwards, and routes only what is connected
            // to it (no pod CIDR).
            seg.sysctl(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
        }

        let k = self.prefix.rsplit('-').next().unwrap_or("0").to_string();
        for i in 1..=self.config.nodes {
            let ns = ClusterNetns::create(&format!("{k}n{i}"))?;
            ns.sysctl(&[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ])?;
            let subnet = topology.subnet_of(i);
            let (ipv4, ipv6) = subnet.host(i as u8);
            attach_to_segment(&seg, &format!("s{i}"), &ns, subnet, topology, ipv4, ipv6)?;
            let dir = self.dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&dir)?;
            let agent_socket = dir.join("agent.sock");
            let pod_cidr_v4 = format!("10.244.{i}.0/24");
            let pod_cidr_v6 = format!("fd00:10:244:{i:x}::/64");
            // The pods' MTU as `install-cni` measures it on the node (the DaemonSet's init
            // container does this in image mode).
            let overlay = self.config.overlay;
            let mtu = ns.run_inside(move || {
                palisade_policy::install::pod_mtu_here(overlay, &[ipv4.into(), ipv6.into()])
            })?;
            let conflist = json!({
                "cniVersion": "1.0.0",
                "name": "palisade",
                "plugins": [{
                    "type": "palisade",
                    "mtu": mtu,
                    "ipam": {
                        "type": "palisade",
                        "ranges": [[{"subnet": pod_cidr_v4}], [{"subnet": pod_cidr_v6}]],
                        "dataDir": dir.join("ipam"),
                    },
                    "agent": {
                        "socket": agent_socket,
                        "timeoutMs": 10000,
                        // With an agent, a pod it did not program is a harness failure, not
                        // something to paper over.
                        "required": self.has_agents(),
                    },
                }],
            });
            // Image mode: the node's pod installs the conflist (it replaces this one).
            if self.config.image.is_none() {
                std::fs::create_dir_all(dir.join("ipam"))?;
                std::fs::write(
                    dir.join("10-palisade.conflist"),
                    serde_json::to_string_pretty(&conflist)?,
                )?;
            }
            self.nodes.push(Node {
                index: i,
                name: format!("node-{i}"),
                netns: ns,
                ipv4,
                ipv6,
                subnet,
                pod_cidr_v4,
                pod_cidr_v6,
                agent_log: dir.join("agent.log"),
                debug_socket: dir.join("debug.sock"),
                dir,
                agent_socket,
                conflist,
                agent: None,
                pod: None,
            });
        }
        if self.config.routes == RouteMode::Harness || !self.has_agents() {
            for n in &self.nodes {
                for m in &self.nodes {
                    if n.index == m.index {
                        continue;
                    }
                    n.netns.ip(&[
                        "route",
                        "replace",
                        &m.pod_cidr_v4,
                        "via",
                        &m.ipv4.to_string(),
                    ])?;
                    n.netns.ip(&[
                        "-6",
                        "route",
                        "replace",
                        &m.pod_cidr_v6,
                        "via",
                        &m.ipv6.to_string(),
                    ])?;
                }
            }
        }
        self.start_external_host(&k)?;
        self.log(format!("namespaces and links up in {:?}", t0.elapsed()));

        // The API stand-in: in-process, its socket bound inside the segment namespace (the
        // runtime thread it spawns inherits the namespace of the thread that spawns it).
        let addr = self.api_addr;
        // Image mode: the pods are in-cluster clients (HTTPS, a CA, a token).
        let tls = match self.config.image {
            Some(_) => Some(image::api_listener()?),
            None => None,
        };
        let api_config = ApiServerConfig {
            tls: tls.clone(),
            ..ApiServerConfig::default()
        };
        let api = self
            .segment
            .run_inside(move || ApiServer::start_in_thread(addr, api_config))
            .context("start the API stand-in in the segment namespace")?;
        api.write_kubeconfig(&self.dir.join("kubeconfig"))?;
        for n in &self.nodes {
            api.create(
                Kind::Node,
                json!({
                    "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
                    "spec": {"podCIDR": n.pod_cidr_v4, "podCIDRs": [n.pod_cidr_v4, n.pod_cidr_v6]},
                    "status": {"addresses": [
                        {"type": "InternalIP", "address": n.ipv4.to_string()},
                        {"type": "InternalIP", "address": n.ipv6.to_string()},
                        {"type": "Hostname", "address": n.name},
                    ]},
                }),
            )
            .map_err(api_err)
            .with_context(|| format!("publish Node {}", n.name))?;
        }
        self.api = Some(api);

        if let Some(tls) = tls {
            self.start_node_pods(&tls)?;
            let deadline = Instant::now() + self.config.programming_timeout;
            self.wait_node_routes(deadline)?;
            self.log(format!("node pods ready after {:?}", t0.elapsed()));
        } else if let Some(agent) = self.config.bins.agent.clone() {
            for i in 0..self.nodes.len() {
                self.start_agent(i, &agent)?;
            }
            let deadline = Instant::now() + self.config.programming_timeout;
            for i in 0..self.nodes.len() {
                self.wait_agent_ready(i, deadline)?;
            }
            if self.config.routes == RouteMode::Agent {
                self.wait_node_routes(deadline)?;
            }
            self.log(format!("agents ready after {:?}", t0.elapsed()));
        }
        Ok(())
    }

    /// The external host on the segment: addresses on the nodes' network and nothing else (no
    /// default route, no route to a pod CIDR, no forwarding), listening on
    /// `external_ports`.
    fn start_external_host(&mut self, k: &str) -> Result<()> {
        let ns = ClusterNetns::create(&format!("{k}ext"))?;
        ns.sysctl(&[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        attach_to_segment(
            &self.segment,
            "sx",
            &ns,
            topology::SUBNET_A,
            self.config.topology,
            EXTERNAL_IPV4,
            EXTERNAL_IPV6,
        )?;
        let control = self.dir.join("external").join("control.sock");
        let testpod = self.start_testpod(
            &ns,
            &control,
            &self.config.external_ports,
            &self.dir.join("external").join("testpod.log"),
            "the external host",
        )?;
        self.external = Some(ExternalHost {
            netns: ns,
            control,
            testpod: Some(testpod),
        });
        Ok(())
    }

    /// The external host's address in `family`.
    pub fn external_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(EXTERNAL_IPV4),
            Family::V6 => IpAddr::V6(EXTERNAL_IPV6),
        }
    }

    /// With the agents in charge of cross-node routes, the cluster is ready only once every
    /// node has a route to every other node's pod CIDRs (both families) that its overlay
    /// setting makes possible: via the node's address where it is direct, via the node's VTEP
    /// address on a VXLAN link where it is not, and none across the router without overlay.
    fn wait_node_routes(&self, deadline: Instant) -> Result<()> {
        for n in &self.nodes {
            for m in self.nodes.iter().filter(|m| m.index != n.index) {
                let same_subnet = n.subnet == m.subnet;
                let overlay = match self.config.overlay {
                    OverlayMode::Never if !same_subnet => continue,
                    OverlayMode::Never => false,
                    OverlayMode::CrossSubnet => !same_subnet,
                    OverlayMode::Always => true,
                };
                for (fam, cidr, ip) in [
                    ("-4", &m.pod_cidr_v4, IpAddr::V4(m.ipv4)),
                    ("-6", &m.pod_cidr_v6, IpAddr::V6(m.ipv6)),
                ] {
                    let want = if overlay {
                        let vtep: ipnet::IpNet = cidr.parse()?;
                        format!("via {} dev vxlan", vtep.network())
                    } else {
                        format!("via {ip} ")
                    };
                    loop {
                        let out = n.netns.ip(&[fam, "route", "show", cidr])?;
                        if out.contains(&want) {
                            break;
                        }
                        if Instant::now() > deadline {
                            bail!(
                                "{}: no route to {cidr} {want}(agent's job) after {:?}; routes: {}\n{}",
                                n.name,
                                self.config.programming_timeout,
                                n.netns.ip(&[fam, "route"]).unwrap_or_default(),
                                self.agent_log_tail(n.index, 20)
                            );
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the agents keep the routes between nodes (the only way across the router of
    /// the two-subnets topology is their overlay).
    fn has_agents_routing(&self) -> bool {
        self.has_agents() && self.config.routes == RouteMode::Agent
    }

    /// Two subnets without the overlay: a node's route to the pods of a node behind the router
    /// cannot be programmed (its address is not on-link), so the agents report the problem and
    /// are, rightly, not ready (`/readyz` 503 "node routes not in place: ..."). The cluster
    /// then counts an agent as started once its first full sync is programmed and that is
    /// the only reason it gives (scenario 70).
    fn route_problems_expected(&self) -> bool {
        self.config.topology == Topology::TwoSubnets
            && self.config.overlay == OverlayMode::Never
            && self.has_agents_routing()
    }

    /// An agent's not-ready reason that [`Self::route_problems_expected`] accepts.
    pub(crate) fn is_expected_route_problem(&self, not_ready_reason: &str) -> bool {
        self.route_problems_expected() && not_ready_reason.starts_with(ROUTE_PROBLEM)
    }

    /// Whether agents run (natively or from the image).
    pub fn has_agents(&self) -> bool {
        self.config.bins.agent.is_some() || self.config.image.is_some()
    }

    pub fn api(&self) -> &ApiServer {
        self.api
            .as_ref()
            .expect("the API stand-in runs while the cluster exists")
    }

    /// The API server URL as seen from the nodes.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn start_agent(&mut self, i: usize, bin: &Path) -> Result<()> {
        let kubeconfig = self.kubeconfig_path();
        let masquerade = self.config.masquerade;
        let overlay = self.config.overlay;
        let n = &mut self.nodes[i];
        let log = std::fs::File::create(&n.agent_log)?;
        let mut cmd = n.netns.command(bin);
        cmd.arg("--node-name")
            .arg(&n.name)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cni-socket")
            .arg(&n.agent_socket)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{AGENT_METRICS_PORT}"))
            .arg("--debug-socket")
            .arg(&n.debug_socket)
            .args(if masquerade {
                &[][..]
            } else {
                &["--masquerade-ipv4=false", "--masquerade-ipv6=false"][..]
            })
            .arg(format!("--overlay={overlay}"))
            .args(&self.config.agent_args)
            .env(
                "RUST_LOG",
                std::env::var("PALISADE_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {} in {}", bin.display(), n.netns.name()))?;
        cleanup::register_process(child.id());
        n.agent = Some(child);
        Ok(())
    }

    /// The last lines of a node's agent log (for failure reports).
    pub fn agent_log_tail(&self, node: usize, lines: usize) -> String {
        let n = &self.nodes[node - 1];
        tail(&n.agent_log, lines)
    }

    /// All agents' log tails, headed by the node name.
    pub fn agent_logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        if !self.has_agents() {
            return out;
        }
        for n in &self.nodes {
            out.push_str(&format!(
                "--- {} agent log ({}), last {lines} lines:\n{}",
                n.name,
                n.agent_log.display(),
                tail(&n.agent_log, lines)
            ));
        }
        out
    }

    /// GET a path of a node agent's debug socket.
    pub fn agent_get(&self, node: usize, path: &str) -> Result<(u16, String)> {
        let n = &self.nodes[node - 1];
        let (code, mut body) = palisade_policy::agent::http::unix_get(&n.debug_socket, path)
            .with_context(|| format!("{} agent", n.name))?;
        body.get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut text = String::new();
        body.read_to_string(&mut text)?;
        Ok((code, text))
    }

    /// The agent's `/status` JSON.
    pub fn agent_status(&self, node: usize) -> Result<Value> {
        let (code, body) = self.agent_get(node, "/status")?;
        if code != 200 {
            bail!("GET /status on node-{node}: HTTP {code}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("parse /status of node-{node}: {body}"))
    }

    fn agent_alive(&mut self, i: usize) -> Result<()> {
        self.pod_alive(i)?;
        let n = &mut self.nodes[i];
        if let Some(child) = n.agent.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "palisade-agent on {} exited ({status}); last log lines:\n{}",
                    n.name,
                    tail(&n.agent_log, 40)
                );
            }
        }
        Ok(())
    }

    fn wait_agent_ready(&mut self, i: usize, deadline: Instant) -> Result<()> {
        loop {
            self.agent_alive(i)?;
            let last = match self.agent_status(i + 1) {
                Ok(v) if v["ready"] == Value::Bool(true) => return Ok(()),
                Ok(v)
                    if v["notReadyReason"]
                        .as_str()
                        .is_some_and(|r| self.is_expected_route_problem(r)) =>
                {
                    return Ok(())
                }
                Ok(v) => v.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "palisade-agent on {} not ready after {:?}: {last}\n{}",
                    self.nodes[i].name,
                    self.config.programming_timeout,
                    self.agent_log_tail(i + 1, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of a node's agent (1-based node), while it runs.
    pub fn agent_pid(&self, node: usize) -> Option<u32> {
        self.nodes[node - 1].agent.as_ref().map(Child::id)
    }

    /// SIGKILL a node's agent (1-based) and reap it: no chance to clean up, as when the
    /// kubelet or the OOM killer ends it. Its table, routes and sockets stay behind.
    pub fn kill_agent(&mut self, node: usize) {
        stop_child(&mut self.nodes[node - 1].agent);
    }

    /// Start a node's agent again (after [`Cluster::kill_agent`]) and wait until it is ready.
    pub fn restart_agent(&mut self, node: usize) -> Result<()> {
        let bin = self
            .config
            .bins
            .agent
            .clone()
            .ok_or_else(|| anyhow!("this cluster runs no agents of its own"))?;
        if self.config.image.is_some() {
            bail!("restarting an agent is not supported in image mode");
        }
        self.kill_agent(node);
        self.start_agent(node - 1, &bin)?;
        let deadline = Instant::now() + self.config.programming_timeout;
        self.wait_agent_ready(node - 1, deadline)
    }

    /// Restart the API stand-in: stop it (every watch and connection ends), start a new one
    /// on the same address holding the same objects (new uids and resourceVersions, created
    /// before it accepts its first connection), as an API server restored from a backup.
    /// Returns how many objects it holds.
    pub fn restart_api(&mut self) -> Result<usize> {
        if self.config.image.is_some() {
            bail!("restarting the API stand-in is not supported in image mode");
        }
        let old = self.api.take().context("the API stand-in is not running")?;
        let mut objects = Vec::new();
        // Namespaces first: namespaced objects need theirs.
        for kind in [
            Kind::Namespace,
            Kind::Node,
            Kind::Pod,
            Kind::NetworkPolicy,
            Kind::ClusterNetworkPolicy,
        ] {
            for object in old.list(kind, None) {
                objects.push((kind, object));
            }
        }
        drop(old);
        let count = objects.len();
        let addr = self.api_addr;
        let config = ApiServerConfig {
            initial_objects: objects,
            ..ApiServerConfig::default()
        };
        // The old listener is closed; the port may take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let api = loop {
            let config = config.clone();
            match self
                .segment
                .run_inside(move || ApiServer::start_in_thread(addr, config))
            {
                Ok(api) => break api,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("restart the API stand-in"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.api = Some(api);
        Ok(count)
    }

    /// Wait until every agent reports `programmedResourceVersions[kind] >= rv`. Returns how
    /// long that took from the write. Without agents, returns at once.
    pub fn wait_programmed(&mut self, write: ApiWrite) -> Result<Duration> {
        if !self.has_agents() {
            return Ok(write.at.elapsed());
        }
        let deadline = Instant::now() + self.config.programming_timeout;
        let key = write.kind.status_key();
        for i in 0..self.nodes.len() {
            loop {
                self.agent_alive(i)?;
                let last = match self.agent_status(i + 1) {
                    Ok(v) => {
                        let got = &v["programmedResourceVersions"][key];
                        let got = got
                            .as_str()
                            .and_then(|s| s.parse::<u64>().ok())
                            .or_else(|| got.as_u64());
                        if got.is_some_and(|g| g >= write.resource_version) {
                            break;
                        }
                        v.to_string()
                    }
                    Err(e) => format!("{e:#}"),
                };
                if Instant::now() > deadline {
                    bail!(
                        "{} did not program {key} resourceVersion {} within {:?}; its /status: {last}\n{}",
                        self.nodes[i].name,
                        write.resource_version,
                        self.config.programming_timeout,
                        self.agent_log_tail(i + 1, 40)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(write.at.elapsed())
    }

    // ---- namespaces ------------------------------------------------------------------

    pub fn create_namespace(&mut self, name: &str, labels: &Labels) -> Result<ApiWrite> {
        let at = Instant::now();
        let obj = self
            .api()
            .create(
                Kind::Namespace,
                json!({"metadata": {"name": name, "labels": labels}}),
            )
            .map_err(api_err)
            .with_context(|| format!("create namespace {name}"))?;
        self.namespaces.insert(name.to_string(), labels.clone());
        Ok(ApiWrite {
            kind: WatchedKind::Namespaces,
            resource_version: rv_of(&obj)?,
            at,
        })
    }

    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name)
    }

    /// Set a namespace's labels to `labels` (keys absent from it are removed).
    pub fn set_namespace_labels(&mut self, name: &str, labels: &Labels) -> Result<ApiWrite> {
        let current = self
            .namespaces
            .get(name)
            .ok_or_else(|| anyhow!("no namespace {name}"))?
            .clone();
        let obj = self.patch_labels(Kind::Namespace, None, name, &current, labels)?;
        self.namespaces.insert(name.to_string(), labels.clone());
        Ok(ApiWrite {
            kind: WatchedKind::Namespaces,
            resource_version: rv_of(&obj.0)?,
            at: obj.1,
        })
    }

    fn patch_labels(
        &self,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
        current: &Labels,
        wanted: &Labels,
    ) -> Result<(Value, Instant)> {
        let mut changes: Vec<(&str, Option<&str>)> = Vec::new();
        for (k, v) in wanted {
            if current.get(k) != Some(v) {
                changes.push((k, Some(v)));
            }
        }
        for k in current.keys() {
            if !wanted.contains_key(k) {
                changes.push((k, None));
            }
        }
        let at = Instant::now();
        let obj = self
            .api()
            .patch_labels(kind, ns, name, &changes)
            .map_err(api_err)
            .with_context(|| {
                format!(
                    "patch labels of {kind:?} {}{name}",
                    ns.map(|n| format!("{n}/")).unwrap_or_default()
                )
            })?;
        Ok((obj, at))
    }

    // ---- pods ------------------------------------------------------------------------

    /// The node a new pod goes to: its `node` (1-based), else round-robin.
    pub fn place(&mut self, spec: &PodSpec) -> Result<usize> {
        match spec.node {
            Some(n) if n >= 1 && n <= self.nodes.len() => Ok(n),
            Some(n) => bail!(
                "pod {} wants node {n}, the cluster has {} nodes",
                spec.key(),
                self.nodes.len()
            ),
            None => {
                let n = self.round_robin % self.nodes.len() + 1;
                self.round_robin += 1;
                Ok(n)
            }
        }
    }

    /// Create a pod the way kubelet does: publish the Pod object (scheduled on `node`),
    /// CNI ADD (the agent programs the pod before ADD returns), start its listeners, then
    /// report `status.podIPs` and phase Running. Returns the status write.
    pub fn create_pod(&mut self, spec: &PodSpec, node: usize) -> Result<ApiWrite> {
        self.create_pod_with_host_ports(spec, node, &[])
    }

    /// [`Cluster::create_pod`] with hostPort mappings (`runtimeConfig.portMappings`, as CRI
    /// passes a container's `hostPort`s): `(host port, container port)`, TCP.
    pub fn create_pod_with_host_ports(
        &mut self,
        spec: &PodSpec,
        node: usize,
        host_ports: &[(u16, u16)],
    ) -> Result<ApiWrite> {
        let key = spec.key();
        let node_name = self.nodes[node - 1].name.clone();
        let mut pod = self.new_sandbox(spec, node, host_ports)?;
        let t = Instant::now();
        let result = match self.cni(&pod, "ADD") {
            Ok(r) => r,
            Err(e) => {
                // What a runtime does after a failed ADD (CNI spec: DEL follows it).
                let _ = self.cni(&pod, "DEL");
                let _ = pod.netns.remove();
                let _ = self
                    .api()
                    .delete(Kind::Pod, Some(&spec.namespace), &spec.name);
                return Err(e.context(format!("CNI ADD for pod {key} on {node_name}")));
            }
        };
        self.log(format!("CNI ADD {key} on {node_name}: {:?}", t.elapsed()));
        for ip in result["ips"].as_array().into_iter().flatten() {
            let addr = ip["address"].as_str().unwrap_or_default();
            let ip: IpAddr = addr
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("CNI result address {addr:?}"))?;
            pod.ips.push(ip);
        }
        if pod.ips.is_empty() {
            bail!("CNI ADD for {key} returned no IPs: {result}");
        }

        // 3. The "containers": one listener per declared port.
        let ports: Vec<(u16, Protocol)> = spec.ports.iter().map(|p| (p.port, p.protocol)).collect();
        pod.testpod = Some(self.start_testpod(
            &pod.netns,
            &pod.control,
            &ports,
            &pod.control.with_extension("log"),
            &format!("pod {key}"),
        )?);

        // 4. Status: Running with the pod IPs (what peers' selectors need).
        let ips: Vec<Value> = pod
            .ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        let at = Instant::now();
        let obj = self
            .api()
            .merge_patch(
                Kind::Pod,
                Some(&spec.namespace),
                &spec.name,
                &json!({"status": {
                    "phase": "Running",
                    "podIP": pod.ips[0].to_string(),
                    "podIPs": ips,
                    "hostIP": self.nodes[node - 1].ipv4.to_string(),
                }}),
            )
            .map_err(api_err)
            .with_context(|| format!("update status of Pod {key}"))?;
        self.pods.insert(key, pod);
        Ok(ApiWrite {
            kind: WatchedKind::Pods,
            resource_version: rv_of(&obj)?,
            at,
        })
    }

    /// Steps 1 and 2 of a pod's creation: the Pod object as the scheduler leaves it
    /// (`nodeName` set, no IPs yet) and its sandbox, an empty network namespace.
    fn new_sandbox(
        &mut self,
        spec: &PodSpec,
        node: usize,
        host_ports: &[(u16, u16)],
    ) -> Result<Pod> {
        let key = spec.key();
        if self.pods.contains_key(&key) {
            bail!("pod {key} exists already");
        }
        let node_name = self.nodes[node - 1].name.clone();
        let seq = self.next_pod;
        self.next_pod += 1;
        let uid = format!("{:016x}-{seq:04x}", crate::testpod::random_u64());
        let container_id = format!(
            "{:016x}{:016x}{seq:08x}",
            crate::testpod::random_u64(),
            crate::testpod::random_u64()
        );
        let (containers, init_containers) = pod_containers(spec);
        let mut pod_spec = json!({"nodeName": node_name, "containers": containers});
        if !init_containers.is_empty() {
            pod_spec["initContainers"] = Value::Array(init_containers);
        }
        self.api()
            .create(
                Kind::Pod,
                json!({
                    "metadata": {"namespace": spec.namespace, "name": spec.name,
                                 "labels": spec.labels, "uid": uid},
                    "spec": pod_spec,
                    "status": {"phase": "Pending"},
                }),
            )
            .map_err(api_err)
            .with_context(|| format!("create Pod {key}"))?;
        let k = self.prefix.rsplit('-').next().unwrap_or("0");
        let netns = match ClusterNetns::create(&format!(
            "{k}p{seq}-{}",
            sanitize(&format!("{}-{}", spec.namespace, spec.name))
        )) {
            Ok(n) => n,
            Err(e) => {
                let _ = self
                    .api()
                    .delete(Kind::Pod, Some(&spec.namespace), &spec.name);
                return Err(e);
            }
        };
        let control = self.dir.join("pods").join(format!("{seq}.sock"));
        std::fs::create_dir_all(control.parent().unwrap_or(&self.dir))?;
        let port_mappings: Vec<Value> = host_ports
            .iter()
            .map(|(host, container)| {
                json!({"hostPort": host, "containerPort": container, "protocol": "tcp"})
            })
            .collect();
        Ok(Pod {
            spec: spec.clone(),
            node,
            netns,
            container_id,
            uid,
            ips: Vec::new(),
            control,
            labels: spec.labels.clone(),
            port_mappings,
            testpod: None,
        })
    }

    /// A pod whose CNI ADD dies: the plugin is SIGKILLed `kill_after` into ADD (as when the
    /// runtime or the node's OOM killer ends it), then the runtime's cleanup follows: DEL
    /// (CNI spec: after a failed ADD), the sandbox removed, the Pod object deleted. DEL must
    /// succeed. Returns whether ADD had already finished when the kill came (then the kill
    /// changed nothing and DEL undoes a complete ADD).
    pub fn interrupted_add(
        &mut self,
        spec: &PodSpec,
        node: usize,
        kill_after: Duration,
        host_ports: &[(u16, u16)],
    ) -> Result<bool> {
        let key = spec.key();
        let pod = self.new_sandbox(spec, node, host_ports)?;
        let spawned = self.cni_spawn(&pod, "ADD");
        let finished = match spawned {
            Ok(mut child) => {
                std::thread::sleep(kill_after);
                let finished = child.try_wait()?.is_some();
                let _ = child.kill();
                let _ = child.wait();
                finished
            }
            Err(_) => false,
        };
        let del = self.cni(&pod, "DEL");
        let rm = pod.netns.remove();
        let obj = self
            .api()
            .delete(Kind::Pod, Some(&spec.namespace), &spec.name)
            .map_err(api_err);
        del.with_context(|| format!("CNI DEL after the killed ADD of pod {key}"))?;
        rm?;
        obj.with_context(|| format!("delete Pod {key}"))?;
        Ok(finished)
    }

    /// Start `palisade-testpod serve` in `netns` with a listener on each of `ports`, and wait
    /// until its control socket exists.
    fn start_testpod(
        &self,
        netns: &ClusterNetns,
        control: &Path,
        ports: &[(u16, Protocol)],
        log_path: &Path,
        what: &str,
    ) -> Result<Child> {
        let mut cmd = netns.command(&self.config.bins.testpod);
        cmd.arg("serve").arg("--control").arg(control);
        for (port, protocol) in ports {
            let flag = match protocol {
                Protocol::Tcp => "--tcp",
                Protocol::Udp => "--udp",
                Protocol::Sctp => "--sctp",
            };
            cmd.arg(flag).arg(port.to_string());
        }
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::File::create(log_path)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start palisade-testpod")?;
        cleanup::register_process(child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !control.exists() {
            let failed = match child.try_wait()? {
                Some(st) => Some(format!("exited ({st}): {}", tail(log_path, 10))),
                None if Instant::now() > deadline => Some("did not start listening".into()),
                None => None,
            };
            if let Some(why) = failed {
                let mut child = Some(child);
                stop_child(&mut child);
                bail!("palisade-testpod for {what} {why}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(child)
    }

    /// Run the CNI plugin for `pod` with `command` inside the pod's node, as a runtime does.
    fn cni(&self, pod: &Pod, command: &str) -> Result<Value> {
        let child = self.cni_spawn(pod, command)?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "palisade {command} failed ({}): stdout {} stderr {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if command == "DEL" {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).with_context(|| format!("parse CNI result {stdout:?}"))
    }

    /// Start the CNI plugin for `pod` with `command` and its config on stdin.
    fn cni_spawn(&self, pod: &Pod, command: &str) -> Result<Child> {
        let node = &self.nodes[pod.node - 1];
        let list = &node.conflist;
        // What a runtime feeds a plugin of a list: its config plus the list's name/version.
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if !pod.port_mappings.is_empty() {
            // What a runtime derives from `capabilities: {portMappings: true}`.
            conf["runtimeConfig"] = json!({"portMappings": pod.port_mappings});
        }
        let (mut cmd, cni_path) = match image::installed_plugin(node, &plugin_type(&conf)?) {
            // Image mode: the plugin and config that the node's pod installed, run as the
            // node's runtime runs them.
            Some(cmd) => (cmd?, image::installed_cni_path().to_string()),
            None => {
                let cni_dir = self
                    .config
                    .bins
                    .cni
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                (
                    node.netns.command(&self.config.bins.cni),
                    format!("{cni_dir}:/opt/cni/bin:/usr/lib/cni"),
                )
            }
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", pod.netns.path())
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    pod.spec.namespace, pod.spec.name, pod.container_id, pod.uid
                ),
            )
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("run the palisade CNI plugin")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(serde_json::to_string(&conf)?.as_bytes())?;
        Ok(child)
    }

    /// Delete a pod as kubelet does: stop its containers, CNI DEL, remove the sandbox, then
    /// the Pod object goes away. Returns the delete write.
    pub fn delete_pod(&mut self, key: &PodRef) -> Result<ApiWrite> {
        let mut pod = self
            .pods
            .remove(key)
            .ok_or_else(|| anyhow!("no pod {key}"))?;
        stop_child(&mut pod.testpod);
        let del = self.cni(&pod, "DEL");
        let rm = pod.netns.remove();
        let at = Instant::now();
        let obj = self
            .api()
            .delete(Kind::Pod, Some(&key.namespace), &key.name)
            .map_err(api_err)
            .with_context(|| format!("delete Pod {key}"))?;
        del.with_context(|| format!("CNI DEL for pod {key}"))?;
        rm?;
        Ok(ApiWrite {
            kind: WatchedKind::Pods,
            resource_version: rv_of(&obj)?,
            at,
        })
    }

    /// Set a pod's labels to `labels`.
    pub fn set_pod_labels(&mut self, key: &PodRef, labels: &Labels) -> Result<ApiWrite> {
        let current = self
            .pods
            .get(key)
            .ok_or_else(|| anyhow!("no pod {key}"))?
            .labels
            .clone();
        let (obj, at) =
            self.patch_labels(Kind::Pod, Some(&key.namespace), &key.name, &current, labels)?;
        if let Some(p) = self.pods.get_mut(key) {
            p.labels = labels.clone();
        }
        Ok(ApiWrite {
            kind: WatchedKind::Pods,
            resource_version: rv_of(&obj)?,
            at,
        })
    }

    pub fn pod_ip(&self, key: &PodRef, family: Family) -> Option<IpAddr> {
        self.pods.get(key).and_then(|p| p.ip(family))
    }

    // ---- policies --------------------------------------------------------------------

    /// Create or replace a NetworkPolicy or ClusterNetworkPolicy (its `kind` says which; PUT
    /// semantics when it exists). `Ok(Err(_))` is the API's refusal (e.g. 422 Invalid), which
    /// scenarios may expect.
    pub fn apply_policy(&self, policy: Value) -> Result<Result<(Value, ApiWrite), ApiError>> {
        let at = Instant::now();
        let (kind, watched) = policy_kinds(policy_kind(&policy));
        let has_name = policy["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let r = if has_name {
            self.api().apply(kind, policy)
        } else {
            self.api().create(kind, policy)
        };
        Ok(match r {
            Ok(obj) => {
                let w = ApiWrite {
                    kind: watched,
                    resource_version: rv_of(&obj)?,
                    at,
                };
                Ok((obj, w))
            }
            Err(e) => Err(e),
        })
    }

    /// Delete a policy (`namespace` is ignored for the cluster-scoped kind).
    pub fn delete_policy(
        &self,
        policy: PolicyKind,
        namespace: &str,
        name: &str,
    ) -> Result<ApiWrite> {
        let at = Instant::now();
        let (kind, watched) = policy_kinds(policy);
        let namespace = kind.namespaced().then_some(namespace);
        let obj = self
            .api()
            .delete(kind, namespace, name)
            .map_err(api_err)
            .with_context(|| {
                format!(
                    "delete {} {}{name}",
                    kind.name(),
                    namespace.map(|n| format!("{n}/")).unwrap_or_default()
                )
            })?;
        Ok(ApiWrite {
            kind: watched,
            resource_version: rv_of(&obj)?,
            at,
        })
    }

    // ---- probing ---------------------------------------------------------------------

    /// Probe every (source, destination) cell over `family`.
    pub fn probe(
        &self,
        protocol: Protocol,
        port: u16,
        family: Family,
        cells: &[(PodRef, Destination)],
        expected: Option<&Matrix>,
        retry_blocked: usize,
    ) -> Result<Matrix> {
        let mut jobs = Vec::new();
        for (s, d) in cells {
            let src = self
                .pods
                .get(s)
                .ok_or_else(|| anyhow!("probe from unknown pod {s}"))?;
            let (dst_control, ip) = match d {
                Destination::Pod(d) => {
                    let dst = self
                        .pods
                        .get(d)
                        .ok_or_else(|| anyhow!("probe to unknown pod {d}"))?;
                    let ip = dst
                        .ip(family)
                        .ok_or_else(|| anyhow!("pod {d} has no {family} address"))?;
                    (dst.control.clone(), ip)
                }
                // The kernel here has no SCTP sockets: the external host could only say that
                // an INIT arrived, which happens with masquerade off too, not that a
                // connection completed, which is what a cell towards it means.
                Destination::External if protocol == Protocol::Sctp => bail!(
                    "SCTP probes to the external host are not supported (no SCTP sockets to \
                     complete a connection with)"
                ),
                Destination::External => {
                    let host = self
                        .external
                        .as_ref()
                        .ok_or_else(|| anyhow!("this cluster has no external host"))?;
                    (host.control.clone(), self.external_ip(family))
                }
            };
            jobs.push(probe::Cell {
                src: s.to_string(),
                dst: d.to_string(),
                src_control: src.control.clone(),
                dst_control,
                dst_ip: ip,
                expected: expected.and_then(|m| m.get(&s.to_string(), &d.to_string())),
            });
        }
        probe::run(
            &jobs,
            protocol,
            port,
            self.config.probe_timeout,
            self.config.probe_concurrency,
            retry_blocked,
        )
    }

    // ---- teardown --------------------------------------------------------------------

    /// Stop everything and remove every namespace and file of this cluster. Reports every
    /// failure at the end rather than stopping at the first.
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        let pods: Vec<PodRef> = self.pods.keys().cloned().collect();
        for key in pods {
            if let Some(mut pod) = self.pods.remove(&key) {
                stop_child(&mut pod.testpod);
                if let Err(e) = pod.netns.remove() {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if let Err(e) = self.stop_node_pods() {
            errors.push(format!("{e:#}"));
        }
        for n in &mut self.nodes {
            stop_child(&mut n.agent);
        }
        if let Some(mut host) = self.external.take() {
            stop_child(&mut host.testpod);
            if let Err(e) = host.netns.remove() {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(api) = self.api.take() {
            drop(api);
        }
        for n in &self.nodes {
            if let Err(e) = n.netns.remove() {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = self.segment.remove() {
            errors.push(format!("{e:#}"));
        }
        if std::env::var_os("PALISADE_KEEP_RUN_DIR").is_none() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                errors.push(format!("remove {}: {e}", self.dir.display()));
            }
        }
        cleanup::forget_dir(&self.dir);
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("teardown: {}", errors.join("; "))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// Give `ns` an `eth0` on `subnet`'s bridge (port `seg_if`) with these addresses, and routes
/// to the topology's other subnets through the router. The peer is created straight in `ns`
/// (one request, nothing in the root namespace).
fn attach_to_segment(
    seg: &ClusterNetns,
    seg_if: &str,
    ns: &ClusterNetns,
    subnet: Subnet,
    topology: Topology,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
) -> Result<()> {
    seg.ip(&[
        "link",
        "add",
        seg_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    seg.ip(&["link", "set", seg_if, "master", subnet.bridge, "up"])?;
    ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
    ns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    let (router4, router6) = subnet.router();
    for other in topology.beyond(subnet) {
        let (v4, v6) = other.cidrs();
        ns.ip(&["route", "add", &v4, "via", &router4.to_string()])?;
        ns.ip(&["-6", "route", "add", &v6, "via", &router6.to_string()])?;
    }
    Ok(())
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
        cleanup::forget_process(c.id());
    }
}

/// The pod's containers as the API has them: the main container with its ports, and for
/// ports marked `container: init-sidecar` an init container with `restartPolicy: Always`.
fn pod_containers(spec: &PodSpec) -> (Vec<Value>, Vec<Value>) {
    let port = |p: &crate::scenario::PortSpec| {
        let mut v = json!({"containerPort": p.port, "protocol": p.protocol.as_str()});
        if let Some(n) = &p.name {
            v["name"] = json!(n);
        }
        v
    };
    let main: Vec<Value> = spec
        .ports
        .iter()
        .filter(|p| p.container == ContainerKind::Main)
        .map(port)
        .collect();
    let sidecar: Vec<Value> = spec
        .ports
        .iter()
        .filter(|p| p.container == ContainerKind::InitSidecar)
        .map(port)
        .collect();
    let containers = vec![json!({"name": "main", "image": "palisade-testpod", "ports": main})];
    let init = if sidecar.is_empty() {
        Vec::new()
    } else {
        vec![json!({"name": "sidecar", "image": "palisade-testpod",
                    "restartPolicy": "Always", "ports": sidecar})]
    };
    (containers, init)
}

/// The `type` of a plugin config.
fn plugin_type(conf: &Value) -> Result<String> {
    conf["type"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("plugin config without a type: {conf}"))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect()
}

/// The last `lines` lines of a file ("" when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].iter().map(|l| format!("{l}\n")).collect()
}

/// A TCP forwarder from 127.0.0.1:PORT in the root namespace (loopback traffic, allowed) to
/// the API stand-in inside the segment namespace, so that a person's `kubectl` reaches the
/// cluster. Stops accepting when dropped.
pub struct LoopbackProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for LoopbackProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Cluster {
    /// Expose the API stand-in on 127.0.0.1 of the root namespace and write a kubeconfig for
    /// it (`<run dir>/kubeconfig-local`).
    pub fn expose_api_on_loopback(&self) -> Result<(LoopbackProxy, PathBuf)> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("bind loopback")?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let segment = self.segment.clone();
        let target = self.api_addr;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(upstream) = segment.connect(target, Duration::from_secs(5)) else {
                    continue;
                };
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pipe(client, upstream));
                std::thread::spawn(move || pipe(u2, c2));
            }
        });
        let path = self.dir.join("kubeconfig-local");
        std::fs::write(
            &path,
            crate::apiserver::kubeconfig_yaml(&format!("http://127.0.0.1:{port}")),
        )?;
        Ok((LoopbackProxy { port, stop }, path))
    }
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}
