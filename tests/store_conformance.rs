//! The store conformance suite: one set of cases, generic over
//! `EventStore`, run against every implementation (`conformance!` below
//! instantiates each case per store), plus the cases only the embedded store
//! has (persistence across a reopen, file identity, scavenge, shutdown).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use prjmanager::store::embedded::{EmbeddedStore, APPLICATION_ID};
use prjmanager::store::esdb::EsdbStore;
use prjmanager::store::memory::MemoryStore;
use prjmanager::store::{
    AppendResult, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom, RecordedEvent,
    StoreError, StreamFilter, StreamMetadata, Subscription,
};
use tempfile::TempDir;
use uuid::Uuid;

#[path = "common/esdb_double.rs"]
mod esdb_double;
#[path = "common/namespaced.rs"]
mod namespaced;
use esdb_double::EsdbDouble;
use namespaced::Namespaced;

/// How long a subscription may take to deliver the next event before the
/// test fails instead of hanging.
const SUBSCRIPTION_TIMEOUT: Duration = Duration::from_secs(30);

/// An event whose id and payload derive from `n`, so tests can name events
/// by number.
fn event(n: u128) -> NewEvent {
    NewEvent {
        id: Uuid::from_u128(n),
        event_type: format!("Tested{}", n % 3),
        data: n.to_be_bytes().to_vec(),
        metadata: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn events(numbers: impl IntoIterator<Item = u128>) -> Vec<NewEvent> {
    numbers.into_iter().map(event).collect()
}

/// The numbers of events, from their ids.
fn numbers(events: &[RecordedEvent]) -> Vec<u128> {
    events.iter().map(|e| e.id.as_u128()).collect()
}

fn revisions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

fn wrong(stream: &str, expected: ExpectedRevision, actual: Option<u64>) -> StoreError {
    StoreError::WrongExpectedVersion {
        stream: stream.to_string(),
        expected,
        actual,
    }
}

fn duplicate(stream: &str, n: u128) -> StoreError {
    StoreError::DuplicateEventId {
        stream: stream.to_string(),
        id: Uuid::from_u128(n),
    }
}

async fn everything<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store
        .read_all(1, usize::MAX, &StreamFilter::default())
        .await
        .unwrap()
}

/// The global position of event `n`. Positions only grow: they are dense
/// in the embedded and memory stores and byte offsets (with gaps) in
/// EventStoreDB, so the generic cases compare with what was read back.
async fn position_of<S: EventStore>(store: &S, n: u128) -> u64 {
    everything(store)
        .await
        .iter()
        .find(|e| e.id.as_u128() == n)
        .unwrap_or_else(|| panic!("event {n} is not in the store"))
        .position
}

async fn whole_stream<S: EventStore>(store: &S, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, ReadFrom::Start, Direction::Forwards, usize::MAX)
        .await
        .unwrap()
}

/// The next `count` events of a subscription, failing on an error, an end or
/// a stall.
async fn take(subscription: &mut Subscription, count: usize) -> Vec<RecordedEvent> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        let next = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("subscription stalled after {} events", received.len()));
        received.push(
            next.expect("subscription ended")
                .expect("subscription failed"),
        );
    }
    received
}

/// Instantiates every case for every store, as `memory::<case>`,
/// `embedded::<case>`, `esdb::<case>` (the EventStoreDB adapter talking to
/// the in-process double of `tests/common/esdb_double.rs`) and
/// `esdb_real::<case>` (a real node, when `PRJMANAGER_TEST_ESDB` is set)
/// test functions.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(MemoryStore::new()).await;
                }
            )*
        }
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let folder = TempDir::new().unwrap();
                    let store = EmbeddedStore::open(folder.path().join("store.db")).unwrap();
                    super::$case(store.clone()).await;
                    store.close().await.unwrap();
                }
            )*
        }
        mod esdb {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let double = EsdbDouble::start();
                    super::$case(EsdbStore::connect(&double.url()).unwrap()).await;
                }
            )*
        }
        /// Against a real EventStoreDB/KurrentDB node named by
        /// `PRJMANAGER_TEST_ESDB` (a connection string), each case in a
        /// fresh namespace of streams; skipped when it is not set.
        mod esdb_real {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Ok(url) = std::env::var("PRJMANAGER_TEST_ESDB") else {
                        println!("skipped: PRJMANAGER_TEST_ESDB is not set (no real EventStoreDB)");
                        return;
                    };
                    let store = EsdbStore::connect(&url).unwrap();
                    super::$case(Namespaced::new(store).await).await;
                }
            )*
        }
    };
}

conformance!(
    expected_any,
    expected_no_stream,
    expected_stream_exists,
    expected_exact,
    metadata_alone_does_not_create_a_stream,
    failed_batches_write_nothing,
    invalid_requests_write_nothing,
    idempotent_retries,
    reused_ids_are_duplicates,
    concurrent_exact_appenders,
    concurrent_mixed_appends,
    read_stream_directions,
    read_all_order,
    read_all_prefix_filter,
    metadata_max_count,
    metadata_truncate_before,
    subscribe_all_history_then_live,
    subscribe_all_filtered,
    subscribe_stream_history_then_live,
);

async fn expected_any<S: EventStore>(store: S) {
    let first = store
        .append("s", ExpectedRevision::Any, events([1]))
        .await
        .unwrap();
    assert_eq!(
        first,
        AppendResult {
            next_revision: 0,
            position: position_of(&store, 1).await
        }
    );
    assert!(first.position >= 1);
    let second = store
        .append("s", ExpectedRevision::Any, events([2, 3]))
        .await
        .unwrap();
    assert_eq!(
        second,
        AppendResult {
            next_revision: 2,
            position: position_of(&store, 3).await
        }
    );
    assert_eq!(store.stream_revision("s").await.unwrap(), Some(2));
    assert_eq!(numbers(&whole_stream(&store, "s").await), [1, 2, 3]);
}

async fn expected_no_stream<S: EventStore>(store: S) {
    let created = store
        .append("s", ExpectedRevision::NoStream, events([1, 2]))
        .await
        .unwrap();
    assert_eq!(created.next_revision, 1);
    let err = store
        .append("s", ExpectedRevision::NoStream, events([3]))
        .await
        .unwrap_err();
    assert_eq!(err, wrong("s", ExpectedRevision::NoStream, Some(1)));
    assert_eq!(numbers(&whole_stream(&store, "s").await), [1, 2]);
}

async fn expected_stream_exists<S: EventStore>(store: S) {
    let err = store
        .append("s", ExpectedRevision::StreamExists, events([1]))
        .await
        .unwrap_err();
    assert_eq!(err, wrong("s", ExpectedRevision::StreamExists, None));
    assert_eq!(store.stream_revision("s").await.unwrap(), None);
    store
        .append("s", ExpectedRevision::NoStream, events([1]))
        .await
        .unwrap();
    let appended = store
        .append("s", ExpectedRevision::StreamExists, events([2]))
        .await
        .unwrap();
    assert_eq!(appended.next_revision, 1);
}

async fn expected_exact<S: EventStore>(store: S) {
    for expected in [0, 1, 5] {
        let err = store
            .append("s", ExpectedRevision::Exact(expected), events([1]))
            .await
            .unwrap_err();
        assert_eq!(err, wrong("s", ExpectedRevision::Exact(expected), None));
    }
    store
        .append("s", ExpectedRevision::NoStream, events([1, 2, 3]))
        .await
        .unwrap();
    for expected in [0, 1, 3, 100] {
        let err = store
            .append("s", ExpectedRevision::Exact(expected), events([4]))
            .await
            .unwrap_err();
        assert_eq!(err, wrong("s", ExpectedRevision::Exact(expected), Some(2)));
    }
    let appended = store
        .append("s", ExpectedRevision::Exact(2), events([4]))
        .await
        .unwrap();
    assert_eq!(appended.next_revision, 3);
    let appended = store
        .append("s", ExpectedRevision::Exact(3), events([5, 6]))
        .await
        .unwrap();
    assert_eq!(
        appended,
        AppendResult {
            next_revision: 5,
            position: position_of(&store, 6).await
        }
    );
    assert_eq!(
        numbers(&whole_stream(&store, "s").await),
        [1, 2, 3, 4, 5, 6]
    );
}

async fn metadata_alone_does_not_create_a_stream<S: EventStore>(store: S) {
    let metadata = StreamMetadata {
        max_count: Some(2),
        truncate_before: None,
    };
    store.set_stream_metadata("s", metadata).await.unwrap();
    assert_eq!(store.stream_metadata("s").await.unwrap(), metadata);
    assert_eq!(store.stream_revision("s").await.unwrap(), None);
    assert!(whole_stream(&store, "s").await.is_empty());
    let err = store
        .append("s", ExpectedRevision::StreamExists, events([1]))
        .await
        .unwrap_err();
    assert_eq!(err, wrong("s", ExpectedRevision::StreamExists, None));
    store
        .append("s", ExpectedRevision::NoStream, events([1]))
        .await
        .unwrap();
    assert_eq!(
        store.stream_metadata("other").await.unwrap(),
        StreamMetadata::default()
    );
}

async fn failed_batches_write_nothing<S: EventStore>(store: S) {
    store
        .append("s", ExpectedRevision::NoStream, events([1, 2]))
        .await
        .unwrap();
    let before = everything(&store).await;

    // A batch repeating an id inside itself is refused whole.
    let err = store
        .append("s", ExpectedRevision::Exact(1), events([3, 4, 3]))
        .await
        .unwrap_err();
    assert_eq!(err, duplicate("s", 3));
    // A batch whose last event reuses an id of the stream is refused whole.
    let err = store
        .append("s", ExpectedRevision::Any, events([5, 6, 1]))
        .await
        .unwrap_err();
    assert_eq!(err, duplicate("s", 1));
    // A wrong expected revision writes none of the batch.
    let err = store
        .append("s", ExpectedRevision::Exact(0), events([7, 8, 9]))
        .await
        .unwrap_err();
    assert_eq!(err, wrong("s", ExpectedRevision::Exact(0), Some(1)));
    let err = store
        .append("t", ExpectedRevision::StreamExists, events([7, 8, 9]))
        .await
        .unwrap_err();
    assert_eq!(err, wrong("t", ExpectedRevision::StreamExists, None));

    assert_eq!(everything(&store).await, before);
    assert_eq!(store.stream_revision("s").await.unwrap(), Some(1));
    assert_eq!(store.stream_revision("t").await.unwrap(), None);
    // The refused events were not half-written: they can be appended now.
    let appended = store
        .append("s", ExpectedRevision::Exact(1), events([3, 4, 5, 6, 7]))
        .await
        .unwrap();
    assert_eq!(
        appended,
        AppendResult {
            next_revision: 6,
            position: position_of(&store, 7).await
        }
    );
}

async fn invalid_requests_write_nothing<S: EventStore>(store: S) {
    let err = store
        .append("", ExpectedRevision::Any, events([1]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    let err = store
        .append("s", ExpectedRevision::Any, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    let mut untyped = events([1, 2]);
    untyped[1].event_type.clear();
    let err = store
        .append("s", ExpectedRevision::Any, untyped)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    assert!(everything(&store).await.is_empty());
    assert_eq!(store.stream_revision("s").await.unwrap(), None);
}

async fn idempotent_retries<S: EventStore>(store: S) {
    let original = store
        .append("s", ExpectedRevision::NoStream, events([1, 2]))
        .await
        .unwrap();
    // The same batch at the same expected revision, and with the expectations
    // that hold for a batch at revision 0.
    for expected in [
        ExpectedRevision::NoStream,
        ExpectedRevision::Any,
        ExpectedRevision::StreamExists,
    ] {
        let retried = store.append("s", expected, events([1, 2])).await.unwrap();
        assert_eq!(retried, original, "retry with {expected}");
    }
    // An Exact expectation cannot name the revision before 0.
    let err = store
        .append("s", ExpectedRevision::Exact(0), events([1, 2]))
        .await
        .unwrap_err();
    assert_eq!(err, wrong("s", ExpectedRevision::Exact(0), Some(1)));

    let third = store
        .append("s", ExpectedRevision::Exact(1), events([3]))
        .await
        .unwrap();
    store
        .append("other", ExpectedRevision::Any, events([10]))
        .await
        .unwrap();
    store
        .append("s", ExpectedRevision::Exact(2), events([4]))
        .await
        .unwrap();
    // A retry still succeeds after the stream and the store moved on.
    for expected in [ExpectedRevision::Exact(1), ExpectedRevision::Any] {
        let retried = store.append("s", expected, events([3])).await.unwrap();
        assert_eq!(retried, third, "retry with {expected}");
    }
    // A tail of an earlier batch is a retry of that tail.
    let tail = store
        .append("s", ExpectedRevision::Any, events([2]))
        .await
        .unwrap();
    assert_eq!(
        tail,
        AppendResult {
            next_revision: 1,
            position: position_of(&store, 2).await
        }
    );
    let all = everything(&store).await;
    assert_eq!(numbers(&all), [1, 2, 3, 10, 4]);
    assert_eq!(revisions(&whole_stream(&store, "s").await), [0, 1, 2, 3]);
}

async fn reused_ids_are_duplicates<S: EventStore>(store: S) {
    store
        .append("s", ExpectedRevision::NoStream, events([1, 2, 3]))
        .await
        .unwrap();
    // Same first id, different rest.
    let err = store
        .append("s", ExpectedRevision::Any, events([1, 9]))
        .await
        .unwrap_err();
    assert_eq!(err, duplicate("s", 1));
    // The right ids at the wrong place.
    let err = store
        .append("s", ExpectedRevision::Any, events([2, 1]))
        .await
        .unwrap_err();
    assert_eq!(err, duplicate("s", 2));
    // A retry whose expectation does not match where the batch is.
    let err = store
        .append("s", ExpectedRevision::Exact(2), events([2, 3]))
        .await
        .unwrap_err();
    assert_eq!(err, duplicate("s", 2));
    // A batch longer than what was written.
    let err = store
        .append("s", ExpectedRevision::Any, events([2, 3, 4]))
        .await
        .unwrap_err();
    assert_eq!(err, duplicate("s", 2));
    // Ids are unique per stream, not per store.
    let elsewhere = store
        .append("t", ExpectedRevision::NoStream, events([1, 2]))
        .await
        .unwrap();
    assert_eq!(elsewhere.next_revision, 1);
    assert_eq!(numbers(&everything(&store).await), [1, 2, 3, 1, 2]);
}

/// Tasks race to append with `Exact`: each revision has exactly one winner,
/// and the stream ends up gapless with every event exactly once.
async fn concurrent_exact_appenders<S: EventStore>(store: S) {
    const TASKS: u128 = 8;
    const ROUNDS: u128 = 50;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for round in 0..ROUNDS {
                let n = task * 1000 + round;
                let mut actual = store.stream_revision("race").await.unwrap();
                loop {
                    let expected =
                        actual.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                    match store.append("race", expected, events([n])).await {
                        Ok(result) => {
                            assert_eq!(result.next_revision, actual.map_or(0, |r| r + 1));
                            won.push((result.next_revision, n));
                            break;
                        }
                        Err(StoreError::WrongExpectedVersion {
                            actual: now,
                            expected: refused,
                            ..
                        }) => {
                            assert_eq!(refused, expected);
                            assert_ne!(now, actual);
                            actual = now;
                        }
                        Err(err) => panic!("unexpected error {err:?}"),
                    }
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        won.extend(task.await.unwrap());
    }
    won.sort();
    let total = (TASKS * ROUNDS) as u64;
    assert_eq!(
        won.iter()
            .map(|(revision, _)| *revision)
            .collect::<Vec<_>>(),
        (0..total).collect::<Vec<_>>()
    );
    let stream = whole_stream(&store, "race").await;
    assert_eq!(revisions(&stream), (0..total).collect::<Vec<_>>());
    assert_eq!(
        stream
            .iter()
            .map(|e| (e.revision, e.id.as_u128()))
            .collect::<Vec<_>>(),
        won
    );
}

/// Many appends at once, some of them bound to fail: the failures get their
/// own error and leave no trace, the others are all written.
async fn concurrent_mixed_appends<S: EventStore>(store: S) {
    const STREAMS: u128 = 32;
    for s in 0..STREAMS {
        store
            .append(&format!("s-{s}"), ExpectedRevision::NoStream, events([s]))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("s-{s}");
            let expected = match s % 4 {
                0 => ExpectedRevision::Exact(0),
                1 => ExpectedRevision::Exact(7),
                2 => ExpectedRevision::NoStream,
                _ => ExpectedRevision::StreamExists,
            };
            let outcome = store
                .append(&stream, expected, events([100 + 2 * s, 101 + 2 * s]))
                .await;
            (s, expected, outcome)
        }));
    }
    let mut written = BTreeSet::new();
    for task in tasks {
        let (s, expected, outcome) = task.await.unwrap();
        let stream = format!("s-{s}");
        match s % 4 {
            0 | 3 => {
                assert_eq!(outcome.unwrap().next_revision, 2);
                written.insert(100 + 2 * s);
                written.insert(101 + 2 * s);
            }
            _ => assert_eq!(outcome.unwrap_err(), wrong(&stream, expected, Some(0))),
        }
    }
    let all = everything(&store).await;
    let later: BTreeSet<u128> = all[STREAMS as usize..]
        .iter()
        .map(|e| e.id.as_u128())
        .collect();
    assert_eq!(later, written);
    assert_eq!(all.len(), STREAMS as usize + written.len());
    for pair in all.windows(2) {
        assert!(pair[0].position < pair[1].position);
    }
}

async fn read_stream_directions<S: EventStore>(store: S) {
    store
        .append("s", ExpectedRevision::NoStream, events(0..5))
        .await
        .unwrap();
    store
        .append("other", ExpectedRevision::NoStream, events([100]))
        .await
        .unwrap();
    store
        .append("s", ExpectedRevision::Exact(4), events(5..10))
        .await
        .unwrap();
    let read = |from, direction, max| {
        let store = store.clone();
        async move { revisions(&store.read_stream("s", from, direction, max).await.unwrap()) }
    };
    use Direction::{Backwards, Forwards};
    use ReadFrom::{End, Revision, Start};
    assert_eq!(
        read(Start, Forwards, 100).await,
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(read(Start, Forwards, 3).await, [0, 1, 2]);
    assert_eq!(read(Start, Forwards, 0).await, Vec::<u64>::new());
    assert_eq!(read(Revision(4), Forwards, 3).await, [4, 5, 6]);
    assert_eq!(read(Revision(9), Forwards, 3).await, [9]);
    assert_eq!(read(Revision(10), Forwards, 3).await, Vec::<u64>::new());
    assert_eq!(read(End, Forwards, 3).await, [9]);
    assert_eq!(read(End, Backwards, 3).await, [9, 8, 7]);
    assert_eq!(
        read(End, Backwards, 100).await,
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(read(Revision(4), Backwards, 100).await, [4, 3, 2, 1, 0]);
    assert_eq!(read(Revision(40), Backwards, 2).await, [9, 8]);
    assert_eq!(read(Revision(u64::MAX), Backwards, 1).await, [9]);
    assert_eq!(read(Start, Backwards, 5).await, [0]);

    // The events come back as written, with their stream and positions.
    let stream = whole_stream(&store, "s").await;
    let written = events(0..10);
    for (recorded, written) in stream.iter().zip(&written) {
        assert_eq!(recorded.stream, "s");
        assert_eq!(recorded.id, written.id);
        assert_eq!(recorded.event_type, written.event_type);
        assert_eq!(recorded.data, written.data);
        assert_eq!(recorded.metadata, written.metadata);
    }
    let all = everything(&store).await;
    assert_eq!(numbers(&all), [0, 1, 2, 3, 4, 100, 5, 6, 7, 8, 9]);
    let mine: Vec<RecordedEvent> = all.into_iter().filter(|e| e.stream == "s").collect();
    assert_eq!(stream, mine);
    assert!(store
        .read_stream("missing", Start, Forwards, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn read_all_order<S: EventStore>(store: S) {
    assert!(everything(&store).await.is_empty());
    // Interleave single events and batches over three streams.
    let mut expected = Vec::new();
    for round in 0..10u128 {
        for (s, stream) in ["a", "b", "c"].iter().enumerate() {
            let batch: Vec<u128> = (0..=(round + s as u128) % 3)
                .map(|k| round * 100 + s as u128 * 10 + k)
                .collect();
            store
                .append(stream, ExpectedRevision::Any, events(batch.clone()))
                .await
                .unwrap();
            expected.extend(batch.into_iter().map(|n| (stream.to_string(), n)));
        }
    }
    let all = everything(&store).await;
    assert_eq!(
        all.iter()
            .map(|e| (e.stream.clone(), e.id.as_u128()))
            .collect::<Vec<_>>(),
        expected
    );
    for pair in all.windows(2) {
        assert!(pair[0].position < pair[1].position);
    }
    assert!(all[0].position >= 1);
    // Paging: `from_position` is inclusive, `max` bounds the page.
    let mut paged = Vec::new();
    let mut next = 0;
    loop {
        let page = store
            .read_all(next, 7, &StreamFilter::default())
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        next = page.last().unwrap().position + 1;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    // From an event's own position, and from between two events (not a
    // record boundary in EventStoreDB).
    let page = |from| {
        let store = store.clone();
        async move {
            store
                .read_all(from, 5, &StreamFilter::default())
                .await
                .unwrap()
        }
    };
    assert_eq!(page(all[10].position).await, all[10..15]);
    assert_eq!(page(all[10].position + 1).await, all[11..16]);
    let head = all.last().unwrap().position;
    let last = store
        .read_all(head, 10, &StreamFilter::default())
        .await
        .unwrap();
    assert_eq!(last, [all.last().unwrap().clone()]);
    assert!(store
        .read_all(head + 1, 10, &StreamFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_all(u64::MAX, 10, &StreamFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_all(1, 0, &StreamFilter::default())
        .await
        .unwrap()
        .is_empty());
    // Every stream's events in read_all are the stream's own, in order.
    for stream in ["a", "b", "c"] {
        let mine: Vec<RecordedEvent> = all.iter().filter(|e| e.stream == stream).cloned().collect();
        assert_eq!(mine, whole_stream(&store, stream).await);
    }
}

async fn read_all_prefix_filter<S: EventStore>(store: S) {
    let streams = [
        "project-a",
        "projectlog-a",
        "project-b",
        "pmaction-a",
        "p%x-1",
        "p_x-1",
        "pZx-1",
        "P%x-2",
        "p\\x-1",
        "ünïcode-1",
        "ü",
    ];
    for (i, stream) in streams.iter().enumerate() {
        store
            .append(stream, ExpectedRevision::NoStream, events([i as u128]))
            .await
            .unwrap();
    }
    let matching = |prefixes: &[&str]| {
        let store = store.clone();
        let filter = StreamFilter {
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        };
        async move {
            let found = store.read_all(1, 100, &filter).await.unwrap();
            for event in &found {
                assert!(filter.matches(&event.stream));
            }
            found.into_iter().map(|e| e.stream).collect::<Vec<_>>()
        }
    };
    assert_eq!(matching(&["project-"]).await, ["project-a", "project-b"]);
    assert_eq!(
        matching(&["project"]).await,
        ["project-a", "projectlog-a", "project-b"]
    );
    // SQL wildcards, escapes and case are plain bytes here.
    assert_eq!(matching(&["p%"]).await, ["p%x-1"]);
    assert_eq!(matching(&["p_"]).await, ["p_x-1"]);
    assert_eq!(matching(&["p\\"]).await, ["p\\x-1"]);
    assert_eq!(matching(&["P"]).await, ["P%x-2"]);
    assert_eq!(matching(&["%"]).await, Vec::<String>::new());
    assert_eq!(matching(&["ün"]).await, ["ünïcode-1"]);
    assert_eq!(matching(&["ü"]).await, ["ünïcode-1", "ü"]);
    assert_eq!(matching(&["project-a-longer"]).await, Vec::<String>::new());
    assert_eq!(
        matching(&["pmaction-", "p%", "project-"]).await,
        ["project-a", "project-b", "pmaction-a", "p%x-1"]
    );
    assert_eq!(matching(&[]).await, streams);
    assert_eq!(matching(&[""]).await, streams);
    assert_eq!(matching(&["nothing", ""]).await, streams);
    // Filtered reads page by position like unfiltered ones.
    let fourth = everything(&store).await[3].position;
    let page = store
        .read_all(fourth, 1, &StreamFilter::prefix("p"))
        .await
        .unwrap();
    assert_eq!(page[0].stream, "pmaction-a");
}

async fn metadata_max_count<S: EventStore>(store: S) {
    store
        .append("s", ExpectedRevision::NoStream, events(0..10))
        .await
        .unwrap();
    let metadata = StreamMetadata {
        max_count: Some(3),
        truncate_before: None,
    };
    store.set_stream_metadata("s", metadata).await.unwrap();
    assert_eq!(store.stream_metadata("s").await.unwrap(), metadata);
    assert_eq!(revisions(&whole_stream(&store, "s").await), [7, 8, 9]);
    let read = |from, direction| {
        let store = store.clone();
        async move { revisions(&store.read_stream("s", from, direction, 10).await.unwrap()) }
    };
    assert_eq!(read(ReadFrom::End, Direction::Backwards).await, [9, 8, 7]);
    assert_eq!(
        read(ReadFrom::Revision(2), Direction::Forwards).await,
        [7, 8, 9]
    );
    assert_eq!(
        read(ReadFrom::Revision(8), Direction::Backwards).await,
        [8, 7]
    );
    assert!(read(ReadFrom::Revision(6), Direction::Backwards)
        .await
        .is_empty());
    // Hidden events keep their revisions; the stream goes on after them.
    assert_eq!(store.stream_revision("s").await.unwrap(), Some(9));
    store
        .append("s", ExpectedRevision::Exact(9), events([10]))
        .await
        .unwrap();
    assert_eq!(revisions(&whole_stream(&store, "s").await), [8, 9, 10]);
    // A max count of 0 still shows the last event, as EventStoreDB does.
    store
        .set_stream_metadata(
            "s",
            StreamMetadata {
                max_count: Some(0),
                truncate_before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(revisions(&whole_stream(&store, "s").await), [10]);
    // Metadata is per stream.
    store
        .append("t", ExpectedRevision::NoStream, events(20..25))
        .await
        .unwrap();
    assert_eq!(revisions(&whole_stream(&store, "t").await), [0, 1, 2, 3, 4]);
}

async fn metadata_truncate_before<S: EventStore>(store: S) {
    store
        .append("s", ExpectedRevision::NoStream, events(0..10))
        .await
        .unwrap();
    let set = |max_count, truncate_before| {
        let store = store.clone();
        async move {
            store
                .set_stream_metadata(
                    "s",
                    StreamMetadata {
                        max_count,
                        truncate_before,
                    },
                )
                .await
                .unwrap();
            revisions(&whole_stream(&store, "s").await)
        }
    };
    assert_eq!(set(None, Some(6)).await, [6, 7, 8, 9]);
    assert_eq!(
        revisions(
            &store
                .read_stream("s", ReadFrom::End, Direction::Backwards, 100)
                .await
                .unwrap()
        ),
        [9, 8, 7, 6]
    );
    assert_eq!(set(Some(2), Some(6)).await, [8, 9]);
    assert_eq!(set(Some(8), Some(6)).await, [6, 7, 8, 9]);
    assert_eq!(set(None, Some(20)).await, Vec::<u64>::new());
    assert!(store
        .read_stream("s", ReadFrom::End, Direction::Backwards, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.stream_revision("s").await.unwrap(), Some(9));
    // Clearing the metadata shows everything again (nothing was scavenged).
    assert_eq!(set(None, None).await, (0..10).collect::<Vec<_>>());
    assert_eq!(everything(&store).await.len(), 10);
}

/// Appends `count` single events to streams `live-0..3` (and a batch every
/// tenth time), yielding between appends so readers interleave.
async fn append_live<S: EventStore>(store: S, first: u128, count: u128) {
    let mut n = first;
    while n < first + count {
        let stream = format!("live-{}", n % 3);
        let size = if n % 10 == 0 {
            3.min(first + count - n)
        } else {
            1
        };
        store
            .append(&stream, ExpectedRevision::Any, events(n..n + size))
            .await
            .unwrap();
        n += size;
        tokio::task::yield_now().await;
    }
}

async fn subscribe_all_history_then_live<S: EventStore>(store: S) {
    append_live(store.clone(), 0, 30).await;
    let eleventh = everything(&store).await[10].position;
    let mut from_start = store.subscribe_all(0, StreamFilter::default());
    let mut from_middle = store.subscribe_all(eleventh, StreamFilter::default());
    // A position between two events starts at the next one (in
    // EventStoreDB it is not a record boundary, which the server refuses).
    let mut between = store.subscribe_all(eleventh + 1, StreamFilter::default());
    let writer = tokio::spawn(append_live(store.clone(), 30, 300));
    let received = take(&mut from_start, 330).await;
    let received_middle = take(&mut from_middle, 320).await;
    let received_between = take(&mut between, 319).await;
    writer.await.unwrap();
    let all = everything(&store).await;
    assert_eq!(all.len(), 330);
    assert_eq!(received, all);
    assert_eq!(received_middle, all[10..]);
    assert_eq!(received_between, all[11..]);
    // Nothing more arrives until something is appended.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), from_start.next())
            .await
            .is_err()
    );
    store
        .append("late", ExpectedRevision::Any, events([9999]))
        .await
        .unwrap();
    assert_eq!(numbers(&take(&mut from_start, 1).await), [9999]);
}

async fn subscribe_all_filtered<S: EventStore>(store: S) {
    append_live(store.clone(), 0, 20).await;
    store
        .append("other-0", ExpectedRevision::Any, events([5000]))
        .await
        .unwrap();
    let filter = StreamFilter::prefix("live-1");
    let mut subscription = store.subscribe_all(1, filter.clone());
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for n in 0..50u128 {
                store
                    .append("other-1", ExpectedRevision::Any, events([6000 + n]))
                    .await
                    .unwrap();
            }
        }
    });
    append_live(store.clone(), 20, 100).await;
    writer.await.unwrap();
    let expected = store.read_all(1, usize::MAX, &filter).await.unwrap();
    assert!(expected.iter().all(|e| e.stream == "live-1"));
    assert_eq!(take(&mut subscription, expected.len()).await, expected);
}

async fn subscribe_stream_history_then_live<S: EventStore>(store: S) {
    append_live(store.clone(), 0, 30).await;
    let mut whole = store.subscribe_stream("live-2", 0);
    let mut tail = store.subscribe_stream("live-2", 5);
    let mut later = store.subscribe_stream("not-yet", 0);
    let writer = tokio::spawn(append_live(store.clone(), 30, 300));
    store
        .append("not-yet", ExpectedRevision::NoStream, events([7000, 7001]))
        .await
        .unwrap();
    writer.await.unwrap();
    let stream = whole_stream(&store, "live-2").await;
    assert_eq!(take(&mut whole, stream.len()).await, stream);
    assert_eq!(take(&mut tail, stream.len() - 5).await, stream[5..]);
    assert_eq!(numbers(&take(&mut later, 2).await), [7000, 7001]);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), whole.next())
            .await
            .is_err()
    );
}

// ---- Embedded store only ----

fn open(path: &Path) -> EmbeddedStore {
    EmbeddedStore::open(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_state_survives_reopen() {
    let folder = TempDir::new().unwrap();
    let path = folder.path().join("store.db");
    let store = open(&path);
    let first = store
        .append("s", ExpectedRevision::NoStream, events([1, 2]))
        .await
        .unwrap();
    let second = store
        .append("t", ExpectedRevision::NoStream, events([3]))
        .await
        .unwrap();
    let metadata = StreamMetadata {
        max_count: Some(5),
        truncate_before: Some(1),
    };
    store.set_stream_metadata("s", metadata).await.unwrap();
    store
        .set_stream_metadata("empty", StreamMetadata::default())
        .await
        .unwrap();
    let before = everything(&store).await;
    store.close().await.unwrap();

    let store = open(&path);
    assert_eq!(everything(&store).await, before);
    assert_eq!(store.stream_revision("s").await.unwrap(), Some(1));
    assert_eq!(store.stream_revision("empty").await.unwrap(), None);
    assert_eq!(store.stream_metadata("s").await.unwrap(), metadata);
    assert_eq!(revisions(&whole_stream(&store, "s").await), [1]);
    // Idempotency is in the file, not in a cache.
    assert_eq!(
        store
            .append("s", ExpectedRevision::NoStream, events([1, 2]))
            .await
            .unwrap(),
        first
    );
    assert_eq!(
        store
            .append("t", ExpectedRevision::Any, events([3]))
            .await
            .unwrap(),
        second
    );
    assert_eq!(
        store
            .append("s", ExpectedRevision::Any, events([2, 9]))
            .await
            .unwrap_err(),
        duplicate("s", 2)
    );
    // Revisions and positions go on where they stopped.
    assert_eq!(
        store
            .append("s", ExpectedRevision::Exact(1), events([4]))
            .await
            .unwrap(),
        AppendResult {
            next_revision: 2,
            position: 4
        }
    );
    assert_eq!(everything(&store).await.len(), 4);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dropping_the_last_handle_finishes_and_closes() {
    let folder = TempDir::new().unwrap();
    let path = folder.path().join("store.db");
    let store = open(&path);
    let subscription_store = store.clone();
    let mut subscription = subscription_store.subscribe_all(1, StreamFilter::default());
    for n in 0..20 {
        store
            .append("s", ExpectedRevision::Any, events([n]))
            .await
            .unwrap();
    }
    assert_eq!(take(&mut subscription, 20).await.len(), 20);
    drop(store);
    drop(subscription_store);
    // The subscription does not keep the writer alive: it ends.
    let end = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, subscription.next())
        .await
        .expect("the subscription did not end");
    assert!(
        matches!(end, None | Some(Err(StoreError::Closed))),
        "{end:?}"
    );
    let store = open(&path);
    assert_eq!(everything(&store).await.len(), 20);
    store.close().await.unwrap();
}

/// Appends racing a close are either acknowledged and durable, or refused
/// with `Closed`; none is acknowledged and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_close_finishes_queued_appends() {
    let folder = TempDir::new().unwrap();
    let path = folder.path().join("store.db");
    let store = open(&path);
    let mut tasks = Vec::new();
    for n in 0..64u128 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            (
                n,
                store
                    .append(&format!("s-{}", n % 4), ExpectedRevision::Any, events([n]))
                    .await,
            )
        }));
    }
    tokio::task::yield_now().await;
    store.close().await.unwrap();
    let mut acknowledged = BTreeSet::new();
    for task in tasks {
        match task.await.unwrap() {
            (n, Ok(_)) => {
                acknowledged.insert(n);
            }
            (_, Err(err)) => assert_eq!(err, StoreError::Closed),
        }
    }
    // Every call after the close fails cleanly.
    assert_eq!(
        store
            .append("s", ExpectedRevision::Any, events([1000]))
            .await
            .unwrap_err(),
        StoreError::Closed
    );
    assert_eq!(
        store.stream_revision("s-0").await.unwrap_err(),
        StoreError::Closed
    );
    assert_eq!(
        store
            .read_all(1, 10, &StreamFilter::default())
            .await
            .unwrap_err(),
        StoreError::Closed
    );
    store.close().await.unwrap();

    let store = open(&path);
    let written: BTreeSet<u128> = numbers(&everything(&store).await).into_iter().collect();
    assert_eq!(written, acknowledged);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_subscriptions_end_on_close() {
    let folder = TempDir::new().unwrap();
    let store = open(&folder.path().join("store.db"));
    store
        .append("s", ExpectedRevision::Any, events([1]))
        .await
        .unwrap();
    let mut all = store.subscribe_all(1, StreamFilter::default());
    let mut one = store.subscribe_stream("s", 0);
    take(&mut all, 1).await;
    take(&mut one, 1).await;
    store.close().await.unwrap();
    for subscription in [&mut all, &mut one] {
        let end = tokio::time::timeout(SUBSCRIPTION_TIMEOUT, subscription.next())
            .await
            .expect("the subscription did not end");
        assert!(
            matches!(end, None | Some(Err(StoreError::Closed))),
            "{end:?}"
        );
    }
}

#[tokio::test]
async fn embedded_open_creates_the_folder() {
    let folder = TempDir::new().unwrap();
    let path = folder.path().join("a").join("b").join("store.db");
    let store = open(&path);
    store
        .append("s", ExpectedRevision::Any, events([1]))
        .await
        .unwrap();
    assert!(path.is_file());
    assert_eq!(store.path(), path.canonicalize().unwrap());
    store.close().await.unwrap();
}

fn open_error(path: &Path) -> String {
    match EmbeddedStore::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(StoreError::InvalidArgument(message)) => message,
        Err(err) => panic!("unexpected error {err:?}"),
    }
}

#[tokio::test]
async fn embedded_open_refuses_other_files_untouched() {
    let folder = TempDir::new().unwrap();

    let text = folder.path().join("notes.txt");
    std::fs::write(
        &text,
        "these are not the events you are looking for\n".repeat(100),
    )
    .unwrap();
    let message = open_error(&text);
    assert!(message.contains("not a SQLite database"), "{message}");
    assert_eq!(
        std::fs::read(&text).unwrap(),
        "these are not the events you are looking for\n"
            .repeat(100)
            .into_bytes()
    );

    let foreign = folder.path().join("foreign.db");
    {
        let connection = rusqlite::Connection::open(&foreign).unwrap();
        connection
            .execute_batch("CREATE TABLE events (x INTEGER); INSERT INTO events VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    let message = open_error(&foreign);
    assert!(
        message.contains("not a prjmanager event store"),
        "{message}"
    );
    assert!(message.contains("application_id 0x0"), "{message}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    let journal_mode: String = rusqlite::Connection::open(&foreign)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal_mode, "delete");
}

#[tokio::test]
async fn embedded_open_refuses_other_schema_versions() {
    let folder = TempDir::new().unwrap();
    for version in [0, 2, 99] {
        let path = folder.path().join(format!("v{version}.db"));
        let store = open(&path);
        store
            .append("s", ExpectedRevision::Any, events([1]))
            .await
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {version};"))
            .unwrap();
        let message = open_error(&path);
        assert!(
            message.contains(&format!("schema version {version}")),
            "{message}"
        );
        assert!(message.contains("reads only schema version 1"), "{message}");
    }
    // Our application id with a different schema is still recognised as ours.
    let application_id: i32 = rusqlite::Connection::open(folder.path().join("v2.db"))
        .unwrap()
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .unwrap();
    assert_eq!(application_id, APPLICATION_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_scavenge_deletes_hidden_rows_only() {
    let folder = TempDir::new().unwrap();
    let path = folder.path().join("store.db");
    let store = open(&path);
    store
        .append("kept", ExpectedRevision::NoStream, events(0..10))
        .await
        .unwrap();
    store
        .append("capped", ExpectedRevision::NoStream, events(10..20))
        .await
        .unwrap();
    store
        .append("gone", ExpectedRevision::NoStream, events(20..25))
        .await
        .unwrap();
    store
        .set_stream_metadata(
            "capped",
            StreamMetadata {
                max_count: Some(3),
                truncate_before: None,
            },
        )
        .await
        .unwrap();
    store
        .set_stream_metadata(
            "gone",
            StreamMetadata {
                max_count: None,
                truncate_before: Some(100),
            },
        )
        .await
        .unwrap();
    let capped = whole_stream(&store, "capped").await;
    assert_eq!(store.scavenge().await.unwrap(), 7 + 5);
    assert_eq!(store.scavenge().await.unwrap(), 0);
    assert_eq!(whole_stream(&store, "capped").await, capped);
    assert_eq!(revisions(&whole_stream(&store, "kept").await).len(), 10);
    assert!(whole_stream(&store, "gone").await.is_empty());
    assert_eq!(store.stream_revision("gone").await.unwrap(), Some(4));
    let all = everything(&store).await;
    assert_eq!(all.len(), 10 + 3);
    // Revisions and positions go on; the deleted newest position is not reused.
    let appended = store
        .append("gone", ExpectedRevision::Exact(4), events([30]))
        .await
        .unwrap();
    assert_eq!(
        appended,
        AppendResult {
            next_revision: 5,
            position: 26
        }
    );
    store.close().await.unwrap();
    let store = open(&path);
    let appended = store
        .append("gone", ExpectedRevision::Exact(5), events([31]))
        .await
        .unwrap();
    assert_eq!(appended.position, 27);
    store.close().await.unwrap();
}
