//! Evidence that a detection is a face: what makes a track a person. MTCNN's O-Net also fires,
//! now and then, on the back of a neck, a hand, a shoe or a print on a shirt; such a spot seldom
//! gives a confident detection whose five landmarks sit as a face's do. A track becomes a person
//! only after [`TrackConfig::min_face_frames`](super::TrackConfig::min_face_frames) frames that
//! show a face so (measured on the real-footage yardstick: every phantom person there had none,
//! every person seen clearly had many).

use crate::detect::Face;

/// O-Net confidence a face must reach to count as evidence.
pub const EVIDENCE_SCORE: f32 = 0.95;

/// Whether `face` shows a face clearly: a confident detection whose landmarks sit as a face's
/// do, upright within 60°: the eyes apart by 20 % to 80 % of the box's width, the mouth below
/// the eyes by 20 % to 75 % of its height, the nose between them.
pub fn shows_a_face(face: &Face) -> bool {
    // Also refuses NaN.
    if face
        .score
        .partial_cmp(&EVIDENCE_SCORE)
        .is_none_or(|o| o.is_lt())
    {
        return false;
    }
    let [left_eye, right_eye, nose, mouth_left, mouth_right] = face.landmarks;
    let mid = |a: [f32; 2], b: [f32; 2]| [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
    let (eyes, mouth) = (mid(left_eye, right_eye), mid(mouth_left, mouth_right));
    let down = [mouth[0] - eyes[0], mouth[1] - eyes[1]];
    let eyes_to_mouth = down[0].hypot(down[1]);
    let [x1, y1, x2, y2] = face.bbox;
    let (width, height) = (x2 - x1, y2 - y1);
    if !(eyes_to_mouth > 0.0 && width > 0.0 && height > 0.0) {
        return false;
    }
    // Upright within 60°: the mouth is below the eyes.
    let upright = down[1] >= 0.5 * eyes_to_mouth;
    // Where the nose falls along the line from the eyes to the mouth (0 at the eyes, 1 at it).
    let along = ((nose[0] - eyes[0]) * down[0] + (nose[1] - eyes[1]) * down[1])
        / (eyes_to_mouth * eyes_to_mouth);
    let eye_gap = (right_eye[0] - left_eye[0]).hypot(right_eye[1] - left_eye[1]);
    upright
        && (0.15..1.0).contains(&along)
        && (0.2 * height..0.75 * height).contains(&eyes_to_mouth)
        && (0.2 * width..0.8 * width).contains(&eye_gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frontal face in a 100×120 box, as O-Net places its landmarks.
    fn frontal() -> Face {
        Face {
            bbox: [0.0, 0.0, 100.0, 120.0],
            score: 0.99,
            landmarks: [
                [30.0, 45.0],
                [70.0, 45.0],
                [50.0, 70.0],
                [35.0, 95.0],
                [65.0, 95.0],
            ],
        }
    }

    #[test]
    fn a_clear_frontal_face_is_evidence() {
        assert!(shows_a_face(&frontal()));
    }

    #[test]
    fn a_weak_detection_is_not() {
        let face = Face {
            score: 0.9,
            ..frontal()
        };
        assert!(!shows_a_face(&face));
        assert!(!shows_a_face(&Face {
            score: f32::NAN,
            ..frontal()
        }));
    }

    /// Landmarks no face has: upside down, the nose above the eyes, the eyes on one spot, the
    /// mouth at the eyes' height; and a box of no size.
    #[test]
    fn landmarks_out_of_place_are_not() {
        let mut upside_down = frontal();
        for p in &mut upside_down.landmarks {
            p[1] = 120.0 - p[1];
        }
        let mut nose_above = frontal();
        nose_above.landmarks[2] = [50.0, 30.0];
        let mut one_eye = frontal();
        one_eye.landmarks[1] = [31.0, 45.0];
        let mut mouth_at_eyes = frontal();
        mouth_at_eyes.landmarks[3] = [35.0, 47.0];
        mouth_at_eyes.landmarks[4] = [65.0, 47.0];
        let no_box = Face {
            bbox: [10.0, 10.0, 10.0, 10.0],
            ..frontal()
        };
        for face in [upside_down, nose_above, one_eye, mouth_at_eyes, no_box] {
            assert!(!shows_a_face(&face), "{face:?}");
        }
    }

    /// A head tilted by 30° still shows a face.
    #[test]
    fn a_tilted_face_is_evidence() {
        let (s, c) = (30f32.to_radians().sin(), 30f32.to_radians().cos());
        let mut tilted = frontal();
        for p in &mut tilted.landmarks {
            let (x, y) = (p[0] - 50.0, p[1] - 60.0);
            *p = [50.0 + c * x - s * y, 60.0 + s * x + c * y];
        }
        assert!(shows_a_face(&tilted));
    }
}
