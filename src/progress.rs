//! Progress on long work, for the command-line tools: a bar on stderr, drawn
//! only when stderr is a terminal (indicatif hides it otherwise).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` events, labelled `what`.
pub fn events_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} events ({per_sec}, {eta})")
            .expect("static progress template"),
    );
    bar.set_message(what.to_string());
    bar
}
