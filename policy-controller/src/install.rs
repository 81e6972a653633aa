//! Installing Palisade's CNI pieces on a node (the DaemonSet's init container, through
//! `palisade-agent install-cni`) and removing them again (`palisade-agent uninstall`), with
//! the node's pod MTU measured on the node (for an overlay, less its overhead).
//!
//! Both steps write where kubelet and the container runtime read concurrently, so every
//! file is written atomically: a temporary file in the same directory, fsync, rename. A
//! runtime never sees a half-written conflist or a truncated plugin binary.

use crate::agent::routes::overlay::{pod_mtu, vtep_name, OverlayMode};
use crate::agent::routes::underlay::LocalUnderlay;
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use palisade_kernel::rtnl::{Family, Rtnl};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The placeholder in the conflist template that becomes the IPAM range sets: one range set
/// per pod CIDR of the node (`[[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]]`).
pub const RANGES_PLACEHOLDER: &str = "\"__PALISADE_POD_CIDR_RANGES__\"";
/// The placeholder for the node's name (for logs and the agent socket), optional.
pub const NODE_NAME_PLACEHOLDER: &str = "__PALISADE_NODE_NAME__";
/// The placeholder (a JSON string, replaced by a number) for the pods' MTU as detected on the
/// node ([`pod_mtu_here`]): the MTU of the link carrying the node's InternalIP, less the
/// overlay's overhead when there is one. Optional: a number in its place is used as it is.
pub const MTU_PLACEHOLDER: &str = "\"__PALISADE_MTU__\"";
/// File name of the conflist Palisade owns in the CNI config directory. `10-` so that it
/// sorts before other configs: runtimes take the first file.
pub const CONFLIST_NAME: &str = "10-palisade.conflist";
/// File name of the plugin binary in the CNI bin directory (`type: "palisade"`).
pub const PLUGIN_NAME: &str = "palisade";

/// Where to install and what.
#[derive(Debug, Clone)]
pub struct InstallConfig {
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// The `palisade` binary to copy into `cni_bin_dir`.
    pub plugin_binary: PathBuf,
    /// The conflist template (JSON with the placeholders above).
    pub template: String,
}

/// Render the conflist for a node from the template, the node's pod CIDRs
/// (`Node.spec.podCIDRs`) and the pods' MTU (for [`MTU_PLACEHOLDER`]; `None` when the
/// template has a number). The result is checked to be JSON.
pub fn render_conflist(
    template: &str,
    node_name: &str,
    pod_cidrs: &[IpNet],
    mtu: Option<u32>,
) -> Result<String> {
    if pod_cidrs.is_empty() {
        bail!("node {node_name} has no spec.podCIDRs yet: cannot render the CNI conflist");
    }
    if !template.contains(RANGES_PLACEHOLDER) {
        bail!("conflist template lacks the placeholder {RANGES_PLACEHOLDER}");
    }
    let ranges: Vec<serde_json::Value> = pod_cidrs
        .iter()
        .map(|c| serde_json::json!([{ "subnet": c.trunc().to_string() }]))
        .collect();
    let mut rendered = template
        .replace(RANGES_PLACEHOLDER, &serde_json::to_string(&ranges)?)
        .replace(NODE_NAME_PLACEHOLDER, node_name);
    if rendered.contains(MTU_PLACEHOLDER) {
        let Some(mtu) = mtu else {
            bail!("conflist template asks for the detected MTU ({MTU_PLACEHOLDER}), none given");
        };
        rendered = rendered.replace(MTU_PLACEHOLDER, &mtu.to_string());
    }
    let parsed: serde_json::Value =
        serde_json::from_str(&rendered).context("rendered conflist is not valid JSON")?;
    if parsed
        .get("plugins")
        .and_then(|p| p.as_array())
        .is_none_or(|p| p.is_empty())
    {
        bail!("rendered conflist has no plugins");
    }
    Ok(serde_json::to_string_pretty(&parsed)? + "\n")
}

/// Write `contents` to `path` atomically (same-directory temp file, fsync, rename) with
/// the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("path has no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(contents)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()
            .with_context(|| format!("fsync {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        // fsync the directory so the rename itself survives a crash.
        fs::File::open(dir).and_then(|d| d.sync_all()).ok();
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The MTU pods of this node should get, measured in the calling thread's network namespace
/// (the node's): see [`crate::agent::routes::overlay::pod_mtu`]. Why the conflist carries it
/// rather than the agent's answer on its socket: the plugin sizes the veth before it has an
/// address to announce, and ADD must size it alike when the agent cannot be reached.
pub fn pod_mtu_here(overlay: OverlayMode, internal_ips: &[IpAddr]) -> Result<u32> {
    let mut rtnl = Rtnl::open()?;
    let links = rtnl.links()?;
    let local = LocalUnderlay::read(&mut rtnl, &links, internal_ips)?;
    pod_mtu(overlay, &local).with_context(|| {
        format!(
            "none of the node's InternalIPs ({}) is an address of a link here: cannot tell the \
             pods' MTU (install-cni runs in the node's network namespace, hostNetwork)",
            internal_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Delete the agent's VXLAN links (by name, and only VXLAN links) in the calling thread's
/// network namespace.
fn remove_vxlan_links() -> Result<()> {
    let mut rtnl = Rtnl::open()?;
    for link in rtnl.links()? {
        let ours = [Family::V4, Family::V6]
            .iter()
            .any(|f| vtep_name(*f) == link.name);
        if ours && link.kind.as_deref() == Some("vxlan") {
            rtnl.delete_link_index(link.index)?;
            tracing::info!(link = %link.name, "VXLAN link removed");
        }
    }
    Ok(())
}

/// The `mtu` numbers of a rendered conflist's plugins that exceed `limit`.
pub fn mtus_above(conflist: &str, limit: u32) -> Vec<u64> {
    let parsed: serde_json::Value = serde_json::from_str(conflist).unwrap_or_default();
    parsed["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["mtu"].as_u64())
        .filter(|m| *m > u64::from(limit))
        .collect()
}

/// Copy the plugin binary and write the rendered conflist, both atomically, and return the
/// conflist. The binary is installed first, so a runtime that sees the conflist always finds
/// the plugin.
pub fn install_cni(
    cfg: &InstallConfig,
    node_name: &str,
    pod_cidrs: &[IpNet],
    mtu: Option<u32>,
) -> Result<String> {
    let conflist = render_conflist(&cfg.template, node_name, pod_cidrs, mtu)?;
    let binary = fs::read(&cfg.plugin_binary)
        .with_context(|| format!("read plugin binary {}", cfg.plugin_binary.display()))?;
    write_atomic(&cfg.cni_bin_dir.join(PLUGIN_NAME), &binary, 0o755)?;
    write_atomic(
        &cfg.cni_conf_dir.join(CONFLIST_NAME),
        conflist.as_bytes(),
        0o644,
    )?;
    Ok(conflist)
}

/// Remove what Palisade put on the node: the conflist first (no new pods get Palisade
/// networking), then the plugin binary, then the nftables tables of the agent and of the
/// plugin's hostPort mappings, then the overlay's VXLAN links (their routes and entries go
/// with them). Missing pieces are not errors; every step is attempted and all failures are
/// reported together.
pub fn uninstall(
    cni_bin_dir: &Path,
    cni_conf_dir: &Path,
    nft: &str,
    tables: &[&str],
) -> Result<()> {
    let mut errors = Vec::new();
    for path in [
        cni_conf_dir.join(CONFLIST_NAME),
        cni_bin_dir.join(PLUGIN_NAME),
    ] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("remove {}: {e}", path.display())),
        }
    }
    for table in tables {
        let exists = Command::new(nft)
            .args(["list", "table", "inet", table])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !exists {
            continue;
        }
        match Command::new(nft)
            .args(["delete", "table", "inet", table])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => errors.push(format!(
                "nft delete table inet {table}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("run {nft}: {e}")),
        }
    }
    if let Err(e) = remove_vxlan_links() {
        errors.push(format!("{e:#}"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("uninstall incomplete: {}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"{"cniVersion":"1.0.0","name":"palisade","plugins":[
        {"type":"palisade","ipam":{"type":"palisade","ranges":"__PALISADE_POD_CIDR_RANGES__"}}]}"#;

    #[test]
    fn renders_one_range_set_per_pod_cidr() {
        let cidrs: Vec<IpNet> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ];
        let out = render_conflist(TEMPLATE, "n1", &cidrs, None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ranges = &v["plugins"][0]["ipam"]["ranges"];
        assert_eq!(ranges[0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(ranges[1][0]["subnet"], "fd00:10:244:1::/64");
        assert_eq!(ranges.as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_mtu_placeholder_becomes_the_detected_number() {
        let template = TEMPLATE.replace(
            r#"{"type":"palisade","#,
            r#"{"type":"palisade","mtu":"__PALISADE_MTU__","#,
        );
        let cidrs = ["10.244.1.0/24".parse().unwrap()];
        let out = render_conflist(&template, "n1", &cidrs, Some(1430)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["plugins"][0]["mtu"], 1430);
        assert_eq!(mtus_above(&out, 1430), Vec::<u64>::new());
        assert_eq!(mtus_above(&out, 1400), vec![1430]);
        let err = render_conflist(&template, "n1", &cidrs, None).unwrap_err();
        assert!(err.to_string().contains("__PALISADE_MTU__"), "{err}");
        // A number in the template is the operator's: kept as it is.
        let fixed = TEMPLATE.replace(
            r#"{"type":"palisade","#,
            r#"{"type":"palisade","mtu":9000,"#,
        );
        let out = render_conflist(&fixed, "n1", &cidrs, Some(1430)).unwrap();
        assert_eq!(mtus_above(&out, 1430), vec![9000]);
    }

    #[test]
    fn refuses_a_node_without_pod_cidrs_and_a_template_without_placeholder() {
        assert!(render_conflist(TEMPLATE, "n1", &[], None).is_err());
        let err = render_conflist("{}", "n1", &["10.0.0.0/24".parse().unwrap()], None).unwrap_err();
        assert!(err.to_string().contains("placeholder"), "{err}");
    }

    #[test]
    fn install_and_uninstall_leave_no_file_behind() {
        let dir = std::env::temp_dir().join(format!("palisade-install-{}", std::process::id()));
        let bin = dir.join("src-palisade");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&bin, b"#!/bin/true\n").unwrap();
        let cfg = InstallConfig {
            cni_bin_dir: dir.join("bin"),
            cni_conf_dir: dir.join("net.d"),
            plugin_binary: bin,
            template: TEMPLATE.into(),
        };
        install_cni(&cfg, "n1", &["10.244.1.0/24".parse().unwrap()], None).unwrap();
        assert!(cfg.cni_bin_dir.join(PLUGIN_NAME).exists());
        assert!(cfg.cni_conf_dir.join(CONFLIST_NAME).exists());
        // No temp files left behind by the atomic writes.
        assert_eq!(fs::read_dir(&cfg.cni_conf_dir).unwrap().count(), 1);
        // No tables to delete here (empty list): only files.
        uninstall(&cfg.cni_bin_dir, &cfg.cni_conf_dir, "nft", &[]).unwrap();
        assert_eq!(fs::read_dir(&cfg.cni_conf_dir).unwrap().count(), 0);
        assert_eq!(fs::read_dir(&cfg.cni_bin_dir).unwrap().count(), 0);
        // Uninstalling twice is fine.
        uninstall(&cfg.cni_bin_dir, &cfg.cni_conf_dir, "nft", &[]).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
