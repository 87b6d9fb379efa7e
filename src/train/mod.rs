//! `faceflow train`: trains the multi-task attribute network on the CPU with burn and exports ONNX.
//!
//! Data → [`data`] (scan, de-duplicate, split, crops through faceflow's own detector and
//! alignment, cached); batches → [`augment`]; network → [`net`]; ONNX → [`export`]. A run folder
//! holds the checkpoint (model, optimizer, `state.json`), so an interrupted run resumes where it
//! stopped, across sessions.

pub mod augment;
pub mod data;
pub mod export;
pub mod net;

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
use crate::model::spec::{DEFAULT_INPUT_PX, ModelSpec, Task, TrainingInfo};
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
}

fn default_input_px() -> u32 {
    DEFAULT_INPUT_PX
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
        if self.tasks.is_empty() {
            return bad("no task to train".into());
        }
        Setting::flag("epochs", "--epochs").check(self.epochs, 1, 10_000, "")?;
        Setting::flag("batch", "--batch").check(self.batch, 2, 4096, "images")?;
        Setting::flag("val_fraction", "--val-fraction").check(self.val_fraction, 0.0, 0.9, "")?;
        if self.val_fraction >= 0.9 {
            return bad(format!(
                "val_fraction (--val-fraction) = {}: must be from 0 to below 0.9",
                self.val_fraction
            ));
        }
        Setting::flag("lr", "--lr").check(self.lr, 1e-7, 1.0, "")?;
        Setting::flag("weight_decay", "--weight-decay").check(self.weight_decay, 0.0, 1.0, "")?;
        for w in self.loss_weights {
            Setting::flag("loss_weights", "--loss-weights").check(w, 0.0, 1000.0, "")?;
        }
        if let Some(n) = self.max_images {
            Setting::flag("max_images", "--max-images").check(n, 1, usize::MAX, "")?;
        }
        if !crate::model::spec::is_input_size(self.input_px) {
            return bad(format!(
                "input_px (--input-px) = {}: must be a multiple of 8 from 32 to 224",
                self.input_px
            ));
        }
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
    pub age3: f64,
    pub age5: f64,
    pub age10: f64,
    pub age_mae: f64,
    pub gender: f64,
    pub race: f64,
    pub val_images: u64,
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

/// A prepared example: cached crop and masked labels.
struct Item {
    crop: Vec<u8>,
    truth: Truth,
}

pub struct Outcome {
    pub state: RunState,
    pub onnx: Option<PathBuf>,
    pub stopped: bool,
}

fn checkpoint_error(path: &Path) -> impl Fn(String) -> TrainError + '_ {
    move |reason| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    }
}

const STATE_FILE: &str = "state.json";
const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const BEST_FILE: &str = "best.bpk";

/// Writes a network's weights (a `.bpk` file).
fn save_network(model: &FaceAttrNet, path: &Path) -> Result<(), TrainError> {
    model
        .clone()
        .into_record()
        .save(path)
        .map_err(|e| checkpoint_error(path)(e.to_string()))
}

/// The network after epoch `epoch` (1-based), kept for weight averaging.
pub fn epoch_file(epoch: u32) -> String {
    format!("epoch-{epoch}.bpk")
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

/// Training items, validation items, and the images where no face was found.
struct Prepared {
    train: Vec<Item>,
    val: Vec<Item>,
    no_face: Vec<String>,
}

/// Reads the sources, splits, and fills the crop cache.
fn prepare(config: &TrainConfig, opts: &RunOptions) -> Result<Prepared, TrainError> {
    let sources: Vec<Source> = config
        .sources
        .iter()
        .map(|(dir, tasks)| Source {
            dir: dir.clone(),
            tasks: tasks.clone(),
        })
        .collect();
    let report = dataset::scan(&sources)?;
    say(&format!(
        "{} images: {} malformed names skipped, {} duplicate copies removed, {} dropped for conflicting labels, {} unreadable",
        report.samples.len(),
        report.malformed.len(),
        report.duplicates,
        report.conflicting,
        report.unreadable.len()
    ));
    for (name, reason) in report.malformed.iter().take(10) {
        say(&format!("  skipped {name}: {reason}"));
    }
    let mut samples = report.samples;
    if let Some(n) = config.max_images {
        // A deterministic subset: order by a seeded hash of the content.
        samples.sort_by_key(|s| dataset::is_validation_key(s, config.seed ^ 0x5eed));
        samples.truncate(n);
    }
    let (mut val, mut train): (Vec<Sample>, Vec<Sample>) = samples
        .into_iter()
        .partition(|s| dataset::is_validation(s, config.seed, config.val_fraction));
    if config.simulate_multi_source {
        for s in &mut train {
            let half = dataset::is_validation(s, config.seed ^ 0x4d53, 0.5);
            s.set_tasks(if half {
                &[Task::Age, Task::Gender]
            } else {
                &[Task::Race]
            });
        }
    }
    for s in &mut val {
        s.set_tasks(&Task::ALL);
    }
    let mut cache = CropCache::open(&opts.cache_dir, &opts.detect, config.input_px)?;
    let all: Vec<Sample> = train.iter().chain(val.iter()).cloned().collect();
    let before = cache.len();
    let started = Instant::now();
    let bar = progress_bar(opts.progress, all.len() as u64, "images");
    bar.set_prefix("detecting and aligning faces ");
    // `fill` counts the images not cached yet.
    cache.fill(&all, &opts.detect, opts.workers, &|done, total| {
        bar.set_length(total as u64);
        crate::console::show_rate(&bar, done as u64, started);
    })?;
    bar.finish_and_clear();
    if cache.len() > before {
        say(&format!(
            "cached {} new crops in {:.0} s ({})",
            cache.len() - before,
            started.elapsed().as_secs_f64(),
            cache.path().display()
        ));
    }
    let mut no_face = Vec::new();
    let mut items = |samples: &[Sample], with_masks: bool| -> Vec<Item> {
        let mut out = Vec::new();
        for s in samples {
            match cache.get(s.content_hash) {
                Some(Some(crop)) => out.push(Item {
                    crop: crop.clone(),
                    truth: Truth {
                        age_years: (s.has_age || !with_masks).then_some(s.labels.age_years),
                        gender: (s.has_gender || !with_masks).then_some(s.labels.gender),
                        race: (s.has_race || !with_masks).then_some(s.labels.race),
                    },
                }),
                _ => no_face.push(s.path.display().to_string()),
            }
        }
        out
    };
    let train_items = items(&train, true);
    let val_items = items(&val, false);
    say(&format!(
        "{} training and {} validation faces; no face found in {} images",
        train_items.len(),
        val_items.len(),
        no_face.len()
    ));
    Ok(Prepared {
        train: train_items,
        val: val_items,
        no_face,
    })
}

/// Soft-target cross-entropy summed over the batch with per-sample weights, divided by `denominator`.
fn soft_cross_entropy(
    logits: Tensor<2>,
    targets: Vec<f32>,
    weights: Vec<f32>,
    denominator: f32,
    device: &Device,
) -> Tensor<1> {
    let [batch, classes] = logits.dims();
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [batch, classes]), device);
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [batch, 1]), device);
    let per_sample = (log_softmax(logits, 1) * targets).sum_dim(1).neg();
    (per_sample * weights).sum().div_scalar(denominator)
}

/// Gaussian label distribution over the fine age bins: neighbouring years share credit, wider for
/// older faces, whose age is less certain.
fn age_distribution(age_years: u32, out: &mut [f32]) {
    let centre = fine_bin_of(age_years) as f32;
    let sigma = (0.07 * age_years as f32).max(1.0);
    let mut total = 0.0;
    for (bin, v) in out.iter_mut().enumerate() {
        let d = (bin as f32 - centre) / sigma;
        *v = (-0.5 * d * d).exp();
        total += *v;
    }
    out.iter_mut().for_each(|v| *v /= total);
}

fn one_hot_smoothed(class: usize, classes: usize, smoothing: f32, out: &mut [f32]) {
    let off = smoothing / classes as f32;
    out.iter_mut().for_each(|v| *v = off);
    out[class] = 1.0 - smoothing + off;
}

/// Square-root inverse-frequency class weights, normalised to mean 1 over the samples.
fn class_weights(counts: &[usize]) -> Vec<f32> {
    let total: usize = counts.iter().sum();
    let k = counts.iter().filter(|&&c| c > 0).count().max(1);
    let raw: Vec<f32> = counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                (total as f32 / (k as f32 * c as f32)).sqrt()
            }
        })
        .collect();
    let mean: f32 = counts
        .iter()
        .zip(&raw)
        .map(|(&c, &w)| c as f32 * w)
        .sum::<f32>()
        / total.max(1) as f32;
    raw.into_iter().map(|w| w / mean.max(1e-9)).collect()
}

struct Weights {
    age: Vec<f32>,
    gender: Vec<f32>,
    race: Vec<f32>,
}

fn balance(items: &[Item], on: bool) -> Weights {
    let ten = AgeGrouping::Ten;
    let (mut age, mut gender, mut race) = (vec![0; ten.len()], vec![0; 2], vec![0; 5]);
    for it in items {
        if let Some(a) = it.truth.age_years {
            age[ten.group_of(a)] += 1;
        }
        if let Some(g) = it.truth.gender {
            gender[g] += 1;
        }
        if let Some(r) = it.truth.race {
            race[r] += 1;
        }
    }
    if !on {
        return Weights {
            age: vec![1.0; age.len()],
            gender: vec![1.0; 2],
            race: vec![1.0; 5],
        };
    }
    Weights {
        age: class_weights(&age),
        gender: class_weights(&gender),
        race: class_weights(&race),
    }
}

/// Learning rate at a fractional epoch: linear warm-up, then cosine decay to 1 % of the peak.
fn learning_rate(config: &TrainConfig, epoch_f: f64) -> f64 {
    let total = f64::from(config.epochs);
    if epoch_f < config.warmup_epochs {
        return config.lr * (0.05 + 0.95 * epoch_f / config.warmup_epochs);
    }
    let t = ((epoch_f - config.warmup_epochs) / (total - config.warmup_epochs).max(1e-9)).min(1.0);
    config.lr * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// Normalised planar centre crops of `items`, ready for a `[n, 3, H, W]` tensor.
fn centre_batch<'a>(items: impl IntoIterator<Item = &'a Item>, out: &mut Vec<f32>) {
    let crops: Vec<Vec<u8>> = items
        .into_iter()
        .map(|it| augment::centre(&it.crop))
        .collect();
    out.clear();
    augment::normalise_batch(&crops, out);
}

/// Re-estimates every batch norm's statistics as the plain mean over batches of `images` training
/// centre crops (spread evenly over `items`), instead of the running average of the last few
/// augmented training batches, which swings from epoch to epoch. `model` must live on an autodiff
/// device (batch norm only updates its statistics there); gradients are never computed.
fn recalibrate_batch_norm(model: &mut FaceAttrNet, items: &[Item], images: usize, batch: usize) {
    let images = images.min(items.len());
    if images == 0 || batch == 0 {
        return;
    }
    let stride = items.len() as f64 / images as f64;
    let chosen: Vec<&Item> = (0..images)
        .map(|i| &items[((i as f64 * stride) as usize).min(items.len() - 1)])
        .collect();
    let device = Device::flex().autodiff();
    let mut input = Vec::new();
    for (k, chunk) in chosen.chunks(batch).enumerate() {
        // The k-th batch gets weight 1/(k+1): the statistics become the mean over all batches.
        model.set_batch_norm_momentum(1.0 / (k as f64 + 1.0));
        centre_batch(chunk.iter().copied(), &mut input);
        let side = side_of(&input, chunk.len());
        let x = Tensor::<4>::from_data(
            TensorData::new(std::mem::take(&mut input), [chunk.len(), 3, side, side]),
            &device,
        );
        let (age, gender, race) = model.forward(x);
        // burn's autodiff keeps a forward's graph until a backward pass runs, even when every
        // tensor of it is dropped: without this, recalibrating over thousands of crops held all
        // their activations (11 GB for 2,600 crops at 64 px; out of memory at 80 px). The
        // gradients are thrown away.
        drop((age.sum() + gender.sum() + race.sum()).backward());
    }
    model.set_batch_norm_momentum(BATCH_NORM_MOMENTUM);
}

/// Side of the square crops in a normalised planar batch of `batch` crops.
fn side_of(input: &[f32], batch: usize) -> usize {
    ((input.len() / batch.max(1) / 3) as f64).sqrt().round() as usize
}

/// burn's default, which training uses.
const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// Predictions of `model` (any device; evaluated without autodiff) on the centre crops of `items`.
fn predict(model: &FaceAttrNet, items: &[Item], batch: usize) -> Vec<Prediction> {
    let device = Device::flex();
    let mut out = Vec::with_capacity(items.len());
    let mut input = Vec::new();
    for chunk in items.chunks(batch.max(1)) {
        centre_batch(chunk, &mut input);
        let side = side_of(&input, chunk.len());
        let x = Tensor::<4>::from_data(
            TensorData::new(std::mem::take(&mut input), [chunk.len(), 3, side, side]),
            &device,
        );
        let (a, g, r) = model.forward(x);
        let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap_or_default();
        let (a, g, r) = (read(a), read(g), read(r));
        for i in 0..chunk.len() {
            out.push(Prediction::from_logits(
                &a[i * FINE_AGE_BINS..(i + 1) * FINE_AGE_BINS],
                &g[i * 2..(i + 1) * 2],
                &r[i * 5..(i + 1) * 5],
            ));
        }
    }
    out
}

fn validate(model: &FaceAttrNet, items: &[Item]) -> Tally {
    let predictions = predict(model, items, 128);
    let mut tally = Tally::default();
    for (item, p) in items.iter().zip(&predictions) {
        tally.add(&item.truth, Some(p));
    }
    tally
}

fn save_checkpoint(
    dir: &Path,
    model: &FaceAttrNet,
    optim: &ModuleOptimizer,
    state: &RunState,
) -> Result<(), TrainError> {
    // Write to temporary names, then rename: a run killed mid-save keeps the previous checkpoint.
    let tmp = |name: &str| dir.join(format!("{name}.tmp"));
    save_network(model, &tmp(MODEL_FILE))?;
    optim
        .save(tmp(OPTIM_FILE))
        .map_err(|e| checkpoint_error(dir)(e.to_string()))?;
    let json =
        serde_json::to_string_pretty(state).map_err(|e| checkpoint_error(dir)(e.to_string()))?;
    fs::write(tmp(STATE_FILE), json).map_err(|e| checkpoint_error(dir)(e.to_string()))?;
    for name in [MODEL_FILE, OPTIM_FILE, STATE_FILE] {
        fs::rename(tmp(name), dir.join(name)).map_err(|e| checkpoint_error(dir)(e.to_string()))?;
    }
    Ok(())
}

pub fn load_state(dir: &Path) -> Result<RunState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| checkpoint_error(&path)(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| checkpoint_error(&path)(e.to_string()))
}

/// Loads a saved network (`model.bpk` or `best.bpk`) on the CPU, for export.
pub fn load_model(dir: &Path, best: bool) -> Result<(FaceAttrNet, RunState), TrainError> {
    let state = load_state(dir)?;
    let path = dir.join(if best { BEST_FILE } else { MODEL_FILE });
    let record = ModuleRecord::load(&path).map_err(|e| checkpoint_error(&path)(e.to_string()))?;
    let model = FaceAttrNet::new(&Device::flex(), &state.config.net)
        .try_load_record(record)
        .map_err(|e| checkpoint_error(&path)(e.to_string()))?;
    Ok((model, state))
}

fn spec_for(state: &RunState, description: &str) -> ModelSpec {
    let mut spec = ModelSpec::with_input(&state.config.tasks, state.config.input_px);
    spec.training = TrainingInfo {
        description: description.to_string(),
        epochs: state.history.len() as u32,
        images: state.train_images,
    };
    spec
}

/// Exports a run's model to ONNX and checks ONNX Runtime against burn on `check_crops` (normalised,
/// planar). Returns the largest absolute difference of any logit.
pub fn export_run(
    model: &FaceAttrNet,
    state: &RunState,
    path: &Path,
    check_input: Vec<f32>,
    check_batch: usize,
    note: &str,
) -> Result<f32, TrainError> {
    let model = model.valid();
    let tasks: Vec<&str> = state.config.tasks.iter().map(|t| t.name()).collect();
    let description = format!(
        "faceflow train: tasks {}, {} epochs{}{note}",
        tasks.join("+"),
        state.history.len(),
        if state.config.simulate_multi_source {
            ", multi-source (age+gender half, race half)"
        } else {
            ""
        }
    );
    // burn's forward first: capturing the graph for export moves a clone of the model onto the
    // capture device, after which this model's parameters cannot be read back.
    let expected = export::burn_logits(&model, check_input.clone(), check_batch)?;
    let bytes = export::export_onnx(&model.clone(), &spec_for(state, &description))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| TrainError::Export(e.to_string()))?;
    }
    fs::write(path, &bytes)
        .map_err(|e| TrainError::Export(format!("cannot write {}: {e}", path.display())))?;
    let mut session = crate::attributes::AttributeModel::from_bytes(&bytes, 1, path)
        .map_err(|e| TrainError::Export(e.to_string()))?;
    let got = session
        .logits(&check_input, check_batch)
        .map_err(|e| TrainError::Export(e.to_string()))?;
    let mut max_diff = 0f32;
    for (a, b) in expected.iter().zip(got.iter()) {
        if a.len() != b.len() {
            return Err(TrainError::Export(
                "ONNX output sizes differ from burn's".into(),
            ));
        }
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    Ok(max_diff)
}

/// Normalised centre crops of up to `n` validation (else training) items, for export checks.
fn check_batch(val: &[Item], train: &[Item], n: usize) -> (Vec<f32>, usize) {
    let pool = if val.is_empty() { train } else { val };
    let mut input = Vec::new();
    centre_batch(pool.iter().take(n), &mut input);
    (input, pool.len().min(n))
}

/// Collects every float tensor of a module, in visiting order.
struct CollectTensors(Vec<TensorData>);

impl ModuleVisitor for CollectTensors {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data());
    }
}

/// Replaces every float tensor by its mean with the same tensor of the other modules.
struct MeanWith {
    others: Vec<Vec<TensorData>>,
    next: usize,
}

impl ModuleMapper for MeanWith {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let i = self.next;
        self.next += 1;
        let others = &self.others;
        param.map(|tensor| {
            let device = tensor.device();
            let mut sum = tensor;
            // Every network was built from one shape, so the i-th tensors match.
            for other in others {
                sum = sum + Tensor::<D>::from_data(other[i].clone(), &device);
            }
            sum.div_scalar((others.len() + 1) as f64)
        })
    }
}

/// Averages the weights of networks of one shape (stochastic weight averaging over the epochs of
/// a run's low-learning-rate tail): the mean of nearby solutions generalises better than any one.
fn average_models(mut models: Vec<FaceAttrNet>) -> Option<FaceAttrNet> {
    let first = models.first()?.clone();
    let others = models
        .drain(1..)
        .map(|m| {
            let mut collect = CollectTensors(Vec::new());
            m.visit(&mut collect);
            collect.0
        })
        .collect();
    Some(first.map(&mut MeanWith { others, next: 0 }))
}

/// `faceflow train --export-only --average A,B,…`: the mean of checkpoints of the run in
/// `opts.out_dir` (file names inside it, e.g. `epoch-24.bpk`), with batch-norm statistics
/// re-estimated on its training crops, and its validation on the run's split.
pub fn average_run(
    opts: &RunOptions,
    checkpoints: &[String],
) -> Result<(FaceAttrNet, RunState, Tally), TrainError> {
    let state = load_state(&opts.out_dir)?;
    let mut models = Vec::new();
    for name in checkpoints {
        let path = opts.out_dir.join(name);
        let record =
            ModuleRecord::load(&path).map_err(|e| checkpoint_error(&path)(e.to_string()))?;
        models.push(
            FaceAttrNet::new(&Device::flex(), &state.config.net)
                .try_load_record(record)
                .map_err(|e| checkpoint_error(&path)(e.to_string()))?,
        );
    }
    let mean = average_models(models)
        .ok_or_else(|| TrainError::Config("--average needs at least one checkpoint".into()))?;
    let Prepared {
        train: train_items,
        val: val_items,
        ..
    } = prepare(&state.config, opts)?;
    // Batch norm only re-estimates its statistics on an autodiff device.
    let mut model = FaceAttrNet::new(&Device::flex().autodiff(), &state.config.net)
        .try_load_record(mean.into_record())
        .map_err(|e| checkpoint_error(&opts.out_dir)(e.to_string()))?;
    // Averaged running statistics belong to no network: re-estimate even where the run turned
    // re-estimation off.
    let images = state
        .config
        .batch_norm_images
        .max(default_batch_norm_images());
    recalibrate_batch_norm(&mut model, &train_items, images, state.config.batch);
    let model = model.valid();
    let tally = validate(&model, &val_items);
    Ok((model, state, tally))
}

/// Trains (or resumes) a run. Returns the final state and where the ONNX model went.
pub fn train(config: TrainConfig, opts: &RunOptions) -> Result<Outcome, TrainError> {
    fs::create_dir_all(&opts.out_dir).map_err(|e| TrainError::Data {
        path: opts.out_dir.clone(),
        reason: e.to_string(),
    })?;
    let state_path = opts.out_dir.join(STATE_FILE);
    let resumed = opts.resume && state_path.exists();
    let mut state = if resumed {
        let mut saved = load_state(&opts.out_dir)?;
        if saved.config.epochs != config.epochs {
            say(&format!(
                "epochs changed from {} to {}: the learning-rate schedule follows the new total",
                saved.config.epochs, config.epochs
            ));
            saved.config.epochs = config.epochs;
        }
        if saved.config.input_px != config.input_px {
            say(&format!(
                "this run's input is {} px (saved with it); --input-px {} is ignored on resume",
                saved.config.input_px, config.input_px
            ));
        }
        saved
    } else {
        if state_path.exists() {
            return Err(TrainError::Config(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                opts.out_dir.display()
            )));
        }
        config.validate()?;
        RunState {
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
    };
    let config = state.config.clone();
    let Prepared {
        train: train_items,
        val: val_items,
        no_face,
    } = prepare(&config, opts)?;
    if train_items.len() < config.batch {
        return Err(TrainError::Config(format!(
            "only {} training faces, fewer than one batch of {}",
            train_items.len(),
            config.batch
        )));
    }
    let _ = fs::write(opts.out_dir.join("no_face.txt"), no_face.join("\n") + "\n");
    state.train_images = train_items.len();
    state.val_images = val_items.len();

    let device = Device::flex().autodiff();
    device.seed(config.seed);
    let mut model = FaceAttrNet::new(&device, &config.net);
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    if resumed {
        let path = opts.out_dir.join(MODEL_FILE);
        let record =
            ModuleRecord::load(&path).map_err(|e| checkpoint_error(&path)(e.to_string()))?;
        model = model
            .try_load_record(record)
            .map_err(|e| checkpoint_error(&path)(e.to_string()))?;
        let path = opts.out_dir.join(OPTIM_FILE);
        optim = optim
            .load(&path)
            .map_err(|e| checkpoint_error(&path)(e.to_string()))?;
        say(&format!(
            "resumed {} at epoch {}, batch {} (step {})",
            opts.out_dir.display(),
            state.epoch + 1,
            state.batch_in_epoch,
            state.step
        ));
    }

    let weights = balance(&train_items, config.balance_classes);
    let batches_per_epoch = train_items.len() / config.batch;
    let side = config.input_px as usize;
    let augment_params = if config.augment {
        augment::Augment::default()
    } else {
        augment::Augment {
            max_rotation_deg: 0.0,
            max_scale: 0.0,
            max_shift_px: 0.0,
            flip: false,
            colour: 0.0,
        }
    };
    let mut stopped = false;
    while state.epoch < config.epochs && !stopped {
        let epoch = state.epoch;
        let mut order: Vec<usize> = (0..train_items.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config
                .seed
                .wrapping_mul(1000)
                .wrapping_add(u64::from(epoch)),
        ));
        let epoch_start = Instant::now();
        let (mut loss_sum, mut loss_n) = (0f64, 0usize);
        let mut input = Vec::new();
        let start_batch = state.batch_in_epoch;
        let bar = progress_bar(opts.progress, batches_per_epoch as u64, "batches");
        bar.set_position(start_batch as u64);
        for b in start_batch..batches_per_epoch {
            if opts.stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let step_start = Instant::now();
            let idx = &order[b * config.batch..(b + 1) * config.batch];
            // Augmentation draws from a per-step seed, so a resumed run sees the same pictures.
            let mut rng = StdRng::seed_from_u64(config.seed ^ state.step.wrapping_mul(0x9e37));
            let crops: Vec<Vec<u8>> = idx
                .iter()
                .map(|&i| augment::augment(&train_items[i].crop, &augment_params, &mut rng))
                .collect();
            input.clear();
            augment::normalise_batch(&crops, &mut input);
            let n = idx.len();
            let (mut age_t, mut gender_t, mut race_t) = (
                vec![0f32; n * FINE_AGE_BINS],
                vec![0f32; n * 2],
                vec![0f32; n * 5],
            );
            let (mut age_w, mut gender_w, mut race_w) =
                (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            let (mut age_n, mut gender_n, mut race_n) = (0usize, 0usize, 0usize);
            for (j, &i) in idx.iter().enumerate() {
                let t = &train_items[i].truth;
                if let (Some(a), true) = (t.age_years, config.trains(Task::Age)) {
                    age_distribution(a, &mut age_t[j * FINE_AGE_BINS..(j + 1) * FINE_AGE_BINS]);
                    age_w[j] = weights.age[AgeGrouping::Ten.group_of(a)];
                    age_n += 1;
                }
                if let (Some(g), true) = (t.gender, config.trains(Task::Gender)) {
                    one_hot_smoothed(
                        g,
                        2,
                        config.label_smoothing,
                        &mut gender_t[j * 2..j * 2 + 2],
                    );
                    gender_w[j] = weights.gender[g];
                    gender_n += 1;
                }
                if let (Some(r), true) = (t.race, config.trains(Task::Race)) {
                    one_hot_smoothed(r, 5, config.label_smoothing, &mut race_t[j * 5..j * 5 + 5]);
                    race_w[j] = weights.race[r];
                    race_n += 1;
                }
            }
            let x = Tensor::<4>::from_data(
                TensorData::new(std::mem::take(&mut input), [n, 3, side, side]),
                &device,
            );
            let (age_logits, gender_logits, race_logits) = model.forward(x);
            let [wa, wg, wr] = config.loss_weights;
            let mut loss = soft_cross_entropy(
                age_logits,
                age_t,
                age_w.iter().map(|w| w * wa).collect(),
                age_n.max(1) as f32,
                &device,
            );
            loss =
                loss + soft_cross_entropy(
                    gender_logits,
                    gender_t,
                    gender_w.iter().map(|w| w * wg).collect(),
                    gender_n.max(1) as f32,
                    &device,
                ) + soft_cross_entropy(
                    race_logits,
                    race_t,
                    race_w.iter().map(|w| w * wr).collect(),
                    race_n.max(1) as f32,
                    &device,
                );
            let loss_value = loss.clone().into_scalar::<f32>();
            if !loss_value.is_finite() {
                return Err(TrainError::Config(format!(
                    "the loss became {loss_value} at step {}: lower --lr",
                    state.step
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = learning_rate(
                &config,
                f64::from(epoch) + b as f64 / batches_per_epoch as f64,
            );
            model = optim.step(lr, model, grads);
            loss_sum += f64::from(loss_value);
            loss_n += 1;
            state.step += 1;
            state.batch_in_epoch = b + 1;
            state.train_seconds += step_start.elapsed().as_secs_f64();
            // A terminal gets a bar; a log file gets a line every 50 steps.
            if opts.progress {
                let done = b + 1 - start_batch;
                let rate = (done * config.batch) as f64 / epoch_start.elapsed().as_secs_f64();
                bar.set_position(b as u64 + 1);
                bar.set_message(format!(
                    "epoch {}/{}  loss {:.3}  lr {:.1e}  {rate:.0} img/s",
                    epoch + 1,
                    config.epochs,
                    loss_sum / loss_n as f64,
                    lr
                ));
            } else if state.step % 50 == 0 {
                let done = b + 1 - start_batch;
                let rate = (done * config.batch) as f64 / epoch_start.elapsed().as_secs_f64();
                let left = (batches_per_epoch - b - 1) * config.batch;
                let line = format!(
                    "epoch {}/{} batch {}/{} loss {:.3} lr {:.1e} {:.0} img/s, epoch ends in {:.0} s",
                    epoch + 1,
                    config.epochs,
                    b + 1,
                    batches_per_epoch,
                    loss_sum / loss_n as f64,
                    lr,
                    rate,
                    left as f64 / rate.max(1e-9)
                );
                say(&line);
            }
            if opts.checkpoint_every_steps > 0 && state.step % opts.checkpoint_every_steps == 0 {
                save_checkpoint(&opts.out_dir, &model, &optim, &state)?;
            }
        }
        bar.finish_and_clear();
        if stopped {
            break;
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        recalibrate_batch_norm(
            &mut model,
            &train_items,
            config.batch_norm_images,
            config.batch,
        );
        let tally = validate(&model.valid(), &val_items);
        let trained = (batches_per_epoch - start_batch) * config.batch;
        let log = EpochLog {
            epoch: epoch + 1,
            train_loss: loss_sum / loss_n.max(1) as f64,
            images_per_s: trained as f64 / seconds.max(1e-9),
            seconds,
            age3: tally.age_accuracy(AgeGrouping::Three),
            age5: tally.age_accuracy(AgeGrouping::Five),
            age10: tally.age_accuracy(AgeGrouping::Ten),
            age_mae: tally.age_mae(),
            gender: tally.gender.accuracy(),
            race: tally.race.accuracy(),
            val_images: tally.images,
        };
        say(&format!(
            "epoch {}/{}: loss {:.4}, {:.0} img/s, {:.0} s; validation {}",
            epoch + 1,
            config.epochs,
            log.train_loss,
            log.images_per_s,
            seconds,
            tally.line()
        ));
        state.history.push(log);
        state.epoch += 1;
        state.batch_in_epoch = 0;
        let score = config.age_readout.score(&tally);
        if !val_items.is_empty() && state.best_score.is_none_or(|best| score > best) {
            state.best_score = Some(score);
            state.best_epoch = Some(epoch + 1);
            save_network(&model, &opts.out_dir.join(BEST_FILE))?;
        }
        save_network(&model, &opts.out_dir.join(epoch_file(epoch + 1)))?;
        save_checkpoint(&opts.out_dir, &model, &optim, &state)?;
    }
    if stopped {
        save_checkpoint(&opts.out_dir, &model, &optim, &state)?;
        say(&format!(
            "stopped at epoch {}, batch {}; checkpoint saved: run again with --resume to continue",
            state.epoch + 1,
            state.batch_in_epoch
        ));
        return Ok(Outcome {
            state,
            onnx: None,
            stopped: true,
        });
    }
    let path = opts
        .export_path
        .clone()
        .unwrap_or_else(|| opts.out_dir.join("faceattr.onnx"));
    let (check_input, check_n) = check_batch(&val_items, &train_items, 16);
    let diff = export_run(&model, &state, &path, check_input, check_n, "")?;
    say(&format!(
        "exported {} (ONNX Runtime vs burn on {check_n} crops: max |difference| {diff:.2e})",
        path.display()
    ));
    let mut report = fs::File::create(opts.out_dir.join("export_check.txt"))
        .map_err(|e| TrainError::Export(e.to_string()))?;
    let _ = writeln!(report, "crops {check_n}\nmax_abs_diff {diff:e}");
    if diff > 1e-4 {
        return Err(TrainError::Export(format!(
            "ONNX Runtime differs from burn by {diff:e} (more than 1e-4)"
        )));
    }
    Ok(Outcome {
        state,
        onnx: Some(path),
        stopped: false,
    })
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
    fn readouts_parse() {
        assert_eq!(AgeReadout::parse("10"), Ok(AgeReadout::Groups(10)));
        assert_eq!(AgeReadout::parse("years"), Ok(AgeReadout::Years));
        assert!(AgeReadout::parse("4").is_err());
    }
}
