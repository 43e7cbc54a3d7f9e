//! The `prjmanager` binary: parse the arguments, run the command, exit with
//! its code (0 ok, 1 failure, 2 bad input).

fn main() {
    std::process::exit(prjmanager::cli::main());
}
