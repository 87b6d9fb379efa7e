//! JSON Lines metadata: one record per decoded frame (or per image for `detect`), in decode order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Claim, OutputConfig, OutputContext, OutputError, Sink, SinkError};
use crate::record::{FrameRecord, TrackEvent, TrackRecord};

/// A failure of the JSON Lines output.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("cannot create {path}: {reason}")]
    Create {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("cannot write {target}: {reason}")]
    Write {
        target: String,
        reason: std::io::Error,
    },
}

impl OutputError for JsonError {
    fn is_broken_pipe(&self) -> bool {
        matches!(self, JsonError::Write { reason, .. } if reason.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Settings of the JSON Lines sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonConfig {
    /// Output file, or "-" for standard output.
    pub path: String,
}

impl Default for JsonConfig {
    fn default() -> Self {
        Self { path: "-".into() }
    }
}

/// Writes one JSON object per line. Standard output is flushed after every line (a reader on a
/// pipe sees records as they come); files are buffered and flushed at least every second, always
/// after a whole line, so `tail -f` follows a live run and a killed process leaves whole lines.
pub struct JsonLinesWriter {
    out: Box<dyn Write + Send>,
    target: String,
    flush_each_line: bool,
    records: u64,
    last_flush: Instant,
    /// Whole lines written since the last flush.
    unflushed: bool,
}

/// Longest time a complete line waits in a file writer's buffer.
const FILE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl JsonLinesWriter {
    pub fn create(config: &JsonConfig) -> Result<Self, JsonError> {
        if config.path == "-" {
            return Ok(Self {
                out: Box::new(std::io::stdout()),
                target: "standard output".into(),
                flush_each_line: true,
                records: 0,
                last_flush: Instant::now(),
                unflushed: false,
            });
        }
        let path = Path::new(&config.path);
        let file = super::check_folder(path)
            .and_then(|()| File::create(path))
            .map_err(|reason| JsonError::Create {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(Self {
            out: Box::new(BufWriter::with_capacity(256 * 1024, file)),
            target: config.path.clone(),
            flush_each_line: false,
            records: 0,
            last_flush: Instant::now(),
            unflushed: false,
        })
    }

    /// A writer into any `Write` (tests, embedding).
    pub fn from_writer(out: Box<dyn Write + Send>, target: &str) -> Self {
        Self {
            out,
            target: target.into(),
            flush_each_line: false,
            records: 0,
            last_flush: Instant::now(),
            unflushed: false,
        }
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), JsonError> {
        let err = |reason| JsonError::Write {
            target: self.target.clone(),
            reason,
        };
        // Serialise first so a line is written whole or not at all.
        let mut line = serde_json::to_vec(record).map_err(|e| err(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.out.write_all(&line).map_err(err)?;
        self.records += 1;
        self.unflushed = true;
        if self.flush_each_line {
            self.flush()?;
        } else {
            self.flush_if_due()?;
        }
        Ok(())
    }

    /// Flushes lines that have waited a second or more. Call it also when no record comes (a
    /// camera stalls), so the file never lags a run by more than about a second.
    pub fn flush_if_due(&mut self) -> Result<(), JsonError> {
        if self.unflushed && self.last_flush.elapsed() >= FILE_FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), JsonError> {
        self.out.flush().map_err(|reason| JsonError::Write {
            target: self.target.clone(),
            reason,
        })?;
        self.unflushed = false;
        self.last_flush = Instant::now();
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }
}

impl Drop for JsonLinesWriter {
    fn drop(&mut self) {
        // Whatever ends the run, complete lines already written reach the file.
        let _ = self.out.flush();
    }
}

impl OutputConfig for JsonConfig {
    /// Always on: standard output unless a file is given.
    fn enabled(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<(), SinkError> {
        Ok(())
    }

    fn claims(&self, _cx: &OutputContext<'_>) -> Result<Vec<Claim>, SinkError> {
        if self.path == "-" {
            return Ok(Vec::new());
        }
        Ok(vec![Claim::File {
            setting: "json.path",
            given: self.path.clone(),
            path: PathBuf::from(&self.path),
            stream: None,
        }])
    }

    fn build(&self, _cx: &OutputContext<'_>) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(JsonLinesWriter::create(self)?))
    }
}

impl Sink for JsonLinesWriter {
    fn write_frame(
        &mut self,
        _stream: usize,
        record: &FrameRecord,
        _pixels: &[u8],
    ) -> Result<(), SinkError> {
        Ok(self.write(record)?)
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        Ok(self.write(record)?)
    }

    fn write_event(&mut self, record: &TrackEvent) -> Result<(), SinkError> {
        Ok(self.write(record)?)
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        Ok(self.flush_if_due()?)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(self.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Face;
    use crate::model::AgeGrouping;
    use crate::model::readout::Prediction;
    use crate::model::spec::{ModelSpec, Task};
    use crate::record::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn face() -> Face {
        Face {
            bbox: [1.0, 2.0, 3.0, 4.0],
            score: 0.5,
            landmarks: [[1.0, 1.0], [2.0, 1.0], [1.5, 2.0], [1.0, 3.0], [2.0, 3.0]],
        }
    }

    #[test]
    fn attributes_follow_the_documented_schema() {
        let mut age = vec![-20f32; crate::model::FINE_AGE_BINS];
        age[crate::model::fine_bin_of(34)] = 20.0;
        let p = Prediction::from_logits(&age, &[0.0, 4.0], &[0.0, 0.0, 5.0, 0.0, 0.0]);
        let spec = ModelSpec::current(&[Task::Age, Task::Gender, Task::Race]);
        let record = FaceRecord::with_attributes(
            face(),
            &p,
            &Readout::plain(spec, AgeGrouping::Three),
            Default::default(),
        );
        let json = serde_json::to_string(&record).unwrap();
        assert!(
            json.ends_with(r#""age":{"group":"27-52","index":1,"years":34.0,"probs":[0.0,1.0,0.0]},"gender":{"label":"female","prob":0.982},"race":{"label":"asian","prob":0.974}}"#),
            "{json}"
        );
        let back: FaceRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        // A model trained without race reports no race.
        let spec = ModelSpec::current(&[Task::Age, Task::Gender]);
        let record = FaceRecord::with_attributes(
            face(),
            &p,
            &Readout::plain(spec, AgeGrouping::Five),
            Default::default(),
        );
        let json = serde_json::to_string(&record).unwrap();
        assert!(
            json.contains(r#""group":"24-39""#) && !json.contains("race"),
            "{json}"
        );
    }

    #[test]
    fn records_follow_the_documented_schema() {
        let buf = Shared::default();
        let mut w = JsonLinesWriter::from_writer(Box::new(buf.clone()), "test");
        let record = FrameRecord {
            kind: RecordKind::Frame,
            stream: "0".into(),
            source: "file:///clip.mp4".into(),
            frame: 0,
            pts_ms: 0.0,
            time: None,
            width: 854,
            height: 480,
            gap_before_ms: None,
            faces: vec![FaceRecord::detection(face())],
        };
        w.write(&record).unwrap();
        w.write(&ImageRecord {
            image: "a.jpg".into(),
            width: 2,
            height: 3,
            faces: vec![],
        })
        .unwrap();
        w.flush().unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"type":"frame","stream":"0","source":"file:///clip.mp4","frame":0,"pts_ms":0.0,"width":854,"height":480,"faces":[{"bbox":[1.0,2.0,3.0,4.0],"score":0.5,"landmarks":[[1.0,1.0],[2.0,1.0],[1.5,2.0],[1.0,3.0],[2.0,3.0]]}]}"#
        );
        assert_eq!(
            lines[1],
            r#"{"image":"a.jpg","width":2,"height":3,"faces":[]}"#
        );
        assert_eq!(w.records(), 2);
    }

    /// Counts flushes, to see when buffered lines reach the file.
    #[derive(Clone, Default)]
    struct Flushes(Arc<Mutex<(usize, usize)>>);
    impl Write for Flushes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.lock().unwrap().0 += 1;
            Ok(())
        }
    }

    #[test]
    fn a_waiting_line_is_flushed_when_due_even_without_a_new_record() {
        let f = Flushes::default();
        let mut w = JsonLinesWriter::from_writer(Box::new(f.clone()), "test");
        w.flush_if_due().unwrap();
        assert_eq!(f.0.lock().unwrap().0, 0, "nothing to flush");
        w.write(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(f.0.lock().unwrap().0, 0, "buffered for now");
        w.last_flush -= FILE_FLUSH_INTERVAL;
        w.flush_if_due().unwrap();
        assert_eq!(f.0.lock().unwrap().0, 1, "due: flushed with no new record");
        w.last_flush -= FILE_FLUSH_INTERVAL;
        w.flush_if_due().unwrap();
        assert_eq!(f.0.lock().unwrap().0, 1, "nothing new since");
    }

    #[test]
    fn times_carry_no_float_noise() {
        let record = FrameRecord {
            kind: RecordKind::Frame,
            stream: "0".into(),
            source: "x".into(),
            frame: 1,
            pts_ms: 7511.697630999999,
            time: None,
            width: 1,
            height: 1,
            gap_before_ms: Some(1200.0000000002),
            faces: vec![],
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(
            json.contains(r#""pts_ms":7511.698,"#) && json.contains(r#""gap_before_ms":1200.0,"#),
            "{json}"
        );
    }
}
