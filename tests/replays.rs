//! The `replays/` corpus: every recorded stream is verified (every marker
//! digest recomputed) and its final state, logged versions and actions are
//! snapshotted with insta (`cargo insta review` to accept a change).

use std::path::PathBuf;

use prjmanager::read::action_line;
use prjmanager::replay::{self, Source};

fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("replays");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_corpus_has_the_recorded_scenarios() {
    let names: Vec<String> = corpus()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.len() >= 7, "{names:?}");
}

#[tokio::test]
async fn every_replay_verifies_and_matches_its_snapshots() {
    for file in corpus() {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let opened = replay::open(&Source::File(file.display().to_string()))
            .await
            .unwrap();
        let report = replay::verify(&opened).await.unwrap();
        assert!(
            report.divergence.is_none(),
            "{stem}: {:#?}",
            report.divergence
        );
        assert_eq!(report.markers_checked as i64, report.eversions, "{stem}");

        let last = replay::rebuild(&opened, report.eversions).await.unwrap();
        insta::assert_snapshot!(
            format!("{stem}__final_state"),
            serde_json::to_string_pretty(&last.log).unwrap()
        );
        let logs = replay::logs(&opened).await.unwrap();
        let logged: Vec<String> = logs
            .iter()
            .map(|l| serde_json::json!({"eversion": l.eversion, "reasons": l.reasons.iter().map(|r| prjmanager::proto::project_log::LogReason::try_from(*r).map(|r| r.as_str_name()).unwrap_or("?")).collect::<Vec<_>>()}).to_string())
            .collect();
        insta::assert_snapshot!(format!("{stem}__logged_versions"), logged.join("\n"));
        let actions: Vec<String> = replay::actions(&opened, None)
            .await
            .unwrap()
            .iter()
            .map(|a| serde_json::to_string(&action_line(a).unwrap()).unwrap())
            .collect();
        insta::assert_snapshot!(format!("{stem}__actions"), actions.join("\n"));
    }
}

/// The busy scenario (20,000+ events, 60 stacks) is not committed: its file
/// is about 11 MB. This records it through the service (`pm-bench record
/// busy`, about 3 minutes in debug) and verifies it; run with `--ignored`.
#[tokio::test]
#[ignore = "records 20,000 events through the service; minutes"]
async fn the_busy_scenario_records_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("busy.jsonl");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pm-bench"))
        .args(["record", "busy", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let opened = replay::open(&Source::File(out.display().to_string()))
        .await
        .unwrap();
    let report = replay::verify(&opened).await.unwrap();
    assert!(report.events >= 20_000, "{}", report.events);
    assert!(report.divergence.is_none(), "{:#?}", report.divergence);
}
