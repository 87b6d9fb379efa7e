//! Ranges of numeric settings, checked in one place with one message shape, so that every value a
//! flag or a pipeline file can carry is either accepted and safe to run with, or refused with one
//! line naming the setting, the value and the range:
//! `stats_interval_s (--stats-every) = 1e20: must be 0 (off) or from 0.1 to 86400 seconds`.

use std::fmt::Display;

/// A value outside its setting's range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{setting} = {value}: must be {expected}")]
pub struct RangeError {
    /// The key, with its command-line flag when there is one: `min_face_px (--min-face)`.
    pub setting: String,
    pub value: String,
    pub expected: String,
}

/// A setting's name in messages: its key, and the flag that sets it when there is one.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub flag: Option<&'static str>,
}

impl Setting {
    pub const fn key(key: &'static str) -> Self {
        Self { key, flag: None }
    }

    pub const fn flag(key: &'static str, flag: &'static str) -> Self {
        Self {
            key,
            flag: Some(flag),
        }
    }

    fn name(&self) -> String {
        match self.flag {
            Some(flag) => format!("{} ({flag})", self.key),
            None => self.key.to_string(),
        }
    }

    fn error(&self, value: impl Display, expected: String) -> RangeError {
        RangeError {
            setting: self.name(),
            value: value.to_string(),
            expected,
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
    fn messages_name_setting_flag_value_and_range() {
        let s = Setting::flag("min_face_px", "--min-face");
        assert!(s.check(20.0, 8.0, 10_000.0, "pixels").is_ok());
        assert_eq!(
            s.check(f64::NAN, 8.0, 10_000.0, "pixels")
                .unwrap_err()
                .to_string(),
            "min_face_px (--min-face) = NaN: must be from 8 to 10000 pixels"
        );
        let s = Setting::flag("stats_interval_s", "--stats-every");
        assert!(s.check_or_zero(0.0, 0.1, 86_400.0, "s", "off").is_ok());
        assert_eq!(
            s.check_or_zero(1e20, 0.1, 86_400.0, "seconds", "off")
                .unwrap_err()
                .to_string(),
            "stats_interval_s (--stats-every) = 100000000000000000000: must be 0 (off) or from 0.1 to 86400 seconds"
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
