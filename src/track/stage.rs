//! The track stage of a run: each stream's frames back in its decode order, its faces tracked into
//! people ([`People`]), frame and track records handed to the sinks.

use std::sync::{Arc, Mutex};

use super::people::People;
use crate::flow::{Detected, Reorder, SinkCounts, StreamWindows};
use crate::graph::{Control, Input, Output, Received, Sent};
use crate::sinks::stage::Tracked;
use crate::sinks::{FrameRecord, RecordKind};

/// Restores each stream's decode order (workers finish frames out of order), releases each frame
/// from its stream's window ([`StreamWindows`]), and tracks each stream's faces in that order. A
/// stream waiting for a slow frame holds back none of the others.
pub(crate) struct TrackStage {
    pub(crate) input: Input<Detected>,
    /// End-of-streams to wait for: one per upstream stage.
    pub(crate) upstream: usize,
    pub(crate) people: People,
    pub(crate) windows: Arc<StreamWindows>,
    pub(crate) counts: Arc<Mutex<SinkCounts>>,
    pub(crate) out: Output<Tracked>,
}

impl TrackStage {
    pub(crate) fn run(mut self, control: &Control) -> Result<(), String> {
        let streams = self.counts.lock().map(|n| n.reported.len()).unwrap_or(0);
        let mut reorder = Reorder::new(streams);
        let mut eos_seen = 0usize;
        loop {
            let (stream, done) = match self.input.recv(control) {
                Received::Item(d) => {
                    let stream = d.frame.stream.index;
                    reorder.push(d);
                    (Some(stream), false)
                }
                Received::Eos => {
                    eos_seen += 1;
                    (None, eos_seen >= self.upstream)
                }
                Received::Disconnected => (None, true),
            };
            let held_peak = stream.map_or(0, |s| reorder.held_for(s));
            // At the end, every stream's frames after a gap (a failed worker) come out too.
            let release: Vec<usize> = match stream {
                Some(s) if !done => vec![s],
                _ if done => (0..reorder.streams()).collect(),
                _ => Vec::new(),
            };
            for s in release {
                while let Some(d) = reorder.pop(s, done) {
                    self.windows.release(s);
                    let item = self.track(d);
                    if self.out.send(item, control) == Sent::Closed {
                        return Ok(());
                    }
                }
            }
            if let Ok(mut n) = self.counts.lock() {
                n.reorder_pending = reorder.held();
                n.reorder_window = self.windows.total();
                n.reorder_peak = n.reorder_peak.max(held_peak);
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
