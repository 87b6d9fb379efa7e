//! Sinks: where results leave faceflow. Each sink takes the run's records in decode order per
//! stream (frame records, and a track record when a person's track ends) through [`Sink`]; the
//! [`stage`] fans every record out to all of them.
//!
//! Each output lives in its own folder (`json/`, `overlay/`, `mqtt/`) with its settings, which
//! implement [`OutputConfig`]: they check themselves, declare the files and ports they will take
//! ([`Claim`]), and build their sink; each has its own error type ([`OutputError`]). The run
//! finds clashes among all claims before anything is created (`pipeline::outputs`). A new output
//! is a new folder plus its line in `PipelineConfig::outputs`.

pub mod json;
pub mod mqtt;
pub mod overlay;
pub mod snapshots;
pub(crate) mod stage;

pub use json::{JsonConfig, JsonError, JsonLinesWriter};
pub use mqtt::MqttError;
pub use overlay::OverlayError;
pub use snapshots::{SnapshotConfig, SnapshotError};

use std::path::PathBuf;

use crate::record::{FrameRecord, TrackEvent, TrackRecord};
pub use mqtt::{MqttConfig, MqttSink};
pub use overlay::{OverlayConfig, OverlaySink, OverlayTarget};

/// Refuses an output file whose folder does not exist: a mistyped path must not create folders
/// (`--json /no/such/dir/x.jsonl`).
pub(crate) fn check_folder(file: &std::path::Path) -> Result<(), std::io::Error> {
    let folder = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    if folder.is_dir() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "folder {} does not exist (create it first)",
            folder.display()
        ),
    ))
}

/// What outputs are built for: the run's streams.
pub struct OutputContext<'a> {
    /// The run's stream ids, by index.
    pub streams: &'a [String],
}

/// Something an output will take on this machine, declared before anything is created, so that
/// clashes (an output over an input, two outputs on one file or port) are found in one place.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// A file it writes. `setting`: the key that names it (`json.path`); `given`: the value as
    /// given; `stream`: the stream whose file it is, when each stream has its own.
    File {
        setting: &'static str,
        given: String,
        path: PathBuf,
        stream: Option<String>,
    },
    /// A file it reads (a certificate): no output may overwrite it.
    Read { what: String, path: PathBuf },
    /// A TCP port it listens on, on `host` (`0.0.0.0` or `::`: every interface).
    Port {
        setting: &'static str,
        given: String,
        host: String,
        port: u16,
    },
}

/// An output's settings (`[json]`, `[overlay]`, `[mqtt]`): each output is off unless set.
pub trait OutputConfig {
    /// Whether the run has this output.
    fn enabled(&self) -> bool;
    /// Checks the settings without creating, opening or connecting anything.
    fn validate(&self) -> Result<(), SinkError>;
    /// The files and ports the output will take (none when it is off).
    fn claims(&self, cx: &OutputContext<'_>) -> Result<Vec<Claim>, SinkError>;
    /// Builds the sink: creates its files, listens, connects. Called only when it is on, after
    /// every output's claims were found free of clashes.
    fn build(&self, cx: &OutputContext<'_>) -> Result<Box<dyn Sink>, SinkError>;
}

/// Builds every output that is on. Those that write files are created after those that do not,
/// and the outputs are built from the last listed to the first, so the JSON output (listed first)
/// is created last of all: a taken port, a refused broker or an overlay that cannot start must
/// not cost the files of an earlier run.
pub fn build_all(
    outputs: &[&dyn OutputConfig],
    cx: &OutputContext<'_>,
) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut order = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        if output.enabled() {
            let writes_files = output
                .claims(cx)?
                .iter()
                .any(|c| matches!(c, Claim::File { .. }));
            order.push((writes_files, std::cmp::Reverse(i)));
        }
    }
    order.sort();
    let mut built: Vec<(usize, Box<dyn Sink>)> = Vec::new();
    for (_, std::cmp::Reverse(i)) in order {
        built.push((i, outputs[i].build(cx)?));
    }
    // Records reach the sinks in the order the outputs are listed.
    built.sort_by_key(|(i, _)| *i);
    Ok(built.into_iter().map(|(_, sink)| sink).collect())
}

/// An output's own error type: each sink has one, and the sink stage sees them all as
/// [`SinkError`].
pub trait OutputError: std::error::Error + Send + Sync + 'static {
    /// The reader of a pipe went away (`faceflow … | head -1`): not a failure, a reason to stop.
    fn is_broken_pipe(&self) -> bool {
        false
    }
}

/// A failure of one of the outputs, in its own words.
#[derive(Debug)]
pub struct SinkError {
    error: Box<dyn std::error::Error + Send + Sync>,
    broken_pipe: bool,
}

impl<E: OutputError> From<E> for SinkError {
    fn from(error: E) -> Self {
        Self {
            broken_pipe: error.is_broken_pipe(),
            error: Box::new(error),
        }
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl SinkError {
    /// The reader of a pipe went away (see [`OutputError::is_broken_pipe`]).
    pub fn is_broken_pipe(&self) -> bool {
        self.broken_pipe
    }
}

/// One output of a run. Calls come from one thread, in order: for each frame its record, then the
/// records of the people whose tracks ended there; track records also come without a frame, when
/// a stream ends and when the run ends (the people still in view); `idle` when nothing has come for a while;
/// `finish` once at the end (also after an error or Ctrl-C: what was written must be kept).
pub trait Sink: Send {
    /// A frame of the run's stream number `stream` (its index, from 0). `pixels`: the frame's
    /// packed RGB when the sink asked for them ([`Sink::draws`]), else empty.
    fn write_frame(
        &mut self,
        stream: usize,
        record: &FrameRecord,
        pixels: &[u8],
    ) -> Result<(), SinkError>;
    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError>;
    /// A person announced (`track_start`, `track_update`); sinks that do not write records
    /// ignore it.
    fn write_event(&mut self, record: &TrackEvent) -> Result<(), SinkError> {
        let _ = record;
        Ok(())
    }
    /// Whether the sink needs each frame's pixels (they are then kept until it has them).
    fn draws(&self) -> bool {
        false
    }
    /// A stream ended (its last frame and people came before): a chance to close what is only
    /// that stream's.
    fn end_stream(&mut self, stream: usize) -> Result<(), SinkError> {
        let _ = stream;
        Ok(())
    }
    /// Nothing came for a while (a camera stalls): a chance to flush.
    fn idle(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError>;
    /// A line for the run's summary, after `finish` (e.g. records published and dropped).
    fn summary(&self) -> Option<String> {
        None
    }
    /// The sink's own counters now, for metrics (`faceflow_<name>`).
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}
