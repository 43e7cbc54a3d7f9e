//! Fuzzing of the three ways bytes from outside reach the fold: the replay
//! file parser, the proto3 JSON payload decoder and the protobuf event
//! decoder followed by the fold. Each property feeds mutated real input (the
//! replay corpus) or generated input and asserts that the answer is a value
//! or an error naming the problem, never a panic; what is accepted is then
//! folded, which must not panic either.
//!
//! `cargo fuzz` needs a nightly toolchain, which this project's machines do
//! not have; these run under `cargo test` with proptest's shrinking, and
//! `PROPTEST_CASES=50000 cargo test --test fuzz` runs them longer (keep the
//! debug build: its overflow checks are part of what is looked for). A run of
//! 50,000 cases per property found nothing; an input that ever fails is to be
//! kept here as a regression test.

use std::io::Cursor;

use proptest::prelude::*;

use prjmanager::proto::{self, input_event::Event};
use prjmanager::store::RecordedEvent;
use prjmanager::{domain, events, fold, jsonl, notifier, streams};

/// The small files of the replay corpus (the large one would only slow the
/// search down).
const CORPUS: [&str; 7] = [
    include_str!("../replays/chained-votes-denied.jsonl"),
    include_str!("../replays/combine-cls.jsonl"),
    include_str!("../replays/dry-run.jsonl"),
    include_str!("../replays/lifecycle.jsonl"),
    include_str!("../replays/parent-run-fails.jsonl"),
    include_str!("../replays/purge-expires.jsonl"),
    include_str!("../replays/reused-trigger.jsonl"),
];

/// Numbers that break arithmetic and ranges, to put where numbers were.
const HOSTILE_NUMBERS: [&str; 10] = [
    "0",
    "-1",
    "\"-1\"",
    "9223372036854775807",
    "\"9223372036854775807\"",
    "\"-9223372036854775808\"",
    "1e308",
    "\"18446744073709551615\"",
    "2147483648",
    "\"99999-01-01T00:00:00Z\"",
];

/// Values that break ranges, lengths and enums, to put where a field was.
const HOSTILE_VALUES: [&str; 14] = [
    "\"-9223372036854775808\"",
    "\"9223372036854775807\"",
    "-1",
    "2147483647",
    "\"0001-01-01T00:00:00Z\"",
    "\"9999-12-31T23:59:59.999999999Z\"",
    "\"-315576000000s\"",
    "\"315576000000.999999999s\"",
    "\"\"",
    "\"STATUS_UNSPECIFIED\"",
    "99",
    "null",
    "[]",
    "{}",
];

/// One change to a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the byte at (fraction of the length) with this one.
    Byte(f64, u8),
    /// Delete this many bytes from there.
    Delete(f64, usize),
    /// Insert these bytes there.
    Insert(f64, Vec<u8>),
    /// Replace the n-th run of digits with a hostile number.
    Number(usize, usize),
    /// Duplicate a line (revision collisions, repeated ids).
    DuplicateLine(usize),
    /// Swap two lines.
    SwapLines(usize, usize),
    /// In the n-th event line, replace the k-th leaf of `data` (a number, a
    /// string or a bool) with a hostile value.
    Field(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0, any::<u8>()).prop_map(|(at, b)| Mutation::Byte(at, b)),
        (0.0..1.0, 1usize..40).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (0.0..1.0, prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (0usize..400, 0..HOSTILE_NUMBERS.len()).prop_map(|(n, h)| Mutation::Number(n, h)),
        (0usize..20).prop_map(Mutation::DuplicateLine),
        (0usize..20, 0usize..20).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (0usize..20, 0usize..200, 0..HOSTILE_VALUES.len())
            .prop_map(|(n, k, h)| Mutation::Field(n, k, h)),
        (0usize..20, 0usize..200, 0..HOSTILE_VALUES.len())
            .prop_map(|(n, k, h)| Mutation::Field(n, k, h)),
    ]
}

/// Applies a mutation to a replay file (text).
fn apply(bytes: &[u8], mutation: &Mutation) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    match mutation {
        Mutation::Number(n, h) => {
            let runs: Vec<(usize, usize)> = digit_runs(bytes);
            match runs.get(n % runs.len().max(1)) {
                Some(&(start, end)) => [
                    &bytes[..start],
                    HOSTILE_NUMBERS[*h].as_bytes(),
                    &bytes[end..],
                ]
                .concat(),
                None => bytes.to_vec(),
            }
        }
        Mutation::DuplicateLine(n) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let i = n % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n").into_bytes()
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let len = lines.len();
            lines.swap(a % len, b % len);
            lines.join("\n").into_bytes()
        }
        Mutation::Field(n, k, h) => {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let i = 1 + n % lines.len().saturating_sub(1).max(1);
            if let Some(line) = lines.get_mut(i) {
                if let Ok(mut value) = serde_json::from_str::<serde_json::Value>(line) {
                    let mut leaves = Vec::new();
                    if let Some(data) = value.get_mut("data") {
                        collect_leaves(data, &mut leaves);
                    }
                    let count = leaves.len();
                    if let Some(leaf) = leaves.into_iter().nth(k % count.max(1)) {
                        *leaf = serde_json::from_str(HOSTILE_VALUES[*h]).unwrap();
                    }
                    *line = value.to_string();
                }
            }
            lines.join("\n").into_bytes()
        }
        other => apply_bytes(bytes, other),
    }
}

/// Applies a mutation to binary data (a protobuf encoding): the line and
/// number mutations become a repeated encoding (protobuf merges repeated
/// fields, so this is a valid but different message) and runs of 0xff
/// (over-long varints).
fn apply_bytes(bytes: &[u8], mutation: &Mutation) -> Vec<u8> {
    let at = |fraction: f64| ((bytes.len() as f64 * fraction) as usize).min(bytes.len());
    match mutation {
        Mutation::Byte(f, b) => {
            let mut out = bytes.to_vec();
            if let Some(slot) = out.get_mut(at(*f)) {
                *slot = *b;
            }
            out
        }
        Mutation::Delete(f, n) => {
            let start = at(*f);
            let end = (start + n).min(bytes.len());
            [&bytes[..start], &bytes[end..]].concat()
        }
        Mutation::Insert(f, b) => {
            let i = at(*f);
            [&bytes[..i], b.as_slice(), &bytes[i..]].concat()
        }
        Mutation::Number(n, _) => {
            let i = n % (bytes.len() + 1);
            [&bytes[..i], &[0xff; 11][..], &bytes[i..]].concat()
        }
        Mutation::DuplicateLine(_) | Mutation::SwapLines(..) | Mutation::Field(..) => {
            [bytes, bytes].concat()
        }
    }
}

/// The scalar leaves of a JSON value, depth first.
fn collect_leaves<'a>(value: &'a mut serde_json::Value, out: &mut Vec<&'a mut serde_json::Value>) {
    match value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| collect_leaves(v, out)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| collect_leaves(v, out)),
        leaf => out.push(leaf),
    }
}

/// Byte ranges of the maximal runs of ASCII digits.
fn digit_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, b) in bytes.iter().enumerate() {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, bytes.len()));
    }
    runs
}

/// The stored form of a project's `revision`-th event.
fn recorded(project: &str, revision: u64, event_type: &str, data: Vec<u8>) -> RecordedEvent {
    RecordedEvent {
        stream: streams::project_stream(project),
        revision,
        position: revision + 1,
        id: uuid::Uuid::from_u128(u128::from(revision) + 1),
        event_type: event_type.to_string(),
        data,
        metadata: b"{}".to_vec(),
    }
}

/// Folds the events in order through the one fold until one is rejected;
/// returns how many were folded. Must never panic.
fn fold_all(project: &str, events: &[(String, Vec<u8>)]) -> usize {
    let mut state = domain::new_project(project);
    let mut digester = fold::Digester::default();
    for (revision, (event_type, data)) in events.iter().enumerate() {
        let event = recorded(project, revision as u64, event_type, data.clone());
        if fold::apply_recorded(&mut state, &event, &mut digester).is_err() {
            return revision;
        }
    }
    events.len()
}

/// The events of a parsed file, as stored (type, protobuf bytes).
fn stored_form(file: &jsonl::StreamFile) -> Vec<(String, Vec<u8>)> {
    file.events
        .iter()
        .map(|e| {
            (
                events::type_name(&e.event).to_string(),
                events::encode(&e.event),
            )
        })
        .collect()
}

/// Parses a (mutated) replay file; what it accepts is folded.
fn parse_and_fold(bytes: &[u8]) -> Result<usize, jsonl::FileError> {
    let file = jsonl::parse(Cursor::new(bytes), "fuzz.jsonl")?;
    Ok(fold_all(&file.header.project, &stored_form(&file)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The replay-file parser: mutated corpus files give a parsed file (then
    /// folded) or an error naming a line of the file, never a panic.
    #[test]
    fn the_replay_file_parser_never_panics(
        file in 0..CORPUS.len(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = CORPUS[file].as_bytes().to_vec();
        for m in &mutations {
            bytes = apply(&bytes, m);
        }
        if let Err(err) = parse_and_fold(&bytes) {
            let lines = bytes.split(|b| *b == b'\n').count();
            prop_assert!(err.line <= lines + 1, "line {} of {lines}: {err}", err.line);
            prop_assert!(!err.message.is_empty());
            prop_assert!(err.to_string().contains("fuzz.jsonl"), "{err}");
        }
    }

    /// The decoder, the parser's checks and the fold on values that are
    /// well-formed JSON but hostile (extreme numbers, far timestamps, empty
    /// strings, unknown enums): refused naming the line, or folded.
    #[test]
    fn hostile_field_values_are_refused_or_folded(
        file in 0..CORPUS.len(),
        fields in prop::collection::vec(
            (0usize..20, 0usize..200, 0..HOSTILE_VALUES.len()),
            1..4,
        ),
    ) {
        let mut bytes = CORPUS[file].as_bytes().to_vec();
        for (n, k, h) in fields {
            bytes = apply(&bytes, &Mutation::Field(n, k, h));
        }
        if let Err(err) = parse_and_fold(&bytes) {
            prop_assert!(err.line >= 1, "{err}");
            prop_assert!(err.to_string().contains("fuzz.jsonl"), "{err}");
        }
    }

    /// The protobuf decoder and the fold: mutated encodings of real events
    /// decode to an event (then folded after the real ones before it) or to
    /// an error, never a panic.
    #[test]
    fn the_protobuf_decoder_and_the_fold_never_panic(
        file in 0..CORPUS.len(),
        target in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let parsed = jsonl::parse(Cursor::new(CORPUS[file]), "corpus").unwrap();
        let mut stored = stored_form(&parsed);
        let i = target.index(stored.len());
        let mut bytes = stored[i].1.clone();
        for m in &mutations {
            bytes = apply_bytes(&bytes, m);
        }
        if events::decode(&stored[i].0, &bytes).is_ok() {
            stored[i].1 = bytes;
            stored.truncate(i + 1);
            // Follow it with a marker so that the decoded event is evaluated.
            let marker = Event::Evaluated(proto::Evaluated {
                now: Some(proto::Timestamp { seconds: 1_900_000_000, nanos: 0 }),
                eversion: 0,
                state_digest: Vec::new(),
            });
            stored.push(("Evaluated".into(), events::encode(&marker)));
            fold_all(&parsed.header.project, &stored);
        }
    }

    /// The proto3 JSON payload decoder: any JSON value, under any event type,
    /// decodes or is an error; what decodes is validated as the Notifier
    /// does, never a panic; what passes validation round-trips.
    #[test]
    fn the_json_payload_decoder_never_panics(
        event_type in prop::sample::select(vec![
            "ConfigUpdated", "Poked", "ClsUpdated", "RunCreated", "RunFinished",
            "PurgeCompleted", "TriggeringClDepsCompleted", "Evaluated", "Unknown",
        ]),
        value in json_value(),
    ) {
        if let Ok(event) = events::from_json(event_type, value) {
            if notifier::validate_event("fuzz", &event).is_ok() {
                let back = events::decode(event_type, &events::encode(&event));
                prop_assert_eq!(back.ok(), Some(event));
            }
        }
    }
}

/// JSON values shaped like the payloads: objects keyed by real field names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    const KEYS: [&str; 24] = [
        "config",
        "cls",
        "run",
        "runId",
        "status",
        "endTime",
        "now",
        "eversion",
        "stateDigest",
        "clid",
        "snapshot",
        "gerrit",
        "deps",
        "votes",
        "createTime",
        "clids",
        "mode",
        "id",
        "configGroups",
        "hash",
        "purgingCl",
        "operationId",
        "applicableConfig",
        "triggers",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        prop::sample::select(HOSTILE_NUMBERS.to_vec())
            .prop_map(|s| serde_json::from_str(s).unwrap_or(serde_json::Value::Null)),
        "[a-zA-Z0-9:/._-]{0,24}".prop_map(serde_json::Value::String),
        Just(serde_json::json!("2026-01-01T00:00:00Z")),
        Just(serde_json::json!("RUNNING")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), inner, 0..5).prop_map(
                |m| {
                    serde_json::Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    )
                }
            ),
        ]
    })
}

// Regressions: inputs that overflowed in debug builds.

/// A revision of `u64::MAX` followed by another line: an error naming the
/// line, not an overflow.
#[test]
fn a_revision_at_the_top_of_u64_is_an_error_not_an_overflow() {
    let mut lines: Vec<String> = CORPUS[3].lines().take(3).map(str::to_string).collect();
    lines[1] = lines[1].replacen("\"revision\":0", "\"revision\":18446744073709551615", 1);
    lines[2] = lines[2].replacen("\"revision\":1", "\"revision\":0", 1);
    let err = jsonl::parse(Cursor::new(lines.join("\n")), "fuzz.jsonl").unwrap_err();
    assert_eq!(err.line, 3, "{err}");
    assert!(err.message.contains("does not follow"), "{err}");
}

/// Rebuilding at eversion `i64::MIN` (a user's `--eversion`): an error, not
/// an overflow.
#[test]
fn an_eversion_at_the_bottom_of_i64_is_an_error_not_an_overflow() {
    use prjmanager::read::{load, Target};
    use prjmanager::store::memory::MemoryStore;
    use prjmanager::store::{EventStore, ExpectedRevision};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = MemoryStore::new();
        let file = jsonl::parse(Cursor::new(CORPUS[3]), "corpus").unwrap();
        let appended = file.events.iter().map(|e| e.to_new_event()).collect();
        store
            .append(
                &streams::project_stream(&file.header.project),
                ExpectedRevision::Any,
                appended,
            )
            .await
            .unwrap();
        let loaded = load(&store, &file.header.project, Target::Eversion(i64::MIN)).await;
        assert!(loaded.is_err(), "{loaded:?}");
    });
}

/// A file large enough to be parsed on several threads reports the same
/// first bad line as a line-by-line parse would: the earliest, whichever
/// chunk or thread it fell in, and a duplicate id found across chunks.
#[test]
fn a_large_file_reports_its_first_bad_line_whichever_thread_parsed_it() {
    const EVENTS: usize = 40_000;
    let mut corpus = CORPUS[3].lines();
    let header = corpus.next().unwrap().to_string();
    let bodies: Vec<String> = corpus
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("revision");
            object.remove("id");
            value.to_string()
        })
        .collect();
    let lines: Vec<String> = std::iter::once(header)
        .chain((0..EVENTS).map(|i| bodies[i % bodies.len()].clone()))
        .collect();
    let parse = |lines: &[String]| jsonl::parse(Cursor::new(lines.join("\n")), "big.jsonl");
    let file = parse(&lines).unwrap();
    assert_eq!(file.events.len(), EVENTS);
    assert!(file.events.iter().enumerate().all(|(i, e)| e.line == i + 2));

    let with_id = |line: &str, id: &str| {
        let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
        value["id"] = id.into();
        value.to_string()
    };
    let id = "6b1d2a6e-0000-4000-8000-000000000001";
    let mut bad = lines.clone();
    bad[30_000] = "{not json".to_string();
    bad[19_000] = with_id(&bad[19_000], id);
    bad[25_000] = with_id(&bad[25_000], id);
    let err = parse(&bad).unwrap_err();
    assert_eq!(err.line, 25_001, "{err}");
    assert!(err.message.contains("appears twice"), "{err}");
    bad[25_000] = lines[25_000].clone();
    let err = parse(&bad).unwrap_err();
    assert_eq!(err.line, 30_001, "{err}");
    assert!(err.message.contains("malformed"), "{err}");
    bad[4] = "[]".to_string();
    let err = parse(&bad).unwrap_err();
    assert_eq!(err.line, 5, "{err}");
}
