//! `pm-bench fold` and `pm-bench memory`: the pure fold's throughput on one
//! core, and the resident memory of many projects' states.

use std::time::{Duration, Instant};

use prjmanager::proto::Timestamp;
use prjmanager::proto::{self, action::Action as ActionKind, input_event::Event};
use prjmanager::store::RecordedEvent;
use prjmanager::testing::{ClBuilder, ConfigBuilder};
use prjmanager::{domain, events, fold, streams};

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

/// The Gerrit host of the benchmark CLs.
const HOST: &str = "chromium-review.googlesource.com";

/// The config every benchmark project uses: one singular group.
pub fn config(hash: &str) -> proto::ProjectConfig {
    ConfigBuilder::new(hash, 1)
        .group("main", |g| g.watch(HOST, "chromium/src", "refs/heads/main"))
        .build()
}

/// A CL of `project` voted DRY_RUN at `vote` (`None`: its vote removed),
/// depending (HARD) on `parent`.
pub fn cl(
    project: &str,
    clid: i64,
    eversion: i64,
    parent: Option<i64>,
    vote: Option<i64>,
) -> proto::ChangeList {
    let (value, vote) = vote.map_or((0, 0), |at| (1, at));
    ClBuilder::new(project, clid)
        .eversion(eversion)
        .host(HOST)
        .repo("chromium/src")
        .change(1_000_000 + clid)
        .patchset(1 + (eversion as i32 % 5))
        .revision(&format!("{clid:08x}{eversion:08x}"))
        .owner("owner@chromium.org")
        .uploaded(ts(vote - 60))
        .deps_hard(parent.as_slice())
        .cq_vote(value, "dev@chromium.org", ts(vote))
        .group("main")
        .build(Some(&config("h1")))
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
            cls.push(cl(
                project,
                clid,
                1,
                (i > 0).then_some(clid - 1),
                Some(start),
            ));
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
/// re-votes), the Runs the PM asked for being created, Runs finishing, and
/// the purges it asked for done (the vote removed, then the purge reported).
pub struct Mix {
    project: String,
    rng: SplitMix,
    clids: i64,
    per_stack: i64,
    eversions: Vec<i64>,
    /// Runs the PM asked for and the Run Manager has not created yet, in
    /// request order; it creates the latest first.
    requested: Vec<proto::CreateRun>,
    /// Every RunID requested so far: a request repeated (the PM asks again
    /// after a minute) is not a second Run.
    seen: std::collections::HashSet<String>,
    running: Vec<String>,
    /// Purges the PM asked for and Gerrit has not done yet, in request
    /// order: (clid, operation id).
    purges: std::collections::VecDeque<(i64, String)>,
    /// The `PurgeCompleted` of the purge whose vote removal was the last
    /// event.
    purge_completed: Option<Event>,
    /// Out of every `out_of` events, `runs` create a Run, `runs` finish one
    /// and one does a purge (two events).
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
            requested: Vec::new(),
            seen: std::collections::HashSet::new(),
            running: Vec::new(),
            purges: std::collections::VecDeque::new(),
            purge_completed: None,
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
                .map(|clid| cl(&self.project, clid, 1, self.parent(clid), Some(now)))
                .collect(),
        })
    }

    /// Remembers the Runs (each RunID once) and purges an evaluation asked
    /// for.
    pub fn observe(&mut self, evaluation: &domain::Evaluation) {
        for action in &evaluation.actions {
            match action {
                ActionKind::CreateRun(run) if self.seen.insert(run.run_id.clone()) => {
                    self.requested.push(run.clone());
                }
                ActionKind::PurgeCl(purge) => {
                    if let Some(p) = &purge.purging_cl {
                        self.purges.push_back((p.clid, p.operation_id.clone()));
                    }
                }
                _ => {}
            }
        }
    }

    /// Gerrit does the oldest purge asked for: the CL's vote removed, then
    /// (the next event) the purge reported complete.
    fn purged(&mut self) -> Option<Event> {
        let (clid, operation_id) = self.purges.pop_front()?;
        self.purge_completed = Some(Event::PurgeCompleted(proto::PurgeCompleted {
            operation_id,
            clid,
        }));
        Some(self.updated(clid, None))
    }

    /// A new version of CL `clid`, voted at `vote`.
    fn updated(&mut self, clid: i64, vote: Option<i64>) -> Event {
        self.eversions[clid as usize] += 1;
        let eversion = self.eversions[clid as usize];
        Event::ClsUpdated(proto::ClsUpdated {
            cls: vec![cl(&self.project, clid, eversion, self.parent(clid), vote)],
        })
    }

    /// The Run Manager creates a requested Run at `now`.
    fn created(&mut self, run: proto::CreateRun, now: i64) -> Event {
        self.running.push(run.run_id.clone());
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

    /// The next input event at `now`.
    pub fn next_event(&mut self, now: i64) -> Event {
        if let Some(completed) = self.purge_completed.take() {
            return completed;
        }
        let pick = self.rng.below(self.out_of);
        if pick < self.runs {
            if let Some(run) = self.requested.pop() {
                return self.created(run, now);
            }
        }
        if pick >= self.runs && pick < 2 * self.runs && !self.running.is_empty() {
            let index = self.rng.below(self.running.len() as u64) as usize;
            return Event::RunFinished(proto::RunFinished {
                run_id: self.running.swap_remove(index),
                status: proto::run::Status::Succeeded as i32,
                end_time: Some(ts(now)),
            });
        }
        if pick == 2 * self.runs {
            if let Some(purge) = self.purged() {
                return purge;
            }
        }
        let clid = 1 + self.rng.below(self.clids as u64) as i64;
        self.updated(clid, Some(now - 5))
    }
}

/// The stored form of an event at `revision` of `project`'s stream, as the
/// store returns it.
pub fn recorded(project: &str, revision: u64, event: &Event) -> RecordedEvent {
    RecordedEvent {
        stream: streams::project_stream(project),
        revision,
        position: revision + 1,
        id: uuid::Uuid::from_u128(u128::from(revision) + 1),
        event_type: events::type_name(event).to_string(),
        data: events::encode(event),
        metadata: Vec::new(),
    }
}

/// Folds a realistic mix for `events` input events through
/// [`fold::apply_recorded`], as the service and the replay tool do
/// (decoding each stored event, and digesting the state at every marker);
/// returns (events, time spent in the fold, components at the end). The
/// time leaves out generating and encoding the events.
pub fn run_fold(events: u64, clids: i64, stacks: i64, markers_every: u64) -> (u64, Duration, i64) {
    let project = "bench";
    let start = 1_700_000_000;
    let (mut state, mut revision) = active_project(project, stacks, clids / stacks, start);
    let mut digester = fold::Digester::default();
    let mut mix = Mix::new(project, clids, stacks, 2, 10);
    let mut now = start;
    let mut folded = 0;
    let mut elapsed = Duration::ZERO;
    let mut fold_one = |state: &mut proto::ProjectState, event: &Event, revision: u64| {
        let stored = recorded(project, revision, event);
        let began = Instant::now();
        let outcome =
            fold::apply_recorded(state, &stored, &mut digester).expect("valid benchmark event");
        elapsed += began.elapsed();
        outcome
    };
    while folded < events {
        let event = mix.next_event(now);
        fold_one(&mut state, &event, revision);
        revision += 1;
        folded += 1;
        if folded % markers_every == 0 {
            now += 1;
            let marker = Event::Evaluated(proto::Evaluated {
                now: Some(ts(now)),
                ..Default::default()
            });
            let outcome = fold_one(&mut state, &marker, revision).expect("a marker's outcome");
            revision += 1;
            mix.observe(&outcome.evaluation);
        }
    }
    let components = state.pstate.as_ref().map_or(0, |p| p.components.len());
    (folded, elapsed, components as i64)
}

/// The resident set size of this process, from /proc (Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
