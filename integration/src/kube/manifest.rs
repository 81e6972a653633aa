//! Scenario model → Kubernetes objects, for the real-cluster mode. Pure: no I/O.
//!
//! Pods run the upstream e2e image agnhost with one container per declared port, serving it
//! the way upstream's NetworkPolicy e2e suite does (`test/e2e/network/netpol`):
//! `serve-hostname --tcp|--udp --http=false --port N`, and for SCTP `porter` with
//! `SERVE_SCTP_PORT_N`. A port declared with `container: init-sidecar` gets an init container
//! with `restartPolicy: Always` (a sidecar), so its named port counts the same way.

use crate::scenario::{
    ContainerKind, LabelChange, Labels, NamespaceSpec, PodSpec, PortSpec, Protocol,
    NAMESPACE_NAME_LABEL,
};
use serde_json::{json, Value};

/// The upstream e2e image the netpol suite uses (overridable with `--image`).
pub const DEFAULT_AGNHOST_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.47";

/// The label put on every namespace a run creates: its value is the run id, so leftovers of
/// an interrupted run can be found (`kubectl get ns -l palisade.dev/scenario-run`).
pub const RUN_LABEL: &str = "palisade.dev/scenario-run";

/// The container of a pod that only exists so the pod has one (no main-container ports).
pub const IDLE_CONTAINER: &str = "idle";

/// The labels a scenario namespace is created with: the scenario's, the name label the API
/// server would add anyway, and the run marker.
pub fn namespace_labels(labels: &Labels, name: &str, run_id: &str) -> Labels {
    let mut labels = labels.clone();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    labels.insert(RUN_LABEL.to_string(), run_id.to_string());
    labels
}

/// The Namespace object of a model namespace.
pub fn namespace_manifest(ns: &NamespaceSpec, run_id: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns.name,
            "labels": namespace_labels(&ns.labels, &ns.name, run_id),
        },
    })
}

/// The name of the container that serves `port`: `cont-80-tcp` (main) or `sidecar-80-tcp`.
pub fn container_name(port: &PortSpec) -> String {
    let prefix = match port.container {
        ContainerKind::Main => "cont",
        ContainerKind::InitSidecar => "sidecar",
    };
    format!(
        "{prefix}-{}-{}",
        port.port,
        port.protocol.as_str().to_ascii_lowercase()
    )
}

/// The container a probe from this pod runs in: the first main container.
pub fn probe_container(pod: &PodSpec) -> String {
    pod.ports
        .iter()
        .find(|p| p.container == ContainerKind::Main)
        .map(container_name)
        .unwrap_or_else(|| IDLE_CONTAINER.to_string())
}

/// The agnhost command line and environment that serve one port.
pub fn serve_command(port: u16, protocol: Protocol) -> (Vec<String>, Vec<Value>) {
    let serve = |flag: &str| {
        ["/agnhost", "serve-hostname", flag, "--http=false", "--port"]
            .iter()
            .map(|s| s.to_string())
            .chain([port.to_string()])
            .collect()
    };
    match protocol {
        Protocol::Tcp => (serve("--tcp"), Vec::new()),
        Protocol::Udp => (serve("--udp"), Vec::new()),
        // serve-hostname has no SCTP listener; upstream's netpol suite uses porter.
        Protocol::Sctp => (
            vec!["/agnhost".to_string(), "porter".to_string()],
            vec![json!({"name": format!("SERVE_SCTP_PORT_{port}"), "value": "foo"})],
        ),
    }
}

fn port_container(port: &PortSpec, image: &str) -> Value {
    let (command, env) = serve_command(port.port, port.protocol);
    let mut container_port = json!({
        "containerPort": port.port,
        "protocol": port.protocol.as_str(),
    });
    if let Some(name) = &port.name {
        container_port["name"] = json!(name);
    }
    let mut c = json!({
        "name": container_name(port),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "ports": [container_port],
    });
    if !env.is_empty() {
        c["env"] = Value::Array(env);
    }
    if port.container == ContainerKind::InitSidecar {
        c["restartPolicy"] = json!("Always");
    }
    c
}

/// The Pod object of a scenario pod. `node_name`: pinned there (bypassing the scheduler).
/// Errors when two ports would need the same container (same port and protocol twice).
pub fn pod_manifest(pod: &PodSpec, image: &str, node_name: Option<&str>) -> Result<Value, String> {
    let mut containers = Vec::new();
    let mut init_containers = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for port in &pod.ports {
        if !names.insert(container_name(port)) {
            return Err(format!(
                "pod {} declares {}/{} twice",
                pod.key(),
                port.port,
                port.protocol
            ));
        }
        let c = port_container(port, image);
        match port.container {
            ContainerKind::Main => containers.push(c),
            ContainerKind::InitSidecar => init_containers.push(c),
        }
    }
    if containers.is_empty() {
        // A pod needs a main container, and probes from this pod need one to run in.
        containers.push(json!({
            "name": IDLE_CONTAINER,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/agnhost", "pause"],
        }));
    }
    let mut spec = json!({
        "containers": containers,
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": false,
    });
    if !init_containers.is_empty() {
        spec["initContainers"] = Value::Array(init_containers);
    }
    if let Some(node) = node_name {
        spec["nodeName"] = json!(node);
    }
    let mut metadata = json!({"name": pod.name, "namespace": pod.namespace});
    if !pod.labels.is_empty() {
        metadata["labels"] = json!(pod.labels);
    }
    Ok(json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}))
}

/// The nodes pods may be pinned to: not cordoned, no NoSchedule/NoExecute taint; sorted by
/// name. `nodes` is the output of `kubectl get nodes -o json`.
pub fn schedulable_nodes(nodes: &Value) -> Vec<String> {
    let mut names: Vec<String> = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["spec"]["unschedulable"] != json!(true))
        .filter(|n| {
            !n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Where a pod goes: the `node:`-th (1-based) schedulable node, or `None` (the scheduler
/// decides) when the scenario does not say.
pub fn place(pod: &PodSpec, nodes: &[String]) -> Result<Option<String>, String> {
    match pod.node {
        None => Ok(None),
        Some(n) if n >= 1 && n <= nodes.len() => Ok(Some(nodes[n - 1].clone())),
        Some(n) => Err(format!(
            "pod {} wants node {n}, the cluster has {} schedulable node(s){}",
            pod.key(),
            nodes.len(),
            if nodes.is_empty() {
                String::new()
            } else {
                format!(" ({})", nodes.join(", "))
            }
        )),
    }
}

/// The `kubectl label --overwrite` arguments that turn `current` into `wanted`: `key=value`
/// for new or changed labels, `key-` for removed ones. Empty when nothing changes.
pub fn label_args(current: &Labels, wanted: &Labels) -> Vec<String> {
    let mut args: Vec<String> = wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    args.extend(
        current
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .map(|k| format!("{k}-")),
    );
    args
}

/// A namespace's labels after a scenario's change: the name label and the run marker stay
/// whatever the change says (the API server keeps the first; the second is the harness's).
pub fn namespace_labels_after(
    current: &Labels,
    change: &LabelChange,
    name: &str,
    run_id: &str,
) -> Labels {
    namespace_labels(&change.apply_to(current), name, run_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Scenario, Step};
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn port(
        name: Option<&str>,
        port: u16,
        protocol: Protocol,
        container: ContainerKind,
    ) -> PortSpec {
        PortSpec {
            name: name.map(str::to_string),
            port,
            protocol,
            container,
        }
    }

    fn pod(ports: Vec<PortSpec>, node: Option<usize>) -> PodSpec {
        PodSpec {
            namespace: "x".into(),
            name: "a".into(),
            node,
            labels: labels(&[("pod", "a")]),
            ports,
        }
    }

    #[test]
    fn namespace_keeps_its_name_and_labels_and_carries_the_run_marker() {
        let ns = NamespaceSpec {
            name: "y".into(),
            labels: labels(&[("team", "b")]),
        };
        assert_eq!(
            namespace_manifest(&ns, "0123abcd"),
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "y", "labels": {
                    "kubernetes.io/metadata.name": "y",
                    "palisade.dev/scenario-run": "0123abcd",
                    "team": "b",
                }},
            })
        );
    }

    #[test]
    fn one_agnhost_container_per_port_serving_it_as_upstream_does() {
        let p = pod(
            vec![
                port(Some("serve-80-tcp"), 80, Protocol::Tcp, ContainerKind::Main),
                port(Some("dns"), 53, Protocol::Udp, ContainerKind::Main),
                port(None, 9000, Protocol::Sctp, ContainerKind::Main),
                port(
                    Some("metrics"),
                    9090,
                    Protocol::Tcp,
                    ContainerKind::InitSidecar,
                ),
            ],
            None,
        );
        let m = pod_manifest(&p, "img:1", None).unwrap();
        assert_eq!(m["kind"], "Pod");
        assert_eq!(
            m["metadata"],
            json!({"name": "a", "namespace": "x", "labels": {"pod": "a"}})
        );
        assert!(m["spec"].get("nodeName").is_none());
        let containers = m["spec"]["containers"].as_array().unwrap();
        let names: Vec<&str> = containers
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cont-80-tcp", "cont-53-udp", "cont-9000-sctp"]);
        assert_eq!(
            containers[0]["command"],
            json!([
                "/agnhost",
                "serve-hostname",
                "--tcp",
                "--http=false",
                "--port",
                "80"
            ])
        );
        assert_eq!(
            containers[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP", "name": "serve-80-tcp"}])
        );
        assert_eq!(
            containers[1]["command"],
            json!([
                "/agnhost",
                "serve-hostname",
                "--udp",
                "--http=false",
                "--port",
                "53"
            ])
        );
        assert_eq!(containers[2]["command"], json!(["/agnhost", "porter"]));
        assert_eq!(
            containers[2]["env"],
            json!([{"name": "SERVE_SCTP_PORT_9000", "value": "foo"}])
        );
        // An unnamed port has no name field (the API refuses an empty one).
        assert_eq!(
            containers[2]["ports"],
            json!([{"containerPort": 9000, "protocol": "SCTP"}])
        );
        for c in containers {
            assert_eq!(c["image"], "img:1");
            assert!(c.get("restartPolicy").is_none(), "{c}");
        }
        let init = m["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0]["name"], "sidecar-9090-tcp");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(
            init[0]["ports"],
            json!([{"containerPort": 9090, "protocol": "TCP", "name": "metrics"}])
        );
        assert_eq!(probe_container(&p), "cont-80-tcp");
    }

    #[test]
    fn a_pod_without_main_ports_gets_an_idle_container_to_probe_from() {
        let sidecar_only = pod(
            vec![port(None, 80, Protocol::Tcp, ContainerKind::InitSidecar)],
            None,
        );
        let m = pod_manifest(&sidecar_only, "img", None).unwrap();
        assert_eq!(m["spec"]["containers"][0]["name"], IDLE_CONTAINER);
        assert_eq!(
            m["spec"]["containers"][0]["command"],
            json!(["/agnhost", "pause"])
        );
        assert_eq!(m["spec"]["initContainers"][0]["name"], "sidecar-80-tcp");
        assert_eq!(probe_container(&sidecar_only), IDLE_CONTAINER);

        let none = pod(Vec::new(), None);
        let m = pod_manifest(&none, "img", None).unwrap();
        assert_eq!(m["spec"]["containers"].as_array().unwrap().len(), 1);
        assert!(m["spec"].get("initContainers").is_none());
    }

    #[test]
    fn the_same_port_and_protocol_twice_is_refused() {
        let p = pod(
            vec![
                port(Some("a"), 80, Protocol::Tcp, ContainerKind::Main),
                port(Some("b"), 80, Protocol::Tcp, ContainerKind::Main),
            ],
            None,
        );
        let err = pod_manifest(&p, "img", None).unwrap_err();
        assert!(err.contains("80/TCP twice"), "{err}");
        // Same number, other protocol: two containers.
        let p = pod(
            vec![
                port(None, 53, Protocol::Tcp, ContainerKind::Main),
                port(None, 53, Protocol::Udp, ContainerKind::Main),
            ],
            None,
        );
        assert!(pod_manifest(&p, "img", None).is_ok());
    }

    fn node(name: &str, extra: Value) -> Value {
        let mut n = json!({"metadata": {"name": name}, "spec": {}});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                n["spec"][k] = v;
            }
        }
        n
    }

    #[test]
    fn only_schedulable_nodes_sorted_by_name_count() {
        let nodes = json!({"items": [
            node("kind-worker2", json!({})),
            node("kind-control-plane", json!({"taints": [
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]})),
            node("kind-worker", json!({"taints": [
                {"key": "example.com/soft", "effect": "PreferNoSchedule"}]})),
            node("cordoned", json!({"unschedulable": true})),
            node("draining", json!({"taints": [{"key": "k", "effect": "NoExecute"}]})),
        ]});
        let names = schedulable_nodes(&nodes);
        assert_eq!(names, ["kind-worker", "kind-worker2"]);

        assert_eq!(
            place(&pod(vec![], Some(1)), &names).unwrap().as_deref(),
            Some("kind-worker")
        );
        assert_eq!(
            place(&pod(vec![], Some(2)), &names).unwrap().as_deref(),
            Some("kind-worker2")
        );
        assert_eq!(place(&pod(vec![], None), &names).unwrap(), None);
        let err = place(&pod(vec![], Some(3)), &names).unwrap_err();
        assert!(
            err.contains("wants node 3") && err.contains("2 schedulable"),
            "{err}"
        );
        assert!(place(&pod(vec![], Some(0)), &names).is_err());

        let m = pod_manifest(&pod(vec![], Some(2)), "img", Some("kind-worker2")).unwrap();
        assert_eq!(m["spec"]["nodeName"], "kind-worker2");
    }

    #[test]
    fn label_changes_become_kubectl_label_arguments() {
        let current = labels(&[("pod", "a"), ("app", "web"), ("tier", "1")]);
        let change = LabelChange {
            replace: None,
            merge: labels(&[("app", "db"), ("new", "x")]),
            remove: vec!["tier".into(), "absent".into()],
        };
        let wanted = change.apply_to(&current);
        assert_eq!(label_args(&current, &wanted), ["app=db", "new=x", "tier-"]);
        assert!(label_args(&current, &current).is_empty());

        let replace = LabelChange {
            replace: Some(labels(&[("pod", "a"), ("role", "x")])),
            ..LabelChange::default()
        };
        assert_eq!(
            label_args(&current, &replace.apply_to(&current)),
            ["role=x", "app-", "tier-"]
        );
    }

    #[test]
    fn namespace_label_changes_keep_the_name_label_and_the_run_marker() {
        let current = namespace_labels(&labels(&[("team", "a")]), "y", "r1");
        let change = LabelChange {
            replace: None,
            merge: labels(&[("team", "b")]),
            remove: vec![NAMESPACE_NAME_LABEL.into(), RUN_LABEL.into()],
        };
        let wanted = namespace_labels_after(&current, &change, "y", "r1");
        assert_eq!(
            wanted,
            labels(&[
                ("kubernetes.io/metadata.name", "y"),
                ("palisade.dev/scenario-run", "r1"),
                ("team", "b")
            ])
        );
        assert_eq!(label_args(&current, &wanted), ["team=b"]);
    }

    /// Every pod of every checked-in scenario becomes a manifest, with container names that
    /// are valid DNS labels and unique in their pod.
    #[test]
    fn every_checked_in_scenario_pod_has_a_manifest() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut pods = 0;
        for file in crate::runner::collect_files(&[dir]).unwrap() {
            let s = Scenario::from_file(&file).unwrap();
            let created = s.steps.iter().filter_map(|st| match st {
                Step::CreatePod { pod } => Some(pod.clone()),
                _ => None,
            });
            for p in s.model.pods.iter().cloned().chain(created) {
                let m = pod_manifest(&p, DEFAULT_AGNHOST_IMAGE, Some("n1")).unwrap();
                let mut names = std::collections::BTreeSet::new();
                for key in ["containers", "initContainers"] {
                    for c in m["spec"][key].as_array().into_iter().flatten() {
                        let name = c["name"].as_str().unwrap();
                        assert!(
                            name.len() <= 63
                                && name.chars().all(|ch| ch.is_ascii_lowercase()
                                    || ch.is_ascii_digit()
                                    || ch == '-'),
                            "{name}"
                        );
                        assert!(
                            names.insert(name.to_string()),
                            "{name} twice in {}",
                            p.key()
                        );
                    }
                }
                let declared = p.ports.len().max(1);
                assert!(names.len() == declared || names.len() == declared + 1);
                pods += 1;
            }
        }
        assert!(pods > 100, "only {pods} pods found");
    }
}
