//! The derived writes of one marker: actions, `ProjectLog`, offload and
//! snapshot, each with the deterministic id ([`crate::streams::derived_id`]) that
//! makes re-writing them after a crash idempotent.

use prost::Message;
use uuid::Uuid;

use crate::domain::Evaluation;
use crate::proto;
use crate::store::NewEvent;
use crate::streams::{
    action_stream, action_type, derived_event, log_stream, offload_stream, snapshot_stream,
};

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
