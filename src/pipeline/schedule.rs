//! The scheduler: frames from every stream's queue to the detect workers, fairly, in runs of
//! `detect_every`, within the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::flow::{Window, Work, end_mark};
use crate::graph::{self, Control, Input, Output, Received, Sent};
use crate::sources::Frame;

/// Takes frames from every stream's queue in turn (one frame per stream per round, so a file that
/// decodes fast cannot starve a live camera), numbers them and hands them to the detect workers,
/// within the [`Window`]. A stream that ends leaves the rotation; when all have ended, each worker
/// gets an end-of-stream.
///
/// With `detect_every` N > 1 a stream's frames come in runs of N (with 0, runs of 100 ms of
/// video, [`crate::detect::AUTO_DETECT_INTERVAL_MS`]): the first is searched in full
/// (a keyframe), the others follow the faces of the frame before. A whole run goes to one worker,
/// through its own queue (room for a run), so that worker has the frame before in hand and no
/// worker ever waits for another; each run goes to the least busy worker (fewest frames queued
/// or in work, ties taken in turn), so runs of one stream overlap on several workers. A frame
/// after a gap (frames dropped behind a live source, or lost while a camera reconnected) starts a
/// new run: the faces of the frame before may be far away.
pub(crate) struct Scheduler {
    pub(crate) inputs: Vec<Input<Frame>>,
    pub(crate) streams: Vec<Arc<crate::sources::StreamInfo>>,
    /// One queue per detect worker.
    pub(crate) outs: Vec<Output<Work>>,
    /// Per worker: frames handed to it and not yet done (queued or in work); the worker counts
    /// down.
    pub(crate) busy: Vec<Arc<AtomicUsize>>,
    pub(crate) detect_every: u32,
    pub(crate) window: Arc<Window>,
}

/// Where a stream is in its run of `detect_every` frames.
#[derive(Clone, Copy, Default)]
struct RunPosition {
    /// Frames of the current run handed out so far (0: the next frame starts a run).
    frames: u32,
    worker: usize,
    /// The stream's last frame number handed out.
    last_index: Option<u64>,
    /// Time of the run's keyframe.
    keyframe_pts_ms: f64,
}

impl Scheduler {
    pub(crate) fn run(self, control: &Control) -> Result<(), String> {
        let result = self.schedule(control);
        for out in &self.outs {
            out.send_eos(control);
        }
        result
    }

    /// The worker with the fewest frames queued or in work; among equals, the first from `from`
    /// on (so idle workers take turns).
    fn least_busy(&self, from: usize) -> usize {
        let k = self.busy.len().max(1);
        (0..k)
            .map(|i| (from + i) % k)
            .min_by_key(|&w| self.busy.get(w).map_or(0, |b| b.load(Ordering::SeqCst)))
            .unwrap_or(0)
    }

    pub(crate) fn schedule(&self, control: &Control) -> Result<(), String> {
        if self.outs.is_empty() {
            return Ok(());
        }
        let mut next_pick = 0usize;
        let n = self.inputs.len();
        let mut open = vec![true; n];
        let mut runs = vec![RunPosition::default(); n];
        let mut next_seq = 0u64;
        let mut turn = 0usize;
        while open.iter().any(|&o| o) {
            if !self.window.admit(next_seq, control) {
                return Ok(());
            }
            // The next stream in turn with a frame waiting; else wait for any.
            let ready = (0..n).map(|k| (turn + k) % n).find_map(|i| {
                open[i]
                    .then(|| self.inputs[i].try_recv())
                    .flatten()
                    .map(|r| (i, r))
            });
            let (i, received) = match ready {
                Some(r) => r,
                None => {
                    if control.has_error() {
                        return Ok(());
                    }
                    let waiting: Vec<usize> = (0..n).filter(|&i| open[i]).collect();
                    let inputs: Vec<&Input<Frame>> =
                        waiting.iter().map(|&i| &self.inputs[i]).collect();
                    match graph::recv_any(&inputs, Duration::from_millis(50)) {
                        Some((k, r)) => (waiting[k], r),
                        None => continue,
                    }
                }
            };
            let (work, worker) = match received {
                Received::Item(frame) => {
                    turn = (i + 1) % n;
                    let run = &mut runs[i];
                    let follows_last = run.last_index.is_some_and(|last| frame.index == last + 1);
                    let run_done = match self.detect_every {
                        // Auto: by video time (a little early rather than a frame late: frame
                        // times are rounded).
                        0 => {
                            run.frames >= crate::detect::AUTO_MAX_RUN
                                || frame.pts_ms - run.keyframe_pts_ms
                                    >= crate::detect::AUTO_DETECT_INTERVAL_MS - 2.0
                        }
                        n => run.frames >= n,
                    };
                    let keyframe = run.frames == 0
                        || run_done
                        || !follows_last
                        || frame.gap_before_ms.is_some();
                    if keyframe {
                        let worker = self.least_busy(next_pick);
                        next_pick = worker + 1;
                        *run = RunPosition {
                            frames: 0,
                            worker,
                            last_index: None,
                            keyframe_pts_ms: frame.pts_ms,
                        };
                    }
                    run.frames += 1;
                    run.last_index = Some(frame.index);
                    let work = Work {
                        seq: next_seq,
                        frame,
                        stream_ended: false,
                        keyframe,
                    };
                    (work, run.worker)
                }
                Received::Eos | Received::Disconnected => {
                    open[i] = false;
                    let work = Work {
                        seq: next_seq,
                        frame: end_mark(&self.streams[i]),
                        stream_ended: true,
                        keyframe: false,
                    };
                    (work, runs[i].worker)
                }
            };
            let worker = worker.min(self.outs.len() - 1);
            if let Some(busy) = self.busy.get(worker) {
                busy.fetch_add(1, Ordering::SeqCst);
            }
            if self.outs[worker].send(work, control) == Sent::Closed {
                return Ok(());
            }
            next_seq += 1;
        }
        Ok(())
    }
}
