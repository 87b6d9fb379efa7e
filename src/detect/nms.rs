//! Non-maximum suppression, in the two flavours the reference MTCNN (facenet-pytorch) uses.

/// An axis-aligned box in pixels, `x2`/`y2` exclusive in the torchvision sense.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxF {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoxF {
    pub fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Intersection over union with continuous areas (no +1), as torchvision's `nms`.
    pub fn iou(&self, other: &BoxF) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// How overlap is measured when suppressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Intersection over union, continuous areas (torchvision `nms`).
    Union,
    /// Intersection over the smaller box, pixel-inclusive areas (+1), as the final MTCNN stage.
    Min,
}

/// Greedy NMS: indices of the kept boxes, highest score first. A box is suppressed when its overlap
/// with an already kept box is strictly greater than `threshold`.
pub fn nms(boxes: &[BoxF], scores: &[f32], threshold: f32, overlap: Overlap) -> Vec<usize> {
    debug_assert_eq!(boxes.len(), scores.len());
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Stable sort keeps ties in input order, so results are deterministic.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[rank + 1..] {
            if !suppressed[j] && overlap_of(&boxes[i], &boxes[j], overlap) > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

fn overlap_of(a: &BoxF, b: &BoxF, overlap: Overlap) -> f32 {
    match overlap {
        Overlap::Union => a.iou(b),
        Overlap::Min => {
            let area = |r: &BoxF| (r.x2 - r.x1 + 1.0) * (r.y2 - r.y1 + 1.0);
            let w = (a.x2.min(b.x2) - a.x1.max(b.x1) + 1.0).max(0.0);
            let h = (a.y2.min(b.y2) - a.y1.max(b.y1) + 1.0).max(0.0);
            let smaller = area(a).min(area(b));
            if smaller <= 0.0 { 0.0 } else { w * h / smaller }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = BoxF::new(0.0, 0.0, 10.0, 10.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BoxF::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        // 50 px overlap of two 100 px boxes: 50 / 150
        let b = BoxF::new(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn union_nms_keeps_best_of_each_cluster_in_score_order() {
        let boxes = [
            BoxF::new(0.0, 0.0, 10.0, 10.0),
            BoxF::new(1.0, 1.0, 11.0, 11.0), // IoU 81/119 = 0.68 with the first
            BoxF::new(50.0, 50.0, 60.0, 60.0),
            BoxF::new(0.5, 0.0, 10.5, 10.0), // IoU 0.905 with the first
        ];
        let scores = [0.9, 0.8, 0.95, 0.7];
        assert_eq!(nms(&boxes, &scores, 0.7, Overlap::Union), vec![2, 0, 1]);
        assert_eq!(nms(&boxes, &scores, 0.5, Overlap::Union), vec![2, 0]);
    }

    #[test]
    fn threshold_is_strict() {
        let boxes = [
            BoxF::new(0.0, 0.0, 10.0, 10.0),
            BoxF::new(5.0, 0.0, 15.0, 10.0),
        ];
        // IoU is exactly 1/3: not greater than 1/3, so both stay.
        assert_eq!(nms(&boxes, &[0.9, 0.8], 1.0 / 3.0, Overlap::Union).len(), 2);
    }

    #[test]
    fn min_nms_suppresses_a_box_inside_a_bigger_one() {
        let boxes = [
            BoxF::new(0.0, 0.0, 99.0, 99.0),
            BoxF::new(10.0, 10.0, 29.0, 29.0),
        ];
        // Union overlap is tiny (400/10000) but the small box lies wholly inside the big one.
        assert_eq!(nms(&boxes, &[0.99, 0.98], 0.7, Overlap::Union), vec![0, 1]);
        assert_eq!(nms(&boxes, &[0.99, 0.98], 0.7, Overlap::Min), vec![0]);
        // The smaller box wins if it scores higher; the big one is still suppressed by it.
        assert_eq!(nms(&boxes, &[0.5, 0.98], 0.7, Overlap::Min), vec![1]);
    }

    #[test]
    fn empty_input_gives_empty_output() {
        assert!(nms(&[], &[], 0.5, Overlap::Union).is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Up to hundreds of boxes, many overlapping, some reaching past the frame's edges.
    fn scored_boxes() -> impl Strategy<Value = Vec<(BoxF, f32)>> {
        prop::collection::vec(
            (
                -40f32..400.0,
                -40f32..400.0,
                0f32..200.0,
                0f32..200.0,
                0f32..=1.0,
            )
                .prop_map(|(x, y, w, h, s)| (BoxF::new(x, y, x + w, y + h), s)),
            0..400,
        )
    }

    proptest! {
        #[test]
        fn nms_keeps_a_maximal_set_of_boxes_that_do_not_overlap(
            items in scored_boxes(),
            threshold in 0.05f32..0.95,
            by_min in any::<bool>(),
        ) {
            let overlap = if by_min { Overlap::Min } else { Overlap::Union };
            let (boxes, scores): (Vec<BoxF>, Vec<f32>) = items.into_iter().unzip();
            let keep = nms(&boxes, &scores, threshold, overlap);
            let mut seen = vec![false; boxes.len()];
            for &k in &keep {
                prop_assert!(!seen[k], "index {} kept twice", k);
                seen[k] = true;
            }
            prop_assert!(keep.windows(2).all(|w| scores[w[0]] >= scores[w[1]]));
            for (a, &i) in keep.iter().enumerate() {
                for &j in &keep[a + 1..] {
                    prop_assert!(overlap_of(&boxes[i], &boxes[j], overlap) <= threshold);
                }
            }
            // Every dropped box lost to a kept box at least as confident.
            for j in (0..boxes.len()).filter(|&j| !seen[j]) {
                prop_assert!(keep.iter().any(|&i| scores[i] >= scores[j]
                    && overlap_of(&boxes[i], &boxes[j], overlap) > threshold));
            }
        }
    }
}
