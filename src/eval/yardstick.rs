//! The real-footage yardstick: people labelled by eye in real clips (`tests/yardstick/*.json`, see
//! its README), scored against what a run said about them (its JSON Lines). For each labelled
//! person, the tracks of the run that are theirs (their face boxes overlap the labelled ones);
//! for each attribute, right, wrong or unknown; people counted against people present; tracks
//! on a labelled non-face (phantom people) and tracks on no labelled person.
//!
//! The yardstick is small (tens of people), so every rate comes with its 95 % Wilson interval.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::{FrameRecord, TrackRecord};
use crate::track::iou;

/// One clip's labels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClipLabels {
    /// The clip's file name in the video folder.
    pub clip: String,
    #[serde(default)]
    pub frames: Option<u64>,
    /// Who labelled it, and how.
    #[serde(default)]
    pub how: String,
    pub people: Vec<Person>,
    #[serde(default)]
    pub not_faces: Vec<NotFace>,
}

/// A person present in the clip.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub id: String,
    /// `male`, `female` or `unclear`.
    pub gender: String,
    /// UTKFace's classes, or `unclear`.
    pub race: String,
    /// The age range in years the labeller is sure of; `None`: cannot say.
    pub age: Option<[f32; 2]>,
    #[serde(default)]
    pub note: String,
    /// Frames where the face is visible, with its box.
    pub seen: Vec<Seen>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    pub frame: u64,
    /// `[x1, y1, x2, y2]` in the clip's pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// A spot a detector might take for a face.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotFace {
    pub frame: u64,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub what: String,
}

#[derive(Debug, thiserror::Error)]
pub enum YardstickError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    Record {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl ClipLabels {
    pub fn load(path: &Path) -> Result<Self, YardstickError> {
        let fail = |message: String| YardstickError::Read {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let labels: Self = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        const GENDERS: [&str; 3] = ["male", "female", "unclear"];
        const RACES: [&str; 6] = ["white", "black", "asian", "indian", "others", "unclear"];
        for p in &labels.people {
            if !GENDERS.contains(&p.gender.as_str()) || !RACES.contains(&p.race.as_str()) {
                return Err(fail(format!(
                    "{}: gender {:?} or race {:?} is not one of {GENDERS:?} / {RACES:?}",
                    p.id, p.gender, p.race
                )));
            }
        }
        Ok(labels)
    }
}

/// A face's box and track, as a run said.
pub type FaceSaid = ([f32; 4], Option<u64>);

/// What a run said, as far as the yardstick reads it.
#[derive(Debug, Clone, Default)]
pub struct RunSaid {
    /// Per frame: each face's box and track.
    pub faces: HashMap<u64, Vec<FaceSaid>>,
    /// The people (track records), by track id.
    pub tracks: BTreeMap<u64, TrackSaid>,
}

/// A track record's attributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackSaid {
    pub frames: u64,
    pub gender: Option<String>,
    pub race: Option<String>,
    pub age_years: Option<f32>,
}

impl RunSaid {
    /// Reads a run's JSON Lines (one stream).
    pub fn load(path: &Path) -> Result<Self, YardstickError> {
        let text = std::fs::read_to_string(path).map_err(|e| YardstickError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut said = RunSaid::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| YardstickError::Record {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            // The records' own types: a record missing a field is refused, not read as zeros.
            match v["type"].as_str() {
                Some("frame") => {
                    let r: FrameRecord =
                        serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
                    said.faces
                        .entry(r.frame)
                        .or_default()
                        .extend(r.faces.iter().map(|f| (f.face.bbox, f.track_id)));
                }
                Some("track") => {
                    let r: TrackRecord =
                        serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
                    let a = r.attributes;
                    said.tracks.insert(
                        r.track_id,
                        TrackSaid {
                            frames: r.frames,
                            gender: a.gender.map(|g| g.label),
                            race: a.race.map(|g| g.label),
                            age_years: a.age.map(|g| g.years),
                        },
                    );
                }
                _ => {}
            }
        }
        Ok(said)
    }
}

/// Right, wrong and unknown answers about one attribute; `missed`: people the run has no track
/// for (nothing said).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Answers {
    pub right: u32,
    pub wrong: u32,
    pub unknown: u32,
    pub missed: u32,
}

impl Answers {
    fn add(&mut self, other: Answers) {
        self.right += other.right;
        self.wrong += other.wrong;
        self.unknown += other.unknown;
        self.missed += other.missed;
    }

    /// People scored (a label to check against).
    pub fn scored(&self) -> u32 {
        self.right + self.wrong + self.unknown + self.missed
    }
}

/// One clip scored.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClipScore {
    pub clip: String,
    pub present: u32,
    /// Present people whose face shows (labelled in `seen`): the only ones scored.
    pub with_face: u32,
    /// People the run counted (track records).
    pub counted: u32,
    /// Present people with at least one track of theirs.
    pub found: u32,
    /// Tracks of the found people (ids per person = tracks / found).
    pub tracks_of_people: u32,
    /// Tracks on a labelled non-face.
    pub phantoms: u32,
    /// Tracks on no labelled person or non-face.
    pub unmatched: u32,
    pub gender: Answers,
    pub race: Answers,
    pub age: Answers,
    /// Per person: id, the run's tracks, and what was said (gender, race, age).
    pub people: Vec<PersonScore>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PersonScore {
    pub id: String,
    pub tracks: Vec<u64>,
    pub gender: String,
    pub race: String,
    pub age: String,
}

/// Whether a face the run found is the labelled face: they overlap (IoU ≥ 0.3), or the centre
/// of each lies in the other (a loose label box around a tight detection).
fn same_face(found: [f32; 4], labelled: [f32; 4]) -> bool {
    let inside =
        |p: [f32; 2], r: [f32; 4]| p[0] >= r[0] && p[0] <= r[2] && p[1] >= r[1] && p[1] <= r[3];
    let centre = |r: [f32; 4]| [(r[0] + r[2]) / 2.0, (r[1] + r[3]) / 2.0];
    iou(found, labelled) >= 0.3
        || (inside(centre(found), labelled) && inside(centre(labelled), found))
}

/// Frames between two `seen` entries over which the face is taken to move in a straight line;
/// a longer gap means the person left and came back (see tests/yardstick/README.md).
const MAX_INTERPOLATED_FRAMES: u64 = 60;
/// Frames before the first and after the last `seen` entry over which the face is taken to stay.
const HELD_FRAMES: u64 = 3;

/// A person's face box in `frame`, from the labelled frames around it, if it is known there.
fn labelled_box(seen: &[Seen], frame: u64) -> Option<[f32; 4]> {
    let mut sorted: Vec<&Seen> = seen.iter().collect();
    sorted.sort_by_key(|s| s.frame);
    if let Some(s) = sorted.iter().find(|s| s.frame == frame) {
        return Some(s.bbox);
    }
    let first = sorted.first()?;
    let last = sorted.last()?;
    if frame < first.frame {
        return (first.frame - frame <= HELD_FRAMES).then_some(first.bbox);
    }
    if frame > last.frame {
        return (frame - last.frame <= HELD_FRAMES).then_some(last.bbox);
    }
    let after = sorted.iter().position(|s| s.frame > frame)?;
    let (a, b) = (sorted[after - 1], sorted[after]);
    if b.frame - a.frame > MAX_INTERPOLATED_FRAMES {
        // A gap (the person left and came back): only near either end.
        if frame - a.frame <= HELD_FRAMES {
            return Some(a.bbox);
        }
        if b.frame - frame <= HELD_FRAMES {
            return Some(b.bbox);
        }
        return None;
    }
    let t = (frame - a.frame) as f32 / (b.frame - a.frame) as f32;
    Some(std::array::from_fn(|k| {
        a.bbox[k] + t * (b.bbox[k] - a.bbox[k])
    }))
}

/// What a run said about one attribute of a person, against the label.
fn judge(said: Option<&str>, labelled: &str) -> Option<Answers> {
    if labelled == "unclear" {
        return None;
    }
    Some(match said {
        None => Answers {
            missed: 1,
            ..Default::default()
        },
        Some("unknown") => Answers {
            unknown: 1,
            ..Default::default()
        },
        Some(s) if s == labelled => Answers {
            right: 1,
            ..Default::default()
        },
        Some(_) => Answers {
            wrong: 1,
            ..Default::default()
        },
    })
}

/// Scores one clip's run against its labels.
pub fn score_clip(labels: &ClipLabels, run: &RunSaid) -> ClipScore {
    // Each track's votes: for each person, the frames where the track's face is theirs.
    let mut votes: HashMap<u64, HashMap<usize, u32>> = HashMap::new();
    let mut on_not_face: HashMap<u64, u32> = HashMap::new();
    for (&frame, faces) in &run.faces {
        for &(bbox, track) in faces {
            let Some(track) = track else { continue };
            for (p, person) in labels.people.iter().enumerate() {
                if labelled_box(&person.seen, frame).is_some_and(|b| same_face(bbox, b)) {
                    *votes.entry(track).or_default().entry(p).or_default() += 1;
                }
            }
            if labels
                .not_faces
                .iter()
                .any(|n| n.frame == frame && same_face(bbox, n.bbox))
            {
                *on_not_face.entry(track).or_default() += 1;
            }
        }
    }
    let mut tracks_of: Vec<Vec<u64>> = vec![Vec::new(); labels.people.len()];
    let mut score = ClipScore {
        clip: labels.clip.clone(),
        present: labels.people.len() as u32,
        counted: run.tracks.len() as u32,
        ..Default::default()
    };
    for &track in run.tracks.keys() {
        let best = votes.get(&track).and_then(|v| {
            v.iter()
                .max_by_key(|(p, n)| (**n, std::cmp::Reverse(**p)))
                .map(|(p, _)| *p)
        });
        match best {
            Some(p) => tracks_of[p].push(track),
            None if on_not_face.contains_key(&track) => score.phantoms += 1,
            None => score.unmatched += 1,
        }
    }
    for (person, tracks) in labels.people.iter().zip(&tracks_of) {
        // Someone whose face never shows is present, but nothing can be said of them.
        if person.seen.is_empty() {
            continue;
        }
        score.with_face += 1;
        // The person's answer: their longest track's.
        let main = tracks
            .iter()
            .filter_map(|t| run.tracks.get(t))
            .max_by_key(|t| t.frames);
        if !tracks.is_empty() {
            score.found += 1;
            score.tracks_of_people += tracks.len() as u32;
        }
        let gender = main.and_then(|t| t.gender.as_deref());
        let race = main.and_then(|t| t.race.as_deref());
        if let Some(a) = judge(gender, &person.gender) {
            score.gender.add(a);
        }
        if let Some(a) = judge(race, &person.race) {
            score.race.add(a);
        }
        let years = main.and_then(|t| t.age_years);
        if let Some([lo, hi]) = person.age {
            let a = match years {
                None => Answers {
                    missed: 1,
                    ..Default::default()
                },
                Some(y) if y >= lo && y <= hi => Answers {
                    right: 1,
                    ..Default::default()
                },
                Some(_) => Answers {
                    wrong: 1,
                    ..Default::default()
                },
            };
            score.age.add(a);
        }
        score.people.push(PersonScore {
            id: person.id.clone(),
            tracks: tracks.clone(),
            gender: format!("{} → {}", person.gender, gender.unwrap_or("-")),
            race: format!("{} → {}", person.race, race.unwrap_or("-")),
            age: format!(
                "{} → {}",
                person
                    .age
                    .map_or("-".to_string(), |[lo, hi]| format!("{lo:.0}-{hi:.0}")),
                years.map_or("-".to_string(), |y| format!("{y:.0}"))
            ),
        });
    }
    score
}

/// The 95 % Wilson interval of `k` in `n`.
pub fn wilson(k: u32, n: u32) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let z = 1.96f64;
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The clips summed.
pub fn total(scores: &[ClipScore]) -> ClipScore {
    let mut t = ClipScore {
        clip: "total".into(),
        ..Default::default()
    };
    for s in scores {
        t.present += s.present;
        t.with_face += s.with_face;
        t.counted += s.counted;
        t.found += s.found;
        t.tracks_of_people += s.tracks_of_people;
        t.phantoms += s.phantoms;
        t.unmatched += s.unmatched;
        t.gender.add(s.gender);
        t.race.add(s.race);
        t.age.add(s.age);
    }
    t
}

/// `right/wrong/unknown/missed` with the wrong rate's interval.
fn answers(a: &Answers) -> String {
    let n = a.scored();
    if n == 0 {
        return "-".into();
    }
    let (lo, hi) = wilson(a.wrong, n);
    format!(
        "{}/{}/{}/{} (wrong {:.0}%, 95% {:.0}-{:.0}%)",
        a.right,
        a.wrong,
        a.unknown,
        a.missed,
        100.0 * a.wrong as f64 / n as f64,
        100.0 * lo,
        100.0 * hi
    )
}

/// The scores as a Markdown table, with each person's answers below.
pub fn table(scores: &[ClipScore]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| clip | present (face shows) | counted | found | ids per person | phantom | unmatched | gender right/wrong/unknown/missed | race | age (years in range) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let all = total(scores);
    for s in scores.iter().chain(std::iter::once(&all)) {
        let ids = if s.found == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", s.tracks_of_people as f64 / s.found as f64)
        };
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {} | {ids} | {} | {} | {} | {} | {} |",
            s.clip,
            s.present,
            s.with_face,
            s.counted,
            s.found,
            s.phantoms,
            s.unmatched,
            answers(&s.gender),
            answers(&s.race),
            answers(&s.age)
        );
    }
    let _ = writeln!(out);
    for s in scores {
        for p in &s.people {
            let _ = writeln!(
                out,
                "- {} {}: tracks {:?}; gender {}; race {}; age {}",
                s.clip, p.id, p.tracks, p.gender, p.race, p.age
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str, gender: &str, seen: &[(u64, [f32; 4])]) -> Person {
        Person {
            id: id.into(),
            gender: gender.into(),
            race: "white".into(),
            age: Some([20.0, 30.0]),
            note: String::new(),
            seen: seen
                .iter()
                .map(|&(frame, bbox)| Seen { frame, bbox })
                .collect(),
        }
    }

    fn track(gender: &str, frames: u64, years: f32) -> TrackSaid {
        TrackSaid {
            frames,
            gender: Some(gender.into()),
            race: Some("white".into()),
            age_years: Some(years),
        }
    }

    #[test]
    fn boxes_between_labelled_frames_are_interpolated_and_gaps_are_not() {
        let seen = [
            Seen {
                frame: 0,
                bbox: [0.0, 0.0, 10.0, 10.0],
            },
            Seen {
                frame: 10,
                bbox: [10.0, 0.0, 20.0, 10.0],
            },
            Seen {
                frame: 100,
                bbox: [50.0, 0.0, 60.0, 10.0],
            },
        ];
        assert_eq!(labelled_box(&seen, 5), Some([5.0, 0.0, 15.0, 10.0]));
        assert_eq!(labelled_box(&seen, 12), Some([10.0, 0.0, 20.0, 10.0]));
        assert_eq!(labelled_box(&seen, 50), None);
        assert_eq!(labelled_box(&seen, 98), Some([50.0, 0.0, 60.0, 10.0]));
        assert_eq!(labelled_box(&seen, 104), None);
    }

    /// Two people, one found twice (an id switch), a track on a shoe, one on nobody: each is
    /// counted where it belongs, and each person's longest track answers for them.
    #[test]
    fn tracks_are_matched_to_people_phantoms_and_the_unmatched() {
        let labels = ClipLabels {
            clip: "c.mp4".into(),
            frames: None,
            how: String::new(),
            people: vec![
                person(
                    "a",
                    "male",
                    &[(0, [0.0, 0.0, 10.0, 10.0]), (20, [0.0, 0.0, 10.0, 10.0])],
                ),
                person(
                    "b",
                    "female",
                    &[(0, [50.0, 0.0, 60.0, 10.0]), (20, [50.0, 0.0, 60.0, 10.0])],
                ),
            ],
            not_faces: vec![NotFace {
                frame: 5,
                bbox: [100.0, 100.0, 110.0, 110.0],
                what: "shoe".into(),
            }],
        };
        let mut run = RunSaid::default();
        for f in 0..=20 {
            let a_track = if f < 10 { 1 } else { 2 };
            run.faces.insert(
                f,
                vec![
                    ([1.0, 0.0, 11.0, 10.0], Some(a_track)),
                    ([50.0, 1.0, 60.0, 11.0], Some(3)),
                ],
            );
        }
        run.faces
            .entry(5)
            .or_default()
            .push(([101.0, 100.0, 111.0, 110.0], Some(4)));
        run.faces
            .entry(6)
            .or_default()
            .push(([300.0, 300.0, 310.0, 310.0], Some(5)));
        run.tracks.insert(1, track("female", 10, 25.0));
        run.tracks.insert(2, track("male", 11, 40.0));
        run.tracks.insert(3, track("unknown", 21, 22.0));
        run.tracks.insert(4, track("male", 1, 30.0));
        run.tracks.insert(5, track("male", 1, 30.0));
        let s = score_clip(&labels, &run);
        assert_eq!((s.present, s.counted, s.found), (2, 5, 2));
        assert_eq!(s.tracks_of_people, 3);
        assert_eq!((s.phantoms, s.unmatched), (1, 1));
        // a: track 2 (11 frames) says male, right; b: unknown.
        assert_eq!(
            s.gender,
            Answers {
                right: 1,
                unknown: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            s.age,
            Answers {
                right: 1,
                wrong: 1,
                ..Default::default()
            }
        );
        assert!(table(&[s]).contains("| total | 2 (2) | 5 | 2 | 1.50 | 1 | 1 |"));
    }

    #[test]
    fn wilson_intervals_are_wide_on_few_people() {
        let (lo, hi) = wilson(1, 23);
        assert!(lo < 0.01 && (0.2..0.25).contains(&hi), "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    /// The labels kept in tests/yardstick read, and each person whose face shows has it in at
    /// least three frames.
    #[test]
    fn the_kept_labels_read() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/yardstick");
        let mut read = 0;
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let labels = ClipLabels::load(&path).unwrap();
                read += 1;
                for p in &labels.people {
                    assert!(
                        p.seen.is_empty() || p.seen.len() >= 3,
                        "{}: {} seen in too few frames",
                        path.display(),
                        p.id
                    );
                    for s in &p.seen {
                        assert!(
                            s.bbox[2] > s.bbox[0] && s.bbox[3] > s.bbox[1],
                            "{}: {}",
                            path.display(),
                            p.id
                        );
                    }
                }
            }
        }
        assert!(read >= 7, "{read} label files");
    }
}
