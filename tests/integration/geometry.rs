//! The detector at the edges of what frames can be: tiny, thin and huge frames, blank frames, faces
//! cut by the frame's border, and hundreds of faces in one frame.

use faceflow::detect::{DetectConfig, Face, Mtcnn};
use serde_json::Value;

use crate::util::*;

fn assert_inside(faces: &[Face], width: usize, height: usize) {
    for f in faces {
        let [x1, y1, x2, y2] = f.bbox;
        assert!(
            0.0 <= x1
                && x1 < x2
                && x2 <= width as f32
                && 0.0 <= y1
                && y1 < y2
                && y2 <= height as f32,
            "{:?} outside {width}x{height}",
            f.bbox
        );
        assert!(f.landmarks.iter().flatten().all(|v| v.is_finite()));
        assert!((0.0..=1.0).contains(&f.score));
    }
}

/// Deterministic noise (a linear congruential generator), RGB.
fn noise(width: usize, height: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..width * height * 3)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

#[test]
fn tiny_thin_huge_and_blank_frames_are_handled() {
    let mut mtcnn = Mtcnn::new(DetectConfig {
        threads: 2,
        ..DetectConfig::default()
    })
    .unwrap();
    let sizes = [
        (0, 0),
        (1, 1),
        (11, 11),
        (12, 12),
        (13, 7),
        (1, 3000),
        (3000, 1),
        (24, 4000),
        (3840, 2160),
    ];
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let faces = mtcnn.detect(&noise(w, h, i as u64), w, h).unwrap();
        assert_inside(&faces, w, h);
    }
    // Uniform frames hold no face.
    for value in [0u8, 128, 255] {
        let faces = mtcnn.detect(&vec![value; 640 * 480 * 3], 640, 480).unwrap();
        assert!(faces.is_empty(), "{value}: {faces:?}");
    }
    // A buffer shorter than the size it claims is an error, not a panic.
    assert!(mtcnn.detect(&[0u8; 10], 640, 480).is_err());
}

/// UTKFace portraits (200×200) tiled `cols × rows`, each scaled to `tile` px.
fn face_grid(cols: u32, rows: u32, tile: u32) -> Option<image::RgbImage> {
    let dir = shared_data("utkface")?;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    names.sort();
    let mut grid = image::RgbImage::new(cols * tile, rows * tile);
    // Names start with the age: every 37th file spreads the picks over ages and people.
    for (i, path) in names
        .iter()
        .step_by(37)
        .take((cols * rows) as usize)
        .enumerate()
    {
        let face = image::open(path).unwrap().to_rgb8();
        let face =
            image::imageops::resize(&face, tile, tile, image::imageops::FilterType::Triangle);
        let (x, y) = ((i as u32 % cols) * tile, (i as u32 / cols) * tile);
        image::imageops::replace(&mut grid, &face, i64::from(x), i64::from(y));
    }
    Some(grid)
}

#[test]
fn hundreds_of_faces_in_one_frame() {
    let Some(grid) = face_grid(16, 10, 96) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crowd.png");
    grid.save(&path).unwrap();
    let out = run_ok(bin().args(["analyze", "--json", "-"]).arg(&path));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    let faces = record["faces"].as_array().unwrap();
    // 160 portraits; MTCNN misses some hard ones (profiles, babies, heavy blur).
    assert!(faces.len() >= 140, "{} faces of 160", faces.len());
    assert!(faces.len() <= 170, "{} faces of 160", faces.len());
    eprintln!("crowd: {} faces found of 160", faces.len());
    let (w, h) = (f64::from(grid.width()), f64::from(grid.height()));
    let mut tiles_hit = std::collections::HashSet::new();
    for face in faces {
        let [x1, y1, x2, y2] = bbox(face);
        assert!(0.0 <= x1 && x1 < x2 && x2 <= w && 0.0 <= y1 && y1 < y2 && y2 <= h);
        // Every face carries its attributes: one batch of >100 faces went through the model.
        assert!(face["age"]["group"].is_string() && face["gender"]["label"].is_string());
        let centre = ((x1 + x2) / 2.0 / 96.0) as u32 + 16 * ((y1 + y2) / 2.0 / 96.0) as u32;
        tiles_hit.insert(centre);
    }
    assert!(tiles_hit.len() >= 140, "faces in {} tiles", tiles_hit.len());
}

#[test]
fn faces_cut_by_the_frame_border_stay_inside_it() {
    let Some(grid) = face_grid(2, 2, 160) else {
        return;
    };
    let mut mtcnn = Mtcnn::new(DetectConfig::default()).unwrap();
    // Crop the 320×320 grid so every face is cut by an edge: shifts of a third of a face.
    for (x0, y0) in [(50u32, 50u32), (0, 100), (100, 0), (110, 110)] {
        let view =
            image::imageops::crop_imm(&grid, x0, y0, 320 - x0 - 50, 320 - y0 - 50).to_image();
        let (w, h) = (view.width() as usize, view.height() as usize);
        let faces = mtcnn.detect(view.as_raw(), w, h).unwrap();
        assert_inside(&faces, w, h);
        for face in &faces {
            let crop = faceflow::attributes::crop_for_model(
                view.as_raw(),
                w,
                h,
                face,
                &faceflow::model::spec::model_align(
                    faceflow::model::spec::DEFAULT_INPUT_PX,
                    faceflow::model::spec::INPUT_MARGIN,
                ),
            );
            assert!(crop.is_some(), "no crop for {face:?}");
        }
    }
}

#[test]
fn a_detector_that_sees_many_picture_sizes_finds_what_a_fresh_one_finds() {
    let Some(grid) = face_grid(2, 2, 160) else {
        return;
    };
    let mut long_lived = Mtcnn::new(DetectConfig::default()).unwrap();
    // More picture sizes than P-Net keeps memory plans for (16): part way it is rebuilt
    // without them, and nothing it finds may change.
    let mut faces_found = 0;
    for i in 0..20u32 {
        let (w, h) = (320 - 3 * i, 320 - 2 * i);
        let view = image::imageops::crop_imm(&grid, 0, 0, w, h).to_image();
        let (w, h) = (w as usize, h as usize);
        let ours = long_lived.detect(view.as_raw(), w, h).unwrap();
        let fresh = Mtcnn::new(DetectConfig::default())
            .unwrap()
            .detect(view.as_raw(), w, h)
            .unwrap();
        assert_eq!(ours, fresh, "{w}x{h}");
        faces_found += ours.len();
    }
    assert!(
        faces_found >= 40,
        "{faces_found} faces in 20 crops of 4 faces"
    );
}

/// `tiles` (a face grid) pasted onto a grey `width`×`height` frame at (`x`, `y`) each.
fn on_canvas(width: u32, height: u32, tiles: &[(&image::RgbImage, u32, u32)]) -> image::RgbImage {
    let mut frame = image::RgbImage::from_pixel(width, height, image::Rgb([96, 96, 96]));
    for (tile, x, y) in tiles {
        image::imageops::replace(&mut frame, *tile, i64::from(*x), i64::from(*y));
    }
    frame
}

fn side(face: &Face) -> f32 {
    (face.bbox[2] - face.bbox[0]).max(face.bbox[3] - face.bbox[1])
}

/// A coarse keyframe (video, 1080p) leaves the pyramid's finest level out: the smallest faces are
/// found there only where the faces of a recent frame put them. Smaller frames are searched in
/// full.
#[test]
fn a_coarse_search_finds_small_faces_only_where_they_were() {
    let (Some(small), Some(large)) = (face_grid(16, 2, 17), face_grid(4, 1, 200)) else {
        return;
    };
    let mut mtcnn = Mtcnn::new(DetectConfig::default()).unwrap();
    let frame = on_canvas(1920, 1080, &[(&small, 200, 100), (&large, 200, 600)]);
    let (w, h) = (1920, 1080);
    let full = mtcnn.detect(frame.as_raw(), w, h).unwrap();
    let small_in = |faces: &[Face]| faces.iter().filter(|f| side(f) < 32.0).count();
    let large_in = |faces: &[Face]| faces.iter().filter(|f| side(f) > 80.0).count();
    let alone = mtcnn.detect_coarse(frame.as_raw(), w, h, &[]).unwrap();
    let followed = mtcnn.detect_coarse(frame.as_raw(), w, h, &full).unwrap();
    eprintln!(
        "small faces: full {}, coarse alone {}, coarse following {}; large: {} {} {}",
        small_in(&full),
        small_in(&alone),
        small_in(&followed),
        large_in(&full),
        large_in(&alone),
        large_in(&followed)
    );
    // 32 faces of about 18 px (MTCNN's boxes), at the bottom of the finest level's range (the
    // next level finds some of them too).
    assert!(small_in(&full) >= 26, "{} small faces", small_in(&full));
    assert!(small_in(&alone) + 6 <= small_in(&full));
    assert!(small_in(&followed) + 1 >= small_in(&full));
    assert_eq!(large_in(&alone), large_in(&full));
    assert_eq!(large_in(&followed), large_in(&full));
    assert_inside(&followed, w, h);
    // 1280×720: the finest level is cheap there, and searched every time.
    let frame = on_canvas(1280, 720, &[(&small, 100, 100), (&large, 100, 400)]);
    let full = mtcnn.detect(frame.as_raw(), 1280, 720).unwrap();
    let coarse = mtcnn.detect_coarse(frame.as_raw(), 1280, 720, &[]).unwrap();
    assert_eq!(full, coarse);
}
