//! Time arithmetic for the triager on protobuf timestamps.
//!
//! Instants are nanoseconds since the Unix epoch held in an `i128`, so that no
//! sum of a timestamp and a duration taken from the data can overflow. `None`
//! plays the role of Go's zero `time.Time` ("no time").

use pbjson_types::{Duration, Timestamp};

use crate::domain::triage_api::TriageError;

/// Nanoseconds since the Unix epoch (or a span of nanoseconds).
pub(crate) type Nanos = i128;

/// One second.
pub(crate) const SECOND: Nanos = 1_000_000_000;
/// One minute.
pub(crate) const MINUTE: Nanos = 60 * SECOND;

/// The instant of a timestamp (unnormalised fields are accepted as they are).
pub(crate) fn ts_nanos(ts: &Timestamp) -> Nanos {
    Nanos::from(ts.seconds) * SECOND + Nanos::from(ts.nanos)
}

/// The instant of an optional timestamp.
pub(crate) fn opt_ts_nanos(ts: Option<&Timestamp>) -> Option<Nanos> {
    ts.map(ts_nanos)
}

/// The span of a duration.
pub(crate) fn duration_nanos(d: &Duration) -> Nanos {
    Nanos::from(d.seconds) * SECOND + Nanos::from(d.nanos)
}

/// The normalised timestamp of an instant; fails beyond the `i64` seconds range.
pub(crate) fn to_timestamp(n: Nanos) -> Result<Timestamp, TriageError> {
    let seconds = i64::try_from(n.div_euclid(SECOND))
        .map_err(|_| TriageError::Bug(format!("time {n}ns is out of the timestamp range")))?;
    // The remainder is in [0, 1e9), which always fits an i32.
    let nanos = i32::try_from(n.rem_euclid(SECOND)).unwrap_or(0);
    Ok(Timestamp { seconds, nanos })
}

/// The earliest of two optional instants, ignoring absent ones (Go's `earliest`).
pub(crate) fn earliest(a: Option<Nanos>, b: Option<Nanos>) -> Option<Nanos> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Rounds an instant to microseconds, halves up (Go's `datastore.RoundTime`).
pub(crate) fn round_to_micros(n: Nanos) -> Nanos {
    let rem = n.rem_euclid(1_000);
    if rem >= 500 {
        n - rem + 1_000
    } else {
        n - rem
    }
}

/// Whether an optional instant equals an optional timestamp (Go's `isSameTime`).
pub(crate) fn is_same_time(next: Option<Nanos>, ts: Option<&Timestamp>) -> bool {
    match (next, ts) {
        (None, None) => true,
        (Some(n), Some(ts)) => n == ts_nanos(ts),
        _ => false,
    }
}
