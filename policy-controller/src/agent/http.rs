//! The agent's two HTTP endpoints, split by who may see what:
//!
//! - the **metrics listener** (TCP, `--metrics-listen`): `/metrics` (Prometheus text),
//!   `/healthz`, `/readyz`. The DaemonSet exposes it on the node, for Prometheus and the
//!   probes; it tells nothing about pods beyond counters.
//! - the **debug socket** (unix, `--debug-socket`, mode 0600 under `/run/palisade`): the same
//!   plus `/status`, `/debug/state` (every pod, label and policy the agent knows) and
//!   `/drops` (denied packets; `?follow=true` streams them). Only root on the node reaches it
//!   (or whoever `kubectl exec`s into the agent's container); `palisadectl` uses it there.

use super::drops::{DropEvent, DropFilter};
use super::status::AgentShared;
use crate::compile::Compiler;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::broadcast::error::RecvError;

type Body = BoxBody<Bytes, Infallible>;

/// Which listener a request came in on: the debug socket serves more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Metrics,
    Debug,
}

/// `--metrics-listen`: `IP:PORT`, or `:PORT` for every address of the node, as Go programs
/// (node-exporter, kube-proxy) read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Addr(SocketAddr),
    AnyAddress(u16),
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix(':') {
            return port
                .parse()
                .map(MetricsListen::AnyAddress)
                .map_err(|_| format!("{s}: expected :PORT or IP:PORT"));
        }
        s.parse()
            .map(MetricsListen::Addr)
            .map_err(|_| format!("{s}: expected :PORT or IP:PORT ([IPv6]:PORT)"))
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsListen::Addr(a) => write!(f, "{a}"),
            MetricsListen::AnyAddress(p) => write!(f, ":{p}"),
        }
    }
}

/// Bind the metrics listener. `:PORT` is one dual-stack socket on `[::]` (Linux accepts
/// IPv4 on it as mapped addresses), or `0.0.0.0` where the kernel has no IPv6 at all
/// (booted with `ipv6.disable=1`).
pub async fn bind_metrics(listen: MetricsListen) -> Result<TcpListener> {
    match listen {
        MetricsListen::Addr(addr) => TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listener: listen on {addr}")),
        MetricsListen::AnyAddress(port) => {
            match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
                Ok(l) => Ok(l),
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                        .await
                        .with_context(|| format!("metrics listener: listen on 0.0.0.0:{port}"))
                }
                Err(e) => {
                    Err(e).with_context(|| format!("metrics listener: listen on [::]:{port}"))
                }
            }
        }
    }
}

/// Bind the debug socket (a stale one from an earlier run replaced, mode 0600).
pub fn bind_debug(path: &Path) -> Result<UnixListener> {
    super::cni::bind(path).context("debug socket")
}

/// What the handlers read.
#[derive(Clone)]
pub struct EndpointState {
    pub shared: Arc<AgentShared>,
    pub compiler: Arc<Mutex<Compiler>>,
}

pub async fn serve_metrics(listener: TcpListener, ctx: EndpointState) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_connection(TokioIo::new(stream), Endpoint::Metrics, &ctx),
            Err(err) => accept_failed("metrics listener", err).await,
        }
    }
}

pub async fn serve_debug(listener: UnixListener, ctx: EndpointState) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_connection(TokioIo::new(stream), Endpoint::Debug, &ctx),
            Err(err) => accept_failed("debug socket", err).await,
        }
    }
}

async fn accept_failed(what: &str, err: std::io::Error) {
    tracing::warn!(error = %err, "{what}: accept");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

fn spawn_connection<IO>(io: IO, endpoint: Endpoint, ctx: &EndpointState)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(route(&req, endpoint, &ctx)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    });
}

fn full(body: String) -> Body {
    Full::new(Bytes::from(body)).boxed()
}

fn reply(status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap_or_else(|_| Response::new(full(String::new())))
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    reply(status, "text/plain", full(format!("{body}\n")))
}

fn route(req: &Request<Incoming>, endpoint: Endpoint, ctx: &EndpointState) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only");
    }
    let shared = &ctx.shared;
    let ok_or = |ok: bool, what: &str| {
        if ok {
            text(StatusCode::OK, "ok")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, what)
        }
    };
    let path = req.uri().path();
    match (path, endpoint) {
        ("/metrics", _) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            full(shared.metrics.render()),
        ),
        ("/healthz", _) => ok_or(shared.healthy(), "sync worker stopped"),
        ("/readyz", _) => match shared.not_ready_reason() {
            None => text(StatusCode::OK, "ok"),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, &why),
        },
        ("/status", Endpoint::Debug) => reply(
            StatusCode::OK,
            "application/json",
            full(format!("{}\n", shared.status_json())),
        ),
        ("/debug/state", Endpoint::Debug) => reply(
            StatusCode::OK,
            "application/json",
            full(super::debug_state::debug_state_body(&ctx.compiler)),
        ),
        ("/drops", Endpoint::Debug) => drops(req.uri().query(), shared),
        ("/status" | "/debug/state" | "/drops", Endpoint::Metrics) => text(
            StatusCode::NOT_FOUND,
            "not on the metrics listener: ask the node's debug socket (palisadectl on the node)",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// One line of `GET /drops`: a drop, or how many a slow follower lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DropLine {
    Lost { lost: u64 },
    Drop(Box<DropEvent>),
}

fn json_line(line: &DropLine) -> Bytes {
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    Bytes::from(s)
}

/// What `GET /drops` was asked: `follow`, `last=N` (of the recent drops, default all kept),
/// and the filter `namespace=`, `pod=`, `direction=` (Kubernetes names never need escaping).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropsQuery {
    pub follow: bool,
    pub last: Option<usize>,
    pub filter: DropFilter,
}

impl DropsQuery {
    pub fn parse(query: &str) -> Result<DropsQuery> {
        let mut q = DropsQuery::default();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
            match k {
                "follow" => q.follow = matches!(v, "true" | "1"),
                "last" => q.last = Some(v.parse().map_err(|_| anyhow!("last={v}: not a number"))?),
                "namespace" => q.filter.namespace = Some(v.to_string()),
                "pod" => q.filter.pod = Some(v.to_string()),
                "direction" => q.filter.direction = Some(v.to_string()),
                other => bail!("unknown parameter {other}"),
            }
        }
        Ok(q)
    }

    /// The query string for these settings (what palisadectl sends).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if self.follow {
            parts.push("follow=true".to_string());
        }
        if let Some(n) = self.last {
            parts.push(format!("last={n}"));
        }
        for (k, v) in [
            ("namespace", &self.filter.namespace),
            ("pod", &self.filter.pod),
            ("direction", &self.filter.direction),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        parts.join("&")
    }
}

/// `GET /drops`: the recent drops that pass the filter (the last `last` of them) as JSON
/// lines; with `follow`, then every new one that passes as it happens, until the client
/// goes away.
fn drops(query: Option<&str>, shared: &Arc<AgentShared>) -> Response<Body> {
    let q = match DropsQuery::parse(query.unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("GET /drops: {e:#}")),
    };
    let (recent, rx) = shared.drops.follow();
    let mut recent: Vec<DropEvent> = recent.into_iter().filter(|e| q.filter.matches(e)).collect();
    if let Some(n) = q.last {
        recent.drain(..recent.len().saturating_sub(n));
    }
    let backlog = recent.into_iter().map(|e| DropLine::Drop(Box::new(e)));
    if !q.follow {
        let body: Vec<u8> = backlog.flat_map(|line| json_line(&line)).collect();
        return reply(
            StatusCode::OK,
            "application/x-ndjson",
            Full::new(Bytes::from(body)).boxed(),
        );
    }
    let filter = q.filter;
    let live = futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if filter.matches(&e) => {
                    return Some((DropLine::Drop(Box::new(e)), (rx, filter)))
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    return Some((DropLine::Lost { lost: n }, (rx, filter)))
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let frames = futures::stream::iter(backlog)
        .chain(live)
        .map(|line| Ok::<_, Infallible>(Frame::data(json_line(&line))));
    reply(
        StatusCode::OK,
        "application/x-ndjson",
        BodyExt::boxed(StreamBody::new(frames)),
    )
}

/// A blocking HTTP/1.0 GET over a unix socket (palisadectl, tests): status and the reader
/// positioned at the body. HTTP/1.0 makes the server end the body by closing the
/// connection, never chunked, so a follower reads lines until EOF.
pub fn unix_get(
    path: &Path,
    target: &str,
) -> Result<(u16, std::io::BufReader<std::os::unix::net::UnixStream>)> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connect to the agent's debug socket {}", path.display()))?;
    write!(s, "GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .with_context(|| format!("send GET {target} to {}", path.display()))?;
    let mut reader = std::io::BufReader::new(s);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .with_context(|| format!("read the answer to GET {target}"))?;
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("GET {target}: malformed HTTP answer {status_line:?}"))?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            bail!("GET {target}: the answer ends inside its headers");
        }
        if header.trim_end().is_empty() {
            break;
        }
    }
    Ok((code, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_forms() {
        assert_eq!(
            ":9464".parse::<MetricsListen>().unwrap(),
            MetricsListen::AnyAddress(9464)
        );
        assert_eq!(
            "127.0.0.1:9464".parse::<MetricsListen>().unwrap(),
            MetricsListen::Addr("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            "[fd00::1]:9464"
                .parse::<MetricsListen>()
                .unwrap()
                .to_string(),
            "[fd00::1]:9464"
        );
        assert!("fd00::1:9464".parse::<MetricsListen>().is_err());
        assert!(":x".parse::<MetricsListen>().is_err());
    }

    #[test]
    fn drops_query_round_trips() {
        let q =
            DropsQuery::parse("follow=true&last=5&namespace=x&pod=x/a&direction=ingress").unwrap();
        assert!(q.follow);
        assert_eq!(q.last, Some(5));
        assert_eq!(q.filter.pod.as_deref(), Some("x/a"));
        assert_eq!(DropsQuery::parse(&q.to_query()).unwrap(), q);
        assert_eq!(DropsQuery::parse("").unwrap(), DropsQuery::default());
        assert!(DropsQuery::parse("last=x").is_err());
        assert!(DropsQuery::parse("bogus=1").is_err());
    }

    #[test]
    fn drop_lines_round_trip() {
        let lost = DropLine::Lost { lost: 3 };
        let s = String::from_utf8(json_line(&lost).to_vec()).unwrap();
        assert_eq!(s, "{\"lost\":3}\n");
        assert_eq!(serde_json::from_str::<DropLine>(&s).unwrap(), lost);
    }
}
