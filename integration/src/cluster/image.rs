//! Image mode: every node runs Palisade from its image, started the way kubelet starts
//! `conf/`'s DaemonSet (read from `kubectl kustomize conf` at run time), instead of the
//! host's freshly built binaries. Per node:
//!
//! 1. kubelet's preparations ([`crate::kubelet::prepare_pod`]): the DaemonSet's hostPaths
//!    become directories under `<run dir>/node-N/host/` (the node's file system), the
//!    ConfigMap volume and the service account (token, the run's CA, namespace) become files;
//! 2. the init containers run to completion (`install-cni` puts the plugin and the conflist
//!    into the node's `/opt/cni/bin` and `/etc/cni/net.d`); all nodes at once;
//! 3. the containers start; each one's process is checked against its resolved
//!    securityContext (capabilities, no_new_privs, seccomp, read-only root, user) and the
//!    cluster does not start if it differs;
//! 4. the readiness probe must pass, and the liveness probe once (containers are not
//!    restarted: one that exits, or fails its liveness probe at start, fails the cluster);
//! 5. from then on the node's pods are wired by the plugin and the config that the pod
//!    installed ([`crate::kubelet::cni::NodeCni`]).
//!
//! The pods reach the API stand-in as in-cluster clients do: `KUBERNETES_SERVICE_HOST`/`_PORT`
//! name its HTTPS listener (port 443 on the segment bridge), with a per-cluster CA and token.

use super::{Cluster, Node};
use crate::apiserver::tls::{ClusterCa, TlsListener};
use crate::kubelet::cni::NodeCni;
use crate::kubelet::manifests::Manifests;
use crate::kubelet::podman::{layout_reference, ImageStore, Launch};
use crate::kubelet::podspec::{plan_pod, ApiAccess, ContainerPlan, NodeFacts, PodPlan};
use crate::kubelet::security::ProcessSecurity;
use crate::kubelet::{prepare_pod, probe};
use crate::scenario::Family;
use anyhow::{anyhow, bail, Context, Result};
use palisade_policy::agent::routes::overlay::OverlayMode;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The API stand-in's HTTPS port (the `kubernetes` Service's port).
pub const API_TLS_PORT: u16 = 443;
/// The segment bridge's addresses, where the stand-in listens.
pub const API_IPV4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const API_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

/// What image mode shares across the clusters of a run: the manifests and the loaded image.
pub struct ImageMode {
    pub manifests: Manifests,
    pub store: ImageStore,
    /// The family of `KUBERNETES_SERVICE_HOST` (the run's).
    pub api_family: Family,
}

impl std::fmt::Debug for ImageMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageMode")
            .field("image", &self.store.image)
            .finish_non_exhaustive()
    }
}

impl ImageMode {
    /// Render `conf_dir`, set the `config` keys of the DaemonSet's ConfigMap (as an operator
    /// edits it before applying), check that the DaemonSet can be run (a field that cannot
    /// be honoured stops here, before any cluster), and load the image of `layout` (an OCI
    /// layout directory, or `DIR:REF`) into a storage at `store_dir`.
    pub fn new(
        conf_dir: &Path,
        config: &[(String, String)],
        layout: &Path,
        store_dir: &Path,
        api_family: Family,
    ) -> Result<ImageMode> {
        let mut manifests = Manifests::kustomize(conf_dir)?;
        set_config(&mut manifests, config)?;
        let probe_node = NodeFacts {
            name: "node-1".into(),
            ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
            host_root: store_dir.join("check/host"),
            pod_dir: store_dir.join("check/pod"),
        };
        let api = ApiAccess {
            host: IpAddr::V4(API_IPV4),
            port: API_TLS_PORT,
            ca_pem: String::new(),
            token: String::new(),
        };
        // Nothing is written: planning is pure.
        let plan = plan_for(&manifests, &probe_node, &api)
            .with_context(|| format!("the DaemonSet of {}", conf_dir.display()))?;
        let (layout, reference) = layout_reference(layout)?;
        let store = ImageStore::load(store_dir, &layout, &reference, &plan.image)?;
        Ok(ImageMode {
            manifests,
            store,
            api_family,
        })
    }

    /// The manifests with these ConfigMap `config` values set (a cluster's own settings).
    fn manifests_with(&self, config: &[(String, String)]) -> Result<Manifests> {
        let mut m = self.manifests.clone();
        set_config(&mut m, config)?;
        Ok(m)
    }

    /// The hostPaths of the DaemonSet (the node paths its pod shares with the node).
    fn host_paths(plan: &PodPlan) -> Vec<String> {
        plan.host_paths.iter().map(|h| h.path.clone()).collect()
    }
}

/// The DaemonSet's pod on `node`.
fn plan_for(manifests: &Manifests, node: &NodeFacts, api: &ApiAccess) -> Result<PodPlan> {
    plan_pod(
        manifests.daemonset()?,
        &|ns, name| manifests.configmap(ns, name).cloned(),
        node,
        api,
    )
}

/// Set keys of the DaemonSet's ConfigMap.
fn set_config(manifests: &mut Manifests, config: &[(String, String)]) -> Result<()> {
    if config.is_empty() {
        return Ok(());
    }
    let (namespace, name) = settings_configmap(manifests)?;
    for (key, value) in config {
        manifests.set_configmap_value(&namespace, &name, key, value)?;
    }
    Ok(())
}

/// The ConfigMap a `--config KEY=VALUE` edits: the one in the DaemonSet's namespace.
fn settings_configmap(m: &Manifests) -> Result<(String, String)> {
    let ns = m.daemonset()?["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let names: Vec<&str> = m
        .objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["namespace"] == ns.as_str())
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    match names.as_slice() {
        [one] => Ok((ns, one.to_string())),
        _ => bail!(
            "--config needs exactly one ConfigMap in namespace {ns}, the manifests have {}",
            names.len()
        ),
    }
}

/// The HTTPS listener the pods use, for this cluster (a fresh CA and token).
pub fn api_listener() -> Result<TlsListener> {
    let ca = ClusterCa::generate(&[IpAddr::V4(API_IPV4), IpAddr::V6(API_IPV6)])?;
    Ok(TlsListener {
        addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), API_TLS_PORT),
        ca: Arc::new(ca),
        bearer_token: format!(
            "palisade-agent-{:016x}{:016x}",
            crate::testpod::random_u64(),
            crate::testpod::random_u64()
        ),
    })
}

/// Where the node sees the agent container's debug socket: the path of its
/// `--debug-socket` argument (or the agent's default), through the mount that holds it.
fn debug_socket_on_node(agent: &ContainerPlan) -> Result<PathBuf> {
    let argv: Vec<&String> = agent.command.iter().chain(&agent.args).flatten().collect();
    let path = argv
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--debug-socket") {
            Some(v) if v.starts_with('=') => Some(v[1..].to_string()),
            Some("") => argv.get(i + 1).map(|v| v.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| palisade_policy::agent::DEFAULT_DEBUG_SOCKET.to_string());
    node_view(agent, &path).ok_or_else(|| {
        anyhow!(
            "{path} is on no volume of container {}: the node cannot reach it",
            agent.name
        )
    })
}

/// Where a path inside a container is on the node: under the source of the deepest mount
/// that holds it.
fn node_view(c: &ContainerPlan, path: &str) -> Option<PathBuf> {
    c.mounts
        .iter()
        .filter_map(|m| {
            let rest = Path::new(path).strip_prefix(&m.target).ok()?;
            Some((m.target.len(), m.source.join(rest)))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, p)| p)
}

/// A node's pod in image mode.
pub struct NodePod {
    pub plan: PodPlan,
    /// The running containers.
    pub containers: Vec<RunningContainer>,
    /// How the node's runtime runs CNI (the installed plugin and config).
    pub cni: NodeCni,
}

pub struct RunningContainer {
    /// podman's name for it.
    pub name: String,
    /// Its first process, on the machine.
    pub pid: u32,
    pub log: PathBuf,
}

fn container_name(cluster: &Cluster, node: &Node, container: &str) -> String {
    format!("{}-n{}-{container}", cluster.prefix, node.index)
}

fn log_path(node: &Node, container: &str) -> PathBuf {
    node.dir.join(format!("{container}.log"))
}

/// Whether a process still runs (not gone, not a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

impl Cluster {
    fn image_mode(&self) -> Result<Arc<ImageMode>> {
        self.config
            .image
            .clone()
            .ok_or_else(|| anyhow!("not an image-mode cluster"))
    }

    /// Start every node's pod (see the module doc) and wait until all are ready.
    pub(super) fn start_node_pods(&mut self, tls: &TlsListener) -> Result<()> {
        let mode = self.image_mode()?;
        let api = ApiAccess {
            host: match mode.api_family {
                Family::V4 => IpAddr::V4(API_IPV4),
                Family::V6 => IpAddr::V6(API_IPV6),
            },
            port: tls.addr.port(),
            ca_pem: tls.ca.ca_pem.clone(),
            token: tls.bearer_token.clone(),
        };
        // The scenario's cluster settings, as an operator would set them: in the ConfigMap.
        let mut config = Vec::new();
        if !self.config.masquerade {
            for key in ["masquerade-ipv4", "masquerade-ipv6"] {
                config.push((key.to_string(), "false".to_string()));
            }
        }
        if self.config.overlay != OverlayMode::Never {
            config.push(("overlay".to_string(), self.config.overlay.to_string()));
        }
        let manifests = mode.manifests_with(&config)?;
        let t0 = Instant::now();
        let mut plans = Vec::new();
        for n in &self.nodes {
            let facts = NodeFacts {
                name: n.name.clone(),
                ips: vec![IpAddr::V4(n.ipv4), IpAddr::V6(n.ipv6)],
                host_root: n.dir.join("host"),
                pod_dir: n.dir.join("pod"),
            };
            let plan = plan_for(&manifests, &facts, &api)?;
            prepare_pod(&plan).with_context(|| format!("prepare the pod of {}", n.name))?;
            plans.push(plan);
        }

        // Init containers, in order; the same step on every node at once.
        let steps = plans
            .iter()
            .map(|p| p.init_containers.len())
            .max()
            .unwrap_or(0);
        for step in 0..steps {
            let mut running = Vec::new();
            for (n, plan) in self.nodes.iter().zip(&plans) {
                let Some(c) = plan.init_containers.get(step) else {
                    continue;
                };
                let launch = Launch {
                    name: container_name(self, n, &c.name),
                    container: c,
                    pod: plan,
                    netns: n.netns.path(),
                    hostname: &n.name,
                    log: log_path(n, &c.name),
                };
                let child = mode
                    .store
                    .spawn_to_completion(&launch)
                    .with_context(|| format!("start init container {} on {}", c.name, n.name))?;
                running.push((n.name.clone(), c.name.clone(), launch.log, child));
            }
            for (node, cname, log, mut child) in running {
                let status = child.wait()?;
                super::cleanup::forget_process(child.id());
                if !status.success() {
                    bail!(
                        "init container {cname} on {node} failed ({status}); its log:\n{}",
                        super::tail(&log, 30)
                    );
                }
            }
        }
        let t_init = t0.elapsed();

        // The containers of every node at once.
        let (mut launches, mut owners) = (Vec::new(), Vec::new());
        for (i, (n, plan)) in self.nodes.iter().zip(&plans).enumerate() {
            for c in &plan.containers {
                owners.push(i);
                launches.push(Launch {
                    name: container_name(self, n, &c.name),
                    container: c,
                    pod: plan,
                    netns: n.netns.path(),
                    hostname: &n.name,
                    // The agent's log is the node's agent log.
                    log: if c.name == "agent" {
                        n.agent_log.clone()
                    } else {
                        log_path(n, &c.name)
                    },
                });
            }
        }
        let started = mode.store.start_all(&launches).and_then(|pids| {
            let mut started: Vec<Vec<RunningContainer>> =
                (0..self.nodes.len()).map(|_| Vec::new()).collect();
            for ((l, pid), node) in launches.iter().zip(pids).zip(&owners) {
                let uid = mode.store.uid(l.container.security.run_as_user);
                let process = ProcessSecurity::read(pid)?;
                l.container.security.check(&process, uid).with_context(|| {
                    format!(
                        "container {} on {} (pid {pid}) does not run as its securityContext \
                         says",
                        l.container.name, l.hostname
                    )
                })?;
                self.log(format!(
                    "{} {} (pid {pid}): {process}",
                    l.hostname, l.container.name
                ));
                started[*node].push(RunningContainer {
                    name: l.name.clone(),
                    pid,
                    log: l.log.clone(),
                });
            }
            Ok(started)
        });
        let started = match started {
            Ok(s) => s,
            Err(e) => {
                // The nodes do not own them yet: remove what started here.
                let names: Vec<String> = launches.iter().map(|l| l.name.clone()).collect();
                let _ = mode.store.remove(&names, std::time::Duration::ZERO);
                return Err(e);
            }
        };
        drop(launches);
        for (i, (plan, containers)) in plans.into_iter().zip(started).enumerate() {
            let n = &self.nodes[i];
            let cni = NodeCni::load(
                n.netns.path(),
                &n.dir.join("host"),
                &ImageMode::host_paths(&plan),
            )
            .with_context(|| format!("the CNI config installed on {}", n.name))?;
            self.nodes[i].conflist = cni.conflist.clone();
            if let Some(agent) = plan.containers.iter().find(|c| c.name == "agent") {
                // palisadectl on the node talks to the socket the agent's args name, where
                // the node sees it (through the hostPath that holds it).
                self.nodes[i].debug_socket = debug_socket_on_node(agent).with_context(|| {
                    format!("the agent's debug socket on {}", self.nodes[i].name)
                })?;
            }
            self.nodes[i].pod = Some(NodePod {
                plan,
                containers,
                cni,
            });
        }
        let t_started = t0.elapsed();

        let deadline = Instant::now() + self.config.programming_timeout;
        for i in 0..self.nodes.len() {
            let (netns, plan) = {
                let n = &self.nodes[i];
                let pod = n.pod.as_ref().context("pod")?;
                (n.netns.clone(), pod.plan.clone())
            };
            for c in &plan.containers {
                if let Some(p) = &c.readiness {
                    // The answer is "GET ... answered 503: <reason>".
                    let settled = |e: &str| {
                        e.split_once("answered 503: ")
                            .is_some_and(|(_, why)| self.is_expected_route_problem(why))
                    };
                    probe::wait_ready(&netns, p, t0, deadline, &mut || self.pod_alive(i), &settled)
                        .with_context(|| {
                            format!(
                                "{} on {} not ready\n{}",
                                c.name,
                                self.nodes[i].name,
                                self.agent_log_tail(i + 1, 40)
                            )
                        })?;
                }
                if let Some(p) = &c.liveness {
                    probe::attempt(&netns, p).with_context(|| {
                        format!("{} on {}: liveness probe", c.name, self.nodes[i].name)
                    })?;
                }
            }
        }
        self.log(format!(
            "image mode: {} node pods ready in {:?} (init containers {:?}, containers started \
             and checked {:?})",
            self.nodes.len(),
            t0.elapsed(),
            t_init,
            t_started - t_init
        ));
        Ok(())
    }

    /// Err when a container of node `i`'s pod has exited.
    pub(super) fn pod_alive(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let (Some(pod), Some(mode)) = (&n.pod, &self.config.image) else {
            return Ok(());
        };
        for c in &pod.containers {
            if !process_alive(c.pid) {
                bail!(
                    "container {} on {} exited: {}; last log lines:\n{}",
                    c.name,
                    n.name,
                    mode.store.exit_state(&c.name),
                    super::tail(&c.log, 40)
                );
            }
        }
        Ok(())
    }

    /// Stop and remove every node's pod (one podman call).
    pub(super) fn stop_node_pods(&mut self) -> Result<()> {
        let pods: Vec<NodePod> = self.nodes.iter_mut().filter_map(|n| n.pod.take()).collect();
        let Some(mode) = self.config.image.clone() else {
            return Ok(());
        };
        let names: Vec<String> = pods
            .iter()
            .flat_map(|p| p.containers.iter().map(|c| c.name.clone()))
            .collect();
        let grace = pods
            .iter()
            .map(|p| p.plan.termination_grace)
            .max()
            .unwrap_or_default();
        mode.store
            .remove(&names, grace)
            .context("remove the node pods")
    }
}

/// The conflist a node's pods are wired with, and the command that runs a plugin of it.
pub(super) fn installed_plugin(node: &Node, plugin: &str) -> Option<Result<std::process::Command>> {
    node.pod.as_ref().map(|p| p.cni.plugin_command(plugin))
}

/// What a runtime passes as CNI_PATH on the node.
pub(super) fn installed_cni_path() -> &'static str {
    crate::kubelet::cni::CNI_BIN_DIR
}
