//! The track stage of a run: frames back in decode order, each stream's faces tracked into people
//! ([`People`]), frame and track records handed to the sinks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::people::People;
use crate::graph::{Control, Input, Output, Received, Sent};
use crate::pipeline::SinkCounts;
use crate::pipeline::flow::{Detected, Reorder, Window};
use crate::sinks::stage::Tracked;
use crate::sinks::{FrameRecord, RecordKind};

/// Restores decode order (workers finish frames out of order), keeps the [`Window`] moving, and
/// tracks each stream's faces in that order.
pub(crate) struct TrackStage {
    pub(crate) input: Input<Detected>,
    /// End-of-streams to wait for: one per upstream stage.
    pub(crate) upstream: usize,
    pub(crate) people: People,
    pub(crate) window: Arc<Window>,
    pub(crate) counts: Arc<Mutex<SinkCounts>>,
    pub(crate) out: Output<Tracked>,
}

impl TrackStage {
    pub(crate) fn run(mut self, control: &Control) -> Result<(), String> {
        let mut reorder = Reorder {
            pending: BTreeMap::new(),
            next_seq: 0,
        };
        let mut eos_seen = 0usize;
        loop {
            let done = match self.input.recv(control) {
                Received::Item(d) => {
                    reorder.push(d);
                    false
                }
                Received::Eos => {
                    eos_seen += 1;
                    eos_seen >= self.upstream
                }
                Received::Disconnected => true,
            };
            let pending_before = reorder.pending.len();
            while let Some(d) = reorder.pop(done) {
                self.window.advance_to(reorder.next_seq);
                debug_assert!(
                    d.frame.rgb.is_empty(),
                    "frame {} reached tracking with its pixels",
                    d.frame.index
                );
                let item = self.track(d);
                if self.out.send(item, control) == Sent::Closed {
                    return Ok(());
                }
            }
            if let Ok(mut n) = self.counts.lock() {
                n.reorder_pending = reorder.pending.len();
                n.reorder_peak = n.reorder_peak.max(pending_before);
            }
            if done {
                // The people still in view when the run ends.
                let item = Tracked {
                    stream: 0,
                    frame: None,
                    ended: self.people.finish(),
                };
                let streams = self.counts.lock().map(|n| n.reported.len()).unwrap_or(0);
                let people = (0..streams).map(|i| self.people.people(i)).collect();
                if let Ok(mut n) = self.counts.lock() {
                    n.people = people;
                }
                self.out.send(item, control);
                return Ok(());
            }
        }
    }

    /// One frame (or a stream's end mark) through its stream's tracker.
    fn track(&mut self, d: Detected) -> Tracked {
        let stream = d.frame.stream.index;
        if d.stream_ended {
            // The stream's people still in view end with it.
            return Tracked {
                stream,
                frame: None,
                ended: self.people.finish_stream(stream),
            };
        }
        let mut faces = d.faces;
        let ended = self.people.frame(
            &d.frame.stream,
            d.frame.index,
            d.frame.pts_ms,
            &mut faces,
            &d.predictions,
        );
        let record = FrameRecord {
            kind: RecordKind::Frame,
            stream: d.frame.stream.id.clone(),
            source: d.frame.stream.uri.clone(),
            frame: d.frame.index,
            pts_ms: d.frame.pts_ms,
            width: d.frame.width,
            height: d.frame.height,
            gap_before_ms: d.frame.gap_before_ms,
            faces,
        };
        Tracked {
            stream,
            frame: Some(record),
            ended,
        }
    }
}
