//! An in-process EventStoreDB double: a tonic server speaking the
//! `event_store.client.streams.Streams` service (Append, Read with counts and
//! catch-up subscriptions, Delete, Tombstone) over an in-memory log, on a
//! loopback port, so the real `eventstore` client talks to it unchanged.
//!
//! It is compiled from our own description of the wire contract
//! (`proto/esdb/`, compiled by build.rs into `$OUT_DIR/esdb_wire/`). It
//! mimics the server behaviour recorded in
//! shared/reference/eventstore-client.md §3.4: conflicts as an `AppendResp`
//! message, idempotent re-appends by event id at the expected position,
//! `$maxCount`/`$tb` from the newest `$$stream` event applied on reads (the
//! whole document ignored if either is out of range, as the server does),
//! `$$` streams that keep only their newest event, a soft delete written as
//! `{"$tb": 2^63 - 1}` into the stream's metadata (other keys kept; an
//! append recreates the stream with `$tb` at its first new revision),
//! `last_stream_position` after stream reads, subscriptions that start after
//! the given revision/position (exclusive), confirm, catch up, send
//! `caught_up`, go live and **never end with status OK** (the client
//! busy-spins on OK), checkpoints every `window × multiplier` scanned
//! records on filtered `$all` subscriptions, a reader too slow for the live
//! buffer moved back to catch-up (`fell_behind`, history, `caught_up`) rather
//! than dropped, and a ServerFeatures service that advertises BatchAppend as
//! a 24.10 node does; BatchAppend commits each request as an Append would (a
//! conflict is a `google.rpc.Status` error for that request); a tombstone
//! leaves a `$streamDeleted` record at revision 2^63 - 1 of the stream in
//! `$all`, as the server does.
//!
//! Positions are byte offsets in the log, as the server's: a record's commit
//! (= prepare) position is where it starts, and the next record starts
//! [`RECORD_OVERHEAD`] plus its sizes later, so positions have gaps. Reading
//! or subscribing to `$all` from a position that is neither a record's start
//! nor the log's end is `InvalidArgument` (`exception: invalid-position`).
//!
//! Faults: [`EsdbDouble::restart`] shuts the server's runtime down (every
//! connection and subscription drops, as when a node dies) and serves again
//! on the same port with the same log; [`EsdbDouble::drop_after_next_append`]
//! commits the next append and then restarts before answering (the client
//! sees a dropped connection and does not know whether it landed);
//! [`EsdbDouble::fail_next_appends`] answers appends with `Unavailable`
//! without writing; [`EsdbDouble::abort_after_next_append`] writes, then
//! answers `Aborted` (the server's commit timeout);
//! [`EsdbDouble::set_replication_lag`] makes writes replicate late, and a
//! retry of a write not replicated yet is dropped (answered `Aborted` after
//! [`COMMIT_TIMEOUT`]) as the server drops it. An append larger than
//! `MaxAppendSize` (1 MiB unless [`EsdbDouble::set_max_append_bytes`]) is
//! `InvalidArgument` with `exception: maximum-append-size-exceeded`.
//!
//! Users: [`ADMIN`] (in `$admins`) and [`USER`]; only `$admins` may read or
//! subscribe to `$all` (the server's default ACL), other streams are open to
//! anyone; [`EsdbDouble::url`] signs in as the admin.
//!
//! Limits: one node (no gossip, no cluster, no leader changes), no TLS, no
//! stream ACLs, no BatchAppend deadlines, no persistent subscriptions, no
//! `$maxAge`, no links/projections, no scavenging; `$all` subscription
//! filters support prefixes and the exclude-system-events regex only.
#![allow(dead_code, clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The generated wire types (our own proto of the contract).
#[allow(clippy::all, missing_docs)]
pub mod wire {
    /// Package `google.rpc` (the error of a BatchAppend response).
    pub mod google {
        /// Package `google.rpc`.
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/esdb_wire/google.rpc.rs"));
        }
    }
    /// Package `event_store`.
    pub mod event_store {
        /// Package `event_store.client`.
        pub mod client {
            include!(concat!(env!("OUT_DIR"), "/esdb_wire/event_store.client.rs"));
            /// Package `event_store.client.server_features`.
            pub mod server_features {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/esdb_wire/event_store.client.server_features.rs"
                ));
            }
            /// Package `event_store.client.streams`.
            pub mod streams {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/esdb_wire/event_store.client.streams.rs"
                ));
            }
        }
    }
}

use wire::event_store::client as pb;
use wire::event_store::client::server_features as sf;
use wire::event_store::client::streams as sp;

/// The administrator (member of `$admins`), as a fresh node has it.
pub const ADMIN: (&str, &str) = ("admin", "changeit");

/// A plain user, not in `$admins`.
pub const USER: (&str, &str) = ("ops", "secret");

/// The user a request signs in as (`authorization: Basic …`), if any.
fn signed_in<T>(request: &Request<T>) -> Result<Option<&'static str>, Status> {
    let Some(header) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    let header = header.to_str().unwrap_or_default();
    let matches = |(user, password): (&'static str, &str)| {
        let basic = base64_basic(user, password);
        (header == format!("Basic {basic}")).then_some(user)
    };
    matches(ADMIN)
        .or_else(|| matches(USER))
        .map(Some)
        .ok_or_else(|| Status::unauthenticated("bad credentials"))
}

/// `user:password` in base64, as HTTP Basic sends it.
fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// How many recent event ids the idempotency cache keeps (the server keeps
/// about 8 MiB worth; a test evicts it with
/// [`EsdbDouble::evict_idempotency_cache`]).
pub const RECENT_IDS_CAPACITY: usize = 100_000;

/// How long the double takes to answer `Aborted` for an append it dropped
/// (the server's commit timeout is 2 s; shorter here to keep tests quick).
pub const COMMIT_TIMEOUT: Duration = Duration::from_millis(200);

/// The checkpoint window of a filtered subscription that asks for `count`
/// (what the `eventstore` client sends unless `.max(n)` is set).
pub const DEFAULT_CHECKPOINT_WINDOW: u64 = 32;

/// How many live records a subscription may lag behind before it falls
/// behind (see [`EsdbDouble::start_with_live_buffer`]).
pub const DEFAULT_LIVE_BUFFER: usize = 1 << 16;

/// The server's default `MaxAppendSize` (up to 24.10 / KurrentDB 25.0).
pub const DEFAULT_MAX_APPEND_BYTES: u64 = 1024 * 1024;

/// One stored event.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Stream name.
    pub stream: String,
    /// Revision in the stream.
    pub revision: u64,
    /// Commit (= prepare) position: the index in the log.
    pub commit: u64,
    /// Event id.
    pub id: ::uuid::Uuid,
    /// System metadata (`type`, `content-type`, `created`).
    pub metadata: HashMap<String, String>,
    /// Custom (user) metadata.
    pub custom: Vec<u8>,
    /// Payload.
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
struct StreamState {
    indexes: Vec<usize>,
    tombstoned: bool,
}

/// What a record takes in the log besides its stream name, payloads and
/// system metadata (the server's prepare and commit records): positions are
/// byte offsets, so consecutive records are never at consecutive positions.
const RECORD_OVERHEAD: u64 = 96;

/// `$tb` of a soft-deleted stream (the server's `EventNumber.DeletedStream`).
pub const SOFT_DELETED_TB: u64 = i64::MAX as u64;

/// The revision of the `$streamDeleted` record a tombstone leaves in `$all`.
pub const TOMBSTONE_REVISION: u64 = i64::MAX as u64;

#[derive(Debug, Default)]
struct Log {
    log: Vec<Arc<Rec>>,
    /// The position the next record is written at: the log's end.
    end: u64,
    streams: HashMap<String, StreamState>,
}

impl Log {
    fn last(&self, stream: &str) -> Option<u64> {
        self.streams
            .get(stream)
            .and_then(|s| s.indexes.len().checked_sub(1))
            .map(|r| r as u64)
    }

    /// Writes one record at the end of the log (its commit position is set
    /// here) and, unless it is a tombstone, into its stream.
    fn push(&mut self, mut rec: Rec) -> Arc<Rec> {
        rec.commit = self.end;
        let metadata: usize = rec.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.end += RECORD_OVERHEAD
            + (rec.stream.len() + metadata + rec.custom.len() + rec.data.len()) as u64;
        let rec = Arc::new(rec);
        if rec.revision != TOMBSTONE_REVISION {
            let index = self.log.len();
            self.streams
                .entry(rec.stream.clone())
                .or_default()
                .indexes
                .push(index);
        }
        self.log.push(rec.clone());
        rec
    }

    /// The index of the record at `position`, or the log's length for its
    /// end; any other position is not a record boundary, which the server
    /// refuses.
    fn index_at(&self, position: u64) -> Result<usize, Status> {
        if position == self.end {
            return Ok(self.log.len());
        }
        self.log
            .binary_search_by_key(&position, |r| r.commit)
            .map_err(|_| {
                let mut status = Status::invalid_argument(format!(
                    "Invalid position {position}: not a record boundary of the log."
                ));
                status
                    .metadata_mut()
                    .insert("exception", "invalid-position".parse().unwrap());
                status
            })
    }

    /// The newest metadata document of `stream` (from `$$stream`), if any
    /// and if it parses as a JSON object.
    fn metadata(&self, stream: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        let meta = format!("$${stream}");
        let newest = self.streams.get(&meta)?.indexes.last()?;
        match serde_json::from_slice(&self.log[*newest].data) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    /// `$maxCount` and `$tb` as the server applies them: all or nothing. A
    /// `$maxCount` that is not a positive 32-bit integer, or a `$tb` that is
    /// not a non-negative integer, makes the whole document ignored.
    fn limits(&self, stream: &str) -> (Option<u64>, Option<u64>) {
        let Some(json) = self.metadata(stream) else {
            return (None, None);
        };
        let max_count = json
            .get("$maxCount")
            .map(|v| v.as_u64().filter(|n| (1..=i32::MAX as u64).contains(n)));
        let tb = json.get("$tb").map(serde_json::Value::as_u64);
        if matches!(max_count, Some(None)) || matches!(tb, Some(None)) {
            return (None, None);
        }
        (max_count.flatten(), tb.flatten())
    }

    /// Whether `stream` is soft-deleted (`$tb` at [`SOFT_DELETED_TB`]).
    fn soft_deleted(&self, stream: &str) -> bool {
        self.limits(stream).1 == Some(SOFT_DELETED_TB)
    }

    /// The first visible revision, from `$$stream`'s newest event; a `$$`
    /// stream keeps only its newest event (the server's fixed `$maxCount`
    /// of metadata streams).
    fn first_visible(&self, stream: &str, last: u64) -> u64 {
        if stream.starts_with("$$") {
            return last;
        }
        let (max_count, tb) = self.limits(stream);
        let mut first = tb.unwrap_or(0);
        if let Some(n) = max_count {
            first = first.max((last + 1).saturating_sub(n));
        }
        first
    }

    fn event(&self, stream: &str, revision: u64) -> &Arc<Rec> {
        &self.log[self.streams[stream].indexes[revision as usize]]
    }

    /// Writes a record the server writes itself (a `$metadata` document, a
    /// `$streamDeleted` tombstone record).
    fn push_system(
        &mut self,
        stream: &str,
        revision: u64,
        event_type: &str,
        data: Vec<u8>,
    ) -> Arc<Rec> {
        let content_type = if data.is_empty() {
            "application/octet-stream"
        } else {
            "application/json"
        };
        self.push(Rec {
            stream: stream.to_string(),
            revision,
            commit: 0,
            id: ::uuid::Uuid::new_v4(),
            metadata: HashMap::from([
                ("type".to_string(), event_type.to_string()),
                ("content-type".to_string(), content_type.to_string()),
                ("created".to_string(), created_ticks().to_string()),
            ]),
            custom: Vec::new(),
            data,
        })
    }

    /// Writes `doc` as the newest metadata document of `stream`.
    fn push_metadata(
        &mut self,
        stream: &str,
        doc: serde_json::Map<String, serde_json::Value>,
    ) -> Arc<Rec> {
        let meta = format!("$${stream}");
        let revision = self.last(&meta).map_or(0, |l| l + 1);
        let data = serde_json::to_vec(&serde_json::Value::Object(doc)).unwrap();
        self.push_system(&meta, revision, "$metadata", data)
    }
}

/// Now in .NET ticks (100 ns) since the Unix epoch, as `created` carries it.
fn created_ticks() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        / 100
}

#[derive(Debug)]
enum Control {
    Restart { down_for: Duration },
    Stop,
}

struct Shared {
    log: Mutex<Log>,
    live: broadcast::Sender<Arc<Rec>>,
    control: Mutex<std::sync::mpsc::Sender<Control>>,
    drop_after_append: AtomicU32,
    fail_appends: AtomicU32,
    abort_after_append: AtomicU32,
    /// Evict the idempotency cache when an append is aborted (a leader
    /// change or restart at the commit timeout).
    evict_on_abort: std::sync::atomic::AtomicBool,
    /// The leader's in-memory cache of recent event ids, oldest first: the
    /// only idempotency check for `Any`/`StreamExists` appends.
    recent_ids: Mutex<std::collections::VecDeque<::uuid::Uuid>>,
    /// The largest append accepted (bytes of data and metadata).
    max_append_bytes: AtomicU64,
    append_calls: AtomicU64,
    subscriptions: AtomicU64,
    /// Where each `$all` subscription started (`None`: the start).
    all_subscription_starts: Mutex<Vec<Option<u64>>>,
    /// Each append written: its stream and how many events it had.
    appends_written: Mutex<Vec<(String, usize)>>,
    /// How long a write takes to replicate (`None`: at once).
    replication_lag: Mutex<Option<Duration>>,
    /// Writes not replicated yet: their ids and when they will be.
    unreplicated: Mutex<Vec<(Vec<::uuid::Uuid>, std::time::Instant)>>,
    /// Retries dropped because the write they repeat had not replicated.
    retries_dropped: AtomicU64,
    restarts: AtomicU64,
}

/// A running double; dropping it stops the server.
pub struct EsdbDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    control: std::sync::mpsc::Sender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EsdbDouble {
    /// Starts a double on a free loopback port.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Starts a double whose subscriptions fall behind (and catch up again)
    /// once they lag `records` live records.
    pub fn start_with_live_buffer(records: usize) -> Self {
        Self::start_with("127.0.0.1:0".parse().unwrap(), records)
    }

    /// Starts a double on this address (port 0: a free one).
    pub fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, DEFAULT_LIVE_BUFFER)
    }

    fn start_with(addr: SocketAddr, live_buffer: usize) -> Self {
        let listener = std::net::TcpListener::bind(addr).expect("bind the double");
        let addr = listener.local_addr().unwrap();
        let (control, commands) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            log: Mutex::new(Log::default()),
            live: broadcast::channel(live_buffer).0,
            control: Mutex::new(control.clone()),
            drop_after_append: AtomicU32::new(0),
            fail_appends: AtomicU32::new(0),
            abort_after_append: AtomicU32::new(0),
            evict_on_abort: std::sync::atomic::AtomicBool::new(false),
            recent_ids: Mutex::new(std::collections::VecDeque::new()),
            max_append_bytes: AtomicU64::new(DEFAULT_MAX_APPEND_BYTES),
            append_calls: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            all_subscription_starts: Mutex::new(Vec::new()),
            appends_written: Mutex::new(Vec::new()),
            replication_lag: Mutex::new(None),
            unreplicated: Mutex::new(Vec::new()),
            retries_dropped: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        });
        let runtime = serve(listener, shared.clone());
        let thread_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut runtime = Some(runtime);
            loop {
                match commands.recv() {
                    Ok(Control::Restart { down_for }) => {
                        if let Some(rt) = runtime.take() {
                            rt.shutdown_background();
                        }
                        std::thread::sleep(down_for);
                        let listener = bind_again(addr);
                        runtime = Some(serve(listener, thread_shared.clone()));
                        thread_shared.restarts.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Control::Stop) | Err(_) => {
                        if let Some(rt) = runtime.take() {
                            rt.shutdown_background();
                        }
                        return;
                    }
                }
            }
        });
        Self {
            addr,
            shared,
            control,
            thread: Some(thread),
        }
    }

    /// The address the double serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string for the adapter / the service.
    pub fn url(&self) -> String {
        self.url_as(ADMIN.0, ADMIN.1)
    }

    /// A connection string that signs in as `user` (see [`ADMIN`], [`USER`]).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("esdb://{user}:{password}@{}?tls=false", self.addr)
    }

    /// Kills every connection and subscription, stays down for `down_for`,
    /// then serves the same log on the same port again. Returns once it is
    /// serving again.
    pub fn restart(&self, down_for: Duration) {
        let before = self.restarts();
        self.control.send(Control::Restart { down_for }).unwrap();
        while self.restarts() == before {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many restarts happened (including fault-triggered ones).
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Sets the largest append the node accepts (the server's
    /// `MaxAppendSize`; 1 MiB by default up to 24.10).
    pub fn set_max_append_bytes(&self, bytes: u64) {
        self.shared.max_append_bytes.store(bytes, Ordering::SeqCst);
    }

    /// The next `n` appends are committed, then answered `Aborted` (the
    /// server's commit timeout: the outcome is unknown to the client).
    pub fn abort_after_next_append(&self, n: u32) {
        self.shared.abort_after_append.store(n, Ordering::SeqCst);
    }

    /// As [`Self::abort_after_next_append`], and the idempotency cache is
    /// emptied too (the leader changed or restarted meanwhile).
    pub fn abort_and_evict_after_next_append(&self, n: u32) {
        self.shared.evict_on_abort.store(true, Ordering::SeqCst);
        self.abort_after_next_append(n);
    }

    /// Empties the idempotency cache (as a new leader or a restart does).
    pub fn evict_idempotency_cache(&self) {
        self.shared.recent_ids.lock().unwrap().clear();
    }

    /// The next `n` appends are committed, then the server restarts before
    /// answering (the connection drops mid-append).
    pub fn drop_after_next_append(&self, n: u32) {
        self.shared.drop_after_append.store(n, Ordering::SeqCst);
    }

    /// The next `n` appends are refused with `Unavailable`, writing nothing.
    pub fn fail_next_appends(&self, n: u32) {
        self.shared.fail_appends.store(n, Ordering::SeqCst);
    }

    /// How many Append calls reached the double.
    pub fn append_calls(&self) -> u64 {
        self.shared.append_calls.load(Ordering::SeqCst)
    }

    /// How many subscriptions were opened.
    pub fn subscriptions_opened(&self) -> u64 {
        self.shared.subscriptions.load(Ordering::SeqCst)
    }

    /// Where each `$all` subscription started: the exclusive start position,
    /// or `None` for the start of the log.
    pub fn all_subscription_starts(&self) -> Vec<Option<u64>> {
        self.shared.all_subscription_starts.lock().unwrap().clone()
    }

    /// Every write takes `lag` to replicate; meanwhile an append repeating
    /// any of its event ids (a retry) is dropped, and its caller answered
    /// `Aborted` after [`COMMIT_TIMEOUT`], as the server does.
    pub fn set_replication_lag(&self, lag: Duration) {
        *self.shared.replication_lag.lock().unwrap() = Some(lag);
    }

    /// How many retries were dropped because their write had not replicated.
    pub fn retries_dropped(&self) -> u64 {
        self.shared.retries_dropped.load(Ordering::SeqCst)
    }

    /// Each append written (not retries answered from the ids): its
    /// stream and how many events it had.
    pub fn appends_written(&self) -> Vec<(String, usize)> {
        self.shared.appends_written.lock().unwrap().clone()
    }

    /// A snapshot of the whole log.
    pub fn log(&self) -> Vec<Rec> {
        let log = self.shared.log.lock().unwrap();
        log.log.iter().map(|r| (**r).clone()).collect()
    }
}

impl Drop for EsdbDouble {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind_again(addr: SocketAddr) -> std::net::TcpListener {
    for _ in 0..200 {
        if let Ok(listener) = std::net::TcpListener::bind(addr) {
            return listener;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("cannot bind {addr} again");
}

/// Serves on `listener` in a new runtime; shutting the runtime down drops
/// every connection.
fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) -> tokio::runtime::Runtime {
    listener.set_nonblocking(true).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("esdb-double")
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (sender, incoming) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((socket, _)) => {
                        let _ = socket.set_nodelay(true);
                        if sender.send(Ok::<_, std::io::Error>(socket)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        let service = sp::streams_server::StreamsServer::new(Double { shared })
            .max_decoding_message_size(64 << 20);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .add_service(sf::server_features_server::ServerFeaturesServer::new(
                Features,
            ))
            .serve_with_incoming(ReceiverStream::new(incoming))
            .await;
    });
    runtime
}

struct Double {
    shared: Arc<Shared>,
}

/// The ServerFeatures service: advertises BatchAppend, as a 21.10+ node does.
struct Features;

#[tonic::async_trait]
impl sf::server_features_server::ServerFeatures for Features {
    async fn get_supported_methods(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<sf::SupportedMethods>, Status> {
        let method = |name: &str| sf::SupportedMethod {
            method_name: name.into(),
            service_name: "event_store.client.streams.streams".into(),
            features: Vec::new(),
        };
        Ok(Response::new(sf::SupportedMethods {
            methods: ["read", "append", "delete", "tombstone", "batchappend"]
                .into_iter()
                .map(method)
                .collect(),
            event_store_server_version: "24.10.0".into(),
        }))
    }
}

fn empty() -> pb::Empty {
    pb::Empty {}
}

fn stream_name(id: Option<pb::StreamIdentifier>) -> Result<String, Status> {
    let id = id.ok_or_else(|| Status::invalid_argument("no stream identifier"))?;
    String::from_utf8(id.stream_name).map_err(|_| Status::invalid_argument("stream name not UTF-8"))
}

fn parse_uuid(id: Option<pb::Uuid>) -> Result<::uuid::Uuid, Status> {
    match id.and_then(|u| u.value) {
        Some(pb::uuid::Value::Structured(s)) => Ok(::uuid::Uuid::from_u64_pair(
            s.most_significant_bits as u64,
            s.least_significant_bits as u64,
        )),
        Some(pb::uuid::Value::String(s)) => {
            s.parse().map_err(|_| Status::invalid_argument("bad uuid"))
        }
        None => Err(Status::invalid_argument("no event id")),
    }
}

fn stream_deleted(stream: &str) -> Status {
    let mut status = Status::failed_precondition(format!("Event stream '{stream}' is deleted."));
    status
        .metadata_mut()
        .insert("exception", "stream-deleted".parse().unwrap());
    if let Ok(name) = stream.parse() {
        status.metadata_mut().insert("stream-name", name);
    }
    status
}

/// The expected revision of an append/delete/tombstone.
#[derive(Debug, Clone, Copy)]
enum Expected {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
}

impl Expected {
    fn holds(self, last: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => last.is_none(),
            Self::StreamExists => last.is_some(),
            Self::Exact(n) => last == Some(n),
        }
    }
}

fn append_expected(option: Option<sp::append_req::options::ExpectedStreamRevision>) -> Expected {
    use sp::append_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(n)) => Expected::Exact(n),
        Some(E::NoStream(_)) => Expected::NoStream,
        Some(E::StreamExists(_)) => Expected::StreamExists,
        Some(E::Any(_)) | None => Expected::Any,
    }
}

fn recorded(rec: &Rec, structured: bool) -> sp::read_resp::ReadEvent {
    let id = if structured {
        let (most, least) = rec.id.as_u64_pair();
        pb::uuid::Value::Structured(pb::uuid::Structured {
            most_significant_bits: most as i64,
            least_significant_bits: least as i64,
        })
    } else {
        pb::uuid::Value::String(rec.id.to_string())
    };
    sp::read_resp::ReadEvent {
        event: Some(sp::read_resp::read_event::RecordedEvent {
            id: Some(pb::Uuid { value: Some(id) }),
            stream_identifier: Some(pb::StreamIdentifier {
                stream_name: rec.stream.clone().into_bytes(),
            }),
            stream_revision: rec.revision,
            prepare_position: rec.commit,
            commit_position: rec.commit,
            metadata: rec.metadata.clone(),
            custom_metadata: rec.custom.clone(),
            data: rec.data.clone(),
        }),
        link: None,
        position: Some(sp::read_resp::read_event::Position::CommitPosition(
            rec.commit,
        )),
    }
}

fn event_msg(rec: &Rec, structured: bool) -> sp::ReadResp {
    sp::ReadResp {
        content: Some(sp::read_resp::Content::Event(recorded(rec, structured))),
    }
}

/// A `$all` filter: stream-name or event-type prefixes or a regex.
struct AllFilter {
    on_stream: bool,
    prefixes: Vec<String>,
    regex: Option<regex::Regex>,
    /// A subscription's checkpoint interval in scanned records: the
    /// window (`max`, or [`DEFAULT_CHECKPOINT_WINDOW`] for `count`) times
    /// the multiplier.
    checkpoint_every: u64,
}

impl AllFilter {
    fn from_options(
        option: Option<sp::read_req::options::FilterOption>,
    ) -> Result<Option<Self>, Status> {
        use sp::read_req::options::filter_options::Filter;
        use sp::read_req::options::FilterOption;
        let Some(FilterOption::Filter(filter)) = option else {
            return Ok(None);
        };
        let (on_stream, expression) = match filter.filter {
            Some(Filter::StreamIdentifier(e)) => (true, e),
            Some(Filter::EventType(e)) => (false, e),
            None => return Ok(None),
        };
        let regex = if expression.regex.is_empty() {
            None
        } else {
            Some(
                regex::Regex::new(&expression.regex)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        use sp::read_req::options::filter_options::Window;
        let window = match filter.window {
            Some(Window::Max(n)) if n > 0 => u64::from(n),
            _ => DEFAULT_CHECKPOINT_WINDOW,
        };
        let multiplier = u64::from(filter.checkpoint_interval_multiplier.max(1));
        Ok(Some(Self {
            on_stream,
            prefixes: expression.prefix,
            regex,
            checkpoint_every: window * multiplier,
        }))
    }

    fn matches(&self, rec: &Rec) -> bool {
        let subject = if self.on_stream {
            rec.stream.as_str()
        } else {
            rec.metadata.get("type").map_or("", String::as_str)
        };
        if !self.prefixes.is_empty() {
            return self
                .prefixes
                .iter()
                .any(|p| subject.starts_with(p.as_str()));
        }
        self.regex.as_ref().map_or(true, |r| r.is_match(subject))
    }
}

type ReadStreamOut = ReceiverStream<Result<sp::ReadResp, Status>>;

#[tonic::async_trait]
impl sp::streams_server::Streams for Double {
    type ReadStream = ReadStreamOut;

    async fn read(&self, request: Request<sp::ReadReq>) -> Result<Response<ReadStreamOut>, Status> {
        use sp::read_req::options::{CountOption, StreamOption};
        let user = signed_in(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("no read options"))?;
        let structured = matches!(
            options.uuid_option.as_ref().and_then(|u| u.content),
            Some(sp::read_req::options::uuid_option::Content::Structured(_))
        );
        let backwards = options.read_direction == 1;
        // `$all` is readable by `$admins` only, as the server's default ACL.
        if matches!(options.stream_option, Some(StreamOption::All(_))) && user != Some(ADMIN.0) {
            let mut status = Status::permission_denied("Access denied.");
            status
                .metadata_mut()
                .insert("exception", "access-denied".parse().unwrap());
            return Err(status);
        }
        let filter = AllFilter::from_options(options.filter_option)?;
        let (sender, receiver) = mpsc::channel(256);
        match options.count_option {
            Some(CountOption::Count(count)) => {
                let messages = match options.stream_option {
                    Some(StreamOption::Stream(s)) => {
                        self.read_stream(s, backwards, count, structured)?
                    }
                    Some(StreamOption::All(a)) => {
                        self.read_all(a, backwards, count, filter.as_ref(), structured)?
                    }
                    None => return Err(Status::invalid_argument("no stream option")),
                };
                tokio::spawn(async move {
                    for message in messages {
                        if sender.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Some(CountOption::Subscription(_)) => {
                self.shared.subscriptions.fetch_add(1, Ordering::SeqCst);
                self.subscribe(options.stream_option, filter, structured, sender)?;
            }
            None => return Err(Status::invalid_argument("no count option")),
        }
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn append(
        &self,
        request: Request<Streaming<sp::AppendReq>>,
    ) -> Result<Response<sp::AppendResp>, Status> {
        use sp::append_req::Content;
        self.shared.append_calls.fetch_add(1, Ordering::SeqCst);
        let mut incoming = request.into_inner();
        let Some(sp::AppendReq {
            content: Some(Content::Options(options)),
        }) = incoming.message().await?
        else {
            return Err(Status::invalid_argument("append must start with options"));
        };
        let stream = stream_name(options.stream_identifier)?;
        let expected = append_expected(options.expected_stream_revision);
        let mut proposed = Vec::new();
        while let Some(message) = incoming.message().await? {
            match message.content {
                Some(Content::ProposedMessage(m)) => proposed.push(m),
                _ => return Err(Status::invalid_argument("expected a proposed message")),
            }
        }
        if self
            .shared
            .fail_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("injected fault: server not ready"));
        }
        if self.repeats_an_unreplicated_write(&proposed) {
            // The server drops it; the client hears of it at the commit
            // timeout, not knowing whether it was written.
            self.shared.retries_dropped.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(COMMIT_TIMEOUT).await;
            return Err(Status::aborted("operation timed out: commit timeout"));
        }
        let response = self.commit(&stream, expected, proposed)?;
        if self
            .shared
            .abort_after_append
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // Written, but the commit was not acknowledged in time.
            if self.shared.evict_on_abort.swap(false, Ordering::SeqCst) {
                self.shared.recent_ids.lock().unwrap().clear();
            }
            return Err(Status::aborted("operation timed out"));
        }
        if self
            .shared
            .drop_after_append
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // The append is durable; now the node dies before answering.
            let control = self.shared.control.lock().unwrap().clone();
            let _ = control.send(Control::Restart {
                down_for: Duration::from_millis(200),
            });
            std::future::pending::<()>().await;
        }
        Ok(Response::new(response))
    }

    type BatchAppendStream = ReceiverStream<Result<sp::BatchAppendResp, Status>>;

    /// One long-lived call; each request (all its events, `is_final`) is
    /// committed as an Append would be and answered with its correlation id.
    async fn batch_append(
        &self,
        request: Request<Streaming<sp::BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        use sp::batch_append_req::options::ExpectedStreamPosition as In;
        use sp::batch_append_resp::{success, ExpectedStreamPosition as Out, Result as R};
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(64);
        let double = Double {
            shared: self.shared.clone(),
        };
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                double.shared.append_calls.fetch_add(1, Ordering::SeqCst);
                let options = req.options.unwrap_or_default();
                let stream_identifier = options.stream_identifier.clone();
                let (expected, echoed) = match options.expected_stream_position {
                    Some(In::StreamPosition(n)) => (Expected::Exact(n), Out::StreamPosition(n)),
                    Some(In::NoStream(())) => (Expected::NoStream, Out::NoStream(())),
                    Some(In::StreamExists(())) => (Expected::StreamExists, Out::StreamExists(())),
                    Some(In::Any(())) | None => (Expected::Any, Out::Any(())),
                };
                let result = match stream_name(stream_identifier.clone()) {
                    Err(status) => Err(status),
                    Ok(stream) => double.commit(&stream, expected, req.proposed_messages),
                };
                let error = |code: tonic::Code, message: String| {
                    R::Error(wire::google::rpc::Status {
                        code: code as i32,
                        message,
                        details: Vec::new(),
                    })
                };
                let result = match result {
                    Err(status) => error(status.code(), status.message().to_string()),
                    Ok(sp::AppendResp {
                        result: Some(sp::append_resp::Result::Success(ok)),
                    }) => R::Success(sp::batch_append_resp::Success {
                        current_revision_option: ok.current_revision_option.map(|c| match c {
                            sp::append_resp::success::CurrentRevisionOption::CurrentRevision(n) => {
                                success::CurrentRevisionOption::CurrentRevision(n)
                            }
                            sp::append_resp::success::CurrentRevisionOption::NoStream(_) => {
                                success::CurrentRevisionOption::NoStream(())
                            }
                        }),
                        position_option: ok.position_option.map(|p| match p {
                            sp::append_resp::success::PositionOption::Position(p) => {
                                success::PositionOption::Position(pb::AllStreamPosition {
                                    commit_position: p.commit_position,
                                    prepare_position: p.prepare_position,
                                })
                            }
                            sp::append_resp::success::PositionOption::NoPosition(_) => {
                                success::PositionOption::NoPosition(())
                            }
                        }),
                    }),
                    Ok(_) => error(
                        tonic::Code::FailedPrecondition,
                        "WrongExpectedVersion".to_string(),
                    ),
                };
                let response = sp::BatchAppendResp {
                    correlation_id: req.correlation_id,
                    result: Some(result),
                    stream_identifier,
                    expected_stream_position: Some(echoed),
                };
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn delete(
        &self,
        request: Request<sp::DeleteReq>,
    ) -> Result<Response<sp::DeleteResp>, Status> {
        use sp::delete_req::options::ExpectedStreamRevision as E;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("no options"))?;
        let stream = stream_name(options.stream_identifier)?;
        let expected = match options.expected_stream_revision {
            Some(E::Revision(n)) => Expected::Exact(n),
            Some(E::NoStream(_)) => Expected::NoStream,
            Some(E::StreamExists(_)) => Expected::StreamExists,
            _ => Expected::Any,
        };
        let mut log = self.shared.log.lock().unwrap();
        let last = log.last(&stream);
        if log.streams.get(&stream).is_some_and(|s| s.tombstoned) {
            return Err(stream_deleted(&stream));
        }
        if !expected.holds(last) {
            return Err(wrong_expected_status(&stream));
        }
        // A soft delete is a metadata document with `$tb` at the deleted
        // marker; the document's other keys stay.
        if last.is_some() {
            let mut doc = log.metadata(&stream).unwrap_or_default();
            doc.insert("$tb".into(), SOFT_DELETED_TB.into());
            let rec = log.push_metadata(&stream, doc);
            let _ = self.shared.live.send(rec);
        }
        Ok(Response::new(sp::DeleteResp {
            position_option: Some(sp::delete_resp::PositionOption::NoPosition(empty())),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<sp::TombstoneReq>,
    ) -> Result<Response<sp::TombstoneResp>, Status> {
        use sp::tombstone_req::options::ExpectedStreamRevision as E;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("no options"))?;
        let stream = stream_name(options.stream_identifier)?;
        let expected = match options.expected_stream_revision {
            Some(E::Revision(n)) => Expected::Exact(n),
            Some(E::NoStream(_)) => Expected::NoStream,
            Some(E::StreamExists(_)) => Expected::StreamExists,
            _ => Expected::Any,
        };
        let mut log = self.shared.log.lock().unwrap();
        let last = log.last(&stream);
        if log.streams.get(&stream).is_some_and(|s| s.tombstoned) {
            return Err(stream_deleted(&stream));
        }
        if !expected.holds(last) {
            return Err(wrong_expected_status(&stream));
        }
        log.streams.entry(stream.clone()).or_default().tombstoned = true;
        // As the server does: a `$streamDeleted` record in the deleted
        // stream, at revision 2^63 - 1, visible in `$all`.
        let rec = log.push_system(&stream, TOMBSTONE_REVISION, "$streamDeleted", Vec::new());
        let _ = self.shared.live.send(rec);
        Ok(Response::new(sp::TombstoneResp {
            position_option: Some(sp::tombstone_resp::PositionOption::NoPosition(empty())),
        }))
    }
}

fn wrong_expected_status(stream: &str) -> Status {
    let mut status =
        Status::failed_precondition(format!("wrong expected version for stream {stream}"));
    status
        .metadata_mut()
        .insert("exception", "wrong-expected-version".parse().unwrap());
    status
}

impl Double {
    /// Whether an append repeats an event id of a write that has not
    /// replicated yet.
    fn repeats_an_unreplicated_write(&self, proposed: &[sp::append_req::ProposedMessage]) -> bool {
        let now = std::time::Instant::now();
        let mut pending = self.shared.unreplicated.lock().unwrap();
        pending.retain(|(_, ready)| *ready > now);
        proposed.iter().any(|m| {
            parse_uuid(m.id.clone())
                .is_ok_and(|id| pending.iter().any(|(ids, _)| ids.contains(&id)))
        })
    }

    /// Checks and writes one append under the log lock.
    fn commit(
        &self,
        stream: &str,
        expected: Expected,
        proposed: Vec<sp::append_req::ProposedMessage>,
    ) -> Result<sp::AppendResp, Status> {
        use sp::append_resp::{success, wrong_expected_version as wev, Result as R};
        let size: u64 = proposed
            .iter()
            .map(|m| (m.data.len() + m.custom_metadata.len()) as u64)
            .sum();
        let max = self.shared.max_append_bytes.load(Ordering::SeqCst);
        if size > max {
            let mut status =
                Status::invalid_argument(format!("Maximum Append Size of {max} Exceeded."));
            status
                .metadata_mut()
                .insert("exception", "maximum-append-size-exceeded".parse().unwrap());
            status
                .metadata_mut()
                .insert("maximum-append-size", max.to_string().parse().unwrap());
            return Err(status);
        }
        let mut ids = Vec::with_capacity(proposed.len());
        for message in &proposed {
            ids.push(parse_uuid(message.id.clone())?);
            if !message.metadata.contains_key("type")
                || !message.metadata.contains_key("content-type")
            {
                return Err(Status::invalid_argument(
                    "proposed message without type or content-type",
                ));
            }
        }
        let mut log = self.shared.log.lock().unwrap();
        if log.streams.get(stream).is_some_and(|s| s.tombstoned) {
            return Err(stream_deleted(stream));
        }
        let last = log.last(stream);
        let success = |revision: u64, commit: u64| sp::AppendResp {
            result: Some(R::Success(sp::append_resp::Success {
                current_revision_option: Some(success::CurrentRevisionOption::CurrentRevision(
                    revision,
                )),
                position_option: Some(success::PositionOption::Position(
                    sp::append_resp::Position {
                        commit_position: commit,
                        prepare_position: commit,
                    },
                )),
            })),
        };
        // Idempotency: the same ids, in order, already at the expected place.
        if let (Some(first), Some(last)) = (ids.first(), last) {
            let indexes = &log.streams[stream].indexes;
            if let Some(start) = indexes.iter().position(|&i| log.log[i].id == *first) {
                let start = start as u64;
                let same = ids
                    .iter()
                    .zip(start..)
                    .all(|(id, r)| r <= last && log.event(stream, r).id == *id);
                // `Exact`/`NoStream` are checked against the stream itself
                // (durable); `Any`/`StreamExists` only against the cache.
                let consistent = match expected {
                    Expected::Any | Expected::StreamExists => {
                        let recent = self.shared.recent_ids.lock().unwrap();
                        ids.iter().all(|id| recent.contains(id))
                    }
                    Expected::NoStream => start == 0,
                    Expected::Exact(n) => start > 0 && n == start - 1,
                };
                if same && consistent {
                    let end = start + ids.len() as u64 - 1;
                    let rec = log.event(stream, end);
                    return Ok(success(end, rec.commit));
                }
            }
        }
        // A soft-deleted stream takes an append as a missing one would
        // (it is recreated, numbering going on).
        let holds = expected.holds(last)
            || (log.soft_deleted(stream) && matches!(expected, Expected::NoStream));
        if !holds {
            return Ok(sp::AppendResp {
                result: Some(R::WrongExpectedVersion(
                    sp::append_resp::WrongExpectedVersion {
                        current_revision_option_20_6_0: None,
                        expected_revision_option_20_6_0: None,
                        current_revision_option: Some(match last {
                            Some(n) => wev::CurrentRevisionOption::CurrentRevision(n),
                            None => wev::CurrentRevisionOption::CurrentNoStream(empty()),
                        }),
                        expected_revision_option: Some(match expected {
                            Expected::Exact(n) => wev::ExpectedRevisionOption::ExpectedRevision(n),
                            Expected::Any => wev::ExpectedRevisionOption::ExpectedAny(empty()),
                            Expected::StreamExists => {
                                wev::ExpectedRevisionOption::ExpectedStreamExists(empty())
                            }
                            Expected::NoStream => {
                                wev::ExpectedRevisionOption::ExpectedNoStream(empty())
                            }
                        }),
                    },
                )),
            });
        }
        let created = created_ticks();
        let undelete = log.soft_deleted(stream);
        let first_revision = last.map_or(0, |l| l + 1);
        let mut written = Vec::new();
        for (revision, (message, id)) in (first_revision..).zip(proposed.into_iter().zip(ids)) {
            let mut metadata = message.metadata;
            metadata.insert("created".into(), created.to_string());
            written.push(log.push(Rec {
                stream: stream.to_string(),
                revision,
                commit: 0,
                id,
                metadata,
                custom: message.custom_metadata,
                data: message.data,
            }));
        }
        self.shared
            .appends_written
            .lock()
            .unwrap()
            .push((stream.to_string(), written.len()));
        if let Some(lag) = *self.shared.replication_lag.lock().unwrap() {
            let ids = written.iter().map(|r| r.id).collect();
            self.shared
                .unreplicated
                .lock()
                .unwrap()
                .push((ids, std::time::Instant::now() + lag));
        }
        // Appending to a soft-deleted stream recreates it: the server
        // rewrites its metadata with `$tb` at the first new revision.
        let undeleted = undelete.then(|| {
            let mut doc = log.metadata(stream).unwrap_or_default();
            doc.insert("$tb".into(), first_revision.into());
            log.push_metadata(stream, doc)
        });
        {
            let mut recent = self.shared.recent_ids.lock().unwrap();
            for rec in &written {
                if recent.len() == RECENT_IDS_CAPACITY {
                    recent.pop_front();
                }
                recent.push_back(rec.id);
            }
        }
        for rec in written.iter().chain(&undeleted) {
            let _ = self.shared.live.send(rec.clone());
        }
        let rec = written.last().expect("an append has events");
        Ok(success(rec.revision, rec.commit))
    }

    fn read_stream(
        &self,
        options: sp::read_req::options::StreamOptions,
        backwards: bool,
        count: u64,
        structured: bool,
    ) -> Result<Vec<Result<sp::ReadResp, Status>>, Status> {
        use sp::read_req::options::stream_options::RevisionOption as RO;
        let stream = stream_name(options.stream_identifier.clone())?;
        let log = self.shared.log.lock().unwrap();
        let state = log.streams.get(&stream);
        if state.is_some_and(|s| s.tombstoned) {
            return Ok(vec![Err(stream_deleted(&stream))]);
        }
        let not_found = || {
            Ok(vec![Ok(sp::ReadResp {
                content: Some(sp::read_resp::Content::StreamNotFound(
                    sp::read_resp::StreamNotFound {
                        stream_identifier: options.stream_identifier.clone(),
                    },
                )),
            })])
        };
        let Some(last) = log.last(&stream) else {
            return not_found();
        };
        if log.soft_deleted(&stream) {
            return not_found();
        }
        let first = log.first_visible(&stream, last);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let revisions: Vec<u64> = if backwards {
            let start = match options.revision_option {
                Some(RO::Revision(n)) => n.min(last),
                Some(RO::Start(_)) => 0,
                Some(RO::End(_)) | None => last,
            };
            if start < first {
                Vec::new()
            } else {
                (first..=start).rev().take(count).collect()
            }
        } else {
            let start = match options.revision_option {
                Some(RO::Revision(n)) => n,
                Some(RO::Start(_)) | None => 0,
                Some(RO::End(_)) => last + 1,
            };
            (start.max(first)..=last).take(count).collect()
        };
        let mut messages: Vec<_> = revisions
            .iter()
            .map(|&r| Ok(event_msg(log.event(&stream, r), structured)))
            .collect();
        messages.push(Ok(sp::ReadResp {
            content: Some(sp::read_resp::Content::LastStreamPosition(last)),
        }));
        Ok(messages)
    }

    fn read_all(
        &self,
        options: sp::read_req::options::AllOptions,
        backwards: bool,
        count: u64,
        filter: Option<&AllFilter>,
        structured: bool,
    ) -> Result<Vec<Result<sp::ReadResp, Status>>, Status> {
        use sp::read_req::options::all_options::AllOption as AO;
        let log = self.shared.log.lock().unwrap();
        let len = log.log.len();
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let keep = |rec: &&Arc<Rec>| filter.map_or(true, |f| f.matches(rec));
        let events: Vec<_> = if backwards {
            // Backwards from a position: the records before it.
            let end = match options.all_option {
                Some(AO::Position(p)) => log.index_at(p.commit_position)?,
                Some(AO::Start(_)) => 0,
                Some(AO::End(_)) | None => len,
            };
            log.log[..end]
                .iter()
                .rev()
                .filter(keep)
                .take(count)
                .map(|r| Ok(event_msg(r, structured)))
                .collect()
        } else {
            let start = match options.all_option {
                Some(AO::Position(p)) => log.index_at(p.commit_position)?,
                Some(AO::Start(_)) | None => 0,
                Some(AO::End(_)) => len,
            };
            log.log[start..]
                .iter()
                .filter(keep)
                .take(count)
                .map(|r| Ok(event_msg(r, structured)))
                .collect()
        };
        Ok(events)
    }

    /// Starts a catch-up subscription task: confirmation, history after the
    /// start (exclusive), caught-up, then live events; ends only with an
    /// error status or when the client goes away. A filtered `$all`
    /// subscription also gets a checkpoint every `window × multiplier`
    /// scanned records. A reader too slow for the live buffer is sent
    /// `fell_behind`, caught up again from the log and sent `caught_up`
    /// again (as KurrentDB does), not dropped.
    fn subscribe(
        &self,
        option: Option<sp::read_req::options::StreamOption>,
        filter: Option<AllFilter>,
        structured: bool,
        sender: mpsc::Sender<Result<sp::ReadResp, Status>>,
    ) -> Result<(), Status> {
        use sp::read_req::options::all_options::AllOption as AO;
        use sp::read_req::options::stream_options::RevisionOption as RO;
        use sp::read_req::options::StreamOption;
        let (stream, history, live, after) = {
            let log = self.shared.log.lock().unwrap();
            let live = self.shared.live.subscribe();
            // Live events must be newer than everything in the log now.
            let after = log.log.last().map(|r| r.commit);
            match option {
                Some(StreamOption::Stream(s)) => {
                    let stream = stream_name(s.stream_identifier)?;
                    if log.streams.get(&stream).is_some_and(|s| s.tombstoned) {
                        return Err(stream_deleted(&stream));
                    }
                    let last = log.last(&stream);
                    let from = match s.revision_option {
                        Some(RO::Start(_)) | None => 0,
                        Some(RO::Revision(n)) => n.saturating_add(1),
                        Some(RO::End(_)) => last.map_or(0, |l| l + 1),
                    };
                    let history: Vec<Arc<Rec>> = match last {
                        Some(last) => {
                            let first = log.first_visible(&stream, last);
                            (from.max(first)..=last)
                                .map(|r| log.event(&stream, r).clone())
                                .collect()
                        }
                        None => Vec::new(),
                    };
                    (Some(stream), history, live, after)
                }
                Some(StreamOption::All(a)) => {
                    self.shared
                        .all_subscription_starts
                        .lock()
                        .unwrap()
                        .push(match &a.all_option {
                            Some(AO::Position(p)) => Some(p.commit_position),
                            _ => None,
                        });
                    let len = log.log.len();
                    let from = match a.all_option {
                        Some(AO::Start(_)) | None => 0,
                        Some(AO::Position(p)) => (log.index_at(p.commit_position)? + 1).min(len),
                        Some(AO::End(_)) => len,
                    };
                    (None, log.log[from..].to_vec(), live, after)
                }
                None => return Err(Status::invalid_argument("no stream option")),
            }
        };
        let mut feed = Feed {
            sender,
            structured,
            checkpoint_every: filter
                .as_ref()
                .filter(|_| stream.is_none())
                .map(|f| f.checkpoint_every),
            scanned: 0,
            stream,
            filter,
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let confirmation =
                sp::read_resp::Content::Confirmation(sp::read_resp::SubscriptionConfirmation {
                    subscription_id: ::uuid::Uuid::new_v4().to_string(),
                });
            if !feed.send(confirmation).await {
                return;
            }
            let (mut history, mut live, mut after) = (history, live, after);
            loop {
                for rec in &history {
                    if !feed.record(rec).await {
                        return;
                    }
                }
                let caught_up = sp::read_resp::Content::CaughtUp(sp::read_resp::CaughtUp {});
                if !feed.send(caught_up).await {
                    return;
                }
                loop {
                    let next = tokio::select! {
                        _ = feed.sender.closed() => return,
                        next = live.recv() => next,
                    };
                    match next {
                        Ok(rec) => {
                            if after.is_some_and(|a| rec.commit <= a) {
                                continue;
                            }
                            after = Some(rec.commit);
                            if !feed.record(&rec).await {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let fell_behind =
                                sp::read_resp::Content::FellBehind(sp::read_resp::FellBehind {});
                            if !feed.send(fell_behind).await {
                                return;
                            }
                            // Back to catch-up: what the log has after the
                            // last record seen, then live again.
                            let log = shared.log.lock().unwrap();
                            live = shared.live.subscribe();
                            let from =
                                after.map_or(0, |a| log.log.partition_point(|r| r.commit <= a));
                            history = log.log[from..].to_vec();
                            after = log.log.last().map(|r| r.commit);
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let _ = feed
                                .sender
                                .send(Err(Status::unavailable("server shutting down")))
                                .await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

/// The sending side of one subscription.
struct Feed {
    sender: mpsc::Sender<Result<sp::ReadResp, Status>>,
    structured: bool,
    /// For a filtered `$all` subscription: a checkpoint every this many
    /// scanned records.
    checkpoint_every: Option<u64>,
    scanned: u64,
    /// The stream of a stream subscription (`None`: `$all`).
    stream: Option<String>,
    filter: Option<AllFilter>,
}

impl Feed {
    async fn send(&self, content: sp::read_resp::Content) -> bool {
        let message = sp::ReadResp {
            content: Some(content),
        };
        self.sender.send(Ok(message)).await.is_ok()
    }

    /// Sends `rec` if the subscription wants it, and a checkpoint when one
    /// is due; false once the client has gone.
    async fn record(&mut self, rec: &Rec) -> bool {
        let wanted = match &self.stream {
            Some(stream) => rec.stream == *stream,
            None => self.filter.as_ref().map_or(true, |f| f.matches(rec)),
        };
        if wanted
            && self
                .sender
                .send(Ok(event_msg(rec, self.structured)))
                .await
                .is_err()
        {
            return false;
        }
        let Some(every) = self.checkpoint_every else {
            return true;
        };
        self.scanned += 1;
        if self.scanned % every != 0 {
            return true;
        }
        let checkpoint = sp::read_resp::Content::Checkpoint(sp::read_resp::Checkpoint {
            commit_position: rec.commit,
            prepare_position: rec.commit,
        });
        self.send(checkpoint).await
    }
}
