//! `pm-bench record`: records the scenarios of the `replays/` corpus through
//! a running service.
//!
//! It starts `prjmanager serve --no-scheduler` (the binary beside this one) on
//! a fresh embedded store and a free port, sends each scenario's Notifier
//! calls over gRPC with explicit `Evaluate{now}` steps (times from a fixed
//! epoch, so re-recording reproduces everything but event ids), waits for the
//! projector after each marker, reacts to the actions like the services
//! that consume `pmaction-<P>` would, then stops the service and exports the
//! stream with `prjmanager export`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use prjmanager::proto::Timestamp;
use prjmanager::proto::{
    self, action::Action as A, input_event::Event, project_manager_client::ProjectManagerClient,
};
use prjmanager::testing::{ConfigBuilder, GroupBuilder};
use tonic::transport::Channel;

/// The fixed epoch of every recording: 2024-01-01T00:00:00Z.
pub const EPOCH_SECONDS: i64 = 1_704_067_200;

/// The scenarios `record` knows, with the file name each is recorded to.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "lifecycle",
        "Project start, config change, disable with an incomplete Run, stop",
    ),
    ("dry-run", "A single-CL dry run to completion"),
    (
        "chained-votes-denied",
        "A 3-CL stack with chained votes; one dep vote is denied",
    ),
    (
        "parent-run-fails",
        "A chained full-run stack whose parent Run fails",
    ),
    (
        "combine-cls",
        "A combine_cls group with a stabilization delay",
    ),
    ("reused-trigger", "A trigger reused after its Run ended"),
    ("purge-expires", "A purge that expires without completion"),
    ("busy", "A busy project: 20,000+ events, many components"),
];

fn ts(offset_seconds: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: EPOCH_SECONDS + offset_seconds,
        nanos: 0,
    })
}

/// A running `prjmanager serve --no-scheduler` and a client to it.
struct Service {
    child: Child,
    client: ProjectManagerClient<Channel>,
    project: String,
    eversion: i64,
    /// Actions of the last marker.
    actions: Vec<proto::action::Action>,
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the binary has no folder")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first (cargo build --bins)",
            path.display()
        );
    }
    Ok(path)
}

impl Service {
    async fn start(db: &Path, project: &str) -> Result<Self> {
        let mut child = Command::new(sibling_binary("prjmanager")?)
            .arg("--store")
            .arg(format!("sqlite://{}", db.display()))
            .args(["serve", "--no-scheduler", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("PRJMANAGER_STORE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting prjmanager serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("prjmanager listening on ") {
                    let _ = sender.send(address.to_string());
                }
            }
        });
        let address = receiver
            .recv_timeout(Duration::from_secs(30))
            .context("the service did not start")?;
        let client = ProjectManagerClient::connect(format!("http://{address}")).await?;
        Ok(Self {
            child,
            client,
            project: project.to_string(),
            eversion: 0,
            actions: Vec::new(),
        })
    }

    fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("serve exited with {status}");
        }
        Ok(())
    }

    async fn send(&mut self, event: Event) -> Result<()> {
        self.client
            .send_now(proto::SendNowRequest {
                project: self.project.clone(),
                event: Some(proto::InputEvent { event: Some(event) }),
            })
            .await
            .map_err(|s| anyhow!("SendNow: {s}"))?;
        Ok(())
    }

    /// Appends a marker at `EPOCH + offset`, waits until the projector folded
    /// it, and fetches its actions.
    async fn evaluate(&mut self, offset_seconds: i64) -> Result<()> {
        let mut attempts = 0;
        loop {
            let result = self
                .client
                .evaluate(proto::EvaluateRequest {
                    project: self.project.clone(),
                    now: ts(offset_seconds),
                })
                .await;
            match result {
                Ok(_) => break,
                Err(status) if attempts < 200 => {
                    attempts += 1;
                    tracing::debug!("evaluate: {status}; retrying");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(status) => bail!("Evaluate: {status}"),
            }
        }
        self.eversion += 1;
        for _ in 0..3000 {
            let log = self
                .client
                .get_project(proto::GetProjectRequest {
                    project: self.project.clone(),
                    eversion: 0,
                })
                .await
                .map_err(|s| anyhow!("GetProject: {s}"))?
                .into_inner();
            if log.eversion >= self.eversion {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let response = self
            .client
            .list_actions(proto::ListActionsRequest {
                project: self.project.clone(),
                from_eversion: self.eversion,
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .map_err(|s| anyhow!("ListActions: {s}"))?
            .into_inner();
        self.actions = response
            .actions
            .into_iter()
            .filter(|a| a.eversion == self.eversion)
            .filter_map(|a| a.action)
            .collect();
        Ok(())
    }

    /// Announces every Run the last marker asked to create (`RunCreated`).
    async fn create_requested_runs(&mut self, offset_seconds: i64) -> Result<Vec<proto::Run>> {
        let mut runs = Vec::new();
        for action in self.actions.clone() {
            if let A::CreateRun(create) = action {
                let run = proto::Run {
                    id: create.run_id.clone(),
                    mode: create.mode.clone(),
                    clids: create.input_cls.iter().map(|c| c.clid).collect(),
                    root_clid: 0,
                    create_time: ts(offset_seconds),
                    status: proto::run::Status::Running as i32,
                    end_time: None,
                };
                self.send(Event::RunCreated(proto::RunCreated {
                    run: Some(run.clone()),
                }))
                .await?;
                runs.push(run);
            }
        }
        Ok(runs)
    }

    async fn finish_run(
        &mut self,
        run_id: &str,
        status: proto::run::Status,
        at: i64,
    ) -> Result<()> {
        self.send(Event::RunFinished(proto::RunFinished {
            run_id: run_id.to_string(),
            status: status as i32,
            end_time: ts(at),
        }))
        .await
    }

    /// Completes every purge the last marker asked for.
    async fn complete_purges(&mut self) -> Result<()> {
        for action in self.actions.clone() {
            if let A::PurgeCl(purge) = action {
                let purging = purge.purging_cl.unwrap_or_default();
                self.send(Event::PurgeCompleted(proto::PurgeCompleted {
                    operation_id: purging.operation_id,
                    clid: purging.clid,
                }))
                .await?;
            }
        }
        Ok(())
    }

    /// Answers every dep vote the last marker asked for; votes on `denied` fail.
    async fn complete_dep_votes(&mut self, denied: &[i64]) -> Result<()> {
        for action in self.actions.clone() {
            if let A::TriggerClDeps(t) = action {
                let t = t.triggering_cl_deps.unwrap_or_default();
                let (failed, succeeded): (Vec<i64>, Vec<i64>) =
                    t.dep_clids.iter().partition(|c| denied.contains(c));
                let failed = failed
                    .iter()
                    .map(|&clid| proto::cl_error::TriggerDeps {
                        permission_denied: vec![proto::cl_error::trigger_deps::PermissionDenied {
                            clid,
                            email: "voter@example.com".into(),
                        }],
                        ..Default::default()
                    })
                    .collect();
                self.send(Event::TriggeringClDepsCompleted(
                    proto::TriggeringClDepsCompleted {
                        operation_id: t.operation_id,
                        origin: t.origin_clid,
                        succeeded,
                        failed,
                        incompleted: vec![],
                    },
                ))
                .await?;
            }
        }
        Ok(())
    }
}

/// A config version of one group `main` watching `repo` on
/// `review.example.com`, shaped further by `main`.
fn config(
    hash: &str,
    state: proto::project_config::State,
    main: impl FnOnce(GroupBuilder) -> GroupBuilder,
) -> Event {
    let config = ConfigBuilder::new(hash, 1).group("main", |g| {
        main(g.watch("review.example.com", "repo", "refs/heads/main"))
    });
    let config = match state {
        proto::project_config::State::Disabled => config.disabled(),
        proto::project_config::State::Deleted => config.deleted(),
        _ => config,
    };
    Event::ConfigUpdated(proto::ConfigUpdated {
        config: Some(config.build()),
    })
}

const ENABLED: proto::project_config::State = proto::project_config::State::Enabled;

/// A CL of `project` in group `<hash>/main` with a CQ vote (0: none) at `vote_at`.
#[allow(clippy::too_many_arguments)]
fn cl(
    project: &str,
    hash: &str,
    clid: i64,
    eversion: i64,
    cq: i32,
    vote_at: i64,
    deps: &[(i64, proto::dep::DepKind)],
    owner_email: &str,
) -> proto::ChangeList {
    let votes = if cq > 0 {
        vec![proto::Vote {
            label: "Commit-Queue".into(),
            value: cq,
            email: "user@example.com".into(),
            account_id: 7,
            time: ts(vote_at),
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
                config_group_ids: vec![format!("{hash}/main")],
            }],
        }),
        snapshot: Some(proto::Snapshot {
            luci_project: project.into(),
            patchset: 1,
            min_equivalent_patchset: 1,
            deps: deps
                .iter()
                .map(|&(clid, kind)| proto::Dep {
                    clid,
                    kind: kind as i32,
                })
                .collect(),
            gerrit: Some(proto::GerritChange {
                host: "review.example.com".into(),
                change: clid,
                project: "repo".into(),
                r#ref: "refs/heads/main".into(),
                status: proto::gerrit_change::ChangeStatus::New as i32,
                owner_email: owner_email.into(),
                owner_account_id: 9,
                current_revision: format!("rev{clid}"),
                current_revision_created: ts(-3600),
                votes,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cls(list: Vec<proto::ChangeList>) -> Event {
    Event::ClsUpdated(proto::ClsUpdated { cls: list })
}

const HARD: proto::dep::DepKind = proto::dep::DepKind::Hard;
const SOFT: proto::dep::DepKind = proto::dep::DepKind::Soft;
const OWNER: &str = "owner@example.com";

async fn scenario(name: &str, s: &mut Service) -> Result<()> {
    let p = s.project.clone();
    let p = p.as_str();
    match name {
        "lifecycle" => {
            s.send(config("h1", ENABLED, |g| g)).await?;
            s.evaluate(0).await?;
            s.send(cls(vec![cl(p, "h1", 1, 1, 1, -60, &[], OWNER)]))
                .await?;
            s.evaluate(2).await?;
            let runs = s.create_requested_runs(3).await?;
            s.evaluate(4).await?;
            s.send(config("h2", ENABLED, |g| g)).await?;
            s.evaluate(10).await?;
            s.send(config("h3", proto::project_config::State::Disabled, |g| g))
                .await?;
            s.evaluate(20).await?;
            for run in &runs {
                s.finish_run(&run.id, proto::run::Status::Cancelled, 25)
                    .await?;
            }
            s.evaluate(30).await?;
            s.send(Event::Poked(proto::Poked {})).await?;
            s.evaluate(40).await?;
        }
        "dry-run" => {
            s.send(config("h1", ENABLED, |g| g)).await?;
            s.evaluate(0).await?;
            s.send(cls(vec![cl(p, "h1", 10, 1, 1, -60, &[], OWNER)]))
                .await?;
            s.evaluate(2).await?;
            let runs = s.create_requested_runs(3).await?;
            s.evaluate(4).await?;
            for run in &runs {
                s.finish_run(&run.id, proto::run::Status::Succeeded, 600)
                    .await?;
            }
            s.evaluate(601).await?;
            // The CQ vote is removed once the dry run reported back.
            s.send(cls(vec![cl(p, "h1", 10, 2, 0, -60, &[], OWNER)]))
                .await?;
            s.evaluate(603).await?;
        }
        "chained-votes-denied" => {
            s.send(config("h1", ENABLED, |g| g)).await?;
            s.evaluate(0).await?;
            s.send(cls(vec![
                cl(p, "h1", 21, 1, 0, -60, &[], OWNER),
                cl(p, "h1", 22, 1, 0, -60, &[(21, HARD)], OWNER),
                cl(p, "h1", 23, 1, 2, -60, &[(21, HARD), (22, HARD)], OWNER),
            ]))
            .await?;
            s.evaluate(2).await?;
            s.complete_dep_votes(&[21]).await?;
            s.evaluate(4).await?;
            s.complete_purges().await?;
            s.evaluate(6).await?;
        }
        "parent-run-fails" => {
            s.send(config("h1", ENABLED, |g| g)).await?;
            s.evaluate(0).await?;
            s.send(cls(vec![
                cl(p, "h1", 31, 1, 2, -60, &[], OWNER),
                cl(p, "h1", 32, 1, 2, -60, &[(31, HARD)], OWNER),
            ]))
            .await?;
            s.evaluate(2).await?;
            // Only the parent's Run is created; the child's Run, which names
            // the parent's as its dep Run, is requested but not yet created
            // when the parent fails, so the child's vote is purged.
            let runs = s.create_requested_runs(3).await?;
            s.evaluate(4).await?;
            if let Some(parent) = runs.iter().find(|r| r.clids.contains(&31)) {
                s.finish_run(&parent.id, proto::run::Status::Failed, 300)
                    .await?;
            }
            s.evaluate(301).await?;
            s.complete_purges().await?;
            s.evaluate(303).await?;
        }
        "combine-cls" => {
            s.send(config("h1", ENABLED, |g| {
                g.combine_cls(Duration::from_secs(300))
            }))
            .await?;
            s.evaluate(0).await?;
            s.send(cls(vec![
                cl(p, "h1", 41, 1, 1, 10, &[(42, SOFT)], OWNER),
                cl(p, "h1", 42, 1, 1, 20, &[(41, SOFT)], OWNER),
            ]))
            .await?;
            s.evaluate(30).await?;
            s.evaluate(200).await?;
            s.evaluate(321).await?;
            let runs = s.create_requested_runs(322).await?;
            s.evaluate(323).await?;
            for run in &runs {
                s.finish_run(&run.id, proto::run::Status::Succeeded, 900)
                    .await?;
            }
            s.evaluate(901).await?;
        }
        "reused-trigger" => {
            s.send(config("h1", ENABLED, |g| g)).await?;
            s.evaluate(0).await?;
            s.send(cls(vec![cl(p, "h1", 51, 1, 1, -60, &[], OWNER)]))
                .await?;
            s.evaluate(2).await?;
            let runs = s.create_requested_runs(3).await?;
            s.evaluate(4).await?;
            for run in &runs {
                s.finish_run(&run.id, proto::run::Status::Succeeded, 100)
                    .await?;
            }
            s.evaluate(101).await?;
            // The CL is updated (new eversion) but keeps the same vote: the
            // same RunID. Within a minute of the Run's end the PM waits; after
            // it, the trigger is purged as reused.
            s.send(cls(vec![cl(p, "h1", 51, 2, 1, -60, &[], OWNER)]))
                .await?;
            s.evaluate(103).await?;
            s.evaluate(161).await?;
            s.complete_purges().await?;
            s.evaluate(163).await?;
        }
        "purge-expires" => {
            s.send(config("h1", ENABLED, |g| g)).await?;
            s.evaluate(0).await?;
            // An owner without an email cannot have a Run: the trigger is purged.
            s.send(cls(vec![cl(p, "h1", 61, 1, 1, -60, &[], "")]))
                .await?;
            s.evaluate(2).await?;
            // The purger never answers; the purge's deadline passes.
            s.evaluate(1800).await?;
            s.evaluate(3600).await?;
        }
        "busy" => busy(s, p).await?,
        other => bail!("unknown scenario {other:?}"),
    }
    Ok(())
}

/// 20,000+ events: 300 CLs in 60 stacks of 5, votes, runs and updates.
async fn busy(s: &mut Service, p: &str) -> Result<()> {
    const STACKS: i64 = 60;
    const DEPTH: i64 = 5;
    s.send(config("h1", ENABLED, |g| g)).await?;
    s.evaluate(0).await?;
    let mut sent = 2u64;
    let mut clock = 1;
    let mut eversion_of = std::collections::BTreeMap::<i64, i64>::new();
    let mut open_runs: Vec<String> = Vec::new();
    let mut round = 0i64;
    while sent < 20_200 {
        round += 1;
        for stack in 0..STACKS {
            let base = 1000 + stack * 10;
            let top = base + (round + stack) % DEPTH;
            let vote = if (round + stack) % 3 == 0 { 0 } else { 1 };
            let eversion = eversion_of.entry(top).or_insert(0);
            *eversion += 1;
            let deps: Vec<(i64, proto::dep::DepKind)> = (base..top).map(|d| (d, HARD)).collect();
            s.send(cls(vec![cl(
                p,
                "h1",
                top,
                *eversion,
                vote,
                clock - 60,
                &deps,
                OWNER,
            )]))
            .await?;
            sent += 1;
            if sent % 20 == 0 {
                clock += 2;
                s.evaluate(clock).await?;
                sent += 1;
                open_runs.extend(
                    s.create_requested_runs(clock)
                        .await?
                        .into_iter()
                        .map(|r| r.id),
                );
                sent += s
                    .actions
                    .iter()
                    .filter(|a| matches!(a, A::CreateRun(_)))
                    .count() as u64;
                while open_runs.len() > 8 {
                    let run = open_runs.remove(0);
                    let status = if sent % 7 == 0 {
                        proto::run::Status::Failed
                    } else {
                        proto::run::Status::Succeeded
                    };
                    s.finish_run(&run, status, clock).await?;
                    sent += 1;
                }
                let purges = s
                    .actions
                    .iter()
                    .filter(|a| matches!(a, A::PurgeCl(_)))
                    .count() as u64;
                s.complete_purges().await?;
                sent += purges;
            }
        }
    }
    clock += 2;
    s.evaluate(clock).await?;
    Ok(())
}

/// Records one scenario to `out`.
pub async fn record(name: &str, out: &Path) -> Result<()> {
    if !SCENARIOS.iter().any(|(n, _)| *n == name) {
        bail!(
            "unknown scenario {name:?}; known: {}",
            SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("record.db");
    let project = name.replace('-', "_");
    let mut service = Service::start(&db, &project).await?;
    let result = scenario(name, &mut service).await;
    service.stop()?;
    result?;
    let status = Command::new(sibling_binary("prjmanager")?)
        .arg("--store")
        .arg(format!("sqlite://{}", db.display()))
        .args(["export", &project, "--output"])
        .arg(out)
        .env_remove("PRJMANAGER_STORE")
        .status()?;
    if !status.success() {
        bail!("prjmanager export exited with {status}");
    }
    Ok(())
}
