//! The pure fold: the Project Manager's state machine and triager.
//!
//! Nothing here does I/O, reads a clock, draws randomness or iterates an
//! unordered collection: time, ids and configuration are arguments.
//!
//! The fold is driven by two calls, in stream order:
//! * [`apply_event`] records an input event: it updates the known CL, Run
//!   and config versions and adds the event to the pending set;
//! * [`evaluate`] runs one PM invocation over the pending events at the
//!   marker's `now` (luci-pm.md §5–§7) and returns what it decided as data
//!   ([`Evaluation`]): log reasons, actions, the `ProjectLog` and
//!   `ProjectStateOffload` records to write, and a trace of ignored inputs.

mod apply;
pub mod config;
mod evaluate;
mod exec_deferred;
mod handlers;
mod invocation;
mod memo;
mod partition;
pub mod pcl;
pub mod time;
pub mod triage_api;
pub mod triage_stub;
pub mod triager;

use crate::proto::Timestamp;

use crate::proto;
use triage_api::{PmView, TriageError, TriageResult};

pub use apply::{known_run, known_run_position, sort_known_runs};
pub use evaluate::{project_log, without_pcls};
pub use exec_deferred::panic_message;
pub use invocation::{cancel_reason, run_status_ended};
pub use memo::Memo;
pub use triager::memo::RunIdMemo;

/// A triager: decides what to do with one component given a read-only view
/// of the project (the original's `itriager.Triage`).
pub type TriageFn = fn(&proto::Component, &PmView<'_>) -> Result<TriageResult, TriageError>;

/// The triager [`evaluate`] uses.
pub const TRIAGER: TriageFn = triager::triage;

/// What one invocation decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The eversion the invocation saved.
    pub eversion: i64,
    /// Why the state is logged: sorted, deduplicated, including `FYI_PERIODIC`.
    pub reasons: Vec<proto::project_log::LogReason>,
    /// The actions, in a fixed order: first those the original performs while
    /// computing the transitions (`PokePoller`, `PokeRuns`, `CreateRun`), then
    /// the transactional ones (`CancelRuns`, `UpdateRunsConfig`, `PurgeCl`,
    /// `TriggerClDeps`), each group in transition order.
    pub actions: Vec<proto::action::Action>,
    /// The `ProjectLog` to write, if `reasons` is not empty.
    pub project_log: Option<proto::ProjectLog>,
    /// The `ProjectStateOffload` to write, if status or config hash changed.
    pub offload: Option<proto::ProjectStateOffload>,
    /// Warnings: invalid or ignored inputs, caught triage bugs.
    pub trace: Vec<String>,
    /// The PCLs the invocation changed or added, sorted (removed ones are
    /// not listed); `None`: any PCL may have changed. What a digest of the
    /// state kept from before the invocation must hash again.
    pub changed_pcls: Option<Vec<i64>>,
    /// The known Runs the invocation forgot (ended more than 7 days ago), in
    /// id order.
    pub forgotten_runs: Vec<String>,
}

impl Evaluation {
    /// The `CreateRun` actions, in order.
    pub fn create_runs(&self) -> Vec<&proto::CreateRun> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                proto::action::Action::CreateRun(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The `PurgeCl` actions, in order.
    pub fn purges(&self) -> Vec<&proto::PurgeCl> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                proto::action::Action::PurgeCl(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The actions as `Action` messages, with the eversion and their index.
    pub fn wrapped_actions(&self) -> Vec<proto::Action> {
        self.actions
            .iter()
            .enumerate()
            .map(|(index, action)| proto::Action {
                eversion: self.eversion,
                index: i32::try_from(index).expect("fewer than 2^31 actions"),
                action: Some(action.clone()),
            })
            .collect()
    }
}

/// Why an event cannot be folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// An `Evaluated` marker was given to [`apply_event`]; markers go to [`evaluate`].
    #[error(
        "revision {revision}: an Evaluated marker is not an input event (evaluate it instead)"
    )]
    UnexpectedMarker {
        /// Revision of the marker.
        revision: u64,
    },
    /// An `Evaluated` marker without `now`.
    #[error("revision {revision}: the Evaluated marker has no `now`")]
    MarkerWithoutNow {
        /// Revision of the marker.
        revision: u64,
    },
    /// A revision that does not follow the last one folded.
    #[error("revision {actual} is out of order: expected revision {expected}")]
    RevisionOutOfOrder {
        /// The next revision the fold expects.
        expected: u64,
        /// The revision given.
        actual: u64,
    },
    /// An event from another project's stream.
    #[error("revision {revision}: event of stream {stream:?} folded into project {project:?}")]
    WrongProject {
        /// Revision of the event.
        revision: u64,
        /// The event's stream.
        stream: String,
        /// The project being folded.
        project: String,
    },
    /// A stored event that does not decode.
    #[error("revision {revision}: {message}")]
    Undecodable {
        /// Revision of the event.
        revision: u64,
        /// What is wrong.
        message: String,
    },
}

/// The state of a project before its first event.
pub fn new_project(luci_project: &str) -> proto::ProjectState {
    proto::ProjectState {
        luci_project: luci_project.to_string(),
        pstate: Some(proto::PState {
            luci_project: luci_project.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Records an input event (not a marker): updates known entities, adds to pending. Never panics.
pub fn apply_event(
    state: &mut proto::ProjectState,
    revision: u64,
    event: &proto::input_event::Event,
) -> Result<(), FoldError> {
    apply::apply_event(state, revision, event)
}

/// Runs one PM invocation at `now` over pending (the Evaluated marker) and bumps eversion.
pub fn evaluate(state: &mut proto::ProjectState, revision: u64, now: Timestamp) -> Evaluation {
    evaluate_with(state, revision, now, TRIAGER)
}

/// [`evaluate`] with a given triager (tests inject triagers here).
pub fn evaluate_with(
    state: &mut proto::ProjectState,
    revision: u64,
    now: Timestamp,
    triage: TriageFn,
) -> Evaluation {
    evaluate::evaluate(state, revision, now, triage, None)
}

/// [`evaluate_with`] with what earlier invocations of `state` left in
/// `memo` (see [`Memo`]), which it updates: the same evaluation, without
/// planning again the Runs planned before or looking at every known Run.
/// `memo` must have followed `state` through every earlier invocation
/// since it was last cleared.
pub fn evaluate_remembering(
    state: &mut proto::ProjectState,
    revision: u64,
    now: Timestamp,
    triage: TriageFn,
    memo: &mut Memo,
) -> Evaluation {
    evaluate::evaluate(state, revision, now, triage, Some(memo))
}
