//! Unit tests of the triager: only what the public scenario builder
//! (`prjmanager::testing`, used by tests/triage_snapshots.rs) cannot express.
//!
//! The acceptance scenarios of domain/luci-pm.md §11 groups K, L, M and N,
//! and the further cases of the original's triager tests, live once, as
//! scenarios folded from input events and snapshotted in
//! tests/triage_snapshots.rs. A scenario can only reach the states the fold
//! produces and can only observe actions and the saved state. What stays
//! here therefore needs a hand-built `PState`/`Component`/`PmView`:
//!
//! * internal functions and their intermediate results: the RunID and
//!   operation-id functions (`run_id`), `triage_deps`, `find_immediate_hard_deps`,
//!   `quota_payer`, `user_identity`, `merge_options`;
//! * states the fold never produces: a CL newer than its PCL
//!   (`OutdatedPmState`), a PCL without its CL entity, an owner without email
//!   reaching the Run creator, a triggered CL submitted outside any Run, a
//!   custom-mode Run in a component, a purge of an untriggered CL; these
//!   must be errors, never panics;
//! * the §7.2 rule that an unchanged component yields no new value, which
//!   shows in no action;
//! * the properties (no panics, determinism, quiet components stay quiet)
//!   over arbitrary hand-built components, most of which no event stream
//!   produces.
//!
//! These tests build protos by hand rather than with `crate::testing`: that
//! module is built on the domain (it folds through `domain::apply_event`
//! and `domain::evaluate`), and the domain does not depend on it, not even
//! in its unit tests.

use std::collections::BTreeMap;

use crate::proto::Timestamp;
use pbjson_types::Duration;
use proptest::prelude::*;

use super::cls::triage_cls;
use super::creator::{merge_options, quota_payer, user_identity};
use super::deps::triage_deps;
use super::run_id::{self, RunIdCl};
use super::runs::find_immediate_hard_deps;
use super::{triage, DRY_RUN, FULL_RUN, NEW_PATCHSET_RUN};
use crate::domain::triage_api::{PmView, TriageError, TriageResult};
use crate::proto::cl_error::invalid_deps::TooMany;
use crate::proto::cl_error::{InvalidDeps, Kind};
use crate::proto::{
    dep::DepKind, gerrit_change::ChangeStatus, pcl, purge_reason, purging_cl, ChangeList, ClError,
    CombineCls, Component, ConfigGroup, Dep, GerritChange, NewPatchsetRun, PRun, PState, Pcl,
    ProjectConfig, PurgeReason, PurgingCl, Run, RunOptions, RunRequest, Snapshot, Trigger,
    TriggeringClDeps, Triggers, Vote,
};

/// The triager is called by the state machine through a `fn` pointer of this shape.
const _TRIAGE_FITS_A_FN_POINTER: fn(&Component, &PmView<'_>) -> Result<TriageResult, TriageError> =
    triage;

// ---------------------------------------------------------------------------
// Fixture.

/// Gerrit host of the K fixture.
const HOST: &str = "g-review.example.com";
/// The trigger time behind the §1.1 RunID vector (2020-02-02T11:33:20Z).
const T0: i64 = 1_580_643_200;
/// Group indexes of the K fixture.
const SING: i32 = 0;
const COMB: i32 = 1;
const NPR: i32 = 3;
/// Stabilization delay of the combinable groups of the K fixture.
const STABILIZATION_SECONDS: i64 = 300;

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn dep(clid: i64, kind: DepKind) -> Dep {
    Dep {
        clid,
        kind: kind as i32,
    }
}

fn hard(clid: i64) -> Dep {
    dep(clid, DepKind::Hard)
}

fn soft(clid: i64) -> Dep {
    dep(clid, DepKind::Soft)
}

fn trigger(mode: &str, seconds: i64) -> Trigger {
    Trigger {
        mode: mode.to_string(),
        time: Some(ts(seconds)),
        ..Trigger::default()
    }
}

/// A CQ trigger voted by user-2 (account 2), as the K fixture's voter.
fn voter_trigger(mode: &str, seconds: i64) -> Trigger {
    Trigger {
        email: "user-2@example.com".to_string(),
        gerrit_account_id: 2,
        ..trigger(mode, seconds)
    }
}

fn cq_triggers(t: Trigger) -> Option<Triggers> {
    Some(Triggers {
        cq_vote_trigger: Some(t),
        new_patchset_run_trigger: None,
    })
}

fn group(name: &str) -> ConfigGroup {
    ConfigGroup {
        name: name.to_string(),
        ..ConfigGroup::default()
    }
}

fn combinable(name: &str, delay_seconds: i64) -> ConfigGroup {
    ConfigGroup {
        combine_cls: Some(CombineCls {
            stabilization_delay: Some(Duration {
                seconds: delay_seconds,
                nanos: 0,
            }),
        }),
        ..group(name)
    }
}

fn with_npr(mut cg: ConfigGroup) -> ConfigGroup {
    cg.new_patchset_run = Some(NewPatchsetRun {});
    cg
}

fn prun(id: &str, mode: &str, clids: &[i64]) -> PRun {
    PRun {
        id: id.to_string(),
        clids: clids.to_vec(),
        mode: mode.to_string(),
        root_clid: 0,
    }
}

fn component(clids: &[i64], pruns: Vec<PRun>, triage_required: bool) -> Component {
    Component {
        clids: clids.to_vec(),
        decision_time: None,
        pruns,
        triage_required,
    }
}

fn reason(kind: Kind, apply_to: purge_reason::ApplyTo) -> PurgeReason {
    PurgeReason {
        cl_error: Some(ClError { kind: Some(kind) }),
        apply_to: Some(apply_to),
    }
}

fn on_cq(t: Trigger) -> purge_reason::ApplyTo {
    purge_reason::ApplyTo::Triggers(Triggers {
        cq_vote_trigger: Some(t),
        new_patchset_run_trigger: None,
    })
}

fn on_npr(t: Trigger) -> purge_reason::ApplyTo {
    purge_reason::ApplyTo::Triggers(Triggers {
        cq_vote_trigger: None,
        new_patchset_run_trigger: Some(t),
    })
}

/// A project as the triager sees it; lists are kept sorted as the view expects.
struct Fx {
    project: String,
    pstate: PState,
    config: ProjectConfig,
    cls: Vec<ChangeList>,
    runs: Vec<Run>,
    run_requests: Vec<RunRequest>,
    now: Timestamp,
}

impl Fx {
    fn new(project: &str, groups: Vec<ConfigGroup>) -> Fx {
        let names = groups.iter().map(|g| g.name.clone()).collect();
        Fx {
            project: project.to_string(),
            pstate: PState {
                luci_project: project.to_string(),
                status: 1,
                config_hash: "hash".to_string(),
                config_group_names: names,
                ..PState::default()
            },
            config: ProjectConfig {
                state: 1,
                hash: "hash".to_string(),
                eversion: 1,
                config_groups: groups,
            },
            cls: Vec::new(),
            runs: Vec::new(),
            run_requests: Vec::new(),
            now: ts(T0),
        }
    }

    /// The fixture of the original triage_test.go (project v8).
    fn k() -> Fx {
        Fx::new(
            "v8",
            vec![
                group("singular"),
                combinable("combinable", STABILIZATION_SECONDS),
                group("another"),
                with_npr(group("newPatchsetRun")),
                with_npr(combinable("newPatchsetRunCombi", STABILIZATION_SECONDS)),
            ],
        )
    }

    fn view(&self) -> PmView<'_> {
        PmView {
            luci_project: &self.project,
            pstate: &self.pstate,
            config: &self.config,
            cls: &self.cls,
            runs: &self.runs,
            run_requests: &self.run_requests,
            now: self.now,
            run_ids: None,
        }
    }

    fn triage(&self, c: &Component) -> Result<TriageResult, TriageError> {
        let before = self.pstate.clone();
        let res = triage(c, &self.view());
        assert_eq!(self.pstate, before, "the PM state must not change");
        res
    }

    fn must_triage(&self, c: &Component) -> TriageResult {
        self.triage(c).expect("triage must succeed")
    }

    fn set_pcl(&mut self, pcl: Pcl) {
        self.pstate.pcls.retain(|p| p.clid != pcl.clid);
        self.pstate.pcls.push(pcl);
        self.pstate.pcls.sort_by_key(|p| p.clid);
    }

    fn pcl_mut(&mut self, clid: i64) -> &mut Pcl {
        self.pstate
            .pcls
            .iter_mut()
            .find(|p| p.clid == clid)
            .expect("PCL exists")
    }

    fn set_cl(&mut self, cl: ChangeList) {
        self.cls.retain(|c| c.clid != cl.clid);
        self.cls.push(cl);
        self.cls.sort_by_key(|c| c.clid);
    }

    fn cl_mut(&mut self, clid: i64) -> &mut ChangeList {
        self.cls
            .iter_mut()
            .find(|c| c.clid == clid)
            .expect("CL exists")
    }

    fn set_run(&mut self, r: Run) {
        self.runs.retain(|x| x.id != r.id);
        self.runs.push(r);
        self.runs.sort_by(|a, b| b.id.cmp(&a.id));
    }

    fn add_purging(&mut self, p: PurgingCl) {
        self.pstate.purging_cls.push(p);
        self.pstate.purging_cls.sort_by_key(|p| p.clid);
    }

    fn add_op(&mut self, op: TriggeringClDeps) {
        self.pstate.triggering_cl_deps.push(op);
        self.pstate
            .triggering_cl_deps
            .sort_by_key(|t| t.origin_clid);
    }

    /// The original's `putPCL`: a CL owned by user-1, CQ-voted by user-2 at
    /// `trigger_seconds` in `mode` ("" = no vote, NEW_PATCHSET_RUN = no vote),
    /// with a new-patchset trigger iff the group has a NEW_PATCHSET_RUN builder.
    fn put_pcl(
        &mut self,
        clid: i64,
        cg: i32,
        mode: &str,
        trigger_seconds: i64,
        deps: &[Dep],
    ) -> Pcl {
        let group_has_npr = self.config.config_groups[cg as usize]
            .new_patchset_run
            .is_some();
        let cq = match mode {
            DRY_RUN | FULL_RUN => Some(voter_trigger(mode, trigger_seconds)),
            "" | NEW_PATCHSET_RUN => None,
            other => panic!("unsupported mode {other}"),
        };
        if mode == NEW_PATCHSET_RUN {
            assert!(group_has_npr, "NEW_PATCHSET_RUN needs an NPR group");
        }
        let npr = group_has_npr.then(|| Trigger {
            mode: NEW_PATCHSET_RUN.to_string(),
            // The patchset's upload time.
            time: Some(ts(T0 - 3600)),
            email: "user-1@example.com".to_string(),
            gerrit_account_id: 1,
            ..Trigger::default()
        });
        let mut votes = Vec::new();
        if let Some(t) = &cq {
            votes.push(Vote {
                label: "Commit-Queue".to_string(),
                value: if t.mode == FULL_RUN { 2 } else { 1 },
                email: t.email.clone(),
                account_id: t.gerrit_account_id,
                time: t.time,
            });
        }
        self.set_cl(ChangeList {
            clid,
            eversion: 1,
            snapshot: Some(Snapshot {
                luci_project: self.project.clone(),
                patchset: 1,
                min_equivalent_patchset: 1,
                deps: deps.to_vec(),
                gerrit: Some(GerritChange {
                    host: HOST.to_string(),
                    change: clid,
                    project: "infra/infra".to_string(),
                    r#ref: "refs/heads/main".to_string(),
                    status: ChangeStatus::New as i32,
                    owner_email: "user-1@example.com".to_string(),
                    owner_account_id: 1,
                    current_revision: format!("rev-{clid:06}-001"),
                    votes,
                    ..GerritChange::default()
                }),
                ..Snapshot::default()
            }),
            ..ChangeList::default()
        });
        let triggers = (cq.is_some() || npr.is_some()).then_some(Triggers {
            cq_vote_trigger: cq,
            new_patchset_run_trigger: npr,
        });
        let p = Pcl {
            clid,
            eversion: 1,
            status: pcl::Status::Ok as i32,
            config_group_indexes: vec![cg],
            deps: deps.to_vec(),
            triggers,
            ..Pcl::default()
        };
        self.set_pcl(p.clone());
        p
    }
}

// ---------------------------------------------------------------------------
// §1.1 RunID.

/// The §1.1 vector (also a scenario in tests/triage_snapshots.rs), and the
/// id the original's older test computed with voter account 1.
#[test]
fn run_id_of_the_section_1_1_inputs_for_either_voter_account() {
    // The inputs of the original triage_test "with already existing Run":
    // CLs 32 (CQ+2 at T0-1s) and 33 (CQ+2 at T0) on g-review.example.com,
    // patchset 1 each (revisions "rev-0000NN-001"), voter account 2.
    let t32 = voter_trigger(FULL_RUN, T0 - 1);
    let t33 = voter_trigger(FULL_RUN, T0);
    let cls = [
        RunIdCl {
            host: HOST,
            change: 33,
            current_revision: "rev-000033-001",
            trigger: Some(&t33),
        },
        RunIdCl {
            host: HOST,
            change: 32,
            current_revision: "rev-000032-001",
            trigger: Some(&t32),
        },
    ];
    assert_eq!(
        run_id::run_id("v8", &ts(T0), &cls).unwrap(),
        "v8/9042327596854-1-42e0a59099a0f673"
    );
    // The older version of the test used voter account 1.
    let (mut a, mut b) = (t32.clone(), t33.clone());
    a.gerrit_account_id = 1;
    b.gerrit_account_id = 1;
    let cls1 = [
        RunIdCl {
            trigger: Some(&a),
            ..cls[1]
        },
        RunIdCl {
            trigger: Some(&b),
            ..cls[0]
        },
    ];
    assert_eq!(
        run_id::run_id("v8", &ts(T0), &cls1).unwrap(),
        "v8/9042327596854-1-690d9e2cc74b34aa"
    );
}

#[test]
fn run_id_inverse_timestamp_limits() {
    // 2014-05-09T01:26:00Z is exactly 2^63-1 ns before the end of the world:
    // the original panics ("overflow") there and before.
    assert!(run_id::inverse_ts_ms(&ts(1_399_598_760)).is_err());
    assert_eq!(
        run_id::inverse_ts_ms(&Timestamp {
            seconds: 1_399_598_760,
            nanos: 1
        })
        .unwrap(),
        9_223_372_036_854
    );
    // The end of the world itself and just after (less than 1ms) give 0.
    let eow = Timestamp {
        seconds: 10_622_970_796,
        nanos: 854_775_807,
    };
    assert_eq!(run_id::inverse_ts_ms(&eow).unwrap(), 0);
    assert!(run_id::inverse_ts_ms(&ts(10_622_970_800)).is_err());
    assert_eq!(run_id::to_hex(&[0x00, 0xab, 0x0f]), "00ab0f");
}

#[test]
fn run_id_digest_without_trigger_and_operation_id() {
    let cl = RunIdCl {
        host: "h",
        change: 1,
        current_revision: "r",
        trigger: None,
    };
    let id = run_id::run_id("p", &ts(T0), &[cl]).unwrap();
    assert!(id.starts_with("p/9042327596854-1-"));
    // Close to the end of the world the inverse timestamp is zero-padded.
    let late = Timestamp {
        seconds: 10_622_970_795,
        nanos: 854_775_807,
    };
    let padded = run_id::run_id("p", &late, &[cl]).unwrap();
    assert!(padded.starts_with("p/0000000001000-1-"), "{padded}");
    assert!(
        padded.ends_with(&id["p/9042327596854-1-".len()..]),
        "{padded}"
    );
    assert_eq!(id.len(), "p/9042327596854-1-".len() + 16);
    let op = run_id::operation_id("p", &id);
    assert!(op.starts_with("PM-") && op.len() == 19, "{op}");
    assert_eq!(op, run_id::operation_id("p", &id));
    assert_ne!(op, run_id::operation_id("q", &id));
}

// ---------------------------------------------------------------------------
// States the fold never produces, and bug states.

/// The PCL of the original "Purges CLs" tests: 33 DRY_RUN with an
/// owner_lacks_email reason on its CQ trigger.
fn owner_lacks_email_fixture() -> (Fx, Component) {
    let mut fx = Fx::k();
    fx.set_pcl(Pcl {
        clid: 33,
        triggers: cq_triggers(trigger(DRY_RUN, T0)),
        purge_reasons: vec![reason(
            Kind::OwnerLacksEmail(true),
            on_cq(trigger(DRY_RUN, T0)),
        )],
        ..Pcl::default()
    });
    (fx, component(&[33], vec![], false))
}

/// K5's "eversion mismatch ⇒ OutdatedPmState": the fold updates PCLs from
/// the CL versions of an invocation before triage, so it never shows the
/// triager a CL newer than its PCL.
#[test]
fn outdated_pm_state_when_a_cl_changed_since_its_pcl() {
    for (cg, mode) in [(NPR, NEW_PATCHSET_RUN), (SING, DRY_RUN)] {
        let mut fx = Fx::k();
        fx.put_pcl(33, cg, mode, T0, &[]);
        fx.cl_mut(33).eversion = 2;
        let err = fx
            .triage(&component(&[33], vec![], true))
            .expect_err("must fail");
        match err {
            TriageError::OutdatedPmState(msg) => {
                assert!(msg.contains("EVersion changed 1 => 2"), "{msg}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

// §7.5.1 fields of the Runs to create.

#[test]
fn creator_owner_without_email_is_a_bug_not_a_panic() {
    let mut fx = Fx::k();
    fx.put_pcl(33, SING, DRY_RUN, T0, &[]);
    fx.cl_mut(33)
        .snapshot
        .as_mut()
        .unwrap()
        .gerrit
        .as_mut()
        .unwrap()
        .owner_email
        .clear();
    assert!(matches!(
        fx.triage(&component(&[33], vec![], true)),
        Err(TriageError::Bug(_))
    ));
}

#[test]
fn creator_unknown_cl_entity_is_outdated_pm_state() {
    let mut fx = Fx::k();
    fx.put_pcl(33, SING, DRY_RUN, T0, &[]);
    fx.cls.clear();
    assert!(matches!(
        fx.triage(&component(&[33], vec![], true)),
        Err(TriageError::OutdatedPmState(_))
    ));
}

#[test]
fn creator_identities_and_options_helpers() {
    assert_eq!(
        user_identity("a.b+c%d@x-y.z").unwrap(),
        "user:a.b+c%d@x-y.z"
    );
    assert!(user_identity("").is_err());
    assert!(user_identity("no-at-sign").is_err());
    assert!(user_identity("a@b@c").is_err());
    assert!(user_identity("sp ace@x.y").is_err());
    assert!(user_identity("@x.y").is_err());
    assert!(user_identity("a@").is_err());
    assert!(user_identity("\u{e9}@x.y").is_err());
    assert!(user_identity("a@x\u{e9}.y").is_err());
    let mut o = RunOptions::default();
    merge_options(&mut o, None);
    assert_eq!(o, RunOptions::default());
}

// ---------------------------------------------------------------------------
// Per-CL triage (`triage_cls`) on bug states, and deps triage
// (`triage_deps`): its intermediate results (the categories of each dep,
// submitted positions, the latest dep vote, the too-many rule's interplay
// with the other categories) show in no action.

fn l_fixture() -> Fx {
    Fx::new(
        "test",
        vec![
            group("singular"),
            ConfigGroup {
                combine_cls: Some(CombineCls::default()),
                ..group("combinable")
            },
            group("another"),
            with_npr(group("npr")),
        ],
    )
}
const L_SING: i32 = 0;
const L_COMB: i32 = 1;
const L_ANOTHER: i32 = 2;

fn l_pcl(clid: i64, cg: i32, triggers: Option<Triggers>, deps: Vec<Dep>) -> Pcl {
    Pcl {
        clid,
        status: pcl::Status::Ok as i32,
        config_group_indexes: vec![cg],
        triggers,
        deps,
        ..Pcl::default()
    }
}

#[test]
fn l_untriaged_bug_states_are_errors_not_panics() {
    // A triggered CL outside any Run must be OK and not submitted.
    let mut fx = l_fixture();
    let mut p = l_pcl(1, L_SING, cq_triggers(trigger(DRY_RUN, T0)), vec![]);
    p.submitted = true;
    fx.set_pcl(p);
    assert!(matches!(
        triage_cls(&component(&[1], vec![], false), &fx.view()),
        Err(TriageError::Bug(_))
    ));
    // A CL of the component without a PCL.
    assert!(matches!(
        triage_cls(&component(&[7], vec![], false), &fx.view()),
        Err(TriageError::Bug(_))
    ));
    // A custom mode in a component Run is a CQ-vote Run, not a bug
    // (luci-pm-head.md R5).
    let fx = l_fixture();
    let mut fx2 = fx;
    fx2.set_pcl(l_pcl(1, L_SING, None, vec![]));
    let cls = triage_cls(
        &component(&[1], vec![prun("r", "CUSTOM", &[1])], false),
        &fx2.view(),
    )
    .expect("a custom-mode Run triages fine");
    assert!(cls[&1].has_incomplete_run("CUSTOM"));
    assert!(!cls[&1].cq_ready && !cls[&1].npr_ready);
}

// §7.4 deps triage.

#[test]
fn deps_categories_of_section_7_4() {
    for cg in [L_SING, L_COMB] {
        let mut fx = l_fixture();
        let dry = |s| cq_triggers(trigger(DRY_RUN, T0 + s));
        fx.set_pcl(Pcl {
            clid: 31,
            status: pcl::Status::Unwatched as i32,
            ..Pcl::default()
        });
        fx.set_pcl(Pcl {
            clid: 32,
            status: pcl::Status::Deleted as i32,
            ..Pcl::default()
        });
        fx.set_pcl(Pcl {
            clid: 33,
            status: pcl::Status::Unknown as i32,
            ..Pcl::default()
        });
        let mut sub = l_pcl(34, L_ANOTHER, None, vec![]);
        sub.submitted = true;
        fx.set_pcl(sub);
        fx.set_pcl(l_pcl(35, L_ANOTHER, dry(3), vec![]));
        let mut many = l_pcl(36, cg, dry(2), vec![]);
        many.config_group_indexes = vec![L_ANOTHER, cg];
        fx.set_pcl(many);
        fx.set_pcl(l_pcl(37, cg, dry(1), vec![]));
        let deps = vec![
            soft(30),
            soft(31),
            hard(32),
            soft(33),
            hard(34),
            soft(35),
            hard(36),
            soft(37),
        ];
        let p = l_pcl(40, cg, dry(0), deps);
        let td = triage_deps(&p, cg, &fx.view()).unwrap();
        assert_eq!(td.not_yet_loaded, vec![soft(30), soft(33)]);
        assert_eq!(td.submitted, vec![hard(34)]);
        assert_eq!(td.submitted_positions, vec![4]);
        assert_eq!(
            td.invalid_deps,
            Some(InvalidDeps {
                unwatched: vec![soft(31), hard(32)],
                wrong_config_group: vec![soft(35), hard(36)],
                ..InvalidDeps::default()
            })
        );
        assert_eq!(
            td.last_cq_vote_triggered,
            Some(i128::from(T0 + 3) * 1_000_000_000)
        );
        let open: Vec<i64> = td.not_submitted(&p).map(|d| d.clid).collect();
        assert_eq!(open, vec![30, 31, 32, 33, 35, 36, 37]);
    }
}

#[test]
fn deps_too_many_only_when_everything_else_is_fine() {
    let mut fx = l_fixture();
    let mut deps = Vec::new();
    for clid in 1001..=1241 {
        fx.set_pcl(l_pcl(
            clid,
            L_SING,
            cq_triggers(trigger(DRY_RUN, T0)),
            vec![],
        ));
        deps.push(soft(clid));
    }
    let p = l_pcl(
        2000,
        L_SING,
        cq_triggers(trigger(DRY_RUN, T0)),
        deps.clone(),
    );
    let td = triage_deps(&p, L_SING, &fx.view()).unwrap();
    assert_eq!(
        td.invalid_deps,
        Some(InvalidDeps {
            too_many: Some(TooMany {
                actual: 241,
                max_allowed: 240
            }),
            ..InvalidDeps::default()
        })
    );
    // One submitted dep brings it back to the limit.
    fx.pcl_mut(1001).submitted = true;
    assert!(triage_deps(&p, L_SING, &fx.view()).unwrap().ok());
    // A not-yet-loaded dep suppresses the too-many verdict.
    fx.pcl_mut(1001).submitted = false;
    let mut deps2 = deps;
    deps2.push(soft(5000));
    let p2 = l_pcl(2000, L_SING, cq_triggers(trigger(DRY_RUN, T0)), deps2);
    assert!(triage_deps(&p2, L_SING, &fx.view()).unwrap().ok());
}

#[test]
fn deps_singular_and_combinable_specialities() {
    let mut fx = l_fixture();
    fx.set_pcl(l_pcl(31, L_SING, cq_triggers(trigger(DRY_RUN, T0)), vec![]));
    fx.set_pcl(l_pcl(32, L_SING, None, vec![]));
    fx.set_pcl(l_pcl(
        33,
        L_SING,
        cq_triggers(trigger(FULL_RUN, T0)),
        vec![],
    ));
    // Dry run does not care about deps' triggers.
    let p = l_pcl(
        40,
        L_SING,
        cq_triggers(trigger(DRY_RUN, T0)),
        vec![soft(31), hard(32)],
    );
    let td = triage_deps(&p, L_SING, &fx.view()).unwrap();
    assert!(td.ok() && td.need_to_trigger.is_empty());
    // Full run: HARD deps without CQ+2 need the chained vote (no dogfood
    // gate); SOFT deps are invalid.
    let deps = vec![hard(31), hard(32), hard(33), soft(33)];
    let p = l_pcl(40, L_SING, cq_triggers(voter_trigger(FULL_RUN, T0)), deps);
    let td = triage_deps(&p, L_SING, &fx.view()).unwrap();
    assert_eq!(td.need_to_trigger, vec![hard(31), hard(32)]);
    let soft_invalid = Some(InvalidDeps {
        single_full_deps: vec![soft(33)],
        ..InvalidDeps::default()
    });
    assert_eq!(td.invalid_deps, soft_invalid);
    // With allow_submit_with_open_deps HARD deps are OK without votes; SOFT
    // deps stay invalid (luci-pm-head.md R2).
    fx.config.config_groups[0].allow_submit_with_open_deps = true;
    let td = triage_deps(&p, L_SING, &fx.view()).unwrap();
    assert!(td.need_to_trigger.is_empty());
    assert_eq!(td.invalid_deps, soft_invalid);

    // Combinable: a dep must have the same mode.
    let mut fx = l_fixture();
    fx.set_pcl(l_pcl(31, L_COMB, cq_triggers(trigger(DRY_RUN, T0)), vec![]));
    fx.set_pcl(l_pcl(32, L_COMB, None, vec![]));
    fx.set_pcl(l_pcl(
        33,
        L_COMB,
        cq_triggers(trigger(FULL_RUN, T0)),
        vec![],
    ));
    let p = l_pcl(
        40,
        L_COMB,
        cq_triggers(trigger(DRY_RUN, T0)),
        vec![hard(31), hard(32), soft(33)],
    );
    let td = triage_deps(&p, L_COMB, &fx.view()).unwrap();
    assert_eq!(
        td.invalid_deps,
        Some(InvalidDeps {
            combinable_untriggered: vec![hard(32)],
            combinable_mismatched_mode: vec![soft(33)],
            ..InvalidDeps::default()
        })
    );
    assert!(td.need_to_trigger.is_empty());
}

// ---------------------------------------------------------------------------
// Helpers of the Run creator on inputs the fold never gives them. N1 and N2
// themselves are scenarios in tests/triage_snapshots.rs.

fn n_immediate(pcls: &[(i64, Vec<Dep>)], of: i64) -> Vec<i64> {
    let mut fx = Fx::new("test", vec![group("g")]);
    for (clid, deps) in pcls {
        fx.set_pcl(l_pcl(*clid, 0, None, deps.clone()));
    }
    let view = fx.view();
    let pcl = view.pcl(of).unwrap();
    find_immediate_hard_deps(pcl, &BTreeMap::new(), &view).unwrap()
}

/// SOFT deps are never immediate HARD deps. Through the fold a FULL_RUN
/// with a SOFT dep is purged (`single_full_deps`) before dep Runs matter.
#[test]
fn immediate_hard_deps_skip_soft_deps() {
    let softs = vec![(1, vec![]), (2, vec![soft(1)]), (3, vec![soft(1), soft(2)])];
    assert_eq!(n_immediate(&softs, 2), Vec::<i64>::new());
    assert_eq!(n_immediate(&softs, 3), Vec::<i64>::new());

    let mixed = vec![
        (1, vec![]),
        (9, vec![]),
        (2, vec![hard(1)]),
        (3, vec![hard(1), hard(2), soft(9)]),
        (4, vec![hard(1), hard(2), hard(3)]),
    ];
    assert_eq!(n_immediate(&mixed, 2), vec![1]);
    assert_eq!(n_immediate(&mixed, 3), vec![2]);
    assert_eq!(n_immediate(&mixed, 4), vec![3]);
}

/// The quota payer of a CL whose owner is empty or anonymous is a bug:
/// through the fold such a CL has an `owner_lacks_email` purge reason and
/// never reaches the Run creator.
#[test]
fn quota_payer_of_an_empty_or_anonymous_owner_is_a_bug() {
    let triggerer = "user:user-2@example.com";
    let auto_submit = Snapshot {
        gerrit: Some(GerritChange {
            votes: vec![Vote {
                label: "Auto-Submit".into(),
                value: 1,
                ..Vote::default()
            }],
            ..GerritChange::default()
        }),
        ..Snapshot::default()
    };
    let pay = |t: &Trigger, o: &str, tr: &str| quota_payer(1234, o, tr, t, Some(&auto_submit));
    // Empty or anonymous owner: a bug.
    let t = trigger(FULL_RUN, T0);
    match pay(&t, "", triggerer) {
        Err(TriageError::Bug(m)) => assert!(m.contains("empty owner"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    match pay(&t, "anonymous:anonymous", triggerer) {
        Err(TriageError::Bug(m)) => assert!(m.contains("the CL owner is anonymous"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// §7.2 NewValue rules.

#[test]
fn new_value_is_absent_when_nothing_changes() {
    let mut fx = Fx::k();
    fx.put_pcl(33, SING, DRY_RUN, T0, &[]);
    let c = component(&[33], vec![prun("r", DRY_RUN, &[33])], false);
    assert_eq!(fx.must_triage(&c).new_value, None);
    // A stale decision time is cleared.
    let mut stale = c.clone();
    stale.decision_time = Some(ts(T0 - 10));
    assert_eq!(fx.must_triage(&stale).new_value, Some(c));
}

#[test]
fn new_value_keeps_an_unchanged_decision_time_quiet() {
    let (mut fx, c) = owner_lacks_email_fixture();
    fx.pcl_mut(33).config_group_indexes = vec![COMB];
    let mut c = c;
    c.decision_time = Some(ts(T0 + STABILIZATION_SECONDS));
    assert_eq!(fx.must_triage(&c).new_value, None);
}

// ---------------------------------------------------------------------------
// Properties.

/// A random CL of a random component (indexes refer to other CLs).
#[derive(Debug, Clone)]
struct ClSpec {
    status: i32,
    groups: Option<Vec<i32>>,
    cq: Option<(usize, i64)>,
    npr: Option<i64>,
    deps: Vec<(usize, i32)>,
    submitted: bool,
    outdated: bool,
    purge_reason: Option<u8>,
    purging: Option<u8>,
    op: Option<Vec<usize>>,
    eversion_delta: i64,
    auto_submit: bool,
    owner_email: bool,
    stack: bool,
}

#[derive(Debug, Clone)]
struct CompSpec {
    group: i32,
    cls: Vec<ClSpec>,
    runs: Vec<(usize, Vec<usize>)>,
    triage_required: bool,
    decision: Option<i64>,
    now_offset: i64,
    known_status: Vec<(i32, i64)>,
}

const MODES: [&str; 5] = [
    DRY_RUN,
    FULL_RUN,
    "QUICK_DRY_RUN",
    NEW_PATCHSET_RUN,
    "CUSTOM",
];

/// `Some` with probability `p`, or always `None` for a quiet component.
fn maybe<S>(quiet: bool, p: f64, s: S) -> BoxedStrategy<Option<S::Value>>
where
    S: Strategy + 'static,
    S::Value: Clone + std::fmt::Debug + 'static,
{
    if quiet {
        Just(None).boxed()
    } else {
        prop::option::weighted(p, s).boxed()
    }
}

fn cl_spec(n: usize, quiet: bool) -> impl Strategy<Value = ClSpec> {
    let idx = 0..n + 2; // n and n+1 are CLs outside the component
    (
        prop_oneof![20 => Just(0i32), 1 => 1i32..=if quiet { 3 } else { 4 }],
        prop_oneof![
            8 => Just(None),
            1 => prop::collection::vec(prop_oneof![8 => 0i32..5, 1 => 5i32..7], 0..3).prop_map(Some),
        ],
        maybe(quiet, 0.7, (prop_oneof![4 => Just(0usize), 5 => Just(1usize), 1 => Just(2usize), 1 => Just(4usize)], -900i64..60)),
        maybe(quiet, 0.3, -900i64..60),
        prop::collection::vec((idx.clone(), prop_oneof![10 => 1i32..3, 1 => Just(0i32)]), 0..4),
        prop::bool::weighted(0.03),
        prop::bool::weighted(0.1),
        maybe(quiet, 0.15, 0u8..3),
        prop::option::weighted(0.1, 0u8..3),
        prop::option::weighted(0.1, prop::collection::vec(idx, 0..3)),
        (
            prop_oneof![20 => Just(0i64), 1 => Just(1i64)],
            any::<bool>(),
            prop::bool::weighted(0.98),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                status,
                groups,
                cq,
                npr,
                deps,
                submitted,
                outdated,
                purge_reason,
                purging,
                op,
                (eversion_delta, auto_submit, owner_email, stack),
            )| ClSpec {
                status,
                groups,
                cq,
                npr,
                deps,
                submitted,
                outdated,
                purge_reason,
                purging,
                op,
                eversion_delta,
                auto_submit,
                owner_email,
                stack,
            },
        )
}

fn comp_spec(quiet: bool) -> impl Strategy<Value = CompSpec> {
    (1usize..7).prop_flat_map(move |n| {
        (
            prop::collection::vec(cl_spec(n, quiet), n),
            prop::collection::vec(
                (
                    if quiet {
                        (0usize..4).boxed()
                    } else {
                        prop_oneof![12 => 0usize..4, 1 => Just(4usize)].boxed()
                    },
                    prop::collection::vec(0..n, 1..3),
                ),
                0..3,
            ),
            if quiet {
                Just(false).boxed()
            } else {
                any::<bool>().boxed()
            },
            prop::option::of(-100i64..1000),
            0i64..1200,
            prop::collection::vec(
                (prop_oneof![Just(2), Just(65), Just(67)], -300i64..10),
                0..4,
            ),
            0i32..5,
        )
            .prop_map(
                |(cls, runs, triage_required, decision, now_offset, known_status, group)| {
                    CompSpec {
                        group,
                        cls,
                        runs,
                        triage_required,
                        decision,
                        now_offset,
                        known_status,
                    }
                },
            )
    })
}

/// Builds a project and a component from a spec (CLIDs are 1..=n; n+1 and
/// n+2 exist only as PCLs outside the component).
fn build(spec: &CompSpec) -> (Fx, Component) {
    let mut fx = Fx::k();
    fx.now = ts(T0 + spec.now_offset);
    let n = spec.cls.len();
    let clid = |i: usize| i as i64 + 1;
    for (i, s) in spec.cls.iter().enumerate() {
        let cq = s.cq.map(|(m, dt)| voter_trigger(MODES[m], T0 + dt));
        let npr = s.npr.map(|dt| Trigger {
            email: "user-1@example.com".into(),
            gerrit_account_id: 1,
            ..trigger(NEW_PATCHSET_RUN, T0 + dt)
        });
        let triggers = (cq.is_some() || npr.is_some()).then(|| Triggers {
            cq_vote_trigger: cq.clone(),
            new_patchset_run_trigger: npr.clone(),
        });
        let apply = |k: u8| match k {
            0 => purge_reason::ApplyTo::AllActiveTriggers(true),
            1 => on_cq(cq.clone().unwrap_or_default()),
            _ => on_npr(npr.clone().unwrap_or_default()),
        };
        let deps: Vec<Dep> = if s.stack {
            // A git stack: every CL below is a HARD dep.
            (0..i).map(|j| hard(clid(j))).collect()
        } else {
            s.deps
                .iter()
                .map(|&(j, k)| Dep {
                    clid: clid(j),
                    kind: k,
                })
                .collect()
        };
        fx.set_pcl(Pcl {
            clid: clid(i),
            eversion: 1,
            status: s.status,
            config_group_indexes: s.groups.clone().unwrap_or_else(|| vec![spec.group]),
            deps: deps.clone(),
            submitted: s.submitted,
            triggers,
            purge_reasons: s
                .purge_reason
                .filter(|_| cq.is_some() || npr.is_some())
                .map(|k| reason(Kind::OwnerLacksEmail(true), apply(k)))
                .into_iter()
                .collect(),
            outdated: s.outdated.then(Default::default),
            ..Pcl::default()
        });
        if let Some(k) = s.purging {
            fx.add_purging(PurgingCl {
                clid: clid(i),
                apply_to: Some(match k {
                    0 => purging_cl::ApplyTo::AllActiveTriggers(true),
                    1 => purging_cl::ApplyTo::Triggers(Triggers {
                        cq_vote_trigger: cq.clone(),
                        new_patchset_run_trigger: None,
                    }),
                    _ => purging_cl::ApplyTo::Triggers(Triggers {
                        cq_vote_trigger: None,
                        new_patchset_run_trigger: npr.clone(),
                    }),
                }),
                ..PurgingCl::default()
            });
        }
        if let Some(op) = &s.op {
            fx.add_op(TriggeringClDeps {
                origin_clid: clid(i),
                dep_clids: op.iter().map(|&j| clid(j)).collect(),
                trigger: cq.clone(),
                ..TriggeringClDeps::default()
            });
        }
        let mut votes = Vec::new();
        if s.auto_submit {
            votes.push(Vote {
                label: "Auto-Submit".into(),
                value: 1,
                ..Vote::default()
            });
        }
        fx.set_cl(ChangeList {
            clid: clid(i),
            eversion: 1 + s.eversion_delta,
            snapshot: Some(Snapshot {
                deps,
                gerrit: Some(GerritChange {
                    host: HOST.into(),
                    change: clid(i),
                    owner_email: if s.owner_email {
                        "user-1@example.com".into()
                    } else {
                        String::new()
                    },
                    current_revision: format!("rev-{i}"),
                    votes,
                    ..GerritChange::default()
                }),
                ..Snapshot::default()
            }),
            ..ChangeList::default()
        });
    }
    // CLs outside the component: one OK dep-only CL, one UNKNOWN.
    fx.set_pcl(Pcl {
        clid: clid(n),
        eversion: 1,
        status: 0,
        config_group_indexes: vec![SING],
        ..Pcl::default()
    });
    fx.set_pcl(Pcl {
        clid: clid(n + 1),
        eversion: 1,
        status: pcl::Status::Unknown as i32,
        ..Pcl::default()
    });
    let mut pruns: Vec<PRun> = spec
        .runs
        .iter()
        .enumerate()
        .map(|(k, (m, members))| {
            let mut clids: Vec<i64> = members.iter().map(|&j| clid(j)).collect();
            clids.sort();
            clids.dedup();
            prun(&format!("test/run-{k}"), MODES[*m], &clids)
        })
        .collect();
    pruns.sort_by(|a, b| a.id.cmp(&b.id));
    let clids: Vec<i64> = (0..n).map(clid).collect();
    let mut c = component(&clids, pruns, spec.triage_required);
    c.decision_time = spec.decision.map(|d| ts(T0 + d));
    (fx, c)
}

fn triage_no_panic(fx: &Fx, c: &Component) -> Result<TriageResult, TriageError> {
    let view = fx.view();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| triage(c, &view)))
        .expect("the triager must never panic")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn prop_never_panics_and_is_deterministic(spec in comp_spec(false)) {
        let (mut fx, c) = build(&spec);
        let first = triage_no_panic(&fx, &c);
        let second = triage_no_panic(&fx, &c);
        prop_assert_eq!(&first, &second);
        if let Ok(res) = &first {
            if c.triage_required {
                prop_assert!(res.new_value.is_some());
            }
            // Runs are CL-wise disjoint per trigger kind, and purges unique.
            let mut seen = std::collections::BTreeSet::new();
            for rc in res.runs_to_create.iter().filter(|r| r.mode != NEW_PATCHSET_RUN) {
                for cl in &rc.input_cls {
                    prop_assert!(seen.insert(cl.clid));
                }
            }
            let purged: std::collections::BTreeSet<i64> =
                res.cls_to_purge.iter().map(|p| p.purging_cl.as_ref().unwrap().clid).collect();
            prop_assert_eq!(purged.len(), res.cls_to_purge.len());
            // Re-triage with the requested Runs known in random states.
            for (k, rc) in res.runs_to_create.iter().enumerate() {
                if let Some(&(status, end)) = spec.known_status.get(k) {
                    fx.set_run(Run {
                        id: rc.run_id.clone(),
                        status,
                        end_time: (status & 64 != 0).then(|| ts(fx.now.seconds + end)),
                        ..Run::default()
                    });
                } else {
                    fx.run_requests.push(RunRequest {
                        run_id: rc.run_id.clone(),
                        requested_at: Some(fx.now),
                    });
                    fx.run_requests.sort_by(|a, b| a.run_id.cmp(&b.run_id));
                    fx.run_requests.dedup_by(|a, b| a.run_id == b.run_id);
                }
            }
            let again = triage_no_panic(&fx, &c);
            prop_assert_eq!(&again, &triage_no_panic(&fx, &c));
        }
    }

    #[test]
    fn prop_quiet_component_yields_no_actions(spec in comp_spec(true)) {
        let (fx, c) = build(&spec);
        let res = triage_no_panic(&fx, &c);
        let res = res.expect("a component without triggers triages fine");
        prop_assert!(res.runs_to_create.is_empty());
        prop_assert!(res.cls_to_purge.is_empty());
        prop_assert!(res.cls_to_trigger_deps.is_empty());
        prop_assert_eq!(&Ok(res), &triage_no_panic(&fx, &c));
    }
}

#[test]
fn purge_of_an_untriggered_cl_is_a_bug_not_a_panic() {
    // §7.6: "CL not triggered at all ⇒ crash" (here: an error).
    let mut fx = Fx::k();
    fx.set_pcl(Pcl {
        clid: 33,
        config_group_indexes: vec![SING],
        purge_reasons: vec![reason(
            Kind::OwnerLacksEmail(true),
            purge_reason::ApplyTo::AllActiveTriggers(true),
        )],
        ..Pcl::default()
    });
    match fx.triage(&component(&[33], vec![], true)) {
        Err(TriageError::Bug(m)) => assert!(m.contains("is not triggered"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
}
