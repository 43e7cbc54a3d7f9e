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

/// The input events of a busy project: CL updates (new patchsets and
/// re-votes), the Runs the PM asked for being created, and Runs finishing.
pub struct Mix {
    project: String,
    rng: SplitMix,
    clids: i64,
    per_stack: i64,
    eversions: Vec<i64>,
    created: Vec<proto::CreateRun>,
    running: Vec<String>,
    /// Out of every `out_of` events, `runs` create a Run and `runs` finish one.
    runs: u64,
    out_of: u64,
}

impl Mix {
    /// A mix over `clids` CLs in `stacks` stacks, with `runs` Run creations
    /// and `runs` Run ends out of every `out_of` events.
    pub fn new(project: &str, clids: i64, stacks: i64, runs: u64, out_of: u64) -> Self {
        Self {
            project: project.to_string(),
            rng: SplitMix(42),
            clids,
            per_stack: clids / stacks,
            eversions: vec![1; clids as usize + 1],
            created: Vec::new(),
            running: Vec::new(),
            runs,
            out_of,
        }
    }

    /// The parent of a CL in its stack.
    fn parent(&self, clid: i64) -> Option<i64> {
        ((clid - 1) % self.per_stack > 0).then_some(clid - 1)
    }

    /// The first version of every CL, in one event.
    pub fn all_cls(&self, now: i64) -> Event {
        Event::ClsUpdated(proto::ClsUpdated {
            cls: (1..=self.clids)
                .map(|clid| cl(&self.project, clid, 1, self.parent(clid), now))
                .collect(),
        })
    }

    /// Remembers the Runs an evaluation asked for.
    pub fn observe(&mut self, evaluation: &domain::Evaluation) {
        for action in &evaluation.actions {
            if let ActionKind::CreateRun(run) = action {
                self.created.push(run.clone());
            }
        }
    }

    /// The next input event at `now`.
    pub fn next_event(&mut self, now: i64) -> Event {
        let pick = self.rng.below(self.out_of);
        if pick < self.runs && !self.created.is_empty() {
            let index = self.rng.below(self.created.len() as u64) as usize;
            let run = self.created.swap_remove(index);
            self.running.push(run.run_id.clone());
            return Event::RunCreated(proto::RunCreated {
                run: Some(proto::Run {
                    id: run.run_id,
                    mode: run.mode,
                    clids: run.input_cls.iter().map(|c| c.clid).collect(),
                    create_time: Some(ts(now)),
                    status: proto::run::Status::Running as i32,
                    ..Default::default()
                }),
            });
        }
        if pick >= self.runs && pick < 2 * self.runs && !self.running.is_empty() {
            let index = self.rng.below(self.running.len() as u64) as usize;
            return Event::RunFinished(proto::RunFinished {
                run_id: self.running.swap_remove(index),
                status: proto::run::Status::Succeeded as i32,
                end_time: Some(ts(now)),
            });
        }
        let clid = 1 + self.rng.below(self.clids as u64) as i64;
        self.eversions[clid as usize] += 1;
        let eversion = self.eversions[clid as usize];
        Event::ClsUpdated(proto::ClsUpdated {
            cls: vec![cl(
                &self.project,
                clid,
                eversion,
                self.parent(clid),
                now - 5,
            )],
        })
    }
}

/// Folds a realistic mix for `events` input events; returns (events, time,
/// components at the end).
pub fn run_fold(events: u64, clids: i64, stacks: i64, markers_every: u64) -> (u64, Duration, i64) {
    let start = 1_700_000_000;
    let (mut state, mut revision) = active_project("bench", stacks, clids / stacks, start);
    let mut mix = Mix::new("bench", clids, stacks, 2, 10);
    let mut now = start;
    let mut folded = 0;
    let began = Instant::now();
    while folded < events {
        let event = mix.next_event(now);
        domain::apply_event(&mut state, revision, &event).expect("valid benchmark event");
        revision += 1;
        folded += 1;
        if folded % markers_every == 0 {
            now += 1;
            let evaluation = domain::evaluate(&mut state, revision, ts(now));
            revision += 1;
            mix.observe(&evaluation);
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
