//! What every stage of a run may use, built once before any stage: the streams, the windows that
//! bound their frames in flight, stage times and run counts, the size of the queues between
//! stages, and which stages read a frame's pixels. Each stage module's `spawn` takes it.

use std::sync::Arc;
use std::time::Instant;

use super::{PixelReaders, RunStats, StageTimes, StreamWindows};
use crate::sources::{SourceCounters, StreamInfo};

pub(crate) struct RunContext {
    /// When the run started: stream times and progress count from here.
    pub(crate) started: Instant,
    /// The run's streams, by index.
    pub(crate) streams: Vec<Arc<StreamInfo>>,
    /// What each stream's source has counted (decoded, dropped, what it expects to give).
    pub(crate) sources: Vec<Arc<SourceCounters>>,
    pub(crate) windows: Arc<StreamWindows>,
    pub(crate) times: StageTimes,
    pub(crate) stats: RunStats,
    /// Capacity of each queue after detection.
    pub(crate) queue_frames: usize,
    /// Which stages after detection read a frame's pixels (they are released after the last).
    pub(crate) keep_pixels: PixelReaders,
}

/// How a run's queues and windows are sized.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Frames queued between the stages after detection (see [`RunContext::queue_frames`]).
    pub(crate) queue_frames: usize,
    /// Each stream's fewest frames between its source queue and the track stage.
    pub(crate) window_frames: usize,
}

impl Sizes {
    /// From `in_flight` (the `queue_frames` setting, or its automatic value), the detect
    /// `workers`, and the frames of one run of `detect_every` (1 when each frame is searched).
    pub(crate) fn new(in_flight: usize, workers: usize, run_frames: usize) -> Self {
        let workers = workers.max(1);
        // Room for a run on every worker, so runs of a stream overlap.
        let run_frames = workers.saturating_mul(run_frames.max(1));
        let queue_frames = in_flight.max(run_frames.min(64));
        Self {
            queue_frames,
            // Every worker may hold a frame of the stream while the track stage holds back the
            // others.
            window_frames: queue_frames + workers,
        }
    }
}

impl RunContext {
    pub(crate) fn new(
        streams: Vec<Arc<StreamInfo>>,
        sources: Vec<Arc<SourceCounters>>,
        sizes: Sizes,
        keep_pixels: PixelReaders,
    ) -> Self {
        Self {
            started: Instant::now(),
            windows: Arc::new(StreamWindows::new(streams.len(), sizes.window_frames)),
            stats: RunStats::new(streams.len(), sizes.window_frames * streams.len()),
            times: StageTimes::default(),
            queue_frames: sizes.queue_frames,
            keep_pixels,
            streams,
            sources,
        }
    }

    /// Seconds since the run started.
    pub(crate) fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}
