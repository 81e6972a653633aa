//! The netns cluster's front end.
//!
//! ```text
//! palisade-scenarios run [--family v4|v6] [--nodes N] [--no-agent] [--routes harness|agent]
//!                        [--topology single|two-subnets] [--overlay never|always|cross-subnet]
//!                        [--agent-arg ARG]... [--retries N] [--jobs N] [-v] PATH...
//! palisade-scenarios run --image OCI_DIR [--conf DIR] [--config KEY=VALUE]... [...] PATH...
//! palisade-scenarios demo [--nodes N] [--family v4|v6] [--pause] [--image OCI_DIR]
//! palisade-scenarios cleanup      # remove leftovers of crashed runs
//! palisade-scenarios kube [--kubeconfig F] [--context C] [--family v4|v6] [--image I]
//!                         [--timeout SECS] [--ready-timeout SECS] [--parallel N] [-v] PATH...
//! ```
//! `integration/run-scenarios` builds the binaries and runs `run`; `integration/demo` runs
//! `demo`; `integration/kind/run.sh` runs `kube` on a kind cluster. `kube` drives a real
//! cluster with `kubectl` and needs no root.
//!
//! With `--image OCI_DIR` (the layout `image/build-oci.sh OUT` makes: OUT/oci), every node
//! runs Palisade from that image under the DaemonSet of `kubectl kustomize conf`, started by
//! podman as kubelet would start it (`palisade_integration::cluster::image`).

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use palisade_integration::cluster::image::ImageMode;
use palisade_integration::cluster::topology::Topology;
use palisade_integration::cluster::{cleanup, netns, Binaries, RouteMode};
use palisade_integration::kube::{self, kubectl::Kubectl, KubeOptions};
use palisade_integration::runner::{collect_files, run_files, RunOptions};
use palisade_integration::scenario::Family;
use palisade_policy::agent::routes::overlay::OverlayMode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "palisade-scenarios",
    about = "Run Palisade scenarios on a local netns cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum FamilyArg {
    V4,
    V6,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoutesArg {
    Harness,
    Agent,
}

/// Image mode's options (shared by `run` and `demo`).
#[derive(clap::Args, Clone)]
struct ImageArgs {
    /// Run every node from this OCI image layout (`image/build-oci.sh OUT` makes OUT/oci;
    /// `DIR:REF` names one image of several) under the DaemonSet of --conf, as kubelet would.
    #[arg(long, value_name = "OCI_DIR")]
    image: Option<PathBuf>,
    /// The kustomization whose DaemonSet and ConfigMap image mode runs.
    #[arg(long, value_name = "DIR", default_value_os_t = default_conf_dir(), requires = "image")]
    conf: PathBuf,
    /// Set a key of the DaemonSet's ConfigMap before running it (repeat), as an operator
    /// edits conf/config/agent.env before applying.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value, requires = "image")]
    config: Vec<(String, String)>,
}

/// `conf/` of the checkout this binary was built from.
fn default_conf_dir() -> PathBuf {
    let integration = Path::new(env!("CARGO_MANIFEST_DIR"));
    integration.parent().unwrap_or(integration).join("conf")
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s}"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenario files (or folders of them) and print `N passed, M failed`.
    Run {
        #[arg(long, value_enum, default_value = "v4")]
        family: FamilyArg,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Run without palisade-agent (wiring only: nothing is enforced).
        #[arg(long, conflicts_with = "image")]
        no_agent: bool,
        /// Who installs the routes to other nodes' pod CIDRs (without agents: the harness).
        #[arg(long, value_enum, default_value = "agent")]
        routes: RoutesArg,
        /// Extra argument for every palisade-agent (repeat). Not with --image: the
        /// DaemonSet's arguments are used as written (see --config).
        #[arg(
            long = "agent-arg",
            allow_hyphen_values = true,
            conflicts_with = "image"
        )]
        agent_args: Vec<String>,
        /// Times a cell observed blocked is probed again.
        #[arg(long, default_value_t = 1)]
        retries: usize,
        /// Directory holding palisade, palisade-agent, palisade-testpod (default: next to
        /// this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The nodes' network: one segment, or two subnets joined by a router that knows no
        /// pod CIDR (odd nodes in one, even nodes in the other).
        #[arg(long, value_enum, default_value = "single")]
        topology: Topology,
        /// The agents' --overlay.
        #[arg(long, value_enum, default_value = "never")]
        overlay: OverlayMode,
        #[command(flatten)]
        image: ImageArgs,
        /// Scenarios run at once, each on its own cluster (results print in file order).
        #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        jobs: u16,
        #[arg(short, long)]
        verbose: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// A 2-node cluster, the chapter's policies applied one by one with kubectl.
    Demo {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, value_enum, default_value = "v4")]
        family: FamilyArg,
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Wait for Enter before each policy.
        #[arg(long)]
        pause: bool,
        #[command(flatten)]
        image: ImageArgs,
    },
    /// Remove namespaces and run directories of crashed runs.
    Cleanup,
    /// Run scenario files on the real cluster kubectl points at (namespaces with the
    /// scenarios' exact names, agnhost pods, probes with `kubectl exec`).
    Kube {
        /// kubectl's --kubeconfig (default: kubectl's own choice, e.g. $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// kubectl's --context.
        #[arg(long)]
        context: Option<String>,
        #[arg(long, default_value = "kubectl")]
        kubectl: PathBuf,
        #[arg(long, value_enum, default_value = "v4")]
        family: FamilyArg,
        /// The agnhost image pods run.
        #[arg(long, default_value = kube::manifest::DEFAULT_AGNHOST_IMAGE)]
        image: String,
        /// Seconds a probe step retries until the observed matrix matches.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Seconds pods may take to be Ready (image pulls), and namespaces to be deleted.
        #[arg(long, default_value_t = 300)]
        ready_timeout: u64,
        /// Probes (`kubectl exec`) run at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        #[arg(short, long)]
        verbose: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() {
    cleanup::harness_main("palisade-scenarios", real_main)
}

fn is_tty() -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(1) == 1 }
}

/// Image mode's manifests and image, loaded once for the whole run into a storage of the
/// run's own (removed at the end, also on Ctrl-C).
fn image_mode(args: &ImageArgs, family: Family) -> Result<Option<Arc<ImageMode>>> {
    let Some(layout) = &args.image else {
        return Ok(None);
    };
    let store = std::env::temp_dir().join(format!("{}-images", netns::run_prefix()));
    let t = std::time::Instant::now();
    let mode = ImageMode::new(&args.conf, &args.config, layout, &store, family)?;
    eprintln!(
        "image mode: {} from {} loaded in {:.1}s; nodes run the DaemonSet of {}",
        mode.store.image,
        layout.display(),
        t.elapsed().as_secs_f64(),
        args.conf.display()
    );
    Ok(Some(Arc::new(mode)))
}

fn bins(dir: Option<PathBuf>, no_agent: bool) -> Result<Binaries> {
    let mut b = match dir {
        Some(d) => Binaries::in_dir(&d),
        None => Binaries::next_to_current_exe()?,
    };
    if no_agent {
        b.agent = None;
    } else if b.agent.is_none() {
        bail!("palisade-agent not found next to palisade (use --no-agent for a wiring-only run)");
    }
    Ok(b)
}

fn real_main() -> Result<i32> {
    let cli = Cli::parse();
    if let Cmd::Kube { .. } = cli.command {
        return kube_main(cli.command);
    }
    cleanup::prepare_root_harness()?;
    let family = |f: FamilyArg| match f {
        FamilyArg::V4 => Family::V4,
        FamilyArg::V6 => Family::V6,
    };
    match cli.command {
        Cmd::Run {
            family: fam,
            nodes,
            no_agent,
            routes,
            agent_args,
            retries,
            bin_dir,
            topology,
            overlay,
            image,
            jobs,
            verbose,
            paths,
        } => {
            if nodes == 0 || nodes > 200 {
                bail!("--nodes must be between 1 and 200");
            }
            let routes = match routes {
                RoutesArg::Harness => RouteMode::Harness,
                RoutesArg::Agent => RouteMode::Agent,
            };
            if image.image.is_some() && routes == RouteMode::Harness {
                bail!("--image runs the agent as shipped, which keeps the routes: no --routes harness");
            }
            let files = collect_files(&paths)?;
            if files.is_empty() {
                bail!("no scenario files (*.yaml) found");
            }
            // The agent binary is not needed in image mode.
            let bins = bins(bin_dir, no_agent || image.image.is_some())?;
            let opts = RunOptions {
                family: family(fam),
                nodes,
                image: image_mode(&image, family(fam))?,
                bins,
                routes,
                agent_args,
                colour: is_tty(),
                verbose,
                retry_blocked: retries,
                topology,
                overlay,
            };
            Ok(if run_files(&files, &opts, usize::from(jobs)) {
                0
            } else {
                1
            })
        }
        Cmd::Demo {
            nodes,
            family: fam,
            bin_dir,
            pause,
            image,
        } => {
            let b = bins(bin_dir, image.image.is_some())?;
            let image = image_mode(&image, family(fam))?;
            palisade_integration::demo::run(nodes, family(fam), b, image, is_tty(), pause)?;
            Ok(0)
        }
        Cmd::Cleanup => {
            for s in netns::sweep_stale_runs(&std::env::temp_dir()) {
                println!("removed {s}");
            }
            Ok(0)
        }
        Cmd::Kube { .. } => unreachable!("handled before the root check"),
    }
}

/// `kube`: no root, no netns cluster; this run's namespaces are deleted on Ctrl-C.
fn kube_main(command: Cmd) -> Result<i32> {
    let Cmd::Kube {
        kubeconfig,
        context,
        kubectl,
        family,
        image,
        timeout,
        ready_timeout,
        parallel,
        verbose,
        paths,
    } = command
    else {
        unreachable!("only called with Cmd::Kube")
    };
    let files = collect_files(&paths)?;
    if files.is_empty() {
        bail!("no scenario files (*.yaml) found");
    }
    let mut k = Kubectl::new(kubectl);
    k.kubeconfig = kubeconfig;
    k.context = context;
    let opts = KubeOptions {
        kubectl: k,
        family: match family {
            FamilyArg::V4 => Family::V4,
            FamilyArg::V6 => Family::V6,
        },
        image,
        converge_timeout: Duration::from_secs(timeout),
        ready_timeout: Duration::from_secs(ready_timeout),
        connect_timeout: Duration::from_secs(1),
        parallel: parallel.max(1),
        settle: Duration::from_secs(1),
        run_id: kube::runner::new_run_id(),
        colour: is_tty(),
        verbose,
    };
    kube::runner::install_signal_cleanup(
        opts.kubectl.clone(),
        opts.run_id.clone(),
        opts.ready_timeout,
    )?;
    let ok = kube::run_files(&files, &opts);
    while kube::runner::interrupted() {
        // The signal thread deletes the namespaces and exits.
        std::thread::park();
    }
    Ok(if ok { 0 } else { 1 })
}
