//! `faceflow eval`: an attribute model scored end to end on labelled folders.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use super::{EXIT_INTERRUPTED, interrupt_flag};
use crate::cli::EvalArgs;
use faceflow::detect::Mtcnn;

pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    // Before the (seconds-long) folder scan, so an early Ctrl-C is heard too.
    let stop = interrupt_flag("stopping after this image; the report covers the images done");
    use faceflow::eval;
    let (detect, attributes) = args.settings();
    attributes.validate()?;
    detect.validate()?;
    args.check()?;
    faceflow::runtime::use_device(args.detector.device.unwrap_or_default())?;
    // The report folder first: a path that cannot be a folder fails before hours of work.
    std::fs::create_dir_all(&args.report)
        .with_context(|| format!("cannot create the report folder {}", args.report.display()))?;
    for out in [&args.calibrate, &args.descriptors].into_iter().flatten() {
        let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|f| !f.is_dir()) || out.is_dir() {
            anyhow::bail!("{}: not a file in an existing folder", out.display());
        }
    }
    if args.descriptors.is_some() && !attributes.faceres {
        anyhow::bail!("--descriptors needs faceres (--faceres true)");
    }
    let model_path = attributes.model_path();
    let mut model = attributes
        .load_for_eval()?
        .context("attributes are switched off")?;
    let mut detector = Mtcnn::new(detect)?;
    let sources_named = args
        .sources
        .iter()
        .map(|s| s.dir.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let opts = eval::EvalOptions {
        sources: args.sources,
        split: args.split,
        seed: args.seed,
        val_fraction: args.val_fraction,
        max_images: args.max_images,
        keep_probs: args.calibrate.is_some(),
        keep_descriptors: args.descriptors.is_some(),
    };
    let (samples, scan) = eval::select(&opts)?;
    faceflow::say!(
        "eval: {} images ({} malformed names skipped, {} duplicate copies removed, {} dropped for conflicting labels)",
        samples.len(),
        scan.malformed.len(),
        scan.duplicates,
        scan.conflicting
    );
    if let Some(overlap) = eval::training_overlap(model.spec(), &opts) {
        faceflow::say!("eval: warning: {overlap}");
    } // Temperatures fitted on faces the model learned would be too sure: refused.
    if args.calibrate.is_some() {
        let held_out = opts.split == eval::Split::Validation
            && eval::training_overlap(model.spec(), &opts).is_none();
        if !held_out {
            anyhow::bail!(
                "--calibrate needs faces the model never trained on: --split validation with the seed and fraction it was trained with{}",
                eval::training_overlap(model.spec(), &opts)
                    .map(|o| format!(" ({o})"))
                    .unwrap_or_default()
            );
        }
    }

    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let bar = super::progress(Some(samples.len() as u64), "images");
    let mut progress = |done: usize, total: usize| {
        super::show_rate(&bar, done as u64, started);
        // Without a terminal, a line now and then for logs.
        if !tty && (done.is_multiple_of(1000) || done == total) {
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            faceflow::say!("eval: {done}/{total} images, {rate:.0}/s");
        }
        !stop.load(Ordering::SeqCst)
    };
    let report = eval::evaluate(
        &mut detector,
        &mut model,
        &model_path.display().to_string(),
        &samples,
        &opts,
        &mut progress,
    );
    bar.finish_and_clear();
    let report = report?;
    let written = eval::write_report(&args.report, &report)?;
    if let Some(out) = &args.descriptors {
        let kept = eval::write_descriptors(out, &report)
            .with_context(|| format!("cannot write {}", out.display()))?;
        if kept == 0 && !report.images.is_empty() {
            anyhow::bail!(
                "--descriptors: faceres read no face (it reads only for models that report gender or race)"
            );
        }
        faceflow::say!("eval: {kept} faces' descriptors in {}", out.display());
    }
    println!("{}", report.tally.line());
    if args.calibrate.is_some() && report.interrupted {
        faceflow::say!(
            "eval: interrupted: no temperatures written (part of the split would fit them)"
        );
    }
    if let Some(out) = args.calibrate.as_ref().filter(|_| !report.interrupted) {
        let fitted_on = format!(
            "{} (flip_average {}, faceres {}) on the {} split (seed {}, validation fraction {}) of {}: {} images",
            report.model,
            attributes.flip_average,
            attributes.faceres,
            format!("{:?}", report.split).to_lowercase(),
            report.seed,
            report.val_fraction,
            sources_named,
            report.images.len()
        );
        let (calibration, md) = eval::calibrate::fit(&report, fitted_on);
        let json = serde_json::to_string_pretty(&calibration)?;
        std::fs::write(out, json + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
        let page = args.report.join("calibration.md");
        std::fs::write(&page, &md).with_context(|| format!("cannot write {}", page.display()))?;
        eprint!("{md}");
        faceflow::say!(
            "eval: temperatures in {}, calibration error and coverage in {}",
            out.display(),
            page.display()
        );
    }
    faceflow::say!(
        "eval: report in {} ({} files){}",
        args.report.display(),
        written.len(),
        if report.interrupted {
            "; interrupted"
        } else {
            ""
        }
    );
    if report.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

/// `faceflow yardstick`: every labelled clip's run scored, a table on standard output.
pub fn yardstick(args: crate::cli::YardstickArgs) -> Result<ExitCode> {
    use faceflow::eval::yardstick::{ClipLabels, RunSaid, score_clip, table};
    let mut labels: Vec<PathBuf> = std::fs::read_dir(&args.labels)
        .with_context(|| format!("cannot read the labels folder {}", args.labels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    labels.sort();
    if labels.is_empty() {
        anyhow::bail!("{}: no labels (<clip>.json)", args.labels.display());
    }
    let mut scores = Vec::new();
    for path in labels {
        let clip = ClipLabels::load(&path)?;
        let run = args.runs.join(format!("{}.jsonl", clip.clip));
        if !run.exists() {
            anyhow::bail!(
                "{}: no run of {} (scripts/yardstick.sh writes one per labelled clip)",
                run.display(),
                clip.clip
            );
        }
        scores.push(score_clip(&clip, &RunSaid::load(&run)?));
    }
    print!("{}", table(&scores));
    Ok(ExitCode::SUCCESS)
}
