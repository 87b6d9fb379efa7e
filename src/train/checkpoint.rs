//! Run folders: checkpoints (model, optimizer, `state.json`) saved every epoch and every few
//! steps, loading them to resume, weight averaging of epochs, and export to ONNX.

use super::*;

pub(super) fn checkpoint_error(path: &Path) -> impl Fn(String) -> TrainError + '_ {
    move |reason| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    }
}

pub(super) const STATE_FILE: &str = "state.json";
pub(super) const MODEL_FILE: &str = "model.bpk";
pub(super) const OPTIM_FILE: &str = "optim.bpk";
pub(super) const BEST_FILE: &str = "best.bpk";

/// Writes a network's weights (a `.bpk` file).
pub(super) fn save_network(model: &FaceAttrNet, path: &Path) -> Result<(), TrainError> {
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

pub(super) fn save_checkpoint(
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
    write_state(&tmp(STATE_FILE), state)?;
    for name in [MODEL_FILE, OPTIM_FILE, STATE_FILE] {
        fs::rename(tmp(name), dir.join(name)).map_err(|e| checkpoint_error(dir)(e.to_string()))?;
    }
    Ok(())
}

fn write_state(path: &Path, state: &RunState) -> Result<(), TrainError> {
    let json =
        serde_json::to_string_pretty(state).map_err(|e| checkpoint_error(path)(e.to_string()))?;
    fs::write(path, json).map_err(|e| checkpoint_error(path)(e.to_string()))
}

/// Rewrites `state.json` alone (the network and optimizer unchanged), through a temporary
/// file so that a kill mid-write keeps the previous one.
pub(super) fn save_state(dir: &Path, state: &RunState) -> Result<(), TrainError> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    write_state(&tmp, state)?;
    fs::rename(&tmp, dir.join(STATE_FILE)).map_err(|e| checkpoint_error(dir)(e.to_string()))
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

pub(super) fn spec_for(state: &RunState, description: &str) -> ModelSpec {
    let config = &state.config;
    let mut spec = ModelSpec::with_input_margin(&config.tasks, config.input_px, config.margin);
    spec.training = TrainingInfo {
        description: description.to_string(),
        epochs: state.history.len() as u32,
        images: state.train_images,
        split: Some(TrainingSplit {
            seed: config.seed,
            val_fraction: config.val_fraction,
            also_held_out: None,
        }),
        teacher_splits: if config.teacher_splits.is_empty() && config.distill > 0.0 {
            // A run started before teachers' splits were recorded: its teachers, splits unknown.
            vec![None; config.teachers.len()]
        } else {
            config.teacher_splits.clone()
        },
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
pub(super) fn check_batch(val: &[Item], train: &[Item], n: usize) -> (Vec<f32>, usize) {
    let pool = if val.is_empty() { train } else { val };
    let mut input = Vec::new();
    centre_batch(pool.iter().take(n), &mut input);
    (input, pool.len().min(n))
}

/// Collects every float tensor of a module, in visiting order.
pub(super) struct CollectTensors(pub(super) Vec<TensorData>);

impl ModuleVisitor for CollectTensors {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data());
    }
}

/// Replaces every float tensor by its mean with the same tensor of the other modules.
pub(super) struct MeanWith {
    pub(super) others: Vec<Vec<TensorData>>,
    pub(super) next: usize,
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
pub(super) fn average_models(mut models: Vec<FaceAttrNet>) -> Option<FaceAttrNet> {
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
    } = prepare(&state.config, opts)?
        // Unreachable as the binary runs it (`--export-only` sets no Ctrl-C handler: Ctrl-C ends
        // the process, which the append-only crop cache survives).
        .ok_or_else(|| TrainError::Config("stopped while detecting and aligning faces".into()))?;
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
    let tally = validate(&model, &val_items, &state.config.tasks);
    Ok((model, state, tally))
}
