//! One PM invocation over the pending events (the `Evaluated` marker):
//! classification and dedup of the events (luci-pm.md §5.3), the ordered
//! transitions (§5.4), and saving (§5.5): eversion, `ProjectLog`,
//! `ProjectStateOffload` and the actions.

use std::collections::{BTreeMap, BTreeSet};

use crate::proto::Timestamp;

use super::apply::run_id_in_project;
use super::invocation::{run_status_ended, Invocation};
use super::time::{self, Nanos};
use super::{Evaluation, Memo, TriageFn};
use crate::proto::project_log::LogReason;
use crate::proto::{
    action, pending_event, PState, ProjectLog, ProjectState, ProjectStateOffload, PurgeCompleted,
    Run, RunRequest, TriggeringClDepsCompleted,
};

/// A `ProjectLog` is written at least every this many eversions.
pub const LOG_PROJECT_STATE_FREQUENCY: i64 = 60;
/// Known Runs ended longer ago than this are forgotten.
pub const KNOWN_RUN_RETENTION_DAYS: i64 = 7;
/// A Run request is outstanding for this long.
pub const RUN_REQUEST_RETENTION_MINUTES: i64 = 1;

/// The pending events of one invocation, classified (§5.3).
#[derive(Default)]
struct Batch<'p> {
    /// A ConfigUpdated survived.
    new_config: bool,
    /// A Poked survived.
    poke: bool,
    /// Highest announced eversion per CL.
    cls: BTreeMap<i64, i64>,
    /// Created Run ids.
    run_created: BTreeSet<String>,
    /// Finished Runs and their status (the later event wins).
    run_finished: BTreeMap<String, i32>,
    /// Purge completions with their position in `pending`.
    purges: Vec<(usize, &'p PurgeCompleted)>,
    /// Dependency vote completions with their position in `pending`.
    trigger_deps: Vec<(usize, &'p TriggeringClDepsCompleted)>,
    /// Semantic garbage: dropped even if the invocation fails.
    garbage: BTreeSet<usize>,
    /// Consumed by the transitions when the invocation succeeds.
    consumed: BTreeSet<usize>,
}

/// Classifies the pending events; ignored inputs are named in `trace`.
fn classify<'p>(
    pending: &'p [crate::proto::PendingEvent],
    project: &str,
    trace: &mut Vec<String>,
) -> Batch<'p> {
    let mut batch = Batch::default();
    let mut last_config: Option<usize> = None;
    let mut last_poke: Option<usize> = None;
    // clid -> (max eversion, position of the first event carrying it)
    let mut carriers: BTreeMap<i64, (i64, usize)> = BTreeMap::new();
    let mut cls_events: Vec<usize> = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        let revision = p.revision;
        match &p.event {
            None => {
                trace.push(format!(
                    "pending event at revision {revision} is empty; dropped"
                ));
                batch.garbage.insert(i);
            }
            Some(pending_event::Event::NewConfig(_)) => {
                if let Some(previous) = last_config.replace(i) {
                    batch.garbage.insert(previous);
                }
            }
            Some(pending_event::Event::Poke(_)) => {
                if let Some(previous) = last_poke.replace(i) {
                    batch.garbage.insert(previous);
                }
            }
            Some(pending_event::Event::ClsUpdated(versions)) => {
                cls_events.push(i);
                for v in &versions.cls {
                    if v.clid <= 0 || v.eversion <= 0 {
                        trace.push(format!(
                            "ClsUpdated at revision {revision}: entry with clid {} eversion {} ignored (both must be positive)",
                            v.clid, v.eversion
                        ));
                        continue;
                    }
                    match carriers.get(&v.clid) {
                        Some(&(max, _)) if max >= v.eversion => {}
                        _ => {
                            carriers.insert(v.clid, (v.eversion, i));
                        }
                    }
                }
            }
            Some(pending_event::Event::RunCreated(id)) => {
                if run_id_in_project(id, project) {
                    batch.run_created.insert(id.clone());
                    batch.consumed.insert(i);
                } else {
                    trace.push(format!(
                        "RunCreated at revision {revision}: run id {id:?} is not a Run of project {project:?}; ignored"
                    ));
                    batch.garbage.insert(i);
                }
            }
            Some(pending_event::Event::RunFinished(e)) => {
                if !run_id_in_project(&e.run_id, project) {
                    trace.push(format!(
                        "RunFinished at revision {revision}: run id {:?} is not a Run of project {project:?}; ignored",
                        e.run_id
                    ));
                    batch.garbage.insert(i);
                } else if !run_status_ended(e.status) {
                    trace.push(format!(
                        "RunFinished at revision {revision}: status {} of {} is not terminal; ignored",
                        e.status, e.run_id
                    ));
                    batch.garbage.insert(i);
                } else {
                    batch.run_finished.insert(e.run_id.clone(), e.status);
                    batch.consumed.insert(i);
                }
            }
            Some(pending_event::Event::PurgeCompleted(e)) => batch.purges.push((i, e)),
            Some(pending_event::Event::TriggeringClDepsCompleted(e)) => {
                batch.trigger_deps.push((i, e))
            }
        }
    }
    if let Some(i) = last_config {
        batch.new_config = true;
        batch.consumed.insert(i);
    }
    if let Some(i) = last_poke {
        batch.poke = true;
        batch.consumed.insert(i);
    }
    let carrier_positions: BTreeSet<usize> = carriers.values().map(|&(_, i)| i).collect();
    for i in cls_events {
        if carrier_positions.contains(&i) {
            batch.consumed.insert(i);
        } else {
            batch.garbage.insert(i);
        }
    }
    batch.cls = carriers
        .into_iter()
        .map(|(clid, (eversion, _))| (clid, eversion))
        .collect();
    batch
}

/// What the transitions of a successful invocation consumed and produced.
struct Success {
    /// Positions in `pending` of the completion events consumed.
    consumed: Vec<usize>,
    /// Transactional side effects, in transition order.
    effects: Vec<action::Action>,
}

/// Runs the ordered transitions (§5.4). `Err` means the batch failed.
fn run_transitions(
    inv: &mut Invocation<'_>,
    batch: &Batch<'_>,
    triage: TriageFn,
) -> Result<Success, String> {
    let mut effects = Vec::new();
    // Step 0, UpgradeIfNecessary, is a no-op.
    if !batch.run_created.is_empty() {
        effects.extend(inv.on_runs_created(&batch.run_created));
    }
    if !batch.run_finished.is_empty() {
        effects.extend(inv.on_runs_finished(&batch.run_finished));
    }
    if batch.new_config {
        let (_, update_effects) = inv.update_config();
        effects.extend(update_effects);
    }
    if batch.poke {
        effects.extend(inv.poke());
    }
    if !batch.cls.is_empty() {
        inv.on_cls_updated(&batch.cls);
    }
    let purges: Vec<&PurgeCompleted> = batch.purges.iter().map(|&(_, e)| e).collect();
    let mut consumed: Vec<usize> = inv
        .on_purges_completed(&purges)
        .into_iter()
        .map(|k| batch.purges[k].0)
        .collect();
    let trigger_deps: Vec<&TriggeringClDepsCompleted> =
        batch.trigger_deps.iter().map(|&(_, e)| e).collect();
    let (consumed_trigger_deps, trigger_deps_effects) =
        inv.on_triggering_cl_deps_completed(&trigger_deps);
    consumed.extend(
        consumed_trigger_deps
            .into_iter()
            .map(|k| batch.trigger_deps[k].0),
    );
    effects.extend(trigger_deps_effects);
    effects.extend(inv.exec_deferred(triage)?);
    Ok(Success { consumed, effects })
}

/// Forgets Runs ended more than 7 days ago (or ended without an end time)
/// and Run requests that are a minute old or whose Run is known. Returns the
/// ids of the Runs forgotten, in order.
///
/// A known Run changes only by a `RunCreated` or `RunFinished` event, which
/// stays pending until an invocation. So:
///
/// * With `runs_ended_from` (see [`Memo`]: no known Run ended before it at
///   the previous invocation), the Runs the pending events name lower it to
///   a bound of every known Run's end; when it is not before the cutoff, no
///   Run is forgotten and the known Runs are not walked. Every walk sets it
///   again.
/// * Only a Run named by a pending event can be a known Run of a request: an
///   invocation leaves no request whose Run is known (this prune drops them,
///   and a request is recorded only for a Run not known, see
///   `act_on_components`). So the requests are looked up by the few Runs
///   the pending events name, not each against every known Run.
fn prune_known(
    state: &mut ProjectState,
    now: &Timestamp,
    runs_ended_from: Option<&mut Option<Nanos>>,
) -> Vec<String> {
    let cutoff = time::to_nanos(&time::add_days(now, -KNOWN_RUN_RETENTION_DAYS));
    let named: Vec<&str> = state
        .pending
        .iter()
        .filter_map(|p| match &p.event {
            Some(pending_event::Event::RunCreated(id)) => Some(id.as_str()),
            Some(pending_event::Event::RunFinished(e)) => Some(e.run_id.as_str()),
            _ => None,
        })
        .collect();
    let mut forgotten = Vec::new();
    let ended_from = runs_ended_from
        .as_ref()
        .and_then(|from| **from)
        .map(|from| {
            named
                .iter()
                .filter_map(|id| super::known_run(&state.runs, id))
                .filter_map(ended_at)
                .fold(from, Nanos::min)
        });
    let ended_from = match ended_from {
        Some(from) if from >= cutoff => from,
        _ => {
            let mut from = Nanos::MAX;
            state.runs.retain_mut(|r| match ended_at(r) {
                Some(end) if end < cutoff => {
                    forgotten.push(std::mem::take(&mut r.id));
                    false
                }
                Some(end) => {
                    from = from.min(end);
                    true
                }
                None => true,
            });
            from
        }
    };
    if let Some(memo) = runs_ended_from {
        *memo = Some(ended_from);
    }
    let request_cutoff = time::add_minutes(now, -RUN_REQUEST_RETENTION_MINUTES);
    let runs = &state.runs;
    let mut named_known: Vec<&str> = named
        .into_iter()
        .filter(|id| super::known_run_position(runs, id).is_ok())
        .collect();
    named_known.sort_unstable();
    state.run_requests.retain(|r| {
        let young = time::cmp_opt(r.requested_at.as_ref(), Some(&request_cutoff)).is_gt();
        young && named_known.binary_search(&r.run_id.as_str()).is_err()
    });
    forgotten
}

/// When a Run ended (the dawn of time if it ended without an end time);
/// `None` while it is incomplete.
fn ended_at(run: &Run) -> Option<Nanos> {
    run_status_ended(run.status).then(|| run.end_time.as_ref().map_or(Nanos::MIN, time::to_nanos))
}

/// A copy of `pstate` without its PCLs (the bulk of it).
pub fn without_pcls(pstate: &PState) -> PState {
    PState {
        purging_cls: pstate.purging_cls.clone(),
        triggering_cl_deps: pstate.triggering_cl_deps.clone(),
        ..restorable_part(pstate)
    }
}

/// What an invocation copies up front to restore if it fails: `pstate`
/// without its PCLs, purges and dependency votes (the invocation keeps
/// those lists as loaded only once it changes them, see
/// `Invocation::purging_cls_mut`). The pattern names every field, so that a
/// field added to `PState` does not compile until it is placed here.
fn restorable_part(pstate: &PState) -> PState {
    let PState {
        luci_project,
        status,
        config_hash,
        config_group_names,
        pcls: _,
        components,
        purging_cls: _,
        triggering_cl_deps: _,
        repartition_required,
        created_pruns,
        next_eval_time,
    } = pstate;
    PState {
        luci_project: luci_project.clone(),
        status: *status,
        config_hash: config_hash.clone(),
        config_group_names: config_group_names.clone(),
        pcls: Vec::new(),
        components: components.clone(),
        purging_cls: Vec::new(),
        triggering_cl_deps: Vec::new(),
        repartition_required: *repartition_required,
        created_pruns: created_pruns.clone(),
        next_eval_time: *next_eval_time,
    }
}

/// One invocation at `now` (see [`super::evaluate_with`]).
pub fn evaluate(
    state: &mut ProjectState,
    revision: u64,
    now: Timestamp,
    triage: TriageFn,
    memo: Option<&mut Memo>,
) -> Evaluation {
    let project = state.luci_project.clone();
    // The state at the start of the invocation: restored if the invocation
    // fails, and compared with the saved one for the offload rule.
    let loaded: PState = state.pstate.take().unwrap_or_else(|| PState {
        luci_project: project.clone(),
        ..Default::default()
    });
    let (loaded_status, loaded_hash) = (loaded.status, loaded.config_hash.clone());
    let eversion = state.eversion + 1;
    let (runs_ended_from, mut run_ids) = match memo {
        Some(memo) => (Some(&mut memo.runs_ended_from), Some(&mut memo.run_ids)),
        None => (None, None),
    };
    let forgotten_runs = prune_known(state, &now, runs_ended_from);

    let mut trace = Vec::new();
    let pending = std::mem::take(&mut state.pending);
    let batch = classify(&pending, &project, &mut trace);

    // The copy to restore if the invocation fails leaves out the PCLs, the
    // bulk of the state: an invocation fails only when `ExecDeferred` did not
    // repartition, and any PCL that changes sets `repartition_required`,
    // which makes it repartition. So a failed invocation has left every PCL
    // equal to the one it loaded (a law of tests/domain_laws.rs checks it).
    // Purges and dependency votes are kept as loaded only if they change.
    let backup = restorable_part(&loaded);
    if let Some(memo) = run_ids.as_deref_mut() {
        memo.invalidate(&pending, loaded.pcls.len(), time::to_nanos(&now));
    }
    let mut inv = Invocation {
        project: &project,
        now,
        cls: &state.cls,
        runs: &state.runs,
        run_requests: &state.run_requests,
        latest_config: state.latest_config.as_ref(),
        pstate: loaded,
        pinned: state.pinned_config.clone(),
        matcher: None,
        reasons: Vec::new(),
        immediate: Vec::new(),
        trace,
        new_run_requests: Vec::new(),
        changed_pcls: Some(BTreeSet::new()),
        loaded_purging_cls: None,
        loaded_triggering_cl_deps: None,
        run_ids: run_ids.as_deref(),
    };
    let result = run_transitions(&mut inv, &batch, triage);
    let Invocation {
        pstate,
        pinned,
        reasons,
        immediate,
        mut trace,
        new_run_requests,
        changed_pcls,
        loaded_purging_cls,
        loaded_triggering_cl_deps,
        ..
    } = inv;

    let (mut reasons, actions, removed) = match result {
        Ok(success) => {
            state.pstate = Some(pstate);
            state.pinned_config = pinned;
            if let Some(memo) = run_ids {
                memo.requested(&new_run_requests, time::to_nanos(&now));
            }
            for run_id in new_run_requests {
                let request = RunRequest {
                    run_id,
                    requested_at: Some(now),
                };
                match state
                    .run_requests
                    .binary_search_by(|r| r.run_id.cmp(&request.run_id))
                {
                    Ok(i) => state.run_requests[i] = request,
                    Err(i) => state.run_requests.insert(i, request),
                }
            }
            let mut removed: BTreeSet<usize> =
                batch.garbage.union(&batch.consumed).copied().collect();
            removed.extend(success.consumed);
            let mut actions = immediate;
            actions.extend(success.effects);
            (reasons, actions, removed)
        }
        Err(err) => {
            // As the original's failed batch: nothing is saved and nothing is
            // consumed except semantic garbage; effects already performed
            // before the failure (pokes) stand. The eversion still advances.
            trace.push(format!("invocation failed, state kept as it was: {err}"));
            state.pstate = Some(PState {
                pcls: pstate.pcls,
                purging_cls: loaded_purging_cls.unwrap_or(pstate.purging_cls),
                triggering_cl_deps: loaded_triggering_cl_deps.unwrap_or(pstate.triggering_cl_deps),
                ..backup
            });
            (Vec::new(), immediate, batch.garbage.clone())
        }
    };
    state.pending = pending
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !removed.contains(i))
        .map(|(_, p)| p)
        .collect();

    state.eversion = eversion;
    let update_time = time::round_to_micros(&now);
    state.update_time = Some(update_time);
    state.last_revision = revision;

    if eversion % LOG_PROJECT_STATE_FREQUENCY == 0 {
        reasons.push(LogReason::FyiPeriodic);
    }
    reasons.sort();
    reasons.dedup();
    let project_log = (!reasons.is_empty()).then(|| project_log(state, &reasons));
    let saved = state.pstate.as_ref().expect("pstate was just set");
    let offload = (saved.status != loaded_status || saved.config_hash != loaded_hash).then(|| {
        ProjectStateOffload {
            status: saved.status,
            config_hash: saved.config_hash.clone(),
            update_time: Some(now),
            eversion,
        }
    });
    Evaluation {
        eversion,
        reasons,
        actions,
        project_log,
        offload,
        trace,
        changed_pcls: changed_pcls.map(|c| c.into_iter().collect()),
        forgotten_runs,
    }
}

/// The `ProjectLog` of a state with the given reasons: what the fold writes
/// when it saves a logged eversion, and what the read side answers for any
/// eversion (reasons of the marker that produced it) or the latest state (no
/// reasons).
pub fn project_log(state: &ProjectState, reasons: &[LogReason]) -> ProjectLog {
    let pstate = state.pstate.clone().unwrap_or_default();
    ProjectLog {
        eversion: state.eversion,
        status: pstate.status,
        config_hash: pstate.config_hash.clone(),
        update_time: state.update_time,
        state: Some(pstate),
        reasons: reasons.iter().map(|&r| r as i32).collect(),
    }
}
