//! `palisade-apiserver`: the local Kubernetes API stand-in as a process (see
//! `palisade_integration::apiserver`). Prints `listening on http://ADDR` once it accepts
//! connections and serves until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use palisade_integration::apiserver::{ApiServer, ApiServerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    about = "Local stand-in for the Kubernetes API (namespaces, pods, nodes, networkpolicies)"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at this server to PATH (for kubectl and the agents).
    #[arg(long, value_name = "PATH")]
    kubeconfig_out: Option<PathBuf>,
    /// Changes kept for watches resuming from an older resourceVersion (older: 410 Expired).
    #[arg(long, default_value_t = 10_000)]
    history_limit: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 5.0)]
    bookmark_interval: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = ApiServerConfig {
        history_limit: args.history_limit,
        bookmark_interval: Duration::from_secs_f64(args.bookmark_interval.max(0.05)),
        ..ApiServerConfig::default()
    };
    let server = ApiServer::start_with(args.listen, config).await?;
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path)?;
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", server.url()).context("write to stdout")?;
    stdout.flush().context("flush stdout")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
