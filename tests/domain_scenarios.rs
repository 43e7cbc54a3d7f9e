//! Acceptance scenarios of the PM state machine (luci-pm.md §11, groups A–I
//! and J2), run through the fold: every state is built by input events and
//! `Evaluated` markers, as the service and the replay tool build it.
//!
//! The Go tests call one handler on a hand-built state; here a marker runs a
//! whole invocation (handlers, then `ExecDeferred`: repartition and triage),
//! so intermediate flags that `ExecDeferred` consumes in the same invocation
//! (`repartition_required`, `triage_required`) are observed through their
//! consequences: a *probe* triager stamps a recognisable `decision_time` on
//! every component it sees with `triage_required`, and PCLs that would be
//! dropped as unused are kept alive by a Run or a dependent CL.

use prjmanager::domain::triage_api::{PmView, TriageError, TriageResult};
use prjmanager::domain::{
    self, apply_event, evaluate, evaluate_with, triage_stub, Evaluation, TriageFn,
};
use prjmanager::proto::Timestamp;
use prjmanager::proto::{
    self, action, cl_error, dep, input_event::Event, p_state, pcl, project_log, purge_reason,
    purging_cl, run, ClError, ClsUpdated, Component, ConfigUpdated, Dep, PState, Pcl, Poked,
    ProjectConfig, PurgeCl, PurgeCompleted, PurgeReason, PurgingCl, Run, RunCreated, RunFinished,
    Trigger, TriggeringClDeps, TriggeringClDepsCompleted, Triggers,
};
use prjmanager::testing::{ClBuilder, ConfigBuilder, GroupBuilder};

// ---------------------------------------------------------------------------
// Clock.

/// The test clock's "now": `now + 10 min` is 1580640000, as in the original's tests.
const T: i64 = 1_580_639_400;
const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// The decision time the probe triager stamps.
const PROBE: i64 = T + 10 * DAY;
/// A second probe stamp, to tell two evaluations apart.
const PROBE2: i64 = T + 11 * DAY;

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// `T + offset` seconds.
fn t(offset: i64) -> Timestamp {
    ts(T + offset)
}

// ---------------------------------------------------------------------------
// Config.

const HOST: &str = "c-review.example.com";

/// Group g0 of the original's "cfgText1": repo/a main.
fn g0(g: GroupBuilder) -> GroupBuilder {
    g.watch(HOST, "repo/a", "refs/heads/main")
}

/// Group g1 of "cfgText1": every branch of repo/a.
fn g1(g: GroupBuilder) -> GroupBuilder {
    g.watch(HOST, "repo/a", "refs/heads/.+")
}

/// The original's "cfgText1": g0 watches repo/a main, g1 (fallback unless
/// told otherwise) watches every other branch of repo/a.
fn cfg1(hash: &str, eversion: i64, g1_fallback: bool) -> ProjectConfig {
    ConfigBuilder::new(hash, eversion)
        .group("g0", g0)
        .group("g1", |g| if g1_fallback { g1(g).fallback() } else { g1(g) })
        .build()
}

/// A config version that disables the project.
fn disabled(hash: &str, eversion: i64) -> ProjectConfig {
    ConfigBuilder::new(hash, eversion).disabled().build()
}

// ---------------------------------------------------------------------------
// CLs.

/// The email of user-N (Gerrit account N).
fn user(n: i64) -> String {
    format!("user-{n}@example.com")
}

/// A CL of project `test` with the defaults of the fixture, in the config
/// groups `group_ids` (full ids, e.g. `H/g0`): see [`cl_in`].
fn cl(clid: i64, git_ref: &str, group_ids: &[&str]) -> ClBuilder {
    cl_in("test", clid, git_ref, group_ids)
}

/// A CL of `project` with the defaults of the fixture: repo/a on [`HOST`],
/// patchset 1 (revision `rev-<clid>`) created at T-1h, owner
/// `owner@example.com` (account 99), EVersion 1, no votes.
fn cl_in(project: &str, clid: i64, git_ref: &str, group_ids: &[&str]) -> ClBuilder {
    ClBuilder::new(project, clid)
        .host(HOST)
        .git_ref(git_ref)
        .group_ids(group_ids)
        .owner("owner@example.com")
        .owner_account_id(99)
        .revision(&format!("rev-{clid}"))
        .uploaded(t(-HOUR))
}

/// The fixture's shorthands on top of [`ClBuilder`].
trait ClExt {
    /// A `Commit-Queue` vote by user-N at `at`.
    fn cq(self, value: i32, n: i64, at: Timestamp) -> Self;
    /// Patchset `patchset`, the revision keeping the fixture's name `rev-<clid>`.
    fn at_patchset(self, patchset: i32) -> Self;
}

impl ClExt for ClBuilder {
    fn cq(self, value: i32, n: i64, at: Timestamp) -> Self {
        self.cq_vote(value, &user(n), at)
    }

    fn at_patchset(self, patchset: i32) -> Self {
        let clid = self.clid();
        self.patchset(patchset).revision(&format!("rev-{clid}"))
    }
}

/// The fixture's CL 101: main, CQ+2 by user-1 at T.
fn cl101(hash: &str) -> ClBuilder {
    cl(101, "refs/heads/main", &[&format!("{hash}/g0")]).cq(2, 1, t(0))
}

/// The fixture's CL 202: refs/heads/other, patchset 3, CQ+1 by user-2 at T.
fn cl202(hash: &str) -> ClBuilder {
    cl(202, "refs/heads/other", &[&format!("{hash}/g1")])
        .at_patchset(3)
        .cq(1, 2, t(0))
}

/// The fixture's CL 203: like 202, a git child of 202.
fn cl203(hash: &str) -> ClBuilder {
    cl(203, "refs/heads/other", &[&format!("{hash}/g1")])
        .at_patchset(3)
        .cq(1, 2, t(0))
        .deps_hard(&[202])
}

fn trigger(mode: &str, n: i64, at: Timestamp) -> Trigger {
    Trigger {
        time: Some(at),
        mode: mode.into(),
        email: user(n),
        gerrit_account_id: n,
        ..Default::default()
    }
}

fn cq_triggers(tr: Trigger) -> Option<Triggers> {
    Some(Triggers {
        cq_vote_trigger: Some(tr),
        new_patchset_run_trigger: None,
    })
}

// ---------------------------------------------------------------------------
// Runs and events.

fn a_run(id: &str, mode: &str, clids: &[i64], status: run::Status) -> Run {
    Run {
        id: id.into(),
        mode: mode.into(),
        clids: clids.to_vec(),
        create_time: Some(t(-MINUTE)),
        status: status as i32,
        ..Default::default()
    }
}

fn config_updated(config: ProjectConfig) -> Event {
    Event::ConfigUpdated(ConfigUpdated {
        config: Some(config),
    })
}

fn cls_updated(cls: Vec<ClBuilder>) -> Event {
    Event::ClsUpdated(ClsUpdated {
        cls: cls.iter().map(|c| c.build(None)).collect(),
    })
}

fn run_created(run: Run) -> Event {
    Event::RunCreated(RunCreated { run: Some(run) })
}

fn run_finished(id: &str, status: run::Status, at: Timestamp) -> Event {
    Event::RunFinished(RunFinished {
        run_id: id.into(),
        status: status as i32,
        end_time: Some(at),
    })
}

fn poked() -> Event {
    Event::Poked(Poked {})
}

// ---------------------------------------------------------------------------
// The project under test.

/// A project stream being folded: events get consecutive revisions.
struct Project {
    state: proto::ProjectState,
    revision: u64,
}

impl Project {
    fn new(name: &str) -> Project {
        Project {
            state: domain::new_project(name),
            revision: 0,
        }
    }

    fn send(&mut self, event: Event) -> &mut Project {
        apply_event(&mut self.state, self.revision, &event).expect("input event applies");
        self.revision += 1;
        self
    }

    /// Evaluates with the stub triager, whatever `domain::TRIAGER` is: these
    /// scenarios are about the state machine, not about triage.
    fn eval(&mut self, now: Timestamp) -> Evaluation {
        self.eval_with(now, triage_stub::triage)
    }

    fn eval_with(&mut self, now: Timestamp, triage: TriageFn) -> Evaluation {
        let e = evaluate_with(&mut self.state, self.revision, now, triage);
        self.revision += 1;
        e
    }

    fn ps(&self) -> &PState {
        self.state.pstate.as_ref().unwrap()
    }

    fn pcl(&self, clid: i64) -> &Pcl {
        self.ps()
            .pcls
            .iter()
            .find(|p| p.clid == clid)
            .unwrap_or_else(|| panic!("no PCL {clid} in {:?}", self.pcl_ids()))
    }

    fn pcl_ids(&self) -> Vec<i64> {
        self.ps().pcls.iter().map(|p| p.clid).collect()
    }

    fn component_clids(&self) -> Vec<Vec<i64>> {
        self.ps()
            .components
            .iter()
            .map(|c| c.clids.clone())
            .collect()
    }

    fn component(&self, first: i64) -> &Component {
        self.ps()
            .components
            .iter()
            .find(|c| c.clids.first() == Some(&first))
            .unwrap_or_else(|| {
                panic!(
                    "no component starting with {first} in {:?}",
                    self.component_clids()
                )
            })
    }

    fn probed(&self, first: i64) -> bool {
        self.component(first).decision_time == Some(ts(PROBE))
    }
}

/// Stamps `PROBE` on every component triaged with `triage_required`.
fn probe(c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    stamp(c, PROBE)
}

/// Stamps `PROBE2` likewise.
fn probe2(c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    stamp(c, PROBE2)
}

fn stamp(c: &Component, at: i64) -> Result<TriageResult, TriageError> {
    if !c.triage_required {
        return Ok(TriageResult::default());
    }
    Ok(TriageResult {
        new_value: Some(Component {
            triage_required: false,
            decision_time: Some(ts(at)),
            ..c.clone()
        }),
        ..Default::default()
    })
}

/// A triager that must not be called.
fn must_not_triage(c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    panic!("triager called for {:?}", c.clids)
}

fn reasons(e: &Evaluation) -> Vec<project_log::LogReason> {
    e.reasons.clone()
}

fn update_runs_config(runs: &[&str], hash: &str, eversion: i64) -> action::Action {
    action::Action::UpdateRunsConfig(proto::UpdateRunsConfig {
        run_ids: runs.iter().map(|r| r.to_string()).collect(),
        hash: hash.into(),
        eversion,
    })
}

fn cancel_runs(project: &str, runs: &[&str]) -> action::Action {
    action::Action::CancelRuns(proto::CancelRuns {
        run_ids: runs.iter().map(|r| r.to_string()).collect(),
        reason: format!("CV is disabled for LUCI Project \"{project}\""),
    })
}

fn poke_poller() -> action::Action {
    action::Action::PokePoller(proto::PokePoller {})
}

fn no_notification() -> Option<purging_cl::Notification> {
    Some(purging_cl::Notification::default())
}

/// The state of the fixture "S1" of group A, built through events: config H,
/// CLs 101, 202, 203 and 404 (DRY_RUN on refs/heads/release), and Run
/// `test/1111-v1-beef` on 101. Components: {101 + run}, {202, 203}, {404}.
fn a_fixture(with_run: bool) -> Project {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    // The config first: a Run created in the batch that starts the project
    // would reach OnRunsCreated (step 1) before UpdateConfig (step 3).
    p.eval(t(0));
    let cl404 = cl(404, "refs/heads/release", &["H/g1"]).cq(1, 4, t(0));
    p.send(cls_updated(vec![cl101("H"), cl202("H"), cl203("H"), cl404]));
    if with_run {
        p.send(run_created(a_run(
            "test/1111-v1-beef",
            "FULL_RUN",
            &[101],
            run::Status::Running,
        )));
    }
    let e = p.eval(t(MINUTE));
    assert!(e.trace.is_empty(), "{:?}", e.trace);
    p
}

// ---------------------------------------------------------------------------
// A. Config lifecycle.

#[test]
fn a1_new_project() {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    let e = p.eval(t(0));
    let ps = p.ps();
    assert_eq!(ps.status, p_state::Status::Started as i32);
    assert_eq!(ps.config_hash, "H");
    assert_eq!(ps.config_group_names, vec!["g0", "g1"]);
    assert!(ps.pcls.is_empty() && ps.components.is_empty() && !ps.repartition_required);
    assert_eq!(
        e.actions,
        vec![poke_poller(), update_runs_config(&[], "H", 1)]
    );
    assert_eq!(
        reasons(&e),
        vec![
            project_log::LogReason::StatusChanged,
            project_log::LogReason::ConfigChanged
        ]
    );
    let log = e.project_log.expect("a ProjectLog at eversion 1");
    assert_eq!((log.eversion, log.config_hash.as_str()), (1, "H"));
    let offload = e.offload.expect("offload written on start");
    assert_eq!(offload.status, p_state::Status::Started as i32);
    assert_eq!(p.state.pinned_config.as_ref().unwrap().hash, "H");
}

#[test]
fn a2_noop_update() {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    let before = p.ps().clone();
    p.send(config_updated(cfg1("H", 1, true)));
    let e = p.eval(t(MINUTE));
    assert_eq!(p.ps(), &before);
    assert!(
        e.actions.is_empty()
            && e.reasons.is_empty()
            && e.project_log.is_none()
            && e.offload.is_none()
    );
    assert_eq!(e.eversion, 2, "every marker bumps the eversion");
}

#[test]
fn a3_fallback_removed() {
    let mut p = a_fixture(true);
    assert_eq!(
        p.component_clids(),
        vec![vec![101], vec![202, 203], vec![404]]
    );
    let (pcl202, pcl203) = (p.pcl(202).clone(), p.pcl(203).clone());
    p.send(config_updated(cfg1("H2", 2, false)));
    let e = p.eval_with(t(2 * MINUTE), probe);
    let ps = p.ps();
    assert_eq!(ps.config_hash, "H2");
    assert_eq!(ps.config_group_names, vec!["g0", "g1"]);
    assert_eq!(
        p.pcl(101).config_group_indexes,
        vec![0, 1],
        "g1 now matches main too"
    );
    assert_eq!(p.pcl(202), &pcl202);
    assert_eq!(p.pcl(203), &pcl203);
    for first in [101, 202, 404] {
        assert!(p.probed(first), "component {first} marked for triage");
    }
    assert_eq!(
        e.actions,
        vec![
            poke_poller(),
            update_runs_config(&["test/1111-v1-beef"], "H2", 2)
        ]
    );
    assert_eq!(reasons(&e), vec![project_log::LogReason::ConfigChanged]);
    assert!(
        !ps.repartition_required,
        "the repartition ran in the same invocation"
    );
}

#[test]
fn a4_group_renamed() {
    let mut p = a_fixture(true);
    let pcls = p.ps().pcls.clone();
    let renamed = ConfigBuilder::new("H3", 3)
        .group("g0", g0)
        .group("g11", |g| g1(g).fallback())
        .build();
    p.send(config_updated(renamed));
    let e = p.eval_with(t(2 * MINUTE), probe);
    assert_eq!(p.ps().config_group_names, vec!["g0", "g11"]);
    assert_eq!(p.ps().pcls, pcls, "same indexes, so PCLs are identical");
    for first in [101, 202, 404] {
        assert!(p.probed(first));
    }
    assert_eq!(
        e.actions,
        vec![
            poke_poller(),
            update_runs_config(&["test/1111-v1-beef"], "H3", 3)
        ]
    );
}

#[test]
fn a5_stopped_project_reenabled_with_deleted_cl() {
    // CL 102 depends on 101 so that 101's PCL stays tracked (as a dep) once
    // the CL is deleted; the Go test calls the handler alone.
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    let cl102 = cl(102, "refs/heads/main", &["H/g0"])
        .cq(1, 3, t(0))
        .deps_hard(&[101]);
    p.send(cls_updated(vec![cl101("H"), cl202("H"), cl203("H"), cl102]));
    p.eval(t(MINUTE));
    p.send(config_updated(disabled("Hd", 2)));
    p.eval(t(2 * MINUTE));
    assert_eq!(p.ps().status, p_state::Status::Stopped as i32);
    let (pcl202, pcl203) = (p.pcl(202).clone(), p.pcl(203).clone());
    // Deleted while stopped: the CL update is ignored, but the entity is gone.
    let deleted = cl101("H").eversion(2).deleted();
    p.send(cls_updated(vec![deleted]));
    p.send(config_updated(cfg1("H2", 3, false)));
    let e = p.eval(t(3 * MINUTE));
    assert_eq!(p.ps().status, p_state::Status::Started as i32);
    assert_eq!(p.ps().config_hash, "H2");
    assert_eq!(
        p.pcl(101),
        &Pcl {
            clid: 101,
            eversion: 1,
            status: pcl::Status::Deleted as i32,
            ..Default::default()
        }
    );
    assert_eq!(p.pcl(202), &pcl202);
    assert_eq!(p.pcl(203), &pcl203);
    assert_eq!(
        e.actions,
        vec![poke_poller(), update_runs_config(&[], "H2", 3)]
    );
    assert_eq!(
        reasons(&e),
        vec![
            project_log::LogReason::StatusChanged,
            project_log::LogReason::ConfigChanged
        ]
    );
}

#[test]
fn a6_disabled_with_incomplete_runs() {
    let mut p = a_fixture(true);
    let before = p.ps().clone();
    p.send(config_updated(disabled("Hd", 2)));
    let e = p.eval(t(2 * MINUTE));
    let expected = PState {
        status: p_state::Status::Stopping as i32,
        ..before
    };
    assert_eq!(p.ps(), &expected);
    assert_eq!(
        e.actions,
        vec![poke_poller(), cancel_runs("test", &["test/1111-v1-beef"])]
    );
    assert_eq!(reasons(&e), vec![project_log::LogReason::StatusChanged]);
    assert_eq!(p.ps().config_hash, "H", "a disabled config is not adopted");
}

#[test]
fn a7_disabled_without_runs() {
    let mut p = a_fixture(false);
    p.send(config_updated(disabled("Hd", 2)));
    let e = p.eval(t(2 * MINUTE));
    assert_eq!(p.ps().status, p_state::Status::Stopped as i32);
    assert_eq!(e.actions, vec![poke_poller()], "no cancellation");
    assert_eq!(reasons(&e), vec![project_log::LogReason::StatusChanged]);
    assert!(e.offload.is_some());
}

#[test]
fn a_unspecified_config_state_is_ignored_with_a_trace() {
    let mut p = Project::new("test");
    p.send(Event::ConfigUpdated(ConfigUpdated { config: None }));
    let e = p.eval(t(0));
    assert_eq!(p.ps().status, p_state::Status::Unspecified as i32);
    assert!(
        e.trace.iter().any(|w| w.contains("state 0")),
        "{:?}",
        e.trace
    );
}

// ---------------------------------------------------------------------------
// B. Building PCLs (pinned config = cfgText1).

/// The PCL the fold builds for a CL in project `project` (config cfg1 "H").
/// A Run on the CL keeps the PCL tracked whatever its status.
fn pcl_of(project: &str, cl: ClBuilder, now: Timestamp) -> Pcl {
    let clid = cl.clid();
    let mut p = Project::new(project);
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(-HOUR));
    p.send(cls_updated(vec![cl]));
    p.send(run_created(a_run(
        &format!("{project}/1-keep"),
        "DRY_RUN",
        &[clid],
        run::Status::Running,
    )));
    let e = p.eval(now);
    assert!(e.trace.is_empty(), "{:?}", e.trace);
    p.pcl(clid).clone()
}

fn pcl101_expected() -> Pcl {
    Pcl {
        clid: 101,
        eversion: 1,
        status: pcl::Status::Ok as i32,
        config_group_indexes: vec![0],
        triggers: cq_triggers(trigger("FULL_RUN", 1, t(0))),
        ..Default::default()
    }
}

#[test]
fn b1_triggered_cl() {
    assert_eq!(pcl_of("test", cl101("H"), t(MINUTE)), pcl101_expected());
    // Same when the CL's applicable config names the group under an old hash.
    let old_hash = cl(101, "refs/heads/main", &["oldhash/g0"]).cq(2, 1, t(0));
    assert_eq!(pcl_of("test", old_hash, t(MINUTE)), pcl101_expected());
}

#[test]
fn b2_no_commit_queue_vote() {
    let c = cl(101, "refs/heads/main", &["H/g0"]);
    assert_eq!(
        pcl_of("test", c, t(MINUTE)),
        Pcl {
            triggers: None,
            ..pcl101_expected()
        }
    );
}

#[test]
fn b3_abandoned() {
    let c = cl101("H").status_abandoned();
    assert_eq!(pcl_of("test", c, t(MINUTE)).triggers, None);
}

#[test]
fn b4_merged() {
    let c = cl101("H").status_merged();
    assert_eq!(
        pcl_of("test", c, t(MINUTE)),
        Pcl {
            triggers: None,
            submitted: true,
            ..pcl101_expected()
        }
    );
}

#[test]
fn b5_outdated_snapshot() {
    assert_eq!(
        pcl_of("test", cl101("H").outdated(), t(MINUTE)),
        Pcl {
            clid: 101,
            eversion: 1,
            status: pcl::Status::Unknown as i32,
            outdated: Some(proto::snapshot::Outdated {}),
            ..Default::default()
        }
    );
}

#[test]
fn b6_snapshot_of_another_project() {
    let c = cl101("H").snapshot_project("another");
    assert_eq!(
        pcl_of("test", c, t(MINUTE)),
        Pcl {
            clid: 101,
            eversion: 1,
            status: pcl::Status::Unknown as i32,
            ..Default::default()
        }
    );
}

#[test]
fn b7_cl_watched_by_another_project_only() {
    assert_eq!(
        pcl_of("another", cl101("H"), t(MINUTE)),
        Pcl {
            clid: 101,
            eversion: 1,
            status: pcl::Status::Unwatched as i32,
            ..Default::default()
        }
    );
}

#[test]
fn b8_watched_by_many_projects() {
    let c = cl101("H").watched_by_groups(&[("test", &["H/g0"]), ("another", &["X/g"])]);
    let err = ClError {
        kind: Some(cl_error::Kind::WatchedByManyProjects(
            cl_error::WatchedByManyProjects {
                projects: vec!["test".into(), "another".into()],
            },
        )),
    };
    assert_eq!(
        pcl_of("test", c, t(MINUTE)),
        Pcl {
            purge_reasons: vec![PurgeReason {
                cl_error: Some(err.clone()),
                apply_to: Some(purge_reason::ApplyTo::AllActiveTriggers(true)),
            }],
            errors: vec![err],
            ..pcl101_expected()
        }
    );
}

#[test]
fn b9_commit_false_footer() {
    let blocked = |p: Pcl| {
        let err = ClError {
            kind: Some(cl_error::Kind::CommitBlocked(true)),
        };
        Pcl {
            purge_reasons: vec![PurgeReason {
                cl_error: Some(err.clone()),
                apply_to: Some(purge_reason::ApplyTo::Triggers(Triggers {
                    cq_vote_trigger: Some(trigger("FULL_RUN", 1, t(0))),
                    new_patchset_run_trigger: None,
                })),
            }],
            errors: vec![err],
            ..p
        }
    };
    assert_eq!(
        pcl_of("test", cl101("H").footer("Commit", "false"), t(MINUTE)),
        blocked(pcl101_expected())
    );
    assert_eq!(
        pcl_of("test", cl101("H").footer("COMMIT", "FALSE"), t(MINUTE)),
        blocked(pcl101_expected())
    );
    // A DRY_RUN is not blocked.
    let dry = pcl_of("test", cl202("H").footer("Commit", "false"), t(MINUTE));
    assert!(dry.purge_reasons.is_empty());
    assert_eq!(dry.triggers, cq_triggers(trigger("DRY_RUN", 2, t(0))));
}

#[test]
fn b_cq_vote_rules_highest_wins_clamped_earliest_and_revision_time() {
    // CQ+1 earlier, CQ+2 later: the CQ+2 wins even though newer.
    let c = cl(101, "refs/heads/main", &["H/g0"])
        .cq(1, 1, t(-2 * MINUTE))
        .cq(2, 2, t(-MINUTE));
    assert_eq!(
        pcl_of("test", c, t(MINUTE)).triggers,
        cq_triggers(trigger("FULL_RUN", 2, t(-MINUTE)))
    );
    // A +3 is clamped to +2; among equal values the earliest wins.
    let c = cl(101, "refs/heads/main", &["H/g0"])
        .cq(2, 1, t(-MINUTE))
        .cq(3, 2, t(-2 * MINUTE));
    assert_eq!(
        pcl_of("test", c, t(MINUTE)).triggers,
        cq_triggers(trigger("FULL_RUN", 2, t(-2 * MINUTE)))
    );
    // A vote older than the current revision triggers at the revision's time.
    let c = cl101("H").uploaded(t(30));
    assert_eq!(
        pcl_of("test", c, t(MINUTE)).triggers,
        cq_triggers(trigger("FULL_RUN", 1, t(30)))
    );
}

#[test]
fn b_additional_mode_and_new_patchset_trigger() {
    let config = ConfigBuilder::new("H", 1)
        .group("g0", |g| {
            g0(g)
                .additional_mode("QUICK_RUN", 1, "Quick-Run", 1)
                .new_patchset_run()
        })
        .group("g1", |g| g1(g).fallback())
        .build();
    let mut p = Project::new("test");
    p.send(config_updated(config.clone()));
    p.eval(t(-HOUR));
    let c = cl(101, "refs/heads/main", &["H/g0"])
        .cq(1, 1, t(0))
        .vote("Quick-Run", 1, &user(1), t(0))
        .at_patchset(2)
        .new_patchset_run_after(1);
    p.send(cls_updated(vec![c]));
    p.eval(t(MINUTE));
    let triggers = p.pcl(101).triggers.clone().unwrap();
    let cq = triggers.cq_vote_trigger.unwrap();
    assert_eq!(cq.mode, "QUICK_RUN");
    assert_eq!(
        cq.mode_definition,
        Some(config.config_groups[0].additional_modes[0].clone())
    );
    assert_eq!(
        triggers.new_patchset_run_trigger,
        Some(Trigger {
            time: Some(t(-HOUR)),
            mode: "NEW_PATCHSET_RUN".into(),
            email: "owner@example.com".into(),
            // The owner's account id (luci-pm-head.md R6).
            gerrit_account_id: 99,
            ..Default::default()
        })
    );
    // No new-patchset trigger once that patchset ran.
    let c = cl(101, "refs/heads/main", &["H/g0"])
        .cq(1, 1, t(0))
        .eversion(2)
        .at_patchset(2)
        .new_patchset_run_after(2);
    p.send(cls_updated(vec![c]));
    p.eval(t(2 * MINUTE));
    assert_eq!(
        p.pcl(101)
            .triggers
            .as_ref()
            .unwrap()
            .new_patchset_run_trigger,
        None
    );
}

#[test]
fn b_owner_without_email_self_dep_and_denied_probably() {
    // An owner without email keeps the fixture's account id.
    let c = cl101("H").deps_soft(&[101]).owner("").owner_account_id(99);
    let p = pcl_of("test", c, t(MINUTE));
    let kinds: Vec<_> = p
        .purge_reasons
        .iter()
        .map(|r| r.cl_error.as_ref().unwrap().kind.clone().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            cl_error::Kind::SelfCqDepend(true),
            cl_error::Kind::OwnerLacksEmail(true)
        ]
    );
    assert_eq!(p.errors.len(), 2);
    // A no-access record, recent ("denied probably": its time is after now)
    // or not, makes a CL watched by this project only UNWATCHED.
    for no_access_time in [t(HOUR), t(-HOUR)] {
        let c = cl101("H").no_access("test", no_access_time);
        let p = pcl_of("test", c, t(MINUTE));
        assert_eq!(p.status, pcl::Status::Unwatched as i32);
        assert!(p.triggers.is_none() && p.config_group_indexes.is_empty());
    }
}

// ---------------------------------------------------------------------------
// C. OnCLsUpdated.

#[test]
fn c1_cl_updated_once_twice_and_bumped() {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    p.send(cls_updated(vec![cl101("H")]));
    p.eval(t(MINUTE));
    assert_eq!(p.ps().pcls, vec![pcl101_expected()]);
    assert_eq!(p.component_clids(), vec![vec![101]]);
    // The same version again changes nothing.
    let before = p.ps().clone();
    p.send(cls_updated(vec![cl101("H")]));
    p.eval(t(2 * MINUTE));
    assert_eq!(p.ps(), &before);
    // A new version: PCL eversion 2, and only 101's component is re-triaged.
    p.send(cls_updated(vec![cl202("H")]));
    p.eval(t(3 * MINUTE));
    p.send(cls_updated(vec![cl101("H").eversion(2)]));
    p.eval_with(t(4 * MINUTE), probe);
    assert_eq!(p.pcl(101).eversion, 2);
    assert!(p.probed(101));
    assert!(!p.probed(202));
}

#[test]
fn c2_dep_not_added_by_the_update_and_reverse_deps_marked() {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    p.send(cls_updated(vec![cl203("H")]));
    p.eval(t(MINUTE));
    assert_eq!(p.pcl(203).config_group_indexes, vec![1]);
    assert_eq!(
        p.pcl(203).deps,
        vec![Dep {
            clid: 202,
            kind: dep::DepKind::Hard as i32
        }]
    );
    assert_eq!(
        p.pcl(203).triggers,
        cq_triggers(trigger("DRY_RUN", 2, t(0)))
    );
    // The update itself does not add 202; loading deps in ExecDeferred does,
    // and 202 was never announced: a DELETED dep.
    assert_eq!(p.pcl(202).status, pcl::Status::Deleted as i32);
    assert_eq!(p.component_clids(), vec![vec![203]]);
    // 202 announced (without a vote: it stays a mere dep) ⇒ 203's component
    // is marked for triage because 203 depends on it.
    let c = cl(202, "refs/heads/other", &["H/g1"]).at_patchset(3);
    p.send(cls_updated(vec![c]));
    p.eval_with(t(2 * MINUTE), probe);
    assert_eq!(p.pcl(202).status, pcl::Status::Ok as i32);
    assert_eq!(p.component_clids(), vec![vec![203]]);
    assert!(p.probed(203));
}

#[test]
fn c3_several_cls_in_one_event() {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    p.send(cls_updated(vec![cl101("H"), cl203("H")]));
    p.eval(t(MINUTE));
    let pcl101 = p.pcl(101).clone();
    let gone = cl(404, "refs/heads/main", &["H/g0"])
        .eversion(404)
        .deleted();
    p.send(cls_updated(vec![
        gone,
        cl202("H"),
        cl101("H"),
        cl203("H").eversion(3),
    ]));
    p.eval(t(2 * MINUTE));
    // 404 became a DELETED PCL (eversion 0) and, unused, was dropped by the
    // repartition of the same invocation.
    assert_eq!(p.pcl_ids(), vec![101, 202, 203]);
    assert_eq!(p.pcl(101), &pcl101);
    assert_eq!(p.pcl(202).config_group_indexes, vec![1]);
    assert_eq!(
        p.pcl(202).triggers,
        cq_triggers(trigger("DRY_RUN", 2, t(0)))
    );
    assert_eq!(p.pcl(203).eversion, 3);
}

#[test]
fn c4_dep_typo_is_unwatched() {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    // Known by id only: no snapshot, no applicable config.
    let typo = ClBuilder::new("test", 999)
        .no_snapshot()
        .access_unknown()
        .no_access("test", t(-HOUR));
    p.send(cls_updated(vec![typo]));
    p.send(cls_updated(vec![cl101("H").deps_soft(&[999])]));
    p.eval(t(MINUTE));
    assert_eq!(
        p.pcl(999),
        &Pcl {
            clid: 999,
            eversion: 1,
            status: pcl::Status::Unwatched as i32,
            ..Default::default()
        }
    );
}

#[test]
fn c5_stopping_ignores_cl_updates() {
    let mut p = a_fixture(true);
    p.send(config_updated(disabled("Hd", 2)));
    p.eval(t(2 * MINUTE));
    assert_eq!(p.ps().status, p_state::Status::Stopping as i32);
    let before = p.ps().clone();
    p.send(cls_updated(vec![cl101("H").eversion(2)]));
    let e = p.eval(t(3 * MINUTE));
    assert_eq!(p.ps(), &before);
    assert!(e.actions.is_empty());
    assert!(
        p.state.pending.is_empty(),
        "the update is consumed all the same"
    );
}

// ---------------------------------------------------------------------------
// D. Runs created and finished.

/// Config H; components {101 + test/101-aaa} and {202, 203, 204}.
fn d_fixture() -> Project {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    let cl204 = cl(204, "refs/heads/other", &["H/g1"])
        .at_patchset(3)
        .cq(1, 2, t(0))
        .deps_hard(&[203]);
    p.send(cls_updated(vec![cl101("H"), cl202("H"), cl203("H"), cl204]));
    p.send(run_created(a_run(
        "test/101-aaa",
        "FULL_RUN",
        &[101],
        run::Status::Running,
    )));
    let e = p.eval(t(MINUTE));
    assert!(e.trace.is_empty(), "{:?}", e.trace);
    assert_eq!(p.component_clids(), vec![vec![101], vec![202, 203, 204]]);
    assert_eq!(p.component(101).pruns.len(), 1);
    p
}

/// The D fixture STOPPING, with `test/789-efg` on [707, 708, 709] created in
/// the batch that disabled the project (so it stays in `created_pruns`).
fn d_fixture_stopping() -> Project {
    let mut p = d_fixture();
    p.send(run_created(a_run(
        "test/789-efg",
        "DRY_RUN",
        &[707, 708, 709],
        run::Status::Running,
    )));
    p.send(config_updated(disabled("Hd", 2)));
    let e = p.eval(t(2 * MINUTE));
    assert_eq!(p.ps().status, p_state::Status::Stopping as i32);
    assert_eq!(
        p.ps()
            .created_pruns
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["test/789-efg"]
    );
    assert_eq!(
        e.actions,
        vec![
            poke_poller(),
            cancel_runs("test", &["test/101-aaa", "test/789-efg"])
        ]
    );
    p
}

#[test]
fn d1_noop_run_events() {
    let mut p = d_fixture();
    let before = p.ps().clone();
    // Finishing a Run that is not tracked.
    p.send(run_finished(
        "test/101-done",
        run::Status::Failed,
        t(MINUTE),
    ));
    let e = p.eval(t(2 * MINUTE));
    assert_eq!(p.ps(), &before);
    assert!(e.actions.is_empty());
    assert!(
        e.trace.iter().any(|w| w.contains("test/101-done")),
        "{:?}",
        e.trace
    );
    // Creating an already finished Run.
    let mut done = a_run("test/101-done", "FULL_RUN", &[101], run::Status::Failed);
    done.end_time = Some(t(MINUTE));
    p.send(run_created(done));
    let e = p.eval(t(3 * MINUTE));
    assert_eq!(p.ps(), &before);
    assert!(
        e.trace.iter().any(|w| w.contains("already ended")),
        "{:?}",
        e.trace
    );
    // Creating an already tracked Run.
    p.send(run_created(a_run(
        "test/101-aaa",
        "FULL_RUN",
        &[101],
        run::Status::Running,
    )));
    let e = p.eval(t(4 * MINUTE));
    assert_eq!(p.ps(), &before);
    assert!(e.actions.is_empty() && e.trace.is_empty());
    // A RunCreated without a Run (the original's "Run not found").
    p.send(Event::RunCreated(RunCreated { run: None }));
    let e = p.eval(t(5 * MINUTE));
    assert_eq!(p.ps(), &before);
    assert_eq!(e.trace.len(), 1, "{:?}", e.trace);
}

#[test]
fn d3_runs_created_while_stopping_are_cancelled() {
    let mut p = d_fixture_stopping();
    let before = p.ps().clone();
    p.send(run_created(a_run(
        "test/101-new",
        "FULL_RUN",
        &[101],
        run::Status::Running,
    )));
    p.send(run_created(a_run(
        "test/101-done",
        "FULL_RUN",
        &[101],
        run::Status::Failed,
    )));
    let e = p.eval(t(3 * MINUTE));
    assert_eq!(p.ps(), &before);
    assert_eq!(e.actions, vec![cancel_runs("test", &["test/101-new"])]);
}

#[test]
fn d4_stopping_run_finished_in_component() {
    let mut p = d_fixture_stopping();
    let before = p.ps().clone();
    p.send(run_finished(
        "test/101-aaa",
        run::Status::Cancelled,
        t(2 * MINUTE),
    ));
    let e = p.eval(t(3 * MINUTE));
    let ps = p.ps();
    assert_eq!(
        ps.components[0],
        Component {
            clids: vec![101],
            triage_required: true,
            ..Default::default()
        }
    );
    assert_eq!(ps.components[1], before.components[1]);
    assert_eq!(ps.created_pruns, before.created_pruns);
    assert!(ps.repartition_required);
    assert_eq!(ps.status, p_state::Status::Stopping as i32);
    assert!(e.actions.is_empty() && e.reasons.is_empty());
}

#[test]
fn d5_stopping_created_run_finished() {
    let mut p = d_fixture_stopping();
    let before = p.ps().clone();
    p.send(run_finished(
        "test/789-efg",
        run::Status::Succeeded,
        t(2 * MINUTE),
    ));
    p.eval(t(3 * MINUTE));
    let ps = p.ps();
    assert!(ps.created_pruns.is_empty());
    assert_eq!(ps.components, before.components);
    assert!(!ps.repartition_required);
    assert_eq!(ps.status, p_state::Status::Stopping as i32);
}

#[test]
fn d6_stopping_all_runs_finished() {
    let mut p = d_fixture_stopping();
    p.send(run_finished(
        "test/101-aaa",
        run::Status::Cancelled,
        t(2 * MINUTE),
    ));
    p.send(run_finished(
        "test/789-efg",
        run::Status::Cancelled,
        t(2 * MINUTE),
    ));
    let e = p.eval(t(3 * MINUTE));
    let ps = p.ps();
    assert_eq!(ps.status, p_state::Status::Stopped as i32);
    assert_eq!(reasons(&e), vec![project_log::LogReason::StatusChanged]);
    assert_eq!(
        ps.components[0],
        Component {
            clids: vec![101],
            triage_required: true,
            ..Default::default()
        }
    );
    assert!(ps.created_pruns.is_empty());
    assert!(ps.repartition_required);
    assert!(e.offload.is_some() && e.project_log.is_some());
}

/// Config H (g0 singular unless `combinable`); stack 202 ← 203 ← 204 on
/// main, 203 and 204 voted CQ+2 at T-10m; Run test/202-deef FULL_RUN on 202,
/// and optionally test/203-deef on 203.
fn d7_fixture(combinable: bool, run_on_203: bool) -> Project {
    let mut p = Project::new("test");
    let config = ConfigBuilder::new("H", 1)
        .group("g0", |g| {
            if combinable {
                g0(g).combine_cls_unset_delay()
            } else {
                g0(g)
            }
        })
        .group("g1", |g| g1(g).fallback())
        .build();
    p.send(config_updated(config));
    p.eval(t(0));
    let cl202 = cl(202, "refs/heads/main", &["H/g0"]).cq(2, 2, t(-10 * MINUTE));
    let cl203 = cl(203, "refs/heads/main", &["H/g0"])
        .cq(2, 3, t(-10 * MINUTE))
        .deps_hard(&[202]);
    let cl204 = cl(204, "refs/heads/main", &["H/g0"])
        .cq(2, 4, t(-10 * MINUTE))
        .deps_hard(&[202, 203]);
    p.send(cls_updated(vec![cl202, cl203, cl204]));
    p.send(run_created(a_run(
        "test/202-deef",
        "FULL_RUN",
        &[202],
        run::Status::Running,
    )));
    if run_on_203 {
        p.send(run_created(a_run(
            "test/203-deef",
            "FULL_RUN",
            &[203],
            run::Status::Running,
        )));
    }
    p.eval(t(MINUTE));
    assert_eq!(p.component_clids(), vec![vec![202, 203, 204]]);
    p
}

fn dep_run_failed_purge(
    clid: i64,
    user: i64,
    notification: Option<purging_cl::Notification>,
    now: i64,
) -> PurgeCl {
    let triggers = Triggers {
        cq_vote_trigger: Some(trigger("FULL_RUN", user, t(-10 * MINUTE))),
        new_patchset_run_trigger: None,
    };
    PurgeCl {
        purging_cl: Some(PurgingCl {
            clid,
            operation_id: format!("{}-{clid}", now + 10 * MINUTE),
            deadline: Some(ts(now + 10 * MINUTE)),
            notification,
            apply_to: Some(purging_cl::ApplyTo::Triggers(triggers.clone())),
        }),
        purge_reasons: vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(cl_error::Kind::DepRunFailed(202)),
            }),
            apply_to: Some(purge_reason::ApplyTo::Triggers(triggers)),
        }],
        config_groups: vec!["H/g0".into()],
        luci_project: "test".into(),
    }
}

#[test]
fn d7_failed_chained_vote_run_purges_children() {
    let mut p = d7_fixture(false, false);
    p.send(run_finished(
        "test/202-deef",
        run::Status::Failed,
        t(MINUTE),
    ));
    let e = p.eval(t(2 * MINUTE));
    let now = T + 2 * MINUTE;
    assert_eq!(
        e.purges(),
        vec![
            &dep_run_failed_purge(203, 3, no_notification(), now),
            &dep_run_failed_purge(204, 4, None, now)
        ]
    );
    let purging: Vec<i64> = p.ps().purging_cls.iter().map(|x| x.clid).collect();
    assert_eq!(purging, vec![203, 204]);

    // A successful Run purges nothing.
    let mut p = d7_fixture(false, false);
    p.send(run_finished(
        "test/202-deef",
        run::Status::Succeeded,
        t(MINUTE),
    ));
    let e = p.eval(t(2 * MINUTE));
    assert!(e.purges().is_empty());

    // A child with its own incomplete single-CL Run is spared.
    let mut p = d7_fixture(false, true);
    p.send(run_finished(
        "test/202-deef",
        run::Status::Failed,
        t(MINUTE),
    ));
    let e = p.eval(t(2 * MINUTE));
    assert_eq!(e.purges(), vec![&dep_run_failed_purge(204, 4, None, now)]);
}

#[test]
fn d7_combinable_group_run_is_purged_like_a_chained_vote_run() {
    // The original never has the config loaded when Runs finish, so it never
    // tests combine_cls: a combinable group's failed FULL_RUN purges the
    // children as a chained-vote Run does (luci-pm-head.md R7).
    let mut p = d7_fixture(true, false);
    p.send(run_finished(
        "test/202-deef",
        run::Status::Failed,
        t(MINUTE),
    ));
    let e = p.eval(t(2 * MINUTE));
    let now = T + 2 * MINUTE;
    assert_eq!(
        e.purges(),
        vec![
            &dep_run_failed_purge(203, 3, no_notification(), now),
            &dep_run_failed_purge(204, 4, None, now)
        ]
    );
}

// ---------------------------------------------------------------------------
// E. OnPurgesCompleted.

/// Purges every CL of a component marked for triage (reason: owner lacks
/// email, all triggers), unless already being purged.
fn purger(c: &Component, view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    if !c.triage_required {
        return Ok(TriageResult::default());
    }
    let cls_to_purge = c
        .clids
        .iter()
        .filter(|&&clid| view.purging_cl(clid).is_none())
        .map(|&clid| PurgeCl {
            purging_cl: Some(PurgingCl {
                clid,
                apply_to: Some(purging_cl::ApplyTo::AllActiveTriggers(true)),
                ..Default::default()
            }),
            purge_reasons: vec![PurgeReason {
                cl_error: Some(ClError {
                    kind: Some(cl_error::Kind::OwnerLacksEmail(true)),
                }),
                apply_to: Some(purge_reason::ApplyTo::AllActiveTriggers(true)),
            }],
            ..Default::default()
        })
        .collect();
    Ok(TriageResult {
        new_value: Some(Component {
            triage_required: false,
            ..c.clone()
        }),
        cls_to_purge,
        ..Default::default()
    })
}

/// `T0` of group E.
const T0: i64 = T + 2 * HOUR;

fn op_id(deadline: i64, clid: i64) -> String {
    format!("{deadline}-{clid}")
}

/// Independent CLs 101, 202, 203, 209, each in its own component; purges in
/// flight for 203 (deadline T0-2m: expired at T0), 202 (deadline T0: within
/// the grace at T0) and 101 (deadline T0+1m). The Go fixture's deadline of
/// T0-1h for 203 is unreachable with a monotone clock (the op would expire
/// at an earlier marker), so T0-2m stands in for "expired at T0".
fn e_fixture() -> Project {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    let other = |clid: i64| cl(clid, "refs/heads/other", &["H/g1"]).cq(1, clid, t(0));
    p.send(cls_updated(vec![other(203)]));
    p.eval_with(ts(T0 - 12 * MINUTE), purger);
    p.send(cls_updated(vec![other(202)]));
    p.eval_with(ts(T0 - 10 * MINUTE), purger);
    p.send(cls_updated(vec![cl101("H")]));
    p.eval_with(ts(T0 - 9 * MINUTE), purger);
    p.send(cls_updated(vec![other(209)]));
    p.eval(ts(T0 - 5 * MINUTE));
    let ops: Vec<(i64, String)> = p
        .ps()
        .purging_cls
        .iter()
        .map(|x| (x.clid, x.operation_id.clone()))
        .collect();
    assert_eq!(
        ops,
        vec![
            (101, op_id(T0 + MINUTE, 101)),
            (202, op_id(T0, 202)),
            (203, op_id(T0 - 2 * MINUTE, 203))
        ]
    );
    assert_eq!(
        p.component_clids(),
        vec![vec![101], vec![202], vec![203], vec![209]]
    );
    p
}

fn purge_completed(op: String, clid: i64) -> Event {
    Event::PurgeCompleted(PurgeCompleted {
        operation_id: op,
        clid,
    })
}

#[test]
fn e1_nothing_to_do() {
    let mut p = Project::new("test");
    let before = p.ps().clone();
    let e = p.eval(t(0));
    assert_eq!(p.ps(), &before);
    assert!(
        e.actions.is_empty()
            && e.reasons.is_empty()
            && e.project_log.is_none()
            && e.offload.is_none()
    );
}

#[test]
fn e2_purge_completed_and_expired() {
    let mut p = e_fixture();
    p.send(purge_completed(op_id(T0 + MINUTE, 101), 101));
    let e = p.eval_with(ts(T0), probe);
    assert!(e.trace.is_empty(), "{:?}", e.trace);
    assert!(p.state.pending.is_empty(), "the completion is consumed");
    let ops: Vec<&str> = p
        .ps()
        .purging_cls
        .iter()
        .map(|x| x.operation_id.as_str())
        .collect();
    assert_eq!(
        ops,
        vec![op_id(T0, 202)],
        "deadline == now is within the grace"
    );
    assert!(p.probed(101) && p.probed(203));
    assert!(!p.probed(202) && !p.probed(209));
}

#[test]
fn e4_purge_completed_but_cl_outdated() {
    let mut p = e_fixture();
    let outdated = cl101("H").eversion(2).outdated();
    p.send(cls_updated(vec![outdated]));
    p.send(purge_completed(op_id(T0 + MINUTE, 101), 101));
    p.eval_with(ts(T0), probe);
    assert!(p.ps().purging_cls.iter().any(|x| x.clid == 101));
    assert_eq!(p.state.pending.len(), 1, "the completion stays pending");
    assert!(matches!(
        p.state.pending[0].event,
        Some(proto::pending_event::Event::PurgeCompleted(_))
    ));
}

#[test]
fn e5_purges_completed_while_repartition_required() {
    let mut p = e_fixture();
    let now = T0 - MINUTE;
    p.send(purge_completed(op_id(T0 + MINUTE, 101), 101));
    p.send(purge_completed(op_id(T0, 202), 202));
    p.send(purge_completed(op_id(T0 - 2 * MINUTE, 203), 203));
    // A changed PCL in the same batch sets repartition_required first.
    let cl209 = cl(209, "refs/heads/other", &["H/g1"])
        .cq(1, 209, t(0))
        .eversion(2);
    p.send(cls_updated(vec![cl209]));
    p.eval_with(ts(now), probe);
    assert!(p.ps().purging_cls.is_empty());
    assert!(p.state.pending.is_empty());
    assert!(p.probed(209));
    for untouched in [101, 202, 203] {
        assert!(!p.probed(untouched), "component {untouched} left alone");
    }
}

// ---------------------------------------------------------------------------
// F. OnTriggeringCLDepsCompleted.

/// Requests votes on 101 and 102 for origin 103 (when marked for triage and
/// no vote is in flight).
fn deps_trigger(c: &Component, view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    if !c.triage_required {
        return Ok(TriageResult::default());
    }
    let mut result = TriageResult {
        new_value: Some(Component {
            triage_required: false,
            ..c.clone()
        }),
        ..Default::default()
    };
    if c.clids.contains(&103) && view.triggering_cl_deps(103).is_none() {
        let trigger = view
            .pcl(103)
            .and_then(|p| p.triggers.clone())
            .and_then(|t| t.cq_vote_trigger);
        result.cls_to_trigger_deps = vec![TriggeringClDeps {
            origin_clid: 103,
            dep_clids: vec![101, 102],
            trigger,
            config_group_name: "g0".into(),
            ..Default::default()
        }];
    }
    Ok(result)
}

fn f_trigger() -> Trigger {
    trigger("FULL_RUN", 3, t(-10 * MINUTE))
}

/// Git stack 101 ← 102 ← 103 on main; 103 voted CQ+2 at T-10m; a vote on
/// [101, 102] for origin 103 requested at T+1m (deadline T+9m).
fn f_fixture() -> (Project, String) {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    let cl101 = cl(101, "refs/heads/main", &["H/g0"]);
    let cl102 = cl(102, "refs/heads/main", &["H/g0"]).deps_hard(&[101]);
    let cl103 = cl(103, "refs/heads/main", &["H/g0"])
        .cq(2, 3, t(-10 * MINUTE))
        .deps_hard(&[101, 102]);
    p.send(cls_updated(vec![cl101, cl102, cl103]));
    let e = p.eval_with(t(MINUTE), deps_trigger);
    let op = op_id(T + 9 * MINUTE, 103);
    let expected = TriggeringClDeps {
        origin_clid: 103,
        dep_clids: vec![101, 102],
        operation_id: op.clone(),
        deadline: Some(t(9 * MINUTE)),
        trigger: Some(f_trigger()),
        config_group_name: "g0".into(),
    };
    assert_eq!(p.ps().triggering_cl_deps, vec![expected.clone()]);
    assert_eq!(
        e.actions,
        vec![action::Action::TriggerClDeps(proto::TriggerClDeps {
            triggering_cl_deps: Some(expected),
            luci_project: "test".into(),
        })]
    );
    assert_eq!(
        p.component_clids(),
        vec![vec![103]],
        "101 and 102 are mere deps"
    );
    (p, op)
}

fn deps_completed(op: &str, succeeded: &[i64], failed: Vec<cl_error::TriggerDeps>) -> Event {
    Event::TriggeringClDepsCompleted(TriggeringClDepsCompleted {
        operation_id: op.into(),
        origin: 103,
        succeeded: succeeded.to_vec(),
        failed,
        incompleted: vec![],
    })
}

#[test]
fn f1_nothing_in_flight() {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    let before = p.ps().clone();
    let e = p.eval(t(MINUTE));
    assert_eq!(p.ps(), &before);
    assert!(e.actions.is_empty());
}

#[test]
fn f2_expired_vote_removed() {
    let (mut p, _) = f_fixture();
    let e = p.eval_with(t(9 * MINUTE + HOUR), probe);
    assert!(p.ps().triggering_cl_deps.is_empty());
    assert!(e.actions.is_empty());
    assert!(p.probed(103), "the origin's component is re-triaged");
}

#[test]
fn f3_vote_completed() {
    let (mut p, op) = f_fixture();
    // The triggerer voted on both deps; their new versions arrive first.
    let cl101 = cl(101, "refs/heads/main", &["H/g0"])
        .cq(2, 3, t(5 * MINUTE))
        .eversion(2);
    let cl102 = cl(102, "refs/heads/main", &["H/g0"])
        .deps_hard(&[101])
        .cq(2, 3, t(5 * MINUTE))
        .eversion(2);
    p.send(cls_updated(vec![cl101.clone(), cl102.clone()]));
    p.send(deps_completed(&op, &[101, 102], vec![]));
    let e = p.eval_with(t(7 * MINUTE), probe);
    assert!(e.trace.is_empty(), "{:?}", e.trace);
    assert!(p.ps().triggering_cl_deps.is_empty());
    assert!(p.state.pending.is_empty());

    // With 102's snapshot still outdated, the vote stays and so does the event.
    let (mut p, op) = f_fixture();
    p.send(cls_updated(vec![cl101, cl102.outdated()]));
    p.send(deps_completed(&op, &[101, 102], vec![]));
    p.eval_with(t(7 * MINUTE), probe);
    assert_eq!(p.ps().triggering_cl_deps.len(), 1);
    assert_eq!(p.state.pending.len(), 1);
}

#[test]
fn f4_vote_failed_purges_origin_and_voted_deps() {
    let (mut p, op) = f_fixture();
    let failed = cl_error::TriggerDeps {
        permission_denied: vec![cl_error::trigger_deps::PermissionDenied {
            clid: 102,
            email: "foo@example.org".into(),
        }],
        ..Default::default()
    };
    p.send(deps_completed(&op, &[101], vec![failed.clone()]));
    let now = T + 7 * MINUTE;
    let e = p.eval_with(ts(now), probe);
    assert!(p.ps().triggering_cl_deps.is_empty());
    assert!(p.state.pending.is_empty());
    let purging: Vec<i64> = p.ps().purging_cls.iter().map(|x| x.clid).collect();
    assert_eq!(purging, vec![101, 103]);
    let triggers = Triggers {
        cq_vote_trigger: Some(f_trigger()),
        new_patchset_run_trigger: None,
    };
    let expected = |clid: i64, notification| PurgeCl {
        purging_cl: Some(PurgingCl {
            clid,
            operation_id: op_id(now + 10 * MINUTE, clid),
            deadline: Some(ts(now + 10 * MINUTE)),
            notification,
            apply_to: Some(purging_cl::ApplyTo::Triggers(triggers.clone())),
        }),
        purge_reasons: vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(cl_error::Kind::TriggerDeps(failed.clone())),
            }),
            apply_to: Some(purge_reason::ApplyTo::Triggers(triggers.clone())),
        }],
        config_groups: vec!["H/g0".into()],
        luci_project: "test".into(),
    };
    assert_eq!(
        e.purges(),
        vec![&expected(101, no_notification()), &expected(103, None)]
    );
}

// ---------------------------------------------------------------------------
// G. Categorisation and loading.

/// A project `test` started with config H, watching repo/a main (g0).
fn started() -> Project {
    let mut p = Project::new("test");
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    p
}

fn main_cl(clid: i64) -> ClBuilder {
    cl(clid, "refs/heads/main", &["H/g0"])
}

#[test]
fn g1_runs_and_triggers_make_cls_active() {
    let mut p = started();
    let unknown = main_cl(12).snapshot_project("elsewhere");
    p.send(cls_updated(vec![
        main_cl(5).cq(2, 1, t(0)),
        main_cl(6).cq(2, 1, t(0)).deps_hard(&[5]),
        main_cl(7).cq(2, 1, t(0)),
        main_cl(8).cq(2, 1, t(0)).deps_hard(&[7]),
        main_cl(9).cq(2, 1, t(0)).deps_hard(&[7, 8]),
        unknown,
    ]));
    p.send(run_created(a_run(
        "test/56",
        "FULL_RUN",
        &[5, 6],
        run::Status::Running,
    )));
    p.send(run_created(a_run(
        "test/789",
        "FULL_RUN",
        &[7, 8, 9],
        run::Status::Running,
    )));
    p.eval(t(MINUTE));
    // 12 (UNKNOWN, untriggered, no Run) is unused and dropped.
    assert_eq!(p.pcl_ids(), vec![5, 6, 7, 8, 9]);
    assert_eq!(p.component_clids(), vec![vec![5, 6], vec![7, 8, 9]]);
    assert_eq!(p.component(5).pruns[0].id, "test/56");
    assert_eq!(p.component(7).pruns[0].id, "test/789");
}

#[test]
fn g3_created_run_loads_its_cls_once() {
    // 13 and 11 are known CLs but not tracked: announced before the project
    // started, their updates were ignored.
    let mut p = Project::new("test");
    let cl13 = main_cl(13).cq(2, 1, t(0)).deps_soft(&[11, 12]);
    let cl11 = cl_in("test-b", 11, "refs/heads/main", &["B/b"]).deps_hard(&[10]);
    p.send(cls_updated(vec![cl13, cl11]));
    p.eval(t(-MINUTE));
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    assert!(p.ps().pcls.is_empty());
    p.send(run_created(a_run(
        "test/111-s",
        "FULL_RUN",
        &[13, 11],
        run::Status::Running,
    )));
    p.eval(t(MINUTE));
    assert_eq!(
        p.pcl_ids(),
        vec![11, 13],
        "12, a dep of a loaded CL, waits for a later round"
    );
    assert_eq!(
        p.pcl(11),
        &Pcl {
            clid: 11,
            eversion: 1,
            status: pcl::Status::Unwatched as i32,
            ..Default::default()
        }
    );
    assert_eq!(p.component_clids(), vec![vec![11, 13]]);
    assert_eq!(p.component(11).pruns[0].id, "test/111-s");
}

#[test]
fn g4_created_run_on_a_cl_without_entity() {
    let mut p = Project::new("test");
    p.send(cls_updated(vec![main_cl(4).cq(2, 1, t(0))]));
    p.eval(t(-MINUTE));
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(t(0));
    assert!(p.ps().pcls.is_empty());
    p.send(run_created(a_run(
        "test/4-404",
        "FULL_RUN",
        &[4, 404],
        run::Status::Running,
    )));
    p.eval(t(MINUTE));
    assert_eq!(p.pcl_ids(), vec![4, 404]);
    assert_eq!(
        p.pcl(404),
        &Pcl {
            clid: 404,
            eversion: 0,
            status: pcl::Status::Deleted as i32,
            ..Default::default()
        }
    );
    assert_eq!(p.component_clids(), vec![vec![4, 404]]);
}

#[test]
fn g5_submitted_cl() {
    let merged = || main_cl(1).status_merged();
    // Alone: unused.
    let mut p = started();
    p.send(cls_updated(vec![merged()]));
    p.eval(t(MINUTE));
    assert!(p.ps().pcls.is_empty());
    // In a Run: active.
    let mut p = started();
    p.send(cls_updated(vec![merged()]));
    p.send(run_created(a_run(
        "test/1-sub",
        "FULL_RUN",
        &[1],
        run::Status::Submitting,
    )));
    p.eval(t(MINUTE));
    assert!(p.pcl(1).submitted);
    assert_eq!(p.component_clids(), vec![vec![1]]);
    // A dep of a triggered CL: a dep, in no component.
    let mut p = started();
    p.send(cls_updated(vec![
        merged(),
        main_cl(2).cq(1, 1, t(0)).deps_hard(&[1]),
    ]));
    p.eval(t(MINUTE));
    assert_eq!(p.pcl_ids(), vec![1, 2]);
    assert_eq!(p.component_clids(), vec![vec![2]]);
}

#[test]
fn g6_trigger_age() {
    let now = T + 10 * DAY;
    let old = |clid: i64, at: i64| main_cl(clid).uploaded(ts(now - 8 * DAY)).cq(1, 1, ts(at));
    let mut p = Project::new("test");
    // CL 4: known but untracked; CQ+2 at exactly now - 7 days.
    p.send(cls_updated(vec![main_cl(4)
        .uploaded(ts(now - 8 * DAY))
        .cq(2, 1, ts(now - 7 * DAY))]));
    p.eval(ts(now - 2 * HOUR));
    p.send(config_updated(cfg1("H", 1, true)));
    p.eval(ts(now - HOUR));
    assert!(p.ps().pcls.is_empty());
    p.send(cls_updated(vec![
        old(1, now - MINUTE).deps_hard(&[4]),
        old(2, now - 7 * DAY + 1),
        old(3, now - 7 * DAY),
    ]));
    p.eval(ts(now));
    // Active {1, 2}; 3 is unused (exactly 7 days old); 4 loaded, stays a dep.
    assert_eq!(p.pcl_ids(), vec![1, 2, 4]);
    assert_eq!(p.component_clids(), vec![vec![1], vec![2]]);
    assert_eq!(p.pcl(4).status, pcl::Status::Ok as i32);
}

// ---------------------------------------------------------------------------
// H. Repartition.

#[test]
fn h1_active_cls_with_active_deps_form_one_component() {
    let mut p = started();
    p.send(cls_updated(vec![
        main_cl(1).cq(1, 1, t(0)),
        main_cl(2),
        main_cl(3).cq(1, 1, t(0)).deps_hard(&[1]),
    ]));
    p.eval_with(t(MINUTE), probe);
    assert_eq!(p.pcl_ids(), vec![1, 3]);
    assert_eq!(p.component_clids(), vec![vec![1, 3]]);
    assert!(p.probed(1));
}

#[test]
fn h2_all_unused() {
    let mut p = started();
    p.send(cls_updated(vec![
        main_cl(1).cq(1, 1, t(0)),
        main_cl(2).cq(1, 1, t(0)),
        main_cl(3).cq(1, 1, t(0)).deps_hard(&[2]),
    ]));
    p.eval(t(MINUTE));
    assert_eq!(p.component_clids(), vec![vec![1], vec![2, 3]]);
    p.send(cls_updated(vec![
        main_cl(1).eversion(2),
        main_cl(2).eversion(2),
        main_cl(3).deps_hard(&[2]).eversion(2),
    ]));
    p.eval(t(2 * MINUTE));
    assert!(p.ps().pcls.is_empty() && p.ps().components.is_empty());
}

#[test]
fn h3_component_shrinks() {
    let mut p = started();
    p.send(cls_updated(vec![
        main_cl(1).cq(1, 1, t(0)),
        main_cl(2).cq(1, 1, t(0)).deps_hard(&[1]),
    ]));
    p.eval(t(MINUTE));
    assert_eq!(p.component_clids(), vec![vec![1, 2]]);
    p.send(cls_updated(vec![main_cl(2).deps_hard(&[1]).eversion(2)]));
    p.eval_with(t(2 * MINUTE), probe);
    assert_eq!(p.pcl_ids(), vec![1]);
    assert_eq!(p.component_clids(), vec![vec![1]]);
    assert!(p.probed(1), "a new component, marked for triage");
}

#[test]
fn h4_unchanged_component_is_reused() {
    let mut p = started();
    p.send(cls_updated(vec![main_cl(1).cq(1, 1, t(0))]));
    p.send(run_created(a_run(
        "test/1-r",
        "DRY_RUN",
        &[1],
        run::Status::Running,
    )));
    p.eval_with(t(MINUTE), probe);
    let kept = p.component(1).clone();
    assert!(p.probed(1));
    // Something unrelated forces a repartition.
    p.send(cls_updated(vec![main_cl(5).cq(1, 1, t(0))]));
    p.eval_with(t(2 * MINUTE), probe2);
    assert_eq!(
        p.component(1),
        &kept,
        "reused as is, flags and decision time kept"
    );
    assert_eq!(p.component(5).decision_time, Some(ts(PROBE2)));
    assert!(!p.ps().repartition_required);
}

#[test]
fn h6_deps_not_in_components() {
    let mut p = started();
    p.send(cls_updated(vec![
        main_cl(1).cq(1, 1, t(0)).deps_hard(&[3, 4, 5]),
        main_cl(2).cq(1, 1, t(0)).deps_hard(&[4, 5]),
        main_cl(3).cq(1, 1, t(0)),
        main_cl(4),
    ]));
    p.eval_with(t(MINUTE), probe);
    assert_eq!(p.component_clids(), vec![vec![1, 3], vec![2]]);
    assert!(p.probed(1) && p.probed(2));
    assert_eq!(
        p.pcl_ids(),
        vec![1, 2, 3, 4, 5],
        "4 and 5 are deps (5 never announced: DELETED)"
    );
    assert_eq!(p.pcl(5).status, pcl::Status::Deleted as i32);
}

#[test]
fn h7_created_run_joins_its_cls() {
    let mut p = started();
    p.send(cls_updated(vec![main_cl(1), main_cl(2).deps_hard(&[1])]));
    p.send(run_created(a_run(
        "test/id",
        "DRY_RUN",
        &[1, 2],
        run::Status::Running,
    )));
    p.eval_with(t(MINUTE), probe);
    assert_eq!(p.component_clids(), vec![vec![1, 2]]);
    assert_eq!(
        p.component(1)
            .pruns
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["test/id"]
    );
    assert!(p.probed(1));
    assert!(p.ps().created_pruns.is_empty());
}

#[test]
fn h8_created_run_merges_components() {
    let mut p = started();
    p.send(cls_updated(vec![main_cl(1), main_cl(2)]));
    p.send(run_created(a_run(
        "test/1",
        "DRY_RUN",
        &[1],
        run::Status::Running,
    )));
    p.send(run_created(a_run(
        "test/2",
        "DRY_RUN",
        &[2],
        run::Status::Running,
    )));
    p.eval(t(MINUTE));
    assert_eq!(p.component_clids(), vec![vec![1], vec![2]]);
    p.send(run_created(a_run(
        "test/12",
        "DRY_RUN",
        &[1, 2],
        run::Status::Running,
    )));
    p.eval_with(t(2 * MINUTE), probe);
    assert_eq!(p.component_clids(), vec![vec![1, 2]]);
    let runs: Vec<&str> = p.component(1).pruns.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(runs, vec!["test/1", "test/12", "test/2"]);
    assert!(p.probed(1));
}

// ---------------------------------------------------------------------------
// I. ExecDeferred with test triagers.

const I_PROJECT: &str = "luci-project";

fn i_cl(clid: i64) -> ClBuilder {
    cl_in(I_PROJECT, clid, "refs/heads/main", &["hash/main"]).cq(1, clid, t(-HOUR))
}

/// Sets decision times now+1m, +2m, +3m on components 1, 2, 3 (none on 999).
fn i_setup(c: &Component, view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    let decision_time = match c.clids.as_slice() {
        [clid @ 1..=3] => Some(ts(view.now.seconds + clid * MINUTE)),
        _ => None,
    };
    Ok(TriageResult {
        new_value: Some(Component {
            triage_required: false,
            decision_time,
            ..c.clone()
        }),
        ..Default::default()
    })
}

/// Project `luci-project`, one group `main`; PCLs 1, 2, 3, 999; components
/// {999}, {1, dt T+1m}, {2, dt T+2m}, {3, dt T+3m}; next_eval_time T+1m.
fn i_fixture() -> Project {
    let mut p = Project::new(I_PROJECT);
    p.send(config_updated(
        ConfigBuilder::new("hash", 1)
            .group("main", |g| g.watch(HOST, "repo/a", "refs/heads/main"))
            .build(),
    ));
    p.eval(t(-HOUR));
    p.send(cls_updated(vec![i_cl(1), i_cl(2), i_cl(3), i_cl(999)]));
    p.eval_with(t(0), i_setup);
    assert_eq!(
        p.component_clids(),
        vec![vec![1], vec![2], vec![3], vec![999]]
    );
    assert_eq!(p.ps().next_eval_time, Some(t(MINUTE)));
    p
}

/// The triage result that only acknowledges a component.
fn ack(c: &Component) -> TriageResult {
    TriageResult {
        new_value: Some(Component {
            triage_required: false,
            ..c.clone()
        }),
        ..Default::default()
    }
}

fn owner_lacks_email_purge(clid: i64) -> PurgeCl {
    PurgeCl {
        purging_cl: Some(PurgingCl {
            clid,
            apply_to: Some(purging_cl::ApplyTo::AllActiveTriggers(true)),
            ..Default::default()
        }),
        purge_reasons: vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(cl_error::Kind::OwnerLacksEmail(true)),
            }),
            apply_to: Some(purge_reason::ApplyTo::AllActiveTriggers(true)),
        }],
        ..Default::default()
    }
}

#[test]
fn i1_nothing_due() {
    let mut p = i_fixture();
    let before = p.ps().clone();
    let e = p.eval_with(t(30), must_not_triage);
    assert!(e.trace.is_empty(), "the triager was called: {:?}", e.trace);
    assert_eq!(p.ps(), &before);
    assert!(e.actions.is_empty());
    assert_eq!(p.ps().next_eval_time, Some(t(MINUTE)), "still scheduled");
}

fn i2_triager(c: &Component, view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    match c.clids.as_slice() {
        [1] => Ok(TriageResult {
            new_value: Some(Component {
                decision_time: Some(ts(view.now.seconds + HOUR)),
                ..c.clone()
            }),
            ..Default::default()
        }),
        [3] => Ok(ack(c)),
        other => panic!("component {other:?} is not due"),
    }
}

#[test]
fn i2_due_and_marked_components() {
    let mut p = i_fixture();
    // A new version of CL 3 marks its component.
    p.send(cls_updated(vec![i_cl(3).eversion(2)]));
    let e = p.eval_with(t(MINUTE), i2_triager);
    assert!(e.trace.is_empty(), "{:?}", e.trace);
    assert_eq!(p.component(1).decision_time, Some(t(MINUTE + HOUR)));
    assert!(!p.component(3).triage_required);
    assert_eq!(p.component(3).decision_time, Some(t(3 * MINUTE)));
    assert_eq!(p.ps().next_eval_time, Some(t(2 * MINUTE)));
}

fn i3_triager(c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    let mut result = ack(c);
    if let [clid @ (1 | 3)] = c.clids.as_slice() {
        result.cls_to_purge = vec![owner_lacks_email_purge(*clid)];
    }
    Ok(result)
}

#[test]
fn i3_purges() {
    let mut p = i_fixture();
    p.send(poked());
    let e = p.eval_with(t(0), i3_triager);
    let expected_purging = |clid: i64| PurgingCl {
        clid,
        operation_id: format!("1580640000-{clid}"),
        deadline: Some(t(10 * MINUTE)),
        apply_to: Some(purging_cl::ApplyTo::AllActiveTriggers(true)),
        notification: None,
    };
    assert_eq!(
        p.ps().purging_cls,
        vec![expected_purging(1), expected_purging(3)]
    );
    let expected_purge = |clid: i64| PurgeCl {
        purging_cl: Some(expected_purging(clid)),
        config_groups: vec!["hash/main".into()],
        luci_project: I_PROJECT.into(),
        ..owner_lacks_email_purge(clid)
    };
    assert_eq!(
        e.actions,
        vec![
            poke_poller(),
            action::Action::PurgeCl(expected_purge(1)),
            action::Action::PurgeCl(expected_purge(3)),
        ]
    );
    assert!(p.ps().components.iter().all(|c| !c.triage_required));
}

fn i4_triager(c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    let mut result = ack(c);
    if c.clids == [3] {
        result.cls_to_trigger_deps = vec![TriggeringClDeps {
            origin_clid: 3,
            dep_clids: vec![1, 2],
            ..Default::default()
        }];
    }
    Ok(result)
}

#[test]
fn i4_trigger_deps() {
    let mut p = i_fixture();
    p.send(poked());
    let e = p.eval_with(t(0), i4_triager);
    let expected = TriggeringClDeps {
        origin_clid: 3,
        dep_clids: vec![1, 2],
        operation_id: format!("{}-3", T + 8 * MINUTE),
        deadline: Some(t(8 * MINUTE)),
        ..Default::default()
    };
    assert_eq!(p.ps().triggering_cl_deps, vec![expected.clone()]);
    assert_eq!(
        e.actions,
        vec![
            poke_poller(),
            action::Action::TriggerClDeps(proto::TriggerClDeps {
                triggering_cl_deps: Some(expected),
                luci_project: I_PROJECT.into(),
            })
        ]
    );
}

fn i5_triager(c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    if c.clids == [1] {
        return Err(TriageError::Bug("boom".into()));
    }
    Ok(ack(c))
}

fn i6_triager(c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    if c.clids == [1] {
        return Err(TriageError::OutdatedPmState(
            "CL 1 EVersion changed 1 => 2".into(),
        ));
    }
    Ok(ack(c))
}

#[test]
fn i5_some_triages_fail() {
    let mut p = i_fixture();
    p.send(poked());
    let e = p.eval_with(t(0), i5_triager);
    assert!(p.component(1).triage_required);
    for first in [2, 3, 999] {
        assert!(!p.component(first).triage_required);
    }
    assert_eq!(p.ps().next_eval_time, Some(t(0)), "as soon as possible");
    assert!(
        e.reasons.contains(&project_log::LogReason::Debug),
        "a caught bug is logged"
    );
    assert!(e.trace.iter().any(|w| w.contains("boom")), "{:?}", e.trace);
    assert!(p.state.pending.is_empty());
}

#[test]
fn i6_outdated_pm_state() {
    let mut p = i_fixture();
    p.send(poked());
    let e = p.eval_with(t(0), i6_triager);
    assert!(p.component(1).triage_required);
    for first in [2, 3, 999] {
        assert!(!p.component(first).triage_required);
    }
    assert_eq!(p.ps().next_eval_time, Some(t(0)));
    assert!(!e.reasons.contains(&project_log::LogReason::Debug));
}

fn i7_triager(_c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    Err(TriageError::Bug("always".into()))
}

fn i8_triager(_c: &Component, _view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    panic!("triager bug")
}

#[test]
fn i7_all_triages_fail() {
    let mut p = i_fixture();
    let before = p.ps().clone();
    p.send(poked());
    let e = p.eval_with(t(0), i7_triager);
    assert!(
        e.trace
            .iter()
            .any(|w| w.contains("failed to triage 4 components")),
        "{:?}",
        e.trace
    );
    assert_eq!(p.ps(), &before, "nothing saved");
    assert_eq!(p.state.pending.len(), 1, "the poke stays pending");
    assert_eq!(
        e.actions,
        vec![poke_poller()],
        "the poke of the poller happened before the failure"
    );
    assert!(e.reasons.is_empty());
    assert_eq!(e.eversion, 3, "the marker still bumps the eversion");
}

#[test]
fn i8_triager_panics() {
    let mut p = i_fixture();
    let before = p.ps().clone();
    p.send(poked());
    let e = p.eval_with(t(0), i8_triager);
    assert!(
        e.trace.iter().any(|w| w.contains("caught panic")),
        "{:?}",
        e.trace
    );
    assert_eq!(p.ps(), &before);
}

fn i9_triager(c: &Component, view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    let mut result = ack(c);
    if let [clid @ 1..=3] = c.clids.as_slice() {
        result.runs_to_create = vec![proto::CreateRun {
            run_id: format!("{}/{clid}-1-abc", view.luci_project),
            config_group_id: "hash/main".into(),
            mode: "DRY_RUN".into(),
            input_cls: vec![proto::InputCl {
                clid: *clid,
                expected_eversion: 1,
                trigger: None,
            }],
            ..Default::default()
        }];
        if *clid != 1 {
            result.cls_to_purge = vec![owner_lacks_email_purge(*clid)];
        }
    }
    Ok(result)
}

#[test]
fn i9_run_creation_requests() {
    // In the fold, Run creation is an action performed later by the Run
    // creator; its failures (EVersion mismatch, partial failure) happen
    // outside the fold and surface as a missing RunCreated, so only the
    // "every creation requested" branch exists here.
    let mut p = i_fixture();
    p.send(poked());
    let e = p.eval_with(t(0), i9_triager);
    let created: Vec<&proto::CreateRun> = e
        .actions
        .iter()
        .filter_map(|a| match a {
            action::Action::CreateRun(r) => Some(r),
            _ => None,
        })
        .collect();
    let ids: Vec<&str> = created.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "luci-project/1-1-abc",
            "luci-project/2-1-abc",
            "luci-project/3-1-abc"
        ]
    );
    for r in &created {
        assert_eq!(r.luci_project, I_PROJECT);
        assert_eq!(
            r.operation_id,
            domain::triager::run_id::operation_id(I_PROJECT, &r.run_id)
        );
        assert!(r.operation_id.starts_with("PM-"));
    }
    let kinds: Vec<&str> = e
        .actions
        .iter()
        .map(|a| match a {
            action::Action::PokePoller(_) => "PokePoller",
            action::Action::CreateRun(_) => "CreateRun",
            action::Action::PurgeCl(_) => "PurgeCl",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "PokePoller",
            "CreateRun",
            "CreateRun",
            "CreateRun",
            "PurgeCl",
            "PurgeCl"
        ]
    );
    let purged: Vec<i64> = p.ps().purging_cls.iter().map(|x| x.clid).collect();
    assert_eq!(purged, vec![2, 3]);
    assert!(p.ps().components.iter().all(|c| !c.triage_required));
    let requests: Vec<(&str, Option<Timestamp>)> = p
        .state
        .run_requests
        .iter()
        .map(|r| (r.run_id.as_str(), r.requested_at))
        .collect();
    assert_eq!(
        requests,
        vec![
            ("luci-project/1-1-abc", Some(t(0))),
            ("luci-project/2-1-abc", Some(t(0))),
            ("luci-project/3-1-abc", Some(t(0))),
        ]
    );
    // A request is forgotten once its Run is known, or after a minute.
    p.send(run_created(a_run(
        "luci-project/1-1-abc",
        "DRY_RUN",
        &[1],
        run::Status::Pending,
    )));
    p.eval(t(30));
    let ids: Vec<&str> = p
        .state
        .run_requests
        .iter()
        .map(|r| r.run_id.as_str())
        .collect();
    assert_eq!(ids, vec!["luci-project/2-1-abc", "luci-project/3-1-abc"]);
    p.eval(t(MINUTE));
    assert!(p.state.run_requests.is_empty());
}

// ---------------------------------------------------------------------------
// J2. Lifecycle through several invocations.

#[test]
fn j2_stop_with_incomplete_runs_then_finish_one_by_one() {
    use project_log::LogReason::{ConfigChanged, StatusChanged};
    let mut p = Project::new("infra");
    let config = |hash: &str, eversion| {
        ConfigBuilder::new(hash, eversion)
            .group("g", |g| g.watch_default_ref(HOST, "repo/a"))
            .build()
    };
    p.send(config_updated(config("h1", 1)));
    p.send(config_updated(config("h1", 1)));
    let e1 = p.eval(t(0));
    assert_eq!(e1.eversion, 1);
    assert!(p.state.pending.is_empty());
    assert_eq!(
        e1.offload.as_ref().unwrap().status,
        p_state::Status::Started as i32
    );
    assert_eq!(
        e1.project_log.as_ref().unwrap().reasons,
        vec![StatusChanged as i32, ConfigChanged as i32]
    );
    assert!(e1.actions.contains(&poke_poller()));
    let after_first = p.state.clone();

    p.send(run_created(a_run(
        "infra/111-beef",
        "DRY_RUN",
        &[1],
        run::Status::Running,
    )));
    p.send(run_created(a_run(
        "infra/222-cafe",
        "DRY_RUN",
        &[2],
        run::Status::Running,
    )));
    p.send(config_updated(config("h2", 2)));
    let e2 = p.eval(t(MINUTE));
    let mut incomplete: Vec<&str> = p
        .ps()
        .components
        .iter()
        .flat_map(|c| c.pruns.iter().map(|r| r.id.as_str()))
        .collect();
    incomplete.sort();
    assert_eq!(incomplete, vec!["infra/111-beef", "infra/222-cafe"]);
    assert_eq!(
        e2.project_log.as_ref().unwrap().reasons,
        vec![ConfigChanged as i32]
    );
    assert!(e2.actions.contains(&update_runs_config(
        &["infra/111-beef", "infra/222-cafe"],
        "h2",
        2
    )));

    p.send(config_updated(disabled("h3", 3)));
    let e3 = p.eval(t(2 * MINUTE));
    assert_eq!(e3.eversion, 3);
    assert_eq!(p.ps().status, p_state::Status::Stopping as i32);
    assert_eq!(
        e3.project_log.as_ref().unwrap().reasons,
        vec![StatusChanged as i32]
    );
    assert_eq!(
        e3.actions,
        vec![
            poke_poller(),
            cancel_runs("infra", &["infra/111-beef", "infra/222-cafe"])
        ]
    );

    p.send(run_finished(
        "infra/111-beef",
        run::Status::Cancelled,
        t(3 * MINUTE),
    ));
    let e4 = p.eval(t(3 * MINUTE));
    assert_eq!(e4.eversion, 4);
    assert_eq!(p.ps().status, p_state::Status::Stopping as i32);
    assert!(e4.project_log.is_none(), "no ProjectLog at eversion 4");

    p.send(run_finished(
        "infra/222-cafe",
        run::Status::Cancelled,
        t(4 * MINUTE),
    ));
    let e5 = p.eval(t(4 * MINUTE));
    assert_eq!(e5.eversion, 5);
    assert_eq!(p.ps().status, p_state::Status::Stopped as i32);
    assert!(p.ps().components.iter().all(|c| c.pruns.is_empty()));
    let log5 = e5.project_log.expect("a ProjectLog at eversion 5");
    assert_eq!(log5.status, p_state::Status::Stopped as i32);
    assert_eq!(log5.reasons, vec![StatusChanged as i32]);
    assert_eq!(log5.state.as_ref(), p.state.pstate.as_ref());

    // The alternative branch from eversion 1: the config is deleted.
    let mut p = Project {
        state: after_first,
        revision: 3,
    };
    p.send(config_updated(
        ConfigBuilder::new("h1", 2).deleted().build(),
    ));
    let e = p.eval(t(MINUTE));
    assert_eq!(e.eversion, 2);
    assert_eq!(p.ps().status, p_state::Status::Stopped as i32);
    assert!(e.project_log.is_some());
}

#[test]
fn j_project_log_every_sixty_eversions() {
    let mut p = Project::new("test");
    for n in 1..=120 {
        let e = p.eval(t(n));
        let periodic = e.reasons == vec![project_log::LogReason::FyiPeriodic];
        assert_eq!(periodic, n % 60 == 0, "eversion {n}");
    }
}

// ---------------------------------------------------------------------------
// Snapshot of decisions in their proto3 JSON form.

#[test]
fn d7_snapshot_of_the_purge_actions_and_state() {
    let mut p = d7_fixture(false, false);
    p.send(run_finished(
        "test/202-deef",
        run::Status::Failed,
        t(MINUTE),
    ));
    let e = p.eval(t(2 * MINUTE));
    let actions: Vec<serde_json::Value> = e
        .wrapped_actions()
        .iter()
        .map(|a| serde_json::to_value(a).unwrap())
        .collect();
    let json = serde_json::json!({
        "eversion": e.eversion,
        "actions": actions,
        "state": serde_json::to_value(p.ps()).unwrap(),
    });
    insta::assert_snapshot!(serde_json::to_string_pretty(&json).unwrap());
}

#[test]
fn evaluate_uses_the_configured_triager() {
    let mut a = Project::new("test");
    a.send(config_updated(cfg1("H", 1, true)));
    a.send(cls_updated(vec![cl101("H")]));
    let mut b = Project {
        state: a.state.clone(),
        revision: a.revision,
    };
    let ea = evaluate(&mut a.state, a.revision, t(0));
    let eb = evaluate_with(&mut b.state, b.revision, t(0), domain::TRIAGER);
    assert_eq!(ea, eb);
    assert_eq!(a.state, b.state);
}
