//! Sinks: where results leave faceflow. Each sink takes the run's records in decode order per
//! stream (frame records, and a track record when a person's track ends) through [`Sink`]; the
//! [`stage`] fans every record out to all of them. Now: the JSON Lines metadata stream.

pub mod json;
pub mod live_overlay;
pub mod mqtt;
pub mod overlay;
pub(crate) mod stage;
pub mod window_overlay;

pub use json::{JsonConfig, JsonLinesWriter, SinkError};

use crate::record::{FrameRecord, TrackRecord};
pub use mqtt::{MqttConfig, MqttSink};
pub use overlay::{OverlayConfig, OverlaySink, OverlayTarget};

/// Refuses an output file whose folder does not exist: a mistyped path must not create folders
/// (`--json /no/such/dir/x.jsonl`).
pub(crate) fn check_folder(file: &std::path::Path) -> Result<(), SinkError> {
    let folder = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    if folder.is_dir() {
        return Ok(());
    }
    Err(SinkError::Create {
        path: file.to_path_buf(),
        reason: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "folder {} does not exist (create it first)",
                folder.display()
            ),
        ),
    })
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

impl Sink for JsonLinesWriter {
    fn write_frame(
        &mut self,
        _stream: usize,
        record: &FrameRecord,
        _pixels: &[u8],
    ) -> Result<(), SinkError> {
        self.write(record)
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        self.write(record)
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        self.flush_if_due()
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}
