//! What a run writes, checked against what it reads before anything is created: no output may be
//! an input (however it is spelled: `./`, `../`, a symlink, a hard link, a `file://` URI) or
//! another output, and every output's folder must exist (a typo must not create folders).

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{PipelineConfig, PipelineError};
use crate::sinks::{Claim, OutputContext};

/// What a path names on disk, so that two spellings of one file compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileIdentity {
    /// An existing file (or folder): its device and inode, which hard links and symlinks share.
    Inode { dev: u64, ino: u64 },
    /// A file not there yet: the absolute path it would be created at, its folder canonical.
    Path(PathBuf),
}

/// Symlinks followed at most, as the kernel does (ELOOP beyond).
const MAX_SYMLINKS: usize = 40;

/// The identity of `path` (see [`FileIdentity`]). A dangling symlink is followed to the file that
/// writing through it would create.
pub fn identity(path: &Path) -> FileIdentity {
    if let Ok(meta) = std::fs::metadata(path) {
        return FileIdentity::Inode {
            dev: meta.dev(),
            ino: meta.ino(),
        };
    }
    let mut path = path.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = path.parent().unwrap_or(Path::new("")).join(target);
            }
            Err(_) => break,
        }
    }
    let absolute = std::path::absolute(&path).unwrap_or(path);
    if let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name())
        && let Ok(folder) = parent.canonicalize()
    {
        return FileIdentity::Path(folder.join(name));
    }
    FileIdentity::Path(normalize(&absolute))
}

/// Whether `a` and `b` name the same file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    identity(a) == identity(b)
}

/// `path` with `.` and `..` removed lexically (`a/b/../c` → `a/c`), as a path written in a file
/// reads: the folder a `..` leaves is the one named, not where a symlink leads.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let popped =
                    matches!(out.components().next_back(), Some(Component::Normal(_))) && out.pop();
                // Above the root is the root; above a relative start stays `..`.
                if !popped && !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The local file an input names: a path, or a `file://` URI; `None` for cameras, web streams and
/// test patterns.
pub fn input_file(input: &str) -> Option<PathBuf> {
    let input = input.trim();
    if input.is_empty() || input.starts_with("testsrc://") {
        return None;
    }
    if let Some((scheme, _)) = input.split_once("://")
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        if !scheme.eq_ignore_ascii_case("file") {
            return None;
        }
        return gstreamer::glib::filename_from_uri(input)
            .ok()
            .map(|(path, _)| path);
    }
    Some(PathBuf::from(input))
}

/// An output refused before anything is created: what is wrong with the value of one setting
/// (`json.path = faces.jsonl: that is the input of stream 0; …`). The CLI names the setting by
/// its flag instead.
#[derive(Debug, thiserror::Error)]
#[error("{section}.{key} = {given}: {message}")]
pub struct OutputClash {
    /// The setting: `json.path`, `overlay.path`, `metrics.listen`.
    pub section: &'static str,
    pub key: &'static str,
    /// Its value as given.
    pub given: String,
    pub message: String,
}

fn clash(setting: &'static str, given: &str, message: String) -> PipelineError {
    let (section, key) = setting.split_once('.').unwrap_or(("", setting));
    PipelineError::Output(OutputClash {
        section,
        key,
        given: given.to_string(),
        message,
    })
}

/// A file the run reads, and what it is to the run (named in refusals).
#[derive(Debug, Clone)]
pub struct InputFile {
    pub what: String,
    pub path: PathBuf,
}

/// A file an output writes (see [`Claim::File`]).
struct OutputFile<'a> {
    setting: &'static str,
    given: &'a str,
    path: &'a Path,
    stream: Option<&'a str>,
}

impl OutputFile<'_> {
    fn describe(&self) -> String {
        match self.stream {
            Some(id) => format!("stream {id}'s overlay file {}", self.path.display()),
            None if self.setting == "json.path" => "the JSON output".to_string(),
            None => "the overlay file".to_string(),
        }
    }
}

/// A port an output listens on (see [`Claim::Port`]).
struct Listening<'a> {
    setting: &'static str,
    given: &'a str,
    host: &'a str,
    port: u16,
}

impl PipelineConfig {
    /// What every output that is on will take, with the metrics port.
    pub fn claims(&self) -> Result<Vec<Claim>, PipelineError> {
        let ids = self.stream_ids();
        let cx = OutputContext { streams: &ids };
        let mut claims = Vec::new();
        for output in self.outputs() {
            let on = output.enabled();
            // A file an output would read stays protected while the output is off.
            claims.extend(
                output
                    .claims(&cx)?
                    .into_iter()
                    .filter(|c| on || matches!(c, Claim::Read { .. })),
            );
        }
        if let Some(listen) = &self.metrics.listen
            && let Ok(address) = listen.parse::<std::net::SocketAddr>()
        {
            claims.push(Claim::Port {
                setting: "metrics.listen",
                given: listen.clone(),
                host: address.ip().to_string(),
                port: address.port(),
            });
        }
        Ok(claims)
    }

    /// The files the run reads: inputs, models.
    pub fn input_files(&self) -> Vec<InputFile> {
        let mut files = Vec::new();
        for (id, source) in self.streams() {
            if let Some(path) = input_file(&source.input) {
                files.push(InputFile {
                    what: format!("the input of stream {id}"),
                    path,
                });
            }
        }
        if self.attributes.enabled || self.attributes.model.is_some() {
            files.push(InputFile {
                what: "the attribute model".into(),
                path: self.attributes.model_path(),
            });
        }
        if let Some(dir) = &self.detect.models_dir {
            for net in ["pnet", "rnet", "onet"] {
                files.push(InputFile {
                    what: format!("the {net} model"),
                    path: dir.join(format!("{net}.onnx")),
                });
            }
        }
        files
    }

    /// Refuses, before anything is created, every clash among what the run reads and what its
    /// outputs take: an output file over an input (`also_read`: more files read, such as the
    /// pipeline file) or over another output, an output file in a folder that does not exist, two
    /// outputs on one port.
    pub fn check_outputs(&self, also_read: &[InputFile]) -> Result<(), PipelineError> {
        let claims = self.claims()?;
        let mut inputs = self.input_files();
        inputs.extend(also_read.iter().cloned());
        for claim in &claims {
            if let Claim::Read { what, path } = claim {
                inputs.push(InputFile {
                    what: what.clone(),
                    path: path.clone(),
                });
            }
        }
        let inputs: Vec<(FileIdentity, &InputFile)> =
            inputs.iter().map(|i| (identity(&i.path), i)).collect();
        let mut written: Vec<(FileIdentity, OutputFile<'_>)> = Vec::new();
        let mut listening: Vec<Listening<'_>> = Vec::new();
        for claim in &claims {
            match claim {
                Claim::File {
                    setting,
                    given,
                    path,
                    stream,
                } => {
                    let output = OutputFile {
                        setting,
                        given,
                        path,
                        stream: stream.as_deref(),
                    };
                    let id = check_file(&output, &inputs, &written)?;
                    written.push((id, output));
                }
                Claim::Port {
                    setting,
                    given,
                    host,
                    port,
                } => {
                    let port = Listening {
                        setting,
                        given,
                        host,
                        port: *port,
                    };
                    if let Some(earlier) = listening.iter().find(|l| overlaps(l, &port)) {
                        return Err(clash(
                            port.setting,
                            port.given,
                            format!(
                                "port {} is also taken by {} = {}; give another port",
                                port.port,
                                in_section(earlier.setting),
                                earlier.given
                            ),
                        ));
                    }
                    listening.push(port);
                }
                Claim::Read { .. } => {}
            }
        }
        Ok(())
    }
}

/// Checks one output file: its folder exists, it is no input and no earlier output. Its identity.
fn check_file(
    output: &OutputFile<'_>,
    inputs: &[(FileIdentity, &InputFile)],
    written: &[(FileIdentity, OutputFile<'_>)],
) -> Result<FileIdentity, PipelineError> {
    let setting = output.setting;
    let given = output.given;
    let folder = match output.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(folder) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(clash(
                setting,
                given,
                format!("{} is not a folder", folder.display()),
            ));
        }
        Err(_) => {
            return Err(clash(
                setting,
                given,
                format!(
                    "folder {} does not exist (create it first)",
                    folder.display()
                ),
            ));
        }
    }
    // What would make creating the file fail, found before any output creates its own.
    if output.path.is_dir() {
        return Err(clash(
            setting,
            given,
            format!("cannot create {}: it is a folder", output.path.display()),
        ));
    }
    let id = identity(output.path);
    if let Some((_, input)) = inputs.iter().find(|(i, _)| *i == id) {
        let what = &input.what;
        let hint = hint(output.setting);
        return Err(clash(
            setting,
            given,
            match output.stream {
                None => format!("that is {what}; {hint}"),
                Some(_) => format!(
                    "{} would overwrite {what} ({}); {hint}",
                    output.describe(),
                    input.path.display()
                ),
            },
        ));
    }
    if let Some((_, earlier)) = written.iter().find(|(w, _)| *w == id) {
        return Err(clash(
            setting,
            given,
            format!(
                "{} is also {}; give another file",
                output.describe(),
                earlier.describe()
            ),
        ));
    }
    Ok(id)
}

/// Whether two listeners would take one port: the same port on the same address, or on every
/// interface.
fn overlaps(a: &Listening<'_>, b: &Listening<'_>) -> bool {
    let everywhere = |host: &str| matches!(host, "0.0.0.0" | "::" | "[::]" | "");
    a.port == b.port && (a.host == b.host || everywhere(a.host) || everywhere(b.host))
}

/// `json.path` as a hint names it: `[json] path`.
fn in_section(setting: &str) -> String {
    match setting.split_once('.') {
        Some((section, key)) => format!("[{section}] {key}"),
        None => setting.to_string(),
    }
}

fn hint(setting: &str) -> &'static str {
    if setting == "json.path" {
        "give the output file (e.g. faces.jsonl) or - for standard output"
    } else {
        "give a new .mp4 file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two outputs on one port are refused before anything listens, on the same address or on
    /// every interface; other ports and addresses pass.
    #[test]
    fn two_outputs_on_one_port_are_refused() {
        let with = |overlay: &str, metrics: &str| {
            let mut config = PipelineConfig::default();
            config.source.input = "testsrc://ball".into();
            config.attributes.enabled = false;
            config.overlay.path = Some(overlay.into());
            config.metrics.listen = Some(metrics.into());
            config.check_outputs(&[])
        };
        let e = with("rtsp://127.0.0.1:9464/faces", "127.0.0.1:9464").unwrap_err();
        assert_eq!(
            e.to_string(),
            "metrics.listen = 127.0.0.1:9464: port 9464 is also taken by [overlay] path = rtsp://127.0.0.1:9464/faces; give another port"
        );
        assert!(with("rtsp://0.0.0.0:9464/faces", "127.0.0.1:9464").is_err());
        assert!(with("rtsp://127.0.0.1:8554/faces", "127.0.0.1:9464").is_ok());
        assert!(with("rtsp://127.0.0.2:9464/faces", "127.0.0.1:9464").is_ok());
    }

    #[test]
    fn normalize_removes_dots_lexically() {
        for (path, want) in [
            ("a/b/../c", "a/c"),
            ("./a/./b", "a/b"),
            ("/x/../../y", "/y"),
            ("../a", "../a"),
            ("a/..", "."),
            ("a/../../b", "../b"),
        ] {
            assert_eq!(normalize(Path::new(path)), PathBuf::from(want), "{path}");
        }
    }

    #[test]
    fn one_file_by_any_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("a.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("a.mp4"), root.join("link.mp4")).unwrap();
        std::fs::hard_link(root.join("a.mp4"), root.join("hard.mp4")).unwrap();
        std::os::unix::fs::symlink(root.join("new.mp4"), root.join("dangling.mp4")).unwrap();
        let a = root.join("a.mp4");
        for other in [
            root.join("sub/../a.mp4"),
            root.join("./a.mp4"),
            root.join("link.mp4"),
            root.join("hard.mp4"),
        ] {
            assert!(same_file(&a, &other), "{}", other.display());
        }
        // Not there yet: the same file by its folder, through ../ and a dangling symlink.
        assert!(same_file(
            &root.join("new.mp4"),
            &root.join("sub/../new.mp4")
        ));
        assert!(same_file(&root.join("new.mp4"), &root.join("dangling.mp4")));
        assert!(!same_file(&root.join("new.mp4"), &root.join("sub/new.mp4")));
        assert!(!same_file(&a, &root.join("new.mp4")));
    }

    #[test]
    fn inputs_that_are_local_files() {
        assert_eq!(input_file("clip.mp4"), Some(PathBuf::from("clip.mp4")));
        assert_eq!(
            input_file("file:///tmp/a%20b.mp4"),
            Some(PathBuf::from("/tmp/a b.mp4"))
        );
        assert_eq!(
            input_file("FILE:///tmp/a.mp4"),
            Some(PathBuf::from("/tmp/a.mp4"))
        );
        for not_a_file in [
            "testsrc://ball",
            "rtsp://h/s",
            "v4l2:///dev/video0",
            "",
            " ",
        ] {
            assert_eq!(input_file(not_a_file), None, "{not_a_file}");
        }
    }
}
