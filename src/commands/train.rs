//! `faceflow train` (feature `train`): trains the attribute model and exports it to ONNX.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, bail};

use super::{EXIT_INTERRUPTED, on_interrupt};

pub fn train(args: crate::cli::TrainArgs) -> Result<ExitCode> {
    use faceflow::train;

    args.check_run_options()?;
    if let Some(n) = args.train_threads {
        // burn's CPU backend sizes its rayon pool from this on first use.
        // SAFETY: set before any other thread of this process exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
    }
    let mut detect = faceflow::detect::DetectConfig::default();
    args.detector.apply(&mut detect);
    let opts = train::RunOptions {
        out_dir: args.out.clone(),
        cache_dir: args.cache.clone(),
        resume: args.resume,
        detect,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        checkpoint_every_steps: args.checkpoint_every,
        progress: std::io::stderr().is_terminal(),
        stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        export_path: args.export.clone(),
    };
    if args.export_only {
        let mut note = String::new();
        let (model, state) = if args.average.is_empty() {
            train::load_model(&args.out, args.best)?
        } else {
            let (model, state, tally) = train::average_run(&opts, &args.average)?;
            faceflow::say!(
                "train: mean of {}: validation {}",
                args.average.join(", "),
                tally.line()
            );
            note = format!(", weights averaged over {}", args.average.join(" "));
            (model, state)
        };
        let path = args
            .export
            .unwrap_or_else(|| args.out.join("faceattr.onnx"));
        let side = state.config.input_px as usize;
        // Parity on a fixed pseudo-random batch: no data needed to export.
        let input: Vec<f32> = (0..4 * 3 * side * side)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0)
            .collect();
        let diff = train::export_run(&model, &state, &path, input, 4, &note)?;
        let which = if !args.average.is_empty() {
            format!("mean of {}", args.average.join(", "))
        } else if args.best {
            format!("epoch {}", state.best_epoch.unwrap_or(0))
        } else {
            format!("epoch {}", state.epoch)
        };
        faceflow::say!(
            "train: exported {} ({which}; ONNX Runtime vs burn max |difference| {diff:.2e})",
            path.display()
        );
        if diff > 1e-4 {
            bail!("ONNX Runtime differs from burn by {diff:e} (more than 1e-4)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = args.config()?;
    config.validate()?;
    // The detector that fills the crop cache runs where asked (a GPU is never silently skipped).
    faceflow::runtime::use_device(args.detector.device.unwrap_or_default())?;
    {
        let stop = opts.stop.clone();
        on_interrupt("stopping after the batch or image in hand", move || {
            stop.store(true, Ordering::SeqCst)
        });
    }
    let outcome = train::train(config, &opts)?;
    if outcome.stopped {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
