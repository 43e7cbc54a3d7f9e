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

fn raw_client(double: &EsdbDouble) -> eventstore::Client {
    eventstore::Client::new(double.url().parse().unwrap()).unwrap()
}

fn poke(n: u128, bytes: usize) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::from_u128(n),
        event_type: "Poked".into(),
        data: vec![7; bytes],
        metadata: b"{}".to_vec(),
    }
}

/// Appends `poke(n, 10)` for each `n` to `stream`, one append each.
async fn append_one_by_one(
    store: &EsdbStore,
    stream: &str,
    numbers: impl IntoIterator<Item = u128>,
) {
    for n in numbers {
        store
            .append(stream, ExpectedRevision::Any, vec![poke(n, 10)])
            .await
            .unwrap();
    }
}

/// Fails unless the client reports the server's `InvalidArgument`.
fn assert_invalid_argument(err: &eventstore::Error) {
    assert!(
        matches!(
            err,
            eventstore::Error::Grpc {
                code: tonic::Code::InvalidArgument,
                ..
            }
        ),
        "{err:?}"
    );
}

/// The next message of a raw subscription, failing on a stall.
async fn next_message(
    subscription: &mut eventstore::Subscription,
) -> Result<eventstore::SubscriptionEvent, eventstore::Error> {
    tokio::time::timeout(
        Duration::from_secs(20),
        subscription.next_subscription_event(),
    )
    .await
    .expect("the subscription stalled")
}

/// Server behaviour: `$all` positions are byte offsets of the log (with
/// gaps), and a read or subscription starting at a position that is not a
/// record boundary is refused with `InvalidArgument`. The adapter re-seeks to
/// the nearest event it has seen before (or to the start of `$all`) and
/// drops what comes before the position asked for, so `read_all` and
/// `subscribe_all` from any position give exactly the events at or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_between_records_is_refused_by_the_server_and_re_seeked_by_the_adapter() {
    use eventstore::{Position, ReadAllOptions, StreamPosition, SubscribeToAllOptions};
    use prjmanager::store::StreamFilter;
    let double = EsdbDouble::start();
    let writer = EsdbStore::connect(&double.url()).unwrap();
    append_one_by_one(&writer, "s", 1..=6).await;
    let commits: Vec<u64> = double.log().iter().map(|r| r.commit).collect();
    assert!(commits.windows(2).all(|w| w[1] > w[0] + 2), "{commits:?}");
    let client = raw_client(&double);
    let at = |commit: u64| {
        ReadAllOptions::default()
            .position(StreamPosition::Position(Position {
                commit,
                prepare: commit,
            }))
            .forwards()
            .max_count(10)
    };
    let first_from = |commit: u64| {
        let client = client.clone();
        async move {
            let mut read = client.read_all(&at(commit)).await?;
            Ok::<_, eventstore::Error>(
                read.next()
                    .await?
                    .map(|e| e.get_original_event().position.commit),
            )
        }
    };
    assert_eq!(first_from(commits[2]).await.unwrap(), Some(commits[2]));
    let refused = first_from(commits[2] + 1).await.unwrap_err();
    assert_invalid_argument(&refused);
    let mut subscription = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default().position(StreamPosition::Position(Position {
                commit: commits[2] + 1,
                prepare: commits[2] + 1,
            })),
        )
        .await;
    let refused = next_message(&mut subscription).await.unwrap_err();
    assert_invalid_argument(&refused);

    // A fresh adapter knows no boundary: it re-seeks to the start of `$all`.
    // Our position of an event is its commit position + 1, so asking for
    // event 3's own position starts one byte before its record.
    let fresh = EsdbStore::connect(&double.url()).unwrap();
    let all = StreamFilter::default();
    let from_third = fresh.read_all(commits[2] + 1, 10, &all).await.unwrap();
    let ids = |events: &[prjmanager::store::RecordedEvent]| -> Vec<u128> {
        events.iter().map(|e| e.id.as_u128()).collect()
    };
    assert_eq!(ids(&from_third), [3, 4, 5, 6]);
    let mid_record = fresh.read_all(commits[2] + 3, 10, &all).await.unwrap();
    assert_eq!(ids(&mid_record), [4, 5, 6]);
    let fresh = EsdbStore::connect(&double.url()).unwrap();
    let mut subscription = fresh.subscribe_all(commits[2] + 1, all);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .expect("an event")
            .expect("the subscription goes on")
            .expect("no error");
        seen.push(event.id.as_u128());
    }
    assert_eq!(seen, [3, 4, 5, 6]);
}

/// Server behaviour: a filtered `$all` subscription sends a checkpoint
/// every `window × multiplier` scanned records, whether they matched or not.
/// The adapter moves its resume point to each checkpoint, so after a drop it
/// resubscribes past the records it already had scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_subscriptions_get_checkpoints_and_the_adapter_resumes_from_them() {
    use eventstore::{SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter};
    use prjmanager::store::StreamFilter;
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    append_one_by_one(&store, "other", 1..=25).await;
    append_one_by_one(&store, "want-1", 100..=100).await;
    let commits: Vec<u64> = double.log().iter().map(|r| r.commit).collect();
    let client = raw_client(&double);
    let filter = SubscriptionFilter::on_stream_name()
        .add_prefix("want-")
        .max(10);
    let mut subscription = client
        .subscribe_to_all(&SubscribeToAllOptions::default().filter(filter))
        .await;
    let mut messages = Vec::new();
    loop {
        match next_message(&mut subscription).await.unwrap() {
            SubscriptionEvent::Checkpoint(p) => messages.push(format!("checkpoint {}", p.commit)),
            SubscriptionEvent::EventAppeared(e) => {
                messages.push(format!("event {}", e.get_original_event().position.commit));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        messages,
        [
            format!("checkpoint {}", commits[9]),
            format!("checkpoint {}", commits[19]),
            format!("event {}", commits[25]),
        ]
    );

    // Through the adapter (window 32, what the client asks for by default).
    let mut wanted = store.subscribe_all(1, StreamFilter::prefix("want-"));
    let first = tokio::time::timeout(Duration::from_secs(20), wanted.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.id.as_u128(), 100);
    append_one_by_one(&store, "other", 200..300).await;
    let log = double.log();
    // The adapter's subscription has scanned 126 records: checkpoints at
    // the 32nd, 64th, 96th; let it read them, then drop every connection.
    let last_checkpoint = log[95].commit;
    tokio::time::sleep(Duration::from_millis(500)).await;
    double.restart(Duration::from_millis(100));
    append_one_by_one(&store, "want-2", 300..=300).await;
    let second = tokio::time::timeout(Duration::from_secs(20), wanted.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.id.as_u128(), 300);
    let starts = double.all_subscription_starts();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert_eq!(starts[2], Some(last_checkpoint), "{starts:?}");
}

/// Server behaviour (KurrentDB): a subscriber too slow for the live buffer
/// is sent `fell_behind`, caught up again from the log and sent `caught_up`
/// again, not dropped. The adapter's subscription goes on through it and
/// delivers every event once, in order, without resubscribing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_moved_back_to_catch_up_not_dropped() {
    use eventstore::{SubscribeToAllOptions, SubscriptionEvent};
    use prjmanager::store::StreamFilter;
    const EVENTS: u128 = 3_000;
    let double = EsdbDouble::start_with_live_buffer(8);
    let store = EsdbStore::connect(&double.url()).unwrap();
    let client = raw_client(&double);
    let mut raw = client
        .subscribe_to_all(&SubscribeToAllOptions::default())
        .await;
    let mut through_adapter = store.subscribe_all(1, StreamFilter::default());
    // Both are live (the raw one confirmed and caught up) before the burst.
    loop {
        if let SubscriptionEvent::CaughtUp = next_message(&mut raw).await.unwrap() {
            break;
        }
    }
    while double.subscriptions_opened() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for chunk in 0..EVENTS / 100 {
        let batch = (0..100).map(|i| poke(1 + chunk * 100 + i, 1024)).collect();
        store
            .append("burst", ExpectedRevision::Any, batch)
            .await
            .unwrap();
    }
    let mut fell_behind = 0;
    let mut seen = Vec::new();
    while seen.len() < EVENTS as usize {
        match next_message(&mut raw).await.unwrap() {
            SubscriptionEvent::FellBehind => fell_behind += 1,
            SubscriptionEvent::EventAppeared(e) => seen.push(e.get_original_event().id.as_u128()),
            _ => {}
        }
    }
    assert!(fell_behind >= 1, "the raw subscriber never fell behind");
    assert_eq!(seen, (1..=EVENTS).collect::<Vec<_>>());
    let mut delivered = Vec::new();
    while delivered.len() < EVENTS as usize {
        let event = tokio::time::timeout(Duration::from_secs(20), through_adapter.next())
            .await
            .expect("an event")
            .expect("the subscription goes on")
            .expect("no error");
        delivered.push(event.id.as_u128());
    }
    assert_eq!(delivered, (1..=EVENTS).collect::<Vec<_>>());
    assert_eq!(double.subscriptions_opened(), 2, "nobody resubscribed");
}

/// Server behaviour: a `$$` (metadata) stream keeps only its newest event;
/// a soft delete writes `{"$tb": 2^63 - 1}` into the stream's metadata,
/// keeping its other keys, and reads then find no stream; appending again
/// recreates it with `$tb` at the first new revision. The adapter's
/// `set_stream_metadata` keeps a soft delete (it never writes the stream
/// back into existence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_streams_keep_one_event_and_a_soft_delete_survives_set_stream_metadata() {
    use eventstore::{AppendToStreamOptions, DeleteStreamOptions, EventData, ReadStreamOptions};
    use prjmanager::store::StreamMetadata;
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    let client = raw_client(&double);
    store
        .append(
            "sd",
            ExpectedRevision::NoStream,
            vec![poke(1, 4), poke(2, 4)],
        )
        .await
        .unwrap();
    for n in 5..8 {
        let metadata = StreamMetadata {
            max_count: Some(n),
            truncate_before: None,
        };
        store.set_stream_metadata("sd", metadata).await.unwrap();
    }
    let mut read = client
        .read_stream("$$sd", &ReadStreamOptions::default().forwards())
        .await
        .unwrap();
    let mut documents = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        documents.push(
            serde_json::from_slice::<serde_json::Value>(&event.get_original_event().data).unwrap(),
        );
    }
    assert_eq!(documents, [serde_json::json!({"$maxCount": 7})]);

    client
        .delete_stream("sd", &DeleteStreamOptions::default())
        .await
        .unwrap();
    let newest = |double: &EsdbDouble| {
        let rec = double
            .log()
            .into_iter()
            .rfind(|r| r.stream == "$$sd")
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&rec.data).unwrap()
    };
    let deleted = serde_json::json!({"$maxCount": 7, "$tb": i64::MAX});
    assert_eq!(newest(&double), deleted);
    let stream = |store: EsdbStore| async move {
        store
            .read_stream("sd", ReadFrom::Start, Direction::Forwards, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id.as_u128())
            .collect::<Vec<_>>()
    };
    assert!(stream(store.clone()).await.is_empty());
    let metadata = StreamMetadata {
        max_count: Some(9),
        truncate_before: None,
    };
    store.set_stream_metadata("sd", metadata).await.unwrap();
    assert_eq!(
        newest(&double),
        serde_json::json!({"$maxCount": 9, "$tb": i64::MAX}),
        "still soft-deleted"
    );
    assert!(stream(store.clone()).await.is_empty());
    // Appending recreates the stream after the deleted revisions.
    client
        .append_to_stream(
            "sd",
            &AppendToStreamOptions::default(),
            EventData::binary("Poked", vec![1].into()).id(uuid::Uuid::from_u128(3)),
        )
        .await
        .unwrap();
    assert_eq!(
        newest(&double),
        serde_json::json!({"$maxCount": 9, "$tb": 2})
    );
    assert_eq!(stream(store.clone()).await, [3]);
}

/// `import` into a store with an append size limit (EventStoreDB's
/// `MaxAppendSize`, `--max-append-bytes`): the file goes in several appends
/// that together write every event once, in order; running the import again
/// writes nothing more; an event over the limit is refused before anything
/// is written, naming its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_splits_a_file_under_the_append_limit() {
    use prjmanager::cli::commands::import;
    use prjmanager::cli::CliError;
    use prjmanager::store::any::StoreUrl;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/replays/lifecycle.jsonl");
    let parsed = prjmanager::jsonl::parse_path(file).unwrap();
    let stream = format!("project-{}", parsed.header.project);
    let double = EsdbDouble::start();
    let url: StoreUrl = double.url().parse().unwrap();
    let calls = double.append_calls();
    import(&url.clone().with_max_append_bytes(2048), file, true)
        .await
        .unwrap();
    let imported = || -> Vec<uuid::Uuid> {
        double
            .log()
            .iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.id)
            .collect()
    };
    let ids: Vec<uuid::Uuid> = parsed.events.iter().map(|e| e.id).collect();
    assert_eq!(imported(), ids);
    assert!(
        double.append_calls() - calls > 1,
        "{} events in one append",
        ids.len()
    );
    import(&url.clone().with_max_append_bytes(2048), file, true)
        .await
        .unwrap();
    assert_eq!(imported(), ids, "a second import writes nothing");

    let fresh = EsdbDouble::start();
    let url: StoreUrl = fresh.url().parse().unwrap();
    let err = import(&url.with_max_append_bytes(8), file, true)
        .await
        .unwrap_err();
    let CliError::BadInput(message) = err else {
        panic!("{err:?}");
    };
    let line = parsed.events[0].line;
    assert!(
        message.contains(&format!("lifecycle.jsonl:{line}:"))
            && message.contains("over the store's append limit of 8 bytes")
            && message.contains("nothing was imported"),
        "{message}"
    );
    assert!(fresh.log().is_empty());
}
