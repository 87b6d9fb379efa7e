//! Box arithmetic of the MTCNN cascade, exactly as the reference (facenet-pytorch) does it, so that
//! our boxes match its boxes: candidate generation from the P-Net map, regression, squaring, clipping.

use super::nms::BoxF;
use super::pyramid::PixelRect;

/// P-Net's output map has one cell per 2 px of the scaled image.
pub const PNET_STRIDE: f32 = 2.0;
/// Each P-Net cell sees a 12×12 window of the scaled image.
pub const PNET_CELL: f32 = 12.0;

/// A face candidate between cascade stages: its box in frame pixels, its score and the pending
/// regression offsets of the stage that produced it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub bbox: BoxF,
    pub score: f32,
    pub reg: [f32; 4],
}

/// Turns one P-Net output map (`prob` the face-probability plane, `reg` four planes, both
/// `map_w × map_h`) into candidates in frame pixels, row-major order like the reference.
pub fn candidates_from_pnet(
    prob: &[f32],
    reg: &[f32],
    map_w: usize,
    map_h: usize,
    scale: f32,
    threshold: f32,
) -> Vec<Candidate> {
    let plane = map_w * map_h;
    debug_assert_eq!(prob.len(), plane);
    debug_assert_eq!(reg.len(), 4 * plane);
    let mut out = Vec::new();
    for y in 0..map_h {
        for x in 0..map_w {
            let i = y * map_w + x;
            let score = prob[i];
            if score < threshold {
                continue;
            }
            let (xf, yf) = (x as f32, y as f32);
            let bbox = BoxF::new(
                ((PNET_STRIDE * xf + 1.0) / scale).floor(),
                ((PNET_STRIDE * yf + 1.0) / scale).floor(),
                ((PNET_STRIDE * xf + PNET_CELL) / scale).floor(),
                ((PNET_STRIDE * yf + PNET_CELL) / scale).floor(),
            );
            let reg = [
                reg[i],
                reg[plane + i],
                reg[2 * plane + i],
                reg[3 * plane + i],
            ];
            out.push(Candidate { bbox, score, reg });
        }
    }
    out
}

/// P-Net's regression: offsets scaled by the box size without the +1 the later stages use.
pub fn regress_pnet(c: &Candidate) -> BoxF {
    let (w, h) = (c.bbox.width(), c.bbox.height());
    BoxF::new(
        c.bbox.x1 + c.reg[0] * w,
        c.bbox.y1 + c.reg[1] * h,
        c.bbox.x2 + c.reg[2] * w,
        c.bbox.y2 + c.reg[3] * h,
    )
}

/// R-Net / O-Net regression (`bbreg`): offsets scaled by the pixel-inclusive size.
pub fn regress(b: &BoxF, reg: &[f32; 4]) -> BoxF {
    let w = b.x2 - b.x1 + 1.0;
    let h = b.y2 - b.y1 + 1.0;
    BoxF::new(
        b.x1 + reg[0] * w,
        b.y1 + reg[1] * h,
        b.x2 + reg[2] * w,
        b.y2 + reg[3] * h,
    )
}

/// Squares a box around its centre on its longer side (`rerec`).
pub fn square(b: &BoxF) -> BoxF {
    let (w, h) = (b.width(), b.height());
    let l = w.max(h);
    let x1 = b.x1 + w * 0.5 - l * 0.5;
    let y1 = b.y1 + h * 0.5 - l * 0.5;
    BoxF::new(x1, y1, x1 + l, y1 + l)
}

/// The pixel rectangle the reference crops for a box (`pad`, then `[y-1:ey, x-1:ex]`): coordinates
/// truncated, clipped to the frame; `None` when nothing of the box is inside the frame.
pub fn crop_rect(b: &BoxF, frame_w: usize, frame_h: usize) -> Option<PixelRect> {
    let x = (b.x1.trunc() as i64).max(1);
    let y = (b.y1.trunc() as i64).max(1);
    let ex = (b.x2.trunc() as i64).min(frame_w as i64);
    let ey = (b.y2.trunc() as i64).min(frame_h as i64);
    if ey > y - 1 && ex > x - 1 {
        Some(PixelRect {
            x0: (x - 1) as usize,
            y0: (y - 1) as usize,
            x1: ex as usize,
            y1: ey as usize,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pnet_cells_map_back_to_frame_pixels() {
        // 3×2 map, one cell over threshold at (x=2, y=1), scale 0.5.
        let mut prob = vec![0.1; 6];
        prob[5] = 0.9;
        let mut reg = vec![0.0; 24];
        reg[5] = 0.1; // dx1
        reg[6 + 5] = -0.2; // dy1
        let c = candidates_from_pnet(&prob, &reg, 3, 2, 0.5, 0.6);
        assert_eq!(c.len(), 1);
        // x1 = floor((2*2+1)/0.5) = 10, x2 = floor((2*2+12)/0.5) = 32; y1 = floor(3/0.5) = 6, y2 = 28
        assert_eq!(c[0].bbox, BoxF::new(10.0, 6.0, 32.0, 28.0));
        assert_eq!(c[0].score, 0.9);
        assert_eq!(c[0].reg, [0.1, -0.2, 0.0, 0.0]);
    }

    #[test]
    fn pnet_threshold_is_inclusive_and_order_row_major() {
        let prob = vec![0.6, 0.2, 0.7, 0.8];
        let c = candidates_from_pnet(&prob, &[0.0; 16], 2, 2, 1.0, 0.6);
        let scores: Vec<f32> = c.iter().map(|c| c.score).collect();
        assert_eq!(scores, vec![0.6, 0.7, 0.8]);
    }

    #[test]
    fn regressions_differ_by_the_plus_one() {
        let b = BoxF::new(10.0, 10.0, 20.0, 30.0);
        let c = Candidate {
            bbox: b,
            score: 1.0,
            reg: [0.1, 0.1, -0.1, 0.5],
        };
        assert_eq!(regress_pnet(&c), BoxF::new(11.0, 12.0, 19.0, 40.0));
        let r = regress(&b, &[0.1, 0.1, -0.1, 0.5]);
        assert!((r.x1 - 11.1).abs() < 1e-5 && (r.y1 - 12.1).abs() < 1e-5);
        assert!((r.x2 - 18.9).abs() < 1e-5 && (r.y2 - 40.5).abs() < 1e-5);
    }

    #[test]
    fn square_keeps_centre_and_longer_side() {
        let s = square(&BoxF::new(10.0, 0.0, 20.0, 40.0));
        assert_eq!(s, BoxF::new(-5.0, 0.0, 35.0, 40.0));
        let t = square(&BoxF::new(0.0, 0.0, 8.0, 8.0));
        assert_eq!(t, BoxF::new(0.0, 0.0, 8.0, 8.0));
    }

    #[test]
    fn crop_rect_clips_to_frame_and_rejects_outside_boxes() {
        assert_eq!(
            crop_rect(&BoxF::new(-5.7, 2.9, 35.2, 40.0), 30, 100),
            Some(PixelRect {
                x0: 0,
                y0: 1,
                x1: 30,
                y1: 40
            })
        );
        assert_eq!(crop_rect(&BoxF::new(40.0, 0.0, 60.0, 10.0), 30, 100), None);
        assert_eq!(crop_rect(&BoxF::new(0.0, -20.0, 10.0, -1.0), 30, 100), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn crops_stay_inside_the_frame_whatever_the_box(
            x1 in prop::num::f32::ANY,
            y1 in prop::num::f32::ANY,
            x2 in prop::num::f32::ANY,
            y2 in prop::num::f32::ANY,
            frame_w in 0usize..5000,
            frame_h in 0usize..5000,
        ) {
            if let Some(r) = crop_rect(&BoxF::new(x1, y1, x2, y2), frame_w, frame_h) {
                prop_assert!(r.x0 < r.x1 && r.x1 <= frame_w, "{:?} in {}x{}", r, frame_w, frame_h);
                prop_assert!(r.y0 < r.y1 && r.y1 <= frame_h, "{:?} in {}x{}", r, frame_w, frame_h);
            }
        }

        #[test]
        fn squared_boxes_keep_their_centre_and_longer_side(
            x in -1e4f32..1e4, y in -1e4f32..1e4, w in 0f32..1e4, h in 0f32..1e4,
        ) {
            let b = BoxF::new(x, y, x + w, y + h);
            let s = square(&b);
            let tol = 1e-3 * (1.0 + x.abs().max(y.abs()) + w.max(h));
            prop_assert!((s.width() - s.height()).abs() <= tol);
            prop_assert!((s.width() - b.width().max(b.height())).abs() <= tol);
            prop_assert!(((s.x1 + s.x2) - (b.x1 + b.x2)).abs() <= tol);
            prop_assert!(((s.y1 + s.y2) - (b.y1 + b.y2)).abs() <= tol);
        }
    }
}
