//! The attribute model's interface: what goes in (an aligned crop, normalised), what comes out
//! (three heads of logits), and the version of that contract. The trainer writes a [`ModelSpec`]
//! into every exported ONNX file's metadata; the runtime reads it back and refuses a model whose
//! interface differs from the one this build of faceflow speaks.

use serde::{Deserialize, Serialize};

use super::{FINE_AGE_MAX_YEARS, FINE_AGE_MIN_YEARS, GENDER_LABELS, RACE_LABELS};
use crate::align::AlignConfig;

/// Version of the interface below. Bump it whenever a field's meaning changes.
pub const SPEC_VERSION: u32 = 1;
/// ONNX metadata key holding the JSON [`ModelSpec`].
pub const METADATA_KEY: &str = "faceflow.spec";

/// Side of the square aligned crop the model sees by default, pixels. A model's spec names its
/// own size (any multiple of 8 within [`INPUT_PX_RANGE`]); the runtime crops to it.
pub const DEFAULT_INPUT_PX: u32 = 64;
/// Input sizes a model may have, pixels.
pub const INPUT_PX_RANGE: std::ops::RangeInclusive<u32> = 32..=224;
/// Margin around the alignment template: age and gender need hair, forehead and jaw.
pub const INPUT_MARGIN: f32 = 0.25;
/// Margins a model may be trained with (`faceflow train --margin`): from the inner face with a
/// little forehead and jaw to the whole head with some shoulders.
pub const INPUT_MARGIN_RANGE: std::ops::RangeInclusive<f32> = 0.1..=0.8;
/// Per-channel normalisation in pixel units: `(value − mean) / std`.
pub const INPUT_MEAN: [f32; 3] = [127.5; 3];
pub const INPUT_STD: [f32; 3] = [64.0; 3];

/// Stable ONNX tensor names.
pub const INPUT_NAME: &str = "crop";
pub const AGE_OUTPUT: &str = "age_logits";
pub const GENDER_OUTPUT: &str = "gender_logits";
pub const RACE_OUTPUT: &str = "race_logits";

/// A task the model was trained on. Every exported model has all three heads; a head whose task was
/// not trained is not reported by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Age,
    Gender,
    Race,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Age, Task::Gender, Task::Race];

    pub fn name(self) -> &'static str {
        match self {
            Task::Age => "age",
            Task::Gender => "gender",
            Task::Race => "race",
        }
    }

    /// Parses a comma-separated list such as `age,gender,race` (sorted, without repeats).
    pub fn parse_list(text: &str) -> Result<Vec<Task>, SpecError> {
        let mut tasks = Vec::new();
        for part in text.split(',').map(str::trim) {
            let task = match part {
                "age" => Task::Age,
                "gender" => Task::Gender,
                "race" => Task::Race,
                other => {
                    return Err(SpecError::UnknownTask(other.to_string()));
                }
            };
            if !tasks.contains(&task) {
                tasks.push(task);
            }
        }
        tasks.sort();
        Ok(tasks)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown task '{0}' (tasks are age, gender, race)")]
    UnknownTask(String),
    #[error(
        "has no faceflow model spec in its metadata (key {METADATA_KEY}); export it with `faceflow train`"
    )]
    Missing,
    #[error("has an unreadable model spec: {0}")]
    Unreadable(String),
    #[error("was made for model spec version {found}, this faceflow reads version {expected}")]
    Version { found: u32, expected: u32 },
    #[error("does not match this faceflow: {what} is {found}, expected {expected}")]
    Mismatch {
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("was trained on no task")]
    NoTask,
}

/// The input contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// Always NCHW, RGB.
    pub layout: String,
    pub size_px: u32,
    /// Alignment template (faceflow's five-point template) and margin around it.
    pub template: String,
    pub margin: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The output contract: logits per head, in label order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub age: String,
    /// One bin per year from `age_min_years` to `age_max_years`; the last bin also holds older ages.
    pub age_min_years: u32,
    pub age_max_years: u32,
    pub gender: String,
    pub gender_labels: Vec<String>,
    pub race: String,
    pub race_labels: Vec<String>,
}

/// What a model was trained for and how; informative, not part of the interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub epochs: u32,
    #[serde(default)]
    pub images: usize,
    /// The trainer's split of its folders; absent in models exported before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<TrainingSplit>,
    /// The splits of the models it was distilled from (its teachers, and theirs; `None`: one
    /// exported before splits were recorded): a teacher that learned a face passes it on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teacher_splits: Vec<Option<TrainingSplit>>,
}

/// How the trainer split its labelled images: an image is in the validation part when its seeded
/// content hash falls below `val_fraction` (see [`crate::model::dataset::is_validation`]), so
/// with one seed a smaller fraction's validation part lies inside a larger one's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingSplit {
    pub seed: u64,
    pub val_fraction: f64,
    /// Images also kept out of training: those whose place in the split (see
    /// [`crate::model::dataset::split_unit`]) lies in `[from, to)`. Set on one member of a
    /// cross-fitted set of teachers, each of which leaves out another slice, so every image has
    /// a teacher that never learned it (see `train::distill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also_held_out: Option<[f64; 2]>,
}

impl TrainingSplit {
    /// Whether a model trained with this split learned some images of the validation part
    /// `(seed, val_fraction)` of the same folders. With one seed the parts nest, so only a
    /// validation part larger than the model's own (or any part of another seed) reaches into
    /// its training images.
    pub fn trained_on_validation_of(&self, seed: u64, val_fraction: f64) -> bool {
        // The images held out from the bottom of the unit interval: the validation part, and a
        // slice that starts inside it or at its end extends it.
        let held_out_below = match self.also_held_out {
            Some([from, to]) if from <= self.val_fraction => self.val_fraction.max(to),
            _ => self.val_fraction,
        };
        let nested = self.seed == seed && val_fraction <= held_out_below;
        val_fraction > 0.0 && !nested
    }

    /// Whether the model trained with this split never learned the image of `content_hash`.
    pub fn held_out(&self, content_hash: u64) -> bool {
        let unit = crate::model::dataset::split_unit(content_hash, self.seed);
        unit < self.val_fraction
            || self
                .also_held_out
                .is_some_and(|[from, to]| from <= unit && unit < to)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub spec_version: u32,
    pub input: InputSpec,
    pub outputs: OutputSpec,
    /// Heads that were trained.
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub training: TrainingInfo,
}

/// Name of faceflow's landmark template (see [`crate::align::TEMPLATE_UNIT`]).
pub const TEMPLATE_NAME: &str = "faceflow-5pt-v1";

impl ModelSpec {
    /// The spec of this build of faceflow, for a model trained on `tasks` at the default size.
    pub fn current(tasks: &[Task]) -> Self {
        Self::with_input(tasks, DEFAULT_INPUT_PX)
    }

    /// The spec of this build for a model whose input is `size_px` square, aligned with the
    /// default margin.
    pub fn with_input(tasks: &[Task], size_px: u32) -> Self {
        Self::with_input_margin(tasks, size_px, INPUT_MARGIN)
    }

    /// The spec of this build for a model whose input is `size_px` square with `margin` around
    /// the template.
    pub fn with_input_margin(tasks: &[Task], size_px: u32, margin: f32) -> Self {
        Self {
            spec_version: SPEC_VERSION,
            input: InputSpec {
                name: INPUT_NAME.into(),
                layout: "NCHW-RGB".into(),
                size_px,
                template: TEMPLATE_NAME.into(),
                margin,
                mean: INPUT_MEAN,
                std: INPUT_STD,
            },
            outputs: OutputSpec {
                age: AGE_OUTPUT.into(),
                age_min_years: FINE_AGE_MIN_YEARS,
                age_max_years: FINE_AGE_MAX_YEARS,
                gender: GENDER_OUTPUT.into(),
                gender_labels: GENDER_LABELS.iter().map(|s| s.to_string()).collect(),
                race: RACE_OUTPUT.into(),
                race_labels: RACE_LABELS.iter().map(|s| s.to_string()).collect(),
            },
            tasks: tasks.to_vec(),
            training: TrainingInfo::default(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a spec from the metadata value and checks it against this build.
    pub fn from_metadata(value: Option<&str>) -> Result<Self, SpecError> {
        let text = value.ok_or(SpecError::Missing)?;
        // Read the version first: a future spec may not parse as this one.
        let version: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SpecError::Unreadable(e.to_string()))?;
        let found = version
            .get("spec_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| SpecError::Unreadable("no spec_version".into()))?;
        if found != u64::from(SPEC_VERSION) {
            return Err(SpecError::Version {
                found: found as u32,
                expected: SPEC_VERSION,
            });
        }
        let spec: ModelSpec =
            serde_json::from_str(text).map_err(|e| SpecError::Unreadable(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    /// Side of the model's square input, pixels.
    pub fn input_px(&self) -> usize {
        self.input.size_px as usize
    }

    /// How faces are aligned for this model: its input size and margin.
    pub fn align(&self) -> AlignConfig {
        model_align(self.input.size_px, self.input.margin)
    }

    /// Checks that the interface is one this build speaks: its input size and margin are any
    /// allowed ones, the rest must equal this build's; the trained tasks may be any non-empty set.
    pub fn check(&self) -> Result<(), SpecError> {
        let size = self.input.size_px;
        let expected_size = if is_input_size(size) {
            size
        } else {
            DEFAULT_INPUT_PX
        };
        let margin = self.input.margin;
        let expected_margin = if INPUT_MARGIN_RANGE.contains(&margin) {
            margin
        } else {
            INPUT_MARGIN
        };
        let expected = ModelSpec::with_input_margin(&self.tasks, expected_size, expected_margin);
        let mismatch = |what, found: String, expected: String| SpecError::Mismatch {
            what,
            found,
            expected,
        };
        if self.input != expected.input {
            let (f, e) = (&self.input, &expected.input);
            return Err(if f.size_px != e.size_px {
                mismatch(
                    "input size",
                    f.size_px.to_string(),
                    format!(
                        "a multiple of 8 from {} to {}",
                        INPUT_PX_RANGE.start(),
                        INPUT_PX_RANGE.end()
                    ),
                )
            } else if f.template != e.template || f.margin != e.margin {
                mismatch(
                    "alignment",
                    format!("{} margin {}", f.template, f.margin),
                    format!(
                        "{} margin {} to {}",
                        e.template,
                        INPUT_MARGIN_RANGE.start(),
                        INPUT_MARGIN_RANGE.end()
                    ),
                )
            } else {
                mismatch(
                    "input",
                    serde_json::to_string(f).unwrap_or_default(),
                    serde_json::to_string(e).unwrap_or_default(),
                )
            });
        }
        if self.outputs != expected.outputs {
            return Err(mismatch(
                "outputs",
                serde_json::to_string(&self.outputs).unwrap_or_default(),
                serde_json::to_string(&expected.outputs).unwrap_or_default(),
            ));
        }
        if self.tasks.is_empty() {
            return Err(SpecError::NoTask);
        }
        if let Some([from, to]) = self.training.split.and_then(|s| s.also_held_out)
            && !(0.0 <= from && from < to && to <= 1.0)
        {
            return Err(mismatch(
                "the training split's held-out slice",
                format!("[{from}, {to})"),
                "[from, to) with 0 <= from < to <= 1".into(),
            ));
        }
        Ok(())
    }

    pub fn has(&self, task: Task) -> bool {
        self.tasks.contains(&task)
    }
}

/// An input size a model may have.
pub fn is_input_size(size_px: u32) -> bool {
    INPUT_PX_RANGE.contains(&size_px) && size_px.is_multiple_of(8)
}

/// How faces are aligned for an attribute model of input `size_px` with `margin` around
/// faceflow's template.
pub fn model_align(size_px: u32, margin: f32) -> AlignConfig {
    AlignConfig {
        crop_px: size_px,
        margin,
    }
}

/// Writes one packed RGB8 crop (square, row-major) into `out` as normalised planar CHW floats.
/// Shared by trainer and runtime, so both feed the network identical numbers.
pub fn normalise_into(crop_rgb8: &[u8], out: &mut [f32]) {
    let plane = crop_rgb8.len() / 3;
    debug_assert!(crop_rgb8.len() >= plane * 3 && out.len() >= plane * 3);
    for (i, px) in crop_rgb8.chunks_exact(3).take(plane).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) - INPUT_MEAN[c]) / INPUT_STD[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_metadata_and_mismatches_are_named() {
        let spec = ModelSpec::current(&[Task::Age, Task::Gender]);
        let back = ModelSpec::from_metadata(Some(&spec.to_json())).unwrap();
        assert_eq!(back, spec);
        assert!(back.has(Task::Gender) && !back.has(Task::Race));

        assert_eq!(ModelSpec::from_metadata(None), Err(SpecError::Missing));
        let mut other = spec.clone();
        other.input.size_px = 96;
        let back = ModelSpec::from_metadata(Some(&other.to_json())).unwrap();
        assert_eq!(back.input_px(), 96, "any allowed size is read");
        other.input.size_px = 100;
        let e = ModelSpec::from_metadata(Some(&other.to_json())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "does not match this faceflow: input size is 100, expected a multiple of 8 from 32 to 224"
        );
        let mut future = serde_json::to_value(&spec).unwrap();
        future["spec_version"] = 9.into();
        let e = ModelSpec::from_metadata(Some(&future.to_string())).unwrap_err();
        assert!(matches!(e, SpecError::Version { found: 9, .. }));
        let mut labels = spec.clone();
        labels.outputs.race_labels.swap(0, 1);
        assert!(ModelSpec::from_metadata(Some(&labels.to_json())).is_err());
        let none = ModelSpec::current(&[]);
        assert_eq!(
            ModelSpec::from_metadata(Some(&none.to_json())),
            Err(SpecError::NoTask)
        );
        assert!(matches!(
            ModelSpec::from_metadata(Some("{")),
            Err(SpecError::Unreadable(_))
        ));
    }

    #[test]
    fn a_margin_in_range_is_read_and_aligns_the_crop() {
        let spec = ModelSpec::with_input_margin(&[Task::Age], 80, 0.4);
        let back = ModelSpec::from_metadata(Some(&spec.to_json())).unwrap();
        assert_eq!(back.align(), model_align(80, 0.4));
        let mut other = spec.clone();
        other.input.margin = 0.05;
        let e = ModelSpec::from_metadata(Some(&other.to_json())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "does not match this faceflow: alignment is faceflow-5pt-v1 margin 0.05, expected \
             faceflow-5pt-v1 margin 0.1 to 0.8"
        );
    }

    #[test]
    fn a_fold_of_a_cross_fitted_set_holds_out_its_slice_and_round_trips() {
        use crate::model::dataset::{content_hash, split_unit};
        let fold = TrainingSplit {
            seed: 42,
            val_fraction: 0.15,
            also_held_out: Some([0.5, 0.7]),
        };
        let plain = TrainingSplit {
            also_held_out: None,
            ..fold
        };
        for i in 0..2000u32 {
            let hash = content_hash(&i.to_le_bytes());
            let unit = split_unit(hash, 42);
            assert_eq!(plain.held_out(hash), unit < 0.15);
            assert_eq!(
                fold.held_out(hash),
                unit < 0.15 || (0.5..0.7).contains(&unit)
            );
        }
        // Holding out more never reaches into the validation part.
        assert!(!fold.trained_on_validation_of(42, 0.15));
        let mut spec = ModelSpec::current(&Task::ALL);
        spec.training.split = Some(fold);
        let back = ModelSpec::from_metadata(Some(&spec.to_json())).unwrap();
        assert_eq!(back.training.split, Some(fold));
        // A split without a slice is written as before (older builds read it).
        spec.training.split = Some(plain);
        assert!(!spec.to_json().contains("also_held_out"));
        // A slice that is no interval of [0, 1) is refused.
        for bad in [[0.7, 0.5], [0.5, 0.5], [-0.1, 0.2], [0.5, 1.5]] {
            spec.training.split = Some(TrainingSplit {
                also_held_out: Some(bad),
                ..fold
            });
            let e = ModelSpec::from_metadata(Some(&spec.to_json())).unwrap_err();
            assert!(e.to_string().contains("held-out slice"), "{e}");
        }
    }

    #[test]
    fn task_lists_parse() {
        assert_eq!(
            Task::parse_list("race, age,age").unwrap(),
            vec![Task::Age, Task::Race]
        );
        assert!(Task::parse_list("age,height").is_err());
    }

    #[test]
    fn normalisation_is_planar_and_centred() {
        let side = DEFAULT_INPUT_PX as usize;
        let mut crop = vec![0u8; side * side * 3];
        crop[0] = 255; // R of pixel 0
        crop[4] = 128; // G of pixel 1
        let mut out = vec![0f32; side * side * 3];
        normalise_into(&crop, &mut out);
        assert!((out[0] - 127.5 / 64.0).abs() < 1e-6);
        assert!((out[side * side + 1] - 0.5 / 64.0).abs() < 1e-6);
        assert!((out[2 * side * side] + 127.5 / 64.0).abs() < 1e-6);
    }
}
