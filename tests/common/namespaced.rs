//! A test-only view of a shared, non-empty store (a real EventStoreDB node)
//! as if it were a fresh one: stream names get a unique prefix, `read_all`
//! and `subscribe_all` see only this view's streams, and global positions
//! are renumbered 1, 2, 3, … in `$all` order, so the conformance cases that
//! assume an empty store with dense positions can run against it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use prjmanager::store::{
    AppendResult, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom, RecordedEvent,
    StoreError, StreamFilter, StreamMetadata, Subscription,
};
use tokio::sync::mpsc;

/// A store seen through a unique stream-name prefix.
#[derive(Clone)]
pub struct Namespaced<S> {
    inner: S,
    prefix: String,
    /// The inner position from which this view's events are scanned.
    base: u64,
    /// Inner positions of this view's events, in order: ordinal = index + 1.
    known: Arc<Mutex<Vec<u64>>>,
}

impl<S: EventStore> Namespaced<S> {
    /// A fresh view; appends a marker (outside the view) to find where to
    /// start scanning `$all`.
    pub async fn new(inner: S) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let marker = inner
            .append(
                &format!("marker{id}"),
                ExpectedRevision::NoStream,
                vec![NewEvent {
                    id: uuid::Uuid::new_v4(),
                    event_type: "ConformanceStarted".into(),
                    data: vec![],
                    metadata: b"{}".to_vec(),
                }],
            )
            .await
            .expect("append the view's marker");
        Self {
            inner,
            prefix: format!("t{id}-"),
            base: marker.position,
            known: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn name(&self, stream: &str) -> String {
        format!("{}{stream}", self.prefix)
    }

    fn unname(&self, stream: &str) -> String {
        stream
            .strip_prefix(&self.prefix)
            .unwrap_or(stream)
            .to_string()
    }

    fn error(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => StoreError::WrongExpectedVersion {
                stream: self.unname(&stream),
                expected,
                actual,
            },
            StoreError::DuplicateEventId { stream, id } => StoreError::DuplicateEventId {
                stream: self.unname(&stream),
                id,
            },
            other => other,
        }
    }

    /// Every event of the view, with inner positions, rescanned.
    async fn scan(&self) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self
            .inner
            .read_all(self.base, usize::MAX, &StreamFilter::prefix(&self.prefix))
            .await?;
        *self.known.lock().unwrap() = events.iter().map(|e| e.position).collect();
        Ok(events)
    }

    async fn ordinal(&self, position: u64) -> Result<u64, StoreError> {
        let find = |known: &Vec<u64>| known.binary_search(&position).ok().map(|i| i as u64 + 1);
        if let Some(ordinal) = find(&self.known.lock().unwrap()) {
            return Ok(ordinal);
        }
        self.scan().await?;
        let found = find(&self.known.lock().unwrap());
        found.ok_or_else(|| StoreError::Corrupt(format!("position {position} not in the view")))
    }

    async fn outer(&self, mut event: RecordedEvent) -> Result<RecordedEvent, StoreError> {
        event.position = self.ordinal(event.position).await?;
        event.stream = self.unname(&event.stream);
        Ok(event)
    }

    fn inner_filter(&self, filter: &StreamFilter) -> StreamFilter {
        if filter.prefixes.is_empty() || filter.prefixes.iter().any(String::is_empty) {
            StreamFilter::prefix(&self.prefix)
        } else {
            StreamFilter {
                prefixes: filter.prefixes.iter().map(|p| self.name(p)).collect(),
            }
        }
    }

    fn translate(&self, mut from: Subscription, skip_below: u64) -> Subscription {
        let (sender, receiver) = mpsc::channel(1024);
        let view = self.clone();
        tokio::spawn(async move {
            while let Some(next) = from.next().await {
                let next = match next {
                    Ok(event) => view.outer(event).await,
                    Err(err) => Err(err),
                };
                if matches!(&next, Ok(e) if e.position < skip_below) {
                    continue;
                }
                if sender.send(next).await.is_err() {
                    return;
                }
            }
        });
        Subscription::new(receiver)
    }
}

impl<S: EventStore> EventStore for Namespaced<S> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let name = if stream.is_empty() {
            String::new()
        } else {
            self.name(stream)
        };
        let result = self
            .inner
            .append(&name, expected, events)
            .await
            .map_err(|e| self.error(e))?;
        Ok(AppendResult {
            next_revision: result.next_revision,
            position: self.ordinal(result.position).await?,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self
            .inner
            .read_stream(&self.name(stream), from, direction, max)
            .await?;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            out.push(self.outer(event).await?);
        }
        Ok(out)
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &StreamFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.scan().await?;
        Ok(events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.position = i as u64 + 1;
                e.stream = self.unname(&e.stream);
                e
            })
            .filter(|e| e.position >= from_position && filter.matches(&e.stream))
            .take(max)
            .collect())
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        self.inner.stream_revision(&self.name(stream)).await
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError> {
        self.inner
            .set_stream_metadata(&self.name(stream), metadata)
            .await
    }

    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError> {
        self.inner.stream_metadata(&self.name(stream)).await
    }

    fn subscribe_all(&self, from_position: u64, filter: StreamFilter) -> Subscription {
        let inner = self
            .inner
            .subscribe_all(self.base, self.inner_filter(&filter));
        self.translate(inner, from_position)
    }

    fn subscribe_stream(&self, stream: &str, from_revision: u64) -> Subscription {
        let inner = self
            .inner
            .subscribe_stream(&self.name(stream), from_revision);
        self.translate(inner, 0)
    }
}
