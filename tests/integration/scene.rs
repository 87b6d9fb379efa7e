//! Synthetic scenes with known ground truth: UTKFace faces moving over a background, entering,
//! leaving and crossing each other, encoded to H.264 and run through faceflow; the tracks are
//! scored against the truth (id consistency, id switches, ids per person, gender flicker).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage, imageops};

use crate::util::*;

/// A face pasted along a path: through each [`Key`] in turn (top-left corner and side, moving in
/// straight lines between them), from the first key's frame to the last's.
struct Walker {
    face: RgbImage,
    /// UTKFace's label: "male" or "female".
    gender: &'static str,
    path: Vec<Key>,
}

/// Where a walker is at `frame`: top-left corner `(x, y)` and square side, pixels.
#[derive(Debug, Clone, Copy)]
struct Key {
    frame: u32,
    x: f32,
    y: f32,
    side: f32,
}

impl Walker {
    /// From `from` to `to` (top-left corners) between frames `start` and `end`, `side` square.
    fn straight(
        face: RgbImage,
        gender: &'static str,
        (from, to): ((f32, f32), (f32, f32)),
        (start, end): (u32, u32),
        side: u32,
    ) -> Self {
        let key = |frame, (x, y): (f32, f32)| Key {
            frame,
            x,
            y,
            side: side as f32,
        };
        Self {
            face,
            gender,
            path: vec![key(start, from), key(end.max(start + 1), to)],
        }
    }

    /// Top-left corner and side at `frame` (the side even, so resized faces are reused).
    fn at(&self, frame: u32) -> Option<(i64, i64, u32)> {
        let first = self.path.first()?;
        let last = self.path.last()?;
        if frame < first.frame || frame > last.frame {
            return None;
        }
        let i = self
            .path
            .windows(2)
            .position(|w| frame <= w[1].frame)
            .unwrap_or(0);
        let (a, b) = match self.path.get(i..i + 2) {
            Some([a, b]) => (*a, *b),
            _ => (*first, *first),
        };
        let t = (frame - a.frame) as f32 / (b.frame - a.frame).max(1) as f32;
        let lerp = |u: f32, v: f32| u + (v - u) * t;
        let side = (lerp(a.side, b.side) / 2.0).round() as u32 * 2;
        Some((
            lerp(a.x, b.x).round() as i64,
            lerp(a.y, b.y).round() as i64,
            side.max(2),
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
    // A soft gradient background with some texture.
    let background = RgbImage::from_fn(w, h, |x, y| {
        let v = ((x * 7 + y * 3) % 40) as u8;
        Rgb([60 + v, 70 + (y * 60 / h) as u8, 80 + (x * 40 / w) as u8])
    });
    // Each face at each side it takes, resized once.
    let mut faces: HashMap<(usize, u32), RgbImage> = HashMap::new();
    for f in 0..frames {
        let mut img = background.clone();
        let mut here = BTreeMap::new();
        for (i, walker) in walkers.iter().enumerate() {
            let Some((x, y, side)) = walker.at(f) else {
                continue;
            };
            let face = faces.entry((i, side)).or_insert_with(|| {
                imageops::resize(&walker.face, side, side, imageops::FilterType::Triangle)
            });
            imageops::overlay(&mut img, face, x, y);
            let s = side as f32;
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
        // A face mostly hidden by those drawn later is not expected to be seen: their squares'
        // overlaps with its face box, summed, over half of it (a small face pasted over a large
        // one's middle hides that face, though it covers little of its square).
        let visible: BTreeMap<usize, [f32; 4]> = here
            .iter()
            .filter(|(i, b)| {
                let f = face_box(b);
                let covered: f64 = here
                    .iter()
                    .filter(|(j, _)| j > i)
                    .map(|(_, c)| {
                        let ow = (f[2].min(c[2] as f64) - f[0].max(c[0] as f64)).max(0.0);
                        let oh = (f[3].min(c[3] as f64) - f[1].max(c[1] as f64)).max(0.0);
                        ow * oh
                    })
                    .sum();
                covered <= 0.5 * (f[2] - f[0]) * (f[3] - f[1])
            })
            .map(|(i, b)| (*i, *b))
            .collect();
        truth.visible.push(visible);
        truth.all.push(here);
        // JPEG: ten times faster to write than PNG at 720p; the clip is lossy H.264 anyway.
        img.save(pngs.join(format!("f{f:04}.jpg"))).unwrap();
    }
    let clip = dir.join("scene.mp4");
    encode_h264(
        &[
            "multifilesrc",
            &format!("location={}/f%04d.jpg", pngs.display()),
            "index=0",
            "caps=image/jpeg,framerate=25/1",
            "!",
            "jpegdec",
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
    /// People whose main track's record names their gender.
    track_gender_right: usize,
    /// Track ids given to two people or more, 5 frames or more each (per-person figures do not
    /// see an id handed on to someone else; a people count does).
    shared_ids: usize,
}

/// Where MTCNN boxes the face of a pasted UTKFace chip, as fractions of its square `[x1, y1, x2,
/// y2]`: the medians over the harder scene's faces that overlapped no other (6,618 boxes; 80 % of
/// each edge within ±0.1 of it). Nearly the whole chip: the chips are cut close around the face.
const FACE_IN_SQUARE: [f64; 4] = [0.09, -0.08, 0.93, 0.97];

/// The face box expected for the pasted square `t`.
fn face_box(t: &[f32; 4]) -> [f64; 4] {
    let (w, h) = ((t[2] - t[0]) as f64, (t[3] - t[1]) as f64);
    let [l, u, r, d] = FACE_IN_SQUARE;
    [
        t[0] as f64 + l * w,
        t[1] as f64 + u * h,
        t[0] as f64 + r * w,
        t[1] as f64 + d * h,
    ]
}

/// Matches each record's faces to the truth (a face belongs to the person whose face box it
/// overlaps most) and scores the track ids.
fn score(
    records: &[serde_json::Value],
    tracks: &[serde_json::Value],
    truth: &Truth,
    walkers: &[Walker],
) -> Score {
    let mut per_person: HashMap<usize, Vec<(u64, u64, String)>> = HashMap::new();
    let mut s = Score::default();
    for r in records {
        let f = r["frame"].as_u64().unwrap();
        let Some(visible) = truth.visible.get(f as usize) else {
            continue;
        };
        s.expected_faces += visible.len();
        // The person whose face box ([`face_box`]) overlaps the detection: one detection per
        // person and one person per detection, best overlaps first. Only people in view count: a
        // face mostly hidden behind another is neither expected nor credited (a detection there
        // is the face in front, or a part).
        let faces = r["faces"].as_array().unwrap();
        let mut pairs: Vec<(f64, usize, usize)> = faces
            .iter()
            .enumerate()
            .flat_map(|(d, face)| {
                let b = bbox(face);
                visible
                    .iter()
                    .map(move |(p, t)| (iou(b, face_box(t)), d, *p))
            })
            .filter(|(o, _, _)| *o > 0.1)
            .collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut taken_faces, mut taken_people) = (Vec::new(), Vec::new());
        for (_, d, p) in pairs {
            if taken_faces.contains(&d) || taken_people.contains(&p) {
                continue;
            }
            taken_faces.push(d);
            taken_people.push(p);
            let face = &faces[d];
            let id = face["track_id"].as_u64().unwrap();
            let gender = face["gender"]["label"].as_str().unwrap_or("").to_string();
            per_person.entry(p).or_default().push((f, id, gender));
        }
    }
    let mut frames_of: HashMap<u64, HashMap<usize, usize>> = HashMap::new();
    for (p, seen) in &per_person {
        for (_, id, _) in seen {
            *frames_of.entry(*id).or_default().entry(*p).or_default() += 1;
        }
    }
    s.shared_ids = frames_of
        .values()
        .filter(|people| people.values().filter(|n| **n >= 5).count() >= 2)
        .count();
    for (p, seen) in &per_person {
        if std::env::var("SCENE_DEBUG").is_ok() {
            // Runs of one id: (first frame, last frame, id).
            let mut runs: Vec<(u64, u64, u64)> = Vec::new();
            for &(f, id, _) in seen {
                match runs.last_mut() {
                    Some(r) if r.2 == id => r.1 = f,
                    _ => runs.push((f, f, id)),
                }
            }
            eprintln!("person {p}: {runs:?}");
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
        let record_gender = tracks
            .iter()
            .find(|t| t["track_id"].as_u64() == Some(main))
            .and_then(|t| t["gender"]["label"].as_str());
        s.track_gender_right += usize::from(record_gender == Some(walkers[*p].gender));
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

/// Runs faceflow on `clip` with `extra` flags; the scores and the run's fps (from its summary).
fn run_scene(clip: &Path, truth: &Truth, walkers: &[Walker], extra: &[&str]) -> (Score, f64) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let out = run_ok(
        bin()
            .args(["run", "--input"])
            .arg(clip)
            .arg("--json")
            .arg(&json)
            .args(extra),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fps = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_suffix(" fps")?.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN);
    let s = score(&read_jsonl(&json), &read_tracks(&json), truth, walkers);
    (s, fps)
}

impl Score {
    fn found(&self) -> f64 {
        self.matched as f64 / self.expected_faces.max(1) as f64
    }
    fn consistency(&self) -> f64 {
        self.on_main_id as f64 / self.matched.max(1) as f64
    }
    fn ids_per_person(&self) -> f64 {
        self.ids as f64 / self.people.max(1) as f64
    }
    fn line(&self) -> String {
        format!(
            "{} people, faces found {}/{} ({:.3}), id consistency {:.3}, {} id switches, {:.2} ids per person, {} ids shared by people, gender flicker {}/{}, track gender right {}/{}",
            self.people,
            self.matched,
            self.expected_faces,
            self.found(),
            self.consistency(),
            self.switches,
            self.ids_per_person(),
            self.shared_ids,
            self.gender_flips,
            self.gender_pairs,
            self.track_gender_right,
            self.people,
        )
    }
}

/// Three people: two cross at the same height (the second in front), one enters from the left
/// edge and leaves at the top.
fn three_people(utk: &Path) -> Vec<Walker> {
    let face = |name: &str| image::open(utk.join(name)).unwrap().to_rgb8();
    vec![
        Walker::straight(
            face("26_1_2_20170103181524137.jpg.chip.jpg"),
            "female",
            ((20.0, 120.0), (520.0, 120.0)),
            (0, 119),
            110,
        ),
        Walker::straight(
            face("25_0_4_20170117155154894.jpg.chip.jpg"),
            "male",
            ((520.0, 135.0), (20.0, 135.0)),
            (0, 119),
            110,
        ),
        Walker::straight(
            face("1_0_0_20161219140623097.jpg.chip.jpg"),
            "male",
            ((-60.0, 250.0), (300.0, -60.0)),
            (10, 110),
            100,
        ),
    ]
}

#[test]
fn people_crossing_entering_and_leaving_keep_their_ids() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let walkers = three_people(&utk);
    let dir = tempfile::tempdir().unwrap();
    let (clip, truth) = render(dir.path(), &walkers, 120, (640, 400));
    // Full detection on every frame, and the default (by time: every third frame at 25 fps) with
    // the faces followed between.
    for every in ["1", "auto"] {
        let (s, _) = run_scene(&clip, &truth, &walkers, &["--detect-every", every]);
        eprintln!("scene, detect every {every}: {}", s.line());
        assert_eq!(s.people, 3);
        assert!(s.found() >= 0.8, "{s:?}");
        assert!(s.consistency() >= 0.95, "{s:?}");
        assert!(s.switches <= 2, "{s:?}");
        assert_eq!(s.shared_ids, 0, "no one's id handed on: {s:?}");
        assert!(s.gender_flips * 100 <= s.gender_pairs, "{s:?}");
    }
}

/// A small deterministic generator (xorshift), so the scene is the same on every machine.
struct Xorshift(u64);

impl Xorshift {
    /// Uniform in [0, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Ten women and ten men, UTKFace adults 20 to 60 spread over the folder (`skip`: how many
/// places along it to start), alternating woman and man.
fn twenty_adults(utk: &Path, skip: usize) -> Vec<(String, &'static str)> {
    let mut names: Vec<String> = std::fs::read_dir(utk)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let label = |name: &str| -> Option<(u32, &'static str)> {
        let mut parts = name.split('_');
        let age: u32 = parts.next()?.parse().ok()?;
        let gender = match parts.next()? {
            "0" => "male",
            "1" => "female",
            _ => return None,
        };
        parts.next()?;
        parts.next()?;
        (20..=60).contains(&age).then_some((age, gender))
    };
    let mut chosen: Vec<(String, &'static str)> = Vec::new();
    for want in ["female", "male"] {
        let of_gender: Vec<&String> = names
            .iter()
            .filter(|n| label(n).is_some_and(|(_, g)| g == want))
            .collect();
        let stride = (of_gender.len() / 10).max(1);
        chosen.extend(
            of_gender
                .iter()
                .skip(skip)
                .step_by(stride)
                .take(10)
                .map(|n| ((*n).clone(), want)),
        );
    }
    let (women, men) = chosen.split_at(10);
    women
        .iter()
        .zip(men)
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect()
}

/// Twenty people over 40 s of 1280×720: in pairs that enter from opposite edges at about the same
/// height and cross in the middle (one passes in front of the other), drifting up or down, 90 to
/// 150 pixels, several in view at once. Faces: UTKFace adults 20 to 60, ten women and ten men,
/// spread over the folder.
fn twenty_people(utk: &Path) -> Vec<Walker> {
    // Alternate women and men, so each crossing pair has one of each.
    let order = twenty_adults(utk, 0);
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let (w, h) = (1280.0f32, 720.0f32);
    let mut walkers = Vec::new();
    let mut lane = 0.0;
    for (k, (name, gender)) in order.into_iter().enumerate() {
        let side = 90 + (rng.next() * 60.0) as u32;
        let s = side as f32;
        let pair = k / 2;
        if k % 2 == 0 {
            lane = 60.0 + rng.next() * (h - 2.0 * 60.0 - 150.0);
        }
        let y0 = lane + (rng.next() - 0.5) * 40.0;
        let y1 = (y0 + (rng.next() - 0.5) * 160.0).clamp(0.0, h - s);
        let (x0, x1) = if k % 2 == 0 {
            (-0.6 * s, w - 0.4 * s)
        } else {
            (w - 0.4 * s, -0.6 * s)
        };
        let start = (pair * 75) as u32 + (rng.next() * 20.0) as u32;
        let end = start + 240 + (rng.next() * 60.0) as u32;
        walkers.push(Walker::straight(
            image::open(utk.join(name)).unwrap().to_rgb8(),
            gender,
            ((x0, y0), (x1, y1)),
            (start, end),
            side,
        ));
    }
    walkers
}

/// Twenty other people over 40 s of 1280×720 who move as people do, not in straight lines: each
/// enters at an edge, walks to three or four places in the frame at its own speed (1.5 to 7
/// pixels a frame, often diagonally), stops at some of them for one to two seconds, grows or
/// shrinks on the way (70 to 180 pixels, as if nearer or further), and leaves at an edge; they
/// enter about every 1.8 s, so their paths cross and pass close at different speeds, and the
/// later one drawn passes in front.
fn twenty_people_moving_differently(utk: &Path) -> Vec<Walker> {
    let order = twenty_adults(utk, 3);
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let (w, h) = (1280.0f32, 720.0f32);
    let mut walkers = Vec::new();
    for (k, (name, gender)) in order.into_iter().enumerate() {
        let mut side = 70.0 + rng.next() * 110.0;
        // Enter at one of the four edges, half outside.
        let edge = |rng: &mut Xorshift, side: f32| -> (f32, f32) {
            match (rng.next() * 4.0) as u32 {
                0 => (-0.5 * side, rng.next() * (h - side)),
                1 => (w - 0.5 * side, rng.next() * (h - side)),
                2 => (rng.next() * (w - side), -0.5 * side),
                _ => (rng.next() * (w - side), h - 0.5 * side),
            }
        };
        let mut frame = (k as f32 * 45.0 + rng.next() * 20.0) as u32;
        let (x, y) = edge(&mut rng, side);
        let mut path = vec![Key { frame, x, y, side }];
        let speed = 1.5 + rng.next() * 5.5;
        let stops = 3 + (rng.next() * 2.0) as usize;
        for stop in 0..=stops {
            let last = *path.last().unwrap();
            side = (side * (0.7 + rng.next() * 0.6)).clamp(70.0, 180.0);
            let (x, y) = if stop == stops {
                edge(&mut rng, side)
            } else {
                (rng.next() * (w - side), rng.next() * (h - side))
            };
            let distance = (x - last.x).hypot(y - last.y);
            frame += (distance / speed).max(10.0) as u32;
            path.push(Key { frame, x, y, side });
            // Some stop for a while.
            if stop < stops && rng.next() < 0.4 {
                frame += 25 + (rng.next() * 25.0) as u32;
                path.push(Key { frame, x, y, side });
            }
        }
        walkers.push(Walker {
            face: image::open(utk.join(name)).unwrap().to_rgb8(),
            gender,
            path,
        });
    }
    walkers
}

/// The harder scene ([`twenty_people_moving_differently`]), scored like the judged one: a
/// measurement, `cargo test --test integration scene::moving -- --ignored --nocapture`
/// (SCENE_DETECT_EVERY, SCENE_KEEP as below).
#[test]
#[ignore]
fn moving_differently_in_a_720p_scene() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let walkers = twenty_people_moving_differently(&utk);
    let frames = walkers
        .iter()
        .filter_map(|w| w.path.last().map(|k| k.frame))
        .max()
        .unwrap_or(0)
        .min(1500)
        + 1;
    measure(
        &walkers,
        frames,
        &format!("20 people moving differently, {frames} frames"),
    );
}

/// Renders `walkers` over `frames` frames of 1280×720 (kept at SCENE_KEEP if set, its truth at
/// SCENE_KEEP.truth.json, for `scripts/scene_score.py`) and runs it with
/// `--detect-every` N for each N in SCENE_DETECT_EVERY (default 1,auto), printing each score.
fn measure(walkers: &[Walker], frames: u32, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (clip, truth) = render(dir.path(), walkers, frames, (1280, 720));
    if let Ok(keep) = std::env::var("SCENE_KEEP") {
        std::fs::copy(&clip, &keep).unwrap();
        // The truth beside it (frame → person → pasted square), to score runs of the kept clip.
        let visible: Vec<&BTreeMap<usize, [f32; 4]>> = truth.visible.iter().collect();
        let text = serde_json::to_string(&visible).unwrap();
        std::fs::write(format!("{keep}.truth.json"), text).unwrap();
    }
    let list = std::env::var("SCENE_DETECT_EVERY").unwrap_or_else(|_| "1,auto".into());
    // SCENE_LIVE_STREAMS=N: N copies played live at once (a machine under load), stream 0 scored.
    let live: usize = std::env::var("SCENE_LIVE_STREAMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for every in list.split(',') {
        if live > 0 {
            let s = run_scene_live(&clip, &truth, walkers, live, every);
            eprintln!(
                "{name}, {live} live copies, detect every {every}: stream 0: {}",
                s.line()
            );
        } else {
            let (s, fps) = run_scene(&clip, &truth, walkers, &["--detect-every", every]);
            eprintln!("{name}, detect every {every}: {fps:.1} fps, {}", s.line());
        }
    }
}

/// [`run_scene`] with `copies` copies of the clip played live in one run; stream 0's records
/// scored (frames it dropped are neither expected nor credited).
fn run_scene_live(
    clip: &Path,
    truth: &Truth,
    walkers: &[Walker],
    copies: usize,
    every: &str,
) -> Score {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let mut cmd = bin();
    cmd.args(["run", "--live", "true", "--detect-every", every, "--json"])
        .arg(&json);
    for _ in 0..copies {
        cmd.arg("--input").arg(clip);
    }
    let out = run_ok(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr
        .lines()
        .find(|l| l.starts_with("faceflow: stream 0 "))
    {
        eprintln!("{line}");
    }
    let of_stream_0 = |records: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        records.into_iter().filter(|r| r["stream"] == "0").collect()
    };
    score(
        &of_stream_0(read_jsonl(&json)),
        &of_stream_0(read_tracks(&json)),
        truth,
        walkers,
    )
}

/// The judged scene at full size: 20 people, 40 s of 1280×720, run with `--detect-every` N for
/// each N in SCENE_DETECT_EVERY (default 1,auto). A measurement (several minutes), not part of
/// the suite: `cargo test --test integration scene::twenty -- --ignored --nocapture`.
#[test]
#[ignore]
fn twenty_people_in_a_720p_scene() {
    let Some(utk) = shared_data("utkface") else {
        return;
    };
    let walkers = twenty_people(&utk);
    measure(&walkers, 1000, "20 people");
}
