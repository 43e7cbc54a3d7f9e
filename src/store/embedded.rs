//! The embedded store: one SQLite file (rusqlite, bundled SQLite) in WAL mode
//! with `synchronous=FULL`, the default store of a single machine.
//!
//! # Design
//!
//! * **One writer thread** owns the only connection that writes. Appends,
//!   metadata changes and scavenges are queued to it. It takes the first
//!   queued request, drains every request already queued (at most
//!   [`MAX_GROUP_COMMIT_APPENDS`] requests and, once reached,
//!   [`MAX_GROUP_COMMIT_EVENTS`] events), and runs them in one
//!   `BEGIN IMMEDIATE` transaction, each under its own `SAVEPOINT` so that a
//!   failing request (wrong expected revision, duplicate id) is rolled back
//!   alone. The Notifier's append (one event whose expected revision holds)
//!   needs none: its single INSERT either lands or is undone by SQLite, and
//!   only one that does not land (its id is already in the stream) is
//!   checked in full under a savepoint (`append_direct`). One `COMMIT`,
//!   hence one fsync, makes the whole group durable; only then is every
//!   caller answered (through a oneshot channel) and the new head position
//!   published on a `watch` channel for the subscriptions.
//! * **The append check** is the shared rule of every store
//!   ([`super::memory::check_append_with`]), fed by indexed lookups inside the
//!   writer's transaction: it therefore sees the earlier appends of the same
//!   group, and idempotency survives restarts because the ids live in the
//!   table (`UNIQUE (stream_id, event_id)`), not in a cache.
//! * **Reads** run on their own connections (a pool of at most
//!   [`MAX_READ_CONNECTIONS`]) inside `spawn_blocking`, each in one read
//!   transaction so that a stream's revision, its metadata and its events come
//!   from the same snapshot.
//! * **Positions** are the `INTEGER PRIMARY KEY AUTOINCREMENT` of the events
//!   table: they start at 1, only grow, and are never reused, even after
//!   [`EmbeddedStore::scavenge`] deletes the newest row of the table.
//! * **Stream names** are stored as BLOBs so that the prefix filter of
//!   `read_all` compares exact bytes (`substr(name, 1, n) = prefix` on a BLOB
//!   counts bytes), and no `LIKE` wildcard or collation can interfere.
//! * **Identity**: the file carries [`APPLICATION_ID`] and [`SCHEMA_VERSION`]
//!   (`PRAGMA application_id`, `PRAGMA user_version`). Opening a non-SQLite
//!   file, a foreign SQLite database or another schema version is refused with
//!   an error that says which, before anything is written to the file.
//! * **Metadata** (`max_count`, `truncate_before`) lives in the `streams` table
//!   and is applied by `read_stream`, as in the memory store. Hidden rows stay
//!   until [`EmbeddedStore::scavenge`] deletes them; after a scavenge,
//!   `read_all` no longer returns those events and their ids no longer make a
//!   re-append idempotent (as after an EventStoreDB scavenge).
//! * **Shutdown**: [`EmbeddedStore::close`] (or dropping the last handle) lets
//!   the writer finish every request queued before it, then stops the thread;
//!   later calls fail with [`StoreError::Closed`] and subscriptions end.
//!
//! # Baselines
//!
//! [`open_writer_connection`] and the statements an append runs
//! ([`FIND_STREAM_SQL`], [`INSERT_STREAM_SQL`], [`INSERT_EVENT_SQL`],
//! [`SET_LAST_REVISION_SQL`]) are public so that `pm-bench append` can write
//! the same schema through the same connection setup without the store's
//! checks, savepoints or channels: the raw-SQLite baseline it compares with.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OpenFlags, OptionalExtension, Row,
    TransactionBehavior,
};
use tokio::sync::{oneshot, watch, Semaphore};
use uuid::Uuid;

use super::memory::{check_append_with, check_request, StreamIds};
use super::{
    catchup, AppendResult, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom,
    RecordedEvent, StoreError, StreamFilter, StreamMetadata, Subscription,
};

/// The most write requests (appends, metadata changes) one group commit takes.
pub const MAX_GROUP_COMMIT_APPENDS: usize = 256;

/// The group stops draining the queue once its requests hold this many
/// events; a single larger append is still committed, alone.
pub const MAX_GROUP_COMMIT_EVENTS: usize = 8192;

/// The most read connections open at once; more concurrent reads wait.
pub const MAX_READ_CONNECTIONS: usize = 4;

/// How long a connection waits for a lock held by another connection before
/// the call fails with [`StoreError::Unavailable`].
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// How many prepared statements each connection keeps.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Marks a SQLite file as a prjmanager event store (`PRAGMA application_id`,
/// the ASCII bytes "PMES").
pub const APPLICATION_ID: i32 = 0x504D_4553;

/// The schema version this build reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = 1;

/// The settings every connection of the store runs with: WAL, and an fsync at
/// every commit so that an acknowledged append survives power loss.
pub const CONNECTION_PRAGMAS: &str = "PRAGMA journal_mode = WAL;\n\
     PRAGMA synchronous = FULL;\n";

/// The tables of schema version [`SCHEMA_VERSION`].
///
/// `streams.last_revision` is NULL for a stream that only has metadata.
/// `max_count` and `truncate_before` hold the bits of a `u64` (SQLite
/// integers are signed) and are never compared in SQL.
pub const SCHEMA_SQL: &str = "\
CREATE TABLE streams (
    stream_id INTEGER PRIMARY KEY,
    name BLOB NOT NULL UNIQUE,
    last_revision INTEGER,
    max_count INTEGER,
    truncate_before INTEGER
) STRICT;
CREATE TABLE events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id INTEGER NOT NULL REFERENCES streams (stream_id),
    revision INTEGER NOT NULL,
    event_id BLOB NOT NULL,
    event_type TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata BLOB NOT NULL,
    UNIQUE (stream_id, revision),
    UNIQUE (stream_id, event_id)
) STRICT;
";

/// Finds a stream's row: `stream_id, last_revision, max_count, truncate_before`.
pub const FIND_STREAM_SQL: &str = "SELECT stream_id, last_revision, max_count, truncate_before \
     FROM streams WHERE name = ?1";
/// Creates a stream's row (`?1` name).
pub const INSERT_STREAM_SQL: &str = "INSERT INTO streams (name) VALUES (?1)";
/// Sets a stream's last revision (`?1` stream id, `?2` revision).
pub const SET_LAST_REVISION_SQL: &str =
    "UPDATE streams SET last_revision = ?2 WHERE stream_id = ?1";
/// Inserts one event (`?1` stream id, `?2` revision, `?3` id, `?4` type,
/// `?5` data, `?6` metadata).
pub const INSERT_EVENT_SQL: &str = "INSERT INTO events \
     (stream_id, revision, event_id, event_type, data, metadata) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const REVISION_OF_ID_SQL: &str =
    "SELECT revision FROM events WHERE stream_id = ?1 AND event_id = ?2";
const IDS_BETWEEN_SQL: &str = "SELECT revision, event_id FROM events \
     WHERE stream_id = ?1 AND revision BETWEEN ?2 AND ?3";
const POSITION_OF_REVISION_SQL: &str =
    "SELECT position FROM events WHERE stream_id = ?1 AND revision = ?2";
const READ_FORWARDS_SQL: &str =
    "SELECT position, revision, event_id, event_type, data, metadata FROM events \
     WHERE stream_id = ?1 AND revision BETWEEN ?2 AND ?3 ORDER BY revision ASC LIMIT ?4";
const READ_BACKWARDS_SQL: &str =
    "SELECT position, revision, event_id, event_type, data, metadata FROM events \
     WHERE stream_id = ?1 AND revision BETWEEN ?2 AND ?3 ORDER BY revision DESC LIMIT ?4";
const SET_METADATA_SQL: &str = "INSERT INTO streams (name, max_count, truncate_before) \
     VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE \
     SET max_count = excluded.max_count, truncate_before = excluded.truncate_before";
const HEAD_POSITION_SQL: &str =
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)";

/// The event store on one SQLite file; clones share the writer and the
/// read connections.
#[derive(Clone)]
pub struct EmbeddedStore {
    writer: WriterLink,
    readers: Arc<ReadPool>,
    head: watch::Receiver<u64>,
    counters: Arc<WriterCounters>,
}

/// What the writer thread has done since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (one fsync each).
    pub group_commits: u64,
    /// Write requests answered by those commits, failed ones included.
    pub writes: u64,
}

/// The writer's counters, shared with the handles.
#[derive(Debug, Default)]
struct WriterCounters {
    group_commits: AtomicU64,
    writes: AtomicU64,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.readers.path)
            .field("head_position", &*self.head.borrow())
            .finish_non_exhaustive()
    }
}

/// How a handle reaches the writer. Subscription tasks hold a weak link so
/// that they do not keep the writer running after the last user handle is
/// dropped (the writer's exit is what ends them).
#[derive(Clone)]
enum WriterLink {
    Owner(Arc<Writer>),
    Observer(Weak<Writer>),
}

impl WriterLink {
    fn get(&self) -> Option<Arc<Writer>> {
        match self {
            Self::Owner(writer) => Some(Arc::clone(writer)),
            Self::Observer(writer) => writer.upgrade(),
        }
    }

    fn downgrade(&self) -> Self {
        match self {
            Self::Owner(writer) => Self::Observer(Arc::downgrade(writer)),
            Self::Observer(writer) => Self::Observer(Weak::clone(writer)),
        }
    }
}

/// The queue to the writer thread and the thread itself.
struct Writer {
    requests: std_mpsc::Sender<Request>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Writer {
    /// Lets the writer finish what is queued and waits for it, so that the
    /// file is closed once the last handle is gone (a reopen in the same
    /// process then finds every acknowledged append).
    fn drop(&mut self) {
        let (ack, _) = oneshot::channel();
        let _ = self.requests.send(Request::Close(ack));
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("the embedded store's writer thread panicked");
            }
        }
    }
}

/// A message to the writer thread.
enum Request {
    Write(Write),
    Close(oneshot::Sender<()>),
}

/// One write and the channel its caller waits on.
struct Write {
    op: WriteOp,
    reply: Reply,
}

/// What a write does.
enum WriteOp {
    Append {
        stream: String,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    },
    SetMetadata {
        stream: String,
        metadata: StreamMetadata,
    },
    Scavenge,
}

impl WriteOp {
    fn event_count(&self) -> usize {
        match self {
            Self::Append { events, .. } => events.len(),
            Self::SetMetadata { .. } | Self::Scavenge => 0,
        }
    }
}

/// Where the answer to a write goes, typed by the kind of write.
enum Reply {
    Append(oneshot::Sender<Result<AppendResult, StoreError>>),
    SetMetadata(oneshot::Sender<Result<(), StoreError>>),
    Scavenge(oneshot::Sender<Result<u64, StoreError>>),
}

/// What a successful write did.
#[derive(Debug)]
enum Written {
    Appended(AppendResult),
    MetadataSet,
    Scavenged(u64),
}

impl Reply {
    /// Answers the caller; a caller that stopped waiting is not an error.
    fn send(self, outcome: Result<Written, StoreError>) {
        match (self, outcome) {
            (Self::Append(reply), Ok(Written::Appended(result))) => {
                let _ = reply.send(Ok(result));
            }
            (Self::Append(reply), Err(err)) => {
                let _ = reply.send(Err(err));
            }
            (Self::SetMetadata(reply), Ok(Written::MetadataSet)) => {
                let _ = reply.send(Ok(()));
            }
            (Self::SetMetadata(reply), Err(err)) => {
                let _ = reply.send(Err(err));
            }
            (Self::Scavenge(reply), Ok(Written::Scavenged(deleted))) => {
                let _ = reply.send(Ok(deleted));
            }
            (Self::Scavenge(reply), Err(err)) => {
                let _ = reply.send(Err(err));
            }
            (_, Ok(written)) => unreachable!("{written:?} answers a write of another kind"),
        }
    }
}

/// The read connections: a semaphore bounds how many exist, idle ones wait
/// in `idle`.
struct ReadPool {
    path: PathBuf,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// Runs `read` in one read transaction on an idle or new connection.
    fn with_snapshot<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = lock(&self.idle).pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => open_reader(&self.path)?,
        };
        let result = connection
            .transaction()
            .map_err(store_error)
            .and_then(|snapshot| {
                let value = read(&snapshot)?;
                snapshot.commit().map_err(store_error)?;
                Ok(value)
            });
        if !self.permits.is_closed() {
            lock(&self.idle).push(connection);
        }
        result
    }

    fn close(&self) {
        self.permits.close();
        lock(&self.idle).clear();
    }
}

impl EmbeddedStore {
    /// Opens (creating it and its folder if needed) the store file at `path`.
    ///
    /// Fails with [`StoreError::InvalidArgument`] when the file is not a
    /// prjmanager store of schema version [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let connection = open_writer_connection(path)?;
        let head = connection
            .query_row(HEAD_POSITION_SQL, [], |row| row.get::<_, i64>(0))
            .map_err(store_error)
            .and_then(|head| to_u64(head, "head position"))?;
        // Readers open the file later, maybe after the working directory
        // changed, so they get its absolute path.
        let path = std::fs::canonicalize(path).map_err(|err| {
            StoreError::Unavailable(format!("cannot resolve {}: {err}", path.display()))
        })?;
        let readers = ReadPool {
            idle: Mutex::new(vec![open_reader(&path)?]),
            path,
            permits: Arc::new(Semaphore::new(MAX_READ_CONNECTIONS)),
        };
        let (requests, queue) = std_mpsc::channel();
        let (head_sender, head) = watch::channel(head);
        let counters = Arc::new(WriterCounters::default());
        let writer_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("prjmanager-store-writer".into())
            .spawn(move || run_writer(connection, queue, head_sender, &writer_counters))
            .map_err(|err| {
                StoreError::Unavailable(format!("cannot start the store's writer thread: {err}"))
            })?;
        Ok(Self {
            writer: WriterLink::Owner(Arc::new(Writer {
                requests,
                thread: Mutex::new(Some(thread)),
            })),
            readers: Arc::new(readers),
            head,
            counters,
        })
    }

    /// How many group commits and writes the writer has done: the benchmark
    /// reports writes per commit, the fsyncs group commit saves.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            group_commits: self.counters.group_commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.readers.path
    }

    /// Finishes the appends queued so far, stops the writer thread and closes
    /// every connection; afterwards every call of every clone fails with
    /// [`StoreError::Closed`]. Closing twice is harmless.
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Some(writer) = self.writer.get() {
            let (ack, acked) = oneshot::channel();
            if writer.requests.send(Request::Close(ack)).is_ok() {
                let _ = acked.await;
            }
            let thread = lock(&writer.thread).take();
            if let Some(thread) = thread {
                let joined = tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_err(|err| {
                        StoreError::Unavailable(format!("cannot join the writer thread: {err}"))
                    })?;
                if let Err(panic) = joined {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        self.readers.close();
        Ok(())
    }

    /// Deletes the rows that stream metadata hides from `read_stream`, and
    /// returns how many. Afterwards `read_all` no longer returns them, their
    /// ids no longer make a re-append idempotent, and relaxing the metadata
    /// does not bring them back.
    pub async fn scavenge(&self) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(WriteOp::Scavenge, Reply::Scavenge(reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn send(&self, op: WriteOp, reply: Reply) -> Result<(), StoreError> {
        let writer = self.writer.get().ok_or(StoreError::Closed)?;
        writer
            .requests
            .send(Request::Write(Write { op, reply }))
            .map_err(|_| StoreError::Closed)
    }

    /// A handle for subscription tasks: it reads, but does not keep the
    /// writer alive.
    fn observer(&self) -> Self {
        Self {
            writer: self.writer.downgrade(),
            readers: Arc::clone(&self.readers),
            head: self.head.clone(),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Runs a blocking read on a read connection.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = Arc::clone(&self.readers);
        let task = tokio::task::spawn_blocking(move || {
            let result = readers.with_snapshot(read);
            drop(permit);
            result
        });
        match task.await {
            Ok(result) => result,
            Err(err) => match err.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(err) => Err(StoreError::Unavailable(format!(
                    "the read task was cancelled: {err}"
                ))),
            },
        }
    }
}

impl EventStore for EmbeddedStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        check_request(stream, &events)?;
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::Append {
            stream: stream.to_string(),
            expected,
            events,
        };
        self.send(op, Reply::Append(reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.to_string();
        self.read(move |connection| read_stream_in(connection, &stream, from, direction, max))
            .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &StreamFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let filter = filter.clone();
        self.read(move |connection| read_all_in(connection, from_position, max, &filter))
            .await
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        let stream = stream.to_string();
        self.read(move |connection| {
            Ok(find_stream(connection, &stream)?.and_then(|row| row.last_revision))
        })
        .await
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::SetMetadata {
            stream: stream.to_string(),
            metadata,
        };
        self.send(op, Reply::SetMetadata(reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError> {
        let stream = stream.to_string();
        self.read(move |connection| {
            Ok(find_stream(connection, &stream)?
                .map(|row| row.metadata)
                .unwrap_or_default())
        })
        .await
    }

    fn head_position(&self) -> Option<u64> {
        Some(*self.head.borrow())
    }

    fn subscribe_all(&self, from_position: u64, filter: StreamFilter) -> Subscription {
        catchup::subscribe_all(self.observer(), self.head.clone(), from_position, filter)
    }

    fn subscribe_stream(&self, stream: &str, from_revision: u64) -> Subscription {
        catchup::subscribe_stream(
            self.observer(),
            self.head.clone(),
            stream.to_string(),
            from_revision,
        )
    }
}

/// The writer thread: group commits until the store is closed or every
/// handle is gone.
fn run_writer(
    mut connection: Connection,
    requests: std_mpsc::Receiver<Request>,
    head: watch::Sender<u64>,
    counters: &WriterCounters,
) {
    let mut head_position = *head.borrow();
    while let Ok(first) = requests.recv() {
        let mut group = Vec::new();
        let mut group_events = 0;
        let mut close = None;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Close(ack) => {
                    close = Some(ack);
                    break;
                }
                Request::Write(write) => {
                    group_events += write.op.event_count();
                    group.push(write);
                }
            }
            if group.len() < MAX_GROUP_COMMIT_APPENDS && group_events < MAX_GROUP_COMMIT_EVENTS {
                next = requests.try_recv().ok();
            }
        }
        if !group.is_empty() {
            let writes = group.len() as u64;
            let committed = commit_group(&mut connection, group);
            if committed.is_ok() {
                counters.group_commits.fetch_add(1, Ordering::Relaxed);
                counters.writes.fetch_add(writes, Ordering::Relaxed);
            }
            if let Ok(Some(position)) = committed {
                if position > head_position {
                    head_position = position;
                    head.send_replace(position);
                }
            }
        }
        if let Some(ack) = close {
            // Requests queued after the close are dropped with the queue,
            // so their callers see `Closed`; the connection is closed before
            // `close()` returns so that a reopen starts from a quiet file.
            drop(requests);
            drop(connection);
            drop(head);
            let _ = ack.send(());
            return;
        }
    }
}

/// Runs a group of writes in one transaction and answers each caller once
/// the group is durable (or failed). Returns the newest position written,
/// or `Err` when nothing of the group was written.
fn commit_group(connection: &mut Connection, group: Vec<Write>) -> Result<Option<u64>, ()> {
    let transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(err) => {
            let err = store_error(err);
            for write in group {
                write.reply.send(Err(err.clone()));
            }
            return Err(());
        }
    };
    let mut outcomes = Vec::with_capacity(group.len());
    let mut writes = group.into_iter();
    let mut broken = None;
    // The rows of the streams appended to in this transaction, which holds
    // the write lock: no one else can move them meanwhile. (Were one stale,
    // the UNIQUE (stream_id, revision) index would refuse the insert and
    // the append would be checked in full.)
    let mut heads = HashMap::new();
    for write in writes.by_ref() {
        match apply_write(&transaction, &write.op, &mut heads) {
            Ok(outcome) => outcomes.push((write.reply, outcome)),
            Err(err) => {
                outcomes.push((write.reply, Err(err.clone())));
                broken = Some(err);
                break;
            }
        }
    }
    // A failed savepoint command leaves the transaction in an unknown state,
    // and SQLite rolls the whole transaction back on its own after some
    // errors (I/O, disk full): in both cases nothing of the group may count
    // as written.
    let committed = match broken {
        Some(err) => Err(err),
        None if transaction.is_autocommit() => Err(StoreError::Unavailable(
            "SQLite rolled the group commit back".into(),
        )),
        None => transaction.commit().map_err(store_error),
    };
    match committed {
        Ok(()) => {
            let mut newest = None;
            for (reply, outcome) in outcomes {
                if let Ok(Written::Appended(result)) = &outcome {
                    newest = newest.max(Some(result.position));
                }
                reply.send(outcome);
            }
            Ok(newest)
        }
        Err(err) => {
            // Damage stays `Corrupt` so that callers stop retrying; anything
            // else about a lost group is worth a retry.
            let message = format!("the group commit failed and nothing of it was written: {err}");
            let err = match err {
                StoreError::Corrupt(_) => StoreError::Corrupt(message),
                _ => StoreError::Unavailable(message),
            };
            for (reply, _) in outcomes {
                reply.send(Err(err.clone()));
            }
            for write in writes {
                write.reply.send(Err(err.clone()));
            }
            Err(())
        }
    }
}

/// Applies one write of a group: the Notifier's append straight away
/// ([`append_direct`]), any other write under a savepoint. The outer error
/// means the transaction itself can no longer be trusted; the inner one is
/// the write's own failure, already rolled back.
///
/// The savepoint commands are cached statements rather than rusqlite's
/// `Savepoint`, which parses them anew for every write of every group.
fn apply_write(
    connection: &Connection,
    op: &WriteOp,
    heads: &mut StreamHeads,
) -> Result<Result<Written, StoreError>, StoreError> {
    if let WriteOp::Append {
        stream,
        expected,
        events,
    } = op
    {
        match append_direct(connection, stream, *expected, events, heads) {
            Ok(Some(result)) => return Ok(Ok(Written::Appended(result))),
            Ok(None) => {}
            // Only reads failed: nothing was written.
            Err(Failed::Read(err)) => return Ok(Err(err)),
            Err(Failed::Write(err)) => return Err(err),
        }
    }
    // The write below may move any stream's row.
    heads.clear();
    let run = |sql: &str| {
        connection
            .prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map_err(store_error)
    };
    run("SAVEPOINT write")?;
    match apply(connection, op) {
        Ok(written) => {
            run("RELEASE write")?;
            Ok(Ok(written))
        }
        Err(err) => {
            run("ROLLBACK TO write")?;
            run("RELEASE write")?;
            Ok(Err(err))
        }
    }
}

/// Applies a write; an append is checked in full ([`append_checked`]).
fn apply(connection: &Connection, op: &WriteOp) -> Result<Written, StoreError> {
    match op {
        WriteOp::Append {
            stream,
            expected,
            events,
        } => append_checked(connection, stream, *expected, events).map(Written::Appended),
        WriteOp::SetMetadata { stream, metadata } => {
            connection
                .prepare_cached(SET_METADATA_SQL)
                .and_then(|mut statement| {
                    statement.execute(params![
                        stream.as_bytes(),
                        metadata.max_count.map(u64_bits),
                        metadata.truncate_before.map(u64_bits),
                    ])
                })
                .map_err(store_error)?;
            Ok(Written::MetadataSet)
        }
        WriteOp::Scavenge => scavenge_in(connection).map(Written::Scavenged),
    }
}

/// A stream's row in `streams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamRow {
    stream_id: i64,
    last_revision: Option<u64>,
    metadata: StreamMetadata,
}

fn find_stream(connection: &Connection, stream: &str) -> Result<Option<StreamRow>, StoreError> {
    let row = connection
        .prepare_cached(FIND_STREAM_SQL)
        .and_then(|mut statement| {
            statement
                .query_row([stream.as_bytes()], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Option<i64>>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                    ))
                })
                .optional()
        })
        .map_err(store_error)?;
    let Some((stream_id, last_revision, max_count, truncate_before)) = row else {
        return Ok(None);
    };
    Ok(Some(StreamRow {
        stream_id,
        last_revision: last_revision
            .map(|r| to_u64(r, "last revision"))
            .transpose()?,
        metadata: StreamMetadata {
            max_count: max_count.map(bits_u64),
            truncate_before: truncate_before.map(bits_u64),
        },
    }))
}

/// The ids of a stream that the append check asks about, fetched with
/// indexed lookups: the revision of each id of the batch and the ids at the
/// revisions the batch would occupy if it were a retry.
#[derive(Debug, Default)]
struct StoredIds {
    last_revision: Option<u64>,
    revisions: HashMap<Uuid, u64>,
    window: HashMap<u64, Uuid>,
}

impl StoredIds {
    fn load(
        connection: &Connection,
        row: Option<StreamRow>,
        batch: &[NewEvent],
    ) -> Result<Self, StoreError> {
        let mut ids = Self {
            last_revision: row.and_then(|row| row.last_revision),
            ..Self::default()
        };
        let Some(row) = row.filter(|row| row.last_revision.is_some()) else {
            return Ok(ids);
        };
        let mut by_id = connection
            .prepare_cached(REVISION_OF_ID_SQL)
            .map_err(store_error)?;
        for event in batch {
            let revision = by_id
                .query_row(params![row.stream_id, event.id.as_bytes()], |row| {
                    row.get::<_, i64>(0)
                })
                .optional()
                .map_err(store_error)?;
            if let Some(revision) = revision {
                ids.revisions
                    .insert(event.id, to_u64(revision, "revision")?);
            }
        }
        let start = batch
            .first()
            .and_then(|event| ids.revisions.get(&event.id))
            .copied();
        if let Some(start) = start {
            let end = start.saturating_add(batch.len() as u64 - 1);
            let mut window = connection
                .prepare_cached(IDS_BETWEEN_SQL)
                .map_err(store_error)?;
            let rows = window
                .query_map(params![row.stream_id, to_i64(start), to_i64(end)], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .map_err(store_error)?;
            for found in rows {
                let (revision, id) = found.map_err(store_error)?;
                ids.window
                    .insert(to_u64(revision, "revision")?, to_uuid(&id)?);
            }
        }
        Ok(ids)
    }
}

impl StreamIds for StoredIds {
    fn last_revision(&self) -> Option<u64> {
        self.last_revision
    }

    fn revision_of(&self, id: &Uuid) -> Option<u64> {
        self.revisions.get(id).copied()
    }

    fn id_at(&self, revision: u64) -> Option<Uuid> {
        self.window.get(&revision).copied()
    }
}

/// Stream rows by name, as read or last written in the current transaction.
type StreamHeads = HashMap<String, StreamRow>;

/// How [`append_direct`] failed.
enum Failed {
    /// Before anything was written: the append alone fails.
    Read(StoreError),
    /// After its row was inserted: the transaction can no longer be trusted.
    Write(StoreError),
}

/// The Notifier's append, outside any savepoint: one event whose expected
/// revision holds on an existing stream is inserted straight away. The
/// UNIQUE (stream_id, event_id) index finds an id already in the stream,
/// the only case where the full check can decide otherwise (a retry, or a
/// duplicate); SQLite undoes a failed INSERT statement on its own, so the
/// check then starts from the same rows. Anything else is left to
/// [`append_checked`], under a savepoint (`None`: nothing was written).
fn append_direct(
    connection: &Connection,
    stream: &str,
    expected: ExpectedRevision,
    events: &[NewEvent],
    heads: &mut StreamHeads,
) -> Result<Option<AppendResult>, Failed> {
    let row = match heads.get(stream) {
        Some(row) => Some(*row),
        None => find_stream(connection, stream).map_err(Failed::Read)?,
    };
    if let (
        [_],
        Some(
            head @ StreamRow {
                stream_id,
                last_revision: last @ Some(_),
                ..
            },
        ),
    ) = (events, row)
    {
        if expected.holds(last) {
            let first_revision = last.map_or(0, |l| l + 1);
            match insert_rows(connection, stream_id, first_revision, events) {
                Ok(()) => {
                    let result = finish_append(connection, stream_id, first_revision, events)
                        .map_err(Failed::Write)?;
                    let head = StreamRow {
                        last_revision: Some(result.next_revision),
                        ..head
                    };
                    heads.insert(stream.to_string(), head);
                    return Ok(Some(result));
                }
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation => {}
                Err(other) => return Err(Failed::Write(store_error(other))),
            }
        }
    }
    Ok(None)
}

/// An append checked in full against the stream's stored ids.
fn append_checked(
    connection: &Connection,
    stream: &str,
    expected: ExpectedRevision,
    events: &[NewEvent],
) -> Result<AppendResult, StoreError> {
    let row = find_stream(connection, stream)?;
    let ids = StoredIds::load(connection, row, events)?;
    let batch_len = events.len() as u64;
    if let Some(start) = check_append_with(stream, expected, &ids, events)? {
        // A retry's ids were found in the stream, so its row exists.
        let stream_id = row
            .map(|row| row.stream_id)
            .expect("a retried stream has a row");
        let next_revision = start + batch_len - 1;
        let position = connection
            .prepare_cached(POSITION_OF_REVISION_SQL)
            .and_then(|mut statement| {
                statement.query_row(params![stream_id, to_i64(next_revision)], |row| {
                    row.get::<_, i64>(0)
                })
            })
            .map_err(store_error)?;
        return Ok(AppendResult {
            next_revision,
            position: to_u64(position, "position")?,
        });
    }
    let stream_id = match row {
        Some(row) => row.stream_id,
        None => {
            connection
                .prepare_cached(INSERT_STREAM_SQL)
                .and_then(|mut statement| statement.execute([stream.as_bytes()]))
                .map_err(store_error)?;
            connection.last_insert_rowid()
        }
    };
    let first_revision = ids.last_revision.map_or(0, |last| last + 1);
    insert_rows(connection, stream_id, first_revision, events).map_err(store_error)?;
    finish_append(connection, stream_id, first_revision, events)
}

/// Inserts the rows of `events` from `first_revision` on (checked by the
/// caller).
fn insert_rows(
    connection: &Connection,
    stream_id: i64,
    first_revision: u64,
    events: &[NewEvent],
) -> rusqlite::Result<()> {
    let mut insert = connection.prepare_cached(INSERT_EVENT_SQL)?;
    for (event, revision) in events.iter().zip(first_revision..) {
        insert.execute(params![
            stream_id,
            to_i64(revision),
            event.id.as_bytes(),
            event.event_type,
            event.data,
            event.metadata,
        ])?;
    }
    Ok(())
}

/// After [`insert_rows`]: moves the stream's last revision and gives the
/// append's result.
fn finish_append(
    connection: &Connection,
    stream_id: i64,
    first_revision: u64,
    events: &[NewEvent],
) -> Result<AppendResult, StoreError> {
    let position = to_u64(connection.last_insert_rowid(), "position")?;
    let next_revision = first_revision + events.len() as u64 - 1;
    connection
        .prepare_cached(SET_LAST_REVISION_SQL)
        .and_then(|mut statement| statement.execute(params![stream_id, to_i64(next_revision)]))
        .map_err(store_error)?;
    Ok(AppendResult {
        next_revision,
        position,
    })
}

fn scavenge_in(connection: &Connection) -> Result<u64, StoreError> {
    let mut streams = connection
        .prepare_cached(
            "SELECT stream_id, last_revision, max_count, truncate_before FROM streams \
             WHERE last_revision IS NOT NULL \
             AND (max_count IS NOT NULL OR truncate_before IS NOT NULL)",
        )
        .map_err(store_error)?;
    let rows = streams
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        })
        .map_err(store_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_error)?;
    let mut delete = connection
        .prepare_cached("DELETE FROM events WHERE stream_id = ?1 AND revision < ?2")
        .map_err(store_error)?;
    let mut deleted = 0;
    for (stream_id, last, max_count, truncate_before) in rows {
        let metadata = StreamMetadata {
            max_count: max_count.map(bits_u64),
            truncate_before: truncate_before.map(bits_u64),
        };
        let first_visible = metadata.first_visible(to_u64(last, "last revision")?);
        deleted += delete
            .execute(params![stream_id, to_i64(first_visible)])
            .map_err(store_error)? as u64;
    }
    Ok(deleted)
}

/// An events row as SQLite returns it, before its values are checked.
struct EventRow {
    position: i64,
    revision: i64,
    id: Vec<u8>,
    event_type: String,
    data: Vec<u8>,
    metadata: Vec<u8>,
}

impl EventRow {
    /// Reads the columns `position, revision, event_id, event_type, data,
    /// metadata` starting at `first`.
    fn from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            position: row.get(first)?,
            revision: row.get(first + 1)?,
            id: row.get(first + 2)?,
            event_type: row.get(first + 3)?,
            data: row.get(first + 4)?,
            metadata: row.get(first + 5)?,
        })
    }

    fn into_event(self, stream: String) -> Result<RecordedEvent, StoreError> {
        Ok(RecordedEvent {
            stream,
            revision: to_u64(self.revision, "revision")?,
            position: to_u64(self.position, "position")?,
            id: to_uuid(&self.id)?,
            event_type: self.event_type,
            data: self.data,
            metadata: self.metadata,
        })
    }
}

fn read_stream_in(
    connection: &Connection,
    stream: &str,
    from: ReadFrom,
    direction: Direction,
    max: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let Some(row) = find_stream(connection, stream)? else {
        return Ok(Vec::new());
    };
    let Some(last) = row.last_revision else {
        return Ok(Vec::new());
    };
    let first = row.metadata.first_visible(last);
    let start = match from {
        ReadFrom::Start => first,
        ReadFrom::End => last,
        ReadFrom::Revision(revision) => revision,
    };
    let (low, high, sql) = match direction {
        Direction::Forwards => (start.max(first), last, READ_FORWARDS_SQL),
        Direction::Backwards if start < first => return Ok(Vec::new()),
        Direction::Backwards => (first, start.min(last), READ_BACKWARDS_SQL),
    };
    if max == 0 || low > high {
        return Ok(Vec::new());
    }
    let mut statement = connection.prepare_cached(sql).map_err(store_error)?;
    let rows = statement
        .query_map(
            params![row.stream_id, to_i64(low), to_i64(high), to_i64(max as u64)],
            |row| EventRow::from_row(row, 0),
        )
        .map_err(store_error)?;
    rows.map(|found| found.map_err(store_error)?.into_event(stream.to_string()))
        .collect()
}

fn read_all_in(
    connection: &Connection,
    from_position: u64,
    max: usize,
    filter: &StreamFilter,
) -> Result<Vec<RecordedEvent>, StoreError> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let (sql, values) = read_all_query(from_position, max, filter);
    let mut statement = connection.prepare_cached(&sql).map_err(store_error)?;
    let rows = statement
        .query_map(params_from_iter(values), |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, EventRow::from_row(row, 1)?))
        })
        .map_err(store_error)?;
    rows.map(|found| {
        let (name, event) = found.map_err(store_error)?;
        let stream = String::from_utf8(name)
            .map_err(|err| StoreError::Corrupt(format!("a stream name is not UTF-8: {err}")))?;
        event.into_event(stream)
    })
    .collect()
}

/// The SQL of a `read_all` page and its parameters.
fn read_all_query(from_position: u64, max: usize, filter: &StreamFilter) -> (String, Vec<Value>) {
    // CROSS JOIN keeps `events` as the outer loop, so SQLite walks positions
    // in order and stops after `max` matches instead of sorting.
    let mut sql = String::from(
        "SELECT s.name, e.position, e.revision, e.event_id, e.event_type, e.data, e.metadata \
         FROM events AS e CROSS JOIN streams AS s \
         WHERE e.position >= ?1 AND s.stream_id = e.stream_id",
    );
    let mut values = vec![
        Value::Integer(to_i64(from_position)),
        Value::Integer(to_i64(max as u64)),
    ];
    let everything = filter.prefixes.is_empty() || filter.prefixes.iter().any(String::is_empty);
    if !everything {
        sql.push_str(" AND (");
        for (i, prefix) in filter.prefixes.iter().enumerate() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            let length = values.len() + 1;
            let _ = write!(sql, "substr(s.name, 1, ?{length}) = ?{}", length + 1);
            values.push(Value::Integer(prefix.len() as i64));
            values.push(Value::Blob(prefix.as_bytes().to_vec()));
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY e.position LIMIT ?2");
    (sql, values)
}

/// Opens the writing connection: checks the file's identity before writing
/// anything to it, applies [`CONNECTION_PRAGMAS`] and creates the schema in
/// an empty file.
pub fn open_writer_connection(path: &Path) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|err| {
            StoreError::Unavailable(format!("cannot create folder {}: {err}", parent.display()))
        })?;
    }
    let mut connection = Connection::open(path).map_err(|err| at_path(path, err))?;
    connection
        .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .map_err(|err| at_path(path, err))?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    let empty = check_identity(&connection, path)?;
    connection
        .execute_batch(CONNECTION_PRAGMAS)
        .map_err(|err| at_path(path, err))?;
    let journal_mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(|err| at_path(path, err))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{}: SQLite refused WAL mode (journal mode is {journal_mode:?})",
            path.display()
        )));
    }
    if empty {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| at_path(path, err))?;
        // Another process may have created the schema since the check.
        let objects: i64 = transaction
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
            .map_err(|err| at_path(path, err))?;
        if objects == 0 {
            transaction
                .execute_batch(SCHEMA_SQL)
                .and_then(|()| {
                    transaction.execute_batch(&format!(
                        "PRAGMA application_id = {APPLICATION_ID};\n\
                         PRAGMA user_version = {SCHEMA_VERSION};"
                    ))
                })
                .map_err(|err| at_path(path, err))?;
        }
        transaction.commit().map_err(|err| at_path(path, err))?;
        check_identity(&connection, path)?;
    }
    Ok(connection)
}

/// Whether the file is empty (true) or a store of this schema (false);
/// anything else is an error naming what the file is.
fn check_identity(connection: &Connection, path: &Path) -> Result<bool, StoreError> {
    let not_a_store = |what: String| {
        StoreError::InvalidArgument(format!(
            "{} is not a prjmanager event store: {what}",
            path.display()
        ))
    };
    let application_id: i32 = connection
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(|err| match err.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => not_a_store(format!("not a SQLite database ({err})")),
            _ => at_path(path, err),
        })?;
    let version: i32 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|err| at_path(path, err))?;
    let objects: i64 = connection
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(|err| at_path(path, err))?;
    if application_id == 0 && version == 0 && objects == 0 {
        return Ok(true);
    }
    if application_id != APPLICATION_ID {
        return Err(not_a_store(format!(
            "a SQLite database with application_id {application_id:#x}, \
             where a store has {APPLICATION_ID:#x}"
        )));
    }
    if version != SCHEMA_VERSION {
        return Err(StoreError::InvalidArgument(format!(
            "{} is a prjmanager event store of schema version {version}, \
             but this build reads only schema version {SCHEMA_VERSION}",
            path.display()
        )));
    }
    Ok(false)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| at_path(path, err))?;
    connection
        .busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
        .and_then(|()| {
            connection.execute_batch(&format!(
                "PRAGMA query_only = ON;\nPRAGMA mmap_size = {READER_MMAP_BYTES};"
            ))
        })
        .map_err(|err| at_path(path, err))?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(connection)
}

/// How much of the file a reader maps into memory (`PRAGMA mmap_size`;
/// SQLite caps it at its compile-time maximum): pages are then read from the
/// OS page cache without a `pread` system call each. A rebuild reads up to
/// thousands of events scattered over as many pages; with `pread` the
/// reads were ~15 % of `pm-bench replay`. The writer keeps ordinary I/O.
const READER_MMAP_BYTES: u64 = 1 << 30;

/// Maps a SQLite failure: busy, locked, I/O and resource failures may pass
/// (`Unavailable`); damaged or undecodable data will not (`Corrupt`).
fn store_error(err: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match &err {
        E::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseCorrupt
            | ErrorCode::NotADatabase
            | ErrorCode::ConstraintViolation
            | ErrorCode::TypeMismatch => StoreError::Corrupt(format!("SQLite: {err}")),
            ErrorCode::TooBig => StoreError::InvalidArgument(format!("SQLite: {err}")),
            _ => StoreError::Unavailable(format!("SQLite: {err}")),
        },
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => StoreError::Corrupt(format!("undecodable row: {err}")),
        _ => StoreError::Unavailable(format!("SQLite: {err}")),
    }
}

/// [`store_error`] with the file's path in the message.
fn at_path(path: &Path, err: rusqlite::Error) -> StoreError {
    match store_error(err) {
        StoreError::Unavailable(message) => {
            StoreError::Unavailable(format!("{}: {message}", path.display()))
        }
        StoreError::Corrupt(message) => {
            StoreError::Corrupt(format!("{}: {message}", path.display()))
        }
        other => other,
    }
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what} {value}")))
}

/// A query bound: SQLite integers are signed, and no revision or position
/// of a real store reaches 2⁶³, so larger bounds mean "everything".
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Stores a `u64` that SQL never compares in a signed column, bit for bit.
fn u64_bits(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// The inverse of [`u64_bits`].
fn bits_u64(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

fn to_uuid(bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes)
        .map_err(|err| StoreError::Corrupt(format!("an event id is not 16 bytes: {err}")))
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (a list of idle connections, a thread handle).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, Connection) {
        let folder = tempfile::TempDir::new().unwrap();
        let connection = open_writer_connection(&folder.path().join("store.db")).unwrap();
        (folder, connection)
    }

    fn event(n: u128) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(n),
            event_type: "Tested".into(),
            data: vec![n as u8],
            metadata: Vec::new(),
        }
    }

    type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

    fn append(
        stream: &str,
        expected: ExpectedRevision,
        ids: &[u128],
    ) -> (Write, Answer<AppendResult>) {
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::Append {
            stream: stream.into(),
            expected,
            events: ids.iter().copied().map(event).collect(),
        };
        (
            Write {
                op,
                reply: Reply::Append(reply),
            },
            answer,
        )
    }

    fn count_events(connection: &Connection) -> i64 {
        connection
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
            .unwrap()
    }

    /// One group mixing writes that pass and writes that fail: each failure
    /// is rolled back alone and answered with its own error, later writes
    /// see the earlier ones, and one commit writes the rest.
    #[test]
    fn a_group_isolates_each_write() {
        let (_folder, mut connection) = fresh();
        let (created, created_answer) = append("s", ExpectedRevision::NoStream, &[1, 2]);
        let (late, late_answer) = append("s", ExpectedRevision::NoStream, &[3]);
        // Refused by the check before anything of it is written.
        let (reused, reused_answer) = append("s", ExpectedRevision::Exact(1), &[4, 1]);
        let (retry, retry_answer) = append("s", ExpectedRevision::NoStream, &[1, 2]);
        let (next, next_answer) = append("s", ExpectedRevision::Exact(1), &[4]);
        let (other, other_answer) = append("t", ExpectedRevision::Any, &[4]);
        let (metadata_reply, metadata_answer) = oneshot::channel();
        let metadata = Write {
            op: WriteOp::SetMetadata {
                stream: "s".into(),
                metadata: StreamMetadata {
                    max_count: Some(u64::MAX),
                    truncate_before: Some(1),
                },
            },
            reply: Reply::SetMetadata(metadata_reply),
        };
        let group = vec![created, late, reused, retry, next, other, metadata];
        assert_eq!(commit_group(&mut connection, group), Ok(Some(4)));

        let first = AppendResult {
            next_revision: 1,
            position: 2,
        };
        assert_eq!(created_answer.blocking_recv().unwrap(), Ok(first));
        assert_eq!(
            late_answer.blocking_recv().unwrap(),
            Err(StoreError::WrongExpectedVersion {
                stream: "s".into(),
                expected: ExpectedRevision::NoStream,
                actual: Some(1),
            })
        );
        assert_eq!(
            reused_answer.blocking_recv().unwrap(),
            Err(StoreError::DuplicateEventId {
                stream: "s".into(),
                id: Uuid::from_u128(1),
            })
        );
        assert_eq!(retry_answer.blocking_recv().unwrap(), Ok(first));
        assert_eq!(
            next_answer.blocking_recv().unwrap(),
            Ok(AppendResult {
                next_revision: 2,
                position: 3,
            })
        );
        assert_eq!(
            other_answer.blocking_recv().unwrap(),
            Ok(AppendResult {
                next_revision: 0,
                position: 4,
            })
        );
        assert_eq!(metadata_answer.blocking_recv().unwrap(), Ok(()));
        assert_eq!(count_events(&connection), 4);
        let row = find_stream(&connection, "s").unwrap().unwrap();
        assert_eq!(row.last_revision, Some(2));
        assert_eq!(row.metadata.max_count, Some(u64::MAX));
        // Positions stay gapless: the rolled-back insert of event 4 did not
        // consume one.
        let head: i64 = connection
            .query_row(HEAD_POSITION_SQL, [], |row| row.get(0))
            .unwrap();
        assert_eq!(head, 4);
    }

    /// Single-event appends go in without a savepoint, from the stream
    /// heads the group has read or written; every other write in between
    /// (a retry, a batch, a wrong expected revision) is checked against the
    /// rows themselves, and the appends after it see what it wrote.
    #[test]
    fn direct_and_checked_appends_to_one_stream_in_one_group() {
        let (_folder, mut connection) = fresh();
        let steps = [
            (ExpectedRevision::NoStream, vec![1]),
            (ExpectedRevision::Exact(0), vec![2]),
            (ExpectedRevision::Exact(1), vec![3]),
            // A retry of the last append: its id is found, nothing added.
            (ExpectedRevision::Exact(1), vec![3]),
            (ExpectedRevision::Any, vec![4, 5]),
            (ExpectedRevision::Exact(4), vec![6]),
            (ExpectedRevision::Exact(5), vec![7]),
            (ExpectedRevision::Exact(5), vec![8]),
            (ExpectedRevision::Exact(6), vec![8]),
        ];
        let (group, answers): (Vec<_>, Vec<_>) = steps
            .iter()
            .map(|(expected, ids)| append("s", *expected, ids))
            .unzip();
        assert_eq!(commit_group(&mut connection, group), Ok(Some(8)));
        let results: Vec<_> = answers
            .into_iter()
            .map(|answer| answer.blocking_recv().unwrap())
            .collect();
        let written = |next_revision, position| {
            Ok(AppendResult {
                next_revision,
                position,
            })
        };
        assert_eq!(
            results,
            [
                written(0, 1),
                written(1, 2),
                written(2, 3),
                written(2, 3),
                written(4, 5),
                written(5, 6),
                written(6, 7),
                Err(StoreError::WrongExpectedVersion {
                    stream: "s".into(),
                    expected: ExpectedRevision::Exact(5),
                    actual: Some(6),
                }),
                written(7, 8),
            ]
        );
        assert_eq!(count_events(&connection), 8);
        let row = find_stream(&connection, "s").unwrap().unwrap();
        assert_eq!(row.last_revision, Some(7));
    }

    /// Makes inserting an event of type `Poison` fail the way `action`
    /// says (`ABORT`: the statement fails; `ROLLBACK`: SQLite also rolls the
    /// whole transaction back). A TEMP trigger lives in this connection
    /// only, not in the file.
    fn poison(connection: &Connection, action: &str) {
        connection
            .execute_batch(&format!(
                "CREATE TEMP TRIGGER poison BEFORE INSERT ON events \
                 WHEN NEW.event_type = 'Poison' \
                 BEGIN SELECT RAISE({action}, 'poisoned'); END;"
            ))
            .unwrap();
    }

    fn poisoned_append(ids: &[u128]) -> (Write, Answer<AppendResult>) {
        let (mut write, answer) = append("p", ExpectedRevision::Any, ids);
        if let WriteOp::Append { events, .. } = &mut write.op {
            events.last_mut().unwrap().event_type = "Poison".into();
        }
        (write, answer)
    }

    /// A write that fails after inserting part of its batch is rolled back
    /// to its savepoint: its first events vanish, the group's other writes
    /// commit, and no position is burnt.
    #[test]
    fn a_write_failing_midway_is_rolled_back_alone() {
        let (_folder, mut connection) = fresh();
        poison(&connection, "ABORT");
        let (before, before_answer) = append("s", ExpectedRevision::NoStream, &[1]);
        let (poisoned, poisoned_answer) = poisoned_append(&[2, 3, 4]);
        let (after, after_answer) = append("s", ExpectedRevision::Exact(0), &[5]);
        let group = vec![before, poisoned, after];
        assert_eq!(commit_group(&mut connection, group), Ok(Some(2)));
        assert_eq!(before_answer.blocking_recv().unwrap().unwrap().position, 1);
        let err = poisoned_answer.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("poisoned"), "{err}");
        assert_eq!(
            after_answer.blocking_recv().unwrap(),
            Ok(AppendResult {
                next_revision: 1,
                position: 2,
            })
        );
        assert_eq!(count_events(&connection), 2);
        assert_eq!(find_stream(&connection, "p").unwrap(), None);
    }

    /// When SQLite itself rolls the transaction back, nothing of the group
    /// is written and every caller hears so, the ones whose writes had
    /// succeeded included.
    #[test]
    fn a_transaction_lost_midway_fails_the_whole_group() {
        let (_folder, mut connection) = fresh();
        poison(&connection, "ROLLBACK");
        let (before, before_answer) = append("s", ExpectedRevision::NoStream, &[1]);
        let (poisoned, poisoned_answer) = poisoned_append(&[2, 3]);
        let (after, after_answer) = append("s", ExpectedRevision::Any, &[5]);
        let group = vec![before, poisoned, after];
        assert_eq!(commit_group(&mut connection, group), Err(()));
        for answer in [before_answer, poisoned_answer, after_answer] {
            let err = answer.blocking_recv().unwrap().unwrap_err();
            assert!(err.is_transient(), "{err:?}");
        }
        assert!(connection.is_autocommit());
        assert_eq!(count_events(&connection), 0);
        // The writer carries on with the next group.
        let (next, next_answer) = append("s", ExpectedRevision::NoStream, &[1]);
        assert_eq!(commit_group(&mut connection, vec![next]), Ok(Some(1)));
        assert_eq!(next_answer.blocking_recv().unwrap().unwrap().position, 1);
    }

    fn plan(connection: &Connection, sql: &str, values: Vec<Value>) -> String {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = statement
            .query_map(params_from_iter(values), |row| row.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// Reads use the indexes and never sort: a page costs what it returns
    /// (plus, for a filter, the rows it skips).
    #[test]
    fn reads_use_indexes_without_sorting() {
        let (_folder, connection) = fresh();
        for filter in [
            StreamFilter::default(),
            StreamFilter {
                prefixes: vec!["stream-".into(), "p%".into()],
            },
        ] {
            let (sql, values) = read_all_query(10, 100, &filter);
            let plan = plan(&connection, &sql, values);
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            assert!(
                plan.starts_with("SEARCH e USING INTEGER PRIMARY KEY"),
                "{plan}"
            );
        }
        for sql in [READ_FORWARDS_SQL, READ_BACKWARDS_SQL] {
            let values = vec![
                Value::Integer(1),
                Value::Integer(0),
                Value::Integer(9),
                Value::Integer(5),
            ];
            let plan = plan(&connection, sql, values);
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            assert!(plan.contains("USING INDEX"), "{plan}");
        }
        let values = vec![Value::Integer(1), Value::Blob(vec![0; 16])];
        let plan = plan(&connection, REVISION_OF_ID_SQL, values);
        assert!(plan.contains("USING INDEX"), "{plan}");
    }
}
