//! The projector: keeps every project's state current from its stream, writes
//! the derived streams, and schedules the `Evaluated` markers.
//!
//! One task owns all in-memory project states. It consumes one catch-up
//! subscription over all `project-*` streams and folds every event through
//! the one fold ([`crate::fold`]). For a marker it writes the derived streams
//! (actions, `ProjectLog`, offload, snapshot) with deterministic ids, so a
//! re-write after a crash creates no duplicate. Progress is checkpointed in
//! the stream [`CHECKPOINT_STREAM`]; after a restart the projector resumes
//! there and reloads each project from its newest snapshot plus the tail.
//!
//! The scheduler lives in the same task: a project with new input events is
//! evaluated at the next whole second (at most once per [`BATCH_INTERVAL`],
//! the original's task interval), and at its `next_eval_time`. A marker is appended with the
//! expected revision the projector has folded through; a conflict means new
//! events arrived, and the project is simply evaluated again later. So two
//! service processes on one store never append two markers for one eversion.

pub mod derived;
mod supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::Timestamp;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::domain::{self, time::from_nanos, time::to_nanos};
use crate::fold::{self, FoldOutcome, PreparedMarker};
use crate::metrics::metrics;
use crate::proto::{self, input_event::Event};
use crate::read::{load, LoadError, Target};
use crate::store::{
    split_by_bytes, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom, RecordedEvent,
    StoreError, StreamFilter, StreamMetadata,
};

use crate::streams::{
    self, project_of_stream, project_stream, snapshot_stream, CHECKPOINT_STREAM,
    CHECKPOINT_STREAM_MAX_COUNT, PROJECT_CATEGORY, SNAPSHOT_INTERVAL_EVERSIONS,
    SNAPSHOT_STREAM_MAX_COUNT,
};
use derived::derived_writes;
pub use supervisor::{supervise, RestartPolicy, Status};

/// A project is evaluated at most once per this interval (the original's
/// `PMTaskInterval`).
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Added to "now" before rounding a dispatch up to the next whole second, as
/// the original's dispatcher does.
pub const DISPATCH_DRIFT: Duration = Duration::from_millis(100);

/// How often the checkpoint is written (when it moved).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait between retries of a failed store call.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// At shutdown, the projector stops folding when the subscription has
/// delivered nothing for this long.
pub const DRAIN_IDLE: Duration = Duration::from_millis(300);

/// At shutdown, the projector stops draining after this long whatever is
/// left (within the service's grace period).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(4);

/// Settings of the projector.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// At most this many project states stay in memory; idle ones are evicted.
    pub max_cached_projects: usize,
    /// Whether the projector appends markers (a read-only replica would not).
    pub schedule_markers: bool,
    /// How long a store call is retried (with backoff) before the projector
    /// fails and its supervisor restarts it.
    pub retry_deadline: Duration,
    /// How the supervisor restarts a failed projector.
    pub restart: RestartPolicy,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            max_cached_projects: 10_000,
            schedule_markers: true,
            retry_deadline: Duration::from_secs(30),
            restart: RestartPolicy::default(),
        }
    }
}

/// A question or command for the projector task.
#[derive(Debug)]
pub enum Request {
    /// The latest folded state of a project (`None` if it has no events).
    State {
        /// The project.
        project: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Option<proto::ProjectState>, AskError>>,
    },
    /// Append a marker now (or at `now`): replies with the marker's revision.
    Evaluate {
        /// The project.
        project: String,
        /// The marker's clock; `None`: the wall clock.
        now: Option<Timestamp>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<u64, AskError>>,
    },
    /// The projects found quarantined: (project, reason), sorted.
    Quarantined {
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Vec<(String, String)>, AskError>>,
    },
    /// Forgets a project's quarantine and re-loads it from its stream:
    /// replies with the eversion it folded to.
    Release {
        /// The project.
        project: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<i64, AskError>>,
    },
}

impl Request {
    /// Answers the request with `err` (the projector cannot serve it).
    pub fn refuse(self, err: AskError) {
        match self {
            Request::State { reply, .. } => drop(reply.send(Err(err))),
            Request::Evaluate { reply, .. } => drop(reply.send(Err(err))),
            Request::Quarantined { reply } => drop(reply.send(Err(err))),
            Request::Release { reply, .. } => drop(reply.send(Err(err))),
        }
    }
}

/// Why the projector could not answer a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The projector is not running (stopped, or being restarted).
    #[error("the projector is not running")]
    Stopped,
    /// The project's stream holds an event the fold rejects: every read of
    /// it reports this instead of a stale or blank state.
    #[error("project {project:?} is quarantined: {reason}")]
    Quarantined {
        /// The project.
        project: String,
        /// The stream, revision and reason.
        reason: String,
    },
    /// The store failed (may pass: retry).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request cannot be served as asked (no such project, a marker
    /// already under way).
    #[error("{0}")]
    Refused(String),
}

/// A handle to talk to a running projector.
#[derive(Debug, Clone)]
pub struct ProjectorHandle {
    requests: mpsc::Sender<Request>,
}

impl ProjectorHandle {
    /// The latest folded state of a project.
    pub async fn state(&self, project: &str) -> Result<Option<proto::ProjectState>, AskError> {
        let project = project.to_string();
        self.ask(|reply| Request::State { project, reply }).await
    }

    /// Appends a marker for the project now; returns its revision.
    pub async fn evaluate(&self, project: &str, now: Option<Timestamp>) -> Result<u64, AskError> {
        let project = project.to_string();
        self.ask(|reply| Request::Evaluate {
            project,
            now,
            reply,
        })
        .await
    }

    /// The projects this process found quarantined: (project, reason).
    pub async fn quarantined(&self) -> Result<Vec<(String, String)>, AskError> {
        self.ask(|reply| Request::Quarantined { reply }).await
    }

    /// Forgets a project's quarantine and re-loads it; returns its eversion.
    pub async fn release(&self, project: &str) -> Result<i64, AskError> {
        let project = project.to_string();
        self.ask(|reply| Request::Release { project, reply }).await
    }

    /// Sends a request and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, AskError>>) -> Request,
    ) -> Result<T, AskError> {
        fn stopped<E>(_: E) -> AskError {
            AskError::Stopped
        }
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(stopped)?;
        answer.await.map_err(stopped)?
    }
}

/// Creates the request channel of a projector.
pub fn channel() -> (ProjectorHandle, mpsc::Receiver<Request>) {
    let (requests, receiver) = mpsc::channel(1024);
    (ProjectorHandle { requests }, receiver)
}

/// The wall clock as a protobuf timestamp, truncated to microseconds (the
/// original's datastore precision); the shell's only clock read.
pub fn wall_clock() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_micros() * 1_000).unwrap_or(0),
    }
}

/// When the original would run a task asked for at `eta` (now if unset):
/// never before `now + 100 ms`, rounded down to the second, plus one second.
pub fn dispatch_eta(now: &Timestamp, eta: Option<&Timestamp>) -> Timestamp {
    let earliest = to_nanos(now) + DISPATCH_DRIFT.as_nanos() as i128;
    let eta = eta.map_or(earliest, to_nanos).max(earliest);
    let second = 1_000_000_000;
    from_nanos(eta.div_euclid(second) * second + second)
}

/// The marker that evaluates `state` at `now` (never before the state's last
/// update: the clock of a stream does not go backwards), and the expected
/// revision to append it with: the last revision the state has folded.
pub fn prepare_marker(
    state: &proto::ProjectState,
    now: Timestamp,
) -> (ExpectedRevision, proto::Evaluated) {
    let (expected, prepared) = prepare_marker_ahead(state, now, &mut fold::Digester::default());
    (expected, prepared.marker)
}

/// [`prepare_marker`], keeping the invocation it ran: the projector adopts it
/// when the marker comes back through the subscription
/// ([`fold::apply_recorded_prepared`]), so each marker it appends is
/// evaluated once.
pub fn prepare_marker_ahead(
    state: &proto::ProjectState,
    now: Timestamp,
    digester: &mut fold::Digester,
) -> (ExpectedRevision, PreparedMarker) {
    let now = match &state.update_time {
        Some(last) if to_nanos(last) > to_nanos(&now) => *last,
        _ => now,
    };
    let prepared = fold::prepare_marker(state, now, digester);
    let expected = match prepared.revision.checked_sub(1) {
        Some(last) => ExpectedRevision::Exact(last),
        None => ExpectedRevision::NoStream,
    };
    (expected, prepared)
}

/// One project's in-memory state and scheduling.
#[derive(Debug)]
struct Entry {
    state: proto::ProjectState,
    /// Digests `state` at each marker, hashing only the entities that changed.
    digester: fold::Digester,
    /// When a marker is due (wall clock).
    due: Option<Timestamp>,
    /// A marker append is under way.
    marker_in_flight: bool,
    /// The invocation of the last marker this process appended (or tried
    /// to), prepared from `state`; taken by the next event folded.
    prepared: Option<PreparedMarker>,
    /// The fold rejected an event; the project is not folded further.
    broken: Option<String>,
    /// Whether the snapshot stream's max count was set by this process.
    snapshot_metadata_set: bool,
    /// Last time the entry was used (an ordinal, for eviction).
    last_used: u64,
}

/// The outcome of a marker append task.
struct MarkerResult {
    project: String,
    result: Result<u64, StoreError>,
    reply: Option<oneshot::Sender<Result<u64, AskError>>>,
}

/// The projector task's data.
struct Projector<S> {
    store: S,
    /// Turns true when the projector must stop (ends retries early).
    stop: watch::Receiver<bool>,
    config: ProjectorConfig,
    projects: BTreeMap<String, Entry>,
    /// Projects by due time, for the scheduler.
    schedule: BTreeSet<(i128, String)>,
    markers: JoinSet<MarkerResult>,
    /// Position of the last event fully processed (derived streams written).
    processed_position: u64,
    checkpointed_position: u64,
    checkpointed_due: Vec<(String, i128)>,
    clock: u64,
    /// How the markers folded so far were folded.
    stats: MarkerStats,
}

/// How many markers the projector evaluated, and how many of its own it
/// adopted as prepared (each marker is evaluated once per process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MarkerStats {
    /// Markers whose prepared invocation was adopted.
    adopted: u64,
    /// Markers evaluated by the fold (another process's, or not prepared).
    evaluated: u64,
}

/// Runs the projector until `shutdown` turns true, then finishes in-flight
/// marker appends, folds what they produced, writes the checkpoint and
/// returns `Ok`. An error it cannot retry past (the store down longer than
/// [`ProjectorConfig::retry_deadline`], a corrupt checkpoint) ends it with
/// `Err`; [`supervise`] restarts it.
async fn run<S: EventStore>(
    store: S,
    config: ProjectorConfig,
    requests: &mut mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<bool>,
    status: &watch::Sender<Status>,
) -> Result<(), StoreError> {
    let checkpoint = read_checkpoint(&store).await?;
    let start = checkpoint.position;
    store
        .set_stream_metadata(
            CHECKPOINT_STREAM,
            StreamMetadata {
                max_count: Some(CHECKPOINT_STREAM_MAX_COUNT),
                truncate_before: None,
            },
        )
        .await?;
    tracing::info!(from_position = start + 1, "projector starting");
    let mut projector = Projector::new(store.clone(), config, shutdown.clone(), checkpoint);
    let mut subscription = store.subscribe_all(start + 1, StreamFilter::prefix(PROJECT_CATEGORY));
    let mut checkpoint_tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status.send_replace(Status::Running);
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<std::time::Instant> = None;
    let mut caught_up_at = std::time::Instant::now();
    loop {
        let sleep = projector.time_to_next_due();
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some(done) = projector.markers.join_next(), if !projector.markers.is_empty() => {
                projector.marker_done(done);
            }
            event = subscription.next() => match event {
                Some(Ok(event)) => {
                    projector.handle_event(&event).await?;
                    backoff = Duration::from_millis(100);
                    failing_since = None;
                }
                Some(Err(err)) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if !err.is_transient() || since.elapsed() >= projector.config.retry_deadline {
                        return Err(err);
                    }
                    tracing::warn!(error = %err, "subscription failed; resubscribing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
                    subscription = store.subscribe_all(
                        projector.processed_position + 1,
                        StreamFilter::prefix(PROJECT_CATEGORY),
                    );
                }
                None => {
                    tracing::info!("store closed; projector stopping");
                    break;
                }
            },
            Some(request) = requests.recv() => projector.handle_request(request).await,
            _ = tokio::time::sleep(sleep) => projector.fire_due().await,
            _ = checkpoint_tick.tick() => {
                projector.write_checkpoint().await;
                projector.report_gauges(&subscription, &mut caught_up_at);
            }
        }
    }
    projector.drain(&mut subscription).await;
    Ok(())
}

/// What the checkpoint stream records: how far the projector got, and
/// which projects were due for a marker then (so that a restart still
/// evaluates them, including a `next_eval_time` far in the future).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    /// Global position of the last event fully processed.
    position: u64,
    /// Due projects: (project, due time in unix nanoseconds).
    #[serde(default)]
    due: Vec<(String, i128)>,
}

async fn read_checkpoint<S: EventStore>(store: &S) -> Result<Checkpoint, StoreError> {
    let last = store
        .read_stream(CHECKPOINT_STREAM, ReadFrom::End, Direction::Backwards, 1)
        .await?;
    let Some(event) = last.first() else {
        return Ok(Checkpoint::default());
    };
    serde_json::from_slice(&event.data).map_err(|e| {
        StoreError::Corrupt(format!(
            "{CHECKPOINT_STREAM} revision {}: {e}",
            event.revision
        ))
    })
}

/// Loads a project's state at `target`, once: `Ok(Err(reason))` if the fold
/// rejects its stream or panics on it.
async fn load_once<S: EventStore>(
    store: &S,
    project: &str,
    target: Target,
) -> Result<Result<proto::ProjectState, String>, StoreError> {
    match AssertUnwindSafe(load(store, project, target))
        .catch_unwind()
        .await
    {
        Ok(Ok(loaded)) => Ok(Ok(loaded.state)),
        Ok(Err(LoadError::Store(err))) => Err(err),
        Ok(Err(LoadError::Fold { source, .. })) => Ok(Err(source.to_string())),
        Ok(Err(err)) => Ok(Err(err.to_string())),
        Err(panic) => Ok(Err(format!(
            "the fold panicked: {}",
            domain::panic_message(panic.as_ref())
        ))),
    }
}

/// Calls `op` until it succeeds, fails with an error that is not transient,
/// `deadline` has passed, or `stop` turns true; waits with a doubling backoff
/// between calls. Returns the last error if it gives up.
async fn retry<T, F, Fut>(
    what: &str,
    deadline: Duration,
    stop: &watch::Receiver<bool>,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = std::time::Instant::now();
    let mut stop = stop.clone();
    let mut backoff = Duration::from_millis(50);
    loop {
        let err = match op().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                metrics().store_error(err.kind());
                if !err.is_transient() {
                    return Err(err);
                }
                err
            }
        };
        if started.elapsed() + backoff > deadline || *stop.borrow() {
            tracing::error!(what, error = %err, "giving up after retries");
            return Err(err);
        }
        tracing::warn!(what, error = %err, retry_in = ?backoff, "store call failed; retrying");
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        tokio::select! {
            () = &mut pause => {}
            Ok(()) = stop.changed() => {
                if *stop.borrow() {
                    return Err(err);
                }
                pause.await;
            }
        }
        backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
    }
}

impl<S: EventStore> Projector<S> {
    /// A projector resuming from `checkpoint`: the projects that were due
    /// then are evaluated again, their states loaded when their time comes.
    fn new(
        store: S,
        config: ProjectorConfig,
        stop: watch::Receiver<bool>,
        checkpoint: Checkpoint,
    ) -> Self {
        let schedule = checkpoint
            .due
            .iter()
            .map(|(project, due)| (*due, project.clone()))
            .collect();
        Self {
            store,
            stop,
            config,
            projects: BTreeMap::new(),
            schedule,
            markers: JoinSet::new(),
            processed_position: checkpoint.position,
            checkpointed_position: checkpoint.position,
            checkpointed_due: checkpoint.due,
            clock: 0,
            stats: MarkerStats::default(),
        }
    }

    fn time_to_next_due(&self) -> Duration {
        let Some((due, _)) = self.schedule.first() else {
            return Duration::from_secs(3600);
        };
        let wait = due - to_nanos(&wall_clock());
        Duration::from_nanos(u64::try_from(wait.max(0)).unwrap_or(u64::MAX))
    }

    /// Makes sure the project's state has folded exactly the revisions before
    /// `revision`; `Ok(false)` if `revision` was already folded (a
    /// re-delivery after a restart) or the project is quarantined. A store
    /// failure is retried up to the retry deadline, then returned.
    async fn prepare(&mut self, project: &str, revision: u64) -> Result<bool, StoreError> {
        self.clock += 1;
        if let Some(entry) = self.projects.get_mut(project) {
            entry.last_used = self.clock;
            if entry.broken.is_some() {
                return Ok(false);
            }
            let next = fold::next_revision(&entry.state);
            if next == revision {
                return Ok(true);
            }
            if next > revision {
                return Ok(false);
            }
        }
        let target = match revision.checked_sub(1) {
            Some(r) => Target::Revision(r),
            None => {
                self.insert(project, domain::new_project(project));
                return Ok(true);
            }
        };
        let loaded = self.load_guarded(project, target).await?;
        Ok(loaded.is_some_and(|next| next == revision))
    }

    /// Loads a project's state at `target` and keeps it: `Some(next
    /// revision)`, or `None` if its stream is rejected (the project is then
    /// quarantined, also when the fold panics). A store failure is retried up
    /// to the retry deadline, then returned.
    async fn load_guarded(
        &mut self,
        project: &str,
        target: Target,
    ) -> Result<Option<u64>, StoreError> {
        let store = &self.store;
        let loaded = retry(
            "load a project",
            self.config.retry_deadline,
            &self.stop,
            || load_once(store, project, target),
        )
        .await?;
        match loaded {
            Ok(state) => {
                let next = fold::next_revision(&state);
                self.insert(project, state);
                Ok(Some(next))
            }
            Err(reason) => {
                self.quarantine(project, domain::new_project(project), &reason);
                Ok(None)
            }
        }
    }

    /// Marks a project quarantined: its stream holds an event the fold
    /// rejects. It is not folded further, and every read reports why.
    fn quarantine(&mut self, project: &str, state: proto::ProjectState, reason: &str) {
        tracing::error!(project, reason, "QUARANTINED: the fold rejects the project's stream; reads report it until it is fixed and the service restarted");
        let mut entry = Entry::new(state, self.clock);
        entry.broken = Some(format!("{}: {reason}", project_stream(project)));
        self.projects.insert(project.to_string(), entry);
    }

    /// Updates the gauges: projects in memory and quarantined, and the lag
    /// (0 when the subscription has nothing waiting; otherwise the events
    /// between the last one processed and the store's head, an upper bound
    /// since it counts derived events too, and the time since it last was 0).
    fn report_gauges(
        &self,
        subscription: &crate::store::Subscription,
        caught_up_at: &mut std::time::Instant,
    ) {
        let quarantined = self
            .projects
            .values()
            .filter(|e| e.broken.is_some())
            .count();
        let m = metrics();
        m.projects_quarantined.set(quarantined as i64);
        m.projects_in_memory
            .set((self.projects.len() - quarantined) as i64);
        if subscription.backlog() == 0 {
            *caught_up_at = std::time::Instant::now();
            m.lag_events.set(0);
        } else if let Some(head) = self.store.head_position() {
            let behind = head.saturating_sub(self.processed_position);
            m.lag_events.set(i64::try_from(behind).unwrap_or(i64::MAX));
        }
        m.lag_seconds.set(caught_up_at.elapsed().as_secs_f64());
    }

    /// The error a read of a quarantined project gets.
    fn quarantined_error(&self, project: &str) -> AskError {
        AskError::Quarantined {
            project: project.to_string(),
            reason: self
                .projects
                .get(project)
                .and_then(|e| e.broken.clone())
                .unwrap_or_default(),
        }
    }

    fn insert(&mut self, project: &str, state: proto::ProjectState) {
        self.evict_if_full();
        let mut entry = Entry::new(state, self.clock);
        // A project scheduled before it was loaded (from the checkpoint).
        entry.due = self
            .schedule
            .iter()
            .find(|(_, p)| p == project)
            .map(|(at, _)| from_nanos(*at));
        self.projects.insert(project.to_string(), entry);
    }

    /// Evicts the least recently used idle project when the cache is full.
    fn evict_if_full(&mut self) {
        if self.projects.len() < self.config.max_cached_projects.max(1) {
            return;
        }
        let victim = self
            .projects
            .iter()
            .filter(|(_, e)| e.due.is_none() && !e.marker_in_flight)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(p, _)| p.clone());
        if let Some(project) = victim {
            tracing::debug!(project, "evicting idle project state");
            self.projects.remove(&project);
        }
    }

    /// Folds one event of the subscription. A fold error or panic
    /// quarantines the event's project; a store failure past the retry
    /// deadline is returned, and the event is not counted as processed.
    async fn handle_event(&mut self, event: &RecordedEvent) -> Result<(), StoreError> {
        let Some(project) = project_of_stream(&event.stream).map(str::to_string) else {
            self.processed_position = event.position;
            return Ok(());
        };
        if self.prepare(&project, event.revision).await? {
            let Some(entry) = self.projects.get_mut(&project) else {
                unreachable!("prepare keeps the project's entry");
            };
            // Whatever the event, the preparation was made from the state
            // before it: it is used for this event or never.
            let prepared = entry.prepared.take();
            let started = std::time::Instant::now();
            let folded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                fold::apply_recorded_prepared(
                    &mut entry.state,
                    event,
                    prepared,
                    &mut entry.digester,
                )
            }));
            metrics().events_folded.inc();
            match folded {
                Ok(Ok(None)) => {
                    if self.config.schedule_markers {
                        self.schedule_batch(&project);
                    }
                }
                Ok(Ok(Some(outcome))) => {
                    metrics().marker(outcome.adopted);
                    if outcome.adopted {
                        self.stats.adopted += 1;
                    } else {
                        self.stats.evaluated += 1;
                        metrics()
                            .evaluation_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    self.after_marker(&project, event, outcome).await?;
                }
                Ok(Err(err)) => {
                    let state = std::mem::take(&mut entry.state);
                    self.quarantine(&project, state, &err.to_string());
                }
                Err(panic) => {
                    let reason = format!(
                        "the fold panicked at revision {}: {}",
                        event.revision,
                        domain::panic_message(panic.as_ref())
                    );
                    self.quarantine(&project, domain::new_project(&project), &reason);
                }
            }
        }
        self.processed_position = event.position;
        Ok(())
    }

    /// Schedules a marker for new input events at the next whole second, as
    /// the original's deduplicated task dispatch does: at most one marker per
    /// wall-clock second.
    fn schedule_batch(&mut self, project: &str) {
        let due = dispatch_eta(&wall_clock(), None);
        self.set_due(project, due);
    }

    /// Sets a project's due time, keeping the earlier one if already due.
    fn set_due(&mut self, project: &str, due: Timestamp) {
        let entry = self.projects.get_mut(project).expect("known project");
        if let Some(existing) = &entry.due {
            if to_nanos(existing) <= to_nanos(&due) {
                return;
            }
            self.schedule
                .remove(&(to_nanos(existing), project.to_string()));
        }
        self.schedule.insert((to_nanos(&due), project.to_string()));
        entry.due = Some(due);
    }

    /// Loads a project's latest state if it is not in memory; false if it
    /// has no events or cannot be folded.
    async fn ensure_latest(&mut self, project: &str) -> Result<bool, StoreError> {
        if self.projects.contains_key(project) {
            return Ok(true);
        }
        match self.store.stream_revision(&project_stream(project)).await? {
            Some(head) => self.prepare(project, head + 1).await,
            None => Ok(false),
        }
    }

    /// Writes a marker's derived streams and schedules the next marker. A
    /// write the store keeps failing is returned (the projector restarts and
    /// writes it again, with the same ids); one the store refuses for good
    /// quarantines the project.
    async fn after_marker(
        &mut self,
        project: &str,
        event: &RecordedEvent,
        outcome: FoldOutcome,
    ) -> Result<(), StoreError> {
        let Some(entry) = self.projects.get_mut(project) else {
            unreachable!("the marker was folded into the project's entry");
        };
        if let Some(divergence) = &outcome.divergence {
            tracing::error!(
                project,
                revision = event.revision,
                recorded_eversion = divergence.recorded_eversion,
                computed_eversion = divergence.computed_eversion,
                "DIVERGENCE: the marker's digest disagrees with the recomputed state; keeping the recomputed state"
            );
        }
        for line in &outcome.evaluation.trace {
            tracing::warn!(project, eversion = outcome.evaluation.eversion, "{line}");
        }
        let eversion = outcome.evaluation.eversion;
        let snapshot =
            (eversion % SNAPSHOT_INTERVAL_EVERSIONS == 0).then(|| proto::ProjectSnapshot {
                eversion,
                source_revision: event.revision,
                state_digest: outcome.marker.state_digest.clone(),
                state: Some(entry.state.clone()),
            });
        let next_eval_time = entry.state.pstate.as_ref().and_then(|p| p.next_eval_time);
        let needs_snapshot_metadata = snapshot.is_some() && !entry.snapshot_metadata_set;
        if needs_snapshot_metadata {
            entry.snapshot_metadata_set = true;
        }
        if needs_snapshot_metadata {
            let result = self
                .store
                .set_stream_metadata(
                    &snapshot_stream(project),
                    StreamMetadata {
                        max_count: Some(SNAPSHOT_STREAM_MAX_COUNT),
                        truncate_before: None,
                    },
                )
                .await;
            if let Err(err) = result {
                tracing::warn!(project, error = %err, "cannot set the snapshot stream's max count");
            }
        }
        // A store with an append size limit (EventStoreDB) takes a large
        // batch (many actions) in several appends; their ids are fixed, so a
        // re-write after a crash splits the same way and is recognised.
        let max_append_bytes = self.store.max_append_bytes();
        let appends = derived_writes(project, &outcome.evaluation, snapshot.as_ref(), event.id)
            .into_iter()
            .flat_map(|(stream, events)| {
                split_by_bytes(events, max_append_bytes)
                    .into_iter()
                    .map(move |events| (stream.clone(), events))
            });
        for (stream, events) in appends {
            let written = retry(
                "write a derived stream",
                self.config.retry_deadline,
                &self.stop,
                || {
                    self.store
                        .append(&stream, ExpectedRevision::Any, events.clone())
                },
            )
            .await;
            let is_snapshot = stream == snapshot_stream(project);
            match written {
                Ok(_) => {
                    if is_snapshot {
                        metrics().snapshot_writes.inc();
                    }
                }
                Err(err) if err.is_transient() => return Err(err),
                Err(err) if is_snapshot => {
                    // A snapshot only saves folding time (a load falls back
                    // to an older one or to the whole stream): a store that
                    // refuses it (too large for EventStoreDB's append limit)
                    // costs speed, not the project.
                    tracing::error!(project, stream, error = %err, "snapshot not written; loads will fold from an older one");
                }
                Err(err) => {
                    let state = self
                        .projects
                        .remove(project)
                        .map(|e| e.state)
                        .unwrap_or_else(|| domain::new_project(project));
                    self.quarantine(
                        project,
                        state,
                        &format!("the store refused its derived stream {stream}: {err}"),
                    );
                    return Ok(());
                }
            }
        }
        if self.config.schedule_markers {
            if let Some(next) = next_eval_time {
                let due = dispatch_eta(&wall_clock(), Some(&next));
                self.set_due(project, due);
            }
        }
        Ok(())
    }

    /// Appends markers for every project whose time has come.
    async fn fire_due(&mut self) {
        let now = to_nanos(&wall_clock());
        while let Some((due, project)) = self.schedule.first().cloned() {
            if due > now {
                break;
            }
            self.schedule.pop_first();
            if let Some(entry) = self.projects.get_mut(&project) {
                entry.due = None;
            }
            match self.ensure_latest(&project).await {
                Ok(true) => self.start_marker(&project, None, None),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(project, error = %err, "cannot load a due project; retrying later");
                    self.schedule
                        .insert((now + BATCH_INTERVAL.as_nanos() as i128, project));
                    break;
                }
            }
        }
    }

    /// Computes and appends a marker for the project's current state.
    fn start_marker(
        &mut self,
        project: &str,
        now: Option<Timestamp>,
        reply: Option<oneshot::Sender<Result<u64, AskError>>>,
    ) {
        let Some(entry) = self.projects.get_mut(project) else {
            if let Some(reply) = reply {
                let _ = reply.send(Err(AskError::Refused(format!(
                    "project {project:?} has no events"
                ))));
            }
            return;
        };
        if let Some(reason) = &entry.broken {
            if let Some(reply) = reply {
                let _ = reply.send(Err(AskError::Quarantined {
                    project: project.to_string(),
                    reason: reason.clone(),
                }));
            }
            return;
        }
        if entry.marker_in_flight {
            // The marker under way covers this request; evaluate again after it.
            if let Some(reply) = reply {
                let _ = reply.send(Err(AskError::Refused(format!(
                    "a marker for project {project:?} is already being appended; retry"
                ))));
            }
            return;
        }
        let now = now.unwrap_or_else(wall_clock);
        let started = std::time::Instant::now();
        let ahead = std::panic::catch_unwind(AssertUnwindSafe(|| {
            prepare_marker_ahead(&entry.state, now, &mut entry.digester)
        }));
        metrics()
            .evaluation_seconds
            .observe(started.elapsed().as_secs_f64());
        let (expected, prepared) = match ahead {
            Ok(ahead) => ahead,
            Err(panic) => {
                let reason = format!(
                    "the evaluation panicked: {}",
                    domain::panic_message(panic.as_ref())
                );
                let state = std::mem::take(&mut entry.state);
                self.quarantine(project, state, &reason);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(self.quarantined_error(project)));
                }
                return;
            }
        };
        let id = Uuid::new_v4();
        let event =
            streams::input_event(&Event::Evaluated(prepared.marker.clone()), id, "scheduler");
        entry.marker_in_flight = true;
        entry.prepared = Some(prepared);
        let store = self.store.clone();
        let project = project.to_string();
        self.markers.spawn(async move {
            let result = store
                .append(&project_stream(&project), expected, vec![event])
                .await
                .map(|r| r.next_revision);
            MarkerResult {
                project,
                result,
                reply,
            }
        });
    }

    fn marker_done(&mut self, done: Result<MarkerResult, tokio::task::JoinError>) {
        let done = match done {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(error = %err, "a marker append task failed");
                return;
            }
        };
        if let Some(entry) = self.projects.get_mut(&done.project) {
            entry.marker_in_flight = false;
        }
        match &done.result {
            Ok(revision) => {
                tracing::debug!(project = done.project, revision, "marker appended");
            }
            Err(StoreError::WrongExpectedVersion { .. }) => {
                // New events arrived (or another process evaluated): the
                // subscription brings them, and the project is evaluated again.
                if self.config.schedule_markers && self.projects.contains_key(&done.project) {
                    self.schedule_batch(&done.project);
                }
            }
            Err(err) => {
                tracing::warn!(project = done.project, error = %err, "marker append failed; retrying later");
                if self.config.schedule_markers && self.projects.contains_key(&done.project) {
                    self.schedule_batch(&done.project);
                }
            }
        }
        if let Some(reply) = done.reply {
            let _ = reply.send(done.result.map_err(|e| match e {
                StoreError::WrongExpectedVersion { .. } => AskError::Refused(format!(
                    "new events arrived while the marker was appended; retry: {e}"
                )),
                other => AskError::Unavailable(other.to_string()),
            }));
        }
    }

    async fn handle_request(&mut self, request: Request) {
        match request {
            Request::State { project, reply } => {
                let answer = match self.projects.get(&project) {
                    Some(Entry {
                        broken: Some(reason),
                        ..
                    }) => Err(AskError::Quarantined {
                        project: project.clone(),
                        reason: reason.clone(),
                    }),
                    Some(entry) => Ok(Some(entry.state.clone())),
                    // Not kept: the subscription may not have reached the
                    // stream's end, and must still fold what it has not.
                    None => match load_once(&self.store, &project, Target::Latest).await {
                        Ok(Ok(state)) if fold::next_revision(&state) == 0 => Ok(None),
                        Ok(Ok(state)) => Ok(Some(state)),
                        Ok(Err(reason)) => {
                            self.quarantine(&project, domain::new_project(&project), &reason);
                            Err(self.quarantined_error(&project))
                        }
                        Err(err) => Err(AskError::Unavailable(err.to_string())),
                    },
                };
                let _ = reply.send(answer);
            }
            Request::Quarantined { reply } => {
                let list = self
                    .projects
                    .iter()
                    .filter_map(|(project, e)| Some((project.clone(), e.broken.clone()?)))
                    .collect();
                let _ = reply.send(Ok(list));
            }
            Request::Release { project, reply } => {
                if self
                    .projects
                    .get(&project)
                    .is_some_and(|e| e.broken.is_some())
                {
                    tracing::info!(project, "releasing a quarantined project: re-loading it");
                    self.projects.remove(&project);
                }
                let answer = match self.ensure_latest(&project).await {
                    Err(err) => Err(AskError::Unavailable(err.to_string())),
                    Ok(false) if self.projects.contains_key(&project) => {
                        Err(self.quarantined_error(&project))
                    }
                    Ok(false) => Ok(0),
                    Ok(true) => {
                        if self.config.schedule_markers {
                            // Events that arrived while it was quarantined
                            // were never evaluated.
                            self.schedule_batch(&project);
                        }
                        Ok(self.projects[&project].state.eversion)
                    }
                };
                let _ = reply.send(answer);
            }
            Request::Evaluate {
                project,
                now,
                reply,
            } => {
                if let Err(err) = self.ensure_latest(&project).await {
                    let _ = reply.send(Err(AskError::Unavailable(err.to_string())));
                    return;
                }
                self.start_marker(&project, now, Some(reply));
            }
        }
    }

    async fn write_checkpoint(&mut self) {
        let due: Vec<(String, i128)> = self
            .schedule
            .iter()
            .map(|(at, project)| (project.clone(), *at))
            .collect();
        if self.processed_position == self.checkpointed_position && due == self.checkpointed_due {
            return;
        }
        let checkpoint = Checkpoint {
            position: self.processed_position,
            due,
        };
        let data = serde_json::to_vec(&checkpoint).expect("checkpoint JSON");
        let event = NewEvent {
            id: Uuid::new_v4(),
            event_type: "Checkpoint".into(),
            data,
            metadata: streams::metadata(Uuid::nil(), streams::DERIVED_PRODUCER, None),
        };
        match self
            .store
            .append(CHECKPOINT_STREAM, ExpectedRevision::Any, vec![event])
            .await
        {
            Ok(_) => {
                self.checkpointed_position = checkpoint.position;
                self.checkpointed_due = checkpoint.due;
            }
            Err(err) => tracing::warn!(error = %err, "cannot write the projector checkpoint"),
        }
    }

    /// Finishes in-flight marker appends and folds the events the
    /// subscription delivers until it has been idle for [`DRAIN_IDLE`] (or
    /// [`DRAIN_LIMIT`] has passed), then writes the checkpoint. What is not
    /// folded here is folded after the next start, from the checkpoint.
    async fn drain(&mut self, subscription: &mut crate::store::Subscription) {
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        loop {
            match tokio::time::timeout_at(deadline, self.markers.join_next()).await {
                Ok(Some(done)) => self.marker_done(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        "marker appends still under way at the drain limit; abandoning them"
                    );
                    self.markers.abort_all();
                    break;
                }
            }
        }
        loop {
            let idle = (tokio::time::Instant::now() + DRAIN_IDLE).min(deadline);
            match tokio::time::timeout_at(idle, subscription.next()).await {
                Ok(Some(Ok(event))) => {
                    if let Err(err) = self.handle_event(&event).await {
                        tracing::warn!(error = %err, "cannot fold the rest now; it is folded after the next start");
                        break;
                    }
                }
                _ => break,
            }
        }
        self.write_checkpoint().await;
        tracing::info!(
            position = self.processed_position,
            markers_adopted = self.stats.adopted,
            markers_evaluated = self.stats.evaluated,
            "projector stopped"
        );
    }
}

impl Entry {
    fn new(state: proto::ProjectState, clock: u64) -> Self {
        Self {
            state,
            due: None,
            marker_in_flight: false,
            prepared: None,
            digester: fold::Digester::default(),
            broken: None,
            snapshot_metadata_set: false,
            last_used: clock,
        }
    }
}

#[cfg(test)]
mod tests {
    //! One evaluation per marker: the projector adopts the invocation it
    //! prepared for its own marker, and folds any other marker normally.

    use super::*;
    use crate::notifier::Notifier;
    use crate::store::memory::MemoryStore;
    use crate::testing::ConfigBuilder;

    const PROJECT: &str = "p";

    fn ts(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    /// A projector task's data, driven by hand (no scheduler).
    fn projector(store: &MemoryStore) -> Projector<MemoryStore> {
        let config = ProjectorConfig {
            schedule_markers: false,
            ..ProjectorConfig::default()
        };
        let (_, stop) = watch::channel(false);
        Projector::new(store.clone(), config, stop, Checkpoint::default())
    }

    async fn notifier_with_config(store: &MemoryStore) -> Notifier<MemoryStore> {
        let notifier = Notifier::new(store.clone(), "test");
        let config = ConfigBuilder::new("h1", 1).group("main", |g| g).build();
        notifier.update_config(PROJECT, config).await.unwrap();
        notifier
    }

    /// Folds what the store holds beyond the projector's position, as its
    /// subscription would.
    async fn catch_up(p: &mut Projector<MemoryStore>) {
        let events = p
            .store
            .read_all(
                p.processed_position + 1,
                usize::MAX,
                &StreamFilter::prefix(PROJECT_CATEGORY),
            )
            .await
            .unwrap();
        for event in &events {
            p.handle_event(event).await.unwrap();
        }
    }

    /// Prepares and appends a marker as the scheduler does; waits for the append.
    async fn append_marker(
        p: &mut Projector<MemoryStore>,
        now: Timestamp,
    ) -> Result<u64, AskError> {
        let (reply, answer) = oneshot::channel();
        p.start_marker(PROJECT, Some(now), Some(reply));
        let done = p.markers.join_next().await.expect("a marker task");
        p.marker_done(done);
        answer.await.unwrap()
    }

    /// The state folded from the stream by the read side (every marker's
    /// digest checked).
    async fn folded(store: &MemoryStore) -> proto::ProjectState {
        let loaded = load(store, PROJECT, Target::Latest).await.unwrap();
        assert!(loaded
            .last_outcome
            .as_ref()
            .is_some_and(|o| o.divergence.is_none() && !o.adopted));
        loaded.state
    }

    /// Sends a request to the projector by hand and returns its answer.
    async fn ask<T>(
        p: &mut Projector<MemoryStore>,
        request: impl FnOnce(oneshot::Sender<Result<T, AskError>>) -> Request,
    ) -> Result<T, AskError> {
        let (reply, answer) = oneshot::channel();
        p.handle_request(request(reply)).await;
        answer.await.unwrap()
    }

    #[tokio::test]
    async fn a_quarantined_project_is_listed_and_a_release_reloads_it() {
        let store = MemoryStore::new();
        let notifier = notifier_with_config(&store).await;
        let mut p = projector(&store);
        catch_up(&mut p).await;
        append_marker(&mut p, ts(1_700_000_000)).await.unwrap();
        catch_up(&mut p).await;
        p.quarantine(PROJECT, proto::ProjectState::default(), "a test");
        // Not folded while quarantined, and reads say why.
        notifier.poke(PROJECT).await.unwrap();
        catch_up(&mut p).await;
        let state = |reply| Request::State {
            project: PROJECT.into(),
            reply,
        };
        let err = ask(&mut p, state).await.unwrap_err();
        assert_eq!(
            err,
            AskError::Quarantined {
                project: PROJECT.into(),
                reason: "project-p: a test".into()
            }
        );
        let listed = ask(&mut p, |reply| Request::Quarantined { reply }).await;
        assert_eq!(
            listed,
            Ok(vec![(PROJECT.to_string(), "project-p: a test".to_string())])
        );

        let release = |reply| Request::Release {
            project: PROJECT.into(),
            reply,
        };
        assert_eq!(ask(&mut p, release).await, Ok(1));
        let listed = ask(&mut p, |reply| Request::Quarantined { reply }).await;
        assert_eq!(listed, Ok(vec![]));
        let state = ask(&mut p, state).await.unwrap().unwrap();
        // The poke that arrived meanwhile is in the re-loaded state.
        assert_eq!(fold::next_revision(&state), 3);
        assert_eq!(state, folded(&store).await);
    }

    #[tokio::test]
    async fn the_projector_evaluates_its_own_marker_once() {
        let store = MemoryStore::new();
        let notifier = notifier_with_config(&store).await;
        let mut p = projector(&store);
        catch_up(&mut p).await;

        append_marker(&mut p, ts(1_700_000_000)).await.unwrap();
        assert!(p.projects[PROJECT].prepared.is_some());
        catch_up(&mut p).await;
        assert_eq!(
            p.stats,
            MarkerStats {
                adopted: 1,
                evaluated: 0
            }
        );
        assert!(p.projects[PROJECT].prepared.is_none());
        assert_eq!(p.projects[PROJECT].state, folded(&store).await);

        notifier.poke(PROJECT).await.unwrap();
        catch_up(&mut p).await;
        append_marker(&mut p, ts(1_700_000_001)).await.unwrap();
        catch_up(&mut p).await;
        assert_eq!(
            p.stats,
            MarkerStats {
                adopted: 2,
                evaluated: 0
            }
        );
        let state = &p.projects[PROJECT].state;
        assert_eq!(state.eversion, 2);
        assert_eq!(*state, folded(&store).await);
    }

    #[tokio::test]
    async fn a_marker_appended_by_someone_else_is_folded_normally() {
        let store = MemoryStore::new();
        let notifier = notifier_with_config(&store).await;
        let mut p = projector(&store);
        catch_up(&mut p).await;

        // Another process appends its marker (another `now`) at the revision
        // this projector prepares its own for: this one's append conflicts,
        // and its preparation must not be adopted for the other marker.
        let before = p.projects[PROJECT].state.clone();
        let (expected, marker) = prepare_marker(&before, ts(1_700_000_100));
        let other = streams::input_event(&Event::Evaluated(marker), Uuid::new_v4(), "other");
        store
            .append(&project_stream(PROJECT), expected, vec![other])
            .await
            .unwrap();
        append_marker(&mut p, ts(1_700_000_000)).await.unwrap_err();
        assert!(p.projects[PROJECT].prepared.is_some());
        catch_up(&mut p).await;
        assert_eq!(
            p.stats,
            MarkerStats {
                adopted: 0,
                evaluated: 1
            }
        );
        assert!(p.projects[PROJECT].prepared.is_none());
        let state = p.projects[PROJECT].state.clone();
        assert_eq!(state.update_time, Some(ts(1_700_000_100)));
        assert_eq!(state, folded(&store).await);

        // An input event lands before this projector's marker: the marker
        // conflicts, the event is folded and the preparation dropped.
        notifier.poke(PROJECT).await.unwrap();
        append_marker(&mut p, ts(1_700_000_200)).await.unwrap_err();
        catch_up(&mut p).await;
        assert!(p.projects[PROJECT].prepared.is_none());
        append_marker(&mut p, ts(1_700_000_300)).await.unwrap();
        catch_up(&mut p).await;
        assert_eq!(
            p.stats,
            MarkerStats {
                adopted: 1,
                evaluated: 1
            }
        );
        assert_eq!(p.projects[PROJECT].state, folded(&store).await);
    }
}
