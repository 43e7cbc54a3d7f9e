//! Helpers for end-to-end tests of `prjmanager serve` on any store
//! (tests/service.rs, tests/service_esdb.rs, tests/esdb_faults.rs): the
//! child-process service, the scenario inputs and the check that the derived
//! streams are exactly the direct fold of the project stream.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prjmanager::fold;
use prjmanager::proto::Timestamp;
use prjmanager::proto::{self, project_manager_client::ProjectManagerClient};
use prjmanager::store::{Direction, EventStore, ReadFrom, RecordedEvent};
use prjmanager::streams::{action_stream, log_stream, offload_stream};
use prjmanager::testing::{ClBuilder, ConfigBuilder};
use prost::Message;
use tonic::transport::Channel;

/// A running `prjmanager serve`.
pub struct Service {
    child: Child,
    /// The address it listens on.
    pub address: String,
    /// Its stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Service {
    pub fn start(store_url: &str, token_file: Option<&Path>) -> Self {
        Self::start_with(store_url, token_file, &[])
    }

    /// Starts `serve` with more arguments (e.g. `--tls-cert`).
    pub fn start_with(store_url: &str, token_file: Option<&Path>, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_prjmanager"));
        command
            .arg("--store")
            .arg(store_url)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
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

    pub async fn client(&self) -> ProjectManagerClient<Channel> {
        ProjectManagerClient::connect(format!("http://{}", self.address))
            .await
            .unwrap()
    }

    /// Waits (up to `limit`) for the service to exit by itself; returns its
    /// status and log.
    pub fn wait_for_exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The log reader thread may still be draining stderr.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log.lock().unwrap().clone());
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}: {}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// SIGTERM, and the exit status must be success.
    pub fn stop(mut self) -> String {
        let status = self.terminate();
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "serve exited with {status}: {log}");
        log
    }

    /// SIGKILL.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

pub fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// Seconds since the epoch, `ago` seconds before the wall clock: markers use
/// the wall clock, and votes older than 7 days do not make a CL active.
pub fn unix_now(ago: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now - ago
}

pub fn config(hash: &str) -> proto::ProjectConfig {
    ConfigBuilder::new(hash, 1)
        .group("main", |g| {
            g.watch("c-review.example.com", "repo/a", "refs/heads/main")
        })
        .build()
}

/// A CL watched by `project` with a Commit-Queue vote of `cq` (0: none).
pub fn cl(project: &str, clid: i64, eversion: i64, cq: i32, deps: &[i64]) -> proto::ChangeList {
    let cl = ClBuilder::new(project, clid)
        .eversion(eversion)
        .host("c-review.example.com")
        .revision(&format!("rev-{clid}-{eversion}"))
        .owner("owner@example.com")
        .uploaded(ts(unix_now(3600)).expect("a time"))
        .deps_hard(deps)
        .group("main");
    let cl = if cq > 0 {
        cl.cq_vote(cq, "user-1@example.com", ts(unix_now(60)).expect("a time"))
    } else {
        cl
    };
    cl.build(Some(&config("h1")))
}

pub fn run(id: &str, clids: &[i64]) -> proto::Run {
    proto::Run {
        id: id.into(),
        mode: "DRY_RUN".into(),
        clids: clids.to_vec(),
        create_time: ts(unix_now(30)),
        status: proto::run::Status::Running as i32,
        ..Default::default()
    }
}

/// Every event of a stream.
pub async fn read_all<S: EventStore>(store: &S, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, ReadFrom::Start, Direction::Forwards, usize::MAX)
        .await
        .unwrap()
}

/// What folding a stream directly produces.
#[derive(Debug, PartialEq)]
pub struct Folded {
    pub state: proto::ProjectState,
    pub logs: Vec<proto::ProjectLog>,
    pub actions: Vec<proto::Action>,
    pub offloads: Vec<proto::ProjectStateOffload>,
}

pub fn fold_directly(project: &str, events: &[RecordedEvent]) -> Folded {
    let mut state = prjmanager::domain::new_project(project);
    let mut digester = fold::Digester::default();
    let mut folded = Folded {
        state: proto::ProjectState::default(),
        logs: vec![],
        actions: vec![],
        offloads: vec![],
    };
    for event in events {
        if let Some(outcome) = fold::apply_recorded(&mut state, event, &mut digester).unwrap() {
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
pub async fn derived<S: EventStore, M: Message + Default>(store: &S, stream: &str) -> Vec<M> {
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
/// stream directly produces, that no eversion has two markers, and returns
/// the direct fold.
pub async fn assert_derived_match<S: EventStore>(store: &S, project: &str) -> Folded {
    let events = read_all(store, &format!("project-{project}")).await;
    let folded = fold_directly(project, &events);
    let logs: Vec<proto::ProjectLog> = derived(store, &log_stream(project)).await;
    let actions: Vec<proto::Action> = derived(store, &action_stream(project)).await;
    let offloads: Vec<proto::ProjectStateOffload> = derived(store, &offload_stream(project)).await;
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
    folded
}

/// Announces the config `hash` for the project and waits until the service
/// has evaluated it.
pub async fn configure(
    service: &Service,
    client: &mut ProjectManagerClient<Channel>,
    project: &str,
    hash: &str,
) {
    client
        .update_config(proto::UpdateConfigRequest {
            project: project.into(),
            config: Some(config(hash)),
        })
        .await
        .unwrap();
    wait_for(service, client, project, "the config", |log| {
        log.config_hash == hash
    })
    .await;
}

/// Polls until the project's state (from the service) satisfies `done`.
pub async fn wait_for(
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

pub fn pcl_clids(log: &proto::ProjectLog) -> Vec<i64> {
    log.state
        .as_ref()
        .map(|s| s.pcls.iter().map(|p| p.clid).collect())
        .unwrap_or_default()
}

/// Sends the first half of the scenario.
pub async fn scenario_first_half(client: &mut ProjectManagerClient<Channel>, project: &str) {
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
pub async fn scenario_second_half(client: &mut ProjectManagerClient<Channel>, project: &str) {
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

/// Checks that a (restarted) service serves the direct fold's latest state,
/// and rebuilds eversion 1 as the first logged version; returns that version.
pub async fn assert_serves_folded_state(
    client: &mut ProjectManagerClient<Channel>,
    project: &str,
    folded: &Folded,
) -> proto::ProjectLog {
    let latest = client
        .get_project(proto::GetProjectRequest {
            project: project.into(),
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
            project: project.into(),
            eversion: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Some(&first), folded.logs.first());
    first
}

/// Drives two services sharing one store for four seconds: both get events
/// and marker requests for both projects `shared-0` and `shared-1`; then
/// waits for the last batches to be evaluated.
pub async fn load_two_services(first: &Service, second: &Service) {
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
            let project = format!("shared-{}", n % 2);
            client
                .notify_cls_updated(proto::NotifyClsUpdatedRequest {
                    project: project.clone(),
                    event: Some(proto::ClsUpdated {
                        cls: vec![cl(&project, 7, n, 1, &[])],
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
}
