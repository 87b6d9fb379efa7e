//! Augmentation of cached crops: a small random similarity (rotation, scale, shift) through the
//! alignment warp, a horizontal flip, and colour jitter; then the shared normalisation.

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
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            max_rotation_deg: 10.0,
            max_scale: 0.08,
            max_shift_px: 3.0,
            flip: true,
            colour: 0.25,
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
    crop
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
        let none = Augment {
            max_rotation_deg: 0.0,
            max_scale: 0.0,
            max_shift_px: 0.0,
            flip: false,
            colour: 0.0,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(augment(&cache, &none, &mut rng), centre(&cache));
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
}
