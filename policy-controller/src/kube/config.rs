//! Finding the API server as kubectl does (client-go's `ClientConfigLoadingRules`), for the
//! agent and `palisadectl` alike:
//!
//! 1. `--kubeconfig PATH`: that file alone, which must exist;
//! 2. else `$KUBECONFIG`, a list of files (`:`-separated): empty entries and files that do
//!    not exist are skipped, the rest merged with the first file to set a value winning
//!    (the first `current-context`, the first cluster/user/context of a name, whole);
//! 3. else `~/.kube/config` if it exists;
//! 4. else, inside a pod, the in-cluster service account.
//!
//! `--context` picks a context of the merged files instead of `current-context`. kube-rs
//! reads files, resolves relative paths and merges by these rules ([`Kubeconfig::merge`]);
//! what it does not do as kubectl does is skip missing files in `$KUBECONFIG` (it fails),
//! hence the file list here.

use anyhow::{anyhow, bail, Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// What the user chose on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeconfigChoice {
    /// `--kubeconfig`
    pub path: Option<PathBuf>,
    /// `--context`
    pub context: Option<String>,
}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    Files(Vec<PathBuf>),
    InCluster,
}

impl std::fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigOrigin::Files(files) => {
                let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                write!(f, "kubeconfig {}", names.join(":"))
            }
            ConfigOrigin::InCluster => f.write_str("the in-cluster service account"),
        }
    }
}

/// A client configuration and where it came from.
pub struct ResolvedConfig {
    pub config: kube::Config,
    pub origin: ConfigOrigin,
}

/// The kubeconfig files to merge, in order, by the loading rules above. `kubeconfig_env` is
/// `$KUBECONFIG`, `home` the home directory. Empty: no file (in-cluster, or nothing).
pub fn kubeconfig_files(
    explicit: Option<&Path>,
    kubeconfig_env: Option<&OsStr>,
    home: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--kubeconfig {}: no such file", path.display());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    match kubeconfig_env.filter(|v| !v.is_empty()) {
        Some(list) => {
            let mut files: Vec<PathBuf> = Vec::new();
            for p in std::env::split_paths(list) {
                if !p.as_os_str().is_empty() && !files.contains(&p) && p.exists() {
                    files.push(p);
                }
            }
            Ok(files)
        }
        None => Ok(home
            .map(|h| h.join(".kube").join("config"))
            .filter(|p| p.is_file())
            .into_iter()
            .collect()),
    }
}

/// Whether this process runs in a pod with a service account (as client-go decides).
fn in_cluster_possible() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
        && std::env::var_os("KUBERNETES_SERVICE_PORT").is_some_and(|v| !v.is_empty())
        && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").is_file()
}

/// Merge `files` (first wins) and pick the context.
pub async fn from_files(files: &[PathBuf], context: Option<&str>) -> Result<kube::Config> {
    let mut merged: Option<Kubeconfig> = None;
    for f in files {
        let kc =
            Kubeconfig::read_from(f).with_context(|| format!("read kubeconfig {}", f.display()))?;
        merged = Some(match merged {
            None => kc,
            Some(m) => m
                .merge(kc)
                .with_context(|| format!("merge kubeconfig {}", f.display()))?,
        });
    }
    let merged = merged.ok_or_else(|| anyhow!("no kubeconfig file"))?;
    if let Some(name) = context {
        if !merged.contexts.iter().any(|c| c.name == name) {
            let known: Vec<&str> = merged.contexts.iter().map(|c| c.name.as_str()).collect();
            bail!(
                "--context {name}: no such context (the kubeconfig has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    kube::Config::from_custom_kubeconfig(merged, &options)
        .await
        .context("load kubeconfig")
}

/// The client configuration by the loading rules.
pub async fn resolve(choice: &KubeconfigChoice) -> Result<ResolvedConfig> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let env = std::env::var_os("KUBECONFIG");
    let files = kubeconfig_files(choice.path.as_deref(), env.as_deref(), home.as_deref())?;
    if !files.is_empty() {
        let mut config = from_files(&files, choice.context.as_deref())
            .await
            .with_context(|| ConfigOrigin::Files(files.clone()).to_string())?;
        config.apply_debug_overrides();
        return Ok(ResolvedConfig {
            config,
            origin: ConfigOrigin::Files(files),
        });
    }
    if in_cluster_possible() {
        if let Some(c) = &choice.context {
            bail!("--context {c}: no kubeconfig file to take it from (running in-cluster)");
        }
        let config = kube::Config::incluster().context("in-cluster configuration")?;
        return Ok(ResolvedConfig {
            config,
            origin: ConfigOrigin::InCluster,
        });
    }
    let env_text = match env.filter(|v| !v.is_empty()) {
        Some(v) => format!("KUBECONFIG={} names no existing file", v.to_string_lossy()),
        None => format!(
            "KUBECONFIG is unset and {} does not exist",
            home.map(|h| h.join(".kube/config").display().to_string())
                .unwrap_or_else(|| "~/.kube/config".into())
        ),
    };
    bail!("no cluster to talk to: no --kubeconfig, {env_text}, and this is not a pod with a service account")
}

/// A kube client by the loading rules.
pub async fn client(choice: &KubeconfigChoice) -> Result<(kube::Client, ConfigOrigin)> {
    let resolved = resolve(choice).await?;
    let client = kube::Client::try_from(resolved.config).context("build kube client")?;
    Ok((client, resolved.origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(
        current: Option<&str>,
        contexts: &[(&str, &str)],
        clusters: &[(&str, &str)],
    ) -> String {
        let mut s = String::from("apiVersion: v1\nkind: Config\n");
        if let Some(c) = current {
            s.push_str(&format!("current-context: {c}\n"));
        }
        s.push_str("clusters:\n");
        for (name, server) in clusters {
            s.push_str(&format!(
                "- name: {name}\n  cluster: {{server: \"{server}\"}}\n"
            ));
        }
        s.push_str("contexts:\n");
        for (name, cluster) in contexts {
            s.push_str(&format!(
                "- name: {name}\n  context: {{cluster: {cluster}, user: u, namespace: ns-{name}}}\n"
            ));
        }
        s.push_str("users:\n- name: u\n  user: {token: t}\n");
        s
    }

    fn dir(name: &str) -> palisade_testutil::TempDir {
        palisade_testutil::TempDir::new(name)
    }

    #[test]
    fn file_precedence() {
        let d = dir("precedence");
        let (a, b, missing) = (d.0.join("a"), d.0.join("b"), d.0.join("missing"));
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let list = std::env::join_paths([&a, &missing, Path::new(""), &b, &a]).unwrap();
        // $KUBECONFIG: missing and empty entries skipped, duplicates once, order kept.
        assert_eq!(
            kubeconfig_files(None, Some(&list), None).unwrap(),
            [a.clone(), b.clone()]
        );
        // --kubeconfig wins over $KUBECONFIG, and must exist.
        assert_eq!(
            kubeconfig_files(Some(&b), Some(&list), None).unwrap(),
            std::slice::from_ref(&b)
        );
        let e = kubeconfig_files(Some(&missing), None, None).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        // ~/.kube/config only when $KUBECONFIG is unset or empty.
        std::fs::create_dir_all(d.0.join(".kube")).unwrap();
        std::fs::write(d.0.join(".kube/config"), "").unwrap();
        assert_eq!(
            kubeconfig_files(None, None, Some(&d.0)).unwrap(),
            [d.0.join(".kube/config")]
        );
        assert_eq!(
            kubeconfig_files(None, Some(OsStr::new("")), Some(&d.0)).unwrap(),
            [d.0.join(".kube/config")]
        );
        let only_missing = missing.clone().into_os_string();
        assert!(kubeconfig_files(None, Some(&only_missing), Some(&d.0))
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn merged_files_first_wins_and_context_picks() {
        let d = dir("merge");
        let first = d.0.join("first");
        let second = d.0.join("second");
        std::fs::write(
            &first,
            kubeconfig(
                Some("one"),
                &[("one", "c1")],
                &[("c1", "https://192.0.2.1:6443")],
            ),
        )
        .unwrap();
        std::fs::write(
            &second,
            kubeconfig(
                Some("two"),
                &[("two", "c2"), ("one", "c2")],
                &[
                    ("c1", "https://198.51.100.1:6443"),
                    ("c2", "https://203.0.113.2:6443"),
                ],
            ),
        )
        .unwrap();
        let files = [first.clone(), second.clone()];
        let c = from_files(&files, None).await.unwrap();
        // current-context from the first file; its cluster c1 from the first file too.
        assert_eq!(c.cluster_url.to_string(), "https://192.0.2.1:6443/");
        assert_eq!(c.default_namespace, "ns-one");
        let c = from_files(&files, Some("two")).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://203.0.113.2:6443/");
        assert_eq!(c.default_namespace, "ns-two");
        let e = from_files(&files, Some("three")).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("no such context (the kubeconfig has: one, two)"),
            "{e:#}"
        );
    }
}
