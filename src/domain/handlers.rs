//! The state transitions of one invocation that react to input events
//! (luci-pm.md §6.1–§6.7): config updates, pokes, Runs created and finished,
//! CLs updated, purges and dependency votes completed.
//!
//! Each handler mutates the invocation's working state and returns the
//! transactional side effects it produces; effects the original performs
//! immediately (poller and Run pokes) go to `Invocation::immediate`.

use std::collections::{BTreeMap, BTreeSet};

use super::invocation::{
    cancel_reason, make_prun, no_notification, run_status_ended, Invocation,
    OPERATION_EXPIRY_GRACE_MINUTES,
};
use super::pcl::FULL_RUN;
use super::time;
use crate::proto::project_log::LogReason;
use crate::proto::{
    action, cl_error, dep, p_state, project_config, purge_reason, purging_cl, CancelRuns, ClError,
    PRun, PokePoller, PokeRuns, PurgeCl, PurgeCompleted, PurgeReason, PurgingCl, Trigger,
    TriggeringClDeps, TriggeringClDepsCompleted, Triggers, UpdateRunsConfig,
};

/// The project status as an enum (unknown numbers read as unspecified).
fn status_of(inv: &Invocation<'_>) -> p_state::Status {
    p_state::Status::try_from(inv.pstate.status).unwrap_or(p_state::Status::Unspecified)
}

impl Invocation<'_> {
    /// Adopts the latest config or stops the project (`UpdateConfig`, §6.1).
    /// Returns whether the state changed (the original's "new state object")
    /// and the transactional side effects.
    pub fn update_config(&mut self) -> (bool, Vec<action::Action>) {
        let latest_state = self
            .latest_config
            .map_or(project_config::State::Deleted as i32, |c| c.state);
        let status = status_of(self);
        match project_config::State::try_from(latest_state) {
            Ok(project_config::State::Enabled) => {
                let latest = self.latest_config.expect("an enabled config exists");
                if status == p_state::Status::Started && latest.hash == self.pstate.config_hash {
                    return (false, Vec::new());
                }
                self.immediate
                    .push(action::Action::PokePoller(PokePoller {}));
                self.reasons.push(LogReason::ConfigChanged);
                if status != p_state::Status::Started {
                    self.reasons.push(LogReason::StatusChanged);
                    self.pstate.status = p_state::Status::Started as i32;
                }
                self.pstate.config_hash = latest.hash.clone();
                self.pstate.config_group_names = latest
                    .config_groups
                    .iter()
                    .map(|g| g.name.clone())
                    .collect();
                self.pinned = Some(latest.clone());
                self.matcher = None;
                self.reeval_pcls();
                self.mark_all_for_triage();
                let effect = action::Action::UpdateRunsConfig(UpdateRunsConfig {
                    run_ids: self.incomplete_runs(),
                    hash: latest.hash.clone(),
                    eversion: latest.eversion,
                });
                (true, vec![effect])
            }
            Ok(project_config::State::Disabled | project_config::State::Deleted) => match status {
                p_state::Status::Unspecified | p_state::Status::Stopped => (false, Vec::new()),
                p_state::Status::Started | p_state::Status::Stopping => {
                    let mut changed = false;
                    if status == p_state::Status::Started {
                        self.reasons.push(LogReason::StatusChanged);
                        self.pstate.status = p_state::Status::Stopping as i32;
                        changed = true;
                    }
                    self.immediate
                        .push(action::Action::PokePoller(PokePoller {}));
                    let runs = self.incomplete_runs();
                    if runs.is_empty() {
                        self.reasons.push(LogReason::StatusChanged);
                        self.pstate.status = p_state::Status::Stopped as i32;
                        return (true, Vec::new());
                    }
                    let effect = action::Action::CancelRuns(CancelRuns {
                        run_ids: runs,
                        reason: cancel_reason(self.project),
                    });
                    (changed, vec![effect])
                }
            },
            _ => {
                // The original panics on an unexpected config status.
                self.trace.push(format!(
                    "latest config {:?} has state {latest_state} (neither ENABLED, DISABLED nor DELETED); config update ignored",
                    self.latest_config.map(|c| c.hash.as_str()).unwrap_or_default()
                ));
                (false, Vec::new())
            }
        }
    }

    /// Re-checks the config, then pokes the poller and every incomplete Run
    /// and marks all components for triage (`Poke`, §6.2).
    pub fn poke(&mut self) -> Vec<action::Action> {
        let (changed, effects) = self.update_config();
        if changed {
            return effects;
        }
        // As in the original, a side effect of an unchanged config update
        // (re-sent cancellations while STOPPING) is dropped here.
        self.immediate
            .push(action::Action::PokePoller(PokePoller {}));
        let runs = self.incomplete_runs();
        if !runs.is_empty() {
            self.immediate
                .push(action::Action::PokeRuns(PokeRuns { run_ids: runs }));
        }
        self.mark_all_for_triage();
        Vec::new()
    }

    /// Tracks newly created Runs (`OnRunsCreated`, §6.3).
    pub fn on_runs_created(&mut self, ids: &BTreeSet<String>) -> Vec<action::Action> {
        let mut remaining = ids.clone();
        for id in self.incomplete_runs() {
            remaining.remove(&id);
        }
        if remaining.is_empty() {
            return Vec::new();
        }
        match status_of(self) {
            p_state::Status::Started => {
                self.add_created_runs(&remaining);
                Vec::new()
            }
            p_state::Status::Stopping | p_state::Status::Stopped => {
                let mut incomplete = Vec::new();
                for id in &remaining {
                    match self.run(id) {
                        None => self.trace.push(format!("RunCreated for {id}: the Run is not known (never announced, or ended and forgotten); ignored")),
                        Some(run) if !run_status_ended(run.status) => incomplete.push(id.clone()),
                        Some(_) => {}
                    }
                }
                if incomplete.is_empty() {
                    return Vec::new();
                }
                self.trace.push(format!(
                    "RunCreated for {incomplete:?} while the project is {:?}; cancelling them",
                    status_of(self)
                ));
                vec![action::Action::CancelRuns(CancelRuns {
                    run_ids: incomplete,
                    reason: cancel_reason(self.project),
                })]
            }
            p_state::Status::Unspecified => {
                // The original panics: a project that never started has no Runs.
                self.trace.push(format!(
                    "RunCreated for {remaining:?} on a project that was never started; ignored"
                ));
                Vec::new()
            }
        }
    }

    /// Places created Runs into components containing all their CLs, the rest
    /// into `created_pruns` (`addCreatedRuns`).
    fn add_created_runs(&mut self, ids: &BTreeSet<String>) {
        let mut candidates: Vec<PRun> = Vec::new();
        for id in ids {
            match self.run(id) {
                None => self.trace.push(format!("RunCreated for {id}: the Run is not known (never announced, or ended and forgotten); ignored")),
                Some(run) if run_status_ended(run.status) => {
                    self.trace
                        .push(format!("RunCreated for {id}: the Run has already ended; ignored"));
                }
                Some(run) if run.clids.is_empty() => {
                    self.trace.push(format!("RunCreated for {id}: the Run has no CLs; ignored"));
                }
                Some(run) => candidates.push(make_prun(run)),
            }
        }
        let mut placed = vec![false; candidates.len()];
        let mut modified = false;
        for component in &mut self.pstate.components {
            let mut to_add: Vec<PRun> = Vec::new();
            for (i, prun) in candidates.iter().enumerate() {
                if !placed[i]
                    && prun
                        .clids
                        .iter()
                        .all(|id| component.clids.binary_search(id).is_ok())
                {
                    placed[i] = true;
                    to_add.push(prun.clone());
                }
            }
            if to_add.is_empty() {
                continue;
            }
            for prun in to_add {
                let at = component.pruns.partition_point(|r| r.id <= prun.id);
                component.pruns.insert(at, prun);
            }
            component.triage_required = true;
            modified = true;
        }
        if modified {
            self.pstate.repartition_required = true;
        }
        for (prun, placed) in candidates.into_iter().zip(placed) {
            if !placed {
                let at = self
                    .pstate
                    .created_pruns
                    .partition_point(|r| r.id <= prun.id);
                self.pstate.created_pruns.insert(at, prun);
            }
        }
    }

    /// Forgets finished Runs, stops a STOPPING project without Runs, and
    /// purges the children of failed chained-vote Runs (`OnRunsFinished`, §6.4).
    pub fn on_runs_finished(&mut self, finished: &BTreeMap<String, i32>) -> Vec<action::Action> {
        let mut removed: Vec<(PRun, i32)> = Vec::new();
        let mut remaining_ids: BTreeSet<&str> = finished.keys().map(String::as_str).collect();
        let created = std::mem::take(&mut self.pstate.created_pruns);
        for prun in created {
            if remaining_ids.remove(prun.id.as_str()) {
                let status = finished[&prun.id];
                removed.push((prun, status));
            } else {
                self.pstate.created_pruns.push(prun);
            }
        }
        let mut component_modified = false;
        for component in &mut self.pstate.components {
            if remaining_ids.is_empty() {
                break;
            }
            let before = component.pruns.len();
            let pruns = std::mem::take(&mut component.pruns);
            for prun in pruns {
                if remaining_ids.remove(prun.id.as_str()) {
                    let status = finished[&prun.id];
                    removed.push((prun, status));
                } else {
                    component.pruns.push(prun);
                }
            }
            if component.pruns.len() != before {
                component.triage_required = true;
                component_modified = true;
            }
        }
        if component_modified {
            self.pstate.repartition_required = true;
        }
        for id in &remaining_ids {
            self.trace.push(format!(
                "RunFinished for {id}: not an incomplete Run of the project (unknown, or finished before); no-op"
            ));
        }
        let still_tracked = self.pstate.created_pruns.len()
            + self
                .pstate
                .components
                .iter()
                .map(|c| c.pruns.len())
                .sum::<usize>();
        if status_of(self) == p_state::Status::Stopping && still_tracked == 0 {
            self.reasons.push(LogReason::StatusChanged);
            self.pstate.status = p_state::Status::Stopped as i32;
        }
        let failed: Vec<PRun> = removed
            .into_iter()
            .filter(|(prun, status)| {
                *status == crate::proto::run::Status::Failed as i32 && self.maybe_mce_run(prun)
            })
            .map(|(prun, _)| prun)
            .collect();
        let tasks = self.purge_tasks_for_failed_mce_runs(&failed);
        self.add_cls_to_purge(tasks)
    }

    /// Whether a Run may have been started by chained CQ votes: a FULL_RUN
    /// whose first CL has exactly one config group.
    ///
    /// The group's `combine_cls` is not consulted: the original reads its
    /// cached config groups, which are never loaded at this step of an
    /// invocation, and then skips the test (luci-pm-head.md R7).
    fn maybe_mce_run(&self, prun: &PRun) -> bool {
        if prun.mode != FULL_RUN {
            return false;
        }
        prun.clids
            .first()
            .and_then(|&id| self.pcl(id))
            .is_some_and(|pcl| pcl.config_group_indexes.len() == 1)
    }

    /// Purge tasks for the HARD-dep children of failed chained-vote Runs
    /// (`makePurgeCLTasksForFailedMCERuns`), sorted by CL id; exactly one task
    /// (the first, by CL id, with no purged HARD child) notifies by default.
    fn purge_tasks_for_failed_mce_runs(&self, failed: &[PRun]) -> Vec<PurgeCl> {
        if failed.is_empty() {
            return Vec::new();
        }
        let mut reverse_deps: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, p) in self.pstate.pcls.iter().enumerate() {
            for d in &p.deps {
                if d.kind == dep::DepKind::Hard as i32 {
                    reverse_deps.entry(d.clid).or_default().push(i);
                }
            }
        }
        let single_cl_runs: BTreeSet<i64> = self
            .pstate
            .components
            .iter()
            .flat_map(|c| c.pruns.iter())
            .chain(self.pstate.created_pruns.iter())
            .filter(|r| r.clids.len() == 1)
            .map(|r| r.clids[0])
            .collect();
        let mut tasks: BTreeMap<i64, PurgeCl> = BTreeMap::new();
        for run in failed {
            let parent = run.clids[0];
            for &child_index in reverse_deps
                .get(&parent)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let child = &self.pstate.pcls[child_index];
                let trigger: Option<Trigger> = child
                    .triggers
                    .as_ref()
                    .and_then(|t| t.cq_vote_trigger.clone());
                let mode = trigger
                    .as_ref()
                    .map(|t| t.mode.as_str())
                    .unwrap_or_default();
                if mode != run.mode
                    || single_cl_runs.contains(&child.clid)
                    || self.purging_cl(child.clid).is_some()
                {
                    continue;
                }
                let triggers = Triggers {
                    cq_vote_trigger: trigger,
                    new_patchset_run_trigger: None,
                };
                tasks.insert(
                    child.clid,
                    PurgeCl {
                        purging_cl: Some(PurgingCl {
                            clid: child.clid,
                            notification: no_notification(),
                            apply_to: Some(purging_cl::ApplyTo::Triggers(triggers.clone())),
                            ..Default::default()
                        }),
                        purge_reasons: vec![PurgeReason {
                            cl_error: Some(ClError {
                                kind: Some(cl_error::Kind::DepRunFailed(parent)),
                            }),
                            apply_to: Some(purge_reason::ApplyTo::Triggers(triggers)),
                        }],
                        ..Default::default()
                    },
                );
            }
        }
        let purged: BTreeSet<i64> = tasks.keys().copied().collect();
        let mut notified = false;
        for (clid, task) in &mut tasks {
            if notified {
                break;
            }
            let children = reverse_deps
                .get(clid)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if children
                .iter()
                .all(|&i| !purged.contains(&self.pstate.pcls[i].clid))
            {
                if let Some(p) = task.purging_cl.as_mut() {
                    p.notification = None;
                }
                notified = true;
            }
        }
        tasks.into_values().collect()
    }

    /// Evaluates updated CLs (`OnCLsUpdated`, §6.5).
    pub fn on_cls_updated(&mut self, versions: &BTreeMap<i64, i64>) {
        if status_of(self) != p_state::Status::Started {
            return;
        }
        let to_eval: Vec<i64> = versions
            .iter()
            .filter(|(&clid, &eversion)| self.pcl(clid).map_or(true, |p| p.eversion < eversion))
            .map(|(&clid, _)| clid)
            .collect();
        if !to_eval.is_empty() {
            self.eval_cls(&to_eval);
        }
    }

    /// Forgets completed and expired purges (`OnPurgesCompleted`, §6.6).
    /// Returns the positions (in `events`) of the events consumed.
    pub fn on_purges_completed(&mut self, events: &[&PurgeCompleted]) -> Vec<usize> {
        let mut consumed = Vec::new();
        let mut completed_ops: BTreeSet<&str> = BTreeSet::new();
        if !events.is_empty() {
            let clids: Vec<i64> = events.iter().map(|e| e.clid).filter(|&c| c > 0).collect();
            self.eval_cls(&clids);
            for (i, event) in events.iter().enumerate() {
                if !self
                    .pstate
                    .purging_cls
                    .iter()
                    .any(|p| p.operation_id == event.operation_id)
                {
                    self.trace.push(format!(
                        "PurgeCompleted {:?} for CL {}: no such purge in flight (unknown, expired or completed before)",
                        event.operation_id, event.clid
                    ));
                }
                let fresh =
                    event.clid <= 0 || self.pcl(event.clid).map_or(true, |p| p.outdated.is_none());
                if fresh {
                    consumed.push(i);
                    completed_ops.insert(event.operation_id.as_str());
                }
            }
        }
        let cutoff = time::add_minutes(&self.now, -OPERATION_EXPIRY_GRACE_MINUTES);
        let goes = |p: &PurgingCl| {
            completed_ops.contains(p.operation_id.as_str())
                || time::cmp_opt(p.deadline.as_ref(), Some(&cutoff)).is_lt()
        };
        // Most invocations forget no purge: the list is then left untouched.
        let deleted = if self.pstate.purging_cls.iter().any(goes) {
            remove_where(self.purging_cls_mut(), goes, |p| p.clid)
        } else {
            BTreeSet::new()
        };
        if !deleted.is_empty() && !self.pstate.repartition_required {
            self.mark_for_triage_containing(&deleted);
        }
        consumed
    }

    /// Forgets completed and expired dependency votes and purges the votes of
    /// failed ones (`OnTriggeringCLDepsCompleted`, §6.7). Returns the
    /// positions (in `events`) of the events consumed, and the side effects.
    pub fn on_triggering_cl_deps_completed(
        &mut self,
        events: &[&TriggeringClDepsCompleted],
    ) -> (Vec<usize>, Vec<action::Action>) {
        let mut ops_to_remove: BTreeMap<&str, usize> = BTreeMap::new();
        let mut clids_to_eval: Vec<i64> = Vec::new();
        let mut purge_tasks: Vec<PurgeCl> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let op = self
                .pstate
                .triggering_cl_deps
                .iter()
                .find(|t| t.origin_clid == event.origin)
                .cloned();
            match op {
                None => self.trace.push(format!(
                    "TriggeringClDepsCompleted {:?} for origin CL {}: no such dependency vote in flight",
                    event.operation_id, event.origin
                )),
                Some(op) => {
                    if !event.failed.is_empty() {
                        purge_tasks.extend(self.purge_tasks_for_failed_trigger_deps(op.trigger.clone(), event));
                    }
                    clids_to_eval.extend(event.succeeded.iter().copied().filter(|&c| self.pcl(c).is_some()));
                }
            }
            // Even without a matching op, or the event would stay forever.
            ops_to_remove.insert(event.operation_id.as_str(), i);
        }
        if !clids_to_eval.is_empty() {
            self.eval_cls(&clids_to_eval);
        }
        let mut consumed = Vec::new();
        ops_to_remove.retain(|_, &mut i| {
            let fresh = events[i]
                .succeeded
                .iter()
                .all(|&c| self.pcl(c).map_or(true, |p| p.outdated.is_none()));
            if fresh {
                consumed.push(i);
            }
            fresh
        });
        consumed.sort_unstable();
        let cutoff = time::add_minutes(&self.now, -OPERATION_EXPIRY_GRACE_MINUTES);
        let goes = |op: &TriggeringClDeps| {
            time::cmp_opt(op.deadline.as_ref(), Some(&cutoff)).is_lt()
                || ops_to_remove.contains_key(op.operation_id.as_str())
        };
        let deleted = if self.pstate.triggering_cl_deps.iter().any(goes) {
            remove_where(self.triggering_cl_deps_mut(), goes, |op| op.origin_clid)
        } else {
            BTreeSet::new()
        };
        if deleted.is_empty() {
            if !purge_tasks.is_empty() {
                // The original panics ("if there is a cl to purge, there must be an op to remove").
                self.trace.push(format!(
                    "TriggeringClDepsCompleted: {} purges requested but no dependency vote was removed; purges dropped",
                    purge_tasks.len()
                ));
            }
            return (consumed, Vec::new());
        }
        if !self.pstate.repartition_required {
            self.mark_for_triage_containing(&deleted);
        }
        (consumed, self.add_cls_to_purge(purge_tasks))
    }

    /// Purges of the origin and already-voted deps of a failed dependency vote
    /// (`purgeFailedTriggeringCLDeps`): the deps silently, the origin with
    /// default notification.
    fn purge_tasks_for_failed_trigger_deps(
        &self,
        trigger: Option<Trigger>,
        event: &TriggeringClDepsCompleted,
    ) -> Vec<PurgeCl> {
        let mut merged = cl_error::TriggerDeps::default();
        for failed in &event.failed {
            merged
                .permission_denied
                .extend(failed.permission_denied.iter().cloned());
            merged.not_found.extend(failed.not_found.iter().copied());
            merged
                .internal_gerrit_error
                .extend(failed.internal_gerrit_error.iter().copied());
        }
        let triggers = Triggers {
            cq_vote_trigger: trigger,
            new_patchset_run_trigger: None,
        };
        let reasons = vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(cl_error::Kind::TriggerDeps(merged)),
            }),
            apply_to: Some(purge_reason::ApplyTo::Triggers(triggers.clone())),
        }];
        let task = |clid: i64, notification: Option<purging_cl::Notification>| PurgeCl {
            purging_cl: Some(PurgingCl {
                clid,
                notification,
                apply_to: Some(purging_cl::ApplyTo::Triggers(triggers.clone())),
                ..Default::default()
            }),
            purge_reasons: reasons.clone(),
            ..Default::default()
        };
        let mut tasks: Vec<PurgeCl> = event
            .succeeded
            .iter()
            .filter(|&&clid| self.purging_cl(clid).is_none())
            .map(|&clid| task(clid, no_notification()))
            .collect();
        tasks.push(task(event.origin, None));
        tasks
    }
}

/// Removes the entries of `list` that `goes`; returns the CL ids (`clid`)
/// of those removed.
fn remove_where<T>(
    list: &mut Vec<T>,
    goes: impl Fn(&T) -> bool,
    clid: impl Fn(&T) -> i64,
) -> BTreeSet<i64> {
    let mut removed = BTreeSet::new();
    list.retain(|entry| {
        let gone = goes(entry);
        if gone {
            removed.insert(clid(entry));
        }
        !gone
    });
    removed
}
