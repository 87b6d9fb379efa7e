//! When a second reader of gender and race (faceres, about 13 ms a face on one core, against about 1 ms
//! for the attribute model) looks at a person's face. Reading every face of every frame would cost
//! 1080p its real time; a person's gender does not change, and what decides it is how well the
//! clearest few faces are read. So the second reader reads a track's face only once the track is a
//! person, only when the face shows a face clearly, and then only the first clear face, a face
//! clearly more readable than every one read before (nearer, or more frontal), or, now and then,
//! a new look (a person who stays in view turns, moves nearer); never more than a few per track.
//! A person seen only half-turned is read too: faceres reads such faces well, and its readings
//! of a track are weighed among themselves (see [`super::estimate`]).

use super::estimate::readability;
use super::evidence::shows_a_face;
use crate::detect::Face;

/// Reads per track at most.
pub const MAX_READS: u32 = 6;
/// How much more readable ([`readability`]) than the best face read so far a face must be to be
/// read before [`REREAD_MS`] has passed.
pub const BETTER_BY: f64 = 1.5;
/// Time after a read when any clear face of the track may be read again, ms.
pub const REREAD_MS: f64 = 1000.0;
/// Faces of one frame read at most: a crowd walking in is read over a few frames, not in one
/// long stall of the track stage.
pub const MAX_PER_FRAME: usize = 4;

/// What has been read of one track.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecondReads {
    reads: u32,
    /// Readability of the most readable face read so far.
    best: f64,
    last_pts_ms: f64,
}

impl SecondReads {
    /// Whether `face` of this track, a person's, at `pts_ms`, is worth reading; its readability
    /// when it is.
    pub fn wants(&self, face: &Face, pts_ms: f64) -> Option<f64> {
        if self.reads >= MAX_READS || !shows_a_face(face) {
            return None;
        }
        let weight = readability(face);
        let first = self.reads == 0;
        let better = weight >= BETTER_BY * self.best;
        let again = pts_ms - self.last_pts_ms >= REREAD_MS;
        (first || better || again).then_some(weight)
    }

    /// A face of readability `weight` was read at `pts_ms`.
    pub fn read(&mut self, weight: f64, pts_ms: f64) {
        self.reads += 1;
        self.best = self.best.max(weight);
        self.last_pts_ms = pts_ms;
    }

    /// Faces read so far.
    pub fn reads(&self) -> u32 {
        self.reads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frontal face `side` pixels wide (landmarks as O-Net places them), turned by `turn`
    /// (0 frontal; 0.25 moves the nose halfway to an eye).
    fn face(side: f32, turn: f32) -> Face {
        let at = |u: f32, v: f32| [u * side, v * side * 1.2];
        Face {
            bbox: [0.0, 0.0, side, side * 1.2],
            score: 0.99,
            landmarks: [
                at(0.3, 0.375),
                at(0.7, 0.375),
                at(0.5 + 0.4 * turn, 0.58),
                at(0.35, 0.79),
                at(0.65, 0.79),
            ],
        }
    }

    /// The first clear face is read; then only a clearly better one, or any clear one after
    /// [`REREAD_MS`]; never more than [`MAX_READS`].
    #[test]
    fn a_track_is_read_on_its_first_clear_face_then_sparingly() {
        let mut reads = SecondReads::default();
        let small = face(40.0, 0.0);
        let w = reads
            .wants(&small, 0.0)
            .expect("the first clear face is read");
        reads.read(w, 0.0);
        assert_eq!(reads.wants(&small, 40.0), None, "the same look, at once");
        assert_eq!(
            reads.wants(&face(48.0, 0.0), 80.0),
            None,
            "a little larger is not enough"
        );
        let near = reads
            .wants(&face(80.0, 0.0), 120.0)
            .expect("twice as large");
        reads.read(near, 120.0);
        assert_eq!(reads.wants(&small, 1000.0), None);
        assert!(reads.wants(&small, 1120.0).is_some(), "a new look later");
        for i in 0..(MAX_READS - 2) {
            let at = 2000.0 * f64::from(i + 1);
            reads.read(reads.wants(&small, at).expect("time has passed"), at);
        }
        assert_eq!(reads.reads(), MAX_READS);
        assert_eq!(reads.wants(&face(400.0, 0.0), 1e9), None, "enough reads");
    }

    /// A half-turned face is read first when it is all there is, and a frontal one after it is
    /// clearly more readable; spots that do not show a face are never read.
    #[test]
    fn turned_faces_are_read_until_better_ones_come_and_non_faces_never() {
        let mut reads = SecondReads::default();
        let turned = face(80.0, 0.5);
        let w = reads.wants(&turned, 0.0).expect("all there is");
        reads.read(w, 0.0);
        assert!(reads.wants(&face(80.0, 0.0), 40.0).is_some(), "frontal now");
        let mut neck = face(80.0, 0.0);
        neck.landmarks = [[40.0, 48.0]; 5];
        assert_eq!(SecondReads::default().wants(&neck, 0.0), None);
        let mut unsure = face(80.0, 0.0);
        unsure.score = 0.8;
        assert_eq!(SecondReads::default().wants(&unsure, 0.0), None);
    }
}
