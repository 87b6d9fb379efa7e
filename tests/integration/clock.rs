//! Clock time in records: a live stream's frames carry when they arrived, consistent with
//! `pts_ms`; a file's carry none unless `--start-time` says when it began; names given with
//! `--input NAME=…` are the streams' ids.

use serde_json::Value;

use crate::util::*;

fn unix_ms(time: &Value) -> f64 {
    let text = time.as_str().unwrap_or_else(|| panic!("no time: {time}"));
    assert!(
        text.ends_with('Z') && text.len() == "2026-12-07T09:30:00.040Z".len(),
        "{text}"
    );
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis() as f64
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

#[test]
fn a_live_stream_carries_the_clock_time_each_frame_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let before_ms = now_ms();
    run_ok(
        bin()
            .args(["run", "--no-attributes", "--input"])
            .arg("door=testsrc://ball?frames=50&size=96x64&fps=25&live=true")
            .arg("--json")
            .arg(&json),
    );
    let after_ms = now_ms();
    let records = read_jsonl(&json);
    assert!(records.len() >= 40, "{} frames", records.len());
    let first = &records[0];
    let (t0, pts0) = (unix_ms(&first["time"]), first["pts_ms"].as_f64().unwrap());
    assert!(before_ms <= t0 && t0 <= after_ms, "{t0} not within the run");
    let mut last = f64::MIN;
    for r in &records {
        assert_eq!(r["stream"], "door");
        let (t, pts) = (unix_ms(&r["time"]), r["pts_ms"].as_f64().unwrap());
        assert!(t > last, "clock time goes back at frame {}", r["frame"]);
        last = t;
        // The timeline of pts_ms, to the rounding of milliseconds.
        assert!(((t - t0) - (pts - pts0)).abs() <= 1.0, "{r}");
    }
}

#[test]
fn a_file_has_clock_time_only_from_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), "clip.mp4", 10, 25);
    let json = dir.path().join("out.jsonl");
    let run = |extra: &[&str]| {
        run_ok(
            bin()
                .args(["run", "--no-attributes", "--input"])
                .arg(&clip)
                .args(extra)
                .arg("--json")
                .arg(&json),
        );
        read_jsonl(&json)
    };
    let plain = run(&[]);
    assert!(
        plain.iter().all(|r| r.get("time").is_none()),
        "{:?}",
        plain[0]
    );
    let timed = run(&["--start-time", "2026-12-07T10:30:00+01:00"]);
    assert_eq!(timed.len(), 10);
    for r in &timed {
        let pts = r["pts_ms"].as_f64().unwrap();
        assert_eq!(unix_ms(&r["time"]), 1_796_635_800_000.0 + pts.round());
    }
    assert_eq!(timed[1]["time"], "2026-12-07T09:30:00.040Z");
    // Beside a camera, --start-time is the file's; the camera keeps its own clock.
    let before_ms = now_ms();
    let mixed = run(&[
        "--input",
        "cam=testsrc://ball?frames=10&size=64x48&live=true",
        "--start-time",
        "2026-12-07T10:30:00+01:00",
    ]);
    let after_ms = now_ms();
    let (file, cam): (Vec<&Value>, Vec<&Value>) = mixed.iter().partition(|r| r["stream"] == "0");
    assert_eq!((file.len(), cam.len()), (10, 10));
    assert_eq!(file[1]["time"], "2026-12-07T09:30:00.040Z");
    for r in cam {
        let t = unix_ms(&r["time"]);
        assert!(before_ms <= t && t <= after_ms, "{r}");
    }
}

#[test]
fn a_start_time_that_cannot_apply_is_one_clear_error() {
    let bad = one_error_line(
        &bin()
            .args(["run", "--no-attributes", "--input"])
            .arg("testsrc://ball?frames=5&size=64x48")
            .args(["--start-time", "yesterday", "--json", "/dev/null"])
            .output()
            .unwrap(),
    );
    assert!(
        bad.contains("--start-time") && bad.contains("RFC 3339"),
        "{bad}"
    );
    let live = one_error_line(
        &bin()
            .args(["run", "--no-attributes", "--input"])
            .arg("testsrc://ball?frames=5&size=64x48&live=true")
            .args([
                "--start-time",
                "2026-12-07T09:30:00Z",
                "--json",
                "/dev/null",
            ])
            .output()
            .unwrap(),
    );
    assert!(
        live.contains("start_time") && live.contains("live"),
        "{live}"
    );
}
