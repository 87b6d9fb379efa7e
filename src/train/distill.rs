//! Knowledge distillation: what teacher models (faceflow attribute models, ONNX) predict for each
//! training face, blended into its targets by the epoch loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Item, TrainError, augment, say};
use crate::attributes::AttributeModel;
use crate::model::dataset::content_hash;
use crate::model::spec::TrainingSplit;
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
                .map(|bytes| content_hash(&bytes))
                .map_err(|e| TrainError::Config(format!("teacher {}: {e}", path.display())))
        })
        .collect()
}

/// Loads each teacher and checks it can teach a run of `input_px` aligned with `margin` (before
/// any work). Returns the splits of every model the student learns from (each teacher's, then
/// those of its own teachers), and says when a teacher learned faces of this run's validation
/// part `(seed, val_fraction)`: through its targets they reach the student.
pub(super) fn check_teachers(
    teachers: &[PathBuf],
    input_px: u32,
    margin: f32,
    (seed, val_fraction): (u64, f64),
) -> Result<Vec<Option<TrainingSplit>>, TrainError> {
    let mut splits = Vec::new();
    for path in teachers {
        let model = AttributeModel::load(path, 1)
            .map_err(|e| TrainError::Config(format!("teacher {}: {e}", path.display())))?;
        teacher_window(&model, path, input_px, margin)?;
        // The teacher's own split, then those it learned from in turn.
        let training = &model.spec().training;
        let learned_from: Vec<Option<TrainingSplit>> = std::iter::once(training.split)
            .chain(training.teacher_splits.iter().copied())
            .collect();
        if learned_from
            .iter()
            .flatten()
            .any(|s| s.trained_on_validation_of(seed, val_fraction))
        {
            say(&format!(
                "warning: teacher {} learned from some of this run's validation images if it was trained on these folders (its split, or a teacher's, differs): the run's validation numbers would read high",
                path.display()
            ));
        }
        splits.extend(learned_from);
    }
    Ok(splits)
}

/// The side, in cached-crop pixels, of the window a teacher sees around the face's centre: the
/// student's crop (`input_px` at `margin`) scaled to the teacher's margin. A teacher with a wider
/// margin needs more of the head than the student's crop: it comes from the cache's border, and
/// a teacher that needs more than the border holds is refused.
fn teacher_window(
    model: &AttributeModel,
    path: &Path,
    input_px: u32,
    margin: f32,
) -> Result<f32, TrainError> {
    let teacher_margin = model.spec().input.margin;
    let window = input_px as f32 * (1.0 + 2.0 * teacher_margin) / (1.0 + 2.0 * margin);
    let cached = super::data::cache_px(input_px) as f32;
    // A pixel short of the whole crop, so that every bilinear sample has its four neighbours.
    if window > cached - 1.0 {
        return Err(TrainError::Config(format!(
            "teacher {} aligns faces with margin {teacher_margin}: it needs more of the head than \
             this run's crops hold (margin {margin}, {input_px} px); train with --margin {teacher_margin}",
            path.display()
        )));
    }
    Ok(window)
}

/// What a teacher sees of a cached crop: the centred `window` (cached-crop pixels) at its own
/// `side`. Same margin: the student's crop, resampled if the sizes differ (as before margins
/// could differ, so runs resumed keep their targets); another margin: a bilinear warp.
fn teacher_view(cached: &[u8], window: f32, side: usize) -> Vec<u8> {
    let cache = ((cached.len() / 3) as f64).sqrt().round() as usize;
    let own = cache.saturating_sub(2 * super::data::CACHE_BORDER_PX as usize);
    if (window - own as f32).abs() < 1e-3 {
        let centre = augment::centre(cached);
        return if own == side {
            centre
        } else {
            augment::resize_bilinear(&centre, own, side)
        };
    }
    let scale = side as f32 / window;
    // Centres at half the sides: the convention of the alignment's template (and so of the crop
    // the runtime would cut for the teacher).
    let (c_cache, c_view) = (cache as f32 / 2.0, side as f32 / 2.0);
    let view_from_cache = crate::align::Similarity {
        a: scale,
        b: 0.0,
        tx: c_view - scale * c_cache,
        ty: c_view - scale * c_cache,
    };
    crate::align::warp_rgb(cached, cache, cache, &view_from_cache, side)
        .unwrap_or_else(|| vec![0; side * side * 3])
}

/// The teachers' mean prediction (each mirror-averaged) on every item's centre crop, `PER_FACE`
/// values an item, and which heads (age, gender, race) it holds: each head is the mean over the
/// teachers trained for that task (an untrained head's output is noise), absent when none was.
/// A teacher of another input size sees the crop resampled to its size (faceflow's template and
/// margin scale with the crop); a teacher aligned with another margin than the run's sees the
/// window of its own margin, cut from the cached crop (see [`teacher_window`]). `None` when `stop`
/// is set before the teachers are through (minutes on a large set: Ctrl-C must not wait). Each
/// teacher file must still have the content hash the run recorded (`teacher_hashes`): the file
/// read is the file checked, even when it was replaced while the crop cache filled. A teacher
/// that is one fold of a cross-fitted set (its split holds out a slice, `also_held_out`) speaks
/// only for the faces it never learned; each face's heads are the mean over the teachers that
/// speak for it, and a face left with none for a head is an error.
pub(super) fn teacher_targets(
    teachers: &[PathBuf],
    teacher_hashes: &[u64],
    items: &[Item],
    input_px: u32,
    margin: f32,
    stop: &AtomicBool,
) -> Result<Option<Taught>, TrainError> {
    use crate::model::spec::Task;
    let mut sum = vec![0f32; items.len() * PER_FACE];
    // Teachers trained for each head: in all, and per face (a cross-fitted teacher only speaks
    // for some faces).
    let mut counts = [0usize; 3];
    let mut face_counts = vec![[0u16; 3]; items.len()];
    let heads = [
        0..FINE_AGE_BINS,
        FINE_AGE_BINS..FINE_AGE_BINS + GENDER_LABELS.len(),
        FINE_AGE_BINS + GENDER_LABELS.len()..PER_FACE,
    ];
    if teacher_hashes.len() != teachers.len() {
        return Err(TrainError::Config(
            "the run records no content hash for some teacher".into(),
        ));
    }
    for (path, &hash) in teachers.iter().zip(teacher_hashes) {
        let started = std::time::Instant::now();
        let failed = |e: &dyn std::fmt::Display| {
            TrainError::Config(format!("teacher {}: {e}", path.display()))
        };
        let bytes = std::fs::read(path).map_err(|e| failed(&e))?;
        if content_hash(&bytes) != hash {
            return Err(failed(
                &"the file changed since this run started (other contents); the run cannot go on with another teacher",
            ));
        }
        let mut model = AttributeModel::from_bytes(&bytes, 0, path).map_err(|e| failed(&e))?;
        model.set_flip_average(true);
        let window = teacher_window(&model, path, input_px, margin)?;
        let side = model.spec().input_px();
        let trained =
            [Task::Age, Task::Gender, Task::Race].map(|t| model.spec().tasks.contains(&t));
        for (count, on) in counts.iter_mut().zip(trained) {
            *count += usize::from(on);
        }
        // One member of a cross-fitted set teaches only the faces it never learned: on those it
        // learned, a teacher that fits its training faces says little more than their labels.
        let taught: Vec<usize> = match model.spec().training.split {
            Some(split) if split.also_held_out.is_some() => (0..items.len())
                .filter(|&i| split.held_out(items[i].image_hash))
                .collect(),
            _ => (0..items.len()).collect(),
        };
        for chunk in taught.chunks(BATCH) {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let crops: Vec<Vec<u8>> = chunk
                .iter()
                .map(|&i| teacher_view(&items[i].crop, window, side))
                .collect();
            let predictions = model
                .predict(&crops)
                .map_err(|e| TrainError::Config(format!("teacher {}: {e}", path.display())))?;
            for (&i, p) in chunk.iter().zip(&predictions) {
                let at = i * PER_FACE;
                let values: Vec<f32> = p
                    .age_fine
                    .iter()
                    .chain(&p.gender)
                    .chain(&p.race)
                    .copied()
                    .collect();
                for (h, (head, on)) in heads.iter().zip(trained).enumerate() {
                    if !on {
                        continue;
                    }
                    face_counts[i][h] += 1;
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
            taught.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    for (face, taught) in sum.chunks_exact_mut(PER_FACE).zip(&face_counts) {
        for ((head, &count), &n) in heads.iter().zip(&counts).zip(taught) {
            if count > 0 && n == 0 {
                return Err(TrainError::Config(
                    "some training faces have no teacher for a head: every teacher of it is one \
                     fold of a cross-fitted set that learned them; give all folds of the set"
                        .into(),
                ));
            }
            for v in &mut face[head.clone()] {
                *v /= f32::from(n.max(1));
            }
        }
    }
    Ok(Some(Taught {
        values: sum,
        heads: counts.map(|n| n > 0),
    }))
}

/// What the teachers say of the training faces.
pub(super) struct Taught {
    /// `PER_FACE` values per face, in the items' order.
    pub values: Vec<f32>,
    /// Which heads (age, gender, race) some teacher was trained for.
    pub heads: [bool; 3],
}

/// The teachers' targets are kept in the run's folder, so a resumed run reads them back instead
/// of running every teacher over the training faces again (minutes each on 2 cores).
pub(super) const TARGETS_FILE: &str = "teacher-targets.bin";
const TARGETS_MAGIC: &[u8; 8] = b"FFTEACH1";
/// Part of the key: bump it when what [`teacher_targets`] computes for the same inputs changes
/// (the view, mirror averaging, the readout), so saved targets are computed again. 2: cross-fitted
/// teachers speak only for the faces they held out (an older build let them speak for all), and
/// the key holds each face's image hash, which decides that.
const TARGETS_VERSION: u32 = 2;
/// Magic, key, hash of the values, the three heads' flags.
const TARGETS_HEADER: usize = 8 + 8 + 8 + 3;

/// What the targets depend on: the computation's version, the teachers' contents, the run's crop
/// geometry and every training crop and its image, in order. Another key means the saved targets
/// belong to other inputs: they are computed again.
fn targets_key(teacher_hashes: &[u64], items: &[Item], input_px: u32, margin: f32) -> u64 {
    let mut bytes = Vec::with_capacity(8 * (teacher_hashes.len() + items.len() + 4));
    bytes.extend_from_slice(&TARGETS_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(teacher_hashes.len() as u64).to_le_bytes());
    for hash in teacher_hashes {
        bytes.extend_from_slice(&hash.to_le_bytes());
    }
    bytes.extend_from_slice(&input_px.to_le_bytes());
    bytes.extend_from_slice(&margin.to_bits().to_le_bytes());
    bytes.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in items {
        bytes.extend_from_slice(&content_hash(&item.crop).to_le_bytes());
        bytes.extend_from_slice(&item.image_hash.to_le_bytes());
    }
    content_hash(&bytes)
}

/// Why saved targets were not used.
#[derive(Debug, PartialEq, Eq)]
enum Unusable {
    Absent,
    /// Saved for other teachers, crops or geometry.
    OtherInputs,
    Damaged,
}

/// [`teacher_targets`], read from `dir` when a run saved them for the same inputs, else computed
/// and saved there (a failed save only costs the next resume the time to compute them).
pub(super) fn saved_or_computed_targets(
    dir: &Path,
    teachers: &[PathBuf],
    teacher_hashes: &[u64],
    items: &[Item],
    input_px: u32,
    margin: f32,
    stop: &AtomicBool,
) -> Result<Option<Taught>, TrainError> {
    let key = targets_key(teacher_hashes, items, input_px, margin);
    let path = dir.join(TARGETS_FILE);
    match read_targets(&path, key, items.len()) {
        Ok(taught) => {
            say(&format!(
                "teacher targets read from {} (saved by an earlier start of this run)",
                path.display()
            ));
            return Ok(Some(taught));
        }
        Err(Unusable::Absent) => {}
        Err(Unusable::OtherInputs) => say(&format!(
            "the teacher targets in {} were computed for other training crops (detector settings \
             or data changed since they were saved): computing them again",
            path.display()
        )),
        Err(Unusable::Damaged) => say(&format!(
            "the teacher targets in {} are damaged: computing them again",
            path.display()
        )),
    }
    let Some(taught) = teacher_targets(teachers, teacher_hashes, items, input_px, margin, stop)?
    else {
        return Ok(None);
    };
    if let Err(e) = write_targets(&path, key, &taught) {
        say(&format!(
            "warning: could not save the teacher targets to {} ({e}): a resumed run computes them again",
            path.display()
        ));
    }
    Ok(Some(taught))
}

/// The saved targets for `key` and `faces` faces.
fn read_targets(path: &Path, key: u64, faces: usize) -> Result<Taught, Unusable> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unusable::Absent),
        Err(_) => return Err(Unusable::Damaged),
    };
    if bytes.len() < TARGETS_HEADER || &bytes[..8] != TARGETS_MAGIC {
        return Err(Unusable::Damaged);
    }
    if bytes[8..16] != key.to_le_bytes() {
        return Err(Unusable::OtherInputs);
    }
    let payload = &bytes[TARGETS_HEADER..];
    let flags = &bytes[24..TARGETS_HEADER];
    if payload.len() != 4 * faces * PER_FACE
        || bytes[16..24] != content_hash(payload).to_le_bytes()
        || flags.iter().any(|&f| f > 1)
    {
        return Err(Unusable::Damaged);
    }
    let values = payload
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Taught {
        values,
        heads: [flags[0] == 1, flags[1] == 1, flags[2] == 1],
    })
}

/// Writes the targets under a temporary name first, so a crash leaves no half file behind.
fn write_targets(path: &Path, key: u64, taught: &Taught) -> std::io::Result<()> {
    let payload: Vec<u8> = taught.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut bytes = Vec::with_capacity(TARGETS_HEADER + payload.len());
    bytes.extend_from_slice(TARGETS_MAGIC);
    bytes.extend_from_slice(&key.to_le_bytes());
    bytes.extend_from_slice(&content_hash(&payload).to_le_bytes());
    bytes.extend(taught.heads.map(u8::from));
    bytes.extend_from_slice(&payload);
    let partial = path.with_extension("bin.tmp");
    let mut file = std::fs::File::create(&partial)?;
    std::io::Write::write_all(&mut file, &bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
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
    fn a_teacher_with_a_wider_margin_sees_the_wider_window_of_the_cached_crop() {
        // A cached crop for an 80 px student whose red channel is x, green y.
        let cache = super::super::data::cache_px(80) as usize;
        let mut cached = vec![0u8; cache * cache * 3];
        for (i, px) in cached.chunks_exact_mut(3).enumerate() {
            px[0] = (i % cache) as u8;
            px[1] = (i / cache) as u8;
        }
        // Same margin and size: exactly the student's crop.
        assert_eq!(teacher_view(&cached, 80.0, 80), augment::centre(&cached));
        // Student margin 0.15, teacher 0.25 at 64 px: the window is 80 · 1.5 / 1.3 ≈ 92.3 px wide,
        // centred on the cache's centre, so teacher pixel u reads cache (u − 32) · w / 64 + 52.
        let window = 80.0 * 1.5 / 1.3;
        let view = teacher_view(&cached, window, 64);
        let at = |u: usize| (u as f32 - 32.0) * window / 64.0 + cache as f32 / 2.0;
        for (x, y) in [(0usize, 63usize), (10, 40), (32, 32), (63, 0)] {
            let px = &view[(y * 64 + x) * 3..];
            let (got_x, got_y) = (f32::from(px[0]), f32::from(px[1]));
            assert!((got_x - at(x)).abs() <= 0.5, "x {x}: {got_x} vs {}", at(x));
            assert!((got_y - at(y)).abs() <= 0.5, "y {y}: {got_y} vs {}", at(y));
        }
        // Same margin, other size: the student's crop resampled, as before margins could differ.
        assert_eq!(
            teacher_view(&cached, 80.0, 64),
            augment::resize_bilinear(&augment::centre(&cached), 80, 64)
        );
    }

    #[test]
    fn teachers_stop_when_asked_and_otherwise_read_every_face() {
        let teacher =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(crate::attributes::DEFAULT_MODEL);
        let cache = super::super::data::cache_px(80) as usize;
        let items: Vec<Item> = (0..70u8)
            .map(|i| Item {
                crop: vec![i; cache * cache * 3],
                truth: Default::default(),
                image_hash: u64::from(i),
            })
            .collect();
        let stop = AtomicBool::new(true);
        let hashes = teacher_hashes(std::slice::from_ref(&teacher)).unwrap();
        let stopped = teacher_targets(
            std::slice::from_ref(&teacher),
            &hashes,
            &items,
            80,
            0.25,
            &stop,
        );
        assert!(matches!(stopped, Ok(None)), "{:?}", stopped.err());
        stop.store(false, Ordering::Relaxed);
        let Taught {
            values: targets,
            heads,
        } = teacher_targets(
            std::slice::from_ref(&teacher),
            &hashes,
            &items,
            80,
            0.25,
            &stop,
        )
        .unwrap()
        .unwrap();
        assert_eq!(targets.len(), items.len() * PER_FACE);
        assert_eq!(heads, [true; 3]);
        // A teacher file whose contents are not the ones the run recorded is refused.
        let changed = teacher_targets(&[teacher], &[hashes[0] ^ 1], &items, 80, 0.25, &stop);
        let message = changed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("changed since this run started"),
            "{message}"
        );
        // Every face's gender is a distribution (the last face is in the second batch).
        let gender = |i: usize| &targets[i * PER_FACE + FINE_AGE_BINS..][..GENDER_LABELS.len()];
        for i in [0, 69] {
            assert!((gender(i).iter().sum::<f32>() - 1.0).abs() < 1e-4, "{i}");
        }
    }

    #[test]
    fn a_cross_fitted_teacher_teaches_only_the_faces_it_held_out() {
        use super::super::net::{FaceAttrNet, NetShape};
        use crate::model::dataset::split_unit;
        use crate::model::spec::{ModelSpec, Task};
        use burn::tensor::Device;
        let dir = tempfile::tempdir().unwrap();
        let shipped =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(crate::attributes::DEFAULT_MODEL);
        // One network (not the shipped one) under three splits: plain, and two folds that
        // together hold out every face.
        let net = FaceAttrNet::new(&Device::flex(), &NetShape::tiny());
        let write = |name: &str, also_held_out: Option<[f64; 2]>| {
            let mut spec = ModelSpec::with_input_margin(&Task::ALL, 80, 0.25);
            spec.training.split = Some(TrainingSplit {
                seed: 42,
                val_fraction: 0.0,
                also_held_out,
            });
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                super::super::export::export_onnx(&net, &spec).unwrap(),
            )
            .unwrap();
            path
        };
        let plain = write("plain.onnx", None);
        let low = write("low.onnx", Some([0.0, 0.5]));
        let high = write("high.onnx", Some([0.5, 1.0]));
        let cache = super::super::data::cache_px(80) as usize;
        let items: Vec<Item> = (0..40u8)
            .map(|i| Item {
                crop: vec![i.wrapping_mul(6); cache * cache * 3],
                truth: Default::default(),
                image_hash: content_hash(&[i]),
            })
            .collect();
        let low_faces: Vec<bool> = items
            .iter()
            .map(|item| split_unit(item.image_hash, 42) < 0.5)
            .collect();
        assert!(low_faces.iter().any(|&l| l) && low_faces.iter().any(|&l| !l));
        let stop = AtomicBool::new(false);
        let targets = |teachers: &[&PathBuf]| {
            let teachers: Vec<PathBuf> = teachers.iter().map(|p| (*p).clone()).collect();
            let hashes = teacher_hashes(&teachers).unwrap();
            teacher_targets(&teachers, &hashes, &items, 80, 0.15, &stop)
                .map(|taught| taught.unwrap().values)
        };
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        let face = |values: &[f32], i: usize| values[i * PER_FACE..(i + 1) * PER_FACE].to_vec();
        let alone = targets(&[&shipped]).unwrap();
        let with_plain = targets(&[&shipped, &plain]).unwrap();
        assert!(!close(&alone, &with_plain), "the two networks must differ");
        // Both folds: every face hears the shipped model and the one fold that held it out,
        // which is the plain network on that face.
        assert!(close(
            &targets(&[&shipped, &low, &high]).unwrap(),
            &with_plain
        ));
        // One fold: it speaks only for the faces it held out.
        let with_low = targets(&[&shipped, &low]).unwrap();
        for (i, &is_low) in low_faces.iter().enumerate() {
            let expected = if is_low { &with_plain } else { &alone };
            assert!(close(&face(&with_low, i), &face(expected, i)), "face {i}");
        }
        // A head no teacher speaks for on some face is refused, not averaged over nobody.
        let message = targets(&[&low])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("give all folds"), "{message}");
    }

    #[test]
    fn saved_targets_are_read_back_only_for_the_same_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TARGETS_FILE);
        let faces = |order: [u8; 3]| -> Vec<Item> {
            order
                .map(|i| Item {
                    crop: vec![i; 12],
                    truth: Default::default(),
                    image_hash: u64::from(i),
                })
                .into()
        };
        let items = faces([0, 1, 2]);
        let taught = Taught {
            values: (0..3 * PER_FACE).map(|i| i as f32 / 7.0).collect(),
            heads: [true, false, true],
        };
        let key = targets_key(&[1, 2], &items, 80, 0.15);
        assert_eq!(read_targets(&path, key, 3).err(), Some(Unusable::Absent));
        write_targets(&path, key, &taught).unwrap();
        let back = read_targets(&path, key, items.len()).unwrap();
        assert_eq!((back.values, back.heads), (taught.values, taught.heads));
        // Another teacher, margin, size, crop or order of crops is another key.
        for other in [
            targets_key(&[1, 3], &items, 80, 0.15),
            targets_key(&[1, 2], &items, 80, 0.25),
            targets_key(&[1, 2], &items, 72, 0.15),
            targets_key(&[1, 2], &faces([0, 1, 9]), 80, 0.15),
            targets_key(&[1, 2], &faces([0, 2, 1]), 80, 0.15),
        ] {
            assert_ne!(other, key);
            assert_eq!(
                read_targets(&path, other, 3).err(),
                Some(Unusable::OtherInputs)
            );
        }
        // The same crop from another image (it may lie in another teacher's fold): another key.
        let mut moved = faces([0, 1, 2]);
        moved[1].image_hash ^= 1;
        assert_ne!(targets_key(&[1, 2], &moved, 80, 0.15), key);
        // A wrong count, a cut file and a changed value are damage.
        assert_eq!(read_targets(&path, key, 2).err(), Some(Unusable::Damaged));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(read_targets(&path, key, 3).err(), Some(Unusable::Damaged));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(read_targets(&path, key, 3).err(), Some(Unusable::Damaged));
        // Saved targets are used without loading a teacher (none exists at this path); other
        // inputs send the run to the teachers.
        std::fs::write(&path, &bytes).unwrap();
        let stop = AtomicBool::new(false);
        let missing = ["a", "b"].map(|name| PathBuf::from(format!("/nonexistent/{name}.onnx")));
        let read =
            saved_or_computed_targets(dir.path(), &missing, &[1, 2], &items, 80, 0.15, &stop);
        assert!(matches!(read, Ok(Some(_))));
        let other =
            saved_or_computed_targets(dir.path(), &missing, &[1, 2], &items, 72, 0.15, &stop);
        let message = other.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("/nonexistent/a.onnx"), "{message}");
    }

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
