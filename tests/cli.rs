//! The `prjmanager` command line: notify, import, export and events, with
//! their exit codes (0 ok, 1 failure, 2 bad input) and error messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("pm.db").display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
            .arg("--store")
            .arg(self.store())
            .args(args)
            .env_remove("PRJMANAGER_STORE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// The project's events as listed by `events`, or `None` if it has none.
    fn events(&self, project: &str) -> Option<String> {
        let out = self.run(&["events", project]);
        match out.status.code() {
            Some(0) => Some(String::from_utf8(out.stdout).unwrap()),
            Some(1) => None,
            other => panic!("events exited with {other:?}: {}", stderr(&out)),
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_exit(out: &Output, code: i32, stderr_contains: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    assert!(
        stderr(out).contains(stderr_contains),
        "stderr {:?} does not contain {stderr_contains:?}",
        stderr(out)
    );
}

const CONFIG: &str = r#"{"config":{"state":"ENABLED","hash":"h1","configGroups":[{"name":"g0"}]}}"#;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/handwritten.jsonl")
}

#[test]
fn notify_appends_and_events_lists() {
    let env = Env::new();
    let config = env.write("config.json", CONFIG);
    let out = env.run(&[
        "notify",
        "config",
        "--project",
        "p",
        "--json",
        config.to_str().unwrap(),
    ]);
    assert_exit(&out, 0, "");
    let ack: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ack["revision"], 0);
    assert_eq!(ack["project"], "p");

    let out = env.run(&["notify", "poke", "--project", "p"]);
    assert_exit(&out, 0, "");
    let out = env.run_with_stdin(
        &["notify", "run-finished", "--json", "-"],
        r#"{"runId":"p/1-1-ab","status":"FAILED","endTime":"2020-01-01T00:00:00Z"}"#,
    );
    assert_exit(&out, 0, "");

    let listed = env.events("p").unwrap();
    let types: Vec<String> = listed
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["ConfigUpdated", "Poked", "RunFinished"]);
}

#[test]
fn notify_rejects_bad_input_and_writes_nothing() {
    let env = Env::new();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["notify", "config", "--project", "p", "--json", "-"],
            "{not json",
            "not valid JSON",
        ),
        (
            &["notify", "config", "--project", "p", "--json", "-"],
            r#"{"config":{"state":"ENABLED","configGroups":[{"name":"g"}]}}"#,
            "config.hash",
        ),
        (
            &["notify", "config", "--project", "p", "--json", "-"],
            r#"{"config":{"state":"BOGUS"}}"#,
            "ConfigUpdated",
        ),
        (
            &["notify", "config", "--project", "P!", "--json", "-"],
            CONFIG,
            "project",
        ),
        (
            &["notify", "config", "--json", "-"],
            CONFIG,
            "--project is required",
        ),
        (
            &["notify", "cls-updated", "--project", "p", "--json", "-"],
            r#"{"cls":[{"clid":"1","eversion":"0"}]}"#,
            "cls[0].eversion",
        ),
        (
            &["notify", "run-created", "--project", "q", "--json", "-"],
            r#"{"run":{"id":"p/1-1-ab","mode":"DRY_RUN","clids":["1"],"createTime":"2020-01-01T00:00:00Z"}}"#,
            "does not match",
        ),
        (
            &["notify", "run-finished", "--json", "-"],
            r#"{"runId":"p/1-1-ab","status":"RUNNING","endTime":"2020-01-01T00:00:00Z"}"#,
            "terminal status",
        ),
        (
            &["notify", "purge-completed", "--project", "p", "--json", "-"],
            r#"{"operationId":"","clid":"1"}"#,
            "operation_id",
        ),
        (
            &["notify", "deps-completed", "--project", "p", "--json", "-"],
            r#"{"operationId":"x","origin":"0"}"#,
            "origin",
        ),
        (
            &["notify", "config", "--project", "p"],
            "",
            "--json FILE is required",
        ),
        (
            &[
                "notify",
                "config",
                "--project",
                "p",
                "--json",
                "/nonexistent/file.json",
            ],
            "",
            "cannot read",
        ),
    ];
    for (args, stdin, message) in cases {
        let out = env.run_with_stdin(args, stdin);
        assert_exit(&out, 2, message);
    }
    assert_eq!(env.events("p"), None);
    assert_eq!(env.events("q"), None);
}

#[test]
fn import_then_export_reproduces_the_events() {
    let env = Env::new();
    let out = env.run(&["import", fixture().to_str().unwrap()]);
    assert_exit(&out, 0, "imported 6 events into project-test");
    let exported = env.path("exported.jsonl");
    let out = env.run(&["export", "test", "--output", exported.to_str().unwrap()]);
    assert_exit(&out, 0, "");
    let first = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(first.lines().count(), 7);
    assert!(first.starts_with(r#"{"format":"prjmanager-stream","version":1,"project":"test"}"#));

    // Importing the export into a fresh store and exporting again gives the same bytes.
    let other = Env::new();
    assert_exit(&other.run(&["import", exported.to_str().unwrap()]), 0, "");
    let again = other.run(&["export", "test"]);
    assert_exit(&again, 0, "");
    assert_eq!(String::from_utf8(again.stdout).unwrap(), first);

    // Re-importing the same file is idempotent.
    assert_exit(&env.run(&["import", fixture().to_str().unwrap()]), 0, "");
    assert_exit(&env.run(&["import", exported.to_str().unwrap()]), 0, "");
    assert_eq!(env.events("test").unwrap().lines().count(), 6);

    // --to-revision cuts the export.
    let cut = env.run(&["export", "test", "--to-revision", "2"]);
    assert_exit(&cut, 0, "");
    let cut = String::from_utf8(cut.stdout).unwrap();
    assert_eq!(cut.lines().count(), 4);
    assert!(first.starts_with(&cut));
}

#[test]
fn import_rejects_bad_files_naming_the_line_and_writes_nothing() {
    let env = Env::new();
    let good = std::fs::read_to_string(fixture()).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let with_line = |n: usize, text: &str| {
        let mut l = lines.clone();
        l[n - 1] = text;
        l.join("\n")
    };
    let cases = [
        ("empty.jsonl", String::new(), ":1: the file is empty"),
        (
            "version.jsonl",
            with_line(
                1,
                r#"{"format":"prjmanager-stream","version":2,"project":"test"}"#,
            ),
            ":1: header version is 2",
        ),
        (
            "format.jsonl",
            with_line(1, r#"{"format":"other","version":1,"project":"test"}"#),
            ":1: header format",
        ),
        (
            "garbled.jsonl",
            with_line(3, r#"{"type":"Evaluated","data":{"now":"#),
            ":3: malformed event line",
        ),
        (
            "unknown.jsonl",
            with_line(4, r#"{"type":"Bogus","data":{}}"#),
            ":4: unknown event type \"Bogus\"",
        ),
        (
            "badfield.jsonl",
            with_line(
                4,
                r#"{"type":"ClsUpdated","data":{"cls":[{"clid":"0","eversion":"1"}]}}"#,
            ),
            ":4: ClsUpdated event: invalid cls[0].clid",
        ),
        (
            "otherproject.jsonl",
            with_line(
                6,
                r#"{"type":"RunFinished","data":{"runId":"other/1-1-ab","status":"FAILED","endTime":"2020-01-01T00:00:00Z"}}"#,
            ),
            ":6: RunFinished event: invalid run_id",
        ),
        (
            "extra.jsonl",
            with_line(7, r#"{"type":"Poked","color":"red"}"#),
            ":7: malformed event line: unknown field `color`",
        ),
    ];
    for (name, text, message) in cases {
        let path = env.write(name, &text);
        let out = env.run(&["import", path.to_str().unwrap()]);
        assert_exit(&out, 2, &format!("{name}{message}"));
    }
    let out = env.run(&["import", env.path("missing.jsonl").to_str().unwrap()]);
    assert_exit(&out, 2, "cannot open");
    assert_eq!(env.events("test"), None);
}

#[test]
fn import_rejects_revisions_out_of_order() {
    let env = Env::new();
    let file = concat!(
        r#"{"format":"prjmanager-stream","version":1,"project":"p"}"#,
        "\n",
        r#"{"revision":0,"type":"Poked"}"#,
        "\n",
        r#"{"revision":2,"type":"Poked"}"#,
        "\n",
    );
    let path = env.write("gap.jsonl", file);
    assert_exit(
        &env.run(&["import", path.to_str().unwrap()]),
        2,
        "gap.jsonl:3: revision 2 does not follow revision 0",
    );
    let mixed = concat!(
        r#"{"format":"prjmanager-stream","version":1,"project":"p"}"#,
        "\n",
        r#"{"revision":0,"type":"Poked"}"#,
        "\n",
        r#"{"type":"Poked"}"#,
        "\n",
    );
    let path = env.write("mixed.jsonl", mixed);
    assert_exit(
        &env.run(&["import", path.to_str().unwrap()]),
        2,
        "mixed.jsonl:3:",
    );
    // A file starting at revision 5 does not fit an empty stream.
    let late = concat!(
        r#"{"format":"prjmanager-stream","version":1,"project":"p"}"#,
        "\n",
        r#"{"revision":5,"type":"Poked"}"#,
        "\n",
    );
    let path = env.write("late.jsonl", late);
    assert_exit(
        &env.run(&["import", path.to_str().unwrap()]),
        2,
        "does not continue",
    );
    assert_eq!(env.events("p"), None);
}

#[test]
fn export_of_an_unknown_project_fails() {
    let env = Env::new();
    assert_exit(&env.run(&["export", "nothing"]), 1, "has no events");
    assert_exit(&env.run(&["export", "Bad Name"]), 2, "project");
    let out = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .args(["--store", "ftp://x", "events", "p"])
        .output()
        .unwrap();
    assert_exit(&out, 2, "unknown store URL");
}

/// Every RFC 3339 timestamp in a text: (the whole value, whether it is
/// canonical proto3 JSON: `Z`, and 0, 3, 6 or 9 fraction digits).
fn timestamps(text: &str) -> Vec<(String, bool)> {
    let any =
        regex::Regex::new(r#""(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))""#)
            .unwrap();
    let canonical =
        regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.(\d{3}|\d{6}|\d{9}))?Z$").unwrap();
    any.captures_iter(text)
        .map(|c| {
            let value = c[1].to_string();
            let ok = canonical.is_match(&value);
            (value, ok)
        })
        .collect()
}

#[test]
fn timestamps_are_printed_canonically_whatever_offset_they_came_with() {
    let env = Env::new();
    let file = env.write(
        "offsets.jsonl",
        &[
            r#"{"format":"prjmanager-stream","version":1,"project":"t"}"#,
            r#"{"type":"ConfigUpdated","data":{"config":{"state":"ENABLED","hash":"h1","eversion":"1","configGroups":[{"name":"g0","gerrit":[{"host":"c-review.example.com","projects":[{"name":"repo/a","refRegexp":["refs/heads/main"]}]}]}]}}}"#,
            r#"{"type":"Evaluated","data":{"now":"2020-02-02T11:00:00+01:00"}}"#,
            r#"{"type":"RunFinished","data":{"runId":"t/1-1-ab","status":"FAILED","endTime":"2020-02-02T05:00:00.5-05:00"}}"#,
            r#"{"type":"Evaluated","data":{"now":"2020-02-02T10:00:01.000001Z"}}"#,
        ]
        .join("\n"),
    );
    assert_exit(&env.run(&["import", file.to_str().unwrap()]), 0, "");
    let out = env.run(&["evaluate", "t", "--now", "2020-02-02T12:00:02.25+02:00"]);
    assert_exit(&out, 0, "");

    let exported = env.run(&["export", "t"]);
    assert_exit(&exported, 0, "");
    let exported = String::from_utf8(exported.stdout).unwrap();
    let found = timestamps(&exported);
    let values: Vec<&str> = found.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(
        values,
        [
            "2020-02-02T10:00:00Z",
            "2020-02-02T10:00:00.500Z",
            "2020-02-02T10:00:01.000001Z",
            "2020-02-02T10:00:02.250Z",
        ],
        "{exported}"
    );
    let state = env.run(&["state", "t"]);
    assert_exit(&state, 0, "");
    let events = env.run(&["events", "t"]);
    // (`logs` and `actions` print what a running projector stored; the
    // service tests read them.)
    for out in [&state, &events] {
        let text = String::from_utf8_lossy(&out.stdout);
        let found = timestamps(&text);
        assert!(!found.is_empty(), "no timestamp in {text}");
        assert!(found.iter().all(|(_, ok)| *ok), "{found:?}");
    }
}

/// Import is atomic: a 12,000-event file whose line 11,001 reuses an id
/// already in the stream writes nothing and names that line.
#[test]
fn an_import_that_fails_late_writes_nothing() {
    let env = Env::new();
    let out = env.run(&["notify", "poke", "--project", "p"]);
    assert_exit(&out, 0, "");
    let ack: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let taken = ack["id"].as_str().unwrap().to_string();
    let mut text = String::from(r#"{"format":"prjmanager-stream","version":1,"project":"p"}"#);
    for n in 0..12_000u128 {
        // Line n + 2 of the file.
        let id = if n + 2 == 11_001 {
            taken.clone()
        } else {
            uuid::Uuid::from_u128(n + 1).to_string()
        };
        text.push_str(&format!("\n{{\"id\":\"{id}\",\"type\":\"Poked\"}}"));
    }
    let path = env.write("late-clash.jsonl", &text);
    let out = env.run(&["import", path.to_str().unwrap()]);
    assert_exit(&out, 2, "late-clash.jsonl:11001:");
    assert_exit(&out, 2, "nothing was imported");
    assert_eq!(env.events("p").unwrap().lines().count(), 1);
}

/// A marker's `now` may not run ahead of the clock (it would freeze the
/// project's clock for good) nor go back before the last marker, unless
/// `--allow-any-now` is given for offline work.
#[test]
fn evaluate_and_import_bound_the_marker_clock() {
    let env = Env::new();
    assert_exit(&env.run(&["notify", "poke", "--project", "p"]), 0, "");
    let far = "9999-12-31T23:59:59Z";
    let out = env.run(&["evaluate", "p", "--now", far]);
    assert_exit(&out, 2, "--allow-any-now");
    assert_eq!(env.events("p").unwrap().lines().count(), 1);
    assert_exit(
        &env.run(&["evaluate", "p", "--now", "2020-01-01T00:00:10Z"]),
        0,
        "",
    );
    let out = env.run(&["evaluate", "p", "--now", "2020-01-01T00:00:09Z"]);
    assert_exit(&out, 2, "before the project's last marker");
    assert_exit(
        &env.run(&["evaluate", "p", "--now", far, "--allow-any-now"]),
        0,
        "",
    );

    let file = env.write(
        "future.jsonl",
        &[
            r#"{"format":"prjmanager-stream","version":1,"project":"q"}"#,
            r#"{"type":"Poked"}"#,
            r#"{"type":"Evaluated","data":{"now":"9999-01-01T00:00:00Z"}}"#,
        ]
        .join("\n"),
    );
    let out = env.run(&["import", file.to_str().unwrap()]);
    assert_exit(&out, 2, "future.jsonl:3: invalid now");
    assert_eq!(env.events("q"), None);
    assert_exit(
        &env.run(&["import", file.to_str().unwrap(), "--allow-any-now"]),
        0,
        "",
    );
}

/// `serve` refuses a non-loopback address without a token before binding
/// anything, unless told to serve it open.
#[test]
fn serve_refuses_a_non_loopback_address_without_a_token() {
    let env = Env::new();
    let out = env.run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_exit(&out, 2, "--allow-unauthenticated");
    assert_exit(&out, 2, "without a token");
}

/// A `--server` call gives up after `--request-timeout` on a service that
/// accepts the connection and never answers, with exit 1 and a clear message.
#[test]
fn a_silent_server_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // Accept and hold connections without ever speaking HTTP/2.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < until && held.len() < 4 {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        held
    });
    let env = Env::new();
    let started = std::time::Instant::now();
    let out = env.run(&[
        "state",
        "p",
        "--server",
        &address,
        "--connect-timeout",
        "1",
        "--request-timeout",
        "1",
    ]);
    let took = started.elapsed();
    assert_exit(&out, 1, "");
    assert!(
        stderr(&out).contains("timed out") || stderr(&out).contains("Cancelled"),
        "{}",
        stderr(&out)
    );
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    assert_exit(
        &env.run(&["state", "p", "--server", &address, "--request-timeout", "0"]),
        2,
        "invalid --request-timeout",
    );
    drop(holder);
}

/// A stream written past the Notifier (another writer, an older build) may
/// hold values out of proto's range: every command that reads, prints,
/// exports or rebuilds it answers with an error naming the problem (exit 1),
/// never a panic (exit 101).
#[test]
fn out_of_range_values_in_a_stored_stream_are_errors_not_panics() {
    use prjmanager::proto::{self, input_event::Event, Timestamp};
    use prjmanager::store::{EventStore, ExpectedRevision};
    let env = Env::new();
    let far = Timestamp {
        seconds: 1_000_000_000_000_000,
        nanos: 0,
    };
    let config = prjmanager::testing::ConfigBuilder::new("h1", 1)
        .group("main", |g| g)
        .build();
    let events = [
        Event::ConfigUpdated(proto::ConfigUpdated {
            config: Some(config),
        }),
        Event::RunCreated(proto::RunCreated {
            run: Some(proto::Run {
                id: "far/9042327596854-1-42e0a59099a0f673".into(),
                mode: "DRY_RUN".into(),
                clids: vec![1],
                create_time: Some(far),
                status: proto::run::Status::Running as i32,
                ..Default::default()
            }),
        }),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = prjmanager::store::embedded::EmbeddedStore::open(env.path("pm.db")).unwrap();
        let appended = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                prjmanager::streams::input_event(e, uuid::Uuid::from_u128(i as u128 + 1), "test")
            })
            .collect();
        store
            .append("project-far", ExpectedRevision::NoStream, appended)
            .await
            .unwrap();
        store.close().await.unwrap();
    });
    let out = env.run(&[
        "evaluate",
        "far",
        "--now",
        "2026-01-01T00:00:00Z",
        "--allow-any-now",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let store = env.store();
    let partial = env.dir.path().join("far.jsonl");
    let replay = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pm-replay"))
            .args(args)
            .args(["--store", &store, "--project", "far"])
            .output()
            .unwrap()
    };
    // Commands that print the far timestamp fail naming it; the others
    // print nothing out of range and succeed. None panics.
    let failing = [
        ("events", env.run(&["events", "far"])),
        ("export", env.run(&["export", "far", "-o", "-"])),
        (
            "export to a file",
            env.run(&["export", "far", "-o", partial.to_str().unwrap()]),
        ),
        (
            "pm-replay diff",
            replay(&["diff", "--from", "0", "--to", "1"]),
        ),
        (
            "pm-replay blame",
            replay(&["blame", "--path", "runs", "--format", "json"]),
        ),
    ];
    for (what, out) in failing {
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(text.contains("1000000000000000s"), "{what}: {text}");
        assert!(text.contains("is outside"), "{what}: {text}");
    }
    // A failed export leaves no partial file, and `-o -` is stdout, not a file.
    assert!(!partial.exists(), "a failed export left {partial:?}");
    assert!(
        !std::path::Path::new("-").exists(),
        "`-o -` wrote a file named -"
    );
    let working = [
        ("state", env.run(&["state", "far"])),
        (
            "state --eversion",
            env.run(&["state", "far", "--eversion", "1"]),
        ),
        ("pm-replay rebuild", replay(&["rebuild", "--eversion", "1"])),
        ("pm-replay verify", replay(&["verify"])),
        ("pm-replay actions", replay(&["actions"])),
    ];
    for (what, out) in working {
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
    }
}
