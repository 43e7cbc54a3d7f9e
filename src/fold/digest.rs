//! The state digest a marker carries, in its two definitions.
//!
//! * **Version 1** (32 bytes): BLAKE3 of prost's encoding of the whole
//!   `ProjectState`. Its cost follows the size of the state (every known CL
//!   and Run is encoded at every marker). Files recorded before version 2
//!   carry it, and still verify.
//! * **Version 2** (33 bytes: the byte `2`, then a BLAKE3 hash): BLAKE3 over
//!   a tag, the encoding of the state with its four large lists emptied
//!   (`cls`, `runs`, `pstate.pcls`, `pstate.components`), and, for each of
//!   these lists in that order, its length and the BLAKE3 hash of each
//!   entity's encoding, in list order. It is a pure function of the state,
//!   like version 1; what makes it cheap is that a [`Digester`] keeps the
//!   entity hashes of the last state it digested and hashes again only what
//!   changed (see there).
//!
//! A digest says its own version by its length and first byte
//! ([`DigestVersion::of`]); a marker is checked in the version it carries.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use prost::Message;

use crate::domain::{self, Evaluation};
use crate::proto::{input_event::Event, Component, PState, Pcl, ProjectState};

/// A digest definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestVersion {
    /// BLAKE3 of the whole state's encoding (32 bytes).
    V1,
    /// Per-entity hashes combined (33 bytes, first byte 2).
    V2,
}

/// The version new markers carry.
pub const CURRENT: DigestVersion = DigestVersion::V2;

/// The tag that starts the hashed bytes of a version 2 digest.
const V2_TAG: &[u8] = b"prjmanager state digest v2\0";

type Hash = [u8; 32];

impl DigestVersion {
    /// The version a stored digest carries, or `None` for bytes that are no
    /// digest of either version.
    pub fn of(digest: &[u8]) -> Option<Self> {
        match (digest.len(), digest.first()) {
            (32, _) => Some(Self::V1),
            (33, Some(2)) => Some(Self::V2),
            _ => None,
        }
    }
}

/// The current-version digest of a state, computed from scratch.
pub fn state_digest(state: &ProjectState) -> Vec<u8> {
    Digester::default().digest(state)
}

/// Computes digests, keeping the entity hashes of the state it follows so
/// that the fold's next digest of that state hashes only what changed:
///
/// * known CLs and Runs change only when an input event is recorded
///   (`domain::apply_event`); an invocation only forgets Runs. The fold tells
///   the digester of every event it records ([`Digester::input_recorded`])
///   and marker it runs ([`Digester::marker_run`]), and the digester hashes
///   again the CLs and Runs the input event names. It follows one state from
///   revision to revision; anything else (a revision skipped or seen twice)
///   makes it forget what it kept and hash everything at the next digest.
/// * PCLs change only in invocations, which list the PCLs they changed
///   (`Evaluation::changed_pcls`, [`Digester::marker_run`]); those are
///   hashed again.
/// * Components (a few per project) are kept beside a copy of each, and one
///   that differs from its copy is hashed again.
///
/// Only the fold digests incrementally (it knows the state it digests is
/// the one it reported); [`Digester::digest`] and [`Digester::matches`]
/// hash the state they are given afresh and then follow it, so that a fold
/// can go on from it (a snapshot checked, then its tail folded). Each
/// digest equals the from-scratch computation ([`state_digest`]); a proptest
/// checks this at every eversion.
#[derive(Debug, Default, Clone)]
pub struct Digester {
    /// The revision of the state the kept CL, Run and PCL hashes describe;
    /// `None`: nothing kept.
    following: Option<u64>,
    cls: BTreeMap<i64, Hash>,
    runs: BTreeMap<String, Hash>,
    pcls: BTreeMap<i64, Hash>,
    components: EntityHashes<Component>,
}

impl Digester {
    /// The current-version digest of `state`, hashed afresh; the digester
    /// then follows `state`.
    pub fn digest(&mut self, state: &ProjectState) -> Vec<u8> {
        self.digest_as(state, CURRENT)
    }

    /// The digest of `state` in `version`, hashed afresh; the digester then
    /// follows `state`.
    pub fn digest_as(&mut self, state: &ProjectState, version: DigestVersion) -> Vec<u8> {
        self.following = None;
        match version {
            DigestVersion::V1 => v1(state),
            DigestVersion::V2 => self.v2(state, &without_lists(state).encode_to_vec()),
        }
    }

    /// The digest in `version` of the state the fold has reported to this
    /// digester, event by event: only what changed is hashed again. The
    /// state is borrowed mutably only to encode it without its four lists
    /// in place (they are put back): no copy of the rest of the state.
    pub(super) fn followed_digest_as(
        &mut self,
        state: &mut ProjectState,
        version: DigestVersion,
    ) -> Vec<u8> {
        match version {
            DigestVersion::V1 => v1(state),
            DigestVersion::V2 => {
                let rest = encode_without_lists(state);
                self.v2(state, &rest)
            }
        }
    }

    /// Whether `digest` is the digest of `state` in the version it carries
    /// (a digest of no known version matches nothing), hashed afresh.
    pub fn matches(&mut self, state: &ProjectState, digest: &[u8]) -> bool {
        DigestVersion::of(digest).is_some_and(|version| self.digest_as(state, version) == digest)
    }

    /// `state` has just recorded `event` at `revision`: the CLs and Runs it
    /// names are hashed again.
    pub fn input_recorded(&mut self, state: &ProjectState, revision: u64, event: &Event) {
        if !self.follow(revision) {
            return;
        }
        match event {
            Event::ClsUpdated(e) => {
                for cl in &e.cls {
                    if let Ok(i) = state.cls.binary_search_by_key(&cl.clid, |c| c.clid) {
                        self.cls.insert(cl.clid, entity_hash(&state.cls[i]));
                    }
                }
            }
            Event::RunCreated(e) => {
                if let Some(run) = &e.run {
                    self.run_changed(state, &run.id);
                }
            }
            Event::RunFinished(e) => self.run_changed(state, &e.run_id),
            _ => {}
        }
    }

    /// `state` has just run the invocation of the marker at `revision`,
    /// which decided `evaluation`: the Runs it forgot are dropped and the
    /// PCLs it changed are hashed again.
    pub fn marker_run(&mut self, state: &ProjectState, revision: u64, evaluation: &Evaluation) {
        if !self.follow(revision) {
            return;
        }
        for id in &evaluation.forgotten_runs {
            self.runs.remove(id);
        }
        let Some(changed) = &evaluation.changed_pcls else {
            self.pcls.clear();
            return;
        };
        let pcls = state.pstate.as_ref().map_or(&[][..], |p| p.pcls.as_slice());
        for clid in changed {
            match pcls.binary_search_by_key(clid, |p| p.clid) {
                Ok(i) => self.pcls.insert(*clid, entity_hash(&pcls[i])),
                Err(_) => self.pcls.remove(clid),
            };
        }
    }

    /// Moves to `revision`; whether the kept hashes still describe the state.
    fn follow(&mut self, revision: u64) -> bool {
        let next = self.following.and_then(|r| r.checked_add(1));
        if next == Some(revision) {
            self.following = Some(revision);
            true
        } else {
            self.following = None;
            false
        }
    }

    fn run_changed(&mut self, state: &ProjectState, id: &str) {
        if let Ok(i) = state.runs.binary_search_by(|r| r.id.as_str().cmp(id)) {
            self.runs
                .insert(id.to_string(), entity_hash(&state.runs[i]));
        }
    }

    /// The version 2 digest of `state`, `rest` being the encoding of the
    /// state with its four lists emptied.
    fn v2(&mut self, state: &ProjectState, rest: &[u8]) -> Vec<u8> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(V2_TAG);
        hasher.update(&(rest.len() as u64).to_le_bytes());
        hasher.update(rest);
        let no_pcls: &[Pcl] = &[];
        let no_components: &[Component] = &[];
        let (pcls, components) = state.pstate.as_ref().map_or((no_pcls, no_components), |p| {
            (p.pcls.as_slice(), p.components.as_slice())
        });
        let followed = self.following == Some(state.last_revision);
        if !followed {
            // Not the state followed: hash every CL, Run and PCL, and follow it.
            self.cls.clear();
            self.runs.clear();
            self.pcls.clear();
            self.following = Some(state.last_revision);
        }
        feed_keyed(
            &mut self.cls,
            &state.cls,
            |c| &c.clid,
            followed,
            &mut hasher,
        );
        feed_keyed(
            &mut self.runs,
            &state.runs,
            |r| &r.id,
            followed,
            &mut hasher,
        );
        feed_keyed(&mut self.pcls, pcls, |p| &p.clid, followed, &mut hasher);
        self.components.update(
            components,
            |a, b| a.clids.first().cmp(&b.clids.first()),
            &mut hasher,
        );
        let mut digest = Vec::with_capacity(33);
        digest.push(2);
        digest.extend_from_slice(hasher.finalize().as_bytes());
        digest
    }
}

fn v1(state: &ProjectState) -> Vec<u8> {
    blake3::hash(&state.encode_to_vec()).as_bytes().to_vec()
}

/// The encoding of [`without_lists`]`(state)`, made by moving the four lists
/// out of `state` and back instead of copying everything else.
fn encode_without_lists(state: &mut ProjectState) -> Vec<u8> {
    let cls = std::mem::take(&mut state.cls);
    let runs = std::mem::take(&mut state.runs);
    let (pcls, components) = state.pstate.as_mut().map_or_else(Default::default, |p| {
        (
            std::mem::take(&mut p.pcls),
            std::mem::take(&mut p.components),
        )
    });
    let rest = state.encode_to_vec();
    state.cls = cls;
    state.runs = runs;
    if let Some(p) = state.pstate.as_mut() {
        p.pcls = pcls;
        p.components = components;
    }
    rest
}

fn entity_hash(entity: &impl Message) -> Hash {
    *blake3::hash(&entity.encode_to_vec()).as_bytes()
}

/// Feeds the list's length and each entity's kept hash to `hasher`. `kept`
/// holds the hashes of the list's entities by key, up to date for every
/// entity it has; an entity it lacks is hashed, and a key no longer listed
/// is dropped. A list out of key order, or with a key twice, is hashed
/// afresh. When the fold has reported every addition and removal to the
/// digester (`followed`) and the sizes agree, the keys are not compared.
fn feed_keyed<T: Message, K: Ord + Clone>(
    kept: &mut BTreeMap<K, Hash>,
    list: &[T],
    key: impl Fn(&T) -> &K,
    followed: bool,
    hasher: &mut blake3::Hasher,
) {
    hasher.update(&(list.len() as u64).to_le_bytes());
    if followed && !kept.is_empty() && kept.len() == list.len() {
        feed_hashes(hasher, kept.values());
        return;
    }
    // One walk of both (sorted) key sequences: what is kept but no longer
    // listed, what is listed but not kept, and whether the list is sorted.
    let mut stale: Vec<K> = Vec::new();
    let mut missing: Vec<&T> = Vec::new();
    let mut kept_keys = kept.keys().peekable();
    let mut previous: Option<&K> = None;
    let mut sorted = true;
    for entity in list {
        let k = key(entity);
        if previous.is_some_and(|p| p >= k) {
            sorted = false;
            break;
        }
        previous = Some(k);
        while let Some(old) = kept_keys.next_if(|old| *old < k) {
            stale.push(old.clone());
        }
        if kept_keys.next_if(|old| *old == k).is_none() {
            missing.push(entity);
        }
    }
    if !sorted {
        kept.clear();
        for entity in list {
            hasher.update(&entity_hash(entity));
        }
        return;
    }
    stale.extend(kept_keys.cloned());
    for k in &stale {
        kept.remove(k);
    }
    for entity in missing {
        kept.insert(key(entity).clone(), entity_hash(entity));
    }
    feed_hashes(hasher, kept.values());
}

/// Feeds hashes to `hasher` in one piece: BLAKE3 compresses a long input
/// several blocks at a time, 32-byte pieces one block at a time.
fn feed_hashes<'h>(hasher: &mut blake3::Hasher, hashes: impl ExactSizeIterator<Item = &'h Hash>) {
    let mut bytes = Vec::with_capacity(hashes.len() * 32);
    for hash in hashes {
        bytes.extend_from_slice(hash);
    }
    hasher.update(&bytes);
}

/// The state with the four lists a version 2 digest hashes per entity
/// emptied. The pattern names every field (as `domain::without_pcls` does
/// for `PState`), so that a field added to the state does not compile until
/// it is placed here.
fn without_lists(state: &ProjectState) -> ProjectState {
    let ProjectState {
        luci_project,
        eversion,
        update_time,
        pstate,
        pinned_config,
        latest_config,
        cls: _,
        runs: _,
        pending,
        run_requests,
        last_revision,
    } = state;
    let pstate = pstate.as_ref().map(|p| PState {
        components: Vec::new(),
        ..domain::without_pcls(p)
    });
    ProjectState {
        luci_project: luci_project.clone(),
        eversion: *eversion,
        update_time: *update_time,
        pstate,
        pinned_config: pinned_config.clone(),
        latest_config: latest_config.clone(),
        cls: Vec::new(),
        runs: Vec::new(),
        pending: pending.clone(),
        run_requests: run_requests.clone(),
        last_revision: *last_revision,
    }
}

/// The hashes of one list's entities, each beside a copy of its entity, in
/// the order of the list last digested.
#[derive(Debug, Clone)]
struct EntityHashes<T> {
    kept: Vec<(T, Hash)>,
}

impl<T> Default for EntityHashes<T> {
    fn default() -> Self {
        Self { kept: Vec::new() }
    }
}

impl<T: Message + Clone + PartialEq> EntityHashes<T> {
    /// Feeds the list's length and each entity's hash to `hasher`, hashing
    /// only entities that differ from the copy kept under the same key, and
    /// keeps the list's entities and hashes for the next call.
    ///
    /// The lists of a state are sorted by their key (`by_key` orders two
    /// entities by it), so the kept entry of an entity is found by walking
    /// both lists together; a list out of order only makes the walk miss, and
    /// a miss hashes the entity afresh.
    fn update(
        &mut self,
        list: &[T],
        by_key: impl Fn(&T, &T) -> Ordering,
        hasher: &mut blake3::Hasher,
    ) {
        hasher.update(&(list.len() as u64).to_le_bytes());
        let mut old = std::mem::take(&mut self.kept).into_iter().peekable();
        let mut kept = Vec::with_capacity(list.len());
        for entity in list {
            // Entries of entities no longer listed are dropped.
            while old.next_if(|(e, _)| by_key(e, entity).is_lt()).is_some() {}
            let entry = match old.next_if(|(e, _)| by_key(e, entity).is_eq()) {
                Some((copy, hash)) if copy == *entity => (copy, hash),
                // The copy under this key is out of date, or there is none.
                _ => (entity.clone(), entity_hash(entity)),
            };
            hasher.update(&entry.1);
            kept.push(entry);
        }
        self.kept = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ChangeList, ClsUpdated, Run};

    fn state(project: &str, clids: &[i64], runs: &[&str]) -> ProjectState {
        ProjectState {
            luci_project: project.into(),
            last_revision: 7,
            cls: clids
                .iter()
                .map(|&clid| ChangeList {
                    clid,
                    eversion: 1,
                    ..Default::default()
                })
                .collect(),
            runs: runs
                .iter()
                .map(|id| Run {
                    id: id.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_digest_says_its_version() {
        let s = state("p", &[1], &[]);
        let v1 = Digester::default().digest_as(&s, DigestVersion::V1);
        let v2 = state_digest(&s);
        assert_eq!(DigestVersion::of(&v1), Some(DigestVersion::V1));
        assert_eq!(DigestVersion::of(&v2), Some(DigestVersion::V2));
        assert_eq!(DigestVersion::of(&[2; 31]), None);
        assert_eq!(DigestVersion::of(&[3; 33]), None);
        let mut digester = Digester::default();
        assert!(digester.matches(&s, &v1) && digester.matches(&s, &v2));
        assert!(!digester.matches(&state("p", &[2], &[]), &v2));
        assert!(!digester.matches(&s, &[3; 33]));
    }

    #[test]
    fn one_digester_on_unrelated_states_gives_from_scratch_digests() {
        let mut digester = Digester::default();
        // The same revision and keys, other contents.
        let mut changed = state("p", &[1, 2, 3], &["p/1", "p/2"]);
        changed.cls[1].eversion = 2;
        changed.runs[0].status = 5;
        let states = [
            state("p", &[1, 2, 3], &["p/1", "p/2"]),
            changed,
            state("q", &[2, 3], &["p/2"]),
            state("p", &[1, 2, 3], &["p/1", "p/2"]),
            state("p", &[], &[]),
        ];
        for s in &states {
            assert_eq!(digester.digest(s), state_digest(s));
        }
        assert_ne!(state_digest(&states[0]), state_digest(&states[1]));
    }

    #[test]
    fn a_change_the_digester_was_not_told_of_starts_it_over() {
        let mut s = state("p", &[1, 2], &[]);
        let mut digester = Digester::default();
        digester.digest(&s);
        // Revision 8 is skipped: the digester forgets what it kept.
        s.cls[0].eversion = 2;
        s.last_revision = 9;
        let event = Event::ClsUpdated(ClsUpdated::default());
        digester.input_recorded(&s, 9, &event);
        assert_eq!(digester.digest(&s), state_digest(&s));
        // Told in order, it hashes the CL again.
        s.cls[1].eversion = 5;
        s.last_revision = 10;
        let event = Event::ClsUpdated(ClsUpdated {
            cls: vec![s.cls[1].clone()],
        });
        digester.input_recorded(&s, 10, &event);
        assert_eq!(digester.digest(&s), state_digest(&s));
    }

    #[test]
    fn the_in_place_encoding_equals_the_copy_and_puts_the_lists_back() {
        let mut s = state("p", &[1, 2], &["p/1"]);
        s.pstate = Some(PState {
            luci_project: "p".into(),
            pcls: vec![Pcl {
                clid: 1,
                ..Default::default()
            }],
            components: vec![Component {
                clids: vec![1],
                ..Default::default()
            }],
            config_hash: "h".into(),
            ..Default::default()
        });
        let before = s.clone();
        let rest = encode_without_lists(&mut s);
        assert_eq!(rest, without_lists(&before).encode_to_vec());
        assert_ne!(rest, before.encode_to_vec());
        assert_eq!(s, before);
    }
}
