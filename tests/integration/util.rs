use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_faceflow"))
}

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under ../shared/data. Under CI (CI=true) a missing file fails the test; elsewhere the test
/// says it skipped and gets `None`.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = project_root().join("../shared/data").join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("shared data missing under CI: {}", path.display());
    }
    eprintln!("SKIPPED: {} not found", path.display());
    None
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn faceflow");
    assert!(
        out.status.success(),
        "faceflow failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every record of a JSON Lines file.
pub fn read_all_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The frame (or image) records of a JSON Lines file: people's records (`track`,
/// `track_start`, `track_update`) left out.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    read_all_jsonl(path)
        .into_iter()
        .filter(|r| !r["type"].as_str().is_some_and(|t| t.starts_with("track")))
        .collect()
}

/// The track records (one per person) of a JSON Lines file.
pub fn read_tracks(path: &Path) -> Vec<Value> {
    read_all_jsonl(path)
        .into_iter()
        .filter(|r| r["type"] == "track")
        .collect()
}

pub fn bbox(face: &Value) -> [f64; 4] {
    let b = face["bbox"].as_array().expect("bbox");
    [
        b[0].as_f64().unwrap(),
        b[1].as_f64().unwrap(),
        b[2].as_f64().unwrap(),
        b[3].as_f64().unwrap(),
    ]
}

pub fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// `1 frame`, `N frames`, as the summary counts them.
pub fn frames(n: usize) -> String {
    if n == 1 {
        "1 frame".into()
    } else {
        format!("{n} frames")
    }
}

/// Frames dropped behind a live source, from the end summary on stderr (0 for a stream that is
/// not live: its line does not count drops).
pub fn dropped_from_summary(stderr: &str) -> usize {
    let after = stderr
        .split(" reported")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary line in {stderr:?}"));
    // `…, N reported, D dropped (behind live source[, S of them evenly])…` for a live stream.
    after
        .strip_prefix(", ")
        .and_then(|rest| rest.split_once(" dropped (behind live source"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

/// Frames decoded, from the end summary on stderr.
pub fn decoded_from_summary(stderr: &str) -> usize {
    stderr
        .split(" decoded, ")
        .next()
        .and_then(|s| {
            s.strip_suffix(" frames")
                .or_else(|| s.strip_suffix(" frame"))
        })
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in {stderr:?}"))
}

/// A file run: frames numbered 0.. without gaps, and the summary says every decoded frame was reported.
pub fn assert_contiguous_and_all_reported(records: &[Value], stderr: &str) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["frame"], i as u64);
    }
    let n = records.len();
    assert!(
        stderr.contains(&format!("{} decoded, {n} reported", frames(n))),
        "{stderr}"
    );
}

/// A live run of `decoded` frames: reported + dropped = decoded, frame numbers strictly increase.
/// Returns (frame numbers, dropped).
pub fn assert_live_accounting(
    records: &[Value],
    stderr: &str,
    decoded: usize,
) -> (Vec<u64>, usize) {
    assert!(
        stderr.contains(&format!("{} decoded", frames(decoded))),
        "{stderr}"
    );
    let dropped = dropped_from_summary(stderr);
    assert_eq!(records.len() + dropped, decoded, "{stderr}");
    let frames: Vec<u64> = records
        .iter()
        .map(|r| r["frame"].as_u64().unwrap())
        .collect();
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
    (frames, dropped)
}

/// Starts `cmd`, sends it SIGINT after `after`, and returns its output and how long it took to
/// exit after the signal.
pub fn interrupt_after(
    cmd: &mut Command,
    after: std::time::Duration,
) -> (Output, std::time::Duration) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn faceflow");
    std::thread::sleep(after);
    interrupt(child)
}

/// Sends `child` SIGINT and returns its output and how long it took to exit after the signal.
pub fn interrupt(child: std::process::Child) -> (Output, std::time::Duration) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let signalled = std::time::Instant::now();
    let out = child.wait_with_output().expect("wait for faceflow");
    (out, signalled.elapsed())
}

/// A small H.264 MP4 of a test pattern: `frames` frames of 160×120 at `fps`.
pub fn h264_clip(dir: &Path, name: &str, frames: u32, fps: u32) -> PathBuf {
    let path = dir.join(name);
    encode_h264(
        &[
            "videotestsrc",
            "pattern=ball",
            &format!("num-buffers={frames}"),
            "!",
            &format!("video/x-raw,width=160,height=120,framerate={fps}/1"),
        ],
        &path,
    );
    path
}

/// Encodes what the GStreamer `source` elements produce to an H.264 MP4 at `out` (4:2:0, so any
/// player and faceflow's decoders take it).
pub fn encode_h264(source: &[&str], out: &Path) {
    let location = format!("location={}", out.display());
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(source)
        .args([
            "!",
            "videoconvert",
            "!",
            "video/x-raw,format=I420",
            "!",
            "x264enc",
            "speed-preset=ultrafast",
            // One thread: with several, x264 encodes the same frames differently from run to run
            // (seen on decoded JPEG input), and a measured scene must be the same every time.
            "threads=1",
            "!",
            "mp4mux",
            "!",
            "filesink",
            &location,
        ])
        .status()
        .expect("gst-launch-1.0");
    assert!(status.success());
}

/// Runs `cmd` to its end, failing the test (and killing it) if it takes longer than `limit`: a
/// regression that hangs fails instead of stalling the suite.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn faceflow");
    // Read both pipes while waiting: a full pipe would block the child.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for faceflow") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("faceflow still running after {limit:?} (killed); stderr: {stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A failed run's standard error, checked to be one `error: …` line (no panic) with a non-zero
/// exit status.
pub fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}
