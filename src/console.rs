//! Lines for people on standard error that never panic: a closed or full standard error
//! (`2>/dev/full`, `2>&1 | head -1`) must not take down a run, its health reports or its Ctrl-C
//! handler, as `eprintln!` would.

/// `eprintln!` that ignores a failed write, with the passwords of URLs masked.
#[macro_export]
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        let _ = writeln!(std::io::stderr(), "{}", $crate::redact::credentials(&line));
    }};
}

/// A progress display on standard error (indicatif) while long work goes on: a bar with time left
/// when the amount of work is known, a spinner otherwise; the caller puts the rate in the message.
/// See [`show_rate`]. Nothing at all when
/// standard error is not a terminal (logs and pipes get no control codes).
pub fn progress(total: Option<u64>, unit: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget};
    use std::io::IsTerminal;
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(progress_style(total.is_some(), unit));
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// The look of a progress display: a bar with time left, or a spinner.
pub fn progress_style(known_total: bool, unit: &str) -> indicatif::ProgressStyle {
    let template = if known_total {
        format!("{{prefix}}{{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  {{eta}} left")
    } else {
        format!("{{spinner}} {{pos}} {unit}  {{msg}}  {{elapsed}}")
    };
    indicatif::ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// Moves `bar` to `done` and shows the rate since `started` (`12.3/s`).
pub fn show_rate(bar: &indicatif::ProgressBar, done: u64, started: std::time::Instant) {
    bar.set_position(done);
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
    bar.set_message(format!("{rate:.1}/s"));
}
