//! The fleet's records sink: every record of a worker's run, as `run` writes it plus `"worker"`,
//! published to JetStream on `faceflow.records.<camera>`, each acknowledged by the stream before
//! it counts as stored. A record whose publish or acknowledgement fails is sent again (its
//! message id makes a second copy a duplicate the stream drops); only the end of the run, after
//! trying for a while, gives up on a record, and then says how many were lost.

use std::collections::{HashSet, VecDeque};
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use serde::Serialize;

use super::jobs::KEY_HEADER;
use super::store::{FleetError, RECORDS_SUBJECT, RecordsStream};
use crate::record::{FrameRecord, TrackEvent, TrackRecord};
use crate::sinks::{Sink, SinkError};

/// Records published but not yet acknowledged, at most (then the sink waits for the oldest).
const IN_FLIGHT: usize = 256;
/// How long a record is tried before it is given up for lost.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// How long the end of a run waits for what is still unacknowledged (the worker waits on it
/// before it can hand cameras over or start again).
const FINISH_WITHIN: Duration = Duration::from_secs(5);

/// A record on its way: its subject, message id and bytes, and its acknowledgement to come.
struct Pending {
    subject: String,
    id: String,
    /// A job's record: its id is its key, in a header too.
    keyed: bool,
    /// A frame record (counted in [`Tally::frames_stored`] once stored).
    frame: bool,
    payload: bytes::Bytes,
    ack: Option<PublishAckFuture>,
    first_sent: Instant,
}

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
    pending: VecDeque<Pending>,
    sequence: u64,
    published: u64,
    skipped: u64,
    duplicates: u64,
    lost: u64,
}

impl RecordsSink {
    pub fn new(stream: RecordsStream, worker: &str, run_id: &str) -> Self {
        Self {
            stream,
            worker: worker.to_string(),
            run_id: run_id.to_string(),
            job: None,
            tally: Arc::default(),
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
            ..Self::new(stream, worker, &run_id)
        }
    }

    /// Publishes `record` on `id`'s subject; `key` names it within a job.
    fn publish<T: Serialize>(
        &mut self,
        id: &str,
        record: &T,
        key: impl FnOnce() -> String,
        frame: bool,
    ) -> Result<(), SinkError> {
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
            payload,
            ack: None,
            first_sent: Instant::now(),
        };
        self.send(&mut pending);
        self.pending.push_back(pending);
        while self.pending.len() > IN_FLIGHT {
            self.settle_oldest();
        }
        Ok(())
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

    /// As [`Self::settle_oldest`], giving up at `deadline` when one is given.
    fn settle_oldest_by(&mut self, deadline: Option<Instant>) {
        let Some(mut pending) = self.pending.pop_front() else {
            return;
        };
        let mut pause = Duration::from_millis(100);
        loop {
            if let Some(ack) = pending.ack.take() {
                match self.stream.handle.block_on(ack.into_future()) {
                    Ok(ack) => {
                        self.published += 1;
                        if pending.frame {
                            self.tally.frames_stored.fetch_add(1, Ordering::Relaxed);
                        }
                        if ack.duplicate {
                            self.duplicates += 1;
                        }
                        return;
                    }
                    Err(e) => tracing::debug!("acknowledgement of {}: {e}", pending.subject),
                }
            }
            if pending.first_sent.elapsed() > GIVE_UP_AFTER
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                self.lost += 1;
                self.tally.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // A node that died takes the stream's leader with it for a few seconds.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
            self.send(&mut pending);
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
        self.publish(
            &record.stream,
            record,
            || format!("f{}", record.frame),
            true,
        )
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        self.publish(
            &record.stream,
            record,
            || format!("t{}", record.track_id),
            false,
        )
    }

    fn write_event(&mut self, record: &TrackEvent) -> Result<(), SinkError> {
        let kind = serde_json::to_value(record.kind).unwrap_or_default();
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
            false,
        )
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        let deadline = Instant::now() + FINISH_WITHIN;
        while !self.pending.is_empty() {
            self.settle_oldest_by(Some(deadline));
        }
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
