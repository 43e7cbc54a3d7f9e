//! The stream vocabulary: every stream name and category the crate reads or
//! writes, parsing a stream name back to its project, the envelope of a
//! stored event (type name, bytes, metadata) and the deterministic ids of
//! derived events.
//!
//! Nothing else in the crate spells a stream name.
//!
//! | stream | holds | written by |
//! |---|---|---|
//! | `project-<P>` | input events and `Evaluated` markers (source of truth) | Notifier, scheduler, import |
//! | `projectlog-<P>` | one `ProjectLog` per logged eversion | projector |
//! | `projectsnapshot-<P>` | a `ProjectSnapshot` every [`SNAPSHOT_INTERVAL_EVERSIONS`] (max count [`SNAPSHOT_STREAM_MAX_COUNT`]) | projector |
//! | `projectoffload-<P>` | `ProjectStateOffload` when status or config hash changes | projector |
//! | `pmaction-<P>` | the outbox of actions | projector |
//! | [`CHECKPOINT_STREAM`] | the projector's position and due list (max count [`CHECKPOINT_STREAM_MAX_COUNT`]) | projector |

use uuid::Uuid;

use crate::events;
use crate::limits::{quoted, MAX_PROJECT_NAME_CHARS};
use crate::proto::{action::Action as ActionKind, input_event::Event};
use crate::store::NewEvent;

/// The category of source-of-truth streams: `project-<P>` (a prefix filter
/// over `$all` selects every project).
pub const PROJECT_CATEGORY: &str = "project-";

/// The projector's progress: global position and due list.
pub const CHECKPOINT_STREAM: &str = "projector-checkpoint";

/// `projector-checkpoint` keeps only this many events (stream max count).
pub const CHECKPOINT_STREAM_MAX_COUNT: u64 = 16;

/// Snapshots are written every this many eversions.
pub const SNAPSHOT_INTERVAL_EVERSIONS: i64 = 100;

/// `projectsnapshot-<P>` keeps only this many snapshots (stream max count).
pub const SNAPSHOT_STREAM_MAX_COUNT: u64 = 10;

/// The metadata schema version written with every event.
pub const METADATA_SCHEMA: u32 = 1;

/// The producer recorded in the metadata of derived events.
pub const DERIVED_PRODUCER: &str = "projector";

/// Namespace of the ids of derived events (UUID v5).
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1d5b_8e0c_77a4_4c31_b1f2_94e3_0c6a_52d8);

/// A project name that cannot name a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid project: {0}")]
pub struct InvalidProjectName(pub String);

/// Checks a LUCI project name: 1–100 characters of `a-z`, `0-9`, `-`, `_`.
pub fn check_project(project: &str) -> Result<(), InvalidProjectName> {
    if project.is_empty() {
        return Err(InvalidProjectName("must not be empty".into()));
    }
    if project.chars().count() > MAX_PROJECT_NAME_CHARS {
        return Err(InvalidProjectName(format!(
            "{} is longer than {MAX_PROJECT_NAME_CHARS} characters",
            quoted(project)
        )));
    }
    if let Some(c) = project
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(InvalidProjectName(format!(
            "{} contains {c:?}; only lowercase letters, digits, '-' and '_' are allowed",
            quoted(project)
        )));
    }
    Ok(())
}

/// `project-<P>`: the project's input events and markers.
pub fn project_stream(project: &str) -> String {
    format!("{PROJECT_CATEGORY}{project}")
}

/// The project of a `project-<P>` stream name (`None` for any other stream,
/// including the derived ones).
pub fn project_of_stream(stream: &str) -> Option<&str> {
    stream
        .strip_prefix(PROJECT_CATEGORY)
        .filter(|p| check_project(p).is_ok())
}

/// `projectlog-<P>`: one `ProjectLog` per logged eversion.
pub fn log_stream(project: &str) -> String {
    format!("projectlog-{project}")
}

/// `projectsnapshot-<P>`: a `ProjectSnapshot` every [`SNAPSHOT_INTERVAL_EVERSIONS`].
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

/// The metadata JSON of an event, following EventStoreDB's correlation
/// conventions: `$causationId` and `$correlationId` name the event itself (an
/// input event) or the marker that caused it (a derived event, which also
/// records its eversion).
pub fn metadata(cause: Uuid, producer: &str, eversion: Option<i64>) -> Vec<u8> {
    let mut value = serde_json::json!({
        "$causationId": cause.to_string(),
        "$correlationId": cause.to_string(),
        "producer": producer,
        "schema": METADATA_SCHEMA,
    });
    if let Some(eversion) = eversion {
        value["eversion"] = eversion.into();
    }
    serde_json::to_vec(&value).expect("metadata JSON cannot fail to serialise")
}

/// The stored form of an input event or marker: type name, protobuf bytes
/// and metadata.
pub fn input_event(event: &Event, id: Uuid, producer: &str) -> NewEvent {
    NewEvent {
        id,
        event_type: events::type_name(event).to_string(),
        data: events::encode(event),
        metadata: metadata(id, producer, None),
    }
}

/// The deterministic id of a derived event: the same (stream, eversion,
/// index) always gives the same id, so a re-write is an idempotent retry.
pub fn derived_id(stream: &str, eversion: i64, index: usize) -> Uuid {
    Uuid::new_v5(
        &DERIVED_ID_NAMESPACE,
        format!("{stream}\n{eversion}\n{index}").as_bytes(),
    )
}

/// The stored form of the `index`-th derived event of `eversion` in `stream`,
/// caused by the marker `marker_id`.
pub fn derived_event(
    stream: &str,
    eversion: i64,
    index: usize,
    event_type: &str,
    data: Vec<u8>,
    marker_id: Uuid,
) -> NewEvent {
    NewEvent {
        id: derived_id(stream, eversion, index),
        event_type: event_type.to_string(),
        data,
        metadata: metadata(marker_id, DERIVED_PRODUCER, Some(eversion)),
    }
}

/// The type name of an action event in `pmaction-<P>`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_stream_name_parses_back_to_its_project() {
        assert_eq!(project_stream("v8"), "project-v8");
        assert_eq!(project_of_stream(&project_stream("v8")), Some("v8"));
        assert_eq!(project_of_stream("projectlog-v8"), None);
        assert_eq!(project_of_stream(&log_stream("v8")), None);
        assert_eq!(project_of_stream("project-Bad"), None);
        assert_eq!(project_of_stream(CHECKPOINT_STREAM), None);
    }

    #[test]
    fn project_names_are_checked_with_a_reason() {
        assert!(check_project("chromium-m1_2").is_ok());
        assert_eq!(
            check_project("").unwrap_err().to_string(),
            "invalid project: must not be empty"
        );
        assert!(check_project(&"a".repeat(101))
            .unwrap_err()
            .0
            .contains("longer than 100"));
        assert!(check_project("a/b").unwrap_err().0.contains("'/'"));
    }

    #[test]
    fn metadata_is_byte_stable() {
        let id = Uuid::from_u128(7);
        assert_eq!(
            String::from_utf8(metadata(id, "cli", None)).unwrap(),
            r#"{"$causationId":"00000000-0000-0000-0000-000000000007","$correlationId":"00000000-0000-0000-0000-000000000007","producer":"cli","schema":1}"#
        );
        assert_eq!(
            String::from_utf8(metadata(id, DERIVED_PRODUCER, Some(3))).unwrap(),
            r#"{"$causationId":"00000000-0000-0000-0000-000000000007","$correlationId":"00000000-0000-0000-0000-000000000007","eversion":3,"producer":"projector","schema":1}"#
        );
    }

    #[test]
    fn derived_ids_depend_on_stream_eversion_and_index_only() {
        let a = derived_id(&log_stream("p"), 1, 0);
        assert_eq!(a, derived_id(&log_stream("p"), 1, 0));
        assert_ne!(a, derived_id(&log_stream("p"), 2, 0));
        assert_ne!(a, derived_id(&log_stream("p"), 1, 1));
        assert_ne!(a, derived_id(&action_stream("p"), 1, 0));
    }
}
