//! The soak run: a netns cluster worked for a long time, then checked for leaks
//! (`palisade_integration::soak`). `tests/soak.sh` builds and runs it.
//!
//! ```text
//! palisade-soak [--duration 30m] [--nodes 3] [--seed N] [--family v4|v6] [--churn 20s]
//!               [--settle 3s] [--max-churn-pods 12] [--bin-dir DIR] [-v]
//! ```
//! Prints the seed first and the figures at the end; exit 0 iff every figure is zero/true.

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use palisade_integration::cluster::{cleanup, Binaries};
use palisade_integration::scenario::Family;
use palisade_integration::soak::{self, SoakOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
enum FamilyArg {
    V4,
    V6,
}

#[derive(Parser)]
#[command(
    name = "palisade-soak",
    about = "Soak a netns cluster and check that nothing leaks"
)]
struct Cli {
    /// How long to run (`90s`, `3m`, `1h`).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seed of the random choices (default: drawn, and printed).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value = "v4")]
    family: FamilyArg,
    /// Length of each churn phase (a quiet phase follows each).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    churn: Duration,
    /// Time after the last change is programmed before a probe round counts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    settle: Duration,
    /// Churned pods alive at most.
    #[arg(long, default_value_t = 12)]
    max_churn_pods: usize,
    /// Directory holding palisade, palisade-agent, palisade-testpod (default: next to this
    /// binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(short, long)]
    verbose: bool,
}

/// `N` followed by `s`, `m` or `h` (a whole crate for three suffixes is not worth it).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s, m or h"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (s, m or h)")),
    }
}

fn main() {
    cleanup::harness_main("palisade-soak", real_main)
}

fn real_main() -> Result<i32> {
    let cli = Cli::parse();
    cleanup::prepare_root_harness()?;
    let bins = match cli.bin_dir {
        Some(d) => Binaries::in_dir(&d),
        None => Binaries::next_to_current_exe()?,
    };
    if bins.agent.is_none() {
        bail!("palisade-agent not found beside palisade (build it first)");
    }
    let opts = SoakOptions {
        duration: cli.duration,
        nodes: cli.nodes,
        seed: cli.seed.unwrap_or_else(|| fastrand::u64(..)),
        family: match cli.family {
            FamilyArg::V4 => Family::V4,
            FamilyArg::V6 => Family::V6,
        },
        bins,
        churn: cli.churn,
        settle: cli.settle,
        max_churn_pods: cli.max_churn_pods,
        verbose: cli.verbose,
    };
    let report = soak::run(&opts)?;
    print!("{}", report.render());
    Ok(if report.failures().is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("m").is_err());
    }
}
