//! `labelSelector` and `fieldSelector` query parameters, parsed as apimachinery does
//! (`labels.Parse`, `fields.ParseSelector`) for the forms clients send.

use super::store::{ApiError, Kind};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector` (requirements ANDed; empty selects everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelQuery(Vec<LabelRequirement>);

impl LabelQuery {
    pub fn parse(s: &str) -> Result<LabelQuery, ApiError> {
        let bad =
            |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}: {s:?}"));
        let mut requirements = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            if let Some(key) = term.strip_prefix('!') {
                requirements.push(LabelRequirement::DoesNotExist(key.trim().to_string()));
            } else if let Some((key, value)) = term.split_once("!=") {
                requirements.push(LabelRequirement::NotEquals(
                    key.trim().into(),
                    value.trim().into(),
                ));
            } else if let Some((key, value)) = term.split_once("==") {
                requirements.push(LabelRequirement::Equals(
                    key.trim().into(),
                    value.trim().into(),
                ));
            } else if let Some((key, value)) = term.split_once('=') {
                requirements.push(LabelRequirement::Equals(
                    key.trim().into(),
                    value.trim().into(),
                ));
            } else if let Some(open) = term.find('(') {
                let close = term.rfind(')').ok_or_else(|| bad("missing ')'"))?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let values: Vec<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                match head.as_slice() {
                    [key, op] if op.eq_ignore_ascii_case("in") => {
                        requirements.push(LabelRequirement::In(key.to_string(), values))
                    }
                    [key, op] if op.eq_ignore_ascii_case("notin") => {
                        requirements.push(LabelRequirement::NotIn(key.to_string(), values))
                    }
                    _ => return Err(bad("expected 'in' or 'notin'")),
                }
            } else if term.contains(char::is_whitespace) {
                return Err(bad("unexpected whitespace"));
            } else {
                requirements.push(LabelRequirement::Exists(term.to_string()));
            }
        }
        Ok(LabelQuery(requirements))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Split on commas that are not inside parentheses (`a in (x,y),b`).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
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
