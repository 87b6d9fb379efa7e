//! Reading the attribute model's logits: softmax per head, age groups as sums of fine bins, age in
//! years as the median, and the accuracy tallies the trainer and `faceflow eval` share.

use serde::Serialize;

use super::{AgeGrouping, FINE_AGE_MAX_YEARS, GENDER_LABELS, RACE_LABELS, median_years};

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.into_iter().map(|v| v / total).collect()
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// One face's probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// One probability per fine age bin (1 … 80+ years).
    pub age_fine: Vec<f32>,
    pub gender: Vec<f32>,
    pub race: Vec<f32>,
}

impl Prediction {
    pub fn from_logits(age: &[f32], gender: &[f32], race: &[f32]) -> Self {
        Self {
            age_fine: softmax(age),
            gender: softmax(gender),
            race: softmax(race),
        }
    }

    /// Most probable group and the group probabilities.
    pub fn age_group(&self, grouping: AgeGrouping) -> (usize, Vec<f32>) {
        let probs = grouping.group_probs(&self.age_fine);
        (argmax(&probs), probs)
    }

    /// The median of the age distribution: the least absolute error (what MAE scores).
    pub fn age_years(&self) -> f32 {
        median_years(&self.age_fine)
    }

    pub fn gender(&self) -> (usize, f32) {
        let i = argmax(&self.gender);
        (i, self.gender[i])
    }

    pub fn race(&self) -> (usize, f32) {
        let i = argmax(&self.race);
        (i, self.race[i])
    }

    /// The per-face JSON fields.
    pub fn age_json(&self, grouping: AgeGrouping) -> AgeJson {
        let (index, probs) = self.age_group(grouping);
        AgeJson {
            group: grouping.label(index).unwrap_or_default(),
            index,
            years: round_to(self.age_years(), 10.0),
            probs: probs.into_iter().map(|p| round_to(p, 1000.0)).collect(),
        }
    }

    pub fn gender_json(&self) -> LabelJson {
        let (i, p) = self.gender();
        LabelJson {
            label: GENDER_LABELS[i].to_string(),
            prob: round_to(p, 1000.0),
        }
    }

    pub fn race_json(&self) -> LabelJson {
        let (i, p) = self.race();
        LabelJson {
            label: RACE_LABELS[i].to_string(),
            prob: round_to(p, 1000.0),
        }
    }
}

fn round_to(v: f32, scale: f32) -> f32 {
    (v * scale).round() / scale
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AgeJson {
    pub group: String,
    pub index: usize,
    pub years: f32,
    pub probs: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LabelJson {
    pub label: String,
    pub prob: f32,
}

/// The labels of one evaluated image; `None` where the source has no such label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Truth {
    pub age_years: Option<u32>,
    pub gender: Option<usize>,
    pub race: Option<usize>,
}

impl Truth {
    /// The labels a model trained on `tasks` is scored on: an untrained head's output is noise,
    /// not a verdict.
    pub fn only(self, tasks: &[super::spec::Task]) -> Self {
        use super::spec::Task;
        Self {
            age_years: self.age_years.filter(|_| tasks.contains(&Task::Age)),
            gender: self.gender.filter(|_| tasks.contains(&Task::Gender)),
            race: self.race.filter(|_| tasks.contains(&Task::Race)),
        }
    }
}

/// A square confusion matrix, rows = truth, columns = prediction; `missed` counts images whose
/// face was not found (always wrong).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<u64>>,
    pub missed: Vec<u64>,
}

impl Confusion {
    pub fn new(labels: Vec<String>) -> Self {
        let n = labels.len();
        Self {
            labels,
            counts: vec![vec![0; n]; n],
            missed: vec![0; n],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: Option<usize>) {
        match predicted {
            Some(p) => self.counts[truth][p] += 1,
            None => self.missed[truth] += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum::<u64>() + self.missed.iter().sum::<u64>()
    }

    pub fn correct(&self) -> u64 {
        (0..self.labels.len()).map(|i| self.counts[i][i]).sum()
    }

    /// Accuracy with missed faces counted wrong; NaN with no samples.
    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.total() as f64
    }

    /// Accuracy within each true class.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        (0..self.labels.len())
            .map(|i| {
                let n = self.counts[i].iter().sum::<u64>() + self.missed[i];
                self.counts[i][i] as f64 / n as f64
            })
            .collect()
    }
}

/// Accumulates predictions against labels. Age metrics use ages 1–80, as the study did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tally {
    pub images: u64,
    pub faces_missed: u64,
    pub age: Vec<(u32, Confusion)>,
    pub age_abs_error_sum: f64,
    pub age_count: u64,
    pub gender: Confusion,
    pub race: Confusion,
}

impl Default for Tally {
    fn default() -> Self {
        let labels = |g: AgeGrouping| (0..g.len()).filter_map(|i| g.label(i)).collect();
        Self {
            images: 0,
            faces_missed: 0,
            age: AgeGrouping::ALL
                .iter()
                .map(|&g| (g.len() as u32, Confusion::new(labels(g))))
                .collect(),
            age_abs_error_sum: 0.0,
            age_count: 0,
            gender: Confusion::new(GENDER_LABELS.iter().map(|s| s.to_string()).collect()),
            race: Confusion::new(RACE_LABELS.iter().map(|s| s.to_string()).collect()),
        }
    }
}

/// Whether one image's prediction was right, per task; `None` where the image has no such label
/// (or, for age, an age outside 1–80). What [`Tally::add`] counted, so per-image lists and the
/// totals cannot disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Correct {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age3: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age5: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age10: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race: Option<bool>,
}

impl Tally {
    /// Counts one image (`prediction` is `None` when no face was found) and says what was right.
    pub fn add(&mut self, truth: &Truth, prediction: Option<&Prediction>) -> Correct {
        let mut correct = Correct::default();
        self.images += 1;
        if prediction.is_none() {
            self.faces_missed += 1;
        }
        if let Some(age) = truth.age_years.filter(|&a| a <= FINE_AGE_MAX_YEARS) {
            for (count, confusion) in &mut self.age {
                let grouping = AgeGrouping::from_count(*count).unwrap_or(AgeGrouping::Five);
                let (true_group, predicted) = (
                    grouping.group_of(age),
                    prediction.map(|p| p.age_group(grouping).0),
                );
                confusion.add(true_group, predicted);
                let right = Some(predicted == Some(true_group));
                match grouping {
                    AgeGrouping::Three => correct.age3 = right,
                    AgeGrouping::Five => correct.age5 = right,
                    AgeGrouping::Ten => correct.age10 = right,
                }
            }
            if let Some(p) = prediction {
                self.age_abs_error_sum += f64::from((p.age_years() - age as f32).abs());
                self.age_count += 1;
            }
        }
        if let Some(g) = truth.gender {
            let predicted = prediction.map(|p| p.gender().0);
            self.gender.add(g, predicted);
            correct.gender = Some(predicted == Some(g));
        }
        if let Some(r) = truth.race {
            let predicted = prediction.map(|p| p.race().0);
            self.race.add(r, predicted);
            correct.race = Some(predicted == Some(r));
        }
        correct
    }

    pub fn age_accuracy(&self, grouping: AgeGrouping) -> f64 {
        self.age
            .iter()
            .find(|(n, _)| *n as usize == grouping.len())
            .map(|(_, c)| c.accuracy())
            .unwrap_or(f64::NAN)
    }

    /// Mean absolute error in years over faces found (ages 1–80).
    pub fn age_mae(&self) -> f64 {
        self.age_abs_error_sum / self.age_count as f64
    }

    /// Images whose age was scored (a label from 1 to 80).
    pub fn age_images(&self) -> u64 {
        self.age.first().map_or(0, |(_, c)| c.total())
    }

    /// One line: `age3 0.801 age5 … mae 5.40 gender 0.930 race 0.850 (N images, age scored on
    /// K; M without a face)`; `n/a` where nothing was scored.
    pub fn line(&self) -> String {
        let age_note = if self.age_images() == self.images {
            String::new()
        } else {
            format!(", age scored on {} aged 1-80", self.age_images())
        };
        format!(
            "age3 {} age5 {} age10 {} mae {} gender {} race {} ({} images{age_note}; {} without a face)",
            fmt_metric(self.age_accuracy(AgeGrouping::Three), 3),
            fmt_metric(self.age_accuracy(AgeGrouping::Five), 3),
            fmt_metric(self.age_accuracy(AgeGrouping::Ten), 3),
            fmt_metric(self.age_mae(), 2),
            fmt_metric(self.gender.accuracy(), 3),
            fmt_metric(self.race.accuracy(), 3),
            self.images,
            self.faces_missed
        )
    }
}

/// A rate or an error with `digits` decimals; `n/a` when there was nothing to measure (NaN).
pub fn fmt_metric(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FINE_AGE_BINS, fine_bin_of};

    fn peaked(age: u32, gender: usize, race: usize) -> Prediction {
        let mut a = vec![0f32; FINE_AGE_BINS];
        a[fine_bin_of(age)] = 20.0;
        let mut g = vec![0f32; 2];
        g[gender] = 5.0;
        let mut r = vec![0f32; 5];
        r[race] = 5.0;
        Prediction::from_logits(&a, &g, &r)
    }

    #[test]
    fn only_the_trained_tasks_are_scored() {
        use crate::model::spec::Task;
        let truth = Truth {
            age_years: Some(30),
            gender: Some(1),
            race: Some(2),
        };
        let only_age = truth.only(&[Task::Age]);
        assert_eq!(
            (only_age.age_years, only_age.gender, only_age.race),
            (Some(30), None, None)
        );
        assert_eq!(truth.only(&Task::ALL), truth);
        let mut tally = Tally::default();
        let correct = tally.add(&only_age, None);
        assert_eq!((correct.gender, correct.race), (None, None));
        assert!(tally.gender.accuracy().is_nan() && tally.line().contains("gender n/a race n/a"));
    }

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        assert!((softmax(&[0.3, -2.0, 7.0]).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn years_are_the_median_of_the_age_distribution() {
        // 60 % at 5 years, 40 % at 20: the mean (11) is an age the model barely considers.
        let mut age_fine = vec![0f32; FINE_AGE_BINS];
        age_fine[fine_bin_of(5)] = 0.6;
        age_fine[fine_bin_of(20)] = 0.4;
        let p = Prediction {
            age_fine,
            gender: vec![0.5, 0.5],
            race: vec![0.2; 5],
        };
        assert!(
            (p.age_years() - (4.5 + 0.5 / 0.6)).abs() < 1e-4,
            "{}",
            p.age_years()
        );
        assert!((p.age_json(AgeGrouping::Three).years - 5.3).abs() < 1e-4);
        // MAE scores the same readout: truth 5 is 0.33 years off, not 6.
        let mut t = Tally::default();
        t.add(
            &Truth {
                age_years: Some(5),
                gender: None,
                race: None,
            },
            Some(&p),
        );
        assert!(
            (t.age_mae() - 0.5 / 0.6 + 0.5).abs() < 1e-4,
            "{}",
            t.age_mae()
        );
    }

    #[test]
    fn json_readout_uses_the_study_labels() {
        let p = peaked(34, 1, 2);
        let age = p.age_json(AgeGrouping::Three);
        assert_eq!(age.group, "27-52");
        assert_eq!(age.index, 1);
        assert!((age.years - 34.0).abs() < 0.1);
        assert_eq!(age.probs.len(), 3);
        assert_eq!(p.age_json(AgeGrouping::Five).group, "24-39");
        assert_eq!(p.gender_json().label, "female");
        assert_eq!(p.race_json().label, "asian");
        assert!(p.race_json().prob > 0.9);
    }

    #[test]
    fn tally_counts_missed_faces_wrong_and_skips_ages_over_80() {
        let mut t = Tally::default();
        let truth = |age, gender, race| Truth {
            age_years: Some(age),
            gender: Some(gender),
            race: Some(race),
        };
        let right = t.add(&truth(30, 0, 0), Some(&peaked(30, 0, 0)));
        let near = t.add(&truth(30, 0, 1), Some(&peaked(40, 0, 0)));
        let missed = t.add(&truth(60, 1, 1), None);
        let old = t.add(&truth(95, 1, 1), Some(&peaked(80, 1, 1)));
        let all = |b| Correct {
            age3: Some(b),
            age5: Some(b),
            age10: Some(b),
            gender: Some(b),
            race: Some(b),
        };
        assert_eq!(right, all(true));
        assert_eq!(missed, all(false));
        // 40 vs 30: same group of 3 (27-52), different group of 10; race wrong.
        assert_eq!(
            near,
            Correct {
                age3: Some(true),
                age5: Some(false),
                age10: Some(false),
                gender: Some(true),
                race: Some(false),
            }
        );
        // Over 80: no age verdict, the other tasks still count.
        assert_eq!((old.age3, old.age10, old.gender), (None, None, Some(true)));
        assert_eq!(t.images, 4);
        assert_eq!(t.faces_missed, 1);
        // Ages 30, 30, 60 count; 95 does not. 3 groups: 30→30 right, 40 vs 30 right, missed wrong.
        assert!((t.age_accuracy(AgeGrouping::Three) - 2.0 / 3.0).abs() < 1e-9);
        // 10 groups: 40 is 33-40, 30 is 25-32: wrong.
        assert!((t.age_accuracy(AgeGrouping::Ten) - 1.0 / 3.0).abs() < 1e-9);
        assert!((t.age_mae() - 5.0).abs() < 0.05, "{}", t.age_mae());
        assert!((t.gender.accuracy() - 0.75).abs() < 1e-9);
        assert!((t.race.accuracy() - 0.5).abs() < 1e-9);
        assert_eq!(t.race.missed[1], 1);
        assert_eq!(t.race.per_class_accuracy()[0], 1.0);
    }
}
