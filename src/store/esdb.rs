//! The EventStoreDB / KurrentDB store: the [`EventStore`] contract over the
//! `eventstore` 4.0.0 gRPC client (`--store esdb://host:2113?tls=false`,
//! `esdb://user:pass@a:2113,b:2113,c:2113`, `esdb+discover://host:2113`; the
//! connection string is parsed by the client itself).
//!
//! # Mapping
//!
//! * **Positions.** Our global position is EventStoreDB's *commit position +
//!   1*, so it is ≥ 1 and grows with `$all` as the contract asks (a real
//!   server's commit positions are byte offsets in its log: they grow but are
//!   not dense). `read_all(p)` reads `$all` forwards from commit `p − 2`
//!   and drops what comes before `p`; `subscribe_all(p)` subscribes from
//!   commit `p − 2` (EventStoreDB's subscription start is exclusive). For the
//!   usual `p = last.position + 1` both start at the last event's commit
//!   position, which is a record boundary in the server's log. Any other `p`
//!   may fall inside a record, which the server refuses (`InvalidArgument`);
//!   the adapter then re-seeks once to the nearest event it has seen before
//!   (it remembers the last [`MAX_KNOWN_BOUNDARIES`] commit positions), or to
//!   the start of `$all`, and drops what comes before `p`. Streams whose name
//!   starts with `$` (system and metadata streams) are never returned.
//! * **Revisions** are EventStoreDB's stream revisions unchanged; `End`
//!   forwards and `Start` backwards (which EventStoreDB answers with nothing
//!   and with revision 0) are read as "the last visible event" and "the first
//!   visible event", as the contract says.
//! * **Metadata.** [`StreamMetadata`] is written as our own `$metadata` JSON
//!   event (`$maxCount`, `$tb`) to `$$<stream>`, and read back as the *newest*
//!   event of that stream. It is read-modify-written: other keys (`$acl`,
//!   `$maxAge`) stay, a max count of 0 is written as 1 (0 voids the whole
//!   document), and a soft delete (`$tb` at 2^63 - 1) is kept. The client's
//!   `set_stream_metadata` (which writes `$maxAge`/`$cacheControl` in
//!   milliseconds where the server reads seconds) and `get_stream_metadata`
//!   (which returns the *oldest* metadata event) are not used.
//! * **Events.** Data goes as a binary event with the explicit [`NewEvent`]
//!   id (`EventData::id`), so a retried append carries the same ids; our
//!   metadata JSON (`$correlationId`, `$causationId`) is the custom metadata.
//! * **Idempotency and duplicate ids.** EventStoreDB only recognises a retry
//!   at the expected position and has no "duplicate id" error, so the adapter
//!   checks every append with the shared rule (`memory::check_append_with`)
//!   against a per-stream index of ids kept up to date by reading the
//!   stream's new tail first. Appends to one stream from one process are
//!   serialised; the server still checks the expected revision atomically.
//!   Ids of events already hidden by `$tb`/`$maxCount` are not in the index.
//!
//! # Failures
//!
//! * Retried (with back-off, [`RETRY_ATTEMPTS`] attempts): the transient
//!   errors of the client's reference — `ServerError` (node down, refused,
//!   internal), `DeadlineExceeded`, `NotLeaderException` and gRPC `Aborted` —
//!   plus gRPC `Cancelled`, which is how the client reports a connection that
//!   dropped while a call was in flight ("h2 protocol error"; measured
//!   against the test double; the server itself never cancels a call).
//!   A retried append re-reads the tail first, so an append that landed
//!   before its connection dropped is reported once and not written twice.
//! * Supervision: a `Client` whose first connection failed answers
//!   `GrpcConnectionError` and then `ConnectionClosed` for ever; on either,
//!   the adapter drops it and builds a new one (the client is created lazily,
//!   inside the runtime, on first use).
//! * Everything else is final: conflicts map to the contract's errors,
//!   refusals (access denied, deleted stream, bad request) to
//!   [`StoreError::InvalidArgument`], retry exhaustion to
//!   [`StoreError::Unavailable`].
//! * The adapter never installs a rustls `CryptoProvider`: the client
//!   installs its own on first connect and panics if one is already there.
//!
//! # Subscriptions
//!
//! Catch-up subscriptions use the server's subscriptions (`$all` with a
//! stream-name prefix filter, or one stream), without the client's own retry.
//! The adapter keeps the last delivered event as the checkpoint, moved on by
//! the server's checkpoint messages of a filtered `$all` subscription (every
//! record up to one was scanned); when the subscription drops for a
//! transient reason it resubscribes from it, so nothing is missed or
//! delivered twice. A subscriber that falls behind is caught up again by the
//! server (`fell_behind` … `caught_up`), which the adapter rides through.
//! They end with an error only on a final error.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventstore::{
    Client, ClientSettings, CurrentRevision, EventData, ReadAllOptions, ReadEvent,
    ReadStreamOptions, StreamPosition, SubscribeToAllOptions, SubscribeToStreamOptions,
    SubscriptionEvent, SubscriptionFilter,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::memory::{check_append_with, check_request, StreamIds};
use super::{
    AppendResult, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom, RecordedEvent,
    StoreError, StreamFilter, StreamMetadata, Subscription, SUBSCRIPTION_BUFFER_EVENTS,
    SUBSCRIPTION_PAGE_EVENTS,
};

/// How many times a call is tried when it fails transiently.
pub const RETRY_ATTEMPTS: u32 = 8;

/// The first back-off between attempts; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest back-off between attempts (and between resubscriptions).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How many times an `Any` append is pinned anew to the stream's head when
/// other writers keep moving it.
const MAX_REPINS: u32 = 64;

/// How many streams' id indexes are kept before all are dropped (they are
/// rebuilt from reads on demand).
const MAX_INDEXED_STREAMS: usize = 65_536;

/// The largest append assumed unless told otherwise: the server's default
/// `MaxAppendSize` up to EventStoreDB 24.10 / KurrentDB 25.0 (256 MiB from
/// KurrentDB 25.1).
pub const DEFAULT_MAX_APPEND_BYTES: u64 = 1024 * 1024;

/// `$tb` of a soft-deleted stream (EventStoreDB's `EventNumber.DeletedStream`).
const SOFT_DELETED: u64 = i64::MAX as u64;

/// How many record boundaries (commit positions of events seen) are kept to
/// re-seek from; the oldest are forgotten first.
const MAX_KNOWN_BOUNDARIES: usize = 65_536;

/// An EventStoreDB-backed store; clones share one supervised client.
#[derive(Clone)]
pub struct EsdbStore {
    inner: Arc<Inner>,
    /// The largest append the server accepts (its `MaxAppendSize`).
    max_append_bytes: u64,
}

struct Inner {
    settings: ClientSettings,
    /// The current client and its generation; `None` until first use or after
    /// it was found dead.
    client: Mutex<Option<(u64, Client)>>,
    generation: Mutex<u64>,
    /// Per stream, the ids of its events (see the module documentation).
    ids: Mutex<HashMap<String, Arc<tokio::sync::Mutex<IdIndex>>>>,
    /// Commit positions of events seen: record boundaries of the server's
    /// log, to re-seek to when a position is refused.
    boundaries: Mutex<BTreeSet<u64>>,
}

impl std::fmt::Debug for EsdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self
            .inner
            .settings
            .hosts()
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port))
            .collect();
        f.debug_struct("EsdbStore").field("hosts", &hosts).finish()
    }
}

/// How a client error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Try again after a back-off.
    Transient,
    /// The client is dead: build a new one, then try again.
    DeadClient,
    /// Report it.
    Final,
}

fn classify(err: &eventstore::Error) -> Class {
    use eventstore::Error as E;
    match err {
        E::ServerError(_) | E::DeadlineExceeded | E::NotLeaderException(_) => Class::Transient,
        E::Grpc {
            code: tonic::Code::Aborted | tonic::Code::Cancelled,
            ..
        } => Class::Transient,
        E::GrpcConnectionError(_) | E::ConnectionClosed => Class::DeadClient,
        _ => Class::Final,
    }
}

/// The contract's error for a final (or exhausted) client error.
fn store_error(err: eventstore::Error) -> StoreError {
    use eventstore::Error as E;
    match err {
        E::ServerError(_)
        | E::DeadlineExceeded
        | E::NotLeaderException(_)
        | E::GrpcConnectionError(_)
        | E::ConnectionClosed => StoreError::Unavailable(format!("EventStoreDB: {err}")),
        E::Grpc {
            code: tonic::Code::Aborted | tonic::Code::Cancelled,
            ..
        } => StoreError::Unavailable(format!("EventStoreDB: {err}")),
        E::InternalParsingError(_) => StoreError::Corrupt(format!("EventStoreDB: {err}")),
        E::AccessDenied => StoreError::PermissionDenied(
            "EventStoreDB denied the call to this connection's user; the service reads and \
             subscribes to $all (by default only $admins may) and reads and writes the project-, \
             projectlog-, projectoffload-, pmaction-, projectsnapshot- and projector-checkpoint \
             streams"
                .to_string(),
        ),
        E::Grpc {
            code: tonic::Code::InvalidArgument,
            ref message,
        } if message.contains("Maximum Append Size") => StoreError::InvalidArgument(format!(
            "EventStoreDB refused the append as too large ({message}); \
             the server's MaxAppendSize setting sets the limit (1 MiB by default up to 24.10); \
             tell prjmanager the server's limit with --max-append-bytes"
        )),
        other => StoreError::InvalidArgument(format!("EventStoreDB refused the call: {other}")),
    }
}

/// One attempt's failure: a client error (maybe retried) or a contract error.
enum Attempt {
    Client(eventstore::Error),
    Store(StoreError),
}

impl From<eventstore::Error> for Attempt {
    fn from(err: eventstore::Error) -> Self {
        Self::Client(err)
    }
}

fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF)
}

/// Our position for an EventStoreDB commit position.
fn our_position(commit: u64) -> u64 {
    commit.saturating_add(1)
}

fn esdb_position(commit: u64) -> eventstore::Position {
    eventstore::Position {
        commit,
        prepare: commit,
    }
}

/// EventStoreDB's own records, never our data: events of `$` streams, and
/// `$`-typed events in ours (a tombstone leaves a `$streamDeleted` record at
/// revision 2^63 - 1 of the deleted stream, visible in `$all`).
fn is_system(event: &eventstore::RecordedEvent) -> bool {
    event.stream_id.starts_with('$') || event.event_type.starts_with('$')
}

fn convert(event: &eventstore::RecordedEvent) -> RecordedEvent {
    RecordedEvent {
        stream: event.stream_id.clone(),
        revision: event.revision,
        position: our_position(event.position.commit),
        id: event.id,
        event_type: event.event_type.clone(),
        data: event.data.to_vec(),
        metadata: event.custom_metadata.to_vec(),
    }
}

fn expected(revision: ExpectedRevision) -> eventstore::ExpectedRevision {
    match revision {
        ExpectedRevision::Any => eventstore::ExpectedRevision::Any,
        ExpectedRevision::NoStream => eventstore::ExpectedRevision::NoStream,
        ExpectedRevision::StreamExists => eventstore::ExpectedRevision::StreamExists,
        ExpectedRevision::Exact(n) => eventstore::ExpectedRevision::Exact(n),
    }
}

/// The ids a stream is known to hold: `ids[i]` is at revision `first + i`.
#[derive(Debug, Default)]
struct IdIndex {
    first: u64,
    ids: Vec<(Uuid, u64)>,
    last: Option<u64>,
}

impl IdIndex {
    fn next_revision(&self) -> Option<u64> {
        if self.ids.is_empty() && self.last.is_none() {
            None
        } else {
            Some(self.first + self.ids.len() as u64)
        }
    }

    fn position_at(&self, revision: u64) -> Option<u64> {
        let i = usize::try_from(revision.checked_sub(self.first)?).ok()?;
        self.ids.get(i).map(|(_, p)| *p)
    }
}

impl StreamIds for IdIndex {
    fn last_revision(&self) -> Option<u64> {
        self.last
    }

    fn revision_of(&self, id: &Uuid) -> Option<u64> {
        self.ids
            .iter()
            .position(|(known, _)| known == id)
            .map(|i| self.first + i as u64)
    }

    fn id_at(&self, revision: u64) -> Option<Uuid> {
        let i = usize::try_from(revision.checked_sub(self.first)?).ok()?;
        self.ids.get(i).map(|(id, _)| *id)
    }
}

/// Whether the server refused a read or subscription because its start is
/// not a record boundary of the log (positions are byte offsets).
fn is_invalid_position(err: &eventstore::Error) -> bool {
    matches!(
        err,
        eventstore::Error::Grpc {
            code: tonic::Code::InvalidArgument,
            ..
        }
    )
}

impl EsdbStore {
    /// A store for an `esdb://` or `esdb+discover://` connection string; no
    /// connection is made until the first call.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let settings = url.parse::<ClientSettings>().map_err(|e| {
            StoreError::InvalidArgument(format!("bad EventStoreDB connection string: {e}"))
        })?;
        // Only with the leader preference does the client mark every call
        // "requires leader" (the 4.0.0 client has no per-call switch): reads
        // that decide whether a retried append landed must not be served by
        // a follower that has not caught up.
        if settings.node_preference() != eventstore::NodePreference::Leader {
            return Err(StoreError::InvalidArgument(format!(
                "EventStoreDB connection string has nodePreference={:?}: prjmanager needs \
                 nodePreference=leader (the default), so that the reads which recognise a \
                 retried append are served by the leader",
                settings.node_preference()
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                client: Mutex::new(None),
                generation: Mutex::new(0),
                ids: Mutex::new(HashMap::new()),
                boundaries: Mutex::new(BTreeSet::new()),
            }),
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
        })
    }

    /// The same store, told that the server accepts appends of up to
    /// `bytes` (its `MaxAppendSize`; [`DEFAULT_MAX_APPEND_BYTES`] unless
    /// told).
    pub fn with_max_append_bytes(self, bytes: u64) -> Self {
        Self {
            max_append_bytes: bytes,
            ..self
        }
    }

    /// The current client (built on first use or after the last one died),
    /// with its generation.
    fn client(&self) -> Result<(u64, Client), StoreError> {
        let mut slot = self
            .inner
            .client
            .lock()
            .expect("esdb client mutex poisoned");
        if let Some((generation, client)) = &*slot {
            return Ok((*generation, client.clone()));
        }
        let client = Client::new(self.inner.settings.clone())
            .map_err(|e| StoreError::Unavailable(format!("cannot build the client: {e}")))?;
        let mut generation = self
            .inner
            .generation
            .lock()
            .expect("esdb generation mutex poisoned");
        *generation += 1;
        *slot = Some((*generation, client.clone()));
        Ok((*generation, client))
    }

    /// Drops the client of this generation, if it is still the current one.
    fn discard(&self, generation: u64) {
        let mut slot = self
            .inner
            .client
            .lock()
            .expect("esdb client mutex poisoned");
        if matches!(&*slot, Some((current, _)) if *current == generation) {
            tracing::warn!("EventStoreDB client is dead; building a new one");
            *slot = None;
        }
    }

    /// Runs `op` with the client, retrying transient failures and rebuilding
    /// a dead client.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut attempt = 0;
        loop {
            let (generation, client) = self.client()?;
            match op(client).await {
                Ok(value) => return Ok(value),
                Err(Attempt::Store(err)) => return Err(err),
                Err(Attempt::Client(err)) => {
                    self.after_failure(what, err, generation, &mut attempt)
                        .await?
                }
            }
        }
    }

    /// Handles a failed attempt: rebuilds a dead client, and either waits
    /// before the next attempt or gives the final error.
    async fn after_failure(
        &self,
        what: &str,
        err: eventstore::Error,
        generation: u64,
        attempt: &mut u32,
    ) -> Result<(), StoreError> {
        let class = classify(&err);
        if class == Class::DeadClient {
            self.discard(generation);
        }
        *attempt += 1;
        if class == Class::Final || *attempt >= RETRY_ATTEMPTS {
            return Err(store_error(err));
        }
        tracing::warn!(
            attempt = *attempt,
            "EventStoreDB {what} failed, retrying: {err}"
        );
        tokio::time::sleep(backoff(*attempt - 1)).await;
        Ok(())
    }

    /// Remembers that an event is at commit position `commit`.
    fn saw(&self, commit: u64) {
        let mut known = self
            .inner
            .boundaries
            .lock()
            .expect("esdb boundaries mutex poisoned");
        if known.insert(commit) && known.len() > MAX_KNOWN_BOUNDARIES {
            known.pop_first();
        }
    }

    /// Where to read or subscribe from instead of `commit`, which the server
    /// refused as not a record boundary: the nearest event seen before it,
    /// or the start of `$all`. Callers skip what comes before what they
    /// asked for, so starting earlier loses nothing.
    fn reseek(&self, commit: u64) -> Option<u64> {
        let known = self
            .inner
            .boundaries
            .lock()
            .expect("esdb boundaries mutex poisoned");
        let before = known.range(..commit).next_back().copied();
        tracing::warn!(
            commit,
            ?before,
            "EventStoreDB refused a start position that is not a record boundary; \
             re-seeking to the nearest event seen before it (or the start of $all)"
        );
        before
    }

    fn id_index(&self, stream: &str) -> Arc<tokio::sync::Mutex<IdIndex>> {
        let mut ids = self.inner.ids.lock().expect("esdb id index mutex poisoned");
        if ids.len() > MAX_INDEXED_STREAMS {
            ids.clear();
        }
        ids.entry(stream.to_string()).or_default().clone()
    }

    /// Reads a stream's events after the index's last one into the index.
    async fn refresh(client: &Client, stream: &str, index: &mut IdIndex) -> Result<(), Attempt> {
        let from = index.next_revision();
        let options = ReadStreamOptions::default()
            .position(from.map_or(StreamPosition::Start, StreamPosition::Position))
            .forwards();
        let mut read = client.read_stream(stream, &options).await?;
        loop {
            match read.next_read_event().await {
                Ok(Some(ReadEvent::Event(event))) => {
                    let event = event.get_original_event();
                    if index.next_revision() != Some(event.revision) {
                        // A gap (hidden events) or a fresh index.
                        index.first = event.revision;
                        index.ids.clear();
                    }
                    index
                        .ids
                        .push((event.id, our_position(event.position.commit)));
                    index.last = Some(event.revision);
                }
                Ok(Some(ReadEvent::LastStreamPosition(last))) => {
                    index.last = Some(index.last.map_or(last, |l| l.max(last)));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(eventstore::Error::ResourceNotFound) => {
                    *index = IdIndex::default();
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Reads events of one stream with EventStoreDB's own semantics.
    async fn read_raw(
        &self,
        stream: &str,
        position: StreamPosition<u64>,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.retrying("read", |client| async move {
            let options = ReadStreamOptions::default()
                .position(position)
                .max_count(max);
            let options = match direction {
                Direction::Forwards => options.forwards(),
                Direction::Backwards => options.backwards(),
            };
            let mut read = client.read_stream(stream, &options).await?;
            let mut events = Vec::new();
            loop {
                match read.next().await {
                    Ok(Some(event)) => events.push(convert(event.get_original_event())),
                    Ok(None) => return Ok(events),
                    Err(
                        eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
                    ) => return Ok(Vec::new()),
                    Err(err) => return Err(err.into()),
                }
            }
        })
        .await
    }
}

impl EventStore for EsdbStore {
    async fn append(
        &self,
        stream: &str,
        expected_revision: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        check_request(stream, &events)?;
        let index = self.id_index(stream);
        let mut index = index.lock().await;
        let data: Vec<EventData> = events
            .iter()
            .map(|e| {
                EventData::binary(e.event_type.as_str(), bytes::Bytes::from(e.data.clone()))
                    .id(e.id)
                    .metadata(bytes::Bytes::from(e.metadata.clone()))
            })
            .collect();
        let mut attempt = 0;
        let mut repins = 0;
        // The revision the server is asked to append at, fixed across the
        // retries of one try (see `append_once`).
        let mut pinned = None;
        loop {
            let (generation, client) = self.client()?;
            match Self::append_once(
                &client,
                stream,
                expected_revision,
                &events,
                &data,
                &mut index,
                &mut pinned,
            )
            .await
            {
                Ok(Some(result)) => return Ok(result),
                Err(Attempt::Store(err)) => return Err(err),
                Ok(None) => {
                    repins += 1;
                    if repins > MAX_REPINS {
                        return Err(StoreError::Unavailable(format!(
                            "stream {stream:?} kept changing under {MAX_REPINS} tries to append"
                        )));
                    }
                }
                Err(Attempt::Client(err)) => {
                    self.after_failure("append", err, generation, &mut attempt)
                        .await?
                }
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        match (from, direction) {
            // EventStoreDB answers these with nothing and with revision 0;
            // the contract means the last and the first visible event.
            (ReadFrom::End, Direction::Forwards) => {
                self.read_raw(stream, StreamPosition::End, Direction::Backwards, 1)
                    .await
            }
            (ReadFrom::Start, Direction::Backwards) => {
                self.read_raw(stream, StreamPosition::Start, Direction::Forwards, 1)
                    .await
            }
            (ReadFrom::Start, d) => self.read_raw(stream, StreamPosition::Start, d, max).await,
            (ReadFrom::End, d) => self.read_raw(stream, StreamPosition::End, d, max).await,
            (ReadFrom::Revision(r), d) => {
                self.read_raw(stream, StreamPosition::Position(r), d, max)
                    .await
            }
        }
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &StreamFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let from_position = from_position.max(1);
        self.retrying("read_all", |client| async move {
            let mut found = Vec::new();
            // Start at the event before the first wanted one (`last + 1` is
            // how callers page, so this is an event boundary on a real
            // server) and skip what comes before `from_position`.
            let mut start = if from_position <= 2 {
                StreamPosition::Start
            } else {
                StreamPosition::Position(esdb_position(from_position - 2))
            };
            // The event a page starts at when it continues the previous one.
            let mut skip: Option<u64> = None;
            let mut reseeked = false;
            loop {
                let options = ReadAllOptions::default()
                    .position(start)
                    .forwards()
                    .max_count(SUBSCRIPTION_PAGE_EVENTS);
                let page = async {
                    let mut read = client.read_all(&options).await?;
                    let mut page = Vec::new();
                    while let Some(event) = read.next().await? {
                        page.push(event);
                    }
                    Ok::<_, eventstore::Error>(page)
                }
                .await;
                let page = match (page, start) {
                    (Err(err), StreamPosition::Position(at))
                        if skip.is_none() && !reseeked && is_invalid_position(&err) =>
                    {
                        reseeked = true;
                        start = self.reseek(at.commit).map_or(StreamPosition::Start, |c| {
                            StreamPosition::Position(esdb_position(c))
                        });
                        continue;
                    }
                    (page, _) => page?,
                };
                let seen = page.len();
                let mut last = None;
                for event in &page {
                    let event = event.get_original_event();
                    let commit = event.position.commit;
                    self.saw(commit);
                    last = Some(commit);
                    if skip == Some(commit)
                        || our_position(commit) < from_position
                        || is_system(event)
                        || !filter.matches(&event.stream_id)
                    {
                        continue;
                    }
                    found.push(convert(event));
                    if found.len() == max {
                        return Ok(found);
                    }
                }
                match last {
                    Some(commit) if seen == SUBSCRIPTION_PAGE_EVENTS => {
                        start = StreamPosition::Position(esdb_position(commit));
                        skip = Some(commit);
                    }
                    _ => return Ok(found),
                }
            }
        })
        .await
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        self.retrying("stream_revision", |client| async move {
            let options = ReadStreamOptions::default()
                .position(StreamPosition::End)
                .backwards()
                .max_count(1);
            let mut read = client.read_stream(stream, &options).await?;
            let mut last = None;
            loop {
                match read.next_read_event().await {
                    Ok(Some(ReadEvent::Event(event))) => {
                        let revision = event.get_original_event().revision;
                        last = Some(last.map_or(revision, |l: u64| l.max(revision)));
                    }
                    Ok(Some(ReadEvent::LastStreamPosition(revision))) => {
                        last = Some(last.map_or(revision, |l: u64| l.max(revision)));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(last),
                    Err(
                        eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
                    ) => return Ok(None),
                    Err(err) => return Err(err.into()),
                }
            }
        })
        .await
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError> {
        // Read-modify-write: keys this store does not manage (`$acl`,
        // `$maxAge`, a user's own) are kept; ours are replaced.
        let mut json = self.metadata_document(stream).await?;
        match metadata.max_count {
            // The server ignores a whole document whose `$maxCount` is 0 (so a
            // `$tb` beside it would be lost too); 1 shows what 0 means here:
            // the last event.
            Some(n) => json.insert("$maxCount".into(), n.max(1).into()),
            None => json.remove("$maxCount"),
        };
        // A soft delete is `$tb` at 2^63 - 1 (the server's deleted marker):
        // it stays, or writing metadata would bring the stream back.
        let soft_deleted =
            json.get("$tb").and_then(serde_json::Value::as_u64) == Some(SOFT_DELETED);
        match metadata.truncate_before {
            _ if soft_deleted => None,
            Some(n) => json.insert("$tb".into(), n.into()),
            None => json.remove("$tb"),
        };
        // One id for every attempt, so a retry is recognised by the server.
        let event = EventData::json("$metadata", &serde_json::Value::Object(json))
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?
            .id(Uuid::new_v4());
        let metadata_stream = format!("$${stream}");
        let metadata_stream = metadata_stream.as_str();
        let event = &event;
        self.retrying("set_stream_metadata", |client| async move {
            client
                .append_to_stream(
                    metadata_stream,
                    &eventstore::AppendToStreamOptions::default(),
                    event.clone(),
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError> {
        let json = serde_json::Value::Object(self.metadata_document(stream).await?);
        Ok(StreamMetadata {
            max_count: json.get("$maxCount").and_then(serde_json::Value::as_u64),
            truncate_before: json.get("$tb").and_then(serde_json::Value::as_u64),
        })
    }

    fn max_append_bytes(&self) -> Option<u64> {
        Some(self.max_append_bytes)
    }

    fn subscribe_all(&self, from_position: u64, filter: StreamFilter) -> Subscription {
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER_EVENTS);
        let store = self.clone();
        tokio::spawn(async move {
            let from_position = from_position.max(1);
            let mut server_filter = SubscriptionFilter::on_stream_name();
            if filter.prefixes.is_empty() || filter.prefixes.iter().any(String::is_empty) {
                server_filter = server_filter.exclude_system_events();
            } else {
                for prefix in &filter.prefixes {
                    server_filter = server_filter.add_prefix(prefix);
                }
            }
            // The checkpoint: the commit position of the last delivered event
            // (or of the one before the first wanted); the start is exclusive.
            store
                .run_subscription(
                    &sender,
                    true,
                    from_position.checked_sub(2),
                    |client, checkpoint| {
                        let position = checkpoint.map_or(StreamPosition::Start, |c| {
                            StreamPosition::Position(esdb_position(c))
                        });
                        let options = SubscribeToAllOptions::default()
                            .position(position)
                            .filter(server_filter.clone());
                        async move { client.subscribe_to_all(&options).await }
                    },
                    |event, checkpoint| {
                        let commit = event.position.commit;
                        if checkpoint.is_some_and(|c| commit <= c)
                            || our_position(commit) < from_position
                        {
                            return None;
                        }
                        let wanted = !is_system(event) && filter.matches(&event.stream_id);
                        Some((commit, wanted.then(|| convert(event))))
                    },
                )
                .await;
        });
        Subscription::new(receiver)
    }

    fn subscribe_stream(&self, stream: &str, from_revision: u64) -> Subscription {
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER_EVENTS);
        let store = self.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            // The checkpoint: the last delivered revision (or the one before
            // the first wanted); the start is exclusive.
            store
                .run_subscription(
                    &sender,
                    false,
                    from_revision.checked_sub(1),
                    |client, checkpoint| {
                        let options = SubscribeToStreamOptions::default().start_from(
                            checkpoint.map_or(StreamPosition::Start, StreamPosition::Position),
                        );
                        let name = stream.clone();
                        async move { client.subscribe_to_stream(name, &options).await }
                    },
                    |event, checkpoint| {
                        if event.stream_id != stream
                            || checkpoint.is_some_and(|c| event.revision <= c)
                            || event.revision < from_revision
                        {
                            return None;
                        }
                        Some((event.revision, (!is_system(event)).then(|| convert(event))))
                    },
                )
                .await;
        });
        Subscription::new(receiver)
    }
}

impl EsdbStore {
    /// The stream's metadata document: the newest event of `$$<stream>` as a
    /// JSON object (empty if there is none).
    async fn metadata_document(
        &self,
        stream: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
        let newest = self
            .read_raw(
                &format!("$${stream}"),
                StreamPosition::End,
                Direction::Backwards,
                1,
            )
            .await?;
        let Some(event) = newest.first() else {
            return Ok(serde_json::Map::new());
        };
        match serde_json::from_slice(&event.data) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(StoreError::Corrupt(format!(
                "metadata of stream {stream:?} is not a JSON object"
            ))),
            Err(e) => Err(StoreError::Corrupt(format!(
                "metadata of stream {stream:?} is not JSON: {e}"
            ))),
        }
    }

    /// One append attempt: catch the id index up with the stream, check the
    /// batch against it (a retry of a batch already written answers from the
    /// index), then append with the caller's expected revision.
    ///
    /// The server checks a retried batch's ids durably only under an exact
    /// expected revision (`Any`/`StreamExists` are checked against a cache
    /// that a restart or a new leader empties). So the first try pins the
    /// revision to append at (the caller's, or for `Any`/`StreamExists` the
    /// stream's head), and every retry of it asks for the same: a batch that
    /// landed is recognised by the server even when a tail read cannot see
    /// it (hidden by `$maxCount`). If another writer moved the stream, the
    /// ids are checked again and the append is pinned anew (`Ok(None)`).
    async fn append_once(
        client: &Client,
        stream: &str,
        expected_revision: ExpectedRevision,
        events: &[NewEvent],
        data: &[EventData],
        index: &mut IdIndex,
        pinned: &mut Option<ExpectedRevision>,
    ) -> Result<Option<AppendResult>, Attempt> {
        Self::refresh(client, stream, index).await?;
        let server_expected = match *pinned {
            Some(pinned) => pinned,
            None => {
                let check = check_append_with(stream, expected_revision, &*index, events)
                    .map_err(Attempt::Store)?;
                if let Some(start) = check {
                    let last = start + events.len() as u64 - 1;
                    if let Some(position) = index.position_at(last) {
                        return Ok(Some(AppendResult {
                            next_revision: last,
                            position,
                        }));
                    }
                }
                let at = match (expected_revision, index.last) {
                    (ExpectedRevision::Any | ExpectedRevision::StreamExists, Some(last)) => {
                        ExpectedRevision::Exact(last)
                    }
                    (ExpectedRevision::Any, None) => ExpectedRevision::NoStream,
                    (other, _) => other,
                };
                *pinned = Some(at);
                at
            }
        };
        let options = eventstore::AppendToStreamOptions::default()
            .expected_revision(expected(server_expected));
        match client
            .append_to_stream(stream, &options, data.to_vec())
            .await
        {
            Ok(written) => Ok(Some(AppendResult {
                next_revision: written.next_expected_version,
                position: our_position(written.position.commit),
            })),
            Err(eventstore::Error::WrongExpectedVersion { .. })
                if server_expected != expected_revision =>
            {
                // Only our pin failed: another writer appended meanwhile;
                // `None` asks for a new try (ids checked again, pinned anew).
                *pinned = None;
                Ok(None)
            }
            Err(eventstore::Error::WrongExpectedVersion { current, .. }) => {
                Err(Attempt::Store(StoreError::WrongExpectedVersion {
                    stream: stream.to_string(),
                    expected: expected_revision,
                    actual: match current {
                        CurrentRevision::Current(n) => Some(n),
                        CurrentRevision::NoStream => None,
                    },
                }))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Runs one subscription until its receiver goes away or a final error:
    /// `subscribe` (re)subscribes after the checkpoint; `accept` skips an
    /// event already delivered (`None`) or gives the new checkpoint and what
    /// to deliver.
    ///
    /// For `$all` (`all`), checkpoints are commit positions: the server's
    /// checkpoint messages (every record up to one was scanned) move the
    /// checkpoint on, and a start the server refuses as not a record
    /// boundary is re-seeked once (see [`Self::reseek`]).
    async fn run_subscription<S, Fut, A>(
        &self,
        sender: &mpsc::Sender<Result<RecordedEvent, StoreError>>,
        all: bool,
        mut checkpoint: Option<u64>,
        mut subscribe: S,
        mut accept: A,
    ) where
        S: FnMut(Client, Option<u64>) -> Fut,
        Fut: std::future::Future<Output = eventstore::Subscription>,
        A: FnMut(&eventstore::RecordedEvent, Option<u64>) -> Option<(u64, Option<RecordedEvent>)>,
    {
        let mut failures = 0u32;
        let mut reseeked = false;
        loop {
            let (generation, client) = match self.client() {
                Ok(client) => client,
                Err(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
            };
            let mut subscription = tokio::select! {
                _ = sender.closed() => return,
                subscription = subscribe(client, checkpoint) => subscription,
            };
            let err = loop {
                let next = tokio::select! {
                    _ = sender.closed() => return,
                    next = subscription.next_subscription_event() => next,
                };
                match next {
                    Ok(SubscriptionEvent::EventAppeared(event)) => {
                        failures = 0;
                        reseeked = false;
                        let event = event.get_original_event();
                        if all {
                            self.saw(event.position.commit);
                        }
                        let Some((next, deliver)) = accept(event, checkpoint) else {
                            continue;
                        };
                        checkpoint = Some(next);
                        if let Some(event) = deliver {
                            if sender.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(SubscriptionEvent::Checkpoint(position)) if all => {
                        self.saw(position.commit);
                        checkpoint =
                            Some(checkpoint.map_or(position.commit, |c| c.max(position.commit)));
                    }
                    Ok(_) => {}
                    Err(err) => break err,
                }
            };
            if let (true, false, Some(at)) = (all, reseeked, checkpoint) {
                if is_invalid_position(&err) {
                    reseeked = true;
                    checkpoint = self.reseek(at);
                    continue;
                }
            }
            match classify(&err) {
                Class::Final => {
                    let _ = sender.send(Err(store_error(err))).await;
                    return;
                }
                Class::DeadClient => self.discard(generation),
                Class::Transient => {}
            }
            tracing::warn!("EventStoreDB subscription dropped, resubscribing: {err}");
            tokio::select! {
                _ = sender.closed() => return,
                _ = tokio::time::sleep(backoff(failures)) => {}
            }
            failures = failures.saturating_add(1);
        }
    }
}
