//! `google.protobuf.Timestamp` with the canonical proto3 JSON mapping.
//!
//! The wire form is the well-known type's (`seconds` = 1, `nanos` = 2). The
//! JSON form is RFC 3339 in UTC with a `Z`, and fractional seconds only when
//! they are not zero, with 3, 6 or 9 digits: `2026-01-10T10:05:00Z`,
//! `2026-01-10T10:05:00.250Z`, `2026-01-10T10:05:00.000001Z`. Input accepts
//! any RFC 3339 offset (`2026-01-10T11:05:00+01:00` is the same instant).
//! The range is the well-known type's: years 0001 to 9999, `nanos` in
//! `0..1e9`; anything else is an error, never a panic.
//!
//! (`pbjson_types::Timestamp` prints `+00:00` offsets; this type replaces it
//! in the generated code through `build.rs`'s `extern_path`.)

use chrono::{DateTime, Datelike, SecondsFormat, Utc};

/// A point in time: seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Non-negative fractions of a second, `0..1_000_000_000`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Seconds of 0001-01-01T00:00:00Z, the first instant of the valid range.
pub const MIN_SECONDS: i64 = -62_135_596_800;

/// Seconds of 9999-12-31T23:59:59Z, the last whole second of the range.
pub const MAX_SECONDS: i64 = 253_402_300_799;

/// A timestamp outside the range proto3 JSON can express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {seconds}s {nanos}ns is outside 0001-01-01T00:00:00Z..=9999-12-31T23:59:59.999999999Z")]
pub struct OutOfRange {
    /// The seconds given.
    pub seconds: i64,
    /// The nanoseconds given.
    pub nanos: i32,
}

impl Timestamp {
    /// The canonical RFC 3339 text (see the module documentation).
    pub fn to_rfc3339(&self) -> Result<String, OutOfRange> {
        let out_of_range = OutOfRange {
            seconds: self.seconds,
            nanos: self.nanos,
        };
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&self.seconds) {
            return Err(out_of_range);
        }
        let nanos = u32::try_from(self.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)
            .ok_or(out_of_range.clone())?;
        let time = DateTime::<Utc>::from_timestamp(self.seconds, nanos).ok_or(out_of_range)?;
        Ok(time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    /// Parses RFC 3339 text with any offset.
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        let time = DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp: {e}"))?
            .with_timezone(&Utc);
        if !(1..=9999).contains(&time.year()) {
            return Err(format!("{text:?} is outside the years 0001 to 9999"));
        }
        Ok(Self {
            seconds: time.timestamp(),
            nanos: i32::try_from(time.timestamp_subsec_nanos())
                .map_err(|_| format!("{text:?} has a leap second"))?,
        })
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_rfc3339() {
            Ok(text) => f.write_str(&text),
            Err(e) => write!(f, "<{e}>"),
        }
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.to_rfc3339().map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    /// 2026-01-10T10:05:00Z.
    const T: i64 = 1_768_039_500;

    #[test]
    fn prints_z_and_0_3_6_or_9_fraction_digits() {
        let cases = [
            (ts(T, 0), "2026-01-10T10:05:00Z"),
            (ts(T, 250_000_000), "2026-01-10T10:05:00.250Z"),
            (ts(T, 1_000), "2026-01-10T10:05:00.000001Z"),
            (ts(T, 123_456_780), "2026-01-10T10:05:00.123456780Z"),
            (ts(T, 1), "2026-01-10T10:05:00.000000001Z"),
            (ts(0, 0), "1970-01-01T00:00:00Z"),
            (ts(-1, 500_000_000), "1969-12-31T23:59:59.500Z"),
            (ts(MIN_SECONDS, 0), "0001-01-01T00:00:00Z"),
            (
                ts(MAX_SECONDS, 999_999_999),
                "9999-12-31T23:59:59.999999999Z",
            ),
        ];
        for (value, text) in cases {
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), value);
        }
    }

    #[test]
    fn reads_any_offset_and_prints_it_back_in_utc() {
        let cases = [
            (
                "2026-01-10T11:05:00+01:00",
                ts(T, 0),
                "2026-01-10T10:05:00Z",
            ),
            (
                "2026-01-10T05:05:00-05:00",
                ts(T, 0),
                "2026-01-10T10:05:00Z",
            ),
            (
                "2026-01-10T10:05:00+00:00",
                ts(T, 0),
                "2026-01-10T10:05:00Z",
            ),
            (
                "2026-01-10T12:35:00.5+02:30",
                ts(T, 500_000_000),
                "2026-01-10T10:05:00.500Z",
            ),
            (
                "2026-01-10T10:05:00.1234Z",
                ts(T, 123_400_000),
                "2026-01-10T10:05:00.123400Z",
            ),
            ("2026-01-10t10:05:00z", ts(T, 0), "2026-01-10T10:05:00Z"),
        ];
        for (input, value, canonical) in cases {
            let parsed: Timestamp = serde_json::from_value(input.into()).unwrap();
            assert_eq!(parsed, value, "{input}");
            assert_eq!(serde_json::to_value(parsed).unwrap(), canonical, "{input}");
        }
    }

    #[test]
    fn out_of_range_values_are_errors_not_panics() {
        for value in [
            ts(MAX_SECONDS + 1, 0),
            ts(MIN_SECONDS - 1, 0),
            ts(1_000_000_000_000_000, 0),
            ts(T, -1),
            ts(T, 1_000_000_000),
        ] {
            let err = serde_json::to_string(&value).unwrap_err();
            assert!(err.to_string().contains("outside"), "{err}");
        }
        for text in ["10000-01-01T00:00:00Z", "not a time", "2026-01-10T10:05:00"] {
            assert!(
                serde_json::from_value::<Timestamp>(text.into()).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn the_wire_form_is_the_well_known_types() {
        use prost::Message;
        let value = ts(T, 250_000_000);
        let bytes = value.encode_to_vec();
        let wkt = pbjson_types::Timestamp::decode(bytes.as_slice()).unwrap();
        assert_eq!((wkt.seconds, wkt.nanos), (T, 250_000_000));
        assert_eq!(
            Timestamp::decode(wkt.encode_to_vec().as_slice()).unwrap(),
            value
        );
    }
}
