//! `prjmanager`: an event-sourced re-implementation of the Project Manager of
//! LUCI Change Verifier.
//!
//! See `ARCHITECTURE.md` for the map of the crate.

#![warn(missing_docs)]

pub mod cli;
pub mod domain;
pub mod events;
pub mod fold;
pub mod jsonl;
pub mod limits;
pub mod metrics;
pub mod notifier;
pub mod progress;
pub mod projector;
pub mod proto;
pub mod read;
pub mod replay;
pub mod service;
pub mod store;
pub mod streams;
pub mod testing;
