//! What the fold remembers beside a state from one invocation to the next.
//!
//! Each part is a cache that lets an invocation skip work and changes
//! nothing it decides or saves (a proptest of `tests/domain_laws.rs` folds
//! random streams with and without a [`Memo`] and compares every evaluation
//! and the final state). None of it is state: not digested, not
//! snapshotted, and valid only for the state it followed invocation by
//! invocation, so a memo that did not follow a state must be cleared
//! ([`Memo::clear`]) before an invocation of that state uses it.

use super::time::Nanos;
use super::triager::memo::RunIdMemo;

/// The caches of one followed state.
#[derive(Debug, Default, Clone)]
pub struct Memo {
    /// RunIDs planned at earlier invocations (see [`RunIdMemo`]).
    pub(crate) run_ids: RunIdMemo,
    /// No known Run ended before this (an ended Run without an end time
    /// counts as ended at the dawn of time), as of the end of the previous
    /// invocation; `None`: not known. Lets an invocation that forgets no
    /// Run skip the walk over every known Run (see `evaluate::prune_known`).
    pub(crate) runs_ended_from: Option<Nanos>,
}

impl Memo {
    /// Forgets everything.
    pub fn clear(&mut self) {
        self.run_ids.clear();
        self.runs_ended_from = None;
    }
}
