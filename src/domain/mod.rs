//! The pure fold: the Project Manager's state machine and triager.
//!
//! Nothing here does I/O, reads a clock, draws randomness or iterates an
//! unordered collection: time, ids and configuration are arguments.

pub mod triage_api;
