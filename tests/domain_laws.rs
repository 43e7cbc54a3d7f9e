//! Laws of the fold, as properties over random project streams:
//! * folding a stream twice gives the same bytes (state, digest, decisions)
//!   and never panics;
//! * encoding the state at any cut point and folding the tail from the
//!   decoded state gives the same bytes as the full fold;
//! * through `fold::apply_recorded`, markers left to be filled are filled
//!   and a re-fold of the filled stream reports no divergence, while a
//!   tampered digest is reported as one;
//! * invalid inputs (a completion for an unknown CL, a Run finishing twice,
//!   a Run of another project, a zero clid…) leave a trace and never panic.

use prjmanager::proto::Timestamp;
use proptest::prelude::*;
use prost::Message;

use prjmanager::domain::triage_api::{PmView, TriageError, TriageResult};
use prjmanager::domain::{self, evaluate_remembering, evaluate_with, Evaluation, Memo, TriageFn};
use prjmanager::proto::{
    self, cl_error, input_event::Event, purge_reason, purging_cl, run, ChangeList, ClError,
    ClsUpdated, Component, ConfigUpdated, Evaluated, Poked, ProjectConfig, PurgeCl, PurgeCompleted,
    PurgeReason, PurgingCl, Run, RunCreated, RunFinished, TriggeringClDeps,
    TriggeringClDepsCompleted,
};
use prjmanager::testing::{ClBuilder, ConfigBuilder};
use prjmanager::{events, fold, store::RecordedEvent};

const PROJECT: &str = "test";
const T: i64 = 1_580_639_400;
const HOST: &str = "c-review.example.com";

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

// ---------------------------------------------------------------------------
// Triagers: the stub, and a "chaos" triager that exercises every kind of
// result (and invalid ones) as a pure function of its inputs.

const TRIAGERS: [TriageFn; 2] = [domain::TRIAGER, chaos];

fn always_fails(_: &Component, _: &PmView<'_>) -> Result<TriageResult, TriageError> {
    Err(TriageError::Bug("always".into()))
}

fn chaos(c: &Component, view: &PmView<'_>) -> Result<TriageResult, TriageError> {
    let seed = c.clids.iter().sum::<i64>() + view.now.seconds / 60;
    let mut result = TriageResult {
        new_value: c.triage_required.then(|| Component {
            triage_required: false,
            ..c.clone()
        }),
        ..Default::default()
    };
    let first = c.clids[0];
    match seed.rem_euclid(7) {
        0 if view.purging_cl(first).is_none() => {
            result.cls_to_purge = vec![PurgeCl {
                purging_cl: Some(PurgingCl {
                    clid: first,
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
            }];
        }
        1 if view.triggering_cl_deps(first).is_none() => {
            let deps = view
                .pcl(first)
                .map(|p| p.deps.iter().map(|d| d.clid).collect())
                .unwrap_or_default();
            result.cls_to_trigger_deps = vec![TriggeringClDeps {
                origin_clid: first,
                dep_clids: deps,
                config_group_name: "g0".into(),
                ..Default::default()
            }];
        }
        2 => {
            // Now and then a Run the streams create (which may be known).
            let run_id = if (seed / 7) % 2 == 0 {
                format!(
                    "{}/{}-1-{first:x}",
                    view.luci_project,
                    9_000_000 - view.now.seconds / 60
                )
            } else if (seed / 7) % 3 == 1 && !view.run_requests.is_empty() {
                // A Run the PM asked for already (the triager would wait).
                let i = (seed / 21) as usize % view.run_requests.len();
                view.run_requests[i].run_id.clone()
            } else {
                format!("{}/{}-1-aa", view.luci_project, first % 5)
            };
            result.runs_to_create = vec![proto::CreateRun {
                run_id,
                mode: "DRY_RUN".into(),
                ..Default::default()
            }];
        }
        3 => {
            result.new_value = Some(Component {
                triage_required: false,
                decision_time: Some(ts(view.now.seconds + 120)),
                ..c.clone()
            });
        }
        4 => return Err(TriageError::Bug("chaos".into())),
        5 => return Err(TriageError::OutdatedPmState("chaos".into())),
        // An invalid result: purging a CL outside the component.
        6 => {
            result.cls_to_purge = vec![PurgeCl {
                purging_cl: Some(PurgingCl {
                    clid: 10_000,
                    ..Default::default()
                }),
                ..Default::default()
            }];
        }
        _ => {}
    }
    Ok(result)
}

// ---------------------------------------------------------------------------
// Random streams.

/// What one step of a stream does; indexes are resolved against the state
/// when the stream is first folded, so that completions can name real
/// operations.
#[derive(Debug, Clone)]
enum Step {
    Config {
        variant: u8,
    },
    Poke,
    Cls(Vec<ClSpec>),
    RunCreated {
        run: u8,
        clids: Vec<i64>,
        status: u8,
    },
    RunFinished {
        run: u8,
        status: u8,
    },
    /// The Run Manager creates a Run the PM asked for (a `CreateRun` of an
    /// earlier marker); a poke if none was asked for.
    RequestedRunCreated {
        pick: u8,
        status: u8,
    },
    PurgeCompleted {
        pick: u8,
    },
    DepsCompleted {
        pick: u8,
        fail: bool,
    },
    Marker {
        advance_seconds: i64,
        triager: u8,
    },
}

#[derive(Debug, Clone)]
struct ClSpec {
    clid: i64,
    eversion: i64,
    main: bool,
    vote: i32,
    dep: Option<(i64, bool)>,
    status: u8,
    outdated: bool,
    foreign: bool,
}

fn cl_spec() -> impl Strategy<Value = ClSpec> {
    (
        1..=8i64,
        1..=6i64,
        any::<bool>(),
        0..=2i32,
        proptest::option::of((1..=9i64, any::<bool>())),
        0..=5u8,
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(clid, eversion, main, vote, dep, status, outdated, foreign)| ClSpec {
                clid,
                eversion,
                main,
                vote,
                dep,
                status,
                outdated,
                foreign,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0..4u8).prop_map(|variant| Step::Config { variant }),
        1 => Just(Step::Poke),
        4 => proptest::collection::vec(cl_spec(), 1..4).prop_map(Step::Cls),
        2 => (0..5u8, proptest::collection::vec(1..=9i64, 0..3), 0..4u8)
            .prop_map(|(run, clids, status)| Step::RunCreated { run, clids, status }),
        2 => (0..5u8, 0..4u8).prop_map(|(run, status)| Step::RunFinished { run, status }),
        1 => (any::<u8>(), 0..4u8).prop_map(|(pick, status)| Step::RequestedRunCreated { pick, status }),
        1 => any::<u8>().prop_map(|pick| Step::PurgeCompleted { pick }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(pick, fail)| Step::DepsCompleted { pick, fail }),
        // Now and then a marker 8 days later: ended Runs are forgotten.
        3 => (prop_oneof![9 => 0..900i64, 1 => Just(8 * 86_400i64)], 0..2u8)
            .prop_map(|(advance_seconds, triager)| Step::Marker { advance_seconds, triager }),
    ]
}

fn config(variant: u8) -> ProjectConfig {
    let config = ConfigBuilder::new(&format!("h{variant}"), i64::from(variant) + 1)
        .group("g0", |g| g.watch(HOST, "repo/a", "refs/heads/main"))
        .group("g1", |g| {
            let g = g.watch(HOST, "repo/a", "refs/heads/.+");
            if variant != 1 {
                g.fallback()
            } else {
                g
            }
        });
    if variant == 3 {
        config.disabled().build()
    } else {
        config.build()
    }
}

fn change_list(spec: &ClSpec, now: i64) -> ChangeList {
    let (git_ref, group) = if spec.main {
        ("refs/heads/main", "g0")
    } else {
        ("refs/heads/dev", "g1")
    };
    let mut cl = ClBuilder::new(PROJECT, spec.clid)
        .eversion(spec.eversion)
        .host(HOST)
        .git_ref(git_ref)
        .owner("owner@example.com")
        // The revision is part of the RunID: a vote given again at the same
        // eversion (see `busy_steps`) changes the CL's Run.
        .revision(&format!("r{}", spec.vote))
        .uploaded(ts(now - 60))
        .group(group);
    if spec.foreign {
        cl = cl.watched_by_projects(&[PROJECT, "other"]);
    }
    cl = match spec.status {
        4 => cl.status_merged(),
        5 => cl.status_abandoned(),
        _ => cl,
    };
    if spec.vote > 0 {
        cl = cl.cq_vote(spec.vote, "user@example.com", ts(now - 30));
    }
    cl = match spec.dep {
        Some((clid, true)) => cl.deps_hard(&[clid]),
        Some((clid, false)) => cl.deps_soft(&[clid]),
        None => cl,
    };
    if spec.outdated {
        cl = cl.outdated();
    }
    // The CLs stay in the groups of the first config ("h0/g0", "h0/g1").
    cl.build(Some(&config(0)))
}

/// One item of a concrete stream.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Input(Event),
    Marker { now: Timestamp, triager: usize },
}

fn run_status(n: u8) -> i32 {
    [
        run::Status::Running,
        run::Status::Succeeded,
        run::Status::Failed,
        run::Status::Cancelled,
    ][usize::from(n % 4)] as i32
}

/// Folds the steps once, resolving them into a concrete stream.
fn materialize(steps: &[Step]) -> Vec<Item> {
    let mut state = domain::new_project(PROJECT);
    let mut now = T;
    let mut items = Vec::new();
    let mut requested: Vec<proto::CreateRun> = Vec::new();
    for (revision, s) in steps.iter().enumerate() {
        let revision = revision as u64;
        let item = match s {
            Step::Marker {
                advance_seconds,
                triager,
            } => {
                now += advance_seconds;
                Item::Marker {
                    now: ts(now),
                    triager: usize::from(*triager) % TRIAGERS.len(),
                }
            }
            Step::Config { variant } => Item::Input(Event::ConfigUpdated(ConfigUpdated {
                config: Some(config(*variant)),
            })),
            Step::Poke => Item::Input(Event::Poked(Poked {})),
            Step::Cls(specs) => Item::Input(Event::ClsUpdated(ClsUpdated {
                cls: specs.iter().map(|spec| change_list(spec, now)).collect(),
            })),
            Step::RunCreated { run, clids, status } => Item::Input(Event::RunCreated(RunCreated {
                run: Some(Run {
                    id: format!("{PROJECT}/{run}-1-aa"),
                    mode: if run % 2 == 0 { "FULL_RUN" } else { "DRY_RUN" }.into(),
                    clids: clids.clone(),
                    create_time: Some(ts(now)),
                    status: run_status(*status),
                    ..Default::default()
                }),
            })),
            Step::RunFinished { run, status } => Item::Input(Event::RunFinished(RunFinished {
                run_id: format!("{PROJECT}/{run}-1-aa"),
                status: run_status(status.max(&1).to_owned()),
                end_time: Some(ts(now)),
            })),
            Step::RequestedRunCreated { pick, status } => {
                match requested.get(usize::from(*pick) % requested.len().max(1)) {
                    Some(asked) => Item::Input(Event::RunCreated(RunCreated {
                        run: Some(Run {
                            id: asked.run_id.clone(),
                            mode: asked.mode.clone(),
                            clids: asked.input_cls.iter().map(|c| c.clid).collect(),
                            create_time: Some(ts(now)),
                            status: run_status(*status),
                            end_time: (*status > 0).then(|| ts(now)),
                            ..Default::default()
                        }),
                    })),
                    None => Item::Input(Event::Poked(Poked {})),
                }
            }
            Step::PurgeCompleted { pick } => {
                let purging = &state.pstate.as_ref().unwrap().purging_cls;
                let (op, clid) = match purging.get(usize::from(*pick) % (purging.len() + 1)) {
                    Some(p) => (p.operation_id.clone(), p.clid),
                    None => ("unknown-op".to_string(), i64::from(*pick % 9) + 1),
                };
                Item::Input(Event::PurgeCompleted(PurgeCompleted {
                    operation_id: op,
                    clid,
                }))
            }
            Step::DepsCompleted { pick, fail } => {
                let ops = &state.pstate.as_ref().unwrap().triggering_cl_deps;
                let (op, origin, deps) = match ops.get(usize::from(*pick) % (ops.len() + 1)) {
                    Some(o) => (o.operation_id.clone(), o.origin_clid, o.dep_clids.clone()),
                    None => ("unknown-op".to_string(), i64::from(*pick % 9) + 1, vec![]),
                };
                let (succeeded, failed) = match (fail, deps.split_first()) {
                    (true, Some((first, rest))) => (
                        rest.to_vec(),
                        vec![cl_error::TriggerDeps {
                            not_found: vec![*first],
                            ..Default::default()
                        }],
                    ),
                    _ => (deps, vec![]),
                };
                Item::Input(Event::TriggeringClDepsCompleted(
                    TriggeringClDepsCompleted {
                        operation_id: op,
                        origin,
                        succeeded,
                        failed,
                        incompleted: vec![],
                    },
                ))
            }
        };
        match &item {
            Item::Input(e) => domain::apply_event(&mut state, revision, e).expect("input event"),
            Item::Marker { now, triager } => {
                let evaluation = evaluate_with(&mut state, revision, *now, TRIAGERS[*triager]);
                requested.extend(evaluation.actions.into_iter().filter_map(|a| match a {
                    proto::action::Action::CreateRun(asked) => Some(asked),
                    _ => None,
                }));
            }
        }
        items.push(item);
    }
    items
}

/// Folds a concrete stream from a new project, applying its input events and
/// handing each marker to `at_marker` (state, revision, now, triager index),
/// which evaluates it and checks what it wants.
fn fold_markers_with(
    items: &[Item],
    mut at_marker: impl FnMut(
        &mut proto::ProjectState,
        u64,
        Timestamp,
        usize,
    ) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut state = domain::new_project(PROJECT);
    for (revision, item) in items.iter().enumerate() {
        let revision = revision as u64;
        match item {
            Item::Input(e) => domain::apply_event(&mut state, revision, e).expect("input event"),
            Item::Marker { now, triager } => at_marker(&mut state, revision, *now, *triager)?,
        }
    }
    Ok(())
}

/// Folds a concrete stream from `state`, starting at `revision`.
fn fold_from(
    mut state: proto::ProjectState,
    first_revision: u64,
    items: &[Item],
) -> (proto::ProjectState, Vec<Evaluation>) {
    let mut evaluations = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let revision = first_revision + i as u64;
        match item {
            Item::Input(e) => domain::apply_event(&mut state, revision, e).expect("input event"),
            Item::Marker { now, triager } => {
                evaluations.push(evaluate_with(
                    &mut state,
                    revision,
                    *now,
                    TRIAGERS[*triager],
                ));
            }
        }
    }
    (state, evaluations)
}

/// The version 1 state digest as `src/fold/digest.rs` defines it: BLAKE3
/// of the state's encoding with its known Runs in ascending id order (the
/// state keeps them descending).
fn digest_v1_by_definition(state: &proto::ProjectState) -> Vec<u8> {
    let mut ascending = state.clone();
    ascending.runs.sort_by(|a, b| a.id.cmp(&b.id));
    blake3::hash(&ascending.encode_to_vec()).as_bytes().to_vec()
}

/// The version 2 (`chained == false`) or 3 state digest as
/// `src/fold/digest.rs` defines it, computed the plain way: the state with
/// its four lists emptied, then each list's length and its entity hashes
/// (version 2) or their chain sum (version 3: the sum modulo 2^256 of
/// BLAKE3(previous hash ‖ hash), the first one's previous being zeros).
fn digest_by_definition(state: &proto::ProjectState, chained: bool) -> Vec<u8> {
    let mut rest = state.clone();
    let cls = std::mem::take(&mut rest.cls);
    let mut runs = std::mem::take(&mut rest.runs);
    // Every version takes the known Runs in ascending id order.
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    let (pcls, components) = match rest.pstate.as_mut() {
        Some(p) => (
            std::mem::take(&mut p.pcls),
            std::mem::take(&mut p.components),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(if chained {
        b"prjmanager state digest v3\0"
    } else {
        b"prjmanager state digest v2\0"
    });
    let rest = rest.encode_to_vec();
    hasher.update(&(rest.len() as u64).to_le_bytes());
    hasher.update(&rest);
    let list = |hasher: &mut blake3::Hasher, hashes: Vec<[u8; 32]>| {
        hasher.update(&(hashes.len() as u64).to_le_bytes());
        if !chained {
            for hash in &hashes {
                hasher.update(hash);
            }
            return;
        }
        // As a big number: 32 bytes little-endian, summed with carries.
        let mut sum = [0u8; 32];
        let mut previous = [0u8; 32];
        for hash in hashes {
            let term = blake3::hash(&[previous, hash].concat());
            let mut carry = 0u16;
            for (s, t) in sum.iter_mut().zip(term.as_bytes()) {
                let total = u16::from(*s) + u16::from(*t) + carry;
                *s = total as u8;
                carry = total >> 8;
            }
            previous = hash;
        }
        hasher.update(&sum);
    };
    fn hashes<T: Message>(entities: &[T]) -> Vec<[u8; 32]> {
        entities
            .iter()
            .map(|e| *blake3::hash(&e.encode_to_vec()).as_bytes())
            .collect()
    }
    list(&mut hasher, hashes(&cls));
    list(&mut hasher, hashes(&runs));
    list(&mut hasher, hashes(&pcls));
    list(&mut hasher, hashes(&components));
    let mut digest = vec![if chained { 3 } else { 2 }];
    digest.extend_from_slice(hasher.finalize().as_bytes());
    digest
}

fn recorded(revision: u64, event: &Event) -> RecordedEvent {
    RecordedEvent {
        stream: prjmanager::streams::project_stream(PROJECT),
        revision,
        position: revision + 1,
        id: uuid::Uuid::nil(),
        event_type: events::type_name(event).to_string(),
        data: events::encode(event),
        metadata: vec![],
    }
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    // Start the project first most of the time, so that most steps matter.
    (any::<bool>(), proptest::collection::vec(step(), 1..40)).prop_map(|(start, mut rest)| {
        if start {
            rest.insert(0, Step::Config { variant: 0 });
            rest.insert(
                1,
                Step::Marker {
                    advance_seconds: 0,
                    triager: 0,
                },
            );
        }
        rest
    })
}

/// Streams where a few ready CLs are announced again and again (often at
/// an eversion already seen, with another vote or trigger time) between
/// markers a few seconds apart: the same Runs are planned at many markers.
fn busy_steps() -> impl Strategy<Value = Vec<Step>> {
    let ready_cl = (
        1..=3i64,
        1..=2i64,
        1..=2i32,
        proptest::option::of((1..=3i64, any::<bool>())),
    )
        .prop_map(|(clid, eversion, vote, dep)| ClSpec {
            clid,
            eversion,
            main: clid != 3,
            vote,
            dep,
            status: 0,
            outdated: false,
            foreign: false,
        });
    let step = prop_oneof![
        3 => proptest::collection::vec(ready_cl, 1..3).prop_map(Step::Cls),
        3 => (0..90i64, prop_oneof![5 => Just(0u8), 1 => Just(1u8)])
            .prop_map(|(advance_seconds, triager)| Step::Marker { advance_seconds, triager }),
        1 => (any::<u8>(), 0..4u8).prop_map(|(pick, status)| Step::RequestedRunCreated { pick, status }),
        1 => Just(Step::Poke),
        1 => (0..3u8).prop_map(|variant| Step::Config { variant }),
        1 => any::<u8>().prop_map(|pick| Step::PurgeCompleted { pick }),
    ];
    proptest::collection::vec(step, 1..40).prop_map(|mut rest| {
        rest.insert(0, Step::Config { variant: 0 });
        rest
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn folding_twice_gives_the_same_bytes(steps in steps()) {
        let items = materialize(&steps);
        let (a, ea) = fold_from(domain::new_project(PROJECT), 0, &items);
        let (b, eb) = fold_from(domain::new_project(PROJECT), 0, &items);
        prop_assert_eq!(a.encode_to_vec(), b.encode_to_vec());
        prop_assert_eq!(fold::state_digest(&a), fold::state_digest(&b));
        prop_assert_eq!(ea, eb);
    }

    #[test]
    fn remembered_run_ids_change_no_decision(steps in prop_oneof![steps(), busy_steps()]) {
        // The RunID memo is a cache: a fold that remembers the RunIDs of
        // earlier invocations (as `fold::apply_recorded` does) decides and
        // saves exactly what a fold planning every Run afresh does, even
        // when a CL is announced again at the same eversion with other
        // contents or a config replaces the groups.
        let items = materialize(&steps);
        let (plain, plain_evaluations) = fold_from(domain::new_project(PROJECT), 0, &items);
        let mut memo = Memo::default();
        let mut remembered = Vec::new();
        let mut state = domain::new_project(PROJECT);
        for (revision, item) in items.iter().enumerate() {
            let revision = revision as u64;
            match item {
                Item::Input(e) => domain::apply_event(&mut state, revision, e).expect("input event"),
                Item::Marker { now, triager } => remembered.push(evaluate_remembering(
                    &mut state,
                    revision,
                    *now,
                    TRIAGERS[*triager],
                    &mut memo,
                )),
            }
        }
        prop_assert_eq!(plain.encode_to_vec(), state.encode_to_vec());
        prop_assert_eq!(plain_evaluations, remembered);
    }

    #[test]
    fn a_failed_invocation_leaves_the_pm_state_as_it_was(steps in steps()) {
        // At every marker, the same invocation with a triager that always
        // fails either saves (it repartitioned) or leaves the PState exactly
        // as loaded, PCLs included (evaluate restores all but the PCLs).
        fold_markers_with(&materialize(&steps), |state, revision, now, triager| {
            let mut failing = state.clone();
            let evaluation = evaluate_with(&mut failing, revision, now, always_fails);
            if evaluation.trace.iter().any(|t| t.starts_with("invocation failed")) {
                prop_assert_eq!(&failing.pstate, &state.pstate);
            }
            evaluate_with(state, revision, now, TRIAGERS[triager]);
            Ok(())
        })?;
    }

    #[test]
    fn no_run_request_names_a_known_run_after_an_invocation(steps in steps()) {
        // What lets an invocation prune requests by the Runs its pending
        // events name only (`prune_known`): whichever triager ran, every
        // invocation ends with no request for a Run the state knows.
        fold_markers_with(&materialize(&steps), |state, revision, now, triager| {
            evaluate_with(state, revision, now, TRIAGERS[triager]);
            for request in &state.run_requests {
                prop_assert!(
                    state.runs.iter().all(|r| r.id != request.run_id),
                    "request for known Run {} at revision {}", request.run_id, revision
                );
            }
            Ok(())
        })?;
    }

    #[test]
    fn snapshot_plus_tail_equals_full_fold(steps in steps(), cut in any::<proptest::sample::Index>()) {
        let items = materialize(&steps);
        let cut = cut.index(items.len() + 1);
        let (full, full_evaluations) = fold_from(domain::new_project(PROJECT), 0, &items);
        let (prefix, prefix_evaluations) = fold_from(domain::new_project(PROJECT), 0, &items[..cut]);
        let snapshot = proto::ProjectState::decode(prefix.encode_to_vec().as_slice()).expect("decodes");
        let (resumed, tail_evaluations) = fold_from(snapshot, cut as u64, &items[cut..]);
        prop_assert_eq!(full.encode_to_vec(), resumed.encode_to_vec());
        let mut evaluations = prefix_evaluations;
        evaluations.extend(tail_evaluations);
        prop_assert_eq!(full_evaluations, evaluations);
    }

    #[test]
    fn recorded_markers_are_filled_then_verified(steps in steps()) {
        let items = materialize(&steps);
        let mut state = domain::new_project(PROJECT);
        let mut digester = fold::Digester::default();
        let mut stored = Vec::new();
        for (revision, item) in items.iter().enumerate() {
            let revision = revision as u64;
            // Only the default triager runs through `fold::apply_recorded`.
            let event = match item {
                Item::Input(e) => e.clone(),
                Item::Marker { now, .. } => Event::Evaluated(Evaluated { now: Some(*now), ..Default::default() }),
            };
            let outcome = fold::apply_recorded(&mut state, &recorded(revision, &event), &mut digester).expect("folds");
            match outcome {
                None => stored.push(event),
                Some(o) => {
                    prop_assert!(o.filled && o.divergence.is_none());
                    // The digester that followed the fold gives what a
                    // from-scratch computation and the definition give.
                    prop_assert_eq!(fold::DigestVersion::of(&o.marker.state_digest), Some(fold::DigestVersion::V3));
                    prop_assert_eq!(&o.marker.state_digest, &fold::state_digest(&state));
                    prop_assert_eq!(&o.marker.state_digest, &digest_by_definition(&state, true));
                    stored.push(Event::Evaluated(o.marker));
                }
            }
        }
        // The markers are stored with version 1, 2 and 3 digests in turn,
        // as files recorded before version 3 are: all verify, the following
        // digester switching between versions.
        let mut markers = 0;
        let mut replayed = domain::new_project(PROJECT);
        for (revision, event) in stored.iter_mut().enumerate() {
            fold::apply_recorded(&mut replayed, &recorded(revision as u64, event), &mut fold::Digester::default()).expect("folds");
            if let Event::Evaluated(m) = event {
                markers += 1;
                match markers % 3 {
                    1 => m.state_digest = digest_v1_by_definition(&replayed),
                    2 => m.state_digest = digest_by_definition(&replayed, false),
                    _ => {}
                }
            }
        }
        let mut again = domain::new_project(PROJECT);
        let mut digester = fold::Digester::default();
        let mut tampered_at = None;
        for (revision, event) in stored.iter().enumerate() {
            let outcome = fold::apply_recorded(&mut again, &recorded(revision as u64, event), &mut digester).expect("folds");
            if let Some(o) = outcome {
                prop_assert!(!o.filled && o.divergence.is_none());
                let Event::Evaluated(m) = event else { unreachable!() };
                prop_assert_eq!(&o.marker, m);
                tampered_at.get_or_insert(revision);
            }
        }
        prop_assert_eq!(again.encode_to_vec(), state.encode_to_vec());
        // A marker with a wrong digest is a divergence, not an error.
        if let Some(at) = tampered_at {
            let mut replay = domain::new_project(PROJECT);
            for (revision, event) in stored.iter().enumerate().take(at + 1) {
                let mut event = event.clone();
                if revision == at {
                    if let Event::Evaluated(m) = &mut event {
                        m.state_digest = vec![0; 32];
                    }
                }
                let outcome = fold::apply_recorded(&mut replay, &recorded(revision as u64, &event), &mut fold::Digester::default()).expect("folds");
                if revision == at {
                    prop_assert!(outcome.unwrap().divergence.is_some());
                }
            }
        }
    }

    #[test]
    fn invalid_inputs_leave_a_trace_and_never_panic(steps in steps(), kind in 0..6u8) {
        let items = materialize(&steps);
        let (mut state, _) = fold_from(domain::new_project(PROJECT), 0, &items);
        let mut revision = items.len() as u64;
        let now = ts(T + 100_000);
        let mut send = |state: &mut proto::ProjectState, e: Event| {
            domain::apply_event(state, revision, &e).expect("input event");
            revision += 1;
        };
        let (invalid, needle) = match kind {
            0 => (Event::PurgeCompleted(PurgeCompleted { operation_id: "nope".into(), clid: 4242 }), "PurgeCompleted"),
            1 => (Event::TriggeringClDepsCompleted(TriggeringClDepsCompleted {
                operation_id: "nope".into(), origin: 4242, ..Default::default()
            }), "TriggeringClDepsCompleted"),
            2 => (Event::RunCreated(RunCreated { run: Some(Run {
                id: "another/1-1-aa".into(), clids: vec![1], status: run::Status::Running as i32, ..Default::default()
            }) }), "another/1-1-aa"),
            3 => (Event::RunFinished(RunFinished {
                run_id: "another/1-1-aa".into(), status: run::Status::Failed as i32, end_time: Some(now),
            }), "another/1-1-aa"),
            4 => (Event::ClsUpdated(ClsUpdated { cls: vec![ChangeList { clid: 0, eversion: 1, ..Default::default() }] }), "clid 0"),
            _ => {
                // A Run finishing twice: the second finish is not tracked.
                let finish = Event::RunFinished(RunFinished {
                    run_id: "test/twice-1-aa".into(), status: run::Status::Failed as i32, end_time: Some(now),
                });
                send(&mut state, finish.clone());
                evaluate_with(&mut state, revision, now, domain::TRIAGER);
                revision += 1;
                (finish, "test/twice-1-aa")
            }
        };
        let mut send = |state: &mut proto::ProjectState, e: Event| {
            domain::apply_event(state, revision, &e).expect("input event");
            revision += 1;
        };
        send(&mut state, invalid);
        let e = evaluate_with(&mut state, revision, now, domain::TRIAGER);
        prop_assert!(e.trace.iter().any(|w| w.contains(needle)), "no trace naming {}: {:?}", needle, e.trace);
        let leftover = state.pending.iter().any(|p| matches!(
            &p.event,
            Some(proto::pending_event::Event::RunCreated(id)) if id.starts_with("another/")
        ));
        prop_assert!(!leftover, "an ignored input does not stay pending");
    }
}

#[test]
fn apply_recorded_rejects_out_of_order_and_foreign_events() {
    let mut state = domain::new_project(PROJECT);
    let mut digester = fold::Digester::default();
    let poke = Event::Poked(Poked {});
    let err = fold::apply_recorded(&mut state, &recorded(1, &poke), &mut digester).unwrap_err();
    assert!(
        matches!(
            err,
            domain::FoldError::RevisionOutOfOrder {
                expected: 0,
                actual: 1
            }
        ),
        "{err}"
    );
    fold::apply_recorded(&mut state, &recorded(0, &poke), &mut digester).unwrap();
    let err = fold::apply_recorded(&mut state, &recorded(0, &poke), &mut digester).unwrap_err();
    assert!(
        matches!(
            err,
            domain::FoldError::RevisionOutOfOrder {
                expected: 1,
                actual: 0
            }
        ),
        "{err}"
    );
    let mut foreign = recorded(1, &poke);
    foreign.stream = "project-other".into();
    assert!(matches!(
        fold::apply_recorded(&mut state, &foreign, &mut digester).unwrap_err(),
        domain::FoldError::WrongProject { .. }
    ));
    let mut garbage = recorded(1, &poke);
    garbage.event_type = "Bogus".into();
    assert!(matches!(
        fold::apply_recorded(&mut state, &garbage, &mut digester).unwrap_err(),
        domain::FoldError::Undecodable { revision: 1, .. }
    ));
    let marker = Event::Evaluated(Evaluated::default());
    assert!(matches!(
        fold::apply_recorded(&mut state, &recorded(1, &marker), &mut digester).unwrap_err(),
        domain::FoldError::MarkerWithoutNow { revision: 1 }
    ));
    assert!(matches!(
        domain::apply_event(&mut state, 1, &marker).unwrap_err(),
        domain::FoldError::UnexpectedMarker { revision: 1 }
    ));
}
