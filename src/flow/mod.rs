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

/// Which stages after detection read a frame's pixels: the attribute model (frames with faces),
/// and sinks that draw (every frame). Pixels are released after their last reader.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PixelReaders {
    pub(crate) attributes: bool,
    pub(crate) sinks: bool,
}

/// A frame with its faces. `seq` numbers the frames of its stream (and its end mark) in decode
/// order, without gaps: the order the track stage restores, stream by stream.
pub(crate) struct Detected {
    pub(crate) seq: u64,
    pub(crate) frame: Frame,
    pub(crate) faces: Vec<FaceRecord>,
    /// The attribute model's reading of each face (`None`: no model, or no crop).
    pub(crate) predictions: Vec<Option<crate::model::readout::Prediction>>,
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
}

/// How a detect worker finds a frame's faces.
pub(crate) enum Search {
    /// The whole frame (a keyframe).
    Full,
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
    }
}
