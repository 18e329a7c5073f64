//! Progress bars (`indicatif`) for runs longer than about a second — benchmark rows, workload
//! phases, the pressure scenario, exec sweeps — drawn on stderr, and only when both stdout
//! and stderr are terminals: piped or redirected output gets no bar and no escape codes.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Whether bars are drawn at all.
pub fn enabled() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A bar counting to `len`, labelled `msg`; hidden when output is not a terminal.
pub fn bar(len: u64, msg: impl Into<String>) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(msg.into());
    b
}

/// A spinner for work of unknown length (a benchmark row), ticking on its own.
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b.set_message(msg.into());
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
}
