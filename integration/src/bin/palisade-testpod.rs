//! The "containers" of a netns test pod: listeners on the pod's ports and a control socket
//! through which the harness makes this pod probe others. See `palisade_integration::testpod`.
//!
//! ```text
//! palisade-testpod serve --control PATH [--tcp PORT]... [--udp PORT]... [--sctp PORT]...
//! palisade-testpod probe tcp|udp|sctp-send IP PORT [TIMEOUT_MS|TAG]   (one probe, for debugging)
//! ```

use anyhow::{bail, Context, Result};
use palisade_integration::testpod::{self, Listeners};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("palisade-testpod: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let mut control = None;
            let mut l = Listeners::default();
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let value = it.next().with_context(|| format!("{flag} needs a value"))?;
                let port = || {
                    value
                        .parse::<u16>()
                        .with_context(|| format!("{flag} {value}"))
                };
                match flag.as_str() {
                    "--control" => control = Some(PathBuf::from(value)),
                    "--tcp" => l.tcp.push(port()?),
                    "--udp" => l.udp.push(port()?),
                    "--sctp" => l.sctp.push(port()?),
                    other => bail!("unknown flag {other}"),
                }
            }
            let control = control.context("--control PATH is required")?;
            testpod::serve(&control, &l)
        }
        Some("probe") => {
            let [_, verb, ip, port, rest @ ..] = args.as_slice() else {
                bail!("usage: probe tcp|udp|sctp-send IP PORT [TIMEOUT_MS|TAG]");
            };
            let addr = std::net::SocketAddr::new(ip.parse()?, port.parse()?);
            let ms: u64 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
            let r = match verb.as_str() {
                "tcp" => testpod::probe_tcp(addr, Duration::from_millis(ms)),
                "udp" => testpod::probe_udp(addr, Duration::from_millis(ms)),
                "sctp-send" => testpod::send_sctp_init(addr.ip(), addr.port(), ms as u32),
                other => bail!("unknown probe {other}"),
            };
            match r {
                Ok(()) => println!("allowed"),
                Err(e) => println!("blocked {e:#}"),
            }
            Ok(())
        }
        _ => bail!("usage: palisade-testpod serve|probe ... (see the source)"),
    }
}
