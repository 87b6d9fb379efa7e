//! One module per subcommand, and what they share: Ctrl-C handling and the JSON output guard.

pub mod eval;
pub mod fleet;
pub mod images;
pub mod report;
pub mod run;
#[cfg(feature = "train")]
pub mod train;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Result, bail};

use faceflow::graph::Control;

/// Exit status after an interrupted (Ctrl-C) run, as shells report SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Refuses a JSON output path that would overwrite an input, a picture or a video: one named like
/// one, or an existing file whose first bytes are one (`--json photo.jpg` from the habit of a bare
/// `--json`, or a typo that names the input).
pub fn check_json_target(json: &str, inputs: &[&Path]) -> Result<()> {
    if json == "-" {
        return Ok(());
    }
    let hint = "give the output file (e.g. --json faces.jsonl) or - for standard output";
    if json.trim().is_empty() {
        bail!("--json is empty: {hint}");
    }
    let path = Path::new(json);
    if inputs.iter().any(|input| same_file(input, path)) {
        bail!("--json {json}: that is an input; {hint}");
    }
    const PICTURES: &[&str] = &[
        "jpg", "jpeg", "jpe", "jfif", "png", "bmp", "webp", "gif", "tif", "tiff", "avif", "heic",
        "heif", "ico", "tga", "qoi", "pnm", "ppm", "pgm", "pbm", "exr", "hdr",
    ];
    if let Some(ext) = path.extension().and_then(|e| e.to_str())
        && (PICTURES.contains(&ext.to_ascii_lowercase().as_str()) || has_video_extension(path))
    {
        bail!("--json {json}: refusing to write JSON into a .{ext} file; {hint}");
    }
    if let Some(kind) = existing_media(path) {
        bail!("--json {json}: refusing to overwrite {kind}; {hint}");
    }
    Ok(())
}

/// File extensions of videos.
const VIDEOS: &[&str] = &[
    "mp4", "m4v", "mkv", "mov", "avi", "webm", "ts", "mts", "m2ts", "mpg", "mpeg", "flv", "wmv",
    "3gp", "ogv", "h264", "h265", "hevc", "mjpeg",
];

fn has_video_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| VIDEOS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// Whether a command-line argument names a video or a camera: a URI (`rtsp://…`, `v4l2://…`, a
/// `file://` URI), a file named like a video, or an existing file that starts like one. For
/// pointing a user who gave one to the wrong subcommand at `faceflow run`.
pub fn names_a_video(arg: &str) -> bool {
    if arg.starts_with('-') {
        return false;
    }
    let path = Path::new(arg);
    arg.contains("://") || has_video_extension(path) || existing_media(path) == Some("a video")
}

/// Refuses videos and cameras given to a still-image subcommand, pointing at `faceflow run`.
pub fn refuse_videos(subcommand: &str, images: &[&Path]) -> Result<()> {
    for image in images {
        let arg = image.to_string_lossy();
        if names_a_video(&arg) {
            bail!(
                "{arg}: a video; `faceflow {subcommand}` reads still images: for a video use faceflow run --input {arg}"
            );
        }
    }
    Ok(())
}

/// The same file however spelled (`./a` and `a`, a symlink, a hard link, a file not there yet).
pub fn same_file(a: &Path, b: &Path) -> bool {
    faceflow::pipeline::outputs::same_file(a, b)
}

/// "a picture" or "a video" when `path` is an existing file that starts like one.
fn existing_media(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    let head = &head[..n];
    if n >= 4 && image::guess_format(head).is_ok() {
        return Some("a picture");
    }
    let video = (n >= 8 && &head[4..8] == b"ftyp")
        || head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3])
        || head.starts_with(b"RIFF")
        || head.starts_with(b"FLV")
        || head.starts_with(b"OggS")
        || head.starts_with(&[0x30, 0x26, 0xb2, 0x75])
        || head.starts_with(&[0x00, 0x00, 0x01, 0xba]);
    video.then_some("a video")
}

/// Ctrl-C / SIGTERM: the first asks the graph to stop (frames in flight finish, outputs are
/// flushed); a second exits at once.
/// A flag raised by the first Ctrl-C / SIGTERM, for loops that stop between items.
pub fn interrupt_flag(what: &'static str) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let raised = flag.clone();
    on_interrupt(what, move || raised.store(true, Ordering::SeqCst));
    flag
}

pub fn install_interrupt_handler(control: Control) {
    on_interrupt("stopping", move || control.request_stop());
}

/// Runs `first` on the first Ctrl-C / SIGTERM (after saying `what`); a second exits at once.
pub fn on_interrupt(what: &'static str, first: impl Fn() + Send + 'static) {
    let hits = Arc::new(AtomicUsize::new(0));
    let result = ctrlc::set_handler(move || {
        if hits.fetch_add(1, Ordering::SeqCst) == 0 {
            // Stop first: saying so may fail (standard error closed) and must not prevent it.
            first();
            faceflow::say!("\nfaceflow: {what} (press Ctrl-C again to quit at once)");
        } else {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    if let Err(e) = result {
        tracing::warn!("cannot install Ctrl-C handler: {e}");
    }
}

pub use faceflow::console::{progress, progress_style, show_rate};
