//! Progress bars of the long CLI runs (embedding a dataset, training, sending a split through
//! a gateway). They draw on stderr only when it is a terminal, so logs and tests stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what` (e.g. `embedding`, `replaying`).
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let template = format!("{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}");
    ProgressBar::new(len as u64).with_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()))
}
