//! Replay files (DESIGN §10): a project stream as JSON lines.
//!
//! Line 1 is the header `{"format":"prjmanager-stream","version":1,"project":"P"}`;
//! every other line is one event
//! `{"revision":N,"id":"<uuid>","type":"ClsUpdated","data":{…},"metadata":{…}}`
//! with `data` in the canonical proto3 JSON mapping. `revision`, `id` and
//! `metadata` may be left out in hand-written files.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events;
use crate::notifier;
use crate::proto::input_event::Event;
use crate::store::{NewEvent, RecordedEvent};
use crate::streams;

/// The `format` value of a replay file header.
pub const FORMAT: &str = "prjmanager-stream";

/// The only header `version` this code reads and writes.
pub const VERSION: u32 = 1;

/// The `producer` recorded in the metadata of events imported without metadata.
pub const IMPORT_PRODUCER: &str = "import";

/// Namespace of the ids given to events of hand-written files without ids.
const IMPORT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7b6f_3c1e_5a0d_4f7e_9e51_2f0c_8d3a_61b4);

/// The first line of a replay file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The LUCI project of the stream.
    pub project: String,
}

/// One event line, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEvent {
    /// 1-based line number in the file.
    pub line: usize,
    /// The recorded revision, if the line has one.
    pub revision: Option<u64>,
    /// The event id (given, or derived from the line's content).
    pub id: Uuid,
    /// The event.
    pub event: Event,
    /// Metadata as compact JSON bytes.
    pub metadata: Vec<u8>,
}

impl FileEvent {
    /// The event in the form the store appends.
    pub fn to_new_event(&self) -> NewEvent {
        NewEvent {
            id: self.id,
            event_type: events::type_name(&self.event).to_string(),
            data: events::encode(&self.event),
            metadata: self.metadata.clone(),
        }
    }

    /// The event in the form the store appends, without copying the metadata.
    pub fn into_new_event(self) -> NewEvent {
        NewEvent {
            id: self.id,
            event_type: events::type_name(&self.event).to_string(),
            data: events::encode(&self.event),
            metadata: self.metadata,
        }
    }
}

/// A whole replay file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamFile {
    /// The header.
    pub header: Header,
    /// The events, in file order.
    pub events: Vec<FileEvent>,
}

/// A replay file that cannot be read; names the file, line and problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.located())]
pub struct FileError {
    /// The file name as given by the user.
    pub file: String,
    /// 1-based line number (0 when the file could not be read at all).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl FileError {
    /// `file:line: message`, or `file: message` when no line applies.
    fn located(&self) -> String {
        match self.line {
            0 => format!("{}: {}", self.file, self.message),
            line => format!("{}:{line}: {}", self.file, self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    revision: Option<u64>,
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    /// Parsed by the event's own type straight from its text.
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    metadata: Option<serde_json::Value>,
}

/// Reads and parses a replay file by name (`-` reads stdin); see [`parse`].
/// A file that cannot be opened is an error at line 0, shown as
/// `FILE: cannot open: …`.
pub fn parse_path(path: &str) -> Result<StreamFile, FileError> {
    if path == "-" {
        return parse(std::io::BufReader::new(std::io::stdin().lock()), "<stdin>");
    }
    let handle = std::fs::File::open(path).map_err(|e| FileError {
        file: path.to_string(),
        line: 0,
        message: format!("cannot open: {e}"),
    })?;
    parse(std::io::BufReader::new(handle), path)
}

/// Parses and validates a whole replay file: the header, every line's JSON,
/// event types, payloads (with the Notifier's rules), run ids belonging to the
/// file's project, and revisions (all given and consecutive, or all absent).
pub fn parse(reader: impl BufRead, file: &str) -> Result<StreamFile, FileError> {
    let error = |line: usize, message: String| FileError {
        file: file.to_string(),
        line,
        message,
    };
    let mut lines = reader.lines().enumerate();
    let header_line = match lines.next() {
        None => return Err(error(1, "the file is empty; expected a header line".into())),
        Some((_, Err(e))) => return Err(error(1, format!("cannot read: {e}"))),
        Some((_, Ok(text))) => text,
    };
    let header: Header = serde_json::from_str(&header_line).map_err(|e| {
        error(
            1,
            format!("bad header (expected {{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"project\":\"P\"}}): {e}"),
        )
    })?;
    if header.format != FORMAT {
        return Err(error(
            1,
            format!("header format is {:?}, expected {FORMAT:?}", header.format),
        ));
    }
    if header.version != VERSION {
        return Err(error(
            1,
            format!(
                "header version is {}, this build reads version {VERSION}",
                header.version
            ),
        ));
    }
    notifier::validate_project(&header.project).map_err(|e| error(1, e.to_string()))?;

    let mut events: Vec<FileEvent> = Vec::new();
    // Every id seen so far, so that a duplicate is found in constant time.
    let mut seen_ids = HashSet::new();
    // Lines are read in chunks; each chunk's lines are parsed on every core
    // (each line on its own), then checked against each other in order, so
    // the first bad line is reported whichever thread parsed it.
    let mut chunk: Vec<(usize, String)> = Vec::with_capacity(PARSE_CHUNK_LINES);
    let mut lines = lines.peekable();
    while lines.peek().is_some() {
        chunk.clear();
        for (index, text) in lines.by_ref().take(PARSE_CHUNK_LINES) {
            let line = index + 1;
            let text = text.map_err(|e| error(line, format!("cannot read: {e}")))?;
            if !text.trim().is_empty() {
                chunk.push((line, text));
            }
        }
        for (parsed, (line, _)) in parse_lines(&header.project, &chunk, &error)
            .into_iter()
            .zip(&chunk)
        {
            let line = *line;
            let (raw_revision, id, event, metadata) = parsed?;
            if let (Some(previous), Some(revision)) = (
                events.last().and_then(|e: &FileEvent| e.revision),
                raw_revision,
            ) {
                if previous.checked_add(1) != Some(revision) {
                    return Err(error(
                        line,
                        format!("revision {revision} does not follow revision {previous}"),
                    ));
                }
            }
            if let Some(previous) = events.last() {
                if previous.revision.is_some() != raw_revision.is_some() {
                    return Err(error(
                        line,
                        "either every event line has a revision or none has".into(),
                    ));
                }
            }
            if !seen_ids.insert(id) {
                return Err(error(line, format!("event id {id} appears twice")));
            }
            events.push(FileEvent {
                line,
                revision: raw_revision,
                id,
                event,
                metadata,
            });
        }
    }
    Ok(StreamFile { header, events })
}

/// How many lines are read before they are parsed (on every core).
const PARSE_CHUNK_LINES: usize = 16_384;

/// One line, parsed on its own: its revision, id, event and metadata.
type ParsedLine = Result<(Option<u64>, Uuid, Event, Vec<u8>), FileError>;

/// Parses `lines` (line number, text) on every available core, each line on
/// its own; the results are in the order of `lines`.
fn parse_lines(
    project: &str,
    lines: &[(usize, String)],
    error: &(impl Fn(usize, String) -> FileError + Sync),
) -> Vec<ParsedLine> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = lines.len().div_ceil(threads).max(1024);
    if lines.len() <= per_thread {
        return lines
            .iter()
            .map(|(line, text)| parse_line(project, *line, text, error))
            .collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = lines
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(line, text)| parse_line(project, *line, text, error))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().expect("a parse thread panicked"))
            .collect()
    })
}

/// Parses and validates one event line on its own (what does not depend on
/// the lines around it).
fn parse_line(
    project: &str,
    line: usize,
    text: &str,
    error: &impl Fn(usize, String) -> FileError,
) -> ParsedLine {
    let raw: LineIn = serde_json::from_str(text)
        .map_err(|e| error(line, format!("malformed event line: {e}")))?;
    let event = events::from_json_text(&raw.event_type, raw.data.map_or("{}", |d| d.get()))
        .map_err(|e| error(line, e.to_string()))?;
    notifier::validate_event(project, &event)
        .map_err(|e| error(line, format!("{} event: {e}", raw.event_type)))?;
    let id = match raw.id {
        Some(id) => {
            Uuid::parse_str(&id).map_err(|e| error(line, format!("invalid id {id:?}: {e}")))?
        }
        None => Uuid::new_v5(
            &IMPORT_ID_NAMESPACE,
            format!("{project}\n{line}\n{text}").as_bytes(),
        ),
    };
    let metadata = match raw.metadata {
        Some(value @ serde_json::Value::Object(_)) => {
            serde_json::to_vec(&value).expect("JSON value re-serialises")
        }
        Some(other) => {
            return Err(error(
                line,
                format!("metadata must be a JSON object, got {other}"),
            ))
        }
        None => streams::metadata(id, IMPORT_PRODUCER, None),
    };
    Ok((raw.revision, id, event, metadata))
}

/// Writes the header line.
pub fn write_header(out: &mut impl Write, project: &str) -> std::io::Result<()> {
    let header = Header {
        format: FORMAT.to_string(),
        version: VERSION,
        project: project.to_string(),
    };
    serde_json::to_writer(&mut *out, &header)?;
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct LineOut<'a> {
    revision: u64,
    id: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    data: EventData<'a>,
    metadata: serde_json::Value,
}

/// Serialises an event's payload as its message's proto3 JSON, fields in
/// proto order.
struct EventData<'a>(&'a Event);

impl Serialize for EventData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Event::ConfigUpdated(m) => m.serialize(s),
            Event::Poked(m) => m.serialize(s),
            Event::ClsUpdated(m) => m.serialize(s),
            Event::RunCreated(m) => m.serialize(s),
            Event::RunFinished(m) => m.serialize(s),
            Event::PurgeCompleted(m) => m.serialize(s),
            Event::TriggeringClDepsCompleted(m) => m.serialize(s),
            Event::Evaluated(m) => m.serialize(s),
        }
    }
}

/// Writes one stored event as a line. Fails with `InvalidData` naming the
/// revision if the payload does not decode or the metadata is not JSON.
pub fn write_event(out: &mut impl Write, event: &RecordedEvent) -> std::io::Result<()> {
    let invalid = |message: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} revision {}: {message}", event.stream, event.revision),
        )
    };
    let decoded =
        events::decode(&event.event_type, &event.data).map_err(|e| invalid(e.to_string()))?;
    let metadata: serde_json::Value = serde_json::from_slice(&event.metadata)
        .map_err(|e| invalid(format!("metadata is not JSON: {e}")))?;
    let line = LineOut {
        revision: event.revision,
        id: event.id.to_string(),
        event_type: &event.event_type,
        data: EventData(&decoded),
        metadata,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}
