//! podman 4 with its CNI backend drives `palisade`: the container gets its IP from palisade's
//! IPAM, is reachable from another node, its `-p` hostPort too, and `podman rm -f` frees
//! everything (veth, IPAM entry, hostPort element and table).
//!
//! podman runs inside the node namespace with every piece of state under the test's temporary
//! directory (`--root`, `--runroot`, `--tmpdir`, a `containers.conf` of its own). Settings that
//! make podman 4.3 work here (machine.md): runc (crun refuses the hybrid cgroups), cgroupfs,
//! the file events logger, an explicit nofile ulimit; every flag goes before `--rootfs DIR`.

use anyhow::{Context, Result};
use palisade_runtime_tests::*;
use std::path::PathBuf;
use std::process::Command;

struct Podman<'a> {
    node: &'a TestNode,
    bin: PathBuf,
    conf: PathBuf,
}

impl<'a> Podman<'a> {
    fn new(node: &'a TestNode) -> Result<Podman<'a>> {
        let bin = require("podman", "podman")?;
        require("runc", "runc")?;
        require("conmon", "conmon")?;
        let conf = node.dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 [engine]\n\
                 runtime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{dir}/events.log\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{bin}\"]\n\
                 network_config_dir = \"{netd}\"\n",
                dir = node.dir.display(),
                bin = node.bin_dir().display(),
                netd = node.conf_dir().display(),
            ),
        )?;
        Ok(Podman { node, bin, conf })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.node.command(&self.bin);
        let d = &self.node.dir;
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(d.join("podman-root"))
            .arg("--runroot")
            .arg(d.join("podman-run"))
            .arg("--tmpdir")
            .arg(d.join("podman-tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        run(&mut self.cmd(args)).map(|s| s.trim().to_string())
    }
}

#[test]
fn podman_cni_backend_runs_pods_on_palisade() {
    if !runtime_tests_enabled() {
        return;
    }
    let node = TestNode::new("pm").unwrap();
    node.write_conflist().unwrap();
    let podman = Podman::new(&node).unwrap();
    let name = format!("{}-web", palisade_testutil::run_prefix());
    let rootfs = node.rootfs();
    let publish = format!("{HOST_PORT}:{POD_PORT}/tcp");
    let port = POD_PORT.to_string();
    // Every flag before --rootfs DIR; what follows it is the command.
    let cid = podman
        .run(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &node.network,
            "-p",
            &publish,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            &port,
            "-h",
            "/www",
        ])
        .context("podman run")
        .unwrap();
    let check = || -> Result<String> {
        let ip = podman.run(&[
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                node.network
            ),
            &cid,
        ])?;
        let pod_ip: std::net::Ipv4Addr = ip.parse().with_context(|| format!("pod IP {ip:?}"))?;
        let subnet: [u8; 3] = [10, 248, 0];
        anyhow::ensure!(
            pod_ip.octets()[..3] == subnet,
            "pod IP {pod_ip} not from palisade's range {POD_SUBNET}"
        );
        anyhow::ensure!(
            node.pod_veths().len() == 1,
            "node veths: {:?}",
            node.pod_veths()
        );
        anyhow::ensure!(
            node.ipam_records_holding(&cid).len() == 1,
            "no IPAM record for {cid}"
        );
        anyhow::ensure!(
            node.ipam_records_holding(&ip).len() == 1,
            "no IPAM record for {ip}"
        );
        // Pod reachable from the remote node (routed through the node) and from the node.
        anyhow::ensure!(
            TestNode::ping(&node.remote, &ip),
            "remote cannot ping pod {ip}"
        );
        let got = TestNode::http_get_eventually(&node.remote, &format!("http://{ip}:{POD_PORT}/"))?;
        anyhow::ensure!(got == POD_GREETING, "pod answered {got:?}");
        // hostPort from the remote node and from the node itself.
        let got = TestNode::http_get(&node.remote, &format!("http://{NODE_IP}:{HOST_PORT}/"))?;
        anyhow::ensure!(got == POD_GREETING, "hostPort answered {got:?}");
        let got = TestNode::http_get(&node.ns, &format!("http://{NODE_IP}:{HOST_PORT}/"))?;
        anyhow::ensure!(
            got == POD_GREETING,
            "hostPort from the node answered {got:?}"
        );
        let table = node.hostport_table().context("hostPort table missing")?;
        anyhow::ensure!(table.contains(&ip), "hostPort table lacks {ip}:\n{table}");
        Ok(ip)
    };
    let outcome = check();
    podman
        .run(&["rm", "-f", &cid])
        .context("podman rm -f")
        .unwrap();
    let ip = outcome.unwrap();

    // Everything freed. The veth pair is down when DEL returns and deleted just after it
    // (by the plugin's detached teardown, or with the netns podman removes): wait for that.
    let veths_gone = wait_for(RUNTIME_DEADLINE, || {
        node.pod_veths().is_empty().then_some(())
    });
    assert!(veths_gone.is_some(), "veth left: {:?}", node.pod_veths());
    assert!(
        node.ipam_records_holding(&cid).is_empty(),
        "IPAM still holds {cid}"
    );
    assert!(
        node.ipam_records_holding(&ip).is_empty(),
        "IPAM still holds {ip}"
    );
    assert!(
        node.data_files_naming(&cid).is_empty(),
        "{:?} name {cid}",
        node.data_files_naming(&cid)
    );
    assert!(
        node.hostport_table().is_none(),
        "hostPort table left:\n{:?}",
        node.hostport_table()
    );
    assert!(TestNode::http_get(&node.remote, &format!("http://{NODE_IP}:{HOST_PORT}/")).is_err());
    // podman itself is gone too (no conmon left for this container).
    assert!(podman.run(&["ps", "-aq"]).unwrap().is_empty());
}
