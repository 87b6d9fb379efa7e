//! `faceflow train`: trains the multi-task attribute network on the CPU with burn and exports ONNX.
//!
//! Data → [`data`] (scan, de-duplicate, split, crops through faceflow's own detector and
//! alignment, cached); batches → [`augment`]; network → [`net`]; losses → `losses`; learning
//! rate and batch-norm re-estimation → `schedule`; the epoch loop → `run`; checkpoints, weight
//! averaging and export → `checkpoint` and [`export`]. This file holds what they share: the
//! configuration, the run's state and errors. A run folder holds the checkpoint (model,
//! optimizer, `state.json`), so an interrupted run resumes where it stopped, across sessions.

pub mod augment;
pub mod data;
pub mod export;
pub mod net;

mod checkpoint;
mod distill;
mod losses;
mod run;
mod schedule;

use checkpoint::*;
pub use checkpoint::{average_run, epoch_file, export_run, load_model, load_state};
use losses::*;
pub use run::train;
use run::*;
use schedule::*;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::detect::DetectConfig;
use crate::model::readout::{Prediction, Tally, Truth};
use crate::model::spec::{DEFAULT_INPUT_PX, ModelSpec, Task, TrainingInfo, TrainingSplit};
use crate::model::{AgeGrouping, FINE_AGE_BINS, GENDER_LABELS, RACE_LABELS, fine_bin_of};

use crate::model::dataset::{self, Sample, Source};
use data::CropCache;
use net::{FaceAttrNet, NetShape};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error(transparent)]
    Dataset(#[from] crate::model::dataset::DatasetError),
    #[error("detector: {0}")]
    Detect(String),
    #[error("export: {0}")]
    Export(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Range(#[from] crate::limits::RangeError),
    #[error("a worker thread panicked")]
    Poisoned,
}

/// How the age head is read out for choosing the best epoch (the model always has the fine head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgeReadout {
    Groups(u32),
    Years,
}

impl AgeReadout {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "years" => Ok(Self::Years),
            n => match n.parse::<u32>() {
                Ok(v @ (3 | 5 | 10)) => Ok(Self::Groups(v)),
                _ => Err(format!("'{n}': expected 3, 5, 10 or years")),
            },
        }
    }

    /// Higher is better.
    fn score(self, tally: &Tally) -> f64 {
        match self {
            Self::Years => -tally.age_mae(),
            Self::Groups(n) => AgeGrouping::from_count(n)
                .map(|g| tally.age_accuracy(g))
                .unwrap_or(f64::NAN),
        }
    }
}

/// Everything that decides what is learnt; stored in the run folder and reused on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub sources: Vec<(PathBuf, Vec<Task>)>,
    pub tasks: Vec<Task>,
    pub epochs: u32,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub val_fraction: f64,
    pub seed: u64,
    /// Age, gender, race.
    pub loss_weights: [f32; 3],
    pub balance_classes: bool,
    /// Split the training part of the data in two: one half keeps age+gender labels, the other
    /// race only (the study's multi-source experiment).
    pub simulate_multi_source: bool,
    pub max_images: Option<usize>,
    pub net: NetShape,
    pub augment: bool,
    pub label_smoothing: f32,
    pub age_readout: AgeReadout,
    /// Training images (centre crops) over which batch-norm statistics are re-estimated before
    /// each validation; 0 keeps the running averages of training. Runs saved before this setting
    /// existed get the default.
    #[serde(default = "default_batch_norm_images")]
    pub batch_norm_images: usize,
    /// Side of the model's input crop, pixels (runs saved before this setting existed: 64).
    #[serde(default = "default_input_px")]
    pub input_px: u32,
    /// Margin around the alignment template, a fraction of the template's side on each side
    /// (runs saved before this setting existed: the default, 0.25).
    #[serde(default = "default_margin")]
    pub margin: f32,
    /// Also degrade training crops the way video does (lower resolution, motion blur,
    /// compression, dark and noisy scenes); runs saved before this setting existed: off.
    #[serde(default)]
    pub video_augment: bool,
    /// Teacher models (faceflow attribute models) for knowledge distillation: their mean
    /// prediction on each training face (mirror-averaged, centre crop) is blended into its
    /// targets with weight `distill`. Runs saved before these settings existed: none.
    #[serde(default)]
    pub teachers: Vec<PathBuf>,
    #[serde(default)]
    pub distill: f32,
    /// Content hash of each teacher file when the run started: a resumed run refuses a teacher
    /// that changed since (the path of a shipped model gets a new model).
    #[serde(default)]
    pub teacher_hashes: Vec<u64>,
    /// The split of each model the run learns from through distillation (its teachers, and
    /// theirs), as they recorded it; written into the exported model, so `eval` can tell when a
    /// teacher learned its validation faces. Runs saved before this setting: none.
    #[serde(default)]
    pub teacher_splits: Vec<Option<TrainingSplit>>,
}

fn default_input_px() -> u32 {
    DEFAULT_INPUT_PX
}

fn default_margin() -> f32 {
    crate::model::spec::INPUT_MARGIN
}

fn default_batch_norm_images() -> usize {
    4096
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            tasks: Task::ALL.to_vec(),
            epochs: 30,
            batch: 64,
            lr: 2e-3,
            weight_decay: 0.02,
            warmup_epochs: 1.0,
            val_fraction: 0.15,
            seed: 42,
            loss_weights: [1.0, 1.0, 1.0],
            balance_classes: false,
            simulate_multi_source: false,
            max_images: None,
            net: NetShape::default(),
            augment: true,
            label_smoothing: 0.05,
            age_readout: AgeReadout::Groups(5),
            batch_norm_images: default_batch_norm_images(),
            input_px: DEFAULT_INPUT_PX,
            margin: crate::model::spec::INPUT_MARGIN,
            video_augment: false,
            teachers: Vec::new(),
            distill: 0.0,
            teacher_hashes: Vec::new(),
            teacher_splits: Vec::new(),
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        use crate::limits::Setting;
        let bad = |m: String| Err(TrainError::Config(m));
        if self.sources.is_empty() {
            return bad("no --source folder given".into());
        }
        if self.video_augment && !self.augment {
            return bad("--video-augment needs augmentation (drop --no-augment)".into());
        }
        Setting::in_section("train", "distill").check(self.distill, 0.0, 1.0, "")?;
        if self.distill > 0.0 && self.teachers.is_empty() {
            return bad("--distill needs at least one --teacher model".into());
        }
        for teacher in &self.teachers {
            if !teacher.is_file() {
                return bad(format!("--teacher {}: no such file", teacher.display()));
            }
        }
        if !self.tasks.contains(&Task::Age) {
            return bad(
                "--tasks must include age (age, age,gender or age,gender,race): the run picks its best epoch by age".into(),
            );
        }
        Setting::in_section("train", "epochs").check(self.epochs, 1, 10_000, "")?;
        Setting::in_section("train", "batch").check(self.batch, 2, 4096, "images")?;
        let val_fraction = Setting::in_section("train", "val_fraction");
        val_fraction.check(self.val_fraction, 0.0, 0.9, "")?;
        if self.val_fraction >= 0.9 {
            return Err(val_fraction
                .error(self.val_fraction, "from 0 to below 0.9")
                .into());
        }
        Setting::in_section("train", "lr").check(self.lr, 1e-7, 1.0, "")?;
        Setting::in_section("train", "weight_decay").check(self.weight_decay, 0.0, 1.0, "")?;
        for w in self.loss_weights {
            Setting::in_section("train", "loss_weights").check(w, 0.0, 1000.0, "")?;
        }
        if let Some(n) = self.max_images {
            Setting::in_section("train", "max_images").check(n, 1, usize::MAX, "")?;
        }
        if !crate::model::spec::is_input_size(self.input_px) {
            return Err(Setting::in_section("train", "input_px")
                .error(self.input_px, "a multiple of 8 from 32 to 224")
                .into());
        }
        let margins = crate::model::spec::INPUT_MARGIN_RANGE;
        Setting::in_section("train", "margin").check(
            self.margin,
            *margins.start(),
            *margins.end(),
            "",
        )?;
        Ok(())
    }

    fn trains(&self, task: Task) -> bool {
        self.tasks.contains(&task)
    }
}

/// Where and how a run happens (not part of what is learnt).
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub resume: bool,
    pub detect: DetectConfig,
    pub workers: usize,
    pub checkpoint_every_steps: u64,
    pub progress: bool,
    pub stop: Arc<AtomicBool>,
    /// Write the ONNX model here at the end (default: `<out>/faceattr.onnx`).
    pub export_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: u32,
    pub train_loss: f64,
    pub images_per_s: f64,
    pub seconds: f64,
    #[serde(with = "nan_as_null")]
    pub age3: f64,
    #[serde(with = "nan_as_null")]
    pub age5: f64,
    #[serde(with = "nan_as_null")]
    pub age10: f64,
    #[serde(with = "nan_as_null")]
    pub age_mae: f64,
    #[serde(with = "nan_as_null")]
    pub gender: f64,
    #[serde(with = "nan_as_null")]
    pub race: f64,
    pub val_images: u64,
}

/// A metric that may be NaN (a head the run does not train, nothing to score) is written as JSON
/// null and read back as NaN: JSON has no NaN, and serde_json's null would not read back as f64.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            s.serialize_f64(*value)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Progress of a run, saved beside the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub config: TrainConfig,
    /// Epoch in progress (0-based) and batches of it already done.
    pub epoch: u32,
    pub batch_in_epoch: usize,
    pub step: u64,
    pub train_seconds: f64,
    pub history: Vec<EpochLog>,
    pub best_epoch: Option<u32>,
    pub best_score: Option<f64>,
    pub train_images: usize,
    pub val_images: usize,
}

impl RunState {
    /// A run about to start with `config`.
    pub fn new(config: TrainConfig) -> Self {
        Self {
            config,
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
            train_seconds: 0.0,
            history: Vec::new(),
            best_epoch: None,
            best_score: None,
            train_images: 0,
            val_images: 0,
        }
    }
}

/// A prepared example: cached crop and masked labels.
struct Item {
    crop: Vec<u8>,
    truth: Truth,
    /// The source image's content hash: its place in splits (cross-fitted teachers).
    image_hash: u64,
}

pub struct Outcome {
    pub state: RunState,
    pub onnx: Option<PathBuf>,
    pub stopped: bool,
}

/// A progress bar of `total` `unit`s on a terminal (`shown`), hidden otherwise.
fn progress_bar(shown: bool, total: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = crate::console::progress(Some(total), unit);
    if !shown {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Status lines go to standard error.
fn say(line: &str) {
    crate::say!("train: {line}");
}

/// The labels the trainer knows, for messages.
pub fn label_summary() -> String {
    format!(
        "age: {} fine bins; gender: {}; race: {}",
        FINE_AGE_BINS,
        GENDER_LABELS.join("/"),
        RACE_LABELS.join("/")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(model: &FaceAttrNet) -> Vec<Vec<f32>> {
        let mut collect = CollectTensors(Vec::new());
        model.visit(&mut collect);
        collect
            .0
            .into_iter()
            .map(|d| d.convert::<f32>().try_to_vec::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn averaged_networks_hold_the_mean_of_every_tensor() {
        let device = Device::flex();
        let nets: Vec<FaceAttrNet> = (0..3)
            .map(|seed| {
                device.seed(seed);
                FaceAttrNet::new(&device, &NetShape::tiny())
            })
            .collect();
        let each: Vec<Vec<Vec<f32>>> = nets.iter().map(tensors).collect();
        assert_ne!(each[0], each[1], "seeds gave identical networks");
        let mean = tensors(&average_models(nets).unwrap());
        assert_eq!(mean.len(), each[0].len());
        for (t, tensor) in mean.iter().enumerate() {
            for (i, &v) in tensor.iter().enumerate() {
                let expected = (each[0][t][i] + each[1][t][i] + each[2][t][i]) / 3.0;
                assert!(
                    (v - expected).abs() < 1e-6,
                    "tensor {t}[{i}]: {v} vs {expected}"
                );
            }
        }
        assert!(average_models(Vec::new()).is_none());
    }

    #[test]
    fn recalibrated_batch_norm_forgets_the_statistics_it_had() {
        let items: Vec<Item> = (0..48u32)
            .map(|i| Item {
                crop: (0..data::cache_px(64) * data::cache_px(64) * 3)
                    .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i * 97) >> 13) as u8)
                    .collect(),
                truth: Truth::default(),
                image_hash: u64::from(i),
            })
            .collect();
        let device = Device::flex().autodiff();
        device.seed(7);
        let mut fresh = FaceAttrNet::new(&device, &NetShape::tiny());
        // A copy through a record: a cloned module shares its running statistics.
        let mut disturbed = FaceAttrNet::new(&device, &NetShape::tiny())
            .try_load_record(fresh.clone().into_record())
            .unwrap();
        // Training-mode passes on other pictures move the running statistics.
        let noise = Tensor::<4>::random(
            [8, 3, 64, 64],
            burn::tensor::Distribution::Normal(0.5, 2.0),
            &device,
        );
        drop(disturbed.forward(noise));
        assert!(
            tensors(&fresh.valid()) != tensors(&disturbed.valid()),
            "the training-mode pass left the statistics alone"
        );
        recalibrate_batch_norm(&mut fresh, &items, 32, 16);
        recalibrate_batch_norm(&mut disturbed, &items, 32, 16);
        let (a, b) = (tensors(&fresh.valid()), tensors(&disturbed.valid()));
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn age_targets_are_distributions_centred_on_the_age() {
        let mut d = vec![0f32; FINE_AGE_BINS];
        age_distribution(30, &mut d);
        assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let peak = d
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(peak, fine_bin_of(30));
        age_distribution(116, &mut d);
        assert_eq!(
            d.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0,
            FINE_AGE_BINS - 1
        );
    }

    #[test]
    fn learning_rate_warms_up_then_decays() {
        let c = TrainConfig {
            epochs: 10,
            ..TrainConfig::default()
        };
        assert!(learning_rate(&c, 0.0) < 0.1 * c.lr);
        assert!((learning_rate(&c, 1.0) - c.lr).abs() < 1e-12);
        assert!(learning_rate(&c, 5.5) < c.lr && learning_rate(&c, 5.5) > 0.4 * c.lr);
        assert!((learning_rate(&c, 10.0) - 0.01 * c.lr).abs() < 1e-9);
    }

    #[test]
    fn class_weights_average_to_one_over_samples() {
        let counts = [900, 100];
        let w = class_weights(&counts);
        let mean = (900.0 * w[0] + 100.0 * w[1]) / 1000.0;
        assert!((mean - 1.0).abs() < 1e-5);
        assert!(w[1] > w[0]);
        let mut t = vec![0f32; 5];
        one_hot_smoothed(2, 5, 0.05, &mut t);
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6 && t[2] > 0.95);
    }

    #[test]
    fn video_augmentation_needs_augmentation_and_old_runs_have_it_off() {
        let config = TrainConfig {
            sources: vec![("faces".into(), Task::ALL.to_vec())],
            video_augment: true,
            augment: false,
            ..TrainConfig::default()
        };
        assert!(config.validate().is_err());
        assert!(
            TrainConfig {
                augment: true,
                ..config.clone()
            }
            .validate()
            .is_ok()
        );
        // A run saved before the setting existed reads back with it off.
        let mut saved = serde_json::to_value(&config).unwrap();
        saved.as_object_mut().unwrap().remove("video_augment");
        let read: TrainConfig = serde_json::from_value(saved).unwrap();
        assert!(!read.video_augment);
    }

    #[test]
    fn a_deep_network_has_its_extra_blocks_and_exports_like_burn() {
        // Two extra basic blocks: 192 and 320 channels, two 3×3 convolutions and batch norms each.
        let extra = 2 * (192 * 192 * 9 + 4 * 192) + 2 * (320 * 320 * 9 + 4 * 320);
        let params = |shape: &NetShape| FaceAttrNet::new(&Device::flex(), shape).num_params();
        assert_eq!(
            params(&NetShape::deep()),
            params(&NetShape::default()) + extra
        );
        // Runs saved before the field existed read back with one block per stage.
        let mut saved = serde_json::to_value(NetShape::default()).unwrap();
        saved.as_object_mut().unwrap().remove("blocks_per_stage");
        let read: NetShape = serde_json::from_value(saved).unwrap();
        assert_eq!(read, NetShape::default());

        let device = Device::flex().autodiff();
        device.seed(5);
        let model = FaceAttrNet::new(&device, &NetShape::deep());
        let state = RunState::new(TrainConfig {
            sources: vec![("faces".into(), Task::ALL.to_vec())],
            input_px: 72,
            net: NetShape::deep(),
            ..TrainConfig::default()
        });
        let input: Vec<f32> = (0..2 * 3 * 72 * 72u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 16) % 256) as f32 / 64.0 - 2.0)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.onnx");
        let diff = export_run(&model, &state, &path, input, 2, "").unwrap();
        assert!(diff < 1e-4, "ONNX Runtime vs burn: {diff}");
    }

    #[test]
    fn an_epoch_without_a_gender_or_race_score_reads_back() {
        // An age-only run scores no gender or race: NaN, written as null, read back as NaN.
        let log = EpochLog {
            epoch: 1,
            train_loss: 3.5,
            images_per_s: 50.0,
            seconds: 300.0,
            age3: 0.7,
            age5: 0.65,
            age10: 0.45,
            age_mae: 6.5,
            gender: f64::NAN,
            race: f64::NAN,
            val_images: 2940,
        };
        let text = serde_json::to_string(&log).unwrap();
        assert!(
            text.contains("\"gender\":null") && text.contains("\"age3\":0.7"),
            "{text}"
        );
        let back: EpochLog = serde_json::from_str(&text).unwrap();
        assert!(back.gender.is_nan() && back.race.is_nan());
        assert_eq!((back.age3, back.epoch), (0.7, 1));
    }

    #[test]
    fn readouts_parse() {
        assert_eq!(AgeReadout::parse("10"), Ok(AgeReadout::Groups(10)));
        assert_eq!(AgeReadout::parse("years"), Ok(AgeReadout::Years));
        assert!(AgeReadout::parse("4").is_err());
    }
}
