//! `palisadectl`, the operator's tool: "what can reach what?" (`reach`, also as a picture),
//! "why was my packet dropped?" (`explain`), "what is being dropped now?" (`drops`) and the
//! node's live state (`status`). Reference pages: `docs/palisadectl/`.
//!
//! `reach` and `explain` answer from the same compiled model the agent programs: the cluster
//! state (from the API server, manifests, or a node agent's `/debug/state`) is compiled per
//! node by [`crate::compile`] and packets are walked through it by [`crate::eval::interp`];
//! the reference evaluator cross-checks every answer.
//!
//! - [`manifests`]: files → objects → cluster state (errors with file, document and field);
//! - [`reach`]: the matrix; [`graph`]: the matrix as a Graphviz picture; [`explain`]: one
//!   packet's story; [`drops`]: denied packets as they happen;
//! - [`live`]: the node agent's debug socket, the programmed nft table, the API server;
//! - [`exit`]: exit codes; [`style`]: colour and aligned tables.

pub mod drops;
pub mod exit;
pub mod explain;
pub mod graph;
pub mod live;
pub mod manifests;
pub mod reach;
pub mod style;

use crate::kube::config::KubeconfigChoice;
use crate::model::api::LabelSelector;
use crate::model::selector::{parse_label_selector, selector_matches};
use crate::model::Protocol;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use manifests::{build_state, Loaded, Objects};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use style::{ColorChoice, Colour, Style};

#[derive(Debug, Parser)]
#[command(
    name = "palisadectl",
    version,
    about = "Palisade's operator tool: who reaches whom (as a table or a picture), why a packet is allowed or denied, denied packets live, a node's status",
    after_help = "Exit codes: 0 answered; 1 error (nothing answered); 2 usage error; 3 the compiled ruleset and the reference evaluator disagree (a Palisade bug; the answer may be wrong); 4 status: the agent is not ready.\nReference: docs/palisadectl/ in Palisade's repository."
)]
pub struct Cli {
    /// Colour output: auto (only on a terminal, and not with NO_COLOR set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
    /// Kubeconfig file to use, instead of $KUBECONFIG (a list of files, merged) or
    /// ~/.kube/config; in a pod, the service account is used when there is neither.
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current-context.
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The pod × pod reachability matrix for a port and protocol, as a table or a graph.
    Reach(ReachArgs),
    /// Whether a packet is allowed, and which policies and rules decide it.
    Explain(ExplainArgs),
    /// Denied connections as they happen on this node, or on several (-f to follow).
    Drops(DropsArgs),
    /// This node's agent: readiness, last sync, programmed versions, invalid policies, and
    /// the programmed table's size.
    Status(StatusArgs),
    /// Shell completion script (bash, zsh or fish) on stdout.
    Completion(CompletionArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ReachOutput {
    #[default]
    Table,
    /// The table with each pod's node and addresses.
    Wide,
    Json,
    Yaml,
    /// A Graphviz graph: pods with the same reachability are one node.
    Dot,
    /// The graph drawn by Graphviz' `dot` (which must be on the PATH).
    Svg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ExplainOutput {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DropsOutput {
    #[default]
    Table,
    /// The table with addresses, source ports and the dropping rule's log prefix.
    Wide,
    /// One JSON object per drop (a line each).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum ProtocolArg {
    Tcp,
    Udp,
    Sctp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::Tcp => Protocol::Tcp,
            ProtocolArg::Udp => Protocol::Udp,
            ProtocolArg::Sctp => Protocol::Sctp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Where the cluster state comes from: the API server (the default, found as kubectl finds
/// it), manifests, or this node's agent.
#[derive(Debug, Clone, Args)]
pub struct Source {
    /// Read manifest files or folders instead of the API server (YAML or JSON; many
    /// documents per file; `kind: List`; folders recursively; `-` for stdin): Namespaces,
    /// Pods with status.podIPs, NetworkPolicies, Nodes.
    #[arg(
        short = 'f',
        long = "filename",
        num_args = 1..,
        conflicts_with = "agent"
    )]
    pub files: Vec<PathBuf>,
    /// Read the cluster state of this node's agent from its debug socket (root on the node)
    /// instead of the API server.
    #[arg(
        long,
        value_name = "SOCKET",
        num_args = 0..=1,
        default_missing_value = crate::agent::DEFAULT_DEBUG_SOCKET
    )]
    pub agent: Option<PathBuf>,
    /// With --agent: read the programmed table inside this network namespace
    /// (`nsenter --net=PATH nft ...`) instead of the current one.
    #[arg(long, value_name = "PATH", requires = "agent")]
    pub nft_netns: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReachArgs {
    #[command(flatten)]
    pub source: Source,
    /// Destination port (default: every port the pods declare).
    #[arg(long)]
    pub port: Option<u16>,
    /// Protocol (default: TCP with --port; otherwise every declared protocol).
    #[arg(long, value_enum, ignore_case = true)]
    pub protocol: Option<ProtocolArg>,
    /// Only pods of this namespace (rows and columns).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Pods of every namespace (the default).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only pods whose labels match this selector (`app=web,tier!=db`, `env in (a,b)`,
    /// `!canary`), as kubectl -l.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = ReachOutput::Table)]
    pub output: ReachOutput,
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub source: Source,
    /// Source: NS/POD, POD (in -n's namespace) or an IP address (external endpoint).
    #[arg(long)]
    pub from: String,
    /// Destination: NS/POD, POD or an IP address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_enum, ignore_case = true, default_value = "TCP")]
    pub protocol: ProtocolArg,
    /// Namespace of --from / --to given without one (default: the kubeconfig context's
    /// namespace when reading the API server, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = ExplainOutput::Table)]
    pub output: ExplainOutput,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The agent's debug socket.
    #[arg(long, value_name = "SOCKET", default_value = crate::agent::DEFAULT_DEBUG_SOCKET)]
    pub agent: PathBuf,
    /// Read the programmed table inside this network namespace.
    #[arg(long, value_name = "PATH")]
    pub nft_netns: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct DropsArgs {
    /// The agent's debug socket; again for each further agent to follow at once (sockets
    /// forwarded from other nodes), their drops merged.
    #[arg(
        long,
        value_name = "SOCKET",
        default_value = crate::agent::DEFAULT_DEBUG_SOCKET,
        action = clap::ArgAction::Append
    )]
    pub agent: Vec<PathBuf>,
    /// Keep printing drops as they happen (until interrupted).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the recent drops to print first (the agent keeps the last 1000).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub last: usize,
    /// Only drops with a pod of this namespace at either end.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only drops with this pod at either end: NS/POD, or POD (in -n's namespace, or in any).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only drops in this direction (ingress: the destination's policies; egress: the
    /// source's).
    #[arg(long, value_parser = ["ingress", "egress"])]
    pub direction: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = DropsOutput::Table)]
    pub output: DropsOutput,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let err_style = Style::stderr(cli.color);
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{} {e:#}", err_style.paint(Colour::Red, "error:"));
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Run a parsed command line; stdout gets the answer, stderr diagnostics. Returns the exit
/// code.
pub fn run(cli: &Cli) -> Result<u8> {
    let out = Style::stdout(cli.color);
    let err = Style::stderr(cli.color);
    let kubeconfig = KubeconfigChoice {
        path: cli.kubeconfig.clone(),
        context: cli.context.clone(),
    };
    match &cli.command {
        Command::Reach(a) => reach_cmd(a, &kubeconfig, out, err),
        Command::Explain(a) => explain_cmd(a, &kubeconfig, out, err),
        Command::Status(a) => status_cmd(a),
        Command::Drops(a) => drops::drops_cmd(a, out),
        Command::Completion(a) => {
            let script = completion(a.shell);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                // `palisadectl completion bash | head` is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("write the completion script")
                }
                _ => Ok(exit::OK),
            }
        }
    }
}

/// The completion script for `shell`.
pub fn completion(shell: Shell) -> Vec<u8> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "palisadectl", &mut script);
    script
}

/// Loaded state, the live node name with --agent, and the namespace names without one
/// default to.
struct LoadedSource {
    loaded: Loaded,
    node: Option<String>,
    default_namespace: String,
}

/// State from the API server, manifests or the agent, with diagnostics printed on stderr.
fn load(source: &Source, kubeconfig: &KubeconfigChoice, err: Style) -> Result<LoadedSource> {
    let mut default_namespace = manifests::DEFAULT_NAMESPACE.to_string();
    let (objects, node): (Objects, Option<String>) = match (&source.agent, source.files.is_empty())
    {
        (Some(socket), _) => {
            let (node, objects) = live::fetch_state(socket)?;
            (objects, Some(node))
        }
        (None, false) => (manifests::load_paths(&source.files)?, None),
        (None, true) => {
            let (objects, namespace) = live::list_from_api_server(kubeconfig)?;
            default_namespace = namespace;
            (objects, None)
        }
    };
    let loaded = build_state(&objects);
    for w in &loaded.diagnostics.warnings {
        eprintln!("{} {w}", err.paint(Colour::Yellow, "warning:"));
    }
    for n in &loaded.diagnostics.notes {
        eprintln!("note: {n}");
    }
    Ok(LoadedSource {
        loaded,
        node,
        default_namespace,
    })
}

fn print_structured(value: &serde_json::Value, yaml: bool) -> Result<()> {
    if yaml {
        print!("{}", serde_saphyr::to_string(value).context("render YAML")?);
    } else {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(())
}

/// The `(port, protocol)` pairs a `reach` asks about.
pub fn reach_targets(
    port: Option<u16>,
    protocol: Option<Protocol>,
    declared: &BTreeSet<(u16, Protocol)>,
) -> Vec<(u16, Protocol)> {
    match (port, protocol) {
        (Some(p), proto) => vec![(p, proto.unwrap_or(Protocol::Tcp))],
        (None, Some(proto)) => declared
            .iter()
            .filter(|(_, q)| *q == proto)
            .copied()
            .collect(),
        (None, None) => declared.iter().copied().collect(),
    }
}

fn reach_cmd(a: &ReachArgs, kubeconfig: &KubeconfigChoice, out: Style, err: Style) -> Result<u8> {
    // Checked before anything is read: a typo in -l or a missing dot should not cost a
    // round trip to the API server.
    let selector: Option<LabelSelector> = a
        .selector
        .as_deref()
        .map(parse_label_selector)
        .transpose()
        .map_err(|e| anyhow!("-l: {e}"))?;
    if a.output == ReachOutput::Svg {
        graph::find_dot()?;
    }
    let loaded = load(&a.source, kubeconfig, err)?.loaded;
    let targets = reach_targets(a.port, a.protocol.map(Into::into), &loaded.declared_ports);
    if targets.is_empty() {
        bail!("no port to ask about: the pods declare no container ports (of that protocol); pass --port");
    }
    let namespace = if a.all_namespaces {
        None
    } else {
        a.namespace.as_deref()
    };
    let mut pods = reach::matrix_pods(&loaded.state, namespace);
    if let Some(sel) = &selector {
        pods.retain(|k| {
            loaded
                .state
                .pods
                .get(k)
                .is_some_and(|p| selector_matches(sel, &p.labels))
        });
    }
    if pods.is_empty() {
        eprintln!(
            "note: no pod with an address{}{}",
            namespace
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default(),
            a.selector
                .as_deref()
                .map(|s| format!(" matching {s}"))
                .unwrap_or_default()
        );
    }
    let (matrices, disagreements) = reach::compute(&loaded.state, &pods, &targets);
    for u in reach::unknown_cells(&matrices) {
        eprintln!("note: no answer for {u}");
    }
    match a.output {
        ReachOutput::Table => print!("{}", reach::render_table(&matrices, None, out)),
        ReachOutput::Wide => print!(
            "{}",
            reach::render_table(&matrices, Some(&loaded.state), out)
        ),
        ReachOutput::Json => print_structured(&reach::to_json(&matrices), false)?,
        ReachOutput::Yaml => print_structured(&reach::to_json(&matrices), true)?,
        ReachOutput::Dot => print!("{}", graph::to_dot(&graph::group(&matrices, &loaded.state))),
        ReachOutput::Svg => {
            let dot = graph::to_dot(&graph::group(&matrices, &loaded.state));
            std::io::Write::write_all(&mut std::io::stdout(), &graph::render_svg(&dot)?)?;
        }
    }
    if disagreements.is_empty() {
        return Ok(exit::OK);
    }
    for d in &disagreements {
        eprintln!(
            "{}",
            err.paint(Colour::Red, &format!("WARNING: DISAGREEMENT: {d}"))
        );
    }
    eprintln!("This is a bug in Palisade (compiler or reference evaluator); please report it with these manifests.");
    Ok(exit::DISAGREEMENT)
}

fn explain_cmd(
    a: &ExplainArgs,
    kubeconfig: &KubeconfigChoice,
    out: Style,
    err: Style,
) -> Result<u8> {
    let LoadedSource {
        loaded,
        node,
        default_namespace,
    } = load(&a.source, kubeconfig, err)?;
    let namespace = a.namespace.as_deref().unwrap_or(&default_namespace);
    let src = explain::parse_endpoint(&a.from, namespace);
    let dst = explain::parse_endpoint(&a.to, namespace);
    let listing = match &node {
        Some(_) => match live::read_table(a.source.nft_netns.clone())? {
            Some(l) => Some(l),
            None => {
                eprintln!(
                    "{} table inet palisade is not programmed on this node",
                    err.paint(Colour::Yellow, "warning:")
                );
                None
            }
        },
        None => None,
    };
    let live = match (&node, &listing) {
        (Some(n), Some(l)) => Some((n.as_str(), l)),
        _ => None,
    };
    let report = explain::explain(&loaded.state, &src, &dst, a.protocol.into(), a.port, live)
        .map_err(|e| anyhow!("{} -> {}: {e}", a.from, a.to))?;
    match a.output {
        ExplainOutput::Table => print!("{}", explain::render_text(&report, out)),
        ExplainOutput::Json => print_structured(&serde_json::to_value(&report)?, false)?,
        ExplainOutput::Yaml => print_structured(&serde_json::to_value(&report)?, true)?,
    }
    eprint!("{}", explain::render_disagreements(&report, err));
    Ok(if report.disagreements.is_empty() {
        exit::OK
    } else {
        exit::DISAGREEMENT
    })
}

fn status_cmd(a: &StatusArgs) -> Result<u8> {
    let status = live::agent_json(&a.agent, "/status")?;
    let table = live::read_table(a.nft_netns.clone()).map_err(|e| format!("{e:#}"));
    match a.output {
        Output::Table => print!("{}", live::render_status(&a.agent, &status, &table, false)),
        Output::Wide => print!("{}", live::render_status(&a.agent, &status, &table, true)),
        Output::Json => print_structured(&live::status_document(&status, &table), false)?,
        Output::Yaml => print_structured(&live::status_document(&status, &table), true)?,
    }
    Ok(if status["ready"] == serde_json::Value::Bool(true) {
        exit::OK
    } else {
        exit::NOT_READY
    })
}
