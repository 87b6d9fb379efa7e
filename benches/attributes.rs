//! Attribute model benchmarks: models/faceattr.onnx (or the model in `FACEATTR_MODEL`) on aligned
//! crops of its input size, batch 1, 8 and 32, on one ONNX Runtime thread (as the pipeline's
//! attribute stage runs it); and the crop warp.
//!
//!     cargo bench --bench attributes
//!     FACEATTR_MODEL=runs/x/faceattr.onnx cargo bench --bench attributes   # another model

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faceflow::attributes::{AttributeModel, default_model_path};
use faceflow::detect::Face;

fn bench_attributes(c: &mut Criterion) {
    let path = std::env::var_os("FACEATTR_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(default_model_path);
    let mut model = match AttributeModel::load(&path, 1) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot load the attribute model: {e}");
            return;
        }
    };
    let side = model.spec().input_px();
    // Varied pixels: a constant crop could take shortcuts nowhere, but keep it honest anyway.
    let crop: Vec<u8> = (0..side * side * 3).map(|i| (i * 37 % 251) as u8).collect();
    let mut group = c.benchmark_group(format!("faceattr_{side}px"));
    for batch in [1usize, 8, 32] {
        let crops = vec![crop.clone(); batch];
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| black_box(model.predict(black_box(&crops)).map(|p| p.len())))
        });
    }
    group.finish();

    let (w, h) = (854usize, 480usize);
    let frame: Vec<u8> = (0..w * h * 3).map(|i| (i % 253) as u8).collect();
    let face = Face {
        bbox: [300.0, 100.0, 420.0, 250.0],
        score: 0.99,
        landmarks: [
            [335.0, 160.0],
            [385.0, 160.0],
            [360.0, 190.0],
            [340.0, 220.0],
            [380.0, 220.0],
        ],
    };
    c.bench_function(&format!("align_crop_{side}px"), |b| {
        b.iter(|| black_box(model.crop(black_box(&frame), w, h, &face)))
    });
}

criterion_group!(benches, bench_attributes);
criterion_main!(benches);
