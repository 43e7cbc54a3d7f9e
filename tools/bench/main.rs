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
//!
//! Numbers are printed, never asserted: benchmarks are run by hand.

mod fold;
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
    },
    /// Resident memory of many projects' states.
    Memory {
        /// Projects.
        #[arg(long, default_value_t = 1_000)]
        projects: usize,
        /// Active CLs per project.
        #[arg(long, default_value_t = 100)]
        cls: i64,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    match cli.command {
        Command::Append {
            callers,
            seconds,
            dir,
            projects,
        } => runtime.block_on(append(callers, seconds, dir, projects)),
        Command::Fold {
            events,
            cls,
            components,
            markers_every,
        } => {
            let (folded, elapsed, left) = fold::run_fold(events, cls, components, markers_every);
            println!(
                "pm-bench fold: {folded} input events ({cls} active CLs in {components} stacks, marker every {markers_every}) in {:.3} s on one core: {:.0} events/s; {left} components at the end",
                elapsed.as_secs_f64(),
                folded as f64 / elapsed.as_secs_f64()
            );
            Ok(())
        }
        Command::Service {
            callers,
            seconds,
            projects,
        } => runtime.block_on(service::run(callers, seconds, projects)),
        Command::Replay {
            events,
            samples,
            cls,
            components,
        } => runtime.block_on(replay_bench::run(events, samples, cls, components)),
        Command::Memory { projects, cls } => {
            let before = fold::resident_bytes().unwrap_or(0);
            let states: Vec<_> = (0..projects)
                .map(|i| fold::active_project(&format!("p{i}"), 10, cls / 10, 1_700_000_000).0)
                .collect();
            let after = fold::resident_bytes().unwrap_or(0);
            let pcls: usize = states
                .iter()
                .map(|s| s.pstate.as_ref().map_or(0, |p| p.pcls.len()))
                .sum();
            println!(
                "pm-bench memory: {projects} projects, {pcls} PCLs in all: resident {:.1} MiB before, {:.1} MiB after, {:.1} MiB for the states",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                after.saturating_sub(before) as f64 / 1048576.0
            );
            drop(states);
            Ok(())
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

async fn append(
    callers: Vec<usize>,
    seconds: f64,
    dir: Option<PathBuf>,
    projects: usize,
) -> Result<()> {
    let temp = tempfile::tempdir().context("creating a temporary folder")?;
    let dir = dir.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let duration = Duration::from_secs_f64(seconds);
    let payload_bytes = prost::Message::encoded_len(&bench_cl(1));
    println!(
        "pm-bench append: {seconds} s per row, {projects} projects, ClsUpdated payload ≈ {payload_bytes} B, dir {}",
        dir.display()
    );
    println!(
        "{:>7} {:>14} {:>10} {:>10} {:>16} {:>10} {:>8}",
        "callers", "notifier ev/s", "p50 ms", "p99 ms", "raw sqlite ev/s", "raw p99", "ratio"
    );
    for &n in &callers {
        let path = dir.join(format!("notifier-{n}.db"));
        let _ = std::fs::remove_file(&path);
        let store = EmbeddedStore::open(&path)?;
        let notifier = Notifier::new(store.clone(), "pm-bench");
        let (events, wall, latencies) = drive(&notifier, n, duration, projects).await?;
        store.close().await?;
        let rate = events as f64 / wall.as_secs_f64();
        let notify = percentiles(latencies);

        // The raw baseline writes the same number of events per transaction
        // that the group commit saw on average at this concurrency: `n`.
        let raw_path = dir.join(format!("raw-{n}.db"));
        let _ = std::fs::remove_file(&raw_path);
        drop(EmbeddedStore::open(&raw_path)?);
        let raw = raw_for(&raw_path, n, duration, projects, payload_bytes)?;
        println!(
            "{n:>7} {rate:>14.0} {:>10.2} {:>10.2} {:>16.0} {:>10.2} {:>8.2}",
            millis(notify.p50),
            millis(notify.p99),
            raw.0,
            millis(raw.1),
            rate / raw.0
        );
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

/// Raw inserts for about `duration`: returns (events/s, p99 per-batch latency).
fn raw_for(
    path: &std::path::Path,
    batch_size: usize,
    duration: Duration,
    streams: usize,
    payload_bytes: usize,
) -> Result<(f64, Duration)> {
    let mut batches = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let plan = RawInsertPlan {
            batches: 16,
            batch_size,
            streams,
            payload_bytes,
        };
        batches.extend(raw_insert(path, &plan)?);
    }
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
