//! The raw-SQLite baseline of `pm-bench append`: rows inserted straight into
//! the embedded store's schema, through the store's own connection setup
//! ([`open_writer_connection`]: identity check, WAL, `synchronous=FULL`) and
//! statements, one `BEGIN IMMEDIATE … COMMIT` per batch, but without the
//! store's expected-revision and idempotency checks, savepoints or thread hop.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use prjmanager::store::embedded::{
    open_writer_connection, FIND_STREAM_SQL, INSERT_EVENT_SQL, INSERT_STREAM_SQL,
    SET_LAST_REVISION_SQL,
};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

/// What [`raw_insert`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawInsertPlan {
    /// Number of transactions (one fsync each), at most.
    pub batches: usize,
    /// Stop starting transactions once this much time has passed (at least
    /// one runs), so that one connection writes for the whole measurement,
    /// automatic WAL checkpoints included, as the store's writer does.
    pub until: Option<Duration>,
    /// Events per transaction.
    pub batch_size: usize,
    /// Number of streams the events go to, round robin.
    pub streams: usize,
    /// Payload bytes per event.
    pub payload_bytes: usize,
}

/// Inserts `plan.batches × plan.batch_size` events into the store at `path`
/// (streams `raw-insert-<i>`; the file stays a valid store). Per event: the
/// row insert and the stream's `last_revision` update. Returns each batch's
/// duration, commit (and any automatic checkpoint it triggers) included.
pub fn raw_insert(path: &Path, plan: &RawInsertPlan) -> Result<Vec<Duration>> {
    if plan.streams == 0 {
        bail!("a raw insert benchmark needs at least one stream");
    }
    let mut connection = open_writer_connection(path)?;
    let mut streams = Vec::with_capacity(plan.streams);
    for i in 0..plan.streams {
        let name = format!("raw-insert-{i}");
        let found: Option<(i64, Option<i64>)> = connection
            .query_row(FIND_STREAM_SQL, [name.as_bytes()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let (stream_id, last) = match found {
            Some(row) => row,
            None => {
                connection.execute(INSERT_STREAM_SQL, [name.as_bytes()])?;
                (connection.last_insert_rowid(), None)
            }
        };
        streams.push((stream_id, last.map_or(0, |last| last + 1)));
    }
    let payload = vec![0xA5_u8; plan.payload_bytes];
    let mut durations = Vec::new();
    let mut next_stream = 0;
    let begun = Instant::now();
    while durations.len() < plan.batches
        && (durations.is_empty() || plan.until.map_or(true, |d| begun.elapsed() < d))
    {
        let started = Instant::now();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = transaction.prepare_cached(INSERT_EVENT_SQL)?;
            let mut set_last = transaction.prepare_cached(SET_LAST_REVISION_SQL)?;
            for _ in 0..plan.batch_size {
                let (stream_id, revision) = &mut streams[next_stream];
                next_stream = (next_stream + 1) % plan.streams;
                insert.execute(params![
                    *stream_id,
                    *revision,
                    Uuid::new_v4().as_bytes(),
                    "RawInsert",
                    payload,
                    b"{}".as_slice(),
                ])?;
                set_last.execute(params![*stream_id, *revision])?;
                *revision += 1;
            }
        }
        transaction.commit()?;
        durations.push(started.elapsed());
    }
    Ok(durations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prjmanager::store::embedded::EmbeddedStore;
    use prjmanager::store::{EventStore, StreamFilter};

    #[test]
    fn raw_inserts_leave_a_valid_store_and_continue_its_streams() {
        let folder = tempfile::TempDir::new().unwrap();
        let path = folder.path().join("raw.db");
        let plan = RawInsertPlan {
            batches: 3,
            batch_size: 10,
            streams: 4,
            payload_bytes: 100,
            until: None,
        };
        assert_eq!(raw_insert(&path, &plan).unwrap().len(), 3);
        // A second run appends after the first.
        raw_insert(&path, &plan).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = EmbeddedStore::open(&path).unwrap();
            let all = store
                .read_all(1, usize::MAX, &StreamFilter::default())
                .await
                .unwrap();
            assert_eq!(all.len(), 60);
            assert_eq!(
                store.stream_revision("raw-insert-0").await.unwrap(),
                Some(15)
            );
            let stream3 = prjmanager::read::read_all(&store, "raw-insert-3")
                .await
                .unwrap();
            let revisions: Vec<u64> = stream3.iter().map(|e| e.revision).collect();
            assert_eq!(revisions, (0..14).collect::<Vec<_>>());
            store.close().await.unwrap();
        });
    }

    #[test]
    fn a_plan_without_streams_is_refused() {
        let folder = tempfile::TempDir::new().unwrap();
        let plan = RawInsertPlan {
            batches: 1,
            batch_size: 1,
            streams: 0,
            payload_bytes: 1,
            until: None,
        };
        let err = raw_insert(&folder.path().join("raw.db"), &plan).unwrap_err();
        assert!(err.to_string().contains("at least one stream"), "{err}");
    }
}
