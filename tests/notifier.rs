//! The Notifier: every call appends one valid event, and every bad input is
//! rejected with an error naming the field while nothing is written.

use prjmanager::notifier::{Notifier, NotifyError};
use prjmanager::proto::Timestamp;
use prjmanager::proto::{self, input_event::Event, run::Status as RunStatus};
use prjmanager::store::memory::MemoryStore;
use prjmanager::store::{Direction, EventStore, ReadFrom};
use prjmanager::streams::project_stream;
use prjmanager::testing::ConfigBuilder;

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn notifier() -> Notifier<MemoryStore> {
    Notifier::new(MemoryStore::new(), "test")
}

fn config() -> proto::ProjectConfig {
    ConfigBuilder::new("h1", 1)
        .group("main", |g| {
            g.watch("c-review.example.com", "repo/a", "refs/heads/main")
        })
        .build()
}

fn cl(clid: i64, eversion: i64) -> proto::ChangeList {
    proto::ChangeList {
        clid,
        eversion,
        ..Default::default()
    }
}

fn run(id: &str) -> proto::Run {
    proto::Run {
        id: id.into(),
        mode: "DRY_RUN".into(),
        clids: vec![1],
        create_time: Some(ts(100)),
        status: RunStatus::Running as i32,
        ..Default::default()
    }
}

/// Asserts that the call was rejected naming `field`, and that nothing was written.
async fn assert_rejected(
    n: &Notifier<MemoryStore>,
    result: Result<prjmanager::notifier::Appended, NotifyError>,
    field: &str,
) {
    match result {
        Err(NotifyError::Invalid(e)) => assert_eq!(e.field, field, "wrong field in {e}"),
        other => panic!("expected a rejection of {field}, got {other:?}"),
    }
    let everything = n
        .store()
        .read_all(0, 100, &Default::default())
        .await
        .unwrap();
    assert!(
        everything.is_empty(),
        "a rejected call wrote {everything:?}"
    );
}

#[tokio::test]
async fn every_call_appends_one_event_with_increasing_revisions() {
    let n = notifier();
    assert_eq!(n.update_config("p", config()).await.unwrap().revision, 0);
    assert_eq!(n.poke("p").await.unwrap().revision, 1);
    assert_eq!(
        n.notify_cls_updated("p", vec![cl(1, 1)])
            .await
            .unwrap()
            .revision,
        2
    );
    let created = n.notify_run_created(run("p/101-aaa")).await.unwrap();
    assert_eq!((created.project.as_str(), created.revision), ("p", 3));
    let finished = n
        .notify_run_finished("p/101-aaa", RunStatus::Succeeded, ts(200))
        .await
        .unwrap();
    assert_eq!(finished.revision, 4);
    n.notify_purge_completed(
        "p",
        proto::PurgeCompleted {
            operation_id: "1-1".into(),
            clid: 1,
        },
    )
    .await
    .unwrap();
    n.notify_triggering_cl_deps_completed(
        "p",
        proto::TriggeringClDepsCompleted {
            operation_id: "1-3".into(),
            origin: 3,
            succeeded: vec![1, 2],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let appended = n
        .send_now("p", Event::Poked(proto::Poked {}))
        .await
        .unwrap();
    assert_eq!(appended.revision, 7);

    let stored = n
        .store()
        .read_stream(
            &project_stream("p"),
            ReadFrom::Start,
            Direction::Forwards,
            100,
        )
        .await
        .unwrap();
    let types: Vec<_> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "ConfigUpdated",
            "Poked",
            "ClsUpdated",
            "RunCreated",
            "RunFinished",
            "PurgeCompleted",
            "TriggeringClDepsCompleted",
            "Poked"
        ]
    );
    let metadata: serde_json::Value = serde_json::from_slice(&stored[7].metadata).unwrap();
    assert_eq!(metadata["$correlationId"], appended.id.to_string());
    assert_eq!(metadata["producer"], "test");
    assert_eq!(
        prjmanager::events::decode(&stored[4].event_type, &stored[4].data).unwrap(),
        Event::RunFinished(proto::RunFinished {
            run_id: "p/101-aaa".into(),
            status: RunStatus::Succeeded as i32,
            end_time: Some(ts(200)),
        })
    );
}

#[tokio::test]
async fn run_events_are_routed_by_the_run_id() {
    let n = notifier();
    n.poke("infra").await.unwrap();
    let created = n
        .notify_run_created(run("infra/9042327596854-1-42e0a59099a0f673"))
        .await
        .unwrap();
    assert_eq!((created.project.as_str(), created.revision), ("infra", 1));
    assert_eq!(
        n.store()
            .stream_revision(&project_stream("infra"))
            .await
            .unwrap(),
        Some(1)
    );
}

#[tokio::test]
async fn retrying_with_the_same_id_appends_once() {
    let n = notifier();
    let id = uuid::Uuid::from_u128(7);
    let first = n
        .send_with_id("p", Event::Poked(proto::Poked {}), id)
        .await
        .unwrap();
    let again = n
        .send_with_id("p", Event::Poked(proto::Poked {}), id)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(
        n.store().stream_revision("project-p").await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn bad_project_names_are_rejected() {
    let n = notifier();
    for bad in ["", "Caps", "a/b", "sp ace", &"x".repeat(101)] {
        let result = n.poke(bad).await;
        assert_rejected(&n, result, "project").await;
    }
    assert!(n.poke(&"x".repeat(100)).await.is_ok());
}

#[tokio::test]
async fn bad_configs_are_rejected() {
    let n = notifier();
    let mut c = config();
    c.state = 0;
    let r = n.update_config("p", c).await;
    assert_rejected(&n, r, "config.state").await;

    let mut c = config();
    c.hash.clear();
    let r = n.update_config("p", c).await;
    assert_rejected(&n, r, "config.hash").await;

    let mut c = config();
    c.config_groups.push(c.config_groups[0].clone());
    let r = n.update_config("p", c).await;
    assert_rejected(&n, r, "config.config_groups[1].name").await;

    let mut c = config();
    c.config_groups[0].gerrit[0].projects[0].ref_regexp = vec!["refs/(".into()];
    let r = n.update_config("p", c).await;
    assert_rejected(
        &n,
        r,
        "config.config_groups[0].gerrit[0].projects[0].ref_regexp[0]",
    )
    .await;

    let mut c = config();
    c.config_groups[0].additional_modes.push(proto::Mode {
        name: "QUICK".into(),
        cq_label_value: 3,
        ..Default::default()
    });
    let r = n.update_config("p", c).await;
    assert_rejected(
        &n,
        r,
        "config.config_groups[0].additional_modes[0].cq_label_value",
    )
    .await;

    let r = n
        .send_now(
            "p",
            Event::ConfigUpdated(proto::ConfigUpdated { config: None }),
        )
        .await;
    assert_rejected(&n, r, "config").await;
}

#[tokio::test]
async fn bad_cls_are_rejected() {
    let n = notifier();
    let r = n.notify_cls_updated("p", vec![]).await;
    assert_rejected(&n, r, "cls").await;
    let r = n.notify_cls_updated("p", vec![cl(1, 1), cl(0, 1)]).await;
    assert_rejected(&n, r, "cls[1].clid").await;
    let r = n.notify_cls_updated("p", vec![cl(1, 0)]).await;
    assert_rejected(&n, r, "cls[0].eversion").await;
    let r = n.notify_cls_updated("p", vec![cl(1, 1), cl(1, 2)]).await;
    assert_rejected(&n, r, "cls[1].clid").await;
    let mut with_bad_dep = cl(1, 1);
    with_bad_dep.snapshot = Some(proto::Snapshot {
        deps: vec![proto::Dep { clid: -4, kind: 1 }],
        ..Default::default()
    });
    let r = n.notify_cls_updated("p", vec![with_bad_dep]).await;
    assert_rejected(&n, r, "cls[0].snapshot.deps[0].clid").await;
    let applicable = |ids: Vec<String>| {
        let mut c = cl(1, 1);
        c.applicable_config = Some(proto::ApplicableConfig {
            projects: vec![proto::ApplicableProject {
                name: "p".into(),
                config_group_ids: ids,
            }],
        });
        c
    };
    let r = n.notify_cls_updated("p", vec![applicable(vec![])]).await;
    assert_rejected(
        &n,
        r,
        "cls[0].applicable_config.projects[0].config_group_ids",
    )
    .await;
    let r = n
        .notify_cls_updated("p", vec![applicable(vec!["nohash".into()])])
        .await;
    assert_rejected(
        &n,
        r,
        "cls[0].applicable_config.projects[0].config_group_ids[0]",
    )
    .await;
    assert!(n
        .notify_cls_updated("p", vec![applicable(vec!["h1/main".into()])])
        .await
        .is_ok());
}

#[tokio::test]
async fn bad_runs_are_rejected() {
    let n = notifier();
    let r = n.notify_run_created(run("no-slash")).await;
    assert_rejected(&n, r, "run.id").await;
    let r = n.notify_run_created(run("p/abc")).await;
    assert_rejected(&n, r, "run.id").await;
    let r = n.notify_run_created(run("Bad/1-2-ab")).await;
    assert_rejected(&n, r, "run.id").await;
    let mut no_mode = run("p/1-1-ab");
    no_mode.mode.clear();
    let r = n.notify_run_created(no_mode).await;
    assert_rejected(&n, r, "run.mode").await;
    let mut no_cls = run("p/1-1-ab");
    no_cls.clids.clear();
    let r = n.notify_run_created(no_cls).await;
    assert_rejected(&n, r, "run.clids").await;
    let mut no_time = run("p/1-1-ab");
    no_time.create_time = None;
    let r = n.notify_run_created(no_time).await;
    assert_rejected(&n, r, "run.create_time").await;

    let r = n
        .notify_run_finished("p/1-1-ab", RunStatus::Running, ts(1))
        .await;
    assert_rejected(&n, r, "status").await;
    let r = n
        .notify_run_finished("p/1-1-ab", RunStatus::EndedMask, ts(1))
        .await;
    assert_rejected(&n, r, "status").await;
    let r = n.notify_run_finished("p", RunStatus::Failed, ts(1)).await;
    assert_rejected(&n, r, "run_id").await;
    // A run of another project sent to this project's stream.
    let r = n
        .send_now(
            "p",
            Event::RunFinished(proto::RunFinished {
                run_id: "q/1-1-ab".into(),
                status: RunStatus::Failed as i32,
                end_time: Some(ts(1)),
            }),
        )
        .await;
    assert_rejected(&n, r, "run_id").await;
    let r = n
        .send_now(
            "p",
            Event::RunFinished(proto::RunFinished {
                run_id: "p/1-1-ab".into(),
                status: RunStatus::Failed as i32,
                end_time: None,
            }),
        )
        .await;
    assert_rejected(&n, r, "end_time").await;
}

#[tokio::test]
async fn bad_completions_are_rejected() {
    let n = notifier();
    let r = n
        .notify_purge_completed(
            "p",
            proto::PurgeCompleted {
                operation_id: String::new(),
                clid: 1,
            },
        )
        .await;
    assert_rejected(&n, r, "operation_id").await;
    let r = n
        .notify_purge_completed(
            "p",
            proto::PurgeCompleted {
                operation_id: "op".into(),
                clid: 0,
            },
        )
        .await;
    assert_rejected(&n, r, "clid").await;
    let deps = |origin, succeeded: Vec<i64>| proto::TriggeringClDepsCompleted {
        operation_id: "op".into(),
        origin,
        succeeded,
        ..Default::default()
    };
    let r = n
        .notify_triggering_cl_deps_completed("p", deps(0, vec![]))
        .await;
    assert_rejected(&n, r, "origin").await;
    let r = n
        .notify_triggering_cl_deps_completed("p", deps(3, vec![1, -2]))
        .await;
    assert_rejected(&n, r, "succeeded[1]").await;
}

#[tokio::test]
async fn markers_cannot_be_sent_through_the_notifier() {
    let n = notifier();
    let r = n
        .send_now(
            "p",
            Event::Evaluated(proto::Evaluated {
                now: Some(ts(1)),
                ..Default::default()
            }),
        )
        .await;
    assert_rejected(&n, r, "event").await;
}

/// Bounds (README "Limits"): out-of-range timestamps and durations, too many
/// deps or votes, over-long strings; each rejected naming the field, the
/// message quoting at most 200 bytes of the input, nothing written.
#[tokio::test]
async fn inputs_beyond_the_limits_are_rejected_naming_the_field() {
    use prjmanager::limits::{MAX_DEPS_PER_CL, MAX_STRING_BYTES, MAX_VOTES_PER_CL};
    let n = notifier();
    let far = Timestamp {
        seconds: 1_000_000_000_000_000,
        nanos: 0,
    };
    assert_rejected(
        &n,
        n.notify_run_finished("p/101-aaa", RunStatus::Failed, far)
            .await,
        "end_time",
    )
    .await;
    let bad_nanos = Timestamp {
        seconds: 100,
        nanos: -1,
    };
    let mut r = run("p/101-aaa");
    r.create_time = Some(bad_nanos);
    assert_rejected(&n, n.notify_run_created(r).await, "run.create_time").await;
    let marker = Event::Evaluated(proto::Evaluated {
        now: Some(far),
        ..Default::default()
    });
    // Markers come from the scheduler or an import, which validate them too.
    let err = prjmanager::notifier::validate_event("p", &marker).unwrap_err();
    assert_eq!(err.field, "now", "{err}");

    let with_snapshot = |snapshot: proto::Snapshot| proto::ChangeList {
        snapshot: Some(snapshot),
        ..cl(1, 1)
    };
    let deps = (1..=MAX_DEPS_PER_CL as i64 + 1)
        .map(|clid| proto::Dep {
            clid,
            kind: proto::dep::DepKind::Hard as i32,
        })
        .collect();
    let too_many_deps = with_snapshot(proto::Snapshot {
        deps,
        ..Default::default()
    });
    assert_rejected(
        &n,
        n.notify_cls_updated("p", vec![too_many_deps]).await,
        "cls[0].snapshot.deps",
    )
    .await;
    let vote = proto::Vote {
        label: "Commit-Queue".into(),
        value: 1,
        ..Default::default()
    };
    let gerrit = |votes: Vec<proto::Vote>, owner_email: String| proto::GerritChange {
        votes,
        owner_email,
        ..Default::default()
    };
    let too_many_votes = with_snapshot(proto::Snapshot {
        gerrit: Some(gerrit(
            vec![vote.clone(); MAX_VOTES_PER_CL + 1],
            String::new(),
        )),
        ..Default::default()
    });
    assert_rejected(
        &n,
        n.notify_cls_updated("p", vec![too_many_votes]).await,
        "cls[0].snapshot.gerrit.votes",
    )
    .await;
    let late_vote = with_snapshot(proto::Snapshot {
        gerrit: Some(gerrit(
            vec![proto::Vote {
                time: Some(far),
                ..vote.clone()
            }],
            String::new(),
        )),
        ..Default::default()
    });
    assert_rejected(
        &n,
        n.notify_cls_updated("p", vec![late_vote]).await,
        "cls[0].snapshot.gerrit.votes[0].time",
    )
    .await;
    let long_email = with_snapshot(proto::Snapshot {
        gerrit: Some(gerrit(vec![], "x".repeat(MAX_STRING_BYTES + 1))),
        ..Default::default()
    });
    let result = n.notify_cls_updated("p", vec![long_email]).await;
    let Err(NotifyError::Invalid(e)) = &result else {
        panic!("expected a rejection, got {result:?}");
    };
    assert!(
        e.to_string().len() < 400,
        "the message echoes the input: {e}"
    );
    assert_rejected(&n, result, "cls[0].snapshot.gerrit.owner_email").await;

    let mut long_delay = config();
    long_delay.config_groups[0].combine_cls = Some(proto::CombineCls {
        stabilization_delay: Some(pbjson_types::Duration {
            seconds: prjmanager::limits::MAX_DURATION_SECONDS + 1,
            nanos: 0,
        }),
    });
    assert_rejected(
        &n,
        n.update_config("p", long_delay).await,
        "config.config_groups[0].combine_cls.stabilization_delay",
    )
    .await;

    let long_project = "a".repeat(1_000_000);
    let result = n.poke(&long_project).await;
    let Err(NotifyError::Invalid(e)) = &result else {
        panic!("expected a rejection, got {result:?}");
    };
    assert!(e.to_string().len() < 400, "the message echoes the input");
    assert_rejected(&n, result, "project").await;
}

/// A Run event routes by its run id's project; a project without a stream is
/// refused, not created.
#[tokio::test]
async fn run_events_of_a_project_without_events_are_refused() {
    let n = notifier();
    let refused = n.notify_run_created(run("p/101-aaa")).await;
    assert!(
        matches!(&refused, Err(NotifyError::UnknownProject(p)) if p == "p"),
        "{refused:?}"
    );
    let refused = n
        .notify_run_finished("p/101-aaa", RunStatus::Failed, ts(200))
        .await;
    assert!(
        matches!(refused, Err(NotifyError::UnknownProject(_))),
        "{refused:?}"
    );
    assert!(n
        .store()
        .read_all(0, 100, &Default::default())
        .await
        .unwrap()
        .is_empty());
    n.poke("p").await.unwrap();
    assert_eq!(
        n.notify_run_created(run("p/101-aaa"))
            .await
            .unwrap()
            .revision,
        1
    );
}
