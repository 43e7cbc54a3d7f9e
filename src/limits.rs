//! Every bound on input, in one place (README "Limits"). The Notifier, the
//! replay-file parser and the service refuse input beyond them with an
//! error naming the field, and write nothing.

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
