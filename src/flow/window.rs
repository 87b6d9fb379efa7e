//! Per-stream windows: the most frames of one stream between its source queue and the track stage.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Memory a stream's window may fill beyond its fewest frames.
pub(crate) const WINDOW_BYTES: usize = 64 << 20;

/// The most frames a window grows to for small frames (about 2 s of 25 fps video: a live
/// camera's records are never further behind for it), unless its fewest frames are more.
pub(crate) const WINDOW_MAX_FRAMES: usize = 48;

/// Memory all windows together may fill: with many streams, each keeps its first
/// [`GUARANTEED_FRAMES`] and shares the rest.
pub(crate) const WINDOWS_TOTAL_BYTES: usize = 1 << 30;

/// Frames a stream may always have in flight, whatever the others hold.
pub(crate) const GUARANTEED_FRAMES: usize = 2;

/// Bounds each stream's frames in flight: taken from its source queue by the scheduler and not yet
/// released by the track stage (waiting for a worker, in detection, in the attribute stage, or
/// held back to restore the stream's order). Workers finish frames out of order; without a bound,
/// one slow frame would let the others pull the rest of a file into the reorder buffer.
///
/// Each stream has its own window, so a stream whose frames are slow holds back only itself: the
/// frames of other streams never wait for it in any buffer.
///
/// A window holds at least the frames the workers need to overlap (`frames`), and as many more
/// as fit in [`WINDOW_BYTES`], up to [`WINDOW_MAX_FRAMES`]: a cheap camera beside an expensive
/// stream must wait out the expensive stream's frames, which take the workers for hundreds of
/// milliseconds each, and its small frames can wait in memory instead of being dropped. All
/// windows together hold at most [`WINDOWS_TOTAL_BYTES`] beyond each stream's
/// [`GUARANTEED_FRAMES`], so many streams do not multiply the memory in flight.
pub(crate) struct StreamWindows {
    in_flight: Vec<AtomicUsize>,
    /// Per stream: frames it may have in flight.
    limits: Vec<AtomicUsize>,
    /// Per stream: bytes of one of its frames.
    frame_bytes: Vec<AtomicUsize>,
    /// The fewest frames a window holds.
    frames: usize,
    /// Set by the scheduler while a stream with frames waiting is held at its window: whoever
    /// holds frames back (a batch being gathered) should let them go.
    waiting: AtomicBool,
    /// Wakes the scheduler when room is made (coalesced: one pending wake-up is enough).
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
}

impl StreamWindows {
    pub(crate) fn new(streams: usize, frames: usize) -> Self {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let frames = frames.max(1);
        Self {
            in_flight: (0..streams).map(|_| AtomicUsize::new(0)).collect(),
            limits: (0..streams).map(|_| AtomicUsize::new(frames)).collect(),
            frame_bytes: (0..streams).map(|_| AtomicUsize::new(0)).collect(),
            frames,
            waiting: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        }
    }

    /// Whether `stream` has room for one more frame: in its window, and (beyond its guaranteed
    /// frames) in the memory all windows share.
    pub(crate) fn has_room(&self, stream: usize) -> bool {
        let in_flight = self.in_flight(stream);
        in_flight < self.limit(stream)
            && (in_flight < GUARANTEED_FRAMES
                || self.bytes_in_flight() + self.bytes_of(stream) <= WINDOWS_TOTAL_BYTES)
    }

    fn bytes_of(&self, stream: usize) -> usize {
        self.frame_bytes
            .get(stream)
            .map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// Pixel memory of the frames in flight, all streams together.
    pub(crate) fn bytes_in_flight(&self) -> usize {
        (0..self.in_flight.len())
            .map(|s| self.in_flight(s).saturating_mul(self.bytes_of(s)))
            .fold(0, usize::saturating_add)
    }

    /// Frames `stream` may have in flight.
    pub(crate) fn limit(&self, stream: usize) -> usize {
        self.limits
            .get(stream)
            .map_or(self.frames, |n| n.load(Ordering::SeqCst))
    }

    /// Frames all streams may have in flight together.
    pub(crate) fn total(&self) -> usize {
        (0..self.limits.len()).map(|s| self.limit(s)).sum()
    }

    /// Sizes `stream`'s window for its frames of `frame_bytes` each (see the type's
    /// documentation).
    pub(crate) fn fit(&self, stream: usize, frame_bytes: usize) {
        let fit = WINDOW_BYTES / frame_bytes.max(1);
        let frames = fit.clamp(self.frames, self.frames.max(WINDOW_MAX_FRAMES));
        if let Some(n) = self.limits.get(stream) {
            n.store(frames, Ordering::SeqCst);
        }
        if let Some(n) = self.frame_bytes.get(stream) {
            n.store(frame_bytes, Ordering::SeqCst);
        }
    }

    pub(crate) fn in_flight(&self, stream: usize) -> usize {
        self.in_flight
            .get(stream)
            .map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// The scheduler took a frame (or end mark) of `stream` from its source queue.
    pub(crate) fn take(&self, stream: usize) {
        if let Some(n) = self.in_flight.get(stream) {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The track stage is done with a frame (or end mark) of `stream`.
    pub(crate) fn release(&self, stream: usize) {
        if let Some(n) = self.in_flight.get(stream) {
            // Never below zero, whatever a caller does.
            let _ = n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        }
        match self.wake_tx.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }

    /// What the scheduler waits on, besides its queues, for room.
    pub(crate) fn woken(&self) -> &Receiver<()> {
        &self.wake_rx
    }

    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::SeqCst);
    }

    /// A stream with frames waiting is held at its window: frames held back anywhere (a batch
    /// being gathered) hold up that stream.
    pub(crate) fn is_full(&self) -> bool {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stream_has_its_own_room() {
        let w = StreamWindows::new(2, 2);
        w.take(0);
        w.take(0);
        assert!(!w.has_room(0));
        assert!(w.has_room(1), "a full stream never takes another's room");
        w.release(0);
        assert!(w.has_room(0));
        assert!(
            w.woken().try_recv().is_ok(),
            "a release wakes the scheduler"
        );
        w.release(1);
        assert_eq!(w.in_flight(1), 0, "never below zero");
    }

    #[test]
    fn small_frames_get_a_deeper_window_within_the_memory_budget() {
        let w = StreamWindows::new(3, 10);
        w.fit(0, 320 * 240 * 3);
        w.fit(1, 1280 * 720 * 3);
        w.fit(2, 3840 * 2160 * 3);
        assert_eq!(w.limit(0), WINDOW_MAX_FRAMES, "at most about 2 s of video");
        assert_eq!(w.limit(1), WINDOW_BYTES / (1280 * 720 * 3));
        assert_eq!(w.limit(2), 10, "never fewer than the workers need");
        assert_eq!(w.total(), 48 + 24 + 10);
        let many = StreamWindows::new(3, 10);
        many.fit(0, 1 << 20);
        assert_eq!(many.limit(0), 48);
        let fresh = StreamWindows::new(1, 100);
        fresh.fit(0, 1);
        assert_eq!(
            fresh.limit(0),
            100,
            "a window's fewest frames are never cut"
        );
    }

    /// Many streams of big frames share one memory budget; each keeps its guaranteed frames.
    #[test]
    fn all_windows_together_stay_within_the_memory_budget() {
        let frame = 64 << 20; // 64 MiB frames: 16 fill the budget
        let w = StreamWindows::new(3, 10);
        for s in 0..3 {
            w.fit(s, frame);
        }
        let mut taken = [0; 3];
        for _ in 0..10 {
            for (s, n) in taken.iter_mut().enumerate() {
                if w.has_room(s) {
                    w.take(s);
                    *n += 1;
                }
            }
        }
        assert!(w.bytes_in_flight() <= WINDOWS_TOTAL_BYTES, "{taken:?}");
        assert_eq!(taken.iter().sum::<usize>(), 16, "{taken:?}");
        w.take(2);
        w.release(2);
        w.release(0);
        assert!(w.has_room(0));
        for s in 0..3 {
            while w.in_flight(s) > 0 {
                w.release(s);
            }
        }
        w.take(1);
        assert!(
            w.has_room(1),
            "below its guaranteed frames whatever the others hold"
        );
    }
}
