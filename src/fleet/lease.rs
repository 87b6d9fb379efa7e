//! When a worker must renew a camera's lease, and when it must stop the camera because it could
//! not. Pure: the time is given, so tests drive a fake clock.
//!
//! A lease is a key-value entry that expires `ttl` after the server stored its last write. The
//! worker cannot know when the server stored it, only when it sent the write (before). So it
//! counts from the send time of its last write that the server confirmed: the entry cannot
//! expire earlier than `ttl` after that. It stops the camera `stop_margin` before then, so a
//! worker cut off from NATS has stopped before another worker can take the lease over, and no
//! camera is processed by two workers at once.

use std::time::Duration;

/// How a worker keeps its leases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeasePolicy {
    /// How long a lease lives without renewal (the bucket's max age).
    pub ttl: Duration,
    /// How often a held lease is renewed.
    pub renew_every: Duration,
    /// How long before the earliest possible expiry the worker stops the camera.
    pub stop_margin: Duration,
}

impl LeasePolicy {
    /// Renew at a quarter of `ttl`, so three renewals in a row may fail (a NATS node that dies
    /// and a new leader elected) before the camera stops at four fifths of it.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_every: ttl / 4,
            stop_margin: ttl / 5,
        }
    }

    /// Whether a lease whose last confirmed write was sent at `confirmed_at` is due for renewal
    /// at `now` (times from any fixed origin).
    pub fn renewal_due(&self, confirmed_at: Duration, now: Duration) -> bool {
        now.saturating_sub(confirmed_at) >= self.renew_every
    }

    /// Whether the camera must stop at `now`: its lease may expire within `stop_margin`.
    pub fn must_stop(&self, confirmed_at: Duration, now: Duration) -> bool {
        now.saturating_sub(confirmed_at) >= self.ttl.saturating_sub(self.stop_margin)
    }

    /// The earliest moment the server may drop the lease, for a write sent at `sent_at`.
    pub fn earliest_expiry(&self, sent_at: Duration) -> Duration {
        sent_at + self.ttl
    }
}

/// A lease this worker holds: the entry's revision (what the next update must name), when the
/// write that gave it was sent, and since when the worker holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLease {
    pub revision: u64,
    pub confirmed_at: Duration,
    /// When the worker took it (RFC 3339), kept through renewals.
    pub since: String,
    /// Why its camera does not run (it failed; tried again now and then), written with the
    /// renewals so the status shows it.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn renewals_come_at_a_quarter_and_the_camera_stops_at_four_fifths() {
        let p = LeasePolicy::new(S(10));
        assert!(!p.renewal_due(S(100), S(100) + MS(2499)));
        assert!(p.renewal_due(S(100), S(100) + MS(2500)));
        assert!(!p.must_stop(S(100), S(100) + MS(7999)));
        assert!(p.must_stop(S(100), S(108)));
        // A clock that went back never makes a lease look older.
        assert!(!p.must_stop(S(100), S(50)));
    }

    /// A worker cut off from NATS at any moment stops its camera before the lease can expire on
    /// the server, whatever the delay between sending a write and the server storing it: so a
    /// second worker, which can take the lease only once it expired, never runs the camera
    /// while the first still does.
    #[test]
    fn a_worker_cut_off_stops_before_anyone_can_take_over() {
        let p = LeasePolicy::new(S(10));
        let tick = MS(100);
        for store_delay_ms in [0, 5, 50, 400] {
            for cut_at_ms in (0..20_000).step_by(700) {
                let mut now = Duration::ZERO;
                let mut confirmed_at = Duration::ZERO;
                // When the server stored the last write: its expiry counts from then.
                let mut stored_at = MS(store_delay_ms);
                let mut stopped_at = None;
                while now < S(60) {
                    now += tick;
                    let cut = now >= MS(cut_at_ms);
                    if p.renewal_due(confirmed_at, now) && !cut {
                        confirmed_at = now;
                        stored_at = now + MS(store_delay_ms);
                    }
                    if stopped_at.is_none() && p.must_stop(confirmed_at, now) {
                        stopped_at = Some(now);
                    }
                }
                let expired_at = stored_at + p.ttl;
                let stopped_at = stopped_at.expect("a cut-off worker stops");
                assert!(
                    stopped_at + p.stop_margin - tick <= expired_at,
                    "delay {store_delay_ms} ms, cut at {cut_at_ms} ms: stopped {stopped_at:?}, expired {expired_at:?}"
                );
                assert!(p.earliest_expiry(confirmed_at) <= expired_at);
            }
        }
    }
}
