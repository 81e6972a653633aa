//! The `meta.k8s.io/v1` Table format `kubectl get` asks for, with the columns the API
//! server's printers give these kinds (kubernetes/pkg/printers/internalversion).

use super::store::{parse_rfc3339, Kind};
use serde_json::{json, Value};

/// Does this `Accept` header ask for a Table?
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// What a row carries in `object` (`includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn column(name: &str, kind: &str, priority: u8, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({
        "name": name,
        "type": kind,
        "format": format,
        "description": description,
        "priority": priority,
    })
}

fn columns(kind: Kind) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.");
    match kind {
        Kind::Namespace => vec![
            name,
            column("Status", "string", 0, "The status of the namespace"),
            age,
        ],
        Kind::Pod => vec![
            name,
            column("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "string", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            column("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            column("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
            column("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            column("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        Kind::Node => vec![
            name,
            column("Status", "string", 0, "The status of the node"),
            column("Roles", "string", 0, "The roles of the node"),
            age,
            column("Version", "string", 0, "Kubelet Version reported by the node."),
            column("Internal-IP", "string", 1, "List of internal IPs associated with the node."),
            column("External-IP", "string", 1, "List of external IPs associated with the node."),
            column("OS-Image", "string", 1, "OS Image reported by the node."),
            column("Kernel-Version", "string", 1, "Kernel Version reported by the node."),
            column("Container-Runtime", "string", 1, "Container Runtime Version reported by the node."),
        ],
        Kind::NetworkPolicy => vec![
            name,
            column("Pod-Selector", "string", 0, "Selects the pods to which this NetworkPolicy object applies."),
            age,
        ],
        // The CRD's additionalPrinterColumns.
        Kind::ClusterNetworkPolicy => vec![
            name,
            column("Tier", "string", 0, ""),
            column("Priority", "string", 0, ""),
            column("Age", "date", 0, ""),
        ],
    }
}

fn text(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| !s.is_empty())
}

fn none_or(value: &Value) -> String {
    text(value).unwrap_or("<none>").to_string()
}

fn age(object: &Value, now: i64) -> String {
    match object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_rfc3339)
    {
        Some(created) => human_duration(now - created),
        None => "<unknown>".into(),
    }
}

/// apimachinery's `duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `metav1.FormatLabelSelector`: `a=b,c in (d,e),!f`, or `<none>` for the empty selector.
pub fn format_label_selector(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        for (key, value) in labels {
            parts.push(format!("{key}={}", value.as_str().unwrap_or("")));
        }
    }
    for expr in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = expr["key"].as_str().unwrap_or("");
        let values: Vec<&str> = expr["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match expr["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({})", values.join(",")),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn cells(kind: Kind, object: &Value, now: i64) -> Vec<Value> {
    let name = json!(object["metadata"]["name"].as_str().unwrap_or(""));
    match kind {
        Kind::Namespace => vec![
            name,
            json!(text(&object["status"]["phase"]).unwrap_or("Active")),
            json!(age(object, now)),
        ],
        Kind::Pod => {
            let containers = object["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = object["status"]["containerStatuses"].as_array();
            let ready = statuses
                .into_iter()
                .flatten()
                .filter(|s| s["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses
                .into_iter()
                .flatten()
                .filter_map(|s| s["restartCount"].as_i64())
                .sum();
            let status = if object["metadata"]["deletionTimestamp"].is_string() {
                "Terminating".to_string()
            } else {
                text(&object["status"]["reason"])
                    .or_else(|| text(&object["status"]["phase"]))
                    .unwrap_or("Pending")
                    .to_string()
            };
            let gates = object["spec"]["readinessGates"]
                .as_array()
                .map_or(0, Vec::len);
            vec![
                name,
                json!(format!("{ready}/{containers}")),
                json!(status),
                json!(restarts.to_string()),
                json!(age(object, now)),
                json!(none_or(&object["status"]["podIP"])),
                json!(none_or(&object["spec"]["nodeName"])),
                json!(none_or(&object["status"]["nominatedNodeName"])),
                json!(if gates == 0 {
                    "<none>".to_string()
                } else {
                    format!("0/{gates}")
                }),
            ]
        }
        Kind::Node => {
            let conditions = object["status"]["conditions"].as_array();
            let ready = conditions
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let mut roles: Vec<String> = object["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect();
            roles.sort();
            let address = |wanted: &str| {
                object["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == wanted)
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or("<none>")
                    .to_string()
            };
            let info = &object["status"]["nodeInfo"];
            vec![
                name,
                json!(ready),
                json!(if roles.is_empty() {
                    "<none>".into()
                } else {
                    roles.join(",")
                }),
                json!(age(object, now)),
                json!(text(&info["kubeletVersion"]).unwrap_or("")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(none_or(&info["osImage"])),
                json!(none_or(&info["kernelVersion"])),
                json!(none_or(&info["containerRuntimeVersion"])),
            ]
        }
        Kind::NetworkPolicy => vec![
            name,
            json!(format_label_selector(&object["spec"]["podSelector"])),
            json!(age(object, now)),
        ],
        // As the apiextensions server fills a CRD's columns: the value at the JSONPath (a
        // `string` column shows a number as text), the creation time itself for a `date`
        // column (kubectl prints it as an age).
        Kind::ClusterNetworkPolicy => vec![
            name,
            object["spec"]["tier"].clone(),
            match &object["spec"]["priority"] {
                Value::Null => Value::Null,
                Value::String(s) => json!(s),
                other => json!(other.to_string()),
            },
            object["metadata"]["creationTimestamp"].clone(),
        ],
    }
}

fn row_object(object: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => object.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        }),
    }
}

/// A Table of `objects` (list metadata: `resourceVersion`, `continue`).
pub fn table(kind: Kind, objects: &[Value], list_metadata: Value, include: IncludeObject) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = json!({"cells": cells(kind, object, now)});
            if include != IncludeObject::None {
                row["object"] = row_object(object, include);
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": columns(kind),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_like_apimachinery() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (47 * 3600, "47h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (3 * 365 * 86400, "3y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn label_selector_formatting() {
        assert_eq!(format_label_selector(&json!({})), "<none>");
        assert_eq!(
            format_label_selector(&json!({
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "t", "operator": "In", "values": ["a", "b"]},
                    {"key": "x", "operator": "DoesNotExist"},
                ]
            })),
            "app=web,t in (a,b),!x"
        );
    }

    #[test]
    fn pod_row_cells() {
        let pod = json!({
            "metadata": {"name": "a", "creationTimestamp": "1970-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "main"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                       "containerStatuses": [{"ready": true, "restartCount": 2}]},
        });
        let t = table(Kind::Pod, &[pod], json!({}), IncludeObject::Metadata);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["a", "1/1", "Running", "2", "5s", "10.0.0.5", "n1", "<none>", "<none>"])
                .as_array()
                .map(|c| {
                    let mut c = c.clone();
                    c[4] = t["rows"][0]["cells"][4].clone();
                    Value::Array(c)
                })
                .unwrap()
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
