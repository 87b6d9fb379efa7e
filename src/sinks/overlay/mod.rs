//! The overlay video sink: each stream's frames with its faces drawn on them — a box in the
//! colour of the face's track, the five landmarks and a label (`#7 F 24-39 asian`) — encoded to
//! H.264 in MP4 by GStreamer (appsrc → videoconvert → x264enc → mp4mux → filesink), same size,
//! frame count and timestamps as the input. One file per stream: with several streams, or a
//! named one, `PATH`'s stem gets `-<stream id>`. A stream's file is finalised (playable) when the stream ends, and all
//! of them when the run ends however it ends (end of input, Ctrl-C, a failed source).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use super::{Claim, OutputConfig, OutputContext, OutputError, Sink, SinkError};
use crate::record::{FaceRecord, FrameRecord, TrackRecord};

pub mod live;
pub mod window;

/// `[overlay]` in pipeline files.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Where the overlay video goes: an `.mp4` file (several streams: one file each).
    pub path: Option<String>,
    /// Pixelate every face in the overlay (the JSON keeps the boxes).
    pub blur_faces: bool,
}

/// A failure of the overlay video.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// `target`: its file, RTSP address or window.
    #[error("overlay {target}: {message}")]
    Failed { target: String, message: String },
    #[error("cannot create {path}: {reason}")]
    Create {
        path: PathBuf,
        reason: std::io::Error,
    },
}

impl OutputError for OverlayError {}

/// Where the overlay goes.
#[derive(Debug, Clone, PartialEq)]
pub enum OverlayTarget {
    /// An .mp4 file (one per stream with several).
    File(PathBuf),
    /// Served over RTSP while the run goes on.
    Rtsp(live::RtspAddress),
    /// Shown in a window per stream on this machine's display.
    Window,
}

impl OverlayConfig {
    /// Where the overlay goes, checked: `None` when there is no overlay.
    pub fn target(&self) -> Result<Option<OverlayTarget>, OverlayError> {
        let Some(path) = self.path.as_deref() else {
            return Ok(None);
        };
        let bad = |message: &str| OverlayError::Failed {
            target: crate::redact::url(path).into_owned(),
            message: message.to_string(),
        };
        if path.starts_with("rtsp://") {
            return live::RtspAddress::parse(path)
                .map(|a| Some(OverlayTarget::Rtsp(a)))
                .map_err(|e| bad(&e));
        }
        if path == "window" {
            return Ok(Some(OverlayTarget::Window));
        }
        if path.contains("://") {
            return Err(bad("give an .mp4 file, rtsp://HOST:PORT/PATH or window"));
        }
        let file = PathBuf::from(path);
        let is_mp4 = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mp4"));
        if !is_mp4 {
            return Err(bad("the overlay file must end in .mp4"));
        }
        Ok(Some(OverlayTarget::File(file)))
    }
}

impl OutputConfig for OverlayConfig {
    fn enabled(&self) -> bool {
        self.path.is_some()
    }

    fn validate(&self) -> Result<(), SinkError> {
        self.target()?;
        Ok(())
    }

    fn claims(&self, cx: &OutputContext<'_>) -> Result<Vec<Claim>, SinkError> {
        let given = || self.path.clone().unwrap_or_default();
        Ok(match self.target()? {
            Some(OverlayTarget::File(path)) => cx
                .streams
                .iter()
                .map(|id| Claim::File {
                    setting: "overlay.path",
                    given: given(),
                    path: stream_file(&path, id, cx.streams.len()),
                    stream: (cx.streams.len() > 1).then(|| id.clone()),
                })
                .collect(),
            Some(OverlayTarget::Rtsp(address)) => vec![Claim::Port {
                setting: "overlay.path",
                given: given(),
                host: address.host,
                port: address.port,
            }],
            Some(OverlayTarget::Window) | None => Vec::new(),
        })
    }

    fn build(&self, cx: &OutputContext<'_>) -> Result<Box<dyn Sink>, SinkError> {
        match self.target()? {
            Some(to) => Ok(Box::new(OverlaySink::create(self, to, cx.streams)?)),
            None => Err(OverlayError::Failed {
                target: String::new(),
                message: "no overlay path".into(),
            }
            .into()),
        }
    }
}

/// The file of stream `id` when the run has `streams` streams: `path` itself for a lone stream
/// without a name (its id is its position, `0`), else `path`'s stem with the stream's id, so a
/// named stream's file carries its name.
pub fn stream_file(path: &Path, id: &str, streams: usize) -> PathBuf {
    if streams <= 1 && id == "0" {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("overlay");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("mp4");
    path.with_file_name(format!("{stem}-{}.{ext}", file_name_part(id)))
}

/// A stream id as part of a file name, one to one (two ids never share a file): letters and
/// digits of any script and `-_.` as they are, any other character percent-encoded (`a/b` →
/// `a%2Fb`, `%` → `%25`).
pub(crate) fn file_name_part(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_alphanumeric() || "-_.".contains(c) {
            out.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

/// One stream's encoder, started at its first frame (when the size is known).
struct Encoder {
    path: PathBuf,
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    width: u32,
    height: u32,
    /// The last frame, waiting for the next one's time (its duration).
    pending: Option<(Vec<u8>, u64)>,
    /// The last frame's duration, given to the very last frame as well.
    last_duration_ns: u64,
    frames: u64,
    /// Frames left out: of another size than the file's.
    skipped: u64,
}

/// How long finalising a file may take before it is reported as failed.
const FINALISE_TIMEOUT: Duration = Duration::from_secs(30);

impl Encoder {
    fn start(path: &Path, width: u32, height: u32) -> Result<Self, OverlayError> {
        let fail = |message: String| OverlayError::Failed {
            target: path.display().to_string(),
            message,
        };
        gst::init().map_err(|e| fail(e.to_string()))?;
        let make = |factory: &str| {
            gst::ElementFactory::make(factory).build().map_err(|_| {
                fail(format!(
                    "GStreamer element {factory} is missing (install gstreamer1.0-plugins-ugly and -good)"
                ))
            })
        };
        let appsrc = gst_app::AppSrc::builder()
            .caps(&rgb_caps(even(width), even(height)))
            .format(gst::Format::Time)
            .is_live(false)
            // Back-pressure instead of an unbounded queue: the encoder keeps up or the run waits.
            .block(true)
            .max_bytes(u64::from(even(width)) * u64::from(even(height)) * 3 * 8)
            .build();
        let convert = make("videoconvert")?;
        let encoder = make("x264enc")?;
        // Constant quality (so the picture away from faces stays the input's), fastest preset.
        encoder.set_property_from_str("speed-preset", "ultrafast");
        encoder.set_property_from_str("pass", "qual");
        encoder.set_property("quantizer", 20u32);
        let i420 = gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .build();
        let filter = gst::ElementFactory::make("capsfilter")
            .property("caps", &i420)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mux = make("mp4mux")?;
        // Fragmented (a fragment a second): what was written stays playable if the process dies
        // before the end, and the muxer's index does not grow with a camera that runs for days.
        mux.set_property("fragment-duration", 1000u32);
        let sink = gst::ElementFactory::make("filesink")
            .property("location", path.display().to_string())
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let pipeline = gst::Pipeline::new();
        let elements = [
            appsrc.upcast_ref::<gst::Element>(),
            &convert,
            &filter,
            &encoder,
            &mux,
            &sink,
        ];
        pipeline
            .add_many(elements)
            .map_err(|e| fail(e.to_string()))?;
        gst::Element::link_many(elements).map_err(|e| fail(e.to_string()))?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| fail(format!("cannot start the encoder: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            pipeline,
            appsrc,
            width,
            height,
            pending: None,
            // 25 fps until a second frame says otherwise.
            last_duration_ns: 40_000_000,
            frames: 0,
            skipped: 0,
        })
    }

    fn error(&self, message: impl Into<String>) -> OverlayError {
        OverlayError::Failed {
            target: self.path.display().to_string(),
            message: message.into(),
        }
    }

    /// The first error the encoder's pipeline reported, if any.
    fn bus_error(&self) -> Option<OverlayError> {
        pipeline_error(&self.pipeline).map(|e| self.error(e))
    }

    /// Queues a frame. Each frame is handed to the encoder when the next one comes, with its
    /// duration (to the next frame's time): a muxer gives a last frame without a duration no
    /// time, and players drop it.
    fn push(&mut self, pixels: Vec<u8>, pts_ms: f64) -> Result<(), OverlayError> {
        if let Some(e) = self.bus_error() {
            return Err(e);
        }
        // Timestamps as the input's; never backwards (a muxer refuses that).
        let mut pts_ns = (pts_ms.max(0.0) * 1e6).round() as u64;
        if let Some((_, last)) = &self.pending
            && pts_ns <= *last
        {
            pts_ns = last + 1_000;
        }
        if let Some((previous, previous_pts)) = self.pending.take() {
            let duration = pts_ns - previous_pts;
            self.last_duration_ns = duration;
            self.send(previous, previous_pts, duration)?;
        }
        self.pending = Some((pixels, pts_ns));
        Ok(())
    }

    fn send(&mut self, pixels: Vec<u8>, pts_ns: u64, duration_ns: u64) -> Result<(), OverlayError> {
        let pixels = encoder_layout(
            pixels,
            (self.width as usize, self.height as usize),
            (even(self.width) as usize, even(self.height) as usize),
        );
        let mut buffer = gst::Buffer::from_mut_slice(pixels);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(pts_ns));
            b.set_duration(gst::ClockTime::from_nseconds(duration_ns));
        }
        self.appsrc
            .push_buffer(buffer)
            .map_err(|e| self.error(format!("encoder stopped: {e:?}")))?;
        self.frames += 1;
        Ok(())
    }

    /// Ends the file: end-of-stream through the encoder and muxer, then waits for it to be
    /// written.
    fn finish(mut self) -> Result<(), OverlayError> {
        // The last frame; whatever happens to it, the file is still ended below.
        let last = match self.pending.take() {
            Some((pixels, pts_ns)) => {
                let duration = self.last_duration_ns;
                self.send(pixels, pts_ns, duration)
            }
            None => Ok(()),
        };
        let _ = self.appsrc.end_of_stream();
        let result = match self.pipeline.bus() {
            Some(bus) => match bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(FINALISE_TIMEOUT.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            ) {
                Some(msg) => match msg.view() {
                    gst::MessageView::Error(e) => Err(self.error(e.error().to_string())),
                    _ => Ok(()),
                },
                None => Err(self.error("timed out finishing the file")),
            },
            None => Ok(()),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        if self.skipped > 0 {
            tracing::warn!(
                "overlay {}: {} frames written, {} left out (another size)",
                self.path.display(),
                self.frames,
                self.skipped
            );
        }
        tracing::debug!(path = %self.path.display(), frames = self.frames, "overlay file finished");
        last.and(result)
    }
}

/// Packed RGB frames of `width`×`height` at a variable rate: what the overlay outputs' appsrc
/// elements are given.
pub(super) fn rgb_caps(width: u32, height: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("framerate", gst::Fraction::new(0, 1))
        .build()
}

/// The first error `pipeline` posted on its bus and nobody read yet, as text.
pub(super) fn pipeline_error(pipeline: &gst::Pipeline) -> Option<String> {
    let message = pipeline.bus()?.pop_filtered(&[gst::MessageType::Error])?;
    match message.view() {
        gst::MessageView::Error(e) => Some(e.error().to_string()),
        _ => None,
    }
}

/// The encoder's frame size: H.264 in 4:2:0 needs even sides, so an odd side gets one black
/// line more.
fn even(side: u32) -> u32 {
    side + (side & 1)
}

/// Packed RGB rows of `width`×`height` laid out as GStreamer's raw RGB of `out_width`×`out_height`
/// (rows start on 4-byte boundaries; the extra column or row, if any, is black).
fn encoder_layout(
    pixels: Vec<u8>,
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
) -> Vec<u8> {
    let row = width * 3;
    let stride = (out_width * 3).div_ceil(4) * 4;
    if stride == row && out_height == height {
        return pixels;
    }
    let mut out = vec![0u8; stride * out_height];
    for (dst, src) in out.chunks_exact_mut(stride).zip(pixels.chunks_exact(row)) {
        dst[..row].copy_from_slice(src);
    }
    out
}

/// The overlay sink of a run.
pub struct OverlaySink {
    path: PathBuf,
    streams: usize,
    blur_faces: bool,
    font: &'static FontVec,
    /// Per stream index: its encoder once started, `None` before its first frame or after its end.
    encoders: Vec<Option<Encoder>>,
    /// Streams whose file is finished.
    ended: Vec<bool>,
    /// Served over RTSP instead of written to files.
    live: Option<live::RtspOverlay>,
    /// Shown in windows instead of written to files.
    window: Option<window::WindowOverlay>,
    /// Files created (empty) before the run; those still empty at the end are removed (a
    /// stream that gave no frame leaves no unplayable file).
    created: Vec<PathBuf>,
}

impl OverlaySink {
    /// Checks what drawing and encoding need (a font, the GStreamer elements) before the run
    /// starts; files are created at each stream's first frame.
    pub fn create(
        config: &OverlayConfig,
        to: OverlayTarget,
        stream_ids: &[String],
    ) -> Result<Self, OverlayError> {
        let streams = stream_ids.len();
        let target = match &to {
            OverlayTarget::File(path) => path.display().to_string(),
            OverlayTarget::Rtsp(a) => format!("rtsp://{}:{}{}", a.host, a.port, a.path),
            OverlayTarget::Window => "window".into(),
        };
        let font = crate::font::dejavu_sans().ok_or_else(|| OverlayError::Failed {
            target: target.clone(),
            message: format!(
                "no font to draw labels with: install fonts-dejavu-core (looked for {})",
                crate::font::FONT_PATHS[0]
            ),
        })?;
        gst::init().map_err(|e| OverlayError::Failed {
            target: target.clone(),
            message: e.to_string(),
        })?;
        let factories: &[&str] = match &to {
            OverlayTarget::File(_) => &["appsrc", "videoconvert", "x264enc", "mp4mux", "filesink"],
            OverlayTarget::Rtsp(_) => &["appsrc", "videoconvert", "x264enc", "rtph264pay"],
            // The window checks its own (a display sink).
            OverlayTarget::Window => &[],
        };
        for &factory in factories {
            if gst::ElementFactory::find(factory).is_none() {
                return Err(OverlayError::Failed {
                    target,
                    message: format!(
                        "GStreamer element {factory} is missing (install gstreamer1.0-plugins-ugly and -good)"
                    ),
                });
            }
        }
        // Served only once drawing and encoding are known to work.
        let mut created = Vec::new();
        if let OverlayTarget::File(path) = &to {
            // Each stream's file, created now (empty): one that cannot be written fails the run
            // before it starts, not at its first frame.
            for id in stream_ids {
                created.push(stream_file(path, id, streams));
                let file = stream_file(path, id, streams);
                super::check_folder(&file)
                    .and_then(|()| std::fs::File::create(&file).map(drop))
                    .map_err(|reason| OverlayError::Create {
                        path: file.clone(),
                        reason,
                    })?;
            }
        }
        let (path, live, window) = match to {
            OverlayTarget::File(path) => (path, None, None),
            OverlayTarget::Rtsp(address) => (
                PathBuf::new(),
                Some(live::RtspOverlay::start(address, stream_ids)?),
                None,
            ),
            OverlayTarget::Window => (
                PathBuf::new(),
                None,
                Some(window::WindowOverlay::open(stream_ids).map_err(|message| {
                    OverlayError::Failed {
                        target: target.clone(),
                        message,
                    }
                })?),
            ),
        };
        Ok(Self {
            path,
            streams,
            blur_faces: config.blur_faces,
            font,
            encoders: Vec::new(),
            ended: Vec::new(),
            live,
            window,
            created,
        })
    }

    fn slot(&mut self, stream: usize) -> &mut Option<Encoder> {
        if self.encoders.len() <= stream {
            self.encoders.resize_with(stream + 1, || None);
            self.ended.resize(stream + 1, false);
        }
        &mut self.encoders[stream]
    }
}

impl Sink for OverlaySink {
    fn draws(&self) -> bool {
        true
    }

    fn write_frame(
        &mut self,
        stream: usize,
        record: &FrameRecord,
        pixels: &[u8],
    ) -> Result<(), SinkError> {
        let (width, height) = (record.width, record.height);
        let bytes = width as usize * height as usize * 3;
        if pixels.len() < bytes || bytes == 0 {
            // Nothing to draw on (a frame without pixels should not happen; never fail a run on it).
            return Ok(());
        }
        let (blur_faces, font) = (self.blur_faces, self.font);
        if let Some(live) = &self.live {
            if !live.watching(stream) {
                return Ok(());
            }
            let mut canvas = pixels[..bytes].to_vec();
            draw_faces(&mut canvas, record, blur_faces, font);
            let (w, h) = (even(width), even(height));
            let laid_out = encoder_layout(
                canvas,
                (width as usize, height as usize),
                (w as usize, h as usize),
            );
            live.push(stream, w, h, laid_out);
            return Ok(());
        }
        if let Some(window) = &mut self.window {
            if !window.showing(stream) {
                return Ok(());
            }
            let mut canvas = pixels[..bytes].to_vec();
            draw_faces(&mut canvas, record, blur_faces, font);
            let size = (width as usize, height as usize);
            window.show(stream, width, height, encoder_layout(canvas, size, size));
            return Ok(());
        }
        let path = stream_file(&self.path, &record.stream, self.streams);
        let slot = self.slot(stream);
        if slot.is_none() {
            *slot = Some(Encoder::start(&path, width, height)?);
        }
        let Some(encoder) = slot.as_mut() else {
            return Ok(());
        };
        if (encoder.width, encoder.height) != (width, height) {
            // One file has one size: a camera that comes back at another resolution is not drawn
            // further (said once, counted in the log at the end).
            if encoder.skipped == 0 {
                tracing::warn!(
                    "overlay {}: stream {} changed size from {}x{} to {width}x{height}; its frames are left out of the overlay",
                    encoder.path.display(),
                    record.stream,
                    encoder.width,
                    encoder.height
                );
            }
            encoder.skipped += 1;
            return Ok(());
        }
        let mut canvas = pixels[..bytes].to_vec();
        draw_faces(&mut canvas, record, blur_faces, font);
        Ok(encoder.push(canvas, record.pts_ms)?)
    }

    fn write_track(&mut self, _record: &TrackRecord) -> Result<(), SinkError> {
        Ok(())
    }

    fn end_stream(&mut self, stream: usize) -> Result<(), SinkError> {
        if let Some(window) = &mut self.window {
            window.end(stream, true);
        }
        let encoder = self.slot(stream).take();
        if let Some(e) = self.ended.get_mut(stream) {
            *e = true;
        }
        Ok(encoder.map_or(Ok(()), Encoder::finish)?)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(live) = self.live.as_mut() {
            live.stop();
        }
        if let Some(window) = self.window.as_mut() {
            window.close();
        }
        let mut result = Ok(());
        for slot in &mut self.encoders {
            if let Some(encoder) = slot.take() {
                result = result.and(encoder.finish());
            }
        }
        for path in &self.created {
            if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(result?)
    }
}

/// A frame's faces drawn on its packed RGB pixels: pixelated first with `blur_faces`, then box,
/// landmarks and label of each.
fn draw_faces(rgb: &mut [u8], record: &FrameRecord, blur_faces: bool, font: &FontVec) {
    let mut image = Canvas {
        rgb,
        width: record.width as usize,
        height: record.height as usize,
    };
    if blur_faces {
        for face in &record.faces {
            image.pixelate(face.face.bbox);
        }
    }
    for face in &record.faces {
        draw_face(&mut image, face, font);
    }
}

/// Colours of tracks (Okabe–Ito, readable by colour-blind viewers), by track id.
const PALETTE: [[u8; 3]; 8] = [
    [230, 159, 0],
    [86, 180, 233],
    [0, 158, 115],
    [240, 228, 66],
    [0, 114, 178],
    [213, 94, 0],
    [204, 121, 167],
    [255, 255, 255],
];

/// The colour of faces whose track is not yet a person.
const UNCONFIRMED: [u8; 3] = [128, 128, 128];

/// A packed RGB picture to draw on.
struct Canvas<'a> {
    rgb: &'a mut [u8],
    width: usize,
    height: usize,
}

impl Canvas<'_> {
    fn put(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        self.rgb[i..i + 3].copy_from_slice(&colour);
    }

    fn blend(&mut self, x: i64, y: i64, colour: [u8; 3], coverage: f32) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        for (p, c) in self.rgb[i..i + 3].iter_mut().zip(colour) {
            *p = (f32::from(*p) * (1.0 - coverage) + f32::from(c) * coverage).round() as u8;
        }
    }

    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, colour: [u8; 3]) {
        for y in y0.max(0)..y1.min(self.height as i64) {
            for x in x0.max(0)..x1.min(self.width as i64) {
                self.put(x, y, colour);
            }
        }
    }

    /// The outline of a box, `thickness` pixels inward.
    fn outline(&mut self, [x0, y0, x1, y1]: [i64; 4], thickness: i64, colour: [u8; 3]) {
        self.fill(x0, y0, x1, y0 + thickness, colour);
        self.fill(x0, y1 - thickness, x1, y1, colour);
        self.fill(x0, y0, x0 + thickness, y1, colour);
        self.fill(x1 - thickness, y0, x1, y1, colour);
    }

    /// Blocks of the box's mean colour, about eight across the face: no one can be recognised.
    fn pixelate(&mut self, bbox: [f32; 4]) {
        let x0 = (bbox[0].floor().max(0.0) as usize).min(self.width);
        let y0 = (bbox[1].floor().max(0.0) as usize).min(self.height);
        let x1 = (bbox[2].ceil().max(0.0) as usize).min(self.width);
        let y1 = (bbox[3].ceil().max(0.0) as usize).min(self.height);
        let block = ((x1.saturating_sub(x0)).max(y1.saturating_sub(y0)) / 8).max(4);
        for by in (y0..y1).step_by(block) {
            for bx in (x0..x1).step_by(block) {
                let (ex, ey) = ((bx + block).min(x1), (by + block).min(y1));
                let mut sum = [0u64; 3];
                for y in by..ey {
                    for x in bx..ex {
                        let i = (y * self.width + x) * 3;
                        for (total, v) in sum.iter_mut().zip(&self.rgb[i..i + 3]) {
                            *total += u64::from(*v);
                        }
                    }
                }
                let n = ((ex - bx) * (ey - by)).max(1) as u64;
                let mean = sum.map(|s| (s / n) as u8);
                self.fill(bx as i64, by as i64, ex as i64, ey as i64, mean);
            }
        }
    }

    /// `text` with its top-left corner at (x, y).
    fn text(&mut self, font: &FontVec, text: &str, x: f32, y: f32, size: f32, colour: [u8; 3]) {
        let baseline = y + font.as_scaled(PxScale::from(size)).ascent();
        crate::font::rasterise(font, text, (x, baseline), size, |px, py, coverage| {
            self.blend(px, py, colour, coverage)
        });
    }
}

/// A face's label: track id, gender initial, age group, race (what the face has).
pub fn label(face: &FaceRecord) -> String {
    let mut parts = Vec::new();
    if let Some(id) = face.track_id {
        parts.push(format!("#{id}"));
    }
    if let Some(g) = &face.attributes.gender {
        let initial = match g.label.as_str() {
            "female" => "F".to_string(),
            "male" => "M".to_string(),
            crate::record::UNKNOWN => "?".to_string(),
            other => other.to_string(),
        };
        parts.push(initial);
    }
    if let Some(a) = &face.attributes.age {
        parts.push(a.group.clone());
    }
    if let Some(r) = &face.attributes.race {
        // An unknown race is left unsaid.
        if r.label != crate::record::UNKNOWN {
            parts.push(r.label.clone());
        }
    }
    parts.join(" ")
}

/// Box, landmarks and label of one face.
fn draw_face(image: &mut Canvas<'_>, face: &FaceRecord, font: &FontVec) {
    // A face not yet a person (perhaps a neck or a hand): grey, without a label.
    let unconfirmed = face.confirmed == Some(false);
    let colour = if unconfirmed {
        UNCONFIRMED
    } else {
        PALETTE[(face.track_id.unwrap_or(0) % PALETTE.len() as u64) as usize]
    };
    let [x0, y0, x1, y1] = face.face.bbox;
    let bbox = [
        x0.round() as i64,
        y0.round() as i64,
        x1.round() as i64,
        y1.round() as i64,
    ];
    // Thick enough to see on a 1080p frame, thin on small faces.
    let thickness = ((image.height as f32 / 360.0).round() as i64).clamp(2, 6);
    image.outline(bbox, thickness, colour);
    let dot = thickness;
    for [lx, ly] in face.face.landmarks {
        let (lx, ly) = (lx.round() as i64, ly.round() as i64);
        image.fill(lx - dot, ly - dot, lx + dot + 1, ly + dot + 1, colour);
    }
    let text = label(face);
    if text.is_empty() || unconfirmed {
        return;
    }
    let size = (image.height as f32 / 30.0).clamp(12.0, 36.0);
    let width = crate::font::text_width(font, &text, size).ceil() as i64 + 6;
    let height = size.ceil() as i64 + 4;
    // Above the box, or inside its top when the box touches the frame's top.
    let top = if bbox[1] - height >= 0 {
        bbox[1] - height
    } else {
        bbox[1]
    };
    image.fill(bbox[0], top, bbox[0] + width, top + height, colour);
    image.text(
        font,
        &text,
        (bbox[0] + 3) as f32,
        (top + 2) as f32,
        size,
        [0, 0, 0],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_streams_get_one_file_each() {
        let p = Path::new("out/overlay.mp4");
        assert_eq!(stream_file(p, "0", 1), Path::new("out/overlay.mp4"));
        assert_eq!(
            stream_file(p, "lobby", 1),
            Path::new("out/overlay-lobby.mp4")
        );
        assert_eq!(stream_file(p, "0", 2), Path::new("out/overlay-0.mp4"));
        assert_eq!(
            stream_file(p, "lobby/2", 2),
            Path::new("out/overlay-lobby%2F2.mp4")
        );
    }

    /// Two stream ids never share a file: names of any script stay as they are, and what is
    /// encoded cannot be confused with what is kept.
    #[test]
    fn stream_files_are_one_to_one() {
        let p = Path::new("gate.mp4");
        assert_eq!(stream_file(p, "东门", 2), Path::new("gate-东门.mp4"));
        assert_eq!(stream_file(p, "西门", 2), Path::new("gate-西门.mp4"));
        let ids = [
            "东门", "西门", "a_b", "a b", "a/b", "a%2Fb", "a%20b", "a_2Fb", "A", "a", "é",
            "e\u{301}",
        ];
        let files: std::collections::HashSet<PathBuf> =
            ids.iter().map(|id| stream_file(p, id, 2)).collect();
        assert_eq!(files.len(), ids.len(), "{files:?}");
        for f in &files {
            let name = f.to_str().unwrap();
            assert!(!name.contains('/') && !name.contains(' '), "{name}");
        }
    }

    #[test]
    fn rows_are_padded_to_four_bytes_and_odd_sides_to_even() {
        // 2×2 RGB: rows of 6 bytes become rows of 8.
        let packed: Vec<u8> = (1..=12).collect();
        assert_eq!(
            encoder_layout(packed, (2, 2), (2, 2)),
            vec![1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0]
        );
        let four_wide: Vec<u8> = (0..24).collect();
        assert_eq!(encoder_layout(four_wide.clone(), (4, 2), (4, 2)), four_wide);
        // 1×1 becomes 2×2: the pixel, then black (row stride 8).
        assert_eq!(
            encoder_layout(vec![9, 8, 7], (1, 1), (2, 2)),
            vec![9, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!((even(641), even(480)), (642, 480));
    }

    #[test]
    fn only_mp4_files_are_taken() {
        let config = |path: &str| OverlayConfig {
            path: Some(path.into()),
            blur_faces: false,
        };
        assert!(matches!(
            config("a/b.mp4").target().unwrap(),
            Some(OverlayTarget::File(_))
        ));
        assert!(matches!(
            config("rtsp://0.0.0.0:8554/faces").target().unwrap(),
            Some(OverlayTarget::Rtsp(_))
        ));
        assert_eq!(
            config("window").target().unwrap(),
            Some(OverlayTarget::Window)
        );
        assert!(OverlayConfig::default().target().unwrap().is_none());
        for bad in ["a.mkv", "windows", "http://h/x.mp4", "rtsp://h:1", "noext"] {
            let e = config(bad).target().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("overlay {bad}: ")) && !e.contains('\n'),
                "{e}"
            );
        }
        // A served overlay takes no login: refused without quoting any part of the password.
        for bad in [
            "rtsp://u:pw/12@h:1/f",
            "rtsp://u:s3cret@h/f",
            "rtsp://u:a@b@h/f",
        ] {
            let e = config(bad).target().unwrap_err().to_string();
            assert!(e.starts_with("overlay rtsp://u:***@h"), "{e}");
            assert!(
                !e.contains("pw") && !e.contains("s3cret") && !e.contains("a@b"),
                "{e}"
            );
        }
    }

    #[test]
    fn pixelating_hides_detail_and_stays_inside_the_box() {
        let (w, h) = (32usize, 32usize);
        let mut rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let before = rgb.clone();
        let mut c = Canvas {
            rgb: &mut rgb,
            width: w,
            height: h,
        };
        c.pixelate([8.0, 8.0, 24.0, 24.0]);
        let px = |v: &[u8], x: usize, y: usize| v[(y * w + x) * 3];
        // Outside: untouched. Inside: 4×4 blocks of one colour.
        assert_eq!(px(&rgb, 2, 2), px(&before, 2, 2));
        assert_eq!(px(&rgb, 30, 30), px(&before, 30, 30));
        assert_eq!(px(&rgb, 8, 8), px(&rgb, 11, 11));
        assert_ne!(px(&rgb, 8, 8), px(&before, 8, 8));
    }
}
