//! Honest probabilities: temperature scaling (Guo et al. 2017). A network trained with cross
//! entropy is often surer than it is right; one temperature per head, fitted on faces the model
//! never trained on, rescales its log-probabilities so that "0.8" is right about 8 times in 10.
//! Argmax labels do not change, so accuracy does not either; what changes is when a label is
//! sure enough to say rather than `unknown`. Age is calibrated on its groups' probabilities (the
//! ones reported), not on the one-year bins, so age in years and the group do not change.
//!
//! Gender and race have two temperatures each: read by the attribute model alone, and as the mean
//! of its reading and faceres's (two models that sometimes disagree: the mean is less sure than
//! either).
//!
//! The temperatures are fitted by `faceflow eval --calibrate` on the faces it reads, and kept in a
//! file beside the model (`<model>.calibration.json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AgeGrouping;
use super::readout::Prediction;

/// Which of a reading's gender and race are the mean of two models' (the attribute model's and
/// faceres's): each has its own temperature.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReadTwice {
    pub gender: bool,
    pub race: bool,
}

/// One temperature per head, and what they were fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The age groups' temperature (fitted on 5 groups, applied to whichever are reported).
    pub age: f64,
    /// Gender read by the attribute model and faceres, their mean.
    pub gender: f64,
    /// Gender read by the attribute model alone (faceres off, or a track it has not read yet).
    pub gender_alone: f64,
    /// Race as reported: with faceres and its race head, the mean of the two readings.
    pub race: f64,
    /// Race read by the attribute model alone; files without it use `race`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race_alone: Option<f64>,
    /// What the temperatures were fitted on: the model, its settings and the faces.
    pub fitted_on: String,
    /// Expected calibration error of each head on those faces, before and after.
    #[serde(default)]
    pub ece: Vec<HeadEce>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadEce {
    pub head: String,
    pub faces: usize,
    pub before: f64,
    pub after: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("cannot read the calibration {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("calibration {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Temperatures must lie in this range: outside it a fit has gone wrong.
const TEMPERATURES: std::ops::RangeInclusive<f64> = 0.05..=20.0;

impl Calibration {
    /// The calibration file of the model at `model`: `<model without .onnx>.calibration.json`.
    pub fn path_beside(model: &Path) -> PathBuf {
        model.with_extension("calibration.json")
    }

    /// The calibration beside `model`, if there is one.
    pub fn load_beside(model: &Path) -> Result<Option<Self>, CalibrationError> {
        let path = Self::path_beside(model);
        if !path.exists() {
            return Ok(None);
        }
        Self::load(&path).map(Some)
    }

    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|e| CalibrationError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let c: Self = serde_json::from_str(&text).map_err(|e| CalibrationError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "{e} (an older format? fit it again with faceflow eval --calibrate, or remove it)"
            ),
        })?;
        for (head, t) in [
            ("age", c.age),
            ("gender", c.gender),
            ("gender_alone", c.gender_alone),
            ("race", c.race),
            ("race_alone", c.race_alone.unwrap_or(c.race)),
        ] {
            if !TEMPERATURES.contains(&t) {
                return Err(CalibrationError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{head} temperature {t} is outside {}–{}",
                        TEMPERATURES.start(),
                        TEMPERATURES.end()
                    ),
                });
            }
        }
        Ok(c)
    }

    /// `p` with the gender and race temperatures applied (`read_twice`: which of its gender and
    /// race are the means of the model's and faceres's); the one-year age bins are left as they
    /// are (see [`Calibration::age_groups`]).
    pub fn apply(&self, p: &Prediction, read_twice: ReadTwice) -> Prediction {
        let gender_t = if read_twice.gender {
            self.gender
        } else {
            self.gender_alone
        };
        let race_t = if read_twice.race {
            self.race
        } else {
            self.race_alone.unwrap_or(self.race)
        };
        Prediction {
            age_fine: p.age_fine.clone(),
            gender: scaled(&p.gender, gender_t),
            race: scaled(&p.race, race_t),
        }
    }

    /// Age-group probabilities with the age temperature applied.
    pub fn age_groups(&self, probs: &[f32]) -> Vec<f32> {
        scaled(probs, self.age)
    }
}

/// Probabilities `p` at temperature `t`: softmax(ln p / t). Zero stays zero.
pub fn scaled(p: &[f32], t: f64) -> Vec<f32> {
    if (t - 1.0).abs() < 1e-12 || p.is_empty() {
        return p.to_vec();
    }
    let logs: Vec<f64> = p
        .iter()
        .map(|&x| {
            if x > 0.0 {
                f64::from(x).ln() / t
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return p.to_vec();
    }
    let exp: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.into_iter().map(|e| (e / total) as f32).collect()
}

/// One labelled face's probabilities over a head's classes, and its true class.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub probs: Vec<f32>,
    pub truth: usize,
}

/// Mean negative log-likelihood of the true classes at temperature `t`; `group` maps the
/// scaled probabilities to the classes scored (the age groups of fine bins), identity when `None`.
pub fn nll(faces: &[Labelled], t: f64, group: Option<AgeGrouping>) -> f64 {
    let total: f64 = faces
        .iter()
        .map(|f| {
            let mut p = scaled(&f.probs, t);
            if let Some(g) = group {
                p = g.group_probs(&p);
            }
            -f64::from(p.get(f.truth).copied().unwrap_or(0.0))
                .max(1e-12)
                .ln()
        })
        .sum();
    total / faces.len().max(1) as f64
}

/// The temperature that minimises [`nll`], by golden-section search over ln t in [ln 0.1, ln 10]
/// (the likelihood is unimodal in t for a fixed set of logits).
pub fn fit_temperature(faces: &[Labelled], group: Option<AgeGrouping>) -> f64 {
    let f = |ln_t: f64| nll(faces, ln_t.exp(), group);
    let (mut a, mut b) = (0.1f64.ln(), 10f64.ln());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - ratio * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + ratio * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Expected calibration error of top-label confidences: `(confidence, right)` per face, in
/// `bins` equal-width bins of confidence; the mean gap between confidence and accuracy, each bin
/// weighed by its faces.
pub fn expected_calibration_error(answers: &[(f32, bool)], bins: usize) -> f64 {
    let bins = bins.max(1);
    let mut sums = vec![(0f64, 0f64, 0usize); bins];
    for &(conf, right) in answers {
        let conf = f64::from(conf.clamp(0.0, 1.0));
        let i = ((conf * bins as f64) as usize).min(bins - 1);
        sums[i].0 += conf;
        sums[i].1 += f64::from(u8::from(right));
        sums[i].2 += 1;
    }
    let n = answers.len().max(1) as f64;
    sums.iter()
        .filter(|s| s.2 > 0)
        .map(|&(conf, right, _)| (conf - right).abs() / n)
        .sum()
}

/// Top-label confidence and whether it is right, per face, at temperature `t`.
pub fn answers(faces: &[Labelled], t: f64, group: Option<AgeGrouping>) -> Vec<(f32, bool)> {
    faces
        .iter()
        .map(|f| {
            let mut p = scaled(&f.probs, t);
            if let Some(g) = group {
                p = g.group_probs(&p);
            }
            let (best, conf) = p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or((0, 0.0), |(i, &c)| (i, c));
            (conf, best == f.truth)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of numbers in [0, 1).
    fn uniform(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Faces whose true class is drawn from softmax(logits / 2): a model reporting
    /// softmax(logits) is over-confident, and the fit finds a temperature near 2.
    #[test]
    fn the_fit_finds_the_temperature_that_made_the_labels() {
        let mut seed = 7;
        let faces: Vec<Labelled> = (0..4000)
            .map(|_| {
                let logit = 8.0 * (uniform(&mut seed) - 0.5);
                let reported = 1.0 / (1.0 + (-logit).exp());
                let truth_p = 1.0 / (1.0 + (-logit / 2.0).exp());
                let truth = usize::from(uniform(&mut seed) >= truth_p);
                Labelled {
                    probs: vec![reported as f32, (1.0 - reported) as f32],
                    truth,
                }
            })
            .collect();
        let t = fit_temperature(&faces, None);
        assert!((1.7..2.3).contains(&t), "{t}");
        let before = expected_calibration_error(&answers(&faces, 1.0, None), 15);
        let after = expected_calibration_error(&answers(&faces, t, None), 15);
        assert!(after < before / 2.0, "{before} → {after}");
    }

    #[test]
    fn scaling_keeps_the_order_and_sums_to_one() {
        let p = [0.7, 0.2, 0.1, 0.0];
        let hot = scaled(&p, 2.0);
        let cold = scaled(&p, 0.5);
        assert!((hot.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(hot[0] < 0.7 && cold[0] > 0.7);
        assert!(hot[0] > hot[1] && hot[1] > hot[2]);
        assert_eq!(hot[3], 0.0);
        assert_eq!(scaled(&p, 1.0), p.to_vec());
    }

    /// Right answers at 0.75 confidence three times in four: no gap. All wrong at 0.9: 0.9.
    #[test]
    fn ece_is_the_weighted_gap_between_confidence_and_accuracy() {
        let calibrated = [(0.75, true), (0.75, true), (0.75, true), (0.75, false)];
        assert!(expected_calibration_error(&calibrated, 10) < 1e-9);
        let wrong = [(0.9, false), (0.9, false)];
        assert!((expected_calibration_error(&wrong, 10) - 0.9).abs() < 1e-6);
    }

    #[test]
    fn temperatures_out_of_range_are_refused() {
        let dir = std::env::temp_dir().join(format!("ff-calib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.calibration.json");
        std::fs::write(
            &path,
            r#"{"age":1.0,"gender":0.0,"gender_alone":1.0,"race":1.0,"fitted_on":"x"}"#,
        )
        .unwrap();
        let e = Calibration::load(&path).unwrap_err().to_string();
        assert!(e.contains("gender temperature 0"), "{e}");
        assert_eq!(
            Calibration::path_beside(Path::new("models/faceattr.onnx")),
            Path::new("models/faceattr.calibration.json")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
