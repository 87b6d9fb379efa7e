//! Knowledge distillation: what teacher models (faceflow attribute models, ONNX) predict for each
//! training face, blended into its targets by the epoch loop.

use std::path::{Path, PathBuf};

use super::{Item, TrainError, augment, say};
use crate::attributes::AttributeModel;
use crate::model::{FINE_AGE_BINS, GENDER_LABELS, RACE_LABELS};

/// Values per face: the fine age distribution, then gender, then race probabilities.
pub(super) const PER_FACE: usize = FINE_AGE_BINS + GENDER_LABELS.len() + RACE_LABELS.len();

/// Faces per teacher call.
const BATCH: usize = 64;

/// The content hash of each teacher file (what a run records, and checks on resume).
pub(super) fn teacher_hashes(teachers: &[PathBuf]) -> Result<Vec<u64>, TrainError> {
    teachers
        .iter()
        .map(|path| {
            std::fs::read(path)
                .map(|bytes| crate::model::dataset::content_hash(&bytes))
                .map_err(|e| TrainError::Config(format!("teacher {}: {e}", path.display())))
        })
        .collect()
}

/// Loads each teacher and checks it can teach a run aligned with `margin` (before any work).
pub(super) fn check_teachers(teachers: &[PathBuf], margin: f32) -> Result<(), TrainError> {
    for path in teachers {
        let model = AttributeModel::load(path, 1)
            .map_err(|e| TrainError::Config(format!("teacher {}: {e}", path.display())))?;
        same_margin(&model, path, margin)?;
    }
    Ok(())
}

/// A teacher aligned with another margin would see another part of the head than the student.
fn same_margin(model: &AttributeModel, path: &Path, margin: f32) -> Result<(), TrainError> {
    let teacher_margin = model.spec().input.margin;
    if teacher_margin == margin {
        return Ok(());
    }
    Err(TrainError::Config(format!(
        "teacher {} aligns faces with margin {teacher_margin}, this run with {margin}: a teacher \
         must see the same part of the head (train with --margin {teacher_margin})",
        path.display()
    )))
}

/// The teachers' mean prediction (each mirror-averaged) on every item's centre crop, `PER_FACE`
/// values an item, and which heads (age, gender, race) it holds: each head is the mean over the
/// teachers trained for that task (an untrained head's output is noise), absent when none was.
/// A teacher of another input size sees the crop resampled to its size (the same alignment:
/// faceflow's template and margin scale with the crop); a teacher aligned with another margin
/// than the run's (`margin`) would see another part of the head, and is refused.
pub(super) fn teacher_targets(
    teachers: &[PathBuf],
    items: &[Item],
    margin: f32,
) -> Result<(Vec<f32>, [bool; 3]), TrainError> {
    use crate::model::spec::Task;
    let mut sum = vec![0f32; items.len() * PER_FACE];
    let mut counts = [0usize; 3];
    let heads = [
        0..FINE_AGE_BINS,
        FINE_AGE_BINS..FINE_AGE_BINS + GENDER_LABELS.len(),
        FINE_AGE_BINS + GENDER_LABELS.len()..PER_FACE,
    ];
    for path in teachers {
        let started = std::time::Instant::now();
        let mut model = AttributeModel::load(path, 0)
            .map_err(|e| TrainError::Config(format!("teacher {}: {e}", path.display())))?;
        model.set_flip_average(true);
        same_margin(&model, path, margin)?;
        let side = model.spec().input_px();
        let trained =
            [Task::Age, Task::Gender, Task::Race].map(|t| model.spec().tasks.contains(&t));
        for (count, on) in counts.iter_mut().zip(trained) {
            *count += usize::from(on);
        }
        for (chunk_index, chunk) in items.chunks(BATCH).enumerate() {
            let crops: Vec<Vec<u8>> = chunk
                .iter()
                .map(|item| {
                    let centre = augment::centre(&item.crop);
                    let own = ((centre.len() / 3) as f64).sqrt().round() as usize;
                    if own == side {
                        centre
                    } else {
                        augment::resize_bilinear(&centre, own, side)
                    }
                })
                .collect();
            let predictions = model
                .predict(&crops)
                .map_err(|e| TrainError::Config(format!("teacher {}: {e}", path.display())))?;
            for (k, p) in predictions.iter().enumerate() {
                let at = (chunk_index * BATCH + k) * PER_FACE;
                let values: Vec<f32> = p
                    .age_fine
                    .iter()
                    .chain(&p.gender)
                    .chain(&p.race)
                    .copied()
                    .collect();
                for (head, on) in heads.iter().zip(trained) {
                    if !on {
                        continue;
                    }
                    let slots = &mut sum[at + head.start..at + head.end];
                    for (slot, v) in slots.iter_mut().zip(&values[head.clone()]) {
                        *slot += v;
                    }
                }
            }
        }
        say(&format!(
            "teacher {}: {} faces in {:.0} s",
            path.display(),
            items.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    for face in sum.chunks_exact_mut(PER_FACE) {
        for (head, &count) in heads.iter().zip(&counts) {
            for v in &mut face[head.clone()] {
                *v /= count.max(1) as f32;
            }
        }
    }
    Ok((sum, counts.map(|n| n > 0)))
}

/// `target` ← (1 − `weight`)·`target` + `weight`·`teacher`.
pub(super) fn blend(target: &mut [f32], teacher: &[f32], weight: f32) {
    for (t, s) in target.iter_mut().zip(teacher) {
        *t = (1.0 - weight) * *t + weight * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blending_keeps_a_distribution_a_distribution() {
        let mut target = vec![0.0, 1.0, 0.0];
        blend(&mut target, &[0.2, 0.5, 0.3], 0.5);
        assert_eq!(target, vec![0.1, 0.75, 0.15]);
        assert!((target.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut untouched = vec![0.3, 0.7];
        blend(&mut untouched, &[1.0, 0.0], 0.0);
        assert_eq!(untouched, vec![0.3, 0.7]);
    }
}
