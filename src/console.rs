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

/// `eprint!` (no newline, flushed: progress lines redrawn with `\r`) that ignores a failed write,
/// with the passwords of URLs masked.
#[macro_export]
macro_rules! say_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut err = std::io::stderr();
        let text = format!($($arg)*);
        let _ = write!(err, "{}", $crate::redact::credentials(&text));
        let _ = err.flush();
    }};
}
