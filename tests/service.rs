//! The service end to end: `prjmanager serve` as a child process on a
//! temporary store and a free loopback port, driven over gRPC, and checked
//! against the same stream folded directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use prjmanager::proto;
use prjmanager::store::embedded::EmbeddedStore;
use prjmanager::store::{Direction, EventStore, ReadFrom};
use tonic::transport::Channel;

#[path = "common/service_harness.rs"]
mod service_harness;

use service_harness::{
    assert_serves_folded_state, cl, config, configure, load_two_services, pcl_clids, read_all,
    scenario_first_half, scenario_second_half, wait_for, Folded,
};

/// `prjmanager serve` on the embedded store at `db`.
/// Starts services on the embedded store.
struct Service;

impl Service {
    fn start(db: &Path, token_file: Option<&Path>) -> service_harness::Service {
        service_harness::Service::start(&format!("sqlite://{}", db.display()), token_file)
    }
}

/// [`service_harness::assert_derived_match`] on the embedded store at `db`.
async fn assert_derived_match(db: &Path, project: &str) -> Folded {
    let store = EmbeddedStore::open(db).unwrap();
    let folded = service_harness::assert_derived_match(&store, project).await;
    store.close().await.unwrap();
    folded
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
    let first = assert_serves_folded_state(&mut client, "e2e", &folded).await;
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
    load_two_services(&first, &second).await;
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
    // A marker far ahead of the clock would freeze the project's clock.
    let err = client
        .evaluate(proto::EvaluateRequest {
            project: "ghost".into(),
            now: Some(prjmanager::proto::Timestamp {
                seconds: 253_402_300_799,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("past the clock"),
        "{}",
        err.message()
    );
    service.stop();
}

/// `serve --tls-cert --tls-key` speaks TLS (a certificate made here with
/// rcgen); the CLI reaches it with `--tls-ca`, and neither plain HTTP/2 nor
/// TLS without trusting the CA gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let db = dir.path().join("pm.db");
    let service = service_harness::Service::start_with(
        &format!("sqlite://{}", db.display()),
        None,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = service.address.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_prjmanager"))
            .args(args)
            .args(["--connect-timeout", "5", "--request-timeout", "10"])
            .env_remove("PRJMANAGER_TOKEN")
            .output()
            .unwrap()
    };
    let ca = cert.to_str().unwrap();
    let ok = cli(&[
        "notify",
        "poke",
        "--project",
        "tls",
        "--server",
        &https,
        "--tls-ca",
        ca,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let plain = cli(&[
        "notify",
        "poke",
        "--project",
        "tls",
        "--server",
        &service.address,
    ]);
    assert_eq!(
        plain.status.code(),
        Some(1),
        "plain HTTP/2 must not get through"
    );
    let untrusted = cli(&["notify", "poke", "--project", "tls", "--server", &https]);
    assert_eq!(
        untrusted.status.code(),
        Some(1),
        "an unknown CA must not be trusted"
    );
    service.stop();
    let store = EmbeddedStore::open(&db).unwrap();
    assert_eq!(read_all(&store, "project-tls").await.len(), 1);
    store.close().await.unwrap();
}

/// Bad TLS files are a configuration error (exit 2) naming the file.
#[test]
fn serve_refuses_unusable_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .arg("--store")
        .arg(format!("sqlite://{}", dir.path().join("pm.db").display()))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cert.pem"), "{stderr}");
}

/// A poison event (a payload that does not decode) quarantines its project:
/// reads say so with FAILED_PRECONDITION naming the stream and revision,
/// before and after a restart, never a stale or blank state with OK; other
/// projects go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_quarantines_its_project_and_reads_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    for project in ["poisoned", "healthy"] {
        configure(&service, &mut client, project, "h1").await;
    }
    // Another process writes an event the fold cannot decode.
    let store = EmbeddedStore::open(&db).unwrap();
    store
        .append(
            "project-poisoned",
            prjmanager::store::ExpectedRevision::Any,
            vec![prjmanager::store::NewEvent {
                id: uuid::Uuid::from_u128(99),
                event_type: "ClsUpdated".into(),
                data: vec![0xff, 0xff, 0xff],
                metadata: b"{}".to_vec(),
            }],
        )
        .await
        .unwrap();
    store.close().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        let answer = client
            .get_project(proto::GetProjectRequest {
                project: "poisoned".into(),
                eversion: 0,
            })
            .await;
        match answer {
            Err(status) if status.code() == tonic::Code::FailedPrecondition => break status,
            other => assert!(
                Instant::now() < deadline,
                "never quarantined; last answer {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(err.message().contains("quarantined"), "{}", err.message());
    assert!(
        err.message().contains("project-poisoned"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("revision"), "{}", err.message());
    // The other project is unaffected.
    client
        .poke(proto::PokeRequest {
            project: "healthy".into(),
        })
        .await
        .unwrap();
    service.stop();

    // After a restart the project is still reported, not blank.
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    let err = client
        .get_project(proto::GetProjectRequest {
            project: "poisoned".into(),
            eversion: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("quarantined"), "{}", err.message());
    let err = client
        .evaluate(proto::EvaluateRequest {
            project: "poisoned".into(),
            now: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let healthy = client
        .get_project(proto::GetProjectRequest {
            project: "healthy".into(),
            eversion: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(healthy.config_hash, "h1");
    // Operators see it, and a release re-loads the stream: still rejected.
    let listed = client
        .list_quarantined(proto::ListQuarantinedRequest {})
        .await
        .unwrap()
        .into_inner()
        .projects;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].project, "poisoned");
    assert!(listed[0].reason.contains("revision"), "{listed:?}");
    let err = client
        .release_project(proto::ReleaseProjectRequest {
            project: "poisoned".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // The CLI says the same, with exit code 1.
    let out = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .args(["quarantined", "--server", &service.address])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"project\":\"poisoned\""), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .args(["state", "poisoned", "--server", &service.address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("quarantined"), "{stderr}");
    service.stop();

    // Reading the store directly says the same words, exit code 1.
    let url = format!("sqlite://{}", db.display());
    let state = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .args(["--store", &url, "state", "poisoned"])
        .output()
        .unwrap();
    let replay = Command::new(env!("CARGO_BIN_EXE_pm-replay"))
        .args(["verify", "--store", &url, "--project", "poisoned"])
        .output()
        .unwrap();
    for out in [state, replay] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(err.message()),
            "{stderr} vs {}",
            err.message()
        );
    }
}

/// The health status of `prjmanager.v1.ProjectManager`, or `None` if the
/// service has not reported it yet.
async fn health(address: &str) -> Option<i32> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = Channel::from_shared(format!("http://{address}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let answer = client
        .check(HealthCheckRequest {
            service: "prjmanager.v1.ProjectManager".into(),
        })
        .await
        .ok()?;
    Some(answer.into_inner().status)
}

/// A write lock held on the database while `serve` starts: the projector
/// cannot start, health says `NOT_SERVING` and the log says why at error
/// level; once the lock is gone the supervisor's restart succeeds, health
/// turns `SERVING` and the events queued before are evaluated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_that_cannot_start_is_restarted_and_health_follows_it() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let store = EmbeddedStore::open(&db).unwrap();
    prjmanager::notifier::Notifier::new(store.clone(), "test")
        .update_config("queued", config("h1"))
        .await
        .unwrap();
    store.close().await.unwrap();

    let (locked, lock_taken) = std::sync::mpsc::channel();
    let lock_path = db.clone();
    let lock = std::thread::spawn(move || {
        let connection = rusqlite::Connection::open(&lock_path).unwrap();
        connection.execute_batch("BEGIN IMMEDIATE;").unwrap();
        locked.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(8));
        connection.execute_batch("COMMIT;").unwrap();
    });
    lock_taken.recv().unwrap();
    let service = Service::start(&db, None);
    let not_serving = ServingStatus::NotServing as i32;
    let serving = ServingStatus::Serving as i32;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last() != Some(&serving) {
        assert!(Instant::now() < deadline, "never SERVING; saw {seen:?}");
        if let Some(status) = health(&service.address).await {
            if seen.last() != Some(&status) {
                seen.push(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, [not_serving, serving], "health went through {seen:?}");
    lock.join().unwrap();
    let log = service.log.lock().unwrap().clone();
    assert!(log.contains("PROJECTOR DOWN"), "{log}");
    assert!(log.contains("ERROR"), "{log}");
    let mut client = service.client().await;
    wait_for(
        &service,
        &mut client,
        "queued",
        "the queued config",
        |log| log.config_hash == "h1",
    )
    .await;
    service.stop();
}

/// A projector that keeps failing (here: a corrupt checkpoint) makes `serve`
/// exit non-zero once `--give-up-after-secs` has passed, naming the cause.
#[test]
fn a_projector_that_keeps_failing_makes_serve_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = EmbeddedStore::open(&db).unwrap();
        store
            .append(
                prjmanager::streams::CHECKPOINT_STREAM,
                prjmanager::store::ExpectedRevision::Any,
                vec![prjmanager::store::NewEvent {
                    id: uuid::Uuid::from_u128(7),
                    event_type: "Checkpoint".into(),
                    data: b"not json".to_vec(),
                    metadata: b"{}".to_vec(),
                }],
            )
            .await
            .unwrap();
        store.close().await.unwrap();
    });
    let out = Command::new(env!("CARGO_BIN_EXE_prjmanager"))
        .arg("--store")
        .arg(format!("sqlite://{}", db.display()))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--give-up-after-secs",
            "1",
        ])
        .env_remove("PRJMANAGER_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("projector-checkpoint"), "{stderr}");
    assert!(stderr.contains("giving up"), "{stderr}");
}

/// SIGTERM while the projector cannot run (the database write-locked by
/// another process for longer than the test): `serve` still exits within
/// its grace period, with code 1 since the projector was not stopped
/// cleanly, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_projector_is_failing_exits_promptly_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    EmbeddedStore::open(&db).unwrap().close().await.unwrap();
    let (locked, lock_taken) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let lock_path = db.clone();
    let lock = std::thread::spawn(move || {
        let connection = rusqlite::Connection::open(&lock_path).unwrap();
        connection.execute_batch("BEGIN IMMEDIATE;").unwrap();
        locked.send(()).unwrap();
        let _ = released.recv_timeout(Duration::from_secs(120));
        connection.execute_batch("COMMIT;").unwrap();
    });
    lock_taken.recv().unwrap();
    let mut service = Service::start(&db, None);
    // Wait until the projector has failed at least once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !service.log.lock().unwrap().contains("PROJECTOR DOWN") {
        assert!(Instant::now() < deadline, "{}", service.log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopping = Instant::now();
    let status = service.terminate();
    let waited = stopping.elapsed();
    release.send(()).unwrap();
    lock.join().unwrap();
    let log = service.log.lock().unwrap().clone();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the projector did not stop cleanly"), "{log}");
    // The grace period (5 s) plus the store's busy timeout (5 s), with room.
    assert!(waited < Duration::from_secs(30), "took {waited:?}: {log}");
}

/// Unbounded input over gRPC: a 1 MB project name and a CL listing itself
/// 500,000 times as a dependency (3 MB) are `INVALID_ARGUMENT` with a short
/// message, not a reset connection, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_inputs_are_invalid_arguments_with_short_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pm.db");
    let service = Service::start(&db, None);
    let mut client = service.client().await;
    let err = client
        .poke(proto::PokeRequest {
            project: "a".repeat(1_000_000),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 400, "{}", err.message().len());

    client
        .update_config(proto::UpdateConfigRequest {
            project: "deps".into(),
            config: Some(config("h1")),
        })
        .await
        .unwrap();
    let mut huge = cl("deps", 1, 1, 1, &[]);
    let dep = proto::Dep {
        clid: 1,
        kind: proto::dep::DepKind::Hard as i32,
    };
    if let Some(snapshot) = huge.snapshot.as_mut() {
        snapshot.deps = vec![dep; 500_000];
    }
    let err = client
        .notify_cls_updated(proto::NotifyClsUpdatedRequest {
            project: "deps".into(),
            event: Some(proto::ClsUpdated { cls: vec![huge] }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("deps"), "{}", err.message());
    assert!(err.message().len() < 400, "{}", err.message().len());
    let log = service.stop();
    let store = EmbeddedStore::open(&db).unwrap();
    let events = read_all(&store, "project-deps").await;
    assert!(events.iter().all(|e| e.event_type != "ClsUpdated"), "{log}");
}

/// Logs on a pipe carry no colour codes; `--log-format json` writes one JSON
/// object per line (the "listening on" line is for people and scripts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_on_a_pipe_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let text = Service::start(&dir.path().join("a.db"), None).stop();
    assert!(text.contains("prjmanager listening"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes on a pipe: {text:?}");

    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    let json = service_harness::Service::start_with(&url, None, &["--log-format", "json"]).stop();
    let mut objects = 0;
    for line in json.lines() {
        if line.starts_with("prjmanager listening on ") {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
        objects += 1;
    }
    assert!(objects >= 2, "{json}");
}

/// Server reflection needs no token and describes the whole API: a generic
/// client (grpcurl, Postman) can list the services and fetch their files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_api_without_a_token() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let service = Service::start(&dir.path().join("pm.db"), Some(&token));
    let channel = Channel::from_shared(format!("http://{}", service.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }])
    };
    let mut answers = client
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["prjmanager.v1.ProjectManager", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    let mut answers = client
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "prjmanager.v1.ProjectManager".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let described = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(&bytes[..]).unwrap()
        })
        .find(|f| f.name() == "prjmanager/v1/service.proto")
        .expect("service.proto");
    let methods: Vec<&str> = described.service[0]
        .method
        .iter()
        .map(|m| m.name())
        .collect();
    assert!(
        methods.contains(&"GetProject") && methods.contains(&"ListQuarantined"),
        "{methods:?}"
    );
    service.stop();
}

/// The gRPC conventions a generic client relies on, driven through the
/// client compiled from `proto/`: `google.rpc.BadRequest` field violations
/// with request paths, `NOT_FOUND` for an unknown project on every read,
/// page tokens bound to their request, `RESOURCE_EXHAUSTED` over the size
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_conventions_for_errors_pages_and_unknown_projects() {
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("pm.db"), None);
    let mut client = service.client().await;
    let violation = |status: &tonic::Status| {
        let details = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let v = &details.field_violations[0];
        (v.field.clone(), v.description.clone())
    };

    // Field paths are request paths, the same in the message and the details.
    let err = client
        .update_config(proto::UpdateConfigRequest {
            project: "p".into(),
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(violation(&err).0, "config");
    let err = client
        .poke(proto::PokeRequest {
            project: "Bad Name".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violation(&err).0, "project");
    client
        .update_config(proto::UpdateConfigRequest {
            project: "p".into(),
            config: Some(config("h1")),
        })
        .await
        .unwrap();
    let mut bad = cl("p", 1, 1, 1, &[]);
    bad.clid = 0;
    let err = client
        .notify_cls_updated(proto::NotifyClsUpdatedRequest {
            project: "p".into(),
            event: Some(proto::ClsUpdated {
                cls: vec![bad.clone()],
            }),
        })
        .await
        .unwrap_err();
    let (field, _) = violation(&err);
    assert_eq!(field, "event.cls[0].clid");
    assert!(
        err.message().starts_with("invalid event.cls[0].clid:"),
        "{}",
        err.message()
    );
    let err = client
        .send_now(proto::SendNowRequest {
            project: "p".into(),
            event: Some(prjmanager::events::wrap(
                prjmanager::proto::input_event::Event::ClsUpdated(proto::ClsUpdated {
                    cls: vec![bad],
                }),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(violation(&err).0, "event.cls_updated.cls[0].clid");
    let err = client
        .notify_run_finished(proto::NotifyRunFinishedRequest {
            event: Some(proto::RunFinished {
                run_id: "p/1-abc".into(),
                status: proto::run::Status::Running as i32,
                end_time: None,
            }),
        })
        .await
        .unwrap_err();
    assert!(violation(&err).0.starts_with("event."), "{err:?}");

    // An event over the size limit is RESOURCE_EXHAUSTED naming the limit.
    let deps: Vec<i64> = (2..1_000).collect();
    let big: Vec<_> = (1..1_500).map(|clid| cl("p", clid, 1, 0, &deps)).collect();
    let err = client
        .notify_cls_updated(proto::NotifyClsUpdatedRequest {
            project: "p".into(),
            event: Some(proto::ClsUpdated { cls: big }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("more than the limit"),
        "{}",
        err.message()
    );

    // An unknown project is NOT_FOUND on every read.
    fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
        r.unwrap_err().code()
    }
    let ghost = || "ghost".to_string();
    let codes = [
        code(
            client
                .get_project(proto::GetProjectRequest {
                    project: ghost(),
                    eversion: 0,
                })
                .await,
        ),
        code(
            client
                .get_project_log(proto::GetProjectLogRequest {
                    project: ghost(),
                    eversion: 1,
                })
                .await,
        ),
        code(
            client
                .list_project_logs(proto::ListProjectLogsRequest {
                    project: ghost(),
                    ..Default::default()
                })
                .await,
        ),
        code(
            client
                .list_actions(proto::ListActionsRequest {
                    project: ghost(),
                    ..Default::default()
                })
                .await,
        ),
    ];
    assert_eq!(codes, [tonic::Code::NotFound; 4]);

    // Page tokens: opaque, and refused for another project or filter.
    for project in ["p", "q"] {
        configure(&service, &mut client, project, "h1").await;
        configure(&service, &mut client, project, "h2").await;
    }
    let first = client
        .list_project_logs(proto::ListProjectLogsRequest {
            project: "p".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let token = first.next_page_token;
    assert!(
        !token.is_empty() && token.parse::<u64>().is_err(),
        "{token:?}"
    );
    let second = client
        .list_project_logs(proto::ListProjectLogsRequest {
            project: "p".into(),
            page_size: 1,
            page_token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.logs.len(), 1);
    assert_ne!(second.logs[0].eversion, first.logs[0].eversion);
    for (project, token) in [
        ("q", token.clone()),
        ("p", "1".to_string()),
        ("p", "zz.y".into()),
    ] {
        let err = client
            .list_project_logs(proto::ListProjectLogsRequest {
                project: project.into(),
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert_eq!(violation(&err).0, "page_token");
    }
    let err = client
        .list_actions(proto::ListActionsRequest {
            project: "p".into(),
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    service.stop();
}

/// `GET /metrics` on `--metrics-listen`: after a scenario the counters moved
/// as the scenario says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_appends_folds_and_markers() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let service =
        service_harness::Service::start_with(&url, None, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_address = service
        .log
        .lock()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("prjmanager metrics on ").map(str::to_string))
        .expect("the metrics address");
    let mut client = service.client().await;
    client
        .update_config(proto::UpdateConfigRequest {
            project: "m".into(),
            config: Some(config("h1")),
        })
        .await
        .unwrap();
    client
        .poke(proto::PokeRequest {
            project: "Not Valid".into(),
        })
        .await
        .unwrap_err();
    wait_for(&service, &mut client, "m", "the config", |log| {
        log.config_hash == "h1"
    })
    .await;
    // The gauges are refreshed every second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let scrape = || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&metrics_address).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {metrics_address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    };
    let text = scrape();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(
        value(r#"prjmanager_appends_total{rpc="UpdateConfig",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"prjmanager_appends_total{rpc="Poke",outcome="invalid_argument"}"#),
        1.0
    );
    assert!(value("prjmanager_append_duration_seconds_count") >= 2.0);
    assert!(value("prjmanager_events_folded_total") >= 2.0);
    assert!(value(r#"prjmanager_markers_evaluated_total{how="adopted"}"#) >= 1.0);
    assert!(value("prjmanager_evaluation_duration_seconds_count") >= 1.0);
    assert_eq!(value("prjmanager_projects_in_memory"), 1.0);
    assert_eq!(value("prjmanager_projects_quarantined"), 0.0);
    assert_eq!(value("prjmanager_projector_lag_events"), 0.0);
    assert!(text.contains("prjmanager_snapshot_writes_total"), "{text}");
    assert!(text.contains("prjmanager_projector_lag_seconds"), "{text}");
    service.stop();
}
