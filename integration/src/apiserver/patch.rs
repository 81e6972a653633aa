//! PATCH bodies: RFC 7386 merge patch (also used for strategic-merge patches, which for the
//! maps kubectl patches here, labels and annotations, mean the same) and RFC 6902 JSON patch.

use serde_json::Value;

/// Apply an RFC 7386 merge patch in place: objects merge recursively, `null` removes a key,
/// anything else (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else if key.starts_with("$") {
            // Strategic-merge directives ($patch, $retainKeys, ...): not modelled.
            continue;
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Apply an RFC 6902 JSON patch (`add`, `remove`, `replace`, `test`, `copy`, `move`).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or("a JSON patch operation needs a path")?;
        match op["op"].as_str().unwrap_or("") {
            "add" => add(target, path, op["value"].clone())?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, op["value"].clone())?;
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            "copy" | "move" => {
                let from = op["from"].as_str().ok_or("copy/move needs from")?;
                let value = if op["op"] == "move" {
                    remove(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or(format!("missing {from}"))?
                };
                add(target, path, value)?;
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or(format!("bad path {path:?}"))?;
    Ok((parent, unescape(last)))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad index in {path:?}"))?
            };
            if index > items.len() {
                return Err(format!("index out of range in {path:?}"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("missing parent of {path:?}")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or(format!("missing {path:?}")),
        Some(Value::Array(items)) => {
            let index = last
                .parse::<usize>()
                .map_err(|_| format!("bad index in {path:?}"))?;
            if index >= items.len() {
                return Err(format!("index out of range in {path:?}"));
            }
            Ok(items.remove(index))
        }
        _ => Err(format!("missing {path:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes_labels() {
        let mut pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1]}});
        merge_patch(
            &mut pod,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        );
        assert_eq!(pod["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(pod["spec"], json!({"x": [1]}));
    }

    #[test]
    fn json_patch_operations() {
        let mut obj = json!({"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2]});
        json_patch(
            &mut obj,
            &json!([
                {"op": "add", "path": "/metadata/labels/c", "value": "3"},
                {"op": "remove", "path": "/metadata/labels/a~1b"},
                {"op": "replace", "path": "/list/0", "value": 9},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/list/1", "value": 2},
            ]),
        )
        .unwrap();
        assert_eq!(
            obj,
            json!({"metadata": {"labels": {"c": "3"}}, "list": [9, 2, 3]})
        );
        assert!(json_patch(&mut obj, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
