//! The one fold of a project stream: decodes a stored event, checks its
//! revision, applies it to the state (input event) or runs the invocation it
//! marks (`Evaluated`), and fills in or checks the marker's eversion and
//! state digest.
//!
//! This lives outside `domain` because it handles bytes (decoding events,
//! encoding the state for its digest); the decisions are all in
//! [`crate::domain`].

use crate::domain::{self, Evaluation, FoldError};
use crate::events;
use crate::proto::{input_event::Event, Evaluated, ProjectState, Timestamp};
use crate::store::RecordedEvent;
use crate::streams::project_stream;

mod digest;

pub use digest::{state_digest, DigestVersion, Digester};

/// The revision the fold expects next: 0 for a state that folded nothing,
/// else the revision after the last one folded.
pub fn next_revision(state: &ProjectState) -> u64 {
    let fresh = state.last_revision == 0 && state.eversion == 0 && state.pending.is_empty();
    if fresh {
        0
    } else {
        state.last_revision + 1
    }
}

/// A recorded marker that disagrees with the recomputation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The eversion the marker carries.
    pub recorded_eversion: i64,
    /// The eversion recomputed.
    pub computed_eversion: i64,
    /// The digest the marker carries.
    pub recorded_digest: Vec<u8>,
    /// The digest recomputed.
    pub computed_digest: Vec<u8>,
}

/// What folding an `Evaluated` marker produced.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldOutcome {
    /// Revision of the marker.
    pub revision: u64,
    /// The invocation's decisions.
    pub evaluation: Evaluation,
    /// The marker as it should be stored: `now`, the new eversion and the
    /// digest of the resulting state.
    pub marker: Evaluated,
    /// The recorded marker left eversion and digest to be filled in.
    pub filled: bool,
    /// The recorded marker disagrees with the recomputation (the recomputed
    /// state is kept).
    pub divergence: Option<Divergence>,
    /// The marker was the one prepared ahead ([`apply_recorded_prepared`]):
    /// its state and evaluation were adopted, not computed again.
    pub adopted: bool,
}

/// A marker's invocation computed before the marker is appended (the
/// projector computes it to fill in the marker's eversion and digest): the
/// state it leads to and its evaluation.
#[derive(Debug, Clone)]
pub struct PreparedMarker {
    /// The revision the marker is to be stored at: the state's next revision.
    pub revision: u64,
    /// The marker to append: `now`, the new eversion and the state digest.
    pub marker: Evaluated,
    /// The state after the invocation.
    state: ProjectState,
    /// The invocation's decisions.
    evaluation: Evaluation,
}

/// Runs the invocation of a marker at `now` on a copy of `state`, as folding
/// that marker at the state's next revision will.
pub fn prepare_marker(
    state: &ProjectState,
    now: Timestamp,
    digester: &mut Digester,
) -> PreparedMarker {
    let revision = next_revision(state);
    let mut next = state.clone();
    let evaluation = domain::evaluate_remembering(
        &mut next,
        revision,
        now,
        domain::TRIAGER,
        digester.memo_at(revision),
    );
    digester.marker_run(&next, revision, &evaluation);
    let marker = Evaluated {
        now: Some(now),
        eversion: evaluation.eversion,
        state_digest: digester.followed_digest_as(&mut next, digest::CURRENT),
    };
    PreparedMarker {
        revision,
        marker,
        state: next,
        evaluation,
    }
}

/// Folds one stored event of the project's stream into `state`.
///
/// Returns `Ok(None)` for an input event and the outcome for a marker. A
/// marker whose eversion and digest are unset (0 and empty) is filled in
/// (with the current digest version); a marker that disagrees is a
/// divergence, reported in the outcome, not an error. A recorded digest is
/// checked in the version it carries. `digester` follows `state`: pass the
/// same one for every event folded into it (one that missed an event hashes
/// everything again at the next marker).
pub fn apply_recorded(
    state: &mut ProjectState,
    event: &RecordedEvent,
    digester: &mut Digester,
) -> Result<Option<FoldOutcome>, FoldError> {
    apply_recorded_prepared(state, event, None, digester)
}

/// [`apply_recorded`], adopting a marker prepared ahead instead of evaluating
/// it again.
///
/// `prepared` must have been prepared (by [`prepare_marker`]) from `state` as
/// it is now. It is adopted only when `event` is exactly that marker: at the
/// revision it was prepared for, with the same `now`, eversion and digest.
/// The invocation is a function of the state, the revision and `now`, so the
/// adopted state and evaluation are those the fold would compute. Anything
/// else (an input event, another process's marker) is folded normally and
/// the preparation is dropped.
pub fn apply_recorded_prepared(
    state: &mut ProjectState,
    event: &RecordedEvent,
    prepared: Option<PreparedMarker>,
    digester: &mut Digester,
) -> Result<Option<FoldOutcome>, FoldError> {
    let revision = event.revision;
    let stream = project_stream(&state.luci_project);
    if event.stream != stream {
        return Err(FoldError::WrongProject {
            revision,
            stream: event.stream.clone(),
            project: state.luci_project.clone(),
        });
    }
    let expected = next_revision(state);
    if revision != expected {
        return Err(FoldError::RevisionOutOfOrder {
            expected,
            actual: revision,
        });
    }
    let decoded =
        events::decode(&event.event_type, &event.data).map_err(|err| FoldError::Undecodable {
            revision,
            message: err.to_string(),
        })?;
    let Event::Evaluated(recorded) = decoded else {
        domain::apply_event(state, revision, &decoded)?;
        digester.input_recorded(state, revision, &decoded);
        return Ok(None);
    };
    if let Some(prepared) = prepared.filter(|p| {
        p.revision == revision && p.marker == recorded && p.marker.eversion == state.eversion + 1
    }) {
        *state = prepared.state;
        return Ok(Some(FoldOutcome {
            revision,
            evaluation: prepared.evaluation,
            marker: prepared.marker,
            filled: false,
            divergence: None,
            adopted: true,
        }));
    }
    let now = recorded
        .now
        .ok_or(FoldError::MarkerWithoutNow { revision })?;
    let evaluation = domain::evaluate_remembering(
        state,
        revision,
        now,
        domain::TRIAGER,
        digester.memo_at(revision),
    );
    digester.marker_run(state, revision, &evaluation);
    let version = match recorded.state_digest.as_slice() {
        [] => digest::CURRENT,
        recorded => DigestVersion::of(recorded).unwrap_or(digest::CURRENT),
    };
    let digest = digester.followed_digest_as(state, version);
    let filled = recorded.eversion == 0 && recorded.state_digest.is_empty();
    let eversion_differs = recorded.eversion != 0 && recorded.eversion != evaluation.eversion;
    let digest_differs = !recorded.state_digest.is_empty() && recorded.state_digest != digest;
    let divergence = (eversion_differs || digest_differs).then(|| Divergence {
        recorded_eversion: recorded.eversion,
        computed_eversion: evaluation.eversion,
        recorded_digest: recorded.state_digest.clone(),
        computed_digest: digest.clone(),
    });
    Ok(Some(FoldOutcome {
        revision,
        marker: Evaluated {
            now: Some(now),
            eversion: evaluation.eversion,
            state_digest: digest,
        },
        evaluation,
        filled,
        divergence,
        adopted: false,
    }))
}
