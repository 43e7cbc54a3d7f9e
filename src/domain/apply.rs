//! Recording an input event: update the known entity versions and add the
//! event, reduced, to the pending set (the original's eventbox).
//!
//! Nothing is decided here. Inputs that the invocation will ignore (a CL
//! entry with a zero id, a Run of another project, …) are still recorded as
//! pending, so that the invocation that consumes them can name them in its
//! trace; they never change the known entities.

use super::invocation::run_status_ended;
use super::FoldError;
use crate::proto::{input_event::Event, pending_event, PendingEvent, ProjectState, Run};

/// Whether a Run id belongs to the project (`<project>/…`).
pub fn run_id_in_project(run_id: &str, project: &str) -> bool {
    run_id
        .split_once('/')
        .is_some_and(|(prefix, _)| prefix == project)
}

/// Records an input event at `revision`.
pub fn apply_event(
    state: &mut ProjectState,
    revision: u64,
    event: &Event,
) -> Result<(), FoldError> {
    let project = state.luci_project.clone();
    let reduced = match event {
        Event::Evaluated(_) => return Err(FoldError::UnexpectedMarker { revision }),
        Event::ConfigUpdated(e) => {
            // A ConfigUpdated without a config reads as a config of
            // unspecified state: the invocation ignores it with a trace.
            state.latest_config = Some(e.config.clone().unwrap_or_default());
            pending_event::Event::NewConfig(true)
        }
        Event::Poked(_) => pending_event::Event::Poke(true),
        Event::ClsUpdated(e) => {
            let mut versions = Vec::with_capacity(e.cls.len());
            for cl in &e.cls {
                versions.push(pending_event::ClVersion {
                    clid: cl.clid,
                    eversion: cl.eversion,
                });
                if cl.clid <= 0 || cl.eversion <= 0 {
                    continue;
                }
                match state.cls.binary_search_by_key(&cl.clid, |c| c.clid) {
                    // Never go back to an older version; the later event wins
                    // among equal versions.
                    Ok(i) if state.cls[i].eversion <= cl.eversion => state.cls[i] = cl.clone(),
                    Ok(_) => {}
                    Err(i) => state.cls.insert(i, cl.clone()),
                }
            }
            pending_event::Event::ClsUpdated(pending_event::ClsVersions { cls: versions })
        }
        Event::RunCreated(e) => {
            let id = e.run.as_ref().map(|r| r.id.clone()).unwrap_or_default();
            if let Some(run) = e
                .run
                .as_ref()
                .filter(|r| run_id_in_project(&r.id, &project))
            {
                upsert_created_run(&mut state.runs, run);
            }
            pending_event::Event::RunCreated(id)
        }
        Event::RunFinished(e) => {
            if run_id_in_project(&e.run_id, &project) && run_status_ended(e.status) {
                finish_run(&mut state.runs, e);
            }
            pending_event::Event::RunFinished(e.clone())
        }
        Event::PurgeCompleted(e) => pending_event::Event::PurgeCompleted(e.clone()),
        Event::TriggeringClDepsCompleted(e) => {
            pending_event::Event::TriggeringClDepsCompleted(e.clone())
        }
    };
    state.pending.push(PendingEvent {
        revision,
        event: Some(reduced),
    });
    state.last_revision = revision;
    Ok(())
}

/// Where the Run `id` is (`Ok`) or would go (`Err`) in the known Runs
/// (`ProjectState.runs`), which are sorted by id in *descending* order: a
/// RunID starts with an inverted time, so a new Run goes last and recording
/// it moves no other Run.
pub fn known_run_position(runs: &[Run], id: &str) -> Result<usize, usize> {
    runs.binary_search_by(|r| id.cmp(r.id.as_str()))
}

/// The known Run `id`.
pub fn known_run<'a>(runs: &'a [Run], id: &str) -> Option<&'a Run> {
    known_run_position(runs, id).ok().map(|i| &runs[i])
}

/// Puts the known Runs of a state read from storage in their order (sorted
/// by id, descending). States written before that order was adopted keep
/// them ascending; the sort is linear on a list already in either order.
pub fn sort_known_runs(state: &mut ProjectState) {
    state.runs.sort_by(|a, b| b.id.cmp(&a.id));
}

/// Records a created Run. A Run already known to have ended (its
/// `RunFinished` came first) keeps its first terminal status and end time.
fn upsert_created_run(runs: &mut Vec<Run>, run: &Run) {
    match known_run_position(runs, &run.id) {
        Ok(i) => {
            let known = &runs[i];
            let mut merged = run.clone();
            if run_status_ended(known.status) {
                merged.status = known.status;
                merged.end_time = known.end_time;
            }
            runs[i] = merged;
        }
        Err(i) => runs.insert(i, run.clone()),
    }
}

/// Records the end of a Run. The first terminal status wins; an unknown Run
/// is recorded with what the event says, so that a late `RunCreated` sees it
/// as ended.
fn finish_run(runs: &mut Vec<Run>, e: &crate::proto::RunFinished) {
    match known_run_position(runs, &e.run_id) {
        Ok(i) => {
            let known = &mut runs[i];
            if !run_status_ended(known.status) {
                known.status = e.status;
                known.end_time = e.end_time;
            }
        }
        Err(i) => runs.insert(
            i,
            Run {
                id: e.run_id.clone(),
                status: e.status,
                end_time: e.end_time,
                ..Default::default()
            },
        ),
    }
}
