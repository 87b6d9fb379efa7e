//! Tracking on real video: one person, one track id, steady labels, one track record.

use std::collections::HashMap;

use crate::util::*;

#[test]
fn one_person_gets_one_track_steady_labels_and_one_record() {
    let Some(clip) = shared_data("video/intel_head-pose-face-detection-male.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let out = run_ok(
        bin()
            .args(["run", "--input"])
            .arg(&clip)
            .arg("--json")
            .arg(&json),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let frames = read_jsonl(&json);
    assert_eq!(frames.len(), 62);
    let mut per_id: HashMap<u64, usize> = HashMap::new();
    let mut labels = Vec::new();
    for r in &frames {
        assert_eq!(r["type"], "frame");
        for face in r["faces"].as_array().unwrap() {
            let id = face["track_id"]
                .as_u64()
                .expect("every face has a track id");
            *per_id.entry(id).or_default() += 1;
            labels.push((id, face["gender"]["label"].as_str().unwrap().to_string()));
        }
    }
    let faces: usize = per_id.values().sum();
    let (&main, &main_faces) = per_id.iter().max_by_key(|(_, n)| **n).unwrap();
    assert!(
        main_faces as f64 >= 0.95 * faces as f64,
        "one person, one id: {per_id:?}"
    );
    // Labels along the track change at most once (the first readings settling).
    let along: Vec<&str> = labels
        .iter()
        .filter(|(id, _)| *id == main)
        .map(|(_, l)| l.as_str())
        .collect();
    let flips = along.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(flips <= 1, "{flips} flips: {along:?}");
    let tracks = read_tracks(&json);
    let person = tracks
        .iter()
        .find(|t| t["track_id"] == main)
        .unwrap_or_else(|| panic!("no track record for {main}: {tracks:?}"));
    assert_eq!(person["stream"], "0");
    assert_eq!(person["frames"].as_u64().unwrap() as usize, main_faces);
    assert!(person["first_frame"].as_u64().unwrap() <= person["last_frame"].as_u64().unwrap());
    assert!(person["gender"]["label"].is_string() && person["age"]["group"].is_string());
    assert_eq!(
        person["gender"]["label"].as_str().unwrap(),
        *along.last().unwrap(),
        "the record carries the track's final estimate"
    );
    let people = match tracks.len() {
        1 => "1 person".to_string(),
        n => format!("{n} people"),
    };
    assert!(stderr.contains(&people), "{stderr}");
}
