//! Scenario tests of triage through the real fold.
//!
//! A [`Scenario`] is one project's event stream written in a few lines: it
//! builds input events (`proto::input_event::Event`), records them with
//! [`domain::apply_event`] and runs invocations with [`domain::evaluate`],
//! exactly as the service and the replay tool do; there is no second path
//! into the state machine or the triager. [`Scenario::render`] prints the
//! inputs, and the actions and state of every evaluation, as stable text
//! (see [`render`]) for `insta::assert_snapshot!`.
//!
//! Time is an input: the scenario's clock starts at the epoch
//! [`T0`] (2020-02-02T10:40:00Z, the original tests' clock) and moves only
//! with [`Scenario::at`]; [`t`] and [`t_sec`] give instants relative to it,
//! and rendered times read `T0+5m`.
//!
//! Like the domain, this module is pure: no I/O, clock or randomness.
//!
//! ```
//! use std::time::Duration;
//! use prjmanager::testing::{t, Scenario};
//!
//! let s = Scenario::new("v8")
//!     .config(|c| {
//!         c.group("singular", |g| g.watch("g-review.example.com", "repo/a", "refs/heads/main"))
//!             .group("combinable", |g| g.combine_cls(Duration::from_secs(300)))
//!     })
//!     .cl(31, |cl| cl)
//!     .cl(32, |cl| cl.deps_hard(&[31]))
//!     .cl(33, |cl| cl.deps_hard(&[31, 32]).cq_vote(2, "user-2@example.com", t(0)))
//!     .at(t(1))
//!     .evaluate();
//! let text = s.render();
//! assert!(text.contains("TriggerClDeps origin=33 deps=[31, 32]"), "{text}");
//!
//! // The dependency votes: one dep could not be voted on.
//! let s = s
//!     .trigger_deps_completed(33, |o| o.succeeded(&[31]).permission_denied(32, "user-2@example.com"))
//!     .at(t(2))
//!     .evaluate();
//! assert!(s.render().contains("PurgeCl 33"));
//! // In a test: insta::assert_snapshot!(s.render());
//! ```

pub mod cl;
pub mod config;
pub mod render;

use crate::proto::Timestamp;

use crate::domain::{self, Evaluation};
use crate::proto::{
    self, action, cl_error, input_event::Event, run, ChangeList, ClsUpdated, ConfigUpdated, PState,
    Poked, ProjectConfig, ProjectState, PurgeCompleted, Run, RunCreated, RunFinished,
    TriggeringClDepsCompleted,
};

pub use cl::{account_id, ClBuilder};
pub use config::{ConfigBuilder, GroupBuilder};

/// The scenario epoch `T0`, 2020-02-02T10:40:00Z, in Unix seconds: the
/// original tests' clock (`now + 10 min` there is 1580640000 + 600).
pub const T0: i64 = 1_580_640_000;

/// The default Gerrit host of scenario CLs.
pub const HOST: &str = "g-review.example.com";

/// `T0 + minutes` (negative: before `T0`).
pub fn t(minutes: i64) -> Timestamp {
    t_sec(minutes * 60)
}

/// `T0 + seconds` (negative: before `T0`).
pub fn t_sec(seconds: i64) -> Timestamp {
    Timestamp {
        seconds: T0 + seconds,
        nanos: 0,
    }
}

/// Run mode of a CQ+1 vote.
pub const DRY_RUN: &str = "DRY_RUN";
/// Run mode of a CQ+2 vote.
pub const FULL_RUN: &str = "FULL_RUN";
/// Run mode of a new patchset upload.
pub const NEW_PATCHSET_RUN: &str = "NEW_PATCHSET_RUN";

/// Shapes a Run announced with [`Scenario::run`].
#[derive(Debug, Clone)]
pub struct RunSpec {
    run: Run,
}

impl RunSpec {
    /// Sets the mode (default `DRY_RUN`).
    pub fn mode(mut self, mode: &str) -> Self {
        self.run.mode = mode.to_string();
        self
    }

    /// Sets the Run's CLs.
    pub fn cls(mut self, clids: &[i64]) -> Self {
        self.run.clids = clids.to_vec();
        self
    }

    /// Sets the status (default RUNNING).
    pub fn status(mut self, status: run::Status) -> Self {
        self.run.status = status as i32;
        self
    }

    /// Sets the creation time (default: the scenario's clock).
    pub fn created(mut self, at: Timestamp) -> Self {
        self.run.create_time = Some(at);
        self
    }

    /// Sets the root CL of a combined Run.
    pub fn root_cl(mut self, clid: i64) -> Self {
        self.run.root_clid = clid;
        self
    }
}

/// Shapes the outcome of a dependency vote, for [`Scenario::trigger_deps_completed`].
#[derive(Debug, Clone, Default)]
pub struct DepsOutcome {
    event: TriggeringClDepsCompleted,
}

impl DepsOutcome {
    /// Deps voted on successfully.
    pub fn succeeded(mut self, clids: &[i64]) -> Self {
        self.event.succeeded.extend_from_slice(clids);
        self
    }

    /// A dep whose vote was refused: `email` may not vote on it.
    pub fn permission_denied(mut self, clid: i64, email: &str) -> Self {
        self.event.failed.push(cl_error::TriggerDeps {
            permission_denied: vec![cl_error::trigger_deps::PermissionDenied {
                clid,
                email: email.to_string(),
            }],
            ..Default::default()
        });
        self
    }

    /// A dep that Gerrit did not find.
    pub fn not_found(mut self, clid: i64) -> Self {
        self.event.failed.push(cl_error::TriggerDeps {
            not_found: vec![clid],
            ..Default::default()
        });
        self
    }

    /// A dep whose vote failed with an internal Gerrit error.
    pub fn internal_gerrit_error(mut self, clid: i64) -> Self {
        self.event.failed.push(cl_error::TriggerDeps {
            internal_gerrit_error: vec![clid],
            ..Default::default()
        });
        self
    }

    /// Deps not voted on before the deadline.
    pub fn incompleted(mut self, clids: &[i64]) -> Self {
        self.event.incompleted.extend_from_slice(clids);
        self
    }
}

/// One step of a scenario, as rendered.
#[derive(Debug, Clone)]
enum Step {
    /// An input event, described in one line.
    Input(String),
    /// An evaluation at a time, what it decided and the state it saved.
    Evaluation {
        now: Timestamp,
        evaluation: Box<Evaluation>,
        pstate: Box<PState>,
    },
}

/// One project's event stream, folded as it is written.
///
/// Every method that adds an event records it immediately with
/// [`domain::apply_event`]; [`Scenario::evaluate`] runs an invocation at the
/// scenario's clock. Methods consume and return the scenario so that a test
/// reads as one chain; they panic on a misuse of the scenario (completing a
/// purge that is not in flight, …) with a message saying so.
#[derive(Debug, Clone)]
pub struct Scenario {
    project: String,
    state: ProjectState,
    revision: u64,
    now: Timestamp,
    configs_sent: i64,
    latest_config: Option<ProjectConfig>,
    cls: std::collections::BTreeMap<i64, ClBuilder>,
    steps: Vec<Step>,
}

impl Scenario {
    /// A new project named `luci_project`, its clock at `T0`, no events yet.
    pub fn new(luci_project: &str) -> Scenario {
        Scenario {
            project: luci_project.to_string(),
            state: domain::new_project(luci_project),
            revision: 0,
            now: t(0),
            configs_sent: 0,
            latest_config: None,
            cls: Default::default(),
            steps: Vec::new(),
        }
    }

    /// Records an event.
    fn send(mut self, event: Event, description: String) -> Self {
        domain::apply_event(&mut self.state, self.revision, &event)
            .unwrap_or_else(|err| panic!("scenario event {description:?} does not apply: {err}"));
        self.revision += 1;
        self.steps.push(Step::Input(description));
        self
    }

    /// Sends a new config version (`ConfigUpdated`), shaped by `f`.
    pub fn config(mut self, f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        self.configs_sent += 1;
        let n = self.configs_sent;
        let config = f(ConfigBuilder::new(&format!("h{n}"), n)).build();
        let state =
            proto::project_config::State::try_from(config.state).map_or("?", |s| s.as_str_name());
        let names: Vec<&str> = config
            .config_groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        let description = format!(
            "ConfigUpdated {} {state} groups=[{}]",
            config.hash,
            names.join(", ")
        );
        self.latest_config = Some(config.clone());
        self.send(
            Event::ConfigUpdated(ConfigUpdated {
                config: Some(config),
            }),
            description,
        )
    }

    /// Sends the next version of CL `clid` (`ClsUpdated`), shaped by `f`
    /// from the previous version (or from the defaults of [`ClBuilder`]).
    pub fn cl(self, clid: i64, f: impl FnOnce(ClBuilder) -> ClBuilder) -> Self {
        let builder = f(self.next_version(clid));
        self.send_cls(vec![builder])
    }

    /// Sends the next version of each of these CLs in one `ClsUpdated`, all
    /// shaped by `f`.
    pub fn cls(self, clids: &[i64], f: impl Fn(ClBuilder) -> ClBuilder) -> Self {
        let builders = clids
            .iter()
            .map(|&clid| f(self.next_version(clid)))
            .collect();
        self.send_cls(builders)
    }

    /// The next version of a CL, before shaping.
    fn next_version(&self, clid: i64) -> ClBuilder {
        match self.cls.get(&clid) {
            Some(previous) => ClBuilder::next(previous),
            None => ClBuilder::first(&self.project, clid),
        }
    }

    /// Sends CL versions in one `ClsUpdated`.
    fn send_cls(mut self, builders: Vec<ClBuilder>) -> Self {
        let mut entities = Vec::new();
        for builder in builders {
            entities.push(self.entity(&builder));
            self.cls.insert(builder.cl.clid, builder);
        }
        let description = format!(
            "ClsUpdated {}",
            entities
                .iter()
                .map(|c| format!("{} v{}", c.clid, c.eversion))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.send(Event::ClsUpdated(ClsUpdated { cls: entities }), description)
    }

    /// The CL entity of a builder: its applicable config resolved against
    /// the latest config (as CV's CL updater does).
    fn entity(&self, builder: &ClBuilder) -> ChangeList {
        builder.entity(&self.project, self.latest_config.as_ref())
    }

    /// Announces a Run (`RunCreated`) with id `id`, shaped by `f`; by
    /// default a RUNNING `DRY_RUN` Run created at the scenario's clock.
    pub fn run(self, id: &str, f: impl FnOnce(RunSpec) -> RunSpec) -> Self {
        let spec = f(RunSpec {
            run: Run {
                id: id.to_string(),
                mode: DRY_RUN.to_string(),
                create_time: Some(self.now),
                status: run::Status::Running as i32,
                ..Run::default()
            },
        });
        self.run_created(spec.run)
    }

    fn run_created(self, mut run: Run) -> Self {
        run.clids.sort_unstable();
        let description = format!(
            "RunCreated {} {} cls={:?} {}",
            run.id,
            run.mode,
            run.clids,
            run::Status::try_from(run.status).map_or("?", |s| s.as_str_name())
        );
        self.send(
            Event::RunCreated(RunCreated { run: Some(run) }),
            description,
        )
    }

    /// Announces the creation (`RunCreated`, PENDING) of every Run the last
    /// evaluation requested, in the order requested.
    pub fn create_requested_runs(self) -> Self {
        let runs: Vec<Run> = self.requested_runs().collect();
        assert!(
            !runs.is_empty(),
            "the last evaluation requested no Run to create"
        );
        runs.into_iter().fold(self, Scenario::run_created)
    }

    /// Announces the creation (`RunCreated`, PENDING) of the Run the last
    /// evaluation requested for CL `clid`.
    pub fn create_requested_run(self, clid: i64) -> Self {
        let run = self
            .requested_runs()
            .find(|r| r.clids.contains(&clid))
            .unwrap_or_else(|| panic!("the last evaluation requested no Run on CL {clid}"));
        self.run_created(run)
    }

    /// The Runs the last evaluation requested, as the Run Manager creates them.
    fn requested_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.last_actions().iter().filter_map(|a| match a {
            action::Action::CreateRun(c) => Some(Run {
                id: c.run_id.clone(),
                mode: c.mode.clone(),
                clids: c.input_cls.iter().map(|i| i.clid).collect(),
                root_clid: 0,
                create_time: c.create_time,
                status: run::Status::Pending as i32,
                end_time: None,
            }),
            _ => None,
        })
    }

    /// Announces that Run `id` ended with `status` at the scenario's clock (`RunFinished`).
    pub fn run_finished(self, id: &str, status: run::Status) -> Self {
        let description = format!(
            "RunFinished {id} {} at {}",
            status.as_str_name(),
            render::time(&self.now)
        );
        let event = Event::RunFinished(RunFinished {
            run_id: id.to_string(),
            status: status as i32,
            end_time: Some(self.now),
        });
        self.send(event, description)
    }

    /// Announces that the in-flight purge of CL `clid` completed (`PurgeCompleted`).
    pub fn purge_completed(self, clid: i64) -> Self {
        let op = self
            .state()
            .purging_cls
            .iter()
            .find(|p| p.clid == clid)
            .unwrap_or_else(|| panic!("CL {clid} is not being purged"))
            .operation_id
            .clone();
        let description = format!("PurgeCompleted {clid}");
        self.send(
            Event::PurgeCompleted(PurgeCompleted {
                operation_id: op,
                clid,
            }),
            description,
        )
    }

    /// Announces that the in-flight dependency vote of origin CL `origin`
    /// completed (`TriggeringClDepsCompleted`) with the outcome `f` shapes.
    pub fn trigger_deps_completed(
        self,
        origin: i64,
        f: impl FnOnce(DepsOutcome) -> DepsOutcome,
    ) -> Self {
        let op = self
            .state()
            .triggering_cl_deps
            .iter()
            .find(|op| op.origin_clid == origin)
            .unwrap_or_else(|| panic!("no dependency vote of CL {origin} is in flight"))
            .operation_id
            .clone();
        let mut event = f(DepsOutcome::default()).event;
        event.operation_id = op;
        event.origin = origin;
        let description = format!(
            "TriggeringClDepsCompleted origin={origin} succeeded={:?} failed=[{}] incompleted={:?}",
            event.succeeded,
            event
                .failed
                .iter()
                .map(render::trigger_deps)
                .collect::<Vec<_>>()
                .join("; "),
            event.incompleted
        );
        self.send(Event::TriggeringClDepsCompleted(event), description)
    }

    /// Sends a `Poked`.
    pub fn poke(self) -> Self {
        self.send(Event::Poked(Poked {}), "Poked".to_string())
    }

    /// Sets the scenario's clock (it must not go back).
    pub fn at(mut self, now: Timestamp) -> Self {
        assert!(
            domain::time::cmp(&now, &self.now).is_ge(),
            "the clock goes back from {} to {}",
            render::time(&self.now),
            render::time(&now)
        );
        self.now = now;
        self
    }

    /// Runs one PM invocation at the scenario's clock ([`domain::evaluate`]).
    pub fn evaluate(mut self) -> Self {
        let evaluation = domain::evaluate(&mut self.state, self.revision, self.now);
        self.revision += 1;
        let pstate = self.state().clone();
        self.steps.push(Step::Evaluation {
            now: self.now,
            evaluation: Box::new(evaluation),
            pstate: Box::new(pstate),
        });
        self
    }

    /// The scenario's clock.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The whole folded project state.
    pub fn project_state(&self) -> &ProjectState {
        &self.state
    }

    /// The PM state.
    pub fn state(&self) -> &PState {
        self.state
            .pstate
            .as_ref()
            .expect("the fold always keeps a PState")
    }

    /// The last evaluation, if any.
    pub fn last_evaluation(&self) -> Option<&Evaluation> {
        self.steps.iter().rev().find_map(|s| match s {
            Step::Evaluation { evaluation, .. } => Some(evaluation.as_ref()),
            Step::Input(_) => None,
        })
    }

    /// The actions of the last evaluation (none before the first).
    pub fn last_actions(&self) -> &[action::Action] {
        self.last_evaluation().map_or(&[], |e| e.actions.as_slice())
    }

    /// The `CreateRun` actions of the last evaluation.
    pub fn last_create_runs(&self) -> Vec<&proto::CreateRun> {
        self.last_evaluation()
            .map_or_else(Vec::new, Evaluation::create_runs)
    }

    /// The `PurgeCl` actions of the last evaluation.
    pub fn last_purges(&self) -> Vec<&proto::PurgeCl> {
        self.last_evaluation()
            .map_or_else(Vec::new, Evaluation::purges)
    }

    /// The id of the incomplete Run of the PM state that includes CL `clid`.
    pub fn run_id_of(&self, clid: i64) -> String {
        let state = self.state();
        state
            .components
            .iter()
            .flat_map(|c| c.pruns.iter())
            .chain(state.created_pruns.iter())
            .find(|r| r.clids.contains(&clid))
            .unwrap_or_else(|| panic!("no incomplete Run includes CL {clid}"))
            .id
            .clone()
    }

    /// The stable text of the scenario: every input, and the actions and
    /// saved state of every evaluation (see [`render`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut evaluations = 0;
        for step in &self.steps {
            match step {
                Step::Input(line) => {
                    out.push_str("> ");
                    out.push_str(line);
                    out.push('\n');
                }
                Step::Evaluation {
                    now,
                    evaluation,
                    pstate,
                } => {
                    evaluations += 1;
                    out.push_str(&render::evaluation(evaluations, now, evaluation, pstate));
                }
            }
        }
        out
    }
}
