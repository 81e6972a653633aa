//! The container runtime's CNI side on one node of image mode: it reads the network config
//! that the DaemonSet's install container put into the node's CNI config directory and runs
//! the plugin binary it put into the node's CNI bin directory (not the build output), the way
//! containerd's CRI plugin does (first config file in lexical order; plugins from the bin
//! dir).
//!
//! The plugin must see the node's own files at the paths the config names
//! (`/run/palisade/agent.sock`, `/var/lib/cni/palisade`, ...), and each node has its own copy
//! of them under `<run dir>/node-N/host`. So it runs as a runtime on that node would run it:
//! in the node's network namespace and in a private mount namespace in which the node's
//! directories are bind-mounted over those paths. The mounts are made between fork and exec
//! in the child (unshare(CLONE_NEWNS), `/` made a recursive slave so nothing propagates back,
//! then the binds): nothing is ever mounted in the machine's own mount namespace.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The container runtime's CNI directories on a node (containerd's and CRI-O's defaults).
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";

/// One node's CNI setup as its runtime sees it.
#[derive(Debug, Clone)]
pub struct NodeCni {
    netns: PathBuf,
    /// (the node's copy, the path on the node), parents before children.
    binds: Vec<(PathBuf, PathBuf)>,
    /// The config file used.
    pub conf_file: PathBuf,
    pub conflist: Value,
}

impl NodeCni {
    /// Read the node's network config and prepare its view of `node_paths` (the DaemonSet's
    /// hostPaths; the config's own paths are added).
    pub fn load(netns: &Path, host_root: &Path, node_paths: &[String]) -> Result<NodeCni> {
        let host = |p: &str| host_root.join(p.trim_start_matches('/'));
        let conf_dir = host(CNI_CONF_DIR);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&conf_dir)
            .with_context(|| format!("read the node's CNI config dir {}", conf_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
            })
            .collect();
        files.sort();
        let Some(conf_file) = files.into_iter().next() else {
            bail!(
                "no CNI config in the node's {CNI_CONF_DIR} ({}): did the install container run?",
                conf_dir.display()
            );
        };
        let conflist: Value = serde_json::from_slice(
            &std::fs::read(&conf_file).with_context(|| format!("read {}", conf_file.display()))?,
        )
        .with_context(|| format!("parse {}", conf_file.display()))?;
        if !conflist["plugins"].is_array() {
            bail!(
                "{}: not a network config list (no \"plugins\")",
                conf_file.display()
            );
        }

        // The node's paths the plugin uses: the runtime's CNI dirs, the DaemonSet's hostPaths,
        // and what each plugin config names (palisade's IPAM data dir and agent socket).
        let mut paths: Vec<String> = vec![CNI_CONF_DIR.into(), CNI_BIN_DIR.into()];
        paths.extend(node_paths.iter().cloned());
        for p in conflist["plugins"].as_array().into_iter().flatten() {
            if p["type"] == "palisade" {
                paths.push(
                    p["ipam"]["dataDir"]
                        .as_str()
                        .unwrap_or(palisade_common::DEFAULT_IPAM_DATA_DIR)
                        .to_string(),
                );
                if let Some(parent) = p["agent"]["socket"].as_str().and_then(|s| {
                    Path::new(s)
                        .parent()
                        .map(|d| d.to_string_lossy().into_owned())
                }) {
                    paths.push(parent);
                }
            }
        }
        // Parents before children, and a path inside another bound one needs no bind of
        // its own (it is already the node's).
        paths.sort_by_key(|p| p.len());
        let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
        for p in paths {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                bail!("{}: node path {p:?} must be absolute", conf_file.display());
            }
            let target = PathBuf::from(&p);
            if binds.iter().any(|(_, t)| target.starts_with(t)) {
                continue;
            }
            let source = host(&p);
            std::fs::create_dir_all(&source)
                .with_context(|| format!("mkdir {}", source.display()))?;
            // The mount point must exist; where the machine lacks it, an empty directory is
            // created (it stays: another run may be using it as a mount point right now).
            std::fs::create_dir_all(&target)
                .with_context(|| format!("create the mount point {}", target.display()))?;
            binds.push((source, target));
        }
        Ok(NodeCni {
            netns: netns.to_path_buf(),
            binds,
            conf_file,
            conflist,
        })
    }

    /// A command that runs the plugin of type `plugin` from the node's CNI bin dir, in the
    /// node's network namespace and its view of the file system.
    pub fn plugin_command(&self, plugin: &str) -> Result<Command> {
        if plugin.contains('/') {
            bail!("plugin type {plugin:?} names a path");
        }
        let netns = palisade_kernel::netns::Netns::open(&self.netns)
            .with_context(|| format!("open {}", self.netns.display()))?;
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("NUL in {}", p.display()))
        };
        let binds: Vec<(CString, CString)> = self
            .binds
            .iter()
            .map(|(s, t)| Ok((cstr(s)?, cstr(t)?)))
            .collect::<Result<_>>()?;
        let root = c"/";
        let mut cmd = Command::new(Path::new(CNI_BIN_DIR).join(plugin));
        // SAFETY: between fork and exec only async-signal-safe system calls run (setns,
        // unshare, mount) on data prepared before the fork; the netns fd is owned by the
        // closure and closed at exec (O_CLOEXEC).
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::setns(netns.fd(), libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ))?;
                for (source, target) in &binds {
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}
