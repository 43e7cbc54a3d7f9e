//! The service end to end: `prjmanager serve` as a child process on a
//! temporary store and a free loopback port, driven over gRPC, and checked
//! against the same stream folded directly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbjson_types::Timestamp;
use prjmanager::fold;
use prjmanager::projector::derived::{action_stream, log_stream, offload_stream};
use prjmanager::proto::{self, project_manager_client::ProjectManagerClient};
use prjmanager::store::embedded::EmbeddedStore;
use prjmanager::store::{Direction, EventStore, ReadFrom, RecordedEvent};
use prost::Message;
use tonic::transport::Channel;

/// A running `prjmanager serve`.
struct Service {
    child: Child,
    address: String,
    log: Arc<Mutex<String>>,
}

impl Service {
    fn start(db: &Path, token_file: Option<&Path>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_prjmanager"));
        command
            .arg("--store")
            .arg(format!("sqlite://{}", db.display()))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("PRJMANAGER_STORE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(token_file) = token_file {
            command.arg("--token-file").arg(token_file);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (address_sender, address) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("prjmanager listening on ") {
                    let _ = address_sender.send(address.to_string());
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = address
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the service did not start: {}", log.lock().unwrap()));
        Self {
            child,
            address,
            log,
        }
    }

    async fn client(&self) -> ProjectManagerClient<Channel> {
        ProjectManagerClient::connect(format!("http://{}", self.address))
            .await
            .unwrap()
    }

    /// SIGTERM, and the exit status must be success.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "serve exited with {status}: {log}");
        log
    }

    /// SIGKILL.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// Seconds since the epoch, `ago` seconds before the wall clock: markers use
/// the wall clock, and votes older than 7 days do not make a CL active.
fn unix_now(ago: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now - ago
}

fn config(hash: &str) -> proto::ProjectConfig {
    proto::ProjectConfig {
        state: proto::project_config::State::Enabled as i32,
        hash: hash.into(),
        eversion: 1,
        config_groups: vec![proto::ConfigGroup {
            name: "main".into(),
            gerrit: vec![proto::GerritWatch {
                host: "c-review.example.com".into(),
                projects: vec![proto::RepoWatch {
                    name: "repo/a".into(),
                    ref_regexp: vec!["refs/heads/main".into()],
                    ref_regexp_exclude: vec![],
                }],
            }],
            ..Default::default()
        }],
    }
}

/// A CL watched by `project` with a Commit-Queue vote of `cq` (0: none).
fn cl(project: &str, clid: i64, eversion: i64, cq: i32, deps: &[i64]) -> proto::ChangeList {
    let votes = if cq > 0 {
        vec![proto::Vote {
            label: "Commit-Queue".into(),
            value: cq,
            email: "user-1@example.com".into(),
            account_id: 1,
            time: ts(unix_now(60)),
        }]
    } else {
        vec![]
    };
    proto::ChangeList {
        clid,
        eversion,
        applicable_config: Some(proto::ApplicableConfig {
            projects: vec![proto::ApplicableProject {
                name: project.into(),
                config_group_ids: vec!["h1/main".into()],
            }],
        }),
        snapshot: Some(proto::Snapshot {
            luci_project: project.into(),
            patchset: 1,
            deps: deps
                .iter()
                .map(|&d| proto::Dep {
                    clid: d,
                    kind: proto::dep::DepKind::Hard as i32,
                })
                .collect(),
            gerrit: Some(proto::GerritChange {
                host: "c-review.example.com".into(),
                change: clid,
                project: "repo/a".into(),
                r#ref: "refs/heads/main".into(),
                status: proto::gerrit_change::ChangeStatus::New as i32,
                owner_email: "owner@example.com".into(),
                owner_account_id: 9,
                current_revision: format!("rev-{clid}-{eversion}"),
                current_revision_created: ts(unix_now(3600)),
                votes,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run(id: &str, clids: &[i64]) -> proto::Run {
    proto::Run {
        id: id.into(),
        mode: "DRY_RUN".into(),
        clids: clids.to_vec(),
        create_time: ts(unix_now(30)),
        status: proto::run::Status::Running as i32,
        ..Default::default()
    }
}

async fn read_all(store: &EmbeddedStore, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, ReadFrom::Start, Direction::Forwards, usize::MAX)
        .await
        .unwrap()
}

/// What folding a stream directly produces.
#[derive(Debug, PartialEq)]
struct Folded {
    state: proto::ProjectState,
    logs: Vec<proto::ProjectLog>,
    actions: Vec<proto::Action>,
    offloads: Vec<proto::ProjectStateOffload>,
}

fn fold_directly(project: &str, events: &[RecordedEvent]) -> Folded {
    let mut state = prjmanager::domain::new_project(project);
    let mut folded = Folded {
        state: proto::ProjectState::default(),
        logs: vec![],
        actions: vec![],
        offloads: vec![],
    };
    for event in events {
        if let Some(outcome) = fold::apply_recorded(&mut state, event).unwrap() {
            assert!(
                outcome.divergence.is_none(),
                "marker at revision {} diverges",
                event.revision
            );
            folded.logs.extend(outcome.evaluation.project_log.clone());
            folded.offloads.extend(outcome.evaluation.offload.clone());
            folded.actions.extend(outcome.evaluation.wrapped_actions());
        }
    }
    folded.state = state;
    folded
}

/// Decodes a derived stream, asserting that no event id appears twice.
async fn derived<M: Message + Default>(store: &EmbeddedStore, stream: &str) -> Vec<M> {
    let events = read_all(store, stream).await;
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "{stream} has a duplicated event");
    events
        .iter()
        .map(|e| M::decode(e.data.as_slice()).unwrap())
        .collect()
}

/// Checks that the derived streams of `project` are exactly what folding its
/// stream directly produces, and returns the direct fold.
async fn assert_derived_match(db: &Path, project: &str) -> Folded {
    let store = EmbeddedStore::open(db).unwrap();
    let events = read_all(&store, &format!("project-{project}")).await;
    let folded = fold_directly(project, &events);
    let logs: Vec<proto::ProjectLog> = derived(&store, &log_stream(project)).await;
    let actions: Vec<proto::Action> = derived(&store, &action_stream(project)).await;
    let offloads: Vec<proto::ProjectStateOffload> = derived(&store, &offload_stream(project)).await;
    assert_eq!(logs, folded.logs, "ProjectLogs of {project}");
    assert_eq!(actions, folded.actions, "actions of {project}");
    assert_eq!(offloads, folded.offloads, "offloads of {project}");
    let mut eversions: Vec<i64> = events
        .iter()
        .filter(|e| e.event_type == "Evaluated")
        .map(
            |e| match prjmanager::events::decode(&e.event_type, &e.data).unwrap() {
                proto::input_event::Event::Evaluated(m) => m.eversion,
                _ => unreachable!(),
            },
        )
        .collect();
    let count = eversions.len();
    eversions.dedup();
    assert_eq!(eversions.len(), count, "two markers for one eversion");
    assert_eq!(eversions, (1..=count as i64).collect::<Vec<_>>());
    store.close().await.unwrap();
    folded
}

/// Polls until the project's state (from the service) satisfies `done`.
async fn wait_for(
    service: &Service,
    client: &mut ProjectManagerClient<Channel>,
    project: &str,
    what: &str,
    done: impl Fn(&proto::ProjectLog) -> bool,
) -> proto::ProjectLog {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client
            .get_project(proto::GetProjectRequest {
                project: project.into(),
                eversion: 0,
            })
            .await;
        let answer = answer.map(tonic::Response::into_inner);
        if let Ok(log) = &answer {
            if done(log) {
                return log.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last answer {answer:?}; service log:\n{}",
            service.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pcl_clids(log: &proto::ProjectLog) -> Vec<i64> {
    log.state
        .as_ref()
        .map(|s| s.pcls.iter().map(|p| p.clid).collect())
        .unwrap_or_default()
}

/// Sends the first half of the scenario.
async fn scenario_first_half(client: &mut ProjectManagerClient<Channel>, project: &str) {
    client
        .update_config(proto::UpdateConfigRequest {
            project: project.into(),
            config: Some(config("h1")),
        })
        .await
        .unwrap();
    client
        .notify_cls_updated(proto::NotifyClsUpdatedRequest {
            project: project.into(),
            event: Some(proto::ClsUpdated {
                cls: vec![
                    cl(project, 101, 1, 1, &[]),
                    cl(project, 102, 1, 0, &[]),
                    cl(project, 103, 1, 2, &[102]),
                ],
            }),
        })
        .await
        .unwrap();
}

/// Sends the second half: runs created and finished, a config change.
async fn scenario_second_half(client: &mut ProjectManagerClient<Channel>, project: &str) {
    let run_id = format!("{project}/9042327596854-1-42e0a59099a0f673");
    client
        .notify_run_created(proto::NotifyRunCreatedRequest {
            run: Some(run(&run_id, &[101])),
        })
        .await
        .unwrap();
    client
        .notify_cls_updated(proto::NotifyClsUpdatedRequest {
            project: project.into(),
            event: Some(proto::ClsUpdated {
                cls: vec![cl(project, 101, 2, 1, &[])],
            }),
        })
        .await
        .unwrap();
    client
        .notify_run_finished(proto::NotifyRunFinishedRequest {
            event: Some(proto::RunFinished {
                run_id,
                status: proto::run::Status::Succeeded as i32,
                end_time: ts(unix_now(0)),
            }),
        })
        .await
        .unwrap();
    client
        .update_config(proto::UpdateConfigRequest {
            project: project.into(),
            config: Some(config("h2")),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_matches_the_direct_fold() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    scenario_first_half(&mut client, "e2e").await;
    scenario_second_half(&mut client, "e2e").await;
    let served = wait_for(
        &service,
        &mut client,
        "e2e",
        "config h2 and the CLs",
        |log| log.config_hash == "h2" && pcl_clids(log).contains(&101),
    )
    .await;
    assert_eq!(served.status, proto::p_state::Status::Started as i32);
    service.stop();

    let folded = assert_derived_match(&db, "e2e").await;
    assert!(!folded.logs.is_empty());
    assert!(folded
        .actions
        .iter()
        .any(|a| matches!(a.action, Some(proto::action::Action::UpdateRunsConfig(_)))));

    // A restarted service serves the same state as the direct fold.
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    let latest = client
        .get_project(proto::GetProjectRequest {
            project: "e2e".into(),
            eversion: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.eversion, folded.state.eversion);
    assert_eq!(latest.state, folded.state.pstate);
    // A historic eversion is rebuilt with its reasons.
    let first = client
        .get_project(proto::GetProjectRequest {
            project: "e2e".into(),
            eversion: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Some(&first), folded.logs.first());
    let stored = client
        .get_project_log(proto::GetProjectLogRequest {
            project: "e2e".into(),
            eversion: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored, first);
    let listed = client
        .list_actions(proto::ListActionsRequest {
            project: "e2e".into(),
            from_eversion: 0,
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.actions,
        folded.actions[..2.min(folded.actions.len())]
    );
    let missing = client
        .get_project(proto::GetProjectRequest {
            project: "nothing".into(),
            eversion: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let invalid = client
        .poke(proto::PokeRequest {
            project: "Not Valid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(
        invalid.message().contains("project"),
        "{}",
        invalid.message()
    );
    service.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    scenario_first_half(&mut client, "restart").await;
    wait_for(&service, &mut client, "restart", "the first CLs", |log| {
        pcl_clids(log).contains(&103)
    })
    .await;
    service.stop();

    let service = Service::start(&db, None);
    let mut client = service.client().await;
    scenario_second_half(&mut client, "restart").await;
    wait_for(&service, &mut client, "restart", "config h2", |log| {
        log.config_hash == "h2"
    })
    .await;
    service.stop();
    assert_derived_match(&db, "restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_events_left_unevaluated_at_shutdown_are_evaluated_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    client
        .update_config(proto::UpdateConfigRequest {
            project: "late".into(),
            config: Some(config("h1")),
        })
        .await
        .unwrap();
    // Stop before the batch is due (it is due at the next whole second).
    service.stop();
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    wait_for(&service, &mut client, "late", "the config", |log| {
        log.config_hash == "h1"
    })
    .await;
    service.stop();
    assert_derived_match(&db, "late").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_notify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let projects = ["load-a", "load-b"];
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut eversion = 1;
    for kill in 0..10 {
        let service = Service::start(&db, None);
        let mut client = service.client().await;
        if kill == 0 {
            for project in projects {
                client
                    .update_config(proto::UpdateConfigRequest {
                        project: project.into(),
                        config: Some(config("h1")),
                    })
                    .await
                    .unwrap();
            }
        }
        let started = Instant::now();
        let budget = Duration::from_millis(400 + (kill as u64 * 137) % 900);
        while started.elapsed() < budget {
            for project in projects {
                eversion += 1;
                let result = client
                    .notify_cls_updated(proto::NotifyClsUpdatedRequest {
                        project: project.into(),
                        event: Some(proto::ClsUpdated {
                            cls: vec![cl(project, 1 + eversion % 5, eversion, 1, &[])],
                        }),
                    })
                    .await
                    .unwrap();
                acknowledged.push((project.to_string(), result.into_inner().revision));
            }
        }
        service.kill();
    }
    // A last, clean run lets the projector catch up.
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    for project in projects {
        client
            .evaluate(proto::EvaluateRequest {
                project: project.into(),
                now: None,
            })
            .await
            .ok();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    service.stop();

    let store = EmbeddedStore::open(&db).unwrap();
    for (project, revision) in &acknowledged {
        let events = store
            .read_stream(
                &format!("project-{project}"),
                ReadFrom::Revision(*revision),
                Direction::Forwards,
                1,
            )
            .await
            .unwrap();
        assert_eq!(
            events.first().map(|e| e.event_type.as_str()),
            Some("ClsUpdated"),
            "acknowledged {project} revision {revision} is missing"
        );
    }
    store.close().await.unwrap();
    for project in projects {
        assert_derived_match(&db, project).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_wrong_tokens_are_rejected_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let service = Service::start(&db, Some(&token_file));
    let mut client = service.client().await;

    let missing = client
        .poke(proto::PokeRequest {
            project: "auth".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(proto::PokeRequest {
        project: "auth".into(),
    });
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer guess".parse().unwrap());
    assert_eq!(
        client.poke(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut read = tonic::Request::new(proto::GetProjectRequest {
        project: "auth".into(),
        eversion: 0,
    });
    read.metadata_mut()
        .insert("authorization", "Bearer s3cre".parse().unwrap());
    assert_eq!(
        client.get_project(read).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    // Health needs no token.
    let channel = Channel::from_shared(format!("http://{}", service.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The CLI presents the token from the environment.
    let cli = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .args([
            "notify",
            "poke",
            "--project",
            "auth",
            "--server",
            &service.address,
        ])
        .env("PRJMANAGER_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("Unauthenticated"));
    service.stop();

    let store = EmbeddedStore::open(&db).unwrap();
    assert!(read_all(&store, "project-auth").await.is_empty());
    store.close().await.unwrap();

    // With the right token the same call goes through.
    let service = Service::start(&db, Some(&token_file));
    let cli = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .args([
            "notify",
            "poke",
            "--project",
            "auth",
            "--server",
            &service.address,
        ])
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    service.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_store_never_write_two_markers_for_one_eversion() {
    let dir = tempfile::tempdir().unwrap();
    let db: PathBuf = dir.path().join("pm.db");
    let first = Service::start(&db, None);
    let second = Service::start(&db, None);
    let mut clients = [first.client().await, second.client().await];
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .update_config(proto::UpdateConfigRequest {
                project: format!("shared-{i}"),
                config: Some(config("h1")),
            })
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut n = 1;
    while started.elapsed() < Duration::from_secs(4) {
        for (i, client) in clients.iter_mut().enumerate() {
            n += 1;
            // Both services get events for both projects.
            client
                .notify_cls_updated(proto::NotifyClsUpdatedRequest {
                    project: format!("shared-{}", n % 2),
                    event: Some(proto::ClsUpdated {
                        cls: vec![cl(&format!("shared-{}", n % 2), 7, n, 1, &[])],
                    }),
                })
                .await
                .unwrap();
            if n % 7 == 0 {
                client
                    .evaluate(proto::EvaluateRequest {
                        project: format!("shared-{i}"),
                        now: None,
                    })
                    .await
                    .ok();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.stop();
    second.stop();
    for project in ["shared-0", "shared-1"] {
        assert_derived_match(&db, project).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_marker_requests_for_unknown_projects() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("pm.db"), None);
    let mut client = service.client().await;
    let err = client
        .evaluate(proto::EvaluateRequest {
            project: "ghost".into(),
            now: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("no events"), "{}", err.message());
    service.stop();
}
