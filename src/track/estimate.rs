//! A track's steady attributes: the faces' probabilities, accumulated with a weight per face, so a
//! label does not flicker from frame to frame while a new track still reports its first reading.
//!
//! The rule: a face's weight is how readable it is: its detection score times the square root of
//! its box area (bigger, surer faces count more; a face twice as wide counts twice) times how
//! frontal it is, from its landmarks (a profile counts a tenth of a frontal face), and the estimate
//! is the weighted mean of the fine-age, gender and race probabilities of the track's faces so far.
//!
//! A second reader of gender and race (faceres, read on a few of the track's clearest faces) keeps
//! its own weighted means; the track's gender and race are then the mean of the two models' means,
//! each model's reading of the track counting alike however many faces each one read.

use crate::detect::Face;
use crate::model::readout::Prediction;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimate {
    sums: Option<Sums>,
    weight: f64,
    faces: u64,
    /// The second reader's weighted sum of P(male) and its weight.
    second_male: Option<(f64, f64)>,
    /// The second reader's weighted sums of race probabilities and their weight.
    second_race: Option<(Vec<f64>, f64)>,
}

/// Weighted sums of a track's probabilities, in f64: an hour of a large face at 25 fps sums past
/// 2^24, where an f32 sum would drop each new face's share.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sums {
    age_fine: Vec<f64>,
    gender: Vec<f64>,
    race: Vec<f64>,
}

/// The weight of one face: detection score × √(box area).
pub fn face_weight(bbox: [f32; 4], score: f32) -> f64 {
    let area = f64::from((bbox[2] - bbox[0]).max(0.0)) * f64::from((bbox[3] - bbox[1]).max(0.0));
    f64::from(score.clamp(0.0, 1.0)) * area.sqrt()
}

/// Least weight of a face turned fully away from frontal, relative to a frontal one.
const PROFILE_WEIGHT: f64 = 0.1;

/// How frontal a face is, from its landmarks: 1 when the nose sits midway between the eyes, down
/// to [`PROFILE_WEIGHT`] when it sits at (or beyond) an eye, as in a profile; also the least when
/// the eyes fall on one spot.
pub fn frontalness(face: &Face) -> f64 {
    let [left_eye, right_eye, nose, _, _] = face.landmarks.map(|p| p.map(f64::from));
    let eye_line = [right_eye[0] - left_eye[0], right_eye[1] - left_eye[1]];
    let eye_gap = eye_line[0].hypot(eye_line[1]);
    // Also catches NaN.
    if eye_gap.partial_cmp(&1e-3) != Some(std::cmp::Ordering::Greater) {
        return PROFILE_WEIGHT;
    }
    let eyes = [
        (left_eye[0] + right_eye[0]) / 2.0,
        (left_eye[1] + right_eye[1]) / 2.0,
    ];
    // The nose's offset along the eye line, in eye gaps: 0 frontal, ±0.5 at an eye.
    let offset = ((nose[0] - eyes[0]) * eye_line[0] + (nose[1] - eyes[1]) * eye_line[1])
        / (eye_gap * eye_gap);
    (1.0 - 2.0 * offset.abs()).clamp(PROFILE_WEIGHT, 1.0)
}

/// The weight of one face in its track's estimate: [`face_weight`] × [`frontalness`].
pub fn readability(face: &Face) -> f64 {
    face_weight(face.bbox, face.score) * frontalness(face)
}

impl Estimate {
    /// Adds one face's prediction with weight `weight` (ignored when not positive).
    pub fn add(&mut self, p: &Prediction, weight: f64) {
        if weight.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return;
        }
        let weighted = |v: &[f32]| v.iter().map(|x| f64::from(*x) * weight).collect();
        match &mut self.sums {
            None => {
                self.sums = Some(Sums {
                    age_fine: weighted(&p.age_fine),
                    gender: weighted(&p.gender),
                    race: weighted(&p.race),
                })
            }
            Some(s) => {
                for (a, b) in [
                    (&mut s.age_fine, &p.age_fine),
                    (&mut s.gender, &p.gender),
                    (&mut s.race, &p.race),
                ] {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += f64::from(*y) * weight;
                    }
                }
            }
        }
        self.weight += weight;
        self.faces += 1;
    }

    /// Adds the second reader's probability that one face is a man's, with weight `weight`
    /// (ignored when not positive, or when the probability is not one).
    pub fn add_second_male(&mut self, male: f32, weight: f64) {
        if weight.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || !(0.0..=1.0).contains(&male)
        {
            return;
        }
        let (sum, total) = self.second_male.get_or_insert((0.0, 0.0));
        *sum += f64::from(male) * weight;
        *total += weight;
    }

    /// Adds the second reader's race probabilities of one face, with weight `weight` (ignored
    /// when not positive, or when any is not a probability).
    pub fn add_second_race(&mut self, race: &[f32], weight: f64) {
        if weight.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || race.is_empty()
            || race.iter().any(|p| !(0.0..=1.0).contains(p))
        {
            return;
        }
        let (sums, total) = self
            .second_race
            .get_or_insert_with(|| (vec![0.0; race.len()], 0.0));
        if sums.len() != race.len() {
            return;
        }
        for (s, p) in sums.iter_mut().zip(race) {
            *s += f64::from(*p) * weight;
        }
        *total += weight;
    }

    /// Adds everything `other` has counted (another track of the same person).
    pub fn absorb(&mut self, other: &Estimate) {
        if let Some(o) = &other.sums {
            match &mut self.sums {
                None => self.sums = Some(o.clone()),
                Some(s) => {
                    for (a, b) in [
                        (&mut s.age_fine, &o.age_fine),
                        (&mut s.gender, &o.gender),
                        (&mut s.race, &o.race),
                    ] {
                        for (x, y) in a.iter_mut().zip(b) {
                            *x += y;
                        }
                    }
                }
            }
            self.weight += other.weight;
            self.faces += other.faces;
        }
        if let Some((sum, total)) = other.second_male {
            let mine = self.second_male.get_or_insert((0.0, 0.0));
            mine.0 += sum;
            mine.1 += total;
        }
        if let Some((sums, total)) = &other.second_race {
            let mine = self
                .second_race
                .get_or_insert_with(|| (vec![0.0; sums.len()], 0.0));
            if mine.0.len() == sums.len() {
                for (a, b) in mine.0.iter_mut().zip(sums) {
                    *a += b;
                }
                mine.1 += total;
            }
        }
    }

    /// Which of the second reader's gender and race are in the means.
    pub fn read_twice(&self) -> crate::model::calibration::ReadTwice {
        crate::model::calibration::ReadTwice {
            gender: self.second_male.is_some()
                && self.sums.as_ref().is_some_and(|s| s.gender.len() == 2),
            race: self
                .second_race
                .as_ref()
                .zip(self.sums.as_ref())
                .is_some_and(|((v, _), s)| v.len() == s.race.len()),
        }
    }

    /// Faces counted so far.
    pub fn faces(&self) -> u64 {
        self.faces
    }

    /// The weighted mean so far (`None` before the first face), its gender and race averaged with
    /// the second reader's means when there are some.
    pub fn current(&self) -> Option<Prediction> {
        let s = self.sums.as_ref()?;
        let scale = |v: &[f64]| v.iter().map(|x| (x / self.weight) as f32).collect();
        let mut gender: Vec<f32> = scale(&s.gender);
        if let (Some((sum, total)), 2) = (self.second_male, gender.len()) {
            // GENDER_LABELS: male, female.
            let male = 0.5 * (f64::from(gender[0]) + sum / total);
            gender = vec![male as f32, (1.0 - male) as f32];
        }
        let mut race: Vec<f32> = scale(&s.race);
        if let Some((sums, total)) = self
            .second_race
            .as_ref()
            .filter(|(v, _)| v.len() == race.len())
        {
            for (r, s) in race.iter_mut().zip(sums) {
                *r = (0.5 * (f64::from(*r) + s / total)) as f32;
            }
        }
        Some(Prediction {
            age_fine: scale(&s.age_fine),
            gender,
            race,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(gender_female: f32) -> Prediction {
        Prediction {
            age_fine: vec![0.5, 0.5],
            gender: vec![1.0 - gender_female, gender_female],
            race: vec![1.0],
        }
    }

    #[test]
    fn the_first_face_is_reported_at_once_and_later_ones_are_weighed() {
        let mut e = Estimate::default();
        assert!(e.current().is_none());
        e.add(&p(0.9), 1.0);
        let g = e.current().unwrap().gender;
        assert!(
            (g[0] - 0.1).abs() < 1e-6 && (g[1] - 0.9).abs() < 1e-6,
            "{g:?}"
        );
        // A small blurry face reading "male" barely moves a well-seen "female".
        e.add(&p(0.2), 0.1);
        let g = e.current().unwrap().gender;
        assert!(g[1] > 0.8 && (g[0] + g[1] - 1.0).abs() < 1e-6, "{g:?}");
        e.add(&p(0.0), 0.0);
        assert_eq!(e.faces(), 2, "weightless faces are not counted");
    }

    /// The second reader's mean counts as much as the model's, whatever the number of faces
    /// each read; age and race stay the model's.
    #[test]
    fn a_second_reading_of_gender_is_averaged_model_for_model() {
        let mut e = Estimate::default();
        e.add_second_male(1.0, 1.0);
        assert!(e.current().is_none(), "no model reading yet");
        for _ in 0..10 {
            e.add(&p(0.8), 2.0);
        }
        e.add_second_male(0.6, 3.0);
        // Model: P(male) 0.2; second reader: (1.0 × 1 + 0.6 × 3) / 4 = 0.7.
        let now = e.current().unwrap();
        assert!((now.gender[0] - 0.45).abs() < 1e-6, "{:?}", now.gender);
        assert!((now.gender[1] - 0.55).abs() < 1e-6, "{:?}", now.gender);
        assert_eq!((now.age_fine, now.race), (vec![0.5, 0.5], vec![1.0]));
        // Weightless or impossible readings change nothing.
        e.add_second_male(0.0, 0.0);
        e.add_second_male(f32::NAN, 1.0);
        e.add_second_male(1.5, 1.0);
        assert!((e.current().unwrap().gender[0] - 0.45).abs() < 1e-6);
    }

    /// With a second reading of race, the track's race is the mean of the two models' means;
    /// readings that are not probabilities, or of another length, change nothing.
    #[test]
    fn a_second_reading_of_race_is_averaged_model_for_model() {
        let mut e = Estimate::default();
        let q = |race: Vec<f32>| Prediction { race, ..p(0.5) };
        e.add(&q(vec![0.8, 0.2]), 1.0);
        e.add(&q(vec![0.6, 0.4]), 1.0);
        e.add_second_race(&[0.0, 1.0], 1.0);
        e.add_second_race(&[0.4, 0.6], 3.0);
        // Model: 0.7 / 0.3; second reader: (0 + 1.2) / 4 = 0.3 / 0.7.
        let race = e.current().unwrap().race;
        assert!(
            (race[0] - 0.5).abs() < 1e-6 && (race[1] - 0.5).abs() < 1e-6,
            "{race:?}"
        );
        e.add_second_race(&[f32::NAN, 1.0], 1.0);
        e.add_second_race(&[0.1, 0.2, 0.7], 1.0);
        e.add_second_race(&[1.0, 0.0], 0.0);
        assert_eq!(e.current().unwrap().race, race);
        // Merged into another track's estimate, it counts there the same.
        let mut other = Estimate::default();
        other.absorb(&e);
        assert_eq!(other.current().unwrap().race, race);
    }

    /// Two tracks of one person merged: the sums, weights and faces of both, the second
    /// reader's readings too.
    #[test]
    fn a_merged_estimate_is_the_estimate_of_all_the_faces() {
        let (mut a, mut b, mut all) = (
            Estimate::default(),
            Estimate::default(),
            Estimate::default(),
        );
        for (e, female, w) in [(&mut a, 0.9, 2.0), (&mut b, 0.3, 1.0)] {
            e.add(&p(female), w);
            all.add(&p(female), w);
        }
        b.add_second_male(0.8, 1.0);
        all.add_second_male(0.8, 1.0);
        a.absorb(&b);
        assert_eq!(a.faces(), 2);
        assert!(a.read_twice().gender && !a.read_twice().race);
        let (merged, whole) = (a.current().unwrap(), all.current().unwrap());
        for (x, y) in merged.gender.iter().zip(&whole.gender) {
            assert!((x - y).abs() < 1e-6, "{merged:?} {whole:?}");
        }
        let mut empty = Estimate::default();
        empty.absorb(&Estimate::default());
        assert!(empty.current().is_none());
    }

    /// An hour-long track of a large face (25 fps, a 400-pixel face): the weighted sums pass
    /// 2^24, where an f32 sum no longer moves by a small face's share, and the mean must not drift.
    #[test]
    fn an_hour_long_track_keeps_its_mean() {
        let mut e = Estimate::default();
        let big = face_weight([0.0, 0.0, 400.0, 400.0], 0.99);
        let small = face_weight([0.0, 0.0, 24.0, 24.0], 0.9);
        let faces = 25 * 3600;
        for i in 0..faces {
            if i % 2 == 0 {
                e.add(&p(0.93), big);
            } else {
                e.add(&p(0.61), small);
            }
        }
        let half = f64::from(faces / 2);
        let female = (0.93 * big + 0.61 * small) * half / ((big + small) * half);
        let g = e.current().unwrap().gender;
        assert!(
            (f64::from(g[1]) - female).abs() < 1e-5,
            "{} vs {female}",
            g[1]
        );
        assert!((g[0] + g[1] - 1.0).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn weights_follow_score_and_size() {
        assert_eq!(face_weight([0.0, 0.0, 10.0, 10.0], 1.0), 10.0);
        assert_eq!(face_weight([0.0, 0.0, 20.0, 20.0], 0.5), 10.0);
        assert_eq!(face_weight([5.0, 5.0, 5.0, 9.0], 1.0), 0.0);
    }

    fn face(nose_x: f32) -> Face {
        Face {
            bbox: [0.0, 0.0, 100.0, 120.0],
            score: 1.0,
            landmarks: [
                [30.0, 45.0],
                [70.0, 45.0],
                [nose_x, 70.0],
                [35.0, 95.0],
                [65.0, 95.0],
            ],
        }
    }

    /// A frontal face counts fully, a half-turned one half, a profile a tenth; the weight follows
    /// the eye line when the head is tilted.
    #[test]
    fn profiles_count_less_than_frontal_faces() {
        assert_eq!(frontalness(&face(50.0)), 1.0);
        assert!((frontalness(&face(60.0)) - 0.5).abs() < 1e-9);
        assert_eq!(frontalness(&face(70.0)), PROFILE_WEIGHT);
        assert_eq!(frontalness(&face(90.0)), PROFILE_WEIGHT);
        let mut one_spot = face(50.0);
        one_spot.landmarks = [[50.0, 50.0]; 5];
        assert_eq!(frontalness(&one_spot), PROFILE_WEIGHT);
        // Tilted 90°: the eyes one above the other, the nose midway beside them.
        let mut tilted = face(50.0);
        tilted.landmarks[0] = [40.0, 30.0];
        tilted.landmarks[1] = [40.0, 70.0];
        tilted.landmarks[2] = [60.0, 50.0];
        assert_eq!(frontalness(&tilted), 1.0);
        assert!(
            (readability(&face(60.0)) - 0.5 * face_weight([0.0, 0.0, 100.0, 120.0], 1.0)).abs()
                < 1e-9
        );
    }
}
