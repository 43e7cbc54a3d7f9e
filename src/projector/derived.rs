//! The derived streams the projector writes, their names and the
//! deterministic ids that make re-writing them after a crash idempotent.

use prost::Message;
use uuid::Uuid;

use crate::domain::Evaluation;
use crate::notifier;
use crate::proto::{self, action::Action as ActionKind};
use crate::store::NewEvent;

/// Snapshots are written every this many eversions.
pub const SNAPSHOT_INTERVAL_EVERSIONS: i64 = 100;

/// `projectsnapshot-<P>` keeps only this many snapshots (stream max count).
pub const SNAPSHOT_STREAM_MAX_COUNT: u64 = 10;

/// The producer recorded in the metadata of derived events.
pub const PRODUCER: &str = "projector";

/// Namespace of the ids of derived events (UUID v5).
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1d5b_8e0c_77a4_4c31_b1f2_94e3_0c6a_52d8);

/// `projectlog-<P>`: one `ProjectLog` per logged eversion.
pub fn log_stream(project: &str) -> String {
    format!("projectlog-{project}")
}

/// `projectsnapshot-<P>`: `ProjectSnapshot` every [`SNAPSHOT_INTERVAL_EVERSIONS`].
pub fn snapshot_stream(project: &str) -> String {
    format!("projectsnapshot-{project}")
}

/// `projectoffload-<P>`: `ProjectStateOffload` whenever status or hash changes.
pub fn offload_stream(project: &str) -> String {
    format!("projectoffload-{project}")
}

/// `pmaction-<P>`: the outbox of actions.
pub fn action_stream(project: &str) -> String {
    format!("pmaction-{project}")
}

/// The deterministic id of a derived event: the same (stream, eversion,
/// index) always gives the same id, so a re-write is an idempotent retry.
pub fn derived_id(stream: &str, eversion: i64, index: usize) -> Uuid {
    Uuid::new_v5(
        &DERIVED_ID_NAMESPACE,
        format!("{stream}\n{eversion}\n{index}").as_bytes(),
    )
}

/// The type name of an action event.
pub fn action_type(action: &ActionKind) -> &'static str {
    match action {
        ActionKind::CreateRun(_) => "CreateRun",
        ActionKind::PurgeCl(_) => "PurgeCl",
        ActionKind::TriggerClDeps(_) => "TriggerClDeps",
        ActionKind::CancelRuns(_) => "CancelRuns",
        ActionKind::UpdateRunsConfig(_) => "UpdateRunsConfig",
        ActionKind::PokeRuns(_) => "PokeRuns",
        ActionKind::PokePoller(_) => "PokePoller",
    }
}

fn derived_event(
    stream: &str,
    eversion: i64,
    index: usize,
    event_type: &str,
    data: Vec<u8>,
    marker_id: Uuid,
) -> NewEvent {
    let id = derived_id(stream, eversion, index);
    let metadata = serde_json::to_vec(&serde_json::json!({
        "$causationId": marker_id.to_string(),
        "$correlationId": marker_id.to_string(),
        "eversion": eversion,
        "producer": PRODUCER,
        "schema": notifier::METADATA_SCHEMA,
    }))
    .expect("metadata JSON cannot fail to serialise");
    NewEvent {
        id,
        event_type: event_type.to_string(),
        data,
        metadata,
    }
}

/// Every derived append one marker causes, stream by stream, in the order
/// they are written: actions, `ProjectLog`, offload, snapshot.
pub fn derived_writes(
    project: &str,
    evaluation: &Evaluation,
    snapshot: Option<&proto::ProjectSnapshot>,
    marker_id: Uuid,
) -> Vec<(String, Vec<NewEvent>)> {
    let eversion = evaluation.eversion;
    let mut writes = Vec::new();
    let actions = evaluation.wrapped_actions();
    if !actions.is_empty() {
        let stream = action_stream(project);
        let events = actions
            .iter()
            .enumerate()
            .map(|(index, action)| {
                let kind = action.action.as_ref().expect("wrapped actions are set");
                derived_event(
                    &stream,
                    eversion,
                    index,
                    action_type(kind),
                    action.encode_to_vec(),
                    marker_id,
                )
            })
            .collect();
        writes.push((stream, events));
    }
    if let Some(log) = &evaluation.project_log {
        let stream = log_stream(project);
        let event = derived_event(
            &stream,
            eversion,
            0,
            "ProjectLog",
            log.encode_to_vec(),
            marker_id,
        );
        writes.push((stream, vec![event]));
    }
    if let Some(offload) = &evaluation.offload {
        let stream = offload_stream(project);
        let event = derived_event(
            &stream,
            eversion,
            0,
            "ProjectStateOffload",
            offload.encode_to_vec(),
            marker_id,
        );
        writes.push((stream, vec![event]));
    }
    if let Some(snapshot) = snapshot {
        let stream = snapshot_stream(project);
        let event = derived_event(
            &stream,
            eversion,
            0,
            "ProjectSnapshot",
            snapshot.encode_to_vec(),
            marker_id,
        );
        writes.push((stream, vec![event]));
    }
    writes
}

/// The project of a `project-<P>` stream name.
pub fn project_of_stream(stream: &str) -> Option<&str> {
    stream
        .strip_prefix("project-")
        .filter(|p| notifier::validate_project(p).is_ok())
}
