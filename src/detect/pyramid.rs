//! Image pyramid scales and area resampling into normalised network input.

/// P-Net looks at 12×12 windows: a face of `min_face_px` maps to 12 px at the first scale.
pub const PNET_CELL_PX: f64 = 12.0;

/// Pyramid scales as the reference computes them: the first maps `min_face_px` to 12 px, each next is
/// `factor` times the previous, while the shorter side at that scale is still at least 12 px.
pub fn pyramid_scales(width: u32, height: u32, min_face_px: f64, factor: f64) -> Vec<f64> {
    let m = PNET_CELL_PX / min_face_px;
    let mut shorter_side = f64::from(width.min(height)) * m;
    let mut scale = m;
    let mut scales = Vec::new();
    // factor >= 1 would never end; the config validation rejects it, this guards the library API.
    if !(factor > 0.0 && factor < 1.0 && m.is_finite() && m > 0.0) {
        return scales;
    }
    while shorter_side >= PNET_CELL_PX {
        scales.push(scale);
        scale *= factor;
        shorter_side *= factor;
    }
    scales
}

/// Size (width, height) of the image at `scale`, rounded as the reference does (`int(h * s + 1)`).
pub fn scaled_size(width: u32, height: u32, scale: f64) -> (usize, usize) {
    (
        (f64::from(width) * scale + 1.0) as usize,
        (f64::from(height) * scale + 1.0) as usize,
    )
}

/// A read-only view of packed RGB8 pixels.
#[derive(Clone, Copy)]
pub struct RgbView<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
}

impl<'a> RgbView<'a> {
    /// `None` when `data` is shorter than `width * height * 3`.
    pub fn new(data: &'a [u8], width: usize, height: usize) -> Option<Self> {
        (data.len() >= width * height * 3).then_some(Self {
            data,
            width,
            height,
        })
    }
}

/// A pixel rectangle `[x0, x1) × [y0, y1)` inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

/// MTCNN's input normalisation: (x − 127.5) / 128.
#[inline]
pub fn normalize(v: f32) -> f32 {
    (v - 127.5) * 0.0078125
}

/// Source index range averaged for output index `i` (PyTorch's adaptive average pooling, which is what
/// `interpolate(mode="area")` does).
#[inline]
fn area_window(i: usize, out_len: usize, in_len: usize) -> (usize, usize) {
    let start = (i * in_len) / out_len;
    let end = ((i + 1) * in_len).div_ceil(out_len);
    (start, end)
}

/// Resamples `rect` of `src` to `out_w × out_h` with area averaging and writes normalised planar
/// CHW floats into `out` (length `3 * out_w * out_h`). `scratch` is reused between calls.
pub fn resize_area_normalized(
    src: RgbView<'_>,
    rect: PixelRect,
    out_w: usize,
    out_h: usize,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let in_w = rect.x1 - rect.x0;
    let in_h = rect.y1 - rect.y0;
    assert!(
        in_w > 0 && in_h > 0 && out_w > 0 && out_h > 0,
        "empty resize"
    );
    assert!(
        rect.x1 <= src.width && rect.y1 <= src.height,
        "rect outside image"
    );
    assert_eq!(out.len(), 3 * out_w * out_h);

    // Pass 1: average columns, per source row → scratch [in_h][out_w][3].
    scratch.clear();
    scratch.resize(in_h * out_w * 3, 0.0);
    let col_windows: Vec<(usize, usize)> =
        (0..out_w).map(|ox| area_window(ox, out_w, in_w)).collect();
    for ry in 0..in_h {
        let row_start = ((rect.y0 + ry) * src.width + rect.x0) * 3;
        let row = &src.data[row_start..row_start + in_w * 3];
        let dst = &mut scratch[ry * out_w * 3..(ry + 1) * out_w * 3];
        for (ox, &(a, b)) in col_windows.iter().enumerate() {
            let mut acc = [0f32; 3];
            for px in row[a * 3..b * 3].chunks_exact(3) {
                acc[0] += f32::from(px[0]);
                acc[1] += f32::from(px[1]);
                acc[2] += f32::from(px[2]);
            }
            let n = (b - a) as f32;
            dst[ox * 3] = acc[0] / n;
            dst[ox * 3 + 1] = acc[1] / n;
            dst[ox * 3 + 2] = acc[2] / n;
        }
    }

    // Pass 2: average rows, write planar normalised output.
    let plane = out_w * out_h;
    for oy in 0..out_h {
        let (a, b) = area_window(oy, out_h, in_h);
        let n = (b - a) as f32;
        for ox in 0..out_w {
            let mut acc = [0f32; 3];
            for ry in a..b {
                let p = &scratch[(ry * out_w + ox) * 3..(ry * out_w + ox) * 3 + 3];
                acc[0] += p[0];
                acc[1] += p[1];
                acc[2] += p[2];
            }
            let o = oy * out_w + ox;
            out[o] = normalize(acc[0] / n);
            out[plane + o] = normalize(acc[1] / n);
            out[2 * plane + o] = normalize(acc[2] / n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_reference_formula() {
        // 854×480, min face 20: m = 0.6, shorter side 288 → stops once below 12.
        let s = pyramid_scales(854, 480, 20.0, 0.709);
        assert!((s[0] - 0.6).abs() < 1e-12);
        for pair in s.windows(2) {
            assert!((pair[1] / pair[0] - 0.709).abs() < 1e-12);
        }
        let last = *s.last().unwrap();
        assert!(480.0 * last >= 12.0 - 1e-9);
        assert!(480.0 * last * 0.709 < 12.0);
        // 288 * 0.709^k >= 12  ⇔  k <= ln(12/288)/ln(0.709) = 9.24 → k = 0..=9
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn no_scales_for_tiny_images_or_bad_factors() {
        assert!(pyramid_scales(19, 19, 20.0, 0.709).is_empty());
        assert_eq!(pyramid_scales(20, 20, 20.0, 0.709).len(), 1);
        assert!(pyramid_scales(640, 480, 20.0, 1.0).is_empty());
        assert!(pyramid_scales(640, 480, 0.0, 0.709).is_empty());
    }

    #[test]
    fn scaled_size_rounds_like_reference() {
        assert_eq!(scaled_size(854, 480, 0.6), (513, 289));
        assert_eq!(scaled_size(100, 50, 0.5), (51, 26));
    }

    #[test]
    fn area_windows_cover_input_exactly_when_downscaling_by_integer() {
        assert_eq!(area_window(0, 2, 4), (0, 2));
        assert_eq!(area_window(1, 2, 4), (2, 4));
        // 3 → 2 overlaps the middle pixel, as PyTorch does.
        assert_eq!(area_window(0, 2, 3), (0, 2));
        assert_eq!(area_window(1, 2, 3), (1, 3));
        // Upscaling repeats pixels.
        assert_eq!(area_window(1, 4, 2), (0, 1));
        assert_eq!(area_window(2, 4, 2), (1, 2));
    }

    #[test]
    fn area_resize_averages_blocks_and_normalises() {
        // 4×2 image: left 2×2 block all 0, right block all 255 → 2×1 output.
        let mut data = vec![0u8; 4 * 2 * 3];
        for y in 0..2 {
            for x in 2..4 {
                for c in 0..3 {
                    data[(y * 4 + x) * 3 + c] = 255;
                }
            }
        }
        let view = RgbView::new(&data, 4, 2).unwrap();
        let mut out = vec![0f32; 3 * 2];
        let rect = PixelRect {
            x0: 0,
            y0: 0,
            x1: 4,
            y1: 2,
        };
        resize_area_normalized(view, rect, 2, 1, &mut out, &mut Vec::new());
        for c in 0..3 {
            assert!((out[c * 2] - normalize(0.0)).abs() < 1e-6);
            assert!((out[c * 2 + 1] - normalize(255.0)).abs() < 1e-6);
        }
    }

    #[test]
    fn area_resize_of_subrect_reads_only_that_rect() {
        let (w, h) = (5, 4);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i / 3 % 251) as u8).collect();
        let view = RgbView::new(&data, w, h).unwrap();
        let rect = PixelRect {
            x0: 1,
            y0: 1,
            x1: 3,
            y1: 3,
        };
        let mut out = vec![0f32; 3];
        resize_area_normalized(view, rect, 1, 1, &mut out, &mut Vec::new());
        // pixel values are their index: (6 + 7 + 11 + 12) / 4 = 9
        assert!((out[0] - normalize(9.0)).abs() < 1e-6);
    }
}
