//! What flows between the stages of a run, and what they share: the per-stream windows that bound
//! frames in flight, the per-stream reorder buffer, run counters and stage times. It sits below
//! every stage, so no stage reaches up into [`crate::pipeline`], which only wires them.

mod context;
mod counts;
mod reorder;
mod window;

pub(crate) use context::{RunContext, Sizes};
pub(crate) use counts::RunStats;
pub use counts::{Progress, StageTimes};
pub(crate) use reorder::Reorder;
pub(crate) use window::StreamWindows;
#[cfg(test)]
pub(crate) use window::WINDOW_MAX_FRAMES;

use std::sync::Arc;

use crate::detect::Face;
use crate::record::{FaceRecord, FrameRecord, TrackRecord};
use crate::sources::{Frame, StreamInfo};

/// Which stages after detection read a frame's pixels: the attribute model and the track stage's
/// second reader of gender and race (frames with faces), and sinks that draw (every frame). Pixels are
/// released after their last reader.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PixelReaders {
    pub(crate) attributes: bool,
    pub(crate) track: bool,
    pub(crate) sinks: bool,
}

impl PixelReaders {
    /// Whether a frame with `faces` faces needs its pixels after detection.
    pub(crate) fn after_detect(&self, faces: usize) -> bool {
        self.sinks || (self.attributes || self.track) && faces > 0
    }

    /// Whether a frame needs its pixels after the attribute stage.
    pub(crate) fn after_attributes(&self) -> bool {
        self.sinks || self.track
    }
}

/// A frame with its faces. `seq` numbers the frames of its stream (and its end mark) in decode
/// order, without gaps: the order the track stage restores, stream by stream.
pub(crate) struct Detected {
    pub(crate) seq: u64,
    pub(crate) frame: Frame,
    pub(crate) faces: Vec<FaceRecord>,
    /// The attribute model's reading of each face (`None`: no model, no crop, or not read on
    /// this frame: see `[attributes] every_frame`).
    pub(crate) predictions: Vec<Option<crate::model::readout::Prediction>>,
    /// The frame was searched in full (not followed from the frame before).
    pub(crate) searched_in_full: bool,
    /// See [`Work::shedding`].
    pub(crate) shedding: bool,
    /// Not a frame: the mark that `frame.stream` has ended, in its place in the stream's order
    /// (the track stage then ends that stream's tracks).
    pub(crate) stream_ended: bool,
}

/// What the track stage hands the sinks: a frame's record with the people whose tracks ended at
/// it, or (no frame) people whose tracks ended with their stream or the run.
pub(crate) struct Tracked {
    /// Index of the stream in the run.
    pub(crate) stream: usize,
    pub(crate) frame: Option<FrameRecord>,
    /// The frame's packed RGB pixels when a sink draws, else empty.
    pub(crate) pixels: Vec<u8>,
    pub(crate) ended: Vec<TrackRecord>,
    /// The stream ended here (its last people are in `ended`).
    pub(crate) stream_ended: bool,
    /// People announced at this item (`track_start`, `track_update`): written before its frame.
    pub(crate) events: Vec<crate::record::TrackEvent>,
}

/// How a detect worker finds a frame's faces.
pub(crate) enum Search {
    /// The whole frame (a keyframe).
    Full,
    /// The whole frame but the smallest faces, with these faces, of the stream's frame before,
    /// followed instead (a keyframe; see [`crate::detect::FrameDetector::coarse_frame`]).
    Coarse(Vec<Face>),
    /// Follow these faces, found in the stream's frame before (see [`crate::detect::FrameDetector::follow_frame`]).
    Follow(Vec<Face>),
    /// Not a frame: the stream's end mark, passed on.
    EndMark,
}

/// What the scheduler hands a detect worker.
pub(crate) struct Work {
    /// The frame's place in its stream's order (see [`Detected`]).
    pub(crate) seq: u64,
    pub(crate) frame: Frame,
    pub(crate) search: Search,
    /// What the scheduler expected the frame to cost, handed back in [`Done`].
    pub(crate) estimated_s: f64,
    /// The frame's live stream drops frames (see `detect::pace`): a follow that loses a clear
    /// face is not searched in full at once, and only frames searched in full have their
    /// faces' attributes read (the track's estimate stands for the others).
    pub(crate) shedding: bool,
}

/// A detect worker's report to the scheduler that a frame is done.
pub(crate) struct Done {
    pub(crate) worker: usize,
    pub(crate) stream: usize,
    pub(crate) seq: u64,
    /// The faces found: a follow frame after this one starts from them.
    pub(crate) faces: Vec<Face>,
    /// Seconds the worker spent on the frame (0 for an end mark).
    pub(crate) cost_s: f64,
    /// What the scheduler had estimated (see [`Work`]).
    pub(crate) estimated_s: f64,
    /// Searched in full (the cost of a keyframe: a follower that lost a clear face is too), or
    /// followed; `None`: an end mark.
    pub(crate) full: Option<bool>,
    /// The full search was a coarse one ([`Search::Coarse`]), which costs less.
    pub(crate) coarse: bool,
}

/// The frame that stands for a stream's end in the order: no pixels, no faces.
pub(crate) fn end_mark(stream: &Arc<StreamInfo>) -> Frame {
    Frame {
        stream: stream.clone(),
        index: u64::MAX,
        pts_ms: 0.0,
        width: 0,
        height: 0,
        rgb: Vec::new(),
        gap_before_ms: None,
        scene_cut: false,
    }
}

/// Stand-ins for testing one stage alone, on two channels, without GStreamer or a model.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::graph::{Control, Graph, Input, Output, Received, WhenFull};

    /// `n` streams named "0", "1", …, files (not live).
    pub(crate) fn streams(n: usize) -> Vec<Arc<StreamInfo>> {
        (0..n)
            .map(|index| {
                Arc::new(StreamInfo {
                    clock_origin_ms: Default::default(),
                    id: index.to_string(),
                    index,
                    uri: format!("testsrc://stream-{index}"),
                    live: false,
                    detect_every: None,
                })
            })
            .collect()
    }

    /// Frame `index` of `stream`, 8×6 pixels of grey, at 40 ms a frame.
    pub(crate) fn frame(stream: &Arc<StreamInfo>, index: u64) -> Frame {
        Frame {
            stream: stream.clone(),
            index,
            pts_ms: index as f64 * 40.0,
            width: 8,
            height: 6,
            rgb: vec![128; 8 * 6 * 3],
            gap_before_ms: None,
            scene_cut: false,
        }
    }

    /// The context of a run of `streams`, with small queues; `keep_pixels`: which later stages
    /// read pixels.
    pub(crate) fn context(streams: &[Arc<StreamInfo>], keep_pixels: PixelReaders) -> RunContext {
        RunContext::new(
            streams.to_vec(),
            streams
                .iter()
                .map(|_| Arc::new(crate::sources::SourceCounters::default()))
                .collect(),
            Sizes::new(4, 1, 1),
            keep_pixels,
        )
    }

    /// A channel into the stage under test, and its graph.
    pub(crate) fn feed<T: Send + 'static>(graph: &mut Graph) -> (Output<T>, Input<T>) {
        graph.channel("test-in", 64, WhenFull::Block)
    }

    /// Runs `graph` with a thread that sends `items` into `input` and ends it, and one that
    /// collects what comes out of `output`; what came out.
    pub(crate) fn run<I: Send + 'static, O: Send + 'static>(
        mut graph: Graph,
        input: Output<I>,
        items: Vec<I>,
        output: Input<O>,
    ) -> Vec<O> {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        graph.add_stage("test-source", move |c| {
            for item in items {
                input.send(item, c);
            }
            Ok(())
        });
        let seen = out.clone();
        graph.add_stage("test-sink", move |c| {
            loop {
                match output.recv(c) {
                    Received::Item(item) => seen.lock().map_err(|e| e.to_string())?.push(item),
                    Received::Eos => return Ok(()),
                    Received::Disconnected => return Err("upstream failed".into()),
                }
            }
        });
        graph.run().expect("the graph runs");
        let mut out = out.lock().expect("not poisoned");
        std::mem::take(&mut *out)
    }

    /// A graph with a fresh control.
    pub(crate) fn graph() -> Graph {
        Graph::new(Control::new())
    }
}
