//! `palisade-agent`: the node agent (default subcommand `run`), plus `install-cni` and
//! `uninstall` for the DaemonSet's init container and for removal.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use palisade_policy::agent::logging::{self, LogFormat};
use palisade_policy::agent::routes::overlay::{
    OverlayMode, VxlanSettings, DEFAULT_VXLAN_PORT, DEFAULT_VXLAN_VNI,
};
use palisade_policy::agent::{self, AgentConfig, MetricsListen, NewPods};
use palisade_policy::compile::MasqueradeOptions;
use palisade_policy::install;
use palisade_policy::kube::Slim;
use palisade_policy::model::{api, NodeInfo};
use palisade_policy::nft::{NftDataplane, NftOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "palisade-agent",
    version,
    about = "Palisade node agent: NetworkPolicy enforced with nftables"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent (the default).
    Run(RunArgs),
    /// Install the CNI plugin binary and the node's conflist (DaemonSet init container).
    InstallCni(InstallArgs),
    /// Remove the conflist, the plugin binary and Palisade's nftables tables.
    Uninstall(UninstallArgs),
    /// Do nothing until terminated: keeps the uninstall DaemonSet's pod Ready after its init
    /// container cleaned the node (the image has no shell or `sleep`).
    #[command(hide = true)]
    SleepForever,
}

/// A comma-separated list of CIDRs (`10.0.0.0/8,fd00::/8`); empty means none, so that a
/// ConfigMap key left empty works.
#[derive(Debug, Clone, Default)]
struct CidrList(Vec<ipnet::IpNet>);

fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net: ipnet::IpNet = item
            .parse()
            .map_err(|_| format!("{item:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8)"))?;
        if net.trunc() != net {
            return Err(format!(
                "{item}: host bits set (the network is {})",
                net.trunc()
            ));
        }
        out.push(net);
    }
    Ok(CidrList(out))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected true or false, got {s}")),
    }
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// This node's name (Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Kubeconfig; else $KUBECONFIG (a list, merged as kubectl does), ~/.kube/config or the
    /// in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Unix socket for the CNI plugin.
    #[arg(long, default_value = palisade_common::DEFAULT_AGENT_SOCKET)]
    cni_socket: PathBuf,
    /// Address of the metrics listener (/metrics, /healthz, /readyz): IP:PORT, or :PORT for
    /// every address of the node (dual-stack).
    #[arg(long, default_value = ":9464")]
    metrics_listen: MetricsListen,
    /// Unix socket (mode 0600) for /status, /debug/state and /drops, which name every pod,
    /// label and policy: only root on the node may read them.
    #[arg(long, default_value = agent::DEFAULT_DEBUG_SOCKET)]
    debug_socket: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,
    #[arg(long, default_value_t = 10)]
    min_sync_interval_ms: u64,
    #[arg(long, default_value_t = 1000)]
    max_sync_interval_ms: u64,
    /// Traffic towards a new pod before the agent has programmed it.
    #[arg(long, value_enum, default_value = "fail-closed")]
    new_pods: NewPods,
    /// NFLOG group for denied-packet logs; 0 disables them.
    #[arg(long, default_value_t = 100)]
    nflog_group: u16,
    /// Denied-packet log lines per second, at most.
    #[arg(long, default_value_t = 10)]
    deny_log_rate: u32,
    /// Keep routes to the other nodes' pod CIDRs.
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    manage_routes: bool,
    /// How pod traffic reaches other nodes: never (routes via their InternalIPs; the nodes
    /// share a layer-2 network), always (VXLAN to every node), cross-subnet (VXLAN to nodes
    /// outside this node's subnet only).
    #[arg(long, value_enum, default_value = "never")]
    overlay: OverlayMode,
    /// UDP port of the VXLAN overlay.
    #[arg(long, default_value_t = DEFAULT_VXLAN_PORT)]
    vxlan_port: u16,
    /// VXLAN network identifier of the overlay (1..16777215).
    #[arg(long, default_value_t = DEFAULT_VXLAN_VNI, value_parser = clap::value_parser!(u32).range(1..=0xff_ffff))]
    vxlan_vni: u32,
    /// Masquerade IPv4 traffic of this node's pods to destinations outside the cluster's pod
    /// CIDRs and --non-masquerade-cidrs (it leaves with the node's address).
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    masquerade_ipv4: bool,
    /// The same for IPv6 (turn it off alone where pod IPv6 addresses are routable).
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    masquerade_ipv6: bool,
    /// Comma-separated CIDRs that pods reach with their own address (never masqueraded),
    /// besides the pod CIDRs; empty: none.
    #[arg(long, default_value = "", value_parser = parse_cidr_list)]
    non_masquerade_cidrs: CidrList,
    /// Comma-separated pod CIDRs of the cluster, besides every Node's spec.podCIDRs (never
    /// masqueraded either); empty: the Nodes' alone.
    #[arg(long, default_value = "", value_parser = parse_cidr_list)]
    cluster_cidrs: CidrList,
    #[arg(long, default_value = palisade_common::POLICY_TABLE)]
    table: String,
    #[arg(long, default_value = "/usr/sbin/nft")]
    nft: PathBuf,
    /// Send transactions that only add or remove set and map elements (pod churn) as one
    /// nf_tables netlink batch instead of running nft; everything else always runs nft.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    netlink_elements: bool,
    /// Test hook: while this file exists, no sync starts (a test holds the agent between
    /// learning of a change and programming it). Not for production: nothing else enables it.
    #[arg(long, hide = true)]
    test_sync_gate: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct InstallArgs {
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// As for `run`.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(long)]
    cni_bin_dir: PathBuf,
    #[arg(long)]
    cni_conf_dir: PathBuf,
    /// Conflist template with the pod CIDR placeholder.
    #[arg(long)]
    template: PathBuf,
    /// The `palisade` plugin binary to install.
    #[arg(long)]
    plugin_binary: PathBuf,
    /// How long to wait for the Node to get spec.podCIDRs.
    #[arg(long, default_value_t = 300)]
    wait_seconds: u64,
    /// The agent's --overlay: the pods' MTU leaves room for VXLAN unless it is never.
    #[arg(long, value_enum, default_value = "never")]
    overlay: OverlayMode,
}

#[derive(Args, Debug)]
struct UninstallArgs {
    #[arg(long)]
    cni_bin_dir: PathBuf,
    #[arg(long)]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = palisade_common::POLICY_TABLE)]
    table: String,
    #[arg(long, default_value = "/usr/sbin/nft")]
    nft: PathBuf,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
        Some(Command::InstallCni(args)) => {
            logging::init(LogFormat::Text, "info");
            runtime().and_then(|rt| rt.block_on(install_cni(args)))
        }
        Some(Command::Uninstall(args)) => {
            logging::init(LogFormat::Text, "info");
            install::uninstall(
                &args.cni_bin_dir,
                &args.cni_conf_dir,
                &args.nft.to_string_lossy(),
                &[&args.table, palisade_common::HOSTPORT_TABLE],
            )
        }
        Some(Command::SleepForever) => loop {
            std::thread::park();
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("palisade-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Two workers: the agent's work is one sync worker plus I/O; nft runs as a child process.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build tokio runtime")
}

fn run(args: RunArgs) -> Result<()> {
    logging::init(args.log_format, &args.log_level);
    let Some(node_name) = args.node_name.clone().filter(|n| !n.is_empty()) else {
        bail!("--node-name (or NODE_NAME) is required");
    };
    let config = AgentConfig {
        node_name,
        kubeconfig: args.kubeconfig.clone(),
        cni_socket: args.cni_socket.clone(),
        metrics_listen: args.metrics_listen,
        debug_socket: args.debug_socket.clone(),
        new_pods: args.new_pods,
        nflog_group: (args.nflog_group != 0).then_some(args.nflog_group),
        deny_log_rate: args.deny_log_rate,
        manage_routes: args.manage_routes,
        overlay: args.overlay,
        vxlan: VxlanSettings {
            port: args.vxlan_port,
            vni: args.vxlan_vni,
        },
        masquerade: MasqueradeOptions {
            ipv4: args.masquerade_ipv4,
            ipv6: args.masquerade_ipv6,
            non_masquerade_cidrs: args.non_masquerade_cidrs.0.clone(),
            cluster_cidrs: args.cluster_cidrs.0.clone(),
        },
        table: args.table.clone(),
        nft: args.nft.clone(),
        sync: agent::SyncTuning {
            test_gate: args.test_sync_gate.clone(),
            ..agent::sync_tuning(args.min_sync_interval_ms, args.max_sync_interval_ms)
        },
    };
    runtime()?.block_on(async move {
        let client = kube_client(config.kubeconfig.clone()).await?;
        let dataplane = NftDataplane::new(NftOptions {
            table: config.table.clone(),
            nft: config.nft.clone(),
            netns: None,
            netlink_elements: args.netlink_elements,
            ..NftOptions::default()
        });
        let running = agent::start(config, client, Box::new(dataplane)).await?;
        tokio::select! {
            _ = shutdown_signal() => {
                // The table stays: the rules keep being enforced while the agent is away
                // (restart, upgrade); `uninstall` removes it.
                tracing::info!("signal received; exiting, rules stay in force");
            }
            _ = running.wait() => bail!("sync worker stopped"),
        }
        Ok(())
    })
}

async fn kube_client(path: Option<PathBuf>) -> Result<kube::Client> {
    let choice = palisade_policy::kube::config::KubeconfigChoice {
        path,
        context: None,
    };
    let (client, origin) = palisade_policy::kube::config::client(&choice).await?;
    tracing::info!(%origin, "API server");
    Ok(client)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn install_cni(args: InstallArgs) -> Result<()> {
    let client = kube_client(args.kubeconfig.clone()).await?;
    let nodes: kube::Api<Slim<api::Node>> = kube::Api::all(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_seconds);
    let node = loop {
        match nodes.get(&args.node_name).await {
            Ok(node) => match node.body {
                Ok(node) => {
                    let info = NodeInfo::from_api(&node);
                    if !info.pod_cidrs.is_empty() {
                        break info;
                    }
                    tracing::info!(node = %args.node_name, "node has no spec.podCIDRs yet; waiting");
                }
                Err(e) => bail!("node {}: cannot decode: {e}", args.node_name),
            },
            Err(e) => tracing::warn!(node = %args.node_name, error = %e, "get node"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "node {} got no spec.podCIDRs within {}s",
                args.node_name,
                args.wait_seconds
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let template = std::fs::read_to_string(&args.template)
        .with_context(|| format!("read conflist template {}", args.template.display()))?;
    // The MTU is measured when the template asks for it, and with an overlay also to warn
    // about a fixed one that is too large for it.
    let mtu = if template.contains(install::MTU_PLACEHOLDER) || args.overlay != OverlayMode::Never {
        Some(install::pod_mtu_here(args.overlay, &node.internal_ips)?)
    } else {
        None
    };
    let cfg = install::InstallConfig {
        cni_bin_dir: args.cni_bin_dir,
        cni_conf_dir: args.cni_conf_dir,
        plugin_binary: args.plugin_binary,
        template,
    };
    let conflist = install::install_cni(&cfg, &args.node_name, &node.pod_cidrs, mtu)?;
    if let Some(limit) = mtu.filter(|_| args.overlay != OverlayMode::Never) {
        for fixed in install::mtus_above(&conflist, limit) {
            tracing::warn!(
                template_mtu = fixed,
                overlay_mtu = limit,
                "the conflist template's fixed mtu exceeds what the overlay carries: pods \
                 depend on path MTU discovery (use \"__PALISADE_MTU__\" to have it detected)"
            );
        }
    }
    tracing::info!(node = %args.node_name, pod_cidrs = ?node.pod_cidrs, ?mtu, overlay = %args.overlay, "CNI plugin and conflist installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists_from_configmap_values() {
        assert!(parse_cidr_list("").unwrap().0.is_empty(), "empty key: none");
        let l = parse_cidr_list("10.0.0.0/8, fd00::/8,").unwrap().0;
        assert_eq!(
            l,
            ["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
        );
        let e = parse_cidr_list("10.0.0.5/8").unwrap_err();
        assert!(
            e.contains("host bits set") && e.contains("10.0.0.0/8"),
            "{e}"
        );
        let e = parse_cidr_list("10.0.0.0/8;192.0.2.0/24").unwrap_err();
        assert!(e.contains("is not a CIDR"), "{e}");
    }

    #[test]
    fn masquerade_is_on_by_default_and_switched_per_family() {
        let cli = Cli::try_parse_from(["palisade-agent", "--node-name", "n"]).unwrap();
        assert!(cli.run.masquerade_ipv4 && cli.run.masquerade_ipv6);
        let cli = Cli::try_parse_from([
            "palisade-agent",
            "run",
            "--masquerade-ipv6=false",
            "--non-masquerade-cidrs=192.0.2.0/24",
        ])
        .unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("run")
        };
        assert!(run.masquerade_ipv4 && !run.masquerade_ipv6);
        assert_eq!(run.non_masquerade_cidrs.0.len(), 1);
    }
}
