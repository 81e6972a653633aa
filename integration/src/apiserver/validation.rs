//! What the API server validates on write, as `Status` causes: NetworkPolicy through
//! [`palisade_policy::model::validate`], object metadata (name syntax, labels) for the rest.

use super::store::{ApiError, Kind, StatusCause};
use palisade_policy::model::api::NetworkPolicy;
use palisade_policy::model::validate::{
    dns1123_label_errors, dns1123_subdomain_errors, label_value_errors, qualified_name_errors,
    validate_network_policy,
};
use serde_json::Value;

/// Decode (400 when the JSON does not have the API's types) and validate a NetworkPolicy.
pub fn network_policy_causes(object: &Value) -> Result<Vec<StatusCause>, ApiError> {
    let policy: NetworkPolicy = serde_json::from_value(object.clone())
        .map_err(|err| ApiError::bad_request(format!("unable to decode NetworkPolicy: {err}")))?;
    Ok(validate_network_policy(&policy)
        .into_iter()
        .map(|e| StatusCause {
            reason: e.kind.cause_reason().to_string(),
            field: e.field,
            message: e.message,
        })
        .collect())
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
