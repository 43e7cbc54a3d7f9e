//! Snapshot tests of triage through the real fold (luci-pm.md §11 groups K,
//! L, M, N, the §1.1 RunID vector and the end-to-end chained-votes story),
//! written with the public scenario builder `prjmanager::testing`.
//!
//! This is the one place of these scenarios (the triager's unit tests keep
//! only what events cannot express). The original tests call the triager
//! on hand-built components; here every state comes from input events, so
//! what they assert on the triager's result shows as actions (`CreateRun`,
//! `PurgeCl`, `TriggerClDeps`) or their absence, and on the saved state
//! (decision times, purges in flight). Where
//! a scenario's input cannot be produced by events, the test says which
//! event-built state stands for it. Accept changes with
//! `INSTA_UPDATE=always cargo test --test triage_snapshots` after reading them.

use std::time::Duration;

use prjmanager::proto::action::Action;
use prjmanager::proto::run::Status;
use prjmanager::proto::Timestamp;
use prjmanager::testing::{t, t_sec, Scenario, DRY_RUN, FULL_RUN, NEW_PATCHSET_RUN, T0};

/// The voter of the K fixture (account 2); CLs are owned by user-1.
const VOTER: &str = "user-2@example.com";
/// The owner of the K fixture's CLs.
const OWNER: &str = "user-1@example.com";

/// The fixture of the original triage_test.go: project `v8` with groups
/// singular, combinable (5 min), another, newPatchsetRun (NPR builder) and
/// newPatchsetRunCombi (NPR + combine 5 min), evaluated once at T0.
fn k() -> Scenario {
    Scenario::new("v8")
        .config(|c| {
            c.group("singular", |g| g)
                .group("combinable", |g| g.combine_cls(Duration::from_secs(300)))
                .group("another", |g| g)
                .group("newPatchsetRun", |g| g.new_patchset_run())
                .group("newPatchsetRunCombi", |g| {
                    g.new_patchset_run().combine_cls(Duration::from_secs(300))
                })
        })
        .evaluate()
}

/// Several scenarios of one test as one text, each under its name.
fn sections(parts: &[(&str, &Scenario)]) -> String {
    parts
        .iter()
        .map(|(name, s)| format!("### {name}\n{}", s.render()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The CLs of a `CreateRun`.
fn clids(r: &prjmanager::proto::CreateRun) -> Vec<i64> {
    r.input_cls.iter().map(|c| c.clid).collect()
}

// ---------------------------------------------------------------------------
// K. Triager.

#[test]
fn k1_component_with_its_run_creates_nothing() {
    let s = k()
        .cl(33, |cl| cl.group("singular").cq_vote(1, VOTER, t(0)))
        .run("v8/1-id", |r| r.mode(DRY_RUN).cls(&[33]))
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k2a_full_run_on_child_requests_votes_on_its_deps() {
    let s = k()
        .cl(31, |cl| cl.group("singular"))
        .cl(32, |cl| cl.group("singular").deps_hard(&[31]))
        .cl(33, |cl| {
            cl.group("singular")
                .deps_hard(&[31, 32])
                .cq_vote(2, VOTER, t(0))
        })
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K2c (the original "with CQ vote on some dep CLs, but not all"): 31 ← 32
/// ← 33 ← 34 (HARD), all but 32 CQ+2: the bottom CL 31 gets its Run (no dep
/// Runs) and only the top 34 asks for a vote on the unvoted 32.
#[test]
fn k2c_some_deps_voted_runs_the_bottom_and_votes_for_the_top() {
    let s = k()
        .cl(31, |cl| cl.group("singular").cq_vote(2, VOTER, t_sec(-1)))
        .cl(32, |cl| cl.group("singular").deps_hard(&[31]))
        .cl(33, |cl| {
            cl.group("singular")
                .deps_hard(&[31, 32])
                .cq_vote(2, VOTER, t(-1))
        })
        .cl(34, |cl| {
            cl.group("singular")
                .deps_hard(&[31, 32, 33])
                .cq_vote(2, VOTER, t(-1))
        })
        .at(t(1))
        .evaluate();
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(clids(runs[0]), vec![31]);
    assert!(runs[0].dep_runs.is_empty());
    insta::assert_snapshot!(s.render());
}

/// K2d (the original "with CQ votes on all CLs"): 31 ← 32, both CQ+2. 31's
/// Run comes first; then 32's names it as its dep Run; once 31 is submitted
/// and its Run succeeded, 32's Run has no dep Run; once 32's Run exists,
/// nothing more is created.
#[test]
fn k2d_all_voted_stack_creates_runs_bottom_up_with_dep_runs() {
    let s = k()
        .cl(31, |cl| cl.group("singular").cq_vote(2, VOTER, t_sec(-1)))
        .cl(32, |cl| {
            cl.group("singular")
                .deps_hard(&[31])
                .cq_vote(2, VOTER, t_sec(-1))
        })
        .at(t(1))
        .evaluate();
    let first = s.last_create_runs();
    assert_eq!(first.len(), 1, "{}", s.render());
    assert_eq!(clids(first[0]), vec![31]);
    assert!(first[0].dep_runs.is_empty());
    let rid31 = first[0].run_id.clone();
    let s = s.create_requested_runs().evaluate();
    let second = s.last_create_runs();
    assert_eq!(second.len(), 1, "{}", s.render());
    assert_eq!(clids(second[0]), vec![32]);
    assert_eq!(second[0].dep_runs, vec![rid31.clone()]);
    assert!(second[0].expected_incomplete_run_ids.is_empty());
    // 31 is submitted and its Run succeeded (after 32's request expired).
    let s = s
        .at(t(3))
        .cl(31, |cl| cl.no_votes().status_merged())
        .run_finished(&rid31, Status::Succeeded)
        .evaluate();
    let third = s.last_create_runs();
    assert_eq!(third.len(), 1, "{}", s.render());
    assert_eq!(clids(third[0]), vec![32]);
    assert!(third[0].dep_runs.is_empty());
    let s = s.create_requested_runs().evaluate();
    assert!(s.last_actions().is_empty(), "{}", s.render());
    insta::assert_snapshot!(s.render());
}

/// K2b and M3 (in-flight op on a parent). Through events, the in-flight op
/// of origin 32 exists because 32 was CQ+2-voted first; then 33's vote
/// requests nothing while 32's op runs.
#[test]
fn k2b_m3_no_new_votes_while_a_dep_has_an_op_in_flight() {
    let s = k()
        .cl(31, |cl| cl.group("singular"))
        .cl(32, |cl| {
            cl.group("singular")
                .deps_hard(&[31])
                .cq_vote(2, VOTER, t(0))
        })
        .at(t(1))
        .evaluate()
        .cl(33, |cl| {
            cl.group("singular")
                .deps_hard(&[31, 32])
                .cq_vote(2, VOTER, t(2))
        })
        .at(t(2))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K3 "singular": the original's owner_lacks_email reason on the CQ trigger
/// comes from an owner without email, which makePCL applies to all triggers.
#[test]
fn k3_singular_group_purges_without_delay() {
    let s = k()
        .cl(33, |cl| {
            cl.group("singular").owner("").cq_vote(1, VOTER, t(0))
        })
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K3 (and L5 "CQ purge in flight ⇒ NPR ready"): a reason on the CQ trigger
/// only, here `commit_blocked` (`Commit: false` with CQ+2), purges the CQ
/// vote and lets the NEW_PATCHSET_RUN Run be created; once that Run exists
/// and the purge is in flight, nothing more happens.
#[test]
fn k3_l5_cq_purge_does_not_affect_npr() {
    let s = k()
        .cl(33, |cl| {
            cl.group("newPatchsetRun")
                .footer("Commit", "false")
                .cq_vote(2, VOTER, t(0))
        })
        .at(t(1))
        .evaluate()
        .create_requested_runs()
        .at(t(2))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K3 "NPR-only trigger with a reason on it ⇒ purge, no run". An
/// `unsupported_mode` reason cannot come from events (every mode the
/// trigger finder yields is allowed); an owner without email stands for it.
/// A CL with only a new-patchset trigger is active (luci-pm-head.md R1), so
/// it is triaged and purged at once.
#[test]
fn k3_npr_only_trigger_with_a_reason_is_purged() {
    let s = k()
        .cl(33, |cl| cl.group("newPatchsetRun").owner(""))
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K3 and L5 "NPR purge in flight ⇒ CQ ready": the reason on the NPR
/// trigger is `reused_trigger`: the CL's DRY_RUN and NEW_PATCHSET_RUN Runs
/// ended over a minute ago and the patchset did not change; a new CQ+1 vote
/// still gets its DRY_RUN Run while the NPR trigger is purged.
#[test]
fn k3_l5_npr_purge_lets_the_dry_run_go_on() {
    let s = k()
        .cl(33, |cl| cl.group("newPatchsetRun").cq_vote(1, VOTER, t(0)))
        .at(t(1))
        .evaluate()
        .create_requested_runs()
        .evaluate();
    let runs: Vec<String> = s
        .state()
        .components
        .iter()
        .flat_map(|c| c.pruns.iter().map(|r| r.id.clone()))
        .collect();
    assert_eq!(runs.len(), 2, "{}", s.render());
    let s = runs
        .iter()
        .fold(s.at(t(2)), |s, id| s.run_finished(id, Status::Cancelled))
        .at(t(4))
        .cl(33, |cl| cl.no_votes().cq_vote(1, VOTER, t(4)))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k3_combinable_group_obeys_stabilization_delay() {
    let s = k()
        .cl(33, |cl| {
            cl.group("combinable").owner("").cq_vote(1, VOTER, t(0))
        })
        .evaluate()
        .at(t(10))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// As the previous test in a combinable group: an NPR-only CL is active
/// (luci-pm-head.md R1) and purged immediately (no stabilization delay
/// without a CQ vote).
#[test]
fn k3_npr_only_in_combinable_npr_group_is_purged_immediately() {
    let s = k()
        .cl(33, |cl| cl.group("newPatchsetRunCombi").owner(""))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k3_many_config_groups_purge_immediately() {
    let s = k()
        .cl(33, |cl| {
            cl.group("singular")
                .group("combinable")
                .group("another")
                .owner("")
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k5_dry_run_and_npr_triggers_create_two_runs() {
    let s = k()
        .cl(33, |cl| cl.group("newPatchsetRun").cq_vote(1, VOTER, t(0)))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K5 "NPR-only ⇒ NPR Run": an NPR-only CL is active (luci-pm-head.md R1)
/// and gets its NEW_PATCHSET_RUN Run.
#[test]
fn k5_npr_only_creates_an_npr_run() {
    let s = k().cl(33, |cl| cl.group("newPatchsetRun")).evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k5_npr_only_with_an_npr_run_creates_nothing() {
    let s = k()
        .cl(33, |cl| cl.group("newPatchsetRun"))
        .run("v8/1-npr", |r| r.mode(NEW_PATCHSET_RUN).cls(&[33]))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k5_singular_dry_run_creates_one_run() {
    let s = k()
        .cl(33, |cl| cl.group("singular").cq_vote(1, VOTER, t(0)))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k5_singular_with_a_run_creates_nothing() {
    let s = k()
        .cl(33, |cl| cl.group("singular").cq_vote(1, VOTER, t(0)))
        .run("v8/1-run", |r| r.mode(DRY_RUN).cls(&[33]))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k5_full_run_and_dry_run_with_soft_dep_create_two_runs() {
    let s = k()
        .cl(32, |cl| cl.group("singular").cq_vote(2, VOTER, t(0)))
        .cl(33, |cl| {
            cl.group("singular")
                .deps_soft(&[32])
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k5_runs_on_other_cls_leave_only_the_middle_cl() {
    let s = k()
        .cl(31, |cl| cl.group("singular").cq_vote(2, VOTER, t(0)))
        .cl(32, |cl| {
            cl.group("singular")
                .deps_soft(&[31])
                .cq_vote(1, VOTER, t(0))
        })
        .cl(33, |cl| {
            cl.group("singular")
                .deps_soft(&[32])
                .cq_vote(1, VOTER, t(0))
        })
        .run("v8/1-first", |r| r.mode(DRY_RUN).cls(&[31]))
        .run("v8/1-third", |r| r.mode(DRY_RUN).cls(&[33]))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn k5_unknown_dep_waits_without_decision_time() {
    let s = k()
        .cl(32, |cl| cl.access_unknown())
        .cl(33, |cl| {
            cl.group("singular")
                .deps_soft(&[32])
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K5 "NPR-only ⇒ NPR Run", the CL inside a Run: it lost its CQ vote while
/// its DRY_RUN Run goes on, so it stays in the component with only a
/// new-patchset trigger, and the NEW_PATCHSET_RUN Run is created.
#[test]
fn k5_npr_only_in_a_dry_run_creates_an_npr_run() {
    let s = k()
        .cl(33, |cl| cl.group("newPatchsetRun").cq_vote(1, VOTER, t(0)))
        .run("v8/1-dry", |r| r.mode(DRY_RUN).cls(&[33]))
        .cl(33, |cl| cl.no_votes())
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K3 "NPR-only trigger with a reason on it ⇒ purge, no Run", the CL inside
/// a Run: as the previous test, with an owner without email (the reason).
#[test]
fn k3_npr_only_trigger_with_a_reason_in_a_dry_run_is_purged() {
    let s = k()
        .cl(33, |cl| {
            cl.group("newPatchsetRun").owner("").cq_vote(1, VOTER, t(0))
        })
        .run("v8/1-dry", |r| r.mode(DRY_RUN).cls(&[33]))
        .cl(33, |cl| cl.no_votes())
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// K3 "NPR-only in a combinable NPR group ⇒ purged immediately", the CL
/// inside a Run, as the previous test in `newPatchsetRunCombi`.
#[test]
fn k3_npr_only_in_combinable_npr_group_in_a_dry_run_is_purged_immediately() {
    let s = k()
        .cl(33, |cl| {
            cl.group("newPatchsetRunCombi")
                .owner("")
                .cq_vote(1, VOTER, t(0))
        })
        .run("v8/1-dry", |r| r.mode(DRY_RUN).cls(&[33]))
        .cl(33, |cl| cl.no_votes())
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

// §7.5 step 8: a Run with the id to create is already known (the original
// "with already existing Run" tests; no K id in the spec). CLs 32 and 33
// of the combinable group as in the RunID vector below.

/// The Run id of the §1.1 vector.
const VECTOR_RUN_ID: &str = "v8/9042327596854-1-42e0a59099a0f673";

/// CLs 32 (CQ+2 at T0+53m19s) and 33 (CQ+2 at T0+53m20s, SOFT dep on 32)
/// of the combinable group, the clock after their stabilization delay.
fn existing_run() -> Scenario {
    k().cl(32, |cl| {
        cl.group("combinable").cq_vote(2, VOTER, t_sec(3199))
    })
    .cl(33, |cl| {
        cl.group("combinable")
            .deps_soft(&[32])
            .cq_vote(2, VOTER, t_sec(3200))
    })
    .at(t_sec(3200 + 300))
}

/// The Run to create is known and running but in no component (announced
/// without CLs, so the PM could not place it): re-check in 5 seconds.
#[test]
fn existing_run_still_running_rechecks_in_5s() {
    let s = existing_run()
        .run(VECTOR_RUN_ID, |r| r.mode(FULL_RUN).cls(&[]))
        .evaluate();
    assert!(s.last_create_runs().is_empty(), "{}", s.render());
    insta::assert_snapshot!(s.render());
}

/// The Run to create ended 5 seconds ago: wait until a minute after its end.
#[test]
fn existing_run_just_ended_waits_a_minute_after_its_end() {
    let s = existing_run()
        .evaluate()
        .create_requested_runs()
        .evaluate()
        .run_finished(VECTOR_RUN_ID, Status::Cancelled)
        .at(t_sec(3505))
        .evaluate();
    assert!(s.last_create_runs().is_empty(), "{}", s.render());
    insta::assert_snapshot!(s.render());
}

/// The Run to create ended two minutes ago: both triggers were used by it,
/// so both CLs are purged with `reused_trigger`.
#[test]
fn existing_run_ended_long_ago_purges_reused_triggers() {
    let s = existing_run()
        .evaluate()
        .create_requested_runs()
        .evaluate()
        .run_finished(VECTOR_RUN_ID, Status::Cancelled)
        .at(t_sec(3620))
        .evaluate();
    let purged = s
        .last_actions()
        .iter()
        .filter(|a| matches!(a, Action::PurgeCl(_)))
        .count();
    assert_eq!(purged, 2, "{}", s.render());
    insta::assert_snapshot!(s.render());
}

/// The Run was requested 30 seconds ago: not requested again before a
/// minute has passed (the decision time), then requested again.
#[test]
fn existing_run_requested_recently_is_not_requested_again() {
    let s = existing_run().evaluate();
    assert_eq!(s.last_create_runs().len(), 1, "{}", s.render());
    let s = s.at(t_sec(3530)).poke().evaluate();
    assert!(s.last_create_runs().is_empty(), "{}", s.render());
    let s = s.at(t_sec(3560)).evaluate();
    let again = s.last_create_runs();
    assert_eq!(again.len(), 1, "{}", s.render());
    assert_eq!(again[0].run_id, VECTOR_RUN_ID);
    insta::assert_snapshot!(s.render());
}

// Further combinable cases of the original triage_test.go.

#[test]
fn combinable_stack_waits_for_stabilization_then_creates_one_run() {
    let s = k()
        .cl(31, |cl| {
            cl.group("combinable")
                .deps_soft(&[33])
                .cq_vote(2, VOTER, t(-1))
        })
        .cl(32, |cl| {
            cl.group("combinable")
                .deps_soft(&[31])
                .cq_vote(2, VOTER, t_sec(-1))
        })
        .cl(33, |cl| {
            cl.group("combinable")
                .deps_soft(&[32, 31])
                .cq_vote(2, VOTER, t(0))
        })
        .evaluate()
        .at(t(5))
        .evaluate();
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(clids(runs[0]), vec![31, 32, 33]);
    assert_eq!(runs[0].create_time, Some(t(0)));
    insta::assert_snapshot!(s.render());
}

#[test]
fn combinable_single_cl_waits_for_stabilization() {
    let s = k()
        .cl(33, |cl| cl.group("combinable").cq_vote(2, VOTER, t(0)))
        .evaluate()
        .at(t(5))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn combinable_waits_for_unresolved_dep_even_after_stabilization() {
    let s = k()
        .cl(32, |cl| cl.access_unknown())
        .cl(33, |cl| {
            cl.group("combinable")
                .deps_soft(&[32])
                .cq_vote(2, VOTER, t(0))
        })
        .evaluate()
        .at(t(5))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// A Run on all the CLs of the component: nothing to do, also while it
/// finalizes (31's vote removed; 32 submitted).
#[test]
fn combinable_noop_with_a_run_on_all_cls_even_while_it_finalizes() {
    let base = || {
        k().cl(31, |cl| {
            cl.group("combinable")
                .deps_soft(&[32])
                .cq_vote(2, VOTER, t(-60))
        })
        .cl(32, |cl| {
            cl.group("combinable")
                .deps_soft(&[31])
                .cq_vote(2, VOTER, t(-60))
        })
        .run("v8/runID", |r| r.mode(DRY_RUN).cls(&[31, 32]))
    };
    let running = base().evaluate();
    let vote_removed = base().cl(31, |cl| cl.no_votes()).evaluate();
    let submitted = base().cl(32, |cl| cl.no_votes().status_merged()).evaluate();
    for s in [&running, &vote_removed, &submitted] {
        assert!(s.last_actions().is_empty(), "{}", s.render());
    }
    insta::assert_snapshot!(sections(&[
        ("running", &running),
        ("vote removed from 31", &vote_removed),
        ("32 submitted", &submitted),
    ]));
}

/// 51 joined the component of 31 and 41 while their Run goes on: it waits
/// for that Run to end.
#[test]
fn combinable_growing_component_waits_for_the_smaller_run() {
    let s = k()
        .cl(31, |cl| cl.group("combinable").cq_vote(2, VOTER, t(-60)))
        .cl(41, |cl| {
            cl.group("combinable")
                .deps_soft(&[31])
                .cq_vote(2, VOTER, t(-60))
        })
        .run("v8/41-31", |r| r.mode(DRY_RUN).cls(&[31, 41]))
        .evaluate()
        .cl(51, |cl| {
            cl.group("combinable")
                .deps_soft(&[31])
                .cq_vote(2, VOTER, t(0))
        })
        .at(t(10))
        .evaluate();
    assert!(s.last_actions().is_empty(), "{}", s.render());
    insta::assert_snapshot!(s.render());
}

/// A Run on 31, 41 and 51 while 31 is submitted, has its vote removed,
/// moves to another config group or to another LUCI project: the Run
/// Manager finalizes the Run; the PM creates and purges nothing.
#[test]
fn combinable_leaves_finalizing_runs_to_the_run_manager() {
    let base = || {
        k().cl(31, |cl| cl.group("combinable").cq_vote(1, VOTER, t(-60)))
            .cl(41, |cl| {
                cl.group("combinable")
                    .deps_soft(&[31])
                    .cq_vote(1, VOTER, t(-60))
            })
            .cl(51, |cl| {
                cl.group("combinable")
                    .deps_soft(&[31, 41])
                    .cq_vote(1, VOTER, t(-60))
            })
            .run("v8/sub-mitting", |r| r.mode(DRY_RUN).cls(&[31, 41, 51]))
            .evaluate()
            .at(t(1))
    };
    let submitted = base().cl(31, |cl| cl.no_votes().status_merged()).evaluate();
    let cancelled = base().cl(31, |cl| cl.no_votes()).evaluate();
    let other_group = base()
        .cl(31, |cl| cl.no_groups().group("another"))
        .evaluate();
    let other_project = base()
        .cl(31, |cl| cl.no_votes().watched_by_projects(&["other"]))
        .evaluate();
    for s in [&submitted, &cancelled, &other_group, &other_project] {
        assert!(s.last_actions().is_empty(), "{}", s.render());
    }
    insta::assert_snapshot!(sections(&[
        ("31 being submitted", &submitted),
        ("31 being cancelled", &cancelled),
        ("31 in another config group", &other_group),
        ("31 in another LUCI project", &other_project),
    ]));
}

/// 31 is being purged (its owner had no email; fixed since): the
/// component waits for the purge, even after the stabilization delay.
#[test]
fn combinable_waits_for_an_in_flight_purge_of_a_member() {
    let s = k()
        .cl(31, |cl| {
            cl.group("combinable").owner("").cq_vote(1, VOTER, t(0))
        })
        .cl(32, |cl| {
            cl.group("combinable")
                .deps_soft(&[31])
                .cq_vote(1, VOTER, t(0))
        })
        .cl(33, |cl| {
            cl.group("combinable")
                .deps_soft(&[31])
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate()
        .at(t(5))
        .evaluate()
        .at(t(10))
        .cl(31, |cl| cl.owner(OWNER))
        .poke()
        .evaluate();
    assert!(s.last_create_runs().is_empty(), "{}", s.render());
    insta::assert_snapshot!(s.render());
}

// §7.5.1 fields of the Runs to create.

/// Footers give the Run options; the CQ Run of a CL whose NEW_PATCHSET_RUN
/// Run goes on expects that Run; a DRY_RUN is billed to its triggerer.
#[test]
fn creator_fields_options_payer_and_incomplete_runs() {
    let s = k()
        .cl(33, |cl| {
            cl.group("newPatchsetRun")
                .footer("No-Tree-Checks", "TRUE")
                .footer("No-Try", "false")
                .footer("NOPRESUBMIT", "true")
                .footer("Cq-Include-Trybots", "luci.p.try:a")
                .footer("CQ_INCLUDE_TRYBOTS", "luci.p.try:b")
                .footer("Cq-Cl-Tag", "k:v")
                .footer("Cq-Do-Not-Cancel-Tryjobs", "True")
                .cq_vote(1, VOTER, t(0))
        })
        .run("v8/npr", |r| r.mode(NEW_PATCHSET_RUN).cls(&[33]))
        .evaluate();
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(runs[0].mode, DRY_RUN);
    assert_eq!(runs[0].expected_incomplete_run_ids, vec!["v8/npr"]);
    let options = runs[0].options.clone().unwrap_or_default();
    assert!(options.skip_tree_checks && options.skip_presubmit && options.avoid_cancelling_tryjobs);
    assert!(!options.skip_tryjobs && !options.skip_equivalent_builders);
    assert_eq!(options.custom_tryjob_tags, vec!["k:v"]);
    assert_eq!(
        options.include_trybots,
        vec!["luci.p.try:a", "luci.p.try:b"]
    );
    assert_eq!(runs[0].billed_to, "user:user-2@example.com");
    insta::assert_snapshot!(s.render());
}

#[test]
fn creator_create_time_is_rounded_to_microseconds() {
    let voted = Timestamp {
        seconds: T0,
        nanos: 1_500,
    };
    let s = k()
        .cl(33, |cl| cl.group("singular").cq_vote(1, VOTER, voted))
        .evaluate();
    let runs = s.last_create_runs();
    assert_eq!(
        runs[0].create_time,
        Some(Timestamp {
            seconds: T0,
            nanos: 2_000
        }),
        "{}",
        s.render()
    );
    insta::assert_snapshot!(s.render());
}

/// Two CLs of a combined Run voted at the same time by different users:
/// the Run is created by the voter of the lowest CL.
#[test]
fn creator_latest_triggered_tie_goes_to_the_lowest_clid() {
    let s = k()
        .cl(31, |cl| {
            cl.group("combinable").cq_vote(1, "a@example.com", t(0))
        })
        .cl(32, |cl| {
            cl.group("combinable")
                .deps_soft(&[31])
                .cq_vote(1, "b@example.com", t(0))
        })
        .at(t(5))
        .evaluate();
    let runs = s.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", s.render());
    assert_eq!(runs[0].created_by, "user:a@example.com");
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// L. Per-CL triage, observed through Runs created or not and purges.

#[test]
fn l1_single_dry_run_cl_is_ready_even_inside_a_run() {
    let s = k()
        .cl(33, |cl| cl.group("singular").cq_vote(1, VOTER, t(0)))
        .evaluate()
        .create_requested_runs()
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// L2: the original's [owner_lacks_email, unsupported_mode]; the second
/// cannot come from events, a self dep (`self_cq_depend`) stands for it.
#[test]
fn l2_pcl_purge_reasons_make_the_cl_not_ready() {
    let s = k()
        .cl(33, |cl| {
            cl.group("singular")
                .owner("")
                .deps_soft(&[33])
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn l3_being_purged_is_never_ready_even_inside_a_run() {
    let s = k()
        .cl(33, |cl| {
            cl.group("singular").owner("").cq_vote(1, VOTER, t(0))
        })
        .evaluate()
        .at(t(1))
        .poke()
        .evaluate()
        .run("v8/1-run", |r| r.mode(DRY_RUN).cls(&[33]))
        .at(t(2))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn l4_several_config_groups_purge() {
    let s = k()
        .cl(33, |cl| {
            cl.group("singular")
                .group("another")
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn l4_several_config_groups_inside_a_run_do_not_purge() {
    let s = k()
        .cl(33, |cl| {
            cl.group("singular")
                .group("another")
                .cq_vote(1, VOTER, t(0))
        })
        .run("v8/1-run", |r| r.mode(DRY_RUN).cls(&[33]))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// L5 "with an NPR run ⇒ NPR ready": ready, but its Run exists, so only the
/// CQ vote's Run is created.
#[test]
fn l5_npr_group_with_an_npr_run_creates_only_the_cq_run() {
    let s = k()
        .cl(33, |cl| cl.group("newPatchsetRun").cq_vote(1, VOTER, t(0)))
        .run("v8/1-npr", |r| r.mode(NEW_PATCHSET_RUN).cls(&[33]))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// L8: a dep not yet loaded (access unknown) leaves the CL ready but blocks
/// its Run; once the dep is known, the Run is created.
#[test]
fn l8_dep_not_yet_loaded_blocks_the_run_until_loaded() {
    let s = k()
        .cl(32, |cl| cl.access_unknown())
        .cl(33, |cl| {
            cl.group("singular")
                .deps_soft(&[32])
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate()
        .at(t(1))
        .cl(32, |cl| cl.watched().group("singular"))
        .evaluate();
    insta::assert_snapshot!(s.render());
}

// Further per-CL cases of the original cls_test.go.

/// 1 ← 2 (HARD) ← 3 (SOFT on 1, HARD on 2) in the NPR group, DRY_RUN on 1
/// and 2, FULL_RUN on 3: 3's CQ trigger is purged for its SOFT dep
/// (`single_full_deps`), its new-patchset trigger is not; every other
/// trigger gets its Run.
#[test]
fn l_stack_full_run_on_top_with_soft_dep_is_purged_but_npr_is_not() {
    let s = k()
        .cl(1, |cl| cl.group("newPatchsetRun").cq_vote(1, VOTER, t(0)))
        .cl(2, |cl| {
            cl.group("newPatchsetRun")
                .deps_hard(&[1])
                .cq_vote(1, VOTER, t(0))
        })
        .cl(3, |cl| {
            cl.group("newPatchsetRun")
                .deps_soft(&[1])
                .deps_hard(&[2])
                .cq_vote(2, VOTER, t(0))
        })
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// The same stack in the singular group with FULL_RUN at the bottom and
/// DRY_RUN above: every CL is ready and gets its Run.
#[test]
fn l_stack_full_run_at_the_bottom_and_dry_runs_above_are_ready() {
    let s = k()
        .cl(1, |cl| cl.group("singular").cq_vote(2, VOTER, t(0)))
        .cl(2, |cl| {
            cl.group("singular").deps_hard(&[1]).cq_vote(1, VOTER, t(0))
        })
        .cl(3, |cl| {
            cl.group("singular")
                .deps_soft(&[1])
                .deps_hard(&[2])
                .cq_vote(1, VOTER, t(0))
        })
        .evaluate();
    assert_eq!(s.last_create_runs().len(), 3, "{}", s.render());
    insta::assert_snapshot!(s.render());
}

/// 1 ← 2 ← 3 ← 4 (HARD), CQ+2 on 2 and 4: no CL is ready; 4 asks for votes
/// on 1 and 3. While that vote is in flight the CLs stay not ready even
/// once 1 and 3 are voted; when it completes, the bottom CL's Run is created.
#[test]
fn l_chained_votes_and_in_flight_op_force_not_ready() {
    let s = k()
        .cl(1, |cl| cl.group("singular"))
        .cl(2, |cl| {
            cl.group("singular").deps_hard(&[1]).cq_vote(2, VOTER, t(0))
        })
        .cl(3, |cl| cl.group("singular").deps_hard(&[1, 2]))
        .cl(4, |cl| {
            cl.group("singular")
                .deps_hard(&[1, 2, 3])
                .cq_vote(2, VOTER, t(0))
        })
        .evaluate();
    assert!(s.last_create_runs().is_empty(), "{}", s.render());
    let s = s
        .at(t(1))
        .cls(&[1, 3], |cl| cl.cq_vote(2, VOTER, t(1)))
        .evaluate();
    assert!(s.last_actions().is_empty(), "{}", s.render());
    let s = s
        .at(t(2))
        .trigger_deps_completed(4, |o| o.succeeded(&[1, 3]))
        .evaluate();
    assert_eq!(s.last_create_runs().len(), 1, "{}", s.render());
    insta::assert_snapshot!(s.render());
}

/// Combinable group, after the stabilization delay. 1 and 2 (FULL_RUN, SOFT
/// deps on each other) with 3 (DRY_RUN, SOFT deps on both): 3 is purged for
/// the mismatched mode, 1 and 2 are ready. With 2 in another group, every
/// CL has a dep in the wrong group and is purged. Unless 2 is submitted:
/// then 1 and 3 (both DRY_RUN) are ready and run.
#[test]
fn l_combinable_mismatched_modes_and_wrong_groups() {
    let stack = |group_of_2: &'static str, mode_of_1: i32| {
        k().cl(1, |cl| {
            cl.group("combinable")
                .deps_soft(&[2])
                .cq_vote(mode_of_1, VOTER, t(0))
        })
        .cl(2, |cl| {
            cl.group(group_of_2).deps_soft(&[1]).cq_vote(2, VOTER, t(0))
        })
        .cl(3, |cl| {
            cl.group("combinable")
                .deps_soft(&[1, 2])
                .cq_vote(1, VOTER, t(0))
        })
    };
    // Once 3's purge is done, 1 and 2 (ready all along) get their Run.
    let mismatched = stack("combinable", 2)
        .evaluate()
        .at(t(5))
        .evaluate()
        .at(t(6))
        .cl(3, |cl| cl.no_votes())
        .purge_completed(3)
        .evaluate();
    let runs = mismatched.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", mismatched.render());
    assert_eq!(clids(runs[0]), vec![1, 2]);
    // 2 (singular) is purged at once; 1 and 3 wait for that purge, then
    // are purged for their dep in the wrong group.
    let wrong_group = stack("another", 2)
        .evaluate()
        .at(t(5))
        .evaluate()
        .at(t(6))
        .cl(2, |cl| cl.no_votes())
        .purge_completed(2)
        .evaluate();
    let purged = wrong_group
        .last_actions()
        .iter()
        .filter(|a| matches!(a, Action::PurgeCl(_)))
        .count();
    assert_eq!(purged, 2, "{}", wrong_group.render());
    let submitted = stack("another", 1)
        .cl(2, |cl| cl.no_votes().status_merged())
        .evaluate()
        .at(t(5))
        .evaluate();
    let runs = submitted.last_create_runs();
    assert_eq!(runs.len(), 1, "{}", submitted.render());
    assert_eq!(clids(runs[0]), vec![1, 3]);
    insta::assert_snapshot!(sections(&[
        ("mismatched modes", &mismatched),
        ("2 in another group", &wrong_group),
        ("2 in another group, submitted", &submitted),
    ]));
}

// ---------------------------------------------------------------------------
// M. Trigger-deps staging. The project `m` has one group `cg1` matched by
// the config's watch (no explicit groups on the CLs).

/// CLs 1; 2 → 1; 3 → 1, 2 (HARD), each shaped further by `f(clid, cl)`.
fn m(
    f: impl Fn(i64, prjmanager::testing::ClBuilder) -> prjmanager::testing::ClBuilder,
) -> Scenario {
    Scenario::new("m")
        .config(|c| {
            c.group("cg1", |g| {
                g.watch("g-review.example.com", "repo/a", "refs/heads/main")
            })
        })
        .cl(1, |cl| f(1, cl))
        .cl(2, |cl| f(2, cl.deps_hard(&[1])))
        .cl(3, |cl| f(3, cl.deps_hard(&[1, 2])))
}

#[test]
fn m1_top_of_stack_requests_votes_on_unvoted_deps() {
    let s = m(|clid, cl| match clid {
        3 => cl.cq_vote(2, VOTER, t(0)),
        _ => cl,
    })
    .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn m1_no_request_when_the_origin_is_outdated() {
    let s = m(|clid, cl| match clid {
        3 => cl.cq_vote(2, VOTER, t(0)).outdated(),
        _ => cl,
    })
    .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn m1_no_request_when_a_dep_is_outdated() {
    let s = m(|clid, cl| match clid {
        3 => cl.cq_vote(2, VOTER, t(0)),
        1 => cl.outdated(),
        _ => cl,
    })
    .evaluate();
    insta::assert_snapshot!(s.render());
}

/// M1 and M3 (in-flight op on the origin).
#[test]
fn m1_m3_no_new_request_while_the_op_runs_and_a_dep_got_voted() {
    let s = m(|clid, cl| match clid {
        3 => cl.cq_vote(2, VOTER, t(0)),
        _ => cl,
    })
    .evaluate()
    .at(t(1))
    .cl(2, |cl| cl.cq_vote(2, VOTER, t(1)))
    .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn m1_no_request_while_a_dep_is_not_loaded() {
    let s = m(|clid, cl| match clid {
        3 => cl.cq_vote(2, VOTER, t(0)),
        1 => cl.access_unknown(),
        _ => cl,
    })
    .evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn m2_all_voted_needs_no_request() {
    let s = m(|_, cl| cl.cq_vote(2, VOTER, t(0))).evaluate();
    insta::assert_snapshot!(s.render());
}

#[test]
fn m2_only_the_top_most_cl_requests() {
    let s = m(|clid, cl| match clid {
        1 => cl,
        _ => cl.cq_vote(2, VOTER, t(0)),
    })
    .evaluate();
    insta::assert_snapshot!(s.render());
}

/// M3 "purge reasons or purging on the origin": a purge instead of a
/// request, and still no request while the purge is in flight.
#[test]
fn m3_purge_on_the_origin_blocks_requests() {
    let s = m(|clid, cl| match clid {
        3 => cl.owner("").cq_vote(2, VOTER, t(0)),
        _ => cl,
    })
    .evaluate()
    .at(t(1))
    .poke()
    .evaluate();
    insta::assert_snapshot!(s.render());
}

/// M3 "purge reasons or purging on a parent": the parent 2 must be in the
/// component, i.e. voted itself; its purge blocks 3's request.
#[test]
fn m3_purge_on_a_parent_blocks_requests() {
    let s = m(|clid, cl| match clid {
        2 => cl.owner("").cq_vote(2, VOTER, t(0)),
        3 => cl.cq_vote(2, VOTER, t(0)),
        _ => cl,
    })
    .evaluate()
    .at(t(1))
    .poke()
    .evaluate();
    insta::assert_snapshot!(s.render());
}

/// The original "incomplete run with different CQVotes in deps": 1 ← 2 ←
/// 3 ← 4 (HARD). The parent 3 still runs FULL_RUN (and 2 DRY_RUN) while 1
/// is unvoted: 4 asks for no vote. MCE over MCE: 1 and 2 run FULL_RUN, 3
/// is unvoted: 4 asks for a vote on 3 only.
#[test]
fn m_dep_running_with_its_own_unvoted_deps_blocks_the_child() {
    let stack = |votes: [i32; 4]| {
        let vote = move |cl: prjmanager::testing::ClBuilder, clid: usize| match votes[clid - 1] {
            0 => cl,
            v => cl.cq_vote(v, VOTER, t(-1)),
        };
        Scenario::new("m")
            .config(|c| {
                c.group("cg1", |g| {
                    g.watch("g-review.example.com", "repo/a", "refs/heads/main")
                })
            })
            .evaluate()
            .cl(1, |cl| vote(cl, 1))
            .cl(2, |cl| vote(cl.deps_hard(&[1]), 2))
            .cl(3, |cl| vote(cl.deps_hard(&[1, 2]), 3))
            .cl(4, |cl| vote(cl.deps_hard(&[1, 2, 3]), 4))
    };
    let parent_running = stack([0, 1, 2, 2])
        .run("m/r2", |r| r.mode(DRY_RUN).cls(&[2]))
        .run("m/r3", |r| r.mode(FULL_RUN).cls(&[3]))
        .evaluate();
    let mce_over_mce = stack([2, 2, 0, 2])
        .run("m/r1", |r| r.mode(FULL_RUN).cls(&[1]))
        .run("m/r2", |r| r.mode(FULL_RUN).cls(&[2]))
        .evaluate();
    insta::assert_snapshot!(sections(&[
        ("parent running", &parent_running),
        ("MCE over MCE", &mce_over_mce),
    ]));
}

// ---------------------------------------------------------------------------
// N. Immediate hard deps (as the DepRuns of created Runs) and quota payer.

/// N1: 1; 2 → 1; 3 → 1, 2, all CQ+2: Runs are created bottom-up, each
/// waiting for the Run of its immediate HARD dep (2's is 1's, 3's is 2's).
#[test]
fn n1_immediate_hard_deps_are_the_dep_runs() {
    let s = k()
        .cl(1, |cl| cl.group("singular").cq_vote(2, VOTER, t(0)))
        .cl(2, |cl| {
            cl.group("singular").deps_hard(&[1]).cq_vote(2, VOTER, t(0))
        })
        .cl(3, |cl| {
            cl.group("singular")
                .deps_hard(&[1, 2])
                .cq_vote(2, VOTER, t(0))
        })
        .at(t(1))
        .evaluate()
        .create_requested_runs()
        .evaluate()
        .create_requested_runs()
        .evaluate()
        .create_requested_runs()
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// N1 "two stacks merged": 5 → 1, 2, 3, 4 with 2 → 1 and 4 → 3: the Run of
/// 5 depends on the Runs of 2 and 4.
#[test]
fn n1_two_stacks_merged_depend_on_both_tops() {
    let s = k()
        .cl(1, |cl| cl.group("singular").cq_vote(2, VOTER, t(0)))
        .cl(2, |cl| {
            cl.group("singular").deps_hard(&[1]).cq_vote(2, VOTER, t(0))
        })
        .cl(3, |cl| cl.group("singular").cq_vote(2, VOTER, t(0)))
        .cl(4, |cl| {
            cl.group("singular").deps_hard(&[3]).cq_vote(2, VOTER, t(0))
        })
        .cl(5, |cl| {
            cl.group("singular")
                .deps_hard(&[1, 2, 3, 4])
                .cq_vote(2, VOTER, t(0))
        })
        .at(t(1))
        .evaluate()
        .create_requested_runs()
        .evaluate()
        .create_requested_runs()
        .evaluate();
    insta::assert_snapshot!(s.render());
}

/// N2: who pays for each Run (`billed_to`): NPR ⇒ the owner (its
/// triggerer), Auto-Submit or not (CLs 10 and 18 are CQ+1-voted too, as an
/// NPR-only CL is not active, quirk §13.3); DRY_RUN or a custom mode with CQ value 1
/// ⇒ the triggerer, Auto-Submit or not; FULL_RUN or a custom mode with CQ
/// value 2 ⇒ the owner if Auto-Submit is voted, else the triggerer. (The
/// creator's own rule that the owner of a FULL_RUN with Auto-Submit is its
/// payer while the voter still creates it shows on CL 12.)
#[test]
fn n2_quota_payer() {
    let s = Scenario::new("v8")
        .config(|c| {
            c.group("npr", |g| {
                g.new_patchset_run()
                    .watch("g-review.example.com", "repo/npr", "refs/heads/main")
            })
            .group("main", |g| {
                g.watch("g-review.example.com", "repo/a", "refs/heads/main")
                    .additional_mode("QUICK", 1, "Quick-Run", 1)
                    .additional_mode("FULL_CUSTOM", 2, "Custom-Run", 1)
            })
        })
        .cl(10, |cl| cl.repo("repo/npr").cq_vote(1, VOTER, t(0)))
        .cl(11, |cl| cl.cq_vote(1, VOTER, t(0)))
        .cl(12, |cl| cl.cq_vote(2, VOTER, t(0)).auto_submit(OWNER, t(0)))
        .cl(13, |cl| cl.cq_vote(2, VOTER, t(0)))
        .cl(14, |cl| {
            cl.cq_vote(1, VOTER, t(0))
                .vote("Quick-Run", 1, VOTER, t(0))
                .auto_submit(OWNER, t(0))
        })
        .cl(15, |cl| {
            cl.cq_vote(2, VOTER, t(0))
                .vote("Custom-Run", 1, VOTER, t(0))
                .auto_submit(OWNER, t(0))
        })
        .cl(16, |cl| cl.cq_vote(1, VOTER, t(0)).auto_submit(OWNER, t(0)))
        .cl(17, |cl| {
            cl.cq_vote(2, VOTER, t(0))
                .vote("Custom-Run", 1, VOTER, t(0))
        })
        .cl(18, |cl| {
            cl.repo("repo/npr")
                .cq_vote(1, VOTER, t(0))
                .auto_submit(OWNER, t(0))
        })
        .cl(19, |cl| {
            cl.cq_vote(1, VOTER, t(0)).vote("Quick-Run", 1, VOTER, t(0))
        })
        .at(t(1))
        .evaluate();
    // Each Run is billed as the rule says.
    let billed: Vec<(i64, &str, &str)> = s
        .last_create_runs()
        .iter()
        .map(|r| (r.input_cls[0].clid, r.mode.as_str(), r.billed_to.as_str()))
        .collect();
    let owner = "user:user-1@example.com";
    let voter = "user:user-2@example.com";
    for (clid, mode, payer) in [
        (10, NEW_PATCHSET_RUN, owner),
        (10, DRY_RUN, voter),
        (11, DRY_RUN, voter),
        (12, FULL_RUN, owner),
        (13, FULL_RUN, voter),
        (14, "QUICK", voter),
        (15, "FULL_CUSTOM", owner),
        (16, DRY_RUN, voter),
        (17, "FULL_CUSTOM", voter),
        (18, NEW_PATCHSET_RUN, owner),
        (18, DRY_RUN, voter),
        (19, "QUICK", voter),
    ] {
        assert!(
            billed.contains(&(clid, mode, payer)),
            "CL {clid} {mode} billed to {payer}: {billed:?}"
        );
    }
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// §1.1 RunID vector.

/// The original "with already existing Run" inputs: CLs 32 (CQ+2 at
/// T0+53m19s) and 33 (CQ+2 at T0+53m20s, SOFT dep on 32) of the combinable
/// group, voter account 2; after stabilization one Run with the id of §1.1.
#[test]
fn run_id_vector_of_section_1_1() {
    let s = k()
        .cl(32, |cl| {
            cl.group("combinable").cq_vote(2, VOTER, t_sec(3199))
        })
        .cl(33, |cl| {
            cl.group("combinable")
                .deps_soft(&[32])
                .cq_vote(2, VOTER, t_sec(3200))
        })
        .at(t_sec(3200 + 300))
        .evaluate();
    let created: Vec<&str> = s
        .last_actions()
        .iter()
        .filter_map(|a| match a {
            prjmanager::proto::action::Action::CreateRun(r) => Some(r.run_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(created, vec!["v8/9042327596854-1-42e0a59099a0f673"]);
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// End to end: chained CQ votes on a 3-CL stack.

/// A stack 1 ← 2 ← 3 (HARD deps) with CQ+2 on 3 asks for votes on 1 and 2.
/// The vote on 2 is refused: 3 is purged with the default notification and
/// the voted 1 silently (§6.7). After the purges complete and the votes are
/// gone, 3 is voted again; this time both deps get CQ+2 and the Runs are
/// created bottom-up, each naming the Run of its parent as a dep Run.
#[test]
fn e2e_chained_votes_on_a_stack() {
    let s = Scenario::new("v8")
        .config(|c| {
            c.group("singular", |g| {
                g.watch("g-review.example.com", "repo/a", "refs/heads/main")
            })
        })
        .cl(1, |cl| cl)
        .cl(2, |cl| cl.deps_hard(&[1]))
        .cl(3, |cl| cl.deps_hard(&[1, 2]).cq_vote(2, VOTER, t(0)))
        .at(t(1))
        .evaluate()
        // One dep could not be voted on.
        .at(t(2))
        .trigger_deps_completed(3, |o| o.succeeded(&[1]).permission_denied(2, VOTER))
        .evaluate()
        // The purges remove the votes.
        .at(t(3))
        .cl(1, |cl| cl.no_votes())
        .cl(3, |cl| cl.no_votes())
        .purge_completed(1)
        .purge_completed(3)
        .evaluate()
        // The successful path.
        .at(t(10))
        .cl(3, |cl| cl.cq_vote(2, VOTER, t(10)))
        .evaluate()
        .at(t(11))
        .cls(&[1, 2], |cl| cl.cq_vote(2, VOTER, t(11)))
        .trigger_deps_completed(3, |o| o.succeeded(&[1, 2]))
        .evaluate()
        .at(t(12))
        .create_requested_runs()
        .evaluate()
        .create_requested_runs()
        .evaluate()
        .create_requested_runs()
        .evaluate();
    insta::assert_snapshot!(s.render());
}

// ---------------------------------------------------------------------------
// The README's example (keep the two in sync).

#[test]
fn readme_example_full_run_on_a_stack_asks_for_dep_votes() {
    let s = Scenario::new("v8")
        .config(|c| {
            c.group("singular", |g| {
                g.watch("g-review.example.com", "repo/a", "refs/heads/main")
            })
        })
        .cl(31, |cl| cl)
        .cl(32, |cl| {
            cl.deps_hard(&[31]).cq_vote(2, "user-2@example.com", t(0))
        })
        .at(t(1))
        .evaluate();
    insta::assert_snapshot!(s.render());
}
