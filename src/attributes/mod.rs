//! The attribute stage's model: age, gender and race from aligned face crops, on ONNX Runtime.
//!
//! A model file is accepted only when the spec in its metadata matches this build's interface
//! ([`crate::model::spec`]); crops are made with the same alignment and normalisation the trainer
//! used.

pub(crate) mod stage;

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use crate::align::{AlignConfig, align_face};
use crate::detect::Face;
use crate::model::readout::Prediction;
use crate::model::spec::{
    AGE_OUTPUT, GENDER_OUTPUT, INPUT_NAME, METADATA_KEY, ModelSpec, RACE_OUTPUT, SpecError, Task,
    normalise_into,
};
use crate::model::{FINE_AGE_BINS, GENDER_LABELS, RACE_LABELS};
use crate::runtime;

pub mod faceres;

/// The default model, relative to the project (or installed share) folder.
pub const DEFAULT_MODEL: &str = "models/faceattr.onnx";

#[derive(Debug, thiserror::Error)]
pub enum AttributeError {
    #[error("{path}: cannot read the attribute model: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}: not a loadable ONNX model: {message}")]
    Load { path: PathBuf, message: String },
    /// The reason is part of the message, not a `source`: error chains print it once.
    #[error("{path}: {reason}")]
    Spec { path: PathBuf, reason: SpecError },
    #[error("{path}: the model's {what} and its spec disagree: {detail}")]
    Graph {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("attribute model: {0}")]
    Inference(String),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
}

/// Crops per ONNX Runtime call.
const MAX_BATCH: usize = 64;

pub struct AttributeModel {
    session: Session,
    spec: ModelSpec,
    input: Vec<f32>,
    /// Also run every crop mirrored and average the logits (test-time augmentation).
    flip_average: bool,
    /// A second reader of gender and race, averaged in.
    ensemble: Option<faceres::Faceres>,
}

/// Where the default model is: next to the executable's project (target/<profile>/faceflow →
/// models/), an installed share folder, or the source tree this binary was built from.
pub fn default_model_path() -> PathBuf {
    find_model(DEFAULT_MODEL)
}

/// `relative` (a model under `models/`) beside the executable's project, in an installed share
/// folder, or in the source tree this binary was built from; as given when none has it.
pub(crate) fn find_model(relative: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join(relative));
        candidates.push(dir.join("../share/faceflow").join(relative));
        candidates.push(dir.join("../..").join(relative));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(relative))
}

impl AttributeModel {
    /// Loads and checks a model file; `threads` ONNX Runtime threads (0: one per core).
    pub fn load(path: &Path, threads: usize) -> Result<Self, AttributeError> {
        let bytes = std::fs::read(path).map_err(|reason| AttributeError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::from_bytes(&bytes, threads, path)
    }

    /// As [`load`](Self::load), from bytes; `path` names the model in messages.
    pub fn from_bytes(bytes: &[u8], threads: usize, path: &Path) -> Result<Self, AttributeError> {
        let session = runtime::session_from_memory(bytes, threads).map_err(|e| match e {
            runtime::RuntimeError::Ort(message) => AttributeError::Load {
                path: path.to_path_buf(),
                message,
            },
            other => AttributeError::Runtime(other),
        })?;
        let spec_text = session.metadata().ok().and_then(|m| m.custom(METADATA_KEY));
        let spec = ModelSpec::from_metadata(spec_text.as_deref()).map_err(|reason| {
            AttributeError::Spec {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        let names = |outlets: &[ort::value::Outlet]| {
            outlets
                .iter()
                .map(|o| o.name().to_string())
                .collect::<Vec<_>>()
        };
        let inputs = names(session.inputs());
        if inputs != [INPUT_NAME] {
            return Err(AttributeError::Graph {
                path: path.to_path_buf(),
                what: "inputs",
                detail: format!("{inputs:?}, expected [\"{INPUT_NAME}\"]"),
            });
        }
        // The graph's input must be the size its spec names (a static H×W; batch may vary).
        if let Some(ort::value::ValueType::Tensor { shape, .. }) =
            session.inputs().first().map(|o| o.dtype())
        {
            let dims: Vec<i64> = shape.iter().copied().collect();
            let side = i64::from(spec.input.size_px);
            if dims.len() != 4 || dims[1] != 3 || dims[2] != side || dims[3] != side {
                return Err(AttributeError::Graph {
                    path: path.to_path_buf(),
                    what: "input shape",
                    detail: format!("{dims:?}, its spec says [batch, 3, {side}, {side}]"),
                });
            }
        }
        let outputs = names(session.outputs());
        for name in [AGE_OUTPUT, GENDER_OUTPUT, RACE_OUTPUT] {
            if !outputs.iter().any(|o| o == name) {
                return Err(AttributeError::Graph {
                    path: path.to_path_buf(),
                    what: "outputs",
                    detail: format!("{outputs:?} lack \"{name}\""),
                });
            }
        }
        Ok(Self {
            session,
            spec,
            input: Vec::new(),
            flip_average: false,
            ensemble: None,
        })
    }

    /// Averages each face's gender and race with faceres's reading of it (see [`faceres`]).
    pub fn set_ensemble(&mut self, faceres: Option<faceres::Faceres>) {
        self.ensemble = faceres;
    }

    /// Reports only `tasks` of those the model has; `Err`: a task it does not have.
    pub fn report_only(&mut self, tasks: &[Task]) -> Result<(), Task> {
        if let Some(&missing) = tasks.iter().find(|t| !self.spec.has(**t)) {
            return Err(missing);
        }
        self.spec.tasks.retain(|t| tasks.contains(t));
        Ok(())
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Runs each crop and its mirror image and averages their logits: a face and its mirror have
    /// the same age, gender and race, and the average is steadier than either (twice the cost).
    pub fn set_flip_average(&mut self, on: bool) {
        self.flip_average = on;
    }

    pub fn flip_average(&self) -> bool {
        self.flip_average
    }

    /// Raw logits for normalised planar input (`batch × 3 × side²`, the spec's input size): age,
    /// gender, race, each flattened row-major.
    pub fn logits(&mut self, input: &[f32], batch: usize) -> Result<[Vec<f32>; 3], AttributeError> {
        let side = self.spec.input_px();
        let per = 3 * side * side;
        if input.len() != batch * per {
            return Err(AttributeError::Inference(format!(
                "input holds {} values, expected {} for {batch} crops",
                input.len(),
                batch * per
            )));
        }
        let err = |e: ort::Error| AttributeError::Inference(e.to_string());
        let mut out: [Vec<f32>; 3] = Default::default();
        let widths = [FINE_AGE_BINS, GENDER_LABELS.len(), RACE_LABELS.len()];
        let mut start = 0;
        while start < batch {
            let n = (batch - start).min(MAX_BATCH);
            let chunk = &input[start * per..(start + n) * per];
            let tensor = TensorRef::from_array_view(([n, 3, side, side], chunk)).map_err(err)?;
            let outputs = self
                .session
                .run(ort::inputs![INPUT_NAME => tensor])
                .map_err(err)?;
            for ((slot, name), width) in out
                .iter_mut()
                .zip([AGE_OUTPUT, GENDER_OUTPUT, RACE_OUTPUT])
                .zip(widths)
            {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| AttributeError::Inference(format!("no output {name}")))?;
                let (_, data) = value.try_extract_tensor::<f32>().map_err(err)?;
                if data.len() != n * width {
                    return Err(AttributeError::Inference(format!(
                        "{name} has {} values for {n} crops, expected {}",
                        data.len(),
                        n * width
                    )));
                }
                slot.extend_from_slice(data);
            }
            start += n;
        }
        Ok(out)
    }

    /// The model's aligned crop of one face (packed RGB8, its input size squared), or `None` for
    /// degenerate landmarks.
    pub fn crop(
        &self,
        frame_rgb: &[u8],
        width: usize,
        height: usize,
        face: &Face,
    ) -> Option<Vec<u8>> {
        crop_for_model(frame_rgb, width, height, face, &self.spec.align())
    }

    /// Predictions for aligned crops (packed RGB8, the input size squared each), batched.
    pub fn predict(&mut self, crops: &[Vec<u8>]) -> Result<Vec<Prediction>, AttributeError> {
        let side = self.spec.input_px();
        let per = 3 * side * side;
        let n = crops.len();
        let views = if self.flip_average { 2 } else { 1 };
        let mut input = std::mem::take(&mut self.input);
        input.clear();
        input.resize(views * n * per, 0.0);
        for (i, crop) in crops.iter().enumerate() {
            if crop.len() != side * side * 3 {
                return Err(AttributeError::Inference(format!(
                    "crop {i} has {} bytes, expected {}",
                    crop.len(),
                    side * side * 3
                )));
            }
            normalise_into(crop, &mut input[i * per..(i + 1) * per]);
        }
        if self.flip_average {
            // Mirrors follow the originals: crop i's mirror is item n + i.
            let (originals, mirrors) = input.split_at_mut(n * per);
            for (row, mirrored) in originals
                .chunks_exact(side)
                .zip(mirrors.chunks_exact_mut(side))
            {
                for (m, v) in mirrored.iter_mut().zip(row.iter().rev()) {
                    *m = *v;
                }
            }
        }
        let result = self.logits(&input, views * n);
        self.input = input;
        let [mut age, mut gender, mut race] = result?;
        if self.flip_average {
            for logits in [&mut age, &mut gender, &mut race] {
                let half = logits.len() / 2;
                let (originals, mirrors) = logits.split_at_mut(half);
                for (o, m) in originals.iter_mut().zip(mirrors.iter()) {
                    *o = 0.5 * (*o + *m);
                }
                logits.truncate(half);
            }
        }
        let (g, r) = (GENDER_LABELS.len(), RACE_LABELS.len());
        Ok((0..crops.len())
            .map(|i| {
                Prediction::from_logits(
                    &age[i * FINE_AGE_BINS..(i + 1) * FINE_AGE_BINS],
                    &gender[i * g..(i + 1) * g],
                    &race[i * r..(i + 1) * r],
                )
            })
            .collect())
    }
}

/// The aligned crop of one face for a model aligned by `align` (its [`ModelSpec::align`]: packed
/// RGB8, `crop_px`²), or `None` for degenerate landmarks.
pub fn crop_for_model(
    frame_rgb: &[u8],
    width: usize,
    height: usize,
    face: &Face,
    align: &AlignConfig,
) -> Option<Vec<u8>> {
    align_face(frame_rgb, width, height, &face.landmarks, align)
}

/// One picture and the faces found in it, for [`AttributeModel::predict_faces`].
pub struct FacesInImage<'a> {
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub faces: Vec<&'a Face>,
}

impl AttributeModel {
    /// Attributes of the faces of several pictures in one model call: `result[i][j]` belongs to
    /// face `j` of picture `i`, `None` where no crop could be made (degenerate landmarks). The one
    /// place that pairs predictions with faces, for video frames and still images alike.
    pub fn predict_faces(
        &mut self,
        images: &[FacesInImage<'_>],
    ) -> Result<Vec<Vec<Option<Prediction>>>, AttributeError> {
        Ok(self
            .read_faces(images)?
            .into_iter()
            .map(|faces| faces.into_iter().map(|r| r.map(|r| r.combined())).collect())
            .collect())
    }

    /// As [`AttributeModel::predict_faces`], each face's readings apart: the model's, and
    /// faceres's reading (gender, descriptor, race) when it reads faces too.
    pub fn read_faces(
        &mut self,
        images: &[FacesInImage<'_>],
    ) -> Result<Vec<Vec<Option<FaceRead>>>, AttributeError> {
        let mut crops = Vec::new();
        let mut slots = Vec::new();
        for (i, image) in images.iter().enumerate() {
            for (j, face) in image.faces.iter().enumerate() {
                if let Some(crop) = self.crop(image.rgb, image.width, image.height, face) {
                    crops.push(crop);
                    slots.push((i, j));
                }
            }
        }
        let mut result: Vec<Vec<Option<FaceRead>>> =
            images.iter().map(|im| vec![None; im.faces.len()]).collect();
        if crops.is_empty() {
            return Ok(result);
        }
        let predictions = self.predict(&crops)?;
        let mut second = match self.ensemble.as_mut() {
            Some(faceres) => Some(faceres.read(images)?),
            None => None,
        };
        for ((i, j), alone) in slots.into_iter().zip(predictions) {
            let second = second.as_mut().and_then(|s| s[i][j].take());
            result[i][j] = Some(FaceRead { alone, second });
        }
        Ok(result)
    }
}

/// One face as read: the attribute model's prediction, and faceres's reading when faceres read
/// it too.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRead {
    pub alone: Prediction,
    pub second: Option<faceres::FaceReading>,
}

impl FaceRead {
    /// The prediction reported: the model's, its gender (and race, with faceres's race head)
    /// the mean of its own and faceres's when faceres gave probabilities.
    pub fn combined(&self) -> Prediction {
        let mut p = self.alone.clone();
        if let Some(male) = self.gender_read_twice() {
            // GENDER_LABELS: male, female.
            let mean = 0.5 * (p.gender[0] + male);
            p.gender = vec![mean, 1.0 - mean];
        }
        if let Some(race) = self.race_read_twice() {
            p.race = p
                .race
                .iter()
                .zip(race)
                .map(|(a, b)| 0.5 * (a + b))
                .collect();
        }
        p
    }

    /// faceres's race probabilities, when there are some to average in.
    fn race_read_twice(&self) -> Option<&[f32]> {
        self.second
            .as_ref()
            .and_then(|s| s.race.as_deref())
            .filter(|r| {
                r.len() == self.alone.race.len() && r.iter().all(|p| (0.0..=1.0).contains(p))
            })
    }

    /// faceres's probability, when it is one and averaged in (see [`FaceRead::combined`]).
    fn gender_read_twice(&self) -> Option<f32> {
        self.second
            .as_ref()
            .map(|s| s.male)
            .filter(|m| self.alone.gender.len() == 2 && (0.0..=1.0).contains(m))
    }

    /// Which of the combined gender and race are means of two readings (their calibration
    /// follows).
    pub fn read_twice(&self) -> crate::model::calibration::ReadTwice {
        crate::model::calibration::ReadTwice {
            gender: self.gender_read_twice().is_some(),
            race: self.race_read_twice().is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face_at(x: f32, y: f32, side: f32) -> Face {
        let l = |u: f32, v: f32| [x + u * side, y + v * side];
        Face {
            bbox: [x, y, x + side, y + side],
            score: 0.99,
            landmarks: [
                l(0.3, 0.4),
                l(0.7, 0.4),
                l(0.5, 0.6),
                l(0.35, 0.8),
                l(0.65, 0.8),
            ],
        }
    }

    /// A face whose landmarks all coincide has no alignment, so no crop and no prediction; the
    /// faces after it must still get their own predictions, not a neighbour's.
    #[test]
    fn predictions_stay_with_their_faces_when_one_face_has_no_crop() {
        if runtime::environment().is_err() {
            eprintln!("SKIPPED: ONNX Runtime not found (run scripts/deps.sh)");
            return;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
        let mut model = AttributeModel::load(&path, 1).unwrap();
        // A picture with two different patches, so the two real faces read differently.
        let (w, h) = (200usize, 100usize);
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|p| {
                let (x, y) = (p % w, p / w);
                if x < 100 {
                    [(x * 2) as u8, (y * 2) as u8, 40]
                } else {
                    [200, (x ^ y) as u8, (y * 3) as u8]
                }
            })
            .collect();
        let left = face_at(10.0, 10.0, 80.0);
        let right = face_at(110.0, 10.0, 80.0);
        let mut degenerate = face_at(50.0, 50.0, 10.0);
        degenerate.landmarks = [[50.0, 50.0]; 5];
        let alone = |m: &mut AttributeModel, f: &Face| {
            let crop = m.crop(&rgb, w, h, f).unwrap();
            m.predict(&[crop]).unwrap().remove(0)
        };
        let (want_left, want_right) = (alone(&mut model, &left), alone(&mut model, &right));
        let got = model
            .predict_faces(&[FacesInImage {
                rgb: &rgb,
                width: w,
                height: h,
                faces: vec![&left, &degenerate, &right],
            }])
            .unwrap();
        assert_eq!(got.len(), 1);
        let faces = &got[0];
        assert!(faces[1].is_none(), "no crop, no prediction");
        let close = |a: &Prediction, b: &Prediction| {
            (a.age_years() - b.age_years()).abs() < 1e-3
                && a.gender().0 == b.gender().0
                && (a.gender().1 - b.gender().1).abs() < 1e-4
        };
        assert!(close(faces[0].as_ref().unwrap(), &want_left));
        assert!(close(faces[2].as_ref().unwrap(), &want_right));
        assert!(
            (want_left.age_years() - want_right.age_years()).abs() > 1e-3,
            "the two faces must read differently for this test to mean anything"
        );
    }

    /// With faceres as an ensemble member, each face's gender and race are the means of the
    /// model's and faceres's (its race read by the race head shipped beside it); age is the
    /// model's alone.
    #[test]
    fn the_ensemble_averages_the_two_readings() {
        if runtime::environment().is_err() {
            eprintln!("SKIPPED: ONNX Runtime not found (run scripts/deps.sh)");
            return;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut model = AttributeModel::load(&root.join(DEFAULT_MODEL), 1).unwrap();
        let mut faceres = faceres::Faceres::load(&root.join(faceres::DEFAULT_FACERES), 1).unwrap();
        let (w, h) = (120usize, 120usize);
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|p| [(p % w) as u8, (p / w) as u8, 90])
            .collect();
        let f = face_at(20.0, 20.0, 80.0);
        let image = || FacesInImage {
            rgb: &rgb,
            width: w,
            height: h,
            faces: vec![&f],
        };
        let alone = model.predict_faces(&[image()]).unwrap()[0][0]
            .clone()
            .unwrap();
        let read = faceres.read(&[image()]).unwrap()[0][0].clone().unwrap();
        let race = read
            .race
            .expect("models/faceres.race.json is shipped beside faceres");
        let male = read.male;
        model.set_ensemble(Some(faceres));
        let both = model.predict_faces(&[image()]).unwrap()[0][0]
            .clone()
            .unwrap();
        let want = 0.5 * (alone.gender[0] + male);
        assert!(
            (both.gender[0] - want).abs() < 1e-5,
            "{} vs {want}",
            both.gender[0]
        );
        assert!((both.gender[0] + both.gender[1] - 1.0).abs() < 1e-5);
        for ((b, a), r) in both.race.iter().zip(&alone.race).zip(&race) {
            assert!((b - 0.5 * (a + r)).abs() < 1e-5, "{:?}", both.race);
        }
        assert!((race.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(both.age_fine, alone.age_fine);
    }
}
