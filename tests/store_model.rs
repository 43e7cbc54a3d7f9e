//! The embedded store agrees with the in-memory model: random sequences of
//! appends (random expected revisions, ids drawn from a small pool so that
//! retries and duplicates are frequent), reads, metadata changes and reopens
//! give the same answers from both stores, and the same contents at the end.
//!
//! A failure prints the shrunk sequence; proptest stores its seed in
//! `proptest-regressions/store_model.txt` (beside the crate's other
//! regression files) and replays it first on the next run.

use prjmanager::store::embedded::EmbeddedStore;
use prjmanager::store::memory::MemoryStore;
use prjmanager::store::{
    AppendResult, Direction, EventStore, ExpectedRevision, NewEvent, ReadFrom, RecordedEvent,
    StoreError, StreamFilter, StreamMetadata,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use tempfile::TempDir;
use uuid::Uuid;

/// Few streams, so that operations collide. The prefix-like names and the
/// SQL wildcards exercise the prefix filter; the empty name is invalid for
/// appends but legal for reads and metadata.
const STREAMS: [&str; 5] = ["a", "a-b", "b%_", "bx_", ""];
// The strategies rely on the invalid name being last.
const _: () = assert!(STREAMS[STREAMS.len() - 1].is_empty());

/// Prefixes the `read_all` filters draw from.
const PREFIXES: [&str; 7] = ["a", "a-", "b%", "b_", "%", "_", ""];

/// Event ids are drawn from this many values.
const ID_POOL: u8 = 12;

/// The fewest and the most operations in one sequence.
const OPERATIONS: std::ops::Range<usize> = 5..40;

/// How many sequences a run tries (each opens a SQLite file and fsyncs
/// every write, on a two-core machine).
const CASES: u32 = 48;

/// One operation, applied to both stores.
#[derive(Debug, Clone)]
enum Operation {
    Append(Append),
    /// Repeats an earlier append of the sequence exactly (modulo its index).
    RepeatAppend(Index),
    ReadStream {
        stream: usize,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    },
    ReadAll {
        from_position: u64,
        max: usize,
        prefixes: Vec<usize>,
    },
    StreamRevision(usize),
    SetMetadata(usize, StreamMetadata),
    GetMetadata(usize),
    /// Closes and reopens the embedded store; a no-op for the model.
    Reopen,
}

#[derive(Debug, Clone)]
struct Append {
    stream: usize,
    expected: ExpectedRevision,
    /// Whether `expected` is replaced, just before the step, by the stream's
    /// current revision in the model, as a caller who read it would do.
    expect_current: bool,
    /// (id from the pool, payload salt): a retry with another salt is still
    /// a retry, and must not overwrite the first payload.
    events: Vec<(u8, u8)>,
    /// Whether one event has an empty type (an invalid request).
    untyped: bool,
}

impl Append {
    fn events(&self) -> Vec<NewEvent> {
        self.events
            .iter()
            .enumerate()
            .map(|(i, &(id, salt))| NewEvent {
                id: Uuid::from_u128(u128::from(id) + 1),
                event_type: if self.untyped && i == 0 {
                    String::new()
                } else {
                    format!("Type{}", id % 3)
                },
                data: vec![id, salt],
                metadata: vec![salt],
            })
            .collect()
    }
}

/// What an operation answered.
#[derive(Debug, PartialEq)]
enum Answer {
    Appended(Result<AppendResult, StoreError>),
    Events(Result<Vec<RecordedEvent>, StoreError>),
    Revision(Result<Option<u64>, StoreError>),
    Metadata(Result<StreamMetadata, StoreError>),
    Done(Result<(), StoreError>),
}

fn expected_revision() -> impl Strategy<Value = ExpectedRevision> {
    prop_oneof![
        3 => Just(ExpectedRevision::Any),
        1 => Just(ExpectedRevision::NoStream),
        1 => Just(ExpectedRevision::StreamExists),
        3 => (0u64..5).prop_map(ExpectedRevision::Exact),
    ]
}

fn append() -> impl Strategy<Value = Append> {
    // Appends to the invalid empty name are rare, so that most appends
    // reach the revision and id checks.
    (
        prop_oneof![20 => 0..STREAMS.len() - 1, 1 => Just(STREAMS.len() - 1)],
        expected_revision(),
        prop_oneof![
            20 => prop::collection::vec((0..ID_POOL, 0u8..2), 1..4),
            1 => Just(Vec::new()),
        ],
        prop::bool::weighted(0.03),
        prop::bool::weighted(0.4),
    )
        .prop_map(
            |(stream, expected, events, untyped, expect_current)| Append {
                stream,
                expected,
                expect_current,
                events,
                untyped,
            },
        )
}

fn max() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..6, 1 => Just(usize::MAX)]
}

fn operation() -> impl Strategy<Value = Operation> {
    let stream = 0..STREAMS.len();
    prop_oneof![
        8 => append().prop_map(Operation::Append),
        3 => any::<Index>().prop_map(Operation::RepeatAppend),
        3 => (
            stream.clone(),
            prop_oneof![
                Just(ReadFrom::Start),
                Just(ReadFrom::End),
                (0u64..8).prop_map(ReadFrom::Revision),
            ],
            prop_oneof![Just(Direction::Forwards), Just(Direction::Backwards)],
            max(),
        )
            .prop_map(|(stream, from, direction, max)| Operation::ReadStream {
                stream,
                from,
                direction,
                max,
            }),
        2 => (0u64..20, max(), prop::collection::vec(0..PREFIXES.len(), 0..3)).prop_map(
            |(from_position, max, prefixes)| Operation::ReadAll {
                from_position,
                max,
                prefixes,
            }
        ),
        1 => stream.clone().prop_map(Operation::StreamRevision),
        2 => (
            stream.clone(),
            prop::option::of(0u64..5),
            prop::option::of(0u64..8)
        )
            .prop_map(|(stream, max_count, truncate_before)| Operation::SetMetadata(
                stream,
                StreamMetadata {
                    max_count,
                    truncate_before,
                },
            )),
        1 => stream.prop_map(Operation::GetMetadata),
        1 => Just(Operation::Reopen),
    ]
}

async fn apply<S: EventStore>(store: &S, operation: &Operation, appends: &[Append]) -> Answer {
    match operation {
        Operation::Append(append) => Answer::Appended(
            store
                .append(STREAMS[append.stream], append.expected, append.events())
                .await,
        ),
        Operation::RepeatAppend(index) => {
            let append = &appends[index.index(appends.len())];
            Answer::Appended(
                store
                    .append(STREAMS[append.stream], append.expected, append.events())
                    .await,
            )
        }
        Operation::ReadStream {
            stream,
            from,
            direction,
            max,
        } => Answer::Events(
            store
                .read_stream(STREAMS[*stream], *from, *direction, *max)
                .await,
        ),
        Operation::ReadAll {
            from_position,
            max,
            prefixes,
        } => {
            let filter = StreamFilter {
                prefixes: prefixes.iter().map(|&p| PREFIXES[p].to_string()).collect(),
            };
            Answer::Events(store.read_all(*from_position, *max, &filter).await)
        }
        Operation::StreamRevision(stream) => {
            Answer::Revision(store.stream_revision(STREAMS[*stream]).await)
        }
        Operation::SetMetadata(stream, metadata) => {
            Answer::Done(store.set_stream_metadata(STREAMS[*stream], *metadata).await)
        }
        Operation::GetMetadata(stream) => {
            Answer::Metadata(store.stream_metadata(STREAMS[*stream]).await)
        }
        Operation::Reopen => Answer::Done(Ok(())),
    }
}

/// Everything a store holds, as the public interface shows it.
async fn contents<S: EventStore>(store: &S) -> Vec<Answer> {
    let mut answers = vec![Answer::Events(
        store
            .read_all(0, usize::MAX, &StreamFilter::default())
            .await,
    )];
    for prefix in PREFIXES {
        let filter = StreamFilter::prefix(prefix);
        answers.push(Answer::Events(store.read_all(0, usize::MAX, &filter).await));
    }
    for stream in STREAMS {
        answers.push(Answer::Revision(store.stream_revision(stream).await));
        answers.push(Answer::Metadata(store.stream_metadata(stream).await));
        for direction in [Direction::Forwards, Direction::Backwards] {
            let from = match direction {
                Direction::Forwards => ReadFrom::Start,
                Direction::Backwards => ReadFrom::End,
            };
            answers.push(Answer::Events(
                store.read_stream(stream, from, direction, usize::MAX).await,
            ));
        }
    }
    answers
}

/// The operation with an `expect_current` append's expected revision filled
/// in from the model, so that both stores get the same request.
async fn resolve(model: &MemoryStore, operation: &Operation) -> Operation {
    match operation {
        Operation::Append(append) if append.expect_current => {
            let current = model.stream_revision(STREAMS[append.stream]).await;
            Operation::Append(Append {
                expected: current
                    .unwrap()
                    .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
                expect_current: false,
                ..append.clone()
            })
        }
        other => other.clone(),
    }
}

fn check(operations: &[Operation]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let folder = TempDir::new().unwrap();
        let path = folder.path().join("store.db");
        let model = MemoryStore::new();
        let mut embedded = EmbeddedStore::open(&path).unwrap();
        let mut appends = Vec::new();
        for (step, operation) in operations.iter().enumerate() {
            let operation = &resolve(&model, operation).await;
            if let Operation::RepeatAppend(_) = operation {
                if appends.is_empty() {
                    continue;
                }
            }
            if let Operation::Reopen = operation {
                embedded.close().await.unwrap();
                embedded = EmbeddedStore::open(&path).unwrap();
            }
            let expected = apply(&model, operation, &appends).await;
            let actual = apply(&embedded, operation, &appends).await;
            prop_assert_eq!(actual, expected, "step {}: {:?}", step, operation);
            if let Operation::Append(append) = operation {
                appends.push(append.clone());
            }
        }
        let expected = contents(&model).await;
        prop_assert_eq!(&contents(&embedded).await, &expected, "final contents");
        // And once more after a last reopen.
        embedded.close().await.unwrap();
        let embedded = EmbeddedStore::open(&path).unwrap();
        prop_assert_eq!(
            &contents(&embedded).await,
            &expected,
            "contents after reopen"
        );
        embedded.close().await.unwrap();
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // Integration tests have no `lib.rs` beside them, so proptest's
        // default would not find the crate's regression folder.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/store_model.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn embedded_store_agrees_with_the_model(
        operations in prop::collection::vec(operation(), OPERATIONS)
    ) {
        check(&operations)?;
    }
}
