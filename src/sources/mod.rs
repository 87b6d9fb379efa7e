//! Video sources through GStreamer: files and URIs (uridecodebin), RTSP cameras, v4l2 webcams and a
//! test pattern. Frames reach the graph as packed RGB with their timestamps.
//!
//! Files never drop a frame: when the graph falls behind, the full channel blocks decoding. Live
//! sources (RTSP, webcams, a live test pattern) drop the oldest queued frame instead, and count it.
//!
//! Live cameras fail: one that errors, ends its stream or stalls (no frame within
//! `stall_timeout_ms`, with or without end-of-stream) is rebuilt and reconnected with exponential
//! backoff. Frame numbers and timestamps continue across the gap, and the gap is reported.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use serde::{Deserialize, Serialize};

use crate::graph::{Control, Output, Sent};

/// Errors name the input as people may see it: its password masked ([`shown`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot initialise GStreamer: {0}")]
    Init(String),
    #[error("{input}: no such file")]
    NotFound { input: String },
    #[error("{input}: not a regular file")]
    NotAFile { input: String },
    #[error("{input}: file is empty")]
    EmptyFile { input: String },
    #[error("{input}: unsupported URI scheme '{scheme}' (no GStreamer source handles it)")]
    UnknownScheme { input: String, scheme: String },
    #[error("{input}: bad test pattern spec: {message}")]
    BadTestSpec { input: String, message: String },
    #[error("{input}: cannot build GStreamer pipeline: {message}")]
    Build { input: String, message: String },
    #[error("{input}: {message}")]
    Stream { input: String, message: String },
}

/// Settings of a source; `input` is required, the rest have defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// The stream's id in records and summaries (default: its position, "0", "1", …).
    pub name: Option<String>,
    /// File path, URI (file://, http://, rtsp://, v4l2:///dev/videoN) or test pattern (testsrc://…).
    pub input: String,
    /// RTSP over TCP instead of UDP (cameras behind NAT or lossy links).
    pub rtsp_tcp: bool,
    /// RTSP jitter-buffer latency, milliseconds.
    pub rtsp_latency_ms: u32,
    /// Treat the source as live (drop oldest frames when behind) even if it is not RTSP/v4l2.
    pub live: Option<bool>,
    /// Frames queued between the source and the next stage.
    pub queue_frames: usize,
    /// Stop after this many decoded frames (0: no limit).
    pub max_frames: u64,
    /// Live cameras: no frame for this long counts as a stall, and the camera is reconnected
    /// (the first frame of a connection may take twice as long).
    pub stall_timeout_ms: u64,
    /// Attempts to make the first connection to a live camera before giving up.
    pub connect_attempts: u32,
    /// Reconnection attempts in a row after a live camera that was streaming fails; absent:
    /// forever.
    pub reconnect_attempts: Option<u32>,
    /// First wait before reconnecting; it doubles with every failed attempt.
    pub reconnect_backoff_ms: u64,
    /// Longest wait between reconnection attempts.
    pub reconnect_backoff_max_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            name: None,
            input: String::new(),
            rtsp_tcp: false,
            rtsp_latency_ms: 200,
            live: None,
            queue_frames: 8,
            max_frames: 0,
            stall_timeout_ms: 5000,
            connect_attempts: 3,
            reconnect_attempts: None,
            reconnect_backoff_ms: 500,
            reconnect_backoff_max_ms: 30_000,
        }
    }
}

impl SourceConfig {
    /// Every numeric key within its range (see [`crate::limits`]).
    pub fn validate(&self) -> Result<(), crate::limits::RangeError> {
        use crate::limits::{MAX_QUEUE_FRAMES, MAX_WAIT_MS, Setting};
        Setting::flag("rtsp_latency_ms", "--rtsp-latency-ms").check(
            self.rtsp_latency_ms,
            0,
            60_000,
            "ms",
        )?;
        Setting::key("queue_frames").check(self.queue_frames, 1, MAX_QUEUE_FRAMES, "frames")?;
        Setting::flag("stall_timeout_ms", "--stall-timeout-ms").check(
            self.stall_timeout_ms,
            100,
            MAX_WAIT_MS,
            "ms",
        )?;
        Setting::key("connect_attempts").check(self.connect_attempts, 1, 1000, "")?;
        Setting::key("reconnect_backoff_ms").check(
            self.reconnect_backoff_ms,
            1,
            MAX_WAIT_MS,
            "ms",
        )?;
        Setting::key("reconnect_backoff_max_ms").check(
            self.reconnect_backoff_max_ms,
            self.reconnect_backoff_ms,
            MAX_WAIT_MS,
            "ms (at least reconnect_backoff_ms)",
        )?;
        Ok(())
    }
}

/// A decoded frame, packed RGB8 (`width * height * 3` bytes).
#[derive(Debug, Clone)]
pub struct Frame {
    pub stream: Arc<StreamInfo>,
    /// Decode order within the stream, from 0.
    pub index: u64,
    /// Presentation time in milliseconds from the start of the stream.
    pub pts_ms: f64,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    /// Set on the first frame after a live source reconnected: how long no frame came.
    pub gap_before_ms: Option<f64>,
}

/// Identity of a stream, shared by its frames.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Stream id as written in the metadata: its name, else its position ("0", "1", …).
    pub id: String,
    /// Position among the run's streams, from 0.
    pub index: usize,
    /// The URI (or test spec) the stream was opened from, its password masked.
    pub uri: String,
    pub live: bool,
}

/// Frame counts of one stream, for the end summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceStats {
    pub decoded: u64,
    pub dropped_behind: u64,
    /// Successful reconnections of a live source.
    pub reconnects: u32,
    /// Time without frames across all reconnections, milliseconds.
    pub gap_ms: f64,
}

/// Live frame counts of a running source, read by health reports while it runs.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub decoded: AtomicU64,
    pub dropped_behind: AtomicU64,
    pub reconnects: AtomicU64,
    /// Frames a file will give (its duration over its frame interval, or the frame limit when
    /// lower); 0 while unknown and for live sources. For progress with time left.
    pub expected_frames: AtomicU64,
}

/// Where the frames come from, parsed from the `input` string.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// A URI that uridecodebin opens (file://, http(s)://, rtsp://, v4l2://…).
    Uri { uri: String, live: bool },
    /// videotestsrc.
    TestPattern(TestPattern),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TestPattern {
    pub pattern: String,
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub live: bool,
    /// Fail with a stream error after this many frames (to try error handling end to end).
    pub error_after: Option<u32>,
}

pub fn init_gstreamer() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::Init(e.to_string()))
}

/// The names videotestsrc accepts for its `pattern` property (smpte, ball, snow, …).
pub fn test_patterns() -> Result<Vec<String>, SourceError> {
    init_gstreamer()?;
    let src = gst::ElementFactory::make("videotestsrc")
        .build()
        .map_err(|e| SourceError::Init(format!("videotestsrc: {e}")))?;
    let nicks = src
        .find_property("pattern")
        .and_then(|pspec| gst::glib::EnumClass::with_type(pspec.value_type()))
        .map(|class| {
            class
                .values()
                .iter()
                .map(|v| v.nick().to_string())
                .collect()
        })
        .unwrap_or_default();
    Ok(nicks)
}

/// Parses `testsrc://PATTERN?frames=N&size=WxH&fps=F&live=true` (all parts optional).
fn parse_test_pattern(input: &str, rest: &str) -> Result<TestPattern, SourceError> {
    let bad = |message: String| SourceError::BadTestSpec {
        input: shown(input),
        message,
    };
    // Said without quoting it: what comes before an '@' may be a password.
    if rest.contains('@') {
        return Err(bad("a test pattern takes no user or password".into()));
    }
    let (pattern, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut spec = TestPattern {
        pattern: if pattern.is_empty() {
            "smpte".into()
        } else {
            pattern.into()
        },
        frames: 100,
        width: 640,
        height: 480,
        fps: 25,
        live: false,
        error_after: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("'{pair}' is not key=value")))?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| bad(format!("{key}={v} is not a whole number")))
        };
        match key {
            "frames" => spec.frames = number(value)?,
            "fps" => {
                spec.fps = number(value)?;
                if !(1..=1000).contains(&spec.fps) {
                    return Err(bad(format!("fps={value} must be from 1 to 1000")));
                }
            }
            "live" => {
                spec.live = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("live={value} must be true or false"))),
                }
            }
            "error-after" => {
                let n = number(value)?;
                if n == 0 {
                    return Err(bad("error-after=0: must be at least 1".into()));
                }
                spec.error_after = Some(n);
            }
            "size" => {
                let (w, h) = value
                    .split_once('x')
                    .ok_or_else(|| bad(format!("size={value} is not WxH")))?;
                spec.width = number(w)?;
                spec.height = number(h)?;
                // Up to 8K UHD: a bigger frame is gigabytes across the queues.
                let pixels = u64::from(spec.width) * u64::from(spec.height);
                if spec.width == 0
                    || spec.height == 0
                    || spec.width.max(spec.height) > 7680
                    || pixels > 7680 * 4320
                {
                    return Err(bad(format!(
                        "size={value} is out of range (sides up to 7680, at most 7680x4320 pixels)"
                    )));
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown key '{other}' (frames, size, fps, live, error-after)"
                )));
            }
        }
    }
    Ok(spec)
}

/// Classifies `input`: a test pattern, a URI, or a local file path (checked here so a missing or
/// empty file gets a clear error before GStreamer is involved).
pub fn parse_input(input: &str, live_override: Option<bool>) -> Result<InputKind, SourceError> {
    if let Some(rest) = input.strip_prefix("testsrc://") {
        let mut spec = parse_test_pattern(input, rest)?;
        let patterns = test_patterns()?;
        if !patterns.contains(&spec.pattern) {
            return Err(SourceError::BadTestSpec {
                input: shown(input),
                message: format!(
                    "unknown pattern '{}' (patterns: {})",
                    spec.pattern,
                    patterns.join(", ")
                ),
            });
        }
        if let Some(live) = live_override {
            spec.live = live;
        }
        return Ok(InputKind::TestPattern(spec));
    }
    if let Some((scheme, _)) = input.split_once("://")
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            let path = gst::glib::filename_from_uri(input)
                .map(|(p, _)| p)
                .map_err(|e| build_err(input, e))?;
            check_file(input, &path)?;
        }
        let supported = init_gstreamer().is_ok()
            && gst::Element::make_from_uri(gst::URIType::Src, input, None).is_ok();
        if !supported {
            return Err(SourceError::UnknownScheme {
                input: shown(input),
                scheme,
            });
        }
        let live = live_override.unwrap_or(matches!(
            scheme.as_str(),
            "rtsp" | "rtsps" | "rtspt" | "v4l2"
        ));
        return Ok(InputKind::Uri {
            uri: input.to_string(),
            live,
        });
    }
    let path = Path::new(input);
    check_file(input, path)?;
    // Absolute but not canonical: symlinks stay as the user named them (as `detect` does).
    let absolute = std::path::absolute(path).map_err(|e| build_err(input, e))?;
    let uri = gst::glib::filename_to_uri(&absolute, None).map_err(|e| build_err(input, e))?;
    Ok(InputKind::Uri {
        uri: uri.to_string(),
        live: live_override.unwrap_or(false),
    })
}

fn check_file(input: &str, path: &Path) -> Result<(), SourceError> {
    let meta = std::fs::metadata(path).map_err(|_| SourceError::NotFound {
        input: shown(input),
    })?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile {
            input: shown(input),
        });
    }
    if meta.len() == 0 {
        return Err(SourceError::EmptyFile {
            input: shown(input),
        });
    }
    Ok(())
}

/// A built (not yet started) GStreamer source.
pub struct Source {
    /// The input as given: what GStreamer opens. Never printed: see `shown`.
    input: String,
    /// The input as people may see it in log and error lines, its password masked.
    shown: String,
    info: Arc<StreamInfo>,
    kind: InputKind,
    config: SourceConfig,
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    /// Live cameras (not files or test patterns) are reconnected when they fail or stall.
    reconnectable: bool,
    counters: Arc<SourceCounters>,
    /// The video type decodebin said it has no decoder for, to name it in the error that follows.
    missing_decoder: std::sync::Mutex<Option<String>>,
}

/// `input` as errors and log lines name it: its password masked.
pub fn shown(input: &str) -> String {
    crate::redact::url(input).into_owned()
}

/// A set-up error; its message may quote the input (GLib's URI errors do): masked too.
fn build_err(input: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Build {
        input: shown(input),
        message: crate::redact::mentioning(&e.to_string(), input).into_owned(),
    }
}

/// How one connection of a source ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ended {
    EndOfStream,
    /// Stop request, frame limit reached, or nobody downstream any more.
    Finished,
    /// No frame within the stall timeout; `streaming`: frames had come on this connection.
    Stalled {
        waited: Duration,
        streaming: bool,
    },
}

/// Wait before reconnection attempt `attempt` (1, 2, …): `initial`, doubling, at most `max`.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    initial.saturating_mul(1u32 << doublings).min(max)
}

/// Keeps a live stream's timestamps increasing across reconnections: each new connection's
/// running time starts again at 0, so it is shifted onto wall-clock time since the first frame.
#[derive(Debug, Default)]
struct PtsClock {
    /// When the stream's first frame came, and its timestamp.
    first_frame: Option<(Instant, f64)>,
    offset_ms: f64,
    /// The next frame starts a new connection.
    rebase: bool,
    last_ms: Option<f64>,
    /// Live sources: the first frame is at 0 (a camera's running time starts when the pipeline
    /// does, a frame interval or more before its first frame). Files keep their own timeline.
    from_first_frame: bool,
}

impl PtsClock {
    fn place(&mut self, raw_ms: f64, now: Instant) -> f64 {
        let (first_at, first_ms) = *self.first_frame.get_or_insert((now, raw_ms));
        if std::mem::take(&mut self.rebase) {
            self.offset_ms = first_ms + now.duration_since(first_at).as_secs_f64() * 1e3 - raw_ms;
        }
        let mut pts_ms = raw_ms + self.offset_ms;
        if self.from_first_frame {
            pts_ms -= first_ms;
        }
        if self.offset_ms != 0.0
            && let Some(last) = self.last_ms
            && pts_ms <= last
        {
            pts_ms = last + 1.0;
        }
        self.last_ms = Some(pts_ms);
        pts_ms
    }
}

/// Frames of the current connection.
#[derive(Debug, Default)]
struct Connection {
    frames: u64,
    last_pts_ms: Option<f64>,
}

/// Where a source stands across connections.
#[derive(Debug)]
struct Session {
    stats: SourceStats,
    clock: PtsClock,
    last_frame_at: Option<Instant>,
    /// Set while reconnecting: since when no frame came.
    gap_since: Option<Instant>,
    /// Failed attempts in a row (reset by a frame).
    failures: u32,
    /// Caps and format of the current connection.
    video_info: Option<(gst::Caps, gst_video::VideoInfo)>,
}

/// Builds the GStreamer pipeline of `kind`: source → (decode) → videoconvert → RGB appsink.
fn build_pipeline(
    input: &str,
    kind: &InputKind,
    config: &SourceConfig,
    stream_id: &str,
) -> Result<(gst::Pipeline, gst_app::AppSink, String, bool), SourceError> {
    let pipeline = gst::Pipeline::with_name(&format!("source-{stream_id}"));
    let convert = gst::ElementFactory::make("videoconvert")
        .build()
        .map_err(|e| build_err(input, e))?;
    let rgb_caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .build();
    let appsink = gst_app::AppSink::builder()
        .caps(&rgb_caps)
        .sync(false)
        .max_buffers(2)
        .drop(false)
        .build();
    pipeline
        .add_many([&convert, appsink.upcast_ref()])
        .map_err(|e| build_err(input, e))?;
    convert.link(&appsink).map_err(|e| build_err(input, e))?;

    let (uri, live) = match kind {
        InputKind::TestPattern(spec) => {
            let src = gst::ElementFactory::make("videotestsrc")
                .property("is-live", spec.live)
                // frames=0: endless (soak runs).
                .property(
                    "num-buffers",
                    if spec.frames == 0 {
                        -1
                    } else {
                        i32::try_from(spec.frames).unwrap_or(i32::MAX)
                    },
                )
                .property_from_str("pattern", &spec.pattern)
                .build()
                .map_err(|e| build_err(input, e))?;
            let caps = gst_video::VideoCapsBuilder::new()
                .width(spec.width as i32)
                .height(spec.height as i32)
                .framerate(gst::Fraction::new(spec.fps as i32, 1))
                .build();
            let filter = gst::ElementFactory::make("capsfilter")
                .property("caps", &caps)
                .build()
                .map_err(|e| build_err(input, e))?;
            pipeline
                .add_many([&src, &filter])
                .map_err(|e| build_err(input, e))?;
            let mut chain = vec![src, filter];
            if let Some(n) = spec.error_after {
                let fail = gst::ElementFactory::make("identity")
                    .property("error-after", i32::try_from(n).unwrap_or(i32::MAX))
                    .build()
                    .map_err(|e| build_err(input, e))?;
                pipeline.add(&fail).map_err(|e| build_err(input, e))?;
                chain.push(fail);
            }
            chain.push(convert.clone());
            gst::Element::link_many(&chain).map_err(|e| build_err(input, e))?;
            (input.to_string(), spec.live)
        }
        InputKind::Uri { uri, live } => {
            let decode = gst::ElementFactory::make("uridecodebin")
                .property("uri", uri)
                .build()
                .map_err(|e| build_err(input, e))?;
            let (tcp, latency) = (config.rtsp_tcp, config.rtsp_latency_ms);
            decode.connect("source-setup", false, move |args| {
                if let Some(src) = args.get(1).and_then(|v| v.get::<gst::Element>().ok())
                    && src.find_property("latency").is_some()
                    && src.find_property("protocols").is_some()
                {
                    src.set_property("latency", latency);
                    if tcp {
                        src.set_property_from_str("protocols", "tcp");
                    }
                }
                None
            });
            pipeline.add(&decode).map_err(|e| build_err(input, e))?;
            // A file or web stream treated as live plays at its own frame rate, like a camera
            // (unpaced, it would be read as fast as it decodes and most frames dropped).
            let camera = ["rtsp", "v4l2"].iter().any(|s| uri.starts_with(s));
            appsink.set_sync(*live && !camera);
            let convert_weak = convert.downgrade();
            let pipeline_weak = pipeline.downgrade();
            decode.connect_pad_added(move |decode, pad| {
                let media = pad
                    .current_caps()
                    .or_else(|| Some(pad.query_caps(None)))
                    .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
                    .unwrap_or_default();
                if media.starts_with("video/")
                    && let Some(convert) = convert_weak.upgrade()
                    && let Some(sink) = convert.static_pad("sink")
                    && !sink.is_linked()
                {
                    // decodebin exposes a stream it has no decoder for with its encoded caps,
                    // which videoconvert refuses: say so rather than fail later as "not linked".
                    if pad.link(&sink).is_err() {
                        gst::element_error!(
                            decode,
                            gst::StreamError::CodecNotFound,
                            ("{}", no_decoder_message(&media))
                        );
                    }
                    return;
                }
                // Audio and extra video streams go to a fakesink so they never block the demuxer.
                if let Some(pipeline) = pipeline_weak.upgrade()
                    && let Ok(fake) = gst::ElementFactory::make("fakesink")
                        .property("sync", false)
                        .property("async", false)
                        .build()
                    && pipeline.add(&fake).is_ok()
                {
                    let _ = fake.sync_state_with_parent();
                    if let Some(sink) = fake.static_pad("sink") {
                        let _ = pad.link(&sink);
                    }
                }
            });
            (uri.clone(), *live)
        }
    };
    Ok((pipeline, appsink, uri, live))
}

impl Source {
    /// Builds the pipeline for stream `stream_id` (at position `index` among the run's streams);
    /// nothing runs until [`Source::run`].
    pub fn build(
        config: &SourceConfig,
        stream_id: &str,
        index: usize,
    ) -> Result<Self, SourceError> {
        init_gstreamer()?;
        let input = config.input.as_str();
        let kind = parse_input(input, config.live)?;
        let (pipeline, appsink, uri, live) = build_pipeline(input, &kind, config, stream_id)?;
        let reconnectable =
            live && matches!(&kind, InputKind::Uri { uri, .. } if !uri.starts_with("file:"));
        Ok(Self {
            input: input.to_string(),
            shown: shown(input),
            info: Arc::new(StreamInfo {
                id: stream_id.to_string(),
                index,
                // What records and summaries name: never a password.
                uri: crate::redact::url(&uri).into_owned(),
                live,
            }),
            kind,
            config: config.clone(),
            pipeline,
            appsink,
            reconnectable,
            counters: Arc::default(),
            missing_decoder: std::sync::Mutex::new(None),
        })
    }

    /// A GStreamer message about this input, its copies of the input masked.
    fn masked(&self, message: &impl std::fmt::Display) -> String {
        crate::redact::mentioning(&message.to_string(), &self.input).into_owned()
    }

    pub fn info(&self) -> Arc<StreamInfo> {
        self.info.clone()
    }

    /// Frame counts, updated while [`Source::run`] runs.
    pub fn counters(&self) -> Arc<SourceCounters> {
        self.counters.clone()
    }

    /// A stream error; GStreamer's message may quote the input: masked like the input.
    fn stream_error(&self, message: String) -> SourceError {
        SourceError::Stream {
            input: self.shown.clone(),
            message: crate::redact::mentioning(&message, &self.input).into_owned(),
        }
    }

    /// Plays the pipeline and sends every decoded frame to `out` until end of stream, a stop
    /// request or an error; live cameras that fail or stall are reconnected (see the module
    /// docs). Always leaves the pipeline in the Null state.
    /// The counts are returned also when the source failed: the frames it decoded before the
    /// failure were sent on and still count.
    pub fn run(
        mut self,
        out: &Output<Frame>,
        control: &Control,
    ) -> (SourceStats, Result<(), SourceError>) {
        let mut session = Session {
            stats: SourceStats::default(),
            clock: PtsClock {
                from_first_frame: self.info.live,
                ..PtsClock::default()
            },
            last_frame_at: None,
            gap_since: None,
            failures: 0,
            video_info: None,
        };
        let result = self.connect_until_done(out, control, &mut session);
        let _ = self.pipeline.set_state(gst::State::Null);
        (session.stats, result)
    }

    fn connect_until_done(
        &mut self,
        out: &Output<Frame>,
        control: &Control,
        session: &mut Session,
    ) -> Result<(), SourceError> {
        loop {
            let outcome = self.pump(out, control, session);
            let _ = self.pipeline.set_state(gst::State::Null);
            let reason = match outcome {
                Ok(Ended::Finished) => return Ok(()),
                Ok(Ended::EndOfStream) if !self.reconnectable => return Ok(()),
                Err(e) if !self.reconnectable => return Err(e),
                Ok(Ended::EndOfStream) => "the stream ended".to_string(),
                Ok(Ended::Stalled { waited, streaming }) => format!(
                    "no frame {} {:.1} s",
                    if streaming { "for" } else { "within" },
                    waited.as_secs_f64()
                ),
                Err(SourceError::Stream { message, .. }) => message,
                Err(e) => e.to_string(),
            };
            session.failures += 1;
            let streamed = session.stats.decoded > 0;
            let limit = if streamed {
                self.config.reconnect_attempts
            } else {
                Some(self.config.connect_attempts.saturating_sub(1))
            };
            if limit.is_some_and(|n| session.failures > n) {
                let tries = session.failures;
                return Err(self.stream_error(if streamed {
                    format!(
                        "{reason}; gave up after {} reconnection attempts",
                        tries - 1
                    )
                } else {
                    format!("{reason} (tried {tries} times)")
                }));
            }
            let delay = backoff_delay(
                session.failures,
                Duration::from_millis(self.config.reconnect_backoff_ms),
                Duration::from_millis(self.config.reconnect_backoff_max_ms),
            );
            let of = limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
            let message = format!(
                "{}: {reason}; {} in {:.1} s (attempt {} of {of})",
                self.shown,
                if streamed {
                    "reconnecting"
                } else {
                    "connecting again"
                },
                delay.as_secs_f64(),
                session.failures,
            );
            // A camera that never answered ends in one error line; retries show with -v.
            if streamed {
                tracing::warn!("{message}");
            } else {
                tracing::info!("{message}");
            }
            // A gap is time without frames after frames came; a first connection that needed
            // several tries is not a reconnection.
            if streamed && session.gap_since.is_none() {
                session.gap_since = Some(session.last_frame_at.unwrap_or_else(Instant::now));
            }
            if !sleep_unless_stopped(delay, control) {
                return Ok(());
            }
            let (pipeline, appsink, _, _) =
                build_pipeline(&self.input, &self.kind, &self.config, &self.info.id)?;
            self.pipeline = pipeline;
            self.appsink = appsink;
            session.video_info = None;
            session.clock.rebase = true;
        }
    }

    fn pump(
        &self,
        out: &Output<Frame>,
        control: &Control,
        session: &mut Session,
    ) -> Result<Ended, SourceError> {
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| self.stream_error("pipeline has no bus".into()))?;
        if self.pipeline.set_state(gst::State::Playing).is_err() {
            // The bus usually says why (missing file, refused connection …).
            return Err(self
                .bus_error(&bus, Duration::from_secs(2))
                .unwrap_or_else(|| self.stream_error("cannot start the pipeline".into())));
        }
        let stall_timeout = Duration::from_millis(self.config.stall_timeout_ms.max(1));
        let connected_at = Instant::now();
        let mut here = Connection::default();
        loop {
            if control.stop_requested() {
                tracing::info!(stream = %self.info.id, "source stopping on request");
                return Ok(Ended::Finished);
            }
            if let Some(e) = self.bus_error(&bus, Duration::ZERO) {
                return self.drain_then(e, out, control, session, &mut here);
            }
            let Some(sample) = self
                .appsink
                .try_pull_sample(gst::ClockTime::from_mseconds(100))
            else {
                if self.appsink.is_eos() {
                    // A decoder error may race with EOS: report it rather than a short stream.
                    if let Some(e) = self.bus_error(&bus, Duration::ZERO) {
                        return Err(e);
                    }
                    tracing::info!(stream = %self.info.id, frames = session.stats.decoded, "end of stream");
                    self.warn_if_short(here.last_pts_ms, &session.video_info);
                    return Ok(Ended::EndOfStream);
                }
                if self.reconnectable {
                    let (since, allowed) = match session.last_frame_at {
                        Some(t) if here.frames > 0 => (t, stall_timeout),
                        _ => (connected_at, stall_timeout * 2),
                    };
                    let waited = since.elapsed();
                    if waited > allowed {
                        return Ok(Ended::Stalled {
                            waited,
                            streaming: here.frames > 0,
                        });
                    }
                }
                continue;
            };
            if let Some(ended) = self.deliver(&sample, out, control, session, &mut here)? {
                return Ok(ended);
            }
        }
    }

    /// After an error on the bus: the frames already waiting in the appsink decoded fine, so they
    /// are sent on before the error is returned (how many wait there must not vary the output).
    fn drain_then(
        &self,
        error: SourceError,
        out: &Output<Frame>,
        control: &Control,
        session: &mut Session,
        here: &mut Connection,
    ) -> Result<Ended, SourceError> {
        while let Some(sample) = self.appsink.try_pull_sample(gst::ClockTime::ZERO) {
            if self
                .deliver(&sample, out, control, session, here)?
                .is_some()
            {
                break;
            }
        }
        Err(error)
    }

    /// Turns one sample into a frame and sends it on; `Some` when the source should stop (frame
    /// limit, nobody downstream).
    fn deliver(
        &self,
        sample: &gst::Sample,
        out: &Output<Frame>,
        control: &Control,
        session: &mut Session,
        here: &mut Connection,
    ) -> Result<Option<Ended>, SourceError> {
        let now = Instant::now();
        let mut frame =
            self.frame_from_sample(sample, session.stats.decoded, &mut session.video_info)?;
        frame.pts_ms = session.clock.place(frame.pts_ms, now);
        if let Some(since) = session.gap_since.take() {
            let gap_ms = now.duration_since(since).as_secs_f64() * 1e3;
            session.stats.reconnects += 1;
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            session.stats.gap_ms += gap_ms;
            frame.gap_before_ms = Some(gap_ms);
            tracing::warn!(
                "{}: reconnected; no frames for {:.1} s",
                self.shown,
                gap_ms / 1e3
            );
        }
        session.failures = 0;
        session.last_frame_at = Some(now);
        if session.stats.decoded == 0 {
            self.counters
                .expected_frames
                .store(self.expected_frames(&session.video_info), Ordering::Relaxed);
        }
        session.stats.decoded += 1;
        here.frames += 1;
        here.last_pts_ms = Some(frame.pts_ms);
        let sent = out.send(frame, control);
        if let Sent::DroppedOldest(n) = sent {
            session.stats.dropped_behind += n;
        }
        self.counters
            .decoded
            .store(session.stats.decoded, Ordering::Relaxed);
        self.counters
            .dropped_behind
            .store(session.stats.dropped_behind, Ordering::Relaxed);
        if sent == Sent::Closed {
            return Ok(Some(Ended::Finished));
        }
        if self.config.max_frames > 0 && session.stats.decoded >= self.config.max_frames {
            return Ok(Some(Ended::Finished));
        }
        Ok(None)
    }

    /// How many frames the input will give, 0 when not known (a live source, a container
    /// without a duration).
    fn expected_frames(&self, video_info: &Option<(gst::Caps, gst_video::VideoInfo)>) -> u64 {
        if self.info.live {
            return 0;
        }
        let from_duration = self
            .pipeline
            .query_duration::<gst::ClockTime>()
            .zip(frame_interval_ms(video_info))
            .map_or(0, |(duration, frame_ms)| {
                (duration.nseconds() as f64 / 1e6 / frame_ms).round() as u64
            });
        match (from_duration, self.config.max_frames) {
            (0, _) => 0,
            (n, 0) => n,
            (n, limit) => n.min(limit),
        }
    }

    /// A file whose stream ends well before the duration its header announces is truncated or
    /// damaged: every frame that decoded was delivered, and the user is told the rest is missing.
    fn warn_if_short(
        &self,
        last_pts_ms: Option<f64>,
        video_info: &Option<(gst::Caps, gst_video::VideoInfo)>,
    ) {
        if self.info.live || self.config.max_frames > 0 {
            return;
        }
        let Some(duration) = self.pipeline.query_duration::<gst::ClockTime>() else {
            return;
        };
        let duration_ms = duration.nseconds() as f64 / 1e6;
        let frame_ms = frame_interval_ms(video_info).unwrap_or(100.0);
        let reached_ms = last_pts_ms.map_or(0.0, |pts| pts + frame_ms);
        // Containers round durations and audio may outlast video a little: allow a few frames.
        if reached_ms + 3.0 * frame_ms < duration_ms {
            tracing::warn!(
                "{}: stream ended at {:.2} s of {:.2} s: the file looks truncated or damaged; every frame that decoded was processed",
                self.shown,
                reached_ms / 1000.0,
                duration_ms / 1000.0
            );
        }
    }

    /// The first error on the bus within `wait`, as a one-line error.
    fn bus_error(&self, bus: &gst::Bus, wait: Duration) -> Option<SourceError> {
        // Not `timed_pop_filtered`: with a zero timeout it returns before popping anything.
        let deadline = std::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let msg = bus.timed_pop(gst::ClockTime::from_nseconds(remaining.as_nanos() as u64))?;
            match msg.view() {
                gst::MessageView::Error(err) => {
                    let element = msg
                        .src()
                        .map(|s| s.name().to_string())
                        .unwrap_or_else(|| "pipeline".into());
                    let details = err.debug().map(|d| self.masked(&d));
                    tracing::debug!(element, debug = ?details, "GStreamer error");
                    let missing = self.missing_decoder.lock().ok().and_then(|m| m.clone());
                    if let Some(media) = missing
                        && err.error().matches(gst::CoreError::MissingPlugin)
                    {
                        return Some(self.stream_error(no_decoder_message(&media)));
                    }
                    return Some(self.stream_error(format!(
                        "{} (GStreamer element {element})",
                        err.error().to_string().trim_end_matches('.')
                    )));
                }
                gst::MessageView::Warning(w) => {
                    // A missing decoder is reported as this stream's error ("no decoder for …").
                    if w.error().matches(gst::CoreError::MissingPlugin)
                        || w.error().matches(gst::StreamError::CodecNotFound)
                    {
                        tracing::debug!(input = %self.shown, "GStreamer warning: {}", self.masked(&w.error()));
                        let text = w.error().to_string();
                        if let Some(media) = missing_media_type(&text)
                            && media.starts_with("video/")
                            && let Ok(mut slot) = self.missing_decoder.lock()
                        {
                            *slot = Some(media);
                        }
                    } else {
                        tracing::warn!(input = %self.shown, "GStreamer warning: {}", self.masked(&w.error()));
                    }
                }
                _ => {}
            }
        }
    }

    fn frame_from_sample(
        &self,
        sample: &gst::Sample,
        index: u64,
        cached: &mut Option<(gst::Caps, gst_video::VideoInfo)>,
    ) -> Result<Frame, SourceError> {
        let caps = sample
            .caps()
            .ok_or_else(|| self.stream_error("frame without caps".into()))?;
        if cached
            .as_ref()
            .map(|(c, _)| c.as_ref() != caps)
            .unwrap_or(true)
        {
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|e| self.stream_error(format!("unusable video caps: {e}")))?;
            tracing::info!(stream = %self.info.id, width = info.width(), height = info.height(),
                fps = %info.fps(), "video format");
            *cached = Some((caps.to_owned(), info));
        }
        let Some((_, info)) = cached.as_ref() else {
            return Err(self.stream_error("no video format".into()));
        };
        let buffer = sample
            .buffer()
            .ok_or_else(|| self.stream_error("frame without data".into()))?;
        let vframe = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
            .map_err(|e| self.stream_error(format!("cannot map frame: {e}")))?;
        let (width, height) = (info.width() as usize, info.height() as usize);
        let stride = vframe.plane_stride()[0] as usize;
        let data = vframe
            .plane_data(0)
            .map_err(|e| self.stream_error(format!("cannot read frame: {e}")))?;
        let row = width * 3;
        let mut rgb = Vec::with_capacity(row * height);
        for y in 0..height {
            rgb.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        // Running time: from 0 at the start of the stream whatever the container's first PTS.
        let pts_ms = buffer
            .pts()
            .and_then(|pts| {
                sample
                    .segment()
                    .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                    .and_then(|s| s.to_running_time(pts))
                    .or(Some(pts))
            })
            .map(|t| t.nseconds() as f64 / 1e6)
            .unwrap_or_else(|| {
                let fps = info.fps();
                if fps.numer() > 0 {
                    index as f64 * 1000.0 * fps.denom() as f64 / fps.numer() as f64
                } else {
                    0.0
                }
            });
        Ok(Frame {
            stream: self.info.clone(),
            index,
            pts_ms,
            width: width as u32,
            height: height as u32,
            rgb,
            gap_before_ms: None,
        })
    }
}

fn no_decoder_message(media: &str) -> String {
    format!(
        "no decoder for {media} (install the GStreamer plugin that decodes it, e.g. gstreamer1.0-libav or gstreamer1.0-plugins-bad)"
    )
}

/// The media type in decodebin's "No decoder available for type 'video/x-h265, …'".
fn missing_media_type(warning: &str) -> Option<String> {
    let caps = warning.split_once("type '")?.1;
    let end = caps.find([',', '\'', ';']).unwrap_or(caps.len());
    Some(caps[..end].trim().to_string()).filter(|m| !m.is_empty())
}

/// Sleeps for `delay` in short steps; false when a stop was requested meanwhile.
fn sleep_unless_stopped(delay: Duration, control: &Control) -> bool {
    let until = Instant::now() + delay;
    while !control.stop_requested() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    false
}

/// Milliseconds between frames, from the caps' frame rate (unknown for variable rates).
fn frame_interval_ms(video_info: &Option<(gst::Caps, gst_video::VideoInfo)>) -> Option<f64> {
    video_info
        .as_ref()
        .map(|(_, info)| info.fps())
        .filter(|fps| fps.numer() > 0 && fps.denom() > 0)
        .map(|fps| 1000.0 * fps.denom() as f64 / fps.numer() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pattern_specs_parse_with_defaults_and_reject_nonsense() {
        let InputKind::TestPattern(t) =
            parse_input("testsrc://ball?frames=10&size=320x240&fps=30", None).unwrap()
        else {
            panic!("not a test pattern")
        };
        assert_eq!(
            (
                t.pattern.as_str(),
                t.frames,
                t.width,
                t.height,
                t.fps,
                t.live
            ),
            ("ball", 10, 320, 240, 30, false)
        );
        let InputKind::TestPattern(t) = parse_input("testsrc://", Some(true)).unwrap() else {
            panic!("not a test pattern")
        };
        assert_eq!((t.pattern.as_str(), t.frames, t.live), ("smpte", 100, true));
        assert!(parse_input("testsrc://ball?size=0x10", None).is_err());
        assert!(parse_input("testsrc://ball?frames=many", None).is_err());
        assert!(parse_input("testsrc://ball?colour=red", None).is_err());
        let err = parse_input("testsrc://nosuch?frames=3", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown pattern 'nosuch' (patterns: smpte, snow,"),
            "{err}"
        );
        assert!(parse_input("testsrc://ball?fps=0", None).is_err());
        for bad in [
            "live=yes",
            "error-after=0",
            "size=16384x16384",
            "size=1x40000",
        ] {
            assert!(
                parse_input(&format!("testsrc://ball?{bad}"), None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_missing_decoder_is_read_from_decodebins_warning() {
        assert_eq!(
            missing_media_type(
                "No decoder available for type 'video/x-h265, stream-format=(string)hvc1'."
            )
            .as_deref(),
            Some("video/x-h265")
        );
        assert_eq!(missing_media_type("something else"), None);
    }

    #[test]
    fn reconnection_backoff_doubles_up_to_its_cap() {
        let ms = Duration::from_millis;
        let waits: Vec<u128> = (1..=8)
            .map(|attempt| backoff_delay(attempt, ms(500), ms(10_000)).as_millis())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
        assert_eq!(backoff_delay(0, ms(500), ms(10_000)), ms(500));
        assert_eq!(backoff_delay(u32::MAX, ms(500), ms(30_000)), ms(30_000));
    }

    #[test]
    fn timestamps_continue_on_wall_time_across_a_reconnection() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut clock = PtsClock::default();
        // A file or first connection keeps its own timestamps.
        assert_eq!(clock.place(100.0, at(0)), 100.0);
        assert_eq!(clock.place(140.0, at(40)), 140.0);
        // The camera comes back 3 s later; its running time starts again near 0.
        clock.rebase = true;
        let after_gap = clock.place(5.0, at(3040));
        assert!((after_gap - 3140.0).abs() < 1e-6, "{after_gap}");
        assert!((clock.place(45.0, at(3080)) - 3180.0).abs() < 1e-6);
        // A reconnected stream whose clock jumps back never yields an earlier timestamp.
        let back = clock.place(0.0, at(3100));
        assert!(back > 3180.0, "{back}");
        // A live camera's first frame is at 0 whatever its running time says.
        let mut clock = PtsClock {
            from_first_frame: true,
            ..PtsClock::default()
        };
        assert_eq!(clock.place(33.47, at(0)), 0.0);
        assert!((clock.place(73.47, at(40)) - 40.0).abs() < 1e-9);
        clock.rebase = true;
        assert!((clock.place(5.0, at(1040)) - 1040.0).abs() < 1e-6);
    }

    #[test]
    fn missing_and_empty_files_are_rejected_before_gstreamer() {
        let err = parse_input("/definitely/not/here.mp4", None).unwrap_err();
        assert_eq!(err.to_string(), "/definitely/not/here.mp4: no such file");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.mp4");
        std::fs::write(&empty, b"").unwrap();
        let err = parse_input(empty.to_str().unwrap(), None).unwrap_err();
        assert!(err.to_string().ends_with("file is empty"), "{err}");
        assert!(parse_input(dir.path().to_str().unwrap(), None).is_err());
    }

    #[test]
    fn unknown_uri_schemes_are_named() {
        let err = parse_input("bogus://camera/1", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bogus://camera/1: unsupported URI scheme 'bogus' (no GStreamer source handles it)"
        );
    }

    #[test]
    fn rtsp_and_v4l2_are_live_files_are_not() {
        init_gstreamer().unwrap();
        assert!(matches!(
            parse_input("rtsp://127.0.0.1:1/x", None),
            Ok(InputKind::Uri { live: true, .. })
        ));
        assert!(matches!(
            parse_input("v4l2:///dev/video0", None),
            Ok(InputKind::Uri { live: true, .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.mp4");
        std::fs::write(&f, b"x").unwrap();
        match parse_input(f.to_str().unwrap(), None).unwrap() {
            InputKind::Uri { uri, live } => {
                assert!(uri.starts_with("file:///"));
                assert!(!live);
            }
            other => panic!("{other:?}"),
        }
    }
}
