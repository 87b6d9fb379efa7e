//! Ranges of numeric settings, checked in one place with one message shape, so that every value a
//! flag or a pipeline file can carry is either accepted and safe to run with, or refused with one
//! line naming the setting, the value and the range:
//! `stats_interval_s = 1e20: must be 0 (off) or from 0.1 to 86400 seconds`.
//!
//! Settings are named by their keys only: the library knows no command line. A front end that sets
//! them from flags finds the [`RangeError`] in the error and names its flag beside the key.

use std::fmt::Display;

/// A value outside its setting's range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: must be {expected}")]
pub struct RangeError {
    /// The table the key is in (`detect`, `source`, …) where the key alone is ambiguous; empty
    /// for top-level keys and settings that say none.
    pub section: &'static str,
    pub key: &'static str,
    pub value: String,
    pub expected: String,
}

/// A setting: its key, and the table it is in where that matters to tell it from a namesake
/// (`[detect] threads` and `[attributes] threads`).
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub section: &'static str,
    pub key: &'static str,
}

impl Setting {
    pub const fn key(key: &'static str) -> Self {
        Self { section: "", key }
    }

    pub const fn in_section(section: &'static str, key: &'static str) -> Self {
        Self { section, key }
    }

    /// The error for `value`, which must be `expected` (a range, a rule): for checks the
    /// methods below do not cover.
    pub fn error(&self, value: impl Display, expected: impl Into<String>) -> RangeError {
        RangeError {
            section: self.section,
            key: self.key,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// `min ≤ value ≤ max` (NaN is outside every range); `unit` follows the range in messages.
    pub fn check<T: PartialOrd + Display + Copy>(
        &self,
        value: T,
        min: T,
        max: T,
        unit: &str,
    ) -> Result<(), RangeError> {
        if value >= min && value <= max {
            return Ok(());
        }
        Err(self.error(value, format!("from {min} to {max}{}", suffix(unit))))
    }

    /// Like [`check`](Self::check), where 0 has a meaning of its own (`zero_means`: "off",
    /// "automatic", "no limit").
    pub fn check_or_zero<T: PartialOrd + Display + Copy + Default>(
        &self,
        value: T,
        min: T,
        max: T,
        unit: &str,
        zero_means: &str,
    ) -> Result<(), RangeError> {
        if value == T::default() || (value >= min && value <= max) {
            return Ok(());
        }
        Err(self.error(
            value,
            format!("0 ({zero_means}) or from {min} to {max}{}", suffix(unit)),
        ))
    }

    /// One of a few allowed values.
    pub fn check_one_of<T: PartialEq + Display + Copy>(
        &self,
        value: T,
        allowed: &[T],
    ) -> Result<(), RangeError> {
        if allowed.contains(&value) {
            return Ok(());
        }
        let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        Err(self.error(value, format!("one of {}", list.join(", "))))
    }

    /// Like [`check`](Self::check) for each of several values, named together: `0.6,0.7,2`.
    pub fn check_each<T: PartialOrd + Display + Copy>(
        &self,
        values: &[T],
        min: T,
        max: T,
        unit: &str,
    ) -> Result<(), RangeError> {
        if values.iter().all(|v| *v >= min && *v <= max) {
            return Ok(());
        }
        let list: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        Err(self.error(
            list.join(","),
            format!("from {min} to {max}{} each", suffix(unit)),
        ))
    }
}

fn suffix(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    }
}

/// Milliseconds no timer or backoff may exceed: one hour. Larger waits overflow `Instant`
/// arithmetic on some platforms and are never what a user meant.
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// Worker and thread counts above this are refused: each worker holds its own networks.
pub const MAX_THREADS: usize = 64;
/// Queue lengths above this are refused: each queued frame may hold a decoded picture.
pub const MAX_QUEUE_FRAMES: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_setting_value_and_range() {
        let s = Setting::in_section("detect", "min_face_px");
        assert!(s.check(20.0, 8.0, 10_000.0, "pixels").is_ok());
        assert_eq!(
            s.check(f64::NAN, 8.0, 10_000.0, "pixels")
                .unwrap_err()
                .to_string(),
            "min_face_px = NaN: must be from 8 to 10000 pixels"
        );
        let s = Setting::key("stats_interval_s");
        assert!(s.check_or_zero(0.0, 0.1, 86_400.0, "s", "off").is_ok());
        assert_eq!(
            s.check_or_zero(1e20, 0.1, 86_400.0, "seconds", "off")
                .unwrap_err()
                .to_string(),
            "stats_interval_s = 100000000000000000000: must be 0 (off) or from 0.1 to 86400 seconds"
        );
        let s = Setting::in_section("detect", "thresholds");
        assert!(s.check_each(&[0.6, 0.7, 0.7], 0.0, 1.0, "").is_ok());
        let e = s
            .check_each(&[0.6, f32::NAN, 2.0], 0.0, 1.0, "")
            .unwrap_err();
        assert_eq!((e.section, e.key), ("detect", "thresholds"));
        assert_eq!(
            e.to_string(),
            "thresholds = 0.6,NaN,2: must be from 0 to 1 each"
        );
        assert!(
            Setting::key("age_groups")
                .check_one_of(4, &[3, 5, 10])
                .unwrap_err()
                .to_string()
                .ends_with("must be one of 3, 5, 10")
        );
        assert!(
            Setting::key("x")
                .check(f64::INFINITY, 0.0, 1.0, "")
                .is_err()
        );
        assert!(
            Setting::key("x")
                .check(f64::NEG_INFINITY, 0.0, 1.0, "")
                .is_err()
        );
    }
}
