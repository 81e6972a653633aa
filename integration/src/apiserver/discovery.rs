//! Discovery documents: the legacy ones (`/api`, `/api/v1`, `/apis`, `/apis/<group>`,
//! `/apis/<group>/<version>`), the aggregated `apidiscovery.k8s.io/v2` lists kubectl 1.30+
//! asks for first, and `/version`.

use super::store::Kind;
use serde_json::{json, Value};

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

fn kinds_in<'a>(served: &'a [Kind], group: &'a str) -> impl Iterator<Item = Kind> + 'a {
    served.iter().copied().filter(move |k| k.group() == group)
}

/// The named API groups served, with their (one) version each, in discovery order.
fn named_groups(served: &[Kind]) -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for &kind in served {
        let entry = (kind.group(), kind.version());
        if !kind.group().is_empty() && !groups.contains(&entry) {
            groups.push(entry);
        }
    }
    groups
}

/// The version served of a group (`v1` for core), if the group is served.
fn version_of(served: &[Kind], group: &str) -> Option<&'static str> {
    served
        .iter()
        .find(|k| k.group() == group)
        .map(|k| k.version())
}

/// `GET /version`: a 1.32 server (what the real kubectl here expects to be within skew of).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-palisade-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, version: &str) -> Value {
    let version = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [version.clone()], "preferredVersion": version})
}

/// `GET /apis`.
pub fn group_list(served: &[Kind]) -> Value {
    let groups: Vec<Value> = named_groups(served)
        .into_iter()
        .map(|(g, v)| group_entry(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>` (`networking.k8s.io`, `policy.networking.k8s.io`), or `None` for a
/// group not served.
pub fn group(served: &[Kind], name: &str) -> Option<Value> {
    let version = version_of(served, name).filter(|_| !name.is_empty())?;
    let mut group = group_entry(name, version);
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    Some(group)
}

fn api_resource(kind: Kind) -> Value {
    let mut resource = json!({
        "name": kind.plural(),
        "singularName": kind.singular(),
        "namespaced": kind.namespaced(),
        "kind": kind.name(),
        "verbs": VERBS,
        "shortNames": kind.short_names(),
    });
    if kind == Kind::Pod {
        resource["categories"] = json!(["all"]);
    }
    resource
}

/// `GET /api/v1` (`group` = "") or `/apis/<group>/<version>` of a served group, else `None`.
pub fn resource_list(served: &[Kind], group: &str, version: &str) -> Option<Value> {
    if version_of(served, group) != Some(version) {
        return None;
    }
    let mut resources = Vec::new();
    for kind in kinds_in(served, group) {
        resources.push(api_resource(kind));
        if kind.has_status() {
            resources.push(json!({
                "name": format!("{}/status", kind.plural()),
                "singularName": "",
                "namespaced": kind.namespaced(),
                "kind": kind.name(),
                "verbs": STATUS_VERBS,
            }));
        }
    }
    let group_version = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The `Content-Type` of aggregated discovery responses.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Does this `Accept` header ask for aggregated discovery v2?
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=APIGroupDiscoveryList")
            && params.contains(&"v=v2")
            && params.contains(&"g=apidiscovery.k8s.io")
    })
}

/// The aggregated discovery list for `/api` (`group` = "") or `/apis` (the named groups).
pub fn aggregated(served: &[Kind], core: bool) -> Value {
    let groups: Vec<(&str, &str)> = if core {
        vec![("", "v1")]
    } else {
        named_groups(served)
    };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(group, version)| {
            let resources: Vec<Value> = kinds_in(served, group)
                .map(|kind| {
                    let response_kind =
                        json!({"group": group, "version": version, "kind": kind.name()});
                    let mut resource = json!({
                        "resource": kind.plural(),
                        "responseKind": response_kind,
                        "scope": if kind.namespaced() { "Namespaced" } else { "Cluster" },
                        "singularResource": kind.singular(),
                        "verbs": VERBS,
                        "shortNames": kind.short_names(),
                    });
                    if kind == Kind::Pod {
                        resource["categories"] = json!(["all"]);
                    }
                    if kind.has_status() {
                        resource["subresources"] = json!([{
                            "subresource": "status",
                            "responseKind": response_kind,
                            "verbs": STATUS_VERBS,
                        }]);
                    }
                    resource
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({
                "metadata": metadata,
                "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn openapi_v3_root(served: &[Kind]) -> Value {
    let mut paths = serde_json::Map::new();
    paths.insert(
        "api/v1".into(),
        json!({"serverRelativeURL": "/openapi/v3/api/v1?hash=palisade-standin-1"}),
    );
    for (group, version) in named_groups(served) {
        paths.insert(
            format!("apis/{group}/{version}"),
            json!({"serverRelativeURL": format!("/openapi/v3/apis/{group}/{version}?hash=palisade-standin-1")}),
        );
    }
    json!({ "paths": paths })
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`: a minimal OpenAPI
/// document, without schemas. kubectl (create/replace with the default `--validate=strict`)
/// reads it only to learn whether the server validates fields itself (a `fieldValidation`
/// query parameter on the PATCH of the kind); it then leaves validation to the server and
/// needs no schema. With a 404 here it would fall back to `/openapi/v2` and refuse to work.
pub fn openapi_v3_group(served: &[Kind], group: &str, version: &str) -> Option<Value> {
    resource_list(served, group, version)?;
    let mut paths = serde_json::Map::new();
    for kind in kinds_in(served, group) {
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let object_path = if kind.namespaced() {
            format!(
                "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
                kind.plural()
            )
        } else {
            format!("{prefix}/{}/{{name}}", kind.plural())
        };
        let gvk = json!({"group": group, "version": version, "kind": kind.name()});
        let operation = |action: &str| {
            json!({
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": action,
                "parameters": [{
                    "name": "fieldValidation",
                    "in": "query",
                    "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
                    "schema": {"type": "string", "uniqueItems": true},
                }],
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            object_path,
            json!({"put": operation("put"), "patch": operation("patch")}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_accept_detection() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
        assert!(!wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        ));
    }

    #[test]
    fn resource_lists_name_every_kind() {
        let core = resource_list(&Kind::ALL, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "namespaces",
                "namespaces/status",
                "pods",
                "pods/status",
                "nodes",
                "nodes/status"
            ]
        );
        let net = resource_list(&Kind::ALL, "networking.k8s.io", "v1").unwrap();
        assert_eq!(net["resources"][0]["shortNames"], json!(["netpol"]));
        assert!(resource_list(&Kind::ALL, "apps", "v1").is_none());
        let cnp = resource_list(&Kind::ALL, "policy.networking.k8s.io", "v1alpha2").unwrap();
        assert_eq!(cnp["groupVersion"], "policy.networking.k8s.io/v1alpha2");
        assert_eq!(cnp["resources"][0]["name"], "clusternetworkpolicies");
        assert_eq!(cnp["resources"][0]["namespaced"], false);
        assert_eq!(cnp["resources"][1]["name"], "clusternetworkpolicies/status");
        assert!(resource_list(&Kind::ALL, "policy.networking.k8s.io", "v1").is_none());
        // Without the CRD: no such group.
        let without = &Kind::ALL[..4];
        assert!(resource_list(without, "policy.networking.k8s.io", "v1alpha2").is_none());
        assert_eq!(group_list(without)["groups"].as_array().unwrap().len(), 1);
        let list = group_list(&Kind::ALL);
        let groups: Vec<&str> = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(groups, ["networking.k8s.io", "policy.networking.k8s.io"]);
    }
}
