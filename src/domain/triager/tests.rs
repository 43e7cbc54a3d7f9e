//! Tests of the triager: the acceptance scenarios of domain/luci-pm.md §11
//! (groups K, L, M, N; the scenario id starts each test name), the RunID
//! vector of §1.1, further cases of the original's triager tests, and
//! properties (no panics, determinism, quiet components stay quiet).

use std::collections::BTreeMap;

use pbjson_types::{Duration, Timestamp};
use proptest::prelude::*;

use super::cls::{triage_cls, ClInfo};
use super::creator::{merge_options, quota_payer, user_identity};
use super::deps::triage_deps;
use super::run_id::{self, RunIdCl};
use super::runs::find_immediate_hard_deps;
use super::{triage, DRY_RUN, FULL_RUN, NEW_PATCHSET_RUN};
use crate::domain::triage_api::{PmView, TriageError, TriageResult};
use crate::proto::cl_error::invalid_deps::TooMany;
use crate::proto::cl_error::{InvalidDeps, Kind, WatchedByManyConfigGroups};
use crate::proto::{
    dep::DepKind, gerrit_change::ChangeStatus, pcl, purge_reason, purging_cl, run, ChangeList,
    ClError, CombineCls, Component, ConfigGroup, CreateRun, Dep, Footer, GerritChange, InputCl,
    Mode, NewPatchsetRun, PRun, PState, Pcl, ProjectConfig, PurgeCl, PurgeReason, PurgingCl, Run,
    RunOptions, RunRequest, Snapshot, Trigger, TriggeringClDeps, Triggers, Vote,
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
const ANOTHER: i32 = 2;
const NPR: i32 = 3;
const NPR_COMB: i32 = 4;
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

fn mark_triaged(c: &Component) -> Component {
    Component {
        triage_required: false,
        ..c.clone()
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

    fn add_seconds(&mut self, seconds: i64) {
        self.now.seconds += seconds;
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
        self.runs.sort_by(|a, b| a.id.cmp(&b.id));
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

fn clids_of(rc: &CreateRun) -> Vec<i64> {
    rc.input_cls.iter().map(|c| c.clid).collect()
}

fn cg_name(rc: &CreateRun) -> &str {
    rc.config_group_id.split_once('/').map_or("", |(_, n)| n)
}

fn decision_seconds(res: &TriageResult) -> Option<i64> {
    res.new_value
        .as_ref()
        .and_then(|c| c.decision_time)
        .map(|t| t.seconds)
}

fn triaged_by_new_value(res: &TriageResult) -> bool {
    res.new_value.as_ref().is_some_and(|c| !c.triage_required)
}

// ---------------------------------------------------------------------------
// §1.1 RunID.

#[test]
fn run_id_vector_of_section_1_1() {
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
    assert_eq!(id.len(), "p/9042327596854-1-".len() + 16);
    let op = run_id::operation_id("p", &id);
    assert!(op.starts_with("PM-") && op.len() == 19, "{op}");
    assert_eq!(op, run_id::operation_id("p", &id));
    assert_ne!(op, run_id::operation_id("q", &id));
}

// ---------------------------------------------------------------------------
// K. Triager.

#[test]
fn k1_component_with_its_run_only_gets_marked_triaged() {
    let mut fx = Fx::k();
    fx.set_pcl(Pcl {
        clid: 33,
        config_group_indexes: vec![SING],
        triggers: cq_triggers(trigger(DRY_RUN, T0)),
        ..Pcl::default()
    });
    let c = component(&[33], vec![prun("id", DRY_RUN, &[33])], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.runs_to_create.is_empty());
    assert!(res.cls_to_purge.is_empty());
    assert!(res.cls_to_trigger_deps.is_empty());
}

fn k2_stack(fx: &mut Fx) -> (Pcl, Pcl, Pcl) {
    let p31 = fx.put_pcl(31, SING, "", T0 - 60, &[]);
    let p32 = fx.put_pcl(32, SING, "", T0 - 1, &[hard(31)]);
    let p33 = fx.put_pcl(33, SING, FULL_RUN, T0, &[hard(31), hard(32)]);
    (p31, p32, p33)
}

#[test]
fn k2a_full_run_on_child_requests_votes_on_its_deps() {
    let mut fx = Fx::k();
    let (_, _, p33) = k2_stack(&mut fx);
    let c = component(&[31, 32, 33], vec![], true);
    let res = fx.must_triage(&c);
    assert_eq!(
        res.cls_to_trigger_deps,
        vec![TriggeringClDeps {
            origin_clid: 33,
            dep_clids: vec![31, 32],
            trigger: p33.triggers.unwrap().cq_vote_trigger,
            config_group_name: "singular".to_string(),
            ..TriggeringClDeps::default()
        }]
    );
    let nv = res.new_value.expect("new value");
    assert!(!nv.triage_required);
    assert_eq!(nv.decision_time, None);
    assert!(res.runs_to_create.is_empty());
    assert!(res.cls_to_purge.is_empty());
}

#[test]
fn k2b_no_new_votes_while_a_dep_has_an_op_in_flight() {
    let mut fx = Fx::k();
    let (_, p32, _) = k2_stack(&mut fx);
    fx.add_op(TriggeringClDeps {
        origin_clid: 32,
        dep_clids: vec![31],
        trigger: p32.triggers.and_then(|t| t.cq_vote_trigger),
        ..TriggeringClDeps::default()
    });
    let c = component(&[31, 32, 33], vec![], true);
    let res = fx.must_triage(&c);
    assert!(res.cls_to_trigger_deps.is_empty());
    let nv = res.new_value.expect("new value");
    assert!(!nv.triage_required);
    assert_eq!(nv.decision_time, None);
    assert!(res.runs_to_create.is_empty());
    assert!(res.cls_to_purge.is_empty());
}

#[test]
fn k2c_some_deps_voted_runs_the_bottom_and_votes_for_the_top() {
    // Original: "with CQ vote on some dep CLs, but not all".
    let mut fx = Fx::k();
    fx.put_pcl(31, SING, FULL_RUN, T0 - 1, &[]);
    fx.put_pcl(32, SING, "", T0 - 1, &[hard(31)]);
    fx.put_pcl(33, SING, FULL_RUN, T0 - 60, &[hard(31), hard(32)]);
    let p34 = fx.put_pcl(34, SING, FULL_RUN, T0 - 60, &[hard(31), hard(32), hard(33)]);
    let c = component(&[31, 32, 33, 34], vec![], true);
    let res = fx.must_triage(&c);
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), None);
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![31]);
    assert!(res.runs_to_create[0].dep_runs.is_empty());
    assert!(res.cls_to_purge.is_empty());
    assert_eq!(
        res.cls_to_trigger_deps,
        vec![TriggeringClDeps {
            origin_clid: 34,
            dep_clids: vec![32],
            trigger: p34.triggers.unwrap().cq_vote_trigger,
            config_group_name: "singular".to_string(),
            ..TriggeringClDeps::default()
        }]
    );
}

#[test]
fn k2d_all_voted_stack_creates_runs_bottom_up_with_dep_runs() {
    // Original: "with CQ votes on all CLs".
    let mut fx = Fx::k();
    fx.put_pcl(31, SING, FULL_RUN, T0 - 1, &[]);
    fx.put_pcl(32, SING, FULL_RUN, T0 - 1, &[hard(31)]);
    let mut c = component(&[31, 32], vec![], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.runs_to_create.len(), 1);
    let rc31 = &res.runs_to_create[0];
    assert_eq!(clids_of(rc31), vec![31]);
    assert!(rc31.dep_runs.is_empty());
    assert!(res.cls_to_purge.is_empty() && res.cls_to_trigger_deps.is_empty());
    let rid31 = rc31.run_id.clone();
    // The Run gets created.
    c.pruns = vec![prun(&rid31, FULL_RUN, &[31])];
    fx.set_run(Run {
        id: rid31.clone(),
        mode: FULL_RUN.to_string(),
        clids: vec![31],
        status: run::Status::Running as i32,
        ..Run::default()
    });

    // With a dep in an incomplete Run: 32 depends on it.
    let res = fx.must_triage(&c);
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![32]);
    assert_eq!(res.runs_to_create[0].dep_runs, vec![rid31.clone()]);
    assert_eq!(
        res.runs_to_create[0].expected_incomplete_run_ids,
        Vec::<String>::new()
    );
    let rid32 = res.runs_to_create[0].run_id.clone();
    let mut c2 = c.clone();
    c2.pruns.push(prun(&rid32, FULL_RUN, &[32]));
    c2.pruns.sort_by(|a, b| a.id.cmp(&b.id));
    let res = fx.must_triage(&c2);
    assert!(res.runs_to_create.is_empty());
    assert!(res.cls_to_purge.is_empty() && res.cls_to_trigger_deps.is_empty());

    // With a dep whose Run has been submitted: no dep runs.
    let p31 = fx.pcl_mut(31);
    p31.submitted = true;
    p31.triggers = None;
    fx.set_run(Run {
        id: rid31,
        status: run::Status::Succeeded as i32,
        end_time: Some(ts(T0)),
        ..Run::default()
    });
    c.pruns.clear();
    let res = fx.must_triage(&c);
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![32]);
    assert!(res.runs_to_create[0].dep_runs.is_empty());
    assert!(res.cls_to_purge.is_empty() && res.cls_to_trigger_deps.is_empty());
}

/// The PCL of the original "Purges CLs" tests: 33 DRY_RUN with an
/// owner_lacks_email reason on its CQ trigger.
fn k3_fixture() -> (Fx, Component) {
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

#[test]
fn k3_singular_group_purges_without_delay() {
    let (mut fx, c) = k3_fixture();
    fx.pcl_mut(33).config_group_indexes = vec![SING];
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert_eq!(
        res.cls_to_purge,
        vec![PurgeCl {
            purging_cl: Some(PurgingCl {
                clid: 33,
                apply_to: Some(purging_cl::ApplyTo::Triggers(Triggers {
                    cq_vote_trigger: Some(trigger(DRY_RUN, T0)),
                    new_patchset_run_trigger: None,
                })),
                ..PurgingCl::default()
            }),
            purge_reasons: fx.pstate.pcls[0].purge_reasons.clone(),
            ..PurgeCl::default()
        }]
    );
    assert!(res.runs_to_create.is_empty());
}

#[test]
fn k3_cq_purge_does_not_affect_npr() {
    let (mut fx, c) = k3_fixture();
    let mut p = fx.put_pcl(33, NPR, DRY_RUN, T0, &[]);
    p.purge_reasons = vec![reason(
        Kind::SelfCqDepend(true),
        on_cq(trigger(DRY_RUN, T0)),
    )];
    fx.set_pcl(p);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert_eq!(res.cls_to_purge.len(), 1);
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(res.runs_to_create[0].mode, NEW_PATCHSET_RUN);
}

#[test]
fn k3_npr_only_trigger_with_unsupported_mode_is_purged() {
    let (mut fx, c) = k3_fixture();
    let mut p = fx.put_pcl(33, NPR, NEW_PATCHSET_RUN, T0, &[]);
    p.purge_reasons = vec![reason(
        Kind::UnsupportedMode(String::new()),
        on_npr(trigger(NEW_PATCHSET_RUN, T0)),
    )];
    fx.set_pcl(p);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert_eq!(res.cls_to_purge.len(), 1);
    assert!(res.runs_to_create.is_empty());
}

#[test]
fn k3_npr_purge_lets_the_dry_run_go_on() {
    let (mut fx, c) = k3_fixture();
    let mut p = fx.put_pcl(33, NPR, DRY_RUN, T0, &[]);
    let npr = p
        .triggers
        .as_ref()
        .unwrap()
        .new_patchset_run_trigger
        .clone()
        .unwrap();
    p.purge_reasons = vec![reason(Kind::OwnerLacksEmail(false), on_npr(npr.clone()))];
    fx.set_pcl(p);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert_eq!(res.cls_to_purge.len(), 1);
    assert_eq!(
        res.cls_to_purge[0].purging_cl.as_ref().unwrap().apply_to,
        Some(purging_cl::ApplyTo::Triggers(Triggers {
            cq_vote_trigger: None,
            new_patchset_run_trigger: Some(npr),
        }))
    );
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(res.runs_to_create[0].mode, DRY_RUN);
}

#[test]
fn k3_combinable_group_obeys_stabilization_delay() {
    let (mut fx, c) = k3_fixture();
    fx.pcl_mut(33).config_group_indexes = vec![COMB];
    let res = fx.must_triage(&c);
    let mut expected = mark_triaged(&c);
    expected.decision_time = Some(ts(T0 + STABILIZATION_SECONDS));
    assert_eq!(res.new_value, Some(expected.clone()));
    assert!(res.cls_to_purge.is_empty());
    assert!(res.runs_to_create.is_empty());

    fx.add_seconds(2 * STABILIZATION_SECONDS);
    let res = fx.must_triage(&c);
    expected.decision_time = None;
    assert_eq!(res.new_value, Some(expected));
    assert_eq!(res.cls_to_purge.len(), 1);
    assert!(res.runs_to_create.is_empty());
}

#[test]
fn k3_npr_only_in_combinable_npr_group_is_purged_immediately() {
    let (mut fx, c) = k3_fixture();
    let mut p = fx.put_pcl(33, NPR_COMB, NEW_PATCHSET_RUN, T0, &[]);
    p.purge_reasons = vec![reason(
        Kind::UnsupportedMode(String::new()),
        on_npr(trigger(NEW_PATCHSET_RUN, T0)),
    )];
    fx.set_pcl(p);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert_eq!(res.cls_to_purge.len(), 1);
    assert!(res.runs_to_create.is_empty());
}

#[test]
fn k3_many_groups_purge_immediately() {
    let (mut fx, c) = k3_fixture();
    fx.pcl_mut(33).config_group_indexes = vec![SING, COMB, ANOTHER];
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert_eq!(res.cls_to_purge.len(), 1);
    assert!(res.runs_to_create.is_empty());
}

#[test]
fn k5_dry_run_and_npr_triggers_create_two_runs() {
    let mut fx = Fx::k();
    fx.put_pcl(33, NPR, DRY_RUN, T0, &[]);
    let c = component(&[33], vec![], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.cls_to_purge.is_empty());
    assert_eq!(res.runs_to_create.len(), 2);
    let (cq, npr) = (&res.runs_to_create[0], &res.runs_to_create[1]);
    assert_eq!(cg_name(cq), "newPatchsetRun");
    assert_eq!(cq.mode, DRY_RUN);
    assert_eq!(clids_of(cq), vec![33]);
    assert_eq!(cg_name(npr), "newPatchsetRun");
    assert_eq!(npr.mode, NEW_PATCHSET_RUN);
    assert_eq!(clids_of(npr), vec![33]);
    // The NPR Run is the owner's own.
    assert_eq!(npr.created_by, "user:user-1@example.com");
    assert_eq!(npr.billed_to, "user:user-1@example.com");
    assert_eq!(npr.create_time, Some(ts(T0 - 3600)));
    assert_ne!(cq.run_id, npr.run_id);
}

#[test]
fn k5_npr_only_creates_an_npr_run() {
    let mut fx = Fx::k();
    fx.put_pcl(33, NPR, NEW_PATCHSET_RUN, T0, &[]);
    let c = component(&[33], vec![], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.cls_to_purge.is_empty());
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(cg_name(&res.runs_to_create[0]), "newPatchsetRun");
    assert_eq!(res.runs_to_create[0].mode, NEW_PATCHSET_RUN);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![33]);
}

#[test]
fn k5_npr_only_with_an_npr_run_is_a_noop() {
    let mut fx = Fx::k();
    fx.put_pcl(33, NPR, NEW_PATCHSET_RUN, T0, &[]);
    let c = component(&[33], vec![prun("run-id", NEW_PATCHSET_RUN, &[33])], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.cls_to_purge.is_empty());
    assert!(res.runs_to_create.is_empty());
}

#[test]
fn k5_eversion_mismatch_is_outdated_pm_state() {
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

#[test]
fn k5_singular_dry_run_creates_one_run() {
    let mut fx = Fx::k();
    fx.put_pcl(33, SING, DRY_RUN, T0, &[]);
    let c = component(&[33], vec![], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.cls_to_purge.is_empty());
    assert_eq!(res.runs_to_create.len(), 1);
    let rc = &res.runs_to_create[0];
    assert_eq!(cg_name(rc), "singular");
    assert_eq!(rc.mode, DRY_RUN);
    assert_eq!(clids_of(rc), vec![33]);
}

#[test]
fn k5_singular_with_a_run_is_a_noop() {
    let mut fx = Fx::k();
    fx.put_pcl(33, SING, DRY_RUN, T0, &[]);
    let c = component(&[33], vec![prun("run-id", DRY_RUN, &[33])], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.cls_to_purge.is_empty());
    assert!(res.runs_to_create.is_empty());
}

#[test]
fn k5_full_run_and_dry_run_with_soft_dep_create_two_runs() {
    let mut fx = Fx::k();
    fx.put_pcl(32, SING, FULL_RUN, T0, &[]);
    fx.put_pcl(33, SING, DRY_RUN, T0, &[soft(32)]);
    let c = component(&[32, 33], vec![], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.cls_to_purge.is_empty());
    assert_eq!(res.runs_to_create.len(), 2);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![32]);
    assert_eq!(res.runs_to_create[0].mode, FULL_RUN);
    assert_eq!(clids_of(&res.runs_to_create[1]), vec![33]);
    assert_eq!(res.runs_to_create[1].mode, DRY_RUN);
}

#[test]
fn k5_runs_on_other_cls_leave_only_the_middle_cl() {
    let mut fx = Fx::k();
    fx.put_pcl(31, SING, FULL_RUN, T0, &[]);
    fx.put_pcl(32, SING, DRY_RUN, T0, &[soft(31)]);
    fx.put_pcl(33, SING, DRY_RUN, T0, &[soft(32)]);
    let c = component(
        &[31, 32, 33],
        vec![prun("first", DRY_RUN, &[31]), prun("third", DRY_RUN, &[33])],
        true,
    );
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert!(res.cls_to_purge.is_empty());
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![32]);
    assert_eq!(res.runs_to_create[0].mode, DRY_RUN);
}

#[test]
fn k5_unknown_dep_waits_without_decision_time() {
    let mut fx = Fx::k();
    fx.set_pcl(Pcl {
        clid: 32,
        eversion: 1,
        status: pcl::Status::Unknown as i32,
        ..Pcl::default()
    });
    fx.put_pcl(33, SING, DRY_RUN, T0, &[soft(32)]);
    let c = component(&[33], vec![], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
    assert_eq!(decision_seconds(&res), None);
    assert!(res.cls_to_purge.is_empty());
    assert!(res.runs_to_create.is_empty());
}

// §7.5 step 8 (the original "with already existing Run" tests; no K id in the spec).

const VECTOR_RUN_ID: &str = "v8/9042327596854-1-42e0a59099a0f673";

fn existing_run_fixture() -> (Fx, Component) {
    let mut fx = Fx::k();
    fx.put_pcl(32, COMB, FULL_RUN, T0 - 1, &[]);
    fx.put_pcl(33, COMB, FULL_RUN, T0, &[soft(32)]);
    fx.add_seconds(STABILIZATION_SECONDS);
    (fx, component(&[32, 33], vec![], true))
}

#[test]
fn existing_run_absent_creates_the_run_with_every_field() {
    let (fx, c) = existing_run_fixture();
    let res = fx.must_triage(&c);
    assert_eq!(res.runs_to_create.len(), 1);
    let rc = &res.runs_to_create[0];
    let expected = CreateRun {
        run_id: VECTOR_RUN_ID.to_string(),
        config_group_id: "hash/combinable".to_string(),
        mode: FULL_RUN.to_string(),
        create_time: Some(ts(T0)),
        owner: "user:user-1@example.com".to_string(),
        created_by: "user:user-2@example.com".to_string(),
        billed_to: "user:user-2@example.com".to_string(),
        input_cls: vec![
            InputCl {
                clid: 32,
                expected_eversion: 1,
                trigger: Some(voter_trigger(FULL_RUN, T0 - 1)),
            },
            InputCl {
                clid: 33,
                expected_eversion: 1,
                trigger: Some(voter_trigger(FULL_RUN, T0)),
            },
        ],
        dep_runs: vec![],
        expected_incomplete_run_ids: vec![],
        options: Some(RunOptions::default()),
        operation_id: run_id::operation_id("v8", VECTOR_RUN_ID),
        mode_definition: None,
        luci_project: "v8".to_string(),
    };
    assert_eq!(rc, &expected);
    assert_eq!(res.new_value, Some(mark_triaged(&c)));
}

#[test]
fn existing_run_still_running_rechecks_in_5s() {
    let (mut fx, c) = existing_run_fixture();
    fx.set_run(Run {
        id: VECTOR_RUN_ID.to_string(),
        status: run::Status::Running as i32,
        ..Run::default()
    });
    let res = fx.must_triage(&c);
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), Some(fx.now.seconds + 5));
    assert!(res.runs_to_create.is_empty() && res.cls_to_purge.is_empty());
}

fn cancelled_at(fx: &mut Fx, seconds: i64) {
    fx.set_run(Run {
        id: VECTOR_RUN_ID.to_string(),
        status: run::Status::Cancelled as i32,
        end_time: Some(ts(seconds)),
        ..Run::default()
    });
}

#[test]
fn existing_run_just_ended_waits_a_minute_after_its_end() {
    let (mut fx, c) = existing_run_fixture();
    let end = fx.now.seconds;
    cancelled_at(&mut fx, end);
    fx.add_seconds(5);
    let res = fx.must_triage(&c);
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), Some(end + 60));
    assert!(res.runs_to_create.is_empty() && res.cls_to_purge.is_empty());
}

#[test]
fn existing_run_ended_long_ago_purges_reused_triggers() {
    let (mut fx, c) = existing_run_fixture();
    let end = fx.now.seconds;
    cancelled_at(&mut fx, end);
    fx.add_seconds(120);
    let res = fx.must_triage(&c);
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), None);
    assert!(res.runs_to_create.is_empty());
    assert_eq!(res.cls_to_purge.len(), 2);
    for (p, clid) in res.cls_to_purge.iter().zip([32, 33]) {
        assert_eq!(p.purging_cl.as_ref().unwrap().clid, clid);
        assert_eq!(p.purge_reasons.len(), 1);
        assert_eq!(
            p.purge_reasons[0].cl_error.as_ref().unwrap().kind,
            Some(Kind::ReusedTrigger(crate::proto::cl_error::ReusedTrigger {
                run: VECTOR_RUN_ID.to_string()
            }))
        );
    }
}

#[test]
fn existing_run_requested_recently_is_not_requested_again() {
    let (mut fx, c) = existing_run_fixture();
    let requested = fx.now.seconds - 30;
    fx.run_requests = vec![RunRequest {
        run_id: VECTOR_RUN_ID.to_string(),
        requested_at: Some(ts(requested)),
    }];
    let res = fx.must_triage(&c);
    assert!(res.runs_to_create.is_empty());
    assert_eq!(decision_seconds(&res), Some(requested + 60));

    // A minute after the request, it is requested again.
    fx.run_requests[0].requested_at = Some(ts(fx.now.seconds - 60));
    let res = fx.must_triage(&c);
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(res.runs_to_create[0].run_id, VECTOR_RUN_ID);
}

// Further combinable cases of the original triage_test.go.

#[test]
fn combinable_stack_waits_for_stabilization_then_creates_one_run() {
    let mut fx = Fx::k();
    fx.put_pcl(31, COMB, FULL_RUN, T0 - 60, &[soft(33)]);
    fx.put_pcl(32, COMB, FULL_RUN, T0 - 1, &[soft(31)]);
    let p33 = fx.put_pcl(33, COMB, FULL_RUN, T0, &[soft(32), soft(31)]);
    let c = component(&[31, 32, 33], vec![], true);
    let res = fx.must_triage(&c);
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), Some(T0 + STABILIZATION_SECONDS));
    assert!(res.runs_to_create.is_empty() && res.cls_to_purge.is_empty());

    fx.add_seconds(STABILIZATION_SECONDS);
    let c = res.new_value.unwrap();
    let res = fx.must_triage(&c);
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), None);
    let rc = &res.runs_to_create[0];
    assert_eq!(cg_name(rc), "combinable");
    assert_eq!(rc.mode, FULL_RUN);
    assert_eq!(
        rc.create_time,
        p33.triggers.unwrap().cq_vote_trigger.unwrap().time
    );
    assert_eq!(clids_of(rc), vec![31, 32, 33]);
}

#[test]
fn combinable_single_cl_waits_for_stabilization() {
    let mut fx = Fx::k();
    fx.put_pcl(33, COMB, FULL_RUN, T0, &[]);
    let res = fx.must_triage(&component(&[33], vec![], true));
    assert_eq!(decision_seconds(&res), Some(T0 + STABILIZATION_SECONDS));
    assert!(res.runs_to_create.is_empty());
    fx.add_seconds(STABILIZATION_SECONDS);
    let res = fx.must_triage(&res.new_value.unwrap());
    assert_eq!(decision_seconds(&res), None);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![33]);
}

#[test]
fn combinable_waits_for_unresolved_dep_even_after_stabilization() {
    let mut fx = Fx::k();
    fx.set_pcl(Pcl {
        clid: 32,
        eversion: 1,
        status: pcl::Status::Unknown as i32,
        ..Pcl::default()
    });
    fx.put_pcl(33, COMB, FULL_RUN, T0, &[soft(32)]);
    let res = fx.must_triage(&component(&[33], vec![], true));
    assert_eq!(decision_seconds(&res), Some(T0 + STABILIZATION_SECONDS));
    fx.add_seconds(STABILIZATION_SECONDS);
    let res = fx.must_triage(&res.new_value.unwrap());
    assert_eq!(decision_seconds(&res), None);
    assert!(res.runs_to_create.is_empty() && res.cls_to_purge.is_empty());
}

#[test]
fn combinable_noop_with_a_run_on_all_cls_even_while_it_finalizes() {
    for variant in 0..3 {
        let mut fx = Fx::k();
        fx.put_pcl(31, COMB, FULL_RUN, T0 - 3600, &[soft(32)]);
        fx.put_pcl(32, COMB, FULL_RUN, T0 - 3600, &[soft(31)]);
        match variant {
            1 => fx.pcl_mut(31).triggers = None,
            2 => {
                let p = fx.pcl_mut(32);
                p.triggers = None;
                p.submitted = true;
            }
            _ => {}
        }
        let c = component(&[31, 32], vec![prun("runID", DRY_RUN, &[31, 32])], true);
        let res = fx.must_triage(&c);
        assert!(triaged_by_new_value(&res), "variant {variant}");
        assert!(res.runs_to_create.is_empty() && res.cls_to_purge.is_empty());
    }
}

#[test]
fn combinable_growing_component_waits_for_the_smaller_run() {
    let mut fx = Fx::k();
    fx.put_pcl(31, COMB, FULL_RUN, T0 - 3600, &[]);
    fx.put_pcl(41, COMB, FULL_RUN, T0 - 3600, &[soft(31)]);
    fx.put_pcl(51, COMB, FULL_RUN, T0, &[soft(31)]);
    fx.add_seconds(2 * STABILIZATION_SECONDS);
    let c = component(&[31, 41, 51], vec![prun("41-31", DRY_RUN, &[31, 41])], true);
    let res = fx.must_triage(&c);
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), None);
    assert!(res.runs_to_create.is_empty() && res.cls_to_purge.is_empty());
}

#[test]
fn combinable_leaves_finalizing_runs_to_the_run_manager() {
    for variant in 0..4 {
        let mut fx = Fx::k();
        fx.put_pcl(31, COMB, DRY_RUN, T0 - 3600, &[soft(31)]);
        fx.put_pcl(41, COMB, DRY_RUN, T0 - 3600, &[soft(31)]);
        fx.put_pcl(51, COMB, DRY_RUN, T0 - 3600, &[soft(31), soft(41)]);
        let p31 = fx.pcl_mut(31);
        match variant {
            // Being submitted.
            0 => {
                p31.submitted = true;
                p31.triggers = None;
            }
            // Being cancelled.
            1 => p31.triggers = None,
            // No longer in the same config group.
            2 => p31.config_group_indexes = vec![ANOTHER],
            // No longer in the same LUCI project.
            _ => {
                p31.status = pcl::Status::Unwatched as i32;
                p31.config_group_indexes.clear();
                p31.triggers = None;
            }
        }
        let c = component(
            &[31, 41, 51],
            vec![prun("sub/mitting", DRY_RUN, &[31, 41, 51])],
            true,
        );
        let res = fx.must_triage(&c);
        assert!(triaged_by_new_value(&res), "variant {variant}");
        assert_eq!(decision_seconds(&res), None, "variant {variant}");
        assert!(res.runs_to_create.is_empty(), "variant {variant}");
        assert!(res.cls_to_purge.is_empty(), "variant {variant}");
    }
}

#[test]
fn combinable_waits_for_an_in_flight_purge_of_a_member() {
    let mut fx = Fx::k();
    fx.put_pcl(31, COMB, DRY_RUN, T0, &[]);
    fx.put_pcl(32, COMB, DRY_RUN, T0, &[soft(31)]);
    fx.put_pcl(33, COMB, DRY_RUN, T0, &[soft(31)]);
    fx.add_seconds(2 * STABILIZATION_SECONDS);
    fx.add_purging(PurgingCl {
        clid: 31,
        operation_id: "purge-op-31".to_string(),
        deadline: Some(ts(fx.now.seconds + 60)),
        apply_to: Some(purging_cl::ApplyTo::AllActiveTriggers(true)),
        ..PurgingCl::default()
    });
    let res = fx.must_triage(&component(&[31, 32, 33], vec![], true));
    assert!(triaged_by_new_value(&res));
    assert_eq!(decision_seconds(&res), None);
    assert!(res.runs_to_create.is_empty() && res.cls_to_purge.is_empty());
}

// §7.5.1 fields.

#[test]
fn creator_fields_options_payer_and_incomplete_runs() {
    let mut fx = Fx::k();
    fx.put_pcl(33, NPR, DRY_RUN, T0, &[]);
    {
        let cl = fx.cl_mut(33);
        let snapshot = cl.snapshot.as_mut().unwrap();
        snapshot.metadata = vec![
            Footer {
                key: "No-Tree-Checks".into(),
                value: "TRUE".into(),
            },
            Footer {
                key: "No-Try".into(),
                value: "false".into(),
            },
            Footer {
                key: "NOPRESUBMIT".into(),
                value: "true".into(),
            },
            Footer {
                key: "Cq-Include-Trybots".into(),
                value: "luci.p.try:a".into(),
            },
            Footer {
                key: "CQ_INCLUDE_TRYBOTS".into(),
                value: "luci.p.try:b".into(),
            },
            Footer {
                key: "Cq-Cl-Tag".into(),
                value: "k:v".into(),
            },
            Footer {
                key: "Cq-Do-Not-Cancel-Tryjobs".into(),
                value: "True".into(),
            },
        ];
    }
    // An NPR Run exists: the CQ Run expects it; no new NPR Run.
    let c = component(&[33], vec![prun("v8/npr", NEW_PATCHSET_RUN, &[33])], true);
    let res = fx.must_triage(&c);
    assert_eq!(res.runs_to_create.len(), 1);
    let rc = &res.runs_to_create[0];
    assert_eq!(rc.mode, DRY_RUN);
    assert_eq!(rc.expected_incomplete_run_ids, vec!["v8/npr".to_string()]);
    assert_eq!(
        rc.options,
        Some(RunOptions {
            skip_tree_checks: true,
            skip_equivalent_builders: false,
            avoid_cancelling_tryjobs: true,
            skip_tryjobs: false,
            skip_presubmit: true,
            custom_tryjob_tags: vec!["k:v".into()],
            include_trybots: vec!["luci.p.try:a".into(), "luci.p.try:b".into()],
        })
    );
    assert_eq!(rc.billed_to, "user:user-2@example.com");
}

#[test]
fn creator_full_run_with_auto_submit_is_billed_to_the_owner() {
    let mut fx = Fx::k();
    fx.put_pcl(33, SING, FULL_RUN, T0, &[]);
    let gerrit = fx
        .cl_mut(33)
        .snapshot
        .as_mut()
        .unwrap()
        .gerrit
        .as_mut()
        .unwrap();
    gerrit.votes.push(Vote {
        label: "Auto-Submit".into(),
        value: 1,
        email: "user-1@example.com".into(),
        account_id: 1,
        time: Some(ts(T0)),
    });
    let res = fx.must_triage(&component(&[33], vec![], true));
    let rc = &res.runs_to_create[0];
    assert_eq!(rc.owner, "user:user-1@example.com");
    assert_eq!(rc.created_by, "user:user-2@example.com");
    assert_eq!(rc.billed_to, "user:user-1@example.com");
}

#[test]
fn creator_create_time_is_rounded_to_microseconds() {
    let mut fx = Fx::k();
    let mut p = fx.put_pcl(33, SING, DRY_RUN, T0, &[]);
    let t = p
        .triggers
        .as_mut()
        .unwrap()
        .cq_vote_trigger
        .as_mut()
        .unwrap();
    t.time = Some(Timestamp {
        seconds: T0,
        nanos: 1_500,
    });
    fx.set_pcl(p);
    let res = fx.must_triage(&component(&[33], vec![], true));
    assert_eq!(
        res.runs_to_create[0].create_time,
        Some(Timestamp {
            seconds: T0,
            nanos: 2_000
        })
    );
}

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
fn creator_latest_triggered_tie_goes_to_the_lowest_clid() {
    let mut fx = Fx::k();
    fx.put_pcl(31, COMB, DRY_RUN, T0, &[]);
    fx.put_pcl(32, COMB, DRY_RUN, T0, &[soft(31)]);
    // Same trigger time, different voters: 31's voter is "latest".
    for (clid, email) in [(31, "a@example.com"), (32, "b@example.com")] {
        let t = fx
            .pcl_mut(clid)
            .triggers
            .as_mut()
            .unwrap()
            .cq_vote_trigger
            .as_mut()
            .unwrap();
        t.email = email.to_string();
    }
    fx.add_seconds(STABILIZATION_SECONDS);
    let res = fx.must_triage(&component(&[31, 32], vec![], true));
    assert_eq!(res.runs_to_create[0].created_by, "user:a@example.com");
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
    let mut o = RunOptions::default();
    merge_options(&mut o, None);
    assert_eq!(o, RunOptions::default());
}

// ---------------------------------------------------------------------------
// L. Per-CL triage.

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
const L_NPR: i32 = 3;

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

fn triage_l<'a>(fx: &'a Fx, c: &Component) -> BTreeMap<i64, ClInfo<'a>> {
    triage_cls(c, &fx.view()).expect("triage_cls must succeed")
}

#[test]
fn l1_single_dry_run_cl_is_ready_even_inside_a_run() {
    let mut fx = l_fixture();
    fx.set_pcl(l_pcl(1, L_SING, cq_triggers(trigger(DRY_RUN, T0)), vec![]));
    let cls = triage_l(&fx, &component(&[1], vec![], false));
    let info = &cls[&1];
    assert!(info.cq_ready && !info.npr_ready);
    assert_eq!(info.deps, Some(Default::default()));
    assert!(info.purge_reasons.is_empty() && info.run_indexes.is_empty());
    assert!(info.purging_cl.is_none());

    let cls = triage_l(
        &fx,
        &component(&[1], vec![prun("r1", DRY_RUN, &[1])], false),
    );
    let info = &cls[&1];
    assert!(info.cq_ready);
    assert_eq!(info.run_indexes, vec![0]);
    assert_eq!(
        info.run_count_by_mode,
        BTreeMap::from([(DRY_RUN.to_string(), 1)])
    );
    assert_eq!(info.deps, Some(Default::default()));
}

#[test]
fn l2_pcl_purge_reasons_make_the_cl_not_ready() {
    let mut fx = l_fixture();
    let mut p = l_pcl(1, L_SING, cq_triggers(trigger(DRY_RUN, T0)), vec![]);
    p.purge_reasons = vec![
        reason(
            Kind::OwnerLacksEmail(true),
            purge_reason::ApplyTo::AllActiveTriggers(true),
        ),
        reason(
            Kind::UnsupportedMode("CUSTOM_RUN".into()),
            purge_reason::ApplyTo::AllActiveTriggers(true),
        ),
    ];
    fx.set_pcl(p.clone());
    let cls = triage_l(&fx, &component(&[1], vec![], false));
    let info = &cls[&1];
    assert!(!info.cq_ready && !info.npr_ready);
    assert_eq!(info.purge_reasons, p.purge_reasons);
    assert_eq!(info.deps, None);
}

#[test]
fn l3_being_purged_is_never_ready_even_inside_a_run() {
    let mut fx = l_fixture();
    fx.set_pcl(l_pcl(1, L_SING, cq_triggers(trigger(DRY_RUN, T0)), vec![]));
    fx.add_purging(PurgingCl {
        clid: 1,
        apply_to: Some(purging_cl::ApplyTo::AllActiveTriggers(true)),
        ..PurgingCl::default()
    });
    for pruns in [vec![], vec![prun("r1", DRY_RUN, &[1])]] {
        let in_run = !pruns.is_empty();
        let cls = triage_l(&fx, &component(&[1], pruns, false));
        let info = &cls[&1];
        assert!(!info.cq_ready, "in run: {in_run}");
        assert_eq!(info.deps, Some(Default::default()));
        assert!(info.purge_reasons.is_empty());
        assert!(info.purging_cl.is_some());
    }
}

#[test]
fn l4_several_config_groups_purge_unless_in_a_run() {
    let mut fx = l_fixture();
    let mut p = l_pcl(1, L_SING, cq_triggers(trigger(DRY_RUN, T0)), vec![]);
    p.config_group_indexes = vec![L_SING, L_ANOTHER];
    fx.set_pcl(p);
    let cls = triage_l(&fx, &component(&[1], vec![], false));
    let info = &cls[&1];
    assert!(!info.cq_ready);
    assert_eq!(info.deps, None);
    assert_eq!(
        info.purge_reasons,
        vec![reason(
            Kind::WatchedByManyConfigGroups(WatchedByManyConfigGroups {
                config_groups: vec!["singular".into(), "another".into()],
            }),
            on_cq(trigger(DRY_RUN, T0)),
        )]
    );
    // The Run protects it from purging.
    let cls = triage_l(
        &fx,
        &component(&[1], vec![prun("r1", DRY_RUN, &[1])], false),
    );
    let info = &cls[&1];
    assert!(!info.cq_ready);
    assert!(info.purge_reasons.is_empty());
    assert_eq!(info.deps, None);
}

#[test]
fn l5_npr_group_purges_of_one_trigger_keep_the_other_ready() {
    let both = Some(Triggers {
        cq_vote_trigger: Some(trigger(DRY_RUN, T0)),
        new_patchset_run_trigger: Some(trigger(NEW_PATCHSET_RUN, T0)),
    });
    // CQ purge in flight.
    let mut fx = l_fixture();
    fx.set_pcl(l_pcl(1, L_NPR, both.clone(), vec![]));
    fx.add_purging(PurgingCl {
        clid: 1,
        apply_to: Some(purging_cl::ApplyTo::Triggers(Triggers {
            cq_vote_trigger: Some(trigger(DRY_RUN, T0)),
            new_patchset_run_trigger: None,
        })),
        ..PurgingCl::default()
    });
    let cls = triage_l(&fx, &component(&[1], vec![], false));
    assert!(!cls[&1].cq_ready && cls[&1].npr_ready);
    assert_eq!(cls[&1].deps, Some(Default::default()));
    assert!(cls[&1].purge_reasons.is_empty());

    // NPR purge in flight.
    let mut fx = l_fixture();
    fx.set_pcl(l_pcl(1, L_NPR, both, vec![]));
    fx.add_purging(PurgingCl {
        clid: 1,
        apply_to: Some(purging_cl::ApplyTo::Triggers(Triggers {
            cq_vote_trigger: None,
            new_patchset_run_trigger: Some(trigger(NEW_PATCHSET_RUN, T0)),
        })),
        ..PurgingCl::default()
    });
    let cls = triage_l(&fx, &component(&[1], vec![], false));
    assert!(cls[&1].cq_ready && !cls[&1].npr_ready);
    assert_eq!(cls[&1].deps, Some(Default::default()));

    // With an ongoing NEW_PATCHSET_RUN Run.
    let mut fx = l_fixture();
    let npr_only = Some(Triggers {
        cq_vote_trigger: None,
        new_patchset_run_trigger: Some(trigger(NEW_PATCHSET_RUN, T0)),
    });
    fx.set_pcl(l_pcl(1, L_NPR, npr_only, vec![]));
    let cls = triage_l(
        &fx,
        &component(&[1], vec![prun("r1", NEW_PATCHSET_RUN, &[1])], false),
    );
    let info = &cls[&1];
    assert!(info.npr_ready && !info.cq_ready);
    assert_eq!(info.run_indexes, vec![0]);
    assert_eq!(
        info.run_count_by_mode,
        BTreeMap::from([(NEW_PATCHSET_RUN.to_string(), 1)])
    );
    assert_eq!(info.deps, None);
    assert!(info.purge_reasons.is_empty());
}

#[test]
fn l8_ready_cls_can_have_not_yet_loaded_deps() {
    let mut fx = l_fixture();
    fx.set_pcl(Pcl {
        clid: 1,
        status: pcl::Status::Unknown as i32,
        ..Pcl::default()
    });
    fx.set_pcl(l_pcl(
        2,
        L_COMB,
        cq_triggers(trigger(DRY_RUN, T0)),
        vec![soft(1)],
    ));
    let cls = triage_l(&fx, &component(&[2], vec![], false));
    let info = &cls[&2];
    assert!(info.cq_ready);
    let deps = info.deps.as_ref().unwrap();
    assert_eq!(deps.not_yet_loaded, vec![soft(1)]);
    assert!(deps.ok());
}

// Further per-CL cases of the original cls_test.go.

fn l_stack(fx: &mut Fx, t1: Trigger, t2: Trigger, t3: Trigger, npr: bool) {
    let tr = |t: Trigger| {
        Some(Triggers {
            cq_vote_trigger: Some(t),
            new_patchset_run_trigger: npr.then(|| trigger(NEW_PATCHSET_RUN, T0)),
        })
    };
    fx.set_pcl(l_pcl(1, L_SING, tr(t1), vec![]));
    fx.set_pcl(l_pcl(2, L_SING, tr(t2), vec![hard(1)]));
    fx.set_pcl(l_pcl(3, L_SING, tr(t3), vec![soft(1), hard(2)]));
}

#[test]
fn l_stack_full_run_on_top_with_soft_dep_is_purged_but_npr_is_not() {
    let mut fx = l_fixture();
    l_stack(
        &mut fx,
        trigger(DRY_RUN, T0),
        trigger(DRY_RUN, T0),
        trigger(FULL_RUN, T0),
        true,
    );
    let cls = triage_l(&fx, &component(&[1, 2, 3], vec![], false));
    assert!(cls[&1].cq_ready && cls[&2].cq_ready);
    assert!(cls[&1].npr_ready && cls[&2].npr_ready && cls[&3].npr_ready);
    let info = &cls[&3];
    assert!(!info.cq_ready);
    let invalid = InvalidDeps {
        single_full_deps: vec![soft(1)],
        ..InvalidDeps::default()
    };
    assert_eq!(
        info.purge_reasons,
        vec![reason(
            Kind::InvalidDeps(invalid.clone()),
            on_cq(trigger(FULL_RUN, T0))
        )]
    );
    let deps = info.deps.as_ref().unwrap();
    assert_eq!(deps.invalid_deps, Some(invalid));
    assert_eq!(deps.need_to_trigger, vec![hard(2)]);
    assert_eq!(
        deps.last_cq_vote_triggered,
        Some(i128::from(T0) * 1_000_000_000)
    );
    assert_eq!(
        info.last_cq_vote_triggered(),
        Some(i128::from(T0) * 1_000_000_000)
    );
}

#[test]
fn l_stack_full_run_at_the_bottom_and_dry_runs_above_are_ready() {
    let mut fx = l_fixture();
    l_stack(
        &mut fx,
        trigger(FULL_RUN, T0),
        trigger(DRY_RUN, T0),
        trigger(DRY_RUN, T0),
        false,
    );
    let cls = triage_l(&fx, &component(&[1, 2, 3], vec![], false));
    for info in cls.values() {
        assert!(info.cq_ready && info.deps.as_ref().unwrap().ok());
    }
}

#[test]
fn l_chained_votes_and_in_flight_op_force_not_ready() {
    let mut fx = l_fixture();
    let full = || cq_triggers(voter_trigger(FULL_RUN, T0));
    fx.set_pcl(l_pcl(1, L_SING, None, vec![]));
    fx.set_pcl(l_pcl(2, L_SING, full(), vec![hard(1)]));
    fx.set_pcl(l_pcl(3, L_SING, None, vec![hard(1), hard(2)]));
    fx.set_pcl(l_pcl(4, L_SING, full(), vec![hard(1), hard(2), hard(3)]));
    let c = component(&[1, 2, 3, 4], vec![], false);
    let cls = triage_l(&fx, &c);
    assert!(cls.values().all(|i| !i.cq_ready));
    assert_eq!(cls[&1].deps, None);
    assert_eq!(
        cls[&2].deps.as_ref().unwrap().need_to_trigger,
        vec![hard(1)]
    );
    assert_eq!(cls[&3].deps, None);
    assert_eq!(
        cls[&4].deps.as_ref().unwrap().need_to_trigger,
        vec![hard(1), hard(3)]
    );

    for clid in [1, 3] {
        fx.pcl_mut(clid).triggers = full();
    }
    let cls = triage_l(&fx, &c);
    assert!(cls.values().all(|i| i.cq_ready));
    fx.add_op(TriggeringClDeps {
        origin_clid: 4,
        dep_clids: vec![1, 2, 3],
        operation_id: "op-1".into(),
        ..TriggeringClDeps::default()
    });
    let cls = triage_l(&fx, &c);
    assert!(cls.values().all(|i| !i.cq_ready));
}

#[test]
fn l_combinable_mismatched_modes_and_wrong_groups() {
    let mut fx = l_fixture();
    fx.set_pcl(l_pcl(
        1,
        L_COMB,
        cq_triggers(trigger(FULL_RUN, T0)),
        vec![soft(2)],
    ));
    fx.set_pcl(l_pcl(
        2,
        L_COMB,
        cq_triggers(trigger(FULL_RUN, T0)),
        vec![soft(1)],
    ));
    fx.set_pcl(l_pcl(
        3,
        L_COMB,
        cq_triggers(trigger(DRY_RUN, T0)),
        vec![soft(1), soft(2)],
    ));
    let cls = triage_l(&fx, &component(&[1, 2, 3], vec![], false));
    assert!(cls[&1].cq_ready && cls[&2].cq_ready && !cls[&3].cq_ready);
    assert_eq!(
        cls[&3].purge_reasons,
        vec![reason(
            Kind::InvalidDeps(InvalidDeps {
                combinable_mismatched_mode: vec![soft(1), soft(2)],
                ..InvalidDeps::default()
            }),
            on_cq(trigger(DRY_RUN, T0)),
        )]
    );

    // 2 in another group: 1 and 3 have a wrong-config-group dep, 2 too.
    fx.pcl_mut(2).config_group_indexes = vec![L_ANOTHER];
    let cls = triage_l(&fx, &component(&[1, 2, 3], vec![], false));
    for info in cls.values() {
        assert!(!info.cq_ready);
        assert_eq!(info.purge_reasons.len(), 1);
    }
    // ... unless it is submitted.
    let p2 = fx.pcl_mut(2);
    p2.triggers = None;
    p2.submitted = true;
    fx.pcl_mut(1).triggers = cq_triggers(trigger(DRY_RUN, T0));
    let cls = triage_l(&fx, &component(&[1, 3], vec![], false));
    for info in cls.values() {
        assert!(info.cq_ready);
        assert!(info.purge_reasons.is_empty());
        assert_eq!(info.deps.as_ref().unwrap().submitted, vec![soft(2)]);
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
// M. Trigger-deps staging.

fn m_fixture(votes: [bool; 3]) -> Fx {
    let mut fx = Fx::new("test", vec![group("cg1")]);
    let deps: [Vec<Dep>; 3] = [vec![], vec![hard(1)], vec![hard(1), hard(2)]];
    for (i, d) in deps.into_iter().enumerate() {
        let clid = i as i64 + 1;
        let mode = if votes[i] { FULL_RUN } else { "" };
        fx.put_pcl_m(clid, mode, d);
    }
    fx
}

impl Fx {
    fn put_pcl_m(&mut self, clid: i64, mode: &str, deps: Vec<Dep>) {
        let t = (!mode.is_empty()).then(|| voter_trigger(mode, T0 - 60));
        self.set_pcl(l_pcl(clid, 0, t.and_then(cq_triggers), deps.clone()));
        self.set_cl(ChangeList {
            clid,
            eversion: 1,
            snapshot: Some(Snapshot {
                deps,
                gerrit: Some(GerritChange {
                    host: HOST.into(),
                    change: clid,
                    owner_email: "user-1@example.com".into(),
                    current_revision: format!("rev-{clid:06}-001"),
                    ..GerritChange::default()
                }),
                ..Snapshot::default()
            }),
            ..ChangeList::default()
        });
        self.pcl_mut(clid).eversion = 1;
    }
}

fn m_trigger_deps(fx: &Fx, clids: &[i64]) -> Vec<TriggeringClDeps> {
    fx.must_triage(&component(clids, vec![], true))
        .cls_to_trigger_deps
}

fn m_expected(origin: i64, deps: &[i64]) -> TriggeringClDeps {
    TriggeringClDeps {
        origin_clid: origin,
        dep_clids: deps.to_vec(),
        trigger: Some(voter_trigger(FULL_RUN, T0 - 60)),
        config_group_name: "cg1".into(),
        ..TriggeringClDeps::default()
    }
}

#[test]
fn m1_top_of_stack_requests_votes_on_unvoted_deps() {
    let fx = m_fixture([false, false, true]);
    assert_eq!(
        m_trigger_deps(&fx, &[1, 2, 3]),
        vec![m_expected(3, &[1, 2])]
    );
}

#[test]
fn m1_no_request_when_origin_or_a_dep_is_outdated() {
    for outdated in [3, 2] {
        let mut fx = m_fixture([false, false, true]);
        fx.pcl_mut(outdated).outdated = Some(Default::default());
        assert!(
            m_trigger_deps(&fx, &[1, 2, 3]).is_empty(),
            "outdated {outdated}"
        );
    }
}

#[test]
fn m1_no_new_request_while_the_op_runs_and_a_dep_got_voted() {
    let mut fx = m_fixture([false, true, true]);
    fx.add_op(TriggeringClDeps {
        origin_clid: 3,
        dep_clids: vec![1, 2],
        ..TriggeringClDeps::default()
    });
    assert!(m_trigger_deps(&fx, &[1, 2, 3]).is_empty());
}

#[test]
fn m1_no_request_while_a_dep_is_not_loaded() {
    let mut fx = m_fixture([false, false, true]);
    fx.pstate.pcls.retain(|p| p.clid != 1);
    assert!(m_trigger_deps(&fx, &[2, 3]).is_empty());
}

#[test]
fn m2_all_voted_needs_no_request() {
    let fx = m_fixture([true, true, true]);
    let res = fx.must_triage(&component(&[1, 2, 3], vec![], true));
    assert!(res.cls_to_trigger_deps.is_empty());
    // Only the bottom CL runs now; the others wait for its Run.
    assert_eq!(res.runs_to_create.len(), 1);
    assert_eq!(clids_of(&res.runs_to_create[0]), vec![1]);
}

#[test]
fn m2_only_the_top_most_cl_requests() {
    let fx = m_fixture([false, true, true]);
    assert_eq!(m_trigger_deps(&fx, &[1, 2, 3]), vec![m_expected(3, &[1])]);
}

#[test]
fn m3_purges_on_origin_or_parent_block_requests() {
    for (clid, purging) in [(3, true), (2, true), (3, false), (2, false)] {
        let mut fx = m_fixture([false, clid == 2, true]);
        if purging {
            fx.add_purging(PurgingCl {
                clid,
                apply_to: Some(purging_cl::ApplyTo::AllActiveTriggers(true)),
                ..PurgingCl::default()
            });
        } else {
            fx.pcl_mut(clid).purge_reasons = vec![reason(
                Kind::OwnerLacksEmail(true),
                purge_reason::ApplyTo::AllActiveTriggers(true),
            )];
        }
        assert!(
            m_trigger_deps(&fx, &[1, 2, 3]).is_empty(),
            "clid {clid} purging {purging}"
        );
    }
}

#[test]
fn m3_ops_on_origin_or_parent_block_requests() {
    for (origin, deps) in [(3, vec![1, 2]), (2, vec![1])] {
        let mut fx = m_fixture([false, origin == 2, true]);
        fx.add_op(TriggeringClDeps {
            origin_clid: origin,
            dep_clids: deps,
            ..TriggeringClDeps::default()
        });
        assert!(
            m_trigger_deps(&fx, &[1, 2, 3]).is_empty(),
            "origin {origin}"
        );
    }
}

#[test]
fn m_dep_running_with_its_own_unvoted_deps_blocks_the_child() {
    // Original "incomplete run with different CQVotes in deps": the parent
    // (3) still runs FULL_RUN while its own deps lost their votes.
    let mut fx = Fx::new("test", vec![group("cg1")]);
    fx.put_pcl_m(1, "", vec![]);
    fx.put_pcl_m(2, DRY_RUN, vec![hard(1)]);
    fx.put_pcl_m(3, FULL_RUN, vec![hard(1), hard(2)]);
    fx.put_pcl_m(4, FULL_RUN, vec![hard(1), hard(2), hard(3)]);
    let c = component(
        &[1, 2, 3, 4],
        vec![prun("r2", DRY_RUN, &[2]), prun("r3", FULL_RUN, &[3])],
        true,
    );
    assert!(fx.must_triage(&c).cls_to_trigger_deps.is_empty());
    // MCE over MCE: 1 and 2 run FULL_RUN, 3 is unvoted, 4 voted.
    let mut fx = Fx::new("test", vec![group("cg1")]);
    fx.put_pcl_m(1, FULL_RUN, vec![]);
    fx.put_pcl_m(2, FULL_RUN, vec![hard(1)]);
    fx.put_pcl_m(3, "", vec![hard(1), hard(2)]);
    fx.put_pcl_m(4, FULL_RUN, vec![hard(1), hard(2), hard(3)]);
    let c = component(
        &[1, 2, 3, 4],
        vec![prun("r1", FULL_RUN, &[1]), prun("r2", FULL_RUN, &[2])],
        true,
    );
    assert_eq!(
        fx.must_triage(&c).cls_to_trigger_deps,
        vec![m_expected(4, &[3])]
    );
}

// ---------------------------------------------------------------------------
// N. Immediate hard deps / quota payer.

fn n_immediate(pcls: &[(i64, Vec<Dep>)], of: i64) -> Vec<i64> {
    let mut fx = Fx::new("test", vec![group("g")]);
    for (clid, deps) in pcls {
        fx.set_pcl(l_pcl(*clid, 0, None, deps.clone()));
    }
    let view = fx.view();
    let pcl = view.pcl(of).unwrap();
    find_immediate_hard_deps(pcl, &BTreeMap::new(), &view).unwrap()
}

#[test]
fn n1_immediate_hard_deps() {
    let stack = vec![(1, vec![]), (2, vec![hard(1)]), (3, vec![hard(1), hard(2)])];
    assert_eq!(n_immediate(&stack, 1), Vec::<i64>::new());
    assert_eq!(n_immediate(&stack, 2), vec![1]);
    assert_eq!(n_immediate(&stack, 3), vec![2]);

    // Two stacks merged: s1 = 11 <- 12, s2 = 21 <- 22; 3 on top of both.
    let merged = vec![
        (11, vec![]),
        (12, vec![hard(11)]),
        (21, vec![]),
        (22, vec![hard(21)]),
        (3, vec![hard(11), hard(12), hard(21), hard(22)]),
    ];
    assert_eq!(n_immediate(&merged, 3), vec![12, 22]);

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

#[test]
fn n2_quota_payer() {
    let owner = "user:user-1@example.com";
    let triggerer = "user:user-2@example.com";
    let auto_submit = |on: bool| Snapshot {
        gerrit: Some(GerritChange {
            votes: if on {
                vec![Vote {
                    label: "Auto-Submit".into(),
                    value: 1,
                    ..Vote::default()
                }]
            } else {
                vec![]
            },
            ..GerritChange::default()
        }),
        ..Snapshot::default()
    };
    let custom = |cq: i32| Trigger {
        mode: "custom-mode".into(),
        mode_definition: Some(Mode {
            name: "custom-mode".into(),
            cq_label_value: cq,
            triggering_label: "custom-label".into(),
            triggering_value: 1,
        }),
        ..Trigger::default()
    };
    let pay = |t: &Trigger, on: bool, o: &str, tr: &str| {
        quota_payer(1234, o, tr, t, Some(&auto_submit(on)))
    };
    // NEW_PATCHSET_RUN: the triggerer (who is the owner).
    for on in [true, false] {
        assert_eq!(
            pay(&trigger(NEW_PATCHSET_RUN, T0), on, owner, owner).unwrap(),
            owner
        );
    }
    // Dry runs, standard or custom (CQ value 1): always the triggerer.
    for t in [trigger(DRY_RUN, T0), custom(1)] {
        for on in [true, false] {
            assert_eq!(pay(&t, on, owner, triggerer).unwrap(), triggerer);
        }
    }
    // Full runs, standard or custom (CQ value 2): the owner iff Auto-Submit.
    for t in [trigger(FULL_RUN, T0), custom(2)] {
        assert_eq!(pay(&t, true, owner, triggerer).unwrap(), owner);
        assert_eq!(pay(&t, false, owner, triggerer).unwrap(), triggerer);
    }
    // Empty or anonymous owner: a bug.
    let t = trigger(FULL_RUN, T0);
    match pay(&t, true, "", triggerer) {
        Err(TriageError::Bug(m)) => assert!(m.contains("empty owner"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    match pay(&t, true, "anonymous:anonymous", triggerer) {
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
    let (mut fx, c) = k3_fixture();
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
