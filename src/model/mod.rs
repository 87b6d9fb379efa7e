//! Definitions shared by the attribute model's trainer and the runtime: tasks and their labels, the
//! age groupings of the study, how a fine age head is read out, and UTKFace-style labels.
//!
//! The aligned crop the model sees is defined in [`crate::align`] (template, size, margin): this
//! module refers to it rather than copying it.

use std::fmt;

pub mod calibration;
pub mod dataset;
pub mod readout;
pub mod spec;

/// Gender labels, in model output order (UTKFace codes 0, 1).
pub const GENDER_LABELS: [&str; 2] = ["male", "female"];
/// Race labels, in model output order (UTKFace codes 0–4).
pub const RACE_LABELS: [&str; 5] = ["white", "black", "asian", "indian", "others"];

/// Youngest and oldest age of the fine age head: one bin per year; the last bin also holds every
/// older age, the first also age 0.
pub const FINE_AGE_MIN_YEARS: u32 = 1;
pub const FINE_AGE_MAX_YEARS: u32 = 80;
/// Number of fine age bins (1, 2, …, 80+).
pub const FINE_AGE_BINS: usize = (FINE_AGE_MAX_YEARS - FINE_AGE_MIN_YEARS + 1) as usize;

/// The study's age groupings. Groups are inclusive year ranges; the first also takes age 0 and the
/// last is open-ended (ages over 80 fall in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgeGrouping {
    /// 1-26, 27-52, 53-80.
    Three,
    /// 1-11, 12-23, 24-39, 40-55, 56-80.
    Five,
    /// Eight-year bins 1-8, 9-16, …, 73-80.
    Ten,
}

const THREE: [(u32, u32); 3] = [(1, 26), (27, 52), (53, 80)];
const FIVE: [(u32, u32); 5] = [(1, 11), (12, 23), (24, 39), (40, 55), (56, 80)];
const TEN: [(u32, u32); 10] = [
    (1, 8),
    (9, 16),
    (17, 24),
    (25, 32),
    (33, 40),
    (41, 48),
    (49, 56),
    (57, 64),
    (65, 72),
    (73, 80),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("age groups must be 3, 5 or 10, not {0}")]
pub struct BadGrouping(pub u32);

impl AgeGrouping {
    pub const ALL: [AgeGrouping; 3] = [AgeGrouping::Three, AgeGrouping::Five, AgeGrouping::Ten];

    pub fn from_count(n: u32) -> Result<Self, BadGrouping> {
        match n {
            3 => Ok(Self::Three),
            5 => Ok(Self::Five),
            10 => Ok(Self::Ten),
            other => Err(BadGrouping(other)),
        }
    }

    /// Inclusive year ranges of the groups, youngest first.
    pub fn ranges(self) -> &'static [(u32, u32)] {
        match self {
            Self::Three => &THREE,
            Self::Five => &FIVE,
            Self::Ten => &TEN,
        }
    }

    pub fn len(self) -> usize {
        self.ranges().len()
    }

    pub fn is_empty(self) -> bool {
        false
    }

    /// Group index of an age in whole years (0 goes to the first group, over 80 to the last).
    pub fn group_of(self, age_years: u32) -> usize {
        let ranges = self.ranges();
        ranges
            .iter()
            .position(|&(_, hi)| age_years <= hi)
            .unwrap_or(ranges.len() - 1)
    }

    /// Label of a group, e.g. "27-52".
    pub fn label(self, index: usize) -> Option<String> {
        self.ranges()
            .get(index)
            .map(|(lo, hi)| format!("{lo}-{hi}"))
    }

    /// Group probabilities from fine per-year probabilities: each group is the sum of its bins.
    pub fn group_probs(self, fine: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        for (bin, p) in fine.iter().enumerate() {
            out[self.group_of(fine_bin_years(bin))] += p;
        }
        out
    }
}

impl fmt::Display for AgeGrouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.len())
    }
}

/// The age (years) a fine bin stands for.
pub fn fine_bin_years(bin: usize) -> u32 {
    FINE_AGE_MIN_YEARS + bin as u32
}

/// The fine bin of an age in years (clamped into 1..=80).
pub fn fine_bin_of(age_years: u32) -> usize {
    (age_years.clamp(FINE_AGE_MIN_YEARS, FINE_AGE_MAX_YEARS) - FINE_AGE_MIN_YEARS) as usize
}

/// Expected age in years under fine per-year probabilities (normalised here, so logits turned into
/// probabilities by any softmax work).
pub fn expected_years(fine: &[f32]) -> f32 {
    let total: f32 = fine.iter().sum();
    if total <= 0.0 {
        return f32::NAN;
    }
    fine.iter()
        .enumerate()
        .map(|(bin, p)| p * fine_bin_years(bin) as f32)
        .sum::<f32>()
        / total
}

/// Median age in years under fine per-year probabilities (normalised here): the estimate with
/// the smallest expected absolute error, where the mean ([`expected_years`]) minimises the squared
/// error — a skewed distribution (a child who may be a teenager) pulls the mean off the likely
/// ages. Interpolated inside the bin where the cumulative probability crosses one half, each bin
/// spanning its year ± 0.5.
pub fn median_years(fine: &[f32]) -> f32 {
    let total: f32 = fine.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return f32::NAN;
    }
    let half = 0.5 * total;
    let mut below = 0.0f32;
    for (bin, &p) in fine.iter().enumerate() {
        if p > 0.0 && below + p >= half {
            let within = ((half - below) / p).clamp(0.0, 1.0);
            return fine_bin_years(bin) as f32 - 0.5 + within;
        }
        below += p;
    }
    // Not reached with finite input (the running sum retraces the total); keeps the function total.
    let last = fine.iter().rposition(|&p| p > 0.0).unwrap_or(0);
    fine_bin_years(last) as f32
}

/// Labels carried by a UTKFace file name `age_gender_race_datetime.jpg.chip.jpg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtkLabels {
    pub age_years: u32,
    /// Index into [`GENDER_LABELS`].
    pub gender: usize,
    /// Index into [`RACE_LABELS`].
    pub race: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason} (expected AGE_GENDER_RACE_DATETIME.jpg.chip.jpg)")]
pub struct BadUtkName {
    pub name: String,
    pub reason: String,
}

/// Parses the labels from a UTKFace file name; malformed names are errors, never guesses.
pub fn parse_utkface_name(name: &str) -> Result<UtkLabels, BadUtkName> {
    let bad = |reason: &str| BadUtkName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let fields: Vec<&str> = name.split('_').collect();
    if fields.len() < 4 {
        return Err(bad("fewer than four '_'-separated fields"));
    }
    let number = |s: &str, what: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            Err(bad(&format!("{what} '{s}' is not a whole number")))
        } else {
            s.parse::<u32>()
                .map_err(|_| bad(&format!("{what} '{s}' is out of range")))
        }
    };
    let age_years = number(fields[0], "age")?;
    let gender = number(fields[1], "gender")? as usize;
    let race = number(fields[2], "race")? as usize;
    if !(1..=120).contains(&age_years) {
        return Err(bad(&format!("age {age_years} is outside 1..120")));
    }
    if gender >= GENDER_LABELS.len() {
        return Err(bad(&format!("gender {gender} is not 0 or 1")));
    }
    if race >= RACE_LABELS.len() {
        return Err(bad(&format!("race {race} is not 0..4")));
    }
    Ok(UtkLabels {
        age_years,
        gender,
        race,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groupings_cover_1_to_80_without_gaps() {
        for g in AgeGrouping::ALL {
            let r = g.ranges();
            assert_eq!(r[0].0, 1);
            assert_eq!(r[r.len() - 1].1, 80);
            for pair in r.windows(2) {
                assert_eq!(pair[1].0, pair[0].1 + 1, "{g:?}");
            }
        }
        assert_eq!(AgeGrouping::Ten.len(), 10);
        assert!(
            AgeGrouping::Ten
                .ranges()
                .iter()
                .all(|(lo, hi)| hi - lo == 7)
        );
    }

    #[test]
    fn ages_fall_in_the_study_groups_with_open_ends() {
        let g = AgeGrouping::Three;
        assert_eq!(
            [0, 1, 26, 27, 52, 53, 80, 81, 116].map(|a| g.group_of(a)),
            [0, 0, 0, 1, 1, 2, 2, 2, 2]
        );
        let g = AgeGrouping::Five;
        assert_eq!(
            [11, 12, 23, 24, 39, 40, 55, 56].map(|a| g.group_of(a)),
            [0, 1, 1, 2, 2, 3, 3, 4]
        );
        let g = AgeGrouping::Ten;
        assert_eq!([8, 9, 72, 73, 100].map(|a| g.group_of(a)), [0, 1, 8, 9, 9]);
        assert_eq!(AgeGrouping::Five.label(1).as_deref(), Some("12-23"));
        assert_eq!(AgeGrouping::Three.label(3), None);
        assert_eq!(AgeGrouping::from_count(4), Err(BadGrouping(4)));
        assert_eq!(AgeGrouping::from_count(10), Ok(AgeGrouping::Ten));
    }

    #[test]
    fn group_probabilities_sum_fine_bins_and_years_is_the_expectation() {
        let mut fine = vec![0f32; FINE_AGE_BINS];
        fine[fine_bin_of(30)] = 0.5;
        fine[fine_bin_of(60)] = 0.25;
        fine[fine_bin_of(0)] = 0.25; // age 0 sits in the first bin (1 year)
        let three = AgeGrouping::Three.group_probs(&fine);
        assert_eq!(three, vec![0.25, 0.5, 0.25]);
        let ten = AgeGrouping::Ten.group_probs(&fine);
        assert!((ten.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(ten[AgeGrouping::Ten.group_of(30)], 0.5);
        assert!((expected_years(&fine) - (0.5 * 30.0 + 0.25 * 60.0 + 0.25 * 1.0)).abs() < 1e-4);
        assert_eq!(fine_bin_of(116), FINE_AGE_BINS - 1);
        assert!(expected_years(&[0.0; 3]).is_nan());
    }

    #[test]
    fn median_age_interpolates_inside_the_crossing_bin() {
        let mut fine = vec![0f32; FINE_AGE_BINS];
        // All mass on 30: the bin's middle.
        fine[fine_bin_of(30)] = 1.0;
        assert!((median_years(&fine) - 30.0).abs() < 1e-5);
        // A skewed child: 60 % at 5, 40 % spread far above. The mean is pulled to 11; the median
        // stays inside the year of 5 (5/6 of the way through it).
        let mut skewed = vec![0f32; FINE_AGE_BINS];
        skewed[fine_bin_of(5)] = 0.6;
        skewed[fine_bin_of(20)] = 0.4;
        assert!((expected_years(&skewed) - 11.0).abs() < 1e-4);
        assert!((median_years(&skewed) - (4.5 + 0.5 / 0.6)).abs() < 1e-4);
        // Unnormalised input reads the same; half and half crosses at the top of the first.
        let halves: Vec<f32> = skewed.iter().map(|p| p * 3.0).collect();
        assert!((median_years(&halves) - median_years(&skewed)).abs() < 1e-4);
        let mut even = vec![0f32; FINE_AGE_BINS];
        even[fine_bin_of(10)] = 0.5;
        even[fine_bin_of(40)] = 0.5;
        assert!((median_years(&even) - 10.5).abs() < 1e-5);
        assert!(median_years(&[0.0; 3]).is_nan());
        assert!(median_years(&[f32::NAN; 3]).is_nan());
    }

    #[test]
    fn utkface_names_parse_and_malformed_ones_are_rejected() {
        assert_eq!(
            parse_utkface_name("26_1_2_20170116174525125.jpg.chip.jpg"),
            Ok(UtkLabels {
                age_years: 26,
                gender: 1,
                race: 2
            })
        );
        for bad in [
            "39_1_20170116174525125.jpg.chip.jpg", // two label fields
            "61_1_20170109150557335.jpg.chip.jpg",
            "x_1_2_2017.jpg.chip.jpg",
            "26_3_2_2017.jpg.chip.jpg",
            "26_1_7_2017.jpg.chip.jpg",
            "0_1_2_2017.jpg.chip.jpg",
            "26 _1_2_2017.jpg.chip.jpg",
        ] {
            assert!(parse_utkface_name(bad).is_err(), "{bad}");
        }
        let e = parse_utkface_name("26_1_x_1.jpg").unwrap_err();
        assert!(e.to_string().starts_with("26_1_x_1.jpg: race 'x'"), "{e}");
    }
}
