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

/// Per-channel summed-area table of an RGB8 image, built once per frame so that every pyramid level
/// and every R-Net/O-Net crop is area-resampled in O(1) per output pixel.
///
/// Sums are `u32` with wrapping arithmetic: a rectangle's sum is a difference of four entries, which
/// is exact modulo 2³², hence exact for any rectangle under 16.8 M pixels (255 × area < 2³²).
///
/// The table may cover only a region of the picture (`origin` and its size): following a few
/// faces reads a few crops, and summing a whole 1080p frame for them cost as much as the crops.
pub struct IntegralImage {
    /// The covered region's top-left corner in the picture's pixels.
    origin_x: usize,
    origin_y: usize,
    /// The covered region's size (the whole picture's after [`IntegralImage::rebuild`]).
    width: usize,
    height: usize,
    /// `(height + 1) × (width + 1) × 3`, row-major, channels interleaved.
    sums: Vec<u32>,
}

impl IntegralImage {
    pub fn new() -> Self {
        Self {
            origin_x: 0,
            origin_y: 0,
            width: 0,
            height: 0,
            sums: Vec::new(),
        }
    }

    /// Rebuilds the table for the whole of `src`, reusing its allocation.
    pub fn rebuild(&mut self, src: RgbView<'_>) {
        let whole = PixelRect {
            x0: 0,
            y0: 0,
            x1: src.width,
            y1: src.height,
        };
        self.sweep(src, whole, |_, _| {});
    }

    /// Rebuilds the table for `region` of `src` only (clipped to the picture).
    pub fn rebuild_region(&mut self, src: RgbView<'_>, region: PixelRect) {
        let region = PixelRect {
            x0: region.x0.min(src.width),
            y0: region.y0.min(src.height),
            x1: region.x1.min(src.width),
            y1: region.y1.min(src.height),
        };
        self.sweep(src, region, |_, _| {});
    }

    /// Covers nothing until the next rebuild: the table of an earlier picture must not be read
    /// for a new one.
    pub fn forget(&mut self) {
        (self.origin_x, self.origin_y, self.width, self.height) = (0, 0, 0, 0);
    }

    /// Whether `rect` lies inside the covered region.
    pub fn covers(&self, rect: PixelRect) -> bool {
        rect.x0 >= self.origin_x
            && rect.y0 >= self.origin_y
            && rect.x1 <= self.origin_x + self.width
            && rect.y1 <= self.origin_y + self.height
    }

    /// The covered region.
    pub fn region(&self) -> PixelRect {
        PixelRect {
            x0: self.origin_x,
            y0: self.origin_y,
            x1: self.origin_x + self.width,
            y1: self.origin_y + self.height,
        }
    }

    /// Rebuilds the table row by row, handing `each_row` every table row `y` (the sums of
    /// source rows `[0, y)`) as soon as it is written, row 0 included.
    /// Only `region` (inside the picture) is summed; row `y` is then region row `y`.
    fn sweep(
        &mut self,
        src: RgbView<'_>,
        region: PixelRect,
        mut each_row: impl FnMut(usize, &[u32]),
    ) {
        let (w, h) = (
            region.x1.saturating_sub(region.x0),
            region.y1.saturating_sub(region.y0),
        );
        let stride = (w + 1) * 3;
        self.origin_x = region.x0;
        self.origin_y = region.y0;
        self.width = w;
        self.height = h;
        // Every entry is written below except row 0 and column 0, which stay zero: no fill of the
        // whole table (megabytes per frame) when its size is unchanged.
        self.sums.resize((h + 1) * stride, 0);
        self.sums[..stride].fill(0);
        each_row(0, &self.sums[..stride]);
        for y in 0..h {
            let start = ((region.y0 + y) * src.width + region.x0) * 3;
            let row = &src.data[start..start + w * 3];
            let (above, below) = self.sums.split_at_mut((y + 1) * stride);
            let above = &above[y * stride..];
            let below = &mut below[..stride];
            below[..3].fill(0);
            let mut acc = [0u32; 3];
            for x in 0..w {
                for c in 0..3 {
                    acc[c] = acc[c].wrapping_add(u32::from(row[x * 3 + c]));
                    below[(x + 1) * 3 + c] = above[(x + 1) * 3 + c].wrapping_add(acc[c]);
                }
            }
            each_row(y + 1, below);
        }
    }

    /// [`IntegralImage::rebuild`], and in the same sweep every pyramid level of `sizes` (width,
    /// height), area-resampled from the whole picture and normalised as
    /// [`resize_area_normalized`] writes them (planar CHW, value for value the same) into
    /// `levels`. Each output row is finished while the table row that closes its window is
    /// still in the core's cache: the table is read once for all levels instead of once per
    /// level (megabytes per frame).
    pub fn rebuild_with_levels(
        &mut self,
        src: RgbView<'_>,
        sizes: &[(usize, usize)],
        levels: &mut Vec<Vec<f32>>,
    ) {
        let (w, h) = (src.width, src.height);
        levels.resize_with(sizes.len(), Vec::new);
        let mut sweeps: Vec<LevelSweep> = sizes
            .iter()
            .zip(levels.iter_mut())
            .filter_map(|(&(out_w, out_h), out)| {
                if out_w == 0 || out_h == 0 || w == 0 || h == 0 {
                    out.clear();
                    return None;
                }
                // Every value is written below: no zero-fill of what is reused.
                out.resize(3 * out_w * out_h, 0.0);
                Some(LevelSweep::new(out, out_w, out_h, w, h))
            })
            .collect();
        let whole = PixelRect {
            x0: 0,
            y0: 0,
            x1: w,
            y1: h,
        };
        self.sweep(src, whole, |y, row| {
            for sweep in &mut sweeps {
                sweep.at_row(y, row);
            }
        });
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }
}

impl Default for IntegralImage {
    fn default() -> Self {
        Self::new()
    }
}

/// One pyramid level being filled during [`IntegralImage::rebuild_with_levels`]: output row `oy`
/// averages source rows `[a, b)`, so it can be written once table row `b` exists, from row `b` and
/// what row `a` held at its window's columns (kept when the sweep passed it).
struct LevelSweep<'a> {
    out: &'a mut [f32],
    out_w: usize,
    out_h: usize,
    in_h: usize,
    /// Per output column: the offsets of its window's left and right edges in a table row, and
    /// 1 / its width.
    cols: Vec<(usize, usize, f32)>,
    /// Next output row whose window has not started / not been written.
    next_start: usize,
    next_done: usize,
    /// Per started, unwritten output row (in order from `next_done`): the window's column sums
    /// of its top table row, three per output column.
    open: std::collections::VecDeque<Vec<u32>>,
    spare: Vec<Vec<u32>>,
}

impl<'a> LevelSweep<'a> {
    fn new(out: &'a mut [f32], out_w: usize, out_h: usize, in_w: usize, in_h: usize) -> Self {
        let cols = (0..out_w)
            .map(|ox| {
                let (a, b) = area_window(ox, out_w, in_w);
                (a * 3, b * 3, 1.0 / (b - a) as f32)
            })
            .collect();
        Self {
            out,
            out_w,
            out_h,
            in_h,
            cols,
            next_start: 0,
            next_done: 0,
            open: std::collections::VecDeque::new(),
            spare: Vec::new(),
        }
    }

    /// Table row `y` (the sums of source rows `[0, y)`) has just been written.
    fn at_row(&mut self, y: usize, row: &[u32]) {
        // Windows whose last source row is y − 1 end here (started at an earlier row).
        while self.next_done < self.next_start {
            let (a, b) = area_window(self.next_done, self.out_h, self.in_h);
            if b != y {
                break;
            }
            let top = self.open.pop_front().unwrap_or_default();
            self.write_row(self.next_done, a, b, &top, row);
            self.spare.push(top);
            self.next_done += 1;
        }
        // Windows starting at source row y: keep this row's sums at their columns.
        while self.next_start < self.out_h
            && area_window(self.next_start, self.out_h, self.in_h).0 == y
        {
            let mut top = self.spare.pop().unwrap_or_default();
            top.resize(self.cols.len() * 3, 0);
            for (sums, &(l, rt, _)) in top.chunks_exact_mut(3).zip(&self.cols) {
                let (left, right) = (&row[l..l + 3], &row[rt..rt + 3]);
                for c in 0..3 {
                    sums[c] = right[c].wrapping_sub(left[c]);
                }
            }
            self.open.push_back(top);
            self.next_start += 1;
        }
    }

    fn write_row(&mut self, oy: usize, a: usize, b: usize, top: &[u32], bottom: &[u32]) {
        let plane = self.out_w * self.out_h;
        let row_scale = 0.0078125 / (b - a) as f32;
        let (red, rest) = self.out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        let range = oy * self.out_w..(oy + 1) * self.out_w;
        let (r, g, bl) = (
            &mut red[range.clone()],
            &mut green[range.clone()],
            &mut blue[range],
        );
        for (ox, (&(l, rt, inv_w), above)) in self.cols.iter().zip(top.chunks_exact(3)).enumerate()
        {
            let scale = inv_w * row_scale;
            let (left, right) = (&bottom[l..l + 3], &bottom[rt..rt + 3]);
            let sum = |c: usize| right[c].wrapping_sub(left[c]).wrapping_sub(above[c]) as f32;
            r[ox] = sum(0) * scale - 127.5 * 0.0078125;
            g[ox] = sum(1) * scale - 127.5 * 0.0078125;
            bl[ox] = sum(2) * scale - 127.5 * 0.0078125;
        }
    }
}

/// Resamples `rect` of the image behind `integral` to `out_w × out_h` with area averaging (PyTorch's
/// `interpolate(mode="area")`) and writes normalised planar CHW floats into `out`
/// (length `3 * out_w * out_h`).
pub fn resize_area_normalized(
    integral: &IntegralImage,
    rect: PixelRect,
    out_w: usize,
    out_h: usize,
    out: &mut [f32],
) {
    assert!(integral.covers(rect), "rect outside the table's region");
    // From here on, in the table's coordinates.
    let rect = PixelRect {
        x0: rect.x0 - integral.origin_x,
        y0: rect.y0 - integral.origin_y,
        x1: rect.x1 - integral.origin_x,
        y1: rect.y1 - integral.origin_y,
    };
    let in_w = rect.x1 - rect.x0;
    let in_h = rect.y1 - rect.y0;
    assert!(
        in_w > 0 && in_h > 0 && out_w > 0 && out_h > 0,
        "empty resize"
    );
    assert_eq!(out.len(), 3 * out_w * out_h);
    // Per output column: its window's offsets in a row of sums and 1 / its width.
    let cols: Vec<(usize, usize, f32)> = (0..out_w)
        .map(|ox| {
            let (a, b) = area_window(ox, out_w, in_w);
            ((rect.x0 + a) * 3, (rect.x0 + b) * 3, 1.0 / (b - a) as f32)
        })
        .collect();
    let stride = (integral.width + 1) * 3;
    let (red, rest) = out.split_at_mut(out_w * out_h);
    let (green, blue) = rest.split_at_mut(out_w * out_h);
    for oy in 0..out_h {
        let (a, b) = area_window(oy, out_h, in_h);
        let top = &integral.sums[(rect.y0 + a) * stride..][..stride];
        let bottom = &integral.sums[(rect.y0 + b) * stride..][..stride];
        // normalize(sum / n) = sum * (1 / n) / 128 - 127.5 / 128, the divisions hoisted.
        let row_scale = 0.0078125 / (b - a) as f32;
        let range = oy * out_w..(oy + 1) * out_w;
        let (r, g, bl) = (
            &mut red[range.clone()],
            &mut green[range.clone()],
            &mut blue[range],
        );
        for (ox, &(l, rt, inv_w)) in cols.iter().enumerate() {
            let scale = inv_w * row_scale;
            let sum = |c: usize| {
                bottom[rt + c]
                    .wrapping_sub(top[rt + c])
                    .wrapping_sub(bottom[l + c])
                    .wrapping_add(top[l + c]) as f32
            };
            r[ox] = sum(0) * scale - 127.5 * 0.0078125;
            g[ox] = sum(1) * scale - 127.5 * 0.0078125;
            bl[ox] = sum(2) * scale - 127.5 * 0.0078125;
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
        let mut integral = IntegralImage::new();
        integral.rebuild(view);
        resize_area_normalized(&integral, rect, 2, 1, &mut out);
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
        let mut integral = IntegralImage::new();
        integral.rebuild(view);
        resize_area_normalized(&integral, rect, 1, 1, &mut out);
        // pixel values are their index: (6 + 7 + 11 + 12) / 4 = 9
        assert!((out[0] - normalize(9.0)).abs() < 1e-6);
    }

    /// Direct (no summed-area table) PyTorch adaptive average pooling, for comparison.
    fn naive_area(view: RgbView<'_>, rect: PixelRect, out_w: usize, out_h: usize) -> Vec<f32> {
        let (in_w, in_h) = (rect.x1 - rect.x0, rect.y1 - rect.y0);
        let mut out = vec![0f32; 3 * out_w * out_h];
        for oy in 0..out_h {
            let (a, b) = area_window(oy, out_h, in_h);
            for ox in 0..out_w {
                let (l, r) = area_window(ox, out_w, in_w);
                for c in 0..3 {
                    let mut sum = 0f64;
                    for y in a..b {
                        for x in l..r {
                            sum += view.data[((rect.y0 + y) * view.width + rect.x0 + x) * 3 + c]
                                as f64;
                        }
                    }
                    let n = ((b - a) * (r - l)) as f64;
                    out[c * out_w * out_h + oy * out_w + ox] = normalize((sum / n) as f32);
                }
            }
        }
        out
    }

    #[test]
    fn integral_resize_equals_direct_pooling_down_and_up() {
        let (w, h) = (37, 23);
        let mut state = 7u32;
        let data: Vec<u8> = (0..w * h * 3)
            .map(|_| {
                state = state.wrapping_mul(1103515245).wrapping_add(12345);
                (state >> 16) as u8
            })
            .collect();
        let view = RgbView::new(&data, w, h).unwrap();
        let mut integral = IntegralImage::new();
        integral.rebuild(view);
        let rects = [
            PixelRect {
                x0: 0,
                y0: 0,
                x1: w,
                y1: h,
            },
            PixelRect {
                x0: 3,
                y0: 5,
                x1: 30,
                y1: 21,
            },
            PixelRect {
                x0: 10,
                y0: 2,
                x1: 14,
                y1: 5,
            },
        ];
        for rect in rects {
            for (ow, oh) in [(24, 24), (13, 7), (48, 48), (1, 1)] {
                let mut out = vec![0f32; 3 * ow * oh];
                resize_area_normalized(&integral, rect, ow, oh, &mut out);
                let expected = naive_area(view, rect, ow, oh);
                for (a, b) in out.iter().zip(&expected) {
                    assert!((a - b).abs() < 1e-5, "{rect:?} -> {ow}x{oh}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn wrapping_sums_stay_exact_past_u32() {
        // 5000×4000 white: table entries reach 5.1 G and wrap past u32; rectangle sums (each under
        // 2³²) must still come out exact, and nothing may overflow-panic.
        let (w, h) = (5000, 4000);
        let data = vec![255u8; w * h * 3];
        let view = RgbView::new(&data, w, h).unwrap();
        let mut integral = IntegralImage::new();
        integral.rebuild(view);
        let mut out = vec![0f32; 3 * 4];
        let rect = PixelRect {
            x0: 3000,
            y0: 2000,
            x1: w,
            y1: h,
        };
        resize_area_normalized(&integral, rect, 2, 2, &mut out);
        assert!(
            out.iter().all(|v| (v - normalize(255.0)).abs() < 1e-6),
            "{out:?}"
        );
    }

    #[test]
    fn levels_made_in_the_sweep_equal_levels_resampled_one_by_one() {
        let (w, h) = (57, 41);
        let data: Vec<u8> = (0..w * h * 3)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
            .collect();
        let view = RgbView::new(&data, w, h).unwrap();
        // Downscales by odd ratios (overlapping windows), the same size, upscales, one pixel.
        let sizes = [
            (35, 25),
            (24, 17),
            (57, 41),
            (80, 60),
            (13, 41),
            (1, 1),
            (0, 5),
        ];
        let mut table = IntegralImage::new();
        // Buffers left from a larger picture's levels are reused, not trusted.
        let mut levels = vec![vec![7.0f32; 9000]; 9];
        table.rebuild_with_levels(view, &sizes, &mut levels);
        assert_eq!(levels.len(), sizes.len());
        let mut plain = IntegralImage::new();
        plain.rebuild(view);
        assert_eq!(table.sums, plain.sums);
        let full = PixelRect {
            x0: 0,
            y0: 0,
            x1: w,
            y1: h,
        };
        for (&(out_w, out_h), level) in sizes.iter().zip(&levels) {
            if out_w == 0 {
                assert!(level.is_empty());
                continue;
            }
            let mut one = vec![0f32; 3 * out_w * out_h];
            resize_area_normalized(&plain, full, out_w, out_h, &mut one);
            // Bit for bit: the same integer sums, scaled the same way.
            let same = one
                .iter()
                .zip(level)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && one.len() == level.len(), "{out_w}x{out_h}");
        }
    }

    #[test]
    fn a_region_table_resamples_its_rects_as_the_whole_table_does() {
        let (w, h) = (50, 40);
        let data: Vec<u8> = (0..w * h * 3)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
            .collect();
        let view = RgbView::new(&data, w, h).unwrap();
        let mut whole = IntegralImage::new();
        whole.rebuild(view);
        let mut part = IntegralImage::new();
        let region = PixelRect {
            x0: 7,
            y0: 5,
            x1: 38,
            y1: 33,
        };
        part.rebuild_region(view, region);
        assert_eq!(part.region(), region);
        for rect in [
            region,
            PixelRect {
                x0: 9,
                y0: 6,
                x1: 30,
                y1: 20,
            },
            PixelRect {
                x0: 20,
                y0: 25,
                x1: 38,
                y1: 33,
            },
        ] {
            assert!(part.covers(rect));
            let (mut a, mut b) = (vec![0.0; 3 * 12 * 12], vec![0.0; 3 * 12 * 12]);
            resize_area_normalized(&whole, rect, 12, 12, &mut a);
            resize_area_normalized(&part, rect, 12, 12, &mut b);
            assert_eq!(a, b, "{rect:?}");
        }
        assert!(!part.covers(PixelRect {
            x0: 6,
            y0: 5,
            x1: 20,
            y1: 20
        }));
        // A region past the picture is clipped to it; a forgotten table covers nothing.
        part.rebuild_region(
            view,
            PixelRect {
                x0: 45,
                y0: 30,
                x1: 80,
                y1: 90,
            },
        );
        assert_eq!((part.width(), part.height()), (5, 10));
        part.forget();
        assert!(!part.covers(PixelRect {
            x0: 46,
            y0: 31,
            x1: 47,
            y1: 32
        }));
    }

    #[test]
    fn a_reused_table_equals_a_fresh_one_whatever_came_before() {
        // The table is not cleared between frames: every entry must be rewritten, including
        // its zero first row and column, when the size shrinks, grows or changes shape.
        let picture = |w: usize, h: usize, seed: u8| -> Vec<u8> {
            (0..w * h * 3)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect()
        };
        let mut reused = IntegralImage::new();
        for (w, h, seed) in [(40, 30, 1), (17, 9, 2), (9, 17, 3), (64, 48, 4), (1, 1, 5)] {
            let data = picture(w, h, seed);
            let view = RgbView::new(&data, w, h).unwrap();
            reused.rebuild(view);
            let mut fresh = IntegralImage::new();
            fresh.rebuild(view);
            assert_eq!((reused.width(), reused.height()), (w, h));
            assert_eq!(reused.sums, fresh.sums, "{w}x{h}");
            assert!(fresh.sums[..(w + 1) * 3].iter().all(|&v| v == 0));
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_pyramid_level_fits_a_pnet_window(
            width in 0u32..20_000,
            height in 0u32..20_000,
            min_face_px in 1.0f64..2000.0,
            factor in 0.05f64..0.95,
        ) {
            let scales = pyramid_scales(width, height, min_face_px, factor);
            prop_assert!(scales.len() < 400);
            prop_assert!(scales.windows(2).all(|w| w[1] < w[0]));
            for &s in &scales {
                let (w, h) = scaled_size(width, height, s);
                prop_assert!(s.is_finite() && s > 0.0);
                prop_assert!(w >= 12 && h >= 12, "{}x{} at {} -> {}x{}", width, height, s, w, h);
            }
            // A frame whose shorter side holds a minimum face gets at least one level.
            if f64::from(width.min(height)) >= min_face_px {
                prop_assert!(!scales.is_empty());
            }
        }
    }
}
