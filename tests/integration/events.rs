//! People announced while in view: `track_start` before the frame that made a track a person and
//! before its `track` record, `track_update` every `--track-updates` seconds; every record type
//! faceflow writes validates against the JSON Schema in docs/records.schema.json.

use std::collections::HashMap;

use serde_json::Value;

use crate::util::*;

fn schema() -> jsonschema::Validator {
    let path = project_root().join("docs/records.schema.json");
    let text = std::fs::read_to_string(&path).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, records: &[Value]) {
    for r in records {
        let errors: Vec<String> = validator.iter_errors(r).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{r}\n{errors:?}");
    }
}

#[test]
fn people_are_announced_before_their_frames_and_records_validate() {
    let Some(clip) = shared_data("video/intel_head-pose-face-detection-female.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    run_ok(
        bin()
            .args(["run", "--input"])
            .arg(format!("door={}", clip.display()))
            .args([
                "--track-updates",
                "1",
                "--start-time",
                "2026-12-07T09:30:00Z",
            ])
            .arg("--json")
            .arg(&json),
    );
    let records = read_all_jsonl(&json);
    let validator = schema();
    assert_valid(&validator, &records);
    let types = |t: &str| records.iter().filter(|r| r["type"] == t).count();
    assert!(
        types("track") >= 1 && types("track_update") >= 1,
        "{records:?}"
    );
    assert_eq!(types("track_start"), types("track"));
    // Per track: where it started, its updates, where its face was first confirmed, its record.
    let mut started: HashMap<u64, usize> = HashMap::new();
    let mut updates: HashMap<u64, Vec<f64>> = HashMap::new();
    let mut confirmed: HashMap<u64, usize> = HashMap::new();
    let mut ended: HashMap<u64, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["stream"], "door");
        let id = r["track_id"].as_u64();
        match r["type"].as_str().unwrap() {
            "track_start" => assert!(started.insert(id.unwrap(), i).is_none(), "twice: {r}"),
            "track_update" => updates
                .entry(id.unwrap())
                .or_default()
                .push(r["pts_ms"].as_f64().unwrap()),
            "track" => assert!(ended.insert(id.unwrap(), i).is_none()),
            _ => {
                for f in r["faces"].as_array().unwrap() {
                    if f["confirmed"] == true {
                        confirmed
                            .entry(f["track_id"].as_u64().unwrap())
                            .or_insert(i);
                    }
                }
            }
        }
    }
    for (id, end) in &ended {
        let start = started[id];
        assert!(
            start < *end,
            "track {id}: started at line {start}, ended at {end}"
        );
        if let Some(first) = confirmed.get(id) {
            assert!(start < *first, "track {id}: announced after its frame");
        }
    }
    for (id, pts) in &updates {
        assert!(started.contains_key(id), "update before a start: {id}");
        for w in pts.windows(2) {
            assert!(w[1] - w[0] >= 1000.0 - 1e-6, "updates too close: {pts:?}");
        }
    }
    // Clock time everywhere, on the file's start.
    assert!(records.iter().all(|r| {
        let t = r.get("time").or(r.get("first_time"));
        t.and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("2026-12-07T09:30:"))
    }));
    // The report reads the records with the events among them.
    run_ok(
        bin()
            .arg("report")
            .arg(&json)
            .arg("--out")
            .arg(dir.path().join("report")),
    );
    assert!(dir.path().join("report/index.html").is_file());
}

#[test]
fn image_records_validate_too() {
    let Some(img) = shared_data("utkface/26_1_2_20170103181524137.jpg.chip.jpg") else {
        return;
    };
    let out = run_ok(bin().arg("analyze").arg(&img));
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert!(!records[0]["faces"].as_array().unwrap().is_empty());
    assert_valid(&schema(), &records);
    // A record the schema must refuse: it can fail.
    let mut wrong = records[0].clone();
    wrong["faces"][0]["gender"]["label"] = "maybe".into();
    assert!(!schema().is_valid(&wrong));
}
