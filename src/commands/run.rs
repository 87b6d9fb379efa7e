//! `faceflow run`: a video pipeline over one or several streams.

use std::process::ExitCode;

use anyhow::Result;

use super::{EXIT_INTERRUPTED, check_json_target, install_interrupt_handler};
use crate::cli::RunArgs;
use faceflow::graph::Control;
use faceflow::pipeline;
use faceflow::pipeline::outputs::InputFile;

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let config = args.config()?;
    config.validate()?;
    faceflow::runtime::use_device(config.runtime.device)?;
    // Every file the run writes, against every file it reads and each other, before any is
    // created.
    let pipeline_file: Vec<InputFile> = args
        .pipeline
        .iter()
        .map(|path| InputFile {
            what: "the pipeline file".into(),
            path: path.clone(),
        })
        .collect();
    // Inputs are checked by `check_outputs`, which names the one in the way.
    check_json_target(config.json.path.as_str(), &[])?;
    config.check_outputs(&pipeline_file)?;

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
        stream_end: None,
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
