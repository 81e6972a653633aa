//! A kubeconfig for the stand-in: plain `http://` server, no credentials. kubectl and kube-rs
//! both accept an `http` server URL and then send no authentication.

use anyhow::Context;
use std::path::Path;

/// The context (and cluster and user) name in generated kubeconfigs.
pub const CONTEXT: &str = "palisade-standin";

/// A kubeconfig pointing at `server_url` (e.g. `http://127.0.0.1:41235`), default namespace
/// `default`.
pub fn kubeconfig_yaml(server_url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {server_url}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: {CONTEXT}
    namespace: default
current-context: {CONTEXT}
users:
- name: {CONTEXT}
  user: {{}}
preferences: {{}}
"
    )
}

/// Write [`kubeconfig_yaml`] to `path` (mode 0600 like kubectl writes them).
pub(crate) fn write_kubeconfig(path: &Path, server_url: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write kubeconfig {}", path.display()))?;
    file.write_all(kubeconfig_yaml(server_url).as_bytes())
        .with_context(|| format!("write kubeconfig {}", path.display()))?;
    Ok(())
}
