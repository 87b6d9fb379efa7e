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
    #[error(
        "device = cuda: the ONNX Runtime at {path} has no CUDA provider (it is the CPU build); `scripts/setup.sh --cuda` installs the CUDA build"
    )]
    NoCudaProvider { path: PathBuf },
    #[error("device = cuda: {0} (is there an NVIDIA GPU with its driver, CUDA 13 and cuDNN 9?)")]
    Cuda(String),
    #[error("the device was already chosen ({0}) for this process")]
    DeviceChosen(Device),
}

/// Where the networks run (`--device`, `[runtime] device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider (the CUDA build of ONNX Runtime, an NVIDIA GPU).
    Cuda,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            _ => Err(format!("'{s}' is not a device: cpu or cuda")),
        }
    }
}

/// `[runtime]` in pipeline files.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub device: Device,
}

static DEVICE: OnceLock<Device> = OnceLock::new();

/// The device this process's sessions run on.
pub fn device() -> Device {
    DEVICE.get().copied().unwrap_or_default()
}

/// Chooses where every session of this process runs, before the first one is built (ONNX
/// Runtime's library is loaded once per process). With [`Device::Cuda`] the CUDA build of the
/// library is looked for first (`.ort/cuda/lib`) and must have the CUDA provider: a missing one is
/// an error, never a silent fall-back to the CPU.
pub fn use_device(device: Device) -> Result<(), RuntimeError> {
    if DEVICE.get_or_init(|| device) != &device {
        return Err(RuntimeError::DeviceChosen(self::device()));
    }
    if device == Device::Cuda {
        let library = find_library()?;
        // `scripts/setup.sh --cuda` puts CUDA's and cuDNN's libraries beside the library: load
        // them from there (else the system's, through the loader's usual search).
        if let Some(dir) = library.parent()
            && dir.join("libcudart.so.13").exists()
        {
            ort::ep::cuda::preload_dylibs(Some(dir), Some(dir))
                .map_err(|e| RuntimeError::Cuda(e.to_string()))?;
        }
        environment()?;
        use ort::ep::ExecutionProvider;
        if !ort::ep::CUDA::is_available().unwrap_or(false) {
            return Err(RuntimeError::NoCudaProvider {
                path: library.canonicalize().unwrap_or(library),
            });
        }
    }
    Ok(())
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
    if device() == Device::Cuda {
        // The CUDA build (`scripts/setup.sh --cuda`) beside each place the CPU build is looked for,
        // first.
        let cuda: Vec<PathBuf> = dirs
            .iter()
            .map(|d| d.join("../cuda/lib"))
            .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/cuda/lib")])
            .collect();
        dirs.splice(0..0, cuda);
    }
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

/// How many different input shapes a session will see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shapes {
    /// A bounded set (batch sizes up to a fixed chunk, the sizes of a few pictures): ONNX
    /// Runtime plans the memory of a run once per input shape and reuses the plan (about 4 %
    /// less CPU for MTCNN). The plans are kept for the session's life, one per shape seen.
    Few,
    /// Unbounded (any batch size, any picture size): no plans kept.
    Many,
}

/// Builds a CPU session from model bytes with `intra_threads` worker threads (0: ONNX Runtime's
/// default, one per core), for inputs of [`Shapes::Many`].
pub fn session_from_memory(model: &[u8], intra_threads: usize) -> Result<Session, RuntimeError> {
    session_for_shapes(model, intra_threads, Shapes::Many)
}

/// [`session_from_memory`] for inputs of `shapes`.
pub fn session_for_shapes(
    model: &[u8],
    intra_threads: usize,
    shapes: Shapes,
) -> Result<Session, RuntimeError> {
    let env = environment()?;
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_inter_threads(1)?
        // Several sessions (P-, R-, O-Net, later the attribute model) and GStreamer share few
        // cores: idle pool threads must sleep, not spin, or they starve the session that runs.
        .with_intra_op_spinning(false)?
        .with_inter_op_spinning(false)?
        .with_memory_pattern(shapes == Shapes::Few)?;
    if intra_threads > 0 {
        builder = builder.with_intra_threads(intra_threads)?;
    }
    if device() == Device::Cuda {
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| RuntimeError::Cuda(ort::Error::<()>::from(e).to_string()))?;
    }
    Ok(builder.commit_from_memory(model)?)
}
