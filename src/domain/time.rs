//! Timestamp arithmetic for the fold (the state machine and the triager).
//!
//! The fold never reads a clock: every instant comes from an event or from
//! the `Evaluated` marker. Timestamps are compared with nanosecond precision;
//! an unset timestamp reads as the Unix epoch, as Go's `AsTime()` of a nil
//! timestamp does in the original, except where an `Option<Nanos>` keeps
//! "no time" apart (the triager's use of Go's zero `time.Time`).
//!
//! Instants are nanoseconds since the Unix epoch held in an `i128`, so that no
//! sum of a timestamp and a duration taken from the data can overflow.

use std::cmp::Ordering;

use crate::proto::Timestamp;
use pbjson_types::Duration;

/// Nanoseconds since the Unix epoch (or a span of nanoseconds).
pub type Nanos = i128;

/// Nanoseconds in one second.
const NANOS_PER_SECOND: Nanos = 1_000_000_000;

/// One second, in nanoseconds.
pub const SECOND_NANOS: Nanos = NANOS_PER_SECOND;

/// One minute, in nanoseconds.
pub const MINUTE_NANOS: Nanos = 60 * NANOS_PER_SECOND;

/// Nanoseconds since the Unix epoch of a timestamp.
pub fn to_nanos(t: &Timestamp) -> i128 {
    i128::from(t.seconds) * NANOS_PER_SECOND + i128::from(t.nanos)
}

/// Nanoseconds since the Unix epoch of an optional timestamp (unset = epoch).
pub fn opt_nanos(t: Option<&Timestamp>) -> i128 {
    t.map_or(0, to_nanos)
}

/// Nanoseconds since the Unix epoch of an optional timestamp, `None` if unset.
pub fn nanos_if_set(t: Option<&Timestamp>) -> Option<Nanos> {
    t.map(to_nanos)
}

/// The span of a duration, in nanoseconds (unnormalised fields are accepted as they are).
pub fn duration_nanos(d: &Duration) -> Nanos {
    i128::from(d.seconds) * NANOS_PER_SECOND + i128::from(d.nanos)
}

/// The normalised timestamp of an instant, `None` beyond the `i64` seconds range.
pub fn checked_from_nanos(nanos: Nanos) -> Option<Timestamp> {
    let seconds = i64::try_from(nanos.div_euclid(NANOS_PER_SECOND)).ok()?;
    let subsec = i32::try_from(nanos.rem_euclid(NANOS_PER_SECOND)).ok()?;
    Some(Timestamp {
        seconds,
        nanos: subsec,
    })
}

/// The earliest of two optional instants, ignoring absent ones (Go's `earliest`).
pub fn earliest(a: Option<Nanos>, b: Option<Nanos>) -> Option<Nanos> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Whether an optional instant equals an optional timestamp (Go's `isSameTime`:
/// both unset, or both set and equal).
pub fn is_same_time(instant: Option<Nanos>, t: Option<&Timestamp>) -> bool {
    match (instant, t) {
        (None, None) => true,
        (Some(n), Some(t)) => n == to_nanos(t),
        _ => false,
    }
}

/// The normalised timestamp of a number of nanoseconds since the epoch
/// (saturating beyond the `i64` seconds range).
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

/// Rounds an instant to microseconds, halves up: Go's
/// `time.Round(time.Microsecond)` (`datastore.RoundTime`), which rounds the
/// time elapsed since year 1, so halves go up also before 1970.
pub fn round_nanos_to_micros(nanos: Nanos) -> Nanos {
    let rem = nanos.rem_euclid(1_000);
    if rem >= 500 {
        nanos - rem + 1_000
    } else {
        nanos - rem
    }
}

/// Rounds a timestamp to microseconds as [`round_nanos_to_micros`] does
/// (how the datastore stores `Project.UpdateTime` and a Run's `CreateTime`).
pub fn round_to_micros(t: &Timestamp) -> Timestamp {
    from_nanos(round_nanos_to_micros(to_nanos(t)))
}
