//! Augmentation of cached crops: a small random similarity (rotation, scale, shift) through the
//! alignment warp, a horizontal flip, colour jitter and, optionally, what video does to a face
//! (lower resolution, motion blur, compression artefacts, dark and noisy pictures); then the
//! shared normalisation.

use rand::Rng;

use crate::align::{Similarity, warp_rgb};
use crate::model::spec::normalise_into;

use super::data::CACHE_BORDER_PX;

/// Sides of a cached crop and of the model crop at its centre, read from the cached crop's length
/// (a square RGB8 crop with [`CACHE_BORDER_PX`] around the model's).
fn sides(cached: &[u8]) -> (usize, usize) {
    let cache = ((cached.len() / 3) as f64).sqrt().round() as usize;
    (cache, cache.saturating_sub(2 * CACHE_BORDER_PX as usize))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    pub max_rotation_deg: f32,
    pub max_scale: f32,
    pub max_shift_px: f32,
    pub flip: bool,
    /// Brightness, contrast and saturation factors are drawn from 1 ± this.
    pub colour: f32,
    /// Degrade crops as video does (see [`degrade_like_video`]).
    pub video: bool,
}

impl Augment {
    /// No augmentation: the centre crop as it is.
    pub const NONE: Self = Self {
        max_rotation_deg: 0.0,
        max_scale: 0.0,
        max_shift_px: 0.0,
        flip: false,
        colour: 0.0,
        video: false,
    };
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            max_rotation_deg: 10.0,
            max_scale: 0.08,
            max_shift_px: 3.0,
            flip: true,
            colour: 0.25,
            video: false,
        }
    }
}

/// The model's crop: the centre of a cached crop, no augmentation (validation, export checks).
pub fn centre(cached: &[u8]) -> Vec<u8> {
    let (cache, side) = sides(cached);
    let border = CACHE_BORDER_PX as usize;
    let mut out = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        let row = ((y + border) * cache + border) * 3;
        out.extend_from_slice(&cached[row..row + side * 3]);
    }
    out
}

/// A randomly transformed model crop from a cached crop.
pub fn augment(cached: &[u8], params: &Augment, rng: &mut impl Rng) -> Vec<u8> {
    let angle = rng.random_range(-1.0..=1.0f32) * params.max_rotation_deg.to_radians();
    let scale = 1.0 + rng.random_range(-1.0..=1.0f32) * params.max_scale;
    let (dx, dy) = (
        rng.random_range(-1.0..=1.0f32) * params.max_shift_px,
        rng.random_range(-1.0..=1.0f32) * params.max_shift_px,
    );
    // crop = R·s·(p − c_cache) + c_crop + shift: rotate and scale about the centre.
    let (a, b) = (scale * angle.cos(), scale * angle.sin());
    let (cache, side) = sides(cached);
    let c_cache = (cache as f32 - 1.0) / 2.0;
    let c_crop = (side as f32 - 1.0) / 2.0;
    let crop_from_cache = Similarity {
        a,
        b,
        tx: c_crop + dx - (a * c_cache - b * c_cache),
        ty: c_crop + dy - (b * c_cache + a * c_cache),
    };
    let mut crop =
        warp_rgb(cached, cache, cache, &crop_from_cache, side).unwrap_or_else(|| centre(cached));
    if params.flip && rng.random_bool(0.5) {
        for row in crop.chunks_exact_mut(side * 3) {
            for x in 0..side / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (side - 1 - x) * 3 + c);
                }
            }
        }
    }
    if params.colour > 0.0 {
        let mut draw = || 1.0 + rng.random_range(-1.0..=1.0f32) * params.colour;
        let (brightness, contrast, saturation) = (draw(), draw(), draw());
        let n = (side * side) as f32;
        let mean_grey = crop
            .chunks_exact(3)
            .map(|p| grey(p[0], p[1], p[2]))
            .sum::<f32>()
            / n;
        for px in crop.chunks_exact_mut(3) {
            let g = grey(px[0], px[1], px[2]);
            for v in px.iter_mut() {
                let saturated = g + (f32::from(*v) - g) * saturation;
                let contrasted = mean_grey + (saturated - mean_grey) * contrast;
                *v = (contrasted * brightness).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    if params.video {
        degrade_like_video(&mut crop, side, rng);
    }
    crop
}

/// What a face from a video stream goes through and a face photograph does not, each with its own
/// chance (about one crop in five is left clean): fewer pixels (a face 25–70 % of the crop's side,
/// upscaled by the alignment warp), motion blur (2–6 px along any direction), compression (JPEG
/// at quality 20–70, the blocking and ringing of H.264 at low bit rates), and a dark scene
/// (gamma 1.3–2.2, sensor noise σ 2–8). `crop` is `side`×`side` RGB8.
pub fn degrade_like_video(crop: &mut [u8], side: usize, rng: &mut impl Rng) {
    if side < 4 || crop.len() != side * side * 3 {
        return;
    }
    if rng.random_bool(0.4) {
        let fraction = rng.random_range(0.25..0.7f32);
        let small = ((side as f32 * fraction).round() as usize).max(2);
        let low = resize_box(crop, side, small);
        let back = resize_bilinear(&low, small, side);
        crop.copy_from_slice(&back);
    }
    if rng.random_bool(0.25) {
        let length = rng.random_range(2..=6usize);
        let angle = rng.random_range(0.0..std::f32::consts::PI);
        motion_blur(crop, side, length, angle);
    }
    if rng.random_bool(0.4) {
        let quality = rng.random_range(20..=70u8);
        if let Some(decoded) = jpeg_round_trip(crop, side, quality) {
            crop.copy_from_slice(&decoded);
        }
    }
    if rng.random_bool(0.25) {
        let gamma = rng.random_range(1.3..2.2f32);
        let sigma = rng.random_range(2.0..8.0f32);
        for v in crop.iter_mut() {
            let dark = 255.0 * (f32::from(*v) / 255.0).powf(gamma);
            *v = (dark + sigma * gaussian(rng)).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut impl Rng) -> f32 {
    let u1 = rng.random_range(f32::EPSILON..1.0f32);
    let u2 = rng.random_range(0.0..1.0f32);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// `src` (`from`×`from` RGB8) averaged down to `to`×`to` (box filter over each output pixel's
/// share of the source, fractional edges weighted).
fn resize_box(src: &[u8], from: usize, to: usize) -> Vec<u8> {
    let ratio = from as f32 / to as f32;
    // Per output index: (first source index, weights of the source pixels it covers).
    let spans: Vec<(usize, Vec<f32>)> = (0..to)
        .map(|o| {
            let (start, end) = (o as f32 * ratio, (o + 1) as f32 * ratio);
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(from);
            let weights = (first..last)
                .map(|i| (end.min(i as f32 + 1.0) - start.max(i as f32)).max(0.0) / ratio)
                .collect();
            (first, weights)
        })
        .collect();
    let mut out = vec![0u8; to * to * 3];
    for (oy, (y0, wy)) in spans.iter().enumerate() {
        for (ox, (x0, wx)) in spans.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (dy, &fy) in wy.iter().enumerate() {
                for (dx, &fx) in wx.iter().enumerate() {
                    let p = ((y0 + dy) * from + x0 + dx) * 3;
                    for c in 0..3 {
                        acc[c] += fy * fx * f32::from(src[p + c]);
                    }
                }
            }
            for c in 0..3 {
                out[(oy * to + ox) * 3 + c] = acc[c].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// `src` (`from`×`from` RGB8) to `to`×`to` by bilinear interpolation, pixel centres aligned.
pub(super) fn resize_bilinear(src: &[u8], from: usize, to: usize) -> Vec<u8> {
    let ratio = from as f32 / to as f32;
    let sample = |o: usize| {
        let x = ((o as f32 + 0.5) * ratio - 0.5).clamp(0.0, (from - 1) as f32);
        let i = (x.floor() as usize).min(from.saturating_sub(2));
        (i, x - i as f32)
    };
    let mut out = vec![0u8; to * to * 3];
    for oy in 0..to {
        let (y, fy) = sample(oy);
        let y1 = (y + 1).min(from - 1);
        for ox in 0..to {
            let (x, fx) = sample(ox);
            let x1 = (x + 1).min(from - 1);
            for c in 0..3 {
                let at = |yy: usize, xx: usize| f32::from(src[(yy * from + xx) * 3 + c]);
                let top = at(y, x) * (1.0 - fx) + at(y, x1) * fx;
                let bottom = at(y1, x) * (1.0 - fx) + at(y1, x1) * fx;
                out[(oy * to + ox) * 3 + c] =
                    (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// The mean of `length` samples along the direction `angle` (radians) through each pixel, edges
/// clamped: the smear of a face moving during the exposure.
fn motion_blur(crop: &mut [u8], side: usize, length: usize, angle: f32) {
    let src = crop.to_vec();
    let (dx, dy) = (angle.cos(), angle.sin());
    // Taps centred on the pixel; an even length leans half a pixel forward (floor of t + ½, not
    // round, which would skip the pixel itself: −½ and +½ both round away from it).
    let offsets: Vec<(isize, isize)> = (0..length)
        .map(|k| {
            let t = k as f32 - (length - 1) as f32 / 2.0;
            let tap = |d: f32| (t * d + 0.5).floor() as isize;
            (tap(dx), tap(dy))
        })
        .collect();
    let last = side as isize - 1;
    for y in 0..side {
        for x in 0..side {
            let mut acc = [0u32; 3];
            for &(ox, oy) in &offsets {
                let sx = (x as isize + ox).clamp(0, last) as usize;
                let sy = (y as isize + oy).clamp(0, last) as usize;
                for c in 0..3 {
                    acc[c] += u32::from(src[(sy * side + sx) * 3 + c]);
                }
            }
            for c in 0..3 {
                crop[(y * side + x) * 3 + c] = ((acc[c] + length as u32 / 2) / length as u32) as u8;
            }
        }
    }
}

/// The crop encoded as JPEG at `quality` and decoded again; `None` if either step fails.
fn jpeg_round_trip(crop: &[u8], side: usize, quality: u8) -> Option<Vec<u8>> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .write_image(
            crop,
            side as u32,
            side as u32,
            image::ExtendedColorType::Rgb8,
        )
        .ok()?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .ok()?
        .into_rgb8();
    (decoded.dimensions() == (side as u32, side as u32)).then(|| decoded.into_raw())
}

fn grey(r: u8, g: u8, b: u8) -> f32 {
    0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
}

/// Normalised planar floats of a batch of model crops, appended to `out`.
pub fn normalise_batch(crops: &[Vec<u8>], out: &mut Vec<f32>) {
    let per = crops.first().map_or(0, Vec::len);
    let start = out.len();
    out.resize(start + per * crops.len(), 0.0);
    for (i, crop) in crops.iter().enumerate() {
        normalise_into(crop, &mut out[start + i * per..start + (i + 1) * per]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gradient_cache() -> Vec<u8> {
        let n = super::super::data::cache_px(64) as usize;
        let mut v = Vec::with_capacity(n * n * 3);
        for y in 0..n {
            for x in 0..n {
                v.extend_from_slice(&[(x * 3) as u8, (y * 3) as u8, 100]);
            }
        }
        v
    }

    #[test]
    fn identity_augmentation_equals_the_centre_crop() {
        let cache = gradient_cache();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(augment(&cache, &Augment::NONE, &mut rng), centre(&cache));
        let c = centre(&cache);
        let b = CACHE_BORDER_PX as usize;
        assert_eq!(&c[..3], &[(b * 3) as u8, (b * 3) as u8, 100]);
    }

    #[test]
    fn augmentation_stays_close_and_is_seeded() {
        let cache = gradient_cache();
        let p = Augment::default();
        let a = augment(&cache, &p, &mut rand::rngs::StdRng::seed_from_u64(3));
        let b = augment(&cache, &p, &mut rand::rngs::StdRng::seed_from_u64(3));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64 * 64 * 3);
        // Small transforms keep the picture inside the cached border: no black corners.
        let geometric = Augment { colour: 0.0, ..p };
        for seed in 0..20 {
            let c = augment(
                &cache,
                &geometric,
                &mut rand::rngs::StdRng::seed_from_u64(seed),
            );
            assert!(c.chunks_exact(3).all(|px| px[2] == 100), "seed {seed}");
        }
    }

    #[test]
    fn each_degradation_keeps_a_flat_picture_flat_and_changes_a_detailed_one() {
        let side = 64;
        let flat = vec![120u8; side * side * 3];
        // Stripes one pixel wide: detail that lower resolution, blur and JPEG all smear.
        let stripes: Vec<u8> = (0..side * side)
            .flat_map(|i| {
                if i % 2 == 0 {
                    [20u8, 200, 90]
                } else {
                    [220, 40, 160]
                }
            })
            .collect();
        let changed = |a: &[u8], b: &[u8]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| u32::from(x.abs_diff(*y)))
                .sum::<u32>() as f32
                / a.len() as f32
        };
        for small in [16, 30, 45] {
            let round_trip = resize_bilinear(&resize_box(&flat, side, small), small, side);
            assert_eq!(round_trip, flat, "{small}");
            let lost = resize_bilinear(&resize_box(&stripes, side, small), small, side);
            assert!(changed(&lost, &stripes) > 30.0, "{small}");
        }
        let mut blurred = flat.clone();
        motion_blur(&mut blurred, side, 5, 0.7);
        assert_eq!(blurred, flat);
        let mut blurred = stripes.clone();
        motion_blur(&mut blurred, side, 4, 0.0);
        assert!(changed(&blurred, &stripes) > 30.0);
        // Two taps across one-pixel stripes: the pixel and its neighbour, the mean of the two
        // colours everywhere but the clamped last column.
        let mut two = stripes.clone();
        motion_blur(&mut two, side, 2, 0.0);
        for row in two.chunks_exact(side * 3) {
            for px in row[..(side - 1) * 3].chunks_exact(3) {
                assert_eq!(px, [120, 120, 125]);
            }
        }
        let jpeg = jpeg_round_trip(&flat, side, 30).unwrap();
        assert!(changed(&jpeg, &flat) < 1.5);
        let jpeg = jpeg_round_trip(&stripes, side, 30).unwrap();
        assert!(changed(&jpeg, &stripes) > 5.0);
    }

    #[test]
    fn video_degradation_is_seeded_and_leaves_some_crops_clean() {
        let side = 64;
        let stripes: Vec<u8> = (0..side * side * 3).map(|i| (i * 37 % 251) as u8).collect();
        let run = |seed| {
            let mut c = stripes.clone();
            degrade_like_video(&mut c, side, &mut rand::rngs::StdRng::seed_from_u64(seed));
            c
        };
        assert_eq!(run(7), run(7));
        let clean = (0..200).filter(|&seed| run(seed) == stripes).count();
        // (1 − 0.4)(1 − 0.25)(1 − 0.4)(1 − 0.25) ≈ 0.20 of crops untouched.
        assert!((20..=62).contains(&clean), "{clean} of 200 clean");
    }
}
