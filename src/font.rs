//! The one font faceflow draws text with: DejaVu Sans from the system (Debian: fonts-dejavu-core,
//! installed by scripts/deps.sh), read once.

use std::sync::OnceLock;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};

/// Where distributions put DejaVu Sans.
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// DejaVu Sans, or `None` when the system has none of [`FONT_PATHS`].
pub fn dejavu_sans() -> Option<&'static FontVec> {
    static FONT: OnceLock<Option<FontVec>> = OnceLock::new();
    FONT.get_or_init(|| {
        FONT_PATHS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .and_then(|bytes| FontVec::try_from_vec(bytes).ok())
    })
    .as_ref()
}

/// Width of `text` at `size` pixels.
pub fn text_width(font: &FontVec, text: &str, size: f32) -> f32 {
    let scaled = font.as_scaled(PxScale::from(size));
    text.chars()
        .map(|c| scaled.h_advance(font.glyph_id(c)))
        .sum()
}

/// Rasterises `text` at `size` pixels from `x` on `baseline`: `plot(x, y, coverage)` for each
/// pixel a glyph covers (possibly outside the picture; the caller clips and blends).
pub fn rasterise(
    font: &FontVec,
    text: &str,
    (x, baseline): (f32, f32),
    size: f32,
    mut plot: impl FnMut(i64, i64, f32),
) {
    let scale = PxScale::from(size);
    let scaled = font.as_scaled(scale);
    let mut pen_x = x;
    for c in text.chars() {
        let id = font.glyph_id(c);
        let glyph = id.with_scale_and_position(scale, ab_glyph::point(pen_x, baseline));
        pen_x += scaled.h_advance(id);
        if let Some(outlined) = font.outline_glyph(glyph) {
            let bounds = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                plot(
                    bounds.min.x as i64 + i64::from(gx),
                    bounds.min.y as i64 + i64::from(gy),
                    coverage,
                );
            });
        }
    }
}
