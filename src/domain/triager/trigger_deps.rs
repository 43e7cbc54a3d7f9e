//! Trigger-deps staging (domain/luci-pm.md §7.7, the original's `trigger.go`):
//! which CLs propagate their FULL_RUN CQ vote to their deps (chained CQ votes).

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::triage_api::{PmView, TriageError};
use crate::proto::TriggeringClDeps;

use super::cls::ClInfo;
use super::cq_trigger;
use super::deps::mode_of;

/// The dep votes to start, ascending by origin clid (without op id and deadline).
///
/// Only the top-most CL of a stack schedules: a candidate that is a dep of
/// another candidate is dropped. (The original prunes while iterating a map,
/// so for non-stack graphs its outcome depends on map order; this prunes
/// against the full candidate set, which is one of its possible outcomes for
/// acyclic graphs and is order-independent.)
pub(crate) fn stage_trigger_cl_deps(
    cls: &BTreeMap<i64, ClInfo<'_>>,
    view: &PmView<'_>,
) -> Result<Vec<TriggeringClDeps>, TriageError> {
    let mut candidates = BTreeSet::new();
    let mut barred = BTreeSet::new();
    // Descending clid order, for a consistent origin decision.
    for (&clid, info) in cls.iter().rev() {
        let Some(deps) = &info.deps else { continue };
        if deps.need_to_trigger.is_empty() {
            continue;
        }
        if can_schedule(info, cls) {
            candidates.insert(clid);
        } else {
            // If a CL must not schedule a new op, none of its deps may either.
            barred.extend(info.pcl.deps.iter().map(|d| d.clid));
        }
    }
    let mut dropped = barred;
    for clid in &candidates {
        dropped.extend(cls[clid].pcl.deps.iter().map(|d| d.clid));
    }
    let mut out = Vec::new();
    for clid in candidates.difference(&dropped) {
        let info = &cls[clid];
        let cg_index = info
            .pcl
            .config_group_indexes
            .first()
            .copied()
            .ok_or_else(|| TriageError::Bug(format!("PCL {clid} without ConfigGroup index")))?;
        let cg = view.config_group(cg_index).ok_or_else(|| {
            TriageError::Bug(format!(
                "CL {clid}: config group index {cg_index} is out of range"
            ))
        })?;
        let need = info
            .deps
            .as_ref()
            .map_or(&[][..], |d| &d.need_to_trigger[..]);
        out.push(TriggeringClDeps {
            origin_clid: *clid,
            dep_clids: need.iter().map(|d| d.clid).collect(),
            trigger: cq_trigger(info.pcl).cloned(),
            config_group_name: cg.name.clone(),
            ..TriggeringClDeps::default()
        });
    }
    Ok(out)
}

/// Whether a CL with deps to trigger may schedule a new dep vote now.
pub(crate) fn can_schedule(info: &ClInfo<'_>, cls: &BTreeMap<i64, ClInfo<'_>>) -> bool {
    let cq_mode = mode_of(cq_trigger(info.pcl));
    if cq_mode.is_empty() {
        return false;
    }
    let not_yet_loaded = info
        .deps
        .as_ref()
        .is_some_and(|d| !d.not_yet_loaded.is_empty());
    if info.pcl.outdated.is_some()
        || not_yet_loaded
        || info.purging_cl.is_some()
        || !info.purge_reasons.is_empty()
        || info.triggering_cl_deps.is_some()
        || info.has_incomplete_run(cq_mode)
    {
        return false;
    }
    // Wait while a dep is being purged or triggered, or while a dep still
    // runs in this mode with its own deps to trigger (its parent's Run failed).
    for dep in &info.pcl.deps {
        let Some(dci) = cls.get(&dep.clid) else {
            continue;
        };
        let dep_needs_trigger = dci
            .deps
            .as_ref()
            .is_some_and(|d| !d.need_to_trigger.is_empty());
        if dci.pcl.outdated.is_some()
            || dci.purging_cl.is_some()
            || !dci.purge_reasons.is_empty()
            || dci.triggering_cl_deps.is_some()
            || (dci.has_incomplete_run(cq_mode) && dep_needs_trigger)
        {
            return false;
        }
    }
    true
}
