//! A pipeline: its configuration file (`pipelines/*.toml`) and the graph built from it:
//! sources → scheduler → detect (one worker per core) → attributes (batched across frames) →
//! track (each stream's order, people) → sinks (JSON Lines, …). This module only wires: each
//! stage's loop lives with its module (`detect::schedule`, `detect::stage`, `attributes::stage`,
//! `track::stage`, `sinks::stage`), what flows between stages and what they share in
//! [`crate::flow`], what a run reports in `summary`.

pub mod metrics;
pub mod outputs;
mod summary;

pub use crate::flow::{Progress, StageTimes};
pub use summary::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::attributes::stage::Batching;
use crate::attributes::{self, AttributeModel};
use crate::detect::{DetectConfig, FrameDetector, Mtcnn};
use crate::flow::{PixelReaders, RunContext, Sizes};
use crate::graph::{self, Control, Graph};
use crate::model::AgeGrouping;
use crate::model::calibration::Calibration;
use crate::record::Readout;
use crate::sinks::{self, JsonConfig, MqttConfig, OutputConfig, OutputContext, OverlayConfig};
use crate::sources::{Source, SourceConfig};
use crate::track::TrackConfig;
use crate::track::people::People;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    #[error(transparent)]
    Sink(#[from] crate::sinks::SinkError),
    #[error(transparent)]
    Attributes(#[from] crate::attributes::AttributeError),
    #[error(transparent)]
    Stage(#[from] graph::StageError),
    #[error(transparent)]
    Range(#[from] crate::limits::RangeError),
    #[error(transparent)]
    Output(#[from] outputs::OutputClash),
    /// A failure of the input stream; the message already names the input.
    #[error("{0}")]
    Input(String),
}

/// Everything a `faceflow run` needs; each section and key is optional in the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// One stream (`[source]`); several are `[[sources]]`.
    pub source: SourceConfig,
    /// Several streams in one process, each with the keys of `[source]` and an optional `name`.
    pub sources: Vec<SourceConfig>,
    pub detect: DetectConfig,
    pub track: TrackConfig,
    pub attributes: AttributesConfig,
    pub json: JsonConfig,
    /// The overlay video (`[overlay]`): off unless `path` is set.
    pub overlay: OverlayConfig,
    /// Publishing to an MQTT broker (`[mqtt]`): off unless `url` is set.
    pub mqtt: MqttConfig,
    /// Each person's best face as a JPEG (`[snapshots]`): off unless `dir` is set.
    pub snapshots: crate::sinks::SnapshotConfig,
    /// Prometheus metrics (`[metrics]`): off unless `listen` is set.
    pub metrics: metrics::MetricsConfig,
    /// Where the networks run (`[runtime] device`).
    pub runtime: crate::runtime::RuntimeConfig,
    /// Frames queued between detect and the sinks, and each stream's fewest frames between its
    /// source queue and the track stage (its window; small frames get more) [default: 2 per
    /// detect worker, at least 8].
    pub queue_frames: usize,
    /// Report health (frames, queue depths, memory) every this many seconds; 0: never.
    pub stats_interval_s: f64,
}

/// The age/gender/race stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributesConfig {
    /// Run the attribute model on every face (false: detection only).
    pub enabled: bool,
    /// ONNX model exported by `faceflow train` [default: models/faceattr.onnx].
    pub model: Option<PathBuf>,
    /// Age groups reported: 3, 5 or 10.
    pub age_groups: u32,
    /// Most faces per model call.
    pub max_batch: usize,
    /// Longest a face waits for faces of later frames to fill a batch, milliseconds.
    pub max_wait_ms: u64,
    /// ONNX Runtime threads of the attribute model.
    pub threads: usize,
    /// Also run each face mirrored and average (steadier, twice the model cost).
    pub flip_average: bool,
    /// The attributes to report, of those the model has [default: all it has]: a deployment
    /// that must not store race leaves it out.
    pub tasks: Option<Vec<crate::model::spec::Task>>,
    /// Also read gender and race with faceres (models/faceres.onnx, trained on faces in the wild) and
    /// average them in: in video, on a few of each person's clearest faces (see `track::second`);
    /// on still images, on every face (about 13 ms more per face on one core).
    pub faceres: bool,
    /// A gender or race whose probability (calibrated, when the model has a calibration beside
    /// it) is below this reads "unknown"; 0 says every label.
    pub unknown_below: f32,
    /// In video, read the faces of every frame (the default); false: only those of frames
    /// searched in full (`[detect] detect_every`), each face between showing its track's
    /// estimate: faster (1080p about 29 → 32 fps on 2 cores), but ages were read worse on the
    /// real-footage yardstick (in range for 10 of 13 people, against 12).
    pub every_frame: bool,
}

/// The default of `[attributes] unknown_below` (see models/README.md, "Calibration").
pub const DEFAULT_UNKNOWN_BELOW: f32 = 0.6;

impl Default for AttributesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: None,
            age_groups: 5,
            max_batch: 32,
            max_wait_ms: 10,
            threads: 1,
            flip_average: false,
            tasks: None,
            faceres: true,
            unknown_below: DEFAULT_UNKNOWN_BELOW,
            every_frame: true,
        }
    }
}

impl AttributesConfig {
    pub fn grouping(&self) -> Result<AgeGrouping, PipelineError> {
        AgeGrouping::from_count(self.age_groups)
            .map_err(|e| PipelineError::Invalid(format!("attributes: {e}")))
    }

    pub fn model_path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(attributes::default_model_path)
    }

    pub fn validate(&self) -> Result<(), PipelineError> {
        use crate::limits::{MAX_THREADS, Setting};
        Setting::in_section("attributes", "age_groups")
            .check_one_of(self.age_groups, &[3, 5, 10])?;
        Setting::key("max_batch").check(self.max_batch, 1, 1024, "faces")?;
        Setting::key("max_wait_ms").check(self.max_wait_ms, 0, 10_000, "ms")?;
        Setting::key("threads").check(self.threads, 1, MAX_THREADS, "")?;
        Setting::in_section("attributes", "unknown_below").check(
            self.unknown_below,
            0.0,
            1.0,
            "",
        )?;
        if self.tasks.as_ref().is_some_and(Vec::is_empty) {
            return Err(PipelineError::Invalid(
                "attributes: tasks is empty: name at least one of age, gender, race, or switch attributes off".into(),
            ));
        }
        Ok(())
    }

    /// Loads the model when the stage is on, for still images: with faceres on, it reads every
    /// face's gender and race too.
    pub fn load(&self) -> Result<Option<(AttributeModel, Readout)>, PipelineError> {
        let Some((mut model, grouping)) = self.load_model()? else {
            return Ok(None);
        };
        model.set_ensemble(self.load_faceres(&model)?);
        let readout = self.readout(&model, grouping)?;
        Ok(Some((model, readout)))
    }

    /// Loads the model when the stage is on, for `eval`: faceres, when on, reads every face;
    /// no readout (eval scores the probabilities as read, and fits the calibration).
    pub fn load_for_eval(&self) -> Result<Option<AttributeModel>, PipelineError> {
        let Some((mut model, _)) = self.load_model()? else {
            return Ok(None);
        };
        model.set_ensemble(self.load_faceres(&model)?);
        Ok(Some(model))
    }

    /// How `model`'s readings become attributes: with the calibration beside the model file,
    /// if it has one, and this threshold.
    fn readout(
        &self,
        model: &AttributeModel,
        grouping: AgeGrouping,
    ) -> Result<Readout, PipelineError> {
        let model_path = self.model_path();
        let calibration = Calibration::load_beside(&model_path)
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        match &calibration {
            Some(_) => tracing::info!(
                calibration = %Calibration::path_beside(&model_path).display(),
                "probabilities calibrated"
            ),
            None => tracing::info!(
                model = %model_path.display(),
                "no calibration beside the model: probabilities as the model gives them"
            ),
        }
        Ok(Readout {
            spec: model.spec().clone(),
            grouping,
            calibration,
            unknown_below: self.unknown_below,
        })
    }

    /// Loads the model when the stage is on, for video: faceres, when on, apart, for the track
    /// stage to read a few of each person's faces with.
    pub fn load_for_video(&self) -> Result<Option<VideoAttributes>, PipelineError> {
        let Some((model, grouping)) = self.load_model()? else {
            return Ok(None);
        };
        let second_reader = self
            .load_faceres(&model)?
            .map(|f| Box::new(f) as Box<dyn attributes::faceres::SecondReader>);
        let readout = self.readout(&model, grouping)?;
        Ok(Some(VideoAttributes {
            model,
            readout,
            second_reader,
        }))
    }

    /// faceres, when it is on and gender is reported, or race and faceres has its race head.
    fn load_faceres(
        &self,
        model: &AttributeModel,
    ) -> Result<Option<attributes::faceres::Faceres>, PipelineError> {
        use crate::model::spec::Task;
        let spec = model.spec();
        let path = attributes::faceres::default_path();
        let reads_race = || attributes::faceres::RaceHead::path_beside(&path).exists();
        if !(self.faceres && (spec.has(Task::Gender) || (spec.has(Task::Race) && reads_race()))) {
            return Ok(None);
        }
        Ok(Some(attributes::faceres::Faceres::load(
            &path,
            self.threads,
        )?))
    }

    fn load_model(&self) -> Result<Option<(AttributeModel, AgeGrouping)>, PipelineError> {
        if !self.enabled {
            return Ok(None);
        }
        self.validate()?;
        let grouping = self.grouping()?;
        let mut model = AttributeModel::load(&self.model_path(), self.threads)?;
        model.set_flip_average(self.flip_average);
        if let Some(tasks) = &self.tasks {
            model.report_only(tasks).map_err(|missing| {
                PipelineError::Invalid(format!(
                    "attributes: tasks: the model {} has no {} head (it has {})",
                    self.model_path().display(),
                    missing.name(),
                    model
                        .spec()
                        .tasks
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        }
        Ok(Some((model, grouping)))
    }
}

/// The attribute stage's model, and the track stage's second reader of gender and race.
pub struct VideoAttributes {
    pub model: AttributeModel,
    pub readout: Readout,
    pub second_reader: Option<Box<dyn attributes::faceres::SecondReader>>,
}

impl PipelineConfig {
    /// Reads a pipeline file; unknown keys and syntax errors name the file, line and column.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|reason| {
            // A video given where the pipeline file goes (`faceflow run clip.mp4`).
            let reason = if reason.kind() == std::io::ErrorKind::InvalidData {
                std::io::Error::other(
                    "not a pipeline file (TOML text); a video or camera to read is a [source] input",
                )
            } else {
                reason
            };
            PipelineError::Read {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        let mut config = Self::parse(&text, path)?;
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        config.resolve_paths(&std::path::absolute(folder).unwrap_or_else(|_| folder.into()));
        Ok(config)
    }

    /// Parses a pipeline file's text (`path` names it in errors); relative paths stay as written
    /// ([`PipelineConfig::load`] resolves them).
    pub fn parse(text: &str, path: &Path) -> Result<Self, PipelineError> {
        toml::from_str(text).map_err(|e| {
            let at = |offset: usize| {
                let before = &text[..offset];
                let line = before.matches('\n').count() + 1;
                let column = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                (line, column)
            };
            // `[sources]` for `[[sources]]`: toml only says a sequence was expected.
            if let Some((offset, message)) = table_kind_mistake(text) {
                let (line, column) = at(offset);
                return PipelineError::Parse {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: message.into(),
                };
            }
            let (line, column) = at(e.span().map(|s| s.start).unwrap_or(0).min(text.len()));
            PipelineError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().replace('\n', " ").trim().to_string(),
            }
        })
    }

    /// Makes the file's relative paths relative to `folder` (the pipeline file's): inputs that are
    /// file paths, model paths, the JSON and overlay files, the MQTT CA. URIs, test patterns, `-`
    /// (standard output), `window` and absolute paths stay as they are; `..` is taken lexically.
    pub fn resolve_paths(&mut self, folder: &Path) {
        let rebase = |path: &Path| -> PathBuf {
            if path.as_os_str().is_empty() || path.is_absolute() {
                path.to_path_buf()
            } else {
                outputs::normalize(&folder.join(path))
            }
        };
        let rebase_text = |text: &mut String| {
            let kept = text.trim().is_empty() || text.contains("://") || text == "-";
            if !kept {
                *text = rebase(Path::new(text.as_str())).display().to_string();
            }
        };
        for source in std::iter::once(&mut self.source).chain(self.sources.iter_mut()) {
            rebase_text(&mut source.input);
        }
        for path in [
            &mut self.detect.models_dir,
            &mut self.attributes.model,
            &mut self.mqtt.ca,
            &mut self.snapshots.dir,
        ]
        .into_iter()
        .flatten()
        {
            *path = rebase(path);
        }
        rebase_text(&mut self.json.path);
        if let Some(overlay) = &mut self.overlay.path
            && overlay != "window"
        {
            rebase_text(overlay);
        }
    }

    /// Every output the run may have, each off unless set, in the order records reach them
    /// (snapshots first: a track record names a file already written). A new output is its
    /// folder under `sinks/`, its key above, and its line here.
    pub fn outputs(&self) -> Vec<&dyn OutputConfig> {
        vec![&self.snapshots, &self.json, &self.overlay, &self.mqtt]
    }

    /// The ids of the run's streams, by index.
    pub fn stream_ids(&self) -> Vec<String> {
        self.streams().into_iter().map(|(id, _)| id).collect()
    }

    /// The streams of the run with their ids: `[[sources]]` when given, else `[source]`. A stream's
    /// id is its `name`, else its position ("0", "1", …).
    pub fn streams(&self) -> Vec<(String, SourceConfig)> {
        let list: Vec<SourceConfig> = if self.sources.is_empty() {
            vec![self.source.clone()]
        } else {
            self.sources.clone()
        };
        list.into_iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone().unwrap_or_else(|| i.to_string()), s))
            .collect()
    }

    pub fn validate(&self) -> Result<(), PipelineError> {
        use crate::limits::{MAX_QUEUE_FRAMES, Setting};
        if !self.sources.is_empty() && self.source != SourceConfig::default() {
            return Err(PipelineError::Invalid(
                "both [source] and [[sources]] are given: use one of them (each [[sources]] table takes the keys of [source])".into(),
            ));
        }
        let streams = self.streams();
        if streams.len() > MAX_STREAMS {
            return Err(PipelineError::Invalid(format!(
                "{} streams: at most {MAX_STREAMS} in one process",
                streams.len()
            )));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, (id, source)) in streams.iter().enumerate() {
            if source.input.trim().is_empty() {
                return Err(PipelineError::Invalid(if streams.len() == 1 {
                    "no input: set [source] input".into()
                } else {
                    format!("stream {i} has no input")
                }));
            }
            // Names appear in records, summary lines and the `stats:` line's queue list.
            let allowed = |c: char| c.is_alphanumeric() || "-_.".contains(c);
            if id.is_empty() || id.chars().count() > 64 || !id.chars().all(allowed) {
                return Err(PipelineError::Invalid(format!(
                    "stream name {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
                )));
            }
            if id == "total" {
                return Err(PipelineError::Invalid(
                    "stream name \"total\" is taken by the summary's total line".into(),
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(PipelineError::Invalid(format!(
                    "stream name {id:?} is used twice: names must be unique"
                )));
            }
            source.validate()?;
        }
        self.detect.validate()?;
        self.track.validate()?;
        self.attributes.validate()?;
        for output in self.outputs() {
            output.validate()?;
        }
        self.metrics.validate()?;
        Setting::key("queue_frames").check_or_zero(
            self.queue_frames,
            1,
            MAX_QUEUE_FRAMES,
            "frames",
            "automatic",
        )?;
        Setting::key("stats_interval_s").check_or_zero(
            self.stats_interval_s,
            0.1,
            86_400.0,
            "seconds",
            "off",
        )?;
        Ok(())
    }
}

/// Most streams in one process.
pub const MAX_STREAMS: usize = 64;

/// A table header of the wrong kind for its key, its offset and what to write instead:
/// `[sources]` (one table) where `[[sources]]` (one per stream) is meant, or `[[source]]`.
fn table_kind_mistake(text: &str) -> Option<(usize, &'static str)> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let header: String = line
            .split('#')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let indent = line.len() - line.trim_start().len();
        match header.as_str() {
            "[sources]" => {
                return Some((
                    offset + indent,
                    "[sources] must be [[sources]], one table per stream (or [source] for a single stream)",
                ));
            }
            "[[source]]" => {
                return Some((
                    offset + indent,
                    "[[source]] must be [source] for a single stream, or [[sources]] (one table per stream) for several",
                ));
            }
            _ => {}
        }
        offset += line.len();
    }
    None
}

/// Frames between the source queue and the track stage: queued between stages, and held back
/// by the track stage to restore decode order.
impl PipelineConfig {
    pub fn frames_in_flight(&self, workers: usize) -> usize {
        if self.queue_frames > 0 {
            self.queue_frames
        } else {
            (2 * workers).max(8)
        }
    }
}

/// The stages of a run, built and not yet started. [`run`] builds them from the configuration;
/// tests can stand in their own detectors.
pub struct BuiltStages {
    pub sources: Vec<Source>,
    pub detectors: Vec<Box<dyn FrameDetector>>,
    pub attributes: Option<VideoAttributes>,
    /// Every output, each given every record.
    pub sinks: Vec<Box<dyn sinks::Sink>>,
    /// The metrics port, bound before any output is created (a taken port must not cost the
    /// previous run's JSON); `None`: bound when the run starts, if `[metrics] listen` is set.
    pub metrics_listener: Option<std::net::TcpListener>,
}

/// Builds every stage, then runs the graph until every stream has ended, a stop request or the
/// first error.
pub fn run(
    config: &PipelineConfig,
    control: Control,
    hooks: RunHooks,
) -> Result<RunSummary, PipelineError> {
    let stages = build_stages(config)?;
    run_stages(config, stages, control, hooks)
}

/// Builds every stage of `config`, starting none: a bad input, model or output path fails here.
pub fn build_stages(config: &PipelineConfig) -> Result<BuiltStages, PipelineError> {
    config.validate()?;
    config.check_outputs(&[])?;
    // Build everything before anything starts: a bad input, model or output path fails here.
    let sources = config
        .streams()
        .iter()
        .enumerate()
        .map(|(index, (id, source))| Source::build(source, id, index))
        .collect::<Result<Vec<_>, _>>()?;
    let workers = config.detect.effective_workers();
    let worker_config = DetectConfig {
        threads: config.detect.threads_per_worker(workers),
        ..config.detect.clone()
    };
    let detectors = (0..workers)
        .map(|_| Mtcnn::new(worker_config.clone()).map(|m| Box::new(m) as Box<dyn FrameDetector>))
        .collect::<Result<Vec<_>, _>>()?;
    let attributes = config.attributes.load_for_video()?;
    let metrics_listener = config
        .metrics
        .listen
        .as_deref()
        .map(metrics::bind)
        .transpose()?;
    let ids = config.stream_ids();
    let sinks = sinks::build_all(&config.outputs(), &OutputContext { streams: &ids })?;
    Ok(BuiltStages {
        sources,
        detectors,
        attributes,
        sinks,
        metrics_listener,
    })
}

/// Runs built stages: sources → detect (scheduler and workers) → (attributes) → track → sinks,
/// each stream's records in its decode order. Each stage starts itself on the channel the one
/// before it gives back; the graph ends each channel's stream when its producers return.
pub fn run_stages(
    config: &PipelineConfig,
    stages: BuiltStages,
    control: Control,
    hooks: RunHooks,
) -> Result<RunSummary, PipelineError> {
    let BuiltStages {
        sources,
        detectors,
        attributes,
        sinks,
        metrics_listener,
    } = stages;
    let cx = RunContext::new(
        sources.iter().map(|s| s.info()).collect(),
        sources.iter().map(|s| s.counters()).collect(),
        config.sizes(detectors.len()),
        PixelReaders {
            attributes: attributes.is_some(),
            track: attributes
                .as_ref()
                .is_some_and(|a| a.second_reader.is_some()),
            sinks: sinks.iter().any(|s| s.draws()),
        },
    );
    let people = People::new(
        config.track.clone(),
        attributes.as_ref().map(|a| a.readout.clone()),
    )
    .with_detect_every(config.detect.detect_every)
    .with_snapshots(config.snapshots.dir.clone());
    let mut graph = Graph::new(control.clone());
    let frames = crate::sources::stage::spawn(&mut graph, &cx, sources, hooks.stream_end.clone());
    let mut faces = stage::detect::spawn(&mut graph, &cx, frames, detectors, &config.detect);
    let mut second_reader = None;
    if let Some(a) = attributes {
        faces = stage::attributes::spawn(
            &mut graph,
            &cx,
            faces,
            a.model,
            config.attributes.batching(),
        );
        second_reader = a.second_reader;
    }
    let tracked = stage::track::spawn(&mut graph, &cx, faces, people, second_reader);
    stage::sinks::spawn(&mut graph, &cx, tracked, sinks, hooks.progress);
    run_graph(graph, config, &cx, hooks.health, metrics_listener)?.map_err(PipelineError::Stage)?;
    summarize(&cx, &control)
}

/// The stage modules, each started by its `spawn`.
mod stage {
    pub(super) use crate::attributes::stage as attributes;
    pub(super) use crate::detect::stage as detect;
    pub(super) use crate::sinks::stage as sinks;
    pub(super) use crate::track::stage as track;
}

impl PipelineConfig {
    /// How the run's queues and windows are sized with `workers` detect workers.
    fn sizes(&self, workers: usize) -> Sizes {
        let workers = workers.max(1);
        Sizes::new(
            self.frames_in_flight(workers),
            workers,
            self.detect.run_frames_for_queues() as usize,
        )
    }
}

impl AttributesConfig {
    fn batching(&self) -> Batching {
        Batching {
            max_batch: self.max_batch,
            max_wait: Duration::from_millis(self.max_wait_ms),
            every_frame: self.every_frame,
        }
    }
}

/// Runs the graph, with the metrics server and the health reports beside it while it runs.
fn run_graph(
    mut graph: Graph,
    config: &PipelineConfig,
    cx: &RunContext,
    health: Option<HealthReport>,
    metrics_listener: Option<std::net::TcpListener>,
) -> Result<Result<(), graph::StageError>, PipelineError> {
    let probes = Arc::new(graph.take_probes());
    // Bound before anything starts: a taken port fails the run at once.
    let metrics_listener = match (metrics_listener, &config.metrics.listen) {
        (Some(l), _) => Some(l),
        (None, Some(listen)) => Some(metrics::bind(listen)?),
        (None, None) => None,
    };
    let metrics_server = match metrics_listener {
        Some(listener) => Some(metrics::MetricsServer::start(
            listener,
            metrics::Sources {
                streams: cx.streams.clone(),
                counters: cx.sources.clone(),
                sink: cx.stats.clone(),
                probes: probes.clone(),
                times: cx.times.clone(),
            },
        )?),
        None => None,
    };
    let outcome = match health {
        Some(report) if config.stats_interval_s > 0.0 => {
            let monitor = Monitor {
                // Validated: 0.1 s to a day.
                every: Duration::try_from_secs_f64(config.stats_interval_s)
                    .unwrap_or(Duration::from_secs(86_400)),
                started: cx.started,
                sources: cx.sources.clone(),
                streams: cx.streams.iter().map(|info| info.id.clone()).collect(),
                sink: cx.stats.clone(),
                probes,
            };
            let done = AtomicBool::new(false);
            let done = &done;
            std::thread::scope(|scope| {
                scope.spawn(move || monitor.run(report, done));
                let outcome = graph.run();
                done.store(true, Ordering::SeqCst);
                outcome
            })
        }
        _ => {
            drop(probes);
            graph.run()
        }
    };
    drop(metrics_server);
    Ok(outcome)
}

/// The run's summary from what the sources and the stages counted.
fn summarize(cx: &RunContext, control: &Control) -> Result<RunSummary, PipelineError> {
    let mut counts = cx.stats.now();
    let ends = std::mem::take(&mut counts.stream_ends);
    // Nothing came from any stream and one failed: the failure is the whole story, in one line.
    if ends.iter().all(|(stats, _, _)| stats.decoded == 0)
        && let Some(message) = ends.iter().find_map(|(_, f, _)| f.clone())
    {
        return Err(PipelineError::Input(message));
    }
    let streams = cx
        .streams
        .iter()
        .zip(ends)
        .map(|(info, (stats, failure, decoded_until_s))| {
            // A stream's time ends with its last record written (else, interrupted, with its
            // decoding).
            let written_until_s = counts
                .written_until_s
                .get(info.index)
                .copied()
                .filter(|&s| s > 0.0)
                .unwrap_or(decoded_until_s);
            let c = counts.count(info.index);
            let dropped_evenly = cx
                .sources
                .get(info.index)
                .map_or(0, |c| c.dropped_evenly.load(Ordering::Relaxed));
            StreamSummary {
                stream: info.id.clone(),
                source: info.uri.clone(),
                live: info.live,
                frames_decoded: stats.decoded,
                frames_reported: *c.reported,
                frames_dropped: stats.dropped_behind + dropped_evenly,
                frames_dropped_evenly: dropped_evenly,
                full_search_every_ms: cx.sources.get(info.index).filter(|_| info.live).and_then(
                    |c| {
                        let searches = c.full_searches.load(Ordering::Relaxed);
                        let span_ms = c.video_span_ms.load(Ordering::Relaxed);
                        (searches > 0 && span_ms > 0).then(|| span_ms as f64 / searches as f64)
                    },
                ),
                frames_not_written: *c.not_written,
                reconnects: stats.reconnects,
                gap_seconds: stats.gap_ms / 1e3,
                faces: *c.faces,
                people: counts.people.get(info.index).copied().unwrap_or(0),
                seconds: written_until_s,
                failure,
            }
        })
        .collect();
    Ok(RunSummary {
        streams,
        seconds: cx.elapsed_s(),
        interrupted: control.stop_requested() && !control.output_closed(),
        output_closed: control.output_closed(),
        peak_reorder_frames: counts.reorder_peak,
        sink_lines: counts.sink_lines,
        output_failures: counts.sink_failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A stand-in detector: no faces, and one frame (the `slow_call`-th detection) takes long.
    struct SlowOnce {
        calls: Arc<std::sync::atomic::AtomicU64>,
        slow_call: u64,
    }

    impl FrameDetector for SlowOnce {
        fn detect_frame(
            &mut self,
            _rgb: &[u8],
            _width: usize,
            _height: usize,
        ) -> Result<Vec<crate::detect::Face>, crate::detect::DetectError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == self.slow_call {
                std::thread::sleep(Duration::from_millis(1500));
            }
            Ok(Vec::new())
        }
    }

    /// One slow frame must not let the other worker pull the rest of the file into the track stage's
    /// reorder buffer: the stream's window bounds it, and every frame is still written.
    #[test]
    fn one_slow_frame_keeps_the_reorder_buffer_within_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("out.jsonl");
        let mut config = PipelineConfig::default();
        config.source.input = "testsrc://ball?frames=120&size=64x48".into();
        config.json.path = json.display().to_string();
        config.queue_frames = 4;
        config.attributes.enabled = false;
        // Every frame searched in full: the window is then the queue's few frames (runs of
        // frames widen it, by design).
        config.detect.detect_every = 1;
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let detectors: Vec<Box<dyn FrameDetector>> = (0..2)
            .map(|_| {
                Box::new(SlowOnce {
                    calls: calls.clone(),
                    slow_call: 5,
                }) as Box<dyn FrameDetector>
            })
            .collect();
        let summary = run_with(&config, detectors);
        assert_eq!(summary.streams[0].frames_decoded, 120);
        assert_eq!(summary.streams[0].frames_reported, 120);
        // Small frames: the window is as deep as its memory budget allows, within its bound.
        let window = (config.frames_in_flight(2) + 2).max(crate::flow::WINDOW_MAX_FRAMES);
        assert!(
            summary.peak_reorder_frames <= window,
            "{} frames held back, window {window}",
            summary.peak_reorder_frames
        );
        assert!(
            summary.peak_reorder_frames >= 2,
            "the slow frame must have held others back for this test to mean anything"
        );
        let lines = std::fs::read_to_string(&json).unwrap();
        let frames: Vec<u64> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["frame"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(frames, (0..120).collect::<Vec<_>>());
    }

    /// A stand-in detector that says how each frame was handled: a full detection gives one face
    /// with score 1 and a box numbered by the call; following gives back the faces it is handed,
    /// with score 0.5.
    struct Marks {
        calls: Arc<std::sync::atomic::AtomicU64>,
    }

    /// Runs `config` (JSON out, no attributes) with `workers` [`Marks`] detectors; the summary
    /// and how many full searches they made.
    fn run_with_marks(
        config: &PipelineConfig,
        workers: usize,
    ) -> (RunSummary, Arc<std::sync::atomic::AtomicU64>) {
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let detectors: Vec<Box<dyn FrameDetector>> = (0..workers)
            .map(|_| {
                Box::new(Marks {
                    calls: calls.clone(),
                }) as Box<dyn FrameDetector>
            })
            .collect();
        (run_with(config, detectors), calls)
    }

    /// Runs `config`'s streams (JSON out, no attributes) on stand-in `detectors`.
    fn run_with(config: &PipelineConfig, detectors: Vec<Box<dyn FrameDetector>>) -> RunSummary {
        let stages = BuiltStages {
            sources: config
                .streams()
                .iter()
                .enumerate()
                .map(|(i, (id, s))| Source::build(s, id, i).unwrap())
                .collect(),
            detectors,
            attributes: None,
            sinks: vec![Box::new(
                crate::sinks::JsonLinesWriter::create(&config.json).unwrap(),
            )],
            metrics_listener: None,
        };
        run_stages(config, stages, Control::new(), RunHooks::default()).unwrap()
    }

    impl FrameDetector for Marks {
        fn detect_frame(
            &mut self,
            _rgb: &[u8],
            _width: usize,
            _height: usize,
        ) -> Result<Vec<crate::detect::Face>, crate::detect::DetectError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as f32;
            Ok(vec![crate::detect::Face {
                bbox: [n, 0.0, n + 10.0, 10.0],
                score: 1.0,
                landmarks: [[0.0; 2]; 5],
            }])
        }

        fn follow_frame(
            &mut self,
            _rgb: &[u8],
            _width: usize,
            _height: usize,
            previous: &[crate::detect::Face],
        ) -> Result<Vec<crate::detect::Face>, crate::detect::DetectError> {
            Ok(previous
                .iter()
                .map(|f| crate::detect::Face {
                    score: 0.5,
                    ..f.clone()
                })
                .collect())
        }
    }

    /// With `detect_every` 3, each stream's frames 0, 3, 6, … are searched in full and the two
    /// after each are followed from it, by whichever worker is free: never a full search in
    /// between, never a face of another stream or another run, on several workers and streams.
    #[test]
    fn detect_every_n_follows_each_run_from_its_keyframe() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("out.jsonl");
        let mut config = PipelineConfig {
            sources: ["a", "b"]
                .iter()
                .map(|name| SourceConfig {
                    name: Some(name.to_string()),
                    input: "testsrc://ball?frames=40&size=64x48".into(),
                    ..SourceConfig::default()
                })
                .collect(),
            ..PipelineConfig::default()
        };
        config.json.path = json.display().to_string();
        config.attributes.enabled = false;
        config.detect.detect_every = 3;
        let (summary, calls) = run_with_marks(&config, 3);
        assert_eq!(summary.streams.len(), 2);
        let lines = std::fs::read_to_string(&json).unwrap();
        let mut keyframe_box: std::collections::HashMap<String, f64> = Default::default();
        let mut frames = 0;
        for line in lines.lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            if r["type"] != "frame" {
                continue;
            }
            frames += 1;
            let (stream, index) = (r["stream"].as_str().unwrap(), r["frame"].as_u64().unwrap());
            let face = &r["faces"][0];
            let (score, x1) = (
                face["score"].as_f64().unwrap(),
                face["bbox"][0].as_f64().unwrap(),
            );
            if index % 3 == 0 {
                assert_eq!(
                    score, 1.0,
                    "stream {stream} frame {index} must be searched in full"
                );
                keyframe_box.insert(stream.to_string(), x1);
            } else {
                assert_eq!(score, 0.5, "stream {stream} frame {index} must be followed");
                assert_eq!(
                    Some(&x1),
                    keyframe_box.get(stream),
                    "stream {stream} frame {index}"
                );
            }
        }
        assert_eq!(frames, 80);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2 * 14,
            "one full search per run of 3"
        );
    }

    /// `detect_every` 0 (auto, the default) goes by video time: a 25 fps stream is searched in
    /// full every 3rd frame (100 ms), a 10 fps stream every frame.
    #[test]
    fn auto_detect_every_searches_every_100_ms_of_video() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("out.jsonl");
        let mut config = PipelineConfig {
            sources: [("fast", 25), ("slow", 10)]
                .iter()
                .map(|(name, fps)| SourceConfig {
                    name: Some(name.to_string()),
                    input: format!("testsrc://ball?frames=30&size=64x48&fps={fps}"),
                    ..SourceConfig::default()
                })
                .collect(),
            ..PipelineConfig::default()
        };
        config.json.path = json.display().to_string();
        config.attributes.enabled = false;
        assert_eq!(config.detect.detect_every, 0, "auto is the default");
        run_with_marks(&config, 2);
        let mut full: std::collections::HashMap<String, Vec<u64>> = Default::default();
        for line in std::fs::read_to_string(&json).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            if r["type"] == "frame" && r["faces"][0]["score"] == 1.0 {
                full.entry(r["stream"].as_str().unwrap().to_string())
                    .or_default()
                    .push(r["frame"].as_u64().unwrap());
            }
        }
        let every_third: Vec<u64> = (0..30).step_by(3).collect();
        assert_eq!(full["fast"], every_third);
        assert_eq!(full["slow"], (0..30).collect::<Vec<u64>>());
    }

    /// A stand-in detector whose frames cost time by size (sleeping, so the test does not depend
    /// on free cores): a frame of [`HEAVY_PIXELS`] or more takes [`HEAVY_MS`], smaller ones
    /// 1 ms. Counts the heavy frames in work at once, and the most.
    struct CostBySize {
        heavy_now: Arc<std::sync::atomic::AtomicUsize>,
        heavy_most: Arc<std::sync::atomic::AtomicUsize>,
    }

    const HEAVY_PIXELS: usize = 320 * 240;
    const HEAVY_MS: u64 = 150;

    impl FrameDetector for CostBySize {
        fn detect_frame(
            &mut self,
            _rgb: &[u8],
            width: usize,
            height: usize,
        ) -> Result<Vec<crate::detect::Face>, crate::detect::DetectError> {
            if width * height >= HEAVY_PIXELS {
                let now = self.heavy_now.fetch_add(1, Ordering::SeqCst) + 1;
                self.heavy_most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(HEAVY_MS));
                self.heavy_now.fetch_sub(1, Ordering::SeqCst);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(Vec::new())
        }
    }

    /// An expensive file beside a cheap live camera, on two workers: the camera keeps at least
    /// 90 % of its frames (its frames never wait for the expensive stream's in any buffer, and
    /// the workers' time is shared by time, not by frame), while the expensive stream keeps both
    /// workers busy. Under the old design (one order for all streams, one window) the camera lost
    /// about half of its frames. With long runs (`detect_every` 10) too: a run never stalls the
    /// scheduler.
    #[test]
    fn a_cheap_live_camera_keeps_its_frames_beside_an_expensive_stream() {
        for detect_every in [1, 10] {
            let dir = tempfile::tempdir().unwrap();
            let json = dir.path().join("out.jsonl");
            let mut config = PipelineConfig {
                sources: vec![
                    SourceConfig {
                        name: Some("heavy".into()),
                        input: "testsrc://snow?frames=30&size=320x240".into(),
                        ..SourceConfig::default()
                    },
                    SourceConfig {
                        name: Some("camera".into()),
                        input: "testsrc://ball?frames=75&size=64x48&fps=25&live=true".into(),
                        ..SourceConfig::default()
                    },
                ],
                ..PipelineConfig::default()
            };
            config.json.path = json.display().to_string();
            config.attributes.enabled = false;
            config.detect.detect_every = detect_every;
            let heavy_now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let heavy_most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let detectors: Vec<Box<dyn FrameDetector>> = (0..2)
                .map(|_| {
                    Box::new(CostBySize {
                        heavy_now: heavy_now.clone(),
                        heavy_most: heavy_most.clone(),
                    }) as Box<dyn FrameDetector>
                })
                .collect();
            let summary = run_with(&config, detectors);
            let (heavy, camera) = (&summary.streams[0], &summary.streams[1]);
            assert_eq!(heavy.frames_reported, 30, "detect_every {detect_every}");
            assert!(
                camera.frames_decoded >= 70,
                "the live camera gave {} frames",
                camera.frames_decoded
            );
            assert!(
                camera.frames_reported * 10 >= camera.frames_decoded * 9,
                "detect_every {detect_every}: the camera kept {} of {} frames ({} dropped)",
                camera.frames_reported,
                camera.frames_decoded,
                camera.frames_dropped
            );
            assert_eq!(
                heavy_most.load(Ordering::SeqCst),
                2,
                "detect_every {detect_every}: the expensive stream must use both workers"
            );
            // Each stream's records in its own order.
            let mut last: std::collections::HashMap<String, i64> = Default::default();
            for line in std::fs::read_to_string(&json).unwrap().lines() {
                let r: serde_json::Value = serde_json::from_str(line).unwrap();
                if r["type"] != "frame" {
                    continue;
                }
                let stream = r["stream"].as_str().unwrap().to_string();
                let frame = r["frame"].as_i64().unwrap();
                let before = last.insert(stream.clone(), frame).unwrap_or(-1);
                assert!(
                    frame > before,
                    "stream {stream}: frame {frame} after {before}"
                );
            }
        }
    }

    /// A stream's seconds (and so its fps) in the summary run to its last record written, not to
    /// the end of its decoding, which for a short file comes long before.
    #[test]
    fn a_streams_seconds_end_with_its_last_record_not_its_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = PipelineConfig::default();
        // 20 frames, decoded at once (they fit in the queue and the window), detected in 2 × 0.5 s.
        config.source.input = "testsrc://smpte?frames=20&size=64x48".into();
        config.json.path = dir.path().join("out.jsonl").display().to_string();
        config.attributes.enabled = false;
        config.detect.detect_every = 1;
        struct Slow;
        impl FrameDetector for Slow {
            fn detect_frame(
                &mut self,
                _rgb: &[u8],
                _width: usize,
                _height: usize,
            ) -> Result<Vec<crate::detect::Face>, crate::detect::DetectError> {
                std::thread::sleep(Duration::from_millis(50));
                Ok(Vec::new())
            }
        }
        let summary = run_with(&config, vec![Box::new(Slow), Box::new(Slow)]);
        let stream = &summary.streams[0];
        assert_eq!(stream.frames_reported, 20);
        assert!(
            stream.seconds >= 0.45 && stream.seconds <= summary.seconds,
            "{} s for the stream, {} s for the run",
            stream.seconds,
            summary.seconds
        );
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let text = "[source]\ninput = \"a.mp4\"\n\n[detect]\nmin_face = 20\n";
        let err = PipelineConfig::parse(text, Path::new("p.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("p.toml:5:1: unknown field `min_face`"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn a_sources_table_written_once_is_named_with_the_fix() {
        for (text, at, says) in [
            (
                "[sources]\ninput = \"a.mp4\"\n",
                "p.toml:1:1: ",
                "[sources] must be [[sources]]",
            ),
            (
                "# two cameras\n  [ sources ] # oops\n",
                "p.toml:2:3: ",
                "[sources] must be",
            ),
            (
                "[[source]]\ninput = \"a.mp4\"\n",
                "p.toml:1:1: ",
                "[[source]] must be [source]",
            ),
        ] {
            let msg = PipelineConfig::parse(text, Path::new("p.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(at) && msg.contains(says), "{text:?}: {msg}");
        }
        // `[[sources]]` itself parses.
        let config =
            PipelineConfig::parse("[[sources]]\ninput = \"a.mp4\"\n", Path::new("p.toml")).unwrap();
        assert_eq!(config.sources.len(), 1);
    }

    /// What counts as a path in a pipeline file moves to the file's folder; the rest stays.
    #[test]
    fn relative_paths_are_taken_from_the_files_folder() {
        let text = r#"
            [[sources]]
            input = "clips/a.mp4"
            [[sources]]
            input = "../b.mp4"
            [[sources]]
            input = "/abs/c.mp4"
            [[sources]]
            input = "testsrc://ball?frames=2"
            [[sources]]
            input = "rtsp://cam/stream"
            [[sources]]
            input = "file:///abs/d.mp4"
            [[sources]]
            input = "v4l2:///dev/video0"
            [detect]
            models_dir = "mtcnn"
            [attributes]
            model = "./m.onnx"
            [json]
            path = "out/x.jsonl"
            [overlay]
            path = "o.mp4"
            [mqtt]
            url = "mqtts://broker/t"
            ca = "certs/ca.pem"
        "#;
        let mut config = PipelineConfig::parse(text, Path::new("p.toml")).unwrap();
        config.resolve_paths(Path::new("/etc/ff"));
        let inputs: Vec<&str> = config.sources.iter().map(|s| s.input.as_str()).collect();
        assert_eq!(
            inputs,
            [
                "/etc/ff/clips/a.mp4",
                "/etc/b.mp4",
                "/abs/c.mp4",
                "testsrc://ball?frames=2",
                "rtsp://cam/stream",
                "file:///abs/d.mp4",
                "v4l2:///dev/video0"
            ]
        );
        assert_eq!(config.detect.models_dir, Some("/etc/ff/mtcnn".into()));
        assert_eq!(config.attributes.model, Some("/etc/ff/m.onnx".into()));
        assert_eq!(config.json.path, "/etc/ff/out/x.jsonl");
        assert_eq!(config.overlay.path.as_deref(), Some("/etc/ff/o.mp4"));
        assert_eq!(config.mqtt.ca, Some("/etc/ff/certs/ca.pem".into()));
        // Standard output, a window, a served overlay and a missing input stay as they are.
        let mut config = PipelineConfig::parse(
            "[json]\npath = \"-\"\n[overlay]\npath = \"window\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        config.resolve_paths(Path::new("/etc/ff"));
        assert_eq!(
            (
                config.json.path.as_str(),
                config.overlay.path.as_deref(),
                config.source.input.as_str()
            ),
            ("-", Some("window"), "")
        );
        config.overlay.path = Some("rtsp://0.0.0.0:8554/live".into());
        config.resolve_paths(Path::new("/etc/ff"));
        assert_eq!(
            config.overlay.path.as_deref(),
            Some("rtsp://0.0.0.0:8554/live")
        );
    }

    #[test]
    fn syntax_errors_are_one_line_with_position() {
        let err = PipelineConfig::parse("[source]\ninput = \n", Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.toml:2:"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn missing_sections_take_defaults() {
        let cfg =
            PipelineConfig::parse("[source]\ninput = \"a.mp4\"\n", Path::new("p.toml")).unwrap();
        assert_eq!(cfg.detect, DetectConfig::default());
        assert_eq!(cfg.json.path, "-");
        assert!(cfg.validate().is_ok());
        let cfg = PipelineConfig::parse("", Path::new("p.toml")).unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("no input"));
    }

    /// Every key a pipeline file may hold, as `section.key` (`.key` at the top level).
    fn every_key() -> Vec<String> {
        let mut config = PipelineConfig::default();
        // Options appear in the written file only when set.
        config.source.live = Some(true);
        config.source.reconnect_attempts = Some(1);
        config.detect.models_dir = Some("m".into());
        config.attributes.model = Some("m".into());
        config.source.name = Some("n".into());
        config.source.start_time = Some("2026-12-07T09:30:00Z".into());
        config.overlay.path = Some("o.mp4".into());
        config.mqtt.url = Some("mqtt://h/t".into());
        config.mqtt.ca = Some("ca.pem".into());
        config.metrics.listen = Some("127.0.0.1:9464".into());
        config.attributes.tasks = Some(vec![crate::model::spec::Task::Age]);
        config.snapshots.dir = Some("s".into());
        let value = toml::Value::try_from(&config).unwrap();
        let mut keys = Vec::new();
        for (name, v) in value.as_table().unwrap() {
            // `[[sources]]` holds the keys of `[source]`; the files show it as a commented example.
            if name == "sources" {
                continue;
            }
            match v.as_table() {
                Some(section) => keys.extend(section.keys().map(|k| format!("{name}.{k}"))),
                None => keys.push(format!(".{name}")),
            }
        }
        keys.sort();
        keys
    }

    /// The keys a file shows, set or commented out (`# key = value`), and the file with every
    /// commented key set.
    fn shown_keys(text: &str) -> (Vec<String>, String) {
        let mut section = String::new();
        let mut keys = Vec::new();
        let mut uncommented = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            }
            // The commented `[[sources]]` example repeats `[source]` keys: not counted, left as is.
            if trimmed == "# [[sources]]" {
                section = "[sources]".into();
            }
            if section == "[sources]" {
                uncommented.push_str(line);
                uncommented.push('\n');
                continue;
            }
            let setting = trimmed.strip_prefix("# ").unwrap_or(trimmed);
            let key = setting.split_once(" = ").map(|(k, _)| k.trim());
            match key {
                Some(k)
                    if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
                {
                    keys.push(format!("{section}.{k}"));
                    uncommented.push_str(setting);
                }
                _ => uncommented.push_str(line),
            }
            uncommented.push('\n');
        }
        keys.sort();
        (keys, uncommented)
    }

    /// The shipped files are the reference: each shows every key with its default, commented,
    /// so a new key must be documented there, and every commented value is itself valid.
    #[test]
    fn shipped_pipeline_files_show_every_key_and_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let config = PipelineConfig::load(&path).unwrap();
            config.validate().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let (keys, uncommented) = shown_keys(&text);
            assert_eq!(keys, every_key(), "{}", path.display());
            assert!(text.contains("# [[sources]]"), "{}", path.display());
            let all = PipelineConfig::parse(&uncommented, &path)
                .unwrap_or_else(|e| panic!("{}: commented keys: {e}", path.display()));
            all.validate().unwrap();
            n += 1;
        }
        assert!(n >= 3);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A pipeline file's error names the file, a line that exists (or the one after the end) and
    /// a column, on one line.
    fn assert_positioned(err: &PipelineError, text: &str) -> Result<(), TestCaseError> {
        let msg = err.to_string();
        prop_assert!(!msg.contains('\n'), "{}", msg);
        let rest = msg.strip_prefix("p.toml:");
        prop_assert!(rest.is_some(), "{}", msg);
        let mut parts = rest.unwrap_or_default().splitn(3, ':');
        let line: usize = parts.next().unwrap_or_default().parse().unwrap_or(0);
        let column: usize = parts.next().unwrap_or_default().parse().unwrap_or(0);
        prop_assert!(line >= 1 && line <= text.lines().count() + 1, "{}", msg);
        prop_assert!(column >= 1, "{}", msg);
        Ok(())
    }

    fn config() -> impl Strategy<Value = PipelineConfig> {
        (
            "[^\u{0}]{0,40}",
            any::<bool>(),
            0u32..5000,
            1usize..64,
            0u64..(i64::MAX as u64),
            proptest::option::of(0u32..100),
            (1.0f64..400.0, 0.05f64..0.99, 0usize..8),
            (
                any::<bool>(),
                prop::sample::select(vec![3u32, 5, 10]),
                1usize..128,
            ),
        )
            .prop_map(
                |(input, tcp, latency, queue, max_frames, reconnect, detect, attributes)| {
                    let mut c = PipelineConfig::default();
                    c.source.input = input;
                    c.source.rtsp_tcp = tcp;
                    c.source.rtsp_latency_ms = latency;
                    c.source.queue_frames = queue;
                    c.source.max_frames = max_frames;
                    c.source.reconnect_attempts = reconnect;
                    (
                        c.detect.min_face_px,
                        c.detect.scale_factor,
                        c.detect.workers,
                    ) = (detect.0, detect.1, detect.2);
                    (
                        c.attributes.enabled,
                        c.attributes.age_groups,
                        c.attributes.max_batch,
                    ) = attributes;
                    c
                },
            )
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_with_a_position(text in "\\PC{0,200}") {
            if let Err(e) = PipelineConfig::parse(&text, Path::new("p.toml")) {
                assert_positioned(&e, &text)?;
            }
        }

        #[test]
        fn toml_like_text_parses_or_fails_with_a_position(
            lines in prop::collection::vec(
                prop_oneof![
                    Just("[source]".to_string()),
                    Just("[detect]".to_string()),
                    Just("[attributes]".to_string()),
                    "[a-z_]{1,12} = [0-9a-z\"\\.\\[\\], -]{0,12}",
                    "\\PC{0,20}",
                ],
                0..12,
            )
        ) {
            let text = lines.join("\n");
            match PipelineConfig::parse(&text, Path::new("p.toml")) {
                Ok(config) => { let _ = config.validate(); }
                Err(e) => assert_positioned(&e, &text)?,
            }
        }

        #[test]
        fn written_configs_read_back_equal(config in config()) {
            let text = toml::to_string(&config).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = PipelineConfig::parse(&text, Path::new("p.toml"))
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, config);
        }

        #[test]
        fn an_unknown_key_is_named_at_its_line(config in config(), at in any::<prop::sample::Index>()) {
            let text = toml::to_string(&config).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut lines: Vec<&str> = text.lines().collect();
            // After a section header, so the key lands inside a section with deny_unknown_fields.
            let headers: Vec<usize> = lines
                .iter()
                .enumerate()
                // A section header, not a line of a multi-line string that starts with `[`.
                .filter(|(_, l)| {
                    l.strip_prefix('[').and_then(|l| l.strip_suffix(']')).is_some_and(|name| {
                        !name.is_empty()
                            && name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
                    })
                })
                .map(|(i, _)| i)
                .collect();
            prop_assume!(!headers.is_empty());
            let header = headers[at.index(headers.len())];
            lines.insert(header + 1, "frobnicate = 1");
            let text = lines.join("\n");
            let err = PipelineConfig::parse(&text, Path::new("p.toml"))
                .err()
                .ok_or_else(|| TestCaseError::fail("unknown key accepted"))?;
            let msg = err.to_string();
            prop_assert!(msg.starts_with(&format!("p.toml:{}:", header + 2)), "{}\n{}", msg, text);
            prop_assert!(msg.contains("frobnicate"), "{}", msg);
        }
    }
}
