//! faceres: a second reader of gender and race, as an ensemble member of the attribute model. It is
//! HSE_FaceRec_tf's MobileNet (Apache-2.0), pre-trained on VGGFace2 and trained for age and
//! gender on IMDB faces, as converted by `models/convert_faceres.py` (see models/README.md). It
//! was trained on faces in the wild, where the attribute model (trained on UTKFace's well-lit
//! frontal chips) errs most; their gender probabilities are averaged.
//!
//! faceres reads no race, but its face descriptor carries it: a linear head fitted on UTKFace's
//! descriptors (`models/faceres_race.py`, kept as `faceres.race.json` beside the model) reads
//! race from it, and that reading is averaged with the attribute model's as gender is.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use super::{AttributeError, FacesInImage};
use crate::runtime;

/// The converted model, relative to the project or install (found as the attribute model is).
pub const DEFAULT_FACERES: &str = "models/faceres.onnx";

/// The network's input side, pixels.
const SIDE: usize = 224;
/// Room added around the face's box on each side, as a fraction of the box (the crop the model
/// was measured with).
const MARGIN: f32 = 0.1;
/// Keras' "caffe" preprocessing, which HSE_FaceRec_tf trains with: BGR minus the ImageNet mean.
const MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];
/// Faces per model call at most.
const MAX_BATCH: usize = 16;
/// Values in a descriptor.
const DESCRIPTOR: usize = 1024;

pub struct Faceres {
    session: Session,
    input: Vec<f32>,
    race_head: Option<RaceHead>,
}

/// What faceres reads of one face: the probability that it is a man's, its face descriptor
/// (1,024 values, unit length: an appearance to tell people apart), and with the race head, the
/// race probabilities (in [`crate::model::RACE_LABELS`]' order).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceReading {
    pub male: f32,
    pub descriptor: Vec<f32>,
    pub race: Option<Vec<f32>>,
}

/// A softmax regression on the descriptor: race = softmax(weights · descriptor + bias).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RaceHead {
    classes: Vec<String>,
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl RaceHead {
    /// The head kept beside the model at `model`: `<model without .onnx>.race.json`.
    pub fn path_beside(model: &Path) -> PathBuf {
        model.with_extension("race.json")
    }

    /// Reads and checks a head: the attribute model's races in its order, one weight per
    /// descriptor value.
    pub fn load(path: &Path) -> Result<Self, AttributeError> {
        let bad = |detail: String| AttributeError::Graph {
            path: path.to_path_buf(),
            what: "race head",
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|reason| AttributeError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let head: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let labels = crate::model::RACE_LABELS;
        if head.classes.len() != labels.len()
            || head
                .classes
                .iter()
                .zip(labels)
                .any(|(a, b)| a.as_str() != b)
        {
            return Err(bad(format!(
                "classes {:?}, expected {labels:?}",
                head.classes
            )));
        }
        if head.bias.len() != labels.len()
            || head.weights.len() != labels.len()
            || head.weights.iter().any(|w| w.len() != DESCRIPTOR)
            || head
                .weights
                .iter()
                .flatten()
                .chain(&head.bias)
                .any(|v| !v.is_finite())
        {
            return Err(bad(format!(
                "expected {} finite rows of {DESCRIPTOR} weights and {} biases",
                labels.len(),
                labels.len()
            )));
        }
        Ok(head)
    }

    /// The race probabilities of a descriptor; `None` when they cannot be computed (a descriptor
    /// of NaNs, or logits past f32's range).
    pub fn probabilities(&self, descriptor: &[f32]) -> Option<Vec<f32>> {
        let logits: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| b + w.iter().zip(descriptor).map(|(w, d)| w * d).sum::<f32>())
            .collect();
        if !logits.iter().all(|l| l.is_finite()) {
            return None;
        }
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - top).exp()).collect();
        let sum: f32 = exp.iter().sum();
        Some(exp.into_iter().map(|e| e / sum).collect())
    }
}

/// A second reader of faces: `result[i][j]` for face `j` of picture `i`, `None` where no
/// reading could be made. The track stage asks it about a few of each person's clearest faces
/// (gender) and about new faces while a person is lost (appearance); tests give a stand-in.
pub trait SecondReader: Send + 'static {
    fn read(
        &mut self,
        images: &[FacesInImage<'_>],
    ) -> Result<Vec<Vec<Option<FaceReading>>>, AttributeError>;
}

impl SecondReader for Faceres {
    fn read(
        &mut self,
        images: &[FacesInImage<'_>],
    ) -> Result<Vec<Vec<Option<FaceReading>>>, AttributeError> {
        Faceres::read(self, images)
    }
}

/// Where faceres is by default (see [`super::default_model_path`]).
pub fn default_path() -> PathBuf {
    super::find_model(DEFAULT_FACERES)
}

impl Faceres {
    /// Loads the converted model, with the race head beside it when there is one
    /// ([`RaceHead::path_beside`]); `threads` ONNX Runtime threads.
    pub fn load(path: &Path, threads: usize) -> Result<Self, AttributeError> {
        let bytes = std::fs::read(path).map_err(|reason| AttributeError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let session = runtime::session_from_memory(&bytes, threads).map_err(|e| match e {
            runtime::RuntimeError::Ort(message) => AttributeError::Load {
                path: path.to_path_buf(),
                message,
            },
            other => AttributeError::Runtime(other),
        })?;
        let has = |name: &str| session.outputs().iter().any(|o| o.name() == name);
        if !(session.inputs().iter().any(|i| i.name() == "input")
            && has("gender")
            && has("descriptor"))
        {
            return Err(AttributeError::Graph {
                path: path.to_path_buf(),
                what: "inputs and outputs",
                detail: "expected an input \"input\" and outputs \"gender\" and \"descriptor\" (models/convert_faceres.py)".into(),
            });
        }
        let head = RaceHead::path_beside(path);
        let race_head = head.exists().then(|| RaceHead::load(&head)).transpose()?;
        Ok(Self {
            session,
            input: Vec::new(),
            race_head,
        })
    }

    /// Each face's reading: `result[i][j]` for face `j` of picture `i`, `None` where its box
    /// holds no pixel.
    pub fn read(
        &mut self,
        images: &[FacesInImage<'_>],
    ) -> Result<Vec<Vec<Option<FaceReading>>>, AttributeError> {
        let per = SIDE * SIDE * 3;
        let mut result: Vec<Vec<Option<FaceReading>>> =
            images.iter().map(|im| vec![None; im.faces.len()]).collect();
        let mut input = std::mem::take(&mut self.input);
        // Crops of at most MAX_BATCH faces at a time: the input stays small however many faces.
        let mut slots = Vec::new();
        let faces = images
            .iter()
            .enumerate()
            .flat_map(|(i, image)| image.faces.iter().enumerate().map(move |(j, f)| (i, j, f)));
        let mut outcome = Ok(());
        for (i, j, face) in faces {
            let start = input.len();
            input.resize(start + per, 0.0);
            if crop_into(&images[i], face.bbox, &mut input[start..]) {
                slots.push((i, j));
            } else {
                input.truncate(start);
            }
            if slots.len() == MAX_BATCH {
                outcome = self.run_into(&input, &mut slots, &mut result);
                input.clear();
                if outcome.is_err() {
                    break;
                }
            }
        }
        if outcome.is_ok() && !slots.is_empty() {
            outcome = self.run_into(&input, &mut slots, &mut result);
        }
        input.clear();
        self.input = input;
        outcome.map(|()| result)
    }

    /// Runs the crops in `input` and puts each reading in its slot of `result`.
    fn run_into(
        &mut self,
        input: &[f32],
        slots: &mut Vec<(usize, usize)>,
        result: &mut [Vec<Option<FaceReading>>],
    ) -> Result<(), AttributeError> {
        let readings = self.run(input, slots.len())?;
        for ((i, j), r) in slots.drain(..).zip(readings) {
            result[i][j] = Some(r);
        }
        Ok(())
    }

    fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<FaceReading>, AttributeError> {
        let per = SIDE * SIDE * 3;
        let err = |e: ort::Error| AttributeError::Inference(e.to_string());
        let mut out = Vec::with_capacity(batch);
        let mut start = 0;
        while start < batch {
            let n = (batch - start).min(MAX_BATCH);
            let chunk = &input[start * per..(start + n) * per];
            let tensor = TensorRef::from_array_view(([n, SIDE, SIDE, 3], chunk)).map_err(err)?;
            let outputs = self
                .session
                .run(ort::inputs!["input" => tensor])
                .map_err(err)?;
            let output = |name: &str| {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| AttributeError::Inference(format!("no output {name}")))?;
                let (_, data) = value.try_extract_tensor::<f32>().map_err(err)?;
                if data.is_empty() || data.len() % n != 0 {
                    return Err(AttributeError::Inference(format!(
                        "faceres gave {} values of {name} for {n} faces",
                        data.len()
                    )));
                }
                Ok(data.to_vec())
            };
            let male = output("gender")?;
            let descriptors = output("descriptor")?;
            if male.len() != n {
                return Err(AttributeError::Inference(format!(
                    "faceres gave {} genders for {n} faces",
                    male.len()
                )));
            }
            let width = descriptors.len() / n;
            if self.race_head.is_some() && width != DESCRIPTOR {
                return Err(AttributeError::Inference(format!(
                    "faceres gave descriptors of {width} values, its race head takes {DESCRIPTOR}"
                )));
            }
            for (k, m) in male.into_iter().enumerate() {
                let d = &descriptors[k * width..(k + 1) * width];
                let norm = d.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                let descriptor: Vec<f32> = d.iter().map(|x| x / norm).collect();
                out.push(FaceReading {
                    male: m,
                    race: self
                        .race_head
                        .as_ref()
                        .and_then(|h| h.probabilities(&descriptor)),
                    descriptor,
                });
            }
            start += n;
        }
        Ok(out)
    }
}

/// The face's box with [`MARGIN`], resized to [`SIDE`]² (bilinear), as the network takes it:
/// BGR, minus [`MEAN_BGR`], into `out` (NHWC); false when the box holds no pixel of the picture.
fn crop_into(image: &FacesInImage<'_>, bbox: [f32; 4], out: &mut [f32]) -> bool {
    let (w, h) = (image.width, image.height);
    if w == 0 || h == 0 || image.rgb.len() < w * h * 3 {
        return false;
    }
    let (bw, bh) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    if !(bw > 0.0 && bh > 0.0 && bw.is_finite() && bh.is_finite()) {
        return false;
    }
    let x0 = bbox[0] - MARGIN * bw;
    let y0 = bbox[1] - MARGIN * bh;
    let (sx, sy) = (
        bw * (1.0 + 2.0 * MARGIN) / SIDE as f32,
        bh * (1.0 + 2.0 * MARGIN) / SIDE as f32,
    );
    let (last_x, last_y) = ((w - 1) as f32, (h - 1) as f32);
    let side = SIDE as f32;
    if x0 > last_x || y0 > last_y || x0 + sx * side < 0.0 || y0 + sy * side < 0.0 {
        return false;
    }
    let px = |x: usize, y: usize, c: usize| f32::from(image.rgb[(y * w + x) * 3 + c]);
    for oy in 0..SIDE {
        // Pixel centres, clamped to the picture (its edge repeats beyond it).
        let fy = (y0 + (oy as f32 + 0.5) * sy - 0.5).clamp(0.0, last_y);
        let (y_lo, ty) = (fy.floor() as usize, fy.fract());
        let y_hi = (y_lo + 1).min(h - 1);
        for ox in 0..SIDE {
            let fx = (x0 + (ox as f32 + 0.5) * sx - 0.5).clamp(0.0, last_x);
            let (x_lo, tx) = (fx.floor() as usize, fx.fract());
            let x_hi = (x_lo + 1).min(w - 1);
            let at = (oy * SIDE + ox) * 3;
            for (k, c) in [2usize, 1, 0].into_iter().enumerate() {
                let top = px(x_lo, y_lo, c) * (1.0 - tx) + px(x_hi, y_lo, c) * tx;
                let bottom = px(x_lo, y_hi, c) * (1.0 - tx) + px(x_hi, y_hi, c) * tx;
                out[at + k] = top * (1.0 - ty) + bottom * ty - MEAN_BGR[k];
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;

    fn face(bbox: [f32; 4]) -> Face {
        Face {
            bbox,
            score: 0.99,
            landmarks: [[0.0; 2]; 5],
        }
    }

    /// A flat picture crops to its colour in BGR minus the mean, whatever the box's size; a box
    /// outside the picture gives nothing.
    #[test]
    fn crops_are_bgr_minus_the_mean() {
        let (w, h) = (64usize, 48usize);
        let rgb: Vec<u8> = (0..w * h).flat_map(|_| [200u8, 100, 50]).collect();
        let inside = face([10.0, 10.0, 30.0, 34.0]);
        let outside = face([100.0, 100.0, 120.0, 120.0]);
        let image = FacesInImage {
            rgb: &rgb,
            width: w,
            height: h,
            faces: vec![&inside, &outside],
        };
        let mut out = vec![0.0; SIDE * SIDE * 3];
        assert!(crop_into(&image, inside.bbox, &mut out));
        let want = [50.0 - MEAN_BGR[0], 100.0 - MEAN_BGR[1], 200.0 - MEAN_BGR[2]];
        for pixel in out.chunks_exact(3) {
            for k in 0..3 {
                assert!((pixel[k] - want[k]).abs() < 1e-3, "{pixel:?}");
            }
        }
        assert!(!crop_into(&image, outside.bbox, &mut out));
        assert!(!crop_into(&image, [5.0, 5.0, 5.0, 9.0], &mut out));
    }

    fn head(classes: &[&str], rows: usize, width: usize) -> String {
        let mut weights = vec![vec![0.0f32; width]; rows];
        // The first descriptor value speaks for "black", the second for "asian".
        if rows >= 3 && width >= 2 {
            weights[1][0] = 4.0;
            weights[2][1] = 4.0;
        }
        serde_json::json!({ "classes": classes, "weights": weights, "bias": vec![0.0; rows] })
            .to_string()
    }

    /// The head reads race from a descriptor as a softmax of its lines; a head for other
    /// classes, in another order, or of the wrong size is refused with the file named.
    #[test]
    fn the_race_head_reads_a_descriptor_and_refuses_a_wrong_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faceres.race.json");
        std::fs::write(&path, head(&crate::model::RACE_LABELS, 5, DESCRIPTOR)).unwrap();
        let h = RaceHead::load(&path).unwrap();
        let mut d = vec![0.0f32; DESCRIPTOR];
        d[0] = 1.0;
        let p = h.probabilities(&d).unwrap();
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
        d[0] = f32::NAN;
        assert_eq!(h.probabilities(&d), None);
        // e⁴ / (e⁴ + 4)
        assert!((p[1] - 0.9317).abs() < 1e-3, "{p:?}");
        assert!(p[0] == p[2] && p[2] == p[3]);
        let mut swapped = crate::model::RACE_LABELS;
        swapped.swap(1, 2);
        for wrong in [
            head(&swapped, 5, DESCRIPTOR),
            head(&crate::model::RACE_LABELS, 5, 128),
            head(&crate::model::RACE_LABELS[..4], 4, DESCRIPTOR),
            "{}".into(),
        ] {
            std::fs::write(&path, wrong).unwrap();
            let e = RaceHead::load(&path).unwrap_err().to_string();
            assert!(e.contains("faceres.race.json"), "{e}");
        }
    }

    /// A left-to-right ramp stays a ramp: the crop keeps the picture's orientation.
    #[test]
    fn crops_keep_left_and_right() {
        let (w, h) = (100usize, 100usize);
        let rgb: Vec<u8> = (0..w * h).flat_map(|p| [(p % w) as u8 * 2, 0, 0]).collect();
        let f = face([20.0, 20.0, 80.0, 80.0]);
        let image = FacesInImage {
            rgb: &rgb,
            width: w,
            height: h,
            faces: vec![&f],
        };
        let mut out = vec![0.0; SIDE * SIDE * 3];
        assert!(crop_into(&image, f.bbox, &mut out));
        // Red is the third channel (BGR).
        let red = |x: usize| out[(100 * SIDE + x) * 3 + 2];
        assert!(red(10) < red(100) && red(100) < red(200));
    }
}
