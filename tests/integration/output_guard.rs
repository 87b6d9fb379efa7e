//! No output may be an input or another output, however either is spelled, and no output folder is
//! created: each clash is refused in one line before anything is written, the inputs untouched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::*;

/// A folder with two small clips in `ov/`: `out-1.mp4` (named like stream 1's overlay file of
/// `--overlay ov/out.mp4`) and `b.mp4`.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ov")).unwrap();
        h264_clip(&dir.path().join("ov"), "out-1.mp4", 3, 25);
        h264_clip(&dir.path().join("ov"), "b.mp4", 3, 25);
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Every file in the folder (recursively, symlinks not followed) with its bytes.
    fn snapshot(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for path in entries {
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.push((path.clone(), None));
                    walk(&path, out);
                } else if meta.file_type().is_symlink() {
                    out.push((path.clone(), None));
                } else {
                    out.push((path.clone(), Some(std::fs::read(&path).unwrap())));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root(), &mut out);
        out
    }

    /// Runs `faceflow run ARGS` in the folder, expecting a one-line refusal that leaves every file
    /// as it was (byte for byte, nothing created); returns the line.
    fn refused(&self, args: &[&str]) -> String {
        let before = self.snapshot();
        let out = output_within(
            bin()
                .current_dir(self.root())
                .args(["run", "--no-attributes"])
                .args(args),
            Duration::from_secs(60),
        );
        let line = one_error_line(&out);
        let after = self.snapshot();
        assert!(
            before == after,
            "{args:?}: files changed: {:?} → {:?}",
            before.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            after.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
        line
    }
}

/// Issue 31's case: `--overlay ov/out.mp4` with two streams writes `ov/out-0.mp4` and
/// `ov/out-1.mp4`, and `ov/out-1.mp4` is the first input.
#[test]
fn a_stream_overlay_file_that_is_an_input_is_refused() {
    let s = Scene::new();
    for overlay in [
        "ov/out.mp4",
        "./ov/out.mp4",
        "ov/../ov/out.mp4",
        s.path("ov/out.mp4").to_str().unwrap(),
    ] {
        let e = s.refused(&[
            "--input",
            "ov/out-1.mp4",
            "--input",
            "ov/b.mp4",
            "--overlay",
            overlay,
        ]);
        assert!(
            e.contains("stream 1's overlay file") && e.contains("the input of stream 0"),
            "{overlay}: {e}"
        );
    }
    // The input named as a file:// URI.
    let uri = format!("file://{}", s.path("ov/out-1.mp4").display());
    let e = s.refused(&[
        "--input",
        &uri,
        "--input",
        "ov/b.mp4",
        "--overlay",
        "ov/out.mp4",
    ]);
    assert!(e.contains("the input of stream 0"), "{e}");
    // And from a pipeline file, its paths relative to its folder.
    std::fs::write(
        s.path("ov/two.toml"),
        "[[sources]]\ninput = \"out-1.mp4\"\n[[sources]]\ninput = \"b.mp4\"\n[overlay]\npath = \"out.mp4\"\n",
    )
    .unwrap();
    let e = s.refused(&["ov/two.toml"]);
    assert!(e.contains("the input of stream 0"), "{e}");
}

/// One stream: the overlay or the JSON named as the input by another spelling, a symlink, a hard
/// link or a file:// URI (with an escaped character).
#[test]
fn every_spelling_of_an_input_as_an_output_is_refused() {
    let s = Scene::new();
    std::os::unix::fs::symlink("b.mp4", s.path("ov/link.mp4")).unwrap();
    std::fs::hard_link(s.path("ov/b.mp4"), s.path("ov/hard.mp4")).unwrap();
    std::fs::create_dir(s.path("sub")).unwrap();
    std::fs::copy(s.path("ov/b.mp4"), s.path("ov/with space.mp4")).unwrap();
    let spaced_uri = format!(
        "file://{}",
        s.path("ov/with space.mp4")
            .display()
            .to_string()
            .replace(' ', "%20")
    );
    let cases: &[(&str, &str)] = &[
        ("ov/b.mp4", "ov/b.mp4"),
        ("ov/b.mp4", "./ov/b.mp4"),
        ("ov/b.mp4", "sub/../ov/b.mp4"),
        ("ov/b.mp4", "ov/link.mp4"),
        ("ov/link.mp4", "ov/b.mp4"),
        ("ov/b.mp4", "ov/hard.mp4"),
        (&spaced_uri, "ov/with space.mp4"),
    ];
    for (input, overlay) in cases {
        let e = s.refused(&["--input", input, "--overlay", overlay]);
        assert!(
            e.contains("that is the input of stream 0"),
            "{input} {overlay}: {e}"
        );
    }
    // The JSON onto a video input, and onto other files a run reads: the pipeline file, a model.
    let e = s.refused(&["--input", "ov/b.mp4", "--json", "ov/link.mp4"]);
    assert!(e.starts_with("error: --json ov/link.mp4"), "{e}");
    std::fs::write(s.path("p.toml"), "[source]\ninput = \"ov/b.mp4\"\n").unwrap();
    let e = s.refused(&["p.toml", "--json", "./p.toml"]);
    assert!(e.contains("that is the pipeline file"), "{e}");
    std::fs::write(s.path("m.onnx"), b"not a model").unwrap();
    let e = s.refused(&[
        "--input",
        "ov/b.mp4",
        "--model",
        "m.onnx",
        "--json",
        "sub/../m.onnx",
    ]);
    let e2 = s.refused(&[
        "--input", "ov/b.mp4", "--model", "m.onnx", "--json", "m.onnx",
    ]);
    for e in [e, e2] {
        assert!(e.contains("that is the attribute model"), "{e}");
    }
}

/// Two outputs that are one file: the JSON through a symlink onto the overlay file, and two
/// streams' overlay files that a symlink makes one.
#[test]
fn outputs_that_are_one_file_are_refused() {
    let s = Scene::new();
    std::os::unix::fs::symlink("o.mp4", s.path("ov/j.jsonl")).unwrap();
    let e = s.refused(&[
        "--input",
        "ov/b.mp4",
        "--json",
        "ov/j.jsonl",
        "--overlay",
        "ov/o.mp4",
    ]);
    assert!(e.contains("is also the JSON output"), "{e}");
    assert!(!s.path("ov/o.mp4").exists());
    std::fs::write(s.path("ov/gate-a.mp4"), b"an earlier overlay").unwrap();
    std::os::unix::fs::symlink("gate-a.mp4", s.path("ov/gate-b.mp4")).unwrap();
    std::fs::write(
        s.path("gates.toml"),
        "[[sources]]\nname = \"a\"\ninput = \"testsrc://ball?frames=2&size=64x48\"\n\
         [[sources]]\nname = \"b\"\ninput = \"testsrc://ball?frames=2&size=64x48\"\n",
    )
    .unwrap();
    let e = s.refused(&["gates.toml", "--overlay", "ov/gate.mp4"]);
    assert!(
        e.contains("stream b's overlay file") && e.contains("is also stream a's overlay file"),
        "{e}"
    );
}

/// Stream names that differ only in characters a file name cannot hold as they are still get a
/// file each: 东门 and 西门 used to be one `gate-__.mp4`.
#[test]
fn unicode_stream_names_get_an_overlay_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("gates.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[[sources]]\nname = \"东门\"\ninput = \"testsrc://ball?frames=4&size=64x48\"\n\
             [[sources]]\nname = \"西门\"\ninput = \"testsrc://snow?frames=6&size=64x48\"\n\
             [attributes]\nenabled = false\n[json]\npath = \"{}\"\n[overlay]\npath = \"{}\"\n",
            dir.path().join("gates.jsonl").display(),
            dir.path().join("gate.mp4").display()
        ),
    )
    .unwrap();
    let out = output_within(bin().arg("run").arg(&pipeline), Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let east = dir.path().join("gate-东门.mp4");
    let west = dir.path().join("gate-西门.mp4");
    assert!(east.is_file() && west.is_file());
    assert_ne!(std::fs::read(&east).unwrap(), std::fs::read(&west).unwrap());
    assert!(!dir.path().join("gate-__.mp4").exists());
}

/// A lone stream named on the command line writes its overlay under its name, as several do;
/// a lone unnamed stream writes the path as given.
#[test]
fn a_named_stream_names_its_overlay_file() {
    let dir = tempfile::tempdir().unwrap();
    for (input, file) in [
        (
            "lobby=testsrc://ball?frames=3&size=64x48",
            "overlay-lobby.mp4",
        ),
        ("testsrc://ball?frames=3&size=64x48", "overlay.mp4"),
    ] {
        let out = output_within(
            bin()
                .args(["run", "--no-attributes", "--input", input, "--overlay"])
                .arg(dir.path().join("overlay.mp4"))
                .arg("--json")
                .arg(dir.path().join("run.jsonl")),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".mp4"))
            .collect();
        assert_eq!(made, [file], "{input}");
        std::fs::remove_file(dir.path().join(file)).unwrap();
    }
}

/// An output in a folder that does not exist is refused, the folder not created, and the JSON a
/// previous run left is kept when the overlay's folder is the missing one.
#[test]
fn output_folders_that_do_not_exist_are_refused_not_created() {
    let s = Scene::new();
    let e = s.refused(&[
        "--input",
        "testsrc://ball?frames=2&size=64x48",
        "--json",
        "no/such/x.jsonl",
    ]);
    assert!(
        e.contains("--json no/such/x.jsonl") && e.contains("folder no/such does not exist"),
        "{e}"
    );
    std::fs::write(s.path("kept.jsonl"), "{\"type\":\"frame\"}\n").unwrap();
    let e = s.refused(&[
        "--input",
        "testsrc://ball?frames=2&size=64x48",
        "--json",
        "kept.jsonl",
        "--overlay",
        "nope/o.mp4",
    ]);
    assert!(e.contains("folder nope does not exist"), "{e}");
    // The same from detect, whose JSON goes through the same writer.
    let img = s.path("gray.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([128, 128, 128]))
        .save(&img)
        .unwrap();
    let out = bin()
        .current_dir(s.root())
        .args(["detect", "--json", "no/such/y.jsonl", "gray.png"])
        .output()
        .unwrap();
    let e = one_error_line(&out);
    assert!(e.contains("folder no/such does not exist"), "{e}");
    assert!(!s.path("no").exists());
}
