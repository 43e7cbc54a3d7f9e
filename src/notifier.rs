//! The Notifier: the API other services call to tell the Project Manager
//! that something happened. Each call validates its input, builds one event
//! and appends it durably to the stream `project-<P>`.
//!
//! A rejected call writes nothing and its error names the offending field.

use std::sync::OnceLock;

use crate::proto::Timestamp;
use regex::Regex;
use uuid::Uuid;

use crate::events;
use crate::limits::{
    quoted, MAX_CLS_PER_EVENT, MAX_DEPS_PER_CL, MAX_DURATION_SECONDS, MAX_EVENT_BYTES,
    MAX_STRING_BYTES, MAX_VOTES_PER_CL,
};
use crate::proto::{
    self, input_event::Event, project_config::State as ConfigState, run::Status as RunStatus,
};
use crate::store::{EventStore, ExpectedRevision, StoreError};
use crate::streams;

/// An input that does not satisfy the Notifier's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field, for example `cls[2].eversion`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The input is over a size limit (the service answers
    /// `RESOURCE_EXHAUSTED` rather than `INVALID_ARGUMENT`).
    pub over_size: bool,
}

impl ValidationError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            over_size: false,
        }
    }
}

/// A failed Notifier call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The input was rejected; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A Run event for a project that has no stream: refused (a Run cannot
    /// exist before its project), nothing written.
    #[error(
        "project {0:?} has no events: a Run of it cannot be announced before the project exists"
    )]
    UnknownProject(String),
    /// The store failed; the event may or may not be written (retry with the same id).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where an appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The project whose stream received the event.
    pub project: String,
    /// The event's revision in `project-<P>`.
    pub revision: u64,
    /// The event's id.
    pub id: Uuid,
}

/// The Notifier over an event store.
#[derive(Debug, Clone)]
pub struct Notifier<S> {
    store: S,
    producer: String,
}

impl<S: EventStore> Notifier<S> {
    /// A Notifier that records `producer` in each event's metadata.
    pub fn new(store: S, producer: impl Into<String>) -> Self {
        Self {
            store,
            producer: producer.into(),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Announces a new project config (`ConfigUpdated`).
    pub async fn update_config(
        &self,
        project: &str,
        config: proto::ProjectConfig,
    ) -> Result<Appended, NotifyError> {
        let event = Event::ConfigUpdated(proto::ConfigUpdated {
            config: Some(config),
        });
        self.send_now(project, event).await
    }

    /// Pokes the project (`Poked`).
    pub async fn poke(&self, project: &str) -> Result<Appended, NotifyError> {
        self.send_now(project, Event::Poked(proto::Poked {})).await
    }

    /// Announces new CL entity versions (`ClsUpdated`).
    pub async fn notify_cls_updated(
        &self,
        project: &str,
        cls: Vec<proto::ChangeList>,
    ) -> Result<Appended, NotifyError> {
        self.send_now(project, Event::ClsUpdated(proto::ClsUpdated { cls }))
            .await
    }

    /// Announces a created Run (`RunCreated`), routed by the run id's project.
    pub async fn notify_run_created(&self, run: proto::Run) -> Result<Appended, NotifyError> {
        let project = run_project(&run.id, "run.id")?.to_string();
        let event = Event::RunCreated(proto::RunCreated { run: Some(run) });
        self.send_now(&project, event).await
    }

    /// Announces that a Run ended (`RunFinished`), routed by the run id's project.
    pub async fn notify_run_finished(
        &self,
        run_id: &str,
        status: RunStatus,
        end_time: Timestamp,
    ) -> Result<Appended, NotifyError> {
        let project = run_project(run_id, "run_id")?.to_string();
        let event = Event::RunFinished(proto::RunFinished {
            run_id: run_id.to_string(),
            status: status as i32,
            end_time: Some(end_time),
        });
        self.send_now(&project, event).await
    }

    /// Announces that a purge finished (`PurgeCompleted`).
    pub async fn notify_purge_completed(
        &self,
        project: &str,
        event: proto::PurgeCompleted,
    ) -> Result<Appended, NotifyError> {
        self.send_now(project, Event::PurgeCompleted(event)).await
    }

    /// Announces that voting on a CL's deps finished (`TriggeringClDepsCompleted`).
    pub async fn notify_triggering_cl_deps_completed(
        &self,
        project: &str,
        event: proto::TriggeringClDepsCompleted,
    ) -> Result<Appended, NotifyError> {
        self.send_now(project, Event::TriggeringClDepsCompleted(event))
            .await
    }

    /// Validates and appends any input event (never an `Evaluated` marker).
    pub async fn send_now(&self, project: &str, event: Event) -> Result<Appended, NotifyError> {
        self.send_with_id(project, event, Uuid::new_v4()).await
    }

    /// Like [`Self::send_now`] with a caller-chosen event id: retrying with
    /// the same id never appends the event twice.
    pub async fn send_with_id(
        &self,
        project: &str,
        event: Event,
        id: Uuid,
    ) -> Result<Appended, NotifyError> {
        if matches!(event, Event::Evaluated(_)) {
            return Err(ValidationError::new(
                "event",
                "Evaluated markers are appended by the scheduler, not the Notifier",
            )
            .into());
        }
        validate_event(project, &event)?;
        // Run events are routed by the run id's project, which must exist.
        let run_event = matches!(event, Event::RunCreated(_) | Event::RunFinished(_));
        let expected = if run_event {
            ExpectedRevision::StreamExists
        } else {
            ExpectedRevision::Any
        };
        let new_event = streams::input_event(&event, id, &self.producer);
        let result = self
            .store
            .append(&streams::project_stream(project), expected, vec![new_event])
            .await
            .map_err(|e| match e {
                StoreError::WrongExpectedVersion { actual: None, .. } if run_event => {
                    NotifyError::UnknownProject(project.to_string())
                }
                other => other.into(),
            })?;
        Ok(Appended {
            project: project.to_string(),
            revision: result.next_revision,
            id,
        })
    }
}

/// Checks a LUCI project name ([`streams::check_project`]) as the `project` field.
pub fn validate_project(project: &str) -> Result<(), ValidationError> {
    streams::check_project(project).map_err(|e| ValidationError::new("project", e.0))
}

/// The project of a RunID (`<project>/<digits>-<rest>`), validating its form.
///
/// The production form is `<project>/<13 digits>-<digest version>-<hex>`; the
/// original's tests also use short ids like `test/101-aaa`, accepted here.
pub fn run_project<'a>(run_id: &'a str, field: &str) -> Result<&'a str, ValidationError> {
    static FORM: OnceLock<Regex> = OnceLock::new();
    let form = FORM.get_or_init(|| Regex::new(r"^[0-9]+-[0-9A-Za-z][0-9A-Za-z-]*$").unwrap());
    check_len(run_id, field)?;
    let Some((project, rest)) = run_id.split_once('/') else {
        return Err(ValidationError::new(
            field,
            format!("run id {} has no '<project>/' prefix", quoted(run_id)),
        ));
    };
    validate_project(project).map_err(|e| ValidationError::new(field, e.message))?;
    if !form.is_match(rest) {
        return Err(ValidationError::new(
            field,
            format!(
                "run id {} is not of the form <project>/<digits>-<digits>-<hex digest>",
                quoted(run_id)
            ),
        ));
    }
    Ok(project)
}

/// Validates an input event for `project` (DESIGN §12). `Evaluated` markers
/// are accepted here (import validates them too) if they carry a time.
pub fn validate_event(project: &str, event: &Event) -> Result<(), ValidationError> {
    validate_project(project)?;
    let size = prost::Message::encoded_len(&events::wrap(event.clone()));
    if size > MAX_EVENT_BYTES {
        return Err(ValidationError {
            over_size: true,
            ..ValidationError::new(
                "event",
                format!("encodes to {size} bytes, more than the limit of {MAX_EVENT_BYTES}"),
            )
        });
    }
    match event {
        Event::ConfigUpdated(e) => {
            let config = e
                .config
                .as_ref()
                .ok_or_else(|| ValidationError::new("config", "is required"))?;
            validate_config(config)
        }
        Event::Poked(_) => Ok(()),
        Event::ClsUpdated(e) => validate_cls(&e.cls),
        Event::RunCreated(e) => {
            let run = e
                .run
                .as_ref()
                .ok_or_else(|| ValidationError::new("run", "is required"))?;
            validate_run(project, run)
        }
        Event::RunFinished(e) => {
            same_project(project, &e.run_id, "run_id")?;
            let status = RunStatus::try_from(e.status).ok();
            if !matches!(
                status,
                Some(RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled)
            ) {
                return Err(ValidationError::new(
                    "status",
                    format!(
                        "{} is not a terminal status (SUCCEEDED, FAILED or CANCELLED)",
                        status.map_or(e.status.to_string(), |s| s.as_str_name().to_string())
                    ),
                ));
            }
            if e.end_time.is_none() {
                return Err(ValidationError::new("end_time", "is required"));
            }
            check_time(e.end_time.as_ref(), "end_time")
        }
        Event::PurgeCompleted(e) => {
            check_operation_id(&e.operation_id)?;
            positive(e.clid, "clid")
        }
        Event::TriggeringClDepsCompleted(e) => {
            check_operation_id(&e.operation_id)?;
            positive(e.origin, "origin")?;
            for (i, clid) in e.succeeded.iter().enumerate() {
                positive(*clid, &format!("succeeded[{i}]"))?;
            }
            for (i, clid) in e.incompleted.iter().enumerate() {
                positive(*clid, &format!("incompleted[{i}]"))?;
            }
            Ok(())
        }
        Event::Evaluated(e) => {
            if e.now.is_none() {
                return Err(ValidationError::new("now", "is required"));
            }
            check_time(e.now.as_ref(), "now")
        }
    }
}

fn check_operation_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::new("operation_id", "must not be empty"));
    }
    check_len(id, "operation_id")
}

/// A timestamp within proto's range (years 0001 to 9999, nanos in `0..1e9`).
fn check_time(time: Option<&Timestamp>, field: &str) -> Result<(), ValidationError> {
    match time.map(Timestamp::to_rfc3339) {
        Some(Err(e)) => Err(ValidationError::new(field, e.to_string())),
        _ => Ok(()),
    }
}

/// A string of at most [`MAX_STRING_BYTES`].
fn check_len(text: &str, field: &str) -> Result<(), ValidationError> {
    if text.len() > MAX_STRING_BYTES {
        return Err(ValidationError::new(
            field,
            format!("{} is longer than {MAX_STRING_BYTES} bytes", quoted(text)),
        ));
    }
    Ok(())
}

/// At most `max` items.
fn check_count(count: usize, max: usize, field: &str, what: &str) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::new(
            field,
            format!("has {count} {what}, more than the limit of {max}"),
        ));
    }
    Ok(())
}

fn positive(value: i64, field: &str) -> Result<(), ValidationError> {
    if value <= 0 {
        return Err(ValidationError::new(
            field,
            format!("must be a positive id, got {value}"),
        ));
    }
    Ok(())
}

fn same_project(project: &str, run_id: &str, field: &str) -> Result<(), ValidationError> {
    let run_project = run_project(run_id, field)?;
    if run_project != project {
        return Err(ValidationError::new(
            field,
            format!(
                "run {} belongs to project {run_project:?}, not {project:?}",
                quoted(run_id)
            ),
        ));
    }
    Ok(())
}

fn validate_config(config: &proto::ProjectConfig) -> Result<(), ValidationError> {
    check_len(&config.hash, "config.hash")?;
    let state = ConfigState::try_from(config.state).ok();
    match state {
        Some(ConfigState::Enabled) => {
            if config.hash.is_empty() {
                return Err(ValidationError::new(
                    "config.hash",
                    "must not be empty for an enabled config",
                ));
            }
            if config.config_groups.is_empty() {
                return Err(ValidationError::new(
                    "config.config_groups",
                    "an enabled config needs at least one config group",
                ));
            }
        }
        Some(ConfigState::Disabled | ConfigState::Deleted) => {}
        _ => {
            return Err(ValidationError::new(
                "config.state",
                "must be ENABLED, DISABLED or DELETED",
            ))
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (g, group) in config.config_groups.iter().enumerate() {
        let at = format!("config.config_groups[{g}]");
        check_len(&group.name, &format!("{at}.name"))?;
        if group.name.is_empty() || group.name.contains('/') {
            return Err(ValidationError::new(
                format!("{at}.name"),
                format!(
                    "{} must be non-empty and contain no '/'",
                    quoted(&group.name)
                ),
            ));
        }
        if !names.insert(group.name.as_str()) {
            return Err(ValidationError::new(
                format!("{at}.name"),
                format!("{} is used by two config groups", quoted(&group.name)),
            ));
        }
        for (h, watch) in group.gerrit.iter().enumerate() {
            check_len(&watch.host, &format!("{at}.gerrit[{h}].host"))?;
            if watch.host.is_empty() {
                return Err(ValidationError::new(
                    format!("{at}.gerrit[{h}].host"),
                    "must not be empty",
                ));
            }
            for (p, repo) in watch.projects.iter().enumerate() {
                let repo_at = format!("{at}.gerrit[{h}].projects[{p}]");
                check_len(&repo.name, &format!("{repo_at}.name"))?;
                if repo.name.is_empty() {
                    return Err(ValidationError::new(
                        format!("{repo_at}.name"),
                        "must not be empty",
                    ));
                }
                for (kind, list) in [
                    ("ref_regexp", &repo.ref_regexp),
                    ("ref_regexp_exclude", &repo.ref_regexp_exclude),
                ] {
                    for (i, re) in list.iter().enumerate() {
                        let field = format!("{repo_at}.{kind}[{i}]");
                        check_len(re, &field)?;
                        if let Err(err) = Regex::new(re) {
                            return Err(ValidationError::new(
                                field,
                                format!("{} is not a valid regexp: {err}", quoted(re)),
                            ));
                        }
                    }
                }
            }
        }
        for (m, mode) in group.additional_modes.iter().enumerate() {
            let mode_at = format!("{at}.additional_modes[{m}]");
            check_len(&mode.name, &format!("{mode_at}.name"))?;
            check_len(
                &mode.triggering_label,
                &format!("{mode_at}.triggering_label"),
            )?;
            if mode.name.is_empty() {
                return Err(ValidationError::new(
                    format!("{mode_at}.name"),
                    "must not be empty",
                ));
            }
            if !(1..=2).contains(&mode.cq_label_value) {
                return Err(ValidationError::new(
                    format!("{mode_at}.cq_label_value"),
                    format!("must be 1 or 2, got {}", mode.cq_label_value),
                ));
            }
        }
        if let Some(delay) = group
            .combine_cls
            .as_ref()
            .and_then(|c| c.stabilization_delay.as_ref())
        {
            let field = format!("{at}.combine_cls.stabilization_delay");
            if delay.seconds < 0 || delay.nanos < 0 {
                return Err(ValidationError::new(field, "must not be negative"));
            }
            if delay.seconds > MAX_DURATION_SECONDS || delay.nanos >= 1_000_000_000 {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{}s {}ns is longer than 10,000 years or not normalised",
                        delay.seconds, delay.nanos
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn validate_cls(cls: &[proto::ChangeList]) -> Result<(), ValidationError> {
    if cls.is_empty() {
        return Err(ValidationError::new("cls", "must name at least one CL"));
    }
    check_count(cls.len(), MAX_CLS_PER_EVENT, "cls", "CLs")?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, cl) in cls.iter().enumerate() {
        positive(cl.clid, &format!("cls[{i}].clid"))?;
        positive(cl.eversion, &format!("cls[{i}].eversion"))?;
        if !seen.insert(cl.clid) {
            return Err(ValidationError::new(
                format!("cls[{i}].clid"),
                format!("CL {} appears twice in one event", cl.clid),
            ));
        }
        if let Some(applicable) = &cl.applicable_config {
            for (p, project) in applicable.projects.iter().enumerate() {
                let at = format!("cls[{i}].applicable_config.projects[{p}]");
                validate_project(&project.name)
                    .map_err(|e| ValidationError::new(format!("{at}.name"), e.message))?;
                // The CL updater always names at least one group (gobmap's guarantee).
                if project.config_group_ids.is_empty() {
                    return Err(ValidationError::new(
                        format!("{at}.config_group_ids"),
                        "must name at least one config group",
                    ));
                }
                for (g, id) in project.config_group_ids.iter().enumerate() {
                    let well_formed = id
                        .split_once('/')
                        .is_some_and(|(hash, name)| !hash.is_empty() && !name.is_empty());
                    if !well_formed {
                        return Err(ValidationError::new(
                            format!("{at}.config_group_ids[{g}]"),
                            format!(
                                "{} is not of the form <config hash>/<group name>",
                                quoted(id)
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(access) = &cl.access {
            for (n, no_access) in access.no_access.iter().enumerate() {
                let at = format!("cls[{i}].access.no_access[{n}]");
                check_len(&no_access.project, &format!("{at}.project"))?;
                check_time(
                    no_access.no_access_time.as_ref(),
                    &format!("{at}.no_access_time"),
                )?;
            }
        }
        if let Some(snapshot) = &cl.snapshot {
            validate_snapshot(snapshot, &format!("cls[{i}].snapshot"))?;
        }
    }
    Ok(())
}

fn validate_snapshot(snapshot: &proto::Snapshot, at: &str) -> Result<(), ValidationError> {
    check_len(&snapshot.luci_project, &format!("{at}.luci_project"))?;
    check_count(
        snapshot.deps.len(),
        MAX_DEPS_PER_CL,
        &format!("{at}.deps"),
        "deps",
    )?;
    for (d, dep) in snapshot.deps.iter().enumerate() {
        positive(dep.clid, &format!("{at}.deps[{d}].clid"))?;
    }
    for (f, footer) in snapshot.metadata.iter().enumerate() {
        check_len(&footer.key, &format!("{at}.metadata[{f}].key"))?;
        check_len(&footer.value, &format!("{at}.metadata[{f}].value"))?;
    }
    let Some(gerrit) = &snapshot.gerrit else {
        return Ok(());
    };
    let at = format!("{at}.gerrit");
    for (field, value) in [
        ("host", &gerrit.host),
        ("project", &gerrit.project),
        ("ref", &gerrit.r#ref),
        ("owner_email", &gerrit.owner_email),
        ("current_revision", &gerrit.current_revision),
    ] {
        check_len(value, &format!("{at}.{field}"))?;
    }
    check_time(
        gerrit.current_revision_created.as_ref(),
        &format!("{at}.current_revision_created"),
    )?;
    check_count(
        gerrit.votes.len(),
        MAX_VOTES_PER_CL,
        &format!("{at}.votes"),
        "votes",
    )?;
    for (v, vote) in gerrit.votes.iter().enumerate() {
        let at = format!("{at}.votes[{v}]");
        check_len(&vote.label, &format!("{at}.label"))?;
        check_len(&vote.email, &format!("{at}.email"))?;
        check_time(vote.time.as_ref(), &format!("{at}.time"))?;
    }
    Ok(())
}

fn validate_run(project: &str, run: &proto::Run) -> Result<(), ValidationError> {
    same_project(project, &run.id, "run.id")?;
    if run.mode.is_empty() {
        return Err(ValidationError::new("run.mode", "must not be empty"));
    }
    check_len(&run.mode, "run.mode")?;
    if run.clids.is_empty() {
        return Err(ValidationError::new(
            "run.clids",
            "must name at least one CL",
        ));
    }
    for (i, clid) in run.clids.iter().enumerate() {
        positive(*clid, &format!("run.clids[{i}]"))?;
    }
    if run.create_time.is_none() {
        return Err(ValidationError::new("run.create_time", "is required"));
    }
    check_time(run.create_time.as_ref(), "run.create_time")?;
    check_time(run.end_time.as_ref(), "run.end_time")
}
