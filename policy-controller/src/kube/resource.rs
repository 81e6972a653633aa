//! The watched kinds as kube-rs resources over the slim types of [`crate::model::api`].
//!
//! The agent never holds full API objects: every list page and watch event is decoded into
//! [`Slim<T>`], which keeps the slim body (or why it failed to decode) and just enough
//! metadata for the list/watch protocol, and is turned into model types right away.
//!
//! Decoding is tolerant per object on purpose: kube-rs decodes a whole list page as one
//! `ObjectList<K>`, so a single object with a field the slim type cannot parse (a port given
//! as a string, a label value that is a number) would otherwise fail every relist and stall
//! the agent forever. Here the page always decodes; the bad object carries its error and is
//! reported and skipped.

use crate::model::api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta as KubeMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

/// The kinds the agent watches, in the spelling `/status` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Pods,
    Namespaces,
    NetworkPolicies,
    Nodes,
    ClusterNetworkPolicies,
}

impl ResourceKind {
    pub const COUNT: usize = 5;
    pub const ALL: [ResourceKind; ResourceKind::COUNT] = [
        ResourceKind::Pods,
        ResourceKind::Namespaces,
        ResourceKind::NetworkPolicies,
        ResourceKind::Nodes,
        ResourceKind::ClusterNetworkPolicies,
    ];

    /// The API's plural (`pods`, `networkpolicies`, ...), also the key in `/status`.
    pub fn plural(self) -> &'static str {
        match self {
            ResourceKind::Pods => "pods",
            ResourceKind::Namespaces => "namespaces",
            ResourceKind::NetworkPolicies => "networkpolicies",
            ResourceKind::Nodes => "nodes",
            ResourceKind::ClusterNetworkPolicies => "clusternetworkpolicies",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plural())
    }
}

/// A slim API type the agent watches.
pub trait WatchedKind: DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static {
    const RESOURCE: ResourceKind;
    const KIND: &'static str;
    const GROUP: &'static str;
    const VERSION: &'static str;
    /// A custom resource whose definition may not be installed: a list answered 404 means
    /// "no objects of this kind" (checked again now and then), not an error.
    const OPTIONAL: bool = false;
}

impl WatchedKind for api::Pod {
    const RESOURCE: ResourceKind = ResourceKind::Pods;
    const KIND: &'static str = "Pod";
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
}

impl WatchedKind for api::Namespace {
    const RESOURCE: ResourceKind = ResourceKind::Namespaces;
    const KIND: &'static str = "Namespace";
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
}

impl WatchedKind for api::NetworkPolicy {
    const RESOURCE: ResourceKind = ResourceKind::NetworkPolicies;
    const KIND: &'static str = "NetworkPolicy";
    const GROUP: &'static str = "networking.k8s.io";
    const VERSION: &'static str = "v1";
}

impl WatchedKind for api::ClusterNetworkPolicy {
    const RESOURCE: ResourceKind = ResourceKind::ClusterNetworkPolicies;
    const KIND: &'static str = "ClusterNetworkPolicy";
    const GROUP: &'static str = "policy.networking.k8s.io";
    const VERSION: &'static str = "v1alpha2";
    const OPTIONAL: bool = true;
}

impl WatchedKind for api::Node {
    const RESOURCE: ResourceKind = ResourceKind::Nodes;
    const KIND: &'static str = "Node";
    const GROUP: &'static str = "";
    const VERSION: &'static str = "v1";
}

/// One object as received: identity and resourceVersion always, the slim body when it decoded.
#[derive(Debug, Clone)]
pub struct Slim<T> {
    /// Only `name`, `namespace` and `resourceVersion` are filled (what kube-rs and the index
    /// need); labels and the rest live in `body`.
    meta: KubeMeta,
    pub body: Result<T, String>,
}

impl<T> Slim<T> {
    pub fn new(
        name: &str,
        namespace: &str,
        resource_version: &str,
        body: Result<T, String>,
    ) -> Self {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Slim {
            meta: KubeMeta {
                name: opt(name),
                namespace: opt(namespace),
                resource_version: opt(resource_version),
                ..KubeMeta::default()
            },
            body,
        }
    }

    pub fn name(&self) -> &str {
        self.meta.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or_default()
    }

    pub fn resource_version(&self) -> &str {
        self.meta.resource_version.as_deref().unwrap_or_default()
    }
}

/// Metadata fields read even from an object whose body does not decode.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Identity {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
}

impl<'de, T: WatchedKind> Deserialize<'de> for Slim<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a `Value` so that a body error is caught per object instead of failing the
        // enclosing list or watch event.
        let value = serde_json::Value::deserialize(deserializer)?;
        let identity = value
            .get("metadata")
            .and_then(|m| Identity::deserialize(m).ok())
            .unwrap_or_default();
        let body = T::deserialize(&value).map_err(|e| e.to_string());
        Ok(Slim {
            meta: KubeMeta {
                name: identity.name,
                namespace: identity.namespace,
                resource_version: identity.resource_version,
                ..KubeMeta::default()
            },
            body,
        })
    }
}

impl<T: WatchedKind> ::kube::Resource for Slim<T> {
    type DynamicType = ();
    type Scope = ::kube::core::DynamicResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::KIND)
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::GROUP)
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::VERSION)
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(T::RESOURCE.plural())
    }

    fn meta(&self) -> &KubeMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut KubeMeta {
        &mut self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_object_in_a_list_keeps_its_identity_and_error() {
        let list = serde_json::json!([
            {"metadata": {"name": "a", "namespace": "x", "resourceVersion": "5",
                          "labels": {"app": "web"}}},
            {"metadata": {"name": "b", "namespace": "x", "resourceVersion": "6"},
             "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}},
        ]);
        let pods: Vec<Slim<api::Pod>> = serde_json::from_value(list).unwrap();
        assert_eq!(pods[0].name(), "a");
        assert_eq!(pods[0].body.as_ref().unwrap().metadata.labels["app"], "web");
        assert_eq!(
            (
                pods[1].namespace(),
                pods[1].name(),
                pods[1].resource_version()
            ),
            ("x", "b", "6")
        );
        assert!(pods[1].body.is_err());
    }

    #[test]
    fn pod_ips_and_node_cidrs_use_the_api_spelling() {
        let pod: Slim<api::Pod> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x"},
            "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}
        }))
        .unwrap();
        let info = crate::model::PodInfo::from_api(pod.body.as_ref().unwrap());
        assert_eq!(info.ips.len(), 2);
        let node: Slim<api::Node> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd10::/64"]}
        }))
        .unwrap();
        assert_eq!(
            crate::model::NodeInfo::from_api(node.body.as_ref().unwrap())
                .pod_cidrs
                .len(),
            2
        );
    }

    #[test]
    fn resource_paths_match_the_api() {
        use ::kube::Resource;
        assert_eq!(Slim::<api::Pod>::url_path(&(), None), "/api/v1/pods");
        assert_eq!(
            Slim::<api::NetworkPolicy>::url_path(&(), None),
            "/apis/networking.k8s.io/v1/networkpolicies"
        );
        assert_eq!(
            Slim::<api::ClusterNetworkPolicy>::url_path(&(), None),
            "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies"
        );
    }
}
