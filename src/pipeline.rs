//! A pipeline: its configuration file (`pipelines/*.toml`) and the graph built from it:
//! source → detect (one worker per core) → attributes (batched across frames) → JSON sink.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::align::AlignConfig;
use crate::attributes::{self, AttributeModel};
use crate::detect::{DetectConfig, Mtcnn};
use crate::graph::{self, Control, Graph, Input, Output, Received, Sent, WhenFull};
use crate::model::AgeGrouping;
use crate::sinks::{FaceRecord, FrameRecord, JsonConfig, JsonLinesWriter};
use crate::sources::{Frame, Source, SourceConfig, SourceCounters, SourceStats};

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
    /// A failure of the input stream; the message already names the input.
    #[error("{0}")]
    Input(String),
}

/// Everything a `faceflow run` needs; each section and key is optional in the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub source: SourceConfig,
    pub detect: DetectConfig,
    pub align: AlignConfig,
    pub attributes: AttributesConfig,
    pub json: JsonConfig,
    /// Frames queued between detect and the sinks.
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
}

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

    /// Loads the model when the stage is on.
    pub fn load(&self) -> Result<Option<(AttributeModel, AgeGrouping)>, PipelineError> {
        if !self.enabled {
            return Ok(None);
        }
        let grouping = self.grouping()?;
        if self.max_batch == 0 {
            return Err(PipelineError::Invalid(
                "attributes: max_batch must be at least 1".into(),
            ));
        }
        let mut model = AttributeModel::load(&self.model_path(), self.threads.max(1))?;
        model.set_flip_average(self.flip_average);
        Ok(Some((model, grouping)))
    }
}

impl PipelineConfig {
    /// Reads a pipeline file; unknown keys and syntax errors name the file, line and column.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|reason| PipelineError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, PipelineError> {
        toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            PipelineError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().replace('\n', " ").trim().to_string(),
            }
        })
    }

    pub fn validate(&self) -> Result<(), PipelineError> {
        if self.source.input.trim().is_empty() {
            return Err(PipelineError::Invalid(
                "no input: give --input or set [source] input in the pipeline file".into(),
            ));
        }
        let source = &self.source;
        if source.connect_attempts == 0 {
            return Err(PipelineError::Invalid(
                "source connect_attempts must be at least 1".into(),
            ));
        }
        if source.stall_timeout_ms < 100 {
            return Err(PipelineError::Invalid(format!(
                "source stall_timeout_ms = {} is too short (at least 100)",
                source.stall_timeout_ms
            )));
        }
        if source.reconnect_backoff_ms == 0
            || source.reconnect_backoff_max_ms < source.reconnect_backoff_ms
        {
            return Err(PipelineError::Invalid(
                "source reconnect_backoff_ms must be at least 1 and at most reconnect_backoff_max_ms"
                    .into(),
            ));
        }
        self.detect.validate()?;
        self.align
            .validate()
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        self.attributes.grouping()?;
        if !(self.stats_interval_s >= 0.0 && self.stats_interval_s.is_finite()) {
            return Err(PipelineError::Invalid(format!(
                "stats_interval_s = {} must be 0 (off) or a number of seconds",
                self.stats_interval_s
            )));
        }
        Ok(())
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub stream: String,
    pub source: String,
    pub frames_decoded: u64,
    pub frames_reported: u64,
    pub frames_dropped: u64,
    /// Live sources: successful reconnections and the time without frames they cost.
    pub reconnects: u32,
    pub gap_seconds: f64,
    pub faces: u64,
    pub seconds: f64,
    /// True when the run ended early on a stop request (Ctrl-C).
    pub interrupted: bool,
}

impl RunSummary {
    pub fn line(&self) -> String {
        let fps = if self.seconds > 0.0 {
            self.frames_reported as f64 / self.seconds
        } else {
            0.0
        };
        format!(
            "stream {} ({}): {} frames decoded, {} reported, {} dropped (behind live source); {} faces; {:.1} s, {:.1} fps{}{}",
            self.stream,
            self.source,
            self.frames_decoded,
            self.frames_reported,
            self.frames_dropped,
            self.faces,
            self.seconds,
            fps,
            if self.reconnects > 0 {
                format!(
                    "; {} reconnection{}, {:.1} s without frames",
                    self.reconnects,
                    if self.reconnects == 1 { "" } else { "s" },
                    self.gap_seconds
                )
            } else {
                String::new()
            },
            if self.interrupted {
                "; interrupted"
            } else {
                ""
            }
        )
    }
}

/// A frame with its faces, numbered in the order it left the source queue.
struct Detected {
    seq: u64,
    frame: Frame,
    faces: Vec<FaceRecord>,
}

/// The source queue shared by the detect workers: taking a frame and numbering it happen together.
struct Dispatch {
    input: Input<Frame>,
    next_seq: u64,
    finished: bool,
}

/// Progress callback: frames reported so far.
pub type Progress = Box<dyn FnMut(u64, Duration) + Send>;

/// Health callback, every `stats_interval_s`.
pub type HealthReport = Box<dyn FnMut(&Health) + Send>;

/// Callbacks of a run.
#[derive(Default)]
pub struct RunHooks {
    pub progress: Option<Progress>,
    pub health: Option<HealthReport>,
}

/// How a running pipeline is doing: counts so far, queue depths, resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub seconds: f64,
    pub frames_decoded: u64,
    pub frames_reported: u64,
    pub frames_dropped: u64,
    pub faces: u64,
    /// Resident memory of the process (Linux), MiB.
    pub rss_mb: Option<f64>,
    /// Queue name, items waiting, capacity.
    pub queues: Vec<(&'static str, usize, usize)>,
}

impl Health {
    /// One `key=value` line, easy to read and to parse.
    pub fn line(&self) -> String {
        let queues: Vec<String> = self
            .queues
            .iter()
            .map(|(name, depth, cap)| format!("{name}:{depth}/{cap}"))
            .collect();
        format!(
            "stats: t={:.0}s decoded={} reported={} dropped={} faces={} rss_mb={} queues={}",
            self.seconds,
            self.frames_decoded,
            self.frames_reported,
            self.frames_dropped,
            self.faces,
            self.rss_mb
                .map_or_else(|| "?".into(), |m| format!("{m:.1}")),
            queues.join(",")
        )
    }
}

/// Resident memory of this process in MiB (from /proc; `None` elsewhere).
pub fn resident_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn detect_worker(
    detector: &mut Mtcnn,
    dispatch: &Mutex<Dispatch>,
    out: &Output<Detected>,
    control: &Control,
) -> Result<(), String> {
    loop {
        let (seq, frame) = {
            let Ok(mut d) = dispatch.lock() else {
                return Err("frame dispatch poisoned".into());
            };
            if d.finished {
                return Ok(());
            }
            match d.input.recv(control) {
                Received::Item(frame) => {
                    d.next_seq += 1;
                    (d.next_seq - 1, frame)
                }
                Received::Eos | Received::Disconnected => {
                    d.finished = true;
                    return Ok(());
                }
            }
        };
        let faces = detector
            .detect(&frame.rgb, frame.width as usize, frame.height as usize)
            .map_err(|e| format!("frame {}: {e}", frame.index))?;
        let faces = faces.into_iter().map(FaceRecord::detection).collect();
        if out.send(Detected { seq, frame, faces }, control) == Sent::Closed {
            return Ok(());
        }
    }
}

/// Adds age, gender and race to the faces of frames from `upstream` detect workers. Faces of
/// several frames share one model call: up to `max_batch` faces, waiting at most `max_wait` for
/// more. Ends after every upstream worker's end-of-stream and forwards one.
fn attributes_stage(
    model: &mut AttributeModel,
    grouping: AgeGrouping,
    config: &AttributesConfig,
    input: &Input<Detected>,
    out: &Output<Detected>,
    upstream: usize,
    control: &Control,
) -> Result<(), String> {
    let mut eos_seen = 0usize;
    let max_wait = Duration::from_millis(config.max_wait_ms);
    let spec = model.spec().clone();
    loop {
        let mut batch = Vec::new();
        let mut ended = false;
        match input.recv(control) {
            Received::Item(d) => batch.push(d),
            Received::Eos => {
                eos_seen += 1;
                ended = eos_seen >= upstream;
            }
            Received::Disconnected => ended = true,
        }
        let mut faces: usize = batch.iter().map(|d| d.faces.len()).sum();
        let deadline = Instant::now() + max_wait;
        while !ended && faces > 0 && faces < config.max_batch {
            match input.recv_until(deadline, control) {
                None => break,
                Some(Received::Item(d)) => {
                    faces += d.faces.len();
                    batch.push(d);
                }
                Some(Received::Eos) => {
                    eos_seen += 1;
                    ended = eos_seen >= upstream;
                }
                Some(Received::Disconnected) => ended = true,
            }
        }
        if faces > 0 {
            let mut crops = Vec::with_capacity(faces);
            let mut slots = Vec::with_capacity(faces);
            for (b, d) in batch.iter().enumerate() {
                let (w, h) = (d.frame.width as usize, d.frame.height as usize);
                for (f, face) in d.faces.iter().enumerate() {
                    if let Some(crop) = attributes::crop_for_model(&d.frame.rgb, w, h, &face.face) {
                        crops.push(crop);
                        slots.push((b, f));
                    }
                }
            }
            let predictions = model
                .predict(&crops)
                .map_err(|e| format!("frame {}: {e}", batch[0].frame.index))?;
            for ((b, f), p) in slots.into_iter().zip(&predictions) {
                let face = &mut batch[b].faces[f];
                *face = FaceRecord::with_attributes(face.face.clone(), p, &spec, grouping);
            }
        }
        for d in batch {
            if out.send(d, control) == Sent::Closed {
                return Ok(());
            }
        }
        if ended {
            return Ok(());
        }
    }
}

/// Writes records in decode order: workers finish frames out of order, so the sink holds back a
/// frame until all before it are written.
struct Reorder {
    pending: BTreeMap<u64, Detected>,
    next_seq: u64,
}

impl Reorder {
    fn push(&mut self, d: Detected) {
        self.pending.insert(d.seq, d);
    }

    /// The next frame in order; with `flush`, also frames after a gap (a worker that failed).
    fn pop(&mut self, flush: bool) -> Option<Detected> {
        let d = match self.pending.remove(&self.next_seq) {
            Some(d) => d,
            None if flush => self.pending.pop_first()?.1,
            None => return None,
        };
        self.next_seq = d.seq + 1;
        Some(d)
    }
}

/// Reports [`Health`] at a fixed interval while the graph runs.
struct Monitor {
    every: Duration,
    started: Instant,
    source: Arc<SourceCounters>,
    sink: Arc<Mutex<(u64, u64)>>,
    probes: Vec<graph::QueueProbe>,
}

impl Monitor {
    fn run(&self, mut report: HealthReport, done: &AtomicBool) {
        let mut next = self.started + self.every;
        while !done.load(Ordering::SeqCst) {
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            next += self.every;
            let (reported, faces) = self.sink.lock().map(|n| *n).unwrap_or_default();
            report(&Health {
                seconds: self.started.elapsed().as_secs_f64(),
                frames_decoded: self.source.decoded.load(Ordering::Relaxed),
                frames_reported: reported,
                frames_dropped: self.source.dropped_behind.load(Ordering::Relaxed),
                faces,
                rss_mb: resident_memory_mb(),
                queues: self
                    .probes
                    .iter()
                    .map(|p| (p.name, p.depth(), p.capacity))
                    .collect(),
            });
        }
    }
}

/// Builds every stage, then runs the graph until end of stream, a stop request or the first error.
pub fn run(
    config: &PipelineConfig,
    control: Control,
    hooks: RunHooks,
) -> Result<RunSummary, PipelineError> {
    let RunHooks {
        mut progress,
        health,
    } = hooks;
    config.validate()?;
    // Build everything before anything starts: a bad model or output path fails here.
    let source = Source::build(&config.source, "0")?;
    let info = source.info();
    let source_counters = source.counters();
    let workers = config.detect.effective_workers();
    let worker_config = DetectConfig {
        threads: config.detect.threads_per_worker(workers),
        ..config.detect.clone()
    };
    let detectors = (0..workers)
        .map(|_| Mtcnn::new(worker_config.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let attribute_model = config.attributes.load()?;
    let mut writer = JsonLinesWriter::create(&config.json)?;
    let when_full = if info.live {
        WhenFull::DropOldest
    } else {
        WhenFull::Block
    };
    let (frames_out, frames_in) =
        graph::channel::<Frame>("frames", config.source.queue_frames, when_full);
    let (detected_out, detected_in) = graph::channel::<Detected>(
        "detected",
        config.queue_frames.max(2 * workers),
        WhenFull::Block,
    );

    let source_stats = Arc::new(Mutex::new(SourceStats::default()));
    let sink_counts = Arc::new(Mutex::new((0u64, 0u64)));
    let started = Instant::now();

    let mut graph = Graph::new(control.clone());
    let stats_slot = source_stats.clone();
    graph.add_stage("source", move |c| {
        let result = source.run(&frames_out, c);
        frames_out.send_eos(c);
        let stats = result.map_err(|e| e.to_string())?;
        if let Ok(mut slot) = stats_slot.lock() {
            *slot = stats;
        }
        Ok(())
    });
    let mut probes = vec![frames_in.probe(), detected_in.probe()];
    let dispatch = Arc::new(Mutex::new(Dispatch {
        input: frames_in,
        next_seq: 0,
        finished: false,
    }));
    for (w, mut detector) in detectors.into_iter().enumerate() {
        let dispatch = dispatch.clone();
        let out = detected_out.clone();
        graph.add_stage(format!("detect-{w}"), move |c| {
            let result = detect_worker(&mut detector, &dispatch, &out, c);
            // Each worker ends its share of the stream; the sink waits for all of them.
            out.send_eos(c);
            result
        });
    }
    drop(detected_out);
    // With attributes, the sink hears one end-of-stream (from that stage), else one per worker.
    let (to_sink, sink_upstream) = match attribute_model {
        Some((mut model, grouping)) => {
            let (annotated_out, annotated_in) = graph::channel::<Detected>(
                "annotated",
                config.queue_frames.max(2 * workers),
                WhenFull::Block,
            );
            probes.push(annotated_in.probe());
            let attr_config = config.attributes.clone();
            graph.add_stage("attributes", move |c| {
                let result = attributes_stage(
                    &mut model,
                    grouping,
                    &attr_config,
                    &detected_in,
                    &annotated_out,
                    workers,
                    c,
                );
                annotated_out.send_eos(c);
                result
            });
            (annotated_in, 1)
        }
        None => (detected_in, workers),
    };
    let counts = sink_counts.clone();
    graph.add_stage("json", move |c| {
        let mut last_progress = Instant::now();
        let mut reorder = Reorder {
            pending: BTreeMap::new(),
            next_seq: 0,
        };
        let mut eos_seen = 0usize;
        let result = 'run: loop {
            let done = match to_sink.recv(c) {
                Received::Item(d) => {
                    reorder.push(d);
                    false
                }
                Received::Eos => {
                    eos_seen += 1;
                    eos_seen >= sink_upstream
                }
                Received::Disconnected => true,
            };
            while let Some(d) = reorder.pop(done) {
                let record = FrameRecord {
                    stream: d.frame.stream.id.clone(),
                    source: d.frame.stream.uri.clone(),
                    frame: d.frame.index,
                    pts_ms: d.frame.pts_ms,
                    width: d.frame.width,
                    height: d.frame.height,
                    gap_before_ms: d.frame.gap_before_ms,
                    faces: d.faces,
                };
                if let Err(e) = writer.write(&record) {
                    break 'run Err(e.to_string());
                }
                if let Ok(mut n) = counts.lock() {
                    n.0 += 1;
                    n.1 += record.faces.len() as u64;
                    if let Some(p) = progress.as_mut()
                        && last_progress.elapsed() >= Duration::from_millis(500)
                    {
                        p(n.0, started.elapsed());
                        last_progress = Instant::now();
                    }
                }
            }
            if done {
                break Ok(());
            }
        };
        // Flush whatever ended the run: complete lines already produced are never lost.
        writer.flush().map_err(|e| e.to_string())?;
        result
    });
    let outcome = match health {
        Some(report) if config.stats_interval_s > 0.0 => {
            let monitor = Monitor {
                every: Duration::from_secs_f64(config.stats_interval_s),
                started,
                source: source_counters,
                sink: sink_counts.clone(),
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
    let stats = source_stats.lock().map(|s| s.clone()).unwrap_or_default();
    let (reported, faces) = sink_counts.lock().map(|n| *n).unwrap_or_default();
    outcome.map_err(|e| match e.stage.as_str() {
        "source" => PipelineError::Input(e.message),
        _ => PipelineError::Stage(e),
    })?;
    Ok(RunSummary {
        stream: info.id.clone(),
        source: info.uri.clone(),
        frames_decoded: stats.decoded,
        frames_reported: reported,
        frames_dropped: stats.dropped_behind,
        reconnects: stats.reconnects,
        gap_seconds: stats.gap_ms / 1e3,
        faces,
        seconds: started.elapsed().as_secs_f64(),
        interrupted: control.stop_requested(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(seq: u64) -> Detected {
        let stream = Arc::new(crate::sources::StreamInfo {
            id: "0".into(),
            uri: "testsrc://".into(),
            live: false,
        });
        Detected {
            seq,
            frame: Frame {
                stream,
                index: seq,
                pts_ms: 0.0,
                width: 0,
                height: 0,
                rgb: Vec::new(),
                gap_before_ms: None,
            },
            faces: Vec::new(),
        }
    }

    #[test]
    fn reorder_restores_sequence_and_flushes_past_gaps_at_the_end() {
        let mut r = Reorder {
            pending: BTreeMap::new(),
            next_seq: 0,
        };
        r.push(detected(1));
        assert!(r.pop(false).is_none(), "frame 1 must wait for frame 0");
        r.push(detected(0));
        assert_eq!(r.pop(false).map(|d| d.seq), Some(0));
        assert_eq!(r.pop(false).map(|d| d.seq), Some(1));
        // Frame 2 lost (a worker failed): 3 waits until the end, then comes out.
        r.push(detected(3));
        assert!(r.pop(false).is_none());
        assert_eq!(r.pop(true).map(|d| d.seq), Some(3));
        assert!(r.pop(true).is_none());
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

    #[test]
    fn shipped_pipeline_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                PipelineConfig::load(&path).unwrap();
                n += 1;
            }
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
                .filter(|(_, l)| l.starts_with('[') && !l.starts_with("[["))
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
