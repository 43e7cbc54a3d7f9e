//! Crash safety of the embedded store: a child process appends through the
//! Notifier in a loop and prints every acknowledged revision; we SIGKILL it
//! at random moments, reopen the store and check that every acknowledged
//! event is present, intact and in order, and that nothing is half-written.
//!
//! The kill delays come from a seeded generator; the seed is printed, and
//! `PRJMANAGER_CRASH_SEED=<seed>` replays a run.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use prjmanager::events;
use prjmanager::proto::input_event::Event;
use prjmanager::store::embedded::EmbeddedStore;
use prjmanager::store::{Direction, EventStore, ReadFrom};

/// How many times the appender is killed.
const KILLS: usize = 20;

/// SplitMix64: a tiny deterministic generator for the kill delays.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Parses the complete `ack <seq> <revision>` lines of the child's output;
/// a line cut by the kill (no newline) is not an acknowledgement.
fn acks(output: &[u8]) -> Vec<(u64, u64)> {
    let text = String::from_utf8_lossy(output);
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            assert_eq!(parts.next(), Some("ack"), "unexpected output line {line:?}");
            let seq = parts.next().unwrap().parse().unwrap();
            let revision = parts.next().unwrap().parse().unwrap();
            (seq, revision)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let seed = std::env::var("PRJMANAGER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash test seed: {seed} (set PRJMANAGER_CRASH_SEED to replay)");
    let mut rng = SplitMix(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let stream = "project-crash";
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    let mut next_seq = 0;

    for kill in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pm-bench"))
            .args(["append-loop", "--project", "crash", "--callers", "4"])
            .arg("--db")
            .arg(&db)
            .arg("--start")
            .arg(next_seq.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut output = Vec::new();
            stdout.read_to_end(&mut output).unwrap();
            output
        });
        let delay = Duration::from_millis(50 + rng.next() % 400);
        tokio::time::sleep(delay).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let new_acks = acks(&reader.join().unwrap());
        acknowledged.extend(&new_acks);

        let store = EmbeddedStore::open(&db).unwrap();
        let stored = store
            .read_stream(stream, ReadFrom::Start, Direction::Forwards, usize::MAX)
            .await
            .unwrap();
        for (revision, event) in stored.iter().enumerate() {
            assert_eq!(
                event.revision, revision as u64,
                "kill {kill}: revisions have a gap"
            );
            let Event::ClsUpdated(decoded) = events::decode(&event.event_type, &event.data)
                .unwrap_or_else(|e| panic!("kill {kill}: revision {revision} is damaged: {e}"))
            else {
                panic!("kill {kill}: revision {revision} is not a ClsUpdated");
            };
            let seq = event.id.as_u128() as u64 - 1;
            assert_eq!(decoded.cls.len(), 1);
            assert_eq!(
                decoded.cls[0].clid,
                seq as i64 + 1,
                "kill {kill}: payload of seq {seq}"
            );
            let gerrit = decoded.cls[0]
                .snapshot
                .as_ref()
                .unwrap()
                .gerrit
                .as_ref()
                .unwrap();
            assert_eq!(gerrit.change, 4_000_000 + seq as i64 + 1);
            assert_eq!(
                gerrit.current_revision,
                format!("{:040x}", u128::from(seq) * 7919)
            );
        }
        let mut ids: Vec<_> = stored.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            stored.len(),
            "kill {kill}: an event is duplicated"
        );
        for &(seq, revision) in &acknowledged {
            let event = stored.get(revision as usize).unwrap_or_else(|| {
                panic!("kill {kill}: acknowledged seq {seq} at revision {revision} is lost")
            });
            assert_eq!(
                event.id.as_u128(),
                u128::from(seq) + 1,
                "kill {kill}: revision {revision} holds another event than acknowledged"
            );
        }
        next_seq = stored
            .iter()
            .map(|e| e.id.as_u128() as u64)
            .max()
            .unwrap_or(0);
        store.close().await.unwrap();

        let check = rusqlite::Connection::open(&db).unwrap();
        let integrity: String = check
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok", "kill {kill}: SQLite integrity check");
        println!(
            "kill {kill}: after {delay:?}, {} new acks, {} events stored",
            new_acks.len(),
            stored.len()
        );
    }
    assert!(
        acknowledged.len() >= KILLS,
        "the appender acknowledged too little to test anything: {}",
        acknowledged.len()
    );
}
