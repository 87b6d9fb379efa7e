//! The fleet's records sink: every record of a worker's run, as `run` writes it plus `"worker"`,
//! published to JetStream on `faceflow.records.<camera>`, each acknowledged by the stream before
//! it counts as stored. A record whose publish or acknowledgement fails is sent again (its
//! message id makes a second copy a duplicate the stream drops); only the end of the run, after
//! trying for a while, gives up on a record, and then says how many were lost.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use serde::Serialize;

use super::continuity::{Continuation, Cursor};
use super::jobs::KEY_HEADER;
use super::store::{FleetError, RECORDS_SUBJECT, RecordsStream};
use crate::record::{FrameRecord, TrackEvent, TrackRecord};
use crate::sinks::{Sink, SinkError};

/// Records published but not yet acknowledged, at most (then the sink waits for the oldest):
/// about 10 s of 4 cameras at 25 fps, so a NATS node that dies and the election that follows
/// do not hold records up.
const IN_FLIGHT: usize = 1024;
/// How long a record is tried before it is given up for lost.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// How long the end of a run waits for what is still unacknowledged (the worker waits on it
/// before it can hand cameras over or start again).
const FINISH_WITHIN: Duration = Duration::from_secs(5);
/// At the end of a run, how long a record's acknowledgement is awaited before the record is sent
/// again. An acknowledgement lost in a leader election never comes, and async-nats gives up on
/// one only after 5 s, all of [`FINISH_WITHIN`]: waiting that long would leave no time to send
/// the record again. A stream answers in milliseconds; a copy sent while the first is merely
/// slow is dropped by its message id.
const FINISH_ACK_PATIENCE: Duration = Duration::from_secs(1);

/// A record on its way: its subject, message id and bytes, and its acknowledgement to come.
struct Pending {
    subject: String,
    id: String,
    /// A job's record: its id is its key, in a header too.
    keyed: bool,
    /// A frame record (counted in [`Tally::frames_stored`] once stored).
    frame: bool,
    /// What it moves its camera's cursor to, once stored.
    mark: Mark,
    payload: bytes::Bytes,
    ack: Option<PublishAckFuture>,
    first_sent: Instant,
}

/// What a record says of where its camera's records stop.
#[derive(Debug, Clone, Default)]
struct Mark {
    camera: String,
    /// A frame record: its number, `pts_ms` and clock time (Unix ms).
    frame: Option<(u64, f64, Option<f64>)>,
    /// The highest track id it names.
    track_id: u64,
}

impl Mark {
    /// A track's record or event: its id only.
    fn of_track(camera: &str, track_id: u64) -> Self {
        Self {
            camera: camera.to_string(),
            frame: None,
            track_id,
        }
    }
}

/// How often cameras' cursors are written while records are stored.
const CURSOR_EVERY: Duration = Duration::from_secs(5);

/// A file job's records: each keyed by the job and the record, and those an earlier attempt
/// stored already.
pub struct JobKeys {
    pub job: String,
    pub stored: HashSet<String>,
}

/// What the sink stored and lost, read by the worker while it runs.
#[derive(Debug, Default)]
pub struct Tally {
    pub frames_stored: AtomicU64,
    pub lost: AtomicU64,
}

pub struct RecordsSink {
    stream: RecordsStream,
    worker: String,
    /// What makes message ids unique to this run of the worker (its name and start).
    run_id: String,
    job: Option<JobKeys>,
    tally: Arc<Tally>,
    /// Each camera's numbers carried on from its stored records.
    continuations: BTreeMap<String, Continuation>,
    /// Each camera's cursor as acknowledged, those not yet written, and when they last were.
    cursors: BTreeMap<String, Cursor>,
    unwritten: BTreeSet<String>,
    cursors_written: Instant,
    pending: VecDeque<Pending>,
    sequence: u64,
    published: u64,
    skipped: u64,
    duplicates: u64,
    lost: u64,
}

impl RecordsSink {
    /// The sink of a worker's cameras: each camera's records numbered on from `after` (where
    /// its stored records stop).
    pub fn new(
        stream: RecordsStream,
        worker: &str,
        run_id: &str,
        after: BTreeMap<String, Cursor>,
    ) -> Self {
        Self {
            stream,
            worker: worker.to_string(),
            run_id: run_id.to_string(),
            job: None,
            tally: Arc::default(),
            continuations: after
                .iter()
                .map(|(c, cursor)| (c.clone(), Continuation::new(cursor.clone())))
                .collect(),
            cursors: after,
            unwritten: BTreeSet::new(),
            cursors_written: Instant::now(),
            pending: VecDeque::new(),
            sequence: 0,
            published: 0,
            skipped: 0,
            duplicates: 0,
            lost: 0,
        }
    }

    /// The sink of a file job: records keyed, those already stored skipped.
    pub fn for_job(stream: RecordsStream, worker: &str, job: JobKeys, tally: Arc<Tally>) -> Self {
        let run_id = job.job.clone();
        Self {
            job: Some(job),
            tally,
            ..Self::new(stream, worker, &run_id, BTreeMap::new())
        }
    }

    /// Publishes `record` on `id`'s subject; `key` names it within a job.
    fn publish<T: Serialize>(
        &mut self,
        id: &str,
        record: &T,
        key: impl FnOnce() -> String,
        mark: Mark,
    ) -> Result<(), SinkError> {
        let frame = mark.frame.is_some();
        let message_id = match &self.job {
            Some(job) => {
                let message_id = format!("{}:{}", job.job, key());
                if job.stored.contains(&message_id) {
                    self.skipped += 1;
                    if frame {
                        self.tally.frames_stored.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                message_id
            }
            None => {
                self.sequence += 1;
                format!("{}-{}", self.run_id, self.sequence)
            }
        };
        let payload: bytes::Bytes = with_worker(record, &self.worker)
            .map_err(|e| failed(&self.stream, &e))?
            .into();
        let mut pending = Pending {
            subject: format!("{RECORDS_SUBJECT}.{id}"),
            id: message_id,
            keyed: self.job.is_some(),
            frame,
            mark,
            payload,
            ack: None,
            first_sent: Instant::now(),
        };
        self.send(&mut pending);
        self.pending.push_back(pending);
        while self.pending.len() > IN_FLIGHT {
            self.settle_oldest();
        }
        if self.cursors_written.elapsed() >= CURSOR_EVERY {
            self.write_cursors(false);
        }
        Ok(())
    }

    /// Writes the cursors of cameras with records stored since the last write (a failure is
    /// only said: the next worker reads past an old cursor).
    /// `wait`: for the server's answer (at the end of a run: the next run reads them); else in
    /// the background, so a NATS that does not answer never holds records up.
    fn write_cursors(&mut self, wait: bool) {
        self.cursors_written = Instant::now();
        for camera in std::mem::take(&mut self.unwritten) {
            let Some(value) = self
                .cursors
                .get(&camera)
                .and_then(|c| serde_json::to_vec(c).ok())
            else {
                continue;
            };
            let (cursors, shown) = (self.stream.cursors.clone(), self.stream.shown.clone());
            let put = async move {
                if let Err(e) = cursors.put(camera.as_str(), value.into()).await {
                    tracing::warn!("nats {shown}: cursor {camera}: {e}");
                }
            };
            if wait {
                self.stream.handle.block_on(put);
            } else {
                self.stream.handle.spawn(put);
            }
        }
    }

    /// A stored record moves its camera's cursor (cameras only: a job's numbers are its own).
    fn stored(&mut self, mark: &Mark, sequence: u64) {
        // A camera whose cursor could not be read keeps the stored one (numbering restarted,
        // writing it would hide the higher numbers before).
        if self.job.is_some() || !self.continuations.contains_key(&mark.camera) {
            return;
        }
        let cursor = self.cursors.entry(mark.camera.clone()).or_default();
        cursor.seq = cursor.seq.max(sequence);
        cursor.track_id = cursor.track_id.max(mark.track_id);
        if let Some((frame, pts_ms, time_ms)) = mark.frame
            && cursor.frame.is_none_or(|f| frame > f)
        {
            cursor.frame = Some(frame);
            cursor.pts_ms = pts_ms;
            cursor.time_ms = time_ms.or(cursor.time_ms);
        }
        self.unwritten.insert(mark.camera.clone());
    }

    /// Sends `pending` (again), keeping the acknowledgement to come.
    fn send(&self, pending: &mut Pending) {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", pending.id.as_str());
        if pending.keyed {
            headers.insert(KEY_HEADER, pending.id.as_str());
        }
        pending.ack = self
            .stream
            .handle
            .block_on(self.stream.js.publish_with_headers(
                pending.subject.clone(),
                headers,
                pending.payload.clone(),
            ))
            .map_err(|e| tracing::debug!("publish {}: {e}", pending.subject))
            .ok();
    }

    /// Waits for the oldest record's acknowledgement, sending it again while it fails, until it
    /// is stored or given up.
    fn settle_oldest(&mut self) {
        self.settle_oldest_by(None);
    }

    /// As [`Self::settle_oldest`], giving up at `deadline` when one is given; then an
    /// acknowledgement is awaited at most [`FINISH_ACK_PATIENCE`] before the record is sent again.
    fn settle_oldest_by(&mut self, deadline: Option<Instant>) {
        let Some(mut pending) = self.pending.pop_front() else {
            return;
        };
        let mut pause = Duration::from_millis(100);
        let mut resent = false;
        loop {
            if let Some(ack) = pending.ack.take() {
                let ack = ack.into_future();
                let answer = match deadline {
                    None => Some(self.stream.handle.block_on(ack)),
                    Some(deadline) => {
                        let patience = FINISH_ACK_PATIENCE
                            .min(deadline.saturating_duration_since(Instant::now()));
                        self.stream
                            .handle
                            .block_on(async { tokio::time::timeout(patience, ack).await })
                            .ok()
                    }
                };
                match answer {
                    None => tracing::debug!("acknowledgement of {}: none yet", pending.subject),
                    Some(Ok(ack)) => {
                        self.stored(&pending.mark, ack.sequence);
                        self.published += 1;
                        if pending.frame {
                            self.tally.frames_stored.fetch_add(1, Ordering::Relaxed);
                        }
                        if ack.duplicate {
                            self.duplicates += 1;
                        }
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::debug!("acknowledgement of {}: {e}", pending.subject)
                    }
                }
            }
            // A node that died takes the stream's leader with it for a few seconds: the first
            // failure sends this record and every later one again at once (their own
            // acknowledgements have likely failed too; a copy already stored is dropped by its
            // message id), in order; only a record that fails again waits before the next try
            // (never past the deadline).
            if resent {
                let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            if pending.first_sent.elapsed() > GIVE_UP_AFTER
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                self.lost += 1;
                self.tally.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            resent = true;
            self.send(&mut pending);
            let mut later = std::mem::take(&mut self.pending);
            for p in later.iter_mut() {
                self.send(p);
            }
            self.pending = later;
        }
    }
}

/// `record` as `run` writes it (its fields in order, its numbers as short), `"worker"` last.
fn with_worker<T: Serialize>(record: &T, worker: &str) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec(record)?;
    if bytes.last() == Some(&b'}') {
        bytes.pop();
        if bytes.len() > 1 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(b"\"worker\":");
        serde_json::to_writer(&mut bytes, worker)?;
        bytes.push(b'}');
    }
    Ok(bytes)
}

fn failed(stream: &RecordsStream, e: &dyn std::fmt::Display) -> SinkError {
    FleetError::Nats {
        url: stream.shown.clone(),
        what: "records".into(),
        reason: e.to_string(),
    }
    .into()
}

impl Sink for RecordsSink {
    fn write_frame(
        &mut self,
        _stream: usize,
        record: &FrameRecord,
        _pixels: &[u8],
    ) -> Result<(), SinkError> {
        let record = match self.continuations.get_mut(&record.stream) {
            Some(c) => &c.frame(record),
            None => record,
        };
        let mark = Mark {
            camera: record.stream.clone(),
            frame: Some((
                record.frame,
                record.pts_ms,
                record.time.as_deref().and_then(super::continuity::unix_ms),
            )),
            track_id: record
                .faces
                .iter()
                .filter_map(|f| f.track_id)
                .max()
                .unwrap_or(0),
        };
        self.publish(
            &record.stream,
            record,
            || format!("f{}", record.frame),
            mark,
        )
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        let record = match self.continuations.get_mut(&record.stream) {
            Some(c) => &c.track(record),
            None => record,
        };
        let mark = Mark::of_track(&record.stream, record.track_id);
        self.publish(
            &record.stream,
            record,
            || format!("t{}", record.track_id),
            mark,
        )
    }

    fn write_event(&mut self, record: &TrackEvent) -> Result<(), SinkError> {
        let record = match self.continuations.get_mut(&record.stream) {
            Some(c) => &c.event(record),
            None => record,
        };
        let kind = serde_json::to_value(record.kind).unwrap_or_default();
        let mark = Mark::of_track(&record.stream, record.track_id);
        self.publish(
            &record.stream,
            record,
            || {
                format!(
                    "{}-{}-{}",
                    kind.as_str().unwrap_or("event"),
                    record.track_id,
                    record.frame
                )
            },
            mark,
        )
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        if !self.unwritten.is_empty() && self.cursors_written.elapsed() >= CURSOR_EVERY {
            self.write_cursors(false);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let deadline = Instant::now() + FINISH_WITHIN;
        while !self.pending.is_empty() {
            self.settle_oldest_by(Some(deadline));
        }
        self.write_cursors(true);
        if self.lost > 0 {
            return Err(failed(
                &self.stream,
                &format!(
                    "{} records not acknowledged by JetStream (lost); {} stored",
                    self.lost, self.published
                ),
            ));
        }
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        Some(format!(
            "jetstream: {} records stored{}{}",
            self.published,
            if self.skipped > 0 {
                format!(", {} stored before (not sent again)", self.skipped)
            } else {
                String::new()
            },
            if self.duplicates > 0 {
                format!(", {} sent twice (stored once)", self.duplicates)
            } else {
                String::new()
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_its_fields_and_numbers_and_names_its_worker_last() {
        #[derive(Serialize)]
        struct R {
            r#type: &'static str,
            prob: f32,
        }
        let bytes = with_worker(
            &R {
                r#type: "frame",
                prob: 0.004,
            },
            "w\"1",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"type":"frame","prob":0.004,"worker":"w\"1"}"#
        );
        #[derive(Serialize)]
        struct Empty {}
        assert_eq!(with_worker(&Empty {}, "w").unwrap(), br#"{"worker":"w"}"#);
    }
}
