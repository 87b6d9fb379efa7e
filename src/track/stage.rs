//! The track stage of a run: each stream's frames back in its decode order, its faces tracked into
//! people ([`People`]), frame and track records handed to the sinks.

use std::sync::Arc;

use super::people::People;
use crate::flow::{Detected, Reorder, RunContext, RunStats, StreamWindows, Tracked};
use crate::graph::{Control, Graph, Input, Output, Received, Sent, WhenFull};
use crate::record::{FaceRecord, FrameRecord, RecordKind};

/// Starts the track stage on `input` (frames with their faces, in any order); each stream's
/// frames come out in order, as records with their people.
pub(crate) fn spawn(
    graph: &mut Graph,
    cx: &RunContext,
    input: Input<Detected>,
    people: People,
) -> Input<Tracked> {
    let (out, tracked) = graph.channel("tracked", cx.queue_frames, WhenFull::Block);
    let stage = TrackStage {
        input,
        people,
        windows: cx.windows.clone(),
        stats: cx.stats.clone(),
        out,
    };
    graph.add_stage("track", move |c| stage.run(c));
    tracked
}

/// Restores each stream's decode order (workers finish frames out of order), releases each frame
/// from its stream's window ([`StreamWindows`]), and tracks each stream's faces in that order. A
/// stream waiting for a slow frame holds back none of the others.
struct TrackStage {
    input: Input<Detected>,
    people: People,
    windows: Arc<StreamWindows>,
    stats: RunStats,
    out: Output<Tracked>,
}

impl TrackStage {
    fn run(mut self, control: &Control) -> Result<(), String> {
        let streams = self.stats.streams();
        let mut reorder = Reorder::new(streams);
        loop {
            let (stream, done) = match self.input.recv(control) {
                Received::Item(d) => {
                    let stream = d.frame.stream.index;
                    reorder.push(d);
                    (Some(stream), false)
                }
                Received::Eos | Received::Disconnected => (None, true),
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
                    let item = self.track(d, control);
                    if self.out.send(item, control) == Sent::Closed {
                        return Ok(());
                    }
                }
            }
            let people = &self.people;
            self.stats.update(|n| {
                n.reorder_pending = reorder.held();
                n.reorder_window = self.windows.total();
                n.reorder_peak = n.reorder_peak.max(held_peak);
                n.people = (0..streams).map(|i| people.people(i)).collect();
                n.people_in_view = (0..streams).map(|i| people.in_view(i)).collect();
            });
            if done {
                // The people still in view when the run ends (none written if the output closed).
                let item = Tracked {
                    stream: 0,
                    frame: None,
                    pixels: Vec::new(),
                    ended: if control.output_closed() {
                        Vec::new()
                    } else {
                        self.people.finish()
                    },
                    stream_ended: false,
                };
                let people = (0..streams).map(|i| self.people.people(i)).collect();
                self.stats.update(|n| n.people = people);
                self.out.send(item, control);
                return Ok(());
            }
        }
    }

    /// One frame (or a stream's end mark) through its stream's tracker.
    fn track(&mut self, d: Detected, control: &Control) -> Tracked {
        let stream = d.frame.stream.index;
        // The reader of the output went away: the frames still coming are only counted (the
        // sinks write nothing), and no one is tracked or counted as a person any more.
        if control.output_closed() {
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
fn record(frame: crate::sources::Frame, faces: Vec<FaceRecord>) -> FrameRecord {
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
