//! Architecture invariant: `src/domain` is a pure fold. It names no async
//! runtime, file system, network, clock, randomness or unordered collection.
//! This test scans every file under `src/domain` and names the file and line
//! of any offending token (comment lines are ignored).

#[path = "common/sources.rs"]
mod sources;

use std::path::Path;

use sources::rust_files;

/// Tokens that must not appear in code under `src/domain`, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "async runtime"),
    ("async fn", "async code"),
    ("std::fs", "file system"),
    ("std::net", "network"),
    ("SystemTime", "wall clock"),
    ("Instant", "monotonic clock"),
    ("rand::", "randomness"),
    ("thread_rng", "randomness"),
    ("new_v4", "random UUIDs"),
    ("HashMap", "unordered map (use BTreeMap)"),
    ("HashSet", "unordered set (use BTreeSet)"),
];

/// The code part of a line: nothing for comment lines, the text before a
/// trailing `//` comment otherwise.
fn code_of(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") || trimmed.starts_with("/*") || trimmed.starts_with('*') {
        return "";
    }
    match line.find("//") {
        // Keep `//` inside string literals such as "https://".
        Some(i) if !line[..i].contains('"') => &line[..i],
        _ => line,
    }
}

#[test]
fn domain_has_no_io_clock_randomness_or_unordered_collections() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let files = rust_files(&root);
    assert!(!files.is_empty(), "no file under {}", root.display());
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source file");
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            for (token, why) in FORBIDDEN {
                if code.contains(token) {
                    violations.push(format!(
                        "{}:{}: `{token}` ({why}): {}",
                        file.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                            .unwrap_or(file)
                            .display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "src/domain must stay pure:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_violations_and_skips_comments() {
    assert_eq!(code_of("// uses HashMap"), "");
    assert_eq!(code_of("    /// a HashMap doc"), "");
    assert!(code_of("let m: HashMap<u8, u8> = x; // fine").contains("HashMap"));
    assert!(!code_of("let x = 1; // HashMap in a comment").contains("HashMap"));
    assert!(code_of("let u = \"https://x\"; std::fs::read(u)").contains("std::fs"));
}
