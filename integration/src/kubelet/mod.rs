//! The part of kubelet (and of its container runtime) that image mode needs: start the pod
//! of a DaemonSet on a netns node exactly as the manifests describe it.
//!
//! - [`manifests`]: the manifests as installed (`kubectl kustomize conf`);
//! - [`podspec`]: the DaemonSet and its ConfigMap turned into one node's [`podspec::PodPlan`]
//!   (command and args with `$(VAR)` expanded ([`expand`]), env, volumes, security, probes);
//!   a field it cannot honour is an error naming it;
//! - [`security`]: the resolved `securityContext` and the check of a running process
//!   against it;
//! - [`podman`]: the container runtime (podman with a storage of the run's own);
//! - [`probe`]: `httpGet` probes, run from the node's network namespace as kubelet runs them;
//! - [`cni`]: how the node's runtime runs the plugin that the pod installed.
//!
//! [`prepare_pod`] does what kubelet does before the first container starts: host paths
//! checked or created per their `type`, configMap and service account files written.

pub mod cni;
pub mod expand;
mod fields;
pub mod manifests;
pub mod podman;
pub mod podspec;
pub mod probe;
pub mod security;

use anyhow::{bail, Context, Result};
use podspec::{HostPathKind, PodPlan};
use std::os::unix::fs::PermissionsExt;

/// Create or check the pod's host paths and write its files.
pub fn prepare_pod(plan: &PodPlan) -> Result<()> {
    for h in &plan.host_paths {
        let what = || format!("hostPath {} ({})", h.path, h.source.display());
        match h.kind {
            HostPathKind::Unchecked => {}
            HostPathKind::DirectoryOrCreate => {
                std::fs::create_dir_all(&h.source).with_context(what)?;
            }
            HostPathKind::Directory => {
                if !h.source.is_dir() {
                    bail!("{}: type Directory, but there is no directory", what());
                }
            }
            HostPathKind::FileOrCreate => {
                if !h.source.exists() {
                    std::fs::write(&h.source, "").with_context(what)?;
                }
            }
            HostPathKind::File => {
                if !h.source.is_file() {
                    bail!("{}: type File, but there is no file", what());
                }
            }
        }
    }
    for f in &plan.files {
        if let Some(dir) = f.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        std::fs::write(&f.path, &f.content)
            .with_context(|| format!("write {}", f.path.display()))?;
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(f.mode))
            .with_context(|| format!("chmod {}", f.path.display()))?;
    }
    Ok(())
}
