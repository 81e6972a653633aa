//! The install manifests as an operator applies them: `kubectl kustomize conf` (what
//! `kubectl apply -k conf` sends), read at run time, never from a copy, so the netns cluster
//! and the manifests cannot drift apart.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

/// Every object of a rendered kustomization.
#[derive(Debug, Clone)]
pub struct Manifests {
    pub objects: Vec<Value>,
}

impl Manifests {
    /// Render `dir` with `kubectl kustomize`.
    pub fn kustomize(dir: &Path) -> Result<Manifests> {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .context("run `kubectl kustomize` (kubectl is needed to read the manifests)")?;
        let text =
            crate::cluster::netns::check(&out, &format!("kubectl kustomize {}", dir.display()))?;
        Manifests::parse(&text).with_context(|| format!("kubectl kustomize {}", dir.display()))
    }

    /// Parse a multi-document YAML stream.
    pub fn parse(yaml: &str) -> Result<Manifests> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| anyhow!("parse manifests: {e}"))?;
        Ok(Manifests {
            objects: docs.into_iter().filter(|d| !d.is_null()).collect(),
        })
    }

    /// The one DaemonSet (the netns cluster runs one per node; several would be ambiguous).
    pub fn daemonset(&self) -> Result<&Value> {
        let all: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| o["kind"] == "DaemonSet")
            .collect();
        match all.as_slice() {
            [one] => Ok(one),
            [] => bail!("the manifests hold no DaemonSet"),
            many => bail!(
                "the manifests hold {} DaemonSets ({}); the netns cluster runs exactly one",
                many.len(),
                many.iter()
                    .map(|d| d["metadata"]["name"].as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// A ConfigMap by namespace and name.
    pub fn configmap(&self, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| is_configmap(o, namespace, name))
    }

    /// Set `data[key] = value` of a ConfigMap (as an operator edits it before applying); the
    /// key must exist.
    pub fn set_configmap_value(
        &mut self,
        namespace: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let cm = self
            .objects
            .iter_mut()
            .find(|o| is_configmap(o, namespace, name))
            .ok_or_else(|| anyhow!("no ConfigMap {namespace}/{name} in the manifests"))?;
        // Only keys the manifests define: a misspelt key would be read by nobody.
        let Some(slot) = cm["data"].get_mut(key) else {
            let keys: Vec<String> = cm["data"]
                .as_object()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default();
            bail!(
                "ConfigMap {namespace}/{name} has no key {key} (it has: {})",
                keys.join(", ")
            );
        };
        *slot = Value::String(value.to_string());
        Ok(())
    }
}

fn is_configmap(object: &Value, namespace: &str, name: &str) -> bool {
    object["kind"] == "ConfigMap"
        && object["metadata"]["name"] == name
        && object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            == namespace
}

#[cfg(test)]
mod tests {
    use super::Manifests;

    const TWO: &str = "kind: ConfigMap\nmetadata: {name: c, namespace: ns}\ndata: {k: v}\n---\n\
kind: DaemonSet\nmetadata: {name: a}\n---\nkind: DaemonSet\nmetadata: {name: b}\n";

    #[test]
    fn one_daemonset_and_known_configmap_keys() {
        let mut m = Manifests::parse(TWO).unwrap();
        let e = m.daemonset().unwrap_err().to_string();
        assert!(e.contains("2 DaemonSets (a, b)"), "{e}");
        m.set_configmap_value("ns", "c", "k", "w").unwrap();
        assert_eq!(m.configmap("ns", "c").unwrap()["data"]["k"], "w");
        let e = m.set_configmap_value("ns", "c", "kk", "w").unwrap_err();
        assert_eq!(e.to_string(), "ConfigMap ns/c has no key kk (it has: k)");
        assert!(m.set_configmap_value("other", "c", "k", "w").is_err());
    }
}
