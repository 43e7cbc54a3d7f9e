//! `pm-bench`: the benchmark harness and load generator of prjmanager.
//!
//! * `pm-bench append`: durable appends through the Notifier on the embedded
//!   store with 1, 8 and 64 concurrent callers, beside raw rusqlite inserts
//!   into the same schema with the same durability and batching.
//! * `pm-bench append-loop`: appends through the Notifier forever, printing
//!   `ack <seq> <revision>` after each acknowledged append (the crash test
//!   kills it with SIGKILL).
//!
//! * `pm-bench fold`: input events/s of the pure fold on one core, for a
//!   project with 1,000 active CLs in 50 components, markers every 20 events.
//! * `pm-bench memory`: resident memory of 1,000 projects of 100 active CLs.
//! * `pm-bench service`: concurrent gRPC notifiers against `prjmanager serve`.
//! * `pm-bench replay`: rebuilds of a 1,000,000-event stream, and a full replay.
//! * `pm-bench load`: parse and load of a generated 1,000,000-event replay
//!   file into a `MemoryStore` (the path of `pm-replay`), optionally folded.
//! * `pm-bench record`: records a scenario of the `replays/` corpus.
//!
//! Numbers are printed, never asserted: benchmarks are run by hand.
//!
//! # Output
//!
//! Every measuring command (`append`, `fold`, `memory`, `service`, `replay`,
//! `load`) prints a readable table by default; with `--json` it prints
//! exactly one JSON object, `{"rows":[{…},…]}`, one row per measurement,
//! with snake_case fields whose names carry their unit (`_ms`, `_bytes`,
//! `_per_s`; counts have none). `append-loop` (the crash test's child: it
//! prints `ack <seq> <revision>` lines forever) and `record` (it writes a
//! replay file) measure nothing and take no `--json`.

mod fold;
mod load;
mod raw_sqlite;
mod record;
mod replay_bench;
mod service;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use prjmanager::notifier::Notifier;
use prjmanager::proto;
use prjmanager::store::embedded::EmbeddedStore;
use raw_sqlite::{raw_insert, RawInsertPlan};
use serde::Serialize;

/// mimalloc: the fold and the replay-file parser allocate many small
/// strings, where glibc's malloc took 10-25 % of the profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "pm-bench",
    about = "Benchmarks and load generators for prjmanager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Durable Notifier appends vs raw SQLite inserts on the embedded store.
    Append {
        /// Concurrent callers to measure, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        callers: Vec<usize>,
        /// How long to measure each caller count.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Folder for the database files (default: a temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Projects the events are spread over.
        #[arg(long, default_value_t = 16)]
        projects: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Fold throughput of the pure fold on one core.
    Fold {
        /// Input events to fold.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Active CLs of the project.
        #[arg(long, default_value_t = 1_000)]
        cls: i64,
        /// Components (stacks) they form.
        #[arg(long, default_value_t = 50)]
        components: i64,
        /// A marker after every this many input events.
        #[arg(long, default_value_t = 20)]
        markers_every: u64,
        #[command(flatten)]
        output: Output,
    },
    /// Concurrent gRPC notifiers against a running service.
    Service {
        /// Concurrent callers.
        #[arg(long, default_value_t = 32)]
        callers: usize,
        /// How long to measure.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Projects the events are spread over.
        #[arg(long, default_value_t = 16)]
        projects: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Rebuild of random eversions of a long stream, and a full replay.
    Replay {
        /// Events in the stream (input events and markers).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Random eversions to rebuild.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Active CLs of the project.
        #[arg(long, default_value_t = 100)]
        cls: i64,
        /// Stacks they form.
        #[arg(long, default_value_t = 10)]
        components: i64,
        #[command(flatten)]
        output: Output,
    },
    /// Resident memory of many projects' states.
    Memory {
        /// Projects.
        #[arg(long, default_value_t = 1_000)]
        projects: usize,
        /// Active CLs per project.
        #[arg(long, default_value_t = 100)]
        cls: i64,
        #[command(flatten)]
        output: Output,
    },
    /// Parse and load of a generated replay file into memory (linear in its size).
    Load {
        #[command(flatten)]
        options: load::LoadOptions,
        #[command(flatten)]
        output: Output,
    },
    /// Record a scenario of the replays/ corpus through a running service.
    Record {
        /// The scenario (lifecycle, dry-run, chained-votes-denied, parent-run-fails,
        /// combine-cls, reused-trigger, purge-expires, busy).
        scenario: String,
        /// The replay file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Append ClsUpdated events forever, printing each acknowledgement.
    AppendLoop {
        /// The embedded store file.
        #[arg(long)]
        db: PathBuf,
        /// The project to append to.
        #[arg(long, default_value = "crash")]
        project: String,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 4)]
        callers: usize,
        /// First sequence number (continue after an earlier run).
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
}

/// The `--json` switch of every measuring command.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Output {
    /// Print exactly one JSON object `{"rows":[{…}]}` instead of the table.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Rows<'a, R> {
    rows: &'a [R],
}

/// Prints `rows` as `{"rows":[…]}` on one line.
pub(crate) fn print_json<R: Serialize>(rows: &[R]) -> Result<()> {
    println!("{}", serde_json::to_string(&Rows { rows })?);
    Ok(())
}

/// Prints `rows`: with `json`, as [`print_json`]; else as a table headed by
/// `title`, one column per field in declaration order (floats with two
/// decimals, missing values as `-`).
pub(crate) fn print_rows<R: Serialize>(title: &str, rows: &[R], json: bool) -> Result<()> {
    if json {
        return print_json(rows);
    }
    let rows = rows
        .iter()
        .map(|row| {
            // Re-read the row's JSON keeping the field order.
            let Ordered(fields) = serde_json::from_str(&serde_json::to_string(row)?)?;
            Ok(fields)
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let header: Vec<&str> = first.iter().map(|(name, _)| name.as_str()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|(_, value)| cell(value)).collect())
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: &[&str]| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{title}");
    println!("{}", line(&header));
    for row in &cells {
        println!(
            "{}",
            line(&row.iter().map(String::as_str).collect::<Vec<_>>())
        );
    }
    Ok(())
}

fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON object's fields in the order they were written.
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Ordered(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// One `pm-bench fold` measurement.
#[derive(Debug, Serialize)]
struct FoldRow {
    cls: i64,
    components: i64,
    markers_every: u64,
    /// Input events folded.
    events: u64,
    /// Time spent in the fold.
    fold_ms: f64,
    events_per_s: f64,
    /// Components of the state at the end.
    components_at_end: i64,
}

/// One `pm-bench memory` measurement.
#[derive(Debug, Serialize)]
struct MemoryRow {
    projects: usize,
    cls_per_project: i64,
    /// PCLs of all the states.
    pcls: usize,
    resident_before_bytes: u64,
    resident_after_bytes: u64,
    /// After minus before.
    states_bytes: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    match cli.command {
        Command::Append {
            callers,
            seconds,
            dir,
            projects,
            output,
        } => runtime.block_on(append(callers, seconds, dir, projects, output.json)),
        Command::Fold {
            events,
            cls,
            components,
            markers_every,
            output,
        } => {
            let (folded, elapsed, left) = fold::run_fold(events, cls, components, markers_every);
            let row = FoldRow {
                cls,
                components,
                markers_every,
                events: folded,
                fold_ms: millis(elapsed),
                events_per_s: folded as f64 / elapsed.as_secs_f64(),
                components_at_end: left,
            };
            print_rows(
                "pm-bench fold: the fold on one core (decode, evaluate, digest)",
                &[row],
                output.json,
            )
        }
        Command::Service {
            callers,
            seconds,
            projects,
            output,
        } => {
            let row = runtime.block_on(service::run(callers, seconds, projects))?;
            print_rows(
                "pm-bench service: gRPC callers against a running service",
                &[row],
                output.json,
            )
        }
        Command::Replay {
            events,
            samples,
            cls,
            components,
            output,
        } => {
            let row = runtime.block_on(replay_bench::run(
                events,
                samples,
                cls,
                components,
                output.json,
            ))?;
            print_rows("pm-bench replay", &[row], output.json)
        }
        Command::Memory {
            projects,
            cls,
            output,
        } => {
            let before = fold::resident_bytes().unwrap_or(0);
            let states: Vec<_> = (0..projects)
                .map(|i| fold::active_project(&format!("p{i}"), 10, cls / 10, 1_700_000_000).0)
                .collect();
            let after = fold::resident_bytes().unwrap_or(0);
            let pcls: usize = states
                .iter()
                .map(|s| s.pstate.as_ref().map_or(0, |p| p.pcls.len()))
                .sum();
            drop(states);
            let row = MemoryRow {
                projects,
                cls_per_project: cls,
                pcls,
                resident_before_bytes: before,
                resident_after_bytes: after,
                states_bytes: after.saturating_sub(before),
            };
            print_rows(
                "pm-bench memory: resident memory of project states",
                &[row],
                output.json,
            )
        }
        Command::Load { options, output } => {
            let row = runtime.block_on(load::run(&options))?;
            print_rows(
                "pm-bench load: generate, parse and load a replay file (times in ms)",
                &[row],
                output.json,
            )
        }
        Command::Record { scenario, out } => runtime.block_on(record::record(&scenario, &out)),
        Command::AppendLoop {
            db,
            project,
            callers,
            start,
        } => runtime.block_on(append_loop(db, project, callers, start)),
    }
}

/// A realistic CL entity version (about 400 bytes encoded), different per `seq`.
pub fn bench_cl(seq: u64) -> proto::ChangeList {
    let clid = i64::try_from(seq).expect("sequence fits in i64") + 1;
    proto::ChangeList {
        clid,
        eversion: 1,
        applicable_config: Some(proto::ApplicableConfig {
            projects: vec![proto::ApplicableProject {
                name: "bench".into(),
                config_group_ids: vec!["cafef00d/main".into()],
            }],
        }),
        snapshot: Some(proto::Snapshot {
            luci_project: "bench".into(),
            patchset: 3,
            min_equivalent_patchset: 2,
            deps: vec![proto::Dep {
                clid: clid.saturating_sub(1).max(1),
                kind: proto::dep::DepKind::Hard as i32,
            }],
            gerrit: Some(proto::GerritChange {
                host: "chromium-review.googlesource.com".into(),
                change: 4_000_000 + clid,
                project: "chromium/src".into(),
                r#ref: "refs/heads/main".into(),
                status: proto::gerrit_change::ChangeStatus::New as i32,
                owner_email: "owner@chromium.org".into(),
                owner_account_id: 1_000_001,
                current_revision: format!("{:040x}", u128::from(seq) * 7919),
                current_revision_created: Some(prjmanager::proto::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                votes: vec![proto::Vote {
                    label: "Commit-Queue".into(),
                    value: 1,
                    email: "voter@chromium.org".into(),
                    account_id: 1_000_002,
                    time: Some(prjmanager::proto::Timestamp {
                        seconds: 1_700_000_100,
                        nanos: 0,
                    }),
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) struct Percentiles {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

pub(crate) fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| {
        if samples.is_empty() {
            return Duration::ZERO;
        }
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index]
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One `pm-bench append` measurement: one caller count.
#[derive(Debug, Serialize)]
struct AppendRow {
    callers: usize,
    projects: usize,
    /// ClsUpdated payload size.
    payload_bytes: usize,
    /// Acknowledged Notifier appends.
    events: u64,
    /// Notifier appends per second.
    events_per_s: f64,
    /// Notifier call latency.
    p50_ms: f64,
    p99_ms: f64,
    /// Appends the store's writer committed together, on average.
    writes_per_commit: f64,
    /// Raw SQLite inserts per second, same schema and durability, in
    /// transactions of `writes_per_commit` events (the same batching).
    raw_events_per_s: f64,
    /// Raw SQLite per-transaction latency at that batching.
    raw_p99_ms: f64,
    /// `events_per_s / raw_events_per_s`.
    ratio: f64,
    /// Raw SQLite inserts per second in transactions of `callers` events
    /// (the most a group commit could take with one request per caller).
    raw_batch_callers_events_per_s: f64,
    /// `events_per_s / raw_batch_callers_events_per_s`.
    ratio_batch_callers: f64,
}

async fn append(
    callers: Vec<usize>,
    seconds: f64,
    dir: Option<PathBuf>,
    projects: usize,
    json: bool,
) -> Result<()> {
    let temp = tempfile::tempdir().context("creating a temporary folder")?;
    let dir = dir.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let duration = Duration::from_secs_f64(seconds);
    let payload_bytes = prost::Message::encoded_len(&bench_cl(1));
    if !json {
        println!(
            "pm-bench append: {seconds} s per row, {projects} projects, ClsUpdated payload ≈ {payload_bytes} B, dir {}",
            dir.display()
        );
        println!(
            "{:>7} {:>14} {:>8} {:>8} {:>13} {:>16} {:>8} {:>6} {:>17} {:>6}",
            "callers",
            "notifier ev/s",
            "p50 ms",
            "p99 ms",
            "writes/commit",
            "raw sqlite ev/s",
            "raw p99",
            "ratio",
            "raw, batch=callers",
            "ratio"
        );
    }
    let mut rows = Vec::new();
    for &n in &callers {
        let path = dir.join(format!("notifier-{n}.db"));
        let _ = std::fs::remove_file(&path);
        let store = EmbeddedStore::open(&path)?;
        let notifier = Notifier::new(store.clone(), "pm-bench");
        let (events, wall, latencies) = drive(&notifier, n, duration, projects).await?;
        let stats = store.writer_stats();
        store.close().await?;
        let rate = events as f64 / wall.as_secs_f64();
        let notify = percentiles(latencies);

        // The raw baseline writes as many events per transaction as the
        // group commit took on average (the same batching), and again with
        // one transaction per `n` events, the most a group could take.
        let writes_per_commit = stats.writes as f64 / stats.group_commits.max(1) as f64;
        let same_batching = (writes_per_commit.round() as usize).max(1);
        let raw = raw_for(
            &dir,
            "raw",
            same_batching,
            duration,
            projects,
            payload_bytes,
        )?;
        let full = raw_for(&dir, "raw-full", n, duration, projects, payload_bytes)?;
        let row = AppendRow {
            callers: n,
            projects,
            payload_bytes,
            events,
            events_per_s: rate,
            p50_ms: millis(notify.p50),
            p99_ms: millis(notify.p99),
            writes_per_commit,
            raw_events_per_s: raw.0,
            raw_p99_ms: millis(raw.1),
            ratio: rate / raw.0,
            raw_batch_callers_events_per_s: full.0,
            ratio_batch_callers: rate / full.0,
        };
        if !json {
            println!(
                "{n:>7} {rate:>14.0} {:>8.2} {:>8.2} {:>13.1} {:>16.0} {:>8.2} {:>6.2} {:>17.0} {:>6.2}",
                row.p50_ms,
                row.p99_ms,
                row.writes_per_commit,
                row.raw_events_per_s,
                row.raw_p99_ms,
                row.ratio,
                row.raw_batch_callers_events_per_s,
                row.ratio_batch_callers
            );
        }
        rows.push(row);
    }
    if json {
        print_json(&rows)?;
    }
    Ok(())
}

/// Runs `callers` concurrent Notifier callers for `duration`.
async fn drive(
    notifier: &Notifier<EmbeddedStore>,
    callers: usize,
    duration: Duration,
    projects: usize,
) -> Result<(u64, Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let notifier = notifier.clone();
        let next = next.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let project = format!("bench-{}", seq % projects as u64);
                let t0 = Instant::now();
                notifier
                    .notify_cls_updated(&project, vec![bench_cl(seq)])
                    .await?;
                latencies.push(t0.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let wall = started.elapsed();
    Ok((latencies.len() as u64, wall, latencies))
}

/// Raw inserts for about `duration` into a new store file `<name>-<batch_size>.db`
/// of `dir`: returns (events/s, p99 per-batch latency).
fn raw_for(
    dir: &std::path::Path,
    name: &str,
    batch_size: usize,
    duration: Duration,
    streams: usize,
    payload_bytes: usize,
) -> Result<(f64, Duration)> {
    let path = dir.join(format!("{name}-{batch_size}.db"));
    let _ = std::fs::remove_file(&path);
    drop(EmbeddedStore::open(&path)?);
    let plan = RawInsertPlan {
        batches: usize::MAX,
        batch_size,
        streams,
        payload_bytes,
        until: Some(duration),
    };
    let batches = raw_insert(&path, &plan)?;
    let total: Duration = batches.iter().sum();
    let events = (batches.len() * batch_size) as f64;
    Ok((events / total.as_secs_f64(), percentiles(batches).p99))
}

async fn append_loop(db: PathBuf, project: String, callers: usize, start: u64) -> Result<()> {
    let store = EmbeddedStore::open(&db)?;
    let notifier = Notifier::new(store, "crash-test");
    let next = Arc::new(AtomicU64::new(start));
    let mut tasks = Vec::new();
    for _ in 0..callers.max(1) {
        let notifier = notifier.clone();
        let next = next.clone();
        let project = project.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let id = uuid::Uuid::from_u128(u128::from(seq) + 1);
                let event = proto::input_event::Event::ClsUpdated(proto::ClsUpdated {
                    cls: vec![bench_cl(seq)],
                });
                let appended = notifier.send_with_id(&project, event, id).await?;
                // One line per acknowledgement, written whole.
                println!("ack {seq} {}", appended.revision);
            }
        }));
    }
    // The appenders only stop on an error.
    for task in tasks {
        let result: Result<std::convert::Infallible, prjmanager::notifier::NotifyError> =
            task.await?;
        result?;
    }
    Ok(())
}
