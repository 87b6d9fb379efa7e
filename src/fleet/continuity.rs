//! One stream per camera, whichever workers ran it: a worker that takes a camera (or restarts
//! its pipeline) numbers its frames, track ids and `pts_ms` on from where the camera's stored
//! records stopped, and marks the time without frames on its first frame (`gap_before_ms`).
//!
//! Where the records stopped is read back from JetStream: a cursor per camera in a key-value
//! bucket (written by the publishing worker every 5 s, from acknowledged records
//! only), then the records stored after the cursor's stream sequence, so a worker killed between
//! two cursor writes loses nothing. The numbers are changed only in what goes to JetStream: a
//! worker's own outputs (MQTT, overlay) count from its own start.

use serde::{Deserialize, Serialize};

use crate::record::{FrameRecord, TrackEvent, TrackRecord};

/// Where a camera's stored records stop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last frame number stored.
    pub frame: Option<u64>,
    /// The highest track id stored (0: none).
    pub track_id: u64,
    /// The last frame's `pts_ms`.
    pub pts_ms: f64,
    /// The last frame's clock time, ms since the Unix epoch.
    pub time_ms: Option<f64>,
    /// The stream sequence of the last record this cursor covers.
    pub seq: u64,
}

/// Unix ms of an RFC 3339 time.
pub(super) fn unix_ms(time: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis() as f64)
}

impl Cursor {
    /// Moves the cursor past one stored record (its JSON) at stream sequence `seq`.
    pub fn see(&mut self, record: &serde_json::Value, seq: u64) {
        self.seq = self.seq.max(seq);
        let ids = record["faces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["track_id"].as_u64())
            .chain(record["track_id"].as_u64());
        for id in ids {
            self.track_id = self.track_id.max(id);
        }
        if record["type"] == "frame"
            && let Some(frame) = record["frame"].as_u64()
            && self.frame.is_none_or(|f| frame > f)
        {
            self.frame = Some(frame);
            self.pts_ms = record["pts_ms"].as_f64().unwrap_or(self.pts_ms);
            self.time_ms = record["time"].as_str().and_then(unix_ms).or(self.time_ms);
        }
    }
}

/// How one run's records of a camera continue after `after`.
#[derive(Debug, Clone)]
pub struct Continuation {
    after: Cursor,
    /// Added to this run's `pts_ms`, once known (from the first record's time).
    pts_offset_ms: Option<f64>,
    /// Whether the first frame record went by (it carries the gap).
    first_frame_done: bool,
}

impl Continuation {
    pub fn new(after: Cursor) -> Self {
        Self {
            after,
            pts_offset_ms: None,
            first_frame_done: false,
        }
    }

    /// Nothing stored before: numbers as they come.
    fn fresh(&self) -> bool {
        self.after.frame.is_none() && self.after.track_id == 0
    }

    fn frame_number(&self, frame: u64) -> u64 {
        self.after.frame.map_or(frame, |last| last + 1 + frame)
    }

    fn track_id(&self, id: u64) -> u64 {
        id + self.after.track_id
    }

    /// Time between the last stored frame and this run's record at `time`, ms.
    fn gap_ms(&self, time: Option<&str>) -> Option<f64> {
        let now = time.and_then(unix_ms)?;
        Some((now - self.after.time_ms?).max(0.0))
    }

    /// This run's `pts_ms` on the camera's time line: the first record of the run fixes the
    /// offset (the stored stream's last `pts_ms` plus the time without frames).
    fn pts(&mut self, pts_ms: f64, time: Option<&str>) -> f64 {
        if self.after.frame.is_none() {
            return pts_ms;
        }
        let gap = self.gap_ms(time).unwrap_or(0.0);
        let offset = *self
            .pts_offset_ms
            .get_or_insert(self.after.pts_ms + gap - pts_ms);
        pts_ms + offset
    }

    pub fn frame(&mut self, record: &FrameRecord) -> FrameRecord {
        let mut r = record.clone();
        if self.fresh() {
            return r;
        }
        if !self.first_frame_done {
            self.first_frame_done = true;
            if r.gap_before_ms.is_none() && self.after.frame.is_some() {
                r.gap_before_ms = self.gap_ms(r.time.as_deref());
            }
        }
        r.frame = self.frame_number(r.frame);
        r.pts_ms = self.pts(r.pts_ms, r.time.as_deref());
        for face in &mut r.faces {
            face.track_id = face.track_id.map(|id| self.track_id(id));
        }
        r
    }

    pub fn track(&mut self, record: &TrackRecord) -> TrackRecord {
        let mut r = record.clone();
        if self.fresh() {
            return r;
        }
        r.track_id = self.track_id(r.track_id);
        r.first_frame = self.frame_number(r.first_frame);
        r.last_frame = self.frame_number(r.last_frame);
        r.first_pts_ms = self.pts(r.first_pts_ms, r.first_time.as_deref());
        r.last_pts_ms = self.pts(r.last_pts_ms, r.last_time.as_deref());
        r
    }

    pub fn event(&mut self, record: &TrackEvent) -> TrackEvent {
        let mut r = record.clone();
        if self.fresh() {
            return r;
        }
        r.track_id = self.track_id(r.track_id);
        r.frame = self.frame_number(r.frame);
        r.first_frame = self.frame_number(r.first_frame);
        r.pts_ms = self.pts(r.pts_ms, r.time.as_deref());
        r.first_pts_ms = self.pts(r.first_pts_ms, r.first_time.as_deref());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(n: u64, pts_ms: f64, time: &str, tracks: &[u64]) -> FrameRecord {
        let faces = tracks
            .iter()
            .map(|id| {
                serde_json::from_value(json!({
                    "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9,
                    "landmarks": [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                    "track_id": id
                }))
                .unwrap()
            })
            .collect();
        FrameRecord {
            kind: Default::default(),
            stream: "lobby".into(),
            source: "rtsp://cam/lobby".into(),
            frame: n,
            pts_ms,
            time: Some(time.into()),
            width: 640,
            height: 480,
            gap_before_ms: None,
            faces,
        }
    }

    #[test]
    fn the_cursor_follows_the_highest_frame_and_track_stored() {
        let mut cursor = Cursor::default();
        let records = [
            serde_json::to_value(frame(41, 1640.0, "2026-12-07T09:00:01.640Z", &[3, 7])).unwrap(),
            json!({"type": "track", "track_id": 9, "first_frame": 1, "last_frame": 20}),
            serde_json::to_value(frame(42, 1680.0, "2026-12-07T09:00:01.680Z", &[7])).unwrap(),
        ];
        for (seq, r) in records.iter().enumerate() {
            cursor.see(r, 100 + seq as u64);
        }
        assert_eq!(cursor.frame, Some(42));
        assert_eq!(cursor.track_id, 9);
        assert_eq!(cursor.pts_ms, 1680.0);
        assert_eq!(cursor.time_ms, unix_ms("2026-12-07T09:00:01.680Z"));
        assert_eq!(cursor.seq, 102);
        // An older frame seen late moves nothing back.
        cursor.see(
            &serde_json::to_value(frame(40, 1600.0, "2026-12-07T09:00:01.600Z", &[])).unwrap(),
            103,
        );
        assert_eq!(
            (cursor.frame, cursor.pts_ms, cursor.seq),
            (Some(42), 1680.0, 103)
        );
    }

    #[test]
    fn a_new_run_numbers_on_after_the_stored_records_and_marks_the_gap() {
        let after = Cursor {
            frame: Some(42),
            track_id: 9,
            pts_ms: 1680.0,
            time_ms: unix_ms("2026-12-07T09:00:01.680Z"),
            seq: 7,
        };
        let mut run = Continuation::new(after);
        // The new worker's first frame comes 3.32 s later, its own numbers from 0.
        let first = run.frame(&frame(0, 0.0, "2026-12-07T09:00:05.000Z", &[1]));
        assert_eq!(first.frame, 43);
        assert_eq!(first.pts_ms, 5000.0);
        assert_eq!(first.gap_before_ms, Some(3320.0));
        assert_eq!(first.faces[0].track_id, Some(10));
        let next = run.frame(&frame(1, 40.0, "2026-12-07T09:00:05.040Z", &[1, 2]));
        assert_eq!(
            (next.frame, next.pts_ms, next.gap_before_ms),
            (44, 5040.0, None)
        );
        assert_eq!(next.faces[1].track_id, Some(11));
        let event: TrackEvent = serde_json::from_value(json!({
            "type": "track_start", "stream": "lobby", "source": "s", "track_id": 2,
            "frame": 1, "pts_ms": 40.0, "time": "2026-12-07T09:00:05.040Z",
            "first_frame": 0, "first_pts_ms": 0.0, "first_time": "2026-12-07T09:00:05.000Z",
            "frames": 2, "bbox": [0.0, 0.0, 1.0, 1.0], "attributes": {}
        }))
        .unwrap();
        let event = run.event(&event);
        assert_eq!(
            (event.track_id, event.frame, event.first_frame),
            (11, 44, 43)
        );
        assert_eq!((event.pts_ms, event.first_pts_ms), (5040.0, 5000.0));
    }

    #[test]
    fn a_camera_with_nothing_stored_keeps_its_numbers() {
        let mut run = Continuation::new(Cursor::default());
        let r = frame(0, 0.0, "2026-12-07T09:00:05.000Z", &[1]);
        let same = run.frame(&r);
        assert_eq!(
            (same.frame, same.pts_ms, same.gap_before_ms),
            (0, 0.0, None)
        );
        assert_eq!(same.faces[0].track_id, Some(1));
    }
}
