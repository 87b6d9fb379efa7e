//! Scene cuts: in edited footage (a music video, a broadcast) the picture changes to another shot
//! from one frame to the next. A face in the new shot that happens to sit where a face of the old
//! one was is another person, so a cut ends every track and the frame is searched in full.
//!
//! The test: each frame's luma shrunk to a 32×18 thumbnail, normalised to zero mean and unit
//! spread (so lights switched on or a camera's exposure change is not a cut), and a cut when the
//! mean absolute difference from the previous frame's is at least [`CUT_LEVEL`]. On the real
//! clips of ../shared/data/video the three cuts of the Hamilton clip measure 0.77–0.90; within a
//! shot the most is 0.36 (fast motion near the camera), and 0.18 on the other clips.

/// Thumbnail size, cells.
const COLUMNS: usize = 32;
const ROWS: usize = 18;
/// Pixels sampled per cell side (a grid of 4×4 in each cell: enough for a mean).
const SAMPLES: usize = 4;
/// Least normalised difference of a cut.
pub const CUT_LEVEL: f32 = 0.6;
/// Spread of luma (levels of 255) below which a picture is taken as flat: differences are
/// measured against this spread instead of its own.
const MIN_SPREAD: f32 = 8.0;

/// A frame's normalised luma thumbnail.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail(Vec<f32>);

impl Thumbnail {
    /// The thumbnail of an RGB picture; `None` when it has no pixels (or too few bytes).
    pub fn of(rgb: &[u8], width: usize, height: usize) -> Option<Self> {
        if width == 0 || height == 0 || rgb.len() < width * height * 3 {
            return None;
        }
        let mut cells = Vec::with_capacity(COLUMNS * ROWS);
        for row in 0..ROWS {
            for column in 0..COLUMNS {
                let mut sum = 0u32;
                for sy in 0..SAMPLES {
                    // Sample points spread over the cell, clamped inside a small picture.
                    let y = ((row * SAMPLES + sy) * 2 + 1) * height / (ROWS * SAMPLES * 2);
                    for sx in 0..SAMPLES {
                        let x = ((column * SAMPLES + sx) * 2 + 1) * width / (COLUMNS * SAMPLES * 2);
                        let at = (y.min(height - 1) * width + x.min(width - 1)) * 3;
                        // Luma, integer BT.601 weights.
                        sum += (77 * u32::from(rgb[at])
                            + 150 * u32::from(rgb[at + 1])
                            + 29 * u32::from(rgb[at + 2]))
                            >> 8;
                    }
                }
                cells.push(sum as f32 / (SAMPLES * SAMPLES) as f32);
            }
        }
        let n = cells.len() as f32;
        let mean = cells.iter().sum::<f32>() / n;
        let spread = (cells.iter().map(|c| (c - mean).powi(2)).sum::<f32>() / n).sqrt();
        // A near-flat picture (a dark room, a wall, fog) is not stretched: its noise would
        // differ from frame to frame by as much as a cut.
        let scale = 1.0 / spread.max(MIN_SPREAD);
        Some(Self(
            cells.into_iter().map(|c| (c - mean) * scale).collect(),
        ))
    }

    /// The mean absolute difference of two thumbnails.
    pub fn difference(&self, other: &Self) -> f32 {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / self.0.len().max(1) as f32
    }

    /// Whether `self` follows `before` across a cut.
    pub fn is_cut_after(&self, before: &Self) -> bool {
        self.difference(before) >= CUT_LEVEL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 320×180 picture: a bright disc at `centre_x` on a horizontal gradient, lit by `gain`.
    fn picture(centre_x: f32, gain: f32, flip: bool) -> Vec<u8> {
        let (w, h) = (320usize, 180usize);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let gx = if flip { w - 1 - x } else { x };
                let mut v = 40.0 + 120.0 * gx as f32 / w as f32;
                if (x as f32 - centre_x).hypot(y as f32 - 90.0) < 40.0 {
                    v = 230.0;
                }
                let v = (v * gain).clamp(0.0, 255.0) as u8;
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        rgb
    }

    fn thumb(rgb: &[u8]) -> Thumbnail {
        Thumbnail::of(rgb, 320, 180).unwrap()
    }

    /// Another shot is a cut; the same shot with its subject moved a little, or its light
    /// halved, is not.
    #[test]
    fn another_shot_is_a_cut_motion_and_light_are_not() {
        let shot = thumb(&picture(100.0, 1.0, false));
        assert!(!thumb(&picture(108.0, 1.0, false)).is_cut_after(&shot));
        assert!(!thumb(&picture(100.0, 0.5, false)).is_cut_after(&shot));
        assert!(thumb(&picture(240.0, 1.0, true)).is_cut_after(&shot));
        assert_eq!(shot.difference(&shot), 0.0);
    }

    /// Two frames of a dark, near-flat room (levels 10–13 of noise): no cut, though stretched
    /// to unit spread they would differ as much as two shots.
    #[test]
    fn the_noise_of_a_near_flat_picture_is_not_a_cut() {
        let noise = |seed: u64| -> Vec<u8> {
            let mut x = seed;
            (0..320 * 180)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let v = 10 + (x % 4) as u8;
                    [v, v, v]
                })
                .collect()
        };
        let (a, b) = (thumb(&noise(1)), thumb(&noise(2)));
        assert!(!b.is_cut_after(&a), "{}", b.difference(&a));
    }

    #[test]
    fn empty_or_short_pictures_have_no_thumbnail_and_flat_ones_no_cut() {
        assert!(Thumbnail::of(&[], 0, 0).is_none());
        assert!(Thumbnail::of(&[0; 10], 320, 180).is_none());
        let black = Thumbnail::of(&[0; 4 * 4 * 3], 4, 4).unwrap();
        let grey = Thumbnail::of(&[128; 4 * 4 * 3], 4, 4).unwrap();
        assert!(!grey.is_cut_after(&black));
    }
}
