//! The overlay video: one playable MP4 per stream with every frame, boxes drawn where the JSON
//! says faces are, the rest of the picture as the input's; finished on Ctrl-C too.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::util::*;

/// Every frame of a video as packed RGB rows: (width, height, pixels).
fn decode_rgb(path: &Path) -> Vec<(usize, usize, Vec<u8>)> {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let caps = sample.caps().unwrap().structure(0).unwrap().to_owned();
        let (w, h) = (
            caps.get::<i32>("width").unwrap() as usize,
            caps.get::<i32>("height").unwrap() as usize,
        );
        let map = sample.buffer().unwrap().map_readable().unwrap();
        // Rows are padded to 4 bytes.
        let stride = map.len() / h;
        let mut packed = Vec::with_capacity(w * h * 3);
        for row in map.chunks_exact(stride).take(h) {
            packed.extend_from_slice(&row[..w * 3]);
        }
        frames.push((w, h, packed));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    frames
}

/// Mean absolute difference of two pictures over the pixels where `keep` says so.
fn mean_diff(a: &[u8], b: &[u8], w: usize, keep: impl Fn(usize, usize) -> bool) -> f64 {
    let (mut sum, mut n) = (0u64, 0u64);
    for (i, (pa, pb)) in a.chunks_exact(3).zip(b.chunks_exact(3)).enumerate() {
        let (x, y) = (i % w, i / w);
        if keep(x, y) {
            sum += pa
                .iter()
                .zip(pb)
                .map(|(p, q)| u64::from(p.abs_diff(*q)))
                .sum::<u64>();
            n += 3;
        }
    }
    sum as f64 / n.max(1) as f64
}

#[test]
fn two_streams_get_one_overlay_each_with_every_frame_and_the_faces_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let astronaut = project_root().join("samples/astronaut.mp4");
    let pattern = h264_clip(dir.path(), "pattern.mp4", 30, 25);
    let json = dir.path().join("out.jsonl");
    // Its folder must exist: an output never creates folders.
    std::fs::create_dir(dir.path().join("video")).unwrap();
    let overlay = dir.path().join("video/overlay.mp4");
    run_ok(
        bin()
            .args(["run", "--input"])
            .arg(&astronaut)
            .arg("--input")
            .arg(&pattern)
            .arg("--json")
            .arg(&json)
            .arg("--overlay")
            .arg(&overlay),
    );
    let first = dir.path().join("video/overlay-0.mp4");
    let second = dir.path().join("video/overlay-1.mp4");
    assert!(!overlay.exists(), "several streams: one file per stream");
    let input_frames = decode_rgb(&astronaut);
    let drawn = decode_rgb(&first);
    assert_eq!(drawn.len(), input_frames.len());
    assert_eq!(decode_rgb(&second).len(), 30);
    // Where the JSON has a face, its box outline differs from the input; away from faces and
    // labels (the lower half of this portrait) the picture is the input's up to re-encoding.
    let records: Vec<serde_json::Value> = read_jsonl(&json)
        .into_iter()
        .filter(|r| r["stream"] == "0")
        .collect();
    assert_eq!(records.len(), drawn.len());
    let (mut faces, mut visible) = (0, 0);
    for (r, ((w, h, a), (_, _, b))) in records.iter().zip(input_frames.iter().zip(&drawn)) {
        for face in r["faces"].as_array().unwrap() {
            faces += 1;
            let [x0, y0, x1, y1] = bbox(face).map(|v| v.round() as usize);
            let on_outline = |x: usize, y: usize| {
                (x >= x0 && x < x1 && (y == y0 + 1 || y + 2 == y1))
                    || (y >= y0 && y < y1 && (x == x0 + 1 || x + 2 == x1))
            };
            if mean_diff(a, b, *w, on_outline) > 25.0 {
                visible += 1;
            }
        }
        let away = mean_diff(a, b, *w, |_, y| y > h * 2 / 3);
        assert!(away < 4.0, "frame {}: {away}", r["frame"]);
    }
    assert!(faces >= 90, "{faces}");
    assert!(
        visible * 100 >= faces * 90,
        "{visible} of {faces} boxes visible"
    );
}

#[test]
fn ctrl_c_leaves_a_playable_overlay_with_the_frames_written() {
    let dir = tempfile::tempdir().unwrap();
    let astronaut = project_root().join("samples/astronaut.mp4");
    let json = dir.path().join("out.jsonl");
    let overlay = dir.path().join("overlay.mp4");
    // Read as a camera (its own frame rate: 4 s), interrupted halfway.
    let (out, _) = interrupt_after(
        bin()
            .args(["run", "--live", "true", "--no-attributes", "--input"])
            .arg(&astronaut)
            .arg("--json")
            .arg(&json)
            .arg("--overlay")
            .arg(&overlay),
        std::time::Duration::from_millis(2000),
    );
    assert_eq!(out.status.code(), Some(130), "{}", stderr_text(&out));
    let written = read_jsonl(&json).len();
    let frames = decode_rgb(&overlay).len();
    assert!(written > 10 && written < 100, "{written}");
    assert!(
        frames.abs_diff(written) <= 2,
        "{frames} frames, {written} records"
    );
}

#[test]
fn overlay_targets_that_are_neither_mp4_files_nor_rtsp_mounts_are_one_line_errors() {
    for target in [
        "rtsp://0.0.0.0:8554",
        "window",
        "out.mkv",
        "http://host/a.mp4",
    ] {
        let out = bin()
            .args([
                "run",
                "--input",
                "testsrc://ball?frames=3",
                "--json",
                "/dev/null",
            ])
            .args(["--overlay", target])
            .output()
            .unwrap();
        let stderr = stderr_text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: overlay {target}: ")),
            "{stderr}"
        );
    }
}

fn stderr_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--overlay rtsp://…`: the drawn frames are served while the run goes on; faceflow itself
/// watches them as an RTSP camera.
#[test]
fn the_overlay_is_served_over_rtsp_while_the_run_goes_on() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("rtsp://127.0.0.1:{port}/faces");
    /// Kills the served run if the test fails before it is stopped.
    struct Served(std::process::Child);
    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Served(
        bin()
            .args([
                "run",
                "--input",
                "testsrc://ball?frames=0&live=true&size=320x240",
            ])
            .args(["--no-attributes", "--json", "/dev/null", "--overlay", &url])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "not served");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("watched.jsonl");
    let watched = bin()
        .args(["run", "--input", &url, "--max-frames", "15", "--rtsp-tcp"])
        .args(["--no-attributes", "--reconnect-attempts", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &server.0.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the served run did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let records = read_jsonl(&json);
    assert!(records.len() >= 10, "{} frames watched", records.len());
    assert!(
        records
            .iter()
            .all(|r| r["width"] == 320 && r["height"] == 240)
    );
    assert_eq!(status.code(), Some(130));
}
