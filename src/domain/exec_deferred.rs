//! `ExecDeferred`, the last transition of every invocation (luci-pm.md §6.8,
//! §6.11, §6.12): repartition if needed, triage the due components through
//! the triager, act on the results, and compute `next_eval_time`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::invocation::Invocation;
use super::time;
use super::triage_api::{PmView, TriageError, TriageResult};
use super::triager::run_id::operation_id;
use super::TriageFn;
use crate::proto::project_log::LogReason;
use crate::proto::{action, p_state, Component, CreateRun, ProjectConfig};

/// Whether a component must be triaged now.
fn needs_triage(c: &Component, now: &crate::proto::Timestamp) -> bool {
    c.triage_required
        || c.decision_time
            .as_ref()
            .is_some_and(|t| time::cmp(t, now).is_le())
}

/// Calls the triager, turning a panic into `TriageError::Bug` as the
/// original's panic catcher does.
fn call_triager(
    triage: TriageFn,
    c: &Component,
    view: &PmView<'_>,
) -> Result<TriageResult, TriageError> {
    match catch_unwind(AssertUnwindSafe(|| triage(c, view))) {
        Ok(result) => result,
        Err(payload) => Err(TriageError::Bug(format!(
            "caught panic: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// The message a panic carried (its `&str` or `String` payload).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_string())
}

/// Checks a triage result as the original does (`validatePurgeCLTasks`), plus
/// that a new value keeps the component's CLs.
fn validate(inv: &Invocation<'_>, c: &Component, result: &TriageResult) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for task in &result.cls_to_purge {
        let clid = task.purging_cl.as_ref().map_or(0, |p| p.clid);
        if clid == 0 {
            return Err("purge task without clid".to_string());
        }
        if !seen.insert(clid) {
            return Err(format!("duplicated purge of CL {clid}"));
        }
        if task.purge_reasons.is_empty() {
            return Err(format!("purge of CL {clid} without reasons"));
        }
        for (i, r) in task.purge_reasons.iter().enumerate() {
            if r.cl_error.as_ref().and_then(|e| e.kind.as_ref()).is_none() {
                return Err(format!("purge of CL {clid}: reason #{i} has no error kind"));
            }
            if r.apply_to.is_none() {
                return Err(format!(
                    "purge of CL {clid}: reason #{i} applies to no trigger"
                ));
            }
        }
        if inv.purging_cl(clid).is_some() {
            return Err(format!(
                "can't purge CL {clid} which is already being purged"
            ));
        }
        if c.clids.binary_search(&clid).is_err() {
            return Err(format!("purging CL {clid} outside the component"));
        }
    }
    if let Some(new_value) = &result.new_value {
        if new_value.clids != c.clids {
            return Err(format!(
                "new value has CLs {:?}, the component has {:?}",
                new_value.clids, c.clids
            ));
        }
    }
    Ok(())
}

impl Invocation<'_> {
    /// Runs `ExecDeferred`. `Err` aborts the invocation (all triages failed
    /// and nothing was repartitioned), as the original's batch fails.
    pub fn exec_deferred(&mut self, triage: TriageFn) -> Result<Vec<action::Action>, String> {
        if self.pstate.status != p_state::Status::Started as i32 {
            // Nothing is scheduled for a project that is not running.
            self.pstate.next_eval_time = None;
            return Ok(Vec::new());
        }
        let mut repartitioned = false;
        if self.pstate.repartition_required || !self.pstate.created_pruns.is_empty() {
            repartitioned = true;
            let mut cat = self.categorize();
            self.load_active(&mut cat);
            self.repartition(&cat);
        }

        if let Some(memo) = self.run_ids {
            memo.forget_changed_pcls(self.changed_pcls.as_ref());
        }
        let mut results: Vec<(usize, TriageResult)> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut caught_bug = false;
        {
            let default_config = ProjectConfig::default();
            let view = PmView {
                luci_project: self.project,
                pstate: &self.pstate,
                config: self.pinned.as_ref().unwrap_or(&default_config),
                cls: self.cls,
                runs: self.runs,
                run_requests: self.run_requests,
                now: self.now,
                run_ids: self.run_ids,
            };
            for (i, c) in self.pstate.components.iter().enumerate() {
                if !needs_triage(c, &self.now) {
                    continue;
                }
                let outcome = call_triager(triage, c, &view)
                    .and_then(|r| validate(self, c, &r).map(|()| r).map_err(TriageError::Bug));
                match outcome {
                    Ok(result) => {
                        if c.triage_required && result.new_value.is_none() {
                            self.trace.push(format!(
                                "triage bug: component {:?} had triage_required but got no new value",
                                c.clids
                            ));
                        }
                        results.push((i, result));
                    }
                    Err(TriageError::OutdatedPmState(msg)) => {
                        self.trace.push(format!(
                            "triage of component {:?}: outdated PM state: {msg}",
                            c.clids
                        ));
                    }
                    Err(TriageError::Bug(msg)) => {
                        caught_bug = true;
                        failures.push(format!("component {:?}: {msg}", c.clids));
                    }
                }
            }
        }
        for failure in &failures {
            self.trace.push(format!("triage bug: {failure}"));
        }

        let mut effects = Vec::new();
        if results.is_empty() && !failures.is_empty() {
            let err = format!("failed to triage {} components", failures.len());
            if !repartitioned {
                return Err(err);
            }
            self.trace.push(format!(
                "{err}, but proceeding to save the repartitioned state"
            ));
        } else if !results.is_empty() || caught_bug {
            if caught_bug && !repartitioned {
                self.reasons.push(LogReason::Debug);
            }
            effects = self.act_on_components(results);
        }

        let asap = self.pstate.components.iter().any(|c| c.triage_required);
        self.pstate.next_eval_time = if asap {
            Some(self.now)
        } else {
            self.pstate
                .components
                .iter()
                .filter_map(|c| c.decision_time.as_ref())
                .min_by(|a, b| time::cmp(a, b))
                .cloned()
        };
        Ok(effects)
    }

    /// Acts on triage results (`actOnComponents`, §6.12): requests the Runs,
    /// replaces components, records purges and dependency votes.
    fn act_on_components(&mut self, results: Vec<(usize, TriageResult)>) -> Vec<action::Action> {
        let mut purge_tasks = Vec::new();
        let mut trigger_ops = Vec::new();
        for (index, result) in results {
            for run in result.runs_to_create {
                let run = self.complete_create_run(run);
                // A request stands for a Run not yet known (the triager
                // asks only for those; another triager may not).
                if self.run(&run.run_id).is_none() {
                    self.new_run_requests.push(run.run_id.clone());
                }
                self.immediate.push(action::Action::CreateRun(run));
            }
            purge_tasks.extend(result.cls_to_purge);
            trigger_ops.extend(result.cls_to_trigger_deps);
            if let Some(new_value) = result.new_value {
                self.pstate.components[index] = new_value;
            }
        }
        let mut effects = self.add_cls_to_purge(purge_tasks);
        effects.extend(self.add_cls_to_trigger_deps(trigger_ops));
        effects
    }

    /// Fills what a triager may leave out of a requested Run: the project,
    /// and the operation id derived from (project, run id) as the real
    /// triager derives it.
    fn complete_create_run(&self, mut run: CreateRun) -> CreateRun {
        if run.luci_project.is_empty() {
            run.luci_project = self.project.to_string();
        }
        if run.operation_id.is_empty() {
            run.operation_id = operation_id(self.project, &run.run_id);
        }
        run
    }
}
