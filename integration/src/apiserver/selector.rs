//! `labelSelector` and `fieldSelector` query parameters, parsed as apimachinery does
//! (`labels.Parse`, `fields.ParseSelector`) for the forms clients send.

use super::store::{ApiError, Kind};
use palisade_policy::model::api::{LabelSelector, Labels};
use palisade_policy::model::selector::{parse_label_selector, selector_matches};
use serde_json::Value;

/// A parsed `labelSelector` (requirements ANDed; empty selects everything), read by the
/// same parser as `palisadectl -l`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelQuery(LabelSelector);

impl LabelQuery {
    pub fn parse(s: &str) -> Result<LabelQuery, ApiError> {
        parse_label_selector(s)
            .map(LabelQuery)
            .map_err(ApiError::bad_request)
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels: Labels = object["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        selector_matches(&self.0, &labels)
    }
}

/// A parsed `fieldSelector`: `path=value`, `path==value`, `path!=value`, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldQuery(Vec<(String, bool, String)>);

/// The field labels each kind supports (the API server refuses others with 400).
fn supported_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Kind::Node => &["metadata.name", "spec.unschedulable"],
        Kind::Namespace => &["metadata.name", "status.phase"],
        // Custom resources: `metadata.name` and `metadata.namespace` only.
        Kind::NetworkPolicy | Kind::ClusterNetworkPolicy => {
            &["metadata.name", "metadata.namespace"]
        }
    }
}

impl FieldQuery {
    pub fn parse(kind: Kind, s: &str) -> Result<FieldQuery, ApiError> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let path = path.trim();
            if !supported_fields(kind).contains(&path) {
                return Err(ApiError::bad_request(format!(
                    "\"{path}\" is not a known field selector: only \"{}\"",
                    supported_fields(kind).join("\", \"")
                )));
            }
            terms.push((path.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldQuery(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let mut node = object;
            for part in path.split('.') {
                node = &node[part];
            }
            // Absent fields compare as "" (as the field label functions render them).
            let have = match node {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            (have == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_forms() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=back", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier in (back),app", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing!=x", true),
            ("missing notin (x)", true),
        ];
        for (selector, expected) in cases {
            let query = LabelQuery::parse(selector).unwrap();
            assert_eq!(query.matches(&pod), expected, "{selector}");
        }
    }

    #[test]
    fn field_selector_forms() {
        let pod = json!({"metadata": {"name": "a", "namespace": "x"}, "spec": {"nodeName": "n1"}});
        let matches = |s: &str| FieldQuery::parse(Kind::Pod, s).unwrap().matches(&pod);
        assert!(matches("spec.nodeName=n1"));
        assert!(matches("metadata.name==a,metadata.namespace=x"));
        assert!(!matches("spec.nodeName!=n1"));
        assert!(matches("status.phase="));
        assert_eq!(
            FieldQuery::parse(Kind::Pod, "spec.bogus=1")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            FieldQuery::parse(Kind::Node, "spec.nodeName=a")
                .unwrap_err()
                .code,
            400
        );
    }
}
