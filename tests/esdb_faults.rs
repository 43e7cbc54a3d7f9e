//! Faults injected through the EventStoreDB double
//! (`tests/common/esdb_double.rs`): a connection dropped mid-append, a server
//! that is down at the first connection, a server restart during
//! subscriptions, a wrong-expected-version storm between two service
//! processes sharing one node, and random drops, aborted commits and
//! idempotency-cache evictions under continuous notifies.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use prjmanager::proto;
use prjmanager::store::esdb::EsdbStore;
use prjmanager::store::{
    EventStore, ExpectedRevision, NewEvent, RecordedEvent, StoreError, StreamFilter, Subscription,
};
use uuid::Uuid;

#[path = "common/esdb_double.rs"]
mod esdb_double;
#[path = "common/service_harness.rs"]
mod service_harness;

use esdb_double::EsdbDouble;
use service_harness::{
    assert_derived_match, cl, config, load_two_services, pcl_clids, read_all, scenario_first_half,
    scenario_second_half, wait_for, Service,
};

fn event(n: u128) -> NewEvent {
    NewEvent {
        id: Uuid::from_u128(n),
        event_type: "Tested".into(),
        data: n.to_be_bytes().to_vec(),
        metadata: format!("{{\"$correlationId\":\"{n}\"}}").into_bytes(),
    }
}

/// The next `count` events, failing on an error, an end or a stall.
async fn take(subscription: &mut Subscription, count: usize) -> Vec<RecordedEvent> {
    let mut received = Vec::new();
    while received.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("subscription stalled after {} events", received.len()));
        received.push(
            next.expect("subscription ended")
                .expect("subscription failed"),
        );
    }
    received
}

/// The ids of a stream's events in the double's log, in order.
fn ids_in(double: &EsdbDouble, stream: &str) -> Vec<u128> {
    double
        .log()
        .iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.id.as_u128())
        .collect()
}

/// A store on `double` whose `stream` shows only its last event (`$maxCount`
/// 1) and holds event 1.
async fn showing_only_its_last_event(double: &EsdbDouble, stream: &str) -> EsdbStore {
    let store = EsdbStore::connect(&double.url()).unwrap();
    store
        .set_stream_metadata(
            stream,
            prjmanager::store::StreamMetadata {
                max_count: Some(1),
                truncate_before: None,
            },
        )
        .await
        .unwrap();
    store
        .append(stream, ExpectedRevision::Any, vec![event(1)])
        .await
        .unwrap();
    store
}

fn assert_unique_ids(events: &[RecordedEvent]) {
    let ids: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), events.len(), "an event id appears twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_connection_drops_is_retried_and_lands_once() {
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    store
        .append("s", ExpectedRevision::NoStream, vec![event(1)])
        .await
        .unwrap();
    // The node commits the next append, then dies before answering.
    double.drop_after_next_append(1);
    let result = store
        .append("s", ExpectedRevision::Exact(0), vec![event(2), event(3)])
        .await
        .unwrap();
    assert_eq!(result.next_revision, 2);
    assert_eq!(double.restarts(), 1);
    let log = double.log();
    // The position of the batch's last event (commit position + 1).
    assert_eq!(result.position, log[2].commit + 1);
    let ids: Vec<u128> = log.iter().map(|r| r.id.as_u128()).collect();
    assert_eq!(ids, [1, 2, 3]);
    // The metadata travels as custom metadata.
    assert_eq!(log[1].custom, br#"{"$correlationId":"2"}"#);
    // Refused appends (Unavailable) are retried too, and write once.
    double.fail_next_appends(2);
    let result = store
        .append("s", ExpectedRevision::Exact(2), vec![event(4)])
        .await
        .unwrap();
    assert_eq!(result.next_revision, 3);
    assert_eq!(double.log().len(), 4);
    // A conflict is not retried.
    let calls = double.append_calls();
    let err = store
        .append("s", ExpectedRevision::Exact(0), vec![event(5)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion {
                actual: Some(3),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(double.append_calls() <= calls + 1);
}

/// The server's commit timeout: the append was written but answered
/// `Aborted`. The adapter retries it; under `Any` (the server's id check
/// would not be durable) and under `Exact` alike, the event is in the stream
/// exactly once and the caller gets its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_append_that_was_written_is_retried_and_lands_once() {
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    double.abort_after_next_append(1);
    let result = store
        .append("a", ExpectedRevision::Any, vec![event(1), event(2)])
        .await
        .unwrap();
    assert_eq!(result.next_revision, 1);
    double.abort_after_next_append(1);
    let result = store
        .append("a", ExpectedRevision::Exact(1), vec![event(3)])
        .await
        .unwrap();
    assert_eq!(result.next_revision, 2);
    assert_eq!(ids_in(&double, "a"), [1, 2, 3]);
}

/// The hard case of EventStoreDB idempotency: an `Any` append is written,
/// answered `Aborted`, the leader's id cache is lost meanwhile, and the
/// stream's `$maxCount` hides the first event of the batch from a tail
/// read. The retry must still not write the batch twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_any_append_is_not_duplicated_after_the_id_cache_is_lost() {
    let double = EsdbDouble::start();
    let store = showing_only_its_last_event(&double, "h").await;
    double.abort_and_evict_after_next_append(1);
    let result = store
        .append("h", ExpectedRevision::Any, vec![event(2), event(3)])
        .await
        .unwrap();
    assert_eq!(result.next_revision, 2);
    assert_eq!(ids_in(&double, "h"), [1, 2, 3], "written once each");
}

/// Right after a write, before it has replicated, the server drops a retry
/// of it (the caller hears `Aborted` at the commit timeout). The adapter
/// keeps retrying at the same pinned revision until the write has
/// replicated and the server recognises the retry: the batch lands once,
/// even with its first event hidden from a tail read by `$maxCount`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_dropped_until_its_write_replicated_lands_once() {
    let double = EsdbDouble::start();
    let store = showing_only_its_last_event(&double, "r").await;
    double.set_replication_lag(Duration::from_millis(600));
    double.abort_and_evict_after_next_append(1);
    let result = store
        .append("r", ExpectedRevision::Any, vec![event(2), event(3)])
        .await
        .unwrap();
    assert_eq!(result.next_revision, 2);
    assert!(double.retries_dropped() >= 1, "a retry was dropped");
    assert_eq!(ids_in(&double, "r"), [1, 2, 3], "written once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_first_connection_failed_is_rebuilt() {
    // A port with nothing on it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let store = EsdbStore::connect(&format!("esdb://{addr}?tls=false")).unwrap();
    let started = Instant::now();
    let append = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append("s", ExpectedRevision::NoStream, vec![event(1)])
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let double = EsdbDouble::start_on(addr);
    let result = append.await.unwrap().unwrap();
    assert_eq!(result.next_revision, 0);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(double.log().len(), 1);
    assert_eq!(store.stream_revision("s").await.unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_resume_across_a_server_restart_without_gaps_or_duplicates() {
    let double = EsdbDouble::start();
    let store = EsdbStore::connect(&double.url()).unwrap();
    let mut all = store.subscribe_all(1, StreamFilter::prefix("r-"));
    let mut one = store.subscribe_stream("r-1", 0);
    for n in 0..20u128 {
        store
            .append(
                &format!("r-{}", n % 2),
                ExpectedRevision::Any,
                vec![event(n)],
            )
            .await
            .unwrap();
        store
            .append("other", ExpectedRevision::Any, vec![event(1000 + n)])
            .await
            .unwrap();
    }
    let first = take(&mut all, 20).await;
    let first_one = take(&mut one, 10).await;
    let opened = double.subscriptions_opened();
    tokio::task::block_in_place(|| double.restart(Duration::from_millis(500)));
    for n in 20..40u128 {
        store
            .append(
                &format!("r-{}", n % 2),
                ExpectedRevision::Any,
                vec![event(n)],
            )
            .await
            .unwrap();
    }
    let second = take(&mut all, 20).await;
    let second_one = take(&mut one, 10).await;
    assert!(
        double.subscriptions_opened() >= opened + 2,
        "no resubscription"
    );
    let received: Vec<RecordedEvent> = first.into_iter().chain(second).collect();
    assert_unique_ids(&received);
    let expected = store
        .read_all(1, usize::MAX, &StreamFilter::prefix("r-"))
        .await
        .unwrap();
    assert_eq!(received, expected);
    let received_one: Vec<u64> = first_one
        .iter()
        .chain(&second_one)
        .map(|e| e.revision)
        .collect();
    assert_eq!(received_one, (0..20).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), all.next())
            .await
            .is_err(),
        "an event was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_survives_a_connection_drop_mid_append() {
    let double = EsdbDouble::start();
    let service = Service::start(&double.url(), None);
    let mut client = service.client().await;
    client
        .update_config(proto::UpdateConfigRequest {
            project: "drop".into(),
            config: Some(config("h1")),
        })
        .await
        .unwrap();
    double.drop_after_next_append(1);
    client
        .notify_cls_updated(proto::NotifyClsUpdatedRequest {
            project: "drop".into(),
            event: Some(proto::ClsUpdated {
                cls: vec![cl("drop", 101, 1, 1, &[])],
            }),
        })
        .await
        .unwrap();
    wait_for(&service, &mut client, "drop", "the CL", |log| {
        pcl_clids(log).contains(&101)
    })
    .await;
    service.stop();
    assert!(double.restarts() >= 1);
    let store = EsdbStore::connect(&double.url()).unwrap();
    assert_unique_ids(&read_all(&store, "project-drop").await);
    assert_derived_match(&store, "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_resumes_after_a_server_restart() {
    let double = EsdbDouble::start();
    let service = Service::start(&double.url(), None);
    let mut client = service.client().await;
    scenario_first_half(&mut client, "restart").await;
    wait_for(&service, &mut client, "restart", "the first CLs", |log| {
        pcl_clids(log).contains(&103)
    })
    .await;
    tokio::task::block_in_place(|| double.restart(Duration::from_millis(500)));
    scenario_second_half(&mut client, "restart").await;
    wait_for(&service, &mut client, "restart", "config h2", |log| {
        log.config_hash == "h2"
    })
    .await;
    service.stop();
    let store = EsdbStore::connect(&double.url()).unwrap();
    assert_unique_ids(&read_all(&store, "project-restart").await);
    assert_derived_match(&store, "restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_node_never_write_two_markers_for_one_eversion() {
    let double = EsdbDouble::start();
    let first = Service::start(&double.url(), None);
    let second = Service::start(&double.url(), None);
    load_two_services(&first, &second).await;
    first.stop();
    second.stop();
    let store = EsdbStore::connect(&double.url()).unwrap();
    for project in ["shared-0", "shared-1"] {
        assert_unique_ids(&read_all(&store, &format!("project-{project}")).await);
        assert_derived_match(&store, project).await;
    }
}

/// A small deterministic generator for the fault schedule (xorshift64).
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Under continuous notifies, the node at random drops its connections
/// mid-append (written, never answered), answers an append `Aborted` after
/// writing it with its idempotency cache emptied (a new leader), empties the
/// cache while retries are in flight, or restarts; writes replicate 100 ms
/// late, so a quick retry is dropped. Afterwards every
/// acknowledged notify is in the project stream exactly once (at the
/// revision it was acknowledged with), an unacknowledged one at most once,
/// no event id appears twice in any stream, and the derived streams equal a
/// direct fold of the project stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_under_random_drops_aborts_and_cache_evictions_land_exactly_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const NOTIFIES: i64 = 40;
    let double = Arc::new(EsdbDouble::start());
    let service = Service::start(&double.url(), None);
    let mut client = service.client().await;
    client
        .update_config(proto::UpdateConfigRequest {
            project: "chaos".into(),
            config: Some(config("h1")),
        })
        .await
        .unwrap();
    // Writes replicate late, so some retries are dropped too.
    double.set_replication_lag(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = std::thread::spawn({
        let double = double.clone();
        let stop = stop.clone();
        move || {
            let mut schedule = Schedule(0x5eed_cafe_f00d);
            let mut faults = [0u32; 4];
            while !stop.load(Ordering::SeqCst) {
                let pick = schedule.next();
                std::thread::sleep(Duration::from_millis(150 + pick % 250));
                let kind = (pick >> 8) % 4;
                match kind {
                    0 => double.drop_after_next_append(1),
                    1 => double.abort_and_evict_after_next_append(1),
                    2 => double.evict_idempotency_cache(),
                    _ => double.restart(Duration::from_millis(30)),
                }
                faults[kind as usize] += 1;
            }
            faults
        }
    });
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for n in 0..NOTIFIES {
        let clid = 1000 + n;
        let sent = client
            .notify_cls_updated(proto::NotifyClsUpdatedRequest {
                project: "chaos".into(),
                event: Some(proto::ClsUpdated {
                    cls: vec![cl("chaos", clid, 1, 1, &[])],
                }),
            })
            .await;
        match sent {
            Ok(response) => acknowledged.push((clid, response.into_inner().revision)),
            Err(status) => refused.push((clid, status.code())),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let faults = tokio::task::block_in_place(|| chaos.join().unwrap());
    eprintln!("faults [drop, abort+evict, evict, restart]: {faults:?}; refused: {refused:?}");
    assert!(
        faults.iter().all(|&n| n > 0),
        "every fault happened: {faults:?}"
    );
    assert!(
        acknowledged.len() as i64 >= NOTIFIES / 2,
        "most notifies get through: refused {refused:?}"
    );
    let last = acknowledged.last().expect("some notify acknowledged").0;
    wait_for(&service, &mut client, "chaos", "the last CL", |log| {
        pcl_clids(log).contains(&last)
    })
    .await;
    service.stop();

    let store = EsdbStore::connect(&double.url()).unwrap();
    let events = read_all(&store, "project-chaos").await;
    assert_unique_ids(&events);
    let mut landed: std::collections::HashMap<i64, Vec<u64>> = Default::default();
    for event in &events {
        if let Ok(proto::input_event::Event::ClsUpdated(update)) =
            prjmanager::events::decode(&event.event_type, &event.data)
        {
            for changed in update.cls {
                landed.entry(changed.clid).or_default().push(event.revision);
            }
        }
    }
    for (clid, revision) in &acknowledged {
        assert_eq!(landed.get(clid), Some(&vec![*revision]), "CL {clid}");
    }
    for (clid, _) in &refused {
        assert!(landed.get(clid).map_or(0, Vec::len) <= 1, "CL {clid}");
    }
    for stream in [
        "pmaction-chaos",
        "projectlog-chaos",
        "projectsnapshot-chaos",
    ] {
        assert_unique_ids(&read_all(&store, stream).await);
    }
    assert_derived_match(&store, "chaos").await;
}
