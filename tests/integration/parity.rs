//! MTCNN parity with the reference implementation (facenet-pytorch 2.6.0), on images and video
//! frames it was never tuned on. The golden file holds the reference's boxes (made by
//! models/dev/mtcnn_reference.py); the images themselves are read from ../shared/data.
//!
//! Target: at least 95 % of the reference faces found with IoU ≥ 0.9, at most 5 % extra faces.
//! Boxes of both sides are clipped to the frame first (faceflow reports boxes inside the frame).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::util::*;

const IOU_MATCH: f64 = 0.9;

fn clip_to_frame(b: [f64; 4], w: f64, h: f64) -> [f64; 4] {
    [
        b[0].clamp(0.0, w),
        b[1].clamp(0.0, h),
        b[2].clamp(0.0, w),
        b[3].clamp(0.0, h),
    ]
}

/// (reference faces, matched, extra) for one image: greedy one-to-one matching by IoU.
fn compare(reference: &[Value], ours: &[Value], w: f64, h: f64) -> (usize, usize, usize) {
    let r: Vec<[f64; 4]> = reference
        .iter()
        .map(|f| clip_to_frame(bbox(f), w, h))
        .collect();
    let o: Vec<[f64; 4]> = ours.iter().map(|f| clip_to_frame(bbox(f), w, h)).collect();
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (i, a) in r.iter().enumerate() {
        for (j, b) in o.iter().enumerate() {
            let v = iou(*a, *b);
            if v >= IOU_MATCH {
                pairs.push((v, i, j));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut used_r, mut used_o) = (vec![false; r.len()], vec![false; o.len()]);
    let mut matched = 0;
    for (_, i, j) in pairs {
        if !used_r[i] && !used_o[j] {
            used_r[i] = true;
            used_o[j] = true;
            matched += 1;
        }
    }
    (r.len(), matched, o.len() - matched)
}

#[test]
fn mtcnn_matches_reference_on_unseen_images_and_frames() {
    let golden_path = project_root().join("tests/golden/mtcnn_reference.json");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
    let records = golden["records"].as_array().unwrap();
    let Some(data) = shared_data("utkface").map(|p| p.parent().unwrap().to_path_buf()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut total, mut matched, mut extra) = (0usize, 0usize, 0usize);
    let mut per_source: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut tally = |source: &str, (t, m, e): (usize, usize, usize)| {
        total += t;
        matched += m;
        extra += e;
        let s = per_source.entry(source.to_string()).or_default();
        s.0 += t;
        s.1 += m;
        s.2 += e;
    };

    // Still images through `faceflow detect`, all in one process.
    let images: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("image").is_some())
        .collect();
    let paths: Vec<PathBuf> = images
        .iter()
        .map(|r| data.join(r["image"].as_str().unwrap()))
        .collect();
    let json = dir.path().join("images.jsonl");
    run_ok(
        bin()
            .arg("detect")
            .arg(format!("--json={}", json.display()))
            .args(&paths),
    );
    let ours = read_jsonl(&json);
    assert_eq!(ours.len(), images.len());
    for (r, o) in images.iter().zip(&ours) {
        let (w, h) = (r["width"].as_f64().unwrap(), r["height"].as_f64().unwrap());
        assert_eq!(o["width"].as_f64().unwrap(), w);
        tally(
            "utkface",
            compare(
                r["faces"].as_array().unwrap(),
                o["faces"].as_array().unwrap(),
                w,
                h,
            ),
        );
    }

    // Video frames through `faceflow run`: the same GStreamer decode the reference frames came from.
    let mut by_clip: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.get("video").is_some()) {
        by_clip
            .entry(r["video"].as_str().unwrap())
            .or_default()
            .push(r);
    }
    for (clip, refs) in by_clip {
        let last = refs
            .iter()
            .map(|r| r["frame"].as_u64().unwrap())
            .max()
            .unwrap();
        let json = dir.path().join("clip.jsonl");
        run_ok(
            bin()
                .args(["run", "--input"])
                .arg(data.join(clip))
                .arg("--json")
                .arg(&json)
                .args(["--max-frames", &(last + 1).to_string()])
                // The detector itself on every frame (the default follows faces between
                // full searches, which the reference does not do).
                .args(["--detect-every", "1"]),
        );
        let ours = read_jsonl(&json);
        for r in refs {
            let frame = r["frame"].as_u64().unwrap() as usize;
            let (w, h) = (r["width"].as_f64().unwrap(), r["height"].as_f64().unwrap());
            assert_eq!(ours[frame]["frame"].as_u64().unwrap() as usize, frame);
            tally(
                clip,
                compare(
                    r["faces"].as_array().unwrap(),
                    ours[frame]["faces"].as_array().unwrap(),
                    w,
                    h,
                ),
            );
        }
    }

    for (source, (t, m, e)) in &per_source {
        eprintln!("parity {source}: {m}/{t} reference faces found, {e} extra");
    }
    let recall = matched as f64 / total as f64;
    let extra_rate = extra as f64 / total as f64;
    eprintln!(
        "parity overall: {matched}/{total} = {:.1} % found at IoU >= {IOU_MATCH}, {extra} extra = {:.1} %",
        recall * 100.0,
        extra_rate * 100.0
    );
    assert!(total >= 300, "golden file too small: {total} faces");
    assert!(
        recall >= 0.95,
        "found {:.1} % of reference faces",
        recall * 100.0
    );
    assert!(
        extra_rate <= 0.05,
        "{:.1} % extra faces",
        extra_rate * 100.0
    );
}
