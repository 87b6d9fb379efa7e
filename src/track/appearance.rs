//! What a person looks like, to give them back their id: when a person passes behind another or
//! is missed for a moment and the tracker's predicted box no longer meets their face, their face
//! starts a new track; if it looks like a person lost in the last `max_lost_ms` (faceres's face
//! descriptor, a MobileNet trained to tell VGGFace2's identities apart), the lost track takes it
//! over and the person keeps their id.
//!
//! A person out of view longer than that (`[track] reentry_ms`, away) may come back anywhere: a
//! face is theirs only when it is more alike ([`SAME_PERSON_AWAY`]).
//!
//! Measured with faceres's 1,024-d descriptor, unit length, cosine similarity: on 60 UTKFace
//! chips against copies shrunk to 80 px and saved as JPEG at quality 40, the same face scored
//! 0.88–0.99 and different faces at most 0.74 (median 0.38); on the Hamilton clip, one man's faces
//! in two shots 0.65–0.73 (means of several reads), different people at most 0.57. Hence
//! [`SAME_PERSON`], and a margin over the next best, so two lost people who look alike are
//! not confused.

/// Least cosine similarity of a face to a lost person's mean descriptor to be that person.
pub const SAME_PERSON: f32 = 0.6;
/// The same for a person away (out of view longer than `max_lost_ms`, anywhere in the frame).
pub const SAME_PERSON_AWAY: f32 = 0.7;
/// A face less like a person found again by place than this is someone else's. On the harder
/// synthetic scene (`scene::moving`), the faces given to the right person at such moments measured
/// at least 0.515 (partly hidden faces read worse than whole ones), and every one below 0.5 that
/// could be told was someone else's.
pub const DIFFERENT_PERSON: f32 = 0.45;
/// How much more alike the best lost person must be than the next best.
pub const MARGIN: f32 = 0.05;

/// The sum of a person's unit descriptors (their mean's direction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Appearance {
    sum: Vec<f32>,
    reads: u32,
}

impl Appearance {
    /// Adds one face's descriptor (made unit length here; ignored when empty, zero, of another
    /// length than those before, or not finite).
    pub fn add(&mut self, descriptor: &[f32]) {
        let Some(unit) = unit(descriptor) else {
            return;
        };
        if self.sum.is_empty() {
            self.sum = unit;
        } else if self.sum.len() == unit.len() {
            for (s, u) in self.sum.iter_mut().zip(unit) {
                *s += u;
            }
        } else {
            return;
        }
        self.reads += 1;
    }

    /// Whether any descriptor was added.
    pub fn known(&self) -> bool {
        self.reads > 0
    }

    /// Cosine similarity of `descriptor` to the mean descriptor (0 when either is unknown).
    pub fn similarity(&self, descriptor: &[f32]) -> f32 {
        self.compare(descriptor).unwrap_or(0.0)
    }

    /// Cosine similarity of `descriptor` to the mean descriptor, or `None` when they cannot be
    /// compared (either unknown, zero, not finite, or their lengths differ).
    pub fn compare(&self, descriptor: &[f32]) -> Option<f32> {
        match (unit(&self.sum), unit(descriptor)) {
            (Some(a), Some(b)) if a.len() == b.len() => {
                Some(a.iter().zip(&b).map(|(x, y)| x * y).sum())
            }
            _ => None,
        }
    }

    /// Adds every descriptor of `other`.
    pub fn absorb(&mut self, other: &Appearance) {
        if !other.known() {
            return;
        }
        if !self.known() {
            *self = other.clone();
        } else if self.sum.len() == other.sum.len() {
            for (s, o) in self.sum.iter_mut().zip(&other.sum) {
                *s += o;
            }
            self.reads += other.reads;
        }
    }
}

fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm.is_finite() && norm > 1e-12).then(|| v.iter().map(|x| x / norm).collect())
}

/// Which of `candidates` (id, appearance, the least similarity to be them) `descriptor` belongs
/// to: the most similar, if it reaches its least similarity and beats the next by [`MARGIN`].
pub fn best_match<'a>(
    candidates: impl IntoIterator<Item = (u64, &'a Appearance, f32)>,
    descriptor: &[f32],
) -> Option<u64> {
    let mut scored: Vec<(u64, f32, f32)> = candidates
        .into_iter()
        .filter(|(_, a, _)| a.known())
        .map(|(id, a, least)| (id, a.similarity(descriptor), least))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (id, best, least) = *scored.first()?;
    let next = scored.get(1).map_or(f32::NEG_INFINITY, |s| s.1);
    (best >= least && best - next >= MARGIN).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appearance(descriptors: &[&[f32]]) -> Appearance {
        let mut a = Appearance::default();
        for d in descriptors {
            a.add(d);
        }
        a
    }

    #[test]
    fn the_mean_direction_is_compared_whatever_the_lengths() {
        let a = appearance(&[&[2.0, 0.0], &[0.0, 5.0]]);
        // Mean direction (1, 1)/√2.
        assert!((a.similarity(&[1.0, 1.0]) - 1.0).abs() < 1e-6);
        assert!((a.similarity(&[1.0, 0.0]) - 0.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(a.similarity(&[0.0, 0.0]), 0.0);
        assert_eq!(a.similarity(&[1.0, 0.0, 0.0]), 0.0, "another length");
        let mut b = Appearance::default();
        b.add(&[f32::NAN, 1.0]);
        b.add(&[]);
        assert!(!b.known());
        b.absorb(&a);
        assert_eq!(b, a);
    }

    /// The most similar lost person, only when similar enough and clearly ahead of the next.
    #[test]
    fn a_face_goes_to_the_clearly_most_similar_person() {
        let anna = appearance(&[&[1.0, 0.0, 0.0]]);
        let bert = appearance(&[&[0.0, 1.0, 0.0]]);
        let unknown = Appearance::default();
        let people = || {
            [
                (1, &anna, SAME_PERSON),
                (2, &bert, SAME_PERSON),
                (3, &unknown, SAME_PERSON),
            ]
        };
        assert_eq!(best_match(people(), &[0.9, 0.2, 0.1]), Some(1));
        assert_eq!(best_match(people(), &[0.1, 0.9, 0.2]), Some(2));
        // Like neither.
        assert_eq!(best_match(people(), &[0.1, 0.1, 1.0]), None);
        // Like both alike.
        assert_eq!(best_match(people(), &[1.0, 1.0, 0.1]), None);
        assert_eq!(
            best_match([(3, &unknown, SAME_PERSON)], &[1.0, 0.0, 0.0]),
            None
        );
        // Similar enough to be lost, not to be away.
        let like = [0.65, 0.76, 0.0];
        assert_eq!(best_match([(1, &anna, SAME_PERSON)], &like), Some(1));
        assert_eq!(best_match([(1, &anna, SAME_PERSON_AWAY)], &like), None);
    }
}
