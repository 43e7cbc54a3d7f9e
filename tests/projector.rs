//! The projector in process, on the memory store: snapshots every 100
//! eversions with a bounded stream, and loading that skips corrupt
//! snapshots (bad bytes, wrong digest) and rebuilds the same state.

use std::time::Duration;

use prjmanager::fold;
use prjmanager::notifier::Notifier;
use prjmanager::projector::{self, ProjectorConfig};
use prjmanager::proto;
use prjmanager::proto::Timestamp;
use prjmanager::read::{load, Target};
use prjmanager::store::memory::MemoryStore;
use prjmanager::store::{Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom};
use prjmanager::streams::{self, snapshot_stream};
use prjmanager::testing::ConfigBuilder;
use prost::Message;
use tokio::sync::watch;

fn config() -> proto::ProjectConfig {
    ConfigBuilder::new("h1", 1).group("main", |g| g).build()
}

/// A supervised projector without its own scheduler: markers come from
/// [`Running::marker`].
struct Running {
    handle: projector::ProjectorHandle,
    stop: watch::Sender<bool>,
    status: watch::Receiver<projector::Status>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
    fn start<S: EventStore>(store: S) -> Self {
        let (handle, requests) = projector::channel();
        let (stop, stopped) = watch::channel(false);
        let (status_sender, status) = watch::channel(projector::Status::Starting);
        let config = ProjectorConfig {
            schedule_markers: false,
            ..ProjectorConfig::default()
        };
        let task = tokio::spawn(projector::supervise(
            store,
            config,
            requests,
            stopped,
            status_sender,
        ));
        Self {
            handle,
            stop,
            status,
            task,
        }
    }

    /// Appends the project's `i`-th marker (its clock `i` seconds after a
    /// fixed start), once the projector has folded the previous one.
    async fn marker(&self, project: &str, i: i64) {
        let now = Timestamp {
            seconds: 1_700_000_000 + i,
            nanos: 0,
        };
        loop {
            match self.handle.evaluate(project, Some(now)).await {
                Ok(_) => return,
                Err(projector::AskError::Quarantined { reason, .. }) => {
                    panic!("quarantined: {reason}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// Waits until the project's state has folded `eversion`.
    async fn folded(&self, project: &str, eversion: i64) {
        while self.handle.state(project).await.unwrap().unwrap().eversion != eversion {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the projector; it must stop cleanly.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Runs a projector and appends `markers` markers through it, one second
/// apart (with a poke every seventh); returns the store.
async fn project_with_markers(markers: i64) -> MemoryStore {
    let store = MemoryStore::new();
    let notifier = Notifier::new(store.clone(), "test");
    notifier.update_config("snap", config()).await.unwrap();
    let running = Running::start(store.clone());
    for i in 0..markers {
        running.marker("snap", i).await;
        if i % 7 == 0 {
            notifier.poke("snap").await.unwrap();
        }
    }
    running.folded("snap", markers).await;
    running.stop().await;
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_every_100_eversions_in_a_bounded_stream() {
    let store = project_with_markers(1_250).await;
    let snapshots = store
        .read_stream(
            &snapshot_stream("snap"),
            ReadFrom::Start,
            Direction::Forwards,
            100,
        )
        .await
        .unwrap();
    let eversions: Vec<i64> = snapshots
        .iter()
        .map(|e| {
            proto::ProjectSnapshot::decode(e.data.as_slice())
                .unwrap()
                .eversion
        })
        .collect();
    // Twelve were written; the stream keeps the newest ten.
    assert_eq!(eversions, (3..=12).map(|i| i * 100).collect::<Vec<_>>());
    assert_eq!(
        store
            .stream_metadata(&snapshot_stream("snap"))
            .await
            .unwrap()
            .max_count,
        Some(streams::SNAPSHOT_STREAM_MAX_COUNT)
    );
    for event in &snapshots {
        let snapshot = proto::ProjectSnapshot::decode(event.data.as_slice()).unwrap();
        let state = snapshot.state.unwrap();
        assert_eq!(fold::state_digest(&state), snapshot.state_digest);
        assert_eq!(state.eversion, snapshot.eversion);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshots_are_skipped_and_the_state_is_rebuilt() {
    let store = project_with_markers(230).await;
    let full = load(&MemoryStore::new(), "snap", Target::Latest)
        .await
        .unwrap();
    assert_eq!(full.state.eversion, 0, "an empty store has no state");

    let from_snapshot = load(&store, "snap", Target::Latest).await.unwrap();
    assert_eq!(from_snapshot.snapshot_eversion, Some(200));
    assert!(from_snapshot.warnings.is_empty());

    // Append a snapshot whose bytes are garbage and one whose digest lies.
    let stream = snapshot_stream("snap");
    let mut wrong_digest = proto::ProjectSnapshot::decode(
        store
            .read_stream(&stream, ReadFrom::End, Direction::Backwards, 1)
            .await
            .unwrap()[0]
            .data
            .as_slice(),
    )
    .unwrap();
    wrong_digest.eversion = 220;
    wrong_digest.state.as_mut().unwrap().eversion = 220;
    let bad = |data: Vec<u8>, n: u128| NewEvent {
        id: uuid::Uuid::from_u128(n),
        event_type: "ProjectSnapshot".into(),
        data,
        metadata: streams::metadata(uuid::Uuid::from_u128(n), "test", None),
    };
    store
        .append(
            &stream,
            ExpectedRevision::Any,
            vec![
                bad(wrong_digest.encode_to_vec(), 1),
                bad(b"\xff\xff not a snapshot".to_vec(), 2),
            ],
        )
        .await
        .unwrap();
    let loaded = load(&store, "snap", Target::Latest).await.unwrap();
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].contains("does not decode"),
        "{:?}",
        loaded.warnings
    );
    assert!(
        loaded.warnings[1].contains("digest"),
        "{:?}",
        loaded.warnings
    );
    assert_eq!(loaded.snapshot_eversion, Some(200));
    assert_eq!(loaded.state, from_snapshot.state);

    // With every snapshot unusable, the state is rebuilt from the start.
    let only_bad = MemoryStore::new();
    let events = store
        .read_stream(
            "project-snap",
            ReadFrom::Start,
            Direction::Forwards,
            usize::MAX,
        )
        .await
        .unwrap();
    only_bad
        .append(
            "project-snap",
            ExpectedRevision::NoStream,
            events
                .iter()
                .map(|e| NewEvent {
                    id: e.id,
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                    metadata: e.metadata.clone(),
                })
                .collect(),
        )
        .await
        .unwrap();
    only_bad
        .append(
            &stream,
            ExpectedRevision::Any,
            vec![bad(b"garbage".to_vec(), 3)],
        )
        .await
        .unwrap();
    let rebuilt = load(&only_bad, "snap", Target::Latest).await.unwrap();
    assert_eq!(rebuilt.snapshot_eversion, None);
    assert_eq!(rebuilt.warnings.len(), 1);
    assert_eq!(rebuilt.state, from_snapshot.state);

    // A historic eversion below every snapshot is rebuilt from the start too.
    let early = load(&store, "snap", Target::Eversion(50)).await.unwrap();
    assert_eq!(early.state.eversion, 50);
    assert_eq!(early.snapshot_eversion, None);
}

/// A memory store with faults: its first `panics` reads of the checkpoint
/// stream panic (as a bug anywhere in the projector would), and it refuses
/// appends to streams starting with `refuse` (as EventStoreDB refuses an
/// append over its size limit).
#[derive(Clone)]
struct Faulty {
    inner: MemoryStore,
    panics: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refuse: Option<&'static str>,
}

impl Faulty {
    fn new(inner: MemoryStore, panics: usize, refuse: Option<&'static str>) -> Self {
        Self {
            inner,
            panics: std::sync::Arc::new(panics.into()),
            refuse,
        }
    }
}

impl EventStore for Faulty {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<prjmanager::store::AppendResult, prjmanager::store::StoreError> {
        if self.refuse.is_some_and(|prefix| stream.starts_with(prefix)) {
            return Err(prjmanager::store::StoreError::InvalidArgument(
                "injected: the append is too large".into(),
            ));
        }
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<prjmanager::store::RecordedEvent>, prjmanager::store::StoreError> {
        use std::sync::atomic::Ordering;
        if stream == streams::CHECKPOINT_STREAM
            && self
                .panics
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            panic!("a planted bug");
        }
        self.inner.read_stream(stream, from, direction, max).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &prjmanager::store::StreamFilter,
    ) -> Result<Vec<prjmanager::store::RecordedEvent>, prjmanager::store::StoreError> {
        self.inner.read_all(from_position, max, filter).await
    }

    async fn stream_revision(
        &self,
        stream: &str,
    ) -> Result<Option<u64>, prjmanager::store::StoreError> {
        self.inner.stream_revision(stream).await
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: prjmanager::store::StreamMetadata,
    ) -> Result<(), prjmanager::store::StoreError> {
        self.inner.set_stream_metadata(stream, metadata).await
    }

    async fn stream_metadata(
        &self,
        stream: &str,
    ) -> Result<prjmanager::store::StreamMetadata, prjmanager::store::StoreError> {
        self.inner.stream_metadata(stream).await
    }

    fn subscribe_all(
        &self,
        from_position: u64,
        filter: prjmanager::store::StreamFilter,
    ) -> prjmanager::store::Subscription {
        self.inner.subscribe_all(from_position, filter)
    }

    fn subscribe_stream(
        &self,
        stream: &str,
        from_revision: u64,
    ) -> prjmanager::store::Subscription {
        self.inner.subscribe_stream(stream, from_revision)
    }
}

/// A panic in the projector does not end it: the supervisor publishes why,
/// restarts it with backoff, and the restarted projector serves requests;
/// stopping it afterwards is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_projector_is_restarted_by_its_supervisor() {
    let inner = MemoryStore::new();
    Notifier::new(inner.clone(), "test")
        .update_config("p", config())
        .await
        .unwrap();
    // The default backoff (0.2 s, then 0.4 s) keeps each `Restarting`
    // status long enough for this test to see it.
    let mut running = Running::start(Faulty::new(inner, 2, None));
    let status = &mut running.status;
    let mut seen = Vec::new();
    loop {
        let now = status.borrow_and_update().clone();
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now == projector::Status::Running {
            break;
        }
        tokio::time::timeout(Duration::from_secs(30), status.changed())
            .await
            .expect("the projector never ran again")
            .unwrap();
    }
    assert!(
        seen.iter().any(|s| matches!(
            s,
            projector::Status::Restarting { reason } if reason.contains("a planted bug")
        )),
        "{seen:?}"
    );
    running.marker("p", 0).await;
    running.folded("p", 1).await;
    let mut status = running.status.clone();
    running.stop().await;
    assert_eq!(*status.borrow_and_update(), projector::Status::Stopped);
}

/// A snapshot the store refuses (EventStoreDB's append size limit) is
/// skipped: the project is not quarantined, its logs are written, and it is
/// served and loaded as before (from the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_snapshot_is_skipped_not_a_quarantine() {
    let inner = MemoryStore::new();
    Notifier::new(inner.clone(), "test")
        .update_config("big", config())
        .await
        .unwrap();
    let running = Running::start(Faulty::new(inner.clone(), 0, Some("projectsnapshot-")));
    let markers = 105;
    for i in 0..markers {
        running.marker("big", i).await;
    }
    running.folded("big", markers).await;
    assert!(running.handle.quarantined().await.unwrap().is_empty());
    running.stop().await;
    let snapshots = inner
        .read_stream(
            &snapshot_stream("big"),
            ReadFrom::Start,
            Direction::Forwards,
            10,
        )
        .await
        .unwrap();
    assert!(snapshots.is_empty());
    let logs = inner
        .read_stream(
            &streams::log_stream("big"),
            ReadFrom::Start,
            Direction::Forwards,
            1_000,
        )
        .await
        .unwrap();
    assert!(!logs.is_empty());
    let loaded = load(&inner, "big", Target::Latest).await.unwrap();
    assert_eq!(loaded.state.eversion, markers);
}

/// Snapshots written before the known Runs were kept in descending id order
/// hold them ascending: such a snapshot still matches its digest (every
/// digest version takes the Runs in ascending order) and is used, its Runs
/// put in the state's order.
#[tokio::test]
async fn a_snapshot_with_its_runs_in_the_old_order_is_used() {
    use prjmanager::events;
    use prjmanager::proto::input_event::Event;
    let store = MemoryStore::new();
    let project = "snap";
    let now = Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    let run = |id: &str| {
        Event::RunCreated(proto::RunCreated {
            run: Some(proto::Run {
                id: format!("{project}/{id}"),
                mode: "DRY_RUN".into(),
                clids: vec![1],
                create_time: Some(now),
                status: proto::run::Status::Running as i32,
                ..Default::default()
            }),
        })
    };
    let stream = [
        Event::ConfigUpdated(proto::ConfigUpdated {
            config: Some(config()),
        }),
        run("8299999999998-1-bb"),
        run("8299999999999-1-aa"),
        run("8299999999997-1-cc"),
        Event::Evaluated(proto::Evaluated {
            now: Some(now),
            ..Default::default()
        }),
    ];
    let new_event = |n: u128, event_type: &str, data: Vec<u8>| NewEvent {
        id: uuid::Uuid::from_u128(n),
        event_type: event_type.into(),
        data,
        metadata: streams::metadata(uuid::Uuid::from_u128(n), "test", None),
    };
    let events: Vec<NewEvent> = stream
        .iter()
        .zip(1..)
        .map(|(e, n)| new_event(n, events::type_name(e), events::encode(e)))
        .collect();
    store
        .append("project-snap", ExpectedRevision::NoStream, events)
        .await
        .unwrap();
    let folded = load(&store, project, Target::Latest).await.unwrap();
    let ids: Vec<&str> = folded.state.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "snap/8299999999999-1-aa",
            "snap/8299999999998-1-bb",
            "snap/8299999999997-1-cc"
        ],
        "known Runs are kept in descending id order"
    );

    let mut old_order = folded.state.clone();
    old_order.runs.reverse();
    let snapshot = proto::ProjectSnapshot {
        eversion: 1,
        source_revision: 4,
        state_digest: fold::state_digest(&folded.state),
        state: Some(old_order),
    };
    store
        .append(
            &snapshot_stream(project),
            ExpectedRevision::Any,
            vec![new_event(99, "ProjectSnapshot", snapshot.encode_to_vec())],
        )
        .await
        .unwrap();
    let loaded = load(&store, project, Target::Latest).await.unwrap();
    assert_eq!(loaded.snapshot_eversion, Some(1), "{:?}", loaded.warnings);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.state, folded.state);
}
