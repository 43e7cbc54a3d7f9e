//! The `prjmanager` binary.
fn main() {}
