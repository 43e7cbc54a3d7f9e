//! The event store: one narrow trait modelled on EventStoreDB, and its
//! implementations (`memory`, `embedded`, `esdb`).
//!
//! # Contract
//!
//! * A *stream* is a named, gapless sequence of events with 0-based
//!   *revisions*. Every event also has a global *position* (≥ 1) that only
//!   grows across the whole store; `read_all` returns events in position order.
//! * [`EventStore::append`] appends a batch atomically (all or nothing) after
//!   checking the expected revision: `Any` always passes; `NoStream` passes iff
//!   the stream has no event; `StreamExists` iff it has at least one; `Exact(n)`
//!   iff its last revision is `n`. A mismatch is
//!   [`StoreError::WrongExpectedVersion`] naming the actual last revision, and
//!   nothing is written.
//! * Idempotency: if the batch's event ids are already, in the same order, the
//!   events of the stream starting at revision `r`, and the expected revision
//!   is `Any`, `StreamExists` (r > 0 or a written stream), `Exact(r − 1)` or
//!   (`NoStream` and r = 0), the append succeeds again with the original result
//!   and writes nothing. An id already in the stream in any other way is
//!   [`StoreError::DuplicateEventId`] (or a `WrongExpectedVersion` if the
//!   revision check fails first).
//! * The result's `next_revision` is the revision of the last event of the
//!   batch (EventStoreDB's `next_expected_version`), so it can be passed as
//!   `Exact` to the next append.
//! * An acknowledged append is durable (it survives `kill -9`; for `embedded`
//!   also power loss, through `synchronous=FULL`).
//! * Stream metadata: events below `truncate_before`, and all but the newest
//!   `max_count` events, are hidden from `read_stream` (and may be deleted).
//! * Subscriptions deliver every matching event exactly once, in position
//!   order: first the history from the requested position, then live events,
//!   with no gap between the two.

pub mod any;
mod catchup;
pub mod embedded;
pub mod esdb;
pub mod memory;

use std::future::Future;

use tokio::sync::mpsc;
use uuid::Uuid;

/// What the caller expects of a stream's last revision before an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must have no event.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl ExpectedRevision {
    /// Whether the expectation holds for a stream whose last revision is
    /// `last` (`None`: no event).
    pub fn holds(self, last: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => last.is_none(),
            Self::StreamExists => last.is_some(),
            Self::Exact(n) => last == Some(n),
        }
    }
}

impl std::fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("stream exists"),
            Self::Exact(n) => write!(f, "revision {n}"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id; re-appending the same id is an idempotent retry.
    pub id: Uuid,
    /// Event type (the protobuf message name for project events).
    pub event_type: String,
    /// Payload bytes.
    pub data: Vec<u8>,
    /// Metadata bytes (a small JSON object).
    pub metadata: Vec<u8>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Stream name.
    pub stream: String,
    /// 0-based revision in the stream.
    pub revision: u64,
    /// Global position (≥ 1), growing across the store.
    pub position: u64,
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Payload bytes.
    pub data: Vec<u8>,
    /// Metadata bytes.
    pub metadata: Vec<u8>,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Revision of the last event of the batch.
    pub next_revision: u64,
    /// Global position of the last event of the batch.
    pub position: u64,
}

/// Where `read_stream` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The first (visible) event.
    Start,
    /// The last event.
    End,
    /// This revision (inclusive).
    Revision(u64),
}

/// Read direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Increasing revisions.
    Forwards,
    /// Decreasing revisions.
    Backwards,
}

/// Which streams `read_all` and `subscribe_all` return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    /// Stream-name prefixes; empty means every stream.
    pub prefixes: Vec<String>,
}

impl StreamFilter {
    /// A filter on one stream-name prefix.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefixes: vec![prefix.into()],
        }
    }

    /// Whether a stream passes the filter.
    pub fn matches(&self, stream: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| stream.starts_with(p.as_str()))
    }
}

/// Stream metadata the store enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamMetadata {
    /// Keep only the newest this many events visible.
    pub max_count: Option<u64>,
    /// Hide events with a revision below this.
    pub truncate_before: Option<u64>,
}

impl StreamMetadata {
    /// The first revision visible in a stream whose last revision is `last`.
    pub fn first_visible(&self, last: u64) -> u64 {
        let by_count = self
            .max_count
            .map_or(0, |n| (last + 1).saturating_sub(n.max(1)));
        by_count.max(self.truncate_before.unwrap_or(0))
    }
}

/// A store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The expected revision did not hold; nothing was written.
    #[error("wrong expected version on stream {stream:?}: expected {expected}, actual {}", actual.map_or("no stream".to_string(), |r| format!("revision {r}")))]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the caller expected.
        expected: ExpectedRevision,
        /// The stream's last revision (`None`: no stream).
        actual: Option<u64>,
    },
    /// An event id is already in the stream and this is not an idempotent retry.
    #[error("event id {id} is already in stream {stream:?} and this append is not a retry of it")]
    DuplicateEventId {
        /// The stream.
        stream: String,
        /// The id.
        id: Uuid,
    },
    /// The request itself is invalid.
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
    /// The store cannot be reached or is busy; the call may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored data is damaged.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The store's user may not do this (retrying cannot help).
    #[error("store permission denied: {0}")]
    PermissionDenied(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The error's kind, for metrics: `wrong_expected_version`,
    /// `duplicate_event_id`, `invalid_argument`, `unavailable`, `corrupt`,
    /// `permission_denied`, `closed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WrongExpectedVersion { .. } => "wrong_expected_version",
            Self::DuplicateEventId { .. } => "duplicate_event_id",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Unavailable(_) => "unavailable",
            Self::Corrupt(_) => "corrupt",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Closed => "closed",
        }
    }
}

/// A live feed of events: history first, then new events.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<Result<RecordedEvent, StoreError>>,
}

impl Subscription {
    /// Wraps a channel fed by a subscription task.
    pub fn new(receiver: mpsc::Receiver<Result<RecordedEvent, StoreError>>) -> Self {
        Self { receiver }
    }

    /// Events delivered to the subscription and not yet taken.
    pub fn backlog(&self) -> usize {
        self.receiver.len()
    }

    /// The next event; `None` once the store is closed.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent, StoreError>> {
        self.receiver.recv().await
    }
}

/// How many events a subscription buffers ahead of its consumer.
pub const SUBSCRIPTION_BUFFER_EVENTS: usize = 1024;

/// How many events a subscription reads per page while catching up.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 512;

/// The event store. See the module documentation for the contract.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends a batch atomically after checking `expected`.
    fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send;

    /// Reads up to `max` visible events of one stream; empty if it has none.
    fn read_stream(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Reads up to `max` events of matching streams with position ≥ `from_position`.
    fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &StreamFilter,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The last revision of a stream (`None`: no event was ever appended).
    fn stream_revision(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Replaces a stream's metadata.
    fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A stream's metadata (default if never set).
    fn stream_metadata(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<StreamMetadata, StoreError>> + Send;

    /// Subscribes to matching streams from `from_position` (inclusive).
    fn subscribe_all(&self, from_position: u64, filter: StreamFilter) -> Subscription;

    /// Subscribes to one stream from revision `from_revision` (inclusive).
    fn subscribe_stream(&self, stream: &str, from_revision: u64) -> Subscription;

    /// The global position of the newest event, if the store can say it
    /// cheaply (for the projector's lag metric); `None` otherwise.
    fn head_position(&self) -> Option<u64> {
        None
    }

    /// The largest append (bytes of data and metadata of its events) the
    /// store accepts, if it has a limit: EventStoreDB's `MaxAppendSize`.
    /// Writers that may exceed it (import, derived writes) split their
    /// batches with [`split_by_bytes`].
    fn max_append_bytes(&self) -> Option<u64> {
        None
    }
}

/// What an event weighs against a store's append size limit.
pub fn append_bytes(event: &NewEvent) -> u64 {
    (event.data.len() + event.metadata.len()) as u64
}

/// Splits `events` into consecutive batches of at most `max_bytes` each
/// (see [`append_bytes`]), in order; an event larger than that is alone in
/// its batch (the store will refuse it). No limit: one batch.
pub fn split_by_bytes(events: Vec<NewEvent>, max_bytes: Option<u64>) -> Vec<Vec<NewEvent>> {
    let Some(max_bytes) = max_bytes else {
        return vec![events];
    };
    let mut batches: Vec<Vec<NewEvent>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for event in events {
        let size = append_bytes(&event);
        if !current.is_empty() && bytes + size > max_bytes {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(event);
    }
    if !current.is_empty() || batches.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(n: u8, bytes: usize) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::from_u128(u128::from(n)),
            event_type: "T".into(),
            data: vec![n; bytes],
            metadata: b"{}".to_vec(),
        }
    }

    fn shape(batches: &[Vec<NewEvent>]) -> Vec<Vec<u8>> {
        batches
            .iter()
            .map(|b| b.iter().map(|e| e.id.as_u128() as u8).collect())
            .collect()
    }

    #[test]
    fn split_by_bytes_fills_each_append_up_to_the_limit_in_order() {
        // Each event weighs its data plus its 2 bytes of metadata.
        let events = vec![
            sized(1, 3),
            sized(2, 3),
            sized(3, 8),
            sized(4, 20),
            sized(5, 1),
        ];
        assert_eq!(
            shape(&split_by_bytes(events.clone(), Some(10))),
            [vec![1, 2], vec![3], vec![4], vec![5]]
        );
        assert_eq!(
            shape(&split_by_bytes(events.clone(), Some(15))),
            [vec![1, 2], vec![3], vec![4], vec![5]]
        );
        assert_eq!(
            shape(&split_by_bytes(events.clone(), Some(1000))),
            [vec![1, 2, 3, 4, 5]]
        );
        assert_eq!(shape(&split_by_bytes(events, None)), [vec![1, 2, 3, 4, 5]]);
        assert_eq!(split_by_bytes(Vec::new(), Some(10)).len(), 1);
    }
}
