//! `faceflow run`: a video pipeline over one or several streams.

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
    faceflow::runtime::use_device(config.runtime.device)?;
    let streams = config.streams();
    let mut inputs: Vec<&Path> = streams
        .iter()
        .map(|(_, s)| Path::new(s.input.strip_prefix("file://").unwrap_or(&s.input)))
        .collect();
    if let Some(pipeline) = &args.pipeline {
        inputs.push(pipeline);
    }
    check_json_target(config.json.path.as_str(), &inputs)?;
    if let Some(overlay) = config.overlay.path.as_ref().filter(|p| !p.contains("://")) {
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
    // Frames written so far and the rate; a bar with time left once every input is a file that
    // says how long it is.
    let bar = super::progress(None, "frames");
    let shown = bar.clone();
    let health_bar = bar.clone();
    let hooks = pipeline::RunHooks {
        progress: Some(Box::new(
            move |frames: u64, total: Option<u64>, elapsed: std::time::Duration| {
                if let Some(total) = total.map(|t| t.max(frames))
                    && shown.length() != Some(total)
                {
                    shown.set_length(total);
                    shown.set_style(super::progress_style(true, "frames"));
                }
                shown.set_position(frames);
                let fps = frames as f64 / elapsed.as_secs_f64().max(1e-9);
                shown.set_message(format!("{fps:.1} fps"));
            },
        )),
        health: Some(Box::new(move |health: &pipeline::Health| {
            health_bar.suspend(|| faceflow::say!("{}", health.line()));
        })),
    };
    let summary = pipeline::run(&config, control, hooks);
    bar.finish_and_clear();
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
