//! `pm-bench replay`: rebuild of random eversions of a 1,000,000-event
//! stream on the embedded store (snapshots every 100 eversions), and a full
//! replay of the stream without snapshots. The stream: 100 active CLs in 10
//! stacks; per 20 events about one Run created, one finished, the rest CL
//! updates; a marker every 20 events, one minute apart.

use std::time::{Duration, Instant};

use anyhow::Result;
use prjmanager::projector::derived::derived_writes;
use prjmanager::proto::Timestamp;
use prjmanager::proto::{self, input_event::Event};
use prjmanager::read::{load, Target};
use prjmanager::store::embedded::EmbeddedStore;
use prjmanager::store::{Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom};
use prjmanager::streams::{self, project_stream, SNAPSHOT_INTERVAL_EVERSIONS};
use prjmanager::{domain, fold};
use serde::Serialize;

use crate::fold::{config, recorded, Mix, SplitMix};
use crate::{millis, percentiles};

/// Events appended per batch while building the stream.
const BUILD_BATCH_EVENTS: usize = 5_000;

const PROJECT: &str = "replay";

/// One `pm-bench replay` measurement.
#[derive(Debug, Serialize)]
pub struct ReplayRow {
    /// Events in the stream (input events and markers).
    pub events: u64,
    /// Eversions of the stream.
    pub eversions: i64,
    /// Active CLs of the project.
    pub cls: i64,
    /// Stacks they form.
    pub components: i64,
    /// Time to build the stream (with its snapshots).
    pub build_ms: f64,
    /// Random eversions rebuilt.
    pub samples: usize,
    /// Rebuild time of one eversion.
    pub rebuild_p50_ms: f64,
    pub rebuild_p99_ms: f64,
    /// Events read and folded by the full replay without snapshots.
    pub full_replay_events: u64,
    pub full_replay_ms: f64,
    pub full_replay_events_per_s: f64,
}

/// Builds the stream and measures rebuilds and a full replay; prints the
/// readable lines unless `json`.
pub async fn run(
    events: u64,
    samples: usize,
    clids: i64,
    stacks: i64,
    json: bool,
) -> Result<ReplayRow> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path().join("replay.db"))?;
    let built = Instant::now();
    let eversions = build(&store, events, clids, stacks).await?;
    let build_elapsed = built.elapsed();
    if !json {
        println!(
            "pm-bench replay: built {events} events ({eversions} eversions, {clids} active CLs in {stacks} stacks, a marker every 20 events one minute apart, a snapshot every {SNAPSHOT_INTERVAL_EVERSIONS} eversions) in {:.1} s",
            build_elapsed.as_secs_f64()
        );
    }
    let mut rng = SplitMix(7);
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let eversion = 1 + rng.below(eversions as u64) as i64;
        let t0 = Instant::now();
        let loaded = load(&store, PROJECT, Target::Eversion(eversion)).await?;
        times.push(t0.elapsed());
        assert_eq!(loaded.state.eversion, eversion);
    }
    let rebuild = percentiles(times);
    if !json {
        println!(
            "  rebuild of {samples} random eversions: p50 {:.2} ms, p99 {:.2} ms",
            millis(rebuild.p50),
            millis(rebuild.p99)
        );
    }
    let (folded, elapsed) = full_replay(&store).await?;
    if !json {
        println!(
            "  full replay without snapshots: {folded} events in {:.2} s ({:.0} events/s)",
            elapsed.as_secs_f64(),
            folded as f64 / elapsed.as_secs_f64()
        );
    }
    store.close().await?;
    Ok(ReplayRow {
        events,
        eversions,
        cls: clids,
        components: stacks,
        build_ms: millis(build_elapsed),
        samples,
        rebuild_p50_ms: millis(rebuild.p50),
        rebuild_p99_ms: millis(rebuild.p99),
        full_replay_events: folded,
        full_replay_ms: millis(elapsed),
        full_replay_events_per_s: folded as f64 / elapsed.as_secs_f64(),
    })
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn stored(event: &Event, seq: u64) -> NewEvent {
    streams::input_event(
        event,
        uuid::Uuid::from_u128(u128::from(seq) + 1),
        "pm-bench",
    )
}

/// Folds a generated stream while appending it, with the projector's snapshot
/// writes; returns the number of eversions.
async fn build(store: &EmbeddedStore, events: u64, clids: i64, stacks: i64) -> Result<i64> {
    let stream = project_stream(PROJECT);
    let mut state = domain::new_project(PROJECT);
    let mut digester = fold::Digester::default();
    let mut now = 1_700_000_000;
    let mut mix = Mix::new(PROJECT, clids, stacks, 1, 20);
    let mut batch = Vec::new();
    let mut revision = 0_u64;
    let mut inputs = 0;
    let mut first = vec![
        mix.all_cls(now),
        Event::ConfigUpdated(proto::ConfigUpdated {
            config: Some(config("h1")),
        }),
    ];
    while revision < events {
        let event = if let Some(event) = first.pop() {
            event
        } else if inputs % 20 == 19 {
            // A marker a minute: Runs ended more than 7 days earlier leave
            // the fold's memory, as they would in a long-lived project.
            now += 60;
            Event::Evaluated(proto::Evaluated {
                now: Some(ts(now)),
                ..Default::default()
            })
        } else {
            mix.next_event(now)
        };
        inputs += 1;
        // Folded as the service folds it: a marker is filled in.
        let outcome = fold::apply_recorded(
            &mut state,
            &recorded(PROJECT, revision, &event),
            &mut digester,
        )?;
        let event = match outcome {
            Some(outcome) => {
                let (marker, evaluation) = (outcome.marker, outcome.evaluation);
                mix.observe(&evaluation);
                if evaluation.eversion % SNAPSHOT_INTERVAL_EVERSIONS == 0 {
                    let snapshot = proto::ProjectSnapshot {
                        eversion: evaluation.eversion,
                        source_revision: revision,
                        state_digest: marker.state_digest.clone(),
                        state: Some(state.clone()),
                    };
                    let only_snapshot = domain::Evaluation {
                        actions: Vec::new(),
                        project_log: None,
                        offload: None,
                        ..evaluation
                    };
                    for (stream, events) in
                        derived_writes(PROJECT, &only_snapshot, Some(&snapshot), uuid::Uuid::nil())
                    {
                        store.append(&stream, ExpectedRevision::Any, events).await?;
                    }
                }
                Event::Evaluated(marker)
            }
            None => event,
        };
        batch.push(stored(&event, revision));
        revision += 1;
        if batch.len() == BUILD_BATCH_EVENTS {
            store
                .append(&stream, ExpectedRevision::Any, std::mem::take(&mut batch))
                .await?;
        }
    }
    if !batch.is_empty() {
        store.append(&stream, ExpectedRevision::Any, batch).await?;
    }
    Ok(state.eversion)
}

/// Reads and folds the whole stream from its start, without snapshots.
async fn full_replay(store: &EmbeddedStore) -> Result<(u64, Duration)> {
    let stream = project_stream(PROJECT);
    let started = Instant::now();
    let mut state = domain::new_project(PROJECT);
    let mut digester = fold::Digester::default();
    let mut folded = 0;
    loop {
        let page = store
            .read_stream(
                &stream,
                ReadFrom::Revision(fold::next_revision(&state)),
                Direction::Forwards,
                10_000,
            )
            .await?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            fold::apply_recorded(&mut state, event, &mut digester)?;
            folded += 1;
        }
    }
    Ok((folded, started.elapsed()))
}
