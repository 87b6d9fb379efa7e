//! A file without a video track (a `.wav`, an audio-only `.m4a` or `.mkv`) ends its stream with
//! `no video stream in …` instead of waiting forever for a frame: alone it fails the run in one
//! line, beside another stream that stream goes on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// Audio-only files made by GStreamer: a WAV, AAC in MP4 and Vorbis in Matroska.
fn audio_files(dir: &Path) -> Vec<PathBuf> {
    let aac = ["avenc_aac", "voaacenc"]
        .into_iter()
        .find(|e| {
            Command::new("gst-inspect-1.0")
                .args(["--exists", e])
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("an AAC encoder (gstreamer1.0-libav)");
    let recipes: [(&str, &[&str]); 3] = [
        ("tone.wav", &["wavenc"]),
        ("tone.m4a", &["audioconvert", "!", aac, "!", "mp4mux"]),
        (
            "tone.mkv",
            &["audioconvert", "!", "vorbisenc", "!", "matroskamux"],
        ),
    ];
    recipes
        .iter()
        .map(|(name, chain)| {
            let path = dir.join(name);
            let status = Command::new("gst-launch-1.0")
                .args(["-q", "audiotestsrc", "num-buffers=40", "!"])
                .args(*chain)
                .args(["!", "filesink"])
                .arg(format!("location={}", path.display()))
                .status()
                .expect("gst-launch-1.0");
            assert!(status.success(), "{name}");
            path
        })
        .collect()
}

#[test]
fn an_audio_only_file_alone_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for audio in audio_files(dir.path()) {
        let json = dir.path().join("out.jsonl");
        let out = output_within(
            bin()
                .args(["run", "--no-attributes", "--input"])
                .arg(&audio)
                .arg("--json")
                .arg(&json),
            Duration::from_secs(60),
        );
        let line = one_error_line(&out);
        assert_eq!(out.status.code(), Some(1), "{line}");
        assert!(
            line.starts_with(&format!("error: no video stream in {}", audio.display())),
            "{line}"
        );
        assert!(line.contains("audio/"), "{line}");
        assert_eq!(read_jsonl(&json).len(), 0);
    }
}

#[test]
fn an_audio_only_file_beside_a_test_pattern_ends_alone() {
    let dir = tempfile::tempdir().unwrap();
    for audio in audio_files(dir.path()) {
        let json = dir.path().join("out.jsonl");
        let out = output_within(
            bin()
                .args(["run", "--no-attributes", "--json"])
                .arg(&json)
                .args(["--input", "testsrc://ball?frames=30&size=64x48"])
                .arg("--input")
                .arg(&audio),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let frames: Vec<u64> = read_jsonl(&json)
            .iter()
            .map(|r| {
                assert_eq!(r["stream"], "0");
                r["frame"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(frames, (0..30).collect::<Vec<_>>(), "{stderr}");
        assert!(
            stderr.contains("stream 1 (") && stderr.contains("; the source failed"),
            "{stderr}"
        );
        let last = stderr.lines().last().unwrap();
        assert!(
            last.starts_with(&format!("error: no video stream in {}", audio.display())),
            "{stderr}"
        );
    }
}
