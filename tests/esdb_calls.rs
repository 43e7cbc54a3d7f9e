//! The official client's call shapes against the EventStoreDB double: tests
//! that `batch_append` (one long-lived bidi call) commits and reports
//! conflicts as a node does and that a tombstone's `$streamDeleted` record
//! never reaches the projector, and two measurements (ignored) of the latency
//! of one append and one read, through the adapter and through each client
//! call. The double sets TCP_NODELAY on its sockets, as the real server does;
//! the client does not on its own, which is what the numbers show.
//!
//! `cargo test --release --test esdb_calls -- --ignored --nocapture`

#[path = "common/esdb_double.rs"]
mod esdb_double;

use std::time::{Duration, Instant};

use esdb_double::EsdbDouble;
use prjmanager::store::esdb::EsdbStore;
use prjmanager::store::{Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom};

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn append_and_read_latency_through_the_adapter() {
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    let event = |i: u32| NewEvent {
        id: uuid::Uuid::new_v4(),
        event_type: "Poked".into(),
        data: vec![i as u8; 64],
        metadata: b"{}".to_vec(),
    };
    // Warm up: connection, index.
    for i in 0..5 {
        store
            .append("lat-1", ExpectedRevision::Any, vec![event(i)])
            .await
            .unwrap();
    }
    let mut appends = Vec::new();
    for i in 0..200 {
        let started = Instant::now();
        store
            .append("lat-1", ExpectedRevision::Any, vec![event(i)])
            .await
            .unwrap();
        appends.push(started.elapsed());
    }
    let mut reads = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let read = store
            .read_stream("lat-1", ReadFrom::End, Direction::Backwards, 5)
            .await
            .unwrap();
        assert_eq!(read.len(), 5);
        reads.push(started.elapsed());
    }
    println!(
        "append p50 {:.2} ms p99 {:.2} ms; read p50 {:.2} ms p99 {:.2} ms",
        percentile(&mut appends, 0.5),
        percentile(&mut appends, 0.99),
        percentile(&mut reads, 0.5),
        percentile(&mut reads, 0.99)
    );
}

/// The same, with the official client's calls directly: `append_to_stream`
/// (client-streaming `Append`), `batch_append` (one long-lived bidi call,
/// one message per append) and `read_stream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn append_and_read_latency_of_each_client_call() {
    use eventstore::{
        AppendToStreamOptions, BatchAppendOptions, Client, ClientSettings, EventData,
        ReadStreamOptions,
    };
    let double = EsdbDouble::start();
    let settings: ClientSettings = double.url().parse().unwrap();
    let client = Client::new(settings).unwrap();
    let event =
        || EventData::binary("Poked", bytes::Bytes::from_static(b"{}")).id(uuid::Uuid::new_v4());
    let options = AppendToStreamOptions::default();
    for _ in 0..5 {
        client
            .append_to_stream("raw", &options, vec![event()])
            .await
            .unwrap();
    }
    let mut appends = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        client
            .append_to_stream("raw", &options, vec![event()])
            .await
            .unwrap();
        appends.push(started.elapsed());
    }
    let batch = client
        .batch_append(&BatchAppendOptions::default())
        .await
        .unwrap();
    for _ in 0..5 {
        batch
            .append_to_stream("raw", eventstore::ExpectedRevision::Any, vec![event()])
            .await
            .unwrap();
    }
    let mut batched = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        batch
            .append_to_stream("raw", eventstore::ExpectedRevision::Any, vec![event()])
            .await
            .unwrap();
        batched.push(started.elapsed());
    }
    let mut reads = Vec::new();
    let read_options = ReadStreamOptions::default()
        .backwards()
        .position(eventstore::StreamPosition::End)
        .max_count(5);
    for _ in 0..100 {
        let started = Instant::now();
        let mut stream = client.read_stream("raw", &read_options).await.unwrap();
        let mut n = 0;
        while stream.next().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 5);
        reads.push(started.elapsed());
    }
    println!(
        "append_to_stream p50 {:.2} ms; batch_append p50 {:.2} ms p99 {:.2} ms; read_stream p50 {:.2} ms",
        percentile(&mut appends, 0.5),
        percentile(&mut batched, 0.5),
        percentile(&mut batched, 0.99),
        percentile(&mut reads, 0.5),
    );
}

/// `batch_append` against the double: events land in order with their
/// revisions and a wrong expected revision is an error that writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_commits_and_reports_conflicts_like_a_node() {
    use eventstore::{BatchAppendOptions, Client, ClientSettings, EventData, ExpectedRevision};
    let double = EsdbDouble::start();
    let settings: ClientSettings = double.url().parse().unwrap();
    let client = Client::new(settings).unwrap();
    let batch = client
        .batch_append(&BatchAppendOptions::default())
        .await
        .unwrap();
    let event = |n: u8| {
        EventData::binary("Poked", bytes::Bytes::from(vec![n]))
            .id(uuid::Uuid::from_u128(u128::from(n) + 1))
    };
    let first = batch
        .append_to_stream("b", ExpectedRevision::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    assert_eq!(first.current_revision(), Some(1));
    let conflict = batch
        .append_to_stream("b", ExpectedRevision::Exact(7), vec![event(3)])
        .await;
    assert!(conflict.is_err(), "{conflict:?}");
    // The client (not the server) ends a batch session at its first failed
    // append: an adapter on batch_append must open a new one.
    let closed = batch
        .append_to_stream("b", ExpectedRevision::Exact(1), vec![event(4)])
        .await;
    assert!(closed.is_err(), "{closed:?}");
    let batch = client
        .batch_append(&BatchAppendOptions::default())
        .await
        .unwrap();
    let next = batch
        .append_to_stream("b", ExpectedRevision::Exact(1), vec![event(4)])
        .await
        .unwrap();
    assert_eq!(next.current_revision(), Some(2));
    let log: Vec<(String, u64, Vec<u8>)> = double
        .log()
        .into_iter()
        .filter(|r| r.stream == "b")
        .map(|r| (r.stream, r.revision, r.data))
        .collect();
    assert_eq!(
        log,
        [
            ("b".to_string(), 0, vec![1]),
            ("b".to_string(), 1, vec![2]),
            ("b".to_string(), 2, vec![4])
        ]
    );
}

/// Tombstoning a stream leaves a `$streamDeleted` record at revision 2^63 - 1
/// of that stream in `$all` (as the server does); the adapter's `read_all`
/// and `subscribe_all` skip it, so the projector never folds it as a project
/// event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_record_in_all_is_not_handed_to_the_projector() {
    use eventstore::{Client, ClientSettings, TombstoneStreamOptions};
    use prjmanager::store::StreamFilter;
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    let event = |n: u8| NewEvent {
        id: uuid::Uuid::from_u128(u128::from(n) + 1),
        event_type: "Poked".into(),
        data: vec![n],
        metadata: b"{}".to_vec(),
    };
    store
        .append("project-gone", ExpectedRevision::NoStream, vec![event(1)])
        .await
        .unwrap();
    let settings: ClientSettings = double.url().parse().unwrap();
    let client = Client::new(settings).unwrap();
    client
        .tombstone_stream("project-gone", &TombstoneStreamOptions::default())
        .await
        .unwrap();
    store
        .append("project-kept", ExpectedRevision::NoStream, vec![event(2)])
        .await
        .unwrap();
    assert!(
        double
            .log()
            .iter()
            .any(|r| r.stream == "project-gone" && r.revision == i64::MAX as u64),
        "the double writes the tombstone record"
    );
    let filter = StreamFilter::prefix("project-");
    let read = store.read_all(1, 100, &filter).await.unwrap();
    let seen: Vec<(String, String)> = read
        .iter()
        .map(|e| (e.stream.clone(), e.event_type.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("project-gone".to_string(), "Poked".to_string()),
            ("project-kept".to_string(), "Poked".to_string())
        ]
    );
    let mut subscription = store.subscribe_all(1, filter);
    for expected in ["project-gone", "project-kept"] {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        assert_eq!(
            (event.stream.as_str(), event.event_type.as_str()),
            (expected, "Poked")
        );
    }
    let more = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(more.is_err(), "nothing more: {more:?}");
}

/// `set_stream_metadata` rewrites only the keys this store manages: `$acl`
/// and `$maxAge` written by an operator survive, and a max count of 0 (which
/// makes the server ignore the whole document) is written as 1, which shows
/// the same thing: the last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_metadata_keeps_other_keys_and_never_writes_a_max_count_of_0() {
    use eventstore::{AppendToStreamOptions, Client, ClientSettings, EventData};
    use prjmanager::store::StreamMetadata;
    let double = EsdbDouble::start();
    let settings: ClientSettings = double.url().parse().unwrap();
    let client = Client::new(settings).unwrap();
    let operator = serde_json::json!({"$acl": {"$r": "$admins"}, "$maxAge": 3600});
    client
        .append_to_stream(
            "$$m",
            &AppendToStreamOptions::default(),
            EventData::json("$metadata", &operator).unwrap(),
        )
        .await
        .unwrap();
    let store = EsdbStore::connect(&double.url()).unwrap();
    store
        .set_stream_metadata(
            "m",
            StreamMetadata {
                max_count: Some(0),
                truncate_before: Some(2),
            },
        )
        .await
        .unwrap();
    let newest = double
        .log()
        .into_iter()
        .rfind(|r| r.stream == "$$m")
        .unwrap();
    let document: serde_json::Value = serde_json::from_slice(&newest.data).unwrap();
    assert_eq!(
        document,
        serde_json::json!({"$acl": {"$r": "$admins"}, "$maxAge": 3600, "$maxCount": 1, "$tb": 2})
    );
    assert_eq!(
        store.stream_metadata("m").await.unwrap(),
        StreamMetadata {
            max_count: Some(1),
            truncate_before: Some(2),
        }
    );
}

/// An append over the server's `MaxAppendSize` (1 MiB by default) is refused
/// with an error that names the limit and the setting, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_over_the_servers_size_limit_is_refused_clearly() {
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    let big = NewEvent {
        id: uuid::Uuid::from_u128(1),
        event_type: "ClsUpdated".into(),
        data: vec![7; 1024 * 1024 + 1],
        metadata: b"{}".to_vec(),
    };
    let err = store
        .append("big", ExpectedRevision::NoStream, vec![big])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, prjmanager::store::StoreError::InvalidArgument(_)),
        "{err:?}"
    );
    assert!(
        text.contains("too large") && text.contains("MaxAppendSize"),
        "{text}"
    );
    assert!(double.log().iter().all(|r| r.stream != "big"));
}
