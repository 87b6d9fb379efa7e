//! `faceflow detect` on still images: records and aligned crops.

use crate::util::*;

#[test]
fn detect_writes_records_and_aligned_crops() {
    let Some(img) = shared_data("utkface/100_0_0_20170112213500903.jpg.chip.jpg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let crops = dir.path().join("crops");
    let out = run_ok(
        bin()
            .args(["detect", "--json", "-", "--crops"])
            .arg(&crops)
            .args(["--crop-size", "96"])
            .arg(&img),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rec: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(rec["image"].as_str().unwrap(), img.to_str().unwrap());
    assert_eq!(
        (rec["width"].as_u64(), rec["height"].as_u64()),
        (Some(200), Some(200))
    );
    let faces = rec["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "{text}");
    let crop_path = crops.join("100_0_0_20170112213500903.jpg.chip_face0.png");
    let crop = image::open(&crop_path).unwrap().to_rgb8();
    assert_eq!(crop.dimensions(), (96, 96));
    // The warp puts the nose on the template's nose (48, 57.6 in a 96 px crop with the default
    // margin): the area around it is face, not black border. (UTKFace chips are tight, so the
    // margin reaches past the chip and the top of the crop is black.)
    let centre: Vec<f64> = (48..68)
        .flat_map(|y| (36..60).map(move |x| (x, y)))
        .map(|(x, y)| {
            crop.get_pixel(x, y)
                .0
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / 3.0
        })
        .collect();
    let mean = centre.iter().sum::<f64>() / centre.len() as f64;
    let black = centre.iter().filter(|&&v| v < 8.0).count();
    assert!(
        mean > 60.0 && black == 0,
        "crop centre mean {mean}, {black} black pixels"
    );
}

#[test]
fn interrupted_analyze_keeps_complete_records_of_the_images_done() {
    let Some(dir) = shared_data("utkface") else {
        return;
    };
    let mut images: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    images.sort();
    images.truncate(2000);
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("faces.jsonl");
    let (out, took) = interrupt_after(
        bin()
            .arg("analyze")
            .arg(format!("--json={}", json.display()))
            .args(&images),
        std::time::Duration::from_secs(3),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted after"), "{stderr}");
    let records = read_jsonl(&json);
    assert!(!records.is_empty() && records.len() < images.len());
    for (record, image) in records.iter().zip(&images) {
        assert_eq!(record["image"], image.display().to_string());
    }
}

#[test]
fn faces_filling_a_tight_portrait_are_found() {
    // UTKFace chips where the face fills the picture: a plain MTCNN pass finds nothing in them.
    let names = [
        "25_0_4_20170117155154894.jpg.chip.jpg",
        "45_0_0_20170117182929156.jpg.chip.jpg",
    ];
    let Some(images) = names
        .iter()
        .map(|n| shared_data(&format!("utkface/{n}")))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let out = run_ok(bin().args(["detect", "--json", "-"]).args(&images));
    let text = String::from_utf8(out.stdout).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    for rec in &records {
        let faces = rec["faces"].as_array().unwrap();
        assert_eq!(faces.len(), 1, "{rec}");
        let [x1, y1, x2, y2] = bbox(&faces[0]);
        // Boxes are in the picture's own pixels and cover most of it.
        assert!(
            x1 >= 0.0 && y1 >= 0.0 && x2 <= 200.0 && y2 <= 200.0,
            "{rec}"
        );
        assert!((x2 - x1) * (y2 - y1) > 0.3 * 200.0 * 200.0, "{rec}");
    }
}
