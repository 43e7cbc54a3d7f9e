//! Snapshot tests of triage through the real fold (luci-pm.md §11 groups K,
//! L, M, N, the §1.1 RunID vector and the end-to-end chained-votes story),
//! written with the public scenario builder `prjmanager::testing`.
//!
//! The original tests call the triager on hand-built components; here every
//! state comes from input events, so what they assert on the triager's result
//! shows as actions (`CreateRun`, `PurgeCl`, `TriggerClDeps`) or their
//! absence, and on the saved state (decision times, purges in flight). Where
//! a scenario's input cannot be produced by events, the test says which
//! event-built state stands for it. Accept changes with
//! `INSTA_UPDATE=always cargo test --test triage_snapshots` after reading them.

use std::time::Duration;

use prjmanager::proto::run::Status;
use prjmanager::testing::{t, t_sec, Scenario, DRY_RUN, NEW_PATCHSET_RUN};

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
/// triggerer); DRY_RUN or a custom mode with CQ value 1 ⇒ the triggerer;
/// FULL_RUN or a custom mode with CQ value 2 ⇒ the owner if Auto-Submit is
/// voted, else the triggerer.
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
        .cl(10, |cl| cl.repo("repo/npr"))
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
        .at(t(1))
        .evaluate();
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
