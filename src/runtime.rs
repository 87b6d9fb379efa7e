//! ONNX Runtime loading: faceflow finds `libonnxruntime` itself (no environment variable needed) and
//! says which command fetches it when it is missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// The library name the set-up script installs under `.ort/lib/`.
pub const ORT_LIBRARY_NAME: &str = "libonnxruntime.so";
/// Environment variable that overrides the search.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in {searched}); run scripts/deps.sh to fetch it, or set ORT_DYLIB_PATH"
    )]
    LibraryNotFound { searched: String },
    #[error("ORT_DYLIB_PATH={0} does not exist")]
    OverrideMissing(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
}

impl From<ort::Error> for RuntimeError {
    fn from(e: ort::Error) -> Self {
        RuntimeError::Ort(e.to_string())
    }
}

impl From<ort::Error<ort::session::builder::SessionBuilder>> for RuntimeError {
    fn from(e: ort::Error<ort::session::builder::SessionBuilder>) -> Self {
        RuntimeError::Ort(ort::Error::<()>::from(e).to_string())
    }
}

/// Places searched for the library, in order: next to the executable, the project's `.ort/lib` seen
/// from `target/<profile>/` and `target/<profile>/deps/`, and the project this binary was built from.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(exe_dir) = exe.parent()
    {
        dirs.push(exe_dir.to_path_buf());
        dirs.push(exe_dir.join("lib"));
        dirs.push(exe_dir.join("../lib"));
        dirs.push(exe_dir.join("../../.ort/lib"));
        dirs.push(exe_dir.join("../../../.ort/lib"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/lib"));
    dirs.into_iter().map(|d| d.join(ORT_LIBRARY_NAME)).collect()
}

/// Resolves which library file to load.
pub fn find_library() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(RuntimeError::OverrideMissing(path))
        };
    }
    let candidates = library_candidates();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| RuntimeError::LibraryNotFound {
            searched: candidates
                .iter()
                .filter_map(|p| p.parent())
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = find_library()?;
        tracing::debug!(path = %path.display(), "loading ONNX Runtime");
        let builder = ort::init_from(&path).map_err(|e| RuntimeError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(builder.with_name("faceflow").build()?)
    });
    env.as_ref().map_err(Clone::clone)
}

/// Builds a CPU session from model bytes with `intra_threads` worker threads (0: ONNX Runtime's
/// default, one per core).
pub fn session_from_memory(model: &[u8], intra_threads: usize) -> Result<Session, RuntimeError> {
    let env = environment()?;
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_inter_threads(1)?
        // Several sessions (P-, R-, O-Net, later the attribute model) and GStreamer share few
        // cores: idle pool threads must sleep, not spin, or they starve the session that runs.
        .with_intra_op_spinning(false)?
        .with_inter_op_spinning(false)?
        // Batch sizes change every frame: per-shape memory plans and the arena would only grow.
        .with_memory_pattern(false)?;
    if intra_threads > 0 {
        builder = builder.with_intra_threads(intra_threads)?;
    }
    Ok(builder.commit_from_memory(model)?)
}
