//! What a run writes, checked against what it reads before anything is created: no output may be
//! an input (however it is spelled: `./`, `../`, a symlink, a hard link, a `file://` URI) or
//! another output, and every output's folder must exist (a typo must not create folders).

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{PipelineConfig, PipelineError};
use crate::sinks::OverlayTarget;
use crate::sinks::overlay::stream_file;

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

/// A file the run writes.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// The setting that names it, as its flag: `--json`, `--overlay`.
    pub flag: &'static str,
    /// The setting's value as given.
    pub given: String,
    /// The file itself (one stream's overlay file is not the value given).
    pub path: PathBuf,
    /// The stream whose file it is (overlay files with several streams).
    pub stream: Option<String>,
}

impl OutputFile {
    fn describe(&self) -> String {
        match &self.stream {
            Some(id) => format!("stream {id}'s overlay file {}", self.path.display()),
            None if self.flag == "--json" => "the JSON output".to_string(),
            None => "the overlay file".to_string(),
        }
    }
}

/// A file the run reads.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// What it is, for errors: `the input of stream 0`, `the attribute model`, …
    pub what: String,
    pub path: PathBuf,
}

impl PipelineConfig {
    /// Every file the run writes: the JSON Lines file (unless standard output) and each stream's
    /// overlay file.
    pub fn output_files(&self) -> Result<Vec<OutputFile>, PipelineError> {
        let mut files = Vec::new();
        if self.json.path != "-" {
            files.push(OutputFile {
                flag: "--json",
                given: self.json.path.clone(),
                path: PathBuf::from(&self.json.path),
                stream: None,
            });
        }
        if let Some(OverlayTarget::File(path)) = self.overlay.target()? {
            let ids: Vec<String> = self.streams().into_iter().map(|(id, _)| id).collect();
            for id in &ids {
                files.push(OutputFile {
                    flag: "--overlay",
                    given: path.display().to_string(),
                    path: stream_file(&path, id, ids.len()),
                    stream: (ids.len() > 1).then(|| id.clone()),
                });
            }
        }
        Ok(files)
    }

    /// Every local file the run reads: file inputs, the models, the MQTT CA certificate.
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
        // A model named but not used (detection only) is still the user's file, not an output.
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
        if let Some(ca) = &self.mqtt.ca {
            files.push(InputFile {
                what: "the MQTT CA certificate".into(),
                path: ca.clone(),
            });
        }
        files
    }

    /// Refuses, in one line and before anything is created, an output that is an input or another
    /// output, or whose folder does not exist. `also_read`: files read that the configuration does
    /// not name (the pipeline file).
    pub fn check_outputs(&self, also_read: &[InputFile]) -> Result<(), PipelineError> {
        let outputs = self.output_files()?;
        let mut inputs = self.input_files();
        inputs.extend(also_read.iter().cloned());
        let inputs: Vec<(FileIdentity, &InputFile)> =
            inputs.iter().map(|i| (identity(&i.path), i)).collect();
        let mut written: Vec<(FileIdentity, &OutputFile)> = Vec::new();
        for output in &outputs {
            let flag = output.flag;
            let given = &output.given;
            let folder = match output.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match std::fs::metadata(folder) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(PipelineError::Invalid(format!(
                        "{flag} {given}: {} is not a folder",
                        folder.display()
                    )));
                }
                Err(_) => {
                    return Err(PipelineError::Invalid(format!(
                        "{flag} {given}: folder {} does not exist (create it first)",
                        folder.display()
                    )));
                }
            }
            let id = identity(&output.path);
            if let Some((_, input)) = inputs.iter().find(|(i, _)| *i == id) {
                let what = &input.what;
                let hint = hint(flag);
                return Err(PipelineError::Invalid(match &output.stream {
                    None => format!("{flag} {given}: that is {what}; {hint}"),
                    Some(_) => format!(
                        "{flag} {given}: {} would overwrite {what} ({}); {hint}",
                        output.describe(),
                        input.path.display()
                    ),
                }));
            }
            if let Some((_, earlier)) = written.iter().find(|(w, _)| *w == id) {
                return Err(PipelineError::Invalid(format!(
                    "{flag} {given}: {} is also {}; give another file",
                    output.describe(),
                    earlier.describe()
                )));
            }
            written.push((id, output));
        }
        Ok(())
    }
}

fn hint(flag: &str) -> &'static str {
    if flag == "--json" {
        "give the output file (e.g. --json faces.jsonl) or - for standard output"
    } else {
        "give a new .mp4 file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
