//! Live cameras (RTSP, webcams): one that errors, ends its stream or stalls is rebuilt and
//! reconnected with exponential backoff, and its frames' timestamps continue across the gap.

use std::time::{Duration, Instant};

use crate::graph::Control;

/// Wait before reconnection attempt `attempt` (1, 2, …): `initial`, doubling, at most `max`.
pub fn backoff_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    initial.saturating_mul(1u32 << doublings).min(max)
}

/// Keeps a live stream's timestamps increasing across reconnections: each new connection's
/// running time starts again at 0, so it is shifted onto wall-clock time since the first frame.
#[derive(Debug, Default)]
pub(super) struct PtsClock {
    /// When the stream's first frame came, and its timestamp.
    pub(super) first_frame: Option<(Instant, f64)>,
    pub(super) offset_ms: f64,
    /// The next frame starts a new connection.
    pub(super) rebase: bool,
    pub(super) last_ms: Option<f64>,
    /// Live sources: the first frame is at 0 (a camera's running time starts when the pipeline
    /// does, a frame interval or more before its first frame). Files keep their own timeline.
    pub(super) from_first_frame: bool,
}

impl PtsClock {
    pub(super) fn place(&mut self, raw_ms: f64, now: Instant) -> f64 {
        let (first_at, first_ms) = *self.first_frame.get_or_insert((now, raw_ms));
        if std::mem::take(&mut self.rebase) {
            self.offset_ms = first_ms + now.duration_since(first_at).as_secs_f64() * 1e3 - raw_ms;
        }
        let mut pts_ms = raw_ms + self.offset_ms;
        if self.from_first_frame {
            pts_ms -= first_ms;
        }
        // A live stream's time never goes back (nor its clock time, which follows it); a file
        // keeps its own timestamps until a reconnection shifts them.
        if (self.offset_ms != 0.0 || self.from_first_frame)
            && let Some(last) = self.last_ms
            && pts_ms <= last
        {
            pts_ms = last + 1.0;
        }
        self.last_ms = Some(pts_ms);
        pts_ms
    }
}

/// Sleeps for `delay` in short steps; false when a stop was requested meanwhile.
pub(super) fn sleep_unless_stopped(delay: Duration, control: &Control) -> bool {
    let until = Instant::now() + delay;
    while !control.stop_requested() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnection_backoff_doubles_up_to_its_cap() {
        let ms = Duration::from_millis;
        let waits: Vec<u128> = (1..=8)
            .map(|attempt| backoff_delay(attempt, ms(500), ms(10_000)).as_millis())
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
        assert_eq!(backoff_delay(0, ms(500), ms(10_000)), ms(500));
        assert_eq!(backoff_delay(u32::MAX, ms(500), ms(30_000)), ms(30_000));
    }

    #[test]
    fn timestamps_continue_on_wall_time_across_a_reconnection() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut clock = PtsClock::default();
        // A file or first connection keeps its own timestamps.
        assert_eq!(clock.place(100.0, at(0)), 100.0);
        assert_eq!(clock.place(140.0, at(40)), 140.0);
        // The camera comes back 3 s later; its running time starts again near 0.
        clock.rebase = true;
        let after_gap = clock.place(5.0, at(3040));
        assert!((after_gap - 3140.0).abs() < 1e-6, "{after_gap}");
        assert!((clock.place(45.0, at(3080)) - 3180.0).abs() < 1e-6);
        // A reconnected stream whose clock jumps back never yields an earlier timestamp.
        let back = clock.place(0.0, at(3100));
        assert!(back > 3180.0, "{back}");
        // A live camera's first frame is at 0 whatever its running time says.
        let mut clock = PtsClock {
            from_first_frame: true,
            ..PtsClock::default()
        };
        assert_eq!(clock.place(33.47, at(0)), 0.0);
        assert!((clock.place(73.47, at(40)) - 40.0).abs() < 1e-9);
        clock.rebase = true;
        assert!((clock.place(5.0, at(1040)) - 1040.0).abs() < 1e-6);
    }
}
