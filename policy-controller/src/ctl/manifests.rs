//! Kubernetes manifests → cluster state, for `palisadectl reach` / `explain`.
//!
//! Reads Namespaces, Pods, NetworkPolicies, ClusterNetworkPolicies and Nodes from YAML or
//! JSON files (one or many documents per file, `kind: List` and `*List` kinds too, folders
//! recursively) and from the agent's `/debug/state`. A document that does not decode is an
//! error naming the file, the document and the field
//! (`policies.yaml: document 3: spec.ingress[0].ports[0].port: ...`); a policy that decodes
//! but that the API server would reject ([`crate::model::validate`]) is reported and skipped,
//! as the agent does.

use crate::model::api::{self, ClusterNetworkPolicy, Namespace, NetworkPolicy, Node, Pod};
use crate::model::validate::{cluster_network_policy_errors, validate_network_policy};
use crate::model::{ClusterState, NodeInfo, ObjectKey, PodInfo, Protocol};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where pods without `spec.nodeName` are placed: one node that enforces their policies.
pub const SYNTHETIC_NODE: &str = "palisadectl-node";

/// The namespace objects without `metadata.namespace` land in (as `kubectl apply`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where an object came from, for messages: `file: document N` (1-based), `: items[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    /// 1-based document number within the source (`None`: the source is one object list).
    pub document: Option<usize>,
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(i) = self.item {
            write!(f, ": items[{i}]")?;
        }
        Ok(())
    }
}

/// A manifest that cannot be used: `origin: field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ManifestError {
    pub origin: String,
    pub message: String,
}

fn error(origin: impl fmt::Display, message: impl Into<String>) -> ManifestError {
    ManifestError {
        origin: origin.to_string(),
        message: message.into(),
    }
}

/// The objects read, in the order read.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<(Origin, NetworkPolicy)>,
    pub cluster_policies: Vec<(Origin, ClusterNetworkPolicy)>,
    pub nodes: Vec<Node>,
    /// Kinds present but irrelevant to policy (Services, Deployments, ...): kind → count.
    pub ignored_kinds: BTreeMap<String, usize>,
}

/// Read every manifest under `paths` (files, or folders searched recursively for `*.yaml`,
/// `*.yml` and `*.json`, in name order). `-` reads standard input.
pub fn load_paths(paths: &[PathBuf]) -> Result<Objects, ManifestError> {
    let mut objects = Objects::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| error("<stdin>", format!("read: {e}")))?;
            load_text("<stdin>", &text, false, &mut objects)?;
            continue;
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| error(path.display(), format!("cannot read: {e}")))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| error(file.display(), format!("cannot read: {e}")))?;
            let json = file.extension().is_some_and(|e| e == "json");
            load_text(&file.display().to_string(), &text, json, &mut objects)?;
        }
    }
    Ok(objects)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| error(dir.display(), format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Parse one file's text (YAML with `---` separated documents, or JSON values one after
/// another) and add its objects.
pub fn load_text(
    source: &str,
    text: &str,
    json: bool,
    objects: &mut Objects,
) -> Result<(), ManifestError> {
    let documents: Vec<Value> = if json {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .enumerate()
            .map(|(i, r)| {
                r.map_err(|e| {
                    error(
                        format!("{source}: document {}", i + 1),
                        format!("invalid JSON: {e}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    } else {
        // YAML 1.2 booleans only: under YAML 1.1 rules `name: y` (a namespace called y)
        // or `n`, `on`, `off` would be read as booleans.
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_multiple_with_options::<Option<Value>>(text, options)
            .map_err(|e| {
                error(
                    source,
                    format!("invalid YAML: {}", one_line(&e.to_string())),
                )
            })?
            .into_iter()
            .map(|d| d.unwrap_or(Value::Null))
            .collect()
    };
    for (i, doc) in documents.into_iter().enumerate() {
        let origin = Origin {
            source: source.to_string(),
            document: Some(i + 1),
            item: None,
        };
        add_document(origin, doc, objects)?;
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One document: an object, a `List`, or empty (skipped).
pub fn add_document(
    origin: Origin,
    doc: Value,
    objects: &mut Objects,
) -> Result<(), ManifestError> {
    if doc.is_null() {
        return Ok(());
    }
    let Some(kind) = doc.get("kind").and_then(Value::as_str).map(str::to_string) else {
        return Err(error(
            &origin,
            "kind: missing (every object needs apiVersion and kind)",
        ));
    };
    if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some()) {
        let items = match doc.get("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items.clone(),
            Some(other) => {
                return Err(error(
                    &origin,
                    format!("items: invalid type: {} (expected a list)", kind_of(other)),
                ))
            }
        };
        // `PodList` items carry no kind of their own.
        let item_kind = kind
            .strip_suffix("List")
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        for (i, mut item) in items.into_iter().enumerate() {
            let o = Origin {
                item: Some(i),
                ..origin.clone()
            };
            if let (Some(k), Some(obj)) = (&item_kind, item.as_object_mut()) {
                obj.entry("kind")
                    .or_insert_with(|| Value::String(k.clone()));
            }
            add_object(o, item, objects)?;
        }
        return Ok(());
    }
    add_object(origin, doc, objects)
}

fn add_object(origin: Origin, doc: Value, objects: &mut Objects) -> Result<(), ManifestError> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "Namespace" => objects.namespaces.push(decode(&origin, doc)?),
        "Pod" => {
            let mut pod: Pod = decode(&origin, doc)?;
            if pod.metadata.namespace.is_empty() {
                pod.metadata.namespace = DEFAULT_NAMESPACE.into();
            }
            if pod.metadata.name.is_empty() {
                return Err(error(&origin, "metadata.name: Required value"));
            }
            objects.pods.push(pod);
        }
        "NetworkPolicy" => {
            let mut policy: NetworkPolicy = decode(&origin, doc)?;
            if policy.metadata.namespace.is_empty() {
                policy.metadata.namespace = DEFAULT_NAMESPACE.into();
            }
            objects.policies.push((origin, policy));
        }
        "ClusterNetworkPolicy" => {
            let policy: ClusterNetworkPolicy = decode(&origin, doc)?;
            objects.cluster_policies.push((origin, policy));
        }
        "Node" => {
            let node: Node = decode(&origin, doc)?;
            objects.nodes.push(node);
        }
        "" => {
            return Err(error(
                &origin,
                "kind: missing (every object needs apiVersion and kind)",
            ))
        }
        other => *objects.ignored_kinds.entry(other.to_string()).or_default() += 1,
    }
    Ok(())
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Decode with the path of the failing field (`spec.ingress[0].ports[0].port: ...`).
fn decode<T: DeserializeOwned>(origin: &Origin, doc: Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize::<_, T>(doc.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let message = if inner.contains("untagged enum IntOrString") {
            let got = value_at(&doc, e.path())
                .map(|v| kind_of(&v))
                .unwrap_or_default();
            format!("invalid type: {got} (expected a port number or a port name)")
        } else {
            inner
        };
        if path.is_empty() || path == "." {
            error(origin, message)
        } else {
            error(origin, format!("{path}: {message}"))
        }
    })
}

fn value_at(doc: &Value, path: &serde_path_to_error::Path) -> Option<Value> {
    use serde_path_to_error::Segment;
    let mut cur = doc;
    for seg in path.iter() {
        cur = match seg {
            Segment::Seq { index } => cur.get(*index)?,
            Segment::Map { key } => cur.get(key.as_str())?,
            _ => return None,
        };
    }
    Some(cur.clone())
}

/// What building the state noticed: printed on stderr by the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// The state and what the CLI needs beside it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub state: ClusterState,
    /// Every port a pod declares (containers and sidecar init containers, named or not).
    pub declared_ports: BTreeSet<(u16, Protocol)>,
    pub diagnostics: Diagnostics,
}

/// Build the cluster state the agent would hold from these objects: invalid policies are
/// reported and skipped, unscheduled pods go to [`SYNTHETIC_NODE`], namespaces that pods or
/// policies live in but that no manifest defines are created with only their name label.
pub fn build_state(objects: &Objects) -> Loaded {
    let mut out = Loaded::default();
    let diag = &mut out.diagnostics;
    let state = &mut out.state;
    for ns in &objects.namespaces {
        state.upsert_namespace(&ns.metadata.name, ns.metadata.labels.clone());
    }
    for (origin, policy) in &objects.policies {
        let errors = validate_network_policy(policy);
        let key = ObjectKey::new(&policy.metadata.namespace, &policy.metadata.name);
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            diag.warnings.push(format!(
                "{origin}: NetworkPolicy {key} is invalid and skipped (the API server would reject it): {}",
                list.join("; ")
            ));
            continue;
        }
        if state
            .network_policies
            .insert(key.clone(), policy.clone())
            .is_some()
        {
            diag.notes.push(format!(
                "{origin}: NetworkPolicy {key} defined again: the last one counts"
            ));
        }
    }
    for (origin, policy) in &objects.cluster_policies {
        let mut policy = policy.clone();
        // Pruned as the API server stores it: without what the CRD's schema does not know.
        let errors = cluster_network_policy_errors(&mut policy);
        let name = policy.metadata.name.clone();
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            diag.warnings.push(format!(
                "{origin}: ClusterNetworkPolicy {name} is invalid and skipped: {}",
                list.join("; ")
            ));
            continue;
        }
        if state
            .cluster_network_policies
            .insert(name.clone(), policy)
            .is_some()
        {
            diag.notes.push(format!(
                "{origin}: ClusterNetworkPolicy {name} defined again: the last one counts"
            ));
        }
    }
    let mut unscheduled = Vec::new();
    for pod in &objects.pods {
        let mut info = PodInfo::from_api(pod);
        if info.node.is_none() {
            unscheduled.push(info.key.to_string());
            info.node = Some(SYNTHETIC_NODE.to_string());
        }
        if info.ips.is_empty() {
            diag.notes.push(format!(
                "pod {} has no IP (status.podIPs): left out of the matrix",
                info.key
            ));
        }
        let sidecars = pod
            .spec
            .init_containers
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in pod.spec.containers.iter().chain(sidecars) {
            for p in &c.ports {
                if let (Ok(port), Some(proto)) = (
                    u16::try_from(p.container_port),
                    Protocol::parse_api(p.protocol.as_deref()),
                ) {
                    if port != 0 {
                        out.declared_ports.insert((port, proto));
                    }
                }
            }
        }
        if state.pods.insert(info.key.clone(), info.clone()).is_some() {
            diag.notes.push(format!(
                "pod {} defined again: the last one counts",
                info.key
            ));
        }
    }
    if !unscheduled.is_empty() {
        diag.notes.push(format!(
            "{} pod(s) without spec.nodeName placed on one synthetic node {SYNTHETIC_NODE:?}: {}",
            unscheduled.len(),
            abbreviate(&unscheduled)
        ));
    }
    for node in &objects.nodes {
        let info = NodeInfo::from_api(node);
        state.nodes.insert(info.name.clone(), info);
    }
    let referenced: BTreeSet<String> = state
        .pods
        .keys()
        .chain(state.network_policies.keys())
        .map(|k| k.namespace.to_string())
        .collect();
    for ns in referenced {
        if !state.namespaces.contains_key(&ns) {
            diag.notes.push(format!(
                "namespace {ns} is not in the manifests: assumed with only the label kubernetes.io/metadata.name={ns}"
            ));
            state.upsert_namespace(&ns, api::Labels::new());
        }
    }
    for (kind, n) in &objects.ignored_kinds {
        diag.notes.push(format!(
            "ignored {n} object(s) of kind {kind} (not used by network policy)"
        ));
    }
    out
}

fn abbreviate(items: &[String]) -> String {
    const MAX: usize = 5;
    if items.len() <= MAX {
        items.join(", ")
    } else {
        format!(
            "{}, ... ({} more)",
            items[..MAX].join(", "),
            items.len() - MAX
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Objects, ManifestError> {
        let mut o = Objects::default();
        load_text("policies.yaml", text, false, &mut o).map(|_| o)
    }

    #[test]
    fn many_documents_lists_and_empty_documents() {
        let o = load(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}}\n\
             - {apiVersion: v1, kind: Service, metadata: {name: s}}\n",
        )
        .unwrap();
        assert_eq!(o.namespaces.len(), 1);
        assert_eq!(o.pods.len(), 1);
        assert_eq!(o.ignored_kinds.get("Service"), Some(&1));
    }

    #[test]
    fn yaml_1_1_booleans_are_strings() {
        let o = load("kind: Namespace\nmetadata: {name: y, labels: {on: n}}\n").unwrap();
        assert_eq!(o.namespaces[0].metadata.name, "y");
        assert_eq!(
            o.namespaces[0]
                .metadata
                .labels
                .get("on")
                .map(String::as_str),
            Some("n")
        );
    }

    #[test]
    fn typed_lists_give_their_items_a_kind() {
        let o = load("apiVersion: v1\nkind: PodList\nitems:\n- {metadata: {name: a}}\n").unwrap();
        assert_eq!(o.pods[0].metadata.namespace, "default");
    }

    #[test]
    fn bad_field_names_file_document_and_path() {
        let text = "kind: Namespace\nmetadata: {name: x}\n---\nkind: Namespace\nmetadata: {name: y}\n---\n\
            apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
            spec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: [80]\n";
        let e = load(text).unwrap_err().to_string();
        assert_eq!(
            e,
            "policies.yaml: document 3: spec.ingress[0].ports[0].port: invalid type: a list (expected a port number or a port name)"
        );
    }

    #[test]
    fn wrong_scalar_type_is_reported_with_its_path() {
        let e = load("kind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: eighty\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("policies.yaml: document 1: spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\""),
            "{e}"
        );
    }

    #[test]
    fn missing_kind_and_bad_yaml_are_errors() {
        assert_eq!(
            load("metadata: {name: a}\n").unwrap_err().to_string(),
            "policies.yaml: document 1: kind: missing (every object needs apiVersion and kind)"
        );
        let e = load("kind: Pod\nmetadata: {name: [a\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("policies.yaml: invalid YAML"), "{e}");
    }

    #[test]
    fn json_files_with_several_values() {
        let mut o = Objects::default();
        load_text(
            "objs.json",
            r#"{"kind":"Namespace","metadata":{"name":"x"}} {"kind":"List","items":[{"kind":"Pod","metadata":{"name":"a","namespace":"x"}}]}"#,
            true,
            &mut o,
        )
        .unwrap();
        assert_eq!((o.namespaces.len(), o.pods.len()), (1, 1));
        let e = load_text("objs.json", r#"{"kind":"Pod"} {"#, true, &mut o).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("objs.json: document 2: invalid JSON"),
            "{e}"
        );
    }

    #[test]
    fn state_skips_invalid_policies_places_unscheduled_pods_and_invents_namespaces() {
        let o = load(
            "kind: Pod\nmetadata: {name: a, namespace: y, labels: {app: a}}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP, name: dns}]\n\
             status: {podIPs: [{ip: 10.0.0.1}]}\n---\n\
             kind: NetworkPolicy\nmetadata: {name: bad, namespace: y}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]\n---\n\
             kind: NetworkPolicy\nmetadata: {name: good, namespace: y}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        let l = build_state(&o);
        assert_eq!(l.state.network_policies.len(), 1);
        assert!(l
            .state
            .network_policies
            .contains_key(&ObjectKey::new("y", "good")));
        assert_eq!(l.diagnostics.warnings.len(), 1);
        assert!(
            l.diagnostics.warnings[0]
                .contains("policies.yaml: document 2: NetworkPolicy y/bad is invalid"),
            "{:?}",
            l.diagnostics
        );
        assert!(
            l.diagnostics.warnings[0].contains("spec.ingress[0].ports[0].port"),
            "{:?}",
            l.diagnostics
        );
        let pod = &l.state.pods[&ObjectKey::new("y", "a")];
        assert_eq!(pod.node.as_deref(), Some(SYNTHETIC_NODE));
        assert_eq!(
            l.state.namespaces["y"]
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("y")
        );
        assert!(l
            .diagnostics
            .notes
            .iter()
            .any(|n| n.starts_with("namespace y is not in the manifests")));
        assert_eq!(
            l.declared_ports.iter().copied().collect::<Vec<_>>(),
            vec![(53, Protocol::Udp), (80, Protocol::Tcp)]
        );
    }
}
