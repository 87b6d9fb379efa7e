//! The learning-rate schedule (warm-up, cosine decay) and batch-norm statistics re-estimated
//! on training images after each epoch.

use super::*;

/// Learning rate at a fractional epoch: linear warm-up, then cosine decay to 1 % of the peak.
pub(super) fn learning_rate(config: &TrainConfig, epoch_f: f64) -> f64 {
    let total = f64::from(config.epochs);
    if epoch_f < config.warmup_epochs {
        return config.lr * (0.05 + 0.95 * epoch_f / config.warmup_epochs);
    }
    let t = ((epoch_f - config.warmup_epochs) / (total - config.warmup_epochs).max(1e-9)).min(1.0);
    config.lr * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// Re-estimates every batch norm's statistics as the plain mean over batches of `images` training
/// centre crops (spread evenly over `items`), instead of the running average of the last few
/// augmented training batches, which swings from epoch to epoch. `model` must live on an autodiff
/// device (batch norm only updates its statistics there); gradients are never computed.
pub(super) fn recalibrate_batch_norm(
    model: &mut FaceAttrNet,
    items: &[Item],
    images: usize,
    batch: usize,
) {
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
pub(super) fn side_of(input: &[f32], batch: usize) -> usize {
    ((input.len() / batch.max(1) / 3) as f64).sqrt().round() as usize
}

/// burn's default, which training uses.
pub(super) const BATCH_NORM_MOMENTUM: f64 = 0.1;
