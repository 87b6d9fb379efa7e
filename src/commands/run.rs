//! `faceflow run`: a video pipeline over one or several streams.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::{EXIT_INTERRUPTED, check_json_target, install_interrupt_handler, same_file};
use crate::cli::RunArgs;
use faceflow::graph::Control;
use faceflow::pipeline;

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let config = args.config()?;
    config.validate()?;
    let streams = config.streams();
    let mut inputs: Vec<&Path> = streams
        .iter()
        .map(|(_, s)| Path::new(s.input.strip_prefix("file://").unwrap_or(&s.input)))
        .collect();
    if let Some(pipeline) = &args.pipeline {
        inputs.push(pipeline);
    }
    check_json_target(config.json.path.as_str(), &inputs)?;
    if let Some(overlay) = &config.overlay.path {
        let path = Path::new(overlay);
        if inputs.iter().any(|input| same_file(input, path)) {
            anyhow::bail!("--overlay {overlay}: that is an input; give a new .mp4 file");
        }
        if config.json.path != "-" && same_file(Path::new(&config.json.path), path) {
            anyhow::bail!("--overlay {overlay}: that is the JSON output; give another file");
        }
    }

    let control = Control::new();
    install_interrupt_handler(control.clone());
    let progress: Option<pipeline::Progress> = std::io::stderr().is_terminal().then(|| {
        Box::new(|frames: u64, elapsed: std::time::Duration| {
            let fps = frames as f64 / elapsed.as_secs_f64().max(1e-9);
            faceflow::say_inline!("\rframes {frames}  {fps:.1} fps ");
        }) as pipeline::Progress
    });
    let had_progress = progress.is_some();
    let hooks = pipeline::RunHooks {
        progress,
        health: Some(Box::new(move |health: &pipeline::Health| {
            if had_progress {
                faceflow::say_inline!("\r\x1b[K");
            }
            faceflow::say!("{}", health.line());
        })),
    };
    let summary = pipeline::run(&config, control, hooks);
    if had_progress {
        faceflow::say_inline!("\r\x1b[K");
    }
    let summary = summary?;
    for line in summary.lines() {
        faceflow::say!("faceflow: {line}");
    }
    let failures = summary.failures();
    if !failures.is_empty() {
        // Every frame a failed stream decoded was written; the failure still fails the run.
        for failure in failures {
            faceflow::say!("error: {failure}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if summary.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
