//! Loading a project's state from a store: the newest valid snapshot at or
//! below the target, then the fold of the stream's tail.
//!
//! A snapshot that does not decode, or whose digest does not match its
//! state, is skipped with a warning; the next older one (or the start of the
//! stream) is used instead.

use prost::Message;

use crate::domain::{self, FoldError};
use crate::fold::{self, FoldOutcome};
use crate::notifier::project_stream;
use crate::proto::{ProjectSnapshot, ProjectState};
use crate::store::{Direction, EventStore, ReadFrom, StoreError};

use super::derived::{snapshot_stream, SNAPSHOT_INTERVAL_EVERSIONS};

/// How many events a load reads per page.
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
    /// The stream has an event the fold rejects.
    #[error("project {project:?}: {source}")]
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
            let below = u64::try_from((n - 1).max(0)).unwrap_or(0);
            (below / SNAPSHOT_INTERVAL_EVERSIONS as u64)
                .saturating_sub(1)
                .min(last)
        }
        Target::Latest | Target::Revision(_) => last,
    }
}

/// The newest valid snapshot that fits the target, with warnings about the
/// invalid ones skipped.
pub async fn newest_snapshot<S: EventStore>(
    store: &S,
    project: &str,
    target: Target,
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
            let snapshot = match ProjectSnapshot::decode(record.data.as_slice()) {
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
            let Some(state) = &snapshot.state else {
                warnings.push(format!(
                    "{stream} revision {}: snapshot has no state; skipped",
                    record.revision
                ));
                continue;
            };
            if state.luci_project != project || fold::state_digest(state) != snapshot.state_digest {
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
    let (snapshot, warnings) = newest_snapshot(store, project, target).await?;
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
        'pages: loop {
            let page = store
                .read_stream(
                    &stream,
                    ReadFrom::Revision(fold::next_revision(&state)),
                    Direction::Forwards,
                    LOAD_PAGE_EVENTS,
                )
                .await?;
            if page.is_empty() {
                break;
            }
            for record in &page {
                let outcome =
                    fold::apply_recorded(&mut state, record).map_err(|source| LoadError::Fold {
                        project: project.to_string(),
                        source,
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
