//! The command line: subcommands, flags, and how flags become the library's configurations.
//! Kept apart from `main.rs` so tests can drive the real parser and validation in-process.
//! Flags come in groups, each with its mapping and its test beside it: `run`'s in
//! [`run_flags`], the networks' in [`model_flags`]; [`settings`] names the flag of a setting the
//! library refuses.

pub mod fleet_flags;
mod model_flags;
pub(crate) mod run_flags;
pub mod settings;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use faceflow::align::AlignConfig;
use faceflow::detect::DetectConfig;
use faceflow::pipeline::AttributesConfig;

#[cfg(feature = "train")]
use model_flags::parse_thresholds;
pub use model_flags::{AgeGroupFlag, AttributeFlags, DetectorFlags};
pub use run_flags::RunArgs;

#[derive(Parser)]
#[command(
    name = "faceflow",
    version,
    about = "Faces in video and images: MTCNN detection, five landmarks, age group, gender and race, JSON Lines out",
    long_about = "Faces in video and images: MTCNN detection, five landmarks, age group, gender and \
        race, JSON Lines out.\n\n\
        Subcommands: run (video files, URIs, RTSP cameras, webcams, test patterns), report \
        (charts and an HTML page from a run's JSON Lines), detect (faces in still images), analyze \
        (faces with age, gender and race in still images), eval (score an attribute model on a \
        labelled folder), yardstick (score runs of real clips against people labelled by eye), \
        train (train that model; in builds with feature `train`).\n\n\
        Examples:\n  \
        faceflow run --input clip.mp4 --json faces.jsonl\n  \
        faceflow run --input rtsp://camera/stream --json -\n  \
        faceflow run --input v4l2:///dev/video0 --json -\n  \
        faceflow run pipelines/file-to-json.toml\n  \
        faceflow report faces.jsonl --out report/\n  \
        faceflow detect photo1.jpg photo2.png\n  \
        faceflow analyze --json faces.jsonl --age-groups 3 photo.jpg\n  \
        faceflow eval --source labelled/ --report eval/\n\n\
        Errors are one line on standard error with a non-zero exit status (2 for a bad flag). Logs \
        go to standard error: -v for progress details, -vv for debugging, or RUST_LOG."
)]
pub struct Cli {
    /// More log output on standard error (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a video pipeline: decode, find faces (a full search every --detect-every frames, the
    /// faces followed between), write one JSON record per frame.
    Run(Box<RunArgs>),
    /// Detect faces in still images, one JSON record per image.
    Detect(DetectArgs),
    /// Detect faces in still images and estimate age group, gender and race of each.
    Analyze(AnalyzeArgs),
    /// Score an attribute model end to end on a labelled folder; writes JSON, Markdown and SVG charts.
    Eval(EvalArgs),
    /// Turn a run's JSON Lines into charts and an HTML page: who passed, and when.
    Report(ReportArgs),
    /// Score runs on real clips against people labelled by eye (tests/yardstick): wrong, unknown
    /// and right per attribute, people counted against people present, phantom people.
    Yardstick(YardstickArgs),
    /// The fleet (several machines sharing cameras and video files through NATS JetStream): its
    /// cameras, file jobs, status and records.
    Fleet(fleet_flags::FleetArgs),
    /// Join the fleet: claim cameras by lease, run them (everything `run` does), take file jobs
    /// when there is room, publish every record to NATS JetStream; SIGTERM or Ctrl-C hands the
    /// cameras and the job over at once.
    Worker(fleet_flags::WorkerArgs),
    /// Train the age/gender/race model on labelled face folders and export it to ONNX.
    #[cfg(feature = "train")]
    Train(Box<TrainArgs>),
    /// Not in this build: says how to get the trainer.
    #[cfg(not(feature = "train"))]
    #[command(hide = true, disable_help_flag = true)]
    Train {
        #[arg(num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
}

#[cfg(feature = "train")]
#[derive(Args)]
pub struct TrainArgs {
    /// Labelled folder (UTKFace names AGE_GENDER_RACE_*.jpg); append @TASKS when it only has some
    /// labels, e.g. faces@race. Repeat for several sources.
    #[arg(long = "source", value_name = "DIR[@TASKS]", value_parser = faceflow::model::dataset::Source::parse)]
    pub sources: Vec<faceflow::model::dataset::Source>,
    /// Run folder: checkpoints, state.json, validation history, the exported model.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its saved settings are used).
    #[arg(long)]
    pub resume: bool,
    /// Only export the run in --out to ONNX (no training).
    #[arg(long)]
    pub export_only: bool,
    /// With --export-only: export the best validation epoch instead of the last checkpoint.
    #[arg(long)]
    pub best: bool,
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
    pub average: Vec<String>,
    /// Heads to train: age, age,gender or age,gender,race.
    #[arg(long, default_value = "age,gender,race")]
    pub tasks: String,
    #[arg(long, default_value_t = 30)]
    pub epochs: u32,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate (AdamW; warm-up, then cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.02)]
    pub weight_decay: f64,
    /// Fraction of images (by content hash) held out for validation.
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Loss weights of age, gender, race.
    #[arg(long, value_name = "A,G,R", value_parser = parse_thresholds, default_value = "1,1,1")]
    pub loss_weights: [f32; 3],
    /// Weight classes by inverse square-root frequency.
    #[arg(long)]
    pub balance_classes: bool,
    /// Split the training images in two sources: one with age+gender labels, one with race only.
    #[arg(long)]
    pub simulate_multi_source: bool,
    /// Use only this many images (a deterministic subset), e.g. for a smoke run.
    #[arg(long, value_name = "N")]
    pub max_images: Option<usize>,
    /// Side of the model's input crop in pixels, a multiple of 8 from 32 to 224.
    #[arg(long, value_name = "PX", default_value_t = faceflow::model::spec::DEFAULT_INPUT_PX)]
    pub input_px: u32,
    /// Margin around the face's landmark template on each side, as a fraction of the template's
    /// side, 0.1 to 0.8: more shows more hair, ears and neck at a lower resolution of the face.
    #[arg(long, value_name = "FRACTION", default_value_t = faceflow::model::spec::INPUT_MARGIN)]
    pub margin: f32,
    /// Network size: default, deep (a second block in the two coarsest stages, about 1.5× the
    /// operations) or tiny (smoke tests).
    #[arg(long, default_value = "default")]
    pub net: String,
    #[arg(long)]
    pub no_augment: bool,
    /// Also degrade training crops the way video does: lower resolution, motion blur, JPEG
    /// artefacts, dark and noisy scenes (each by chance; about one crop in five stays clean).
    #[arg(long, conflicts_with = "no_augment")]
    pub video_augment: bool,
    /// A teacher model (faceflow attribute model, ONNX) for knowledge distillation: its
    /// prediction on each training face is blended into the targets. Repeat for several (their
    /// mean is used). A teacher of another --margin sees its own window, cut from the run's crops.
    #[arg(long, value_name = "MODEL")]
    pub teacher: Vec<PathBuf>,
    /// Weight of the teachers' prediction in each target, 0 to 1 [default: 0.5 with --teacher].
    #[arg(long, value_name = "WEIGHT", requires = "teacher")]
    pub distill: Option<f32>,
    /// Age readout that picks the best epoch: 3, 5 or 10 groups, or years (MAE).
    #[arg(long, default_value = "5", value_parser = faceflow::train::AgeReadout::parse)]
    pub age_readout: faceflow::train::AgeReadout,
    /// Crop cache folder (crops from faceflow's detector and alignment).
    #[arg(long, value_name = "DIR", default_value = ".cache/crops")]
    pub cache: PathBuf,
    /// Where to write the ONNX model [default: OUT/faceattr.onnx].
    #[arg(long, value_name = "PATH")]
    pub export: Option<PathBuf>,
    /// Training threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub train_threads: Option<usize>,
    /// Save a checkpoint every N steps as well as after every epoch.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub checkpoint_every: u64,
    #[command(flatten)]
    pub detector: DetectorFlags,
}

#[derive(Args)]
pub struct ReportArgs {
    /// JSON Lines written by `faceflow run`.
    #[arg(value_name = "RUN.jsonl")]
    pub input: PathBuf,
    /// Folder for index.html and the charts (SVG).
    #[arg(long, value_name = "DIR", default_value = "report")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Labelled folder (UTKFace names AGE_GENDER_RACE_*.jpg); repeat for several.
    #[arg(long = "source", value_name = "DIR[@TASKS]", required = true, value_parser = faceflow::model::dataset::Source::parse)]
    pub sources: Vec<faceflow::model::dataset::Source>,
    /// Which images: all, or the trainer's validation / training part (same seed and fraction).
    #[arg(long, default_value = "all", value_parser = faceflow::eval::Split::parse)]
    pub split: faceflow::eval::Split,
    /// Seed of the training/validation split (with --split): the one the model was trained with.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of images (by content hash) in the validation part (with --split), 0 to 0.9: the
    /// one the model was trained with.
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Score only N images of the split (a fixed sample spread over it, the same every time).
    #[arg(long, value_name = "N")]
    pub max_images: Option<usize>,
    /// Report folder: report.json, predictions.jsonl (one line per image), report.md,
    /// confusion_*.svg, accuracy_per_age_group*.svg.
    #[arg(long, value_name = "DIR", default_value = "eval-report")]
    pub report: PathBuf,
    /// Also fit the model's temperatures on these images (faces it never trained on: use the
    /// validation split) and write them to FILE, <model>.calibration.json to have them applied
    /// (models/README.md, "Calibration"); calibration.md in the report folder gives the
    /// calibration error before and after, and coverage against precision per threshold.
    #[arg(long, value_name = "FILE")]
    pub calibrate: Option<PathBuf>,
    /// Also write faceres's descriptor of each image's face, with the image's labels, to FILE
    /// (JSON Lines): what models/faceres_race.py fits faceres's race head on.
    #[arg(long, value_name = "FILE")]
    pub descriptors: Option<PathBuf>,
    #[command(flatten)]
    pub attributes: AttributeFlags,
    #[command(flatten)]
    pub detector: DetectorFlags,
}

#[derive(Args)]
pub struct YardstickArgs {
    /// Runs to score: a folder with one `faceflow run` output per labelled clip, named
    /// <clip file name>.jsonl (scripts/yardstick.sh makes it).
    #[arg(long, value_name = "DIR")]
    pub runs: PathBuf,
    /// The labels: a folder of <clip file name>.json.
    #[arg(long, value_name = "DIR", default_value = "tests/yardstick")]
    pub labels: PathBuf,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    /// Images to read (JPEG, PNG, BMP, WebP).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,
    /// Where the JSON Lines go: a file, or - for standard output [default: -].
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    #[command(flatten)]
    pub attributes: AttributeFlags,
    #[command(flatten)]
    pub age_groups: AgeGroupFlag,
    #[command(flatten)]
    pub detector: DetectorFlags,
}

#[derive(Args)]
pub struct DetectArgs {
    /// Images to read (JPEG, PNG, BMP, WebP).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,
    /// Where the JSON Lines go: a file, or - for standard output [default: -].
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    /// Also write each face aligned to the canonical template as DIR/<image>_face<N>.png
    /// (images with the same name get <image>-2_face<N>.png, …).
    #[arg(long, value_name = "DIR")]
    pub crops: Option<PathBuf>,
    /// Side of the aligned crops in pixels, 8 to 1024 [default: 112].
    #[arg(long, value_name = "PX")]
    pub crop_size: Option<u32>,
    #[command(flatten)]
    pub detector: DetectorFlags,
}

impl DetectArgs {
    pub fn settings(&self) -> (DetectConfig, AlignConfig) {
        let mut detect = DetectConfig::default();
        self.detector.apply(&mut detect);
        let mut align = AlignConfig::default();
        if let Some(px) = self.crop_size {
            align.crop_px = px;
        }
        (detect, align)
    }
}

/// Still images are read for accuracy over speed: each face is also read mirrored unless turned
/// off.
fn still_image_attributes(flags: &AttributeFlags) -> AttributesConfig {
    let mut attributes = AttributesConfig {
        flip_average: true,
        ..AttributesConfig::default()
    };
    flags.apply(&mut attributes);
    attributes
}

impl AnalyzeArgs {
    pub fn settings(&self) -> (DetectConfig, AttributesConfig) {
        let mut detect = DetectConfig::default();
        self.detector.apply(&mut detect);
        let mut attributes = still_image_attributes(&self.attributes);
        self.age_groups.apply(&mut attributes);
        (detect, attributes)
    }
}

impl EvalArgs {
    pub fn settings(&self) -> (DetectConfig, AttributesConfig) {
        let mut detect = DetectConfig::default();
        self.detector.apply(&mut detect);
        (detect, still_image_attributes(&self.attributes))
    }
}

/// A clap error as one line: its first paragraph joined, and its tip if it has one, e.g.
/// `error: unexpected argument '--age-groups' found; tip: … (see faceflow eval --help)`.
pub fn usage_error_line(rendered: &str, subcommand: Option<&str>) -> String {
    let mut paragraphs = rendered.split("\n\n");
    let first: Vec<&str> = paragraphs
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut line = first.join(" ");
    if !line.starts_with("error:") {
        line = format!("error: {line}");
    }
    for tip in rendered
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"))
    {
        line.push_str("; ");
        line.push_str(tip);
    }
    let help = match subcommand {
        Some(sub) => format!("faceflow {sub} --help"),
        None => "faceflow --help".into(),
    };
    format!("{line} (see {help})")
}

/// A usage error line (from [`usage_error_line`]) for a command given `video`, pointing at
/// `faceflow run`: `error: unrecognized subcommand 'track'; for a video use faceflow run --input
/// clip.mp4 (see faceflow run --help)`.
pub fn with_run_hint(line: &str, video: &str) -> String {
    let base = line.rsplit_once(" (see ").map_or(line, |(head, _)| head);
    format!("{base}; for a video use faceflow run --input {video} (see faceflow run --help)")
}

#[cfg(feature = "train")]
impl TrainArgs {
    /// What the network learns, from the flags; validated by the trainer.
    pub fn config(&self) -> anyhow::Result<faceflow::train::TrainConfig> {
        use faceflow::model::spec::Task;
        use faceflow::train::{TrainConfig, net::NetShape};
        let net = match self.net.as_str() {
            "default" => NetShape::default(),
            "tiny" => NetShape::tiny(),
            "deep" => NetShape::deep(),
            other => anyhow::bail!("--net must be default, deep or tiny, not '{other}'"),
        };
        Ok(TrainConfig {
            sources: self
                .sources
                .iter()
                .map(|s| (s.dir.clone(), s.tasks.clone()))
                .collect(),
            tasks: Task::parse_list(&self.tasks)?,
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            weight_decay: self.weight_decay,
            val_fraction: self.val_fraction,
            seed: self.seed,
            loss_weights: self.loss_weights,
            balance_classes: self.balance_classes,
            simulate_multi_source: self.simulate_multi_source,
            max_images: self.max_images,
            net,
            augment: !self.no_augment,
            video_augment: self.video_augment,
            // Absolute, so that a resumed run finds them from any folder.
            teachers: self
                .teacher
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .collect(),
            distill: match (&self.distill, self.teacher.is_empty()) {
                (Some(w), _) => *w,
                (None, false) => 0.5,
                (None, true) => 0.0,
            },
            age_readout: self.age_readout,
            input_px: self.input_px,
            margin: self.margin,
            ..TrainConfig::default()
        })
    }

    /// How the run goes (not what it learns): threads, checkpoint cadence, the detector.
    pub fn check_run_options(&self) -> anyhow::Result<()> {
        use faceflow::limits::{MAX_THREADS, Setting};
        if let Some(n) = self.train_threads {
            Setting::in_section("train", "train_threads").check(n, 1, MAX_THREADS, "")?;
        }
        Setting::in_section("train", "checkpoint_every").check(
            self.checkpoint_every,
            1,
            u64::from(u32::MAX),
            "steps",
        )?;
        let mut detect = DetectConfig::default();
        self.detector.apply(&mut detect);
        detect.validate()?;
        Ok(())
    }
}

impl EvalArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        use faceflow::limits::Setting;
        if let Some(n) = self.max_images {
            Setting::in_section("eval", "max_images").check(n, 1, usize::MAX, "")?;
        }
        Setting::in_section("eval", "val_fraction").check(self.val_fraction, 0.0, 0.9, "")?;
        Ok(())
    }
}

/// One group of flags parsed alone, as clap parses it inside a subcommand.
#[cfg(test)]
pub(crate) fn parse_group<T: Args + clap::FromArgMatches>(args: &[&str]) -> T {
    let command = T::augment_args(clap::Command::new("group").no_binary_name(true));
    let matches = command
        .try_get_matches_from(args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[cfg(test)]
mod tests {
    //! Every numeric flag of every subcommand, driven with arbitrary values through the real
    //! parser and the real validation: each value is either refused with one `error:` line, or
    //! accepted and safe to run with (no overflow, no runaway pyramid, no runaway memory).
    use super::*;
    use faceflow::pipeline::PipelineConfig;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    const DETECTOR: &[&str] = &["--min-face", "--scale-factor", "--threads", "--thresholds"];
    const RUN: &[&str] = &[
        "--rtsp-latency-ms",
        "--max-frames",
        "--reconnect-attempts",
        "--stats-every",
        "--stall-timeout-ms",
        "--workers",
        "--detect-every",
        "--age-groups",
    ];
    const DETECT: &[&str] = &["--crop-size"];
    const ANALYZE: &[&str] = &["--age-groups"];
    const EVAL: &[&str] = &["--max-images", "--val-fraction", "--seed"];
    #[cfg(feature = "train")]
    const TRAIN: &[&str] = &[
        "--epochs",
        "--batch",
        "--lr",
        "--weight-decay",
        "--val-fraction",
        "--seed",
        "--loss-weights",
        "--max-images",
        "--train-threads",
        "--checkpoint-every",
        "--input-px",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "0",
                "1",
                "-1",
                "2",
                "3",
                "5",
                "10",
                "0.5",
                "0.95",
                "0.99",
                "NaN",
                "nan",
                "inf",
                "-inf",
                "",
                " ",
                "1e20",
                "1e19",
                "1e-9",
                "1e300",
                "-1e300",
                "4294967295",
                "4294967296",
                "18446744073709551615",
                "18446744073709551616",
                "0,0,0",
                "1,1,1",
                "2,2,2",
                "NaN,0.5,0.5",
                "0.6,0.7",
                "abc",
                "8",
                "10000",
                "86400",
                "0.1",
            ])
            .prop_map(String::from),
            any::<f64>().prop_map(|v| v.to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            (0u64..100_000).prop_map(|v| v.to_string()),
        ]
    }

    fn subcommand() -> impl Strategy<Value = (&'static str, Vec<&'static str>)> {
        let all = vec![
            ("run", [DETECTOR, RUN].concat()),
            ("detect", [DETECTOR, DETECT].concat()),
            ("analyze", [DETECTOR, ANALYZE].concat()),
            ("eval", [DETECTOR, EVAL].concat()),
            #[cfg(feature = "train")]
            ("train", [DETECTOR, TRAIN].concat()),
        ];
        prop::sample::select(all)
    }

    /// One line, starting with `error: `.
    fn assert_one_error_line(line: &str) -> Result<(), TestCaseError> {
        prop_assert!(!line.contains('\n'), "{}", line);
        prop_assert!(line.starts_with("error: "), "{}", line);
        Ok(())
    }

    fn refused(e: impl Into<anyhow::Error>) -> Result<(), TestCaseError> {
        assert_one_error_line(&format!("error: {}", settings::error_line(&e.into())))
    }

    /// An accepted configuration is safe to start: what the stages compute from it stays sane.
    fn assert_runnable(config: &PipelineConfig) -> Result<(), TestCaseError> {
        let d = &config.detect;
        let scales =
            faceflow::detect::pyramid::pyramid_scales(1920, 1080, d.min_face_px, d.scale_factor);
        prop_assert!(scales.len() <= 100, "{} pyramid levels", scales.len());
        let first = scales.first().copied().unwrap_or(0.0);
        prop_assert!(
            first * first * 1920.0 * 1080.0 * 12.0 < 1e9,
            "first level {}",
            first
        );
        let s = &config.source;
        let now = Instant::now();
        for ms in [2 * s.stall_timeout_ms, s.reconnect_backoff_max_ms] {
            prop_assert!(now.checked_add(Duration::from_millis(ms)).is_some());
        }
        let _ = faceflow::sources::backoff_delay(
            u32::MAX,
            Duration::from_millis(s.reconnect_backoff_ms),
            Duration::from_millis(s.reconnect_backoff_max_ms),
        );
        if config.stats_interval_s > 0.0 {
            let every = Duration::try_from_secs_f64(config.stats_interval_s);
            prop_assert!(every.is_ok());
            prop_assert!(now.checked_add(every.unwrap_or_default() * 2).is_some());
        }
        let workers = config.detect.effective_workers();
        prop_assert!(workers <= 64 && config.detect.threads_per_worker(workers) <= 64);
        prop_assert!(config.frames_in_flight(workers) <= 2048);
        Ok(())
    }

    fn check(args: &[String]) -> Result<(), TestCaseError> {
        let cli = match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => {
                let sub = args.get(1).map(String::as_str);
                return assert_one_error_line(&usage_error_line(&e.render().to_string(), sub));
            }
        };
        match cli.command {
            Command::Run(run) => match run.config().map_err(anyhow::Error::from).and_then(|c| {
                c.validate()?;
                Ok(c)
            }) {
                Ok(config) => assert_runnable(&config)?,
                Err(e) => refused(e)?,
            },
            Command::Detect(detect) => {
                let (d, a) = detect.settings();
                if let Err(e) = d.validate() {
                    refused(e)?;
                } else if let Err(e) = a.validate() {
                    refused(e)?;
                }
            }
            Command::Analyze(analyze) => {
                let (d, a) = analyze.settings();
                if let Err(e) = d.validate() {
                    refused(e)?;
                } else if let Err(e) = a.validate() {
                    refused(e)?;
                }
            }
            Command::Eval(eval) => {
                let (d, a) = eval.settings();
                for result in [
                    eval.check(),
                    d.validate().map_err(Into::into),
                    a.validate().map_err(Into::into),
                ] {
                    if let Err(e) = result {
                        refused(e)?;
                        break;
                    }
                }
            }
            // No numeric flags.
            Command::Report(_) | Command::Yardstick(_) | Command::Fleet(_) | Command::Worker(_) => {
            }
            #[cfg(feature = "train")]
            Command::Train(train) => {
                let config = train.config().and_then(|c| {
                    c.validate()?;
                    Ok(c)
                });
                if let Err(e) = config.and_then(|_| train.check_run_options()) {
                    refused(e)?;
                }
            }
            #[cfg(not(feature = "train"))]
            Command::Train { .. } => {}
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_flag_value_is_refused_in_one_line_or_safe_to_run(
            (sub, flags) in subcommand(),
            picks in prop::collection::vec((any::<prop::sample::Index>(), value()), 1..4),
        ) {
            let mut args: Vec<String> = vec!["faceflow".into(), sub.into()];
            match sub {
                "run" => args.extend(["--input".into(), "testsrc://ball?frames=2".into()]),
                "eval" | "train" => args.extend(["--source".into(), "labelled/".into()]),
                _ => {}
            }
            if sub == "train" {
                args.extend(["--out".into(), "runs/x".into()]);
            }
            for (index, value) in picks {
                args.push(flags[index.index(flags.len())].to_string());
                args.push(value);
            }
            if sub == "detect" || sub == "analyze" {
                args.push("photo.jpg".into());
            }
            check(&args)?;
        }
    }

    const PIPELINE_KEYS: &[(&str, &str)] = &[
        ("", "queue_frames"),
        ("", "stats_interval_s"),
        ("source", "rtsp_latency_ms"),
        ("source", "queue_frames"),
        ("source", "max_frames"),
        ("source", "stall_timeout_ms"),
        ("source", "connect_attempts"),
        ("source", "reconnect_attempts"),
        ("source", "reconnect_backoff_ms"),
        ("source", "reconnect_backoff_max_ms"),
        ("detect", "min_face_px"),
        ("detect", "scale_factor"),
        ("detect", "nms_within_scale"),
        ("detect", "nms_across_scales"),
        ("detect", "nms_rnet"),
        ("detect", "nms_onet_min"),
        ("detect", "threads"),
        ("detect", "workers"),
        ("detect", "detect_every"),
        ("attributes", "age_groups"),
        ("attributes", "max_batch"),
        ("attributes", "max_wait_ms"),
        ("attributes", "threads"),
    ];

    fn toml_number() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "0",
                "-1",
                "1",
                "3",
                "0.5",
                "0.1",
                "nan",
                "inf",
                "-inf",
                "1e300",
                "-1e300",
                "9223372036854775807",
                "18446744073709551615",
                "4294967296",
                "1e-9",
                "[1, 2]",
            ])
            .prop_map(String::from),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            any::<i64>().prop_map(|v| v.to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// The same for every numeric key of a pipeline file, read through `run PIPELINE.toml`.
        #[test]
        fn any_pipeline_value_is_refused_in_one_line_or_safe_to_run(
            picks in prop::collection::vec((any::<prop::sample::Index>(), toml_number()), 1..4),
        ) {
            let mut top = String::new();
            let mut sections: std::collections::BTreeMap<&str, String> = Default::default();
            for (index, value) in picks {
                let (section, key) = PIPELINE_KEYS[index.index(PIPELINE_KEYS.len())];
                let line = format!("{key} = {value}\n");
                if section.is_empty() {
                    top.push_str(&line);
                } else {
                    sections.entry(section).or_default().push_str(&line);
                }
            }
            let mut text = top;
            for (section, lines) in sections {
                text.push_str(&format!("[{section}]\n{lines}"));
            }
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let path = dir.path().join("p.toml");
            std::fs::write(&path, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let args: Vec<String> = vec![
                "faceflow".into(),
                "run".into(),
                path.display().to_string(),
                "--input".into(),
                "testsrc://".into(),
            ];
            check(&args)?;
        }
    }

    #[test]
    fn a_repeated_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("model m.onnx: {0}")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("input size is 96, expected 64")]
        struct Inner;
        let e = anyhow::Error::from(Outer(Inner)).context("loading");
        assert_eq!(
            crate::one_line(&e),
            "loading: model m.onnx: input size is 96, expected 64"
        );
    }

    #[test]
    fn known_bad_values_are_refused_with_the_flag_named() {
        let run = |extra: &[&str]| -> String {
            let mut args = vec!["faceflow", "run", "--input", "testsrc://"];
            args.extend(extra);
            let cli = Cli::try_parse_from(&args).unwrap();
            let Command::Run(run) = cli.command else {
                panic!()
            };
            let err = run.config().unwrap().validate().unwrap_err();
            settings::error_line(&err.into())
        };
        assert!(run(&["--stats-every", "1e20"]).starts_with("stats_interval_s (--stats-every) = "));
        assert!(run(&["--stats-every", "1e-9"]).contains("must be 0 (off) or from 0.1 to 86400"));
        assert!(
            run(&["--min-face", "1"])
                .starts_with("min_face_px (--min-face) = 1: must be from 8 to 10000 pixels")
        );
        assert!(run(&["--scale-factor", "0.9999999"]).contains("scale_factor (--scale-factor)"));
        assert!(run(&["--workers", "100000"]).contains("workers (--workers) = 100000"));
        assert!(
            run(&["--stall-timeout-ms", "18446744073709551615"])
                .starts_with("stall_timeout_ms (--stall-timeout-ms) = 18446744073709551615: ")
        );
        assert!(
            run(&["--rtsp-latency-ms", "70000"])
                .starts_with("rtsp_latency_ms (--rtsp-latency-ms) = ")
        );
        assert!(run(&["--threads", "100"]).starts_with("threads (--threads) = 100: "));
        assert!(
            run(&["--detect-every", "5000"]).starts_with("detect_every (--detect-every) = 5000: ")
        );
        assert_eq!(
            run(&["--thresholds", "0.6,0.7,2"]),
            "thresholds (--thresholds) = 0.6,0.7,2: must be from 0 to 1 each"
        );
        // Subcommands of still images, with their own validation.
        let cli = Cli::try_parse_from(["faceflow", "detect", "--crop-size", "4", "a.jpg"]).unwrap();
        let Command::Detect(detect) = cli.command else {
            panic!()
        };
        let err = detect.settings().1.validate().unwrap_err();
        assert!(settings::error_line(&err.into()).starts_with("crop_px (--crop-size) = 4: "));
        let cli =
            Cli::try_parse_from(["faceflow", "eval", "--source", "l/", "--val-fraction", "2"])
                .unwrap();
        let Command::Eval(eval) = cli.command else {
            panic!()
        };
        let err = eval.check().unwrap_err();
        assert!(settings::error_line(&err).starts_with("val_fraction (--val-fraction) = 2: "));
    }

    #[test]
    fn usage_errors_are_one_line_with_the_argument_named() {
        let e = Cli::try_parse_from(["faceflow", "eval"]).err().unwrap();
        let line = usage_error_line(&e.render().to_string(), Some("eval"));
        assert!(
            line.starts_with("error: the following required arguments were not provided: --source"),
            "{line}"
        );
        assert!(line.ends_with("(see faceflow eval --help)"), "{line}");
        assert!(!line.contains('\n'));
    }
}
