//! The faceflow command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use faceflow::align::{self, AlignConfig};
use faceflow::attributes::AttributeModel;
use faceflow::detect::{DetectConfig, Mtcnn};
use faceflow::graph::Control;
use faceflow::model::AgeGrouping;
use faceflow::pipeline::{self, AttributesConfig, PipelineConfig};
use faceflow::sinks::{FaceRecord, ImageRecord, JsonConfig, JsonLinesWriter};

/// Exit status after an interrupted (Ctrl-C) run, as shells report SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "faceflow",
    version,
    about = "Find faces in video and images: MTCNN detection with five landmarks, JSON Lines out",
    long_about = "Find faces in video and images: MTCNN detection with five landmarks, JSON Lines out.\n\n\
        Examples:\n  \
        faceflow run --input clip.mp4 --json faces.jsonl\n  \
        faceflow run --input rtsp://camera/stream --json -\n  \
        faceflow run --input v4l2:///dev/video0 --json -\n  \
        faceflow run pipelines/file-to-json.toml\n  \
        faceflow detect --json photo1.jpg photo2.png\n\n\
        Logs go to standard error: -v for progress details, -vv for debugging, or RUST_LOG."
)]
struct Cli {
    /// More log output on standard error (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a video pipeline: decode, detect faces on every frame, write one JSON record per frame.
    Run(RunArgs),
    /// Detect faces in still images, one JSON record per image.
    Detect(DetectArgs),
    /// Detect faces in still images and estimate age group, gender and race of each.
    Analyze(AnalyzeArgs),
    /// Score an attribute model end to end on a labelled folder; writes JSON, Markdown and PNG.
    Eval(EvalArgs),
    /// Train the age/gender/race model on labelled face folders and export it to ONNX.
    #[cfg(feature = "train")]
    Train(Box<TrainArgs>),
}

#[cfg(feature = "train")]
#[derive(Args)]
struct TrainArgs {
    /// Labelled folder (UTKFace names AGE_GENDER_RACE_*.jpg); append @TASKS when it only has some
    /// labels, e.g. faces@race. Repeat for several sources.
    #[arg(long = "source", value_name = "DIR[@TASKS]", value_parser = faceflow::model::dataset::Source::parse)]
    sources: Vec<faceflow::model::dataset::Source>,
    /// Run folder: checkpoints, state.json, validation history, the exported model.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its saved settings are used).
    #[arg(long)]
    resume: bool,
    /// Only export the run in --out to ONNX (no training).
    #[arg(long)]
    export_only: bool,
    /// With --export-only: export the best validation epoch instead of the last checkpoint.
    #[arg(long)]
    best: bool,
    /// With --export-only: export the mean of these checkpoints of the run (e.g.
    /// epoch-22.bpk,epoch-24.bpk,epoch-26.bpk), batch-norm statistics re-estimated on its training
    /// crops; prints its validation.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "FILES",
        requires = "export_only",
        conflicts_with = "best"
    )]
    average: Vec<String>,
    /// Heads to train: age, age,gender or age,gender,race.
    #[arg(long, default_value = "age,gender,race")]
    tasks: String,
    #[arg(long, default_value_t = 30)]
    epochs: u32,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Peak learning rate (AdamW; warm-up, then cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.02)]
    weight_decay: f64,
    /// Fraction of images (by content hash) held out for validation.
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Loss weights of age, gender, race.
    #[arg(long, value_name = "A,G,R", value_parser = parse_thresholds, default_value = "1,1,1")]
    loss_weights: [f32; 3],
    /// Weight classes by inverse square-root frequency.
    #[arg(long)]
    balance_classes: bool,
    /// Split the training images in two sources: one with age+gender labels, one with race only.
    #[arg(long)]
    simulate_multi_source: bool,
    /// Use only this many images (a deterministic subset), e.g. for a smoke run.
    #[arg(long, value_name = "N")]
    max_images: Option<usize>,
    /// Network size: default or tiny (smoke tests).
    #[arg(long, default_value = "default")]
    net: String,
    #[arg(long)]
    no_augment: bool,
    /// Age readout that picks the best epoch: 3, 5 or 10 groups, or years (MAE).
    #[arg(long, default_value = "5", value_parser = faceflow::train::AgeReadout::parse)]
    age_readout: faceflow::train::AgeReadout,
    /// Crop cache folder (crops from faceflow's detector and alignment).
    #[arg(long, value_name = "DIR", default_value = ".cache/crops")]
    cache: PathBuf,
    /// Where to write the ONNX model [default: OUT/faceattr.onnx].
    #[arg(long, value_name = "PATH")]
    export: Option<PathBuf>,
    /// Training threads [default: one per core].
    #[arg(long, value_name = "N")]
    train_threads: Option<usize>,
    /// Save a checkpoint every N steps as well as after every epoch.
    #[arg(long, value_name = "N", default_value_t = 100)]
    checkpoint_every: u64,
    #[command(flatten)]
    detector: DetectorFlags,
}

#[derive(Args, Clone, Default)]
struct DetectorFlags {
    /// Smallest face to find, in pixels [default: 20].
    #[arg(long, value_name = "PX")]
    min_face: Option<f64>,
    /// Face-probability thresholds of P-Net, R-Net, O-Net [default: 0.6,0.7,0.7].
    #[arg(long, value_name = "P,R,O", value_parser = parse_thresholds)]
    thresholds: Option<[f32; 3]>,
    /// Ratio between pyramid scales, in (0, 1) [default: 0.709].
    #[arg(long, value_name = "RATIO")]
    scale_factor: Option<f64>,
    /// Folder with pnet.onnx, rnet.onnx, onet.onnx to use instead of the built-in networks.
    #[arg(long, value_name = "DIR")]
    mtcnn_models: Option<PathBuf>,
    /// ONNX Runtime threads per network [default: 1 with several workers, else one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Detector workers for video, each on its own frames [default: one per core].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

fn parse_thresholds(s: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = s
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| format!("'{v}' is not a number"))
        })
        .collect::<Result<_, _>>()?;
    <[f32; 3]>::try_from(values)
        .map_err(|v| format!("expected three values P,R,O, got {}", v.len()))
}

impl DetectorFlags {
    fn apply(&self, cfg: &mut DetectConfig) {
        if let Some(v) = self.min_face {
            cfg.min_face_px = v;
        }
        if let Some(v) = self.thresholds {
            cfg.thresholds = v;
        }
        if let Some(v) = self.workers {
            cfg.workers = v;
        }
        if let Some(v) = self.scale_factor {
            cfg.scale_factor = v;
        }
        if let Some(v) = &self.mtcnn_models {
            cfg.models_dir = Some(v.clone());
        }
        if let Some(v) = self.threads {
            cfg.threads = v;
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// Pipeline file (pipelines/*.toml); flags given here override its values.
    #[arg(value_name = "PIPELINE.toml")]
    pipeline: Option<PathBuf>,
    /// Video to read: a file path, any URI GStreamer can decode (file://, http://, rtsp://),
    /// v4l2:///dev/videoN for a webcam, or testsrc://PATTERN?frames=N&size=WxH&fps=F for a test pattern.
    #[arg(short, long, value_name = "PATH|URI")]
    input: Option<String>,
    /// Where the JSON Lines go: a file, or - for standard output [default: -].
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
    /// Use RTSP over TCP.
    #[arg(long)]
    rtsp_tcp: bool,
    /// RTSP jitter-buffer latency in milliseconds [default: 200].
    #[arg(long, value_name = "MS")]
    rtsp_latency_ms: Option<u32>,
    /// Treat the input as live (drop the oldest frames when behind) or not; default: RTSP and
    /// webcams are live, files are not.
    #[arg(long, value_name = "BOOL")]
    live: Option<bool>,
    /// Stop after this many decoded frames.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
    /// Live cameras: reconnect at most N times in a row after the stream fails or stalls
    /// [default: forever].
    #[arg(long, value_name = "N")]
    reconnect_attempts: Option<u32>,
    /// Print a health line (frames, queue depths, resident memory) to standard error every this
    /// many seconds.
    #[arg(long, value_name = "SECONDS")]
    stats_every: Option<f64>,
    /// Live cameras: no frame for this long is a stall, and the camera is reconnected
    /// [default: 5000].
    #[arg(long, value_name = "MS")]
    stall_timeout_ms: Option<u64>,
    #[command(flatten)]
    detector: DetectorFlags,
    #[command(flatten)]
    attributes: AttributeFlags,
    /// Detection only: no age, gender or race.
    #[arg(long)]
    no_attributes: bool,
}

#[derive(Args, Clone, Default)]
struct AttributeFlags {
    /// Attribute model exported by `faceflow train` [default: models/faceattr.onnx].
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Age groups to report: 3 (1-26, 27-52, 53-80), 5 (1-11, 12-23, 24-39, 40-55, 56-80) or 10
    /// (eight-year bins) [default: 5].
    #[arg(long, value_name = "N", value_parser = parse_age_groups)]
    age_groups: Option<u32>,
    /// Also run each face mirrored and average the two (steadier, twice the model cost)
    /// [default: true for analyze and eval, false for run].
    #[arg(long, value_name = "BOOL")]
    flip_average: Option<bool>,
}

fn parse_age_groups(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n @ (3 | 5 | 10)) => Ok(n),
        _ => Err(format!("'{s}': age groups must be 3, 5 or 10")),
    }
}

impl AttributeFlags {
    fn apply(&self, cfg: &mut AttributesConfig) {
        if let Some(m) = &self.model {
            cfg.model = Some(m.clone());
        }
        if let Some(n) = self.age_groups {
            cfg.age_groups = n;
        }
        if let Some(v) = self.flip_average {
            cfg.flip_average = v;
        }
    }
}

#[derive(Args)]
struct EvalArgs {
    /// Labelled folder (UTKFace names AGE_GENDER_RACE_*.jpg); repeat for several.
    #[arg(long = "source", value_name = "DIR[@TASKS]", required = true, value_parser = faceflow::model::dataset::Source::parse)]
    sources: Vec<faceflow::model::dataset::Source>,
    /// Which images: all, or the trainer's validation / training part (same seed and fraction).
    #[arg(long, default_value = "all", value_parser = faceflow::eval::Split::parse)]
    split: faceflow::eval::Split,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Score only N images of the split (a fixed sample spread over it, the same every time).
    #[arg(long, value_name = "N")]
    max_images: Option<usize>,
    /// Report folder: report.json, predictions.jsonl (one line per image), report.md,
    /// confusion_*.png, accuracy_per_age_group*.png.
    #[arg(long, value_name = "DIR", default_value = "eval-report")]
    report: PathBuf,
    #[command(flatten)]
    attributes: AttributeFlags,
    #[command(flatten)]
    detector: DetectorFlags,
}

#[derive(Args)]
struct AnalyzeArgs {
    /// Images to read (JPEG, PNG, BMP, WebP).
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
    /// Write JSON Lines to PATH (--json=PATH), or to standard output (--json, the default).
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    json: Option<String>,
    #[command(flatten)]
    attributes: AttributeFlags,
    #[command(flatten)]
    detector: DetectorFlags,
}

#[derive(Args)]
struct DetectArgs {
    /// Images to read (JPEG, PNG, BMP, WebP).
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
    /// Write JSON Lines to PATH (--json=PATH), or to standard output (--json, the default).
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    json: Option<String>,
    /// Also write each face aligned to the canonical template as DIR/<image>_face<N>.png.
    #[arg(long, value_name = "DIR")]
    crops: Option<PathBuf>,
    /// Side of the aligned crops in pixels [default: 112].
    #[arg(long, value_name = "PX")]
    crop_size: Option<u32>,
    #[command(flatten)]
    detector: DetectorFlags,
}

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
        .with_target(false);
    // Without -v only warnings show: plain lines, no timestamps, for people rather than log files.
    let _ = if verbose == 0 {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Detect(args) => cmd_detect(args),
        Command::Analyze(args) => cmd_analyze(args),
        Command::Eval(args) => cmd_eval(args),
        #[cfg(feature = "train")]
        Command::Train(args) => cmd_train(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `{:#}` joins the context chain on one line; newlines from lower layers are flattened too.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
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
            eprintln!("\nfaceflow: {what} (press Ctrl-C again to quit at once)");
            first();
        } else {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    if let Err(e) = result {
        tracing::warn!("cannot install Ctrl-C handler: {e}");
    }
}

fn cmd_run(args: RunArgs) -> Result<ExitCode> {
    let mut config = match &args.pipeline {
        Some(path) => PipelineConfig::load(path)?,
        None => PipelineConfig::default(),
    };
    if let Some(v) = args.input {
        config.source.input = v;
    }
    if let Some(v) = args.json {
        config.json = JsonConfig { path: v };
    }
    if args.rtsp_tcp {
        config.source.rtsp_tcp = true;
    }
    if let Some(v) = args.rtsp_latency_ms {
        config.source.rtsp_latency_ms = v;
    }
    if args.live.is_some() {
        config.source.live = args.live;
    }
    if let Some(v) = args.max_frames {
        config.source.max_frames = v;
    }
    if args.reconnect_attempts.is_some() {
        config.source.reconnect_attempts = args.reconnect_attempts;
    }
    if let Some(v) = args.stall_timeout_ms {
        config.source.stall_timeout_ms = v;
    }
    if let Some(v) = args.stats_every {
        config.stats_interval_s = v;
    }
    args.detector.apply(&mut config.detect);
    args.attributes.apply(&mut config.attributes);
    if args.no_attributes {
        config.attributes.enabled = false;
    }

    let control = Control::new();
    install_interrupt_handler(control.clone());
    let progress: Option<pipeline::Progress> = std::io::stderr().is_terminal().then(|| {
        Box::new(|frames: u64, elapsed: std::time::Duration| {
            let fps = frames as f64 / elapsed.as_secs_f64().max(1e-9);
            eprint!("\rframes {frames}  {fps:.1} fps ");
        }) as pipeline::Progress
    });
    let had_progress = progress.is_some();
    let hooks = pipeline::RunHooks {
        progress,
        health: Some(Box::new(move |health: &pipeline::Health| {
            if had_progress {
                eprint!("\r\x1b[K");
            }
            eprintln!("{}", health.line());
        })),
    };
    let summary = pipeline::run(&config, control, hooks);
    if had_progress {
        eprint!("\r\x1b[K");
    }
    let summary = summary?;
    eprintln!("faceflow: {}", summary.line());
    if summary.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_detect(args: DetectArgs) -> Result<ExitCode> {
    let mut detect = DetectConfig::default();
    args.detector.apply(&mut detect);
    let mut align_config = AlignConfig::default();
    if let Some(px) = args.crop_size {
        align_config.crop_px = px;
    }
    align_config.validate()?;
    let mut detector = Mtcnn::new(detect)?;
    if let Some(dir) = &args.crops {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let crops = args.crops.clone();
    process_images(&args.images, args.json, |path| {
        detect_one(&mut detector, None, path, crops.as_deref(), &align_config)
    })
}

/// Writes one record per image; a failed image is reported and the others still processed.
fn process_images(
    images: &[PathBuf],
    json: Option<String>,
    mut one: impl FnMut(&Path) -> Result<ImageRecord>,
) -> Result<ExitCode> {
    let mut writer = JsonLinesWriter::create(&JsonConfig {
        path: json.unwrap_or_else(|| "-".into()),
    })?;
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
            eprint!("\rimage {}/{} ", done + 1, images.len());
        }
        match one(path) {
            Ok(record) => writer.write(&record)?,
            Err(e) => {
                // Keep going: one unreadable image must not cost the results of the others.
                if show_progress {
                    eprint!("\r\x1b[K");
                }
                eprintln!("error: {}", one_line(&e));
                failures += 1;
            }
        }
    }
    if show_progress {
        eprint!("\r\x1b[K");
    }
    writer.flush()?;
    if stop.load(Ordering::SeqCst) && finished < images.len() {
        eprintln!(
            "faceflow: interrupted after {finished} of {} images; their records are complete",
            images.len()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be processed",
            images.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_analyze(args: AnalyzeArgs) -> Result<ExitCode> {
    let mut detect = DetectConfig::default();
    args.detector.apply(&mut detect);
    // Still images: accuracy over speed, so each face is also read mirrored unless turned off.
    let mut attributes = AttributesConfig {
        flip_average: true,
        ..AttributesConfig::default()
    };
    args.attributes.apply(&mut attributes);
    let (mut model, grouping) = attributes.load()?.context("attributes are switched off")?;
    let mut detector = Mtcnn::new(detect)?;
    let align_config = AlignConfig::default();
    process_images(&args.images, args.json, |path| {
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
    let mut detect = DetectConfig::default();
    args.detector.apply(&mut detect);
    // Still images: accuracy over speed, so each face is also read mirrored unless turned off.
    let mut attributes = AttributesConfig {
        flip_average: true,
        ..AttributesConfig::default()
    };
    args.attributes.apply(&mut attributes);
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
    eprintln!(
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
                eprint!("\reval: {done}/{total} images, {rate:.0}/s ");
            } else {
                eprintln!("eval: {done}/{total} images, {rate:.0}/s");
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
        eprint!("\r\x1b[K");
    }
    let written = eval::write_report(&args.report, &report)?;
    if !eval::plot::has_font() {
        tracing::warn!("no DejaVu Sans font found: charts are drawn without text");
    }
    println!("{}", report.tally.line());
    eprintln!(
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
    crops: Option<&Path>,
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
    if let Some(dir) = crops {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
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
            let (w, h) = (width as usize, height as usize);
            let crops: Vec<Option<Vec<u8>>> = faces
                .iter()
                .map(|f| faceflow::attributes::crop_for_model(image.as_raw(), w, h, f))
                .collect();
            let valid: Vec<Vec<u8>> = crops.iter().flatten().cloned().collect();
            let mut predictions = model
                .predict(&valid)
                .with_context(|| format!("{}: attribute model failed", path.display()))?
                .into_iter();
            let spec = model.spec().clone();
            faces
                .into_iter()
                .zip(crops)
                .map(|(face, crop)| match (crop, predictions.next()) {
                    (Some(_), Some(p)) => FaceRecord::with_attributes(face, &p, &spec, grouping),
                    _ => FaceRecord::detection(face),
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
fn cmd_train(args: TrainArgs) -> Result<ExitCode> {
    use faceflow::model::spec::Task;
    use faceflow::train::{self, TrainConfig, net::NetShape};

    if let Some(n) = args.train_threads {
        // burn's CPU backend sizes its rayon pool from this on first use.
        // SAFETY: set before any other thread of this process exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
    }
    let mut detect = DetectConfig::default();
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
            eprintln!(
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
        let side = faceflow::model::spec::INPUT_PX as usize;
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
        eprintln!(
            "train: exported {} ({which}; ONNX Runtime vs burn max |difference| {diff:.2e})",
            path.display()
        );
        if diff > 1e-4 {
            bail!("ONNX Runtime differs from burn by {diff:e} (more than 1e-4)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let tasks = Task::parse_list(&args.tasks)?;
    let net = match args.net.as_str() {
        "default" => NetShape::default(),
        "tiny" => NetShape::tiny(),
        other => bail!("--net must be default or tiny, not '{other}'"),
    };
    let config = TrainConfig {
        sources: args
            .sources
            .iter()
            .map(|s| (s.dir.clone(), s.tasks.clone()))
            .collect(),
        tasks,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        val_fraction: args.val_fraction,
        seed: args.seed,
        loss_weights: args.loss_weights,
        balance_classes: args.balance_classes,
        simulate_multi_source: args.simulate_multi_source,
        max_images: args.max_images,
        net,
        augment: !args.no_augment,
        age_readout: args.age_readout,
        ..TrainConfig::default()
    };
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
