//! The slim index: turns watch events (and the CNI plugin's announcements) into
//! [`Change`]s for the compiler, and remembers only what that needs.
//!
//! Memory is the point (≤ 2 KiB per cluster pod for the whole agent): the compiler's
//! [`crate::model::ClusterState`] holds the one full copy of every pod. The index keeps per
//! object only a 64-bit fingerprint of what it last sent (so a status-only update, the most
//! common pod event, costs no compile and no nft call), plus full entries for the few pods
//! on this node (to merge IPs the CNI plugin announces before the kubelet publishes them),
//! nodes (for routes) and invalid policies (for `/status`).

use super::resource::{ResourceKind, Slim};
use super::watch::WatchEvent;
use crate::compile::Change;
use crate::model::policy::PolicyRef;
use crate::model::validate::{cluster_network_policy_errors, validate_network_policy, FieldError};
use crate::model::{api, NodeInfo, ObjectKey, PodInfo};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// One event from any of the watches.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    Pod(WatchEvent<api::Pod>),
    Namespace(WatchEvent<api::Namespace>),
    Policy(WatchEvent<api::NetworkPolicy>),
    Node(WatchEvent<api::Node>),
    ClusterPolicy(WatchEvent<api::ClusterNetworkPolicy>),
}

impl ClusterEvent {
    pub fn kind(&self) -> ResourceKind {
        match self {
            ClusterEvent::Pod(_) => ResourceKind::Pods,
            ClusterEvent::Namespace(_) => ResourceKind::Namespaces,
            ClusterEvent::Policy(_) => ResourceKind::NetworkPolicies,
            ClusterEvent::Node(_) => ResourceKind::Nodes,
            ClusterEvent::ClusterPolicy(_) => ResourceKind::ClusterNetworkPolicies,
        }
    }
}

/// A policy the agent does not enforce because it fails validation (or does not decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy {
    pub policy: PolicyRef,
    pub errors: Vec<String>,
}

/// The IPs the CNI plugin announced for a pod sandbox on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CniAttachment {
    container_id: String,
    ips: Vec<IpAddr>,
}

/// Whether the pod the CNI plugin announced is known from the watch yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// Known: the changes to program it (if any) were emitted.
    Known,
    /// Not in the watch yet: its IPs are remembered and merged when it arrives.
    Pending,
}

/// What the index did with one event, besides the changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    /// An object that did not decode (logged, counted, skipped).
    pub malformed: Option<String>,
    /// A watch or list failure (retried by the watch).
    pub failed: Option<String>,
    /// Pods (by key) that just arrived or changed and are announced by the CNI plugin.
    pub pods_touched: Vec<ObjectKey>,
}

#[derive(Debug, Default)]
pub struct Index {
    node_name: String,
    /// Fingerprint of the last `UpsertPod` sent, per pod.
    pods: HashMap<ObjectKey, u64>,
    /// Pods on this node as the API has them (without CNI-announced IPs).
    local_pods: HashMap<ObjectKey, PodInfo>,
    cni: HashMap<ObjectKey, CniAttachment>,
    /// Pods with a CNI announcement still waiting for the pod to be programmed: a watch
    /// deletion of the same name (an older pod of a StatefulSet) must not drop their IPs.
    cni_waiting: HashSet<ObjectKey>,
    namespaces: HashMap<String, u64>,
    policies: HashMap<ObjectKey, u64>,
    /// By name.
    cluster_policies: HashMap<String, u64>,
    invalid_policies: BTreeMap<PolicyRef, Vec<String>>,
    nodes: BTreeMap<String, NodeInfo>,
    /// Objects that did not decode, by kind and key, with the error.
    malformed: BTreeMap<(ResourceKind, ObjectKey), String>,
    /// During a relist: the keys listed so far.
    relist_seen: [Option<HashSet<ObjectKey>>; ResourceKind::COUNT],
    listed: [bool; ResourceKind::COUNT],
    /// Per kind, the newest resourceVersion folded in.
    resource_versions: [u64; ResourceKind::COUNT],
}

fn fingerprint<T: Hash>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn pod_fingerprint(p: &PodInfo) -> u64 {
    fingerprint(&(
        &p.node,
        &p.labels,
        &p.ips,
        p.host_network,
        p.terminating,
        &p.named_ports,
    ))
}

fn spec_fingerprint<T: serde::Serialize>(spec: &T) -> u64 {
    // The specs have no Hash impl (they hold no floats, so their JSON is canonical enough).
    fingerprint(&serde_json::to_string(spec).unwrap_or_default())
}

fn error_lines(errors: Vec<FieldError>) -> Vec<String> {
    errors
        .into_iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

/// A decode failure's policy: a NetworkPolicy or (no namespace) a ClusterNetworkPolicy.
fn policy_ref(kind: ResourceKind, key: &ObjectKey) -> PolicyRef {
    match kind {
        ResourceKind::ClusterNetworkPolicies => PolicyRef::cluster(key.name.clone()),
        _ => PolicyRef::network(key),
    }
}

fn cluster_key(name: &str) -> ObjectKey {
    ObjectKey::new("", name)
}

impl Index {
    pub fn new(node_name: impl Into<String>) -> Index {
        Index {
            node_name: node_name.into(),
            ..Index::default()
        }
    }

    /// Every kind has been listed at least once: the state is complete enough to program.
    pub fn initial_list_done(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    pub fn listed(&self, kind: ResourceKind) -> bool {
        self.listed[kind.index()]
    }

    /// The newest resourceVersion folded in, per kind.
    pub fn resource_versions(&self) -> [u64; ResourceKind::COUNT] {
        self.resource_versions
    }

    pub fn invalid_policies(&self) -> Vec<InvalidPolicy> {
        self.invalid_policies
            .iter()
            .map(|(policy, errors)| InvalidPolicy {
                policy: policy.clone(),
                errors: errors.clone(),
            })
            .collect()
    }

    pub fn malformed_objects(&self) -> impl Iterator<Item = (ResourceKind, &ObjectKey, &str)> {
        self.malformed
            .iter()
            .map(|((k, key), e)| (*k, key, e.as_str()))
    }

    pub fn nodes(&self) -> &BTreeMap<String, NodeInfo> {
        &self.nodes
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn knows_pod(&self, key: &ObjectKey) -> bool {
        self.pods.contains_key(key)
    }

    fn note_version(&mut self, kind: ResourceKind, rv: &str) {
        if let Ok(v) = rv.parse::<u64>() {
            let slot = &mut self.resource_versions[kind.index()];
            *slot = (*slot).max(v);
        }
    }

    fn seen(&mut self, kind: ResourceKind, key: &ObjectKey) {
        if let Some(seen) = &mut self.relist_seen[kind.index()] {
            seen.insert(key.clone());
        }
    }

    /// Fold one watch event; the resulting changes are appended to `out`.
    pub fn fold(&mut self, event: ClusterEvent, out: &mut Vec<Change>) -> Folded {
        let kind = event.kind();
        let mut folded = Folded::default();
        match event {
            ClusterEvent::Pod(ev) => self.fold_kind(
                kind,
                ev,
                out,
                &mut folded,
                Self::pod_applied,
                Self::pod_deleted,
            ),
            ClusterEvent::Namespace(ev) => self.fold_kind(
                kind,
                ev,
                out,
                &mut folded,
                Self::namespace_applied,
                Self::namespace_deleted,
            ),
            ClusterEvent::Policy(ev) => self.fold_kind(
                kind,
                ev,
                out,
                &mut folded,
                Self::policy_applied,
                Self::policy_deleted,
            ),
            ClusterEvent::Node(ev) => self.fold_kind(
                kind,
                ev,
                out,
                &mut folded,
                Self::node_applied,
                Self::node_deleted,
            ),
            ClusterEvent::ClusterPolicy(ev) => self.fold_kind(
                kind,
                ev,
                out,
                &mut folded,
                Self::cluster_policy_applied,
                Self::cluster_policy_deleted,
            ),
        }
        folded
    }

    #[allow(clippy::too_many_arguments)]
    fn fold_kind<T>(
        &mut self,
        kind: ResourceKind,
        ev: WatchEvent<T>,
        out: &mut Vec<Change>,
        folded: &mut Folded,
        applied: fn(&mut Index, ObjectKey, T, &mut Vec<Change>, &mut Folded),
        deleted: fn(&mut Index, &ObjectKey, &mut Vec<Change>),
    ) {
        let key_of = |o: &Slim<T>| ObjectKey::new(o.namespace(), o.name());
        match ev {
            WatchEvent::Relisting => {
                self.relist_seen[kind.index()] = Some(HashSet::new());
            }
            WatchEvent::Applied { object, .. } => {
                let key = key_of(&object);
                self.note_version(kind, object.resource_version());
                self.seen(kind, &key);
                match object.body {
                    Ok(body) => {
                        self.malformed.remove(&(kind, key.clone()));
                        applied(self, key, body, out, folded);
                    }
                    Err(error) => {
                        // Keep whatever was last known of it: dropping a pod we cannot read
                        // would change what its policies allow.
                        let msg = format!("{kind} {key}: cannot decode: {error}");
                        if matches!(
                            kind,
                            ResourceKind::NetworkPolicies | ResourceKind::ClusterNetworkPolicies
                        ) {
                            self.invalid_policies.insert(
                                policy_ref(kind, &key),
                                vec![format!("cannot decode: {error}")],
                            );
                            self.forget_policy(kind, &key, out);
                        }
                        self.malformed.insert((kind, key), error);
                        folded.malformed = Some(msg);
                    }
                }
            }
            WatchEvent::Deleted(object) => {
                let key = key_of(&object);
                self.note_version(kind, object.resource_version());
                self.malformed.remove(&(kind, key.clone()));
                deleted(self, &key, out);
            }
            WatchEvent::Listed { resource_version } => {
                if let Some(seen) = self.relist_seen[kind.index()].take() {
                    for key in self.known_keys(kind) {
                        if !seen.contains(&key) {
                            self.malformed.remove(&(kind, key.clone()));
                            deleted(self, &key, out);
                        }
                    }
                }
                self.note_version(kind, &resource_version);
                self.listed[kind.index()] = true;
            }
            WatchEvent::Bookmark { resource_version } => self.note_version(kind, &resource_version),
            WatchEvent::Failed { error } => folded.failed = Some(error),
        }
    }

    fn known_keys(&self, kind: ResourceKind) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = match kind {
            ResourceKind::Pods => self.pods.keys().cloned().collect(),
            ResourceKind::Namespaces => self.namespaces.keys().map(|n| cluster_key(n)).collect(),
            ResourceKind::NetworkPolicies => self
                .policies
                .keys()
                .cloned()
                .chain(
                    self.invalid_policies
                        .keys()
                        .filter_map(PolicyRef::object_key),
                )
                .collect(),
            ResourceKind::Nodes => self.nodes.keys().map(|n| cluster_key(n)).collect(),
            ResourceKind::ClusterNetworkPolicies => self
                .cluster_policies
                .keys()
                .map(|n| cluster_key(n))
                .chain(
                    self.invalid_policies
                        .keys()
                        .filter(|p| p.object_key().is_none())
                        .map(|p| cluster_key(&p.name)),
                )
                .collect(),
        };
        keys.extend(
            self.malformed
                .keys()
                .filter(|(k, _)| *k == kind)
                .map(|(_, key)| key.clone()),
        );
        keys.sort();
        keys.dedup();
        keys
    }

    // ---- pods ----

    fn pod_applied(
        &mut self,
        key: ObjectKey,
        pod: api::Pod,
        out: &mut Vec<Change>,
        folded: &mut Folded,
    ) {
        let mut info = PodInfo::from_api(&pod);
        // The key from the object's own metadata (same as `key`) keeps one spelling.
        info.key = key.clone();
        if info.node.as_deref() == Some(self.node_name.as_str()) {
            self.local_pods.insert(key.clone(), info.clone());
        } else {
            self.local_pods.remove(&key);
        }
        if self.cni.contains_key(&key) {
            folded.pods_touched.push(key.clone());
        }
        let info = self.with_announced_ips(info);
        self.upsert_pod(info, out);
    }

    fn pod_deleted(&mut self, key: &ObjectKey, out: &mut Vec<Change>) {
        self.local_pods.remove(key);
        if !self.cni_waiting.contains(key) {
            self.cni.remove(key);
        }
        if self.pods.remove(key).is_some() {
            out.push(Change::DeletePod(key.clone()));
        }
    }

    /// Before the kubelet publishes `status.podIPs`, the IPs the CNI plugin announced stand
    /// in for them; once the status has IPs, it is the source of truth.
    fn with_announced_ips(&self, mut info: PodInfo) -> PodInfo {
        if info.ips.is_empty() {
            if let Some(a) = self.cni.get(&info.key) {
                info.ips = a.ips.clone();
            }
        }
        info
    }

    fn upsert_pod(&mut self, info: PodInfo, out: &mut Vec<Change>) {
        let fp = pod_fingerprint(&info);
        if self.pods.get(&info.key) == Some(&fp) {
            return;
        }
        self.pods.insert(info.key.clone(), fp);
        out.push(Change::UpsertPod(info));
    }

    /// The CNI plugin announced a sandbox of pod `key` with these IPs (CNI ADD).
    pub fn pod_announced(
        &mut self,
        key: ObjectKey,
        container_id: String,
        ips: Vec<IpAddr>,
        out: &mut Vec<Change>,
    ) -> Announced {
        self.cni
            .insert(key.clone(), CniAttachment { container_id, ips });
        self.cni_waiting.insert(key.clone());
        if let Some(info) = self.local_pods.get(&key).cloned() {
            let info = self.with_announced_ips(info);
            self.upsert_pod(info, out);
            Announced::Known
        } else if self.pods.contains_key(&key) {
            // Known but scheduled elsewhere by the API's account (or not yet bound): nothing
            // to merge, programmed as the API has it.
            Announced::Known
        } else {
            Announced::Pending
        }
    }

    /// The CNI request for `key` is answered (or gave up): a later watch deletion of that
    /// name may drop its IPs again.
    pub fn announcement_settled(&mut self, key: &ObjectKey) {
        self.cni_waiting.remove(key);
    }

    /// The CNI plugin removed a sandbox (CNI DEL): forget its announced IPs.
    pub fn pod_unannounced(&mut self, container_id: &str, out: &mut Vec<Change>) {
        let Some(key) = self
            .cni
            .iter()
            .find(|(_, a)| a.container_id == container_id)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        self.cni.remove(&key);
        self.cni_waiting.remove(&key);
        if let Some(info) = self.local_pods.get(&key).cloned() {
            self.upsert_pod(info, out);
        }
    }

    // ---- namespaces, policies, nodes ----

    fn namespace_applied(
        &mut self,
        key: ObjectKey,
        ns: api::Namespace,
        out: &mut Vec<Change>,
        _: &mut Folded,
    ) {
        let fp = fingerprint(&ns.metadata.labels);
        if self.namespaces.get(key.name.as_str()) == Some(&fp) {
            return;
        }
        self.namespaces.insert(key.name.to_string(), fp);
        out.push(Change::UpsertNamespace {
            name: key.name.into(),
            labels: ns.metadata.labels,
        });
    }

    fn namespace_deleted(&mut self, key: &ObjectKey, out: &mut Vec<Change>) {
        if self.namespaces.remove(key.name.as_str()).is_some() {
            out.push(Change::DeleteNamespace(key.name.to_string()));
        }
    }

    fn policy_applied(
        &mut self,
        key: ObjectKey,
        mut policy: api::NetworkPolicy,
        out: &mut Vec<Change>,
        _: &mut Folded,
    ) {
        let errors = validate_network_policy(&policy);
        if !errors.is_empty() {
            let errors = error_lines(errors);
            tracing::warn!(policy = %key, ?errors, "invalid NetworkPolicy not enforced");
            self.invalid_policies
                .insert(PolicyRef::network(&key), errors);
            self.forget_policy(ResourceKind::NetworkPolicies, &key, out);
            return;
        }
        self.invalid_policies.remove(&PolicyRef::network(&key));
        let fp = spec_fingerprint(&policy.spec);
        if self.policies.get(&key) == Some(&fp) {
            return;
        }
        self.policies.insert(key.clone(), fp);
        // Only what the compiler reads: the identity and the spec.
        policy.metadata = api::ObjectMeta {
            name: key.name.into(),
            namespace: key.namespace.into(),
            ..api::ObjectMeta::default()
        };
        policy.api_version = None;
        policy.kind = None;
        out.push(Change::UpsertPolicy(Box::new(policy)));
    }

    fn policy_deleted(&mut self, key: &ObjectKey, out: &mut Vec<Change>) {
        self.invalid_policies.remove(&PolicyRef::network(key));
        self.forget_policy(ResourceKind::NetworkPolicies, key, out);
    }

    /// Stop enforcing a policy (deleted, invalid, undecodable), if it was.
    fn forget_policy(&mut self, kind: ResourceKind, key: &ObjectKey, out: &mut Vec<Change>) {
        match kind {
            ResourceKind::ClusterNetworkPolicies => {
                if self.cluster_policies.remove(key.name.as_str()).is_some() {
                    out.push(Change::DeleteClusterPolicy(key.name.to_string()));
                }
            }
            _ => {
                if self.policies.remove(key).is_some() {
                    out.push(Change::DeletePolicy(key.clone()));
                }
            }
        }
    }

    fn cluster_policy_applied(
        &mut self,
        key: ObjectKey,
        mut policy: api::ClusterNetworkPolicy,
        out: &mut Vec<Change>,
        _: &mut Folded,
    ) {
        let id = PolicyRef::cluster(key.name.clone());
        // What a real API server stores is pruned already; the stand-in's too. Pruning again
        // is harmless and keeps the agent's reading the schema's.
        let errors = cluster_network_policy_errors(&mut policy);
        if !errors.is_empty() {
            let errors = error_lines(errors);
            tracing::warn!(policy = %id, ?errors, "invalid ClusterNetworkPolicy not enforced");
            self.invalid_policies.insert(id, errors);
            self.forget_policy(ResourceKind::ClusterNetworkPolicies, &key, out);
            return;
        }
        self.invalid_policies.remove(&id);
        let fp = spec_fingerprint(&policy.spec);
        if self.cluster_policies.get(key.name.as_str()) == Some(&fp) {
            return;
        }
        self.cluster_policies.insert(key.name.to_string(), fp);
        policy.metadata = api::ObjectMeta {
            name: key.name.into(),
            ..api::ObjectMeta::default()
        };
        policy.api_version = None;
        policy.kind = None;
        out.push(Change::UpsertClusterPolicy(Box::new(policy)));
    }

    fn cluster_policy_deleted(&mut self, key: &ObjectKey, out: &mut Vec<Change>) {
        self.invalid_policies
            .remove(&PolicyRef::cluster(key.name.clone()));
        self.forget_policy(ResourceKind::ClusterNetworkPolicies, key, out);
    }

    fn node_applied(
        &mut self,
        key: ObjectKey,
        node: api::Node,
        out: &mut Vec<Change>,
        _: &mut Folded,
    ) {
        let mut info = NodeInfo::from_api(&node);
        info.name = key.name.to_string();
        if self.nodes.get(key.name.as_str()) == Some(&info) {
            return;
        }
        self.nodes.insert(key.name.into(), info.clone());
        out.push(Change::UpsertNode(info));
    }

    fn node_deleted(&mut self, key: &ObjectKey, out: &mut Vec<Change>) {
        if self.nodes.remove(key.name.as_str()).is_some() {
            out.push(Change::DeleteNode(key.name.to_string()));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::api::{Container, ContainerPort, PodIp};

    pub fn mk_pod(
        ns: &str,
        name: &str,
        node: &str,
        ip: Option<&str>,
        labels: &[(&str, &str)],
    ) -> api::Pod {
        let mut pod = api::Pod::default();
        pod.metadata.namespace = ns.into();
        pod.metadata.name = name.into();
        pod.metadata.resource_version = "1".into();
        pod.metadata.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pod.spec.node_name = Some(node.into());
        pod.spec.containers = vec![Container {
            name: "main".into(),
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                protocol: None,
            }],
            restart_policy: None,
        }];
        if let Some(ip) = ip {
            pod.status.pod_ips = vec![PodIp { ip: ip.into() }];
            pod.status.phase = Some("Running".into());
        }
        pod
    }

    fn slim<T>(ns: &str, name: &str, rv: u64, body: T) -> Slim<T> {
        Slim::new(name, ns, &rv.to_string(), Ok(body))
    }

    fn applied(pod: api::Pod, rv: u64) -> ClusterEvent {
        let (ns, name) = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        ClusterEvent::Pod(WatchEvent::Applied {
            object: slim(&ns, &name, rv, pod),
            initial: false,
        })
    }

    fn fold(index: &mut Index, ev: ClusterEvent) -> Vec<Change> {
        let mut out = Vec::new();
        index.fold(ev, &mut out);
        out
    }

    #[test]
    fn status_only_updates_change_nothing() {
        let mut index = Index::new("n1");
        let pod = mk_pod("x", "a", "n1", Some("10.0.0.1"), &[("app", "web")]);
        assert_eq!(fold(&mut index, applied(pod.clone(), 5)).len(), 1);
        let mut again = pod.clone();
        again.status.phase = Some("Running".into());
        assert!(fold(&mut index, applied(again, 6)).is_empty());
        assert_eq!(index.resource_versions()[ResourceKind::Pods.index()], 6);
        let mut relabeled = pod;
        relabeled.metadata.labels.insert("tier".into(), "1".into());
        let changes = fold(&mut index, applied(relabeled, 7));
        assert!(matches!(&changes[..], [Change::UpsertPod(p)] if p.labels.len() == 2));
    }

    #[test]
    fn relist_deletes_what_is_not_listed_again() {
        let mut index = Index::new("n1");
        fold(
            &mut index,
            applied(mk_pod("x", "a", "n1", Some("10.0.0.1"), &[]), 2),
        );
        fold(
            &mut index,
            applied(mk_pod("x", "b", "n1", Some("10.0.0.2"), &[]), 3),
        );
        fold(&mut index, ClusterEvent::Pod(WatchEvent::Relisting));
        let b = mk_pod("x", "b", "n1", Some("10.0.0.2"), &[]);
        let listed = fold(
            &mut index,
            ClusterEvent::Pod(WatchEvent::Applied {
                object: slim("x", "b", 3, b),
                initial: true,
            }),
        );
        assert!(listed.is_empty(), "unchanged pod re-listed: no change");
        let done = fold(
            &mut index,
            ClusterEvent::Pod(WatchEvent::Listed {
                resource_version: "40".into(),
            }),
        );
        assert_eq!(done, vec![Change::DeletePod(ObjectKey::new("x", "a"))]);
        assert_eq!(index.resource_versions()[0], 40);
        assert!(index.listed(ResourceKind::Pods));
        assert!(!index.initial_list_done());
    }

    #[test]
    fn announced_ips_stand_in_until_the_status_has_ips() {
        let mut index = Index::new("n1");
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let key = ObjectKey::new("x", "a");
        let mut out = Vec::new();
        // Announced before the watch delivered the pod: remembered.
        assert_eq!(
            index.pod_announced(key.clone(), "c1".into(), vec![ip], &mut out),
            Announced::Pending
        );
        assert!(out.is_empty());
        let changes = fold(
            &mut index,
            applied(mk_pod("x", "a", "n1", None, &[("app", "db")]), 3),
        );
        assert!(matches!(&changes[..], [Change::UpsertPod(p)] if p.ips == vec![ip]));
        // The kubelet publishes the same IP: nothing to do.
        assert!(fold(
            &mut index,
            applied(
                mk_pod("x", "a", "n1", Some("10.0.0.9"), &[("app", "db")]),
                4
            )
        )
        .is_empty());
        // CNI DEL with the status still empty again drops the announced IPs.
        fold(
            &mut index,
            applied(mk_pod("x", "a", "n1", None, &[("app", "db")]), 5),
        );
        index.announcement_settled(&key);
        let mut out = Vec::new();
        index.pod_unannounced("c1", &mut out);
        assert!(matches!(&out[..], [Change::UpsertPod(p)] if p.ips.is_empty()));
    }

    #[test]
    fn announcing_a_known_pod_without_ips_programs_them() {
        let mut index = Index::new("n1");
        fold(&mut index, applied(mk_pod("x", "a", "n1", None, &[]), 3));
        let mut out = Vec::new();
        let ip: IpAddr = "fd00::5".parse().unwrap();
        let r = index.pod_announced(ObjectKey::new("x", "a"), "c1".into(), vec![ip], &mut out);
        assert_eq!(r, Announced::Known);
        assert!(matches!(&out[..], [Change::UpsertPod(p)] if p.ips == vec![ip]));
    }

    #[test]
    fn a_deletion_of_the_same_name_keeps_a_waiting_announcement() {
        let mut index = Index::new("n1");
        let key = ObjectKey::new("x", "web-0");
        fold(
            &mut index,
            applied(mk_pod("x", "web-0", "n1", Some("10.0.0.1"), &[]), 3),
        );
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        index.pod_announced(key.clone(), "new".into(), vec![ip], &mut Vec::new());
        let del = fold(
            &mut index,
            ClusterEvent::Pod(WatchEvent::Deleted(slim(
                "x",
                "web-0",
                4,
                mk_pod("x", "web-0", "n1", None, &[]),
            ))),
        );
        assert_eq!(del, vec![Change::DeletePod(key.clone())]);
        let changes = fold(
            &mut index,
            applied(mk_pod("x", "web-0", "n1", None, &[]), 5),
        );
        assert!(matches!(&changes[..], [Change::UpsertPod(p)] if p.ips == vec![ip]));
    }

    #[test]
    fn malformed_objects_are_reported_and_keep_the_last_state() {
        let mut index = Index::new("n1");
        fold(
            &mut index,
            applied(mk_pod("x", "a", "n1", Some("10.0.0.1"), &[]), 2),
        );
        let bad: Slim<api::Pod> = Slim::new("a", "x", "3", Err("invalid type".into()));
        let mut out = Vec::new();
        let folded = index.fold(
            ClusterEvent::Pod(WatchEvent::Applied {
                object: bad,
                initial: false,
            }),
            &mut out,
        );
        assert!(out.is_empty());
        assert!(folded.malformed.unwrap().contains("x/a"));
        assert_eq!(index.malformed_objects().count(), 1);
        assert!(index.knows_pod(&ObjectKey::new("x", "a")));
    }

    #[test]
    fn undecodable_policies_are_reported_invalid_and_unenforced() {
        let mut index = Index::new("n1");
        let mut policy = api::NetworkPolicy::default();
        policy.metadata.namespace = "x".into();
        policy.metadata.name = "p".into();
        let ok = fold(
            &mut index,
            ClusterEvent::Policy(WatchEvent::Applied {
                object: slim("x", "p", 2, policy),
                initial: false,
            }),
        );
        assert!(matches!(&ok[..], [Change::UpsertPolicy(p)] if p.metadata.name == "p"));
        let bad: Slim<api::NetworkPolicy> = Slim::new("p", "x", "3", Err("bad port".into()));
        let changes = fold(
            &mut index,
            ClusterEvent::Policy(WatchEvent::Applied {
                object: bad,
                initial: false,
            }),
        );
        assert_eq!(
            changes,
            vec![Change::DeletePolicy(ObjectKey::new("x", "p"))]
        );
        assert_eq!(index.invalid_policies().len(), 1);
        assert_eq!(index.invalid_policies()[0].policy.to_string(), "x/p");
        let gone = fold(
            &mut index,
            ClusterEvent::Policy(WatchEvent::Deleted(Slim::new(
                "p",
                "x",
                "4",
                Err("bad port".into()),
            ))),
        );
        assert!(gone.is_empty());
        assert!(index.invalid_policies().is_empty());
    }

    #[test]
    fn nodes_and_namespaces_are_deduplicated() {
        let mut index = Index::new("n1");
        let mut node = api::Node::default();
        node.metadata.name = "n2".into();
        node.spec.pod_cidrs = vec!["10.244.2.0/24".into()];
        node.status.addresses = vec![api::NodeAddress {
            kind: "InternalIP".into(),
            address: "192.168.0.2".into(),
        }];
        let ev = || {
            ClusterEvent::Node(WatchEvent::Applied {
                object: slim("", "n2", 2, node.clone()),
                initial: false,
            })
        };
        assert_eq!(fold(&mut index, ev()).len(), 1);
        assert!(fold(&mut index, ev()).is_empty());
        assert_eq!(
            index.nodes()["n2"].pod_cidrs[0].to_string(),
            "10.244.2.0/24"
        );
        let mut ns = api::Namespace::default();
        ns.metadata.name = "x".into();
        let nev = || {
            ClusterEvent::Namespace(WatchEvent::Applied {
                object: slim("", "x", 3, ns.clone()),
                initial: true,
            })
        };
        assert!(
            matches!(&fold(&mut index, nev())[..], [Change::UpsertNamespace { name, .. }] if name == "x")
        );
        assert!(fold(&mut index, nev()).is_empty());
        for kind in [
            ClusterEvent::Pod(WatchEvent::Listed {
                resource_version: "9".into(),
            }),
            ClusterEvent::Namespace(WatchEvent::Listed {
                resource_version: "9".into(),
            }),
            ClusterEvent::Policy(WatchEvent::Listed {
                resource_version: "9".into(),
            }),
            ClusterEvent::Node(WatchEvent::Listed {
                resource_version: "9".into(),
            }),
            ClusterEvent::ClusterPolicy(WatchEvent::Listed {
                resource_version: String::new(),
            }),
        ] {
            fold(&mut index, kind);
        }
        assert!(index.initial_list_done());
    }
}
