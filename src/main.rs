//! The faceflow command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use faceflow::align::{self, AlignConfig};
use faceflow::detect::{DetectConfig, Mtcnn};
use faceflow::graph::Control;
use faceflow::pipeline::{self, PipelineConfig};
use faceflow::sinks::{ImageRecord, JsonConfig, JsonLinesWriter};

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
fn install_interrupt_handler(control: Control) {
    let hits = Arc::new(AtomicUsize::new(0));
    let result = ctrlc::set_handler(move || {
        if hits.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("faceflow: stopping (press Ctrl-C again to quit at once)");
            control.request_stop();
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
    args.detector.apply(&mut config.detect);

    let control = Control::new();
    install_interrupt_handler(control.clone());
    let progress: Option<pipeline::Progress> = std::io::stderr().is_terminal().then(|| {
        Box::new(|frames: u64, elapsed: std::time::Duration| {
            let fps = frames as f64 / elapsed.as_secs_f64().max(1e-9);
            eprint!("\rframes {frames}  {fps:.1} fps ");
        }) as pipeline::Progress
    });
    let had_progress = progress.is_some();
    let summary = pipeline::run(&config, control, progress);
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
    let mut writer = JsonLinesWriter::create(&JsonConfig {
        path: args.json.unwrap_or_else(|| "-".into()),
    })?;
    if let Some(dir) = &args.crops {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut failures = 0usize;
    let show_progress = args.images.len() > 1 && std::io::stderr().is_terminal();
    for (done, path) in args.images.iter().enumerate() {
        if show_progress {
            eprint!("\rimage {}/{} ", done + 1, args.images.len());
        }
        match detect_one(&mut detector, path, args.crops.as_deref(), &align_config) {
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
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be processed",
            args.images.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn detect_one(
    detector: &mut Mtcnn,
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
        .detect(image.as_raw(), width as usize, height as usize)
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
    Ok(ImageRecord {
        image: path.display().to_string(),
        width,
        height,
        faces,
    })
}
