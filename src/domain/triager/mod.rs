//! The triager (domain/luci-pm.md §7): a pure function deciding, for one
//! component, which Runs to create, which CL triggers to purge, which deps to
//! vote on (chained CQ votes), and when to triage the component again.
//!
//! It is a re-implementation of the original's `triager` package behind the
//! `itriager` contract of `super::triage_api`. Differences forced by purity
//! (DESIGN §6, §11):
//! * Time is `PmView::now`; nothing reads a clock.
//! * The "does this Run exist" check reads the known Runs of the view; a Run
//!   the PM requested less than a minute ago and not yet seen is not
//!   requested again (the component waits until a minute after the request).
//! * A Run's `operation_id` is derived from (project, run id), not random
//!   (see [`run_id::operation_id`]).
//! * Only ordered collections are iterated. Outputs are in a fixed order:
//!   Runs by first CL in component order (a CL's CQ-vote Run before its
//!   NEW_PATCHSET_RUN Run), purges by clid, dep votes by origin clid; combo
//!   members are sorted by clid, and on exact trigger-time ties the "latest
//!   triggered" CL is the first in clid order.
//! * Where the original panics, `TriageError::Bug` is returned; the triager
//!   never panics on data.

pub(crate) mod cls;
pub(crate) mod creator;
pub(crate) mod deps;
pub mod memo;
pub(crate) mod purges;
pub mod run_id;
pub(crate) mod runs;
pub(crate) mod trigger_deps;

#[cfg(test)]
mod tests;

use crate::domain::triage_api::{PmView, TriageError, TriageResult};
use crate::proto::{self, Pcl, Trigger, Triggers};

use crate::domain::time::{checked_from_nanos, earliest, is_same_time, Nanos};

/// Run mode of a CQ+1 vote.
pub(crate) const DRY_RUN: &str = "DRY_RUN";
/// Run mode of a CQ+2 vote.
pub(crate) const FULL_RUN: &str = "FULL_RUN";
/// Legacy quick dry run mode.
pub(crate) const QUICK_DRY_RUN: &str = "QUICK_DRY_RUN";
/// Run mode of a new patchset upload.
pub(crate) const NEW_PATCHSET_RUN: &str = "NEW_PATCHSET_RUN";
/// Maximum number of non-submitted deps of a CL (`maxAllowedDeps`).
pub(crate) const MAX_ALLOWED_DEPS: usize = 240;

/// Which trigger of a CL a Run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TriggerKind {
    /// The Commit-Queue vote trigger.
    CqVote,
    /// The new-patchset-upload trigger.
    NewPatchset,
}

impl TriggerKind {
    /// The trigger of this kind, if any.
    pub(crate) fn choose(self, triggers: Option<&Triggers>) -> Option<&Trigger> {
        let triggers = triggers?;
        match self {
            TriggerKind::CqVote => triggers.cq_vote_trigger.as_ref(),
            TriggerKind::NewPatchset => triggers.new_patchset_run_trigger.as_ref(),
        }
    }
}

/// The normalised timestamp of an instant; an instant beyond the `i64`
/// seconds range is a bug of the data, reported rather than panicked on.
pub(crate) fn to_timestamp(n: Nanos) -> Result<crate::proto::Timestamp, TriageError> {
    checked_from_nanos(n)
        .ok_or_else(|| TriageError::Bug(format!("time {n}ns is out of the timestamp range")))
}

/// The CQ-vote trigger of a PCL.
pub(crate) fn cq_trigger(pcl: &Pcl) -> Option<&Trigger> {
    TriggerKind::CqVote.choose(pcl.triggers.as_ref())
}

/// The new-patchset trigger of a PCL.
pub(crate) fn npr_trigger(pcl: &Pcl) -> Option<&Trigger> {
    TriggerKind::NewPatchset.choose(pcl.triggers.as_ref())
}

/// Triages one component: what to do now and when to triage it again.
///
/// Pure: reads only `component` and `view`, and returns the same result for
/// the same input. The `new_value` is set whenever the input had
/// `triage_required`; it is a copy with `triage_required = false` and the
/// next decision time (unset while Runs, purges or dep votes are in flight).
pub fn triage(
    component: &proto::Component,
    view: &PmView<'_>,
) -> Result<TriageResult, TriageError> {
    let mut cls = cls::triage_cls(component, view)?;
    let staged = runs::stage_new_runs(component, &mut cls, view)?;
    let (cls_to_purge, next_purge) = purges::stage_purges(&cls, view)?;
    let cls_to_trigger_deps = trigger_deps::stage_trigger_cl_deps(&cls, view)?;

    let mut res = TriageResult {
        runs_to_create: staged.runs,
        new_value: None,
        cls_to_purge,
        cls_to_trigger_deps,
    };
    if !res.runs_to_create.is_empty()
        || !res.cls_to_purge.is_empty()
        || !res.cls_to_trigger_deps.is_empty()
    {
        // The operations' completion events will trigger the next triage.
        res.new_value = Some(proto::Component {
            triage_required: false,
            decision_time: None,
            ..component.clone()
        });
        return Ok(res);
    }
    let next = earliest(next_purge, staged.next);
    if component.triage_required || !is_same_time(next, component.decision_time.as_ref()) {
        res.new_value = Some(proto::Component {
            triage_required: false,
            decision_time: next.map(to_timestamp).transpose()?,
            ..component.clone()
        });
    }
    Ok(res)
}
