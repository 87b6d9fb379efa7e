//! Every `faceflow …` command line in the shell blocks of the README and the pages of docs/, run
//! as written (in a scratch folder holding small inputs under the names they use), so a stale
//! example fails CI.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::rtsp::TestServer;
use crate::util::*;

/// How a README command is expected to behave here.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Runs to the end and exits 0.
    Done,
    /// Runs the trainer: needs a build with feature `train`.
    Train,
    /// A live camera: writes records until Ctrl-C, then exits 130.
    Live,
    /// Streams with a live camera into `faces.jsonl`: records of every stream, then Ctrl-C.
    LiveToFile,
    /// A webcam: as `Live` when /dev/video0 exists, else one error line naming the device.
    Webcam,
}

/// The documents whose commands are run, in this order.
const DOCUMENTS: &[&str] = &[
    "README.md",
    "docs/guide.md",
    "docs/training.md",
    "docs/performance.md",
    "docs/development.md",
];

/// The documents' commands, in the order they appear, with what each must do. A command changed
/// in a document without this list, or listed here but gone from it, fails the test.
const COMMANDS: &[(&str, Expect)] = &[
    (
        "faceflow run --input samples/astronaut.mp4 --json faces.jsonl",
        Expect::Done,
    ),
    (
        "faceflow run --input lobby=rtsp://user:pass@camera/stream --json -",
        Expect::Live,
    ),
    ("faceflow report faces.jsonl --out report/", Expect::Done),
    (
        "faceflow run --input clip.mp4 --json faces.jsonl",
        Expect::Done,
    ),
    (
        "faceflow run --input rtsp://host/stream --json -",
        Expect::Live,
    ),
    (
        "faceflow run --input v4l2:///dev/video0 --json -",
        Expect::Webcam,
    ),
    ("faceflow run pipelines/file-to-json.toml", Expect::Done),
    (
        "faceflow run --input clip.mp4 --input rtsp://host/stream --json faces.jsonl",
        Expect::LiveToFile,
    ),
    (
        "faceflow run --input clip.mp4 --json faces.jsonl --overlay overlay.mp4 --blur-faces",
        Expect::Done,
    ),
    ("faceflow report faces.jsonl --out report/", Expect::Done),
    ("faceflow detect photo1.jpg photo2.png", Expect::Done),
    (
        "faceflow detect --json faces.jsonl --crops crops/ *.jpg",
        Expect::Done,
    ),
    ("faceflow analyze --age-groups 3 photo.jpg", Expect::Done),
    (
        "faceflow eval --source labelled/ --report eval/",
        Expect::Done,
    ),
    (
        "faceflow train --source labelled/ --out runs/mine",
        Expect::Train,
    ),
    (
        "faceflow train --source ../shared/data/utkface --out runs/faceattr-v1 --epochs 6",
        Expect::Train,
    ),
    (
        "faceflow train --source ../shared/data/utkface --out runs/faceattr-v1 --epochs 6 --resume",
        Expect::Train,
    ),
    (
        "faceflow train --out runs/faceattr-v1 --export-only --best --export models/faceattr.onnx",
        Expect::Train,
    ),
    (
        "faceflow train --out runs/faceattr-v1 --export-only --average epoch-5.bpk,epoch-6.bpk --export mean.onnx",
        Expect::Train,
    ),
    (
        "faceflow eval --source ../shared/data/utkface --split validation --model runs/faceattr-v1/faceattr.onnx",
        Expect::Train,
    ),
];

/// Big inputs the README names, and the small ones that stand in for them here.
const STAND_INS: &[(&str, &str)] = &[("../shared/data/utkface", "labelled/")];

/// `faceflow …` lines of the documents' ```sh blocks, comments removed.
fn readme_commands() -> Vec<String> {
    let mut commands = Vec::new();
    for document in DOCUMENTS {
        let text = std::fs::read_to_string(project_root().join(document)).unwrap();
        commands.extend(sh_commands(&text));
    }
    commands
}

/// `faceflow …` lines of `text`'s ```sh blocks, comments removed.
fn sh_commands(text: &str) -> Vec<String> {
    let mut in_sh = false;
    let mut commands = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if in_sh && line.starts_with("faceflow ") {
            let command = line.split(" #").next().unwrap_or(line).trim();
            commands.push(command.to_string());
        }
    }
    commands
}

/// Small inputs under the README's names: a clip, photos, a labelled folder, and the project's
/// pipelines and demo clip.
fn scratch_folder(dir: &Path, utkface: &Path) {
    h264_clip(dir, "clip.mp4", 30, 25);
    let mut faces: Vec<_> = std::fs::read_dir(utkface)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".jpg.chip.jpg"))
        .collect();
    faces.sort();
    faces.truncate(100);
    std::fs::create_dir(dir.join("labelled")).unwrap();
    for f in &faces {
        std::fs::copy(f, dir.join("labelled").join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&faces[0], dir.join("photo.jpg")).unwrap();
    std::fs::copy(&faces[1], dir.join("photo1.jpg")).unwrap();
    image::open(&faces[2])
        .unwrap()
        .save(dir.join("photo2.png"))
        .unwrap();
    // The shipped pipeline writes to out/, which scripts/setup.sh makes (outputs make no folders).
    std::fs::create_dir(dir.join("out")).unwrap();
    for linked in ["pipelines", "samples"] {
        std::os::unix::fs::symlink(project_root().join(linked), dir.join(linked)).unwrap();
    }
    let bin_dir = dir.join(".bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_faceflow"), bin_dir.join("faceflow")).unwrap();
}

fn shell(dir: &Path, command: &str) -> Command {
    let path = format!(
        "{}:{}",
        dir.join(".bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", command]).current_dir(dir).env("PATH", path);
    cmd
}

/// Starts a live command writing `faces.jsonl`, waits until every stream (0 and 1) has records
/// there, then Ctrl-C.
fn run_live_to_file(dir: &Path, command: &str) {
    let json = dir.join("faces.jsonl");
    let _ = std::fs::remove_file(&json);
    let child = shell(dir, &format!("exec {command}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let both = || {
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        ["\"stream\":\"0\"", "\"stream\":\"1\""]
            .iter()
            .all(|s| text.contains(s))
    };
    while !both() {
        assert!(started.elapsed() < Duration::from_secs(60), "{command}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a live command, waits for a few records on its standard output, then Ctrl-C.
fn run_live(dir: &Path, command: &str) {
    let mut child = shell(dir, &format!("exec {command}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    for _ in 0..3 {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{command}: output ended"));
        assert!(line.unwrap().starts_with('{'), "{command}");
        assert!(started.elapsed() < Duration::from_secs(60), "{command}");
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Keep reading so the run never blocks on a full pipe while it stops.
    for _ in lines {}
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_readme_command_runs_as_written() {
    let Some(utkface) = shared_data("utkface") else {
        return;
    };
    let listed: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        readme_commands(),
        listed,
        "commands of the README or docs/ changed: update COMMANDS in tests/integration/readme.rs (and make them run)"
    );
    let dir = tempfile::tempdir().unwrap();
    scratch_folder(dir.path(), &utkface);
    let server = TestServer::start();
    let mut timings = BTreeMap::new();
    for (command, expect) in COMMANDS {
        if *expect == Expect::Train && !cfg!(feature = "train") {
            eprintln!("SKIPPED (build without feature train): {command}");
            continue;
        }
        let mut line = command
            .replace("rtsp://host/stream", &server.url())
            .replace("rtsp://user:pass@camera/stream", &server.url());
        for (big, small) in STAND_INS {
            line = line.replace(big, small);
        }
        let started = Instant::now();
        let webcam_present = Path::new("/dev/video0").exists();
        match expect {
            Expect::Live => run_live(dir.path(), &line),
            Expect::LiveToFile => run_live_to_file(dir.path(), &line),
            Expect::Webcam if webcam_present => run_live(dir.path(), &line),
            Expect::Webcam => {
                let out = shell(dir.path(), &line).output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(1), "{line}: {stderr}");
                assert_eq!(stderr.trim_end().lines().count(), 1, "{line}: {stderr}");
                assert!(
                    stderr.starts_with("error: v4l2:///dev/video0: "),
                    "{line}: {stderr}"
                );
            }
            Expect::Done | Expect::Train => {
                let out = shell(dir.path(), &line).output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{line}: {stderr}");
                assert!(!stderr.contains("error"), "{line}: {stderr}");
            }
        }
        timings.insert(line, started.elapsed());
    }
    // What the commands made, where the README says they go.
    assert_eq!(
        read_jsonl(&dir.path().join("faces.jsonl")).len(),
        2,
        "photo.jpg, photo1.jpg"
    );
    assert!(dir.path().join("crops").read_dir().unwrap().count() > 0);
    assert!(dir.path().join("eval/report.md").is_file());
    eprintln!("README commands: {timings:#?}");
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link of the README and docs/ leads to a file that exists, and to a heading
/// of it where it names one; and the pages speak to users, not of the team's issue numbers.
#[test]
fn the_documents_links_lead_somewhere() {
    let root = project_root();
    for document in DOCUMENTS {
        let path = root.join(document);
        let text = std::fs::read_to_string(&path).unwrap();
        let lower = text.to_lowercase();
        for word in ["issue ", "issues "] {
            for (at, _) in lower.match_indices(word) {
                let next = lower[at + word.len()..].chars().next();
                assert!(
                    !next.is_some_and(|c| c.is_ascii_digit()),
                    "{document} names an issue: {}",
                    &text[at..(at + word.len() + 4).min(text.len())]
                );
            }
        }
        let targets = text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split_once(')').map(|(t, _)| t.to_string()))
            .filter(|t| !t.contains(char::is_whitespace));
        for target in targets {
            if target.contains("://") {
                continue;
            }
            let (file, heading) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            assert!(linked.exists(), "{document}: {target}: no such file");
            if heading.is_empty() {
                continue;
            }
            let headings: Vec<String> = std::fs::read_to_string(&linked)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with('#'))
                .map(|l| anchor(l.trim_start_matches('#')))
                .collect();
            assert!(
                headings.iter().any(|h| h == heading),
                "{document}: {target}: no such heading in {} ({headings:?})",
                linked.display()
            );
        }
    }
}
