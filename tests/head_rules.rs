//! The acceptance examples of `luci-pm-head.md`: the rules R1–R8 of the
//! original Project Manager at luci-go HEAD that supersede `luci-pm.md`, one
//! test per example, named by rule id.
//!
//! Every test runs the real fold through the scenario builder
//! (`prjmanager::testing`), asserts the key facts of its example (PCL fields,
//! actions, RunIDs) and snapshots the whole story with insta. As in the
//! examples, the project is `test`, the Gerrit host `c-review.example.com`,
//! the repo `repo/a`, the pinned config hash `h1`, the clock `T` (the
//! builder's `T0` unless stated), and a CL's current revision (patchset 1,
//! `rev-<clid>-1`) was uploaded at `T−60m` by `owner@example.com`
//! (account 1). Accept snapshot changes with
//! `INSTA_UPDATE=always cargo test --test head_rules` after reading them.
//!
//! R9 (a component that receives a created Run is never reused) has no test:
//! no event sequence reaches it, because `RunCreated` places a Run whose CLs
//! all sit in one component into that component before repartition.

use std::time::Duration;

use prjmanager::domain::pcl;
use prjmanager::domain::triager::run_id::{self, RunIdCl};
use prjmanager::proto::action::Action;
use prjmanager::proto::cl_error::{InvalidDeps, Kind};
use prjmanager::proto::dep::DepKind;
use prjmanager::proto::run::Status;
use prjmanager::proto::Timestamp;
use prjmanager::proto::{
    pcl::Status as PclStatus, purge_reason, purging_cl, ClError, CreateRun, Dep, Mode, Pcl,
    PurgeCl, PurgeReason, Trigger, TriggerClDeps, Triggers,
};
use prjmanager::testing::{t, ClBuilder, Scenario, DRY_RUN, FULL_RUN, NEW_PATCHSET_RUN};

/// The examples' Gerrit host.
const HOST: &str = "c-review.example.com";
/// The examples' CL owner (account 1).
const OWNER: &str = "owner@example.com";
/// The examples' voter `u1` (account 11).
const U1: &str = "u1@example.com";
/// The account id of `u1`.
const U1_ACCOUNT: i64 = 11;

/// Project `test` with one config (hash `h1`), started at `T`.
fn project(
    f: impl FnOnce(prjmanager::testing::ConfigBuilder) -> prjmanager::testing::ConfigBuilder,
) -> Scenario {
    Scenario::new("test").config(f).evaluate()
}

/// The examples' CL defaults: host, owner (account 1) and revision `rev-<clid>-1`.
fn cl(clid: i64, b: ClBuilder) -> ClBuilder {
    b.host(HOST)
        .owner(OWNER)
        .owner_account_id(1)
        .revision(&format!("rev-{clid}-1"))
}

/// A Commit-Queue vote of `value` by `u1` (account 11) at `at`.
fn u1_cq(b: ClBuilder, value: i32, at: Timestamp) -> ClBuilder {
    b.vote_with_account("Commit-Queue", value, U1, U1_ACCOUNT, at)
}

/// A trigger as the PCL stores it.
fn trigger(mode: &str, at: Timestamp, email: &str, account: i64) -> Trigger {
    Trigger {
        time: Some(at),
        mode: mode.to_string(),
        email: email.to_string(),
        gerrit_account_id: account,
        ..Trigger::default()
    }
}

/// `Triggers` with only the CQ-vote trigger.
fn cq_only(t: Trigger) -> Triggers {
    Triggers {
        cq_vote_trigger: Some(t),
        new_patchset_run_trigger: None,
    }
}

fn dep(clid: i64, kind: DepKind) -> Dep {
    Dep {
        clid,
        kind: kind as i32,
    }
}

/// The PCL of `clid` in the saved state.
fn pcl_of(s: &Scenario, clid: i64) -> &Pcl {
    s.state()
        .pcls
        .iter()
        .find(|p| p.clid == clid)
        .unwrap_or_else(|| panic!("no PCL {clid}:\n{}", s.render()))
}

/// The CL ids of every component, in order.
fn components(s: &Scenario) -> Vec<Vec<i64>> {
    s.state()
        .components
        .iter()
        .map(|c| c.clids.clone())
        .collect()
}

fn dep_votes(s: &Scenario) -> Vec<&TriggerClDeps> {
    s.last_actions()
        .iter()
        .filter_map(|a| match a {
            Action::TriggerClDeps(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn input_clids(r: &CreateRun) -> Vec<i64> {
    r.input_cls.iter().map(|c| c.clid).collect()
}

/// The only purge of the last evaluation, for CL `clid`.
fn only_purge(s: &Scenario, clid: i64) -> &PurgeCl {
    let all = s.last_purges();
    assert_eq!(all.len(), 1, "{}", s.render());
    let p = all[0];
    assert_eq!(p.purging_cl.as_ref().unwrap().clid, clid);
    p
}

/// The config of R1 and R6: group `npr` with a NEW_PATCHSET_RUN tryjob.
fn npr_project() -> Scenario {
    project(|c| {
        c.group("npr", |g| {
            g.watch(HOST, "repo/a", "refs/heads/main")
                .new_patchset_run()
        })
    })
}

// ---------------------------------------------------------------------------
// R1. A new-patchset trigger alone makes a CL active.

#[test]
fn r1a_npr_only_cl_is_active_and_gets_an_npr_run() {
    let s = npr_project()
        .cl(1, |b| cl(1, b).new_patchset_run_after(0))
        .evaluate();
    let p = pcl_of(&s, 1);
    assert_eq!(p.config_group_indexes, vec![0]);
    let npr = trigger(NEW_PATCHSET_RUN, t(-60), OWNER, 1);
    assert_eq!(
        p.triggers,
        Some(Triggers {
            cq_vote_trigger: None,
            new_patchset_run_trigger: Some(npr.clone()),
        })
    );
    assert_eq!(components(&s), vec![vec![1]]);
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    let r = runs[0];
    assert_eq!(r.mode, NEW_PATCHSET_RUN);
    assert_eq!(input_clids(r), vec![1]);
    assert_eq!(r.input_cls[0].trigger, Some(npr));
    assert_eq!(r.owner, "user:owner@example.com");
    assert_eq!(r.created_by, "user:owner@example.com");
    assert_eq!(r.billed_to, "user:owner@example.com");
    assert_eq!(r.create_time, Some(t(-60)));
    assert_eq!(r.config_group_id, "h1/npr");
    assert_eq!(r.mode_definition, None);
    assert!(r.dep_runs.is_empty());
    insta::assert_snapshot!(s.render());
}

#[test]
fn r1b_npr_trigger_exactly_seven_days_old_is_not_active() {
    let s = npr_project()
        .cl(1, |b| cl(1, b).uploaded(t(-7 * 24 * 60)))
        .evaluate();
    assert!(s.state().pcls.is_empty(), "{}", s.render());
    assert!(components(&s).is_empty());
    assert!(s.last_actions().is_empty(), "{}", s.render());
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// R2. `allow_submit_with_open_deps` makes HARD deps OK (no chained votes).

/// Group `open` (singular, the flag as given); CL 1 without vote; CL 2 CQ+2
/// by u1 at T−10m depending on 1 with `kind`.
fn r2(allow_submit_with_open_deps: bool, kind: DepKind) -> Scenario {
    project(|c| {
        c.group("open", |g| {
            let g = g.watch(HOST, "repo/a", "refs/heads/main");
            if allow_submit_with_open_deps {
                g.allow_submit_with_open_deps()
            } else {
                g
            }
        })
    })
    .cl(1, |b| cl(1, b))
    .cl(2, |b| {
        let b = u1_cq(cl(2, b), 2, t(-10));
        match kind {
            DepKind::Soft => b.deps_soft(&[1]),
            _ => b.deps_hard(&[1]),
        }
    })
    .evaluate()
}

#[test]
fn r2_allow_submit_with_open_deps_runs_without_chained_votes() {
    let s = r2(true, DepKind::Hard);
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(runs[0].mode, FULL_RUN);
    assert_eq!(input_clids(runs[0]), vec![2]);
    assert!(runs[0].dep_runs.is_empty());
    assert!(dep_votes(&s).is_empty());
    assert!(s.state().triggering_cl_deps.is_empty());
    assert!(s.last_purges().is_empty());
    insta::assert_snapshot!(s.render());
}

#[test]
fn r2_allow_submit_with_open_deps_keeps_soft_deps_invalid() {
    let s = r2(true, DepKind::Soft);
    let p = only_purge(&s, 2);
    let cq = trigger(FULL_RUN, t(-10), U1, U1_ACCOUNT);
    assert_eq!(
        p.purge_reasons,
        vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(Kind::InvalidDeps(InvalidDeps {
                    single_full_deps: vec![dep(1, DepKind::Soft)],
                    ..InvalidDeps::default()
                })),
            }),
            apply_to: Some(purge_reason::ApplyTo::Triggers(cq_only(cq))),
        }]
    );
    assert!(s.last_create_runs().is_empty());
    insta::assert_snapshot!(s.render());
}

#[test]
fn r2_without_the_flag_hard_deps_get_chained_votes() {
    let s = r2(false, DepKind::Hard);
    let votes = dep_votes(&s);
    assert_eq!(votes.len(), 1, "{}", s.render());
    let op = votes[0].triggering_cl_deps.as_ref().unwrap();
    assert_eq!((op.origin_clid, op.dep_clids.clone()), (2, vec![1]));
    assert!(s.last_create_runs().is_empty());
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// R3. A CL matching no config group is UNWATCHED.

#[test]
fn r3_cl_matching_no_config_group_is_unwatched_and_an_invalid_dep() {
    let s = project(|c| c.group("singular", |g| g.watch(HOST, "repo/a", "refs/heads/main")))
        .cl(1, |b| {
            cl(1, b).git_ref("refs/heads/other").group_ids(&["h0/gone"])
        })
        .cl(2, |b| u1_cq(cl(2, b), 1, t(-10)).deps_hard(&[1]))
        .evaluate();
    assert_eq!(
        pcl_of(&s, 1),
        &Pcl {
            clid: 1,
            eversion: 1,
            status: PclStatus::Unwatched as i32,
            ..Pcl::default()
        }
    );
    assert_eq!(components(&s), vec![vec![2]]);
    let p = only_purge(&s, 2);
    let triggers = cq_only(trigger(DRY_RUN, t(-10), U1, U1_ACCOUNT));
    assert_eq!(
        p.purge_reasons,
        vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(Kind::InvalidDeps(InvalidDeps {
                    unwatched: vec![dep(1, DepKind::Hard)],
                    ..InvalidDeps::default()
                })),
            }),
            apply_to: Some(purge_reason::ApplyTo::Triggers(triggers.clone())),
        }]
    );
    assert_eq!(
        p.purging_cl.as_ref().unwrap().apply_to,
        Some(purging_cl::ApplyTo::Triggers(triggers))
    );
    assert!(s.last_create_runs().is_empty());
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// R4. Malformed owner email: purge reason `owner_email_malformed`.

fn r4(owner: &str) -> Scenario {
    project(|c| c.group("singular", |g| g.watch(HOST, "repo/a", "refs/heads/main")))
        .cl(1, |b| {
            u1_cq(cl(1, b), 1, t(-10)).owner(owner).owner_account_id(1)
        })
        .evaluate()
}

#[test]
fn r4_malformed_owner_email_is_purged_on_all_triggers() {
    let s = r4("malformed owner@example.com");
    let error = ClError {
        kind: Some(Kind::OwnerEmailMalformed(true)),
    };
    let reason = PurgeReason {
        cl_error: Some(error.clone()),
        apply_to: Some(purge_reason::ApplyTo::AllActiveTriggers(true)),
    };
    let p = pcl_of(&s, 1);
    assert_eq!(p.purge_reasons, vec![reason.clone()]);
    assert_eq!(p.errors, vec![error]);
    let purge = only_purge(&s, 1);
    let purging = purge.purging_cl.as_ref().unwrap();
    assert_eq!(
        purging.apply_to,
        Some(purging_cl::ApplyTo::AllActiveTriggers(true))
    );
    assert_eq!(purging.operation_id, format!("{}-1", t(10).seconds));
    assert_eq!(purge.purge_reasons, vec![reason]);
    assert!(s.last_create_runs().is_empty());
    insta::assert_snapshot!(s.render());
}

#[test]
fn r4_owner_email_with_a_plus_is_valid() {
    let s = r4("owner+cq@example.com");
    assert!(pcl_of(&s, 1).purge_reasons.is_empty());
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(runs[0].mode, DRY_RUN);
    assert_eq!(runs[0].owner, "user:owner+cq@example.com");
    insta::assert_snapshot!(s.render());
}

#[test]
fn r4_empty_owner_email_is_only_owner_lacks_email() {
    let s = r4("");
    assert_eq!(
        pcl_of(&s, 1).purge_reasons,
        vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(Kind::OwnerLacksEmail(true)),
            }),
            apply_to: Some(purge_reason::ApplyTo::AllActiveTriggers(true)),
        }]
    );
    only_purge(&s, 1);
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// R5. Custom (additional) modes are CQ-vote modes in the triager.

/// Groups `quick` (main; additional mode QUICK_RUN: CQ+1 with Quick-Run+1)
/// and `other` (`refs/heads/other`).
fn r5_project() -> Scenario {
    project(|c| {
        c.group("quick", |g| {
            g.watch(HOST, "repo/a", "refs/heads/main").additional_mode(
                "QUICK_RUN",
                1,
                "Quick-Run",
                1,
            )
        })
        .group("other", |g| g.watch(HOST, "repo/a", "refs/heads/other"))
    })
}

/// CQ+1 and Quick-Run+1 by u1 at T−10m.
fn quick_votes(b: ClBuilder) -> ClBuilder {
    u1_cq(b, 1, t(-10)).vote_with_account("Quick-Run", 1, U1, U1_ACCOUNT, t(-10))
}

fn quick_trigger() -> Trigger {
    Trigger {
        mode_definition: Some(Mode {
            name: "QUICK_RUN".to_string(),
            cq_label_value: 1,
            triggering_label: "Quick-Run".to_string(),
            triggering_value: 1,
        }),
        ..trigger("QUICK_RUN", t(-10), U1, U1_ACCOUNT)
    }
}

#[test]
fn r5a_custom_mode_trigger_is_purged_as_the_cq_vote_trigger() {
    let s = r5_project()
        .cl(1, |b| cl(1, b).git_ref("refs/heads/other"))
        .cl(2, |b| quick_votes(cl(2, b)).deps_hard(&[1]))
        .evaluate();
    let triggers = cq_only(quick_trigger());
    assert_eq!(pcl_of(&s, 2).triggers, Some(triggers.clone()));
    let p = only_purge(&s, 2);
    assert_eq!(
        p.purge_reasons,
        vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(Kind::InvalidDeps(InvalidDeps {
                    wrong_config_group: vec![dep(1, DepKind::Hard)],
                    ..InvalidDeps::default()
                })),
            }),
            apply_to: Some(purge_reason::ApplyTo::Triggers(triggers.clone())),
        }]
    );
    assert_eq!(
        p.purging_cl.as_ref().unwrap().apply_to,
        Some(purging_cl::ApplyTo::Triggers(triggers))
    );
    assert!(s.last_evaluation().unwrap().trace.is_empty());
    insta::assert_snapshot!(s.render());
}

#[test]
fn r5b_custom_mode_run_is_counted_as_a_cq_vote_run() {
    let s = r5_project().cl(3, |b| quick_votes(cl(3, b))).evaluate();
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(
        (runs[0].mode.as_str(), input_clids(runs[0])),
        ("QUICK_RUN", vec![3])
    );
    let id = runs[0].run_id.clone();
    let s = s
        .at(t(1))
        .run(&id, |r| {
            r.mode("QUICK_RUN").cls(&[3]).status(Status::Running)
        })
        .evaluate();
    let e = s.last_evaluation().unwrap();
    assert!(e.trace.is_empty(), "{:?}", e.trace);
    assert!(e.actions.is_empty(), "{}", s.render());
    let c = &s.state().components;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].clids, vec![3]);
    assert_eq!(
        c[0].pruns.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    assert!(!c[0].triage_required);
    assert_eq!(c[0].decision_time, None);
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// R6. The new-patchset trigger carries the owner's account id.

#[test]
fn r6_npr_trigger_carries_the_owner_account_id_into_the_run_id() {
    // T = 2026-01-10T10:00:00Z.
    let now = Timestamp {
        seconds: 1_768_039_200,
        nanos: 0,
    };
    let minutes_before = |m: i64| Timestamp {
        seconds: now.seconds - 60 * m,
        nanos: 0,
    };
    let s = npr_project()
        .at(now)
        .cl(7, |b| {
            let b = cl(7, b).owner_account_id(77).uploaded(minutes_before(60));
            u1_cq(b, 1, minutes_before(10))
        })
        .evaluate();
    let npr = trigger(NEW_PATCHSET_RUN, minutes_before(60), OWNER, 77);
    assert_eq!(
        pcl_of(&s, 7)
            .triggers
            .as_ref()
            .and_then(|t| t.new_patchset_run_trigger.clone()),
        Some(npr.clone())
    );
    let runs = s.last_create_runs();
    let modes: Vec<&str> = runs.iter().map(|r| r.mode.as_str()).collect();
    assert_eq!(modes, vec![DRY_RUN, NEW_PATCHSET_RUN], "{}", s.render());
    let r = runs[1];
    assert_eq!(r.input_cls[0].trigger, Some(npr.clone()));
    assert_eq!(r.run_id, "test/8854935196854-1-07ac9ffc931207be");
    // With account 0 (before the rule) the id would differ.
    let account_zero = Trigger {
        gerrit_account_id: 0,
        ..npr
    };
    let old_id = run_id::run_id(
        "test",
        &minutes_before(60),
        &[RunIdCl {
            host: HOST,
            change: 7,
            current_revision: "rev-7-1",
            trigger: Some(&account_zero),
        }],
    )
    .unwrap();
    assert_eq!(old_id, "test/8854935196854-1-acedd396ce31f4f0");
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// R7. Failed-MCE purge: the combine_cls exclusion never applies.

#[test]
fn r7_failed_full_run_of_a_combined_stack_purges_the_child() {
    let s = project(|c| {
        c.group("comb", |g| {
            g.watch(HOST, "repo/a", "refs/heads/main")
                .combine_cls(Duration::ZERO)
        })
    })
    .cl(1, |b| u1_cq(cl(1, b), 2, t(-10)))
    .cl(2, |b| u1_cq(cl(2, b), 2, t(-10)).deps_hard(&[1]))
    .evaluate();
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(
        (runs[0].mode.as_str(), input_clids(runs[0])),
        (FULL_RUN, vec![1, 2])
    );
    let id = runs[0].run_id.clone();
    let s = s
        .at(t(1))
        .run(&id, |r| {
            r.mode(FULL_RUN).cls(&[1, 2]).status(Status::Running)
        })
        .evaluate()
        .at(t(2))
        .run_finished(&id, Status::Failed)
        .evaluate();
    let p = only_purge(&s, 2);
    let triggers = cq_only(trigger(FULL_RUN, t(-10), U1, U1_ACCOUNT));
    assert_eq!(
        p.purge_reasons,
        vec![PurgeReason {
            cl_error: Some(ClError {
                kind: Some(Kind::DepRunFailed(1)),
            }),
            apply_to: Some(purge_reason::ApplyTo::Triggers(triggers.clone())),
        }]
    );
    let purging = p.purging_cl.as_ref().unwrap();
    assert_eq!(
        purging.apply_to,
        Some(purging_cl::ApplyTo::Triggers(triggers))
    );
    // Top of the stack: the default notification.
    assert_eq!(purging.notification, None);
    assert!(s.last_create_runs().is_empty());
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// R8. Empty `ref_regexp` watches `refs/heads/master`.

/// Group `dflt` watching `repo/a` without ref_regexp; CL 1 on `git_ref`
/// with a stale ApplicableConfig (`h0/dflt`, so the matcher decides), CQ+1.
fn r8(git_ref: &str) -> Scenario {
    project(|c| c.group("dflt", |g| g.watch_default_ref(HOST, "repo/a")))
        .cl(1, |b| {
            u1_cq(cl(1, b), 1, t(-10))
                .git_ref(git_ref)
                .group_ids(&["h0/dflt"])
        })
        .evaluate()
}

#[test]
fn r8_empty_ref_regexp_watches_master() {
    let s = r8("refs/heads/master");
    assert_eq!(pcl_of(&s, 1).config_group_indexes, vec![0]);
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(
        (runs[0].mode.as_str(), input_clids(runs[0])),
        (DRY_RUN, vec![1])
    );
    insta::assert_snapshot!(s.render());
}

#[test]
fn r8_empty_ref_regexp_does_not_watch_main() {
    let s = r8("refs/heads/main");
    // No group: UNWATCHED (R3), hence not active and dropped, and no Run.
    assert!(s.state().pcls.is_empty(), "{}", s.render());
    assert!(s.last_create_runs().is_empty());
    // The dropped PCL, as the fold's makePCL builds it from the known CL.
    assert_eq!(
        make_pcl(&s, 1),
        Pcl {
            clid: 1,
            eversion: 1,
            status: PclStatus::Unwatched as i32,
            ..Pcl::default()
        }
    );
    insta::assert_snapshot!(s.render());
}

/// The PCL the fold builds now for the latest known version of CL `clid`
/// (for a PCL the fold dropped as unused, which no state shows).
fn make_pcl(s: &Scenario, clid: i64) -> Pcl {
    let state = s.project_state();
    let pinned = state.pinned_config.as_ref().expect("a pinned config");
    let names: Vec<String> = pinned
        .config_groups
        .iter()
        .map(|g| g.name.clone())
        .collect();
    let now = s.now();
    let ctx = pcl::PclContext {
        project: &state.luci_project,
        now: &now,
        pinned,
        config_group_names: &names,
    };
    let cl = state.cls.iter().find(|c| c.clid == clid);
    let mut trace = Vec::new();
    let p = pcl::make_pcl(&ctx, clid, cl, None, &mut None, &mut trace);
    assert!(trace.is_empty(), "{trace:?}");
    p
}
