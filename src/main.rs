//! The faceflow command line: parsing, logging, one-line errors and exit statuses. Each
//! subcommand lives in its own module under `commands/`; the flags are in `cli/`.

mod cli;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

/// Exit status of a usage error (bad flag or value), as clap and most CLIs use.
const EXIT_USAGE: u8 = 2;

fn init_logging(verbose: u8) {
    // ONNX Runtime logs every graph transformation at info: keep it at warn unless asked for trace.
    let default = match verbose {
        0 => "warn",
        1 => "info,ort=warn",
        2 => "debug,ort=warn",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Passwords of URLs are masked in every log line, at every level.
        .with_writer(|| faceflow::redact::Redacting(std::io::stderr()))
        .with_target(false)
        // Colour codes only for a terminal, never into files and pipes.
        .with_ansi(std::io::stderr().is_terminal());
    // Without -v only warnings show: plain lines, no timestamps, for people rather than log files.
    let _ = if verbose == 0 {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.verbose);
    // A panic message may quote a URL: masked like every other line (no backtrace printing).
    std::panic::set_hook(Box::new(|info| faceflow::say!("{info}")));
    let result = match cli.command {
        Command::Run(args) => commands::run::run(*args),
        Command::Detect(args) => commands::images::detect(args),
        Command::Analyze(args) => commands::images::analyze(args),
        Command::Eval(args) => commands::eval::eval(args),
        Command::Report(args) => commands::report::report(args),
        Command::Yardstick(args) => commands::eval::yardstick(args),
        Command::Fleet(args) => commands::fleet::fleet(args),
        Command::Worker(args) => commands::fleet::worker(args),
        #[cfg(feature = "train")]
        Command::Train(args) => commands::train::train(*args),
        #[cfg(not(feature = "train"))]
        Command::Train { .. } => Err(anyhow::anyhow!(
            "`faceflow train` is not in this build: build with the trainer, `cargo build --release --features train` (burn adds about 20 minutes to a clean build)"
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            faceflow::say!("error: {}", cli::settings::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Help and version as clap prints them; a usage error as one line, exit status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE))
        }
        _ => {
            let subcommand = std::env::args()
                .skip(1)
                .find(|a| !a.starts_with('-'))
                .filter(|a| {
                    [
                        "run", "detect", "analyze", "eval", "report", "train", "fleet",
                    ]
                    .contains(&a.as_str())
                });
            let rendered = e.render().to_string();
            let mut line = cli::usage_error_line(&rendered, subcommand.as_deref());
            // `faceflow track clip.mp4`, `faceflow clip.mp4`: a video goes to `run`.
            if e.kind() == ErrorKind::InvalidSubcommand
                && let Some(video) = std::env::args()
                    .skip(1)
                    .find(|a| commands::names_a_video(a))
            {
                line = cli::with_run_hint(&line, &video);
            }
            faceflow::say!("{line}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The error and its causes on one line, each cause once: a cause whose text the message already
/// carries (a wrapper that printed it) is not repeated.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(text.trim()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text.trim());
    }
    line
}
