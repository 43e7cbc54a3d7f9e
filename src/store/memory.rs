//! The in-memory store: the reference model of the store contract, used by
//! tests and pure replays. Nothing survives the process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use uuid::Uuid;

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
    /// Per stream, its events.
    streams: BTreeMap<String, StreamIndex>,
    metadata: BTreeMap<String, StreamMetadata>,
}

/// One stream's events: what `read_stream` and the append check need, each
/// in constant time per event.
#[derive(Debug, Default)]
struct StreamIndex {
    /// The indexes into `log` of the stream's events, in revision order.
    events: Vec<usize>,
    /// The revision of every event id of the stream (ids are unique in a
    /// stream: the append check rejects a duplicate).
    revisions: HashMap<Uuid, u64>,
}

/// A stream's ids as the append check sees them: `index` is `None` for a
/// stream without events.
struct MemoryIds<'a> {
    index: Option<&'a StreamIndex>,
    log: &'a [RecordedEvent],
}

impl StreamIds for MemoryIds<'_> {
    fn last_revision(&self) -> Option<u64> {
        self.index
            .and_then(|index| index.events.len().checked_sub(1))
            .map(|r| r as u64)
    }

    fn revision_of(&self, id: &Uuid) -> Option<u64> {
        self.index?.revisions.get(id).copied()
    }

    fn id_at(&self, revision: u64) -> Option<Uuid> {
        let index = self.index?.events.get(usize::try_from(revision).ok()?)?;
        Some(self.log[*index].id)
    }
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
    fn revision_of(&self, id: &Uuid) -> Option<u64>;
    /// The id of the event at this revision, if there is one.
    fn id_at(&self, revision: u64) -> Option<Uuid>;
}

/// The plain view: the ids in revision order (linear lookups; the reference
/// the indexed views are tested against).
impl StreamIds for [Uuid] {
    fn last_revision(&self) -> Option<u64> {
        self.len().checked_sub(1).map(|r| r as u64)
    }

    fn revision_of(&self, id: &Uuid) -> Option<u64> {
        self.iter().position(|known| known == id).map(|r| r as u64)
    }

    fn id_at(&self, revision: u64) -> Option<Uuid> {
        usize::try_from(revision)
            .ok()
            .and_then(|r| self.get(r))
            .copied()
    }
}

/// Checks an append against a stream's current events; the shared rule of
/// every store (see the module documentation of `store`).
///
/// `stream_ids` is a view of the ids of the stream's events (the plain list
/// in revision order, `[Uuid]`, is the obvious one; the stores keep indexed
/// ones). The view is asked only for the last revision, the revisions of the
/// batch's ids and the ids at revisions `r..r + batch.len()` where `r` is the
/// revision of the batch's first id, so the check costs O(batch) lookups.
/// Returns `Ok(Some(r))` for an idempotent retry whose first event is at
/// revision `r`, `Ok(None)` when the batch must be written.
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
    if !expected.holds(actual) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.to_string(),
            expected,
            actual,
        });
    }
    // The first event whose id is in the stream or earlier in the batch.
    let mut batch_ids = HashSet::with_capacity(batch.len());
    for event in batch {
        if stream_ids.revision_of(&event.id).is_some() || !batch_ids.insert(event.id) {
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
        let mut guard = self.lock();
        let inner = &mut *guard;
        let ids = MemoryIds {
            index: inner.streams.get(stream),
            log: &inner.log,
        };
        if let Some(start) = check_append_with(stream, expected, &ids, &events)? {
            let next_revision = start + events.len() as u64 - 1;
            let last =
                ids.index.expect("a retry's ids are in the stream").events[next_revision as usize];
            return Ok(AppendResult {
                next_revision,
                position: inner.log[last].position,
            });
        }
        if !inner.streams.contains_key(stream) {
            inner
                .streams
                .insert(stream.to_string(), StreamIndex::default());
        }
        let index = inner
            .streams
            .get_mut(stream)
            .expect("the stream's index was just made");
        let mut revision = index.events.len() as u64;
        inner.log.reserve(events.len());
        index.events.reserve(events.len());
        index.revisions.reserve(events.len());
        for event in events {
            let at = inner.log.len();
            index.events.push(at);
            index.revisions.insert(event.id, revision);
            inner.log.push(RecordedEvent {
                stream: stream.to_string(),
                revision,
                position: at as u64 + 1,
                id: event.id,
                event_type: event.event_type,
                data: event.data,
                metadata: event.metadata,
            });
            revision += 1;
        }
        let position = inner.log.len() as u64;
        drop(guard);
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
        let Some(StreamIndex {
            events: indexes, ..
        }) = inner.streams.get(stream)
        else {
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
            .map(|index| index.events.len() as u64 - 1))
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

    fn head_position(&self) -> Option<u64> {
        Some(*self.head.borrow())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u128) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(id),
            event_type: "E".into(),
            data: Vec::new(),
            metadata: Vec::new(),
        }
    }

    /// The indexed view the store keeps answers every append check as the
    /// plain list of ids does, over random appends whose ids come from a
    /// small pool (so that retries and duplicates are frequent).
    #[test]
    fn indexed_ids_agree_with_the_plain_list() {
        let mut seed = 7_u64;
        let mut below = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let store = MemoryStore::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        for _ in 0..2_000 {
            let stream = ["a", "b"][below(2) as usize];
            let batch: Vec<NewEvent> = (0..1 + below(3))
                .map(|_| event(u128::from(below(16))))
                .collect();
            let expected = match below(4) {
                0 => ExpectedRevision::Any,
                1 => ExpectedRevision::NoStream,
                2 => ExpectedRevision::StreamExists,
                _ => ExpectedRevision::Exact(below(8)),
            };
            let checked = {
                let inner = store.lock();
                let plain: Vec<Uuid> = inner.streams.get(stream).map_or(Vec::new(), |index| {
                    index.events.iter().map(|&i| inner.log[i].id).collect()
                });
                let indexed = MemoryIds {
                    index: inner.streams.get(stream),
                    log: &inner.log,
                };
                let from_plain = check_append_with(stream, expected, plain.as_slice(), &batch);
                let from_index = check_append_with(stream, expected, &indexed, &batch);
                assert_eq!(from_plain, from_index, "{stream} {expected:?} {batch:?}");
                from_plain
            };
            let appended = runtime.block_on(store.append(stream, expected, batch.clone()));
            match (checked, appended) {
                (Ok(Some(start)), Ok(result)) => {
                    assert_eq!(result.next_revision, start + batch.len() as u64 - 1)
                }
                (Ok(None), Ok(_)) => {}
                (Err(expected), Err(actual)) => assert_eq!(expected, actual),
                (checked, appended) => panic!("checked {checked:?}, appended {appended:?}"),
            }
        }
    }
}
