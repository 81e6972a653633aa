//! Image mode's node runtime runs CNI plugins as a runtime on that node would: the first
//! config of the node's CNI config dir, the plugin from the node's CNI bin dir, inside the
//! node's network namespace, seeing the node's own files at the paths the config names, and
//! without mounting anything in the machine's mount namespace. The "plugin" here is a shell
//! script that reports what it sees.

use palisade_integration::kubelet::cni::NodeCni;
use palisade_testutil::{kernel_tests_enabled, TestNetns};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn the_plugin_runs_from_the_node_with_the_nodes_files() {
    if !kernel_tests_enabled() {
        return;
    }
    let node = TestNetns::new("cninode").unwrap();
    // Node paths that do not exist on the machine: their mount points are created (empty)
    // and removed at the end, as they are this test's own.
    let tag = palisade_testutil::run_prefix();
    let (run_dir, data_dir) = (format!("/run/{tag}"), format!("/var/lib/cni/{tag}"));
    let root = tempfile_dir();
    // Removes what the test made when dropped, also when an assertion fails (the end of
    // the test removes them itself and checks they were left empty).
    let _cleanup = Cleanup(vec![
        root.clone(),
        PathBuf::from(&run_dir),
        PathBuf::from(&data_dir),
    ]);
    let host = root.join("host");
    let write = |path: &str, content: &str| {
        let p = host.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    };
    // Two configs: the runtime takes the first in lexical order.
    write(
        "/etc/cni/net.d/10-palisade.conflist",
        &serde_json::json!({"cniVersion": "1.1.0", "name": "palisade", "plugins": [{
            "type": "palisade",
            "ipam": {"dataDir": data_dir},
            "agent": {"socket": format!("{run_dir}/agent.sock")}}]})
        .to_string(),
    );
    write(
        "/etc/cni/net.d/20-other.conflist",
        r#"{"cniVersion": "1.1.0", "name": "other", "plugins": []}"#,
    );
    write(&format!("{run_dir}/agent.sock"), "the node's socket");
    write(&format!("{data_dir}/state"), "the node's IPAM state");
    let plugin = write(
        "/opt/cni/bin/palisade",
        &format!(
            "#!/bin/sh\ncat {run_dir}/agent.sock; echo\ncat {data_dir}/state; echo\n\
             readlink /proc/self/ns/net\n"
        ),
    );
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = mounts();

    let cni = NodeCni::load(node.path(), &host, std::slice::from_ref(&run_dir)).unwrap();
    assert!(cni.conf_file.ends_with("10-palisade.conflist"));
    assert_eq!(cni.conflist["name"], "palisade");
    let out = cni.plugin_command("palisade").unwrap().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "the node's socket");
    assert_eq!(lines[1], "the node's IPAM state");
    // The namespace file's inode is the namespace's: net:[INODE].
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(node.path()).unwrap().ino();
    assert_eq!(
        lines[2],
        format!("net:[{inode}]"),
        "the plugin ran in the node's netns"
    );
    assert!(cni.plugin_command("../x").is_err());

    // Nothing of it is mounted here.
    assert_eq!(mounts(), before);
    assert!(!mounts().contains(&host.display().to_string()));
    drop(node);
    std::fs::remove_dir_all(&root).unwrap();
    for d in [&run_dir, &data_dir] {
        std::fs::remove_dir(d).unwrap();
    }
}

struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{}-kubelet-cni", palisade_testutil::run_prefix()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
