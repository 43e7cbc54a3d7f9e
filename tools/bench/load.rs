//! `pm-bench load`: loading a replay file is linear in its size (DESIGN §13).
//!
//! Writes a hand-written replay file (no ids, no revisions, no metadata: a
//! config, every CL once, then single-CL updates of `--cls` active CLs in
//! `--components` stacks, and an `Evaluated` marker after every
//! `--markers-every` input events, one minute apart), then times the path of
//! `pm-replay` over it: [`jsonl::parse_path`], [`replay::load_file`] (into a
//! `MemoryStore`) and, with `--fold`, reading the stream back and folding
//! every event ([`replay::fold_events`]).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use prjmanager::proto::{self, input_event::Event, Timestamp};
use prjmanager::streams::project_stream;
use prjmanager::{events, jsonl, replay};
use serde::Serialize;

use crate::fold::{config, resident_bytes, Mix};
use crate::millis;

const PROJECT: &str = "load";

/// One measured load.
#[derive(Debug, Serialize)]
pub struct LoadRow {
    /// Event lines in the file (input events and markers).
    pub events: u64,
    /// Markers in the file (the last eversion).
    pub eversions: u64,
    /// Active CLs of the project.
    pub cls: i64,
    /// The file's size.
    pub file_bytes: u64,
    /// Time to write the file (not part of the load).
    pub generate_ms: f64,
    /// Time to parse and validate the file.
    pub parse_ms: f64,
    /// Time to append the parsed events to a `MemoryStore`.
    pub load_ms: f64,
    /// Events per second of parse + load.
    pub events_per_s: f64,
    /// Time to read the stream back and fold every event (`--fold`).
    pub fold_ms: Option<f64>,
    /// Events per second of that fold (`--fold`).
    pub fold_events_per_s: Option<f64>,
    /// Resident memory of the process once the file is loaded.
    pub resident_bytes: u64,
}

/// An event line as a person writes it: no revision, id or metadata.
#[derive(Serialize)]
struct Line {
    #[serde(rename = "type")]
    event_type: &'static str,
    data: serde_json::Value,
}

/// Writes a hand-written replay file of `events` event lines; returns the
/// number of markers.
pub fn write_file(
    path: &Path,
    events: u64,
    clids: i64,
    stacks: i64,
    markers_every: u64,
) -> Result<u64> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    jsonl::write_header(&mut out, PROJECT)?;
    let mut now = 1_700_000_000;
    let mut mix = Mix::new(PROJECT, clids, stacks.max(1), 0, 20);
    let mut first = vec![
        mix.all_cls(now),
        Event::ConfigUpdated(proto::ConfigUpdated {
            config: Some(config("h1")),
        }),
    ];
    let mut markers = 0;
    for written in 0..events {
        let event = if written % markers_every.max(1) == markers_every.max(1) - 1 {
            now += 60;
            markers += 1;
            Event::Evaluated(proto::Evaluated {
                now: Some(Timestamp {
                    seconds: now,
                    nanos: 0,
                }),
                ..Default::default()
            })
        } else if let Some(event) = first.pop() {
            event
        } else {
            mix.next_event(now)
        };
        let line = Line {
            event_type: events::type_name(&event),
            data: events::to_json(&event)?,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(markers)
}

/// Options of one `pm-bench load` run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// Event lines of the file (input events and markers).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Active CLs of the project.
    #[arg(long, default_value_t = 100)]
    pub cls: i64,
    /// Stacks they form.
    #[arg(long, default_value_t = 10)]
    pub components: i64,
    /// A marker after every this many events.
    #[arg(long, default_value_t = 20)]
    pub markers_every: u64,
    /// Also read the loaded stream back and fold every event.
    #[arg(long)]
    pub fold: bool,
    /// Write the file here and keep it (default: a temporary folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Generates the file, then times parse, load and (optionally) the fold.
pub async fn run(options: &LoadOptions) -> Result<LoadRow> {
    let temp = tempfile::tempdir().context("creating a temporary folder")?;
    let path = options
        .out
        .clone()
        .unwrap_or_else(|| temp.path().join("load.jsonl"));
    let began = Instant::now();
    let eversions = write_file(
        &path,
        options.events,
        options.cls,
        options.components,
        options.markers_every,
    )?;
    let generate = began.elapsed();
    let file_bytes = std::fs::metadata(&path)?.len();
    let name = path.to_string_lossy().into_owned();

    let began = Instant::now();
    let parsed = jsonl::parse_path(&name)?;
    let parse = began.elapsed();
    let began = Instant::now();
    let opened = replay::load_file(&name, parsed).await?;
    let load = began.elapsed();
    let resident = resident_bytes().unwrap_or(0);

    let (fold_ms, fold_events_per_s) = if options.fold {
        let began = Instant::now();
        let stored = replay::read_stream(&opened.store, &project_stream(PROJECT)).await?;
        let state = replay::fold_events(&opened, &stored, &ProgressBar::hidden(), |_| Ok(()))?;
        let elapsed = began.elapsed();
        anyhow::ensure!(
            state.eversion as u64 == eversions,
            "folded to eversion {}, expected {eversions}",
            state.eversion
        );
        (
            Some(millis(elapsed)),
            Some(stored.len() as f64 / elapsed.as_secs_f64()),
        )
    } else {
        (None, None)
    };
    Ok(LoadRow {
        events: options.events,
        eversions,
        cls: options.cls,
        file_bytes,
        generate_ms: millis(generate),
        parse_ms: millis(parse),
        load_ms: millis(load),
        events_per_s: options.events as f64 / (parse + load).as_secs_f64(),
        fold_ms,
        fold_events_per_s,
        resident_bytes: resident,
    })
}
