//! The state digest a marker carries, in its three definitions.
//!
//! * **Version 1** (32 bytes): BLAKE3 of prost's encoding of the whole
//!   `ProjectState`. Its cost follows the size of the state (every known CL
//!   and Run is encoded at every marker). Files recorded before version 2
//!   carry it, and still verify.
//! * **Version 2** (33 bytes: the byte `2`, then a BLAKE3 hash): BLAKE3 over
//!   a tag, the encoding of the state with its four large lists emptied
//!   (`cls`, `runs`, `pstate.pcls`, `pstate.components`), and, for each of
//!   these lists in that order, its length and the BLAKE3 hash of each
//!   entity's encoding, in list order. Cheaper than version 1 (a
//!   [`Digester`] hashes again only the entities that changed), but still
//!   O(state) per marker: every kept entity hash is fed to BLAKE3.
//! * **Version 3** (33 bytes: the byte `3`, then a BLAKE3 hash): as version
//!   2, except that each list contributes its length and one 32-byte *chain
//!   sum* instead of all its entity hashes: the sum, modulo 2^256 (32 bytes,
//!   little-endian), of `BLAKE3(h[i-1] ‖ h[i])` over the list's positions
//!   `i`, where `h[i]` is the BLAKE3 hash of entity `i`'s encoding and
//!   `h[-1]` is 32 zero bytes. An entity changed, added or removed changes
//!   at most three terms, so a digester that followed the fold updates each
//!   sum in O(log n) per changed entity and a marker costs O(what changed)
//!   plus the encoding of the rest of the state. The consecutive pairs keep
//!   the order: a list whose entities are all distinct (unique keys, as the
//!   fold keeps every list) is the only list with its multiset of pairs.
//!   The sum detects accidental differences; it is not meant to resist
//!   someone crafting a colliding state (additive hashes are weaker there).
//!
//! Every version takes the known Runs (`runs`) in ascending id order, the
//! order the state kept them in when the versions were defined; the state
//! now keeps them descending (a new Run goes last), and the digests reverse
//! them.
//!
//! A digest says its own version by its length and first byte
//! ([`DigestVersion::of`]); a marker is checked in the version it carries.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use prost::Message;

use crate::domain::{self, Evaluation, Memo};
use crate::proto::{input_event::Event, Component, PState, Pcl, ProjectState};

/// A digest definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestVersion {
    /// BLAKE3 of the whole state's encoding (32 bytes).
    V1,
    /// Per-entity hashes combined (33 bytes, first byte 2).
    V2,
    /// Per-list chain sums of per-entity hashes (33 bytes, first byte 3).
    V3,
}

/// The version new markers carry.
pub const CURRENT: DigestVersion = DigestVersion::V3;

/// The tag that starts the hashed bytes of a version 2 digest.
const V2_TAG: &[u8] = b"prjmanager state digest v2\0";
/// The tag that starts the hashed bytes of a version 3 digest.
const V3_TAG: &[u8] = b"prjmanager state digest v3\0";

type Hash = [u8; 32];

/// The `h[-1]` of a chain sum.
const ZERO: Hash = [0; 32];

impl DigestVersion {
    /// The version a stored digest carries, or `None` for bytes that are no
    /// digest of any version.
    pub fn of(digest: &[u8]) -> Option<Self> {
        match (digest.len(), digest.first()) {
            (32, _) => Some(Self::V1),
            (33, Some(2)) => Some(Self::V2),
            (33, Some(3)) => Some(Self::V3),
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
/// Beside the CL, Run and PCL hashes it keeps each list's version 3 chain
/// sum, updated with every hash it sets or drops.
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
    cls: KeyedHashes<i64>,
    runs: KeyedHashes<String>,
    pcls: KeyedHashes<i64>,
    components: EntityHashes<Component>,
    /// What earlier invocations of the state followed left for the next
    /// (kept here because it must follow the state exactly as the hashes do).
    memo: Memo,
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
            v => self.per_entity(state, &without_lists(state).encode_to_vec(), v),
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
            v => {
                let rest = encode_without_lists(state);
                self.per_entity(state, &rest, v)
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
                        self.cls.set(cl.clid, entity_hash(&state.cls[i]));
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
            self.runs.remove(id.as_str());
        }
        let Some(changed) = &evaluation.changed_pcls else {
            self.pcls.clear();
            return;
        };
        let pcls = state.pstate.as_ref().map_or(&[][..], |p| p.pcls.as_slice());
        for clid in changed {
            match pcls.binary_search_by_key(clid, |p| p.clid) {
                Ok(i) => self.pcls.set(*clid, entity_hash(&pcls[i])),
                Err(_) => self.pcls.remove(clid),
            }
        }
    }

    /// The memo for the invocation of the marker at `revision`, emptied
    /// unless this digester has followed the state up to the revision
    /// before it.
    pub(super) fn memo_at(&mut self, revision: u64) -> &mut Memo {
        if self.following.and_then(|r| r.checked_add(1)) != Some(revision) {
            self.memo.clear();
        }
        &mut self.memo
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
        if let Some(run) = domain::known_run(&state.runs, id) {
            self.runs.set(id.to_string(), entity_hash(run));
        }
    }

    /// The version 2 or 3 digest of `state`, `rest` being the encoding of
    /// the state with its four lists emptied.
    fn per_entity(&mut self, state: &ProjectState, rest: &[u8], version: DigestVersion) -> Vec<u8> {
        let (first_byte, tag) = match version {
            DigestVersion::V3 => (3, V3_TAG),
            // Version 1 never comes here: the callers hash it whole.
            DigestVersion::V1 | DigestVersion::V2 => (2, V2_TAG),
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(tag);
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
            self.memo.clear();
            self.following = Some(state.last_revision);
        }
        self.cls.feed(
            state.cls.iter(),
            |c| &c.clid,
            followed,
            version,
            &mut hasher,
        );
        // The digests take the known Runs in ascending id order, the
        // reverse of the state's (see `domain::known_run_position`).
        self.runs.feed(
            state.runs.iter().rev(),
            |r| &r.id,
            followed,
            version,
            &mut hasher,
        );
        self.pcls
            .feed(pcls.iter(), |p| &p.clid, followed, version, &mut hasher);
        self.components.update(
            components,
            |a, b| a.clids.first().cmp(&b.clids.first()),
            version,
            &mut hasher,
        );
        let mut digest = Vec::with_capacity(33);
        digest.push(first_byte);
        digest.extend_from_slice(hasher.finalize().as_bytes());
        digest
    }
}

/// Version 1, defined when the known Runs were kept in ascending id order:
/// they are encoded in that order (the reverse of the state's).
fn v1(state: &ProjectState) -> Vec<u8> {
    let bytes = if state.runs.len() < 2 {
        state.encode_to_vec()
    } else {
        let mut ascending = state.clone();
        ascending.runs.reverse();
        ascending.encode_to_vec()
    };
    blake3::hash(&bytes).as_bytes().to_vec()
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

/// A 256-bit sum, modulo 2^256, of 32-byte little-endian numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChainSum([u64; 4]);

impl ChainSum {
    fn limbs(hash: &Hash) -> [u64; 4] {
        let mut limbs = [0; 4];
        for (limb, bytes) in limbs.iter_mut().zip(hash.chunks_exact(8)) {
            *limb = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        }
        limbs
    }

    fn add(&mut self, hash: &Hash) {
        let mut carry = false;
        for (limb, term) in self.0.iter_mut().zip(Self::limbs(hash)) {
            let (sum, c1) = limb.overflowing_add(term);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *limb = sum;
            carry = c1 || c2;
        }
    }

    fn sub(&mut self, hash: &Hash) {
        let mut borrow = false;
        for (limb, term) in self.0.iter_mut().zip(Self::limbs(hash)) {
            let (diff, b1) = limb.overflowing_sub(term);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            *limb = diff;
            borrow = b1 || b2;
        }
    }

    fn to_bytes(self) -> Hash {
        let mut bytes = [0; 32];
        for (chunk, limb) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        bytes
    }

    /// The chain sum of hashes in this order (version 3's definition).
    fn of<'h>(hashes: impl IntoIterator<Item = &'h Hash>) -> Self {
        let mut sum = Self::default();
        let mut previous = &ZERO;
        for hash in hashes {
            sum.add(&pair(previous, hash));
            previous = hash;
        }
        sum
    }
}

/// The chain term of two consecutive entity hashes.
fn pair(previous: &Hash, hash: &Hash) -> Hash {
    let mut bytes = [0; 64];
    bytes[..32].copy_from_slice(previous);
    bytes[32..].copy_from_slice(hash);
    *blake3::hash(&bytes).as_bytes()
}

/// The entity hashes of one list by key, and their chain sum in key order,
/// kept up to date by every [`KeyedHashes::set`] and [`KeyedHashes::remove`]
/// (each touches the terms of the entity and of its neighbours only).
#[derive(Debug, Clone)]
struct KeyedHashes<K> {
    kept: BTreeMap<K, Hash>,
    chain: ChainSum,
}

impl<K> Default for KeyedHashes<K> {
    fn default() -> Self {
        Self {
            kept: BTreeMap::new(),
            chain: ChainSum::default(),
        }
    }
}

impl<K: Ord + Clone> KeyedHashes<K> {
    fn clear(&mut self) {
        self.kept.clear();
        self.chain = ChainSum::default();
    }

    /// The hashes before and after `key` in key order.
    fn neighbours<Q>(&self, key: &Q) -> (Hash, Option<Hash>)
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let before = self
            .kept
            .range::<Q, _>((Bound::Unbounded, Bound::Excluded(key)))
            .next_back()
            .map_or(ZERO, |(_, h)| *h);
        let after = self
            .kept
            .range::<Q, _>((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map(|(_, h)| *h);
        (before, after)
    }

    /// Keeps `hash` for `key`, replacing what was kept.
    fn set(&mut self, key: K, hash: Hash) {
        let (before, after) = self.neighbours(&key);
        let old = self.kept.insert(key, hash);
        if old == Some(hash) {
            return;
        }
        match (old, after) {
            (Some(old), after) => {
                self.chain.sub(&pair(&before, &old));
                if let Some(after) = after {
                    self.chain.sub(&pair(&old, &after));
                }
            }
            (None, Some(after)) => self.chain.sub(&pair(&before, &after)),
            (None, None) => {}
        }
        self.chain.add(&pair(&before, &hash));
        if let Some(after) = after {
            self.chain.add(&pair(&hash, &after));
        }
    }

    /// Drops what is kept for `key`.
    fn remove<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let Some(old) = self.kept.remove(key) else {
            return;
        };
        let (before, after) = self.neighbours(key);
        self.chain.sub(&pair(&before, &old));
        if let Some(after) = after {
            self.chain.sub(&pair(&old, &after));
            self.chain.add(&pair(&before, &after));
        }
    }

    /// Feeds the list's length and its entity hashes (version 2) or chain
    /// sum (version 3) to `hasher`.
    ///
    /// The kept hashes are brought up to date first: an entity not kept is
    /// hashed, a key no longer listed is dropped. A list out of key order,
    /// or with a key twice, is hashed afresh in list order. When the fold
    /// has reported every addition and removal to the digester (`followed`)
    /// and the sizes agree, the keys are not compared.
    fn feed<'a, T: Message + 'a, L>(
        &mut self,
        list: L,
        key: impl Fn(&T) -> &K,
        followed: bool,
        version: DigestVersion,
        hasher: &mut blake3::Hasher,
    ) where
        L: ExactSizeIterator<Item = &'a T> + Clone,
        K: 'a,
    {
        hasher.update(&(list.len() as u64).to_le_bytes());
        if self.kept.is_empty() {
            // From scratch: hash the list in order, and keep it if sorted.
            let hashes: Vec<Hash> = list.clone().map(entity_hash).collect();
            if strictly_ascending(list.clone().map(&key)) {
                self.kept = list
                    .map(|e| key(e).clone())
                    .zip(hashes.iter().copied())
                    .collect();
                self.chain = ChainSum::of(&hashes);
            }
            feed_list(hasher, &hashes, version);
            return;
        }
        let up_to_date = followed && self.kept.len() == list.len();
        if !up_to_date && !self.sync(list.clone(), &key) {
            // Out of key order: the kept map cannot describe the list.
            self.clear();
            let hashes: Vec<Hash> = list.map(entity_hash).collect();
            feed_list(hasher, &hashes, version);
            return;
        }
        match version {
            DigestVersion::V3 => {
                hasher.update(&self.chain.to_bytes());
            }
            _ => feed_hashes(hasher, self.kept.values()),
        }
    }

    /// Makes the kept hashes those of `list` by one walk of both (sorted)
    /// key sequences; `false` if the list is not sorted by unique keys.
    fn sync<'a, T: Message + 'a>(
        &mut self,
        list: impl Iterator<Item = &'a T>,
        key: impl Fn(&T) -> &K,
    ) -> bool {
        let mut stale: Vec<K> = Vec::new();
        let mut missing: Vec<&T> = Vec::new();
        let mut kept_keys = self.kept.keys().peekable();
        let mut previous: Option<&K> = None;
        for entity in list {
            let k = key(entity);
            if previous.is_some_and(|p| p >= k) {
                return false;
            }
            previous = Some(k);
            while let Some(old) = kept_keys.next_if(|old| *old < k) {
                stale.push(old.clone());
            }
            if kept_keys.next_if(|old| *old == k).is_none() {
                missing.push(entity);
            }
        }
        stale.extend(kept_keys.cloned());
        for k in &stale {
            self.remove(k);
        }
        for entity in missing {
            self.set(key(entity).clone(), entity_hash(entity));
        }
        true
    }
}

/// Whether every key is greater than the one before it.
fn strictly_ascending<'k, K: Ord + 'k>(keys: impl Iterator<Item = &'k K>) -> bool {
    let mut previous = None;
    for k in keys {
        if previous.is_some_and(|p| p >= k) {
            return false;
        }
        previous = Some(k);
    }
    true
}

/// Feeds a list's entity hashes, in list order, as `version` combines them.
fn feed_list(hasher: &mut blake3::Hasher, hashes: &[Hash], version: DigestVersion) {
    match version {
        DigestVersion::V3 => {
            hasher.update(&ChainSum::of(hashes).to_bytes());
        }
        _ => feed_hashes(hasher, hashes.iter()),
    }
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
    /// Feeds the list's length and its entity hashes (version 2) or their
    /// chain sum (version 3) to `hasher`, hashing only entities that differ
    /// from the copy kept under the same key, and keeps the list's entities
    /// and hashes for the next call.
    ///
    /// The lists of a state are sorted by their key (`by_key` orders two
    /// entities by it), so the kept entry of an entity is found by walking
    /// both lists together; a list out of order only makes the walk miss, and
    /// a miss hashes the entity afresh.
    fn update(
        &mut self,
        list: &[T],
        by_key: impl Fn(&T, &T) -> Ordering,
        version: DigestVersion,
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
            kept.push(entry);
        }
        let hashes: Vec<Hash> = kept.iter().map(|(_, hash)| *hash).collect();
        feed_list(hasher, &hashes, version);
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
            // The state keeps its known Runs in descending id order.
            runs: runs
                .iter()
                .rev()
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
        let v2 = Digester::default().digest_as(&s, DigestVersion::V2);
        let v3 = state_digest(&s);
        assert_eq!(DigestVersion::of(&v1), Some(DigestVersion::V1));
        assert_eq!(DigestVersion::of(&v2), Some(DigestVersion::V2));
        assert_eq!(DigestVersion::of(&v3), Some(DigestVersion::V3));
        assert_eq!(DigestVersion::of(&[2; 31]), None);
        assert_eq!(DigestVersion::of(&[4; 33]), None);
        let mut digester = Digester::default();
        for digest in [&v1, &v2, &v3] {
            assert!(digester.matches(&s, digest));
            assert!(!digester.matches(&state("p", &[2], &[]), digest));
        }
        assert!(!digester.matches(&s, &[3; 33]));
        assert!(!digester.matches(&s, &[4; 33]));
    }

    #[test]
    fn chain_sums_follow_sets_and_removals_in_any_order() {
        // Whatever order keys are set, replaced and dropped in, the kept sum
        // is the chain sum of the kept hashes in key order.
        let h = |n: u8| *blake3::hash(&[n]).as_bytes();
        let mut kept = KeyedHashes::<i64>::default();
        let steps: [(i64, Option<u8>); 12] = [
            (5, Some(1)),
            (2, Some(2)),
            (9, Some(3)),
            (7, Some(4)),
            (2, Some(5)),
            (5, None),
            (1, Some(6)),
            (9, Some(6)),
            (7, None),
            (3, None),
            (1, None),
            (4, Some(7)),
        ];
        for (key, hash) in steps {
            match hash {
                Some(n) => kept.set(key, h(n)),
                None => kept.remove(&key),
            }
            let by_definition = ChainSum::of(kept.kept.values());
            assert_eq!(kept.chain, by_definition, "after {key} {hash:?}");
        }
        // Order matters: the same hashes in another order sum differently.
        assert_ne!(ChainSum::of(&[h(1), h(2)]), ChainSum::of(&[h(2), h(1)]));
        // Subtraction undoes addition across limb borrows.
        let mut sum = ChainSum::default();
        sum.sub(&h(1));
        sum.add(&h(1));
        assert_eq!(sum, ChainSum::default());
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
