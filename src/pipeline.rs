//! A pipeline: its configuration file (`pipelines/*.toml`) and the graph built from it:
//! source → detect (one worker per core) → attributes (batched across frames) → JSON sink.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::attributes::{self, AttributeModel, FacesInImage};
use crate::detect::{DetectConfig, FrameDetector, Mtcnn};
use crate::graph::{self, Control, Graph, Input, Output, Received, Sent, WhenFull};
use crate::model::AgeGrouping;
use crate::sinks::{FaceRecord, FrameRecord, JsonConfig, JsonLinesWriter, RecordKind};
use crate::sources::{Frame, Source, SourceConfig, SourceCounters, SourceStats};
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
    /// Frames queued between detect and the sinks, and most frames between the source queue and
    /// the JSON writer (the reorder window) [default: 2 per detect worker, at least 8].
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

    pub fn validate(&self) -> Result<(), PipelineError> {
        use crate::limits::{MAX_THREADS, Setting};
        Setting::flag("age_groups", "--age-groups").check_one_of(self.age_groups, &[3, 5, 10])?;
        Setting::key("max_batch").check(self.max_batch, 1, 1024, "faces")?;
        Setting::key("max_wait_ms").check(self.max_wait_ms, 0, 10_000, "ms")?;
        Setting::key("threads").check(self.threads, 1, MAX_THREADS, "")?;
        Ok(())
    }

    /// Loads the model when the stage is on.
    pub fn load(&self) -> Result<Option<(AttributeModel, AgeGrouping)>, PipelineError> {
        if !self.enabled {
            return Ok(None);
        }
        self.validate()?;
        let grouping = self.grouping()?;
        let mut model = AttributeModel::load(&self.model_path(), self.threads)?;
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
                    "no input: give --input or set [source] input in the pipeline file".into()
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
        Setting::key("queue_frames").check_or_zero(
            self.queue_frames,
            1,
            MAX_QUEUE_FRAMES,
            "frames",
            "automatic",
        )?;
        Setting::flag("stats_interval_s", "--stats-every").check_or_zero(
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

/// What a finished run reports: one entry per stream, and the run as a whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub streams: Vec<StreamSummary>,
    pub seconds: f64,
    /// True when the run ended early on a stop request (Ctrl-C).
    pub interrupted: bool,
    /// The reader of the JSON output went away (a closed pipe): the run stopped there, and the
    /// frames still in flight were not written.
    pub output_closed: bool,
    /// Most frames the JSON writer held back at once to restore decode order.
    pub peak_reorder_frames: usize,
}

/// One stream's counts: decoded = reported + dropped (+ not written when the output closed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub stream: String,
    pub source: String,
    pub frames_decoded: u64,
    pub frames_reported: u64,
    pub frames_dropped: u64,
    pub frames_not_written: u64,
    /// Live sources: successful reconnections and the time without frames they cost.
    pub reconnects: u32,
    pub gap_seconds: f64,
    pub faces: u64,
    /// Confirmed tracks: the people seen.
    pub people: u64,
    /// Seconds from the start of the run to the end of this stream (0: the run's length).
    pub seconds: f64,
    /// The stream ended with this error (its frames decoded before it were all written).
    pub failure: Option<String>,
}

impl RunSummary {
    /// The streams' counts summed, as a stream named "total".
    pub fn total(&self) -> StreamSummary {
        let mut t = StreamSummary {
            stream: "total".into(),
            source: format!("{} streams", self.streams.len()),
            ..StreamSummary::default()
        };
        for s in &self.streams {
            t.frames_decoded += s.frames_decoded;
            t.frames_reported += s.frames_reported;
            t.frames_dropped += s.frames_dropped;
            t.frames_not_written += s.frames_not_written;
            t.reconnects += s.reconnects;
            t.gap_seconds += s.gap_seconds;
            t.faces += s.faces;
            t.people += s.people;
        }
        t
    }

    /// One line per stream, then (with several streams) a total line.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.streams.iter().map(|s| self.line(s)).collect();
        if self.streams.len() > 1 {
            lines.push(self.line(&self.total()));
        }
        lines
    }

    /// Streams that failed, with their errors.
    pub fn failures(&self) -> Vec<&str> {
        self.streams
            .iter()
            .filter_map(|s| s.failure.as_deref())
            .collect()
    }

    fn line(&self, s: &StreamSummary) -> String {
        // A stream's own time: one that ended early is not slowed by the others.
        let seconds = if s.seconds > 0.0 {
            s.seconds.min(self.seconds)
        } else {
            self.seconds
        };
        let fps = if seconds > 0.0 {
            s.frames_reported as f64 / seconds
        } else {
            0.0
        };
        let not_written = if self.output_closed {
            format!(
                ", {} not written (output closed by its reader)",
                s.frames_not_written
            )
        } else {
            String::new()
        };
        let ending = if self.output_closed {
            ""
        } else if s.failure.is_some() {
            "; the source failed"
        } else if self.interrupted {
            "; interrupted"
        } else {
            ""
        };
        let name = if s.stream == "total" {
            format!("total ({})", s.source)
        } else {
            format!("stream {} ({})", s.stream, s.source)
        };
        format!(
            "{name}: {} decoded, {} reported, {} dropped (behind live source){not_written}; {}, {}; {:.1} s, {:.1} fps{}{ending}",
            count(s.frames_decoded, "frame"),
            s.frames_reported,
            s.frames_dropped,
            count(s.faces, "face"),
            if s.people == 1 {
                "1 person".to_string()
            } else {
                format!("{} people", s.people)
            },
            seconds,
            fps,
            if s.reconnects > 0 {
                format!(
                    "; {}, {:.1} s without frames",
                    count(u64::from(s.reconnects), "reconnection"),
                    s.gap_seconds
                )
            } else {
                String::new()
            },
        )
    }
}

/// `1 frame`, `2 frames`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A frame with its faces, numbered in the order the scheduler handed it out.
struct Detected {
    seq: u64,
    frame: Frame,
    faces: Vec<FaceRecord>,
    /// The attribute model's reading of each face (`None`: no model, or no crop).
    predictions: Vec<Option<crate::model::readout::Prediction>>,
    /// Not a frame: the mark that `frame.stream` has ended, in its place in the order (the
    /// writer then ends that stream's tracks).
    stream_ended: bool,
}

/// What the scheduler hands the detect workers: a numbered frame, or a stream's end mark.
struct Work {
    seq: u64,
    frame: Frame,
    stream_ended: bool,
}

/// Bounds the frames between the source queue and the JSON writer. Workers finish frames out of
/// order and the writer holds back those that overtook a slow one; without a bound, one slow
/// frame would let the others pull the rest of a file into that reorder buffer. The scheduler
/// hands out frame `seq` only once `seq < written + frames`.
struct Window {
    /// Sequence number of the next frame the writer will write.
    written: Mutex<u64>,
    advanced: Condvar,
    frames: u64,
    /// The scheduler waits for room: whoever holds frames back (a batch being gathered) should
    /// let them go, since no new frame can come until the writer moves on.
    waiting: std::sync::atomic::AtomicUsize,
}

impl Window {
    fn new(frames: usize) -> Self {
        Self {
            written: Mutex::new(0),
            advanced: Condvar::new(),
            frames: frames.max(1) as u64,
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Waits until frame `seq` fits in the window; false when the graph failed meanwhile.
    fn admit(&self, seq: u64, control: &Control) -> bool {
        let Ok(mut written) = self.written.lock() else {
            return false;
        };
        if seq < *written + self.frames {
            return true;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let admitted = loop {
            if seq < *written + self.frames {
                break true;
            }
            if control.has_error() {
                break false;
            }
            match self
                .advanced
                .wait_timeout(written, Duration::from_millis(50))
            {
                Ok((guard, _)) => written = guard,
                Err(_) => break false,
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        admitted
    }

    /// The scheduler waits for room: no new frame comes until the writer moves on.
    fn is_full(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// The writer is done with every frame before `next_seq`.
    fn advance_to(&self, next_seq: u64) {
        if let Ok(mut written) = self.written.lock() {
            *written = next_seq;
        }
        self.advanced.notify_all();
    }
}

/// Takes frames from every stream's queue in turn (one frame per stream per round, so a file that
/// decodes fast cannot starve a live camera), numbers them and hands them to the detect workers
/// through one shared queue, within the [`Window`]. A stream that ends leaves the rotation; when
/// all have ended, each worker gets an end-of-stream.
struct Scheduler {
    inputs: Vec<Input<Frame>>,
    streams: Vec<Arc<crate::sources::StreamInfo>>,
    out: Output<Work>,
    workers: usize,
    window: Arc<Window>,
}

impl Scheduler {
    fn run(self, control: &Control) -> Result<(), String> {
        let result = self.schedule(control);
        for _ in 0..self.workers {
            self.out.send_eos(control);
        }
        result
    }

    fn schedule(&self, control: &Control) -> Result<(), String> {
        let n = self.inputs.len();
        let mut open = vec![true; n];
        let mut next_seq = 0u64;
        let mut turn = 0usize;
        while open.iter().any(|&o| o) {
            if !self.window.admit(next_seq, control) {
                return Ok(());
            }
            // The next stream in turn with a frame waiting; else wait for any.
            let ready = (0..n).map(|k| (turn + k) % n).find_map(|i| {
                open[i]
                    .then(|| self.inputs[i].try_recv())
                    .flatten()
                    .map(|r| (i, r))
            });
            let (i, received) = match ready {
                Some(r) => r,
                None => {
                    if control.has_error() {
                        return Ok(());
                    }
                    let waiting: Vec<usize> = (0..n).filter(|&i| open[i]).collect();
                    let inputs: Vec<&Input<Frame>> =
                        waiting.iter().map(|&i| &self.inputs[i]).collect();
                    match graph::recv_any(&inputs, Duration::from_millis(50)) {
                        Some((k, r)) => (waiting[k], r),
                        None => continue,
                    }
                }
            };
            let work = match received {
                Received::Item(frame) => {
                    turn = (i + 1) % n;
                    Work {
                        seq: next_seq,
                        frame,
                        stream_ended: false,
                    }
                }
                Received::Eos | Received::Disconnected => {
                    open[i] = false;
                    Work {
                        seq: next_seq,
                        frame: end_mark(&self.streams[i]),
                        stream_ended: true,
                    }
                }
            };
            if self.out.send(work, control) == Sent::Closed {
                return Ok(());
            }
            next_seq += 1;
        }
        Ok(())
    }
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
    /// Seconds between health reports.
    pub interval_s: f64,
    pub frames_decoded: u64,
    pub frames_reported: u64,
    pub frames_dropped: u64,
    pub faces: u64,
    /// Resident memory of the process (Linux), MiB.
    pub rss_mb: Option<f64>,
    /// Queue name, items waiting, capacity.
    pub queues: Vec<(String, usize, usize)>,
}

impl Health {
    /// One `key=value` line, easy to read and to parse.
    pub fn line(&self) -> String {
        let queues: Vec<String> = self
            .queues
            .iter()
            .map(|(name, depth, cap)| format!("{name}:{depth}/{cap}"))
            .collect();
        // Whole seconds unless lines come more often than that.
        let t = if self.interval_s < 1.0 {
            format!("{:.1}", self.seconds)
        } else {
            format!("{:.0}", self.seconds)
        };
        format!(
            "stats: t={t}s decoded={} reported={} dropped={} faces={} rss_mb={} queues={}",
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

/// The frame that stands for a stream's end in the order: no pixels, no faces.
fn end_mark(stream: &Arc<crate::sources::StreamInfo>) -> Frame {
    Frame {
        stream: stream.clone(),
        index: u64::MAX,
        pts_ms: 0.0,
        width: 0,
        height: 0,
        rgb: Vec::new(),
        gap_before_ms: None,
    }
}

/// One detect worker: takes numbered frames from the shared queue, finds their faces.
/// `keep_pixels`: a later stage reads the frame's pixels; otherwise they are released here.
fn detect_worker(
    detector: &mut dyn FrameDetector,
    input: &Input<Work>,
    keep_pixels: bool,
    out: &Output<Detected>,
    control: &Control,
) -> Result<(), String> {
    loop {
        let Work {
            seq,
            mut frame,
            stream_ended,
        } = match input.recv(control) {
            Received::Item(item) => item,
            Received::Eos | Received::Disconnected => return Ok(()),
        };
        if stream_ended {
            let mark = Detected {
                seq,
                frame,
                faces: Vec::new(),
                predictions: Vec::new(),
                stream_ended,
            };
            if out.send(mark, control) == Sent::Closed {
                return Ok(());
            }
            continue;
        }
        let faces = detector
            .detect_frame(&frame.rgb, frame.width as usize, frame.height as usize)
            .map_err(|e| format!("stream {} frame {}: {e}", frame.stream.id, frame.index))?;
        let faces: Vec<FaceRecord> = faces.into_iter().map(FaceRecord::detection).collect();
        // Without faces, no later stage reads the pixels either.
        if !keep_pixels || faces.is_empty() {
            frame.rgb = Vec::new();
        }
        let predictions = vec![None; faces.len()];
        let detected = Detected {
            seq,
            frame,
            faces,
            predictions,
            stream_ended: false,
        };
        if out.send(detected, control) == Sent::Closed {
            return Ok(());
        }
    }
}

/// Adds age, gender and race to the faces of frames from `upstream` detect workers. Faces of
/// several frames share one model call: up to `max_batch` faces, waiting at most `max_wait` for
/// more. Ends after every upstream worker's end-of-stream and forwards one.
fn attributes_stage(
    model: &mut AttributeModel,
    config: &AttributesConfig,
    window: &Window,
    (input, upstream): (&Input<Detected>, usize),
    out: &Output<Detected>,
    control: &Control,
) -> Result<(), String> {
    let mut eos_seen = 0usize;
    let max_wait = Duration::from_millis(config.max_wait_ms);
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
        // Gather until the batch is full, the wait is over, or the window is: then the frames held
        // here are what the writer waits for, and waiting longer only stalls the run.
        while !ended && faces > 0 && faces < config.max_batch && !window.is_full() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match input.recv_until(deadline.min(now + Duration::from_millis(5)), control) {
                None => continue,
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
            let images: Vec<FacesInImage<'_>> = batch
                .iter()
                .map(|d| FacesInImage {
                    rgb: &d.frame.rgb,
                    width: d.frame.width as usize,
                    height: d.frame.height as usize,
                    faces: d.faces.iter().map(|f| &f.face).collect(),
                })
                .collect();
            let predictions = model
                .predict_faces(&images)
                .map_err(|e| format!("frame {}: {e}", batch[0].frame.index))?;
            drop(images);
            // Read out later, through each face's track.
            for (d, predicted) in batch.iter_mut().zip(predictions) {
                d.predictions = predicted;
            }
        }
        // No later stage reads the pixels: release them before the frame waits to be written.
        for d in &mut batch {
            d.frame.rgb = Vec::new();
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
    sources: Vec<Arc<SourceCounters>>,
    sink: Arc<Mutex<SinkCounts>>,
    probes: Vec<graph::QueueProbe>,
}

/// What the JSON writer has done so far, read by health reports and the summary.
#[derive(Debug, Clone, Default)]
struct SinkCounts {
    /// Per stream (by index): records written, their faces, frames not written (output closed).
    reported: Vec<u64>,
    faces: Vec<u64>,
    not_written: Vec<u64>,
    /// Frames held back for order now, the most at once, and the window that bounds them.
    reorder_pending: usize,
    reorder_peak: usize,
    reorder_window: usize,
    output_closed: bool,
    /// People (confirmed tracks) per stream, at the end.
    people: Vec<u64>,
}

/// One stream's counters in [`SinkCounts`].
struct StreamCounts<'a> {
    reported: &'a mut u64,
    faces: &'a mut u64,
    not_written: &'a mut u64,
}

impl SinkCounts {
    fn new(streams: usize, reorder_window: usize) -> Self {
        Self {
            reported: vec![0; streams],
            faces: vec![0; streams],
            not_written: vec![0; streams],
            reorder_window,
            ..Self::default()
        }
    }

    fn count(&mut self, stream: usize) -> StreamCounts<'_> {
        let grow = |v: &mut Vec<u64>| {
            if v.len() <= stream {
                v.resize(stream + 1, 0);
            }
        };
        grow(&mut self.reported);
        grow(&mut self.faces);
        grow(&mut self.not_written);
        StreamCounts {
            reported: &mut self.reported[stream],
            faces: &mut self.faces[stream],
            not_written: &mut self.not_written[stream],
        }
    }
}

impl Monitor {
    fn run(&self, mut report: HealthReport, done: &AtomicBool) {
        let mut next = self.started.checked_add(self.every);
        while !done.load(Ordering::SeqCst) {
            let Some(due) = next else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let now = Instant::now();
            if now < due {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
            // Catch up without a burst of lines if a report was late.
            let mut due = due;
            while due <= Instant::now() {
                match due.checked_add(self.every) {
                    Some(later) => due = later,
                    None => break,
                }
            }
            next = (due > Instant::now()).then_some(due);
            let sink = self.sink.lock().map(|n| n.clone()).unwrap_or_default();
            let (reported, faces) = (sink.reported.iter().sum(), sink.faces.iter().sum());
            let mut queues: Vec<(String, usize, usize)> = self
                .probes
                .iter()
                .map(|p| (p.name.to_string(), p.depth(), p.capacity))
                .collect();
            queues.push(("reorder".into(), sink.reorder_pending, sink.reorder_window));
            report(&Health {
                seconds: self.started.elapsed().as_secs_f64(),
                interval_s: self.every.as_secs_f64(),
                frames_decoded: self
                    .sources
                    .iter()
                    .map(|c| c.decoded.load(Ordering::Relaxed))
                    .sum(),
                frames_reported: reported,
                frames_dropped: self
                    .sources
                    .iter()
                    .map(|c| c.dropped_behind.load(Ordering::Relaxed))
                    .sum(),
                faces,
                rss_mb: resident_memory_mb(),
                queues,
            });
        }
    }
}

/// Frames between the source queue and the JSON writer: queued between stages, and held back
/// by the writer to restore decode order.
impl PipelineConfig {
    pub fn frames_in_flight(&self, workers: usize) -> usize {
        if self.queue_frames > 0 {
            self.queue_frames
        } else {
            (2 * workers).max(8)
        }
    }
}

/// How a stream's source ended: its counts, its error if it failed, and when (seconds into the
/// run).
type StreamOutcome = (SourceStats, Option<String>, f64);

/// The stages of a run, built and not yet started. [`run`] builds them from the configuration;
/// tests can stand in their own detectors.
pub struct BuiltStages {
    pub sources: Vec<Source>,
    pub detectors: Vec<Box<dyn FrameDetector>>,
    pub attributes: Option<(AttributeModel, AgeGrouping)>,
    pub writer: JsonLinesWriter,
}

/// Builds every stage, then runs the graph until every stream has ended, a stop request or the
/// first error.
pub fn run(
    config: &PipelineConfig,
    control: Control,
    hooks: RunHooks,
) -> Result<RunSummary, PipelineError> {
    config.validate()?;
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
    let attributes = config.attributes.load()?;
    let writer = JsonLinesWriter::create(&config.json)?;
    let stages = BuiltStages {
        sources,
        detectors,
        attributes,
        writer,
    };
    run_stages(config, stages, control, hooks)
}

/// Runs built stages: sources → scheduler → detect workers → (attributes) → JSON, each stream's
/// records in its decode order.
pub fn run_stages(
    config: &PipelineConfig,
    stages: BuiltStages,
    control: Control,
    hooks: RunHooks,
) -> Result<RunSummary, PipelineError> {
    let RunHooks { progress, health } = hooks;
    let BuiltStages {
        sources,
        detectors,
        attributes: attribute_model,
        writer,
    } = stages;
    let infos: Vec<Arc<crate::sources::StreamInfo>> = sources.iter().map(|s| s.info()).collect();
    let counters: Vec<Arc<SourceCounters>> = sources.iter().map(|s| s.counters()).collect();
    let workers = detectors.len().max(1);
    let in_flight = config.frames_in_flight(workers);
    // Every worker may hold a frame while the writer holds back the others.
    let window = Arc::new(Window::new(in_flight + workers));
    let outcomes: Arc<Mutex<Vec<StreamOutcome>>> =
        Arc::new(Mutex::new(vec![Default::default(); sources.len()]));
    let sink_counts = Arc::new(Mutex::new(SinkCounts::new(
        sources.len(),
        in_flight + workers,
    )));
    let started = Instant::now();

    let mut graph = Graph::new(control.clone());
    let mut probes = Vec::new();
    let mut source_queues = Vec::new();
    for (index, source) in sources.into_iter().enumerate() {
        let info = source.info();
        let when_full = if info.live {
            WhenFull::DropOldest
        } else {
            WhenFull::Block
        };
        let queue = config.streams()[index].1.queue_frames;
        let name = if infos.len() == 1 {
            "frames".to_string()
        } else {
            format!("frames-{}", info.id)
        };
        let (frames_out, frames_in) = graph::channel::<Frame>(name, queue, when_full);
        probes.push(frames_in.probe());
        source_queues.push(frames_in);
        let outcomes = outcomes.clone();
        graph.add_stage(format!("source-{}", info.id), move |c| {
            let (stats, result) = source.run(&frames_out, c);
            // End of stream after a failure too: this stream's frames decoded before it are still
            // detected and written, the failure is reported after them, the other streams go on.
            frames_out.send_eos(c);
            if let Ok(mut slot) = outcomes.lock()
                && let Some(entry) = slot.get_mut(index)
            {
                *entry = (
                    stats,
                    result.err().map(|e| e.to_string()),
                    started.elapsed().as_secs_f64(),
                );
            }
            Ok(())
        });
    }
    let (work_out, work_in) = graph::channel::<Work>("work", workers, WhenFull::Block);
    let scheduler = Scheduler {
        inputs: source_queues,
        streams: infos.clone(),
        out: work_out,
        workers,
        window: window.clone(),
    };
    graph.add_stage("schedule", move |c| scheduler.run(c));
    let (detected_out, detected_in) =
        graph::channel::<Detected>("detected", in_flight, WhenFull::Block);
    probes.push(detected_in.probe());
    let keep_pixels = attribute_model.is_some();
    for (w, mut detector) in detectors.into_iter().enumerate() {
        let input = work_in.clone();
        let out = detected_out.clone();
        graph.add_stage(format!("detect-{w}"), move |c| {
            let result = detect_worker(&mut *detector, &input, keep_pixels, &out, c);
            // Each worker ends its share of the stream; the next stage waits for all of them.
            out.send_eos(c);
            result
        });
    }
    drop(work_in);
    drop(detected_out);
    // With attributes, the sink hears one end-of-stream (from that stage), else one per worker.
    let people = People::new(
        config.track.clone(),
        attribute_model
            .as_ref()
            .map(|(model, grouping)| (model.spec().clone(), *grouping)),
    );
    let (to_sink, sink_upstream) = match attribute_model {
        Some((mut model, _)) => {
            let (annotated_out, annotated_in) =
                graph::channel::<Detected>("annotated", in_flight, WhenFull::Block);
            probes.push(annotated_in.probe());
            let attr_config = config.attributes.clone();
            let window = window.clone();
            graph.add_stage("attributes", move |c| {
                let result = attributes_stage(
                    &mut model,
                    &attr_config,
                    &window,
                    (&detected_in, workers),
                    &annotated_out,
                    c,
                );
                annotated_out.send_eos(c);
                result
            });
            (annotated_in, 1)
        }
        None => (detected_in, workers),
    };
    let sink = JsonStage {
        input: to_sink,
        upstream: sink_upstream,
        people,
        writer,
        window,
        counts: sink_counts.clone(),
        progress,
        started,
    };
    graph.add_stage("json", move |c| sink.run(c));
    let outcome = match health {
        Some(report) if config.stats_interval_s > 0.0 => {
            let monitor = Monitor {
                // Validated: 0.1 s to a day.
                every: Duration::try_from_secs_f64(config.stats_interval_s)
                    .unwrap_or(Duration::from_secs(86_400)),
                started,
                sources: counters,
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
    let outcomes = outcomes.lock().map(|s| s.clone()).unwrap_or_default();
    let mut sink = sink_counts.lock().map(|n| n.clone()).unwrap_or_default();
    outcome.map_err(PipelineError::Stage)?;
    // Nothing came from any stream and one failed: the failure is the whole story, in one line.
    if outcomes.iter().all(|(stats, _, _)| stats.decoded == 0)
        && let Some(message) = outcomes.iter().find_map(|(_, f, _)| f.clone())
    {
        return Err(PipelineError::Input(message));
    }
    let streams = infos
        .iter()
        .zip(outcomes)
        .map(|(info, (stats, failure, ended_s))| {
            let c = sink.count(info.index);
            StreamSummary {
                stream: info.id.clone(),
                source: info.uri.clone(),
                frames_decoded: stats.decoded,
                frames_reported: *c.reported,
                frames_dropped: stats.dropped_behind,
                frames_not_written: *c.not_written,
                reconnects: stats.reconnects,
                gap_seconds: stats.gap_ms / 1e3,
                faces: *c.faces,
                people: sink.people.get(info.index).copied().unwrap_or(0),
                seconds: ended_s,
                failure,
            }
        })
        .collect();
    Ok(RunSummary {
        streams,
        seconds: started.elapsed().as_secs_f64(),
        interrupted: control.stop_requested() && !sink.output_closed,
        output_closed: sink.output_closed,
        peak_reorder_frames: sink.reorder_peak,
    })
}

/// The JSON Lines writer: restores decode order, writes one record per frame, flushes at least
/// every second (also while no frame comes), and keeps the [`Window`] moving.
struct JsonStage {
    input: Input<Detected>,
    upstream: usize,
    /// Track ids, steady attributes and one record per person, over frames in decode order.
    people: People,
    writer: JsonLinesWriter,
    window: Arc<Window>,
    counts: Arc<Mutex<SinkCounts>>,
    progress: Option<Progress>,
    started: Instant,
}

/// How often the writer looks at its buffer while no frame comes.
const IDLE_FLUSH_CHECK: Duration = Duration::from_millis(250);

impl JsonStage {
    /// The reader of the output went away: stop the run, keep draining. Returns true (closed).
    fn output_closed(&self, control: &Control) -> bool {
        control.request_stop();
        if let Ok(mut n) = self.counts.lock() {
            n.output_closed = true;
        }
        true
    }

    fn run(mut self, control: &Control) -> Result<(), String> {
        let result = self.write_all(control);
        // Flush whatever ended the run: complete lines already produced are never lost.
        let closed = self.counts.lock().map(|c| c.output_closed).unwrap_or(false);
        match self.writer.flush() {
            Err(e) if !(closed || e.is_broken_pipe()) => result.and(Err(e.to_string())),
            _ => result,
        }
    }

    fn write_all(&mut self, control: &Control) -> Result<(), String> {
        let mut last_progress = Instant::now();
        let mut reorder = Reorder {
            pending: BTreeMap::new(),
            next_seq: 0,
        };
        let mut eos_seen = 0usize;
        let mut closed = false;
        loop {
            let received = self
                .input
                .recv_until(Instant::now() + IDLE_FLUSH_CHECK, control);
            let done = match received {
                None => {
                    if !closed {
                        match self.writer.flush_if_due() {
                            Ok(()) => {}
                            Err(e) if e.is_broken_pipe() => closed = self.output_closed(control),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    continue;
                }
                Some(Received::Item(d)) => {
                    reorder.push(d);
                    false
                }
                Some(Received::Eos) => {
                    eos_seen += 1;
                    eos_seen >= self.upstream
                }
                Some(Received::Disconnected) => true,
            };
            let pending_before = reorder.pending.len();
            while let Some(d) = reorder.pop(done) {
                self.window.advance_to(reorder.next_seq);
                debug_assert!(
                    d.frame.rgb.is_empty(),
                    "frame {} reached the writer with its pixels",
                    d.frame.index
                );
                let stream = d.frame.stream.index;
                if d.stream_ended {
                    // The stream's people still in view end with it.
                    if !closed {
                        for person in self.people.finish_stream(stream) {
                            match self.writer.write(&person) {
                                Ok(()) => {}
                                Err(e) if e.is_broken_pipe() => {
                                    closed = self.output_closed(control);
                                    break;
                                }
                                Err(e) => return Err(e.to_string()),
                            }
                        }
                    }
                    continue;
                }
                if closed {
                    // The reader is gone: keep draining so no stage blocks, write nothing.
                    if let Ok(mut n) = self.counts.lock() {
                        *n.count(stream).not_written += 1;
                    }
                    continue;
                }
                let mut faces_in_frame = d.faces;
                let ended = self.people.frame(
                    &d.frame.stream,
                    d.frame.index,
                    d.frame.pts_ms,
                    &mut faces_in_frame,
                    &d.predictions,
                );
                let faces = faces_in_frame.len() as u64;
                let record = FrameRecord {
                    kind: RecordKind::Frame,
                    stream: d.frame.stream.id.clone(),
                    source: d.frame.stream.uri.clone(),
                    frame: d.frame.index,
                    pts_ms: d.frame.pts_ms,
                    width: d.frame.width,
                    height: d.frame.height,
                    gap_before_ms: d.frame.gap_before_ms,
                    faces: faces_in_frame,
                };
                let written = self.writer.write(&record).and_then(|()| {
                    ended
                        .iter()
                        .try_for_each(|person| self.writer.write(person))
                });
                match written {
                    Ok(()) => {}
                    Err(e) if e.is_broken_pipe() => {
                        closed = self.output_closed(control);
                        if let Ok(mut n) = self.counts.lock() {
                            *n.count(stream).not_written += 1;
                        }
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                }
                if let Ok(mut n) = self.counts.lock() {
                    let c = n.count(stream);
                    *c.reported += 1;
                    *c.faces += faces;
                    let reported = n.reported.iter().sum();
                    if let Some(p) = self.progress.as_mut()
                        && last_progress.elapsed() >= Duration::from_millis(500)
                    {
                        p(reported, self.started.elapsed());
                        last_progress = Instant::now();
                    }
                }
            }
            if let Ok(mut n) = self.counts.lock() {
                n.reorder_pending = reorder.pending.len();
                n.reorder_peak = n.reorder_peak.max(pending_before);
            }
            if done {
                // The people still in view when the run ends.
                if !closed {
                    for person in self.people.finish() {
                        match self.writer.write(&person) {
                            Ok(()) => {}
                            Err(e) if e.is_broken_pipe() => {
                                closed = self.output_closed(control);
                                break;
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                }
                if let Ok(mut n) = self.counts.lock() {
                    let streams = n.reported.len();
                    n.people = (0..streams).map(|i| self.people.people(i)).collect();
                }
                let _ = closed;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(seq: u64) -> Detected {
        let stream = Arc::new(crate::sources::StreamInfo {
            id: "0".into(),
            index: 0,
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
            predictions: Vec::new(),
            stream_ended: false,
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

    /// One slow frame must not let the other worker pull the rest of the file into the writer's
    /// reorder buffer: the window holds it to a few frames, and every frame is still written.
    #[test]
    fn one_slow_frame_keeps_the_reorder_buffer_within_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("out.jsonl");
        let mut config = PipelineConfig::default();
        config.source.input = "testsrc://ball?frames=120&size=64x48".into();
        config.json.path = json.display().to_string();
        config.queue_frames = 4;
        config.attributes.enabled = false;
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let detectors: Vec<Box<dyn FrameDetector>> = (0..2)
            .map(|_| {
                Box::new(SlowOnce {
                    calls: calls.clone(),
                    slow_call: 5,
                }) as Box<dyn FrameDetector>
            })
            .collect();
        let stages = BuiltStages {
            sources: vec![Source::build(&config.source, "0", 0).unwrap()],
            detectors,
            attributes: None,
            writer: JsonLinesWriter::create(&config.json).unwrap(),
        };
        let summary = run_stages(&config, stages, Control::new(), RunHooks::default()).unwrap();
        assert_eq!(summary.streams[0].frames_decoded, 120);
        assert_eq!(summary.streams[0].frames_reported, 120);
        let window = config.frames_in_flight(2) + 2;
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

    /// Every key a pipeline file may hold, as `section.key` (`.key` at the top level).
    fn every_key() -> Vec<String> {
        let mut config = PipelineConfig::default();
        // Options appear in the written file only when set.
        config.source.live = Some(true);
        config.source.reconnect_attempts = Some(1);
        config.detect.models_dir = Some("m".into());
        config.attributes.model = Some("m".into());
        config.source.name = Some("n".into());
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
