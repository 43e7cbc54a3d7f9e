//! Architecture invariant: which module may import which (the layering
//! table of `ARCHITECTURE.md`). This test reads every Rust file of `src/` and
//! `tools/`, collects the crate modules it names (`crate::m…` in `src/`,
//! `prjmanager::m…` in `tools/`, including `use crate::{a, b::c}` groups) in
//! code outside comments and unit tests, and fails naming the file, the line
//! and the forbidden module.

use std::collections::BTreeSet;
#[path = "common/sources.rs"]
mod sources;

use std::path::Path;

use sources::rust_files;

/// Every top-level module of the library and what it may import. A module
/// missing from this table is an error too, so that a new module gets a row.
const ALLOWED: &[(&str, &[&str])] = &[
    ("proto", &[]),
    ("store", &[]),
    ("progress", &[]),
    ("metrics", &[]),
    ("limits", &["proto"]),
    ("domain", &["proto"]),
    ("events", &["proto"]),
    ("testing", &["domain", "proto"]),
    ("streams", &["events", "limits", "proto", "store"]),
    ("fold", &["domain", "events", "proto", "store", "streams"]),
    (
        "notifier",
        &["events", "limits", "proto", "store", "streams"],
    ),
    (
        "jsonl",
        &["events", "notifier", "proto", "store", "streams"],
    ),
    ("read", &["domain", "fold", "proto", "store", "streams"]),
    (
        "projector",
        &[
            "domain", "events", "fold", "metrics", "proto", "read", "store", "streams",
        ],
    ),
    (
        "service",
        &[
            "domain",
            "events",
            "limits",
            "metrics",
            "notifier",
            "projector",
            "proto",
            "read",
            "store",
            "streams",
        ],
    ),
    (
        "replay",
        &[
            "domain", "events", "fold", "jsonl", "progress", "proto", "read", "store", "streams",
        ],
    ),
    (
        "cli",
        &[
            "domain",
            "events",
            "jsonl",
            "limits",
            "notifier",
            "progress",
            "projector",
            "proto",
            "read",
            "service",
            "store",
            "streams",
        ],
    ),
    // The binaries under tools/: pm-replay is the replay library's command
    // line and must not reach into the service or the CLI; pm-bench measures
    // everything.
    (
        "tools/replay",
        &["progress", "proto", "read", "replay", "store", "streams"],
    ),
    (
        "tools/bench",
        &[
            "domain",
            "events",
            "fold",
            "jsonl",
            "limits",
            "notifier",
            "progress",
            "projector",
            "proto",
            "read",
            "replay",
            "service",
            "store",
            "streams",
            "testing",
        ],
    ),
];

/// Files that are not hand-written modules (generated code, entry points).
const SKIPPED: &[&str] = &["src/proto.rs", "src/lib.rs", "src/main.rs"];

/// The module a file belongs to: `src/<m>.rs` or `src/<m>/…` gives `m`,
/// `tools/<t>/…` gives `tools/<t>`.
fn module_of(relative: &str) -> String {
    let mut parts = relative.split('/');
    match (parts.next(), parts.next()) {
        (Some("src"), Some(first)) => first.trim_end_matches(".rs").to_string(),
        (Some("tools"), Some(tool)) => format!("tools/{tool}"),
        _ => panic!("{relative} is outside src/ and tools/"),
    }
}

/// The code of a file without comments, unit tests (`#[cfg(test)]` and
/// everything after it) or string literals, line by line.
fn code_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") || trimmed.starts_with("/*") || trimmed.starts_with('*') {
            lines.push(String::new());
            continue;
        }
        let mut code = String::new();
        let mut in_string = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if in_string => {
                    chars.next();
                }
                '"' => in_string = !in_string,
                '/' if !in_string && chars.peek() == Some(&'/') => break,
                _ if in_string => {}
                _ => code.push(c),
            }
        }
        lines.push(code);
    }
    lines
}

/// The crate modules named after `root::` in the code, with the 1-based line
/// of each mention.
fn imported_modules(lines: &[String], root: &str) -> Vec<(usize, String)> {
    let text = lines.join("\n");
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let prefix = format!("{root}::");
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(at) = text[start..].find(&prefix) {
        let at = start + at;
        start = at + prefix.len();
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[start..];
        if let Some(group) = rest.strip_prefix('{') {
            // `root::{a, b::{c, d}, e}`: the first segment of each item.
            let mut depth = 0usize;
            let mut collecting = true;
            let mut ident = String::new();
            for (i, c) in group.char_indices() {
                if depth == 0 && collecting {
                    if c.is_alphanumeric() || c == '_' {
                        ident.push(c);
                        continue;
                    }
                    if !ident.is_empty() {
                        found.push((line_of(start + 1 + i), std::mem::take(&mut ident)));
                        collecting = false;
                    } else if c.is_whitespace() {
                        continue;
                    }
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => collecting = true,
                    _ => {}
                }
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.push((line_of(at), ident));
            }
        }
    }
    found
}

fn allowed(module: &str) -> Option<&'static [&'static str]> {
    ALLOWED
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, imports)| *imports)
}

#[test]
fn every_module_imports_only_what_the_layering_table_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = rust_files(&root.join("src"));
    files.extend(rust_files(&root.join("tools")));
    assert!(files.len() > 30, "found only {} files", files.len());
    let mut violations = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for path in &files {
        let relative = path
            .strip_prefix(root)
            .expect("under the manifest dir")
            .to_string_lossy()
            .replace('\\', "/");
        let module = module_of(&relative);
        seen_modules.insert(module.clone());
        if SKIPPED.contains(&relative.as_str()) || relative.ends_with("/tests.rs") {
            continue;
        }
        let Some(may_import) = allowed(&module) else {
            violations.push(format!(
                "{relative}: module `{module}` has no row in the layering table"
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).expect("readable source");
        let crate_root = if module.starts_with("tools/") {
            "prjmanager"
        } else {
            "crate"
        };
        for (line, imported) in imported_modules(&code_lines(&text), crate_root) {
            if imported == module || imported == "self" || may_import.contains(&imported.as_str()) {
                continue;
            }
            violations.push(format!(
                "{relative}:{line}: `{module}` must not import `{imported}`"
            ));
        }
    }
    for (module, _) in ALLOWED {
        assert!(
            seen_modules.contains(*module),
            "the layering table names `{module}`, which has no file"
        );
    }
    assert!(
        violations.is_empty(),
        "layering violations (see ARCHITECTURE.md, Layering):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_finds_plain_grouped_and_inline_imports_but_not_comments_or_strings() {
    let source = "\
use crate::domain;
use crate::{store::NewEvent, streams::{self, project_stream}, events};
// use crate::service;
fn f() { crate::notifier::validate_project(\"crate::cli\"); }
#[cfg(test)]
mod tests { use crate::testing; }
";
    let found: Vec<(usize, String)> = imported_modules(&code_lines(source), "crate");
    let names: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        names,
        ["domain", "store", "streams", "events", "notifier"],
        "{found:?}"
    );
    assert_eq!(found[0].0, 1);
    assert_eq!(found[4].0, 4);
}

#[test]
fn a_forbidden_import_is_reported_with_file_line_and_module() {
    // The check itself, on a made-up file of the domain.
    let lines = code_lines("use crate::proto;\n\nuse crate::store::EventStore;\n");
    let imports = imported_modules(&lines, "crate");
    let may = allowed("domain").unwrap();
    let bad: Vec<_> = imports
        .iter()
        .filter(|(_, m)| !may.contains(&m.as_str()))
        .collect();
    assert_eq!(bad, [&(3, "store".to_string())]);
}
