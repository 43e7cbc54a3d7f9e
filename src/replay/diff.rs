//! Field-level differences between two JSON documents (states, logs,
//! markers), with paths in the syntax of [`super::path`]: lists of objects
//! that carry a `clid` or an `id` are matched by that key
//! (`pcls[clid=101].status`), components by their first clid
//! (`components[contains=101]`), other lists by index.

use serde_json::Value;

/// One difference between two documents.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// Where, as a path expression.
    pub path: String,
    /// The value before (absent: the field was added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The value after (absent: the field was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.before, &self.after) {
            (Some(b), Some(a)) => write!(f, "~ {}: {b} -> {a}", self.path),
            (None, Some(a)) => write!(f, "+ {}: {a}", self.path),
            (Some(b), None) => write!(f, "- {}: {b}", self.path),
            (None, None) => write!(f, "  {}", self.path),
        }
    }
}

/// Every difference between `before` and `after`, in document order.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    walk("", before, after, &mut changes);
    changes
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The selector that identifies a list element, if the list is keyed.
fn element_key(item: &Value) -> Option<String> {
    let object = item.as_object()?;
    for key in ["clid", "id", "runId", "operationId"] {
        if let Some(k) = object.get(key).and_then(text) {
            return Some(format!("{key}={k}"));
        }
    }
    let first = object.get("clids")?.as_array()?.first().and_then(text)?;
    Some(format!("contains={first}"))
}

fn keyed(items: &[Value]) -> Option<Vec<(String, &Value)>> {
    let keys: Vec<(String, &Value)> = items
        .iter()
        .map(|i| element_key(i).map(|k| (k, i)))
        .collect::<Option<_>>()?;
    let mut seen = std::collections::BTreeSet::new();
    keys.iter()
        .all(|(k, _)| seen.insert(k.clone()))
        .then_some(keys)
}

fn walk(path: &str, before: &Value, after: &Value, out: &mut Vec<Change>) {
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let sub = join(path, key);
                match (b.get(key), a.get(key)) {
                    (Some(x), Some(y)) => walk(&sub, x, y, out),
                    (Some(x), None) => out.push(Change {
                        path: sub,
                        before: Some(x.clone()),
                        after: None,
                    }),
                    (None, Some(y)) => out.push(Change {
                        path: sub,
                        before: None,
                        after: Some(y.clone()),
                    }),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => match (keyed(b), keyed(a)) {
            (Some(bk), Some(ak)) => {
                for (key, x) in &bk {
                    let sub = format!("{path}[{key}]");
                    match ak.iter().find(|(k, _)| k == key) {
                        Some((_, y)) => walk(&sub, x, y, out),
                        None => out.push(Change {
                            path: sub,
                            before: Some((*x).clone()),
                            after: None,
                        }),
                    }
                }
                for (key, y) in &ak {
                    if !bk.iter().any(|(k, _)| k == key) {
                        out.push(Change {
                            path: format!("{path}[{key}]"),
                            before: None,
                            after: Some((*y).clone()),
                        });
                    }
                }
            }
            _ if b.iter().chain(a.iter()).all(|v| !v.is_object()) => out.push(Change {
                path: path.to_string(),
                before: Some(before.clone()),
                after: Some(after.clone()),
            }),
            _ => {
                for i in 0..b.len().max(a.len()) {
                    let sub = format!("{path}[{i}]");
                    match (b.get(i), a.get(i)) {
                        (Some(x), Some(y)) => walk(&sub, x, y, out),
                        (x, y) => out.push(Change {
                            path: sub,
                            before: x.cloned(),
                            after: y.cloned(),
                        }),
                    }
                }
            }
        },
        _ => out.push(Change {
            path: path.to_string(),
            before: (!before.is_null()).then(|| before.clone()),
            after: (!after.is_null()).then(|| after.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keyed_lists_are_matched_by_key() {
        let before =
            json!({"pcls": [{"clid": "1", "status": "OK"}], "components": [{"clids": ["1"]}]});
        let after = json!({"pcls": [{"clid": "1", "status": "UNWATCHED"}, {"clid": "2"}], "components": [{"clids": ["1", "2"]}]});
        let lines: Vec<String> = diff(&before, &after)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                r#"~ components[contains=1].clids: ["1"] -> ["1","2"]"#,
                r#"~ pcls[clid=1].status: "OK" -> "UNWATCHED""#,
                r#"+ pcls[clid=2]: {"clid":"2"}"#,
            ]
        );
    }
}
