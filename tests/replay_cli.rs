//! `pm-replay` as a process: exit codes (0 ok, 1 divergence, 2 bad input),
//! the messages that name the divergent eversion or the bad line, and the
//! laws of replay as properties: rebuild from a snapshot equals rebuild from
//! scratch at every eversion, `verify` passes, and export after import
//! reproduces a file byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prjmanager::domain;
use prjmanager::fold;
use prjmanager::jsonl;
use prjmanager::proto::Timestamp;
use prjmanager::proto::{self, input_event::Event};
use prjmanager::replay;
use prjmanager::store::memory::MemoryStore;
use prjmanager::store::{EventStore, ExpectedRevision, NewEvent};
use prjmanager::streams::{self, project_stream, snapshot_stream};
use prjmanager::testing::{ClBuilder, ConfigBuilder};
use proptest::prelude::*;
use prost::Message;

fn pm_replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pm-replay"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn corpus_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("replays")
        .join(name)
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[test]
fn verify_and_rebuild_a_recorded_file() {
    let file = corpus_file("lifecycle.jsonl");
    let file = file.to_str().unwrap();
    let out = pm_replay(&["verify", file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OK"), "{}", text(&out.stdout));
    let first = pm_replay(&["rebuild", file, "--eversion", "3"]);
    let second = pm_replay(&["rebuild", file, "--eversion", "3"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(first.stdout, second.stdout, "rebuild is byte-identical");
    let log: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(log["eversion"], "3");
    let out = pm_replay(&["blame", file, "--path", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("STOPPING"),
        "{}",
        text(&out.stdout)
    );
    let out = pm_replay(&["diff", file, "--from", "1", "--to", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("configHash"),
        "{}",
        text(&out.stdout)
    );
    let out = pm_replay(&["actions", file, "--eversion", "5"]);
    assert!(
        text(&out.stdout).contains("\"type\":\"CancelRuns\""),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_tampered_marker_digest_is_a_divergence_at_its_eversion() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(corpus_file("dry-run.jsonl")).unwrap();
    let mut lines: Vec<String> = original.lines().map(String::from).collect();
    // Tamper with the digest of the marker of eversion 3.
    let index = lines
        .iter()
        .position(|l| l.contains("\"type\":\"Evaluated\"") && l.contains("\"eversion\":\"3\""))
        .unwrap();
    let mut line: serde_json::Value = serde_json::from_str(&lines[index]).unwrap();
    line["data"]["stateDigest"] = serde_json::Value::String("AAAA".into());
    lines[index] = line.to_string();
    let path = write(dir.path(), "tampered.jsonl", &(lines.join("\n") + "\n"));
    let out = pm_replay(&["verify", &path]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DIVERGENCE at eversion 3"), "{stdout}");
    assert!(stdout.contains("stateDigest"), "{stdout}");
    assert!(
        text(&out.stderr).contains("eversion 3"),
        "{}",
        text(&out.stderr)
    );
}

/// `report` writes one self-contained page (no address to fetch anything
/// from) whose timeline covers the asked range; a range outside the stream
/// or a page over `--max-bytes` is refused (exit 2) and nothing is written.
#[test]
fn report_writes_a_self_contained_page_or_says_what_to_narrow() {
    let dir = tempfile::tempdir().unwrap();
    let file = corpus_file("dry-run.jsonl");
    let file = file.to_str().unwrap();
    let page = dir.path().join("r.html");
    let page_arg = page.to_str().unwrap();
    let out = pm_replay(&["report", file, "--from", "2", "--to", "3", "-o", page_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("default-src 'none'"), "no CSP");
    for fetcher in ["http://", "https://", "<link", "src=\"", "@import"] {
        assert!(!html.contains(fetcher), "the page could fetch: {fetcher}");
    }
    let start = html.find("application/json\">").unwrap() + "application/json\">".len();
    let end = start + html[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
    let shown: Vec<i64> = data["eversions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eversion"].as_i64().unwrap())
        .collect();
    assert_eq!(shown, [2, 3]);
    for row in data["cls"].as_array().unwrap() {
        assert_eq!(row["statuses"].as_str().unwrap().len(), 2, "{row}");
    }
    assert_eq!(data["verify_ok"], true);

    std::fs::remove_file(&page).unwrap();
    let out = pm_replay(&["report", file, "--from", "3", "--to", "99", "-o", page_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not within"),
        "{}",
        text(&out.stderr)
    );
    let out = pm_replay(&["report", file, "--max-bytes", "1000", "-o", page_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("narrow the range"),
        "{}",
        text(&out.stderr)
    );
    assert!(!page.exists());
}

#[test]
fn bad_files_exit_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(corpus_file("dry-run.jsonl")).unwrap();
    // Truncated in the middle of line 4.
    let cut = original.match_indices('\n').nth(2).unwrap().0 + 30;
    let truncated = write(dir.path(), "truncated.jsonl", &original[..cut]);
    let out = pm_replay(&["verify", &truncated]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("truncated.jsonl:4:"),
        "{}",
        text(&out.stderr)
    );
    // Garbled JSON, unknown type, wrong header version, revisions out of order.
    let mut lines: Vec<String> = original.lines().map(String::from).collect();
    lines[2] = "{not json".into();
    let garbled = write(dir.path(), "garbled.jsonl", &lines.join("\n"));
    let out = pm_replay(&["rebuild", &garbled, "--eversion", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("garbled.jsonl:3:"),
        "{}",
        text(&out.stderr)
    );
    let unknown = original.replacen("\"type\":\"ClsUpdated\"", "\"type\":\"Bogus\"", 1);
    let unknown = write(dir.path(), "unknown.jsonl", &unknown);
    let out = pm_replay(&["actions", &unknown]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Bogus"), "{}", text(&out.stderr));
    let version = write(
        dir.path(),
        "version.jsonl",
        &original.replacen("\"version\":1", "\"version\":9", 1),
    );
    let out = pm_replay(&["verify", &version]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("version.jsonl:1:"),
        "{}",
        text(&out.stderr)
    );
    let order = original.replacen("\"revision\":2,", "\"revision\":7,", 1);
    let order = write(dir.path(), "order.jsonl", &order);
    let out = pm_replay(&["verify", &order]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("order.jsonl:4:"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Properties over random valid streams.

const PROJECT: &str = "laws";

#[derive(Debug, Clone)]
enum Step {
    Config(u8),
    Cl { clid: i64, cq: i32, dep: bool },
    Poke,
    Marker(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0u8..3).prop_map(Step::Config),
        4 => (1i64..7, 0i32..3, any::<bool>()).prop_map(|(clid, cq, dep)| Step::Cl { clid, cq, dep }),
        1 => Just(Step::Poke),
        3 => (1i64..400).prop_map(Step::Marker),
    ]
}

fn config_event(hash: u8) -> Event {
    Event::ConfigUpdated(proto::ConfigUpdated {
        config: Some(
            ConfigBuilder::new(&format!("h{hash}"), i64::from(hash) + 1)
                .group("main", |g| {
                    g.watch("review.example.com", "repo", "refs/heads/main")
                })
                .build(),
        ),
    })
}

fn cl_event(clid: i64, eversion: i64, cq: i32, dep: bool) -> Event {
    let cl = ClBuilder::new(PROJECT, clid)
        .eversion(eversion)
        .host("review.example.com")
        .repo("repo")
        .revision(&format!("r{clid}"))
        .owner("o@example.com")
        .uploaded(Timestamp {
            seconds: 1_704_060_000,
            nanos: 0,
        })
        .group("main");
    let cl = if dep && clid > 1 {
        cl.deps_hard(&[clid - 1])
    } else {
        cl
    };
    let cl = if cq > 0 {
        let at = Timestamp {
            seconds: 1_704_067_100,
            nanos: 0,
        };
        cl.cq_vote(cq, "u@example.com", at)
    } else {
        cl
    };
    // The CLs stay in the groups of the first config ("h0/main").
    let cl = cl.build(Some(
        &ConfigBuilder::new("h0", 1).group("main", |g| g).build(),
    ));
    Event::ClsUpdated(proto::ClsUpdated { cls: vec![cl] })
}

/// Builds a stream in memory as the service would (markers filled in), with
/// snapshots every `interval` eversions when `interval > 0`.
async fn build(steps: &[Step], interval: i64) -> MemoryStore {
    let store = MemoryStore::new();
    let stream = project_stream(PROJECT);
    let mut state = domain::new_project(PROJECT);
    let mut digester = fold::Digester::default();
    let mut eversions = std::collections::BTreeMap::new();
    let mut clock = 1_704_067_200;
    let mut events = vec![(Event::Poked(proto::Poked {}), false)];
    for step in steps {
        events.push(match step {
            Step::Config(h) => (config_event(*h), false),
            Step::Cl { clid, cq, dep } => {
                let e = eversions.entry(*clid).or_insert(0);
                *e += 1;
                (cl_event(*clid, *e, *cq, *dep), false)
            }
            Step::Poke => (Event::Poked(proto::Poked {}), false),
            Step::Marker(dt) => {
                clock += dt;
                (
                    Event::Evaluated(proto::Evaluated {
                        now: Some(Timestamp {
                            seconds: clock,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }),
                    true,
                )
            }
        });
    }
    for (index, (event, _)) in events.into_iter().enumerate() {
        let id = uuid::Uuid::from_u128(index as u128 + 1);
        let mut new = streams::input_event(&event, id, "test");
        let recorded = prjmanager::store::RecordedEvent {
            stream: stream.clone(),
            revision: index as u64,
            position: 0,
            id,
            event_type: new.event_type.clone(),
            data: new.data.clone(),
            metadata: new.metadata.clone(),
        };
        if let Some(outcome) = fold::apply_recorded(&mut state, &recorded, &mut digester).unwrap() {
            new = streams::input_event(&Event::Evaluated(outcome.marker.clone()), id, "test");
            store
                .append(&stream, ExpectedRevision::Any, vec![new])
                .await
                .unwrap();
            if interval > 0 && outcome.marker.eversion % interval == 0 {
                let snapshot = proto::ProjectSnapshot {
                    eversion: outcome.marker.eversion,
                    source_revision: index as u64,
                    state_digest: outcome.marker.state_digest.clone(),
                    state: Some(state.clone()),
                };
                store
                    .append(
                        &snapshot_stream(PROJECT),
                        ExpectedRevision::Any,
                        vec![NewEvent {
                            id: uuid::Uuid::new_v4(),
                            event_type: "ProjectSnapshot".into(),
                            data: snapshot.encode_to_vec(),
                            metadata: b"{}".to_vec(),
                        }],
                    )
                    .await
                    .unwrap();
            }
        } else {
            store
                .append(&stream, ExpectedRevision::Any, vec![new])
                .await
                .unwrap();
        }
    }
    store
}

async fn export(store: &MemoryStore) -> Vec<u8> {
    let mut out = Vec::new();
    jsonl::write_header(&mut out, PROJECT).unwrap();
    for event in replay::read_stream(store, &project_stream(PROJECT))
        .await
        .unwrap()
    {
        jsonl::write_event(&mut out, &event).unwrap();
    }
    out
}

fn opened(store: MemoryStore) -> replay::Opened {
    replay::Opened {
        store: prjmanager::store::any::AnyStore::Memory(store),
        project: PROJECT.into(),
        file: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn rebuild_from_snapshots_equals_rebuild_from_scratch(steps in proptest::collection::vec(step(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let with = opened(build(&steps, 2).await);
            let without = opened(build(&steps, 0).await);
            let report = replay::verify(&with).await.unwrap();
            prop_assert!(report.divergence.is_none(), "{:?}", report.divergence);
            for eversion in 0..=report.eversions {
                let a = replay::rebuild(&with, eversion).await.unwrap();
                let b = replay::rebuild(&without, eversion).await.unwrap();
                prop_assert_eq!(
                    serde_json::to_string(&a.log).unwrap(),
                    serde_json::to_string(&b.log).unwrap()
                );
                prop_assert_eq!(a.logged, b.logged);
            }
            // Export, import (parse + load), export again: the same bytes.
            let file = export(without.store_memory()).await;
            let parsed = jsonl::parse(std::io::BufReader::new(file.as_slice()), "mem").unwrap();
            let imported = replay::load_file("mem", parsed).await.unwrap();
            let prjmanager::store::any::AnyStore::Memory(store) = &imported.store else { unreachable!() };
            prop_assert_eq!(export(store).await, file);
            Ok(())
        })?;
    }
}

trait StoreMemory {
    fn store_memory(&self) -> &MemoryStore;
}

impl StoreMemory for replay::Opened {
    fn store_memory(&self) -> &MemoryStore {
        match &self.store {
            prjmanager::store::any::AnyStore::Memory(s) => s,
            _ => unreachable!(),
        }
    }
}
