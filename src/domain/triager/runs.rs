//! Run staging (domain/luci-pm.md §7.5, the original's `runs.go`): which new
//! Runs to create now, and when to look again if none can be created yet.
//!
//! Runs are staged per CL in the component's clid order; a CQ-vote Run of a
//! CL comes before its NEW_PATCHSET_RUN Run. The staged Runs are CL-wise
//! disjoint.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::triage_api::{PmView, TriageError};
use crate::proto::cl_error::{Kind, ReusedTrigger};
use crate::proto::{dep::DepKind, pcl, ClError, Component, CreateRun, Pcl};

use super::cls::ClInfo;
use super::creator::{build_run, plan_run, Combo, RunPlan};
use super::{TriggerKind, FULL_RUN, NEW_PATCHSET_RUN};
use crate::domain::time::{
    duration_nanos, nanos_if_set, to_nanos, Nanos, MINUTE_NANOS, SECOND_NANOS,
};

/// How long to wait before re-checking a Run that exists but is not yet known
/// as a component Run.
pub(crate) const EXISTING_RUN_RECHECK_DELAY: Nanos = 5 * SECOND_NANOS;
/// How long after a Run ended (or was requested) before acting on its trigger again.
pub(crate) const RECENT_RUN_WAIT: Nanos = MINUTE_NANOS;

/// The Runs staged for creation and the earliest time to triage again.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StagedRuns {
    /// Runs to create now, ordered by first CL, CQ-vote Run before NPR Run.
    pub(crate) runs: Vec<CreateRun>,
    /// When Run creation should be reconsidered without an external event.
    pub(crate) next: Option<Nanos>,
}

/// What the existence check decided for a Run that exists or was requested.
enum Existing {
    /// The PM requested this Run at this time, less than a minute ago, and
    /// has not seen it yet: do not ask again until a minute after.
    Requested(Nanos),
    /// Do not create it; look again at this time (or on an external event).
    Wait(Option<Nanos>),
    /// The Run ended long ago: the trigger was reused; purge it.
    Reused(String),
}

/// A Run staging decided to create, unless its deps say to wait: the
/// `CreateRun` is built only once that is settled (see [`RunPlan`]).
struct Candidate<'v> {
    plan: RunPlan<'v>,
    combo: Combo,
    kind: TriggerKind,
}

/// Stages new Runs for the component (the original's `stageNewRuns`).
///
/// May add `reused_trigger` purge reasons to the CLs of a combo whose Run
/// already ended more than a minute ago.
///
/// Every combo is planned (checked, RunID computed) where the original builds
/// its `CreateRun`, with the same errors; the action itself is built only for
/// the Runs created now.
pub(crate) fn stage_new_runs<'v>(
    component: &Component,
    cls: &mut BTreeMap<i64, ClInfo<'v>>,
    view: &PmView<'v>,
) -> Result<StagedRuns, TriageError> {
    let mut stage = RunStage {
        component,
        view,
        visited: BTreeSet::new(),
        reverse_deps: None,
    };
    let mut next = None;
    let mut candidates = Vec::new();
    for &clid in &component.clids {
        let (runs, t) = stage.stage_new_runs_from(clid, cls)?;
        if runs.is_empty() {
            next = crate::domain::time::earliest(next, t);
        } else {
            candidates.extend(runs);
        }
    }
    let mut runs = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let (create_now, dep_runs) = resolve_dep_runs(&candidate, cls, component, view)?;
        if create_now {
            let Candidate { plan, combo, kind } = candidate;
            let mut rc = build_run(view, component, cls, &combo, plan, kind);
            rc.dep_runs.extend(dep_runs);
            runs.push(rc);
        }
    }
    Ok(StagedRuns { runs, next })
}

/// Maps a CLID to the component CLs that depend on it (non-submitted deps of
/// CLs whose deps were triaged), each list ascending.
fn reverse_deps(cls: &BTreeMap<i64, ClInfo<'_>>) -> BTreeMap<i64, Vec<i64>> {
    let mut rev: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (&clid, info) in cls {
        if let Some(deps) = &info.deps {
            for dep in deps.not_submitted(info.pcl) {
                rev.entry(dep.clid).or_default().push(clid);
            }
        }
    }
    rev
}

struct RunStage<'s, 'v> {
    component: &'s Component,
    view: &'s PmView<'v>,
    /// CLs already considered for a CQ-vote Run (at most one per CL).
    visited: BTreeSet<i64>,
    /// Built on first use: only `combine_cls` groups expand combos. The
    /// deps it is built from do not change while Runs are staged.
    reverse_deps: Option<BTreeMap<i64, Vec<i64>>>,
}

impl<'v> RunStage<'_, 'v> {
    fn stage_new_runs_from(
        &mut self,
        clid: i64,
        cls: &mut BTreeMap<i64, ClInfo<'v>>,
    ) -> Result<(Vec<Candidate<'v>>, Option<Nanos>), TriageError> {
        let Some(info) = cls.get(&clid) else {
            return Ok((Vec::new(), None));
        };
        let (cq_ready, npr_ready) = (info.cq_ready, info.npr_ready);
        let mut runs = Vec::new();
        let mut next = None;
        if cq_ready {
            let (cq_runs, t) = self.stage_new_cq_vote_runs_from(clid, cls)?;
            runs.extend(cq_runs);
            next = crate::domain::time::earliest(t, next);
        }
        if npr_ready {
            let (npr_runs, t) = self.stage_new_patchset_runs_from(clid, cls)?;
            runs.extend(npr_runs);
            next = crate::domain::time::earliest(t, next);
        }
        Ok((runs, next))
    }

    fn stage_new_patchset_runs_from(
        &mut self,
        clid: i64,
        cls: &mut BTreeMap<i64, ClInfo<'v>>,
    ) -> Result<(Vec<Candidate<'v>>, Option<Nanos>), TriageError> {
        let info = &cls[&clid];
        let cg_index = first_config_group(info.pcl)?;
        let combo = Combo::new([info], TriggerKind::NewPatchset);
        if info
            .run_indexes
            .iter()
            .any(|&ri| self.component.pruns[ri].mode == NEW_PATCHSET_RUN)
        {
            // A Run with the same mode and CL exists: wait for it to end.
            return Ok((Vec::new(), None));
        }
        self.plan_and_decide(combo, cls, cg_index, TriggerKind::NewPatchset)
    }

    fn stage_new_cq_vote_runs_from(
        &mut self,
        clid: i64,
        cls: &mut BTreeMap<i64, ClInfo<'v>>,
    ) -> Result<(Vec<Candidate<'v>>, Option<Nanos>), TriageError> {
        if !self.visited.insert(clid) {
            return Ok((Vec::new(), None));
        }
        let info = &cls[&clid];
        let cg_index = first_config_group(info.pcl)?;
        let cg = self.view.config_group(cg_index).ok_or_else(|| {
            TriageError::Bug(format!(
                "CL {clid}: config group index {cg_index} is out of range"
            ))
        })?;

        let mut members = BTreeSet::from([clid]);
        if cg.combine_cls.is_some() {
            // Maximize the Run: all reachable deps and dependents, recursively.
            self.expand_combo(clid, cls, &mut members);
        }
        let combo = Combo::new(members.iter().map(|c| &cls[c]), TriggerKind::CqVote);

        if let Some(combine) = &cg.combine_cls {
            let delay = combine
                .stabilization_delay
                .as_ref()
                .map_or(0, duration_nanos);
            if let Some(max) = combo.max_triggered_time {
                let next = max + delay;
                if next > to_nanos(&self.view.now) {
                    // Users may still change their mind: decide later.
                    return Ok((Vec::new(), Some(next)));
                }
            }
        }
        if combo.with_not_yet_loaded_deps.is_some() {
            // Woken up by the dep's CLUpdated event (may wait forever, as the original).
            return Ok((Vec::new(), None));
        }
        if !combo.not_ready.is_empty() {
            return Ok((Vec::new(), None));
        }
        if cg.combine_cls.is_some() {
            // All CLs are stable and ready: every open dep must be inside.
            for member in &combo.all {
                let m = &cls[member];
                let deps = m.deps.as_ref().ok_or_else(|| {
                    TriageError::Bug(format!(
                        "combo {:?}: CL {member} without triaged deps",
                        combo.all
                    ))
                })?;
                if let Some(dep) = deps
                    .not_submitted(m.pcl)
                    .find(|d| !members.contains(&d.clid))
                {
                    return Err(TriageError::Bug(format!(
                        "combo {:?} has missing deps [{}]",
                        combo.all, dep.clid
                    )));
                }
            }
        }
        let mut groups = BTreeSet::new();
        for member in &combo.all {
            groups.insert(first_config_group(cls[member].pcl)?);
        }
        if groups.len() > 1 {
            return Err(TriageError::Bug(format!(
                "combo {:?} has >1 config groups: {groups:?}",
                combo.all
            )));
        }

        // Overlap with existing Runs (NEW_PATCHSET_RUN Runs do not count).
        let mut overlapping: BTreeMap<usize, usize> = BTreeMap::new();
        for member in &combo.all {
            for &ri in &cls[member].run_indexes {
                *overlapping.entry(ri).or_insert(0) += 1;
            }
        }
        for (&ri, &shared) in &overlapping {
            let prun = &self.component.pruns[ri];
            if prun.mode == NEW_PATCHSET_RUN {
                continue;
            }
            let run_len = prun.clids.len();
            if run_len < shared || (run_len == shared && shared > combo.all.len()) {
                return Err(TriageError::Bug(format!(
                    "impossible overlap of combo {:?} with Run {:?}",
                    combo.all, prun.id
                )));
            }
            // The Run has other CLs (the Run Manager will finalize it soon),
            // the same CLs (nothing to do), or fewer CLs (wait for it to end;
            // CQDaemon would have cancelled it): wait in every case.
            return Ok((Vec::new(), None));
        }

        self.plan_and_decide(combo, cls, cg_index, TriggerKind::CqVote)
    }

    /// Adds to `members` every component CL reachable through non-submitted
    /// deps and reverse deps, marking each visited.
    fn expand_combo(
        &mut self,
        start: i64,
        cls: &BTreeMap<i64, ClInfo<'_>>,
        members: &mut BTreeSet<i64>,
    ) {
        let reverse = self.reverse_deps.get_or_insert_with(|| reverse_deps(cls));
        let mut stack = vec![start];
        while let Some(clid) = stack.pop() {
            let info = &cls[&clid];
            let mut neighbours: Vec<i64> = info
                .deps
                .iter()
                .flat_map(|d| d.not_submitted(info.pcl))
                .map(|d| d.clid)
                .collect();
            if let Some(rev) = reverse.get(&clid) {
                neighbours.extend(rev.iter().copied());
            }
            for n in neighbours {
                // Deps outside the component are not-yet-loaded ones.
                if cls.contains_key(&n) && self.visited.insert(n) {
                    members.insert(n);
                    stack.push(n);
                }
            }
        }
    }

    /// Plans the combo's Run and decides on it from what already exists.
    ///
    /// A RunID remembered by the view's memo (planned earlier from the same
    /// inputs, see [`super::memo`]) decides without planning, unless the Run
    /// is to be created now: its action needs the full plan.
    fn plan_and_decide(
        &self,
        combo: Combo,
        cls: &mut BTreeMap<i64, ClInfo<'v>>,
        cg_index: i32,
        kind: TriggerKind,
    ) -> Result<(Vec<Candidate<'v>>, Option<Nanos>), TriageError> {
        let now = to_nanos(&self.view.now);
        let remembered = self.view.run_ids.and_then(|memo| {
            memo.with(kind, cg_index, &combo, cls, |known| {
                // A young request stays as it is until its Run is seen or
                // the PM asks again, and the memo forgets it then.
                if let Some(at) = known.requested_at.filter(|&at| now - at < RECENT_RUN_WAIT) {
                    return Some(Existing::Requested(at));
                }
                let existing = check_existing(&known.run_id, self.view);
                known.requested_at = match existing {
                    Some(Existing::Requested(at)) => Some(at),
                    _ => None,
                };
                existing
            })
        });
        let existing = match remembered.flatten() {
            Some(existing) => existing,
            None => {
                let plan = plan_run(self.view, cls, &combo, cg_index, kind)?;
                if let Some(memo) = self.view.run_ids {
                    memo.put(kind, cg_index, &combo, cls, &plan.run_id);
                }
                match check_existing(&plan.run_id, self.view) {
                    None => return Ok((vec![Candidate { plan, combo, kind }], None)),
                    Some(existing) => existing,
                }
            }
        };
        match existing {
            Existing::Requested(at) => Ok((Vec::new(), Some(at + RECENT_RUN_WAIT))),
            Existing::Wait(next) => Ok((Vec::new(), next)),
            Existing::Reused(run) => {
                for member in &combo.all {
                    let info = cls.get_mut(member).ok_or_else(|| {
                        TriageError::Bug(format!("combo CL {member} is not in the component"))
                    })?;
                    let trigger = kind.choose(info.pcl.triggers.as_ref());
                    info.add_purge_reason(
                        trigger,
                        ClError {
                            kind: Some(Kind::ReusedTrigger(ReusedTrigger { run: run.clone() })),
                        },
                    );
                }
                Ok((Vec::new(), None))
            }
        }
    }
}

/// The only config group index of a ready CL.
fn first_config_group(pcl: &Pcl) -> Result<i32, TriageError> {
    pcl.config_group_indexes
        .first()
        .copied()
        .ok_or_else(|| TriageError::Bug(format!("PCL {} without ConfigGroup index", pcl.clid)))
}

/// Whether the Run to create already exists or was just requested
/// (the original's `checkExisting` plus the run-request rule of DESIGN §6);
/// `None`: no such Run, create it.
fn check_existing(run_id: &str, view: &PmView<'_>) -> Option<Existing> {
    let now = to_nanos(&view.now);
    match view.run(run_id) {
        None => match view
            .run_request(run_id)
            .and_then(|r| nanos_if_set(r.requested_at.as_ref()))
        {
            // Requested recently and not yet seen: do not ask again too soon.
            Some(at) if now - at < RECENT_RUN_WAIT => Some(Existing::Requested(at)),
            _ => None,
        },
        // Most likely created by an earlier request and not yet in the state.
        Some(run) if run.status & 64 == 0 => {
            Some(Existing::Wait(Some(now + EXISTING_RUN_RECHECK_DELAY)))
        }
        Some(run) => Some(match nanos_if_set(run.end_time.as_ref()) {
            Some(end) if now - end < RECENT_RUN_WAIT => Existing::Wait(Some(end + RECENT_RUN_WAIT)),
            // Ended long ago (an unset end time counts as long ago).
            _ => Existing::Reused(run.id.clone()),
        }),
    }
}

/// The immediate HARD deps of a CL: HARD deps that are not a dep of another
/// HARD dep of the CL, ascending (deps are scanned from last to first).
pub(crate) fn find_immediate_hard_deps(
    pcl: &Pcl,
    cls: &BTreeMap<i64, ClInfo<'_>>,
    view: &PmView<'_>,
) -> Result<Vec<i64>, TriageError> {
    let mut candidates = BTreeSet::new();
    let mut not_candidates = BTreeSet::new();
    for dep in pcl.deps.iter().rev() {
        if not_candidates.contains(&dep.clid) || dep.kind != DepKind::Hard as i32 {
            continue;
        }
        candidates.insert(dep.clid);
        let dep_pcl = match cls.get(&dep.clid) {
            Some(info) => info.pcl,
            // A ready CL's deps are all known; anything else is a bug.
            None => view
                .pcl(dep.clid)
                .ok_or_else(|| TriageError::Bug(format!("MustPCL: clid {} not known", dep.clid)))?,
        };
        for depdep in &dep_pcl.deps {
            not_candidates.insert(depdep.clid);
            candidates.remove(&depdep.clid);
        }
    }
    Ok(candidates.into_iter().collect())
}

/// Whether a staged FULL_RUN of a singular group can be created now, and the
/// FULL_RUN Runs of its immediate HARD deps (the original's `resolveDepRuns`).
fn resolve_dep_runs(
    candidate: &Candidate<'_>,
    cls: &BTreeMap<i64, ClInfo<'_>>,
    component: &Component,
    view: &PmView<'_>,
) -> Result<(bool, Vec<String>), TriageError> {
    // The Run's CLs are the combo's, in its order; its mode is the trigger's.
    let first = candidate
        .combo
        .all
        .first()
        .copied()
        .ok_or_else(|| TriageError::Bug("resolveDepRuns: Run without CLs".to_string()))?;
    let info = cls.get(&first).ok_or_else(|| {
        TriageError::Bug(format!(
            "resolveDepRuns: rc has a CL {first}, not tracked in the component"
        ))
    })?;
    let cg_index = first_config_group(info.pcl)?;
    let cg = view.config_group(cg_index).ok_or_else(|| {
        TriageError::Bug(format!(
            "CL {first}: config group index {cg_index} is out of range"
        ))
    })?;
    if candidate.plan.trigger.mode != FULL_RUN || cg.combine_cls.is_some() {
        return Ok((true, Vec::new()));
    }
    let ideps = find_immediate_hard_deps(info.pcl, cls, view)?;
    let mut create_now = true;
    let mut dep_runs = Vec::new();
    for idep in ideps {
        let dep_pcl = view
            .pcl(idep)
            .ok_or_else(|| TriageError::Bug(format!("MustPCL: clid {idep} not known")))?;
        if dep_pcl.submitted {
            continue;
        }
        if dep_pcl.status != pcl::Status::Ok as i32 {
            return Err(TriageError::Bug(format!(
                "resolveDepRuns: depCL {idep} has status {}",
                dep_pcl.status
            )));
        }
        match cls.get(&idep) {
            // A HARD dep outside the component: ignored, as the original does
            // (submission would be rejected at worst).
            None => {}
            Some(dinfo) if dinfo.has_incomplete_run(FULL_RUN) => {
                for &ri in &dinfo.run_indexes {
                    let prun = &component.pruns[ri];
                    if prun.mode == FULL_RUN {
                        dep_runs.push(prun.id.clone());
                    }
                }
            }
            // The dep's own Run is not created yet: wait for it.
            Some(_) => create_now = false,
        }
    }
    Ok((create_now, dep_runs))
}
