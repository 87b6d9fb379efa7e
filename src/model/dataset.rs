//! Labelled face folders (UTKFace naming): read robustly (malformed names reported and skipped,
//! content duplicates removed, copies with conflicting labels dropped) and split deterministically.
//! Shared by the trainer and `faceflow eval`, so evaluation can use exactly the held-out part.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use super::spec::Task;
use super::{UtkLabels, parse_utkface_name};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct DatasetError {
    pub path: PathBuf,
    pub reason: String,
}

/// One labelled folder and the labels it provides.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub dir: PathBuf,
    pub tasks: Vec<Task>,
}

impl Source {
    /// Parses `DIR` (all labels) or `DIR@age,gender`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (dir, tasks) = match text.rsplit_once('@') {
            Some((dir, tasks)) => (dir, Task::parse_list(tasks).map_err(|e| e.to_string())?),
            None => (text, Task::ALL.to_vec()),
        };
        if dir.is_empty() {
            return Err("empty folder name".into());
        }
        Ok(Self {
            dir: PathBuf::from(dir),
            tasks,
        })
    }
}

/// One image with its labels; `has` says which labels count (multi-source training masks the rest).
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    pub content_hash: u64,
    pub labels: UtkLabels,
    pub has_age: bool,
    pub has_gender: bool,
    pub has_race: bool,
}

impl Sample {
    pub fn set_tasks(&mut self, tasks: &[Task]) {
        self.has_age = tasks.contains(&Task::Age);
        self.has_gender = tasks.contains(&Task::Gender);
        self.has_race = tasks.contains(&Task::Race);
    }
}

#[derive(Debug, Default)]
pub struct ScanReport {
    pub samples: Vec<Sample>,
    /// File name and what is wrong with it.
    pub malformed: Vec<(String, String)>,
    /// Files dropped as byte-identical copies of a kept one.
    pub duplicates: usize,
    /// Files dropped because identical copies carried different labels.
    pub conflicting: usize,
    pub unreadable: Vec<(String, String)>,
}

/// XXH64 with a fixed seed: the hash (and so the split) is the same on every machine and run.
pub fn content_hash(bytes: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0x6661_6365_666c_6f77, bytes)
}

/// SplitMix64's finaliser: a well-mixed, stable function of one word.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// Reads every source folder. Images are kept once per distinct content; copies with conflicting
/// labels are all dropped (which label is right is unknown).
pub fn scan(sources: &[Source]) -> Result<ScanReport, DatasetError> {
    let mut report = ScanReport::default();
    let mut by_hash: BTreeMap<u64, Vec<Sample>> = BTreeMap::new();
    for source in sources {
        let entries = fs::read_dir(&source.dir).map_err(|e| DatasetError {
            path: source.dir.clone(),
            reason: e.to_string(),
        })?;
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(DatasetError {
                path: source.dir.clone(),
                reason: "no images (.jpg, .png, .bmp, .webp) in this folder".into(),
            });
        }
        for path in names {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let labels = match parse_utkface_name(&name) {
                Ok(labels) => labels,
                Err(e) => {
                    report.malformed.push((name, e.reason));
                    continue;
                }
            };
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    report.unreadable.push((name, e.to_string()));
                    continue;
                }
            };
            let mut sample = Sample {
                path,
                content_hash: content_hash(&bytes),
                labels,
                has_age: false,
                has_gender: false,
                has_race: false,
            };
            sample.set_tasks(&source.tasks);
            by_hash.entry(sample.content_hash).or_default().push(sample);
        }
    }
    for (_, mut copies) in by_hash {
        let first = copies.remove(0);
        if copies.iter().any(|c| c.labels != first.labels) {
            report.conflicting += copies.len() + 1;
            continue;
        }
        report.duplicates += copies.len();
        report.samples.push(first);
    }
    Ok(report)
}

/// Deterministic split by content: a sample goes to validation when its seeded hash falls below
/// `val_fraction`. Adding or removing other files never moves a sample across.
pub fn is_validation(sample: &Sample, seed: u64, val_fraction: f64) -> bool {
    split_unit(sample.content_hash, seed) < val_fraction
}

/// Where an image of `content_hash` falls in [0, 1) under `seed`: the split's validation part is
/// the images below its fraction (and a cross-fitted teacher's fold a slice above it).
pub fn split_unit(content_hash: u64, seed: u64) -> f64 {
    (split_key(content_hash, seed) >> 11) as f64 / (1u64 << 53) as f64
}

/// The seeded, well-mixed word behind [`is_validation`]; also orders deterministic subsets.
pub fn is_validation_key(sample: &Sample, seed: u64) -> u64 {
    split_key(sample.content_hash, seed)
}

fn split_key(content_hash: u64, seed: u64) -> u64 {
    mix64(content_hash ^ mix64(seed.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A labelled sample whose content hash is `h` (the split reads nothing else).
    fn sample(h: u64) -> Sample {
        Sample {
            path: PathBuf::new(),
            content_hash: h,
            labels: UtkLabels {
                age_years: 1,
                gender: 0,
                race: 0,
            },
            has_age: true,
            has_gender: true,
            has_race: true,
        }
    }

    #[test]
    fn sources_parse_with_optional_tasks() {
        let s = Source::parse("data/utk@race").unwrap();
        assert_eq!(s.dir, PathBuf::from("data/utk"));
        assert_eq!(s.tasks, vec![Task::Race]);
        assert_eq!(Source::parse("x").unwrap().tasks, Task::ALL.to_vec());
        assert!(Source::parse("x@height").is_err());
        assert!(Source::parse("@age").is_err());
    }

    #[test]
    fn split_is_deterministic_and_near_the_fraction() {
        let n = 10_000;
        let val = (0..n)
            .filter(|&h| is_validation(&sample(content_hash(&(h as u64).to_le_bytes())), 7, 0.15))
            .count();
        assert!((1300..1700).contains(&val), "{val}");
        let a: Vec<bool> = (0..100)
            .map(|h| is_validation(&sample(h), 7, 0.15))
            .collect();
        let b: Vec<bool> = (0..100)
            .map(|h| is_validation(&sample(h), 7, 0.15))
            .collect();
        let c: Vec<bool> = (0..100)
            .map(|h| is_validation(&sample(h), 8, 0.15))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    /// `TrainingSplit::trained_on_validation_of` against the split itself: it says "no" exactly
    /// when no image of the asked-for validation part was a training image of the model's split.
    #[test]
    fn overlap_of_splits_matches_the_images() {
        use crate::model::spec::TrainingSplit;
        let samples: Vec<Sample> = (0..4000u64)
            .map(|h| sample(content_hash(&h.to_le_bytes())))
            .collect();
        let splits = [(42, 0.0), (42, 0.1), (42, 0.15), (42, 0.3), (7, 0.15)];
        // Cross-fitted folds: a slice touching the validation part extends it, others do not.
        let slices = [None, Some([0.15, 0.32]), Some([0.5, 0.7]), Some([0.0, 0.2])];
        for (model_seed, model_fraction) in splits {
            for also_held_out in slices {
                let model = TrainingSplit {
                    seed: model_seed,
                    val_fraction: model_fraction,
                    also_held_out,
                };
                for (seed, fraction) in splits {
                    let overlap = samples.iter().any(|s| {
                        is_validation(s, seed, fraction) && !model.held_out(s.content_hash)
                    });
                    assert_eq!(
                        model.trained_on_validation_of(seed, fraction),
                        overlap,
                        "model ({model_seed}, {model_fraction}, {also_held_out:?}) asked ({seed}, {fraction})"
                    );
                }
            }
        }
    }
}
