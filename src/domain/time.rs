//! Timestamp arithmetic for the fold.
//!
//! The fold never reads a clock: every instant comes from an event or from
//! the `Evaluated` marker. Timestamps are compared with nanosecond precision;
//! an unset timestamp reads as the Unix epoch, as Go's `AsTime()` of a nil
//! timestamp does in the original.

use std::cmp::Ordering;

use pbjson_types::Timestamp;

/// Nanoseconds in one second.
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// One minute, in nanoseconds.
pub const MINUTE_NANOS: i128 = 60 * NANOS_PER_SECOND;

/// Nanoseconds since the Unix epoch of a timestamp.
pub fn to_nanos(t: &Timestamp) -> i128 {
    i128::from(t.seconds) * NANOS_PER_SECOND + i128::from(t.nanos)
}

/// Nanoseconds since the Unix epoch of an optional timestamp (unset = epoch).
pub fn opt_nanos(t: Option<&Timestamp>) -> i128 {
    t.map_or(0, to_nanos)
}

/// The normalised timestamp of a number of nanoseconds since the epoch.
pub fn from_nanos(nanos: i128) -> Timestamp {
    let seconds = nanos.div_euclid(NANOS_PER_SECOND);
    let subsec = nanos.rem_euclid(NANOS_PER_SECOND);
    Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(if seconds < 0 { i64::MIN } else { i64::MAX }),
        nanos: i32::try_from(subsec).expect("sub-second nanoseconds fit in i32"),
    }
}

/// `t + nanos`.
pub fn add_nanos(t: &Timestamp, nanos: i128) -> Timestamp {
    from_nanos(to_nanos(t) + nanos)
}

/// `t + minutes`.
pub fn add_minutes(t: &Timestamp, minutes: i64) -> Timestamp {
    add_nanos(t, i128::from(minutes) * MINUTE_NANOS)
}

/// `t + days`.
pub fn add_days(t: &Timestamp, days: i64) -> Timestamp {
    add_nanos(t, i128::from(days) * 24 * 60 * MINUTE_NANOS)
}

/// Compares two timestamps.
pub fn cmp(a: &Timestamp, b: &Timestamp) -> Ordering {
    to_nanos(a).cmp(&to_nanos(b))
}

/// Compares two optional timestamps, reading unset as the epoch.
pub fn cmp_opt(a: Option<&Timestamp>, b: Option<&Timestamp>) -> Ordering {
    opt_nanos(a).cmp(&opt_nanos(b))
}

/// Rounds to microseconds, half away from zero (Go's `time.Round(time.Microsecond)`,
/// which is how the datastore stores `Project.UpdateTime`).
pub fn round_to_micros(t: &Timestamp) -> Timestamp {
    let nanos = to_nanos(t);
    let micros = if nanos >= 0 {
        (nanos + 500) / 1000
    } else {
        (nanos - 500) / 1000
    };
    from_nanos(micros * 1000)
}
