//! Discovery documents: the legacy ones (`/api`, `/api/v1`, `/apis`, `/apis/<group>`,
//! `/apis/<group>/<version>`), the aggregated `apidiscovery.k8s.io/v2` lists kubectl 1.30+
//! asks for first, and `/version`.

use super::store::Kind;
use serde_json::{json, Value};

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];
const NETWORKING: &str = "networking.k8s.io";

fn kinds_in(group: &str) -> impl Iterator<Item = Kind> + '_ {
    Kind::ALL.into_iter().filter(move |k| k.group() == group)
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

fn group_entry() -> Value {
    let version = json!({"groupVersion": format!("{NETWORKING}/v1"), "version": "v1"});
    json!({"name": NETWORKING, "versions": [version.clone()], "preferredVersion": version})
}

/// `GET /apis`.
pub fn group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_entry()]})
}

/// `GET /apis/networking.k8s.io`, or `None` for another group.
pub fn group(name: &str) -> Option<Value> {
    if name != NETWORKING {
        return None;
    }
    let mut group = group_entry();
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

/// `GET /api/v1` (`group` = "") or `/apis/networking.k8s.io/v1`, else `None`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if version != "v1" || !(group.is_empty() || group == NETWORKING) {
        return None;
    }
    let mut resources = Vec::new();
    for kind in kinds_in(group) {
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
        format!("{group}/v1")
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
pub fn aggregated(core: bool) -> Value {
    let groups: Vec<&str> = if core { vec![""] } else { vec![NETWORKING] };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|group| {
            let resources: Vec<Value> = kinds_in(group)
                .map(|kind| {
                    let response_kind =
                        json!({"group": group, "version": "v1", "kind": kind.name()});
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
                "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
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
pub fn openapi_v3_root() -> Value {
    json!({"paths": {
        "api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=palisade-standin-1"},
        format!("apis/{NETWORKING}/v1"): {
            "serverRelativeURL": format!("/openapi/v3/apis/{NETWORKING}/v1?hash=palisade-standin-1")
        },
    }})
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/networking.k8s.io/v1`: a minimal OpenAPI
/// document, without schemas. kubectl (create/replace with the default `--validate=strict`)
/// reads it only to learn whether the server validates fields itself (a `fieldValidation`
/// query parameter on the PATCH of the kind); it then leaves validation to the server and
/// needs no schema. With a 404 here it would fall back to `/openapi/v2` and refuse to work.
pub fn openapi_v3_group(group: &str, version: &str) -> Option<Value> {
    resource_list(group, version)?;
    let mut paths = serde_json::Map::new();
    for kind in kinds_in(group) {
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/v1")
        };
        let object_path = if kind.namespaced() {
            format!(
                "{prefix}/namespaces/{{namespace}}/{}/{{name}}",
                kind.plural()
            )
        } else {
            format!("{prefix}/{}/{{name}}", kind.plural())
        };
        let gvk = json!({"group": group, "version": "v1", "kind": kind.name()});
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
        let core = resource_list("", "v1").unwrap();
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
        let net = resource_list(NETWORKING, "v1").unwrap();
        assert_eq!(net["resources"][0]["shortNames"], json!(["netpol"]));
        assert!(resource_list("apps", "v1").is_none());
    }
}
