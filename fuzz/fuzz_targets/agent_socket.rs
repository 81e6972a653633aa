//! The CNI <-> agent socket on the agent's side: arbitrary bytes from "the plugin" into the
//! agent's connection handler (`agent::cni::connection`) over a socket pair, with a stand-in
//! sync worker that folds each announcement into the agent's `Index` as the real worker
//! does and answers it.
//!
//! Input: what the plugin writes (seeds: requests captured from the real plugin).
//!
//! Properties: no panic; every answer line decodes as the plugin decodes it; a connection
//! that ends without an error answered every non-blank line, `ok` exactly for the lines
//! that are requests.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_common::{AgentRequest, AgentResponse};
use palisade_policy::agent::cni::connection;
use palisade_policy::agent::status::AgentShared;
use palisade_policy::agent::sync::CniCommand;
use palisade_policy::kube::Index;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| runtime().block_on(exchange(data)));

async fn exchange(data: &[u8]) {
    let (mut plugin, agent) = UnixStream::pair().unwrap();
    let (tx, mut rx) = mpsc::channel::<CniCommand>(16);
    let shared = Arc::new(AgentShared::new("n1"));
    let worker = async move {
        let mut index = Index::new("n1");
        let mut changes = Vec::new();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                CniCommand::PodAdded {
                    key,
                    container_id,
                    ips,
                    reply,
                } => {
                    index.pod_announced(key, container_id, ips, &mut changes);
                    let _ = reply.send(AgentResponse {
                        ok: true,
                        error: None,
                        ready: true,
                    });
                }
                CniCommand::PodDeleted { container_id } => {
                    index.pod_unannounced(&container_id, &mut changes)
                }
            }
        }
    };
    let served = async move { connection(agent, tx, shared).await };
    let talk = async move {
        plugin.write_all(data).await.unwrap();
        plugin.shutdown().await.unwrap();
        let mut answers = Vec::new();
        plugin.read_to_end(&mut answers).await.unwrap();
        answers
    };
    let (result, answers, ()) = tokio::join!(served, talk, worker);

    let answers: Vec<AgentResponse> = answers
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("an answer the plugin decodes"))
        .collect();
    if result.is_ok() {
        // The lines as the agent reads them (UTF-8, `\n` or `\r\n`), blank ones skipped.
        let text = std::str::from_utf8(data).unwrap();
        let requests: Vec<bool> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<AgentRequest>(l).is_ok())
            .collect();
        assert_eq!(answers.len(), requests.len());
        for (a, is_request) in answers.iter().zip(requests) {
            assert_eq!(a.ok, is_request, "{a:?}");
        }
    }
}
