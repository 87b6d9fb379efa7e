//! Detector benchmarks: the whole MTCNN cascade on a real portrait, and its pure-Rust parts.
//!
//!     cargo bench --bench detect
//!
//! Uses samples/astronaut.png (made by scripts/deps.sh).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use faceflow::detect::nms::{BoxF, Overlap, nms};
use faceflow::detect::pyramid::{IntegralImage, PixelRect, RgbView, resize_area_normalized};
use faceflow::detect::{DetectConfig, Mtcnn};

/// The portrait letterboxed into a 854×480 frame, as in the demo clip.
fn frame_854x480() -> Option<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/astronaut.png");
    let portrait = image::open(&path).ok()?.to_rgb8();
    let small = image::imageops::resize(&portrait, 480, 480, image::imageops::FilterType::Triangle);
    let mut frame = image::RgbImage::new(854, 480);
    image::imageops::overlay(&mut frame, &small, 187, 0);
    Some(frame.into_raw())
}

fn bench_detect(c: &mut Criterion) {
    let Some(frame) = frame_854x480() else {
        eprintln!("samples/astronaut.png missing: run scripts/deps.sh");
        return;
    };
    let mut group = c.benchmark_group("mtcnn_854x480");
    group.sample_size(20);
    for threads in [1usize, 2] {
        let mut mtcnn = match Mtcnn::new(DetectConfig {
            threads,
            ..DetectConfig::default()
        }) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("cannot build detector: {e}");
                return;
            }
        };
        group.bench_function(format!("min_face_20_threads_{threads}"), |b| {
            b.iter(|| mtcnn.detect(black_box(&frame), 854, 480).map(|f| f.len()))
        });
    }
    let mut mtcnn = Mtcnn::new(DetectConfig {
        min_face_px: 40.0,
        ..DetectConfig::default()
    })
    .ok();
    if let Some(m) = mtcnn.as_mut() {
        group.bench_function("min_face_40_threads_default", |b| {
            b.iter(|| m.detect(black_box(&frame), 854, 480).map(|f| f.len()))
        });
    }
    // Between full searches (`--detect-every`): the face of the frame before followed with R-Net
    // and O-Net alone.
    if let Some(m) = Mtcnn::new(DetectConfig {
        threads: 1,
        ..DetectConfig::default()
    })
    .ok()
    .as_mut()
        && let Ok(previous) = m.detect(&frame, 854, 480)
    {
        group.bench_function("follow_1_face_threads_1", |b| {
            b.iter(|| {
                m.follow(black_box(&frame), 854, 480, &previous)
                    .map(|f| f.len())
            })
        });
    }
    group.finish();

    // The same picture scaled to a 1080p frame: the full search, the coarse one and following, one thread (a
    // video run has one single-threaded detector per core).
    let big = image::RgbImage::from_raw(854, 480, frame.clone())
        .map(|f| image::imageops::resize(&f, 1920, 1080, image::imageops::FilterType::Triangle));
    if let (Some(big), Ok(mut m)) = (
        big,
        Mtcnn::new(DetectConfig {
            threads: 1,
            ..DetectConfig::default()
        }),
    ) {
        let big = big.into_raw();
        let mut group = c.benchmark_group("mtcnn_1920x1080");
        group.sample_size(10);
        group.bench_function("full_threads_1", |b| {
            b.iter(|| m.detect(black_box(&big), 1920, 1080).map(|f| f.len()))
        });
        if let Ok(previous) = m.detect(&big, 1920, 1080) {
            group.bench_function("follow_1_face_threads_1", |b| {
                b.iter(|| {
                    m.follow(black_box(&big), 1920, 1080, &previous)
                        .map(|f| f.len())
                })
            });
            // Every other keyframe of a 1080p video: all levels but the finest, the faces of
            // a recent frame followed.
            group.bench_function("coarse_threads_1", |b| {
                b.iter(|| {
                    m.detect_coarse(black_box(&big), 1920, 1080, &previous)
                        .map(|f| f.len())
                })
            });
        }
        group.finish();
    }

    let view = RgbView::new(&frame, 854, 480).unwrap_or_else(|| unreachable!());
    let mut integral = IntegralImage::new();
    c.bench_function("integral_image_854x480", |b| {
        b.iter(|| integral.rebuild(black_box(view)))
    });
    integral.rebuild(view);
    let full = PixelRect {
        x0: 0,
        y0: 0,
        x1: 854,
        y1: 480,
    };
    let mut out = vec![0f32; 3 * 513 * 289];
    c.bench_function("area_resize_854x480_to_513x289", |b| {
        b.iter(|| resize_area_normalized(&integral, full, 513, 289, black_box(&mut out)))
    });
}

fn bench_nms(c: &mut Criterion) {
    // 2,000 jittered boxes in clusters, like a dense P-Net map.
    let mut boxes = Vec::new();
    let mut scores = Vec::new();
    let mut state = 12345u32;
    let mut rand = || {
        state = state.wrapping_mul(1664525).wrapping_add(1013904223);
        (state >> 8) as f32 / (1u32 << 24) as f32
    };
    for _ in 0..2000 {
        let (cx, cy) = (
            (rand() * 10.0).floor() * 80.0,
            (rand() * 6.0).floor() * 80.0,
        );
        let (x, y, s) = (cx + rand() * 10.0, cy + rand() * 10.0, 30.0 + rand() * 10.0);
        boxes.push(BoxF::new(x, y, x + s, y + s));
        scores.push(rand());
    }
    c.bench_function("nms_union_2000_boxes", |b| {
        b.iter(|| nms(black_box(&boxes), &scores, 0.5, Overlap::Union).len())
    });
}

criterion_group!(benches, bench_detect, bench_nms);
criterion_main!(benches);
