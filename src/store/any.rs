//! Store URLs and a store chosen at run time.
//!
//! `sqlite://PATH` opens the embedded store (the default,
//! `sqlite://./data/prjmanager.db`); `memory://` an empty in-memory store;
//! `esdb://…` and `esdb+discover://…` an EventStoreDB/KurrentDB node or
//! cluster (the connection string is the `eventstore` client's, e.g.
//! `esdb://127.0.0.1:2113?tls=false`; see `store::esdb`).

use std::path::PathBuf;

use super::embedded::EmbeddedStore;
use super::esdb::EsdbStore;
use super::memory::MemoryStore;
use super::{
    AppendResult, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom, RecordedEvent,
    StoreError, StreamFilter, StreamMetadata, Subscription,
};

/// The store used when no `--store` is given.
pub const DEFAULT_STORE_URL: &str = "sqlite://./data/prjmanager.db";

/// A parsed `--store` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded SQLite store at this path.
    Sqlite(PathBuf),
    /// A fresh in-memory store.
    Memory,
    /// An EventStoreDB connection string (`esdb://` or `esdb+discover://`).
    Esdb(EsdbUrl),
}

/// An EventStoreDB connection string, checked by the client's parser, and
/// the server's append size limit (`--max-append-bytes`); its `Debug` hides
/// any password.
#[derive(Clone, PartialEq, Eq)]
pub struct EsdbUrl(String, u64);

impl EsdbUrl {
    /// The connection string as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The largest append the server accepts.
    pub fn max_append_bytes(&self) -> u64 {
        self.1
    }
}

impl StoreUrl {
    /// The same URL with this append size limit (EventStoreDB only; the
    /// other stores have none).
    pub fn with_max_append_bytes(self, bytes: u64) -> Self {
        match self {
            Self::Esdb(EsdbUrl(url, _)) => Self::Esdb(EsdbUrl(url, bytes)),
            other => other,
        }
    }
}

impl EsdbUrl {
    /// The connection string with any password hidden.
    fn shown(&self) -> String {
        match (self.0.find("://"), self.0.find('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &self.0[..scheme], &self.0[at + 1..])
            }
            _ => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for EsdbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EsdbUrl").field(&self.shown()).finish()
    }
}

impl std::fmt::Display for StoreUrl {
    /// The URL as it can be given again, any password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Memory => f.write_str("memory://"),
            StoreUrl::Esdb(url) => f.write_str(&url.shown()),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!("store URL {url:?} has no file path"));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url == "memory://" || url == "memory" {
            return Ok(Self::Memory);
        }
        if url.starts_with("esdb://") || url.starts_with("esdb+discover://") {
            return match url.parse::<eventstore::ClientSettings>() {
                Ok(_) => Ok(Self::Esdb(EsdbUrl(
                    url.to_string(),
                    super::esdb::DEFAULT_MAX_APPEND_BYTES,
                ))),
                Err(e) => Err(format!("bad EventStoreDB store URL: {e}")),
            };
        }
        Err(format!(
            "unknown store URL {url:?}: expected sqlite://PATH, memory:// or esdb://HOST:PORT"
        ))
    }
}

/// One of the store implementations, chosen by URL.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded SQLite store.
    Embedded(EmbeddedStore),
    /// The in-memory store.
    Memory(MemoryStore),
    /// An EventStoreDB node or cluster.
    Esdb(EsdbStore),
}

impl AnyStore {
    /// Opens the store a URL names (creating the SQLite file and its folder).
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        Ok(match url {
            StoreUrl::Sqlite(path) => Self::Embedded(EmbeddedStore::open(path)?),
            StoreUrl::Memory => Self::Memory(MemoryStore::new()),
            StoreUrl::Esdb(url) => Self::Esdb(
                EsdbStore::connect(url.as_str())?.with_max_append_bytes(url.max_append_bytes()),
            ),
        })
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Embedded($s) => $e,
            AnyStore::Memory($s) => $e,
            AnyStore::Esdb($s) => $e,
        }
    };
}

impl EventStore for AnyStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        dispatch!(self, s => s.append(stream, expected, events).await)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        dispatch!(self, s => s.read_stream(stream, from, direction, max).await)
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &StreamFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        dispatch!(self, s => s.read_all(from_position, max, filter).await)
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        dispatch!(self, s => s.stream_revision(stream).await)
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_stream_metadata(stream, metadata).await)
    }

    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError> {
        dispatch!(self, s => s.stream_metadata(stream).await)
    }

    fn subscribe_all(&self, from_position: u64, filter: StreamFilter) -> Subscription {
        dispatch!(self, s => s.subscribe_all(from_position, filter))
    }

    fn max_append_bytes(&self) -> Option<u64> {
        dispatch!(self, s => s.max_append_bytes())
    }

    fn head_position(&self) -> Option<u64> {
        dispatch!(self, s => s.head_position())
    }

    fn subscribe_stream(&self, stream: &str, from_revision: u64) -> Subscription {
        dispatch!(self, s => s.subscribe_stream(stream, from_revision))
    }
}
