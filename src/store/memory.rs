//! The in-memory store: the reference model of the store contract, used by
//! tests and pure replays. Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{
    catchup, AppendResult, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom,
    RecordedEvent, StoreError, StreamFilter, StreamMetadata, Subscription,
};

/// An in-memory event store; clones share the same data.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    head: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every event in position order; `log[i].position == i + 1`.
    log: Vec<RecordedEvent>,
    /// Per stream, the indexes into `log` of its events in revision order.
    streams: BTreeMap<String, Vec<usize>>,
    metadata: BTreeMap<String, StreamMetadata>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            head: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("memory store mutex poisoned")
    }
}

/// What the append check needs to know of a stream's ids, so that a store
/// keeping them on disk can answer from a few indexed lookups instead of
/// loading every id of the stream.
pub(crate) trait StreamIds {
    /// The stream's last revision (`None`: no event).
    fn last_revision(&self) -> Option<u64>;
    /// The revision of the event with this id, if it is in the stream.
    fn revision_of(&self, id: &uuid::Uuid) -> Option<u64>;
    /// The id of the event at this revision, if there is one.
    fn id_at(&self, revision: u64) -> Option<uuid::Uuid>;
}

impl StreamIds for [uuid::Uuid] {
    fn last_revision(&self) -> Option<u64> {
        self.len().checked_sub(1).map(|r| r as u64)
    }

    fn revision_of(&self, id: &uuid::Uuid) -> Option<u64> {
        self.iter().position(|known| known == id).map(|r| r as u64)
    }

    fn id_at(&self, revision: u64) -> Option<uuid::Uuid> {
        usize::try_from(revision)
            .ok()
            .and_then(|r| self.get(r))
            .copied()
    }
}

/// Checks an append against a stream's current events; the shared rule of
/// every store (see the module documentation of `store`).
///
/// `ids` are the ids of the stream's events in revision order. Returns
/// `Ok(Some(r))` for an idempotent retry whose first event is at revision
/// `r`, `Ok(None)` when the batch must be written.
pub(crate) fn check_append(
    stream: &str,
    expected: ExpectedRevision,
    stream_ids: &[uuid::Uuid],
    batch: &[NewEvent],
) -> Result<Option<u64>, StoreError> {
    check_append_with(stream, expected, stream_ids, batch)
}

/// [`check_append`] over any view of the stream's ids. The view is asked
/// only for the last revision, the revisions of the batch's ids and the ids
/// at revisions `r..r + batch.len()` where `r` is the revision of the
/// batch's first id.
pub(crate) fn check_append_with<S: StreamIds + ?Sized>(
    stream: &str,
    expected: ExpectedRevision,
    stream_ids: &S,
    batch: &[NewEvent],
) -> Result<Option<u64>, StoreError> {
    let actual = stream_ids.last_revision();
    if let Some(first) = batch.first() {
        if let Some(start) = stream_ids.revision_of(&first.id) {
            let same = batch
                .iter()
                .zip(start..)
                .all(|(event, revision)| stream_ids.id_at(revision) == Some(event.id));
            let consistent = match expected {
                ExpectedRevision::Any | ExpectedRevision::StreamExists => true,
                ExpectedRevision::NoStream => start == 0,
                ExpectedRevision::Exact(n) => start > 0 && n == start - 1,
            };
            if same && consistent {
                return Ok(Some(start));
            }
        }
    }
    let ok = match expected {
        ExpectedRevision::Any => true,
        ExpectedRevision::NoStream => actual.is_none(),
        ExpectedRevision::StreamExists => actual.is_some(),
        ExpectedRevision::Exact(n) => actual == Some(n),
    };
    if !ok {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.to_string(),
            expected,
            actual,
        });
    }
    for (i, event) in batch.iter().enumerate() {
        if stream_ids.revision_of(&event.id).is_some()
            || batch[..i].iter().any(|e| e.id == event.id)
        {
            return Err(StoreError::DuplicateEventId {
                stream: stream.to_string(),
                id: event.id,
            });
        }
    }
    Ok(None)
}

/// Validates the arguments every store rejects the same way.
pub(crate) fn check_request(stream: &str, events: &[NewEvent]) -> Result<(), StoreError> {
    if stream.is_empty() {
        return Err(StoreError::InvalidArgument("stream name is empty".into()));
    }
    if events.is_empty() {
        return Err(StoreError::InvalidArgument(format!(
            "append to {stream:?} has no events"
        )));
    }
    if let Some(e) = events.iter().find(|e| e.event_type.is_empty()) {
        return Err(StoreError::InvalidArgument(format!(
            "event {} has an empty type",
            e.id
        )));
    }
    Ok(())
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        check_request(stream, &events)?;
        let mut inner = self.lock();
        let indexes = inner.streams.get(stream).cloned().unwrap_or_default();
        let ids: Vec<_> = indexes.iter().map(|&i| inner.log[i].id).collect();
        if let Some(start) = check_append(stream, expected, &ids, &events)? {
            let last = indexes[start as usize + events.len() - 1];
            return Ok(AppendResult {
                next_revision: start + events.len() as u64 - 1,
                position: inner.log[last].position,
            });
        }
        let mut revision = ids.len() as u64;
        for event in events {
            let index = inner.log.len();
            inner.log.push(RecordedEvent {
                stream: stream.to_string(),
                revision,
                position: index as u64 + 1,
                id: event.id,
                event_type: event.event_type,
                data: event.data,
                metadata: event.metadata,
            });
            inner
                .streams
                .entry(stream.to_string())
                .or_default()
                .push(index);
            revision += 1;
        }
        let position = inner.log.len() as u64;
        drop(inner);
        self.head.send_replace(position);
        Ok(AppendResult {
            next_revision: revision - 1,
            position,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let Some(indexes) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let last = indexes.len() as u64 - 1;
        let first = inner
            .metadata
            .get(stream)
            .copied()
            .unwrap_or_default()
            .first_visible(last);
        let start = match from {
            ReadFrom::Start => first,
            ReadFrom::End => last,
            ReadFrom::Revision(r) => r,
        };
        let revisions: Box<dyn Iterator<Item = u64>> = match direction {
            Direction::Forwards => Box::new(start.max(first)..=last),
            Direction::Backwards if start < first => Box::new(std::iter::empty()),
            Direction::Backwards => Box::new((first..=start.min(last)).rev()),
        };
        Ok(revisions
            .take(max)
            .map(|r| inner.log[indexes[r as usize]].clone())
            .collect())
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &StreamFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let start = from_position.max(1) as usize - 1;
        Ok(inner
            .log
            .iter()
            .skip(start)
            .filter(|e| filter.matches(&e.stream))
            .take(max)
            .cloned()
            .collect())
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .map(|indexes| indexes.len() as u64 - 1))
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError> {
        self.lock().metadata.insert(stream.to_string(), metadata);
        Ok(())
    }

    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError> {
        Ok(self
            .lock()
            .metadata
            .get(stream)
            .copied()
            .unwrap_or_default())
    }

    fn subscribe_all(&self, from_position: u64, filter: StreamFilter) -> Subscription {
        catchup::subscribe_all(self.clone(), self.head.subscribe(), from_position, filter)
    }

    fn subscribe_stream(&self, stream: &str, from_revision: u64) -> Subscription {
        catchup::subscribe_stream(
            self.clone(),
            self.head.subscribe(),
            stream.to_string(),
            from_revision,
        )
    }
}
