//! The unix socket the CNI plugin talks to during ADD/DEL/STATUS (DESIGN.md "New pods are
//! isolated before their first packet"): one JSON [`AgentRequest`] per line, one
//! [`AgentResponse`] line back. A `podAdded` is answered only once the sync that includes
//! the pod's IPs is programmed.

use super::metrics::error_kind;
use super::status::AgentShared;
use super::sync::CniCommand;
use crate::model::ObjectKey;
use anyhow::{Context, Result};
use palisade_common::{AgentRequest, AgentResponse};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Bind the socket: parent directory created, a stale socket file from an earlier run
/// replaced, mode 0600 (only root on the node may announce pods).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale socket {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Serve connections until the worker is gone.
pub async fn serve(
    listener: UnixListener,
    worker: mpsc::Sender<CniCommand>,
    shared: Arc<AgentShared>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let worker = worker.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(err) = connection(stream, worker, shared.clone()).await {
                        shared.metrics.error(error_kind::CNI_SOCKET);
                        tracing::warn!(error = %format!("{err:#}"), "CNI socket connection");
                    }
                });
            }
            Err(err) => {
                shared.metrics.error(error_kind::CNI_SOCKET);
                tracing::warn!(error = %err, "CNI socket accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One plugin connection: requests in, one answer line per request out, until the plugin
/// closes its end. Public for the fuzz targets (`fuzz/`), which drive it over a socket pair.
pub async fn connection(
    stream: UnixStream,
    worker: mpsc::Sender<CniCommand>,
    shared: Arc<AgentShared>,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.context("read request")? {
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<AgentRequest>(&line) {
            Ok(req) => handle(req, &worker, &shared).await,
            Err(err) => AgentResponse {
                ok: false,
                error: Some(format!("bad request: {err}")),
                ready: shared.ready(),
            },
        };
        let mut out = serde_json::to_vec(&response).context("encode response")?;
        out.push(b'\n');
        write.write_all(&out).await.context("write response")?;
    }
    Ok(())
}

async fn handle(
    req: AgentRequest,
    worker: &mpsc::Sender<CniCommand>,
    shared: &AgentShared,
) -> AgentResponse {
    let gone = || AgentResponse {
        ok: false,
        error: Some("agent is shutting down".into()),
        ready: false,
    };
    match req {
        AgentRequest::Status => AgentResponse {
            ok: true,
            error: None,
            ready: shared.ready(),
        },
        AgentRequest::PodAdded {
            namespace,
            name,
            container_id,
            host_ifname,
            ips,
        } => {
            tracing::info!(pod = %format!("{namespace}/{name}"), %container_id, %host_ifname, ?ips, "CNI ADD");
            let (reply, answer) = oneshot::channel();
            let cmd = CniCommand::PodAdded {
                key: ObjectKey::new(namespace, name),
                container_id,
                ips,
                reply,
            };
            if worker.send(cmd).await.is_err() {
                return gone();
            }
            answer.await.unwrap_or_else(|_| gone())
        }
        AgentRequest::PodDeleted { container_id, .. } => {
            tracing::info!(%container_id, "CNI DEL");
            if worker
                .send(CniCommand::PodDeleted { container_id })
                .await
                .is_err()
            {
                return gone();
            }
            AgentResponse {
                ok: true,
                error: None,
                ready: shared.ready(),
            }
        }
    }
}
