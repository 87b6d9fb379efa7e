//! The one font faceflow draws text with: DejaVu Sans from the system (Debian: fonts-dejavu-core,
//! installed by scripts/deps.sh), read once.

use std::sync::OnceLock;

use ab_glyph::FontVec;

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
