//! The contract between the state machine and the triager (the original's
//! `itriager` package): what a triager sees of the PM state and what it
//! returns for one component.

use super::triager::memo::RunIdMemo;
use crate::proto::Timestamp;
use crate::proto::{
    ChangeList, Component, ConfigGroup, CreateRun, PState, Pcl, ProjectConfig, PurgeCl, PurgingCl,
    Run, RunRequest, TriggeringClDeps,
};

/// A read-only view of the project offered to the triager.
#[derive(Debug, Clone, Copy)]
pub struct PmView<'a> {
    /// The LUCI project.
    pub luci_project: &'a str,
    /// The PM state being triaged (PCLs sorted by clid).
    pub pstate: &'a PState,
    /// The pinned config (its hash is `pstate.config_hash`).
    pub config: &'a ProjectConfig,
    /// Latest known CL entity versions, sorted by clid.
    pub cls: &'a [ChangeList],
    /// Known Runs (incomplete, or ended within 7 days), sorted by id in
    /// descending order ([`super::known_run`] finds one).
    pub runs: &'a [Run],
    /// Runs requested by the PM and not yet seen, sorted by run id.
    pub run_requests: &'a [RunRequest],
    /// The batch's clock.
    pub now: Timestamp,
    /// RunIDs planned at earlier invocations of this state (`None`: plan
    /// every Run afresh). Triage decides the same either way.
    pub run_ids: Option<&'a RunIdMemo>,
}

impl<'a> PmView<'a> {
    /// The PCL of a CL, if tracked.
    pub fn pcl(&self, clid: i64) -> Option<&'a Pcl> {
        let pcls = &self.pstate.pcls;
        pcls.binary_search_by_key(&clid, |p| p.clid)
            .ok()
            .map(|i| &pcls[i])
    }

    /// The in-flight purge of a CL, if any.
    pub fn purging_cl(&self, clid: i64) -> Option<&'a PurgingCl> {
        first_with_key(&self.pstate.purging_cls, clid, |p| p.clid)
    }

    /// The in-flight dependency vote whose origin is this CL, if any.
    pub fn triggering_cl_deps(&self, origin_clid: i64) -> Option<&'a TriggeringClDeps> {
        first_with_key(&self.pstate.triggering_cl_deps, origin_clid, |t| {
            t.origin_clid
        })
    }

    /// A config group of the pinned config by its index in `config_group_names`.
    pub fn config_group(&self, index: i32) -> Option<&'a ConfigGroup> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.config.config_groups.get(i))
    }

    /// The latest known entity version of a CL ("not found" if never announced or deleted).
    pub fn cl(&self, clid: i64) -> Option<&'a ChangeList> {
        self.cls
            .binary_search_by_key(&clid, |c| c.clid)
            .ok()
            .map(|i| &self.cls[i])
            .filter(|c| !c.deleted)
    }

    /// A known Run by id.
    pub fn run(&self, id: &str) -> Option<&'a Run> {
        super::known_run(self.runs, id)
    }

    /// When the PM last asked for this RunID, if it is still outstanding.
    pub fn run_request(&self, run_id: &str) -> Option<&'a RunRequest> {
        self.run_requests
            .binary_search_by(|r| r.run_id.as_str().cmp(run_id))
            .ok()
            .map(|i| &self.run_requests[i])
    }
}

/// What triage decided for one component.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriageResult {
    /// Runs to create, with disjoint CL sets.
    pub runs_to_create: Vec<CreateRun>,
    /// The replacement component; set whenever the input had `triage_required`.
    pub new_value: Option<Component>,
    /// Purges, with `purging_cl.clid`, `purging_cl.apply_to` and `purge_reasons` set
    /// (operation id, deadline and config groups are filled in by the state machine).
    pub cls_to_purge: Vec<PurgeCl>,
    /// Dependency votes, without operation id and deadline.
    pub cls_to_trigger_deps: Vec<TriggeringClDeps>,
}

/// Why triage of one component produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriageError {
    /// The PM's view is stale (the original's `ErrOutdatedPMState`); ignored for the component.
    #[error("outdated PM state: {0}")]
    OutdatedPmState(String),
    /// A state the original crashes on (a caught panic there); the batch logs it with `DEBUG`.
    #[error("triage bug: {0}")]
    Bug(String),
}

/// The first entry of `list` whose key is `key`: `list` is sorted by that
/// key, as `purging_cls` (by clid) and `triggering_cl_deps` (by origin) are
/// kept, so this is the entry a front-to-back search finds.
pub(crate) fn first_with_key<T>(list: &[T], key: i64, key_of: impl Fn(&T) -> i64) -> Option<&T> {
    let at = list.partition_point(|e| key_of(e) < key);
    list.get(at).filter(|e| key_of(e) == key)
}
