//! The library side of `pm-replay`: rebuild, verify, diff, blame and list
//! the actions of a recorded project stream.
//!
//! A source is a replay file (DESIGN §10) or a project in a store. A file is
//! loaded into a [`MemoryStore`] first, so both go through one code path and
//! through the one fold ([`crate::fold::apply_recorded`]), exactly as the
//! service does.

pub mod diff;
pub mod path;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};

use indicatif::ProgressBar;
use serde_json::Value;

use crate::domain::{self, FoldError};
use crate::fold::{self, FoldOutcome};
use crate::jsonl;
use crate::progress::events_bar;
use crate::proto::{self, ProjectState};
use crate::read::{self, load, At, LoadError, Target};
use crate::store::any::{AnyStore, StoreUrl};
use crate::store::memory::MemoryStore;
use crate::store::{EventStore, ExpectedRevision, RecordedEvent};
use crate::streams::{check_project, log_stream, project_stream, snapshot_stream};

pub use diff::{diff, Change};
pub use path::StatePath;
pub use report::{report, ReportOptions, DEFAULT_MAX_REPORT_BYTES};

/// How many events of a file are appended to the in-memory store at once.
pub const LOAD_CHUNK_EVENTS: usize = 4_096;

/// A failure of a replay command, classified for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Bad input (malformed file, an undecodable event in a file, bad
    /// arguments): exit 2.
    #[error("{0}")]
    BadInput(String),
    /// Anything else (store trouble, a stored event the fold rejects): exit 1.
    #[error("{0}")]
    Failed(String),
}

impl ReplayError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::BadInput(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

impl From<crate::store::StoreError> for ReplayError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Where the stream comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A replay file (`-`: stdin).
    File(String),
    /// A project in a store.
    Store {
        /// The store URL.
        url: StoreUrl,
        /// The LUCI project.
        project: String,
    },
}

impl std::fmt::Display for Source {
    /// The file name, or `URL project P`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(name) => f.write_str(name),
            Source::Store { url, project } => write!(f, "{url} project {project}"),
        }
    }
}

/// An opened source: a store holding the project's stream.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The store (a fresh in-memory one for a file).
    pub store: AnyStore,
    /// The project.
    pub project: String,
    /// For a file: its name and the line of every revision, for messages.
    pub file: Option<(String, BTreeMap<u64, usize>)>,
}

impl Opened {
    /// Where an event is, for messages: `file:line` or `project-P revision N`.
    pub fn locate(&self, revision: u64) -> String {
        match &self.file {
            Some((name, lines)) => match lines.get(&revision) {
                Some(line) => format!("{name}:{line} (revision {revision})"),
                None => format!("{name} revision {revision}"),
            },
            None => format!("{} revision {revision}", project_stream(&self.project)),
        }
    }

    fn fold_error(&self, err: FoldError) -> ReplayError {
        let revision = match &err {
            FoldError::UnexpectedMarker { revision }
            | FoldError::MarkerWithoutNow { revision }
            | FoldError::WrongProject { revision, .. }
            | FoldError::Undecodable { revision, .. } => *revision,
            FoldError::RevisionOutOfOrder { actual, .. } => *actual,
        };
        match &self.file {
            Some(_) => ReplayError::BadInput(format!("{}: {err}", self.locate(revision))),
            // A stored event the fold rejects quarantines the project in the
            // service; say it in the same words, as a failure (exit 1).
            None => ReplayError::Failed(format!(
                "project {:?} is quarantined: {}: {err}",
                self.project,
                project_stream(&self.project)
            )),
        }
    }

    fn load_error(&self, err: LoadError) -> ReplayError {
        match err {
            LoadError::Fold { source, .. } => self.fold_error(source),
            LoadError::NoSuchEversion { .. } => ReplayError::BadInput(err.to_string()),
            LoadError::Store(e) => e.into(),
        }
    }
}

/// Opens a source: parses and loads a file into memory, or opens a store.
pub async fn open(source: &Source) -> Result<Opened, ReplayError> {
    match source {
        Source::Store { url, project } => {
            check_project(project).map_err(|e| ReplayError::BadInput(e.to_string()))?;
            let store = AnyStore::open(url)
                .map_err(|e| ReplayError::Failed(format!("cannot open the store: {e}")))?;
            read::require_project(&store, project)
                .await?
                .map_err(|e| ReplayError::Failed(e.to_string()))?;
            Ok(Opened {
                store,
                project: project.clone(),
                file: None,
            })
        }
        Source::File(name) => {
            let parsed =
                jsonl::parse_path(name).map_err(|e| ReplayError::BadInput(e.to_string()))?;
            load_file(name, parsed).await
        }
    }
}

/// Loads a parsed replay file into a fresh in-memory store, in
/// [`LOAD_CHUNK_EVENTS`] appends; linear in the file's size (each append
/// checks only its own events, see `store::memory`), and each parsed event is
/// dropped once it is in the store.
pub async fn load_file(name: &str, parsed: jsonl::StreamFile) -> Result<Opened, ReplayError> {
    let project = parsed.header.project.clone();
    let stream = project_stream(&project);
    let store = MemoryStore::new();
    let mut lines = BTreeMap::new();
    for (index, event) in parsed.events.iter().enumerate() {
        let revision = index as u64;
        if let Some(given) = event.revision {
            if given != revision {
                return Err(ReplayError::BadInput(format!(
                    "{name}:{}: revision {given} is out of order: expected revision {revision}",
                    event.line
                )));
            }
        }
        lines.insert(revision, event.line);
    }
    let mut events = parsed.events.into_iter().peekable();
    while events.peek().is_some() {
        let batch = events
            .by_ref()
            .take(LOAD_CHUNK_EVENTS)
            .map(jsonl::FileEvent::into_new_event)
            .collect();
        store
            .append(&stream, ExpectedRevision::Any, batch)
            .await
            .map_err(|e| ReplayError::BadInput(format!("{name}: {e}")))?;
    }
    Ok(Opened {
        store: AnyStore::Memory(store),
        project,
        file: Some((name.to_string(), lines)),
    })
}

/// Every visible event of a stream, in revision order.
pub async fn read_stream<S: EventStore>(
    store: &S,
    stream: &str,
) -> Result<Vec<RecordedEvent>, ReplayError> {
    Ok(read::read_all(store, stream).await?)
}

/// One folded marker: the batch it closed and what it produced.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The input events of the batch (between the previous marker and this one).
    pub inputs: &'a [RecordedEvent],
    /// The marker's outcome.
    pub outcome: &'a FoldOutcome,
    /// The state after the marker.
    pub state: &'a ProjectState,
}

/// Folds every event of `events` from the start, calling `visit` after each
/// marker. Errors name the file line or revision.
pub fn fold_events(
    opened: &Opened,
    events: &[RecordedEvent],
    bar: &ProgressBar,
    mut visit: impl FnMut(Step<'_>) -> Result<(), ReplayError>,
) -> Result<ProjectState, ReplayError> {
    let mut state = domain::new_project(&opened.project);
    let mut digester = fold::Digester::default();
    let mut batch_start = 0;
    for (index, event) in events.iter().enumerate() {
        let outcome = fold::apply_recorded(&mut state, event, &mut digester)
            .map_err(|e| opened.fold_error(e))?;
        if let Some(outcome) = outcome {
            visit(Step {
                inputs: &events[batch_start..index],
                outcome: &outcome,
                state: &state,
            })?;
            batch_start = index + 1;
        }
        if index % 1024 == 0 {
            bar.set_position(index as u64);
        }
    }
    bar.finish_and_clear();
    Ok(state)
}

fn check_eversion(eversion: i64) -> Result<(), ReplayError> {
    if eversion < 0 {
        return Err(ReplayError::BadInput(format!(
            "eversion {eversion} is negative"
        )));
    }
    Ok(())
}

/// The state at an eversion: the newest valid snapshot at or below it plus
/// the tail, and the outcome of the marker that produced it.
pub async fn state_at(
    opened: &Opened,
    eversion: i64,
) -> Result<(ProjectState, Option<FoldOutcome>), ReplayError> {
    check_eversion(eversion)?;
    let loaded = load(&opened.store, &opened.project, Target::Eversion(eversion))
        .await
        .map_err(|e| opened.load_error(e))?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok((loaded.state, loaded.last_outcome))
}

/// A rebuilt `ProjectLog` and whether that eversion was logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    /// The `ProjectLog` (reasons empty when not logged).
    pub log: proto::ProjectLog,
    /// Whether the fold logged this eversion.
    pub logged: bool,
}

/// `rebuild`: the `ProjectLog` at `eversion` ([`read::project_log`]).
pub async fn rebuild(opened: &Opened, eversion: i64) -> Result<Rebuilt, ReplayError> {
    check_eversion(eversion)?;
    let read = read::project_log(&opened.store, &opened.project, At::Eversion(eversion))
        .await
        .map_err(|e| opened.load_error(e))?;
    for warning in &read.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(Rebuilt {
        log: read.log,
        logged: read.logged,
    })
}

/// The document `diff` and `blame` look at: the `PState` in proto3 JSON, plus
/// `eversion`, `updateTime` and `runs` (the Runs the fold knows).
pub fn state_document(state: &ProjectState) -> Result<Value, ReplayError> {
    let mut document = json_of("the state", &state.pstate.clone().unwrap_or_default())?;
    if let Value::Object(map) = &mut document {
        map.insert("eversion".into(), Value::String(state.eversion.to_string()));
        map.insert(
            "updateTime".into(),
            json_of("the update time", &state.update_time)?,
        );
        map.insert("runs".into(), json_of("the runs", &state.runs)?);
    }
    Ok(document)
}

/// The proto3 JSON of `value`. A value outside proto's range (a timestamp
/// written to the store past the Notifier's bounds) is an error naming it.
fn json_of<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> Result<Value, ReplayError> {
    serde_json::to_value(value)
        .map_err(|e| ReplayError::Failed(format!("cannot print {what} as proto3 JSON: {e}")))
}

/// `diff`: the differences of the state between two eversions.
pub async fn diff_eversions(
    opened: &Opened,
    from: i64,
    to: i64,
) -> Result<Vec<Change>, ReplayError> {
    let (before, _) = state_at(opened, from).await?;
    let (after, _) = state_at(opened, to).await?;
    Ok(diff(&state_document(&before)?, &state_document(&after)?))
}

/// An input event, for reports: revision, type and proto3 JSON data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputSummary {
    /// Revision in `project-<P>`.
    pub revision: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload in proto3 JSON (`null` if it does not decode; a string
    /// saying why if it cannot be printed).
    pub data: Value,
}

impl std::fmt::Display for InputSummary {
    /// `revision N Type {json}`, as the replay tool prints a batch's inputs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "revision {} {} {}",
            self.revision, self.event_type, self.data
        )
    }
}

/// Summaries of a batch's input events.
pub fn summarize(inputs: &[RecordedEvent]) -> Vec<InputSummary> {
    inputs
        .iter()
        .map(|e| InputSummary {
            revision: e.revision,
            event_type: e.event_type.clone(),
            data: match crate::events::decode(&e.event_type, &e.data) {
                Ok(event) => crate::events::to_json(&event)
                    .unwrap_or_else(|err| Value::String(format!("cannot print: {err}"))),
                Err(_) => Value::Null,
            },
        })
        .collect()
}

/// One eversion at which the blamed part of the state changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BlameEntry {
    /// The eversion.
    pub eversion: i64,
    /// Revision of its marker.
    pub revision: u64,
    /// The value before.
    pub before: Value,
    /// The value after.
    pub after: Value,
    /// The input events of the batch.
    pub inputs: Vec<InputSummary>,
}

/// `blame`: every eversion at which `path` of the state document changed.
pub async fn blame(opened: &Opened, path: &StatePath) -> Result<Vec<BlameEntry>, ReplayError> {
    let events = read_stream(&opened.store, &project_stream(&opened.project)).await?;
    let bar = events_bar(events.len() as u64, "blame");
    let mut previous = path.evaluate(&state_document(&domain::new_project(&opened.project))?);
    let mut entries = Vec::new();
    fold_events(opened, &events, &bar, |step| {
        let value = path.evaluate(&state_document(step.state)?);
        if value != previous {
            entries.push(BlameEntry {
                eversion: step.outcome.evaluation.eversion,
                revision: step.outcome.revision,
                before: std::mem::replace(&mut previous, value.clone()),
                after: value,
                inputs: summarize(step.inputs),
            });
        }
        Ok(())
    })?;
    Ok(entries)
}

/// `actions`: every action of every eversion (or of one), in order.
pub async fn actions(
    opened: &Opened,
    eversion: Option<i64>,
) -> Result<Vec<proto::Action>, ReplayError> {
    if let Some(n) = eversion {
        let (_, outcome) = state_at(opened, n).await?;
        return Ok(outcome
            .filter(|o| o.evaluation.eversion == n)
            .map(|o| o.evaluation.wrapped_actions())
            .unwrap_or_default());
    }
    let events = read_stream(&opened.store, &project_stream(&opened.project)).await?;
    let bar = events_bar(events.len() as u64, "actions");
    let mut all = Vec::new();
    fold_events(opened, &events, &bar, |step| {
        all.extend(step.outcome.evaluation.wrapped_actions());
        Ok(())
    })?;
    Ok(all)
}

/// Every logged `ProjectLog` of a full fold, in eversion order.
pub async fn logs(opened: &Opened) -> Result<Vec<proto::ProjectLog>, ReplayError> {
    let events = read_stream(&opened.store, &project_stream(&opened.project)).await?;
    let mut logs = Vec::new();
    fold_events(opened, &events, &ProgressBar::hidden(), |step| {
        logs.extend(step.outcome.evaluation.project_log.clone());
        Ok(())
    })?;
    Ok(logs)
}

/// What `verify` found wrong first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Divergence {
    /// The first divergent eversion.
    pub eversion: i64,
    /// What diverged: `marker`, `projectlog` or `snapshot`, and where.
    pub what: String,
    /// The input events of that eversion's batch.
    pub inputs: Vec<InputSummary>,
    /// Recorded vs recomputed, field by field.
    pub changes: Vec<Change>,
}

/// The result of `verify`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VerifyReport {
    /// Events folded.
    pub events: usize,
    /// Markers (eversions) folded.
    pub eversions: i64,
    /// Marker digests compared.
    pub markers_checked: usize,
    /// Stored `ProjectLog`s compared.
    pub logs_checked: usize,
    /// Stored snapshots compared.
    pub snapshots_checked: usize,
    /// Warnings (for example stored logs of eversions the stream does not reach).
    pub warnings: Vec<String>,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
}

fn marker_json(eversion: i64, digest: &[u8]) -> Result<Value, ReplayError> {
    let marker = proto::Evaluated {
        now: None,
        eversion,
        state_digest: digest.to_vec(),
    };
    json_of("a marker", &marker)
}

/// `verify`: folds every eversion and compares every marker digest, stored
/// `ProjectLog` and stored snapshot with the recomputed one.
pub async fn verify(opened: &Opened) -> Result<VerifyReport, ReplayError> {
    verify_with(opened, |_| Ok(())).await
}

/// [`verify`], calling `visit` with every folded marker too (in the same
/// fold, so a caller that needs every eversion does not fold twice).
pub async fn verify_with(
    opened: &Opened,
    mut visit: impl FnMut(Step<'_>) -> Result<(), ReplayError>,
) -> Result<VerifyReport, ReplayError> {
    let events = read_stream(&opened.store, &project_stream(&opened.project)).await?;
    let mut warnings = Vec::new();
    let mut stored_logs: BTreeMap<i64, (u64, proto::ProjectLog)> = BTreeMap::new();
    let log_stream_name = log_stream(&opened.project);
    for record in read_stream(&opened.store, &log_stream_name).await? {
        match read::decode::<proto::ProjectLog>(&record) {
            Ok(log) => {
                stored_logs.insert(log.eversion, (record.revision, log));
            }
            Err(e) => warnings.push(e.to_string()),
        }
    }
    let mut stored_snapshots: BTreeMap<i64, (u64, proto::ProjectSnapshot)> = BTreeMap::new();
    let snapshot_stream_name = snapshot_stream(&opened.project);
    for record in read_stream(&opened.store, &snapshot_stream_name).await? {
        match read::decode::<proto::ProjectSnapshot>(&record) {
            Ok(snapshot) => {
                stored_snapshots.insert(snapshot.eversion, (record.revision, snapshot));
            }
            Err(e) => warnings.push(e.to_string()),
        }
    }
    let snapshot_eversions: BTreeSet<i64> = stored_snapshots.keys().copied().collect();
    let mut found: Vec<Divergence> = Vec::new();
    let mut markers_checked = 0;
    let mut logs_checked = 0;
    let mut snapshots_checked = 0;
    let mut eversions = 0;
    let bar = events_bar(events.len() as u64, "verify");
    fold_events(opened, &events, &bar, |step| {
        visit(step)?;
        let evaluation = &step.outcome.evaluation;
        let eversion = evaluation.eversion;
        eversions = eversion;
        if !found.is_empty() {
            return Ok(());
        }
        if !step.outcome.filled {
            markers_checked += 1;
        }
        if let Some(d) = &step.outcome.divergence {
            found.push(Divergence {
                eversion,
                what: format!("marker at {}", opened.locate(step.outcome.revision)),
                inputs: summarize(step.inputs),
                changes: diff(
                    &marker_json(d.recorded_eversion, &d.recorded_digest)?,
                    &marker_json(d.computed_eversion, &d.computed_digest)?,
                ),
            });
            return Ok(());
        }
        if let Some((revision, stored)) = stored_logs.get(&eversion) {
            logs_checked += 1;
            let recomputed = evaluation.project_log.clone().unwrap_or_else(|| {
                // Not logged by the fold: compare with the state, so the diff
                // shows at least the reasons.
                domain::project_log(step.state, &[])
            });
            if evaluation.project_log.is_none() || &recomputed != stored {
                found.push(Divergence {
                    eversion,
                    what: format!(
                        "{log_stream_name} revision {revision}{}",
                        if evaluation.project_log.is_none() {
                            " (the fold does not log this eversion)"
                        } else {
                            ""
                        }
                    ),
                    inputs: summarize(step.inputs),
                    changes: diff(
                        &json_of("the stored ProjectLog", stored)?,
                        &json_of("the recomputed ProjectLog", &recomputed)?,
                    ),
                });
                return Ok(());
            }
        }
        if snapshot_eversions.contains(&eversion) {
            let (revision, stored) = &stored_snapshots[&eversion];
            snapshots_checked += 1;
            let recomputed = proto::ProjectSnapshot {
                eversion,
                source_revision: step.outcome.revision,
                state_digest: step.outcome.marker.state_digest.clone(),
                state: Some(step.state.clone()),
            };
            if &recomputed != stored {
                found.push(Divergence {
                    eversion,
                    what: format!("{snapshot_stream_name} revision {revision}"),
                    inputs: summarize(step.inputs),
                    changes: diff(
                        &json_of("the stored snapshot", stored)?,
                        &json_of("the recomputed snapshot", &recomputed)?,
                    ),
                });
            }
        }
        Ok(())
    })?;
    for (eversion, (revision, _)) in stored_logs.range(eversions + 1..) {
        warnings.push(format!(
            "{log_stream_name} revision {revision}: eversion {eversion} is beyond the stream's last eversion {eversions}"
        ));
    }
    for (eversion, (revision, _)) in stored_snapshots.range(eversions + 1..) {
        warnings.push(format!(
            "{snapshot_stream_name} revision {revision}: eversion {eversion} is beyond the stream's last eversion {eversions}"
        ));
    }
    Ok(VerifyReport {
        events: events.len(),
        eversions,
        markers_checked,
        logs_checked,
        snapshots_checked,
        warnings,
        divergence: found.into_iter().next(),
    })
}
