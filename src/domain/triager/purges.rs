//! Purge staging (domain/luci-pm.md §7.6, the original's `purges.go`): which
//! CLs to purge now, and when to look again for purges that must wait for
//! the stabilization delay of a combinable group.

use std::collections::BTreeMap;

use crate::domain::triage_api::{PmView, TriageError};
use crate::proto::{purge_reason, purging_cl, PurgeCl, PurgingCl, Triggers};

use super::cls::ClInfo;
use super::{cq_trigger, npr_trigger};
use crate::domain::time::{duration_nanos, earliest, to_nanos, Nanos};

/// Purges to do now (ascending clid) and the earliest future purge time.
pub(crate) fn stage_purges(
    cls: &BTreeMap<i64, ClInfo<'_>>,
    view: &PmView<'_>,
) -> Result<(Vec<PurgeCl>, Option<Nanos>), TriageError> {
    let now = to_nanos(&view.now);
    let mut out = Vec::new();
    let mut next = None;
    for (&clid, info) in cls {
        if info.purging_cl.is_some() || info.pcl.outdated.is_some() {
            // Already being purged, or the PM must not act on a stale CL.
            continue;
        }
        match purge_eta(info, now, view)? {
            None => {}
            Some(eta) if eta > now => next = earliest(next, Some(eta)),
            Some(_) => out.push(PurgeCl {
                purging_cl: Some(PurgingCl {
                    clid,
                    apply_to: purge_apply_to(info),
                    ..PurgingCl::default()
                }),
                purge_reasons: info.purge_reasons.clone(),
                ..PurgeCl::default()
            }),
        }
    }
    Ok((out, next))
}

/// What to purge: all active triggers if any reason says so, else the union
/// of the triggers the reasons name.
fn purge_apply_to(info: &ClInfo<'_>) -> Option<purging_cl::ApplyTo> {
    let mut triggers: Option<Triggers> = None;
    for reason in &info.purge_reasons {
        match &reason.apply_to {
            Some(purge_reason::ApplyTo::AllActiveTriggers(_)) => {
                return Some(purging_cl::ApplyTo::AllActiveTriggers(true))
            }
            Some(purge_reason::ApplyTo::Triggers(t)) => {
                let acc = triggers.get_or_insert_with(Triggers::default);
                // Like proto.Merge: set fields of `t` replace those of `acc`.
                if t.cq_vote_trigger.is_some() {
                    acc.cq_vote_trigger.clone_from(&t.cq_vote_trigger);
                }
                if t.new_patchset_run_trigger.is_some() {
                    acc.new_patchset_run_trigger
                        .clone_from(&t.new_patchset_run_trigger);
                }
            }
            None => {}
        }
    }
    triggers.map(purging_cl::ApplyTo::Triggers)
}

/// The earliest time the CL may be purged; `None` if it must not be purged.
pub(crate) fn purge_eta(
    info: &ClInfo<'_>,
    now: Nanos,
    view: &PmView<'_>,
) -> Result<Option<Nanos>, TriageError> {
    if info.purge_reasons.is_empty() {
        return Ok(None);
    }
    let [cg_index] = info.pcl.config_group_indexes.as_slice() else {
        // A bad config: waiting does not help.
        return Ok(Some(now));
    };
    let cq = cq_trigger(info.pcl);
    if cq.is_none() && npr_trigger(info.pcl).is_none() {
        return Err(TriageError::Bug(format!(
            "CL {} is not triggered and thus can't be purged (reasons: {:?})",
            info.pcl.clid, info.purge_reasons
        )));
    }
    let mut eta = None;
    if npr_trigger(info.pcl).is_some() {
        eta = earliest(eta, Some(now));
    }
    if cq.is_some() {
        let cg = view.config_group(*cg_index).ok_or_else(|| {
            TriageError::Bug(format!(
                "CL {}: config group index {cg_index} is out of range",
                info.pcl.clid
            ))
        })?;
        match cg
            .combine_cls
            .as_ref()
            .and_then(|c| c.stabilization_delay.as_ref())
        {
            None => eta = earliest(eta, Some(now)),
            Some(delay) => {
                let t = info.last_cq_vote_triggered().ok_or_else(|| {
                    TriageError::Bug(
                        "impossible: CQ label is triggered but triggering time is zero".to_string(),
                    )
                })?;
                eta = earliest(eta, Some(t + duration_nanos(delay)));
            }
        }
    }
    Ok(eta)
}
