//! Video sources through GStreamer: files and URIs (uridecodebin), RTSP cameras, v4l2 webcams and a
//! test pattern. Frames reach the graph as packed RGB with their timestamps.
//!
//! Files never drop a frame: when the graph falls behind, the full channel blocks decoding. Live
//! sources (RTSP, webcams, a live test pattern) drop the oldest queued frame instead, and count it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use serde::{Deserialize, Serialize};

use crate::graph::{Control, Output, Sent};

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
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            input: String::new(),
            rtsp_tcp: false,
            rtsp_latency_ms: 200,
            live: None,
            queue_frames: 8,
            max_frames: 0,
        }
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
}

/// Identity of a stream, shared by its frames.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Stream id as written in the metadata ("0", "1", …).
    pub id: String,
    /// The URI (or test spec) the stream was opened from.
    pub uri: String,
    pub live: bool,
}

/// Frame counts of one stream, for the end summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceStats {
    pub decoded: u64,
    pub dropped_behind: u64,
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
}

pub fn init_gstreamer() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::Init(e.to_string()))
}

/// Parses `testsrc://PATTERN?frames=N&size=WxH&fps=F&live=true` (all parts optional).
fn parse_test_pattern(input: &str, rest: &str) -> Result<TestPattern, SourceError> {
    let bad = |message: String| SourceError::BadTestSpec {
        input: input.to_string(),
        message,
    };
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
            "fps" => spec.fps = number(value)?.max(1),
            "live" => spec.live = value == "true" || value == "1",
            "size" => {
                let (w, h) = value
                    .split_once('x')
                    .ok_or_else(|| bad(format!("size={value} is not WxH")))?;
                spec.width = number(w)?;
                spec.height = number(h)?;
                if spec.width == 0 || spec.height == 0 || spec.width > 16384 || spec.height > 16384
                {
                    return Err(bad(format!("size={value} is out of range")));
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown key '{other}' (frames, size, fps, live)"
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
                .map_err(|e| SourceError::Build {
                    input: input.to_string(),
                    message: e.to_string(),
                })?;
            check_file(input, &path)?;
        }
        let supported = init_gstreamer().is_ok()
            && gst::Element::make_from_uri(gst::URIType::Src, input, None).is_ok();
        if !supported {
            return Err(SourceError::UnknownScheme {
                input: input.to_string(),
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
    let absolute = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| SourceError::Build {
            input: input.to_string(),
            message: e.to_string(),
        })?;
    let uri = gst::glib::filename_to_uri(&absolute, None).map_err(|e| SourceError::Build {
        input: input.to_string(),
        message: e.to_string(),
    })?;
    Ok(InputKind::Uri {
        uri: uri.to_string(),
        live: live_override.unwrap_or(false),
    })
}

fn check_file(input: &str, path: &Path) -> Result<(), SourceError> {
    let meta = std::fs::metadata(path).map_err(|_| SourceError::NotFound {
        input: input.to_string(),
    })?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile {
            input: input.to_string(),
        });
    }
    if meta.len() == 0 {
        return Err(SourceError::EmptyFile {
            input: input.to_string(),
        });
    }
    Ok(())
}

/// A built (not yet started) GStreamer source.
pub struct Source {
    input: String,
    info: Arc<StreamInfo>,
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    max_frames: u64,
}

fn build_err(input: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Build {
        input: input.to_string(),
        message: e.to_string(),
    }
}

impl Source {
    /// Builds the pipeline for stream `stream_id`; nothing runs until [`Source::run`].
    pub fn build(config: &SourceConfig, stream_id: &str) -> Result<Self, SourceError> {
        init_gstreamer()?;
        let input = config.input.as_str();
        let kind = parse_input(input, config.live)?;
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

        let (uri, live) = match &kind {
            InputKind::TestPattern(spec) => {
                let src = gst::ElementFactory::make("videotestsrc")
                    .property("is-live", spec.live)
                    .property("num-buffers", spec.frames as i32)
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
                gst::Element::link_many([&src, &filter, &convert])
                    .map_err(|e| build_err(input, e))?;
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
                let convert_weak = convert.downgrade();
                let pipeline_weak = pipeline.downgrade();
                decode.connect_pad_added(move |_, pad| {
                    let is_video = pad
                        .current_caps()
                        .or_else(|| Some(pad.query_caps(None)))
                        .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                        .unwrap_or(false);
                    if is_video
                        && let Some(convert) = convert_weak.upgrade()
                        && let Some(sink) = convert.static_pad("sink")
                        && !sink.is_linked()
                    {
                        let _ = pad.link(&sink);
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
        Ok(Self {
            input: input.to_string(),
            info: Arc::new(StreamInfo {
                id: stream_id.to_string(),
                uri,
                live,
            }),
            pipeline,
            appsink,
            max_frames: config.max_frames,
        })
    }

    pub fn info(&self) -> Arc<StreamInfo> {
        self.info.clone()
    }

    fn stream_error(&self, message: String) -> SourceError {
        SourceError::Stream {
            input: self.input.clone(),
            message,
        }
    }

    /// Plays the pipeline and sends every decoded frame to `out` until end of stream, a stop
    /// request or an error. Always leaves the pipeline in the Null state.
    pub fn run(self, out: &Output<Frame>, control: &Control) -> Result<SourceStats, SourceError> {
        let result = self.pump(out, control);
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }

    fn pump(&self, out: &Output<Frame>, control: &Control) -> Result<SourceStats, SourceError> {
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
        let mut stats = SourceStats::default();
        let mut video_info: Option<(gst::Caps, gst_video::VideoInfo)> = None;
        let mut last_pts_ms: Option<f64> = None;
        loop {
            if control.stop_requested() {
                tracing::info!(stream = %self.info.id, "source stopping on request");
                break;
            }
            if let Some(e) = self.bus_error(&bus, Duration::ZERO) {
                return Err(e);
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
                    tracing::info!(stream = %self.info.id, frames = stats.decoded, "end of stream");
                    self.warn_if_short(last_pts_ms, &video_info);
                    break;
                }
                continue;
            };
            let frame = self.frame_from_sample(&sample, stats.decoded, &mut video_info)?;
            stats.decoded += 1;
            last_pts_ms = Some(frame.pts_ms);
            match out.send(frame, control) {
                Sent::Delivered => {}
                Sent::DroppedOldest(n) => stats.dropped_behind += n,
                Sent::Closed => break,
            }
            if self.max_frames > 0 && stats.decoded >= self.max_frames {
                break;
            }
        }
        Ok(stats)
    }

    /// A file whose stream ends well before the duration its header announces is truncated or
    /// damaged: every frame that decoded was delivered, and the user is told the rest is missing.
    fn warn_if_short(
        &self,
        last_pts_ms: Option<f64>,
        video_info: &Option<(gst::Caps, gst_video::VideoInfo)>,
    ) {
        if self.info.live || self.max_frames > 0 {
            return;
        }
        let Some(duration) = self.pipeline.query_duration::<gst::ClockTime>() else {
            return;
        };
        let duration_ms = duration.nseconds() as f64 / 1e6;
        let frame_ms = video_info
            .as_ref()
            .map(|(_, info)| info.fps())
            .filter(|fps| fps.numer() > 0)
            .map_or(100.0, |fps| {
                1000.0 * fps.denom() as f64 / fps.numer() as f64
            });
        let reached_ms = last_pts_ms.map_or(0.0, |pts| pts + frame_ms);
        // Containers round durations and audio may outlast video a little: allow a few frames.
        if reached_ms + 3.0 * frame_ms < duration_ms {
            tracing::warn!(
                "{}: stream ended at {:.2} s of {:.2} s: the file looks truncated or damaged; every frame that decoded was processed",
                self.input,
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
                    tracing::debug!(element, debug = ?err.debug(), "GStreamer error");
                    return Some(self.stream_error(format!(
                        "{} (GStreamer element {element})",
                        err.error().to_string().trim_end_matches('.')
                    )));
                }
                gst::MessageView::Warning(w) => {
                    tracing::warn!(input = %self.input, "GStreamer warning: {}", w.error());
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
        })
    }
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
