//! The edges a new user finds: sources that fail mid-stream, closed pipes, odd flag values,
//! undecodable streams, paths that collide, unreadable images.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A source that fails at its 25th frame: every one of the 24 frames decoded before the failure is
/// detected and written, every time (none left behind in GStreamer's queues), the counts add up,
/// and the failure still fails the run with its own line.
#[test]
fn frames_decoded_before_a_source_error_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    for _ in 0..3 {
        let out = bin()
            .args([
                "run",
                "--input",
                "testsrc://ball?frames=200&size=160x120&error-after=25",
                "--no-attributes",
                "--json",
            ])
            .arg(&json)
            .output()
            .unwrap();
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let records = read_jsonl(&json);
        let decoded = decoded_from_summary(&stderr);
        assert_eq!(decoded, 24, "{stderr}");
        assert_live_accounting(&records, &stderr, decoded);
        assert_eq!(records.len(), decoded, "a file-like source drops nothing");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "summary, then the error: {stderr}");
        assert!(lines[0].contains("the source failed"), "{stderr}");
        assert!(lines[1].starts_with("error: testsrc://"), "{stderr}");
    }
}

/// `faceflow run … --json - | head -1`: the reader goes away, faceflow stops quietly.
#[test]
fn a_closed_output_pipe_stops_the_run_quietly() {
    let mut child = bin()
        .args([
            "run",
            "--input",
            "testsrc://ball?frames=0&size=160x120",
            "--no-attributes",
            "--json",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // Reader dropped here, as `head -1` exits.
    assert!(
        first.starts_with("{\"type\":\"frame\",\"stream\":\"0\""),
        "{first}"
    );
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert!(stderr.contains("output closed by its reader"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // Every decoded frame is accounted for: reported, dropped or not written.
    let decoded = decoded_from_summary(&stderr);
    let number_before = |marker: &str| -> usize {
        let head = stderr.split(marker).next().unwrap_or_default();
        head.rsplit(' ').next().unwrap_or_default().parse().unwrap()
    };
    let (reported, dropped, not_written) = (
        number_before(" reported"),
        dropped_from_summary(&stderr),
        number_before(" not written"),
    );
    assert_eq!(decoded, reported + dropped + not_written, "{stderr}");
}

/// Standard error that cannot be written (full, or a closed pipe) must not stop Ctrl-C.
#[test]
fn ctrl_c_works_when_standard_error_is_full() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let child = bin()
        .args([
            "run",
            "--input",
            "testsrc://ball?frames=0&size=64x48&live=true",
            "--no-attributes",
            "--stats-every",
            "0.2",
            "--json",
            "/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130));
}

/// Batching faces across frames must not wait for frames the reorder window holds back.
#[test]
fn a_long_batch_wait_does_not_stall_the_run() {
    let Some(clip) = shared_data("video/intel_head-pose-face-detection-male.mp4") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        "[detect]\nworkers = 1\n\n[attributes]\nmax_wait_ms = 2000\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = run_ok(
        bin()
            .arg("run")
            .arg(&pipeline)
            .arg("--input")
            .arg(&clip)
            .args(["--json", "/dev/null"]),
    );
    // 62 frames; each full wait would cost 2 s (about 14 s in all before the fix).
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "{took:?}: {}",
        stderr_of(&out)
    );
}

#[test]
fn eval_stops_on_a_failing_detector_and_checks_its_report_folder_first() {
    let Some(face) = shared_data("utkface/26_1_2_20170103181524137.jpg.chip.jpg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("labelled");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(&face, data.join("26_1_2_20170103181524137.jpg.chip.jpg")).unwrap();
    // R-Net's weights where P-Net's should be: loads, then fails on the first picture.
    let models = dir.path().join("mtcnn");
    std::fs::create_dir(&models).unwrap();
    for (to, from) in [("pnet", "rnet"), ("rnet", "rnet"), ("onet", "onet")] {
        std::fs::copy(
            project_root().join(format!("models/mtcnn/{from}.onnx")),
            models.join(format!("{to}.onnx")),
        )
        .unwrap();
    }
    let out = bin()
        .args(["eval", "--source"])
        .arg(&data)
        .arg("--mtcnn-models")
        .arg(&models)
        .arg("--report")
        .arg(dir.path().join("report"))
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("detection failed"),
        "{stderr}"
    );
    // A report path that is a file fails before any image is read.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = bin()
        .args(["eval", "--source"])
        .arg(&data)
        .arg("--report")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create the report folder"),
        "{stderr}"
    );
    assert!(!stderr.contains("eval: 1/1"), "{stderr}");
}

#[test]
fn health_line_intervals_are_checked_and_sub_second_ones_tick() {
    for bad in ["1e20", "1e19", "1e-9", "-1", "NaN", "inf"] {
        let out = bin()
            .args(["run", "--input", "testsrc://ball?frames=3&size=64x48"])
            .args([
                "--no-attributes",
                "--json",
                "/dev/null",
                "--stats-every",
                bad,
            ])
            .output()
            .unwrap();
        let stderr = stderr_of(&out);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        if bad == "-1" {
            // clap reads a leading dash as a flag: a usage error.
            assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
            assert!(stderr.starts_with("error: "), "{stderr}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.starts_with("error: stats_interval_s (--stats-every) = "),
            "{stderr}"
        );
    }
    let out = bin()
        .args([
            "run",
            "--input",
            "testsrc://ball?frames=20&size=64x48&fps=10&live=true",
        ])
        .args([
            "--no-attributes",
            "--json",
            "/dev/null",
            "--stats-every",
            "0.3",
        ])
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    let times: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("stats: t="))
        .filter_map(|l| l.split('s').next())
        .collect();
    assert!(times.len() >= 3, "{stderr}");
    let mut sorted = times.clone();
    sorted.dedup();
    assert_eq!(sorted, times, "each line its own time: {stderr}");
    assert!(stderr.contains("reorder:"), "{stderr}");
}

#[test]
fn logs_in_a_pipe_carry_no_colour_codes() {
    let out = bin()
        .args(["-v", "run", "--input", "testsrc://ball?frames=2&size=64x48"])
        .args(["--no-attributes", "--json", "/dev/null"])
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn one_frame_is_one_frame() {
    let out = bin()
        .args(["run", "--input", "testsrc://ball?frames=1&size=64x48"])
        .args(["--no-attributes", "--json", "/dev/null"])
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(stderr.contains(": 1 frame decoded, 1 reported"), "{stderr}");
    assert!(stderr.contains("; 0 faces, 0 people;"), "{stderr}");
}

#[test]
fn a_file_run_as_live_is_paced_like_a_camera() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), "clip.mp4", 50, 25);
    let json = dir.path().join("out.jsonl");
    let started = Instant::now();
    let out = run_ok(
        bin()
            .args(["run", "--live", "true", "--no-attributes", "--input"])
            .arg(&clip)
            .arg("--json")
            .arg(&json),
    );
    let stderr = stderr_of(&out);
    let records = read_jsonl(&json);
    let (_, dropped) = assert_live_accounting(&records, &stderr, 50);
    // Unpaced, the file decoded at hundreds of frames a second and most were dropped.
    assert!(dropped <= 5, "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not paced"
    );
}

#[test]
fn a_stream_without_a_decoder_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), "clip.mp4", 10, 25);
    // Every H.264 decoder this machine may have, ranked out of reach of decodebin.
    let out = bin()
        .env(
            "GST_PLUGIN_FEATURE_RANK",
            "avdec_h264:NONE,openh264dec:NONE,vah264dec:NONE,vaapih264dec:NONE,nvh264dec:NONE,v4l2h264dec:NONE",
        )
        .args(["run", "--no-attributes", "--json", "/dev/null", "--input"])
        .arg(&clip)
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no decoder for video/x-h264"), "{stderr}");
    assert!(stderr.contains("install"), "{stderr}");
}

#[test]
fn sources_keep_the_path_as_given_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), "real.mp4", 3, 25);
    let link = dir.path().join("camera-3.mp4");
    std::os::unix::fs::symlink(&clip, &link).unwrap();
    let json = dir.path().join("out.jsonl");
    run_ok(
        bin()
            .args(["run", "--no-attributes", "--input"])
            .arg(&link)
            .arg("--json")
            .arg(&json),
    );
    let records = read_jsonl(&json);
    assert_eq!(records.len(), 3);
    let source = records[0]["source"].as_str().unwrap();
    assert!(source.ends_with("/camera-3.mp4"), "{source}");
    for r in &records {
        // Times to the microsecond at most: no float noise.
        let pts = r["pts_ms"].as_f64().unwrap();
        assert_eq!((pts * 1000.0).round() / 1000.0, pts, "{r}");
    }
}

#[test]
fn json_path_with_a_space_and_pictures_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gray.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128]))
        .save(&img)
        .unwrap();
    let json = dir.path().join("out.jsonl");
    run_ok(bin().args(["detect", "--json"]).arg(&json).arg(&img));
    assert_eq!(read_jsonl(&json).len(), 1);
    // The old habit `--json photo.jpg other.jpg` must not turn a picture into JSON.
    let before = std::fs::read(&img).unwrap();
    let other = dir.path().join("other.png");
    std::fs::copy(&img, &other).unwrap();
    let out = bin()
        .args(["detect", "--json"])
        .arg(&img)
        .arg(&other)
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to write JSON into a .png file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn crops_of_images_with_the_same_name_do_not_overwrite_each_other() {
    let Some(face) = shared_data("utkface/26_1_2_20170103181524137.jpg.chip.jpg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::copy(&face, dir.path().join(sub).join("x.jpg")).unwrap();
    }
    let crops = dir.path().join("crops");
    run_ok(
        bin()
            .args(["detect", "--json", "/dev/null", "--crops"])
            .arg(&crops)
            .arg(dir.path().join("a/x.jpg"))
            .arg(dir.path().join("b/x.jpg")),
    );
    assert!(crops.join("x_face0.png").is_file());
    assert!(crops.join("x-2_face0.png").is_file());
}

#[test]
fn eval_names_unreadable_images_and_prints_no_nan() {
    let Some(face) = shared_data("utkface/26_1_2_20170103181524137.jpg.chip.jpg") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("labelled");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(&face, data.join("26_1_2_20170103181524137.jpg.chip.jpg")).unwrap();
    std::fs::write(
        data.join("95_0_3_20170101000000000.jpg.chip.jpg"),
        "not a jpeg",
    )
    .unwrap();
    let report = dir.path().join("report");
    let out = run_ok(
        bin()
            .args(["eval", "--source"])
            .arg(&data)
            .arg("--report")
            .arg(&report),
    );
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("95_0_3_20170101000000000.jpg.chip.jpg: not a readable image"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("NaN"), "{stdout}");
    assert!(
        stdout.contains("(2 images, age scored on 1 aged 1-80; 1 without a face)"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(!md.contains("NaN"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["unreadable"].as_array().unwrap().len(), 1);
}

/// Every numeric flag at the ends of its range, on the real binary: accepted values run.
#[test]
fn flags_at_the_ends_of_their_ranges_run() {
    let low = [
        "--rtsp-latency-ms",
        "0",
        "--max-frames",
        "0",
        "--reconnect-attempts",
        "0",
        "--stats-every",
        "0.1",
        "--stall-timeout-ms",
        "100",
        "--workers",
        "1",
        "--detect-every",
        "1",
        "--threads",
        "0",
        "--min-face",
        "8",
        "--scale-factor",
        "0.1",
        "--age-groups",
        "3",
        "--thresholds",
        "0,0,0",
    ];
    let high = [
        "--rtsp-latency-ms",
        "60000",
        "--max-frames",
        "18446744073709551615",
        "--reconnect-attempts",
        "4294967295",
        "--stats-every",
        "86400",
        "--stall-timeout-ms",
        "3600000",
        "--workers",
        "32",
        "--detect-every",
        "1000",
        "--threads",
        "1",
        "--min-face",
        "10000",
        "--scale-factor",
        "0.95",
        "--age-groups",
        "10",
        "--thresholds",
        "1,1,1",
    ];
    let threads = ["--workers", "1", "--threads", "64"];
    for extra in [&low[..], &high[..], &threads[..]] {
        let out = bin()
            .args(["run", "--input", "testsrc://ball?frames=3&size=64x48"])
            .args(["--json", "/dev/null"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = stderr_of(&out);
        assert!(out.status.success(), "{extra:?}: {stderr}");
        assert!(stderr.contains("3 frames decoded, 3 reported"), "{stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gray.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128]))
        .save(&img)
        .unwrap();
    for extra in [
        ["--crop-size", "8", "--min-face", "8"],
        ["--crop-size", "1024", "--min-face", "10000"],
    ] {
        let out = bin()
            .args(["detect", "--json", "/dev/null", "--crops"])
            .arg(dir.path().join("crops"))
            .args(extra)
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "{extra:?}: {}", stderr_of(&out));
    }
}
