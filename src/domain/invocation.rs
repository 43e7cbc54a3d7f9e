//! One PM invocation: the working copy of the state it mutates, what it
//! reads (known CLs, Runs, configs), and the helpers every transition shares
//! (loading CLs into PCLs, marking components, purges and dependency votes).

use std::collections::BTreeSet;

use crate::proto::Timestamp;

use super::config::{config_group_id, Matcher};
use super::pcl::{make_pcl, PclContext};
use super::time;
use super::RunIdMemo;
use crate::proto::project_log::LogReason;
use crate::proto::{
    action, purging_cl, ChangeList, PRun, PState, Pcl, ProjectConfig, PurgeCl, PurgingCl, Run,
    RunRequest, TriggerClDeps, TriggeringClDeps,
};

/// How long a purge operation may take (the original's `maxPurgingCLDuration`).
pub const MAX_PURGING_CL_DURATION_MINUTES: i64 = 10;
/// How long a dependency vote may take (`MaxTriggeringCLDepsDuration`).
pub const MAX_TRIGGERING_CL_DEPS_DURATION_MINUTES: i64 = 8;
/// Grace after an operation's deadline before it is dropped from the state.
pub const OPERATION_EXPIRY_GRACE_MINUTES: i64 = 1;

/// The reason given to Runs cancelled because the project is disabled.
pub fn cancel_reason(project: &str) -> String {
    format!("CV is disabled for LUCI Project \"{project}\"")
}

/// A set-but-empty notification: nobody is notified (the original's `NoNotification`).
pub fn no_notification() -> Option<purging_cl::Notification> {
    Some(purging_cl::Notification::default())
}

/// The `PRun` of a Run: its id, sorted unique CL ids, mode and root CL.
pub fn make_prun(run: &Run) -> PRun {
    let mut clids = run.clids.clone();
    clids.sort_unstable();
    clids.dedup();
    PRun {
        id: run.id.clone(),
        clids,
        mode: run.mode.clone(),
        root_clid: run.root_clid,
    }
}

/// Whether a Run status is terminal (`status & ENDED_MASK`).
pub fn run_status_ended(status: i32) -> bool {
    status & 64 != 0
}

/// The working state and the inputs of one invocation.
pub struct Invocation<'a> {
    /// The LUCI project.
    pub project: &'a str,
    /// The batch's clock.
    pub now: Timestamp,
    /// Latest known CL versions, sorted by clid.
    pub cls: &'a [ChangeList],
    /// Known Runs, sorted by id, descending (`known_run_position`).
    pub runs: &'a [Run],
    /// Outstanding Run requests, sorted by run id.
    pub run_requests: &'a [RunRequest],
    /// The latest announced config (`None`: the project has no config).
    pub latest_config: Option<&'a ProjectConfig>,
    /// The PM state being computed.
    pub pstate: PState,
    /// The pinned config being computed.
    pub pinned: Option<ProjectConfig>,
    /// The config matcher of `pinned`, built on first use.
    pub matcher: Option<Matcher>,
    /// Log reasons accumulated by the transitions.
    pub reasons: Vec<LogReason>,
    /// Effects the original performs while computing the transitions, before
    /// its transaction (poller and Run pokes, Run creation), in order.
    pub immediate: Vec<action::Action>,
    /// Warnings: invalid or ignored inputs, caught triage bugs.
    pub trace: Vec<String>,
    /// Run ids requested by this invocation.
    pub new_run_requests: Vec<String>,
    /// The PCLs changed or added so far; `None`: any of them.
    pub changed_pcls: Option<BTreeSet<i64>>,
    /// `pstate.purging_cls` as loaded, kept when the invocation first
    /// changes it (through [`Invocation::purging_cls_mut`]): restored if
    /// the invocation fails. `None`: unchanged.
    pub loaded_purging_cls: Option<Vec<PurgingCl>>,
    /// `pstate.triggering_cl_deps` as loaded, kept the same way
    /// ([`Invocation::triggering_cl_deps_mut`]).
    pub loaded_triggering_cl_deps: Option<Vec<TriggeringClDeps>>,
    /// RunIDs remembered from earlier invocations, given to the triager.
    pub run_ids: Option<&'a RunIdMemo>,
}

impl<'a> Invocation<'a> {
    /// The CLs being purged, to change: the first call keeps a copy of them
    /// as loaded. Every change to `pstate.purging_cls` goes through here.
    pub fn purging_cls_mut(&mut self) -> &mut Vec<PurgingCl> {
        self.loaded_purging_cls
            .get_or_insert_with(|| self.pstate.purging_cls.clone());
        &mut self.pstate.purging_cls
    }

    /// The dependency votes in flight, to change: the first call keeps a
    /// copy of them as loaded. Every change to `pstate.triggering_cl_deps`
    /// goes through here.
    pub fn triggering_cl_deps_mut(&mut self) -> &mut Vec<TriggeringClDeps> {
        self.loaded_triggering_cl_deps
            .get_or_insert_with(|| self.pstate.triggering_cl_deps.clone());
        &mut self.pstate.triggering_cl_deps
    }

    /// The latest known version of a CL, unless unknown or deleted.
    pub fn cl(&self, clid: i64) -> Option<&'a ChangeList> {
        let cls = self.cls;
        cls.binary_search_by_key(&clid, |c| c.clid)
            .ok()
            .map(|i| &cls[i])
            .filter(|c| !c.deleted)
    }

    /// A known Run.
    pub fn run(&self, id: &str) -> Option<&'a Run> {
        super::known_run(self.runs, id)
    }

    /// Position of a CL's PCL in `pstate.pcls`.
    pub fn pcl_index(&self, clid: i64) -> Option<usize> {
        self.pstate
            .pcls
            .binary_search_by_key(&clid, |p| p.clid)
            .ok()
    }

    /// A CL's PCL.
    pub fn pcl(&self, clid: i64) -> Option<&Pcl> {
        self.pcl_index(clid).map(|i| &self.pstate.pcls[i])
    }

    /// The in-flight purge of a CL.
    pub fn purging_cl(&self, clid: i64) -> Option<&PurgingCl> {
        super::triage_api::first_with_key(&self.pstate.purging_cls, clid, |p| p.clid)
    }

    /// Sorted ids of all incomplete Runs (components' and created ones).
    pub fn incomplete_runs(&self) -> Vec<String> {
        let ids: BTreeSet<&str> = self
            .pstate
            .components
            .iter()
            .flat_map(|c| c.pruns.iter())
            .chain(self.pstate.created_pruns.iter())
            .map(|r| r.id.as_str())
            .collect();
        ids.into_iter().map(str::to_string).collect()
    }

    /// Marks every component for triage.
    pub fn mark_all_for_triage(&mut self) {
        for c in &mut self.pstate.components {
            c.triage_required = true;
        }
    }

    /// Marks for triage every component containing one of the CLs.
    pub fn mark_for_triage_containing(&mut self, clids: &BTreeSet<i64>) {
        for c in &mut self.pstate.components {
            if !c.triage_required && c.clids.iter().any(|id| clids.contains(id)) {
                c.triage_required = true;
            }
        }
    }

    /// Marks for triage every component containing a changed CL or a CL that
    /// (transitively) depends on one.
    fn mark_for_triage_on_changed(&mut self, changed: &BTreeSet<i64>) {
        // (dep, dependent) pairs, sorted: the dependents of a CL are a run.
        let mut reverse_deps: Vec<(i64, i64)> = self
            .pstate
            .pcls
            .iter()
            .flat_map(|p| p.deps.iter().map(|dep| (dep.clid, p.clid)))
            .collect();
        reverse_deps.sort_unstable();
        let mut expanded = BTreeSet::new();
        let mut stack: Vec<i64> = changed.iter().copied().collect();
        while let Some(clid) = stack.pop() {
            if expanded.insert(clid) {
                let from = reverse_deps.partition_point(|&(dep, _)| dep < clid);
                let children = reverse_deps[from..]
                    .iter()
                    .take_while(|&&(dep, _)| dep == clid);
                stack.extend(children.map(|&(_, child)| child));
            }
        }
        self.mark_for_triage_containing(&expanded);
    }

    /// Builds the PCL of one CL against the pinned config.
    fn build_pcl(&mut self, clid: i64, old: Option<&Pcl>) -> Pcl {
        let default_config = ProjectConfig::default();
        let ctx = PclContext {
            project: self.project,
            now: &self.now,
            pinned: self.pinned.as_ref().unwrap_or(&default_config),
            config_group_names: &self.pstate.config_group_names,
        };
        let cl = self.cl(clid);
        make_pcl(&ctx, clid, cl, old, &mut self.matcher, &mut self.trace)
    }

    /// Re-evaluates the given CLs from their latest known versions, inserting
    /// new PCLs and replacing changed ones (the original's `evalCLsFromDS`).
    /// If any PCL changed, sets `repartition_required` and marks the affected
    /// components. Returns the changed CLs.
    pub fn eval_cls(&mut self, clids: &[i64]) -> BTreeSet<i64> {
        /// Up to this many new PCLs are inserted one by one, more are
        /// merged in one pass.
        const FEW_INSERTED: usize = 4;
        let mut wanted: Vec<i64> = clids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut changed = BTreeSet::new();
        // Known CLs are replaced in place; new ones are merged in at the end
        // (the list stays sorted by clid).
        let mut inserted = Vec::new();
        for clid in wanted {
            match self.pcl_index(clid) {
                Some(i) => {
                    // Building a PCL reads no other PCL.
                    let old = std::mem::take(&mut self.pstate.pcls[i]);
                    let new = self.build_pcl(clid, Some(&old));
                    if old != new {
                        changed.insert(clid);
                    }
                    self.pstate.pcls[i] = new;
                }
                None => {
                    inserted.push(self.build_pcl(clid, None));
                    changed.insert(clid);
                }
            }
        }
        if inserted.len() <= FEW_INSERTED {
            // One move of the PCLs after each (a CL voted again after its
            // PCL was dropped comes back alone).
            for new in inserted {
                let at = self.pstate.pcls.partition_point(|p| p.clid < new.clid);
                self.pstate.pcls.insert(at, new);
            }
        } else {
            let old_pcls = std::mem::take(&mut self.pstate.pcls);
            let mut merged = Vec::with_capacity(old_pcls.len() + inserted.len());
            let mut old_iter = old_pcls.into_iter().peekable();
            for new in inserted {
                while let Some(p) = old_iter.next_if(|p| p.clid < new.clid) {
                    merged.push(p);
                }
                merged.push(new);
            }
            merged.extend(old_iter);
            self.pstate.pcls = merged;
        }
        if !changed.is_empty() {
            self.pstate.repartition_required = true;
            self.mark_for_triage_on_changed(&changed);
            if let Some(all) = &mut self.changed_pcls {
                all.extend(changed.iter().copied());
            }
        }
        changed
    }

    /// Re-evaluates every PCL against a new pinned config (`reevalPCLs`).
    pub fn reeval_pcls(&mut self) {
        let old_pcls = std::mem::take(&mut self.pstate.pcls);
        let mut changed = false;
        let mut new_pcls = Vec::with_capacity(old_pcls.len());
        for old in &old_pcls {
            let new = self.build_pcl(old.clid, Some(old));
            changed |= &new != old;
            new_pcls.push(new);
        }
        self.pstate.pcls = new_pcls;
        if changed {
            self.pstate.repartition_required = true;
            self.changed_pcls = None;
        }
    }

    /// Records purges in the state and returns their `PurgeCl` actions
    /// (`addCLsToPurge`): deadline now + 10 min, operation id
    /// `"<deadline unix seconds>-<clid>"`, the CL's own config groups.
    pub fn add_cls_to_purge(&mut self, tasks: Vec<PurgeCl>) -> Vec<action::Action> {
        if tasks.is_empty() {
            return Vec::new();
        }
        let deadline = time::add_minutes(&self.now, MAX_PURGING_CL_DURATION_MINUTES);
        let mut actions = Vec::with_capacity(tasks.len());
        for mut task in tasks {
            let mut purging = task.purging_cl.take().unwrap_or_default();
            let clid = purging.clid;
            purging.deadline = Some(deadline);
            purging.operation_id = format!("{}-{}", deadline.seconds, clid);
            task.luci_project = self.project.to_string();
            task.config_groups = self
                .pcl(clid)
                .map(|p| {
                    p.config_group_indexes
                        .iter()
                        .filter_map(|&i| usize::try_from(i).ok())
                        .filter_map(|i| self.pstate.config_group_names.get(i))
                        .map(|name| config_group_id(&self.pstate.config_hash, name))
                        .collect()
                })
                .unwrap_or_default();
            let purging_cls = self.purging_cls_mut();
            let at = purging_cls.partition_point(|p| p.clid <= clid);
            purging_cls.insert(at, purging.clone());
            task.purging_cl = Some(purging);
            actions.push(action::Action::PurgeCl(task));
        }
        actions
    }

    /// Records dependency votes in the state and returns their
    /// `TriggerClDeps` actions (`addCLsToTriggerDeps`): deadline now + 8 min,
    /// operation id `"<deadline unix seconds>-<origin>"`. As the original's
    /// scheduler, no action is emitted for an operation without deps.
    pub fn add_cls_to_trigger_deps(&mut self, ops: Vec<TriggeringClDeps>) -> Vec<action::Action> {
        let deadline = time::add_minutes(&self.now, MAX_TRIGGERING_CL_DEPS_DURATION_MINUTES);
        let mut actions = Vec::with_capacity(ops.len());
        for mut op in ops {
            op.deadline = Some(deadline);
            op.operation_id = format!("{}-{}", deadline.seconds, op.origin_clid);
            let votes = self.triggering_cl_deps_mut();
            let at = votes.partition_point(|t| t.origin_clid <= op.origin_clid);
            votes.insert(at, op.clone());
            if !op.dep_clids.is_empty() {
                actions.push(action::Action::TriggerClDeps(TriggerClDeps {
                    triggering_cl_deps: Some(op),
                    luci_project: self.project.to_string(),
                }));
            }
        }
        actions
    }
}
