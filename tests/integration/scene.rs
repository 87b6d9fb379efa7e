//! Synthetic scenes with known ground truth: UTKFace faces moving over a background, entering,
//! leaving and crossing each other, encoded to H.264 and run through faceflow; the tracks are
//! scored against the truth (id consistency, id switches, ids per person, gender flicker).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage, imageops};

use crate::util::*;

/// A face pasted at a straight-line path: from `from` to `to` (top-left corners) between frames
/// `start` and `end`, `side` pixels square.
struct Walker {
    face: RgbImage,
    from: (f32, f32),
    to: (f32, f32),
    start: u32,
    end: u32,
    side: u32,
}

impl Walker {
    fn at(&self, frame: u32) -> Option<(i64, i64)> {
        if frame < self.start || frame > self.end {
            return None;
        }
        let t = (frame - self.start) as f32 / (self.end - self.start).max(1) as f32;
        Some((
            (self.from.0 + (self.to.0 - self.from.0) * t).round() as i64,
            (self.from.1 + (self.to.1 - self.from.1) * t).round() as i64,
        ))
    }
}

/// Ground truth of each frame: person index → pasted square `[x1, y1, x2, y2]` (the part inside
/// the frame), for every person drawn (`all`, to attribute faces) and for those not mostly hidden
/// (`visible`, the faces to expect).
struct Truth {
    all: Vec<BTreeMap<usize, [f32; 4]>>,
    visible: Vec<BTreeMap<usize, [f32; 4]>>,
}

/// Renders `frames` frames of `w`×`h` at 25 fps to an MP4 and returns it with the ground truth.
/// Later walkers are drawn over earlier ones (a crossing hides the one behind).
fn render(dir: &Path, walkers: &[Walker], frames: u32, (w, h): (u32, u32)) -> (PathBuf, Truth) {
    let pngs = dir.join("frames");
    std::fs::create_dir_all(&pngs).unwrap();
    let mut truth = Truth {
        all: Vec::new(),
        visible: Vec::new(),
    };
    for f in 0..frames {
        // A soft gradient background with some texture.
        let mut img = RgbImage::from_fn(w, h, |x, y| {
            let v = ((x * 7 + y * 3) % 40) as u8;
            Rgb([60 + v, 70 + (y * 60 / h) as u8, 80 + (x * 40 / w) as u8])
        });
        let mut here = BTreeMap::new();
        for (i, walker) in walkers.iter().enumerate() {
            let Some((x, y)) = walker.at(f) else { continue };
            let face = imageops::resize(
                &walker.face,
                walker.side,
                walker.side,
                imageops::FilterType::Triangle,
            );
            imageops::overlay(&mut img, &face, x, y);
            let s = walker.side as f32;
            let b = [
                (x as f32).max(0.0),
                (y as f32).max(0.0),
                (x as f32 + s).min(w as f32),
                (y as f32 + s).min(h as f32),
            ];
            if b[2] - b[0] > s * 0.5 && b[3] - b[1] > s * 0.5 {
                here.insert(i, b);
            }
        }
        // A face mostly hidden by one drawn later is not expected to be seen.
        let visible: BTreeMap<usize, [f32; 4]> = here
            .iter()
            .filter(|(i, b)| {
                !here.iter().any(|(j, c)| {
                    j > *i && {
                        let ow = (b[2].min(c[2]) - b[0].max(c[0])).max(0.0);
                        let oh = (b[3].min(c[3]) - b[1].max(c[1])).max(0.0);
                        ow * oh > 0.4 * (b[2] - b[0]) * (b[3] - b[1])
                    }
                })
            })
            .map(|(i, b)| (*i, *b))
            .collect();
        truth.visible.push(visible);
        truth.all.push(here);
        img.save(pngs.join(format!("f{f:04}.png"))).unwrap();
    }
    let clip = dir.join("scene.mp4");
    encode_h264(
        &[
            "multifilesrc",
            &format!("location={}/f%04d.png", pngs.display()),
            "index=0",
            "caps=image/png,framerate=25/1",
            "!",
            "pngdec",
        ],
        &clip,
    );
    (clip, truth)
}

#[derive(Debug, Default)]
struct Score {
    /// Per person: frames matched to a face, frames with its main id, id switches, distinct ids.
    matched: usize,
    on_main_id: usize,
    switches: usize,
    ids: usize,
    people: usize,
    expected_faces: usize,
    gender_pairs: usize,
    gender_flips: usize,
}

/// Matches each record's faces to the truth (a face belongs to the person whose face box it
/// overlaps most) and scores the track ids.
fn score(records: &[serde_json::Value], truth: &Truth) -> Score {
    let mut per_person: HashMap<usize, Vec<(u64, u64, String)>> = HashMap::new();
    let mut s = Score::default();
    for r in records {
        let f = r["frame"].as_u64().unwrap();
        let (Some(here), Some(visible)) =
            (truth.all.get(f as usize), truth.visible.get(f as usize))
        else {
            continue;
        };
        s.expected_faces += visible.len();
        for face in r["faces"].as_array().unwrap() {
            let b = bbox(face);
            // The person whose face box (the middle of the pasted square, where UTKFace's
            // aligned face is) overlaps the detection most; the visible part of a face half behind
            // another still overlaps its own face box best.
            let face_box = |t: &[f32; 4]| {
                let (w, h) = ((t[2] - t[0]) as f64, (t[3] - t[1]) as f64);
                [
                    t[0] as f64 + 0.2 * w,
                    t[1] as f64 + 0.2 * h,
                    t[0] as f64 + 0.8 * w,
                    t[1] as f64 + 0.85 * h,
                ]
            };
            if let Some((&p, _)) = here
                .iter()
                .map(|(p, t)| (p, iou(b, face_box(t))))
                .filter(|(_, o)| *o > 0.1)
                .max_by(|a, b| a.1.total_cmp(&b.1))
            {
                let id = face["track_id"].as_u64().unwrap();
                let gender = face["gender"]["label"].as_str().unwrap_or("").to_string();
                per_person.entry(p).or_default().push((f, id, gender));
            }
        }
    }
    for (p, seen) in &per_person {
        if std::env::var("SCENE_DEBUG").is_ok() {
            eprintln!(
                "person {p}: {:?}",
                seen.iter().map(|(f, id, _)| (f, id)).collect::<Vec<_>>()
            );
        }
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for (_, id, _) in seen {
            *counts.entry(*id).or_default() += 1;
        }
        let (&main, &n) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
        s.people += 1;
        s.matched += seen.len();
        s.on_main_id += n;
        s.ids += counts.len();
        s.switches += seen.windows(2).filter(|w| w[0].1 != w[1].1).count();
        let along: Vec<&(u64, u64, String)> =
            seen.iter().filter(|(_, id, _)| *id == main).collect();
        for w in along.windows(2) {
            if w[1].0 == w[0].0 + 1 {
                s.gender_pairs += 1;
                s.gender_flips += usize::from(w[0].2 != w[1].2);
            }
        }
    }
    s
}

#[test]
fn people_crossing_entering_and_leaving_keep_their_ids() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let face = |name: &str| image::open(utk.join(name)).unwrap().to_rgb8();
    let walkers = vec![
        // Two cross each other at the same height; the second passes in front.
        Walker {
            face: face("26_1_2_20170103181524137.jpg.chip.jpg"),
            from: (20.0, 120.0),
            to: (520.0, 120.0),
            start: 0,
            end: 119,
            side: 110,
        },
        Walker {
            face: face("25_0_4_20170117155154894.jpg.chip.jpg"),
            from: (520.0, 135.0),
            to: (20.0, 135.0),
            start: 0,
            end: 119,
            side: 110,
        },
        // One enters from the left edge and leaves at the top.
        Walker {
            face: face("1_0_0_20161219140623097.jpg.chip.jpg"),
            from: (-60.0, 250.0),
            to: (300.0, -60.0),
            start: 10,
            end: 110,
            side: 100,
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let (clip, truth) = render(dir.path(), &walkers, 120, (640, 400));
    let json = dir.path().join("out.jsonl");
    run_ok(
        bin()
            .args(["run", "--input"])
            .arg(&clip)
            .arg("--json")
            .arg(&json),
    );
    let records = read_jsonl(&json);
    let s = score(&records, &truth);
    let consistency = s.on_main_id as f64 / s.matched.max(1) as f64;
    eprintln!(
        "scene: {} people, faces found {}/{} ({:.3}), id consistency {consistency:.3}, {} id switches, {:.2} ids per person, gender flicker {}/{}",
        s.people,
        s.matched,
        s.expected_faces,
        s.matched as f64 / s.expected_faces.max(1) as f64,
        s.switches,
        s.ids as f64 / s.people.max(1) as f64,
        s.gender_flips,
        s.gender_pairs
    );
    assert_eq!(s.people, 3);
    assert!(s.matched as f64 >= 0.8 * s.expected_faces as f64, "{s:?}");
    assert!(consistency >= 0.95, "{s:?}");
    assert!(s.switches <= 2, "{s:?}");
    assert!(s.gender_flips * 100 <= s.gender_pairs, "{s:?}");
}
