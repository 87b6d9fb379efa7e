//! Several streams in one process: each stream's frames all there and in order, its own counts and
//! summary line, fair scheduling, a failing stream ending alone, Ctrl-C stopping all.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::rtsp::TestServer;
use crate::util::*;

/// (decoded, reported, dropped) of stream `id` from its summary line.
fn stream_counts(stderr: &str, id: &str) -> (usize, usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("faceflow: stream {id} (")))
        .unwrap_or_else(|| panic!("no summary line for stream {id} in {stderr}"));
    (
        decoded_from_summary(line),
        line.split(" decoded, ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap(),
        dropped_from_summary(line),
    )
}

/// Records grouped by stream, each stream's frame numbers.
fn frames_by_stream(records: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in records {
        by.entry(r["stream"].as_str().unwrap().to_string())
            .or_default()
            .push(r["frame"].as_u64().unwrap());
    }
    by
}

#[test]
fn a_file_a_test_pattern_and_a_camera_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), "clip.mp4", 40, 25);
    let server = TestServer::start();
    let json = dir.path().join("out.jsonl");
    let out = run_ok(
        bin()
            .args(["run", "--no-attributes", "--max-frames", "30", "--input"])
            .arg(&clip)
            .args(["--input", "testsrc://ball?frames=50&size=160x120"])
            .args(["--input", &server.url()])
            .arg("--json")
            .arg(&json),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let records = read_jsonl(&json);
    let by = frames_by_stream(&records);
    assert_eq!(by.keys().collect::<Vec<_>>(), ["0", "1", "2"], "{stderr}");
    // The file and the pattern: every frame up to the limit, in order.
    assert_eq!(by["0"], (0..30).collect::<Vec<_>>());
    assert_eq!(by["1"], (0..30).collect::<Vec<_>>());
    // The camera is live: what it decoded is reported or counted as dropped, in order.
    let (decoded, reported, dropped) = stream_counts(&stderr, "2");
    assert_eq!(decoded, 30, "{stderr}");
    assert_eq!(reported + dropped, decoded, "{stderr}");
    assert_eq!(by["2"].len(), reported);
    assert!(by["2"].windows(2).all(|w| w[0] < w[1]));
    for r in &records {
        let expected = match r["stream"].as_str().unwrap() {
            "0" => "file://",
            "1" => "testsrc://",
            _ => "rtsp://",
        };
        assert!(r["source"].as_str().unwrap().starts_with(expected), "{r}");
    }
    assert!(
        stderr.contains("faceflow: total (3 streams): 90 frames decoded"),
        "{stderr}"
    );
}

#[test]
fn a_fast_file_does_not_starve_a_live_stream() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let out = run_ok(
        bin()
            .args(["run", "--no-attributes", "--json"])
            .arg(&json)
            .args(["--input", "testsrc://ball?frames=400&size=640x480"])
            .args([
                "--input",
                "testsrc://snow?frames=75&size=64x48&fps=25&live=true",
            ]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (decoded, reported, dropped) = stream_counts(&stderr, "1");
    assert_eq!(decoded, 75, "{stderr}");
    assert_eq!(reported + dropped, decoded);
    // Taken in turn with the file, the camera's queue never overflows.
    assert!(dropped <= 5, "{stderr}");
    assert_eq!(stream_counts(&stderr, "0"), (400, 400, 0), "{stderr}");
}

#[test]
fn a_failing_stream_ends_alone_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let out = bin()
        .args(["run", "--no-attributes", "--json"])
        .arg(&json)
        .args(["--input", "testsrc://ball?frames=60&size=160x120"])
        .args([
            "--input",
            "testsrc://ball?frames=60&size=160x120&error-after=11",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let by = frames_by_stream(&read_jsonl(&json));
    assert_eq!(
        by["0"],
        (0..60).collect::<Vec<_>>(),
        "the good stream is complete"
    );
    assert_eq!(
        by["1"],
        (0..10).collect::<Vec<_>>(),
        "the failed one up to its failure"
    );
    assert!(stderr.contains("stream 1 (") && stderr.contains("; the source failed"));
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: testsrc://"), "{stderr}");
}

#[test]
fn a_truncated_file_beside_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = h264_clip(dir.path(), "good.mp4", 50, 25);
    let whole = h264_clip(dir.path(), "whole.mp4", 50, 25);
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let json = dir.path().join("out.jsonl");
    let out = bin()
        .args(["run", "--no-attributes", "--json"])
        .arg(&json)
        .arg("--input")
        .arg(&good)
        .arg("--input")
        .arg(&cut)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let by = frames_by_stream(&read_jsonl(&json));
    assert_eq!(by["0"], (0..50).collect::<Vec<_>>(), "{stderr}");
    let (decoded, reported, _) = stream_counts(&stderr, "1");
    assert_eq!(decoded, reported, "{stderr}");
    assert_eq!(by.get("1").map_or(0, Vec::len), reported);
}

#[test]
fn named_streams_from_a_pipeline_file_and_ctrl_c_stops_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[[sources]]\nname = \"door\"\ninput = \"testsrc://ball?frames=0&size=64x48&fps=20&live=true\"\n\n\
             [[sources]]\nname = \"hall\"\ninput = \"testsrc://snow?frames=0&size=64x48&fps=20&live=true\"\n\n\
             [attributes]\nenabled = false\n\n[json]\npath = \"{}\"\n",
            json.display()
        ),
    )
    .unwrap();
    let (out, after) =
        interrupt_after(bin().arg("run").arg(&pipeline), Duration::from_millis(2500));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(after < Duration::from_secs(10));
    let records = read_jsonl(&json);
    let by = frames_by_stream(&records);
    assert_eq!(by.keys().collect::<Vec<_>>(), ["door", "hall"]);
    for id in ["door", "hall"] {
        let (decoded, reported, dropped) = stream_counts(&stderr, id);
        assert!(decoded >= 10, "{stderr}");
        assert_eq!(reported + dropped, decoded, "{stderr}");
        assert_eq!(by[id].len(), reported);
    }
    // Names must be unique.
    std::fs::write(
        &pipeline,
        "[[sources]]\nname = \"a\"\ninput = \"testsrc://\"\n[[sources]]\nname = \"a\"\ninput = \"testsrc://\"\n",
    )
    .unwrap();
    let out = bin().arg("run").arg(&pipeline).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("stream name \"a\" is used twice"),
        "{stderr}"
    );
    for bad in ["a b", "a\\u0000b", "x,y", "total", ""] {
        std::fs::write(
            &pipeline,
            format!("[[sources]]\nname = \"{bad}\"\ninput = \"testsrc://\"\n"),
        )
        .unwrap();
        let out = bin().arg("run").arg(&pipeline).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.starts_with("error: stream name"), "{bad}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    // [source] settings beside [[sources]] would be ignored: refused.
    std::fs::write(
        &pipeline,
        "[source]\nmax_frames = 3\n[[sources]]\ninput = \"testsrc://\"\n",
    )
    .unwrap();
    let out = bin().arg("run").arg(&pipeline).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("both [source] and [[sources]]"), "{stderr}");
}

/// A stream that ends while another goes on: its people's records come when it ends, not when
/// the run does.
#[test]
fn a_stream_that_ends_early_reports_its_people_at_once() {
    let Some(clip) = shared_data("video/intel_head-pose-face-detection-male.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    run_ok(
        bin()
            .args(["run", "--no-attributes", "--json"])
            .arg(&json)
            .arg("--input")
            .arg(&clip)
            .args([
                "--input",
                "testsrc://ball?frames=150&size=160x120&fps=25&live=true",
            ]),
    );
    let all = read_all_jsonl(&json);
    let person = all
        .iter()
        .position(|r| r["type"] == "track" && r["stream"] == "0")
        .expect("a track record for stream 0");
    let last_of_stream_1 = all
        .iter()
        .rposition(|r| r["type"] == "frame" && r["stream"] == "1")
        .unwrap();
    assert!(
        person < last_of_stream_1,
        "stream 0's person reported at line {person}, after the other stream's end ({last_of_stream_1})"
    );
}
