//! The `ProjectManager` RPCs: the Notifier calls, the marker request and the
//! read side (state, logs, actions).

// `tonic::Status` is the error type every RPC returns; boxing it in the
// helpers would only move the allocation.
#![allow(clippy::result_large_err)]

use prost::Message;
use tonic::{Request, Response, Status};

use crate::domain;
use crate::limits::{check_marker_now, MAX_CLOCK_SKEW, MAX_RESPONSE_BYTES};
use crate::metrics::metrics;
use crate::notifier::{Appended, Notifier, NotifyError};
use crate::projector::{wall_clock, AskError, ProjectorHandle};
use crate::proto::{self, input_event::Event, project_manager_server::ProjectManager};
use crate::read::{self, At, LoadError};
use crate::store::{Direction, EventStore, ReadFrom, RecordedEvent, StoreError};
use crate::streams::{action_stream, check_project as check_project_name, log_stream};
use tonic_types::{ErrorDetails, StatusExt};

/// Page size of the list RPCs when the request asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Largest page the list RPCs return.
pub const MAX_PAGE_SIZE: usize = 1_000;

/// The `ProjectManager` service over a store and a running projector.
#[derive(Debug, Clone)]
pub struct PmService<S> {
    notifier: Notifier<S>,
    projector: ProjectorHandle,
    store: S,
    max_clock_skew: Option<std::time::Duration>,
}

impl<S: EventStore> PmService<S> {
    /// The service.
    pub fn new(notifier: Notifier<S>, projector: ProjectorHandle, store: S) -> Self {
        Self {
            notifier,
            projector,
            store,
            max_clock_skew: Some(MAX_CLOCK_SKEW),
        }
    }

    /// Lets `Evaluate` take any `now` past the wall clock (recordings,
    /// offline work); by default it may be at most [`MAX_CLOCK_SKEW`] ahead.
    pub fn allow_any_now(mut self, allow: bool) -> Self {
        self.max_clock_skew = (!allow).then_some(MAX_CLOCK_SKEW);
        self
    }
}

/// Maps a store failure to a gRPC status.
pub fn store_status(err: StoreError) -> Status {
    metrics().store_error(err.kind());
    match err {
        StoreError::WrongExpectedVersion { .. } | StoreError::DuplicateEventId { .. } => {
            Status::failed_precondition(err.to_string())
        }
        StoreError::InvalidArgument(_) => Status::invalid_argument(err.to_string()),
        StoreError::Unavailable(_) | StoreError::Closed => Status::unavailable(err.to_string()),
        StoreError::Corrupt(_) => Status::data_loss(err.to_string()),
        StoreError::PermissionDenied(_) => Status::permission_denied(err.to_string()),
    }
}

/// Maps a projector answer to a gRPC status: a quarantined project is
/// `FAILED_PRECONDITION` naming the stream, revision and reason.
fn ask_status(err: AskError) -> Status {
    match err {
        AskError::Stopped | AskError::Unavailable(_) => Status::unavailable(err.to_string()),
        AskError::Quarantined { .. } | AskError::Refused(_) => {
            Status::failed_precondition(err.to_string())
        }
    }
}

/// `INVALID_ARGUMENT` naming the request field, as a path of proto field
/// names from the request message (`event.cls[0].deps`, `config.state`,
/// `page_token`), in the message and as a `google.rpc.BadRequest` field
/// violation.
fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    violation(tonic::Code::InvalidArgument, field, problem)
}

/// A status with `code` naming the request field, as [`invalid`] does.
fn violation(code: tonic::Code, field: &str, problem: impl std::fmt::Display) -> Status {
    let description = problem.to_string();
    Status::with_error_details(
        code,
        format!("invalid {field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// Where the event's fields sit in a request: at its top (`UpdateConfig`
/// holds `config`, `NotifyRunCreated` holds `run`) or under `event.`.
#[derive(Debug, Clone, Copy)]
enum EventAt {
    Top,
    Event,
    /// `SendNow`: under `event.<the oneof field>.`.
    SendNow(&'static str),
}

impl EventAt {
    /// The request path of a field the Notifier names relative to the event
    /// (`project` and the whole `event` are the request's own).
    fn path(self, field: &str) -> String {
        match (self, field) {
            (_, "project") => field.to_string(),
            (EventAt::Top, _) => field.to_string(),
            (EventAt::Event, "event") => "event".to_string(),
            (EventAt::Event, _) => format!("event.{field}"),
            (EventAt::SendNow(kind), "event") => format!("event.{kind}"),
            (EventAt::SendNow(kind), _) => format!("event.{kind}.{field}"),
        }
    }
}

fn notify_status(err: NotifyError, at: EventAt) -> Status {
    match err {
        NotifyError::Invalid(e) if e.over_size => violation(
            tonic::Code::ResourceExhausted,
            &at.path(&e.field),
            &e.message,
        ),
        NotifyError::Invalid(e) => invalid(&at.path(&e.field), &e.message),
        NotifyError::UnknownProject(_) => Status::failed_precondition(err.to_string()),
        NotifyError::Store(e) => store_status(e),
    }
}

/// Runs a Notifier call for an RPC, counts it in the metrics (by outcome,
/// with its duration) and answers with the appended revision.
async fn notified(
    rpc: &str,
    at: EventAt,
    call: impl std::future::Future<Output = Result<Appended, NotifyError>>,
) -> Result<Response<proto::NotifyResponse>, Status> {
    let started = std::time::Instant::now();
    let result = call.await.map_err(|e| notify_status(e, at));
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(status) => code_name(status.code()),
    };
    metrics().append(rpc, &outcome, started.elapsed().as_secs_f64());
    let appended = result?;
    Ok(Response::new(proto::NotifyResponse {
        revision: appended.revision,
        project: appended.project,
    }))
}

/// A gRPC code in snake case (`InvalidArgument` → `invalid_argument`).
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| invalid(field, "is required"))
}

fn check_project(project: &str) -> Result<(), Status> {
    check_project_name(project).map_err(|e| invalid("project", &e.0))
}

fn page_size(requested: i32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(invalid("page_size", format!("{n} is negative"))),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// A page token: the next revision to read and a tag binding it to the
/// request it came from (the RPC, project and filter), so that it is opaque
/// to clients and useless for another request.
fn page_token(rpc: &str, project: &str, filter: i64, next: u64) -> String {
    format!("{next:x}.{}", page_tag(rpc, project, filter, next))
}

fn page_tag(rpc: &str, project: &str, filter: i64, next: u64) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [
        rpc.as_bytes(),
        project.as_bytes(),
        &filter.to_le_bytes(),
        &next.to_le_bytes(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// Where a page starts: 0 without a token, else the token's revision if the
/// token was issued for this same request.
fn page_start(token: &str, rpc: &str, project: &str, filter: i64) -> Result<u64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    let refuse = || {
        invalid(
            "page_token",
            format!(
                "{} was not issued for this request (another RPC, project or filter); \
                 start again without a token",
                crate::limits::quoted(token)
            ),
        )
    };
    let (next, tag) = token.split_once('.').ok_or_else(refuse)?;
    let next = u64::from_str_radix(next, 16).map_err(|_| refuse())?;
    if page_tag(rpc, project, filter, next) != tag {
        return Err(refuse());
    }
    Ok(next)
}

/// Reads up to `max` events of a stream from revision `from`.
async fn read_page<S: EventStore>(
    store: &S,
    stream: &str,
    from: u64,
    max: usize,
) -> Result<Vec<RecordedEvent>, Status> {
    store
        .read_stream(stream, ReadFrom::Revision(from), Direction::Forwards, max)
        .await
        .map_err(store_status)
}

/// Refuses an answer over [`MAX_RESPONSE_BYTES`] with a clear error (the
/// transport would otherwise fail with a message about frames).
fn within_limit<M: Message>(what: &str, message: M) -> Result<Response<M>, Status> {
    let size = message.encoded_len();
    if size > MAX_RESPONSE_BYTES {
        return Err(Status::resource_exhausted(format!(
            "{what} is {size} bytes, over the {MAX_RESPONSE_BYTES}-byte limit of a response; \
             read it from the store instead (`prjmanager --store URL state`, `pm-replay`)"
        )));
    }
    Ok(Response::new(message))
}

/// How many of `page` fit in one list response: at least one (a single
/// event over the limit is refused by [`within_limit`]), then as many as
/// keep the stored bytes within half the response limit.
fn fitting(page: &[RecordedEvent]) -> usize {
    let mut total = 0;
    page.iter()
        .position(|event| {
            total += event.data.len();
            total > MAX_RESPONSE_BYTES / 2
        })
        .map_or(page.len(), |over| over.max(1))
}

/// `NOT_FOUND` unless the project has events (every read says so alike).
async fn require_project<S: EventStore>(store: &S, project: &str) -> Result<(), Status> {
    check_project(project)?;
    read::require_project(store, project)
        .await
        .map_err(store_status)?
        .map_err(|e| Status::not_found(e.to_string()))
}

fn decode<M: Message + Default>(event: &RecordedEvent) -> Result<M, Status> {
    read::decode(event).map_err(|e| Status::data_loss(e.to_string()))
}

#[tonic::async_trait]
impl<S: EventStore> ProjectManager for PmService<S> {
    async fn update_config(
        &self,
        request: Request<proto::UpdateConfigRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let r = request.into_inner();
        let config = required(r.config, "config")?;
        notified(
            "UpdateConfig",
            EventAt::Top,
            self.notifier.update_config(&r.project, config),
        )
        .await
    }

    async fn poke(
        &self,
        request: Request<proto::PokeRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        notified(
            "Poke",
            EventAt::Top,
            self.notifier.poke(&request.into_inner().project),
        )
        .await
    }

    async fn notify_cls_updated(
        &self,
        request: Request<proto::NotifyClsUpdatedRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let r = request.into_inner();
        let event = required(r.event, "event")?;
        notified(
            "NotifyClsUpdated",
            EventAt::Event,
            self.notifier.notify_cls_updated(&r.project, event.cls),
        )
        .await
    }

    async fn notify_run_created(
        &self,
        request: Request<proto::NotifyRunCreatedRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let run = required(request.into_inner().run, "run")?;
        notified(
            "NotifyRunCreated",
            EventAt::Top,
            self.notifier.notify_run_created(run),
        )
        .await
    }

    async fn notify_run_finished(
        &self,
        request: Request<proto::NotifyRunFinishedRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let event = required(request.into_inner().event, "event")?;
        let project = crate::notifier::run_project(&event.run_id, "event.run_id")
            .map_err(|e| invalid(&e.field, &e.message))?
            .to_string();
        notified(
            "NotifyRunFinished",
            EventAt::Event,
            self.notifier.send_now(&project, Event::RunFinished(event)),
        )
        .await
    }

    async fn notify_purge_completed(
        &self,
        request: Request<proto::NotifyPurgeCompletedRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let r = request.into_inner();
        let event = required(r.event, "event")?;
        notified(
            "NotifyPurgeCompleted",
            EventAt::Event,
            self.notifier.notify_purge_completed(&r.project, event),
        )
        .await
    }

    async fn notify_triggering_cl_deps_completed(
        &self,
        request: Request<proto::NotifyTriggeringClDepsCompletedRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let r = request.into_inner();
        let event = required(r.event, "event")?;
        notified(
            "NotifyTriggeringClDepsCompleted",
            EventAt::Event,
            self.notifier
                .notify_triggering_cl_deps_completed(&r.project, event),
        )
        .await
    }

    async fn send_now(
        &self,
        request: Request<proto::SendNowRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let r = request.into_inner();
        let event = required(r.event.and_then(|e| e.event), "event")?;
        let at = EventAt::SendNow(match &event {
            Event::ConfigUpdated(_) => "config_updated",
            Event::Poked(_) => "poked",
            Event::ClsUpdated(_) => "cls_updated",
            Event::RunCreated(_) => "run_created",
            Event::RunFinished(_) => "run_finished",
            Event::PurgeCompleted(_) => "purge_completed",
            Event::TriggeringClDepsCompleted(_) => "triggering_cl_deps_completed",
            Event::Evaluated(_) => "evaluated",
        });
        notified("SendNow", at, self.notifier.send_now(&r.project, event)).await
    }

    async fn evaluate(
        &self,
        request: Request<proto::EvaluateRequest>,
    ) -> Result<Response<proto::NotifyResponse>, Status> {
        let r = request.into_inner();
        check_project(&r.project)?;
        if let Some(now) = &r.now {
            let state = self.projector.state(&r.project).await.map_err(ask_status)?;
            let last = state.as_ref().and_then(|s| s.update_time.as_ref());
            check_marker_now(now, last, &wall_clock(), self.max_clock_skew)
                .map_err(|e| invalid("now", e))?;
        }
        let revision = self
            .projector
            .evaluate(&r.project, r.now)
            .await
            .map_err(ask_status)?;
        Ok(Response::new(proto::NotifyResponse {
            revision,
            project: r.project,
        }))
    }

    async fn list_quarantined(
        &self,
        _request: Request<proto::ListQuarantinedRequest>,
    ) -> Result<Response<proto::ListQuarantinedResponse>, Status> {
        let list = self.projector.quarantined().await.map_err(ask_status)?;
        Ok(Response::new(proto::ListQuarantinedResponse {
            projects: list
                .into_iter()
                .map(|(project, reason)| proto::QuarantinedProject { project, reason })
                .collect(),
        }))
    }

    async fn release_project(
        &self,
        request: Request<proto::ReleaseProjectRequest>,
    ) -> Result<Response<proto::ReleaseProjectResponse>, Status> {
        let r = request.into_inner();
        check_project(&r.project)?;
        let eversion = self
            .projector
            .release(&r.project)
            .await
            .map_err(ask_status)?;
        Ok(Response::new(proto::ReleaseProjectResponse {
            project: r.project,
            eversion,
        }))
    }

    async fn get_project(
        &self,
        request: Request<proto::GetProjectRequest>,
    ) -> Result<Response<proto::ProjectLog>, Status> {
        let r = request.into_inner();
        check_project(&r.project)?;
        if r.eversion < 0 {
            return Err(invalid("eversion", "is negative"));
        }
        if r.eversion == 0 {
            let state = self
                .projector
                .state(&r.project)
                .await
                .map_err(ask_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("project {:?} has no events", r.project))
                })?;
            return within_limit(
                &format!("the state of project {:?}", r.project),
                domain::project_log(&state, &[]),
            );
        }
        let read = read::project_log(&self.store, &r.project, At::Eversion(r.eversion))
            .await
            .map_err(|e| match e {
                LoadError::Store(s) => store_status(s),
                LoadError::NoSuchEversion { .. } => Status::not_found(e.to_string()),
                LoadError::Fold { .. } => Status::failed_precondition(e.to_string()),
            })?;
        within_limit(
            &format!(
                "the state of project {:?} at eversion {}",
                r.project, r.eversion
            ),
            read.log,
        )
    }

    async fn get_project_log(
        &self,
        request: Request<proto::GetProjectLogRequest>,
    ) -> Result<Response<proto::ProjectLog>, Status> {
        let r = request.into_inner();
        require_project(&self.store, &r.project).await?;
        let events = read::read_all(&self.store, &log_stream(&r.project))
            .await
            .map_err(store_status)?;
        for event in &events {
            let log: proto::ProjectLog = decode(event)?;
            if log.eversion == r.eversion {
                return within_limit(
                    &format!(
                        "the ProjectLog of project {:?} at eversion {}",
                        r.project, r.eversion
                    ),
                    log,
                );
            }
        }
        Err(Status::not_found(format!(
            "project {:?} has no ProjectLog at eversion {}",
            r.project, r.eversion
        )))
    }

    async fn list_project_logs(
        &self,
        request: Request<proto::ListProjectLogsRequest>,
    ) -> Result<Response<proto::ListProjectLogsResponse>, Status> {
        let r = request.into_inner();
        require_project(&self.store, &r.project).await?;
        let size = page_size(r.page_size)?;
        let rpc = "ListProjectLogs";
        let from = page_start(&r.page_token, rpc, &r.project, 0)?;
        let page = read_page(&self.store, &log_stream(&r.project), from, size).await?;
        let fit = fitting(&page);
        let logs = page[..fit]
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match page.get(fit) {
            Some(first_left) => Some(first_left.revision),
            None if page.len() == size => page.last().map(|last| last.revision + 1),
            None => None,
        };
        let next_page_token =
            next.map_or(String::new(), |next| page_token(rpc, &r.project, 0, next));
        within_limit(
            "a page of ProjectLogs",
            proto::ListProjectLogsResponse {
                logs,
                next_page_token,
            },
        )
    }

    async fn list_actions(
        &self,
        request: Request<proto::ListActionsRequest>,
    ) -> Result<Response<proto::ListActionsResponse>, Status> {
        let r = request.into_inner();
        require_project(&self.store, &r.project).await?;
        let size = page_size(r.page_size)?;
        let rpc = "ListActions";
        let mut next = page_start(&r.page_token, rpc, &r.project, r.from_eversion)?;
        let stream = action_stream(&r.project);
        let mut actions = Vec::new();
        let mut bytes = 0;
        let mut exhausted = false;
        'pages: while actions.len() < size {
            let page = read_page(&self.store, &stream, next, MAX_PAGE_SIZE).await?;
            if page.is_empty() {
                exhausted = true;
                break;
            }
            for event in &page {
                let action: proto::Action = decode(event)?;
                if action.eversion >= r.from_eversion {
                    bytes += event.data.len();
                    if bytes > MAX_RESPONSE_BYTES / 2 && !actions.is_empty() {
                        break 'pages;
                    }
                    actions.push(action);
                }
                next = event.revision + 1;
                if actions.len() == size {
                    break 'pages;
                }
            }
        }
        let next_page_token = if exhausted {
            String::new()
        } else {
            page_token(rpc, &r.project, r.from_eversion, next)
        };
        within_limit(
            "a page of actions",
            proto::ListActionsResponse {
                actions,
                next_page_token,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64, bytes: usize) -> RecordedEvent {
        RecordedEvent {
            stream: "projectlog-p".into(),
            revision,
            position: revision + 1,
            id: uuid::Uuid::from_u128(u128::from(revision)),
            event_type: "ProjectLog".into(),
            data: vec![0; bytes],
            metadata: Vec::new(),
        }
    }

    #[test]
    fn a_list_page_ends_before_the_response_limit_but_holds_at_least_one() {
        let quarter = MAX_RESPONSE_BYTES / 4;
        let small: Vec<_> = (0..10).map(|r| event(r, 100)).collect();
        assert_eq!(fitting(&small), 10);
        let big: Vec<_> = (0..5).map(|r| event(r, quarter)).collect();
        assert_eq!(fitting(&big), 2);
        let huge = [event(0, MAX_RESPONSE_BYTES), event(1, 10)];
        assert_eq!(fitting(&huge), 1);
        assert_eq!(fitting(&[]), 0);
    }

    #[test]
    fn an_answer_over_the_response_limit_is_refused_clearly() {
        let small = proto::ProjectLog {
            config_hash: "h".into(),
            ..Default::default()
        };
        assert!(within_limit("small", small).is_ok());
        let huge = proto::ProjectLog {
            config_hash: "x".repeat(MAX_RESPONSE_BYTES + 1),
            ..Default::default()
        };
        let err = within_limit("the state of project \"p\"", huge).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("the state of project \"p\" is"));
        assert!(err.message().contains("read it from the store"));
    }
}
