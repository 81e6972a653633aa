//! The node-local HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/status` (JSON, see the module docs of [`super`]), `/debug/state` (the compiler's cluster
//! state as API objects).

use super::status::AgentShared;
use crate::compile::Compiler;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<AgentShared>,
    compiler: Arc<Mutex<Compiler>>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(error = %err, "metrics listener accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let compiler = compiler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let compiler = compiler.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&req, &shared, &compiler)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn route(
    req: &Request<Incoming>,
    shared: &AgentShared,
    compiler: &Mutex<Compiler>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let ok_or = |ok: bool, what: &str| {
        if ok {
            reply(StatusCode::OK, "text/plain", "ok\n".into())
        } else {
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{what}\n"),
            )
        }
    };
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/healthz" => ok_or(shared.healthy(), "sync worker stopped"),
        "/readyz" => ok_or(shared.ready(), "first full sync not programmed yet"),
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            format!("{}\n", shared.status_json()),
        ),
        "/debug/state" => reply(
            StatusCode::OK,
            "application/json",
            super::debug_state::debug_state_body(compiler),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
