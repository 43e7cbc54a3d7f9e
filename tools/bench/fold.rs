//! `pm-bench fold` and `pm-bench memory`: the pure fold's throughput on one
//! core, and the resident memory of many projects' states.

use std::time::{Duration, Instant};

use pbjson_types::Timestamp;
use prjmanager::domain;
use prjmanager::proto::{self, action::Action as ActionKind, input_event::Event};

/// A deterministic generator (SplitMix64), so every run folds the same stream.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The config every benchmark project uses: one singular group.
pub fn config(hash: &str) -> proto::ProjectConfig {
    proto::ProjectConfig {
        state: proto::project_config::State::Enabled as i32,
        hash: hash.into(),
        eversion: 1,
        config_groups: vec![proto::ConfigGroup {
            name: "main".into(),
            gerrit: vec![proto::GerritWatch {
                host: "chromium-review.googlesource.com".into(),
                projects: vec![proto::RepoWatch {
                    name: "chromium/src".into(),
                    ref_regexp: vec!["refs/heads/main".into()],
                    ref_regexp_exclude: vec![],
                }],
            }],
            ..Default::default()
        }],
    }
}

/// A CL of `project` voted DRY_RUN at `vote`, depending (HARD) on `parent`.
pub fn cl(
    project: &str,
    clid: i64,
    eversion: i64,
    parent: Option<i64>,
    vote: i64,
) -> proto::ChangeList {
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
            patchset: 1 + (eversion as i32 % 5),
            deps: parent
                .map(|p| proto::Dep {
                    clid: p,
                    kind: proto::dep::DepKind::Hard as i32,
                })
                .into_iter()
                .collect(),
            gerrit: Some(proto::GerritChange {
                host: "chromium-review.googlesource.com".into(),
                change: 1_000_000 + clid,
                project: "chromium/src".into(),
                r#ref: "refs/heads/main".into(),
                status: proto::gerrit_change::ChangeStatus::New as i32,
                owner_email: "owner@chromium.org".into(),
                owner_account_id: 7,
                current_revision: format!("{clid:08x}{eversion:08x}"),
                current_revision_created: Some(Timestamp {
                    seconds: vote - 60,
                    nanos: 0,
                }),
                votes: vec![proto::Vote {
                    label: "Commit-Queue".into(),
                    value: 1,
                    email: "dev@chromium.org".into(),
                    account_id: 8,
                    time: Some(Timestamp {
                        seconds: vote,
                        nanos: 0,
                    }),
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A project state folded to `stacks` stacks of `per_stack` active CLs.
pub fn active_project(
    project: &str,
    stacks: i64,
    per_stack: i64,
    start: i64,
) -> (proto::ProjectState, u64) {
    let mut state = domain::new_project(project);
    let mut revision = 0;
    let mut apply = |state: &mut proto::ProjectState, event: Event| {
        domain::apply_event(state, revision, &event).expect("valid benchmark event");
        revision += 1;
    };
    apply(
        &mut state,
        Event::ConfigUpdated(proto::ConfigUpdated {
            config: Some(config("h1")),
        }),
    );
    let mut cls = Vec::new();
    for s in 0..stacks {
        for i in 0..per_stack {
            let clid = s * per_stack + i + 1;
            cls.push(cl(project, clid, 1, (i > 0).then_some(clid - 1), start));
        }
    }
    apply(&mut state, Event::ClsUpdated(proto::ClsUpdated { cls }));
    domain::evaluate(&mut state, revision, ts(start));
    revision += 1;
    (state, revision)
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// Folds a realistic mix for `events` input events; returns (events, time).
pub fn run_fold(events: u64, clids: i64, stacks: i64, markers_every: u64) -> (u64, Duration, i64) {
    let start = 1_700_000_000;
    let (mut state, mut revision) = active_project("bench", stacks, clids / stacks, start);
    let mut rng = SplitMix(42);
    let mut now = start;
    let mut eversions = vec![1_i64; clids as usize + 1];
    let mut created: Vec<proto::CreateRun> = Vec::new();
    let mut running: Vec<String> = Vec::new();
    let mut folded = 0;
    let began = Instant::now();
    while folded < events {
        let event = match rng.below(10) {
            // Runs the PM asked for get created, and running ones finish.
            0..=1 if !created.is_empty() => {
                let run = created.swap_remove(rng.below(created.len() as u64) as usize);
                running.push(run.run_id.clone());
                Event::RunCreated(proto::RunCreated {
                    run: Some(proto::Run {
                        id: run.run_id,
                        mode: run.mode,
                        clids: run.input_cls.iter().map(|c| c.clid).collect(),
                        create_time: Some(ts(now)),
                        status: proto::run::Status::Running as i32,
                        ..Default::default()
                    }),
                })
            }
            2 if !running.is_empty() => {
                let id = running.swap_remove(rng.below(running.len() as u64) as usize);
                Event::RunFinished(proto::RunFinished {
                    run_id: id,
                    status: proto::run::Status::Succeeded as i32,
                    end_time: Some(ts(now)),
                })
            }
            // Most events are CL updates: new patchsets and re-votes.
            _ => {
                let clid = 1 + rng.below(clids as u64) as i64;
                eversions[clid as usize] += 1;
                let per_stack = clids / stacks;
                let parent = ((clid - 1) % per_stack > 0).then_some(clid - 1);
                Event::ClsUpdated(proto::ClsUpdated {
                    cls: vec![cl("bench", clid, eversions[clid as usize], parent, now - 5)],
                })
            }
        };
        domain::apply_event(&mut state, revision, &event).expect("valid benchmark event");
        revision += 1;
        folded += 1;
        if folded % markers_every == 0 {
            now += 1;
            let evaluation = domain::evaluate(&mut state, revision, ts(now));
            revision += 1;
            for action in evaluation.actions {
                if let ActionKind::CreateRun(run) = action {
                    created.push(run);
                }
            }
        }
    }
    let components = state.pstate.as_ref().map_or(0, |p| p.components.len());
    (folded, began.elapsed(), components as i64)
}

/// The resident set size of this process, from /proc (Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
