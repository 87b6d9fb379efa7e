//! Bad input gets a one-line error and a non-zero exit, never a panic.

use std::time::{Duration, Instant};

use crate::util::*;

/// Runs faceflow expecting failure; returns the stderr, checked to be one `error:` line.
fn fails(args: &[&str]) -> String {
    let started = Instant::now();
    let out = bin().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{args:?} took {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

#[test]
fn missing_file() {
    let e = fails(&["run", "--input", "/no/such/clip.mp4", "--json", "-"]);
    assert_eq!(e, "error: /no/such/clip.mp4: no such file");
}

#[test]
fn empty_file_and_text_file_named_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let e = fails(&["run", "--input", empty.to_str().unwrap()]);
    assert!(e.ends_with("empty.mp4: file is empty"), "{e}");
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video\n".repeat(50)).unwrap();
    let e = fails(&[
        "run",
        "--input",
        text.to_str().unwrap(),
        "--json",
        dir.path().join("o.jsonl").to_str().unwrap(),
    ]);
    assert!(e.contains("notes.mp4") && e.contains("text file"), "{e}");
}

#[test]
fn unknown_uri_scheme() {
    let e = fails(&["run", "--input", "gopher://host/video"]);
    assert!(e.contains("unsupported URI scheme 'gopher'"), "{e}");
}

#[test]
fn pipeline_file_unknown_key_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[source]\ninput = \"x.mp4\"\nspeed = 3\n").unwrap();
    let e = fails(&["run", p.to_str().unwrap()]);
    assert!(e.contains("bad.toml:3:1: unknown field `speed`"), "{e}");
    let e = fails(&["run", "/no/such/pipeline.toml"]);
    assert!(e.contains("cannot read /no/such/pipeline.toml"), "{e}");
}

#[test]
fn bad_detector_settings() {
    let e = fails(&["run", "--input", "testsrc://", "--scale-factor", "1.5"]);
    assert!(e.contains("scale_factor"), "{e}");
}

#[test]
fn detect_reports_bad_images_but_keeps_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("gray.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128]))
        .save(&good)
        .unwrap();
    let bad = dir.path().join("fake.jpg");
    std::fs::write(&bad, "not an image").unwrap();
    let out = bin()
        .args([
            "detect",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
            "/no/such.png",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let rec: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(rec["width"], 64);
    assert_eq!(rec["faces"].as_array().unwrap().len(), 0);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("fake.jpg: not a readable image"),
        "{stderr}"
    );
    assert!(stderr.contains("/no/such.png: no such file"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn onnx_runtime_that_cannot_be_loaded() {
    let out = bin()
        .env("ORT_DYLIB_PATH", "/no/such/libonnxruntime.so")
        .args(["detect", "x.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "error: ORT_DYLIB_PATH=/no/such/libonnxruntime.so does not exist"
    );
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not a library").unwrap();
    let out = bin()
        .env("ORT_DYLIB_PATH", &fake)
        .args(["detect", "x.png"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: cannot load ONNX Runtime from"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn missing_or_corrupt_mtcnn_models() {
    let dir = tempfile::tempdir().unwrap();
    let e = fails(&[
        "detect",
        "--mtcnn-models",
        dir.path().to_str().unwrap(),
        "x.png",
    ]);
    assert!(
        e.contains("cannot read model") && e.contains("pnet.onnx"),
        "{e}"
    );
    for net in ["pnet", "rnet", "onet"] {
        std::fs::write(dir.path().join(format!("{net}.onnx")), "garbage").unwrap();
    }
    let e = fails(&[
        "detect",
        "--mtcnn-models",
        dir.path().to_str().unwrap(),
        "x.png",
    ]);
    assert!(e.contains("pnet.onnx"), "{e}");
}

#[test]
fn rtsp_camera_that_refuses_the_connection() {
    // Three attempts (the default), 0.5 s and 1 s apart, then one error line.
    let e = fails(&["run", "--input", "rtsp://127.0.0.1:1/stream", "--json", "-"]);
    assert!(e.starts_with("error: rtsp://127.0.0.1:1/stream: "), "{e}");
    assert!(e.ends_with("(tried 3 times)"), "{e}");
}

#[test]
fn report_on_a_missing_or_foreign_file() {
    let e = fails(&["report", "/no/such/run.jsonl"]);
    assert!(
        e.starts_with("error: cannot read /no/such/run.jsonl"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images.jsonl");
    std::fs::write(
        &images,
        "{\"image\":\"a.jpg\",\"width\":1,\"height\":1,\"faces\":[]}\n",
    )
    .unwrap();
    let e = fails(&[
        "report",
        images.to_str().unwrap(),
        "--out",
        dir.path().join("r").to_str().unwrap(),
    ]);
    assert!(e.contains("images.jsonl:1: not a faceflow record"), "{e}");
}

/// `--device cuda` (or `[runtime] device = "cuda"`) with the CPU build of ONNX Runtime: one line
/// that says what to install, exit 1, no output file started. Never a silent CPU run.
#[test]
fn cuda_without_the_cuda_build_is_one_clear_line() {
    if std::path::Path::new(&project_root().join(".ort/cuda/lib/libonnxruntime.so")).exists() {
        eprintln!("SKIPPED: this checkout has the CUDA build of ONNX Runtime");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let json_arg = json.display().to_string();
    let clip = project_root().join("samples/astronaut.mp4");
    let clip_arg = clip.display().to_string();
    let image = project_root().join("samples/astronaut.png");
    let image_arg = image.display().to_string();
    let pipeline = dir.path().join("gpu.toml");
    std::fs::write(
        &pipeline,
        format!("[source]\ninput = \"{clip_arg}\"\n\n[runtime]\ndevice = \"cuda\"\n"),
    )
    .unwrap();
    let pipeline_arg = pipeline.display().to_string();
    for args in [
        vec![
            "run", "--input", &clip_arg, "--device", "cuda", "--json", &json_arg,
        ],
        vec!["run", &pipeline_arg, "--json", &json_arg],
        vec![
            "detect", &image_arg, "--device", "cuda", "--json", &json_arg,
        ],
        vec![
            "analyze", &image_arg, "--device", "cuda", "--json", &json_arg,
        ],
    ] {
        let e = fails(&args);
        assert!(
            e.contains("device (--device) = cuda:") && e.contains("scripts/setup.sh --cuda"),
            "{args:?}: {e}"
        );
        assert!(!json.exists(), "{args:?}");
    }
    // A device that does not exist is refused by the parser.
    let e = fails(&["detect", &image_arg, "--device", "tpu"]);
    assert!(e.contains("cpu or cuda"), "{e}");
}

/// Outputs that cannot be written, and a video where the pipeline file goes: refused before the
/// run, in one line, the JSON not started.
#[test]
fn unwritable_overlay_and_a_video_as_pipeline_file() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let json_arg = json.display().to_string();
    let clip = project_root().join("samples/astronaut.mp4");
    let clip_arg = clip.display().to_string();
    let taken = dir.path().join("taken.mp4");
    std::fs::create_dir(&taken).unwrap();
    let taken_arg = taken.display().to_string();
    let e = fails(&[
        "run",
        "--input",
        &clip_arg,
        "--overlay",
        &taken_arg,
        "--json",
        &json_arg,
    ]);
    assert!(
        e.contains("cannot create") && e.contains("taken.mp4"),
        "{e}"
    );
    assert!(!json.exists());
    let e = fails(&["run", &clip_arg, "--json", &json_arg]);
    assert!(
        e.contains("not a pipeline file") && e.contains("--input"),
        "{e}"
    );
    assert!(!json.exists());
}

/// A video or camera given to a still-image subcommand, or to one that does not exist, is pointed
/// at `faceflow run` in one line.
#[test]
fn a_video_given_to_the_wrong_subcommand_points_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let clip = h264_clip(dir.path(), "clip.mp4", 2, 25);
    // Named like a picture, but a video inside.
    let disguised = dir.path().join("still.jpg");
    std::fs::copy(&clip, &disguised).unwrap();
    let clip = clip.display().to_string();
    for (args, video) in [
        (vec!["detect", clip.as_str()], clip.as_str()),
        (vec!["analyze", clip.as_str()], clip.as_str()),
        (
            vec!["detect", "rtsp://camera/stream"],
            "rtsp://camera/stream",
        ),
        (
            vec!["detect", disguised.to_str().unwrap()],
            disguised.to_str().unwrap(),
        ),
    ] {
        let e = fails(&args);
        assert!(
            e.contains("reads still images")
                && e.contains(&format!("faceflow run --input {video}")),
            "{args:?}: {e}"
        );
    }
    for args in [vec!["track", clip.as_str()], vec![clip.as_str()]] {
        let out = bin().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let e = one_error_line(&out);
        assert!(
            e.starts_with("error: unrecognized subcommand")
                && e.contains(&format!("for a video use faceflow run --input {clip}")),
            "{args:?}: {e}"
        );
    }
    // An unknown subcommand without a video keeps clap's line.
    let out = bin().args(["track", "photo.png"]).output().unwrap();
    let e = one_error_line(&out);
    assert!(!e.contains("faceflow run"), "{e}");
}

/// `[sources]` where `[[sources]]` is meant (and `[[source]]`) is named with what to write.
#[test]
fn a_sources_table_written_once_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "[json]\npath = \"-\"\n\n[sources]\ninput = \"testsrc://\"\n",
    )
    .unwrap();
    let e = fails(&["run", p.to_str().unwrap()]);
    assert!(
        e.contains("p.toml:4:1: [sources] must be [[sources]], one table per stream"),
        "{e}"
    );
    std::fs::write(&p, "[[source]]\ninput = \"testsrc://\"\n").unwrap();
    let e = fails(&["run", p.to_str().unwrap()]);
    assert!(e.contains("p.toml:1:1: [[source]] must be [source]"), "{e}");
}

/// The top-level help names every subcommand in its overview, `run`'s does not promise a search
/// of every frame (`--detect-every auto` is the default), and `eval`'s split flags say what they
/// are.
#[test]
fn help_texts_are_complete_and_true() {
    let help = |args: &[&str]| String::from_utf8(run_ok(bin().args(args)).stdout).unwrap();
    let top = help(&["--help"]);
    let overview = top
        .split("\n\n")
        .find(|p| p.trim_start().starts_with("Subcommands:"))
        .unwrap_or_else(|| panic!("{top}"))
        .replace('\n', " ");
    for sub in [
        "run",
        "report",
        "detect",
        "analyze",
        "eval",
        "yardstick",
        "train",
    ] {
        assert!(overview.contains(&format!("{sub} (")), "{sub}: {overview}");
    }
    let run = help(&["run", "--help"]);
    let about = run.split("\n\n").next().unwrap().replace('\n', " ");
    assert!(!about.contains("on every frame"), "{about}");
    assert!(about.contains("--detect-every"), "{about}");
    let eval = help(&["eval", "-h"]);
    for flag in ["--seed <SEED>", "--val-fraction <VAL_FRACTION>"] {
        let line = eval
            .lines()
            .find(|l| l.contains(flag))
            .unwrap_or_else(|| panic!("{flag}: {eval}"));
        let described = line
            .split_once(flag)
            .map(|(_, rest)| {
                rest.split("[default")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        assert!(!described.is_empty(), "{flag} has no description: {line:?}");
    }
}
