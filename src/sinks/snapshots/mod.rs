//! Snapshots (`[snapshots] dir`, `--snapshots DIR`): each person's most readable face as a JPEG,
//! `<stream>-<track>.jpg`, written when their track ends, as Frigate does for its events; the
//! track record names it (`snapshot`). The face kept is the one with the highest weight in the
//! track's estimate (`track::estimate::readability`): large, sure, frontal.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Claim, OutputConfig, OutputContext, OutputError, Sink, SinkError};
use crate::record::{FrameRecord, TrackRecord, snapshot_path};
use crate::track::estimate::readability;

/// `[snapshots]` in pipeline files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Folder the snapshots go to (it must exist); off unless set.
    pub dir: Option<PathBuf>,
}

/// A failure of the snapshots output.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshots {dir}: {message}")]
    Folder { dir: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

impl OutputError for SnapshotError {}

impl OutputConfig for SnapshotConfig {
    fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    fn validate(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Files named by stream and track, unknown in advance: none to check.
    fn claims(&self, _cx: &OutputContext<'_>) -> Result<Vec<Claim>, SinkError> {
        Ok(Vec::new())
    }

    fn build(&self, _cx: &OutputContext<'_>) -> Result<Box<dyn Sink>, SinkError> {
        let dir = self.dir.clone().unwrap_or_default();
        if !dir.is_dir() {
            return Err(SnapshotError::Folder {
                dir,
                message: "no such folder (create it first)".into(),
            }
            .into());
        }
        Ok(Box::new(SnapshotSink {
            dir,
            best: HashMap::new(),
            stream_ids: HashMap::new(),
            written: 0,
        }))
    }
}

/// The best face so far of each person in view, by stream id and track.
struct SnapshotSink {
    dir: PathBuf,
    /// By stream index and track.
    best: HashMap<(usize, u64), Best>,
    /// Each stream's id by its index: track records name their stream by id.
    stream_ids: HashMap<usize, String>,
    written: u64,
}

struct Best {
    weight: f64,
    crop: image::RgbImage,
    /// When the person was last seen, stream time.
    seen_pts_ms: f64,
    /// A face of the track was confirmed: it is a person (the others are kept only a while).
    person: bool,
}

/// A person not seen for this long (stream time) has their snapshot forgotten: a track taken over
/// by another (`track::appearance`) never gets a record. Longer than the longest `reentry_ms`.
const FORGET_AFTER_MS: f64 = 2.0 * 3_600_000.0;
/// A track never confirmed (a neck, or a person held back a moment) not seen for this long has its
/// face forgotten: a person's record comes well before (`max_lost_ms`, `reentry_ms` by default).
const FORGET_UNCONFIRMED_AFTER_MS: f64 = 60_000.0;

/// Room around the face's box in its snapshot, as a fraction of the box on each side.
const MARGIN: f32 = 0.25;

/// The face's box with [`MARGIN`] from the frame's packed RGB `pixels`; `None` when nothing of it
/// is in the frame.
fn crop(pixels: &[u8], width: u32, height: u32, bbox: [f32; 4]) -> Option<image::RgbImage> {
    if pixels.len() < width as usize * height as usize * 3 {
        return None;
    }
    let (w, h) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let x0 = (bbox[0] - MARGIN * w).floor().max(0.0) as u32;
    let y0 = (bbox[1] - MARGIN * h).floor().max(0.0) as u32;
    let x1 = ((bbox[2] + MARGIN * w).ceil().max(0.0) as u32).min(width);
    let y1 = ((bbox[3] + MARGIN * h).ceil().max(0.0) as u32).min(height);
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let row = |y: u32| {
        let start = (y as usize * width as usize + x0 as usize) * 3;
        &pixels[start..start + (x1 - x0) as usize * 3]
    };
    let bytes: Vec<u8> = (y0..y1).flat_map(|y| row(y).iter().copied()).collect();
    image::RgbImage::from_raw(x1 - x0, y1 - y0, bytes)
}

impl Sink for SnapshotSink {
    fn draws(&self) -> bool {
        true
    }

    fn write_frame(
        &mut self,
        stream: usize,
        record: &FrameRecord,
        pixels: &[u8],
    ) -> Result<(), SinkError> {
        self.stream_ids
            .entry(stream)
            .or_insert_with(|| record.stream.clone());
        for face in &record.faces {
            // Every track's best face is kept, but only a person's track record writes it (a
            // track not confirmed may be a neck or a hand, or a person held back until they
            // cannot be someone lost a moment ago); the others' are forgotten.
            let Some(track) = face.track_id else {
                continue;
            };
            let weight = readability(&face.face);
            let key = (stream, track);
            let confirmed = face.confirmed == Some(true);
            let was_person = self.best.get(&key).is_some_and(|b| b.person);
            if let Some(b) = self.best.get_mut(&key).filter(|b| b.weight >= weight) {
                b.seen_pts_ms = record.pts_ms;
                b.person |= confirmed;
                continue;
            }
            if let Some(crop) = crop(pixels, record.width, record.height, face.face.bbox) {
                self.best.insert(
                    key,
                    Best {
                        weight,
                        crop,
                        seen_pts_ms: record.pts_ms,
                        person: was_person || confirmed,
                    },
                );
            }
        }
        self.best.retain(|(s, _), b| {
            let forget_ms = if b.person {
                FORGET_AFTER_MS
            } else {
                FORGET_UNCONFIRMED_AFTER_MS
            };
            *s != stream || record.pts_ms - b.seen_pts_ms <= forget_ms
        });
        Ok(())
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        let stream = self
            .stream_ids
            .iter()
            .find_map(|(&index, id)| (*id == record.stream).then_some(index));
        let Some(best) = stream.and_then(|s| self.best.remove(&(s, record.track_id))) else {
            return Ok(());
        };
        let path = snapshot_path(&self.dir, &record.stream, record.track_id);
        best.crop
            .save_with_format(&path, image::ImageFormat::Jpeg)
            .map_err(|e| SnapshotError::Write {
                path: path.clone(),
                message: e.to_string(),
            })?;
        self.written += 1;
        Ok(())
    }

    /// The stream's people have had their records: faces kept for anyone else are dropped.
    fn end_stream(&mut self, stream: usize) -> Result<(), SinkError> {
        self.best.retain(|(s, _), _| *s != stream);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        Some(format!(
            "snapshots {}: {} written",
            self.dir.display(),
            self.written
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_take_the_margin_and_stay_in_the_frame() {
        let (w, h) = (40u32, 30u32);
        let pixels: Vec<u8> = (0..w * h).flat_map(|i| [i as u8, 0, 0]).collect();
        let c = crop(&pixels, w, h, [10.0, 10.0, 18.0, 18.0]).unwrap();
        assert_eq!(c.dimensions(), (12, 12));
        assert_eq!(c.get_pixel(0, 0)[0], (8 * w + 8) as u8);
        let edge = crop(&pixels, w, h, [35.0, 25.0, 45.0, 35.0]).unwrap();
        assert_eq!(edge.dimensions(), (w - 32, h - 22));
        assert!(crop(&pixels, w, h, [50.0, 50.0, 60.0, 60.0]).is_none());
        assert!(crop(&pixels[..10], w, h, [1.0, 1.0, 5.0, 5.0]).is_none());
    }
}
