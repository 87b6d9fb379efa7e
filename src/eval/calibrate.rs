//! `faceflow eval --calibrate FILE`: temperatures fitted on an evaluation's faces (see
//! [`crate::model::calibration`]), with the expected calibration error of each head before and
//! after, and how many faces a threshold leaves labelled (coverage) against how many of those
//! are right (precision), so the `unknown` threshold is chosen on numbers.

use std::fmt::Write as _;

use super::{EvalReport, ImageResult, Probs};
use crate::model::calibration::{
    Calibration, HeadEce, Labelled, answers, expected_calibration_error, fit_temperature,
};
use crate::model::{AgeGrouping, GENDER_LABELS, RACE_LABELS};

/// Confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;
/// Thresholds of the coverage table.
pub const THRESHOLDS: [f32; 10] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];

/// The labelled faces of `images` for one head: `pick` gives a face's probabilities and true
/// class, when it has both.
fn faces(
    images: &[ImageResult],
    pick: impl Fn(&ImageResult) -> Option<(Vec<f32>, usize)>,
) -> Vec<Labelled> {
    images
        .iter()
        .filter_map(pick)
        .map(|(probs, truth)| Labelled { probs, truth })
        .collect()
}

/// A labelled head's faces: its probabilities as `probs` picks them (as reported, or the
/// attribute model's alone) and the true label, `truth`, among `labels`.
fn label_faces(
    images: &[ImageResult],
    labels: &[&str],
    truth: impl Fn(&ImageResult) -> Option<&'static str>,
    probs: impl Fn(&Probs) -> &Vec<f32>,
) -> Vec<Labelled> {
    faces(images, |i| {
        let truth = labels.iter().position(|l| Some(*l) == truth(i))?;
        Some((probs(i.probs.as_ref()?).clone(), truth))
    })
}

/// The age groups' probabilities of `grouping` and the true group.
fn age_faces(images: &[ImageResult], grouping: AgeGrouping) -> Vec<Labelled> {
    faces(images, |i| {
        let years = i.truth.age_years?;
        let groups = grouping.group_probs(&i.probs.as_ref()?.age_fine);
        Some((groups, grouping.group_of(years)))
    })
}

/// Fits the temperatures on `report`'s faces (the age temperature on the 5 groups); the
/// calibration, and a Markdown page of ECE and coverage.
pub fn fit(report: &EvalReport, fitted_on: String) -> (Calibration, String) {
    let images = &report.images;
    let gender = label_faces(images, &GENDER_LABELS, |i| i.truth.gender, |p| &p.gender);
    let gender_alone = label_faces(
        images,
        &GENDER_LABELS,
        |i| i.truth.gender,
        |p| &p.gender_alone,
    );
    let race = label_faces(images, &RACE_LABELS, |i| i.truth.race, |p| &p.race);
    let race_alone = label_faces(images, &RACE_LABELS, |i| i.truth.race, |p| &p.race_alone);
    let age5 = age_faces(images, AgeGrouping::Five);
    let t_gender = fit_or_one(&gender);
    let t_gender_alone = fit_or_one(&gender_alone);
    let t_race = fit_or_one(&race);
    let t_race_alone = fit_or_one(&race_alone);
    let t_age = fit_or_one(&age5);
    let mut ece = Vec::new();
    let mut head = |name: &str, faces: &[Labelled], t: f64| {
        if faces.is_empty() {
            return;
        }
        ece.push(HeadEce {
            head: name.to_string(),
            faces: faces.len(),
            before: expected_calibration_error(&answers(faces, 1.0, None), ECE_BINS),
            after: expected_calibration_error(&answers(faces, t, None), ECE_BINS),
        });
    };
    head("gender", &gender, t_gender);
    head("gender_alone", &gender_alone, t_gender_alone);
    head("race", &race, t_race);
    head("race_alone", &race_alone, t_race_alone);
    for grouping in [AgeGrouping::Three, AgeGrouping::Five, AgeGrouping::Ten] {
        let faces = age_faces(images, grouping);
        head(&format!("age{}", grouping.len()), &faces, t_age);
    }
    let calibration = Calibration {
        age: round(t_age),
        gender: round(t_gender),
        gender_alone: round(t_gender_alone),
        race: round(t_race),
        race_alone: Some(round(t_race_alone)),
        fitted_on,
        ece,
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Calibration: {}\n", calibration.fitted_on);
    let _ = writeln!(
        md,
        "Temperatures: age {:.3} (fitted on 5 groups), gender {:.3} (as reported), gender read by the model alone {:.3}, race {:.3} (as reported), race read by the model alone {:.3}.\n",
        calibration.age,
        calibration.gender,
        calibration.gender_alone,
        calibration.race,
        t_race_alone
    );
    let _ = writeln!(
        md,
        "Expected calibration error ({ECE_BINS} bins of top-label confidence):\n\n| head | faces | before | after |\n|---|---|---|---|"
    );
    for e in &calibration.ece {
        let _ = writeln!(
            md,
            "| {} | {} | {:.4} | {:.4} |",
            e.head, e.faces, e.before, e.after
        );
    }
    let _ = writeln!(
        md,
        "\nCalibrated, a label below the threshold reads unknown: the share of faces still labelled \
         (coverage) and the share of those that are right (precision).\n\n| threshold | gender coverage | gender precision | race coverage | race precision |\n|---|---|---|---|---|"
    );
    let gender_answers = answers(&gender, calibration.gender, None);
    let race_answers = answers(&race, calibration.race, None);
    for threshold in THRESHOLDS {
        let (gc, gp) = coverage(&gender_answers, threshold);
        let (rc, rp) = coverage(&race_answers, threshold);
        let _ = writeln!(
            md,
            "| {threshold:.2} | {gc:.3} | {gp:.3} | {rc:.3} | {rp:.3} |"
        );
    }
    (calibration, md)
}

/// The share of `answers` at or above `threshold`, and the share of those that are right.
pub fn coverage(answers: &[(f32, bool)], threshold: f32) -> (f64, f64) {
    let kept: Vec<bool> = answers
        .iter()
        .filter(|(conf, _)| *conf >= threshold)
        .map(|&(_, right)| right)
        .collect();
    let right = kept.iter().filter(|&&r| r).count();
    (
        kept.len() as f64 / answers.len().max(1) as f64,
        right as f64 / kept.len().max(1) as f64,
    )
}

fn fit_or_one(faces: &[Labelled]) -> f64 {
    if faces.is_empty() {
        1.0
    } else {
        fit_temperature(faces, None)
    }
}

/// Three decimals: the file is read by people too.
fn round(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_kept_answers_and_their_precision() {
        let answers = [(0.9, true), (0.8, false), (0.6, true), (0.55, true)];
        assert_eq!(coverage(&answers, 0.5), (1.0, 0.75));
        assert_eq!(coverage(&answers, 0.7), (0.5, 0.5));
        assert_eq!(coverage(&answers, 0.95), (0.0, 0.0));
    }
}
