//! What flows between the stages, and the window that bounds it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::graph::Control;
use crate::sinks::FaceRecord;
use crate::sources::Frame;

/// Which stages after detection read a frame's pixels: the attribute model (frames with faces),
/// and sinks that draw (every frame). Pixels are released after their last reader.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PixelReaders {
    pub(crate) attributes: bool,
    pub(crate) sinks: bool,
}

/// A frame with its faces, numbered in the order the scheduler handed it out.
pub(crate) struct Detected {
    pub(crate) seq: u64,
    pub(crate) frame: Frame,
    pub(crate) faces: Vec<FaceRecord>,
    /// The attribute model's reading of each face (`None`: no model, or no crop).
    pub(crate) predictions: Vec<Option<crate::model::readout::Prediction>>,
    /// Not a frame: the mark that `frame.stream` has ended, in its place in the order (the
    /// track stage then ends that stream's tracks).
    pub(crate) stream_ended: bool,
}

/// What the scheduler hands a detect worker: a numbered frame, or a stream's end mark.
pub(crate) struct Work {
    pub(crate) seq: u64,
    pub(crate) frame: Frame,
    pub(crate) stream_ended: bool,
    /// Search the whole frame; otherwise follow the faces of the stream's frame before, which
    /// the same worker handled just before (see [`Scheduler`](super::schedule::Scheduler)).
    pub(crate) keyframe: bool,
}

/// Bounds the frames between the source queue and the track stage. Workers finish frames out of
/// order and the track stage holds back those that overtook a slow one; without a bound, one slow
/// frame would let the others pull the rest of a file into that reorder buffer. The scheduler
/// hands out frame `seq` only once `seq < written + frames`.
pub(crate) struct Window {
    /// Sequence number of the next frame the track stage will take in order.
    pub(crate) written: Mutex<u64>,
    pub(crate) advanced: Condvar,
    pub(crate) frames: u64,
    /// The scheduler waits for room: whoever holds frames back (a batch being gathered) should
    /// let them go, since no new frame can come until the track stage moves on.
    pub(crate) waiting: std::sync::atomic::AtomicUsize,
}

impl Window {
    pub(crate) fn new(frames: usize) -> Self {
        Self {
            written: Mutex::new(0),
            advanced: Condvar::new(),
            frames: frames.max(1) as u64,
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Waits until frame `seq` fits in the window; false when the graph failed meanwhile.
    pub(crate) fn admit(&self, seq: u64, control: &Control) -> bool {
        let Ok(mut written) = self.written.lock() else {
            return false;
        };
        if seq < *written + self.frames {
            return true;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let admitted = loop {
            if seq < *written + self.frames {
                break true;
            }
            if control.has_error() {
                break false;
            }
            match self
                .advanced
                .wait_timeout(written, Duration::from_millis(50))
            {
                Ok((guard, _)) => written = guard,
                Err(_) => break false,
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        admitted
    }

    /// The scheduler waits for room: no new frame comes until the track stage moves on.
    pub(crate) fn is_full(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// The track stage is done with every frame before `next_seq`.
    pub(crate) fn advance_to(&self, next_seq: u64) {
        if let Ok(mut written) = self.written.lock() {
            *written = next_seq;
        }
        self.advanced.notify_all();
    }
}

/// The frame that stands for a stream's end in the order: no pixels, no faces.
pub(crate) fn end_mark(stream: &Arc<crate::sources::StreamInfo>) -> Frame {
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

/// Writes records in decode order: workers finish frames out of order, so the sink holds back a
/// frame until all before it are written.
pub(crate) struct Reorder {
    pub(crate) pending: BTreeMap<u64, Detected>,
    pub(crate) next_seq: u64,
}

impl Reorder {
    pub(crate) fn push(&mut self, d: Detected) {
        self.pending.insert(d.seq, d);
    }

    /// The next frame in order; with `flush`, also frames after a gap (a worker that failed).
    pub(crate) fn pop(&mut self, flush: bool) -> Option<Detected> {
        let d = match self.pending.remove(&self.next_seq) {
            Some(d) => d,
            None if flush => self.pending.pop_first()?.1,
            None => return None,
        };
        self.next_seq = d.seq + 1;
        Some(d)
    }
}
