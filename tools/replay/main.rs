//! `pm-replay`: rebuild, verify, diff and blame historic project states.
//! Being built (issue "pm-replay and the replays/ corpus").

fn main() {
    eprintln!("pm-replay: not available in this build yet");
    std::process::exit(2);
}
