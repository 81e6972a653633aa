//! `palisadectl`, the operator's tool: "what can reach what?" (`reach`), "why was my packet
//! dropped?" (`explain`) and the node's live state (`status`).
//!
//! Both questions are answered from the same compiled model the agent programs: the cluster
//! state (from manifests, or from a running agent's `/debug/state`) is compiled per node by
//! [`crate::compile`] and packets are walked through it by [`crate::eval::interp`]; the
//! reference evaluator cross-checks every answer.
//!
//! - [`manifests`]: files → objects → cluster state (errors with file, document and field);
//! - [`reach`]: the matrix; [`explain`]: one packet's story;
//! - [`live`]: the agent's HTTP endpoint and the programmed nft table;
//! - [`style`]: colour and aligned tables.

pub mod explain;
pub mod live;
pub mod manifests;
pub mod reach;
pub mod style;

use crate::model::Protocol;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use manifests::{build_state, Loaded, Objects};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use style::{ColorChoice, Colour, Style};

/// Exit code when the compiled path and the reference evaluator (or the programmed table)
/// disagree: the answer printed may be wrong.
pub const EXIT_DISAGREEMENT: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "palisadectl",
    version,
    about = "Palisade's operator tool: reachability matrix, why a packet is allowed or denied, live node status"
)]
pub struct Cli {
    /// Colour output: auto (only on a terminal, and not with NO_COLOR set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The pod × pod reachability matrix for a port and protocol.
    Reach(ReachArgs),
    /// Whether a packet is allowed, and which policies and rules decide it.
    Explain(ExplainArgs),
    /// The local agent's readiness, last sync, programmed versions, invalid policies, and the
    /// programmed table's size.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
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

/// Where the cluster state comes from: manifests, or a running agent.
#[derive(Debug, Clone, Args)]
pub struct Source {
    /// Manifest files or folders (YAML or JSON; many documents per file; `kind: List`;
    /// folders recursively; `-` for stdin): Namespaces, Pods with status.podIPs,
    /// NetworkPolicies, Nodes.
    #[arg(
        short = 'f',
        long = "filename",
        num_args = 1..,
        required_unless_present_any = ["agent", "kubeconfig"],
        conflicts_with_all = ["agent", "kubeconfig"]
    )]
    pub files: Vec<PathBuf>,
    /// A running agent's HTTP endpoint: read its cluster state (GET /debug/state).
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
    /// Read the objects from the API server of this kubeconfig (lists Namespaces, Pods,
    /// NetworkPolicies and Nodes once).
    #[arg(long, value_name = "PATH", conflicts_with = "agent")]
    pub kubeconfig: Option<PathBuf>,
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
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
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
    /// Namespace of --from / --to given without one.
    #[arg(short = 'n', long, default_value = manifests::DEFAULT_NAMESPACE)]
    pub namespace: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9464")]
    pub agent: String,
    /// Read the programmed table inside this network namespace.
    #[arg(long, value_name = "PATH")]
    pub nft_netns: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let err_style = Style::stderr(cli.color);
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{} {e:#}", err_style.paint(Colour::Red, "error:"));
            ExitCode::from(1)
        }
    }
}

/// Run a parsed command line; stdout gets the answer, stderr diagnostics. Returns the exit
/// code.
pub fn run(cli: &Cli) -> Result<u8> {
    let out = Style::stdout(cli.color);
    let err = Style::stderr(cli.color);
    match &cli.command {
        Command::Reach(a) => reach_cmd(a, out, err),
        Command::Explain(a) => explain_cmd(a, out, err),
        Command::Status(a) => status_cmd(a, out),
    }
}

/// State from manifests or the agent, with diagnostics printed on stderr. Returns the live
/// node name with --agent.
fn load(source: &Source, err: Style) -> Result<(Loaded, Option<String>)> {
    let (objects, node): (Objects, Option<String>) = match &source.agent {
        Some(agent) => {
            let (node, objects) = live::fetch_state(agent)?;
            (objects, Some(node))
        }
        None => match &source.kubeconfig {
            Some(kc) => (live::list_from_api_server(kc)?, None),
            None => (manifests::load_paths(&source.files)?, None),
        },
    };
    let loaded = build_state(&objects);
    for w in &loaded.diagnostics.warnings {
        eprintln!("{} {w}", err.paint(Colour::Yellow, "warning:"));
    }
    for n in &loaded.diagnostics.notes {
        eprintln!("note: {n}");
    }
    Ok((loaded, node))
}

fn print_structured(value: &serde_json::Value, output: Output) -> Result<()> {
    match output {
        Output::Json | Output::Table => {
            println!("{}", serde_json::to_string_pretty(value)?);
        }
        Output::Yaml => {
            print!("{}", serde_saphyr::to_string(value).context("render YAML")?);
        }
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

fn reach_cmd(a: &ReachArgs, out: Style, err: Style) -> Result<u8> {
    let (loaded, _) = load(&a.source, err)?;
    let targets = reach_targets(a.port, a.protocol.map(Into::into), &loaded.declared_ports);
    if targets.is_empty() {
        bail!("no port to ask about: the pods declare no container ports (of that protocol); pass --port");
    }
    let namespace = if a.all_namespaces {
        None
    } else {
        a.namespace.as_deref()
    };
    let pods = reach::matrix_pods(&loaded.state, namespace);
    if pods.is_empty() {
        eprintln!(
            "note: no pod with an address{}",
            namespace
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default()
        );
    }
    let (matrices, disagreements) = reach::compute(&loaded.state, &pods, &targets);
    for u in reach::unknown_cells(&matrices) {
        eprintln!("note: no answer for {u}");
    }
    match a.output {
        Output::Table => print!("{}", reach::render_table(&matrices, out)),
        other => print_structured(&reach::to_json(&matrices), other)?,
    }
    if disagreements.is_empty() {
        return Ok(0);
    }
    for d in &disagreements {
        eprintln!(
            "{}",
            err.paint(Colour::Red, &format!("WARNING: DISAGREEMENT: {d}"))
        );
    }
    eprintln!("This is a bug in Palisade (compiler or reference evaluator); please report it with these manifests.");
    Ok(EXIT_DISAGREEMENT)
}

fn explain_cmd(a: &ExplainArgs, out: Style, err: Style) -> Result<u8> {
    let (loaded, node) = load(&a.source, err)?;
    let src = explain::parse_endpoint(&a.from, &a.namespace);
    let dst = explain::parse_endpoint(&a.to, &a.namespace);
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
        Output::Table => print!("{}", explain::render_text(&report, out)),
        other => print_structured(&serde_json::to_value(&report)?, other)?,
    }
    eprint!("{}", explain::render_disagreements(&report, err));
    Ok(if report.disagreements.is_empty() {
        0
    } else {
        EXIT_DISAGREEMENT
    })
}

fn status_cmd(a: &StatusArgs, _out: Style) -> Result<u8> {
    let status = live::get_json(&a.agent, "/status")?;
    let table = live::read_table(a.nft_netns.clone()).map_err(|e| format!("{e:#}"));
    match a.output {
        Output::Table => print!("{}", live::render_status(&a.agent, &status, &table)),
        other => print_structured(&live::status_document(&status, &table), other)?,
    }
    Ok(if status["ready"] == serde_json::Value::Bool(true) {
        0
    } else {
        1
    })
}
