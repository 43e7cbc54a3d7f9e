//! Building the PM's digest of one CL (`PCL`) from the latest known CL entity
//! version and the pinned config: the original's `makePCL`, its access check
//! and `trigger.Find` (luci-pm.md §6.5.2, with rules R3, R4 and R6 of
//! luci-pm-head.md).

use crate::proto::Timestamp;

use super::config::{split_config_group_id, Matcher};
use super::time;
use crate::proto::{
    cl_error, gerrit_change, pcl, purge_reason, snapshot, ChangeList, ClError, ConfigGroup,
    GerritChange, Pcl, ProjectConfig, PurgeReason, Snapshot, Trigger, Triggers,
};

/// The Commit-Queue label.
pub const CQ_LABEL: &str = "Commit-Queue";
/// Run mode of a CQ+1 vote.
pub const DRY_RUN: &str = "DRY_RUN";
/// Run mode of a CQ+2 vote.
pub const FULL_RUN: &str = "FULL_RUN";
/// Run mode of a new-patchset upload.
pub const NEW_PATCHSET_RUN: &str = "NEW_PATCHSET_RUN";
/// The legacy quick dry run mode.
pub const QUICK_DRY_RUN: &str = "QUICK_DRY_RUN";

/// What the pinned config says about CLs, for building PCLs.
pub struct PclContext<'a> {
    /// The LUCI project.
    pub project: &'a str,
    /// The batch's clock.
    pub now: &'a Timestamp,
    /// The pinned config (its hash is the PM's `config_hash`).
    pub pinned: &'a ProjectConfig,
    /// Interned group names of the pinned config.
    pub config_group_names: &'a [String],
}

/// The access a project has to a CL (the original's `AccessKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Unknown,
    Granted,
    DeniedProbably,
    Denied,
}

/// The original's `AccessKindWithReason`; `now` decides "denied probably".
fn access_kind(cl: &ChangeList, project: &str, now: &Timestamp) -> Access {
    if let Some(applicable) = &cl.applicable_config {
        match applicable.projects.as_slice() {
            [] => return Access::Denied,
            [only] if only.name == project => {}
            _ => return Access::Denied,
        }
    }
    let no_access = cl
        .access
        .as_ref()
        .and_then(|a| a.no_access.iter().find(|n| n.project == project));
    if let Some(record) = no_access {
        // A record without time is the original's legacy "no access" form.
        return match &record.no_access_time {
            Some(t) if time::cmp(now, t).is_lt() => Access::DeniedProbably,
            _ => Access::Denied,
        };
    }
    match (&cl.applicable_config, &cl.snapshot) {
        (Some(_), Some(snapshot)) if snapshot.luci_project == project => Access::Granted,
        _ => Access::Unknown,
    }
}

/// A purge reason applying to all active triggers.
fn all_triggers_reason(kind: cl_error::Kind) -> PurgeReason {
    PurgeReason {
        cl_error: Some(ClError { kind: Some(kind) }),
        apply_to: Some(purge_reason::ApplyTo::AllActiveTriggers(true)),
    }
}

/// Adds a purge reason, mirroring its error into the deprecated `errors`.
fn push_reason(pcl: &mut Pcl, reason: PurgeReason) {
    if let Some(err) = &reason.cl_error {
        pcl.errors.push(err.clone());
    }
    pcl.purge_reasons.push(reason);
}

/// Builds the PCL of a CL. `cl` is the latest known version (`None`: not
/// found), `old` the current PCL if any. Problems the original crashes on are
/// appended to `trace`; `matcher` is built on first use.
pub fn make_pcl(
    ctx: &PclContext<'_>,
    clid: i64,
    cl: Option<&ChangeList>,
    old: Option<&Pcl>,
    matcher: &mut Option<Matcher>,
    trace: &mut Vec<String>,
) -> Pcl {
    let Some(cl) = cl else {
        return Pcl {
            clid,
            eversion: old.map_or(0, |o| o.eversion),
            status: pcl::Status::Deleted as i32,
            ..Default::default()
        };
    };
    let mut pcl = Pcl {
        clid,
        eversion: cl.eversion,
        status: pcl::Status::Unknown as i32,
        ..Default::default()
    };
    let default_snapshot = Snapshot::default();
    let snapshot = cl.snapshot.as_ref().unwrap_or(&default_snapshot);

    let this_project = match access_kind(cl, ctx.project, ctx.now) {
        Access::Unknown => return pcl,
        Access::Denied | Access::DeniedProbably => {
            let projects = cl
                .applicable_config
                .as_ref()
                .map(|a| a.projects.as_slice())
                .unwrap_or_default();
            let this = projects.iter().find(|p| p.name == ctx.project);
            match this {
                Some(this) if projects.len() > 1 => {
                    push_reason(
                        &mut pcl,
                        all_triggers_reason(cl_error::Kind::WatchedByManyProjects(
                            cl_error::WatchedByManyProjects {
                                projects: projects.iter().map(|p| p.name.clone()).collect(),
                            },
                        )),
                    );
                    pcl.status = pcl::Status::Ok as i32;
                    this
                }
                _ => {
                    pcl.status = pcl::Status::Unwatched as i32;
                    return pcl;
                }
            }
        }
        Access::Granted => {
            if snapshot.outdated {
                pcl.outdated = Some(snapshot::Outdated {});
                return pcl;
            }
            if snapshot.gerrit.is_none() {
                trace.push(format!(
                    "CL {clid} eversion {}: snapshot without Gerrit data (the original crashes: only Gerrit CLs are supported); PCL left UNKNOWN",
                    cl.eversion
                ));
                return pcl;
            }
            pcl.status = pcl::Status::Ok as i32;
            &cl.applicable_config
                .as_ref()
                .expect("granted access implies an applicable config")
                .projects[0]
        }
    };

    set_config_groups(
        ctx,
        &this_project.config_group_ids,
        snapshot,
        &mut pcl,
        matcher,
        trace,
    );
    if pcl.config_group_indexes.is_empty() {
        // No group of the pinned config watches the CL (typically its
        // applicable config names a group of an older config): UNWATCHED,
        // keeping only the reasons found so far (luci-pm-head.md R3).
        pcl.status = pcl::Status::Unwatched as i32;
        return pcl;
    }

    for err in &snapshot.errors {
        push_reason(
            &mut pcl,
            PurgeReason {
                cl_error: Some(err.clone()),
                apply_to: Some(purge_reason::ApplyTo::AllActiveTriggers(true)),
            },
        );
    }
    if snapshot.outdated {
        pcl.outdated = Some(snapshot::Outdated {});
    }
    pcl.deps = snapshot.deps.clone();
    let self_deps = pcl.deps.iter().filter(|d| d.clid == clid).count();
    for _ in 0..self_deps {
        push_reason(
            &mut pcl,
            all_triggers_reason(cl_error::Kind::SelfCqDepend(true)),
        );
    }

    let default_gerrit = GerritChange::default();
    let gerrit = snapshot.gerrit.as_ref().unwrap_or(&default_gerrit);
    // IsSubmittable() fails (false) for a non-Gerrit snapshot.
    pcl.submittable = snapshot.gerrit.is_some() && snapshot.submittable;
    if gerrit.status == gerrit_change::ChangeStatus::Merged as i32 {
        pcl.submitted = true;
        return pcl;
    }
    if gerrit.owner_email.is_empty() {
        push_reason(
            &mut pcl,
            all_triggers_reason(cl_error::Kind::OwnerLacksEmail(true)),
        );
    } else if !is_valid_user_email(&gerrit.owner_email) {
        push_reason(
            &mut pcl,
            all_triggers_reason(cl_error::Kind::OwnerEmailMalformed(true)),
        );
    }

    set_triggers(ctx, cl, snapshot, &mut pcl);

    let commit_false = snapshot
        .metadata
        .iter()
        .any(|f| f.key.eq_ignore_ascii_case("commit") && f.value.eq_ignore_ascii_case("false"));
    let cq_trigger = pcl
        .triggers
        .as_ref()
        .and_then(|t| t.cq_vote_trigger.clone());
    if let Some(cq) = cq_trigger.filter(|t| commit_false && t.mode == FULL_RUN) {
        push_reason(
            &mut pcl,
            PurgeReason {
                cl_error: Some(ClError {
                    kind: Some(cl_error::Kind::CommitBlocked(true)),
                }),
                apply_to: Some(purge_reason::ApplyTo::Triggers(Triggers {
                    cq_vote_trigger: Some(cq),
                    new_patchset_run_trigger: None,
                })),
            },
        );
    }
    pcl
}

/// Whether `"user:" + email` is a valid LUCI identity: the email fully matches
/// `^[0-9a-zA-Z_\-\.\+\%]+@[0-9a-zA-Z_\-\.]+$` (ASCII only), the original's
/// `identity.KnownKinds[User]` (luci-pm-head.md R4).
pub fn is_valid_user_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let local_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '%');
    let domain_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    !local.is_empty()
        && !domain.is_empty()
        && local.chars().all(local_ok)
        && domain.chars().all(domain_ok)
}

/// Sets the PCL's config group indexes: from the CL's applicable config if it
/// names groups of the pinned config, else by matching (host, repo, ref).
fn set_config_groups(
    ctx: &PclContext<'_>,
    ids: &[String],
    snapshot: &Snapshot,
    pcl: &mut Pcl,
    matcher: &mut Option<Matcher>,
    trace: &mut Vec<String>,
) {
    let up_to_date = ids
        .iter()
        .all(|id| split_config_group_id(id).0 == ctx.pinned.hash);
    if up_to_date {
        let indexes: Option<Vec<i32>> = ids
            .iter()
            .map(|id| {
                let name = split_config_group_id(id).1;
                ctx.config_group_names
                    .iter()
                    .position(|n| n == name)
                    .map(|i| i32::try_from(i).expect("fewer than 2^31 config groups"))
            })
            .collect();
        match indexes {
            Some(indexes) => {
                pcl.config_group_indexes = indexes;
                return;
            }
            None => trace.push(format!(
                "CL {}: applicable config group ids {ids:?} name a group unknown to config {} (the original crashes); matching the CL against the config instead",
                pcl.clid, ctx.pinned.hash
            )),
        }
    }
    let default_gerrit = GerritChange::default();
    let gerrit = snapshot.gerrit.as_ref().unwrap_or(&default_gerrit);
    let matcher = matcher.get_or_insert_with(|| Matcher::new(ctx.pinned, trace));
    pcl.config_group_indexes =
        matcher.match_groups(&gerrit.host, &gerrit.project, &gerrit.r#ref, trace);
}

/// The run modes a group allows.
fn mode_allowed(group: &ConfigGroup, mode: &str) -> bool {
    matches!(mode, "" | DRY_RUN | FULL_RUN | NEW_PATCHSET_RUN)
        || group.additional_modes.iter().any(|m| m.name == mode)
}

/// Finds the CL's triggers (the original's `setTriggers` + `trigger.Find`).
fn set_triggers(ctx: &PclContext<'_>, cl: &ChangeList, snapshot: &Snapshot, pcl: &mut Pcl) {
    let Some(gerrit) = snapshot.gerrit.as_ref() else {
        return;
    };
    // With 2+ groups (a misconfiguration purged soon anyway) the original
    // uses an empty group; a PCL without groups is UNWATCHED before this.
    let empty_group = ConfigGroup::default();
    let group = match pcl.config_group_indexes.as_slice() {
        [index] => super::config::group_at(ctx.pinned, *index).unwrap_or(&empty_group),
        _ => &empty_group,
    };
    let cq = find_cq_trigger(gerrit, group);
    let npr = find_new_patchset_run_trigger(
        gerrit,
        group,
        snapshot.patchset,
        cl.trigger_new_patchset_run_after_ps,
    );
    if cq.is_none() && npr.is_none() {
        return;
    }
    let triggers = Triggers {
        cq_vote_trigger: cq,
        new_patchset_run_trigger: npr,
    };
    let modes = [
        triggers
            .cq_vote_trigger
            .as_ref()
            .map(|t| t.mode.as_str())
            .unwrap_or(""),
        triggers
            .new_patchset_run_trigger
            .as_ref()
            .map(|t| t.mode.as_str())
            .unwrap_or(""),
    ];
    if let Some(mode) = modes.iter().find(|m| !mode_allowed(group, m)) {
        push_reason(
            pcl,
            PurgeReason {
                cl_error: Some(ClError {
                    kind: Some(cl_error::Kind::UnsupportedMode(mode.to_string())),
                }),
                apply_to: Some(purge_reason::ApplyTo::Triggers(triggers)),
            },
        );
        return;
    }
    pcl.triggers = Some(triggers);
}

/// The vote value of a standard mode.
fn vote_of_mode(mode: &str) -> i32 {
    match mode {
        DRY_RUN => 1,
        FULL_RUN => 2,
        _ => 0,
    }
}

/// The CQ vote trigger: the highest Commit-Queue vote (values ≥ 2 clamped to
/// 2), the earliest among equal values; a matching additional mode replaces
/// the mode; the time is the later of the vote and the current revision.
///
/// The original also ignores votes not newer than a bot "cancel" message on
/// the current revision; our snapshot carries no messages, so that rule is
/// not applied.
fn find_cq_trigger(gerrit: &GerritChange, group: &ConfigGroup) -> Option<Trigger> {
    if gerrit.status != gerrit_change::ChangeStatus::New as i32 {
        return None;
    }
    let mut largest = 0;
    let mut earliest: i128 = 0;
    let mut chosen: Option<&crate::proto::Vote> = None;
    for vote in gerrit.votes.iter().filter(|v| v.label == CQ_LABEL) {
        let value = vote.value;
        if value <= 0 || value < largest {
            continue;
        }
        let value = value.min(2);
        let t = time::opt_nanos(vote.time.as_ref());
        if value > largest {
            largest = value;
            earliest = t;
        } else if t < earliest {
            earliest = t;
        } else {
            // Later, or equal (the first of equal votes wins).
            continue;
        }
        chosen = Some(vote);
    }
    let vote = chosen?;
    let mut trigger = Trigger {
        time: vote.time,
        mode: if largest >= 2 { FULL_RUN } else { DRY_RUN }.to_string(),
        email: vote.email.clone(),
        gerrit_account_id: vote.account_id,
        ..Default::default()
    };
    for mode in &group.additional_modes {
        if apply_additional_mode(gerrit, mode, &mut trigger) {
            break;
        }
    }
    if time::cmp_opt(
        trigger.time.as_ref(),
        gerrit.current_revision_created.as_ref(),
    )
    .is_lt()
    {
        trigger.time = gerrit.current_revision_created;
    }
    Some(trigger)
}

/// Replaces the trigger's mode by an additional mode if the same user voted
/// the mode's triggering label with its triggering value at the same time.
fn apply_additional_mode(
    gerrit: &GerritChange,
    mode: &crate::proto::Mode,
    trigger: &mut Trigger,
) -> bool {
    let mut votes = gerrit
        .votes
        .iter()
        .filter(|v| v.label == mode.triggering_label)
        .peekable();
    if votes.peek().is_none() || mode.cq_label_value != vote_of_mode(&trigger.mode) {
        return false;
    }
    let matched = votes.any(|v| {
        v.value == mode.triggering_value
            && v.account_id == trigger.gerrit_account_id
            && time::cmp_opt(v.time.as_ref(), trigger.time.as_ref()).is_eq()
    });
    if matched {
        trigger.mode = mode.name.clone();
        trigger.mode_definition = Some(mode.clone());
    }
    matched
}

/// The new-patchset trigger: the group has a tryjob allowing
/// NEW_PATCHSET_RUN and the current patchset is after the last one run,
/// whatever the Gerrit status. It carries the owner's email and account id
/// (luci-pm-head.md R6).
fn find_new_patchset_run_trigger(
    gerrit: &GerritChange,
    group: &ConfigGroup,
    patchset: i32,
    after_patchset: i32,
) -> Option<Trigger> {
    if group.new_patchset_run.is_none() || after_patchset >= patchset {
        return None;
    }
    Some(Trigger {
        time: gerrit.current_revision_created,
        mode: NEW_PATCHSET_RUN.to_string(),
        email: gerrit.owner_email.clone(),
        gerrit_account_id: gerrit.owner_account_id,
        ..Default::default()
    })
}
