//! MTCNN face detection (P-Net pyramid → R-Net → O-Net, five landmarks) on ONNX Runtime.
//!
//! The cascade follows the reference implementation (facenet-pytorch 2.6.0) step by step, so that
//! faceflow finds the faces it finds: same pyramid, same area resampling, same box arithmetic and the
//! same NMS flavours and thresholds. The networks are the reference weights converted to ONNX by
//! `models/convert_mtcnn.py` and compiled into the binary.

pub mod boxes;
pub mod cut;
pub mod nms;
pub(crate) mod pace;
pub mod pyramid;
pub(crate) mod schedule;
pub(crate) mod stage;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use crate::runtime::{self, RuntimeError, Shapes};
use boxes::{Candidate, candidates_from_pnet, crop_rect, regress, regress_pnet, square};
use nms::{BoxF, Overlap, nms};
use pyramid::{
    IntegralImage, PNET_CELL_PX, PixelRect, RgbView, pyramid_scales, resize_area_normalized,
    scaled_size,
};

/// Reference defaults (facenet-pytorch `MTCNN()`).
pub const DEFAULT_MIN_FACE_PX: f64 = 20.0;
pub const DEFAULT_THRESHOLDS: [f32; 3] = [0.6, 0.7, 0.7];
pub const DEFAULT_SCALE_FACTOR: f64 = 0.709;
pub const DEFAULT_NMS_WITHIN_SCALE: f32 = 0.5;
pub const DEFAULT_NMS_ACROSS_SCALES: f32 = 0.7;
pub const DEFAULT_NMS_RNET: f32 = 0.7;
pub const DEFAULT_NMS_ONET_MIN: f32 = 0.7;

/// How much lower R-Net's and O-Net's thresholds are for a face followed from the frame before.
const FOLLOW_RELIEF: f32 = 0.2;
const RNET_INPUT_PX: usize = 24;
const ONET_INPUT_PX: usize = 48;

static PNET_ONNX: &[u8] = include_bytes!("../../models/mtcnn/pnet.onnx");
static RNET_ONNX: &[u8] = include_bytes!("../../models/mtcnn/rnet.onnx");
static ONET_ONNX: &[u8] = include_bytes!("../../models/mtcnn/onet.onnx");

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot read model {path}: {reason}")]
    ModelRead {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },
    #[error("{network} inference failed: {message}")]
    Inference {
        network: &'static str,
        message: String,
    },
    /// A setting out of range; the message names it.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Range(#[from] crate::limits::RangeError),
    #[error("image buffer of {len} bytes is too small for {width}x{height} RGB")]
    BadImage {
        len: usize,
        width: usize,
        height: usize,
    },
}

/// Detector settings; every field has the reference default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Smallest face searched for, in frame pixels.
    pub min_face_px: f64,
    /// Face-probability thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Ratio between successive pyramid scales, in (0, 1).
    pub scale_factor: f64,
    /// IoU above which P-Net boxes of one scale are merged.
    pub nms_within_scale: f32,
    /// IoU above which P-Net boxes of all scales are merged.
    pub nms_across_scales: f32,
    /// IoU above which R-Net boxes are merged.
    pub nms_rnet: f32,
    /// Intersection-over-smaller-box above which O-Net boxes are merged.
    pub nms_onet_min: f32,
    /// Folder with pnet.onnx, rnet.onnx, onet.onnx to use instead of the built-in networks.
    pub models_dir: Option<PathBuf>,
    /// ONNX Runtime threads per network (0: one per core with one worker, else one).
    pub threads: usize,
    /// Detector workers in a video pipeline, each on its own frames (0: one per core). On few cores
    /// several single-threaded workers beat one multi-threaded one: MTCNN's small convolutions
    /// parallelise poorly inside a frame.
    pub workers: usize,
    /// Video: run the full cascade on every Nth frame of a stream only; on the frames between,
    /// the faces of the frame before are followed with R-Net and O-Net alone (see
    /// [`Mtcnn::follow`]). 1: the full cascade on every frame. 0 (the default): by time, a full
    /// search once [`AUTO_DETECT_INTERVAL_MS`] of video have passed since the last (every 3rd
    /// frame at 25 or 30 fps, every frame at 10 fps).
    pub detect_every: u32,
    /// Video: end every track at a scene cut (edited footage; see `detect::cut`). A fixed camera
    /// never cuts; false spares it the (small) risk of a false one.
    pub scene_cuts: bool,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            min_face_px: DEFAULT_MIN_FACE_PX,
            thresholds: DEFAULT_THRESHOLDS,
            scale_factor: DEFAULT_SCALE_FACTOR,
            nms_within_scale: DEFAULT_NMS_WITHIN_SCALE,
            nms_across_scales: DEFAULT_NMS_ACROSS_SCALES,
            nms_rnet: DEFAULT_NMS_RNET,
            nms_onet_min: DEFAULT_NMS_ONET_MIN,
            models_dir: None,
            threads: 0,
            workers: 0,
            detect_every: 0,
            scene_cuts: true,
        }
    }
}

impl DetectConfig {
    /// Workers to run: `workers`, or one per available core.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Threads per ONNX Runtime session when `workers` detectors run side by side.
    pub fn threads_per_worker(&self, workers: usize) -> usize {
        match (self.threads, workers) {
            (0, 0 | 1) => 0,
            (0, _) => 1,
            (n, _) => n,
        }
    }

    pub fn validate(&self) -> Result<(), DetectError> {
        use crate::limits::{MAX_THREADS, Setting};
        // Below 8 px the pyramid's first level upscales a frame more than 1.5×: a 1080p frame
        // becomes gigabytes of floats. The factor's upper bound keeps the pyramid to tens of levels.
        Setting::in_section("detect", "min_face_px").check(
            self.min_face_px,
            8.0,
            10_000.0,
            "pixels",
        )?;
        Setting::in_section("detect", "scale_factor").check(self.scale_factor, 0.1, 0.95, "")?;
        Setting::in_section("detect", "thresholds").check_each(&self.thresholds, 0.0, 1.0, "")?;
        for (name, t) in [
            ("nms_within_scale", self.nms_within_scale),
            ("nms_across_scales", self.nms_across_scales),
            ("nms_rnet", self.nms_rnet),
            ("nms_onet_min", self.nms_onet_min),
        ] {
            if !(t > 0.0 && t <= 1.0) {
                return Err(DetectError::Config(format!(
                    "{name} = {t}: must be above 0 and at most 1"
                )));
            }
        }
        Setting::in_section("detect", "threads").check(self.threads, 0, MAX_THREADS, "")?;
        Setting::in_section("detect", "workers").check_or_zero(
            self.workers,
            1,
            32,
            "",
            "one per core",
        )?;
        Setting::in_section("detect", "detect_every").check_or_zero(
            self.detect_every,
            1,
            MAX_DETECT_EVERY,
            "frames",
            "auto",
        )?;
        Ok(())
    }
}

/// One detected face, in pixels of the frame it was found in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// O-Net face probability.
    pub score: f32,
    /// Left eye, right eye, nose, left mouth corner, right mouth corner, as `[x, y]`.
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
}

/// With `detect_every` 0 (auto): video time from one full search to the next. Chosen from
/// measurement (docs/performance.md): at 25–30 fps it is every 3rd frame, which keeps 1080p in real time
/// on two cores with issue 6's tracking quality; at 10–12 fps (faces move further between
/// frames) every frame or every other one.
pub const AUTO_DETECT_INTERVAL_MS: f64 = 100.0;

/// With `detect_every` 0: the most frames between full searches, whatever the frame rate.
pub const AUTO_MAX_RUN: u32 = 8;

/// With `detect_every` 0: the run length queues are sized for.
const AUTO_QUEUE_RUN: u32 = 4;

impl DetectConfig {
    /// Frames from one full search to the next, to size queues by: with auto, a run at 25–30
    /// fps (3) and one more. Longer runs (high frame rates) only overlap less across workers;
    /// sizing for the longest would let a live stream fall further behind.
    pub fn run_frames_for_queues(&self) -> u32 {
        match self.detect_every {
            0 => AUTO_QUEUE_RUN,
            n => n,
        }
    }
}

/// The largest `detect_every`: beyond a few seconds between full detections, faces that enter
/// are found too late to be of use.
pub const MAX_DETECT_EVERY: u32 = 1000;

/// What a video pipeline's detect workers call: MTCNN, or a stand-in in tests.
pub trait FrameDetector: Send {
    fn detect_frame(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<Face>, DetectError>;

    /// The faces of `previous` (found in the stream's frame before this one) in this frame,
    /// without a search of the whole frame; faces that entered are not found. A detector without
    /// a cheaper way detects.
    fn follow_frame(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        previous: &[Face],
    ) -> Result<Vec<Face>, DetectError> {
        let _ = previous;
        self.detect_frame(rgb, width, height)
    }

    /// A search of the whole frame, except that the smallest faces may be looked for only
    /// where `previous` (the faces of the stream's frame before) has them: video searches for
    /// those every other keyframe (see [`Mtcnn::detect_coarse`]). A detector without a cheaper
    /// way detects.
    fn coarse_frame(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        previous: &[Face],
    ) -> Result<Vec<Face>, DetectError> {
        let _ = previous;
        self.detect_frame(rgb, width, height)
    }
}

impl FrameDetector for Mtcnn {
    fn detect_frame(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<Face>, DetectError> {
        self.detect(rgb, width, height)
    }

    fn follow_frame(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        previous: &[Face],
    ) -> Result<Vec<Face>, DetectError> {
        self.follow(rgb, width, height, previous)
    }

    fn coarse_frame(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        previous: &[Face],
    ) -> Result<Vec<Face>, DetectError> {
        self.detect_coarse(rgb, width, height, previous)
    }
}

/// The largest face by box area: the one an image is about (evaluation, training crops).
pub fn largest_face(faces: &[Face]) -> Option<&Face> {
    faces.iter().max_by(|a, b| a.area().total_cmp(&b.area()))
}

/// The three MTCNN networks and reusable buffers. One per worker thread: ONNX Runtime sessions run
/// through `&mut self`.
pub struct Mtcnn {
    config: DetectConfig,
    pnet: Session,
    rnet: Session,
    onet: Session,
    input: Vec<f32>,
    /// One strip of a pyramid level for P-Net (see [`Mtcnn::pnet_map`]).
    strip: Vec<f32>,
    /// The pyramid levels of the picture in work, made with its summed-area table.
    levels: Vec<Vec<f32>>,
    integral: IntegralImage,
    /// Picture sizes P-Net has planned memory for; `None` once it has gone on without plans
    /// (see [`PNET_PLANNED_SIZES`]).
    pnet_sizes: Option<Vec<(usize, usize)>>,
    /// P-Net's model as loaded at the start, to rebuild it from (not read again).
    pnet_model: (Cow<'static, [u8]>, Option<PathBuf>),
}

/// A network's ONNX bytes: the built-in one, or `name`.onnx in `dir` (with its path, for errors).
fn network_bytes(
    dir: Option<&Path>,
    name: &str,
    built_in: &'static [u8],
) -> Result<(Cow<'static, [u8]>, Option<PathBuf>), DetectError> {
    let Some(dir) = dir else {
        return Ok((Cow::Borrowed(built_in), None));
    };
    let path = dir.join(format!("{name}.onnx"));
    let bytes = std::fs::read(&path).map_err(|reason| DetectError::ModelRead {
        path: path.clone(),
        reason,
    })?;
    Ok((Cow::Owned(bytes), Some(path)))
}

fn load_network(
    (model, path): &(Cow<'static, [u8]>, Option<PathBuf>),
    threads: usize,
    shapes: Shapes,
) -> Result<Session, DetectError> {
    runtime::session_for_shapes(model, threads, shapes).map_err(|e| match path {
        None => DetectError::Runtime(e),
        Some(path) => DetectError::ModelLoad {
            path: path.clone(),
            message: e.to_string(),
        },
    })
}

/// P-Net's input shapes follow the picture sizes: a stream has one, a folder of photos may have
/// thousands. P-Net keeps ONNX Runtime's per-shape memory plans ([`Shapes::Few`]) until this many
/// picture sizes have been seen, then goes on without them.
const PNET_PLANNED_SIZES: usize = 16;

fn inference(network: &'static str) -> impl Fn(ort::Error) -> DetectError {
    move |e| DetectError::Inference {
        network,
        message: e.to_string(),
    }
}

impl Mtcnn {
    pub fn new(config: DetectConfig) -> Result<Self, DetectError> {
        config.validate()?;
        let dir = config.models_dir.as_deref();
        // R-Net and O-Net see a few batch sizes only (see `crops_per_call`).
        let pnet_model = network_bytes(dir, "pnet", PNET_ONNX)?;
        let pnet = load_network(&pnet_model, config.threads, Shapes::Few)?;
        let rnet = load_network(
            &network_bytes(dir, "rnet", RNET_ONNX)?,
            config.threads,
            Shapes::Few,
        )?;
        let onet = load_network(
            &network_bytes(dir, "onet", ONET_ONNX)?,
            config.threads,
            Shapes::Few,
        )?;
        Ok(Self {
            config,
            pnet,
            rnet,
            onet,
            input: Vec::new(),
            strip: Vec::new(),
            levels: Vec::new(),
            integral: IntegralImage::new(),
            pnet_sizes: Some(Vec::new()),
            pnet_model,
        })
    }

    pub fn config(&self) -> &DetectConfig {
        &self.config
    }

    /// Detects faces in packed RGB8 pixels, highest score first.
    pub fn detect(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<Face>, DetectError> {
        self.detect_down_to(rgb, width, height, self.config.min_face_px, None)
    }

    /// [`Mtcnn::detect`] without the pyramid's finest level, where the frame is large enough for
    /// that level to cost much ([`coarse_pays`]): the faces of `previous`, the frame before of the
    /// same stream, are followed instead, as [`Mtcnn::follow`] follows them. The
    /// finest level is the search for the smallest faces (`min_face_px` to `min_face_px` /
    /// `scale_factor`) and costs about as much as every other level together; video searches it
    /// every other keyframe, and the small faces it found are followed in between. Smaller
    /// frames, and every frame on a GPU, are searched in full.
    pub fn detect_coarse(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        previous: &[Face],
    ) -> Result<Vec<Face>, DetectError> {
        if !coarse_pays(width as u32, height as u32, self.config.min_face_px) {
            return self.detect(rgb, width, height);
        }
        self.detect_down_to(rgb, width, height, self.config.min_face_px, Some(previous))
    }

    /// [`Mtcnn::detect`] for faces of at least `min_face_px`; with `coarse`, without the
    /// pyramid's finest level, the faces of `coarse` (of the frame before) looked for where they
    /// were instead, as [`Mtcnn::follow`] does.
    fn detect_down_to(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        min_face_px: f64,
        coarse: Option<&[Face]>,
    ) -> Result<Vec<Face>, DetectError> {
        let image = rgb_view(rgb, width, height)?;
        if width == 0 || height == 0 {
            return Ok(Vec::new());
        }
        let t0 = std::time::Instant::now();
        let mut scales = pyramid_scales(
            width as u32,
            height as u32,
            min_face_px,
            self.config.scale_factor,
        );
        // The other levels exactly as a full search has them.
        if coarse.is_some() && !scales.is_empty() {
            scales.remove(0);
        }
        let sizes: Vec<(usize, usize)> = scales
            .iter()
            .map(|&s| scaled_size(width as u32, height as u32, s))
            .collect();
        self.integral
            .rebuild_with_levels(image, &sizes, &mut self.levels);
        let mut proposals = self.stage_pnet(image, &scales, &sizes)?;
        proposals.extend(follow_proposals_of(coarse.unwrap_or_default()));
        let t1 = std::time::Instant::now();
        if proposals.is_empty() {
            return Ok(Vec::new());
        }
        let [_, rnet_threshold, onet_threshold] = self.config.thresholds;
        let refined = self.stage_rnet(image, &proposals, rnet_threshold)?;
        let t2 = std::time::Instant::now();
        if refined.is_empty() {
            return Ok(Vec::new());
        }
        let faces = self.stage_onet(image, &refined, onet_threshold)?;
        tracing::trace!(
            pnet_ms = (t1 - t0).as_secs_f64() * 1e3,
            rnet_ms = (t2 - t1).as_secs_f64() * 1e3,
            onet_ms = t2.elapsed().as_secs_f64() * 1e3,
            proposals = proposals.len(),
            refined = refined.len(),
            faces = faces.len(),
            "mtcnn stages"
        );
        Ok(faces)
    }

    /// Finds the faces of the frame before (`previous`) again in this frame without P-Net's
    /// pyramid, the costly part: each previous box, squared, is a proposal for R-Net and O-Net as
    /// P-Net's would be, and their box regression follows the face as it moves (a face moves a
    /// small part of its size from one frame to the next). Landmarks come fresh from O-Net, so
    /// alignment and attributes still see every frame. A face that left, or moved too far, fails
    /// R-Net's or O-Net's threshold and is dropped; faces that entered wait for the next full
    /// detection.
    pub fn follow(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        previous: &[Face],
    ) -> Result<Vec<Face>, DetectError> {
        let image = rgb_view(rgb, width, height)?;
        if width == 0 || height == 0 || previous.is_empty() {
            return Ok(Vec::new());
        }
        // The crops below sum only the part of the picture they read (see `crops`).
        self.integral.forget();
        let proposals: Vec<(BoxF, f32)> = follow_proposals_of(previous).collect();
        // A face already found needs less evidence to be kept than a new one (hysteresis, as
        // two-threshold trackers do): a weak face is not dropped on every other frame.
        let [_, rnet_threshold, onet_threshold] =
            self.config.thresholds.map(|t| (t - FOLLOW_RELIEF).max(0.0));
        let refined = self.stage_rnet(image, &proposals, rnet_threshold)?;
        if refined.is_empty() {
            return Ok(Vec::new());
        }
        self.stage_onet(image, &refined, onet_threshold)
    }

    /// For a still image: [`Mtcnn::detect`], and when that finds nothing, once more with a black
    /// border around the picture. P-Net's windows and R-Net's and O-Net's squared boxes must overlap
    /// the picture, and a face that fills a tightly cropped portrait (face datasets, profile
    /// pictures) is often lost on the way; with room around it, it is found. Such a face is large
    /// for the picture, so the second look searches only for faces of at least
    /// [`STILL_RETRY_MIN_FACE`] of its shorter side (a few coarse pyramid levels: a picture without
    /// any face costs little more than one look). Boxes and landmarks are in the original
    /// picture's pixels, boxes clipped to it. Video does not retry.
    pub fn detect_still(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<Face>, DetectError> {
        let faces = self.detect(rgb, width, height)?;
        if !faces.is_empty() || width == 0 || height == 0 {
            return Ok(faces);
        }
        let border_px =
            ((width.max(height) as f32 * STILL_BORDER_FRACTION).round() as usize).max(1);
        let padded = with_black_border(rgb, width, height, border_px);
        let (padded_w, padded_h) = (width + 2 * border_px, height + 2 * border_px);
        let min_face_px = self
            .config
            .min_face_px
            .max(f64::from(STILL_RETRY_MIN_FACE) * width.min(height) as f64);
        let found = self.detect_down_to(&padded, padded_w, padded_h, min_face_px, None)?;
        let offset = border_px as f32;
        Ok(found
            .into_iter()
            .filter_map(|mut face| {
                for v in &mut face.bbox {
                    *v -= offset;
                }
                for point in &mut face.landmarks {
                    point[0] -= offset;
                    point[1] -= offset;
                }
                clipped_to_frame(face, width, height)
            })
            .collect())
    }

    /// P-Net over the pyramid levels in `self.levels` (`scales`, of `sizes`): squared proposals
    /// with their P-Net scores.
    fn stage_pnet(
        &mut self,
        image: RgbView<'_>,
        scales: &[f64],
        sizes: &[(usize, usize)],
    ) -> Result<Vec<(BoxF, f32)>, DetectError> {
        self.note_pnet_size(image.width, image.height)?;
        let mut all: Vec<Candidate> = Vec::new();
        for (level, (&scale, &(sw, sh))) in scales.iter().zip(sizes).enumerate() {
            let map = self.pnet_map(level, sw, sh)?;
            let plane = map.height * map.width;
            let (prob, reg) = (&map.face_prob, &map.reg);
            let cands = candidates_from_pnet(
                &prob[..plane],
                &reg[..4 * plane],
                map.width,
                map.height,
                scale as f32,
                self.config.thresholds[0],
            );
            let keep = nms_of(&cands, self.config.nms_within_scale, Overlap::Union);
            all.extend(keep.into_iter().map(|i| cands[i]));
        }
        let keep = nms_of(&all, self.config.nms_across_scales, Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|i| (square(&regress_pnet(&all[i])), all[i].score))
            .collect())
    }

    /// Counts the picture sizes P-Net sees; past [`PNET_PLANNED_SIZES`], rebuilds it without
    /// memory plans (once), so that a folder of photos of every size does not pile them up.
    fn note_pnet_size(&mut self, width: usize, height: usize) -> Result<(), DetectError> {
        let Some(sizes) = &mut self.pnet_sizes else {
            return Ok(());
        };
        if sizes.contains(&(width, height)) {
            return Ok(());
        }
        if sizes.len() < PNET_PLANNED_SIZES {
            sizes.push((width, height));
            return Ok(());
        }
        self.pnet = load_network(&self.pnet_model, self.config.threads, Shapes::Many)?;
        self.pnet_sizes = None;
        Ok(())
    }

    /// P-Net's maps over pyramid level `level` (`width`×`height`, planar). On a CPU
    /// the level goes through in strips of output rows (see [`pnet_strip_rows`]), whose
    /// activations stay in the core's caches (a 1080p frame's first level: 27 % less time). Output row r sees input rows
    /// 2r to 2r+11 and strips start on even rows, so the pooling windows fall where they fall
    /// over the whole level: the maps are the same, value for value.
    fn pnet_map(
        &mut self,
        level: usize,
        width: usize,
        height: usize,
    ) -> Result<PnetMap, DetectError> {
        let pyramid_level = &self.levels[level];
        let strip_rows = match runtime::device() {
            runtime::Device::Cpu => pnet_strip_rows(width),
            runtime::Device::Cuda => usize::MAX / 4,
        };
        let plane_len = width * height;
        let mut map = PnetMap::default();
        let mut reg_planes: [Vec<f32>; 4] = Default::default();
        let mut first_row = 0;
        loop {
            let y0 = 2 * first_row;
            let y1 = height.min(y0 + 2 * strip_rows + 10);
            let input: &[f32] = if y0 == 0 && y1 == height {
                pyramid_level
            } else {
                self.strip.clear();
                for c in 0..3 {
                    let plane = &pyramid_level[c * plane_len..(c + 1) * plane_len];
                    self.strip.extend_from_slice(&plane[y0 * width..y1 * width]);
                }
                &self.strip
            };
            let [(reg_shape, reg), (_, prob)] = run_network(
                &mut self.pnet,
                "P-Net",
                input,
                [1, 3, y1 - y0, width],
                1,
                ["reg", "prob"],
            )?;
            let &[_, _, rows, map_w] = reg_shape.as_slice() else {
                return Err(unexpected_shape("P-Net"));
            };
            let (rows, map_w) = (rows as usize, map_w as usize);
            let plane = rows * map_w;
            // Every strip but the last must give exactly its rows, or the next would start in
            // the wrong place (a network of other geometry from --mtcnn-models).
            let short = y1 < height && rows != strip_rows;
            if reg.len() < 4 * plane
                || prob.len() < 2 * plane
                || (map.height > 0 && map_w != map.width)
                || short
            {
                return Err(unexpected_shape("P-Net"));
            }
            map.width = map_w;
            map.height += rows;
            map.face_prob.extend_from_slice(&prob[plane..2 * plane]);
            for (c, out) in reg_planes.iter_mut().enumerate() {
                out.extend_from_slice(&reg[c * plane..(c + 1) * plane]);
            }
            if y1 == height {
                break;
            }
            first_row += rows;
        }
        map.reg = reg_planes.concat();
        Ok(map)
    }

    /// Crops each box (clipped to the frame) resized to `side`², into `self.input`; returns the boxes
    /// that had pixels inside the frame.
    fn crops(&mut self, image: RgbView<'_>, boxes: &[BoxF], side: usize) -> Vec<BoxF> {
        let per_crop = 3 * side * side;
        let (kept, mut rects): (Vec<BoxF>, Vec<(usize, PixelRect)>) = boxes
            .iter()
            .filter_map(|b| Some((*b, crop_rect(b, image.width, image.height)?)))
            .enumerate()
            .map(|(slot, (b, rect))| (b, (slot, rect)))
            .unzip();
        // After `follow`'s `forget`, the table covers only what crops have read: it grows to
        // the bounding box of what is read now and before (`detect` covers the whole picture).
        if let Some(needed) = rects.iter().map(|(_, r)| *r).reduce(bounding)
            && !self.integral.covers(needed)
        {
            let region = match self.integral.region() {
                r if r.x1 > r.x0 && r.y1 > r.y0 => bounding(r, needed),
                _ => needed,
            };
            self.integral.rebuild_region(image, region);
        }
        // Every slot is written below: no zero-fill of what is reused.
        self.input.resize(kept.len() * per_crop, 0.0);
        // Top to bottom: proposals crowd around faces, and crops taken in picture order find
        // the summed-area rows they read still in cache (the table is megabytes).
        rects.sort_unstable_by_key(|(_, rect)| (rect.y0, rect.x0));
        for (slot, rect) in rects {
            let out = &mut self.input[slot * per_crop..(slot + 1) * per_crop];
            resize_area_normalized(&self.integral, rect, side, side, out);
        }
        kept
    }

    fn stage_rnet(
        &mut self,
        image: RgbView<'_>,
        proposals: &[(BoxF, f32)],
        threshold: f32,
    ) -> Result<Vec<BoxF>, DetectError> {
        let boxes: Vec<BoxF> = proposals.iter().map(|p| p.0).collect();
        let boxes = self.crops(image, &boxes, RNET_INPUT_PX);
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let n = boxes.len();
        let [(_, reg), (_, prob)] = run_network(
            &mut self.rnet,
            "R-Net",
            &self.input,
            [n, 3, RNET_INPUT_PX, RNET_INPUT_PX],
            crops_per_call(0),
            ["reg", "prob"],
        )?;
        if reg.len() < 4 * n || prob.len() < 2 * n {
            return Err(unexpected_shape("R-Net"));
        }
        let passed: Vec<Candidate> = (0..n)
            .filter(|&i| prob[2 * i + 1] > threshold)
            .map(|i| Candidate {
                bbox: boxes[i],
                score: prob[2 * i + 1],
                reg: [reg[4 * i], reg[4 * i + 1], reg[4 * i + 2], reg[4 * i + 3]],
            })
            .collect();
        let keep = nms_of(&passed, self.config.nms_rnet, Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|i| square(&regress(&passed[i].bbox, &passed[i].reg)))
            .collect())
    }

    fn stage_onet(
        &mut self,
        image: RgbView<'_>,
        boxes: &[BoxF],
        threshold: f32,
    ) -> Result<Vec<Face>, DetectError> {
        let boxes = self.crops(image, boxes, ONET_INPUT_PX);
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let n = boxes.len();
        let [(_, reg), (_, marks), (_, prob)] = run_network(
            &mut self.onet,
            "O-Net",
            &self.input,
            [n, 3, ONET_INPUT_PX, ONET_INPUT_PX],
            crops_per_call(1),
            ["reg", "landmarks", "prob"],
        )?;
        if reg.len() < 4 * n || marks.len() < 10 * n || prob.len() < 2 * n {
            return Err(unexpected_shape("O-Net"));
        }
        let mut faces = Vec::new();
        let mut final_boxes = Vec::new();
        for i in 0..n {
            let score = prob[2 * i + 1];
            if score <= threshold {
                continue;
            }
            let b = boxes[i];
            // Landmarks are relative to the box O-Net saw, before its own regression.
            let (w, h) = (b.x2 - b.x1 + 1.0, b.y2 - b.y1 + 1.0);
            let m = &marks[10 * i..10 * i + 10];
            let landmarks =
                std::array::from_fn(|k| [w * m[k] + b.x1 - 1.0, h * m[5 + k] + b.y1 - 1.0]);
            let r = regress(
                &b,
                &[reg[4 * i], reg[4 * i + 1], reg[4 * i + 2], reg[4 * i + 3]],
            );
            final_boxes.push(r);
            faces.push(Face {
                bbox: [r.x1, r.y1, r.x2, r.y2],
                score,
                landmarks,
            });
        }
        let scores: Vec<f32> = faces.iter().map(|f| f.score).collect();
        let keep = nms(
            &final_boxes,
            &scores,
            self.config.nms_onet_min,
            Overlap::Min,
        );
        Ok(keep
            .into_iter()
            .filter_map(|i| clipped_to_frame(faces[i].clone(), image.width, image.height))
            .collect())
    }
}

/// `rgb` as a `width`×`height` picture, or why it cannot be one.
fn rgb_view(rgb: &[u8], width: usize, height: usize) -> Result<RgbView<'_>, DetectError> {
    RgbView::new(rgb, width, height).ok_or(DetectError::BadImage {
        len: rgb.len(),
        width,
        height,
    })
}

/// The face with its box clipped to the frame (regression can push boxes past its edges), or
/// `None` when nothing of the box is left inside. Landmarks are kept as found.
fn clipped_to_frame(mut face: Face, width: usize, height: usize) -> Option<Face> {
    let (w, h) = (width as f32, height as f32);
    let [x1, y1, x2, y2] = face.bbox;
    face.bbox = [
        x1.clamp(0.0, w),
        y1.clamp(0.0, h),
        x2.clamp(0.0, w),
        y2.clamp(0.0, h),
    ];
    (face.bbox[2] > face.bbox[0] && face.bbox[3] > face.bbox[1]).then_some(face)
}

/// The smallest rectangle holding `a` and `b`.
fn bounding(a: PixelRect, b: PixelRect) -> PixelRect {
    PixelRect {
        x0: a.x0.min(b.x0),
        y0: a.y0.min(b.y0),
        x1: a.x1.max(b.x1),
        y1: a.y1.max(b.y1),
    }
}

/// Where to look for a face in the next frame: its squared box, shifted by a tenth of its side
/// each way and scaled by ±15 %. O-Net's final box is not quite the framing R-Net was trained on
/// (P-Net's windows), and the face has moved: one box alone loses a weak face on a third of the
/// frames; R-Net keeps the variants that frame it well and its NMS merges them.
fn follow_proposals(b: &BoxF) -> impl Iterator<Item = BoxF> + use<> {
    let side = b.width();
    let (cx, cy) = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
    const SHIFTS: [(f32, f32); 5] = [(0.0, 0.0), (-0.1, 0.0), (0.1, 0.0), (0.0, -0.1), (0.0, 0.1)];
    const SCALES: [f32; 3] = [1.0, 0.85, 1.15];
    SCALES.into_iter().flat_map(move |scale| {
        SHIFTS.into_iter().map(move |(dx, dy)| {
            let half = side * scale / 2.0;
            let (x, y) = (cx + dx * side, cy + dy * side);
            BoxF::new(x - half, y - half, x + half, y + half)
        })
    })
}

/// Frames whose finest pyramid level has fewer pixels than this are searched in full at every
/// keyframe ([`Mtcnn::detect_coarse`]): at the default `min_face_px` of 20, 1280×720 and smaller
/// (its finest level is 768×432, 0.33 M pixels), where that level costs little time. At
/// 1920×1080 (1152×648) it is half of P-Net's work, and P-Net two thirds of a run's on a CPU.
pub const COARSE_MIN_FINEST_PX: usize = 500_000;

/// Whether a coarse search ([`Mtcnn::detect_coarse`]) saves much on `width`×`height` frames:
/// on a CPU, when the pyramid's finest level has [`COARSE_MIN_FINEST_PX`] pixels or more. On a
/// GPU, P-Net is not what a run waits for.
pub fn coarse_pays(width: u32, height: u32, min_face_px: f64) -> bool {
    let (finest_w, finest_h) = scaled_size(width, height, PNET_CELL_PX / min_face_px);
    matches!(runtime::device(), runtime::Device::Cpu) && finest_w * finest_h >= COARSE_MIN_FINEST_PX
}

/// [`follow_proposals`] of each of `faces`, with its score.
fn follow_proposals_of(faces: &[Face]) -> impl Iterator<Item = (BoxF, f32)> + '_ {
    faces.iter().flat_map(|f| {
        let [x1, y1, x2, y2] = f.bbox;
        follow_proposals(&square(&BoxF::new(x1, y1, x2, y2))).map(move |b| (b, f.score))
    })
}

/// Border of [`Mtcnn::detect_still`]'s second look, as a fraction of the picture's longer side.
const STILL_BORDER_FRACTION: f32 = 0.25;

/// Smallest face [`Mtcnn::detect_still`]'s second look searches for, as a fraction of the
/// picture's shorter side (a face the first look missed for want of room is far larger).
pub const STILL_RETRY_MIN_FACE: f32 = 0.3;

/// Packed RGB8 pixels with `border_px` black pixels added on every side.
fn with_black_border(rgb: &[u8], width: usize, height: usize, border_px: usize) -> Vec<u8> {
    let padded_w = width + 2 * border_px;
    let mut out = vec![0u8; padded_w * (height + 2 * border_px) * 3];
    for (y, row) in rgb.chunks_exact(width * 3).take(height).enumerate() {
        let start = ((y + border_px) * padded_w + border_px) * 3;
        out[start..start + width * 3].copy_from_slice(row);
    }
    out
}

/// One network output: its shape and its values.
type NetOutput = (Vec<i64>, Vec<f32>);

/// P-Net output rows per call on a CPU for a level `width` pixels wide (see
/// [`Mtcnn::pnet_map`]): rows × width about 32 k, so that wider levels get lower strips; each
/// strip recomputes 10 input rows of the one before, hence not too low either. Measured per
/// level, one thread (whole level → strips of 24–64 rows): 1153×649 26.0 → 18.9–20.6 ms (best at
/// 24–32 rows), 818×460 12.1 → 9.1–9.4 ms, 513×289 3.64 → 3.56–3.77 ms.
fn pnet_strip_rows(width: usize) -> usize {
    (32 * 1024 / width.max(1)).clamp(24, 64)
}

/// P-Net's output over one pyramid level: the face probability plane and the four box-offset
/// planes, `height`×`width` each.
#[derive(Default)]
struct PnetMap {
    width: usize,
    height: usize,
    face_prob: Vec<f32>,
    reg: Vec<f32>,
}

/// A custom model whose outputs do not have MTCNN's shapes.
fn unexpected_shape(network: &'static str) -> DetectError {
    DetectError::Inference {
        network,
        message: "outputs do not have the expected shapes".into(),
    }
}

/// Crops per R-Net / O-Net call on a CPU. Intermediate activations grow with the batch (R-Net's
/// first layer ≈ 93 kB per crop, O-Net's ≈ 400 kB): batches whose activations stay in the
/// core's cache run faster than one large call (measured on 150 R-Net and 24 O-Net crops, one
/// thread: 26 % and 20 % less time than a single call).
const CPU_BATCH: [usize; 2] = [32, 8];

/// Crops per call on a GPU, where large batches pay; a dark, busy frame can yield thousands of
/// proposals, so still bounded.
const GPU_BATCH: usize = 256;

/// Crops per call for R-Net (`stage` 0) or O-Net (1) on the device in use.
fn crops_per_call(stage: usize) -> usize {
    match runtime::device() {
        runtime::Device::Cpu => CPU_BATCH[stage],
        runtime::Device::Cuda => GPU_BATCH,
    }
}

/// Runs one network on `input` (NCHW `shape`) in batches of at most `batch` and copies out the
/// named outputs, concatenated along the batch axis, with the shape of the last batch.
fn run_network<const N: usize>(
    session: &mut Session,
    network: &'static str,
    input: &[f32],
    shape: [usize; 4],
    batch: usize,
    names: [&str; N],
) -> Result<[NetOutput; N], DetectError> {
    let err = inference(network);
    let per_item = shape[1] * shape[2] * shape[3];
    let mut result: [NetOutput; N] = std::array::from_fn(|_| Default::default());
    let mut start = 0;
    while start < shape[0] {
        let n = (shape[0] - start).min(batch.max(1));
        let chunk = &input[start * per_item..(start + n) * per_item];
        let tensor =
            TensorRef::from_array_view(([n, shape[1], shape[2], shape[3]], chunk)).map_err(&err)?;
        let outputs = session.run(ort::inputs!["input" => tensor]).map_err(&err)?;
        for (slot, name) in result.iter_mut().zip(names) {
            let value = outputs.get(name).ok_or_else(|| DetectError::Inference {
                network,
                message: format!("model has no output '{name}'"),
            })?;
            let (dims, data) = value.try_extract_tensor::<f32>().map_err(&err)?;
            slot.0 = dims.to_vec();
            slot.1.extend_from_slice(data);
        }
        start += n;
    }
    Ok(result)
}

fn nms_of(cands: &[Candidate], threshold: f32, overlap: Overlap) -> Vec<usize> {
    let boxes: Vec<BoxF> = cands.iter().map(|c| c.bbox).collect();
    let scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
    nms(&boxes, &scores, threshold, overlap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn black_border_surrounds_the_unchanged_picture() {
        // 2×1 picture: red, green.
        let rgb = [255, 0, 0, 0, 255, 0];
        let padded = with_black_border(&rgb, 2, 1, 1);
        assert_eq!(padded.len(), 4 * 3 * 3);
        let pixel = |x: usize, y: usize| &padded[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3];
        assert_eq!(pixel(1, 1), &[255, 0, 0]);
        assert_eq!(pixel(2, 1), &[0, 255, 0]);
        let black = (0..4)
            .flat_map(|x| (0..3).map(move |y| (x, y)))
            .filter(|&(x, y)| !(y == 1 && (x == 1 || x == 2)))
            .all(|(x, y)| pixel(x, y) == [0, 0, 0]);
        assert!(black);
    }
}
