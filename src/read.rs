//! The read side: what a project looked like at an eversion (or now), from
//! a store. The gRPC read RPCs, the CLI read commands, `pm-replay` and the
//! projector all read through here.
//!
//! * [`load`]: the state at a target, from the newest valid snapshot at or
//!   below it plus the fold of the stream's tail. A snapshot that does not
//!   decode, or whose digest does not match its state, is skipped with a
//!   warning; the next older one (or the start of the stream) is used.
//! * [`project_log`]: the `ProjectLog` at an eversion, with the one rule for
//!   historic logs: the reasons are those of the marker that produced the
//!   eversion (empty for the latest state, which is not a log entry).
//! * [`read_all`] and [`decode`]: every event of a stream, and a derived
//!   event's message.
//! * [`action_line`]: the JSON line of an action, as the CLI and `pm-replay`
//!   print it.

use prost::Message;

use crate::domain::{self, FoldError};
use crate::fold::{self, FoldOutcome};
use crate::proto::{self, ProjectSnapshot, ProjectState};
use crate::store::{Direction, EventStore, ReadFrom, RecordedEvent, StoreError};
use crate::streams::{action_type, project_stream, snapshot_stream, SNAPSHOT_INTERVAL_EVERSIONS};

/// How many events a load (and [`read_all`]) reads per page.
pub const LOAD_PAGE_EVENTS: usize = 4_096;

/// How far to fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Through the last event of the stream.
    Latest,
    /// Through this revision (inclusive).
    Revision(u64),
    /// Through the marker that produced this eversion.
    Eversion(i64),
}

/// A loaded state.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The state at the target.
    pub state: ProjectState,
    /// The outcome of the last marker folded (not of one inside the snapshot).
    pub last_outcome: Option<FoldOutcome>,
    /// The eversion of the snapshot the load started from, if any.
    pub snapshot_eversion: Option<i64>,
    /// Problems met on the way (skipped snapshots), for the operator.
    pub warnings: Vec<String>,
}

/// Why a state cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream has an event the fold rejects: the service quarantines
    /// the project, and every reader says so in these words.
    #[error("project {project:?} is quarantined: {}: {source}", project_stream(.project))]
    Fold {
        /// The project.
        project: String,
        /// The fold's error (names the revision).
        source: FoldError,
    },
    /// The stream never reaches the target.
    #[error("project {project:?} has no eversion {eversion} (latest is {latest})")]
    NoSuchEversion {
        /// The project.
        project: String,
        /// The eversion asked for.
        eversion: i64,
        /// The latest eversion of the stream.
        latest: i64,
    },
}

/// Whether a snapshot is usable for a target.
fn fits(snapshot: &ProjectSnapshot, target: Target) -> bool {
    match target {
        Target::Latest => true,
        Target::Revision(r) => snapshot.source_revision <= r,
        // Strictly below, so that the marker of the target eversion is folded
        // and its outcome (reasons, actions) is known.
        Target::Eversion(n) => snapshot.eversion < n,
    }
}

/// How many events to read first when folding from `state` to `target`:
/// for an eversion, about what the stream has held per eversion so far
/// times the eversions to go (with a margin), so that a rebuild from a
/// snapshot reads its tail in one page instead of a whole
/// [`LOAD_PAGE_EVENTS`] page; otherwise a whole page. Only the page sizes
/// depend on it, never what is folded.
fn first_page_events(state: &ProjectState, target: Target) -> usize {
    let Target::Eversion(n) = target else {
        return LOAD_PAGE_EVENTS;
    };
    let (Ok(done), Ok(to_go)) = (
        u64::try_from(state.eversion),
        u64::try_from(n.saturating_sub(state.eversion)),
    ) else {
        return LOAD_PAGE_EVENTS;
    };
    if done == 0 {
        return LOAD_PAGE_EVENTS;
    }
    let per_eversion = (state.last_revision + 1).div_ceil(done);
    let estimate = to_go.saturating_mul(per_eversion).saturating_mul(5) / 4 + 64;
    usize::try_from(estimate).map_or(LOAD_PAGE_EVENTS, |e| e.min(LOAD_PAGE_EVENTS))
}

/// How many snapshots one read of the snapshot stream returns.
const SNAPSHOT_PAGE: usize = 8;

/// Where to start looking for a snapshot of an eversion below `n`: the
/// projector writes one every [`SNAPSHOT_INTERVAL_EVERSIONS`], so revision
/// `k` normally holds eversion `(k + 1) × 100`. The guess only saves reads: a
/// stream written otherwise is still searched backwards from the guess and
/// gives a correct, maybe older, snapshot.
fn first_candidate(target: Target, last: u64) -> u64 {
    match target {
        Target::Eversion(n) => {
            let below = u64::try_from(n.saturating_sub(1).max(0)).unwrap_or(0);
            (below / SNAPSHOT_INTERVAL_EVERSIONS as u64)
                .saturating_sub(1)
                .min(last)
        }
        Target::Latest | Target::Revision(_) => last,
    }
}

/// The newest valid snapshot that fits the target, with warnings about the
/// invalid ones skipped. `digester` checks the digests and then follows the
/// snapshot returned.
async fn newest_snapshot<S: EventStore>(
    store: &S,
    project: &str,
    target: Target,
    digester: &mut fold::Digester,
) -> Result<(Option<ProjectSnapshot>, Vec<String>), StoreError> {
    let stream = snapshot_stream(project);
    let mut warnings = Vec::new();
    let Some(last) = store.stream_revision(&stream).await? else {
        return Ok((None, warnings));
    };
    let mut next = Some(first_candidate(target, last));
    while let Some(from) = next {
        let records = store
            .read_stream(
                &stream,
                ReadFrom::Revision(from),
                Direction::Backwards,
                SNAPSHOT_PAGE,
            )
            .await?;
        next = match records.last() {
            Some(oldest) if oldest.revision > 0 && records.len() == SNAPSHOT_PAGE => {
                Some(oldest.revision - 1)
            }
            _ => None,
        };
        for record in records {
            let mut snapshot = match ProjectSnapshot::decode(record.data.as_slice()) {
                Ok(snapshot) => snapshot,
                Err(err) => {
                    warnings.push(format!(
                        "{stream} revision {}: snapshot does not decode ({err}); skipped",
                        record.revision
                    ));
                    continue;
                }
            };
            if !fits(&snapshot, target) {
                continue;
            }
            let Some(state) = &mut snapshot.state else {
                warnings.push(format!(
                    "{stream} revision {}: snapshot has no state; skipped",
                    record.revision
                ));
                continue;
            };
            // Snapshots written before the known Runs were kept in
            // descending order have them ascending.
            domain::sort_known_runs(state);
            // Each candidate is hashed afresh; the digester then follows the
            // snapshot's state for the fold of the tail.
            if state.luci_project != project || !digester.matches(state, &snapshot.state_digest) {
                warnings.push(format!(
                    "{stream} revision {}: snapshot of eversion {} does not match its digest; skipped",
                    record.revision, snapshot.eversion
                ));
                continue;
            }
            return Ok((Some(snapshot), warnings));
        }
    }
    Ok((None, warnings))
}

/// Loads a project's state at `target` (see the module documentation).
pub async fn load<S: EventStore>(
    store: &S,
    project: &str,
    target: Target,
) -> Result<Loaded, LoadError> {
    let mut digester = fold::Digester::default();
    let (snapshot, warnings) = newest_snapshot(store, project, target, &mut digester).await?;
    for warning in &warnings {
        tracing::warn!(project, "{warning}");
    }
    let snapshot_eversion = snapshot.as_ref().map(|s| s.eversion);
    let mut state = snapshot
        .and_then(|s| s.state)
        .unwrap_or_else(|| domain::new_project(project));
    let mut last_outcome = None;
    let stream = project_stream(project);
    let done = |state: &ProjectState, last: Option<u64>| match target {
        Target::Latest => false,
        Target::Revision(r) => last.is_some_and(|l| l >= r),
        Target::Eversion(n) => state.eversion >= n,
    };
    if !done(&state, None) {
        let mut page_events = first_page_events(&state, target);
        'pages: loop {
            let page = store
                .read_stream(
                    &stream,
                    ReadFrom::Revision(fold::next_revision(&state)),
                    Direction::Forwards,
                    page_events,
                )
                .await?;
            page_events = LOAD_PAGE_EVENTS;
            if page.is_empty() {
                break;
            }
            for record in &page {
                let outcome =
                    fold::apply_recorded(&mut state, record, &mut digester).map_err(|source| {
                        LoadError::Fold {
                            project: project.to_string(),
                            source,
                        }
                    })?;
                if outcome.is_some() {
                    last_outcome = outcome;
                }
                if done(&state, Some(record.revision)) {
                    break 'pages;
                }
            }
        }
    }
    if let Target::Eversion(n) = target {
        if state.eversion != n {
            return Err(LoadError::NoSuchEversion {
                project: project.to_string(),
                eversion: n,
                latest: state.eversion,
            });
        }
    }
    Ok(Loaded {
        state,
        last_outcome,
        snapshot_eversion,
        warnings,
    })
}

/// Which eversion of a project to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The latest state.
    Latest,
    /// The state saved by the marker that produced this eversion.
    Eversion(i64),
}

/// A `ProjectLog` read at an eversion.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadLog {
    /// The `ProjectLog` shape of the state, with the reasons of the marker
    /// that produced it (none for [`At::Latest`]).
    pub log: proto::ProjectLog,
    /// Whether the fold logged this eversion (wrote it to `projectlog-<P>`).
    pub logged: bool,
    /// Snapshots skipped on the way (see [`load`]).
    pub warnings: Vec<String>,
}

/// The `ProjectLog` of `project` at `at`: the one rule for historic logs.
///
/// For an eversion, the state that marker saved with that marker's reasons
/// (what the fold wrote to `projectlog-<P>` if it logged the eversion); for
/// the latest state, no reasons.
pub async fn project_log<S: EventStore>(
    store: &S,
    project: &str,
    at: At,
) -> Result<ReadLog, LoadError> {
    let target = match at {
        At::Latest => Target::Latest,
        At::Eversion(n) => Target::Eversion(n),
    };
    let loaded = load(store, project, target).await?;
    let outcome = match at {
        At::Latest => None,
        At::Eversion(n) => loaded
            .last_outcome
            .as_ref()
            .filter(|o| o.evaluation.eversion == n),
    };
    let reasons = outcome.map_or(&[][..], |o| &o.evaluation.reasons);
    Ok(ReadLog {
        log: domain::project_log(&loaded.state, reasons),
        logged: outcome.is_some_and(|o| o.evaluation.project_log.is_some()),
        warnings: loaded.warnings,
    })
}

/// A project with no event in the store, for the commands that read one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("project {0:?} has no events in this store")]
pub struct NoSuchProject(pub String);

/// Fails with [`NoSuchProject`] unless `project-<P>` has an event.
pub async fn require_project<S: EventStore>(
    store: &S,
    project: &str,
) -> Result<Result<(), NoSuchProject>, StoreError> {
    let head = store.stream_revision(&project_stream(project)).await?;
    Ok(head
        .map(|_| ())
        .ok_or_else(|| NoSuchProject(project.to_string())))
}

/// Every visible event of a stream, in revision order.
pub async fn read_all<S: EventStore>(
    store: &S,
    stream: &str,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::new();
    read_range(store, stream, 0, u64::MAX, |event| {
        events.push(event.clone());
        Ok::<(), StoreError>(())
    })
    .await?;
    Ok(events)
}

/// Calls `visit` with every visible event of a stream from revision `from`
/// through revision `through` (inclusive), in order, one page in memory at a
/// time. Stops at the first error `visit` returns.
pub async fn read_range<S: EventStore, E: From<StoreError>>(
    store: &S,
    stream: &str,
    from: u64,
    through: u64,
    mut visit: impl FnMut(&RecordedEvent) -> Result<(), E>,
) -> Result<(), E> {
    let mut next = from;
    while next <= through {
        let page = store
            .read_stream(
                stream,
                ReadFrom::Revision(next),
                Direction::Forwards,
                LOAD_PAGE_EVENTS,
            )
            .await?;
        let Some(last) = page.last().map(|e| e.revision) else {
            break;
        };
        for event in page.iter().take_while(|e| e.revision <= through) {
            visit(event)?;
        }
        match last.checked_add(1) {
            Some(after) => next = after,
            None => break,
        }
    }
    Ok(())
}

/// A stored derived event that does not decode as its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stream} revision {revision} does not decode: {message}")]
pub struct Undecodable {
    /// The stream.
    pub stream: String,
    /// The event's revision.
    pub revision: u64,
    /// The decoder's message.
    pub message: String,
}

/// The message of a derived event (`ProjectLog`, `Action`, `ProjectSnapshot`, …).
pub fn decode<M: Message + Default>(event: &RecordedEvent) -> Result<M, Undecodable> {
    M::decode(event.data.as_slice()).map_err(|e| Undecodable {
        stream: event.stream.clone(),
        revision: event.revision,
        message: e.to_string(),
    })
}

/// One action as printed by `prjmanager actions` and `pm-replay actions`:
/// `{"eversion":N,"type":"CreateRun","data":{…}}`, fields in this order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActionLine {
    /// The eversion that produced the action.
    pub eversion: i64,
    /// The action's type name.
    #[serde(rename = "type")]
    pub action_type: &'static str,
    /// The action message in proto3 JSON.
    pub data: serde_json::Value,
}

/// The [`ActionLine`] of an action; an error for a value outside proto's
/// range.
pub fn action_line(action: &proto::Action) -> Result<ActionLine, serde_json::Error> {
    use proto::action::Action as A;
    let Some(kind) = &action.action else {
        return Ok(ActionLine {
            eversion: action.eversion,
            action_type: "Unknown",
            data: serde_json::json!({}),
        });
    };
    let data = match kind {
        A::CreateRun(m) => serde_json::to_value(m),
        A::PurgeCl(m) => serde_json::to_value(m),
        A::TriggerClDeps(m) => serde_json::to_value(m),
        A::CancelRuns(m) => serde_json::to_value(m),
        A::UpdateRunsConfig(m) => serde_json::to_value(m),
        A::PokeRuns(m) => serde_json::to_value(m),
        A::PokePoller(m) => serde_json::to_value(m),
    }?;
    Ok(ActionLine {
        eversion: action.eversion,
        action_type: action_type(kind),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_page_of_a_rebuild_is_sized_by_the_eversions_to_go() {
        let mut state = crate::domain::new_project("p");
        // No history to go by: a whole page.
        assert_eq!(
            first_page_events(&state, Target::Eversion(50)),
            LOAD_PAGE_EVENTS
        );
        // 100 eversions in 2,000 events (revisions 0..=1999): 20 per
        // eversion; 50 to go with a quarter more, and a little extra.
        state.eversion = 100;
        state.last_revision = 1_999;
        assert_eq!(first_page_events(&state, Target::Eversion(150)), 1_314);
        assert_eq!(first_page_events(&state, Target::Eversion(101)), 89);
        // Never more than a page, and a whole page for other targets.
        assert_eq!(
            first_page_events(&state, Target::Eversion(100_000)),
            LOAD_PAGE_EVENTS
        );
        assert_eq!(first_page_events(&state, Target::Latest), LOAD_PAGE_EVENTS);
        assert_eq!(
            first_page_events(&state, Target::Revision(5)),
            LOAD_PAGE_EVENTS
        );
        // An eversion behind the state (an error later): a whole page.
        assert_eq!(
            first_page_events(&state, Target::Eversion(90)),
            LOAD_PAGE_EVENTS
        );
    }
}
