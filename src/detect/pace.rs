//! Pacing a live stream by load, auto mode: when its frames wait longer than the machine can
//! afford, search them in full less often; when the load falls, step back.
//!
//! A full search costs ten to thirty times as much as following the faces of the frame before,
//! so widening its interval (100 ms up to a second, [`FULL_SEARCH_INTERVALS_MS`]) frees most
//! of the time a stream needs before any frame is lost. Frames that still cannot be processed are
//! dropped evenly by the scheduler (see `schedule`), and the pace counts that as load too.
//!
//! The signal is the stream's own backlog (the video time of its frames taken from the camera and
//! not yet handed to a worker), so each stream is paced by the share of the workers the fair
//! scheduler gives it: a costly stream beside cheap ones is paced alone. A step up waits until the
//! last one has had time to show: while the backlog shrinks, nothing more is given up.

/// Full-search intervals, from no load to the most load, ms. The widest ones (beyond
/// [`WIDEST_WITHOUT_DROPS`]) come only while frames are dropped: a full search of each stream
/// every half second can then take most of the machine, and the frames between would go
/// (measured in docs/performance.md); a face that walks in is then found up
/// to a second late.
pub(crate) const FULL_SEARCH_INTERVALS_MS: [f64; 7] =
    [100.0, 150.0, 200.0, 300.0, 500.0, 700.0, 1000.0];

/// The level of the widest interval a backlog alone leads to (500 ms).
const WIDEST_WITHOUT_DROPS: usize = 4;

/// The longest gap between two frames processed across which the faces of the first are followed
/// into the second rather than searched for in full.
pub(crate) const FOLLOW_GAP_MS: f64 = 250.0;

/// Backlog (frames waiting, in video time) that counts as falling behind once it lasts
/// [`STEP_S`] without shrinking; one full search of a large frame alone leaves less, and clears
/// it quickly.
const BEHIND_MS: f64 = 400.0;

/// Backlog under which the stream is keeping up.
const CALM_MS: f64 = 150.0;

/// Time between the looks that decide a step up: each step must get time to show its effect.
const STEP_S: f64 = 0.25;

/// Time after a stream's first frame before any step up: the networks' first runs are slow.
const STARTUP_S: f64 = 1.0;

/// Time kept up before a step down; doubled (up to [`MAX_CALM_S`]) each time a step down is
/// followed by a step up within [`RELAPSE_S`], so a stream at the edge does not swing.
const CALM_S: f64 = 2.0;
const MAX_CALM_S: f64 = 32.0;
const RELAPSE_S: f64 = 5.0;

/// One live stream's pacing.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    level: usize,
    changed_at_s: f64,
    /// The last look that counted for a step up: when, behind or not, and the backlog then.
    sampled_at_s: f64,
    sampled_behind: bool,
    sampled_backlog_ms: f64,
    /// Frames dropped so far, at the last look and at the last look that counted.
    dropped_seen: u64,
    sampled_dropped: u64,
    first_look_s: Option<f64>,
    calm_since_s: Option<f64>,
    calm_needed_s: f64,
    stepped_down_at_s: Option<f64>,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            level: 0,
            changed_at_s: f64::NEG_INFINITY,
            sampled_at_s: f64::NEG_INFINITY,
            sampled_behind: false,
            sampled_backlog_ms: 0.0,
            dropped_seen: 0,
            sampled_dropped: 0,
            first_look_s: None,
            calm_since_s: None,
            calm_needed_s: CALM_S,
            stepped_down_at_s: None,
        }
    }
}

impl Pace {
    /// Video time from one full search to the next now.
    pub(crate) fn full_search_interval_ms(&self) -> f64 {
        FULL_SEARCH_INTERVALS_MS[self.level.min(FULL_SEARCH_INTERVALS_MS.len() - 1)]
    }

    /// Past the widest interval a backlog alone leads to: frames are being dropped, and more
    /// work may be shed (a lost face is not searched for at once; attributes are read on full
    /// searches only).
    pub(crate) fn shedding(&self) -> bool {
        self.level > WIDEST_WITHOUT_DROPS
    }

    /// Looks at the stream at `now_s`: `backlog_ms` of video waits for the workers (frames
    /// taken and not handed out), `dropped` frames of it were dropped so far, `frame_ms` is the
    /// time between the camera's frames. True when the pace changed.
    ///
    /// A step up comes only when the stream was behind at two looks [`STEP_S`] apart and its
    /// backlog did not shrink between them (or frames were dropped meanwhile).
    pub(crate) fn observe(
        &mut self,
        now_s: f64,
        backlog_ms: f64,
        dropped: u64,
        frame_ms: f64,
    ) -> bool {
        let dropping_now = dropped > self.dropped_seen;
        self.dropped_seen = dropped;
        // A frame or two waiting is no backlog, however far apart a slow camera's frames are.
        if backlog_ms > CALM_MS.max(2.0 * frame_ms) || dropping_now {
            self.calm_since_s = None;
        } else if self.step_down_after_calm(now_s) {
            return true;
        }
        if now_s - self.sampled_at_s < STEP_S {
            return false;
        }
        let first_look_s = *self.first_look_s.get_or_insert(now_s);
        let dropping = dropped > self.sampled_dropped;
        let behind = backlog_ms >= BEHIND_MS || dropping;
        let (was_behind, before_ms) = (self.sampled_behind, self.sampled_backlog_ms);
        (
            self.sampled_at_s,
            self.sampled_behind,
            self.sampled_backlog_ms,
            self.sampled_dropped,
        ) = (now_s, behind, backlog_ms, dropped);
        // The first frames wait for the networks' first runs: no load yet.
        if now_s - first_look_s < STARTUP_S {
            return false;
        }
        let not_draining = dropping || backlog_ms >= before_ms - frame_ms;
        let widest = if dropping {
            FULL_SEARCH_INTERVALS_MS.len() - 1
        } else {
            WIDEST_WITHOUT_DROPS
        };
        if !(behind && was_behind && not_draining) || self.level >= widest {
            return false;
        }
        if self
            .stepped_down_at_s
            .is_some_and(|at| now_s - at < RELAPSE_S)
        {
            self.calm_needed_s = (self.calm_needed_s * 2.0).min(MAX_CALM_S);
        }
        self.stepped_down_at_s = None;
        self.level += 1;
        self.changed_at_s = now_s;
        true
    }

    /// Kept up at `now_s`: one step down once that has lasted long enough.
    fn step_down_after_calm(&mut self, now_s: f64) -> bool {
        if self
            .stepped_down_at_s
            .is_some_and(|at| now_s - at >= RELAPSE_S)
        {
            // The last step down held: the next may come sooner again.
            self.stepped_down_at_s = None;
            self.calm_needed_s = (self.calm_needed_s / 2.0).max(CALM_S);
        }
        let since = *self.calm_since_s.get_or_insert(now_s);
        if self.level > 0
            && now_s - since >= self.calm_needed_s
            && now_s - self.changed_at_s >= self.calm_needed_s
        {
            self.level -= 1;
            self.changed_at_s = now_s;
            self.calm_since_s = Some(now_s);
            self.stepped_down_at_s = Some(now_s);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pace` one look every 40 ms from `from_s` to `to_s` with the same backlog.
    fn hold(pace: &mut Pace, from_s: f64, to_s: f64, backlog_ms: f64) -> f64 {
        let mut t = from_s;
        while t < to_s {
            pace.observe(t, backlog_ms, 0, 40.0);
            t += 0.04;
        }
        t
    }

    /// A pace past its start-up time (no load during it), and the time then.
    fn warmed() -> (Pace, f64) {
        let mut pace = Pace::default();
        let t = hold(&mut pace, 0.0, STARTUP_S + 0.05, 0.0);
        (pace, t)
    }

    /// Seconds of `backlog_ms` until `pace` reaches `level` (at most 30 s).
    fn time_to(pace: &mut Pace, t: &mut f64, backlog_ms: f64, level: usize) -> f64 {
        let from = *t;
        while pace.level != level && *t - from < 30.0 {
            pace.observe(*t, backlog_ms, 0, 40.0);
            *t += 0.04;
        }
        *t - from
    }

    #[test]
    fn no_backlog_keeps_100_ms() {
        let (mut pace, t) = warmed();
        hold(&mut pace, t, 60.0, 0.0);
        assert_eq!(pace.full_search_interval_ms(), 100.0);
    }

    #[test]
    fn the_first_second_is_not_load() {
        let mut pace = Pace::default();
        hold(&mut pace, 0.0, STARTUP_S - 0.05, 2000.0);
        assert_eq!(pace.level, 0);
    }

    #[test]
    fn a_short_backlog_is_not_load() {
        // One full search of a big frame: 150 ms of frames wait, for 200 ms.
        let (mut pace, mut t) = warmed();
        for _ in 0..20 {
            t = hold(&mut pace, t, t + 0.2, 150.0);
            t = hold(&mut pace, t, t + 0.3, 0.0);
        }
        assert_eq!(pace.full_search_interval_ms(), 100.0);
        // 250 ms of frames waiting for a moment only is no load either.
        t = hold(&mut pace, t, t + 0.2, 250.0);
        hold(&mut pace, t, t + 0.5, 0.0);
        assert_eq!(pace.full_search_interval_ms(), 100.0);
    }

    #[test]
    fn sustained_load_widens_the_interval_step_by_step_up_to_500_ms_then_a_second_if_dropping() {
        let (mut pace, mut t) = warmed();
        // A step every look or two (0.25 s apart).
        let took = time_to(&mut pace, &mut t, 400.0, 4);
        assert!(took <= 2.1, "{took}");
        let t = hold(&mut pace, t, t + 10.0, 400.0);
        assert_eq!(pace.full_search_interval_ms(), 500.0);
        // Frames dropped all along: wider still.
        let (mut t, mut dropped) = (t, 0);
        while t < 200.0 && pace.full_search_interval_ms() < 1000.0 {
            dropped += 1;
            pace.observe(t, 400.0, dropped, 40.0);
            t += 0.04;
        }
        assert_eq!(pace.full_search_interval_ms(), 1000.0);
    }

    #[test]
    fn a_slow_cameras_frame_or_two_waiting_is_calm() {
        let (mut pace, mut t) = warmed();
        let mut dropped = 0;
        for _ in 0..20 {
            dropped += 1;
            pace.observe(t, 400.0, dropped, 40.0);
            t += 0.04;
        }
        assert!(pace.level > 0);
        // 5 fps: one frame waiting, 200 ms of its video.
        while t < 120.0 {
            pace.observe(t, 200.0, dropped, 200.0);
            t += 0.2;
        }
        assert_eq!(pace.level, 0);
    }

    #[test]
    fn frames_dropped_are_load() {
        let (mut pace, mut t) = warmed();
        let from = t;
        // One frame dropped every 200 ms, the backlog small.
        while t < from + 0.8 {
            pace.observe(t, 0.0, ((t - from) * 5.0) as u64, 40.0);
            t += 0.04;
        }
        assert!(pace.full_search_interval_ms() >= 150.0);
    }

    #[test]
    fn load_gone_steps_back_down_slowly_and_a_relapse_slows_the_next_try() {
        let (mut pace, mut t) = warmed();
        time_to(&mut pace, &mut t, 400.0, 4);
        // Calm for 1.5 s: no step yet; after 2 s, one.
        let t = hold(&mut pace, t, t + 1.5, 0.0);
        assert_eq!(pace.level, 4);
        let mut t = hold(&mut pace, t, t + 0.6, 0.0);
        assert_eq!(pace.level, 3);
        // Load again at once: back up within a few looks, and the next step down needs 4 s
        // of calm.
        let took = time_to(&mut pace, &mut t, 400.0, 4);
        assert!(took <= 0.8, "{took}");
        let t = hold(&mut pace, t, t + 3.0, 0.0);
        assert_eq!(pace.level, 4);
        let t = hold(&mut pace, t, t + 1.2, 0.0);
        assert_eq!(pace.level, 3);
        // Calm from then on: back to no pacing.
        hold(&mut pace, t, t + 120.0, 0.0);
        assert_eq!(pace.full_search_interval_ms(), 100.0);
    }

    #[test]
    fn a_shrinking_backlog_is_left_to_drain() {
        let (mut pace, mut t) = warmed();
        time_to(&mut pace, &mut t, 1000.0, 1);
        // Draining by 40 ms of video every 40 ms: no further step while it lasts.
        let mut backlog = 1000.0;
        while backlog > 500.0 {
            pace.observe(t, backlog, 0, 40.0);
            t += 0.04;
            backlog -= 40.0;
        }
        assert_eq!(pace.level, 1);
        // Stuck at 500 ms: not draining any more, so the next step comes.
        hold(&mut pace, t, t + 0.6, 500.0);
        assert!(pace.level >= 2);
    }
}
