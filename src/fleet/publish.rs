//! The fleet's records sink: every record of a worker's run, as `run` writes it plus `"worker"`,
//! published to JetStream on `faceflow.records.<camera>`, each acknowledged by the stream before
//! it counts as stored. A record whose publish or acknowledgement fails is sent again (its
//! message id makes a second copy a duplicate the stream drops); only the end of the run, after
//! trying for a while, gives up on a record, and then says how many were lost.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use serde::Serialize;

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
    payload: bytes::Bytes,
    ack: Option<PublishAckFuture>,
    first_sent: Instant,
}

pub struct RecordsSink {
    stream: RecordsStream,
    worker: String,
    /// What makes message ids unique to this run of the worker (its name and start).
    run_id: String,
    pending: VecDeque<Pending>,
    sequence: u64,
    published: u64,
    duplicates: u64,
    lost: u64,
}

impl RecordsSink {
    pub fn new(stream: RecordsStream, worker: &str, run_id: &str) -> Self {
        Self {
            stream,
            worker: worker.to_string(),
            run_id: run_id.to_string(),
            pending: VecDeque::new(),
            sequence: 0,
            published: 0,
            duplicates: 0,
            lost: 0,
        }
    }

    fn publish<T: Serialize>(&mut self, camera: &str, record: &T) -> Result<(), SinkError> {
        let mut value = serde_json::to_value(record).map_err(|e| failed(&self.stream, &e))?;
        if let Some(object) = value.as_object_mut() {
            object.insert("worker".into(), self.worker.clone().into());
        }
        let payload: bytes::Bytes = serde_json::to_vec(&value)
            .map_err(|e| failed(&self.stream, &e))?
            .into();
        self.sequence += 1;
        let mut pending = Pending {
            subject: format!("{RECORDS_SUBJECT}.{camera}"),
            id: format!("{}-{}", self.run_id, self.sequence),
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
                return;
            }
            // A node that died takes the stream's leader with it for a few seconds.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
            self.send(&mut pending);
        }
    }
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
        self.publish(&record.stream, record)
    }

    fn write_track(&mut self, record: &TrackRecord) -> Result<(), SinkError> {
        self.publish(&record.stream, record)
    }

    fn write_event(&mut self, record: &TrackEvent) -> Result<(), SinkError> {
        self.publish(&record.stream, record)
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
            "jetstream: {} records stored{}",
            self.published,
            if self.duplicates > 0 {
                format!(", {} sent twice (stored once)", self.duplicates)
            } else {
                String::new()
            }
        ))
    }
}
