//! What the API server validates on write, as `Status` causes: NetworkPolicy and
//! ClusterNetworkPolicy through [`palisade_policy::model::validate`], object metadata (name
//! syntax, labels) for the rest.

use super::store::{ApiError, Kind, StatusCause};
use palisade_policy::model::api::{ClusterNetworkPolicy, NetworkPolicy};
use palisade_policy::model::validate::{
    dns1123_label_errors, dns1123_subdomain_errors, label_value_errors,
    prune_cluster_network_policy, qualified_name_errors, validate_cluster_network_policy,
    validate_network_policy, FieldError,
};
use serde_json::Value;

/// Decode (400 when the JSON does not have the API's types) and validate a NetworkPolicy.
pub fn network_policy_causes(object: &Value) -> Result<Vec<StatusCause>, ApiError> {
    let policy: NetworkPolicy = serde_json::from_value(object.clone())
        .map_err(|err| ApiError::bad_request(format!("unable to decode NetworkPolicy: {err}")))?;
    Ok(causes(validate_network_policy(&policy)))
}

fn causes(errors: Vec<FieldError>) -> Vec<StatusCause> {
    errors
        .into_iter()
        .map(|e| StatusCause {
            reason: e.kind.cause_reason().to_string(),
            field: e.field,
            message: e.message,
        })
        .collect()
}

/// A ClusterNetworkPolicy as the API server treats a custom resource: a field of the wrong
/// type is a 422 naming it (the schema's type check); fields the CRD's structural schema does
/// not know are pruned from `spec` (the object is rewritten); then the schema's and the CEL
/// rules' checks.
pub fn cluster_network_policy_causes(object: &mut Value) -> Result<Vec<StatusCause>, ApiError> {
    let mut policy: ClusterNetworkPolicy = match serde_path_to_error::deserialize(object.clone()) {
        Ok(p) => p,
        Err(err) => {
            let field = err.path().to_string();
            let found = json_type(&value_at(object, &field));
            let name = object["metadata"]["name"].as_str().unwrap_or("");
            return Err(ApiError::invalid(
                Kind::ClusterNetworkPolicy,
                name,
                vec![StatusCause {
                    reason: "FieldValueTypeInvalid".into(),
                    message: format!(
                        "Invalid value: \"{found}\": {field} in body must be of type {}: \"{found}\"",
                        expected_type(&err.inner().to_string())
                    ),
                    field,
                }],
            ));
        }
    };
    prune_cluster_network_policy(&mut policy);
    if object.get("spec").is_some() {
        object["spec"] = serde_json::to_value(&policy.spec)
            .map_err(|e| ApiError::bad_request(format!("encode the pruned spec: {e}")))?;
    }
    Ok(causes(validate_cluster_network_policy(&policy)))
}

/// The value at a serde path (`spec.ingress[0].action`).
fn value_at(object: &Value, path: &str) -> Value {
    let mut cur = object;
    for part in path.split('.') {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            cur = &cur[key];
        }
        for idx in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            cur = &cur[idx.parse::<usize>().unwrap_or(usize::MAX)];
        }
    }
    cur.clone()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The schema type serde expected, from its message (`invalid type: string "x", expected
/// i64`).
fn expected_type(message: &str) -> &'static str {
    let expected = message.rsplit("expected ").next().unwrap_or("");
    if expected.starts_with('i') || expected.starts_with('u') {
        "integer"
    } else if expected.contains("string") {
        "string"
    } else if expected.contains("sequence") {
        "array"
    } else if expected.contains("boolean") {
        "boolean"
    } else {
        "object"
    }
}

/// `ValidateObjectMeta` for namespaces (name: DNS-1123 label), pods and nodes (DNS-1123
/// subdomain): name syntax and labels.
pub fn object_meta_causes(kind: Kind, object: &Value) -> Vec<StatusCause> {
    let meta = &object["metadata"];
    let mut causes = Vec::new();
    let mut invalid = |field: &str, value: &str, msg: String| {
        causes.push(StatusCause {
            reason: "FieldValueInvalid".into(),
            field: field.into(),
            message: format!("Invalid value: {value:?}: {msg}"),
        })
    };
    if let Some(name) = meta["name"].as_str().filter(|n| !n.is_empty()) {
        let errors = if kind == Kind::Namespace {
            dns1123_label_errors(name)
        } else {
            dns1123_subdomain_errors(name)
        };
        for msg in errors {
            invalid("metadata.name", name, msg);
        }
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (key, value) in labels {
            for msg in qualified_name_errors(key) {
                invalid("metadata.labels", key, msg);
            }
            match value.as_str() {
                Some(value) => {
                    for msg in label_value_errors(value) {
                        invalid("metadata.labels", value, msg);
                    }
                }
                None => invalid(
                    "metadata.labels",
                    &value.to_string(),
                    "must be a string".into(),
                ),
            }
        }
    }
    causes
}
