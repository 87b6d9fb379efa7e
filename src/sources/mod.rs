//! Video sources through GStreamer: files and URIs (uridecodebin), RTSP cameras, v4l2 webcams and a
//! test pattern. Frames reach the graph as packed RGB with their timestamps.
//!
//! Files never drop a frame: when the graph falls behind, the full channel blocks decoding. Live
//! sources (RTSP, webcams, a live test pattern) drop the oldest queued frame instead, and count it.
//!
//! Live cameras fail: one that errors, ends its stream or stalls (no frame within
//! `stall_timeout_ms`, with or without end-of-stream) is rebuilt and reconnected with exponential
//! backoff. Frame numbers and timestamps continue across the gap, and the gap is reported.
//!
//! One module per kind of source: `testsrc` (the test pattern), `uri` (files, RTSP, http and v4l2
//! through uridecodebin), `camera` (what live cameras need: reconnection backoff, timestamps
//! across reconnections), and `session` (a running source of any kind: its pipeline into an RGB
//! appsink, the loop that pulls frames, its bus, reconnecting). This file holds what they share:
//! the configuration, the frames and counts, errors, and the parsing of `input`.

mod camera;
mod session;
pub(crate) mod stage;
mod testsrc;
mod uri;

pub use camera::backoff_delay;
pub use session::Source;
pub use testsrc::{TestPattern, test_patterns};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gstreamer as gst;
use serde::{Deserialize, Serialize};

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
    /// The input decoded to no video at all (an audio file): nothing to look for faces in.
    #[error("no video stream in {input}{found}")]
    NoVideo {
        input: String,
        /// What it holds instead, e.g. ` (only audio/x-raw)`; empty when nothing was found.
        found: String,
    },
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
    /// Files: when the file began, RFC 3339 (`2026-12-07T09:30:00Z`, any offset), so records
    /// carry clock time (`time`, `first_time`, `last_time`). Live streams carry the time each
    /// frame arrived instead and refuse this.
    pub start_time: Option<String>,
    /// First wait before reconnecting; it doubles with every failed attempt.
    pub reconnect_backoff_ms: u64,
    /// Longest wait between reconnection attempts.
    pub reconnect_backoff_max_ms: u64,
    /// This stream's own `detect_every` (0: auto), set by a fleet worker from its camera's
    /// `--detect-every`; not a pipeline-file key.
    #[serde(skip)]
    pub detect_every: Option<u32>,
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
            start_time: None,
            reconnect_backoff_ms: 500,
            reconnect_backoff_max_ms: 30_000,
            detect_every: None,
        }
    }
}

impl SourceConfig {
    /// Every numeric key within its range (see [`crate::limits`]).
    pub fn validate(&self) -> Result<(), crate::limits::RangeError> {
        use crate::limits::{MAX_QUEUE_FRAMES, MAX_WAIT_MS, Setting};
        Setting::in_section("source", "rtsp_latency_ms").check(
            self.rtsp_latency_ms,
            0,
            60_000,
            "ms",
        )?;
        Setting::key("queue_frames").check(self.queue_frames, 1, MAX_QUEUE_FRAMES, "frames")?;
        Setting::in_section("source", "stall_timeout_ms").check(
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
        self.start_time_ms()?;
        Ok(())
    }

    /// `start_time` in ms since the Unix epoch, when set.
    pub fn start_time_ms(&self) -> Result<Option<f64>, crate::limits::RangeError> {
        let Some(text) = &self.start_time else {
            return Ok(None);
        };
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| Some(t.timestamp_micros() as f64 / 1e3))
            .map_err(|e| {
                crate::limits::Setting::key("start_time").error(
                    format!("{text:?}"),
                    format!("an RFC 3339 time such as 2026-12-07T09:30:00Z ({e})"),
                )
            })
    }
}

impl StreamInfo {
    /// The clock time of `pts_ms` as records write it (RFC 3339, UTC, milliseconds, `Z`).
    pub fn time(&self, pts_ms: f64) -> Option<String> {
        clock_time(&self.clock_origin_ms, pts_ms)
    }
}

/// The clock time of `pts_ms` on a stream whose timeline starts at `origin` (ms since the Unix
/// epoch, when set), as records write it.
pub fn clock_time(origin: &std::sync::OnceLock<f64>, pts_ms: f64) -> Option<String> {
    origin.get().and_then(|origin| rfc3339_ms(origin + pts_ms))
}

/// `unix_ms` (ms since the Unix epoch) as RFC 3339 in UTC with milliseconds and a trailing `Z`:
/// `2026-12-07T09:30:00.040Z`; `None` out of chrono's range.
pub fn rfc3339_ms(unix_ms: f64) -> Option<String> {
    if !unix_ms.is_finite() {
        return None;
    }
    chrono::DateTime::from_timestamp_millis(unix_ms.round() as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
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
    /// The first frame of another shot (see `detect::cut`): set by the detect scheduler, which
    /// sees each stream's frames in order; every track ends before it.
    pub scene_cut: bool,
}

/// Identity of a stream, shared by its frames.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Where the stream's timeline (`pts_ms` 0) falls in clock time, ms since the Unix epoch: a
    /// live stream's is set when its first frame arrives (so a frame's clock time is when it
    /// arrived, on the pipeline clock that gives `pts_ms`), a file's from `start_time`; unset,
    /// records carry no clock time. Shared by everyone holding the stream's identity.
    pub clock_origin_ms: Arc<std::sync::OnceLock<f64>>,
    /// Stream id as written in the metadata: its name, else its position ("0", "1", …).
    pub id: String,
    /// Position among the run's streams, from 0.
    pub index: usize,
    /// The URI (or test spec) the stream was opened from, its password masked.
    pub uri: String,
    pub live: bool,
    /// This stream's own `detect_every` (a fleet camera's), else the run's.
    pub detect_every: Option<u32>,
}

/// Frame counts of one stream, for the end summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceStats {
    pub decoded: u64,
    /// Frames a live source dropped because its queue overflowed (the run was behind).
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
    /// Frames of a live stream under load that the detect scheduler dropped evenly from its
    /// backlog (not counted in `dropped_behind`).
    pub dropped_evenly: AtomicU64,
    /// Set by the detect scheduler in auto mode: video time between full searches now, ms (0
    /// until set: the default).
    pub full_search_interval_ms: AtomicU64,
    /// Frames handed out for a full search, and the video time from the first frame the
    /// detect scheduler took to the last, ms (their ratio: how often it searched in full).
    pub full_searches: AtomicU64,
    pub video_span_ms: AtomicU64,
    pub reconnects: AtomicU64,
    /// Frames a file will give (its duration over its frame interval, or the frame limit when
    /// lower); 0 while unknown and for live sources. For progress with time left.
    pub expected_frames: AtomicU64,
}

impl SourceCounters {
    /// Frames not processed because the run was behind: dropped by the source queue or evenly.
    pub fn dropped(&self) -> u64 {
        self.dropped_behind.load(Ordering::Relaxed) + self.dropped_evenly.load(Ordering::Relaxed)
    }
}

/// Where the frames come from, parsed from the `input` string.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    /// A URI that uridecodebin opens (file://, http(s)://, rtsp://, v4l2://…).
    Uri { uri: String, live: bool },
    /// videotestsrc.
    TestPattern(TestPattern),
}

pub fn init_gstreamer() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::Init(e.to_string()))
}

/// Classifies `input`: a test pattern, a URI, or a local file path (checked here so a missing or
/// empty file gets a clear error before GStreamer is involved).
pub fn parse_input(input: &str, live_override: Option<bool>) -> Result<InputKind, SourceError> {
    if let Some(rest) = input.strip_prefix("testsrc://") {
        return testsrc::parse(input, rest, live_override);
    }
    if let Some((scheme, _)) = input.split_once("://")
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return uri::parse_uri(input, scheme, live_override);
    }
    uri::parse_path(input, live_override)
}

/// `input` as errors and log lines name it: its password masked.
pub fn shown(input: &str) -> String {
    crate::redact::url(input).into_owned()
}

/// A set-up error; its message may quote the input (GLib's URI errors do): masked too.
pub(crate) fn build_err(input: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Build {
        input: shown(input),
        message: crate::redact::mentioning(&e.to_string(), input).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            rfc3339_ms(1_796_635_800_040.4).as_deref(),
            Some("2026-12-07T09:30:00.040Z")
        );
        assert_eq!(rfc3339_ms(0.0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(rfc3339_ms(f64::NAN), None);
        assert_eq!(rfc3339_ms(1e300), None);
        let info = StreamInfo {
            clock_origin_ms: Default::default(),
            id: "0".into(),
            index: 0,
            uri: String::new(),
            live: true,
            detect_every: None,
        };
        assert_eq!(info.time(40.0), None, "no clock until the first frame");
        info.clock_origin_ms.set(1_796_635_800_000.0).unwrap();
        assert_eq!(
            info.time(1040.0).as_deref(),
            Some("2026-12-07T09:30:01.040Z")
        );
    }

    #[test]
    fn a_start_time_is_rfc3339_with_any_offset() {
        let at = |text: &str| {
            SourceConfig {
                start_time: Some(text.into()),
                ..SourceConfig::default()
            }
            .start_time_ms()
        };
        assert_eq!(
            at("2026-12-07T09:30:00Z").unwrap(),
            Some(1_796_635_800_000.0)
        );
        assert_eq!(
            at("2026-12-07T10:30:00.250+01:00").unwrap(),
            Some(1_796_635_800_250.0)
        );
        for bad in ["2026-12-07", "yesterday", "2026-12-07 09:30:00", ""] {
            let e = at(bad).unwrap_err().to_string();
            assert!(e.contains("start_time") && e.contains("RFC 3339"), "{e}");
        }
        assert_eq!(SourceConfig::default().start_time_ms().unwrap(), None);
    }
}
