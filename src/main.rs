//! The `prjmanager` binary: parse the arguments, run the command, exit with
//! its code (0 ok, 1 failure, 2 bad input).

/// mimalloc: the fold and the replay-file parser allocate many small
/// strings, where glibc's malloc took 10-25 % of the profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(prjmanager::cli::main());
}
