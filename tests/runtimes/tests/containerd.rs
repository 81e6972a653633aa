//! containerd 1.6 + runc drive `palisade`: through the CRI API (what kubelet does: a pod
//! sandbox with port mappings, CRI's capitalised portMappings keys) and through `ctr run --cni`
//! (empty `CNI_NETNS` on DEL).
//!
//! Each test starts a private containerd inside the node namespace: own root, state, sockets
//! and config under the test's temporary directory, the CRI plugin's CNI bin/conf dirs
//! pointing at the test's, a local sandbox image, `restrict_oom_score_adj = true`. The image
//! is a busybox-static rootfs packed with umoci and imported with `ctr image import`; its
//! entrypoint serves HTTP, so the sandbox ("pause") container itself is the pod's server.

use anyhow::{bail, Context, Result};
use palisade_runtime_tests::cri::{self, CriClient};
use palisade_runtime_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const IMAGE: &str = "localhost/palisade-test:1";

/// containerd 1.6 shims keep sockets and FIFOs in fixed places under /run/containerd; the
/// tests of this binary run one at a time so the cleanup of one never races another.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the serialisation lock; on drop removes the directories under /run/containerd
/// that the test's containerd created and left empty (only if /run/containerd did not exist
/// before: a host containerd's directories are never touched).
struct RunDirCleanup {
    _serial: std::sync::MutexGuard<'static, ()>,
    existed: bool,
}

impl RunDirCleanup {
    fn new() -> RunDirCleanup {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        RunDirCleanup {
            _serial: serial,
            existed: Path::new("/run/containerd").exists(),
        }
    }
}

impl Drop for RunDirCleanup {
    fn drop(&mut self) {
        if self.existed {
            return;
        }
        fn remove_empty(dir: &Path) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_empty(&e.path());
                }
            }
            let _ = std::fs::remove_dir(dir); // fails, harmlessly, unless empty
        }
        remove_empty(Path::new("/run/containerd"));
    }
}

struct Containerd<'a> {
    node: &'a TestNode,
    ctr: PathBuf,
    socket: PathBuf,
    _daemon: ChildGuard,
}

impl<'a> Containerd<'a> {
    fn start(node: &'a TestNode) -> Result<Containerd<'a>> {
        let containerd = require("containerd", "containerd")?;
        let ctr = require("ctr", "containerd")?;
        require("runc", "runc")?;
        require("containerd-shim-runc-v2", "containerd")?;
        require("umoci", "umoci")?;
        let d = &node.dir;
        let socket = d.join("containerd.sock");
        let config = d.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/containerd-root"
state = "{d}/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc-root"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{netd}"
    max_conf_num = 1
"#,
                d = d.display(),
                bin = node.bin_dir().display(),
                netd = node.conf_dir().display(),
            ),
        )?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let daemon = node
            .command(&containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        let c = Containerd {
            node,
            ctr,
            socket,
            _daemon: ChildGuard(daemon),
        };
        wait_for(RUNTIME_DEADLINE, || {
            c.ctr(&["version"])
                .output()
                .ok()
                .filter(|o| o.status.success())
        })
        .with_context(|| format!("containerd did not come up; log:\n{}", c.log()))?;
        Ok(c)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.node.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = self.node.command(&self.ctr);
        c.arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Pack the busybox rootfs as an OCI image with umoci and import it into `namespace`.
    fn import_image(&self, namespace: &str) -> Result<()> {
        let d = &self.node.dir;
        let layout = d.join("oci");
        let bundle = d.join("oci-bundle");
        let layout_tag = format!("{}:1", layout.display());
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout))?;
        run(Command::new("umoci").args(["new", "--image", &layout_tag]))?;
        run(Command::new("umoci")
            .args(["unpack", "--image", &layout_tag])
            .arg(&bundle))?;
        run(Command::new("cp")
            .arg("-a")
            .arg(self.node.rootfs().join("."))
            .arg(bundle.join("rootfs")))?;
        run(Command::new("umoci")
            .args(["repack", "--image", &layout_tag])
            .arg(&bundle))?;
        let port = POD_PORT.to_string();
        run(Command::new("umoci").args([
            "config",
            "--image",
            &layout_tag,
            "--config.entrypoint",
            "/bin/busybox",
            "--config.cmd",
            "httpd",
            "--config.cmd",
            "-f",
            "--config.cmd",
            "-p",
            "--config.cmd",
            &port,
            "--config.cmd",
            "-h",
            "--config.cmd",
            "/www",
        ]))?;
        let tar = d.join("image.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg("."))?;
        run(self
            .ctr(&[
                "-n",
                namespace,
                "images",
                "import",
                "--base-name",
                "localhost/palisade-test",
            ])
            .arg(&tar))?;
        let images = run(&mut self.ctr(&["-n", namespace, "images", "ls", "-q"]))?;
        if !images.lines().any(|l| l.trim() == IMAGE) {
            bail!("image {IMAGE} not imported; images: {images}");
        }
        Ok(())
    }
}

/// Wait until no pod veth, no data file naming `id` or `ip`, and no hostPort table remain.
fn assert_freed(node: &TestNode, id: &str, ip: &str) {
    let freed = wait_for(RUNTIME_DEADLINE, || {
        (node.pod_veths().is_empty()
            && node.data_files_naming(id).is_empty()
            && node.ipam_records_holding(ip).is_empty()
            && node.hostport_table().is_none())
        .then_some(())
    });
    assert!(
        freed.is_some(),
        "not freed after teardown of {id}: veths {:?}, files {:?}, IPAM {:?}, hostPort table {:?}",
        node.pod_veths(),
        node.data_files_naming(id),
        node.ipam_records_holding(ip),
        node.hostport_table()
    );
}

fn pod_checks(node: &TestNode, ip: &str, host_port: bool) -> Result<()> {
    let addr: std::net::Ipv4Addr = ip.parse().with_context(|| format!("pod IP {ip:?}"))?;
    anyhow::ensure!(
        addr.octets()[..3] == [10, 248, 0],
        "pod IP {ip} not from {POD_SUBNET}"
    );
    anyhow::ensure!(
        node.pod_veths().len() == 1,
        "node veths: {:?}",
        node.pod_veths()
    );
    anyhow::ensure!(
        TestNode::ping(&node.remote, ip),
        "remote node cannot ping pod {ip}"
    );
    let got = TestNode::http_get_eventually(&node.remote, &format!("http://{ip}:{POD_PORT}/"))?;
    anyhow::ensure!(got == POD_GREETING, "pod answered {got:?}");
    if host_port {
        let url = format!("http://{NODE_IP}:{HOST_PORT}/");
        let got = TestNode::http_get(&node.remote, &url)?;
        anyhow::ensure!(got == POD_GREETING, "hostPort answered {got:?}");
        let got = TestNode::http_get(&node.ns, &url)?;
        anyhow::ensure!(
            got == POD_GREETING,
            "hostPort from the node answered {got:?}"
        );
        let table = node.hostport_table().context("hostPort table missing")?;
        anyhow::ensure!(table.contains(ip), "hostPort table lacks {ip}:\n{table}");
    }
    Ok(())
}

#[test]
fn containerd_cri_pod_sandbox_with_host_port() {
    if !runtime_tests_enabled() {
        return;
    }
    let _cleanup = RunDirCleanup::new();
    let node = TestNode::new("cri").unwrap();
    node.write_conflist().unwrap();
    let containerd = Containerd::start(&node).unwrap();
    containerd.import_image("k8s.io").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = CriClient::connect(&containerd.socket).await.unwrap();
        let v = client.version().await.unwrap();
        assert_eq!(v.runtime_name, "containerd", "{v:?}");
        let uid = format!("{}-uid", palisade_testutil::run_prefix());
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid,
                namespace: "palisade-test".into(),
                attempt: 0,
            }),
            hostname: "web".into(),
            log_directory: node.dir.join("pod-logs").to_string_lossy().into_owned(),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::PROTOCOL_TCP,
                container_port: i32::from(POD_PORT),
                host_port: i32::from(HOST_PORT),
                host_ip: String::new(),
            }],
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let id = client
            .run_pod_sandbox(config)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\ncontainerd log:\n{}", containerd.log()))
            .unwrap();
        let status = client.pod_sandbox_status(&id).await.unwrap();
        let ip = status
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let outcome = pod_checks(&node, &ip, true).and_then(|()| {
            anyhow::ensure!(
                node.ipam_records_holding(&id).len() == 1,
                "no IPAM record for {id}"
            );
            Ok(())
        });
        client.stop_pod_sandbox(&id).await.unwrap();
        // DEL may come twice per pod (stop, then remove): both must succeed.
        client.remove_pod_sandbox(&id).await.unwrap();
        outcome.unwrap();
        assert_freed(&node, &id, &ip);
    });
}

/// `ctr run --cni` loads the first config of /etc/cni/net.d and the plugins of /opt/cni/bin,
/// paths it does not let one change: it runs in a private mount namespace with the test's
/// directories bind-mounted there, so the host's are untouched.
#[test]
fn ctr_run_cni_uses_palisade() {
    if !runtime_tests_enabled() {
        return;
    }
    let _cleanup = RunDirCleanup::new();
    let node = TestNode::new("ctr").unwrap();
    node.write_conflist().unwrap();
    let containerd = Containerd::start(&node).unwrap();
    let ns = "palisade-test";
    containerd.import_image(ns).unwrap();
    let id = format!("{}-ctr", palisade_testutil::run_prefix());
    let port = POD_PORT.to_string();
    // Mount points that do not exist are made inside a tmpfs mounted over their parent, in the
    // private mount namespace: nothing is created on the host's filesystem.
    let script = format!(
        "set -e
         place() {{ # place SRC DST: bind SRC over DST, creating DST under a private tmpfs
           if [ ! -d \"$2\" ]; then
             p=$(dirname \"$2\"); while [ ! -d \"$p\" ]; do p=$(dirname \"$p\"); done
             [ \"$p\" != / ] && [ \"$p\" != /etc ] || {{ echo \"cannot place $2\" >&2; exit 1; }}
             mount -t tmpfs tmpfs \"$p\"; mkdir -p \"$2\"
           fi
           mount --bind \"$1\" \"$2\"
         }}
         place {netd} /etc/cni/net.d
         place {bin} /opt/cni/bin
         exec {ctr} --address {sock} -n {ns} run --rm --cni --runc-root {runc_root} {IMAGE} {id} \\
              /bin/busybox httpd -f -p {port} -h /www",
        netd = node.conf_dir().display(),
        bin = node.bin_dir().display(),
        ctr = containerd.ctr.display(),
        sock = containerd.socket.display(),
        runc_root = node.dir.join("runc-root").display(),
    );
    let log = std::fs::File::create(node.dir.join("ctr-run.log")).unwrap();
    let child = node
        .command(Path::new("unshare"))
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let ctr_log = || std::fs::read_to_string(node.dir.join("ctr-run.log")).unwrap_or_default();
    let full_id = format!("{ns}-{id}");
    let ip = wait_for(RUNTIME_DEADLINE, || {
        let out = containerd
            .ctr(&[
                "-n",
                ns,
                "task",
                "exec",
                "--exec-id",
                "ip",
                &id,
                "/bin/busybox",
                "ip",
                "-4",
                "-o",
                "addr",
                "show",
                "eth0",
            ])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let ip = s
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?
            .split('/')
            .next()?
            .to_string();
        Some(ip)
    })
    .with_context(|| format!("the ctr container got no IP; ctr log:\n{}", ctr_log()))
    .unwrap();
    let outcome = pod_checks(&node, &ip, false).and_then(|()| {
        anyhow::ensure!(
            !node.ipam_records_holding(&full_id).is_empty(),
            "no IPAM record for {full_id}"
        );
        Ok(())
    });
    // Stop the task: `ctr run --rm` then calls CNI DEL (with an empty CNI_NETNS: the task's
    // netns is gone) and removes the container.
    let _ = containerd
        .ctr(&["-n", ns, "task", "kill", "-s", "KILL", &id])
        .status();
    let exited = wait_for(RUNTIME_DEADLINE, || child.0.try_wait().ok().flatten());
    outcome.unwrap();
    assert!(
        exited.is_some(),
        "ctr run did not exit after the task was killed:\n{}",
        ctr_log()
    );
    assert_freed(&node, &full_id, &ip);
    let log = ctr_log();
    assert!(
        !log.to_lowercase().contains("failed to remove network"),
        "ctr DEL failed:\n{log}"
    );
}
