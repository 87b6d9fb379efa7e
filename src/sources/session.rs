//! A running source, whatever its kind: the GStreamer pipeline ending in an RGB appsink, the loop
//! that pulls its frames and sends them on, its bus, and the reconnection of live cameras.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::camera::{PtsClock, backoff_delay, sleep_unless_stopped};
use super::uri::{self, NoVideo, missing_media_type, no_decoder_message, no_video_detail};
use super::{
    Frame, InputKind, SourceConfig, SourceCounters, SourceError, SourceStats, StreamInfo,
    build_err, init_gstreamer, parse_input, testsrc,
};
use crate::graph::{Control, Output, Sent};

/// A file (or any source that is not reconnected) whose decoding gives nothing for this long has
/// stalled: far beyond any decoder's time for one frame, or a slow web server's for a buffer.
const DECODER_STALL: Duration = Duration::from_secs(30);

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
    /// Set when decodebin has exposed all its streams and none is video: the media types it
    /// exposed (see [`NoVideo`]).
    no_video: NoVideo,
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
    no_video: &NoVideo,
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
            testsrc::add_to(&pipeline, spec, &convert, input)?;
            (input.to_string(), spec.live)
        }
        InputKind::Uri { uri, live } => {
            uri::add_to(
                &pipeline,
                uri::Decode {
                    uri,
                    live: *live,
                    config,
                    input,
                },
                &convert,
                &appsink,
                no_video,
            )?;
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
        let no_video = NoVideo::default();
        let (pipeline, appsink, uri, live) =
            build_pipeline(input, &kind, config, stream_id, &no_video)?;
        let reconnectable =
            live && matches!(&kind, InputKind::Uri { uri, .. } if !uri.starts_with("file:"));
        let clock_origin_ms = Arc::new(std::sync::OnceLock::new());
        let start_ms = config.start_time_ms().map_err(|e| SourceError::Stream {
            input: super::shown(input),
            message: e.to_string(),
        })?;
        if let Some(start_ms) = start_ms {
            if live {
                return Err(SourceError::Stream {
                    input: super::shown(input),
                    message: "start_time (--start-time) is for files: a live stream's frames carry the time they arrived".into(),
                });
            }
            let _ = clock_origin_ms.set(start_ms);
        }
        Ok(Self {
            input: input.to_string(),
            shown: super::shown(input),
            info: Arc::new(StreamInfo {
                clock_origin_ms,
                id: stream_id.to_string(),
                index,
                // What records and summaries name: never a password.
                uri: crate::redact::url(&uri).into_owned(),
                live,
                detect_every: config.detect_every,
            }),
            kind,
            config: config.clone(),
            pipeline,
            appsink,
            reconnectable,
            counters: Arc::default(),
            missing_decoder: std::sync::Mutex::new(None),
            no_video,
        })
    }

    pub fn info(&self) -> Arc<StreamInfo> {
        self.info.clone()
    }

    /// Frames queued between this source and the scheduler (`queue_frames`).
    pub fn queue_frames(&self) -> usize {
        self.config.queue_frames
    }

    /// Frame counts, updated while [`Source::run`] runs.
    pub fn counters(&self) -> Arc<SourceCounters> {
        self.counters.clone()
    }

    /// A GStreamer message about this input, its copies of the input masked.
    fn masked(&self, message: &impl std::fmt::Display) -> String {
        crate::redact::mentioning(&message.to_string(), &self.input).into_owned()
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
            let (pipeline, appsink, _, _) = build_pipeline(
                &self.input,
                &self.kind,
                &self.config,
                &self.info.id,
                &self.no_video,
            )?;
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
        // Since the last frame was handed on (not since it came: handing on may wait for room).
        let mut waiting_since = Instant::now();
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
                } else if waiting_since.elapsed() > DECODER_STALL {
                    // A damaged file can leave GStreamer's threads paused with neither a frame,
                    // an end of stream nor an error: end the stream rather than wait forever.
                    return Err(self.stream_error(format!(
                        "no frame and no end of stream for {} s: decoding stalled (a damaged file?)",
                        DECODER_STALL.as_secs()
                    )));
                }
                continue;
            };
            if let Some(ended) = self.deliver(&sample, out, control, session, &mut here)? {
                return Ok(ended);
            }
            waiting_since = Instant::now();
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
        if self.info.live && self.info.clock_origin_ms.get().is_none() {
            // The first frame's arrival fixes where the stream's timeline falls in clock time;
            // later frames are placed by their timestamps, which reconnections keep on wall
            // time (`PtsClock`), so clock time and `pts_ms` never disagree.
            let arrived_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3);
            let _ = self.info.clock_origin_ms.set(arrived_ms - frame.pts_ms);
        }
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
                    if let Some(media) = self.no_video.lock().ok().and_then(|m| m.clone()) {
                        return Some(SourceError::NoVideo {
                            input: self.shown.clone(),
                            found: no_video_detail(&media),
                        });
                    }
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
            scene_cut: false,
        })
    }
}

/// Milliseconds between frames, from the caps' frame rate (unknown for variable rates).
fn frame_interval_ms(video_info: &Option<(gst::Caps, gst_video::VideoInfo)>) -> Option<f64> {
    video_info
        .as_ref()
        .map(|(_, info)| info.fps())
        .filter(|fps| fps.numer() > 0 && fps.denom() > 0)
        .map(|fps| 1000.0 * fps.denom() as f64 / fps.numer() as f64)
}
