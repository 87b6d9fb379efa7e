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
                let item = self.track(d);
                if self.out.send(item, control) == Sent::Closed {
                    return Ok(());
                }
            }
            if let Ok(mut n) = self.counts.lock() {
                n.reorder_pending = reorder.pending.len();
                n.reorder_peak = n.reorder_peak.max(pending_before);
                let streams = n.reported.len();
                n.people = (0..streams).map(|i| self.people.people(i)).collect();
                n.people_in_view = (0..streams).map(|i| self.people.in_view(i)).collect();
            }
            if done {
                // The people still in view when the run ends (none written if the output closed).
                let closed = self.counts.lock().map(|n| n.output_closed).unwrap_or(false);
                let item = Tracked {
                    stream: 0,
                    frame: None,
                    pixels: Vec::new(),
                    ended: if closed {
                        Vec::new()
                    } else {
                        self.people.finish()
                    },
                    stream_ended: false,
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
        // The reader of the output went away: the frames still coming are only counted (the
        // sinks write nothing), and no one is tracked or counted as a person any more.
        let closed = self.counts.lock().map(|n| n.output_closed).unwrap_or(false);
        if closed {
            return Tracked {
                stream,
                frame: (!d.stream_ended).then(|| record(d.frame, d.faces)),
                pixels: Vec::new(),
                ended: Vec::new(),
                stream_ended: d.stream_ended,
            };
        }
        if d.stream_ended {
            // The stream's people still in view end with it.
            return Tracked {
                stream,
                frame: None,
                pixels: Vec::new(),
                ended: self.people.finish_stream(stream),
                stream_ended: true,
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
        let mut frame = d.frame;
        let pixels = std::mem::take(&mut frame.rgb);
        Tracked {
            stream,
            frame: Some(record(frame, faces)),
            pixels,
            ended,
            stream_ended: false,
        }
    }
}

/// A frame's record, with its faces.
fn record(frame: crate::sources::Frame, faces: Vec<crate::sinks::FaceRecord>) -> FrameRecord {
    FrameRecord {
        kind: RecordKind::Frame,
        stream: frame.stream.id.clone(),
        source: frame.stream.uri.clone(),
        frame: frame.index,
        pts_ms: frame.pts_ms,
        width: frame.width,
        height: frame.height,
        gap_before_ms: frame.gap_before_ms,
        faces,
    }
}
