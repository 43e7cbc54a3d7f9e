//! `pm-bench --json`: every measuring command, run with its smallest
//! parameters, prints exactly one JSON object `{"rows":[{…}]}` whose rows
//! carry the fields a reader of the numbers relies on. The numbers themselves
//! are not checked (benchmarks are never timed tests).

use std::process::Command;
use std::thread;

use serde_json::Value;

/// Runs `pm-bench <args> --json` and returns its only JSON object.
fn run(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_pm-bench"))
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .expect("pm-bench starts");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert!(
        output.status.success(),
        "pm-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "pm-bench {args:?} printed more than one line:\n{stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("pm-bench {args:?} printed no JSON ({e}):\n{stdout}"))
}

/// Checks that `document` is `{"rows":[…]}` with `rows` rows, each holding
/// every field of `numbers` as a number.
fn check(command: &str, document: &Value, rows: usize, numbers: &[&str]) {
    let object = document.as_object().expect("a JSON object");
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["rows"],
        "{command}: {document}"
    );
    let found = document["rows"].as_array().expect("rows is an array");
    assert_eq!(found.len(), rows, "{command}: {document}");
    for row in found {
        for field in numbers {
            assert!(
                row.get(*field).is_some_and(Value::is_number),
                "{command}: row has no number {field:?}: {row}"
            );
        }
    }
}

#[test]
fn every_measuring_command_prints_one_json_object() {
    // The slow ones (a child service, fsyncs) run beside the others.
    let service = thread::spawn(|| {
        run(&[
            "service",
            "--callers",
            "1",
            "--projects",
            "1",
            "--seconds",
            "0.05",
        ])
    });
    let append = thread::spawn(|| {
        run(&[
            "append",
            "--callers",
            "1,2",
            "--seconds",
            "0.05",
            "--projects",
            "1",
        ])
    });

    let fold = run(&[
        "fold",
        "--events",
        "40",
        "--cls",
        "4",
        "--components",
        "2",
        "--markers-every",
        "20",
    ]);
    check(
        "fold",
        &fold,
        1,
        &["cls", "events", "events_per_s", "fold_ms"],
    );

    let replay = run(&[
        "replay",
        "--events",
        "300",
        "--samples",
        "2",
        "--cls",
        "4",
        "--components",
        "2",
    ]);
    check(
        "replay",
        &replay,
        1,
        &[
            "events",
            "rebuild_p50_ms",
            "rebuild_p99_ms",
            "full_replay_events_per_s",
        ],
    );

    let memory = run(&["memory", "--projects", "2", "--cls", "10"]);
    check(
        "memory",
        &memory,
        1,
        &[
            "projects",
            "pcls",
            "resident_before_bytes",
            "resident_after_bytes",
            "states_bytes",
        ],
    );

    let load = run(&[
        "load",
        "--events",
        "200",
        "--cls",
        "4",
        "--components",
        "2",
        "--fold",
    ]);
    check(
        "load",
        &load,
        1,
        &[
            "events",
            "file_bytes",
            "parse_ms",
            "load_ms",
            "events_per_s",
            "fold_ms",
            "fold_events_per_s",
            "resident_bytes",
        ],
    );
    assert_eq!(load["rows"][0]["events"], 200);
    assert_eq!(load["rows"][0]["eversions"], 10);

    let append = append.join().expect("append ran");
    check(
        "append",
        &append,
        2,
        &[
            "callers",
            "events_per_s",
            "p50_ms",
            "p99_ms",
            "writes_per_commit",
            "raw_events_per_s",
            "ratio",
            "raw_batch_callers_events_per_s",
            "ratio_batch_callers",
        ],
    );
    assert_eq!(append["rows"][1]["callers"], 2);
    let per_commit = append["rows"][1]["writes_per_commit"].as_f64().unwrap();
    assert!(
        (1.0..=2.0).contains(&per_commit),
        "2 callers commit 1 or 2 writes at a time: {per_commit}"
    );

    let service = service.join().expect("service ran");
    check(
        "service",
        &service,
        1,
        &[
            "callers",
            "events_per_s",
            "notify_p50_ms",
            "notify_p99_ms",
            "lag_p50_ms",
            "lag_p99_ms",
            "lag_probes",
        ],
    );
}
