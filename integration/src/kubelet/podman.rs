//! The container runtime of image mode: podman, with a storage of the run's own.
//!
//! Everything podman keeps lives under one directory of the run (`--root`, `--runroot`,
//! `--tmpdir`, runc's `--root`, the network config dir), with the `vfs` storage driver: it
//! copies the image per container (about 40 MB here, a few ms) instead of mounting overlays,
//! so nothing of a run is ever mounted in the machine's mount namespace, and a crashed run
//! leaves only files, which [`sweep_stale_store`] removes. For the same reason containers run
//! with `--ipc none` and a tmpfs on `/dev/shm` mounted inside the container (podman's shared
//! `/dev/shm` is a mount on the machine). Containers' cgroups go under a parent named after
//! the store: podman with runc and cgroupfs on this machine's hybrid hierarchy leaves a
//! removed container's cgroup directories behind, so the store removes them itself.
//!
//! Flags that this machine needs (`machine.md`, "Running the project's own image"): runc
//! (crun refuses the hybrid cgroups), the cgroupfs manager, the file events backend, and both
//! `--ulimit` flags (without them runc fails with "error setting rlimit type 6/7").

use super::podspec::{ContainerPlan, PodPlan};
use super::security::Seccomp;
use crate::cluster::cleanup;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Marks a directory as a podman store of this harness (for [`sweep_stale_store`]).
const STORE_MARK: &str = "palisade-podman-store";

/// One container to start: which, of which pod, where, logging to where.
pub struct Launch<'a> {
    /// The podman container name.
    pub name: String,
    pub container: &'a ContainerPlan,
    pub pod: &'a PodPlan,
    /// The network namespace (the pod is hostNetwork: its node's).
    pub netns: &'a Path,
    /// The node's name.
    pub hostname: &'a str,
    pub log: PathBuf,
}

/// A podman storage holding the image, private to one run.
pub struct ImageStore {
    dir: PathBuf,
    /// The name the DaemonSet gives the image, tagged onto the image loaded from the layout.
    pub image: String,
    /// The image's configured user (`USER uid[:gid]`), for containers that name none.
    pub image_user: Option<(u32, Option<u32>)>,
    /// The cleanup registry's id of [`remove_store_contents`] for this store.
    teardown: u64,
}

/// `/sys/fs/cgroup/<hierarchy>/<this>`: the cgroup parent of a store's containers.
fn cgroup_parent(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "palisade-podman".into())
}

/// Remove every container of the store at `dir` and the cgroups they leave.
fn remove_store_contents(dir: &Path) -> Result<()> {
    let rm = output(
        podman_in(dir).args(["rm", "--force", "--all", "--time", "0"]),
        "rm --all",
    );
    remove_cgroups(&cgroup_parent(dir));
    rm.map(|_| ())
}

/// rmdir `name` (and the empty cgroups below it) in every cgroup hierarchy. rmdir only
/// removes a cgroup without processes, so this never disturbs a running one.
fn remove_cgroups(name: &str) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let dir = h.path().join(name);
            if dir.is_dir() {
                rmdir_tree(&dir);
            }
        }
    }
}

fn global_args(dir: &Path) -> Vec<OsString> {
    let p = |sub: &str| dir.join(sub).into_os_string();
    let mut args: Vec<OsString> = Vec::new();
    for (flag, value) in [
        ("--root", p("root")),
        ("--runroot", p("runroot")),
        ("--tmpdir", p("tmp")),
        ("--network-config-dir", p("net")),
        ("--storage-driver", "vfs".into()),
        ("--runtime", "runc".into()),
        ("--cgroup-manager", "cgroupfs".into()),
        ("--events-backend", "file".into()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    // runc keeps its container state here instead of /run/runc.
    let mut runc_root = OsString::from("root=");
    runc_root.push(dir.join("runc"));
    args.push("--runtime-flag".into());
    args.push(runc_root);
    args
}

fn podman_in(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.args(global_args(dir)).stdin(Stdio::null());
    c
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("run podman ({what}); is podman installed?"))?;
    Ok(
        crate::cluster::netns::check(&out, &format!("podman {what}"))?
            .trim()
            .to_string(),
    )
}

/// An OCI layout as given on the command line: `DIR` (its one image) or `DIR:REF`.
pub fn layout_reference(arg: &Path) -> Result<(PathBuf, String)> {
    if arg.join("index.json").is_file() {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(arg.join("index.json"))
                .with_context(|| format!("read {}/index.json", arg.display()))?,
        )
        .with_context(|| format!("parse {}/index.json", arg.display()))?;
        let refs: Vec<String> = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .map(str::to_string)
            .collect();
        return match refs.as_slice() {
            [one] => Ok((arg.to_path_buf(), one.clone())),
            _ => bail!(
                "{} holds {} images ({}); name one as {}:REF",
                arg.display(),
                refs.len(),
                refs.join(", "),
                arg.display()
            ),
        };
    }
    let s = arg.to_string_lossy();
    if let Some((dir, r)) = s.rsplit_once(':') {
        if Path::new(dir).join("index.json").is_file() {
            return Ok((PathBuf::from(dir), r.to_string()));
        }
    }
    bail!(
        "{} is not an OCI image layout (no index.json; build one with image/build-oci.sh OUT, \
         then pass OUT/oci)",
        arg.display()
    )
}

impl ImageStore {
    /// A fresh store at `dir` with the image `reference` of the OCI layout `layout`, tagged
    /// `image`. Registered with the cleanup registry until dropped.
    pub fn load(dir: &Path, layout: &Path, reference: &str, image: &str) -> Result<ImageStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        cleanup::register_dir(dir);
        std::fs::write(dir.join(STORE_MARK), "")?;
        let owned = dir.to_path_buf();
        let teardown = cleanup::register_teardown(Box::new(move || {
            let _ = remove_store_contents(&owned);
        }));
        let mut store = ImageStore {
            dir: dir.to_path_buf(),
            image: image.to_string(),
            image_user: None,
            teardown,
        };
        // The `oci:` transport reads the layout directly, but podman names the image after
        // the layout's path and refuses upper-case letters in it (mktemp makes such paths):
        // read it through a link with a name of ours.
        let link = dir.join("layout");
        let target = std::fs::canonicalize(layout)
            .with_context(|| format!("OCI layout {}", layout.display()))?;
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("link {}", link.display()))?;
        let source = format!("oci:{}:{reference}", link.display());
        let id = output(
            store.podman().args(["pull", "--quiet", &source]),
            &format!("pull {source}"),
        )?;
        output(store.podman().args(["tag", &id, image]), "tag")?;
        let user = output(
            store
                .podman()
                .args(["image", "inspect", "--format", "{{.Config.User}}", &id]),
            "image inspect",
        )?;
        store.image_user = parse_user(&user)?;
        Ok(store)
    }

    pub fn podman(&self) -> Command {
        podman_in(&self.dir)
    }

    /// `podman run` arguments for one container.
    fn run_args(&self, l: &Launch) -> Result<Vec<OsString>> {
        let (name, c, pod, hostname) = (&l.name, l.container, l.pod, l.hostname);
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |v: &[&str]| a.extend(v.iter().map(OsString::from));
        push(&["--name", name, "--pull", "never", "--hostname", hostname]);
        push(&["--cgroup-parent", &format!("/{}", cgroup_parent(&self.dir))]);
        push(&["--network", &format!("ns:{}", l.netns.display())]);
        push(&[
            "--ipc",
            "none",
            "--mount",
            "type=tmpfs,destination=/dev/shm",
        ]);
        push(&[
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        push(&[
            "--stop-timeout",
            &pod.termination_grace.as_secs().to_string(),
        ]);
        let s = &c.security;
        // Exactly the resolved set: podman's own default set differs from Kubernetes'.
        push(&["--cap-drop", "ALL"]);
        for cap in s.capabilities.names() {
            push(&["--cap-add", &cap]);
        }
        let user = match (s.run_as_user, s.run_as_group) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(g)) => {
                let u = self.image_user.map_or(0, |(u, _)| u);
                Some(format!("{u}:{g}"))
            }
            (None, None) => None,
        };
        if s.run_as_non_root && self.uid(s.run_as_user) == 0 {
            bail!(
                "container {}: runAsNonRoot is true and the image runs as root (kubelet \
                 refuses to start it)",
                c.name
            );
        }
        if let Some(user) = user {
            push(&["--user", &user]);
        }
        if s.read_only_root {
            // podman adds tmpfs on /run, /tmp and /var/tmp to a read-only root unless told
            // not to; kubelet adds nothing.
            push(&["--read-only", "--read-only-tmpfs=false"]);
        }
        if s.no_new_privileges {
            push(&["--security-opt", "no-new-privileges"]);
        }
        if s.seccomp == Seccomp::Unconfined {
            push(&["--security-opt", "seccomp=unconfined"]);
        }
        if let Some(dir) = &c.working_dir {
            push(&["--workdir", dir]);
        }
        for (k, v) in &c.env {
            push(&["--env", &format!("{k}={v}")]);
        }
        for m in &c.mounts {
            let src = m.source.to_string_lossy();
            if src.contains(',') || m.target.contains(',') {
                bail!(
                    "mount {src} -> {}: a ',' cannot be passed to podman",
                    m.target
                );
            }
            let mut spec = format!("type=bind,source={src},destination={}", m.target);
            if m.read_only {
                spec.push_str(",ro");
            }
            push(&["--mount", &spec]);
        }
        if let Some(cmd) = &c.command {
            push(&["--entrypoint", &serde_json::to_string(cmd)?]);
        }
        a.push(self.image.clone().into());
        a.extend(c.args.iter().flatten().map(OsString::from));
        Ok(a)
    }

    /// The uid a container runs as: the plan's, else the image's.
    pub fn uid(&self, run_as_user: Option<u32>) -> u32 {
        run_as_user.or(self.image_user.map(|(u, _)| u)).unwrap_or(0)
    }

    /// Start a container that runs to completion (an init container), its output to its
    /// log. The returned child is `podman run`; it exits with the container.
    pub fn spawn_to_completion(&self, l: &Launch) -> Result<Child> {
        let log = std::fs::File::create(&l.log)?;
        let child = self
            .podman()
            .arg("run")
            .arg("--rm")
            .args(self.run_args(l)?)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("run podman")?;
        cleanup::register_process(child.id());
        Ok(child)
    }

    /// Start long-running containers in the background (all at once), each logging in
    /// k8s-file format to its log. Returns their processes' PIDs on the machine.
    pub fn start_all(&self, launches: &[Launch]) -> Result<Vec<u32>> {
        let mut children = Vec::new();
        for l in launches {
            let child = self
                .podman()
                .args(["run", "--detach", "--log-driver", "k8s-file", "--log-opt"])
                .arg(format!("path={}", l.log.display()))
                .args(self.run_args(l)?)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("run podman")?;
            children.push((l.name.as_str(), child));
        }
        let mut failed = Vec::new();
        for (name, child) in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                failed.push(format!(
                    "podman run {name} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if !failed.is_empty() {
            bail!("{}", failed.join("\n"));
        }
        let names: Vec<&str> = launches.iter().map(|l| l.name.as_str()).collect();
        self.pids(&names)
    }

    /// The PIDs on the machine of running containers' first processes.
    pub fn pids(&self, names: &[&str]) -> Result<Vec<u32>> {
        let out = output(
            self.podman()
                .args(["inspect", "--format", "{{.State.Pid}}"])
                .args(names),
            "inspect",
        )?;
        let pids: Vec<&str> = out.lines().collect();
        if pids.len() != names.len() {
            bail!("podman inspect {names:?} answered {out:?}");
        }
        names
            .iter()
            .zip(pids)
            .map(|(name, pid)| match pid.trim().parse::<u32>() {
                Ok(p) if p > 0 => Ok(p),
                _ => bail!("container {name} is not running (pid {pid:?})"),
            })
            .collect()
    }

    /// A stopped container's state and exit code, for error messages.
    pub fn exit_state(&self, name: &str) -> String {
        output(
            self.podman().args([
                "inspect",
                "--format",
                "{{.State.Status}} (exit code {{.State.ExitCode}})",
                name,
            ]),
            "inspect",
        )
        .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// Stop (SIGTERM, then SIGKILL after `grace`) and remove containers.
    pub fn remove(&self, names: &[String], grace: Duration) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        output(
            self.podman()
                .args(["rm", "--force", "--ignore", "--time"])
                .arg(grace.as_secs().to_string())
                .args(names),
            "rm",
        )
        .map(|_| ())
    }
}

impl Drop for ImageStore {
    fn drop(&mut self) {
        if let Err(e) = remove_store_contents(&self.dir) {
            eprintln!("{e:#}");
        }
        cleanup::forget_teardown(self.teardown);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("remove {}: {e}", self.dir.display());
        }
        cleanup::forget_dir(&self.dir);
    }
}

/// `uid[:gid]` (numeric only: there is no passwd lookup here).
fn parse_user(user: &str) -> Result<Option<(u32, Option<u32>)>> {
    if user.is_empty() {
        return Ok(None);
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| anyhow!("the image's user {user:?} is not numeric"))
    };
    Ok(Some((num(u)?, g.map(num).transpose()?)))
}

/// Whether `dir` is a store made by [`ImageStore::load`].
pub fn is_store(dir: &Path) -> bool {
    dir.join(STORE_MARK).exists()
}

/// Remove the containers and cgroups of a crashed run's store; the caller then removes the
/// directory.
pub fn sweep_stale_store(dir: &Path) {
    let _ = remove_store_contents(dir);
}

#[cfg(test)]
mod tests {
    use super::parse_user;

    #[test]
    fn image_users() {
        assert_eq!(parse_user("").unwrap(), None);
        assert_eq!(
            parse_user("65534:65534").unwrap(),
            Some((65534, Some(65534)))
        );
        assert_eq!(parse_user("0").unwrap(), Some((0, None)));
        assert!(parse_user("nobody").is_err());
    }
}
