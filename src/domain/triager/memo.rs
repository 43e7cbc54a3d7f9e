//! RunIDs planned at earlier markers, kept so that triage does not plan the
//! same Run again at every marker.
//!
//! Run staging plans every ready CL of a component it triages (checks, then
//! the RunID's SHA-256), and most plans end in "the Run exists" or "it was
//! requested less than a minute ago": a component is triaged again whenever
//! any of its CLs changes, and each of its other CLs plans the same Run as
//! before. A [`RunIdMemo`] remembers, per combo (trigger kind, first CL), the
//! RunID a successful plan computed and what it was computed from: the
//! config group index and each member's `(clid, eversion)`. A plan with the
//! same inputs computes the same RunID and passes the same checks, so a hit
//! needs neither; only a Run about to be created (or a miss) is planned in
//! full.
//!
//! The key leaves out the CL entities' and the config's contents, which the
//! fold can change without a new eversion or config index (a `ClsUpdated`
//! may repeat a CL's eversion with other contents; a new config can keep
//! the groups' indexes). So the memo is told of every such change:
//! [`RunIdMemo::invalidate`] runs at the start of every invocation and
//! forgets every combo with a CL named by a pending `ClsUpdated` (every
//! replaced CL entity has one until an invocation consumes it), and
//! everything when a config event is pending. A memo therefore belongs to one
//! state, followed from invocation to invocation: one that has not followed
//! the state must be cleared ([`RunIdMemo::clear`]) before it is used.
//!
//! It is a cache and nothing else: it is not part of the state, its digest
//! or its snapshots, and triage decides the same with or without it (a
//! proptest of `tests/domain_laws.rs` checks this).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::domain::time::Nanos;
use crate::proto::{pending_event, PendingEvent};

use super::cls::ClInfo;
use super::creator::Combo;
use super::TriggerKind;

/// What a RunID was computed from, beside its key.
#[derive(Debug, Clone)]
struct Entry {
    cg_index: i32,
    /// Each member's `(clid, eversion)`, in combo order.
    members: Vec<(i64, i64)>,
    known: Known,
    /// [`run_key`] of the RunID.
    run_key: u64,
}

/// What the memo knows of a combo's Run.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    /// The RunID.
    pub(crate) run_id: String,
    /// When the PM requested that Run, if a request was seen (or made) and
    /// the Run was not known then. Forgotten when the memo learns that the
    /// Run became known ([`RunIdMemo::invalidate`]), updated when it is
    /// requested again ([`RunIdMemo::requested`]); whether the request is
    /// still young is for the caller to check.
    pub(crate) requested_at: Option<Nanos>,
}

/// A 64-bit FNV-1a hash of a RunID: entries are found by the RunIDs named
/// in events by comparing these first.
fn run_key(run_id: &str) -> u64 {
    run_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// RunIDs of combos planned earlier (see the module documentation).
#[derive(Debug, Default, Clone)]
pub struct RunIdMemo {
    /// Keyed by (trigger kind, the combo's first CL). Interior mutability
    /// lets triage, which reads its view through shared references, fill it.
    entries: RefCell<BTreeMap<(u8, i64), Entry>>,
    /// The clock of the latest invocation: a clock that goes back makes it
    /// forget the requests it noted (a request pruned as old could look
    /// young again).
    latest_now: Option<Nanos>,
}

/// How many entries the memo keeps beyond two per tracked CL before it
/// starts over (combos of CLs no longer tracked are never looked up again).
const SLACK: usize = 256;

fn kind_key(kind: TriggerKind) -> u8 {
    match kind {
        TriggerKind::CqVote => 0,
        TriggerKind::NewPatchset => 1,
    }
}

/// Whether `members` lists exactly the combo's CLs at their PCLs' eversions.
fn same_members(members: &[(i64, i64)], combo: &Combo, cls: &BTreeMap<i64, ClInfo<'_>>) -> bool {
    members.len() == combo.all.len()
        && members
            .iter()
            .zip(&combo.all)
            .all(|(&(clid, eversion), c)| {
                clid == *c && cls.get(c).is_some_and(|info| info.pcl.eversion == eversion)
            })
}

/// Forgets every combo with one of the `clids` (ascending, unique).
fn forget(entries: &mut BTreeMap<(u8, i64), Entry>, clids: &[i64]) {
    if clids.is_empty() || entries.is_empty() {
        return;
    }
    if entries.values().any(|e| e.members.len() > 1) {
        entries.retain(|_, e| {
            e.members
                .iter()
                .all(|(clid, _)| clids.binary_search(clid).is_err())
        });
    } else {
        for &clid in clids {
            for kind in [TriggerKind::CqVote, TriggerKind::NewPatchset] {
                entries.remove(&(kind_key(kind), clid));
            }
        }
    }
}

/// Calls `f` on what is known of the Runs with these RunIDs.
fn for_runs(
    entries: &mut BTreeMap<(u8, i64), Entry>,
    run_ids: &[&str],
    mut f: impl FnMut(&mut Known),
) {
    if run_ids.is_empty() {
        return;
    }
    let mut keys: Vec<u64> = run_ids.iter().map(|id| run_key(id)).collect();
    keys.sort_unstable();
    for entry in entries.values_mut() {
        if keys.binary_search(&entry.run_key).is_ok()
            && run_ids.contains(&entry.known.run_id.as_str())
        {
            f(&mut entry.known);
        }
    }
}

impl RunIdMemo {
    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.get_mut().clear();
        self.latest_now = None;
    }

    /// Forgets what the pending events may have made stale (see the module
    /// documentation): the combos of CLs announced, everything on a config
    /// event, the requests of Runs that became known, and every request if
    /// the clock went back. Forgets everything once it holds more than two
    /// entries per tracked CL (plus some slack). Called at the start of an
    /// invocation at `now`.
    pub(crate) fn invalidate(&mut self, pending: &[PendingEvent], tracked_cls: usize, now: Nanos) {
        let clock_went_back = self.latest_now.is_some_and(|latest| now < latest);
        self.latest_now = Some(now);
        let entries = self.entries.get_mut();
        if entries.is_empty() {
            return;
        }
        if clock_went_back {
            for entry in entries.values_mut() {
                entry.known.requested_at = None;
            }
        }
        if entries.len() > 2 * tracked_cls + SLACK {
            entries.clear();
            return;
        }
        let mut replaced: Vec<i64> = Vec::new();
        let mut runs_seen: Vec<&str> = Vec::new();
        for p in pending {
            match &p.event {
                Some(pending_event::Event::NewConfig(_)) => {
                    entries.clear();
                    return;
                }
                Some(pending_event::Event::ClsUpdated(e)) => {
                    replaced.extend(e.cls.iter().map(|v| v.clid));
                }
                Some(pending_event::Event::RunCreated(id)) => runs_seen.push(id),
                Some(pending_event::Event::RunFinished(e)) => runs_seen.push(&e.run_id),
                _ => {}
            }
        }
        replaced.sort_unstable();
        replaced.dedup();
        forget(entries, &replaced);
        for_runs(entries, &runs_seen, |known| known.requested_at = None);
    }

    /// Notes that the PM requested these Runs at `now` (what the invocation
    /// that just ended records in the state's Run requests).
    pub(crate) fn requested<'r>(
        &mut self,
        run_ids: impl IntoIterator<Item = &'r String>,
        now: Nanos,
    ) {
        let run_ids: Vec<&str> = run_ids.into_iter().map(String::as_str).collect();
        for_runs(self.entries.get_mut(), &run_ids, |known| {
            known.requested_at = Some(now)
        });
    }

    /// Forgets every combo with a CL whose PCL the invocation changed
    /// (`None`: all PCLs may have changed). Called before triage: a PCL can
    /// change at an eversion already planned (the entity was announced again
    /// at that eversion, and a later invocation evaluated it again).
    pub(crate) fn forget_changed_pcls(&self, changed: Option<&BTreeSet<i64>>) {
        let mut entries = self.entries.borrow_mut();
        match changed {
            None => entries.clear(),
            Some(changed) if !changed.is_empty() => {
                let changed: Vec<i64> = changed.iter().copied().collect();
                forget(&mut entries, &changed);
            }
            Some(_) => {}
        }
    }

    /// `f` of what is known of the Run remembered for the combo, if it was
    /// planned from the same config group and the same CLs at the same
    /// eversions; `f` may note a request it found.
    pub(crate) fn with<R>(
        &self,
        kind: TriggerKind,
        cg_index: i32,
        combo: &Combo,
        cls: &BTreeMap<i64, ClInfo<'_>>,
        f: impl FnOnce(&mut Known) -> R,
    ) -> Option<R> {
        let first = *combo.all.first()?;
        let mut entries = self.entries.borrow_mut();
        let entry = entries.get_mut(&(kind_key(kind), first))?;
        (entry.cg_index == cg_index && same_members(&entry.members, combo, cls))
            .then(|| f(&mut entry.known))
    }

    /// Remembers the RunID a plan of the combo computed.
    pub(crate) fn put(
        &self,
        kind: TriggerKind,
        cg_index: i32,
        combo: &Combo,
        cls: &BTreeMap<i64, ClInfo<'_>>,
        run_id: &str,
    ) {
        let Some(&first) = combo.all.first() else {
            return;
        };
        let mut members = Vec::with_capacity(combo.all.len());
        for clid in &combo.all {
            let Some(info) = cls.get(clid) else { return };
            members.push((*clid, info.pcl.eversion));
        }
        self.entries.borrow_mut().insert(
            (kind_key(kind), first),
            Entry {
                cg_index,
                members,
                known: Known {
                    run_id: run_id.to_string(),
                    requested_at: None,
                },
                run_key: run_key(run_id),
            },
        );
    }
}
