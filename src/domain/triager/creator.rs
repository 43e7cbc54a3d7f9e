//! Building the `CreateRun` action for a combo of CLs (domain/luci-pm.md
//! §7.5.1, the original's `makeCreator` and the Run creator's RunID).

use std::collections::BTreeMap;

use crate::domain::triage_api::{PmView, TriageError};
use crate::proto::{
    ChangeList, Component, CreateRun, InputCl, Pcl, RunOptions, Snapshot, Timestamp, Trigger,
};

use super::cls::ClInfo;
use super::run_id::{self, RunIdCl};
use super::to_timestamp;
use super::{TriggerKind, DRY_RUN, FULL_RUN, NEW_PATCHSET_RUN, QUICK_DRY_RUN};
use crate::domain::time::{nanos_if_set, round_nanos_to_micros};

/// The Gerrit label whose positive vote makes the owner pay for a full Run.
pub(crate) const AUTO_SUBMIT_LABEL: &str = "Auto-Submit";
/// The Commit-Queue vote value of FULL_RUN.
const FULL_RUN_CQ_VOTE: i32 = 2;

/// The CLs of a Run to create, with the one triggered last.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Combo {
    /// Member CLIDs, ascending.
    pub(crate) all: Vec<i64>,
    /// Members that are not `cq_ready`.
    pub(crate) not_ready: Vec<i64>,
    /// Some member with not-yet-loaded deps (the last one in clid order).
    pub(crate) with_not_yet_loaded_deps: Option<i64>,
    /// The member with the latest chosen-trigger time (first in clid order on ties).
    pub(crate) latest_triggered: Option<i64>,
    /// That latest trigger time.
    pub(crate) max_triggered_time: Option<i128>,
}

impl Combo {
    /// Builds a combo from members, visited in ascending clid order.
    pub(crate) fn new<'b, 'a: 'b>(
        members: impl IntoIterator<Item = &'b ClInfo<'a>>,
        kind: TriggerKind,
    ) -> Combo {
        let mut combo = Combo {
            all: Vec::new(),
            not_ready: Vec::new(),
            with_not_yet_loaded_deps: None,
            latest_triggered: None,
            max_triggered_time: None,
        };
        for info in members {
            let clid = info.pcl.clid;
            combo.all.push(clid);
            if !info.cq_ready {
                combo.not_ready.push(clid);
            }
            if info
                .deps
                .as_ref()
                .is_some_and(|d| !d.not_yet_loaded.is_empty())
            {
                combo.with_not_yet_loaded_deps = Some(clid);
            }
            if let Some(t) = kind
                .choose(info.pcl.triggers.as_ref())
                .and_then(|t| nanos_if_set(t.time.as_ref()))
            {
                if combo.max_triggered_time.map_or(true, |max| t > max) {
                    combo.max_triggered_time = Some(t);
                    combo.latest_triggered = Some(clid);
                }
            }
        }
        combo
    }
}

/// What staging decides on before a `CreateRun` is built: the RunID, and
/// everything the original's `makeCreator` validates on the way to it.
///
/// Planning performs every check of the original's `makeCreator` and of the
/// Run creator's `prepare`, in their order, and hashes the RunID once; it
/// builds none of the action's other fields. Most staged combos are never
/// emitted (the Run exists, was just requested, or waits for a dep), so the
/// full action is built by [`build_run`] only for the Runs created now.
#[derive(Debug, Clone)]
pub(crate) struct RunPlan<'v> {
    /// The Run's id (domain/luci-pm.md §1.1).
    pub(crate) run_id: String,
    /// The chosen trigger of the last-triggered CL: its mode is the Run's.
    pub(crate) trigger: &'v Trigger,
    /// The combo's CL entities, in combo order.
    entities: Vec<&'v ChangeList>,
    /// The config group's name.
    cg_name: &'v str,
    /// The last-triggered CL's owner (checked as a `user` identity).
    owner_email: &'v str,
    /// Who triggered it (checked as a `user` identity).
    triggerer_email: &'v str,
    /// Whether the owner pays for the Run (else the triggerer).
    owner_pays: bool,
    create_time: Timestamp,
}

/// Validates a combo's Run and computes its RunID (see [`RunPlan`]): the
/// errors of the original's `makeCreator` and the Run creator's `prepare`,
/// in their order.
pub(crate) fn plan_run<'v>(
    view: &PmView<'v>,
    cls: &BTreeMap<i64, ClInfo<'v>>,
    combo: &Combo,
    cg_index: i32,
    kind: TriggerKind,
) -> Result<RunPlan<'v>, TriageError> {
    let cg = view.config_group(cg_index).ok_or_else(|| {
        TriageError::Bug(format!("config group index {cg_index} is out of range"))
    })?;
    let latest = combo
        .latest_triggered
        .ok_or_else(|| TriageError::Bug(format!("combo {:?} has no triggered CL", combo.all)))?;

    // Load the CL entities. A CL unknown to the fold is a stale view: the PM
    // state will drop it soon (the original treats this as transient).
    let mut entities = Vec::with_capacity(combo.all.len());
    for clid in &combo.all {
        let cl = view.cl(*clid).ok_or_else(|| {
            TriageError::OutdatedPmState(format!("failed to load CLs: CL {clid} not found"))
        })?;
        entities.push(cl);
    }
    // The latest-triggered CL is a member: its entity is already loaded.
    let latest_entity = match combo.all.iter().position(|&clid| clid == latest) {
        Some(i) => entities[i],
        None => view.cl(latest).ok_or_else(|| {
            TriageError::OutdatedPmState(format!("failed to load CLs: CL {latest} not found"))
        })?,
    };
    let owner_email = owner_email(latest, latest_entity.snapshot.as_ref())?;

    // The members' PCLs and chosen triggers (the future `input_cls`).
    let mut members: Vec<(&'v Pcl, Option<&'v Trigger>)> = Vec::with_capacity(combo.all.len());
    for (clid, cl) in combo.all.iter().zip(&entities) {
        let info = cls
            .get(clid)
            .ok_or_else(|| TriageError::Bug(format!("combo CL {clid} is not in the component")))?;
        let pcl: &'v Pcl = info.pcl;
        let (expected, actual) = (pcl.eversion, cl.eversion);
        if expected != actual {
            return Err(TriageError::OutdatedPmState(format!(
                "CL {clid} EVersion changed {expected} => {actual}"
            )));
        }
        members.push((pcl, kind.choose(pcl.triggers.as_ref())));
    }

    let latest_pcl: &'v Pcl = cls
        .get(&latest)
        .ok_or_else(|| TriageError::Bug(format!("combo CL {latest} is not in the component")))?
        .pcl;
    let t = kind
        .choose(latest_pcl.triggers.as_ref())
        .ok_or_else(|| TriageError::Bug(format!("CL {latest} lost its trigger")))?;
    check_user_email(&t.email).map_err(|e| {
        TriageError::Bug(format!(
            "failed to construct triggerer identity of {:?}: {e}",
            t.email
        ))
    })?;
    // The owner identity is `user:<email>`, never empty or anonymous, so
    // `quota_payer` can only choose here.
    let owner_pays = owner_pays(t, latest_entity.snapshot.as_ref());
    let create_ns = nanos_if_set(t.time.as_ref())
        .ok_or_else(|| TriageError::Bug(format!("CL {latest}: trigger without time")))?;
    let create_time = to_timestamp(round_nanos_to_micros(create_ns))?;

    let run_id = expected_run_id(
        view.luci_project,
        t,
        &create_time,
        combo,
        &members,
        &entities,
    )?;
    Ok(RunPlan {
        run_id,
        trigger: t,
        entities,
        cg_name: &cg.name,
        owner_email,
        triggerer_email: &t.email,
        owner_pays,
        create_time,
    })
}

/// The `CreateRun` of a planned Run (without `dep_runs`): the original's
/// `makeCreator` after its checks.
///
/// The trigger of each CL is its PCL's (PCL triggers carry email and Gerrit
/// account id), so the original's re-extraction from the snapshot and its
/// mode-consistency check are not needed.
pub(crate) fn build_run<'v>(
    view: &PmView<'v>,
    component: &Component,
    cls: &BTreeMap<i64, ClInfo<'v>>,
    combo: &Combo,
    plan: RunPlan<'v>,
    kind: TriggerKind,
) -> CreateRun {
    let mut options = RunOptions::default();
    let mut incomplete_runs = Vec::new();
    let mut input_cls = Vec::with_capacity(combo.all.len());
    for (clid, cl) in combo.all.iter().zip(&plan.entities) {
        // Planning checked that every member is in the component.
        let Some(info) = cls.get(clid) else { continue };
        for &ri in &info.run_indexes {
            incomplete_runs.push(component.pruns[ri].id.clone());
        }
        merge_options(&mut options, cl.snapshot.as_ref());
        input_cls.push(InputCl {
            clid: *clid,
            expected_eversion: info.pcl.eversion,
            trigger: kind.choose(info.pcl.triggers.as_ref()).cloned(),
        });
    }
    incomplete_runs.sort();
    let t = plan.trigger;
    let luci_project = view.luci_project.to_string();
    let operation_id = run_id::operation_id(&luci_project, &plan.run_id);
    let owner = format!("user:{}", plan.owner_email);
    let created_by = format!("user:{}", plan.triggerer_email);
    let billed_to = if plan.owner_pays {
        owner.clone()
    } else {
        created_by.clone()
    };
    CreateRun {
        run_id: plan.run_id,
        config_group_id: format!("{}/{}", view.pstate.config_hash, plan.cg_name),
        mode: t.mode.clone(),
        create_time: Some(plan.create_time),
        owner,
        created_by,
        billed_to,
        input_cls,
        dep_runs: Vec::new(),
        expected_incomplete_run_ids: incomplete_runs,
        options: Some(options),
        operation_id,
        mode_definition: t.mode_definition.clone(),
        luci_project,
    }
}

/// The RunID of a Run, after the Run creator's own validation (the
/// original's `prepare`, which panics on violations).
fn expected_run_id(
    luci_project: &str,
    trigger: &Trigger,
    create_time: &Timestamp,
    combo: &Combo,
    members: &[(&Pcl, Option<&Trigger>)],
    entities: &[&ChangeList],
) -> Result<String, TriageError> {
    let bug = |msg: &str| Err(TriageError::Bug(format!("run creator: {msg}")));
    let standard = [DRY_RUN, FULL_RUN, NEW_PATCHSET_RUN, QUICK_DRY_RUN];
    if luci_project.is_empty() {
        return bug("LUCIProject is required");
    }
    if combo.all.is_empty() {
        return bug("At least 1 CL is required");
    }
    if trigger.mode.is_empty() {
        return bug("Mode is required");
    }
    if !standard.contains(&trigger.mode.as_str()) && trigger.mode_definition.is_none() {
        return bug("ModeDefinition is required for non-standard mode");
    }
    // Combos list their CLs in ascending order, so duplicates are looked
    // for only in a list that is not.
    let ascending = combo.all.windows(2).all(|pair| pair[0] < pair[1]);
    let mut digest_cls = Vec::with_capacity(combo.all.len());
    for (i, ((clid, (pcl, cl_trigger)), cl)) in
        combo.all.iter().zip(members).zip(entities).enumerate()
    {
        if *clid == 0 {
            return bug("ID of the CL is required");
        }
        if pcl.eversion == 0 {
            return bug("expectedEversion of the CL is required");
        }
        let Some(snapshot) = cl.snapshot.as_ref() else {
            return bug("cl snapshot must not be nil");
        };
        if cl_trigger.is_none() {
            return bug("cl trigger info is required");
        }
        if !ascending && combo.all[..i].contains(clid) {
            return bug(&format!("duplicate input CL ID {clid}"));
        }
        let gerrit = snapshot.gerrit.as_ref();
        digest_cls.push(RunIdCl {
            host: gerrit.map_or("", |g| g.host.as_str()),
            change: gerrit.map_or(0, |g| g.change),
            current_revision: gerrit.map_or("", |g| g.current_revision.as_str()),
            trigger: *cl_trigger,
        });
    }
    run_id::run_id(luci_project, create_time, &digest_cls).map_err(TriageError::Bug)
}

/// `user:<email>` after the original's identity validation. Planning
/// checks the email ([`check_user_email`]) and `build_run` formats the
/// identity only for the Runs created; this whole function is what the unit
/// tests of the rule call.
#[cfg(test)]
pub(crate) fn user_identity(email: &str) -> Result<String, String> {
    check_user_email(email)?;
    Ok(format!("user:{email}"))
}

/// The original's validation of a `user` identity's email.
fn check_user_email(email: &str) -> Result<(), String> {
    // Byte-wise: every allowed character is ASCII, so a non-ASCII byte
    // fails as its character would.
    let bytes = email.as_bytes();
    let at = bytes.iter().position(|&b| b == b'@');
    let (local, domain) = match at {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (&[][..], &[][..]),
    };
    let local_ok = !local.is_empty()
        && local
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'+' | b'%'));
    let domain_ok = !domain.is_empty()
        && domain
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(format!("bad value {email:?} for identity kind \"user\""))
    }
}

/// The email of a CL's owner identity, from its snapshot.
fn owner_email(clid: i64, snapshot: Option<&Snapshot>) -> Result<&str, TriageError> {
    let email = snapshot
        .and_then(|s| s.gerrit.as_ref())
        .map(|g| g.owner_email.as_str())
        .unwrap_or_default();
    if email.is_empty() {
        return Err(TriageError::Bug(format!(
            "failed to get OwnerIdentity of {clid}: CL owner has no email"
        )));
    }
    check_user_email(email)
        .map_err(|e| TriageError::Bug(format!("failed to get OwnerIdentity of {clid}: {e}")))?;
    Ok(email)
}

/// Whether the CL has a positive Auto-Submit vote.
pub(crate) fn has_auto_submit(snapshot: Option<&Snapshot>) -> bool {
    snapshot.and_then(|s| s.gerrit.as_ref()).is_some_and(|g| {
        g.votes
            .iter()
            .any(|v| v.label == AUTO_SUBMIT_LABEL && v.value > 0)
    })
}

/// Who is charged for the Run (the original's `quotaPayer`). Planning only
/// needs [`owner_pays`] (its owner is a checked `user:` identity, never empty
/// or anonymous); this whole function is what the unit tests of the rule
/// call.
///
/// Full runs (FULL_RUN, or a custom mode with CQ value 2) of a CL with an
/// Auto-Submit vote are charged to the owner; everything else to the
/// triggerer. An empty or anonymous owner is a bug.
#[cfg(test)]
pub(crate) fn quota_payer(
    clid: i64,
    owner: &str,
    triggerer: &str,
    trigger: &Trigger,
    snapshot: Option<&Snapshot>,
) -> Result<String, TriageError> {
    match owner {
        "" => {
            return Err(TriageError::Bug(format!(
                "CL {clid}: empty owner was given: {owner:?}"
            )))
        }
        "anonymous:anonymous" => {
            return Err(TriageError::Bug(format!(
                "CL {clid}: the CL owner is anonymous"
            )))
        }
        _ => {}
    }
    if owner_pays(trigger, snapshot) {
        Ok(owner.to_string())
    } else {
        Ok(triggerer.to_string())
    }
}

/// Whether the owner pays for the Run: a full Run (FULL_RUN, or a custom
/// mode with CQ value 2) of a CL with an Auto-Submit vote.
fn owner_pays(trigger: &Trigger, snapshot: Option<&Snapshot>) -> bool {
    let cq_value = trigger
        .mode_definition
        .as_ref()
        .map_or(0, |m| m.cq_label_value);
    (trigger.mode == FULL_RUN || cq_value == FULL_RUN_CQ_VOTE) && has_auto_submit(snapshot)
}

/// Merges the Run options of one CL's footers into `options`.
///
/// Boolean options are set by a footer value `true` (case-insensitive) under
/// the footer key or its legacy key; list options collect values in order.
pub(crate) fn merge_options(options: &mut RunOptions, snapshot: Option<&Snapshot>) {
    let footers = snapshot.map_or(&[][..], |s| s.metadata.as_slice());
    let values_of = |key: &str, legacy: &str| -> Vec<String> {
        let mut out: Vec<String> = footers
            .iter()
            .filter(|f| f.key == key)
            .map(|f| f.value.clone())
            .collect();
        if !legacy.is_empty() {
            out.extend(
                footers
                    .iter()
                    .filter(|f| f.key == legacy)
                    .map(|f| f.value.clone()),
            );
        }
        out
    };
    let is_true = |key: &str, legacy: &str| {
        values_of(key, legacy)
            .iter()
            .any(|v| v.to_lowercase() == "true")
    };
    options.skip_equivalent_builders |= is_true("No-Equivalent-Builders", "NO_EQUIVALENT_BUILDERS");
    options.avoid_cancelling_tryjobs |= is_true("Cq-Do-Not-Cancel-Tryjobs", "");
    options.skip_tree_checks |= is_true("No-Tree-Checks", "NOTREECHECKS");
    options.skip_tryjobs |= is_true("No-Try", "NOTRY");
    options.skip_presubmit |= is_true("No-Presubmit", "NOPRESUBMIT");
    options
        .include_trybots
        .extend(values_of("Cq-Include-Trybots", "CQ_INCLUDE_TRYBOTS"));
    options
        .custom_tryjob_tags
        .extend(values_of("Cq-Cl-Tag", ""));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::GerritChange;

    fn cl(clid: i64) -> ChangeList {
        ChangeList {
            clid,
            snapshot: Some(Snapshot {
                gerrit: Some(GerritChange {
                    host: "h".to_string(),
                    change: clid,
                    current_revision: format!("rev-{clid}"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The Run creator's checks on its input CLs: a repeated CL is refused
    /// whether or not the combo lists its CLs in ascending order.
    #[test]
    fn expected_run_id_refuses_a_repeated_cl_in_any_order() {
        let trigger = Trigger {
            mode: DRY_RUN.to_string(),
            time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let create_time = trigger.time.unwrap();
        let id_of = |all: &[i64]| {
            let pcls: Vec<Pcl> = all
                .iter()
                .map(|&clid| Pcl {
                    clid,
                    eversion: 1,
                    ..Default::default()
                })
                .collect();
            let entities: Vec<ChangeList> = all.iter().map(|&clid| cl(clid)).collect();
            let members: Vec<(&Pcl, Option<&Trigger>)> =
                pcls.iter().map(|p| (p, Some(&trigger))).collect();
            let combo = Combo {
                all: all.to_vec(),
                not_ready: Vec::new(),
                with_not_yet_loaded_deps: None,
                latest_triggered: all.first().copied(),
                max_triggered_time: None,
            };
            let entities: Vec<&ChangeList> = entities.iter().collect();
            expected_run_id("p", &trigger, &create_time, &combo, &members, &entities)
        };
        let ascending = id_of(&[3, 5]).unwrap();
        assert!(ascending.starts_with("p/"), "{ascending}");
        // The digest sorts CLs by (host, change): the order given does not matter.
        assert_eq!(id_of(&[5, 3]).unwrap(), ascending);
        for repeated in [&[5, 3, 5][..], &[3, 3], &[5, 5, 3]] {
            match id_of(repeated) {
                Err(TriageError::Bug(msg)) => {
                    assert!(msg.contains("duplicate input CL ID"), "{repeated:?}: {msg}")
                }
                other => panic!("{repeated:?}: {other:?}"),
            }
        }
    }
}
