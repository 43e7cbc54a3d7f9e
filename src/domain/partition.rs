//! Categorising tracked CLs (active, deps, unused, unloaded), loading missing
//! ones, and recomputing the components (luci-pm.md §6.9–§6.10).

use std::collections::{BTreeMap, BTreeSet};

use crate::proto::Timestamp;

use super::invocation::Invocation;
use super::time;
use crate::proto::{pcl, Component, Pcl};

/// Triggers older than this do not make a CL active (`common.MaxTriggerAge`).
pub const MAX_TRIGGER_AGE_DAYS: i64 = 7;

/// The CLs of the state by role.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Categories {
    /// CLs of incomplete Runs and active-standalone CLs; they stay tracked.
    pub active: ClidSet,
    /// Non-active CLs that are deps of active CLs; they stay tracked.
    pub deps: ClidSet,
    /// Tracked CLs that are neither: they are dropped.
    pub unused: ClidSet,
    /// Active or dep CLs without a PCL yet.
    pub unloaded: BTreeSet<i64>,
}

/// A set of CL ids as a sorted vector: built once per invocation from all
/// PCLs and then mostly looked up, which a contiguous vector does faster
/// than a tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClidSet(Vec<i64>);

impl ClidSet {
    /// The set of `clids`, in any order, with repeats.
    fn from_unsorted(mut clids: Vec<i64>) -> Self {
        clids.sort_unstable();
        clids.dedup();
        Self(clids)
    }

    pub fn contains(&self, clid: &i64) -> bool {
        self.0.binary_search(clid).is_ok()
    }

    /// For each PCL of `pcls` (sorted by clid), whether its CL is in the
    /// set: one merge of the two sorted lists instead of a search per PCL.
    fn flags(&self, pcls: &[Pcl]) -> Vec<bool> {
        let mut ids = self.0.iter().peekable();
        pcls.iter()
            .map(|p| {
                while ids.next_if(|&&id| id < p.clid).is_some() {}
                ids.peek().is_some_and(|&&id| id == p.clid)
            })
            .collect()
    }

    /// Adds `clid`; whether it was new.
    pub fn insert(&mut self, clid: i64) -> bool {
        match self.0.binary_search(&clid) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, clid);
                true
            }
        }
    }

    /// Removes `clid`; whether it was there.
    pub fn remove(&mut self, clid: &i64) -> bool {
        match self.0.binary_search(clid) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

/// The time a trigger must be strictly newer than to make a CL active:
/// `now - 7 days` (computed once per categorisation).
fn trigger_cutoff(now: &Timestamp) -> Timestamp {
    time::add_days(now, -MAX_TRIGGER_AGE_DAYS)
}

/// Whether a PCL is active on its own: watched (status OK) with a CQ-vote
/// or a new-patchset trigger strictly newer than `cutoff`
/// ([`trigger_cutoff`]; luci-pm-head.md R1; a missing trigger counts as
/// "not newer").
fn is_active_standalone(p: &Pcl, cutoff: &Timestamp) -> bool {
    if p.status != pcl::Status::Ok as i32 {
        return false;
    }
    let Some(triggers) = p.triggers.as_ref() else {
        return false;
    };
    [
        &triggers.cq_vote_trigger,
        &triggers.new_patchset_run_trigger,
    ]
    .into_iter()
    .flatten()
    .any(|t| time::cmp_opt(t.time.as_ref(), Some(cutoff)).is_gt())
}

/// A disjoint-set forest over PCL positions.
struct DisjointSet {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl DisjointSet {
    fn new(n: usize) -> DisjointSet {
        DisjointSet {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn merge(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        if a == b {
            return;
        }
        let (big, small) = if self.size[a] >= self.size[b] {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[small] = big;
        self.size[big] += self.size[small];
    }

    fn size_of(&mut self, i: usize) -> usize {
        let r = self.root(i);
        self.size[r]
    }
}

impl Invocation<'_> {
    /// Categorises the tracked CLs and the CLs of created Runs (`categorizeCLs`).
    pub fn categorize(&self) -> Categories {
        let index = PclIndex::of(&self.pstate.pcls);
        let mut cat = Categories::default();
        let mut active = Vec::new();
        for run in &self.pstate.created_pruns {
            for &id in &run.clids {
                active.push(id);
                if index.get(&id).is_none() {
                    cat.unloaded.insert(id);
                }
            }
        }
        for c in &self.pstate.components {
            for run in &c.pruns {
                active.extend(run.clids.iter().copied());
            }
        }
        let cutoff = trigger_cutoff(&self.now);
        for p in &self.pstate.pcls {
            if is_active_standalone(p, &cutoff) {
                active.push(p.clid);
            }
        }
        cat.active = ClidSet::from_unsorted(active);
        let active = cat.active.flags(&self.pstate.pcls);
        let mut deps = Vec::new();
        for (p, _) in self.pstate.pcls.iter().zip(&active).filter(|(_, &a)| a) {
            for d in &p.deps {
                if !cat.active.contains(&d.clid) {
                    deps.push(d.clid);
                    if index.get(&d.clid).is_none() {
                        cat.unloaded.insert(d.clid);
                    }
                }
            }
        }
        cat.deps = ClidSet::from_unsorted(deps);
        let dep = cat.deps.flags(&self.pstate.pcls);
        // PCLs are sorted by clid, so this is sorted too.
        cat.unused = ClidSet(
            self.pstate
                .pcls
                .iter()
                .zip(active.iter().zip(&dep))
                .filter(|(_, (&a, &d))| !a && !d)
                .map(|(p, _)| p.clid)
                .collect(),
        );
        cat
    }

    /// Loads the unloaded CLs once (`loadActiveIntoPCLs`): a loaded dep that
    /// turns out active is promoted, and deps of loaded active CLs become deps
    /// (loaded by a later invocation if not tracked yet).
    pub fn load_active(&mut self, cat: &mut Categories) {
        if cat.unloaded.is_empty() {
            return;
        }
        let to_load: Vec<i64> = cat.unloaded.iter().copied().collect();
        self.eval_cls(&to_load);
        let cutoff = trigger_cutoff(&self.now);
        for p in &self.pstate.pcls {
            if !cat.unloaded.remove(&p.clid) {
                continue;
            }
            if !cat.active.contains(&p.clid) {
                if !is_active_standalone(p, &cutoff) {
                    continue;
                }
                cat.deps.remove(&p.clid);
                cat.active.insert(p.clid);
            }
            for d in &p.deps {
                if !cat.active.contains(&d.clid) && !cat.deps.contains(&d.clid) {
                    cat.deps.insert(d.clid);
                    if !cat.unused.remove(&d.clid) {
                        cat.unloaded.insert(d.clid);
                    }
                }
            }
        }
        if let Some(id) = cat.unloaded.iter().find(|id| cat.active.contains(id)) {
            panic!("BUG: CL {id} is active but was not loaded");
        }
    }

    /// Recomputes the components (`repartition`): CLs of a Run together,
    /// active CLs with their active deps; unchanged components are kept as
    /// they are, the others are created with `triage_required`; components in
    /// canonical order (by first CL id); unused PCLs dropped.
    pub fn repartition(&mut self, cat: &Categories) {
        // PCLs are sorted by clid: a CL's position is found by binary search.
        let index = PclIndex::of(&self.pstate.pcls);
        let position = |clid: i64| -> usize {
            index.get(&clid).unwrap_or_else(|| {
                panic!("BUG: CL {clid} of an incomplete Run has no PCL after loading")
            })
        };
        let mut sets = DisjointSet::new(self.pstate.pcls.len());
        let runs = self
            .pstate
            .components
            .iter()
            .flat_map(|c| c.pruns.iter())
            .chain(self.pstate.created_pruns.iter());
        for run in runs {
            if let Some((&first, rest)) = run.clids.split_first() {
                let first = position(first);
                for &id in rest {
                    sets.merge(first, position(id));
                }
            }
        }
        // Whether the PCL at each position is active.
        let active = cat.active.flags(&self.pstate.pcls);
        for (i, p) in self.pstate.pcls.iter().enumerate() {
            if active[i] {
                for d in &p.deps {
                    if let Some(j) = index.get(&d.clid) {
                        if active[j] {
                            sets.merge(i, j);
                        }
                    }
                }
            }
        }

        let old_components = std::mem::take(&mut self.pstate.components);
        let created_run_first_clids: BTreeSet<i64> = self
            .pstate
            .created_pruns
            .iter()
            .filter_map(|r| r.clids.first().copied())
            .collect();
        let mut reused: BTreeMap<usize, Component> = BTreeMap::new();
        let mut deleted: Vec<Component> = Vec::new();
        for c in old_components {
            match reusable_root(&c, &index, &mut sets, cat, &created_run_first_clids) {
                Some(root) => {
                    reused.insert(root, c);
                }
                None => deleted.push(c),
            }
        }
        let mut created: BTreeMap<usize, Component> = BTreeMap::new();
        for (i, p) in self.pstate.pcls.iter().enumerate() {
            if !active[i] {
                continue;
            }
            let root = sets.root(i);
            if reused.contains_key(&root) {
                continue;
            }
            created
                .entry(root)
                .or_insert_with(|| Component {
                    triage_required: true,
                    ..Default::default()
                })
                .clids
                .push(p.clid);
        }
        let created_runs = std::mem::take(&mut self.pstate.created_pruns);
        let orphan_runs = created_runs
            .into_iter()
            .chain(deleted.into_iter().flat_map(|c| c.pruns));
        for run in orphan_runs {
            let Some(&first) = run.clids.first() else {
                continue;
            };
            let root = sets.root(position(first));
            if let Some(c) = created.get_mut(&root) {
                c.pruns.push(run);
            } else {
                // Not reachable: a reused component receives no created Run
                // and components are disjoint. The original drops such a Run
                // with an error log (luci-pm-head.md R9).
                self.trace.push(format!(
                    "BUG: Run {} has no new component to go to; dropped",
                    run.id
                ));
            }
        }
        let mut components: Vec<Component> = reused.into_values().collect();
        for mut c in created.into_values() {
            c.pruns.sort_by(|a, b| a.id.cmp(&b.id));
            components.push(c);
        }
        components.sort_by_key(|c| c.clids.first().copied());
        self.pstate.components = components;
        self.pstate.pcls.retain(|p| !cat.unused.contains(&p.clid));
        self.pstate.repartition_required = false;
    }
}

/// The positions of CLs in a list of PCLs sorted by clid: their ids in one
/// contiguous vector, searched without touching the (large) PCLs.
struct PclIndex(Vec<i64>);

impl PclIndex {
    fn of(pcls: &[Pcl]) -> Self {
        Self(pcls.iter().map(|p| p.clid).collect())
    }

    fn get(&self, clid: &i64) -> Option<usize> {
        self.0.binary_search(clid).ok()
    }
}

/// The disjoint set an old component can be kept as: exactly its CLs, none
/// the first CL of a created Run, none unused, at least one active
/// (luci-pm-head.md R9: a component that receives a created Run is remade).
fn reusable_root(
    c: &Component,
    index: &PclIndex,
    sets: &mut DisjointSet,
    cat: &Categories,
    created_run_first_clids: &BTreeSet<i64>,
) -> Option<usize> {
    if c.clids
        .iter()
        .any(|id| created_run_first_clids.contains(id))
    {
        return None;
    }
    let first = index.get(c.clids.first()?)?;
    let root = sets.root(first);
    if sets.size_of(root) != c.clids.len() {
        return None;
    }
    for id in &c.clids[1..] {
        if sets.root(index.get(id)?) != root {
            return None;
        }
    }
    if c.clids.iter().any(|id| cat.unused.contains(id)) {
        return None;
    }
    c.clids
        .iter()
        .any(|id| cat.active.contains(id))
        .then_some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_mark_the_pcls_whose_cl_is_in_the_set() {
        let pcls: Vec<Pcl> = [1, 3, 4, 8, 9]
            .into_iter()
            .map(|clid| Pcl {
                clid,
                ..Default::default()
            })
            .collect();
        let set = ClidSet::from_unsorted(vec![9, 2, 3, 3, 7, 1, 10]);
        assert_eq!(set.flags(&pcls), [true, true, false, false, true]);
        assert_eq!(ClidSet::default().flags(&pcls), [false; 5]);
        assert!(set.flags(&[]).is_empty());
    }
}
