//! `faceflow eval`: an exported attribute model run end to end (decode → detect → align →
//! attributes, largest face per image) over a labelled folder, scored against the file-name labels.
//! An image without a face counts as wrong. Writes JSON, Markdown and SVG charts.

pub mod calibrate;
pub mod plot;
pub mod yardstick;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::attributes::{AttributeModel, FacesInImage};
use crate::detect::{Mtcnn, largest_face};
use crate::model::dataset::{self, DatasetError, Sample, Source};
use crate::model::readout::{Correct, Prediction, Tally, Truth, fmt_metric};
use crate::model::spec::{ModelSpec, Task, TrainingSplit};
use crate::model::{AgeGrouping, GENDER_LABELS, RACE_LABELS};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("no images to evaluate ({0})")]
    Empty(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path}: {message}")]
    Failed { path: String, message: String },
}

/// Which part of the labelled data to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    All,
    /// The trainer's validation part for the same seed and fraction.
    Validation,
    Training,
}

impl Split {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "validation" | "val" => Ok(Self::Validation),
            "training" | "train" => Ok(Self::Training),
            other => Err(format!("'{other}': expected all, validation or training")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub sources: Vec<Source>,
    pub split: Split,
    pub seed: u64,
    pub val_fraction: f64,
    pub max_images: Option<usize>,
    /// Keep each face's probabilities (for `--calibrate`; 87 numbers an image).
    pub keep_probs: bool,
    /// Keep faceres's descriptor of each face (for `--descriptors`; 1,024 numbers an image).
    pub keep_descriptors: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub spec: ModelSpec,
    /// Each face was also read mirrored and the two averaged.
    pub flip_average: bool,
    /// How age in years is read from the distribution (reports before this field: "mean").
    pub age_years_readout: &'static str,
    pub split: Split,
    pub seed: u64,
    pub val_fraction: f64,
    /// Set when the model's own split (recorded at export) trained on some of this split's images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_overlap: Option<String>,
    pub tally: Tally,
    pub detect_ms_per_image: f64,
    pub attributes_ms_per_face: f64,
    pub seconds: f64,
    /// Every image counted as missed: no face found, or (also listed in `unreadable`) not a
    /// readable image.
    pub no_face: Vec<String>,
    pub unreadable: Vec<String>,
    /// Stopped early (Ctrl-C): the numbers cover only the images done.
    pub interrupted: bool,
    /// One record per image, in the order scored (written as predictions.jsonl, not into
    /// report.json): lets two models be compared image by image.
    #[serde(skip)]
    pub images: Vec<ImageResult>,
}

/// One scored image: its labels, what the model said and what was right.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub file: String,
    pub truth: TruthLabels,
    /// `None` when no face was found (every labelled task then counts wrong).
    pub predicted: Option<PredictedLabels>,
    pub correct: Correct,
    /// The probabilities as read (uncalibrated), with `--calibrate`: what it fits on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probs: Option<Probs>,
    /// faceres's descriptor of the face, with `--descriptors`.
    #[serde(skip)]
    pub descriptor: Option<Vec<f32>>,
}

/// One face's probabilities per head as read (uncalibrated), the fine age bins (1 … 80+ years)
/// unrounded; `gender` and `race` as reported (with faceres, the means of the two), `gender_alone`
/// and `race_alone` the attribute model's.
#[derive(Debug, Clone, Serialize)]
pub struct Probs {
    pub age_fine: Vec<f32>,
    pub gender: Vec<f32>,
    pub gender_alone: Vec<f32>,
    pub race: Vec<f32>,
    pub race_alone: Vec<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TruthLabels {
    pub age_years: Option<u32>,
    pub gender: Option<&'static str>,
    pub race: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PredictedLabels {
    pub age_years: f32,
    pub age3: String,
    pub age5: String,
    pub age10: String,
    /// Absent when the model was not trained for the task (its head's output is noise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race: Option<String>,
}

impl PredictedLabels {
    fn of(p: &Prediction, tasks: &[Task]) -> Self {
        // The same readout as analyze's JSON.
        let five = p.age_json(AgeGrouping::Five);
        Self {
            age_years: five.years,
            age3: p.age_json(AgeGrouping::Three).group,
            age5: five.group,
            age10: p.age_json(AgeGrouping::Ten).group,
            gender: tasks.contains(&Task::Gender).then(|| p.gender_json().label),
            race: tasks.contains(&Task::Race).then(|| p.race_json().label),
        }
    }
}

impl EvalReport {
    pub fn accuracy(&self, grouping: AgeGrouping) -> f64 {
        self.tally.age_accuracy(grouping)
    }
}

/// Why `--split validation` would score images the model learned, if it would: the model records
/// its trainer's seed and validation fraction, and those of the teachers it was distilled from.
/// Models without the record, and the other splits (chosen knowingly, or another folder), get
/// `None`.
pub fn training_overlap(spec: &ModelSpec, opts: &EvalOptions) -> Option<String> {
    if opts.split != Split::Validation {
        return None;
    }
    let reaches = |s: &TrainingSplit| s.trained_on_validation_of(opts.seed, opts.val_fraction);
    let how = |s: &TrainingSplit| {
        if s.val_fraction <= 0.0 && s.also_held_out.is_some() {
            "on every labelled image but one slice (--val-fraction 0, one fold of a cross-fitted set)"
                .to_string()
        } else if s.val_fraction <= 0.0 {
            "on every labelled image (--val-fraction 0)".to_string()
        } else {
            format!(
                "with another split (--seed {} --val-fraction {})",
                s.seed, s.val_fraction
            )
        }
    };
    if let Some(own) = spec.training.split.as_ref().filter(|s| reaches(s)) {
        let what = if own.val_fraction <= 0.0 {
            "these validation numbers are training-set numbers"
        } else {
            "some of these validation images were training images"
        };
        return Some(format!(
            "the model was trained {}: on its own folders {what}",
            how(own)
        ));
    }
    let teacher = spec
        .training
        .teacher_splits
        .iter()
        .flatten()
        .find(|s| reaches(s))?;
    Some(format!(
        "a teacher this model was distilled from was trained {}: on its own folders some of these validation images taught the model through it",
        how(teacher)
    ))
}

/// The samples of the chosen split, in a stable order.
pub fn select(opts: &EvalOptions) -> Result<(Vec<Sample>, dataset::ScanReport), EvalError> {
    let mut report = dataset::scan(&opts.sources)?;
    let mut samples: Vec<Sample> = std::mem::take(&mut report.samples)
        .into_iter()
        .filter(|s| match opts.split {
            Split::All => true,
            Split::Validation => dataset::is_validation(s, opts.seed, opts.val_fraction),
            Split::Training => !dataset::is_validation(s, opts.seed, opts.val_fraction),
        })
        .collect();
    samples.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(n) = opts.max_images {
        // A deterministic sample spread over the whole folder, not the first names.
        samples.sort_by_key(|s| dataset::is_validation_key(s, opts.seed ^ 0x5eed));
        samples.truncate(n);
        samples.sort_by(|a, b| a.path.cmp(&b.path));
    }
    if samples.is_empty() {
        return Err(EvalError::Empty(format!(
            "split {}",
            format!("{:?}", opts.split).to_lowercase()
        )));
    }
    Ok((samples, report))
}

/// Scores `samples`; `progress(done, total)` after each image, which returns false to stop early
/// (Ctrl-C): the report then covers the images done. Unreadable images count as missed (and are
/// named); a detector or model that fails is an error.
pub fn evaluate(
    detector: &mut Mtcnn,
    model: &mut AttributeModel,
    model_name: &str,
    samples: &[Sample],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<EvalReport, EvalError> {
    let started = Instant::now();
    let (mut detect_s, mut attr_s, mut faces) = (0f64, 0f64, 0usize);
    let mut tally = Tally::default();
    let mut no_face = Vec::new();
    let mut unreadable = Vec::new();
    let mut images = Vec::with_capacity(samples.len());
    let mut interrupted = false;
    let spec = model.spec().clone();
    for (i, sample) in samples.iter().enumerate() {
        let truth = Truth {
            age_years: sample.has_age.then_some(sample.labels.age_years),
            gender: sample.has_gender.then_some(sample.labels.gender),
            race: sample.has_race.then_some(sample.labels.race),
        };
        let t0 = Instant::now();
        // The path as given: names can repeat across several sources.
        let file = sample.path.display().to_string();
        let picture = image::ImageReader::open(&sample.path)
            .map_err(|e| e.to_string())
            .and_then(|r| r.with_guessed_format().map_err(|e| e.to_string()))
            .and_then(|r| r.decode().map_err(|e| e.to_string()));
        let prediction = match picture {
            Err(reason) => {
                // Counted as missed, like a picture without a face, but said out loud.
                tracing::warn!("{file}: not a readable image ({reason}); counted as no face");
                unreadable.push(file.clone());
                None
            }
            Ok(picture) => {
                let image = picture.to_rgb8();
                let (w, h) = (image.width() as usize, image.height() as usize);
                // A failing detector or model is not "no face": it stops the evaluation.
                let failed = |what: &str, e: &dyn std::fmt::Display| EvalError::Failed {
                    path: file.clone(),
                    message: format!("{what}: {e}"),
                };
                let found = detector
                    .detect_still(image.as_raw(), w, h)
                    .map_err(|e| failed("detection failed", &e))?;
                match largest_face(&found) {
                    None => None,
                    Some(face) => {
                        detect_s += t0.elapsed().as_secs_f64();
                        let t1 = Instant::now();
                        // Through the one place that reads faces, the model and any ensemble
                        // member apart (calibration fits each gender reading).
                        let read = model
                            .read_faces(&[FacesInImage {
                                rgb: image.as_raw(),
                                width: w,
                                height: h,
                                faces: vec![face],
                            }])
                            .map_err(|e| failed("attribute model failed", &e))?
                            .into_iter()
                            .next()
                            .and_then(|faces| faces.into_iter().next().flatten());
                        attr_s += t1.elapsed().as_secs_f64();
                        faces += usize::from(read.is_some());
                        read
                    }
                }
            }
        };
        let descriptor = prediction
            .as_ref()
            .filter(|_| opts.keep_descriptors)
            .and_then(|r| r.second.as_ref())
            .map(|s| s.descriptor.clone());
        let (prediction, alone) = match prediction {
            Some(r) => (Some(r.combined()), Some(r.alone)),
            None => (None, None),
        };
        if prediction.is_none() {
            no_face.push(file.clone());
        }
        // Only the tasks the model was trained on are scored.
        let correct = tally.add(&truth.only(&spec.tasks), prediction.as_ref());
        images.push(ImageResult {
            file,
            truth: TruthLabels {
                age_years: truth.age_years,
                gender: truth.gender.and_then(|g| GENDER_LABELS.get(g).copied()),
                race: truth.race.and_then(|r| RACE_LABELS.get(r).copied()),
            },
            predicted: prediction
                .as_ref()
                .map(|p| PredictedLabels::of(p, &spec.tasks)),
            correct,
            probs: prediction
                .zip(alone)
                .filter(|_| opts.keep_probs)
                .map(|(p, alone)| Probs {
                    age_fine: p.age_fine,
                    gender: p.gender,
                    gender_alone: alone.gender,
                    race: p.race,
                    race_alone: alone.race,
                }),
            descriptor,
        });
        if !progress(i + 1, samples.len()) {
            interrupted = true;
            break;
        }
    }
    Ok(EvalReport {
        model: model_name.to_string(),
        training_overlap: training_overlap(&spec, opts),
        spec,
        flip_average: model.flip_average(),
        age_years_readout: "median",
        split: opts.split,
        seed: opts.seed,
        val_fraction: opts.val_fraction,
        tally,
        detect_ms_per_image: 1000.0 * detect_s / faces.max(1) as f64,
        attributes_ms_per_face: 1000.0 * attr_s / faces.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
        no_face,
        unreadable,
        interrupted,
        images,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    std::fs::write(path, bytes).map_err(|e| EvalError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The Markdown report: headline numbers, per-class accuracy and confusion tables.
pub fn markdown(report: &EvalReport) -> String {
    let t = &report.tally;
    let mut md = String::new();
    let _ = writeln!(md, "# faceflow eval: {}\n", report.model);
    let _ = writeln!(
        md,
        "Split: {:?} (seed {}, validation fraction {}), {} images, {} without a face (counted wrong). \
         Age metrics on ages 1-80 ({} images). Trained tasks: {}. Mirror averaging: {}.\n",
        report.split,
        report.seed,
        report.val_fraction,
        t.images,
        t.faces_missed,
        t.age.first().map(|(_, c)| c.total()).unwrap_or(0),
        report
            .spec
            .tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join("+"),
        if report.flip_average { "on" } else { "off" }
    );
    if let Some(overlap) = &report.training_overlap {
        let _ = writeln!(md, "**Warning**: {overlap}.\n");
    }
    if report.interrupted {
        let _ = writeln!(
            md,
            "**Interrupted**: these numbers cover only the first {} images.\n",
            t.images
        );
    }
    let _ = writeln!(md, "| metric | value |\n|---|---|");
    for g in AgeGrouping::ALL {
        let _ = writeln!(
            md,
            "| age, {} groups | {} |",
            g.len(),
            fmt_metric(t.age_accuracy(g), 3)
        );
    }
    let _ = writeln!(md, "| age MAE (years) | {} |", fmt_metric(t.age_mae(), 2));
    let _ = writeln!(md, "| gender | {} |", fmt_metric(t.gender.accuracy(), 3));
    let _ = writeln!(md, "| race | {} |", fmt_metric(t.race.accuracy(), 3));
    let _ = writeln!(
        md,
        "| detect + align, ms per image | {:.1} |\n| attributes, ms per face (batch 1) | {:.2} |\n",
        report.detect_ms_per_image, report.attributes_ms_per_face
    );
    let mut confusions: Vec<(String, &crate::model::readout::Confusion)> = t
        .age
        .iter()
        .map(|(n, c)| (format!("Age, {n} groups"), c))
        .collect();
    // An untrained head is not scored: no table for it.
    if report.spec.has(Task::Gender) {
        confusions.push(("Gender".into(), &t.gender));
    }
    if report.spec.has(Task::Race) {
        confusions.push(("Race".into(), &t.race));
    }
    for (title, c) in confusions {
        let _ = writeln!(md, "## {title}\n");
        let _ = writeln!(
            md,
            "Rows: true class; columns: predicted; last column: no face found.\n"
        );
        let _ = writeln!(
            md,
            "| true \\ predicted | {} | no face | accuracy |",
            c.labels.join(" | ")
        );
        let _ = writeln!(md, "|---|{}---|---|", "---|".repeat(c.labels.len()));
        let per_class = c.per_class_accuracy();
        for (i, label) in c.labels.iter().enumerate() {
            let cells: Vec<String> = c.counts[i].iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} |",
                cells.join(" | "),
                c.missed[i],
                fmt_metric(per_class[i], 3)
            );
        }
        let _ = writeln!(md);
    }
    md.push_str(&by_age_markdown(&report.images));
    md
}

/// Bands of true age for [`by_age_markdown`]: narrow at the start, where gender is hardest to see.
const AGE_BANDS_YEARS: [(u32, u32); 6] = [
    (0, 3),
    (4, 11),
    (12, 19),
    (20, 39),
    (40, 59),
    (60, u32::MAX),
];

/// Gender and race accuracy per band of true age (no face = wrong): shows where the errors sit,
/// e.g. that infants' gender, hard to see in a face, weighs on the total.
pub fn by_age_markdown(images: &[ImageResult]) -> String {
    // Per band: images, gender (right, labelled), race (right, labelled).
    let mut bands = [(0u64, (0u64, 0u64), (0u64, 0u64)); AGE_BANDS_YEARS.len()];
    for image in images {
        let Some(age) = image.truth.age_years else {
            continue;
        };
        let Some(band) = AGE_BANDS_YEARS
            .iter()
            .position(|&(lo, hi)| (lo..=hi).contains(&age))
        else {
            continue;
        };
        let (count, gender, race) = &mut bands[band];
        *count += 1;
        for (tally, right) in [(gender, image.correct.gender), (race, image.correct.race)] {
            if let Some(right) = right {
                tally.0 += u64::from(right);
                tally.1 += 1;
            }
        }
    }
    // Nothing to show without ages, or for a model trained on neither gender nor race.
    if bands
        .iter()
        .all(|&(_, gender, race)| gender.1 == 0 && race.1 == 0)
    {
        return String::new();
    }
    let share = |(right, total): (u64, u64)| {
        if total == 0 {
            "—".to_string()
        } else {
            format!(
                "{:.3} ({} wrong)",
                right as f64 / total as f64,
                total - right
            )
        }
    };
    let mut md = String::from(
        "## Gender and race by true age\n\nImages with an age label; no face counts wrong.\n\n\
         | true age (years) | images | gender | race |\n|---|---|---|---|\n",
    );
    for (&(lo, hi), &(count, gender, race)) in AGE_BANDS_YEARS.iter().zip(&bands) {
        let band = if hi == u32::MAX {
            format!("{lo}+")
        } else {
            format!("{lo}-{hi}")
        };
        let _ = writeln!(
            md,
            "| {band} | {count} | {} | {} |",
            share(gender),
            share(race)
        );
    }
    md.push('\n');
    md
}

/// Writes report.json, predictions.jsonl (one line per image), report.md and the SVG charts into
/// `dir`; returns the files written.
pub fn write_report(dir: &Path, report: &EvalReport) -> Result<Vec<PathBuf>, EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::Write {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut written = Vec::new();
    let json = serde_json::to_vec_pretty(report).map_err(|e| EvalError::Write {
        path: dir.join("report.json"),
        reason: e.to_string(),
    })?;
    let mut lines = Vec::new();
    for image in &report.images {
        serde_json::to_writer(&mut lines, image).map_err(|e| EvalError::Write {
            path: dir.join("predictions.jsonl"),
            reason: e.to_string(),
        })?;
        lines.push(b'\n');
    }
    for (name, bytes) in [
        ("report.json", json),
        ("predictions.jsonl", lines),
        ("report.md", markdown(report).into_bytes()),
    ] {
        write(&dir.join(name), &bytes)?;
        written.push(dir.join(name));
    }
    let chart_error = |path: &Path| {
        let path = path.to_path_buf();
        move |reason: String| EvalError::Write {
            path: path.clone(),
            reason,
        }
    };
    let t = &report.tally;
    let mut charts: Vec<(String, String, &crate::model::readout::Confusion)> = t
        .age
        .iter()
        .map(|(n, c)| {
            (
                format!("confusion_age{n}.svg"),
                format!("Age, {n} groups: accuracy {}", fmt_metric(c.accuracy(), 3)),
                c,
            )
        })
        .collect();
    charts.push((
        "confusion_gender.svg".into(),
        format!("Gender: accuracy {}", fmt_metric(t.gender.accuracy(), 3)),
        &t.gender,
    ));
    charts.push((
        "confusion_race.svg".into(),
        format!("Race: accuracy {}", fmt_metric(t.race.accuracy(), 3)),
        &t.race,
    ));
    for (name, title, c) in charts {
        let path = dir.join(&name);
        plot::confusion_svg(&path, &title, &c.labels, &c.counts).map_err(chart_error(&path))?;
        written.push(path);
    }
    for (n, c) in &t.age {
        let path = dir.join(format!("accuracy_per_age_group{n}.svg"));
        plot::bars_svg(
            &path,
            &format!("Accuracy per age group ({n} groups)"),
            &c.labels,
            &c.per_class_accuracy(),
        )
        .map_err(chart_error(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes each scored face's descriptor with its image's labels to `path`, one JSON object a
/// line (`file`, `age_years`, `gender`, `race`, `descriptor`); returns how many.
pub fn write_descriptors(path: &Path, report: &EvalReport) -> std::io::Result<usize> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut kept = 0;
    for image in &report.images {
        let Some(descriptor) = &image.descriptor else {
            continue;
        };
        let line = serde_json::json!({
            "file": image.file,
            "age_years": image.truth.age_years,
            "gender": image.truth.gender,
            "race": image.truth.race,
            "descriptor": descriptor,
        });
        writeln!(out, "{line}")?;
        kept += 1;
    }
    out.flush()?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(age_years: Option<u32>, gender: Option<bool>, race: Option<bool>) -> ImageResult {
        ImageResult {
            file: "x.jpg".into(),
            truth: TruthLabels {
                age_years,
                gender: None,
                race: None,
            },
            predicted: None,
            correct: Correct {
                gender,
                race,
                ..Correct::default()
            },
            probs: None,
            descriptor: None,
        }
    }

    #[test]
    fn validation_overlapping_the_models_training_images_is_named() {
        let opts = |split, seed, val_fraction| EvalOptions {
            sources: Vec::new(),
            split,
            seed,
            val_fraction,
            max_images: None,
            keep_probs: false,
            keep_descriptors: false,
        };
        let spec = |split| {
            let mut spec = ModelSpec::current(&Task::ALL);
            spec.training.split = split;
            spec
        };
        let trained = |seed, val_fraction| {
            spec(Some(TrainingSplit {
                seed,
                val_fraction,
                also_held_out: None,
            }))
        };
        let validation = opts(Split::Validation, 42, 0.15);
        // Older models carry no split: nothing to say.
        assert_eq!(training_overlap(&spec(None), &validation), None);
        // The same split, or a smaller validation part of the same seed (it lies inside).
        assert_eq!(training_overlap(&trained(42, 0.15), &validation), None);
        assert_eq!(training_overlap(&trained(42, 0.3), &validation), None);
        let all_data = training_overlap(&trained(42, 0.0), &validation).unwrap();
        assert!(all_data.contains("every labelled image"), "{all_data}");
        for other in [trained(7, 0.15), trained(42, 0.1)] {
            let said = training_overlap(&other, &validation).unwrap();
            assert!(said.contains("another split"), "{said}");
        }
        // A teacher that learned the validation faces taught them to the model.
        let mut taught = trained(42, 0.15);
        taught.training.teacher_splits = vec![
            None,
            Some(TrainingSplit {
                seed: 42,
                val_fraction: 0.0,
                also_held_out: None,
            }),
        ];
        let said = training_overlap(&taught, &validation).unwrap();
        assert!(
            said.contains("a teacher") && said.contains("every labelled image"),
            "{said}"
        );
        taught.training.teacher_splits = vec![
            None,
            Some(TrainingSplit {
                seed: 42,
                val_fraction: 0.15,
                also_held_out: None,
            }),
        ];
        assert_eq!(training_overlap(&taught, &validation), None);
        // Other splits are chosen knowingly.
        for split in [Split::All, Split::Training] {
            assert_eq!(
                training_overlap(&trained(42, 0.0), &opts(split, 42, 0.15)),
                None
            );
        }
        // The record round-trips through the model's metadata, and older metadata still reads.
        let with_split = trained(42, 0.0);
        let read: ModelSpec = serde_json::from_str(&with_split.to_json()).unwrap();
        assert_eq!(read, with_split);
        let without = spec(None).to_json();
        assert!(!without.contains("\"split\""), "{without}");
        assert_eq!(
            ModelSpec::from_metadata(Some(&without)).unwrap(),
            spec(None)
        );
        let read = ModelSpec::from_metadata(Some(&taught.to_json())).unwrap();
        assert_eq!(read, taught);
    }

    #[test]
    fn gender_and_race_are_counted_per_band_of_true_age() {
        let images = [
            image(Some(1), Some(false), Some(true)),
            image(Some(3), Some(true), Some(true)),
            image(Some(4), Some(true), None),
            image(Some(45), Some(true), Some(false)),
            image(Some(101), Some(false), Some(true)),
            image(None, Some(false), Some(false)),
        ];
        let md = by_age_markdown(&images);
        let row = |band: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {band} |")))
                .unwrap_or_else(|| panic!("no row {band} in\n{md}"))
                .to_string()
        };
        assert_eq!(
            row("0-3"),
            "| 0-3 | 2 | 0.500 (1 wrong) | 1.000 (0 wrong) |"
        );
        assert_eq!(row("4-11"), "| 4-11 | 1 | 1.000 (0 wrong) | — |");
        assert_eq!(row("12-19"), "| 12-19 | 0 | — | — |");
        assert_eq!(
            row("40-59"),
            "| 40-59 | 1 | 1.000 (0 wrong) | 0.000 (1 wrong) |"
        );
        assert_eq!(
            row("60+"),
            "| 60+ | 1 | 0.000 (1 wrong) | 1.000 (0 wrong) |"
        );
        // The image without an age label is in no row.
        let counted: u64 = md
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| true"))
            .filter_map(|l| l.split(" | ").nth(1)?.parse::<u64>().ok())
            .sum();
        assert_eq!(counted, 5);
    }
}
