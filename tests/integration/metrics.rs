//! Prometheus metrics, scraped over HTTP while a run goes on.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::util::*;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path`; the body, or `None` while nothing listens.
pub(crate) fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The value of the sample line that starts with `name` (labels included).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn metrics_are_served_while_the_run_goes_on() {
    let port = free_port();
    let run = bin()
        .args([
            "run",
            "--input",
            "testsrc://ball?frames=150&live=true&size=160x120",
        ])
        .args([
            "--input",
            "testsrc://smpte?frames=150&live=true&size=160x120",
        ])
        .args(["--json", "/dev/null", "--no-attributes"])
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        assert!(Instant::now() < deadline, "no metrics within 30 s");
        if let Some(r) = get(port, "/metrics")
            && sample(&r, "faceflow_frames_decoded_total{stream=\"1\"}").unwrap_or(0.0) >= 20.0
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("openmetrics-text"), "{text}");
    for name in [
        "faceflow_frames_reported_total{stream=\"0\"}",
        "faceflow_frames_dropped_total{stream=\"1\"}",
        "faceflow_faces_total{stream=\"0\"}",
        "faceflow_people_ended_total{stream=\"0\"}",
        "faceflow_people_in_view{stream=\"1\"}",
        "faceflow_reconnections_total{stream=\"0\"}",
        "faceflow_frames_dropped_evenly_total{stream=\"0\"}",
        "faceflow_full_search_interval_ms{stream=\"1\"}",
        "faceflow_queue_depth{queue=\"work-0\"}",
        "faceflow_queue_capacity{queue=\"reorder\"}",
        "faceflow_detect_seconds_count",
        "faceflow_sinks_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(sample(&text, name).is_some(), "{name} missing: {text}");
    }
    assert!(sample(&text, "faceflow_detect_seconds_count").unwrap() >= 20.0);
    assert!(get(port, "/").unwrap().contains(" 404 "));
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_taken_metrics_port_fails_before_the_run() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // The previous run's JSON is kept: the port is tried before any output is created.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("faces.jsonl");
    std::fs::write(&json, "previous run\n").unwrap();
    let out = bin()
        .args(["run", "--input", "testsrc://ball?frames=5", "--json"])
        .arg(&json)
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: metrics: cannot listen on 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "previous run\n");
    let out = bin()
        .args([
            "run",
            "--input",
            "testsrc://ball?frames=5",
            "--metrics",
            "localhost",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: metrics listen address \"localhost\""),
        "{stderr}"
    );
}
