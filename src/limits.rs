//! Every bound on input, in one place (README "Limits"). The Notifier, the
//! replay-file parser and the service refuse input beyond them with an
//! error naming the field, and write nothing.

use std::time::Duration;

use crate::proto::Timestamp;

/// Largest encoded event the Notifier accepts (bytes).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Most CLs one `ClsUpdated` event may carry.
pub const MAX_CLS_PER_EVENT: usize = 10_000;

/// Longest accepted LUCI project name (characters).
pub const MAX_PROJECT_NAME_CHARS: usize = 100;

/// Most dependencies one CL snapshot may list.
pub const MAX_DEPS_PER_CL: usize = 1_000;

/// Most votes one CL snapshot may carry.
pub const MAX_VOTES_PER_CL: usize = 1_000;

/// Longest accepted string field of an event (hosts, repos, refs, emails,
/// labels, footers, revisions, run ids, operation ids), in bytes.
pub const MAX_STRING_BYTES: usize = 4_096;

/// Longest `Duration` accepted (10,000 years, in seconds), either sign.
pub const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// Largest gRPC request the service decodes (bytes): above the event limit,
/// so that an event too large is answered `RESOURCE_EXHAUSTED` naming the
/// limit. A request larger still is refused by the transport (`OUT_OF_RANGE`).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Largest gRPC response the service sends and the CLI accepts (bytes). A
/// list RPC ends its page early to stay under it; a single answer over it
/// (a huge state) is refused with `RESOURCE_EXHAUSTED`, saying to read it
/// from the store instead.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// How far past the wall clock a marker's `now` may be (`Evaluate`, the
/// CLI's `evaluate --now`, an imported `Evaluated` line), unless the caller
/// allows any time (`--allow-any-now`, for offline tools and recordings).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Checks a marker's `now` against the project's last marker (`last`, its
/// `update_time`: the clock of a stream never goes backwards) and, if
/// `max_skew` is set, against the wall clock: `Err` says what is wrong.
pub fn check_marker_now(
    now: &Timestamp,
    last: Option<&Timestamp>,
    wall: &Timestamp,
    max_skew: Option<Duration>,
) -> Result<(), String> {
    let nanos = |t: &Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    now.to_rfc3339().map_err(|e| e.to_string())?;
    if let Some(last) = last.filter(|last| nanos(now) < nanos(last)) {
        return Err(format!(
            "{now} is before the project's last marker ({last}); a stream's clock never goes backwards"
        ));
    }
    if let Some(skew) = max_skew {
        if nanos(now) > nanos(wall) + skew.as_nanos() as i128 {
            return Err(format!(
                "{now} is more than {}s past the clock ({wall}); use --allow-any-now for offline work",
                skew.as_secs()
            ));
        }
    }
    Ok(())
}

/// Longest stretch of input an error message quotes, in bytes.
pub const MAX_QUOTED_BYTES: usize = 200;

/// `text` as an error message quotes it: Rust-escaped in quotes, cut after
/// [`MAX_QUOTED_BYTES`] bytes (at a character boundary) with the full length
/// said, so that no message echoes unbounded input.
pub fn quoted(text: &str) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return format!("{text:?}");
    }
    let mut end = MAX_QUOTED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn a_marker_now_is_bounded_by_the_last_marker_and_the_clock() {
        let wall = at(1_000_000);
        let skew = Some(MAX_CLOCK_SKEW);
        assert!(check_marker_now(&at(1_000_300), Some(&at(10)), &wall, skew).is_ok());
        let late = check_marker_now(&at(1_000_301), None, &wall, skew).unwrap_err();
        assert!(late.contains("--allow-any-now"), "{late}");
        assert!(check_marker_now(&at(1_000_301), None, &wall, None).is_ok());
        let back = check_marker_now(&at(9), Some(&at(10)), &wall, None).unwrap_err();
        assert!(back.contains("before the project's last marker"), "{back}");
        let far = Timestamp {
            seconds: 1_000_000_000_000_000,
            nanos: 0,
        };
        assert!(check_marker_now(&far, None, &wall, None).is_err());
    }

    #[test]
    fn short_text_is_quoted_whole_and_long_text_is_cut_at_a_char_boundary() {
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
        let long = "é".repeat(500);
        let q = quoted(&long);
        assert!(q.ends_with("… (1000 bytes)"), "{q}");
        assert!(q.len() < MAX_QUOTED_BYTES + 30, "{}", q.len());
        assert_eq!(q.matches('é').count(), MAX_QUOTED_BYTES / 2);
    }
}
