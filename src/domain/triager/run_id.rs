//! The deterministic RunID of domain/luci-pm.md §1.1 and the Run creation
//! operation id derived from it.
//!
//! `<project>/<inverseTS>-<digestVersion>-<hexDigest>`: `inverseTS` is the
//! number of whole milliseconds from the Run's create time to the "end of the
//! world" 2306-08-19T01:13:16.854775807Z, zero-padded to 13 digits; the digest
//! (version 1) is the first 8 bytes of SHA-256 over the Run's CLs sorted by
//! (Gerrit host, change number).

use sha2::{Digest, Sha256};

use crate::proto::Timestamp;
use crate::proto::Trigger;

/// The only digest version in use.
pub const DIGEST_VERSION: u32 = 1;

/// Unix seconds of 2306-08-19T01:13:16Z, the end of the world (whole seconds).
const END_OF_THE_WORLD_SECONDS: i128 = 10_622_970_796;
/// Sub-second part of the end of the world, in nanoseconds.
const END_OF_THE_WORLD_NANOS: i128 = 854_775_807;
/// The largest Go `time.Duration` (the original panics at and beyond it).
const MAX_GO_DURATION_NANOS: i128 = i64::MAX as i128;

/// What the RunID digest reads of one CL of the Run.
#[derive(Debug, Clone, Copy)]
pub struct RunIdCl<'a> {
    /// Gerrit host.
    pub host: &'a str,
    /// Change number on that host.
    pub change: i64,
    /// Current revision (commit hash).
    pub current_revision: &'a str,
    /// The CL's trigger, if it has one.
    pub trigger: Option<&'a Trigger>,
}

/// Lowercase hexadecimal of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends the lowercase hexadecimal of bytes.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// The 8-byte digest (version 1) of the Run's CLs.
pub fn cls_digest(cls: &[RunIdCl<'_>]) -> [u8; 8] {
    let by_host_and_change =
        |a: &&RunIdCl<'_>, b: &&RunIdCl<'_>| a.host.cmp(b.host).then(a.change.cmp(&b.change));
    let mut sorted: Vec<&RunIdCl<'_>> = cls.iter().collect();
    if sorted
        .windows(2)
        .any(|pair| by_host_and_change(&pair[0], &pair[1]).is_gt())
    {
        sorted.sort_by(by_host_and_change);
    }
    // The hashed bytes are gathered first and hashed in one call: many
    // small updates of the hasher cost more than the copy.
    let mut bytes = Vec::with_capacity(sorted.len() * 96);
    let mut digits = itoa::Buffer::new();
    for (i, cl) in sorted.iter().enumerate() {
        if i > 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(cl.host.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(digits.format(cl.change).as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(cl.current_revision.as_bytes());
        if let Some(t) = cl.trigger {
            // Trigger time truncated to microseconds (as CQDaemon did); the
            // arithmetic wraps like the original's int64 arithmetic.
            let (seconds, nanos) = t.time.as_ref().map_or((0, 0), |ts| (ts.seconds, ts.nanos));
            let micros = seconds
                .wrapping_mul(1_000_000)
                .wrapping_add(i64::from(nanos / 1000));
            bytes.push(0);
            bytes.extend_from_slice(digits.format(micros).as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(t.mode.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(digits.format(t.gerrit_account_id).as_bytes());
        }
    }
    let full = Sha256::digest(&bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

/// Whole milliseconds from `create_time` to the end of the world.
///
/// Fails where the original panics: at or beyond the largest Go duration
/// (create times before 2014-05-09T01:26:00Z) and after the end of the world.
pub fn inverse_ts_ms(create_time: &Timestamp) -> Result<i64, String> {
    let create = i128::from(create_time.seconds) * 1_000_000_000 + i128::from(create_time.nanos);
    let end = END_OF_THE_WORLD_SECONDS * 1_000_000_000 + END_OF_THE_WORLD_NANOS;
    let diff = end - create;
    if diff >= MAX_GO_DURATION_NANOS {
        return Err(format!("overflow: create time {create}ns is too early"));
    }
    // Go's Duration saturates at its minimum, then truncates toward zero.
    let ms = diff.max(i128::from(i64::MIN)) / 1_000_000;
    if ms < 0 {
        return Err(format!(
            "can't create run at {create}ns which is after endOfTheWorld"
        ));
    }
    i64::try_from(ms).map_err(|_| "overflow".to_string())
}

/// The RunID of a Run of `luci_project` created at `create_time` on `cls`.
pub fn run_id(
    luci_project: &str,
    create_time: &Timestamp,
    cls: &[RunIdCl<'_>],
) -> Result<String, String> {
    let ms = inverse_ts_ms(create_time)?;
    let mut digits = itoa::Buffer::new();
    let ms = digits.format(ms);
    let mut id = String::with_capacity(luci_project.len() + 1 + 13 + 3 + 16);
    id.push_str(luci_project);
    id.push('/');
    // Zero-padded to 13 digits (`ms` is never negative).
    for _ in ms.len()..13 {
        id.push('0');
    }
    id.push_str(ms);
    id.push('-');
    id.push_str(itoa::Buffer::new().format(DIGEST_VERSION));
    id.push('-');
    push_hex(&mut id, &cls_digest(cls));
    Ok(id)
}

/// The Run creation operation id: `"PM-"` followed by the first 16 hex
/// digits of SHA-256(`"<project>\0<run_id>"`).
///
/// The original draws a random `"PM-<int63>"`; a hash keeps the fold pure
/// and is the same whenever the same Run is requested again, which makes
/// Run creation idempotent (ARCHITECTURE "Run creation").
pub fn operation_id(luci_project: &str, run_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(luci_project.as_bytes());
    h.update([0u8]);
    h.update(run_id.as_bytes());
    format!("PM-{}", to_hex(&h.finalize()[..8]))
}
