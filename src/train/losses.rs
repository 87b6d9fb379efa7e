//! Losses of the multi-task network: soft cross-entropy against smoothed or distribution
//! targets, and class weights that balance rare classes.

use super::*;

/// Soft-target cross-entropy summed over the batch with per-sample weights, divided by `denominator`.
pub(super) fn soft_cross_entropy(
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
pub(super) fn age_distribution(age_years: u32, out: &mut [f32]) {
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

pub(super) fn one_hot_smoothed(class: usize, classes: usize, smoothing: f32, out: &mut [f32]) {
    let off = smoothing / classes as f32;
    out.iter_mut().for_each(|v| *v = off);
    out[class] = 1.0 - smoothing + off;
}

/// Square-root inverse-frequency class weights, normalised to mean 1 over the samples.
pub(super) fn class_weights(counts: &[usize]) -> Vec<f32> {
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

pub(super) struct Weights {
    pub(super) age: Vec<f32>,
    pub(super) gender: Vec<f32>,
    pub(super) race: Vec<f32>,
}

pub(super) fn balance(items: &[Item], on: bool) -> Weights {
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
