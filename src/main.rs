//! The faceflow command line.

mod cli;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{AnalyzeArgs, Cli, Command, DetectArgs, EvalArgs, RunArgs};
use faceflow::align::{self, AlignConfig};
use faceflow::attributes::{AttributeModel, FacesInImage};
use faceflow::detect::Mtcnn;
use faceflow::graph::Control;
use faceflow::model::AgeGrouping;
use faceflow::pipeline;
use faceflow::sinks::{FaceRecord, ImageRecord, JsonConfig, JsonLinesWriter};

/// Exit status after an interrupted (Ctrl-C) run, as shells report SIGINT.
const EXIT_INTERRUPTED: u8 = 130;
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
        .with_writer(std::io::stderr)
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
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Detect(args) => cmd_detect(args),
        Command::Analyze(args) => cmd_analyze(args),
        Command::Eval(args) => cmd_eval(args),
        #[cfg(feature = "train")]
        Command::Train(args) => cmd_train(*args),
        #[cfg(not(feature = "train"))]
        Command::Train { .. } => Err(anyhow::anyhow!(
            "`faceflow train` is not in this build: build with the trainer, `cargo build --release --features train` (burn adds about 20 minutes to a clean build)"
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            faceflow::say!("error: {}", one_line(&e));
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
                .filter(|a| ["run", "detect", "analyze", "eval", "train"].contains(&a.as_str()));
            let rendered = e.render().to_string();
            faceflow::say!(
                "{}",
                cli::usage_error_line(&rendered, subcommand.as_deref())
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The error and its causes on one line, each cause once: a cause whose text the message already
/// carries (a wrapper that printed it) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
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

/// Refuses a JSON output path that would overwrite an input, a picture or a video: one named like
/// one, or an existing file whose first bytes are one (`--json photo.jpg` from the habit of a bare
/// `--json`, or a typo that names the input).
fn check_json_target(json: &str, inputs: &[&Path]) -> Result<()> {
    if json == "-" {
        return Ok(());
    }
    let hint = "give the output file (e.g. --json faces.jsonl) or - for standard output";
    if json.trim().is_empty() {
        bail!("--json is empty: {hint}");
    }
    let path = Path::new(json);
    if inputs.iter().any(|input| same_file(input, path)) {
        bail!("--json {json}: that is an input; {hint}");
    }
    const MEDIA: &[&str] = &[
        "jpg", "jpeg", "jpe", "jfif", "png", "bmp", "webp", "gif", "tif", "tiff", "avif", "heic",
        "heif", "ico", "tga", "qoi", "pnm", "ppm", "pgm", "pbm", "exr", "hdr", "mp4", "m4v", "mkv",
        "mov", "avi", "webm", "ts", "mts", "m2ts", "mpg", "mpeg", "flv", "wmv", "3gp", "ogv",
        "h264", "h265", "hevc", "mjpeg",
    ];
    if let Some(ext) = path.extension().and_then(|e| e.to_str())
        && MEDIA.contains(&ext.to_ascii_lowercase().as_str())
    {
        bail!("--json {json}: refusing to write JSON into a .{ext} file; {hint}");
    }
    if let Some(kind) = existing_media(path) {
        bail!("--json {json}: refusing to overwrite {kind}; {hint}");
    }
    Ok(())
}

/// The same file, by device and inode when both exist (paths may differ: `./a` and `a`).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// "a picture" or "a video" when `path` is an existing file that starts like one.
fn existing_media(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    let head = &head[..n];
    if n >= 4 && image::guess_format(head).is_ok() {
        return Some("a picture");
    }
    let video = (n >= 8 && &head[4..8] == b"ftyp")
        || head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3])
        || head.starts_with(b"RIFF")
        || head.starts_with(b"FLV")
        || head.starts_with(b"OggS")
        || head.starts_with(&[0x30, 0x26, 0xb2, 0x75])
        || head.starts_with(&[0x00, 0x00, 0x01, 0xba]);
    video.then_some("a video")
}

/// Ctrl-C / SIGTERM: the first asks the graph to stop (frames in flight finish, outputs are
/// flushed); a second exits at once.
/// A flag raised by the first Ctrl-C / SIGTERM, for loops that stop between items.
fn interrupt_flag(what: &'static str) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let raised = flag.clone();
    on_interrupt(what, move || raised.store(true, Ordering::SeqCst));
    flag
}

fn install_interrupt_handler(control: Control) {
    on_interrupt("stopping", move || control.request_stop());
}

/// Runs `first` on the first Ctrl-C / SIGTERM (after saying `what`); a second exits at once.
fn on_interrupt(what: &'static str, first: impl Fn() + Send + 'static) {
    let hits = Arc::new(AtomicUsize::new(0));
    let result = ctrlc::set_handler(move || {
        if hits.fetch_add(1, Ordering::SeqCst) == 0 {
            // Stop first: saying so may fail (standard error closed) and must not prevent it.
            first();
            faceflow::say!("\nfaceflow: {what} (press Ctrl-C again to quit at once)");
        } else {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    if let Err(e) = result {
        tracing::warn!("cannot install Ctrl-C handler: {e}");
    }
}

fn cmd_run(args: RunArgs) -> Result<ExitCode> {
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

fn cmd_detect(args: DetectArgs) -> Result<ExitCode> {
    let (detect, align_config) = args.settings();
    align_config.validate()?;
    let json = args.json.clone().unwrap_or_else(|| "-".into());
    check_json_target(&json, &paths(&args.images))?;
    let mut detector = Mtcnn::new(detect)?;
    if let Some(dir) = &args.crops {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let crop_names = crop_stems(&args.images);
    let crops = args.crops.clone();
    process_images(&args.images, json, |i, path| {
        let crops = crops.as_deref().map(|dir| (dir, crop_names[i].as_str()));
        detect_one(&mut detector, None, path, crops, &align_config)
    })
}

fn paths(images: &[PathBuf]) -> Vec<&Path> {
    images.iter().map(PathBuf::as_path).collect()
}

/// The file-name stem of each image's crops: its own stem, with `-2`, `-3`, … for a later image
/// whose stem is taken (a/x.jpg and b/x.jpg must not overwrite each other's crops).
fn crop_stems(images: &[PathBuf]) -> Vec<String> {
    let mut taken = HashSet::new();
    images
        .iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let mut name = stem.clone();
            let mut n = 1;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{stem}-{n}");
            }
            name
        })
        .collect()
}

/// Writes one record per image; a failed image is reported (and gets no record) and the others
/// are still processed. A reader that closes the output (`| head`) ends the run quietly.
fn process_images(
    images: &[PathBuf],
    json: String,
    mut one: impl FnMut(usize, &Path) -> Result<ImageRecord>,
) -> Result<ExitCode> {
    let mut writer = JsonLinesWriter::create(&JsonConfig { path: json })?;
    let mut failures = 0usize;
    let show_progress = images.len() > 1 && std::io::stderr().is_terminal();
    let stop = interrupt_flag("stopping after this image");
    let mut finished = 0;
    for (done, path) in images.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        finished = done + 1;
        if show_progress {
            faceflow::say_inline!("\rimage {}/{} ", done + 1, images.len());
        }
        match one(done, path) {
            Ok(record) => match writer.write(&record) {
                Ok(()) => {}
                Err(e) if e.is_broken_pipe() => {
                    if show_progress {
                        faceflow::say_inline!("\r\x1b[K");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => {
                // Keep going: one unreadable image must not cost the results of the others.
                if show_progress {
                    faceflow::say_inline!("\r\x1b[K");
                }
                faceflow::say!("error: {}", one_line(&e));
                failures += 1;
            }
        }
    }
    if show_progress {
        faceflow::say_inline!("\r\x1b[K");
    }
    match writer.flush() {
        Err(e) if e.is_broken_pipe() => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    if stop.load(Ordering::SeqCst) && finished < images.len() {
        faceflow::say!(
            "faceflow: interrupted after {finished} of {} images; their records are complete",
            images.len()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be processed (they have no record)",
            images.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_analyze(args: AnalyzeArgs) -> Result<ExitCode> {
    let (detect, attributes) = args.settings();
    attributes.validate()?;
    detect.validate()?;
    let json = args.json.clone().unwrap_or_else(|| "-".into());
    check_json_target(&json, &paths(&args.images))?;
    let (mut model, grouping) = attributes.load()?.context("attributes are switched off")?;
    let mut detector = Mtcnn::new(detect)?;
    let align_config = AlignConfig::default();
    process_images(&args.images, json, |_, path| {
        detect_one(
            &mut detector,
            Some((&mut model, grouping)),
            path,
            None,
            &align_config,
        )
    })
}

fn cmd_eval(args: EvalArgs) -> Result<ExitCode> {
    // Before the (seconds-long) folder scan, so an early Ctrl-C is heard too.
    let stop = interrupt_flag("stopping after this image; the report covers the images done");
    use faceflow::eval;
    let (detect, attributes) = args.settings();
    attributes.validate()?;
    detect.validate()?;
    args.check()?;
    // The report folder first: a path that cannot be a folder fails before hours of work.
    std::fs::create_dir_all(&args.report)
        .with_context(|| format!("cannot create the report folder {}", args.report.display()))?;
    let model_path = attributes.model_path();
    let (mut model, _) = attributes.load()?.context("attributes are switched off")?;
    let mut detector = Mtcnn::new(detect)?;
    let opts = eval::EvalOptions {
        sources: args.sources,
        split: args.split,
        seed: args.seed,
        val_fraction: args.val_fraction,
        max_images: args.max_images,
    };
    let (samples, scan) = eval::select(&opts)?;
    faceflow::say!(
        "eval: {} images ({} malformed names skipped, {} duplicate copies removed, {} dropped for conflicting labels)",
        samples.len(),
        scan.malformed.len(),
        scan.duplicates,
        scan.conflicting
    );
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut progress = |done: usize, total: usize| {
        if (tty && done.is_multiple_of(20)) || done == total || (!tty && done.is_multiple_of(1000))
        {
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            if tty {
                faceflow::say_inline!("\reval: {done}/{total} images, {rate:.0}/s ");
            } else {
                faceflow::say!("eval: {done}/{total} images, {rate:.0}/s");
            }
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
    if tty {
        faceflow::say_inline!("\r\x1b[K");
    }
    let report = report?;
    let written = eval::write_report(&args.report, &report)?;
    if !eval::plot::has_font() {
        tracing::warn!("no DejaVu Sans font found: charts are drawn without text");
    }
    println!("{}", report.tally.line());
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

/// An attribute model and the age grouping to report.
type Attributes<'a> = Option<(&'a mut AttributeModel, AgeGrouping)>;

fn detect_one(
    detector: &mut Mtcnn,
    attributes: Attributes<'_>,
    path: &Path,
    crops: Option<(&Path, &str)>,
    align_config: &AlignConfig,
) -> Result<ImageRecord> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    let image = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("{}: cannot open", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable image", path.display()))?
        .to_rgb8();
    let (width, height) = image.dimensions();
    let faces = detector
        .detect_still(image.as_raw(), width as usize, height as usize)
        .with_context(|| format!("{}: detection failed", path.display()))?;
    if let Some((dir, stem)) = crops {
        for (i, face) in faces.iter().enumerate() {
            let Some(crop) = align::align_face(
                image.as_raw(),
                width as usize,
                height as usize,
                &face.landmarks,
                align_config,
            ) else {
                tracing::warn!(image = %path.display(), face = i, "degenerate landmarks, no crop");
                continue;
            };
            let side = align_config.crop_px;
            let out = dir.join(format!("{stem}_face{i}.png"));
            image::RgbImage::from_raw(side, side, crop)
                .context("crop buffer size")?
                .save(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
    }
    let faces = match attributes {
        None => faces.into_iter().map(FaceRecord::detection).collect(),
        Some((model, grouping)) => {
            let image_faces = FacesInImage {
                rgb: image.as_raw(),
                width: width as usize,
                height: height as usize,
                faces: faces.iter().collect(),
            };
            let predicted = model
                .predict_faces(&[image_faces])
                .with_context(|| format!("{}: attribute model failed", path.display()))?;
            let spec = model.spec().clone();
            faces
                .into_iter()
                .zip(predicted.into_iter().flatten())
                .map(|(face, p)| match p {
                    Some(p) => FaceRecord::with_attributes(face, &p, &spec, grouping),
                    None => FaceRecord::detection(face),
                })
                .collect()
        }
    };
    Ok(ImageRecord {
        image: path.display().to_string(),
        width,
        height,
        faces,
    })
}

#[cfg(feature = "train")]
fn cmd_train(args: cli::TrainArgs) -> Result<ExitCode> {
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
    {
        let stop = opts.stop.clone();
        on_interrupt("stopping after this batch", move || {
            stop.store(true, Ordering::SeqCst)
        });
    }
    let outcome = train::train(config, &opts)?;
    if outcome.stopped {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
