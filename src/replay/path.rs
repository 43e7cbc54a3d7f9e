//! The path expressions of `pm-replay blame`: a small query language over
//! the state document (see [`super::state_document`]).
//!
//! Syntax (`segment ('.' segment)*`):
//! * a segment is a field name, in proto `snake_case` or proto3-JSON
//!   `lowerCamelCase` (`next_eval_time` and `nextEvalTime` are the same),
//!   followed by any number of selectors in brackets;
//! * `[N]` takes the element at index N of a list;
//! * `[key=value]` takes the elements of a list whose field `key` equals
//!   `value` (compared as text, so `clid=101` matches the JSON string
//!   `"101"`), e.g. `pcls[clid=101].status`, `purging_cls[clid=3]`,
//!   `runs[id=proj/1-1-abc].status`;
//! * `[contains=N]` takes the elements that are lists containing N, or
//!   objects whose `clids` list contains N, e.g. `components[contains=101]`.
//!
//! A selector that matches one element yields that element; one that matches
//! several yields the list of them; one that matches none yields `null`, as
//! does a missing field. Applying a field to a list applies it to each element.

use serde_json::Value;

/// One parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Index(usize),
    Equals(String, String),
    Contains(String),
}

/// One parsed segment: a field and its selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    field: String,
    selectors: Vec<Selector>,
}

/// A parsed path expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePath {
    text: String,
    segments: Vec<Segment>,
}

/// The proto3 JSON name of a proto field name (`next_eval_time` → `nextEvalTime`).
pub fn json_name(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

impl std::fmt::Display for StatePath {
    /// The path as it was written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl StatePath {
    /// Parses a path expression; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |message: String| format!("invalid path {text:?}: {message}");
        if text.trim().is_empty() {
            return Err(bad("it is empty".into()));
        }
        let mut segments = Vec::new();
        let mut rest = text.trim();
        loop {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let field = &rest[..end];
            if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(format!("expected a field name at {rest:?}")));
            }
            rest = &rest[end..];
            let mut selectors = Vec::new();
            while let Some(after) = rest.strip_prefix('[') {
                let close = after
                    .find(']')
                    .ok_or_else(|| bad("a '[' is not closed".into()))?;
                let inner = after[..close].trim();
                let selector = if let Some((key, value)) = inner.split_once('=') {
                    let (key, value) = (key.trim(), value.trim().trim_matches('"'));
                    if key.is_empty() || value.is_empty() {
                        return Err(bad(format!("selector [{inner}] needs key=value")));
                    }
                    if key == "contains" {
                        Selector::Contains(value.to_string())
                    } else {
                        Selector::Equals(json_name(key), value.to_string())
                    }
                } else {
                    Selector::Index(inner.parse().map_err(|_| {
                        bad(format!(
                            "selector [{inner}] is neither an index, key=value nor contains=N"
                        ))
                    })?)
                };
                selectors.push(selector);
                rest = &after[close + 1..];
            }
            segments.push(Segment {
                field: json_name(field),
                selectors,
            });
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix('.')
                .ok_or_else(|| bad(format!("expected '.' at {rest:?}")))?;
        }
        Ok(Self {
            text: text.trim().to_string(),
            segments,
        })
    }

    /// The path as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The part of `document` the path names (`null` if none).
    pub fn evaluate(&self, document: &Value) -> Value {
        let mut current = document.clone();
        for segment in &self.segments {
            current = field(&current, &segment.field);
            for selector in &segment.selectors {
                current = select(&current, selector);
            }
        }
        current
    }
}

fn field(value: &Value, name: &str) -> Value {
    match value {
        Value::Object(map) => map.get(name).cloned().unwrap_or(Value::Null),
        Value::Array(items) => {
            let found: Vec<Value> = items
                .iter()
                .map(|item| field(item, name))
                .filter(|v| !v.is_null())
                .collect();
            collapse(found)
        }
        _ => Value::Null,
    }
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn contains(value: &Value, needle: &str) -> bool {
    let list = match value {
        Value::Object(map) => map.get("clids"),
        other => Some(other),
    };
    matches!(list, Some(Value::Array(items)) if items.iter().any(|i| as_text(i).as_deref() == Some(needle)))
}

fn select(value: &Value, selector: &Selector) -> Value {
    let Value::Array(items) = value else {
        return Value::Null;
    };
    match selector {
        Selector::Index(i) => items.get(*i).cloned().unwrap_or(Value::Null),
        Selector::Equals(key, wanted) => collapse(
            items
                .iter()
                .filter(|item| {
                    item.get(key.as_str()).and_then(as_text).as_deref() == Some(wanted.as_str())
                })
                .cloned()
                .collect(),
        ),
        Selector::Contains(needle) => collapse(
            items
                .iter()
                .filter(|item| contains(item, needle))
                .cloned()
                .collect(),
        ),
    }
}

fn collapse(mut found: Vec<Value>) -> Value {
    match found.len() {
        0 => Value::Null,
        1 => found.pop().expect("one element"),
        _ => Value::Array(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_select_what_they_say() {
        let doc = json!({
            "pcls": [{"clid": "101", "status": "OK"}, {"clid": "102", "status": "UNWATCHED"}],
            "components": [{"clids": ["101", "102"]}, {"clids": ["103"]}],
            "nextEvalTime": "2024-01-01T00:00:00Z",
        });
        let eval = |p: &str| StatePath::parse(p).unwrap().evaluate(&doc);
        assert_eq!(eval("pcls[clid=102].status"), json!("UNWATCHED"));
        assert_eq!(eval("components[contains=103]"), json!({"clids": ["103"]}));
        assert_eq!(eval("next_eval_time"), json!("2024-01-01T00:00:00Z"));
        assert_eq!(eval("pcls[1].clid"), json!("102"));
        assert_eq!(eval("purging_cls[clid=3]"), Value::Null);
        assert!(StatePath::parse("pcls[clid=").is_err());
        assert!(StatePath::parse("a..b").is_err());
    }
}
