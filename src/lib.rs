//! `prjmanager`: an event-sourced re-implementation of the Project Manager of
//! LUCI Change Verifier.
//!
//! See `ARCHITECTURE.md` for the map of the crate.

#![warn(missing_docs)]

pub mod domain;
pub mod events;
pub mod proto;
pub mod store;
