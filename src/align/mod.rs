//! Face alignment: a least-squares similarity transform from the five MTCNN landmarks to a canonical
//! template, and a bilinear warp to a square crop.
//!
//! This is the one place the template and crop size are defined: the attribute model and its trainer
//! use this code, so training and serving see identical crops.

use serde::{Deserialize, Serialize};

/// Landmark template (left eye, right eye, nose, left mouth corner, right mouth corner) in a unit
/// square. These are the widely used ArcFace 112×112 positions divided by 112.
pub const TEMPLATE_UNIT: [[f32; 2]; 5] = [
    [38.2946 / 112.0, 51.6963 / 112.0],
    [73.5318 / 112.0, 51.5014 / 112.0],
    [56.0252 / 112.0, 71.7366 / 112.0],
    [41.5493 / 112.0, 92.3655 / 112.0],
    [70.7299 / 112.0, 92.2041 / 112.0],
];

/// Default side of the aligned crop in pixels.
pub const DEFAULT_CROP_PX: u32 = 112;
/// Default margin added around the template on each side, as a fraction of the template square:
/// attributes such as age and gender need some hair and jaw, not only the inner face.
pub const DEFAULT_MARGIN: f32 = 0.2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignConfig {
    /// Side of the square crop, pixels.
    pub crop_px: u32,
    /// Margin around the template on each side, as a fraction of the template square.
    pub margin: f32,
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self {
            crop_px: DEFAULT_CROP_PX,
            margin: DEFAULT_MARGIN,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct AlignError(#[from] pub crate::limits::RangeError);

impl AlignConfig {
    pub fn validate(&self) -> Result<(), AlignError> {
        use crate::limits::Setting;
        Setting::in_section("align", "crop_px").check(self.crop_px, 8, 1024, "pixels")?;
        Setting::key("margin").check(self.margin, 0.0, 2.0, "")?;
        Ok(())
    }

    /// The template in crop pixels.
    pub fn template_in_crop(&self) -> [[f32; 2]; 5] {
        let side = self.crop_px as f32;
        let shrink = 1.0 / (1.0 + 2.0 * self.margin);
        TEMPLATE_UNIT.map(|[x, y]| {
            [
                ((x - 0.5) * shrink + 0.5) * side,
                ((y - 0.5) * shrink + 0.5) * side,
            ]
        })
    }
}

/// A similarity transform `p' = [[a, −b], [b, a]] · p + t` (rotation, uniform scale, translation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub a: f32,
    pub b: f32,
    pub tx: f32,
    pub ty: f32,
}

impl Similarity {
    pub fn apply(&self, [x, y]: [f32; 2]) -> [f32; 2] {
        [
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        ]
    }

    /// Scale factor of the transform.
    pub fn scale(&self) -> f32 {
        self.a.hypot(self.b)
    }

    /// The inverse transform; `None` for a degenerate (zero-scale) one.
    pub fn inverse(&self) -> Option<Similarity> {
        let det = self.a * self.a + self.b * self.b;
        if det.is_nan() || det <= f32::EPSILON || !det.is_finite() {
            return None;
        }
        let (a, b) = (self.a / det, -self.b / det);
        Some(Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }

    /// Least-squares similarity mapping `src` points onto `dst` points (the closed form of Umeyama's
    /// method without reflection). `None` when the source points coincide.
    pub fn estimate(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Similarity> {
        let n = src.len().min(dst.len());
        if n < 2 {
            return None;
        }
        let mean = |pts: &[[f32; 2]]| {
            let (sx, sy) = pts[..n].iter().fold((0f64, 0f64), |(sx, sy), p| {
                (sx + p[0] as f64, sy + p[1] as f64)
            });
            (sx / n as f64, sy / n as f64)
        };
        let (sxm, sym) = mean(src);
        let (dxm, dym) = mean(dst);
        let (mut num_a, mut num_b, mut den) = (0f64, 0f64, 0f64);
        for (s, d) in src[..n].iter().zip(&dst[..n]) {
            let (x, y) = (s[0] as f64 - sxm, s[1] as f64 - sym);
            let (u, v) = (d[0] as f64 - dxm, d[1] as f64 - dym);
            num_a += x * u + y * v;
            num_b += x * v - y * u;
            den += x * x + y * y;
        }
        if den.is_nan() || den <= 1e-12 {
            return None;
        }
        let (a, b) = (num_a / den, num_b / den);
        Some(Similarity {
            a: a as f32,
            b: b as f32,
            tx: (dxm - (a * sxm - b * sym)) as f32,
            ty: (dym - (b * sxm + a * sym)) as f32,
        })
    }
}

/// `crop_from_frame` for a face: maps its landmarks onto the configured template.
pub fn crop_from_frame(landmarks: &[[f32; 2]; 5], config: &AlignConfig) -> Option<Similarity> {
    Similarity::estimate(landmarks, &config.template_in_crop())
}

/// Warps packed RGB8 `frame` (`width × height`) into a `side × side` crop with bilinear sampling;
/// pixels from outside the frame are black.
pub fn warp_rgb(
    frame: &[u8],
    width: usize,
    height: usize,
    crop_from_frame: &Similarity,
    side: usize,
) -> Option<Vec<u8>> {
    let frame_from_crop = crop_from_frame.inverse()?;
    if frame.len() < width * height * 3 {
        return None;
    }
    let mut out = vec![0u8; side * side * 3];
    let fetch = |x: i64, y: i64, c: usize| -> f32 {
        if x < 0 || y < 0 || x >= width as i64 || y >= height as i64 {
            0.0
        } else {
            f32::from(frame[(y as usize * width + x as usize) * 3 + c])
        }
    };
    for v in 0..side {
        for u in 0..side {
            let [x, y] = frame_from_crop.apply([u as f32, v as f32]);
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            let (x0, y0) = (x.floor(), y.floor());
            let (fx, fy) = (x - x0, y - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for c in 0..3 {
                let top = fetch(x0, y0, c) * (1.0 - fx) + fetch(x0 + 1, y0, c) * fx;
                let bottom = fetch(x0, y0 + 1, c) * (1.0 - fx) + fetch(x0 + 1, y0 + 1, c) * fx;
                let value = top * (1.0 - fy) + bottom * fy;
                out[(v * side + u) * 3 + c] = value.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Some(out)
}

/// Aligns one face: the crop as packed RGB8 of `config.crop_px`², or `None` for degenerate landmarks.
pub fn align_face(
    frame: &[u8],
    width: usize,
    height: usize,
    landmarks: &[[f32; 2]; 5],
    config: &AlignConfig,
) -> Option<Vec<u8>> {
    let m = crop_from_frame(landmarks, config)?;
    warp_rgb(frame, width, height, &m, config.crop_px as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f32; 2], b: [f32; 2], tol: f32) -> bool {
        (a[0] - b[0]).abs() < tol && (a[1] - b[1]).abs() < tol
    }

    #[test]
    fn estimate_recovers_a_known_similarity_exactly() {
        let truth = Similarity {
            a: 0.8 * 0.3f32.cos(),
            b: 0.8 * 0.3f32.sin(),
            tx: 12.0,
            ty: -7.5,
        };
        let src = [
            [10.0, 20.0],
            [50.0, 22.0],
            [30.0, 40.0],
            [15.0, 60.0],
            [45.0, 61.0],
        ];
        let dst = src.map(|p| truth.apply(p));
        let est = Similarity::estimate(&src, &dst).unwrap();
        assert!((est.a - truth.a).abs() < 1e-5 && (est.b - truth.b).abs() < 1e-5);
        assert!((est.tx - truth.tx).abs() < 1e-3 && (est.ty - truth.ty).abs() < 1e-3);
        assert!((est.scale() - 0.8).abs() < 1e-5);
    }

    #[test]
    fn estimate_is_least_squares_under_noise() {
        // Symmetric noise around a pure translation averages out in the translation.
        let src = [
            [0.0, 0.0],
            [10.0, 0.0],
            [0.0, 10.0],
            [10.0, 10.0],
            [5.0, 5.0],
        ];
        let mut dst = src.map(|[x, y]| [x + 3.0, y + 4.0]);
        dst[0][0] += 0.5;
        dst[3][0] -= 0.5;
        let est = Similarity::estimate(&src, &dst).unwrap();
        let residual: f32 = src
            .iter()
            .zip(&dst)
            .map(|(s, d)| {
                let p = est.apply(*s);
                (p[0] - d[0]).powi(2) + (p[1] - d[1]).powi(2)
            })
            .sum();
        // The exact translation has residual 0.5; least squares can only do better or equal.
        assert!(residual <= 0.5 + 1e-4, "residual {residual}");
    }

    #[test]
    fn degenerate_points_give_none() {
        let same = [[5.0, 5.0]; 5];
        assert!(Similarity::estimate(&same, &TEMPLATE_UNIT).is_none());
    }

    #[test]
    fn inverse_round_trips() {
        let m = Similarity {
            a: 1.3,
            b: -0.4,
            tx: 5.0,
            ty: 9.0,
        };
        let inv = m.inverse().unwrap();
        for p in [[0.0, 0.0], [13.0, -2.0], [100.0, 50.0]] {
            assert!(close(inv.apply(m.apply(p)), p, 1e-3));
        }
    }

    #[test]
    fn landmarks_land_on_the_template() {
        let config = AlignConfig::default();
        let template = config.template_in_crop();
        // A face at 3× the template size, shifted: its landmarks must map onto the template.
        let landmarks = template.map(|[x, y]| [x * 3.0 + 100.0, y * 3.0 + 40.0]);
        let m = crop_from_frame(&landmarks, &config).unwrap();
        for (l, t) in landmarks.iter().zip(&template) {
            assert!(close(m.apply(*l), *t, 1e-3));
        }
    }

    #[test]
    fn identity_warp_copies_pixels_and_blacks_out_outside() {
        let (w, h) = (4usize, 3usize);
        let frame: Vec<u8> = (0..w * h * 3).map(|i| i as u8).collect();
        let id = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.0,
            ty: 0.0,
        };
        let crop = warp_rgb(&frame, w, h, &id, 5).unwrap();
        for v in 0..3 {
            for u in 0..4 {
                for c in 0..3 {
                    assert_eq!(crop[(v * 5 + u) * 3 + c], frame[(v * w + u) * 3 + c]);
                }
            }
        }
        assert_eq!(&crop[(4 * 5 + 4) * 3..], &[0, 0, 0]);
    }

    #[test]
    fn template_respects_margin_and_size() {
        let tight = AlignConfig {
            crop_px: 112,
            margin: 0.0,
        }
        .template_in_crop();
        assert!(close(tight[0], [38.2946, 51.6963], 1e-3));
        let loose = AlignConfig {
            crop_px: 112,
            margin: 0.5,
        }
        .template_in_crop();
        // With margin 0.5 the template shrinks by half around the centre.
        assert!(close(
            loose[0],
            [(38.2946 - 56.0) / 2.0 + 56.0, (51.6963 - 56.0) / 2.0 + 56.0],
            1e-3
        ));
        assert!(
            AlignConfig {
                crop_px: 4,
                margin: 0.0
            }
            .validate()
            .is_err()
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn point(range: f32) -> impl Strategy<Value = [f32; 2]> {
        [-range..range, -range..range]
    }

    proptest! {
        #[test]
        fn any_landmarks_give_a_whole_crop_or_none(
            landmarks in [point(1e30), point(1e30), point(1e30), point(1e30), point(1e30)],
            width in 0usize..48,
            height in 0usize..48,
            crop_px in 8u32..96,
            margin in 0f32..2.0,
        ) {
            let grey = vec![200u8; width * height * 3];
            let config = AlignConfig { crop_px, margin };
            if let Some(crop) = align_face(&grey, width, height, &landmarks, &config) {
                prop_assert_eq!(crop.len(), (crop_px * crop_px * 3) as usize);
                prop_assert!(crop.iter().all(|&v| v <= 200));
            }
        }

        #[test]
        fn faces_near_and_past_the_frame_edges_align(
            landmarks in [point(80.0), point(80.0), point(80.0), point(80.0), point(80.0)],
            width in 1usize..64,
            height in 1usize..64,
        ) {
            let grey = vec![200u8; width * height * 3];
            let config = AlignConfig::default();
            if let Some(crop) = align_face(&grey, width, height, &landmarks, &config) {
                prop_assert_eq!(crop.len(), (config.crop_px * config.crop_px * 3) as usize);
                prop_assert!(crop.iter().all(|&v| v <= 200));
            }
        }

        #[test]
        fn landmarks_of_a_moved_template_map_back_onto_it(
            scale in 0.05f32..20.0,
            angle in -3.1f32..3.1,
            tx in -2000f32..2000.0,
            ty in -2000f32..2000.0,
        ) {
            let config = AlignConfig::default();
            let template = config.template_in_crop();
            let frame_from_template = Similarity {
                a: scale * angle.cos(),
                b: scale * angle.sin(),
                tx,
                ty,
            };
            let landmarks = template.map(|p| frame_from_template.apply(p));
            let m = crop_from_frame(&landmarks, &config);
            prop_assert!(m.is_some());
            let m = m.unwrap_or(frame_from_template);
            for (p, t) in landmarks.iter().zip(template) {
                let q = m.apply(*p);
                prop_assert!((q[0] - t[0]).abs() < 0.05 && (q[1] - t[1]).abs() < 0.05,
                    "{:?} -> {:?}, want {:?}", p, q, t);
            }
            prop_assert!((m.scale() * scale - 1.0).abs() < 1e-3);
        }
    }
}
