//! `--overlay window` on a real X server (Xvfb, started by the test): the drawn frames appear on
//! the screen; without a display the run does not start and says why in one line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// An Xvfb server on a display number nobody uses, stopped when dropped.
pub(crate) struct Xvfb {
    child: Child,
    pub(crate) display: String,
}

impl Xvfb {
    /// `None` when Xvfb is not installed (skipped; under CI a failure).
    pub(crate) fn start() -> Option<Self> {
        let Some(program) = ["/usr/bin/Xvfb", "/usr/local/bin/Xvfb"]
            .map(PathBuf::from)
            .into_iter()
            .find(|p| p.is_file())
        else {
            assert!(
                std::env::var("CI").is_err(),
                "Xvfb is needed (scripts/deps.sh installs xvfb)"
            );
            eprintln!("SKIPPED: Xvfb not installed (scripts/deps.sh)");
            return None;
        };
        let number = (90..200)
            .find(|n| {
                !PathBuf::from(format!("/tmp/.X11-unix/X{n}")).exists()
                    && !PathBuf::from(format!("/tmp/.X{n}-lock")).exists()
            })
            .expect("a free X display number");
        let child = Command::new(program)
            .arg(format!(":{number}"))
            .args(["-screen", "0", "1024x768x24", "-nolisten", "tcp"])
            // No reset when the last client leaves (the readiness probe below is one).
            .arg("-noreset")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "Xvfb did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            child,
            display: format!(":{number}"),
        })
    }

    /// The whole screen as RGB.
    fn screenshot(&self, dir: &std::path::Path) -> image::RgbImage {
        let png = dir.join("screen.png");
        let status = Command::new("gst-launch-1.0")
            .args(["-q", "ximagesrc"])
            .arg(format!("display-name={}", self.display))
            .args([
                "num-buffers=1",
                "!",
                "videoconvert",
                "!",
                "pngenc",
                "!",
                "filesink",
            ])
            .arg(format!("location={}", png.display()))
            .status()
            .unwrap();
        assert!(status.success());
        image::open(&png).unwrap().to_rgb8()
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // TERM, so it removes its socket and lock file.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn the_overlay_shows_in_a_window_and_no_display_is_one_line() {
    // No display: refused before anything starts, the JSON file not created.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let out = bin()
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .args(["run", "--overlay", "window", "--input"])
        .arg(project_root().join("samples/astronaut.mp4"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no display"), "{stderr}");
    assert!(!json.exists());

    let Some(xvfb) = Xvfb::start() else {
        return;
    };
    // The demo clip as a camera (4 s), shown while it plays.
    let mut run = bin()
        .env("DISPLAY", &xvfb.display)
        .env_remove("WAYLAND_DISPLAY")
        .args(["run", "--live", "true", "--overlay", "window", "--input"])
        .arg(project_root().join("samples/astronaut.mp4"))
        .arg("--json")
        .arg(&json)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Looked at until the picture and the box are on screen or the run ends: start-up takes
    // longer on a loaded machine than any fixed wait.
    let lit = |screen: &image::RgbImage| {
        screen
            .pixels()
            .filter(|p| p.0.iter().any(|&c| c > 40))
            .count()
    };
    let box_colour =
        |screen: &image::RgbImage| screen.pixels().filter(|p| p.0 == [86, 180, 233]).count();
    let started = std::time::Instant::now();
    let screen = loop {
        std::thread::sleep(Duration::from_millis(250));
        let screen = xvfb.screenshot(dir.path());
        let shown = lit(&screen) > 120_000 && box_colour(&screen) > 100;
        let over = run.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(30);
        if shown || over {
            break screen;
        }
    };
    let status = run.wait().unwrap();
    let mut stderr = String::new();
    use std::io::Read;
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    // The 512×512 picture is on the black screen, and the face's box is drawn in it: the
    // track's colour (Okabe–Ito sky blue, 86 180 233, for track 1) is on screen.
    let lit = lit(&screen);
    assert!(lit > 120_000, "{lit} pixels lit on the screen; {stderr}");
    let box_colour = box_colour(&screen);
    assert!(
        box_colour > 100,
        "{box_colour} pixels of the box's colour; {stderr}"
    );
    assert!(!read_jsonl(&json).is_empty());
}
