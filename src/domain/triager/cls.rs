//! Per-CL triage (domain/luci-pm.md §7.3, the original's `clInfo` in
//! `cls.go`): decides for every CL of a component whether its CQ-vote and
//! new-patchset triggers are ready for a Run, and why it must be purged.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::triage_api::{PmView, TriageError};
use crate::proto::cl_error::{Kind, WatchedByManyConfigGroups};
use crate::proto::{
    pcl, purge_reason, purging_cl, ClError, Component, Pcl, PurgeReason, PurgingCl, Trigger,
    TriggeringClDeps, Triggers,
};

use super::deps::{triage_deps, TriagedDeps};
use super::{cq_trigger, npr_trigger, NEW_PATCHSET_RUN};
use crate::domain::time::{nanos_if_set, Nanos};

/// One CL of the component being triaged, with the result of its triage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClInfo<'a> {
    /// The CL's PCL.
    pub(crate) pcl: &'a Pcl,
    /// Positions in `Component.pruns` of the Runs containing this CL.
    pub(crate) run_indexes: Vec<usize>,
    /// Number of component Runs containing this CL, by Run mode.
    pub(crate) run_count_by_mode: BTreeMap<String, usize>,
    /// The in-flight purge of this CL, if any.
    pub(crate) purging_cl: Option<&'a PurgingCl>,
    /// The in-flight dep vote whose origin is this CL, if any.
    pub(crate) triggering_cl_deps: Option<&'a TriggeringClDeps>,
    /// Triaged deps; set only when the CL's CQ trigger was looked at with
    /// exactly one config group.
    pub(crate) deps: Option<TriagedDeps>,
    /// Why (some of) the CL's triggers must be purged.
    pub(crate) purge_reasons: Vec<PurgeReason>,
    /// The CL can be part of a new CQ-vote Run.
    pub(crate) cq_ready: bool,
    /// The CL can be part of a new NEW_PATCHSET_RUN Run.
    pub(crate) npr_ready: bool,
}

impl<'a> ClInfo<'a> {
    fn new(pcl: &'a Pcl, view: &PmView<'a>) -> Self {
        ClInfo {
            pcl,
            run_indexes: Vec::new(),
            run_count_by_mode: BTreeMap::new(),
            purging_cl: view.purging_cl(pcl.clid),
            triggering_cl_deps: view.triggering_cl_deps(pcl.clid),
            deps: None,
            purge_reasons: Vec::new(),
            cq_ready: false,
            npr_ready: false,
        }
    }

    /// Whether the CL is in a component Run of this mode.
    pub(crate) fn has_incomplete_run(&self, mode: &str) -> bool {
        self.run_count_by_mode.get(mode).copied().unwrap_or(0) > 0
    }

    /// The latest CQ-vote trigger time among this CL and its deps.
    pub(crate) fn last_cq_vote_triggered(&self) -> Option<Nanos> {
        let this = cq_trigger(self.pcl).and_then(|t| nanos_if_set(t.time.as_ref()));
        let deps = self.deps.as_ref().and_then(|d| d.last_cq_vote_triggered);
        match (this, deps) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }

    /// Adds a purge reason for a trigger (`None`: all active triggers).
    pub(crate) fn add_purge_reason(&mut self, trigger: Option<&Trigger>, cl_error: ClError) {
        let apply_to = match trigger {
            None => purge_reason::ApplyTo::AllActiveTriggers(true),
            Some(t) if t.mode == NEW_PATCHSET_RUN => purge_reason::ApplyTo::Triggers(Triggers {
                cq_vote_trigger: None,
                new_patchset_run_trigger: Some(t.clone()),
            }),
            // Every other mode, custom ones included, is a CQ-vote mode
            // (luci-pm-head.md R5).
            Some(t) => purge_reason::ApplyTo::Triggers(Triggers {
                cq_vote_trigger: Some(t.clone()),
                new_patchset_run_trigger: None,
            }),
        };
        self.purge_reasons.push(PurgeReason {
            cl_error: Some(cl_error),
            apply_to: Some(apply_to),
        });
    }

    /// Counts the component Runs of this CL: (CQ-vote Runs, NEW_PATCHSET_RUN
    /// Runs). Every mode but NEW_PATCHSET_RUN, custom ones included, is a
    /// CQ-vote mode (luci-pm-head.md R5).
    fn prun_count_by_type(&self, component: &Component) -> (usize, usize) {
        let npr = self
            .run_indexes
            .iter()
            .filter(|&&i| component.pruns[i].mode == NEW_PATCHSET_RUN)
            .count();
        (self.run_indexes.len() - npr, npr)
    }

    /// Whether the PCL status lets the PM act on the CL (OK); others: false.
    fn status_ready_for_triage(&self) -> Result<bool, TriageError> {
        match pcl::Status::try_from(self.pcl.status) {
            Ok(pcl::Status::Ok) => Ok(true),
            Ok(_) => Ok(false),
            Err(_) => Err(TriageError::Bug(format!(
                "PCL {} has unrecognized status {}",
                self.pcl.clid, self.pcl.status
            ))),
        }
    }

    fn triage(&mut self, component: &Component, view: &PmView<'_>) -> Result<(), TriageError> {
        let (n_cq_runs, n_npr_runs) = self.prun_count_by_type(component);
        let mut triage_cq = false;
        let mut triage_npr = false;
        if n_cq_runs > 0 {
            // Presence in a Run takes precedence over an in-flight purge.
            self.triage_in_cq_vote_run(view)?;
        } else if is_cq_vote_purging(self.purging_cl) {
            self.triage_in_cq_vote_purge(view)?;
        } else if cq_trigger(self.pcl).is_some() {
            triage_cq = true;
        }

        if n_npr_runs > 0 {
            self.triage_in_new_patchset_run()?;
        } else if is_npr_purging(self.purging_cl) {
            self.triage_in_new_patchset_purge()?;
        } else if npr_trigger(self.pcl).is_some() {
            triage_npr = true;
        }
        self.triage_new_triggers(view, triage_cq, triage_npr)
    }

    fn triage_in_cq_vote_run(&mut self, view: &PmView<'_>) -> Result<(), TriageError> {
        if self.pcl.submitted || !self.status_ready_for_triage()? || cq_trigger(self.pcl).is_none()
        {
            // Expected while the Run is being finalized (submission, cancellation).
            return Ok(());
        }
        let [cg_index] = self.pcl.config_group_indexes.as_slice() else {
            // Expected after a config change until the Run reacts to it.
            return Ok(());
        };
        let deps = triage_deps(self.pcl, *cg_index, view)?;
        // A purging or triggering CL must not be ready for a new CQ-vote Run.
        self.cq_ready =
            deps.ok() && !is_cq_vote_purging(self.purging_cl) && deps.need_to_trigger.is_empty();
        self.deps = Some(deps);
        Ok(())
    }

    fn triage_in_new_patchset_run(&mut self) -> Result<(), TriageError> {
        if self.pcl.config_group_indexes.len() != 1 {
            return Ok(());
        }
        if !self.pcl.submitted
            && self.status_ready_for_triage()?
            && npr_trigger(self.pcl).is_some()
            && !is_npr_purging(self.purging_cl)
        {
            self.npr_ready = true;
        }
        Ok(())
    }

    fn triage_in_cq_vote_purge(&mut self, view: &PmView<'_>) -> Result<(), TriageError> {
        // The purge's effect may already be visible before its completion is;
        // triage the deps (for combos) but never mark the CL ready.
        if !self.pcl.submitted && self.status_ready_for_triage()? && cq_trigger(self.pcl).is_some()
        {
            match self.pcl.config_group_indexes.as_slice() {
                [] => return Err(self.partitioning_bug("without ConfigGroup index")),
                [cg_index] => self.deps = Some(triage_deps(self.pcl, *cg_index, view)?),
                _ => {}
            }
        }
        Ok(())
    }

    fn triage_in_new_patchset_purge(&mut self) -> Result<(), TriageError> {
        if !self.pcl.submitted
            && self.status_ready_for_triage()?
            && npr_trigger(self.pcl).is_some()
            && self.pcl.config_group_indexes.is_empty()
        {
            return Err(self.partitioning_bug("without ConfigGroup index"));
        }
        Ok(())
    }

    fn partitioning_bug(&self, what: &str) -> TriageError {
        TriageError::Bug(format!(
            "PCL {} {what} not possible for CL not referenced by any Runs (partitioning bug?)",
            self.pcl.clid
        ))
    }

    fn triage_new_triggers(
        &mut self,
        view: &PmView<'_>,
        mut triage_cq: bool,
        mut triage_npr: bool,
    ) -> Result<(), TriageError> {
        let pcl = self.pcl;
        for reason in &pcl.purge_reasons {
            match &reason.apply_to {
                Some(purge_reason::ApplyTo::AllActiveTriggers(true)) => {
                    triage_cq = false;
                    triage_npr = false;
                }
                Some(purge_reason::ApplyTo::Triggers(t))
                    if t.new_patchset_run_trigger.is_some() =>
                {
                    triage_npr = false;
                }
                Some(purge_reason::ApplyTo::Triggers(t)) if t.cq_vote_trigger.is_some() => {
                    triage_cq = false;
                }
                _ => {}
            }
        }
        // All PCL purge reasons are kept, even for a CL in a Run.
        self.purge_reasons.extend(pcl.purge_reasons.iter().cloned());
        if !triage_cq && !triage_npr {
            return Ok(());
        }
        match pcl::Status::try_from(pcl.status) {
            Ok(pcl::Status::Ok) => {}
            Ok(status) => {
                return Err(self.partitioning_bug(&format!("status {}", status.as_str_name())))
            }
            Err(_) => {
                return Err(TriageError::Bug(format!(
                    "PCL {} has unrecognized status {}",
                    pcl.clid, pcl.status
                )))
            }
        }
        if pcl.submitted {
            return Err(self.partitioning_bug("submitted"));
        }
        match pcl.config_group_indexes.as_slice() {
            [] => Err(self.partitioning_bug("without ConfigGroup index")),
            [cg_index] => {
                if triage_cq {
                    let deps = triage_deps(pcl, *cg_index, view)?;
                    if !deps.ok() {
                        let reason = deps.make_purge_reason()?;
                        self.deps = Some(deps);
                        self.add_purge_reason(cq_trigger(pcl), reason);
                    } else {
                        // Not ready while some deps still need the chained vote.
                        self.cq_ready = deps.need_to_trigger.is_empty();
                        self.deps = Some(deps);
                    }
                }
                if triage_npr {
                    self.npr_ready = true;
                }
                Ok(())
            }
            cg_indexes => {
                let mut names = Vec::with_capacity(cg_indexes.len());
                for &idx in cg_indexes {
                    let cg = view.config_group(idx).ok_or_else(|| {
                        TriageError::Bug(format!(
                            "CL {}: config group index {idx} is out of range",
                            pcl.clid
                        ))
                    })?;
                    names.push(cg.name.clone());
                }
                let trigger = match (triage_cq, triage_npr) {
                    (true, true) => None, // Purge the whole CL.
                    (true, false) => cq_trigger(pcl),
                    _ => npr_trigger(pcl),
                };
                self.add_purge_reason(
                    trigger,
                    ClError {
                        kind: Some(Kind::WatchedByManyConfigGroups(WatchedByManyConfigGroups {
                            config_groups: names,
                        })),
                    },
                );
                Ok(())
            }
        }
    }
}

/// Whether an in-flight purge removes the CQ-vote trigger.
pub(crate) fn is_cq_vote_purging(p: Option<&PurgingCl>) -> bool {
    match p.and_then(|p| p.apply_to.as_ref()) {
        Some(purging_cl::ApplyTo::AllActiveTriggers(all)) => *all,
        Some(purging_cl::ApplyTo::Triggers(t)) => t.cq_vote_trigger.is_some(),
        None => false,
    }
}

/// Whether an in-flight purge removes the new-patchset trigger.
pub(crate) fn is_npr_purging(p: Option<&PurgingCl>) -> bool {
    match p.and_then(|p| p.apply_to.as_ref()) {
        Some(purging_cl::ApplyTo::AllActiveTriggers(all)) => *all,
        Some(purging_cl::ApplyTo::Triggers(t)) => t.new_patchset_run_trigger.is_some(),
        None => false,
    }
}

/// Triages every CL of the component (the original's `triageCLs`).
///
/// Every CL of the component must have a PCL, and every Run of the component
/// may only reference CLs of the component; otherwise this is a bug.
pub(crate) fn triage_cls<'a>(
    component: &Component,
    view: &PmView<'a>,
) -> Result<BTreeMap<i64, ClInfo<'a>>, TriageError> {
    let mut cls = BTreeMap::new();
    for &clid in &component.clids {
        let pcl = view
            .pcl(clid)
            .ok_or_else(|| TriageError::Bug(format!("MustPCL: clid {clid} not known")))?;
        cls.insert(clid, ClInfo::new(pcl, view));
    }
    for (index, prun) in component.pruns.iter().enumerate() {
        for clid in &prun.clids {
            let info = cls.get_mut(clid).ok_or_else(|| {
                TriageError::Bug(format!(
                    "Run {:?} references CL {clid}, which is not in the component",
                    prun.id
                ))
            })?;
            info.run_indexes.push(index);
            *info.run_count_by_mode.entry(prun.mode.clone()).or_insert(0) += 1;
        }
    }
    for info in cls.values_mut() {
        info.triage(component, view)?;
    }
    // A stack whose CQ votes are being propagated must not get new Runs until
    // the whole stack is ready: the origin and its listed deps are not ready.
    // (As in the original, only an op listing at least one dep has effect.)
    let mut not_ready = BTreeSet::new();
    for (&clid, info) in &cls {
        if let Some(op) = info.triggering_cl_deps {
            if !op.dep_clids.is_empty() {
                not_ready.insert(clid);
                not_ready.extend(op.dep_clids.iter().copied());
            }
        }
    }
    for clid in not_ready {
        if let Some(info) = cls.get_mut(&clid) {
            info.cq_ready = false;
        }
    }
    Ok(cls)
}
