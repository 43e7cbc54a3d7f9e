//! The mapping between input events and stored records: event type names,
//! protobuf payload bytes and the proto3 JSON form of replay files.
//!
//! A stored event's type is the message name (`ClsUpdated`, …) and its
//! payload is prost's encoding of that message.

use prost::Message;

use crate::proto::{self, input_event::Event};

/// Every event type that may appear in a `project-<P>` stream.
pub const INPUT_EVENT_TYPES: &[&str] = &[
    "ConfigUpdated",
    "Poked",
    "ClsUpdated",
    "RunCreated",
    "RunFinished",
    "PurgeCompleted",
    "TriggeringClDepsCompleted",
    "Evaluated",
];

/// An event payload that could not be turned into an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum EventCodecError {
    /// The type name is not one of [`INPUT_EVENT_TYPES`].
    #[error("unknown event type {0:?} (expected one of {types})", types = INPUT_EVENT_TYPES.join(", "))]
    UnknownType(String),
    /// The protobuf bytes do not decode as the named type.
    #[error("payload of a {event_type} event does not decode: {source}")]
    Decode {
        /// The event type.
        event_type: String,
        /// The decoder's error.
        source: prost::DecodeError,
    },
    /// The JSON does not parse as the named type.
    #[error("data of a {event_type} event is not valid proto3 JSON: {source}")]
    Json {
        /// The event type.
        event_type: String,
        /// The parser's error.
        source: serde_json::Error,
    },
}

/// The stored type name of an event.
pub fn type_name(event: &Event) -> &'static str {
    match event {
        Event::ConfigUpdated(_) => "ConfigUpdated",
        Event::Poked(_) => "Poked",
        Event::ClsUpdated(_) => "ClsUpdated",
        Event::RunCreated(_) => "RunCreated",
        Event::RunFinished(_) => "RunFinished",
        Event::PurgeCompleted(_) => "PurgeCompleted",
        Event::TriggeringClDepsCompleted(_) => "TriggeringClDepsCompleted",
        Event::Evaluated(_) => "Evaluated",
    }
}

/// The canonical protobuf bytes of an event's payload.
pub fn encode(event: &Event) -> Vec<u8> {
    match event {
        Event::ConfigUpdated(m) => m.encode_to_vec(),
        Event::Poked(m) => m.encode_to_vec(),
        Event::ClsUpdated(m) => m.encode_to_vec(),
        Event::RunCreated(m) => m.encode_to_vec(),
        Event::RunFinished(m) => m.encode_to_vec(),
        Event::PurgeCompleted(m) => m.encode_to_vec(),
        Event::TriggeringClDepsCompleted(m) => m.encode_to_vec(),
        Event::Evaluated(m) => m.encode_to_vec(),
    }
}

/// Builds the payload message of an event type from some source (bytes or
/// JSON); [`by_type`] is the one table of type names.
trait PayloadSource {
    fn payload<M: Message + Default + serde::de::DeserializeOwned>(
        self,
        event_type: &str,
    ) -> Result<M, EventCodecError>;
}

/// The event of a type name, its payload built by `source`.
fn by_type(event_type: &str, source: impl PayloadSource) -> Result<Event, EventCodecError> {
    let s = source;
    Ok(match event_type {
        "ConfigUpdated" => Event::ConfigUpdated(s.payload(event_type)?),
        "Poked" => Event::Poked(s.payload(event_type)?),
        "ClsUpdated" => Event::ClsUpdated(s.payload(event_type)?),
        "RunCreated" => Event::RunCreated(s.payload(event_type)?),
        "RunFinished" => Event::RunFinished(s.payload(event_type)?),
        "PurgeCompleted" => Event::PurgeCompleted(s.payload(event_type)?),
        "TriggeringClDepsCompleted" => Event::TriggeringClDepsCompleted(s.payload(event_type)?),
        "Evaluated" => Event::Evaluated(s.payload(event_type)?),
        other => return Err(EventCodecError::UnknownType(other.to_string())),
    })
}

struct Bytes<'a>(&'a [u8]);

impl PayloadSource for Bytes<'_> {
    fn payload<M: Message + Default + serde::de::DeserializeOwned>(
        self,
        event_type: &str,
    ) -> Result<M, EventCodecError> {
        M::decode(self.0).map_err(|source| EventCodecError::Decode {
            event_type: event_type.to_string(),
            source,
        })
    }
}

struct Json(serde_json::Value);

impl PayloadSource for Json {
    fn payload<M: Message + Default + serde::de::DeserializeOwned>(
        self,
        event_type: &str,
    ) -> Result<M, EventCodecError> {
        serde_json::from_value(self.0).map_err(|source| EventCodecError::Json {
            event_type: event_type.to_string(),
            source,
        })
    }
}

struct JsonText<'a>(&'a str);

impl PayloadSource for JsonText<'_> {
    fn payload<M: Message + Default + serde::de::DeserializeOwned>(
        self,
        event_type: &str,
    ) -> Result<M, EventCodecError> {
        serde_json::from_str(self.0).map_err(|source| EventCodecError::Json {
            event_type: event_type.to_string(),
            source,
        })
    }
}

/// Decodes a stored payload of the given type.
pub fn decode(event_type: &str, data: &[u8]) -> Result<Event, EventCodecError> {
    by_type(event_type, Bytes(data))
}

/// The proto3 JSON form of an event's payload; an error for a value outside
/// proto's range (a timestamp stored past the Notifier's bounds).
pub fn to_json(event: &Event) -> Result<serde_json::Value, serde_json::Error> {
    match event {
        Event::ConfigUpdated(m) => serde_json::to_value(m),
        Event::Poked(m) => serde_json::to_value(m),
        Event::ClsUpdated(m) => serde_json::to_value(m),
        Event::RunCreated(m) => serde_json::to_value(m),
        Event::RunFinished(m) => serde_json::to_value(m),
        Event::PurgeCompleted(m) => serde_json::to_value(m),
        Event::TriggeringClDepsCompleted(m) => serde_json::to_value(m),
        Event::Evaluated(m) => serde_json::to_value(m),
    }
}

/// Parses the proto3 JSON form of a payload of the given type.
pub fn from_json(event_type: &str, data: serde_json::Value) -> Result<Event, EventCodecError> {
    by_type(event_type, Json(data))
}

/// As [`from_json`], from the payload's JSON text (no intermediate
/// `serde_json::Value`).
pub fn from_json_text(event_type: &str, data: &str) -> Result<Event, EventCodecError> {
    by_type(event_type, JsonText(data))
}

/// Wraps an event into the `InputEvent` message.
pub fn wrap(event: Event) -> proto::InputEvent {
    proto::InputEvent { event: Some(event) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_uses_canonical_names() {
        let event = Event::RunFinished(proto::RunFinished {
            run_id: "infra/111-beef".into(),
            status: proto::run::Status::Failed as i32,
            end_time: Some(crate::proto::Timestamp {
                seconds: 1_580_640_000,
                nanos: 0,
            }),
        });
        let json = to_json(&event).unwrap();
        assert_eq!(
            json.to_string(),
            r#"{"endTime":"2020-02-02T10:40:00Z","runId":"infra/111-beef","status":"FAILED"}"#
        );
        let back = from_json("RunFinished", json).unwrap();
        assert_eq!(back, event);
        assert_eq!(decode("RunFinished", &encode(&event)).unwrap(), event);
    }

    #[test]
    fn unknown_type_is_named() {
        let err = decode("Bogus", b"").unwrap_err();
        assert!(err.to_string().contains("\"Bogus\""), "{err}");
    }
}
