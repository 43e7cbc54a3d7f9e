//! The commands. Writes go through the Notifier (or, for `import` and
//! `evaluate`, straight to the project's stream with an expected revision);
//! reads go through [`crate::read`].

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use crate::events;
use crate::jsonl;
use crate::limits::{check_marker_now, MAX_CLOCK_SKEW};
use crate::notifier::{self, Notifier};
use crate::progress::events_bar;
use crate::projector;
use crate::proto::{self, input_event::Event};
use crate::read::{self, action_line, At, LoadError, Target};
use crate::store::any::{AnyStore, StoreUrl};
use crate::store::{
    append_bytes, split_by_bytes, EventStore, ExpectedRevision, NewEvent, StoreError,
};
use crate::streams::{self, action_stream, check_project, log_stream, project_stream};

use super::args::NotifyKind;
use super::client::{rpc_error, Server, Via};
use super::CliError;

fn open_store(url: &StoreUrl) -> Result<AnyStore, CliError> {
    AnyStore::open(url).map_err(|e| CliError::Failed(format!("cannot open the store: {e}")))
}

fn valid_project(project: &str) -> Result<(), CliError> {
    check_project(project).map_err(|e| CliError::BadInput(e.to_string()))
}

/// The store, if the project has events in it.
async fn store_with_project(url: &StoreUrl, project: &str) -> Result<AnyStore, CliError> {
    let store = open_store(url)?;
    read::require_project(&store, project)
        .await?
        .map_err(failed)?;
    Ok(store)
}

fn read_input(path: &str) -> Result<String, CliError> {
    if path == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::BadInput(format!("cannot read stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .map_err(|e| CliError::BadInput(format!("cannot read {path}: {e}")))
}

fn load_error(err: LoadError) -> CliError {
    match err {
        LoadError::NoSuchEversion { .. } => CliError::BadInput(err.to_string()),
        other => CliError::Failed(other.to_string()),
    }
}

fn json_error(e: serde_json::Error) -> CliError {
    CliError::Failed(e.to_string())
}

/// `notify`: validate one event and append it (or send it to the service).
pub async fn notify(
    target: &Via,
    kind: NotifyKind,
    project: Option<String>,
    json: Option<String>,
) -> Result<(), CliError> {
    let source = json.as_deref().unwrap_or("(none)");
    let data = match &json {
        Some(path) => {
            let text = read_input(path)?;
            serde_json::from_str(&text)
                .map_err(|e| CliError::BadInput(format!("{source}: not valid JSON: {e}")))?
        }
        None if kind == NotifyKind::Poke => serde_json::json!({}),
        None => {
            return Err(CliError::BadInput(format!(
                "notify {}: --json FILE is required",
                kind.event_type()
            )))
        }
    };
    let event = events::from_json(kind.event_type(), data)
        .map_err(|e| CliError::BadInput(format!("{source}: {e}")))?;
    let project = event_project(&event, project)?;
    notifier::validate_event(&project, &event).map_err(|e| CliError::BadInput(e.to_string()))?;
    let (project, revision, id) = match target {
        Via::Store(url) => {
            let notifier = Notifier::new(open_store(url)?, "cli");
            let appended = notifier.send_now(&project, event).await?;
            (appended.project, appended.revision, Some(appended.id))
        }
        Via::Server(server) => {
            let mut client = server.connect().await?;
            let request = server.request(proto::SendNowRequest {
                project: project.clone(),
                event: Some(events::wrap(event)),
            });
            let response = client
                .send_now(request)
                .await
                .map_err(rpc_error)?
                .into_inner();
            (response.project, response.revision, None)
        }
    };
    let mut ack = serde_json::json!({ "project": project, "revision": revision });
    if let Some(id) = id {
        ack["id"] = serde_json::Value::String(id.to_string());
    }
    println!("{ack}");
    Ok(())
}

/// The project an event goes to: the run id's project for run events, else `--project`.
fn event_project(event: &Event, project: Option<String>) -> Result<String, CliError> {
    let run_id = match event {
        Event::RunCreated(e) => e.run.as_ref().map(|r| r.id.as_str()),
        Event::RunFinished(e) => Some(e.run_id.as_str()),
        _ => None,
    };
    match (run_id, project) {
        (Some(run_id), project) => {
            let routed = notifier::run_project(run_id, "run id")
                .map_err(|e| CliError::BadInput(e.to_string()))?;
            if let Some(p) = project.filter(|p| p != routed) {
                return Err(CliError::BadInput(format!(
                    "--project {p:?} does not match the run id's project {routed:?}"
                )));
            }
            Ok(routed.to_string())
        }
        (None, Some(project)) => Ok(project),
        (None, None) => Err(CliError::BadInput("--project is required".into())),
    }
}

/// `import`: validate the whole file, then append its events in one atomic
/// append (one store transaction): a file the store refuses (an id already
/// in the stream elsewhere, a stream that does not continue as the file's
/// revisions say) writes nothing.
///
/// A store with an append size limit (EventStoreDB's `MaxAppendSize`,
/// `--max-append-bytes`) takes a larger file in several appends, each at
/// the revision the previous one ended at: an event over the limit is
/// refused before anything is written, and an import that fails midway
/// says how far it got; running it again finishes it (the appends already
/// made are recognised by their ids and not written twice).
pub async fn import(url: &StoreUrl, file: &str, allow_any_now: bool) -> Result<(), CliError> {
    let parsed = jsonl::parse_path(file).map_err(|e| CliError::BadInput(e.to_string()))?;
    check_marker_clocks(file, &parsed, allow_any_now)?;
    let store = open_store(url)?;
    let stream = project_stream(&parsed.header.project);
    let Some(first) = parsed.events.first() else {
        eprintln!("imported 0 events into {stream}");
        return Ok(());
    };
    let limit = store.max_append_bytes();
    let batch: Vec<NewEvent> = parsed
        .events
        .iter()
        .map(jsonl::FileEvent::to_new_event)
        .collect();
    if let Some(limit) = limit {
        if let Some((line, size)) = parsed
            .events
            .iter()
            .zip(&batch)
            .map(|(f, e)| (f.line, append_bytes(e)))
            .find(|(_, size)| *size > limit)
        {
            return Err(CliError::BadInput(format!(
                "{file}:{line}: the event is {size} bytes, over the store's append limit of \
                 {limit} bytes (--max-append-bytes, the server's MaxAppendSize); nothing was imported"
            )));
        }
    }
    let appends = split_by_bytes(batch, limit);
    let total = parsed.events.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_message(format!("importing {total} events"));
    if appends.len() > 1 {
        eprintln!(
            "importing {total} events in {} appends of at most {} bytes (the store's append limit)",
            appends.len(),
            limit.unwrap_or_default()
        );
    }
    let mut expected = match first.revision {
        Some(0) => ExpectedRevision::NoStream,
        Some(r) => ExpectedRevision::Exact(r - 1),
        None => ExpectedRevision::Any,
    };
    let mut done = 0;
    let mut result = None;
    for append in appends {
        let count = append.len();
        let first_id = append.first().map(|e| e.id);
        let written = store.append(&stream, expected, append).await.map_err(|e| {
            bar.finish_and_clear();
            // The line to blame: the one whose id clashes, else the first
            // of this append.
            let line = match &e {
                StoreError::DuplicateEventId { id, .. } => {
                    parsed.events.iter().find(|f| f.id == *id)
                }
                _ => None,
            }
            .or_else(|| parsed.events.iter().find(|f| Some(f.id) == first_id))
            .unwrap_or(first)
            .line;
            let so_far = if done == 0 {
                "nothing was imported".to_string()
            } else {
                format!("{done} of {total} events were imported; run the import again to finish it")
            };
            match e {
                StoreError::WrongExpectedVersion { .. } | StoreError::DuplicateEventId { .. } => {
                    CliError::BadInput(format!(
                        "{file}:{line}: the stream {stream} does not continue as the file \
                         expects; {so_far}: {e}"
                    ))
                }
                other => CliError::Failed(format!("{file}:{line}: {other}; {so_far}")),
            }
        })?;
        done += count;
        bar.set_position(done as u64);
        expected = ExpectedRevision::Exact(written.next_revision);
        result = Some(written);
    }
    bar.finish_and_clear();
    eprintln!(
        "imported {total} events into {stream} (last revision {})",
        result.map_or(0, |r| r.next_revision)
    );
    Ok(())
}

/// The markers of a file: each `now` not before the previous one and, unless
/// any time is allowed, at most [`MAX_CLOCK_SKEW`] past the wall clock.
fn check_marker_clocks(
    file: &str,
    parsed: &jsonl::StreamFile,
    allow_any_now: bool,
) -> Result<(), CliError> {
    let wall = projector::wall_clock();
    let skew = (!allow_any_now).then_some(MAX_CLOCK_SKEW);
    let mut last = None;
    for event in &parsed.events {
        let Event::Evaluated(marker) = &event.event else {
            continue;
        };
        let Some(now) = marker.now.as_ref() else {
            continue;
        };
        check_marker_now(now, last, &wall, skew)
            .map_err(|e| CliError::BadInput(format!("{file}:{}: invalid now: {e}", event.line)))?;
        last = Some(now);
    }
    Ok(())
}

/// `export`: the project's stream as a replay file.
pub async fn export(
    url: &StoreUrl,
    project: &str,
    to_revision: Option<u64>,
    output: Option<PathBuf>,
) -> Result<(), CliError> {
    valid_project(project)?;
    let store = store_with_project(url, project).await?;
    let stream = project_stream(project);
    let head = store.stream_revision(&stream).await?.unwrap_or(0);
    let last = to_revision.map_or(head, |r| r.min(head));
    // A file is written beside its destination and renamed into place only
    // when every event was written: a failed export leaves no partial file.
    let file = match output.as_deref() {
        Some(path) if path != Path::new("-") => {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            let temp = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| CliError::BadInput(format!("cannot write {}: {e}", path.display())))?;
            Some((temp, path))
        }
        _ => None,
    };
    let mut out: Box<dyn Write> = match &file {
        Some((temp, _)) => Box::new(std::io::BufWriter::new(temp.as_file())),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    jsonl::write_header(&mut out, project)?;
    let bar = events_bar(last + 1, "exporting");
    write_events(&store, &stream, 0, last, &mut out, &bar).await?;
    bar.finish_and_clear();
    out.flush()?;
    drop(out);
    if let Some((temp, path)) = file {
        temp.persist(path).map_err(|e| {
            CliError::BadInput(format!("cannot write {}: {}", path.display(), e.error))
        })?;
    }
    Ok(())
}

/// `events`: the project's events as replay lines, from a revision.
pub async fn list_events(
    url: &StoreUrl,
    project: &str,
    from: u64,
    limit: Option<usize>,
) -> Result<(), CliError> {
    valid_project(project)?;
    let store = store_with_project(url, project).await?;
    let stream = project_stream(project);
    let head = store.stream_revision(&stream).await?.unwrap_or(0);
    let last = match limit {
        Some(0) => return Ok(()),
        Some(n) => head.min(from.saturating_add(n as u64 - 1)),
        None => head,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write_events(
        &store,
        &stream,
        from,
        last,
        &mut out,
        &ProgressBar::hidden(),
    )
    .await?;
    out.flush()?;
    Ok(())
}

async fn write_events(
    store: &AnyStore,
    stream: &str,
    from: u64,
    last: u64,
    out: &mut impl Write,
    bar: &ProgressBar,
) -> Result<(), CliError> {
    read::read_range(store, stream, from, last, |event| {
        jsonl::write_event(out, event).map_err(|e| CliError::Failed(e.to_string()))?;
        bar.inc(1);
        Ok(())
    })
    .await
}

/// `state`: the `ProjectLog` shape of the state, latest or at an eversion.
pub async fn state(target: &Via, project: &str, eversion: Option<i64>) -> Result<(), CliError> {
    valid_project(project)?;
    let log = match target {
        Via::Store(url) => {
            let store = store_with_project(url, project).await?;
            let at = eversion.map_or(At::Latest, At::Eversion);
            read::project_log(&store, project, at)
                .await
                .map_err(load_error)?
                .log
        }
        Via::Server(server) => {
            let mut client = server.connect().await?;
            let request = server.request(proto::GetProjectRequest {
                project: project.to_string(),
                eversion: eversion.unwrap_or(0),
            });
            client
                .get_project(request)
                .await
                .map_err(rpc_error)?
                .into_inner()
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&log).map_err(json_error)?
    );
    Ok(())
}

/// `quarantined`: the projects a running service found quarantined, one
/// JSON line `{"project":…,"reason":…}` each.
pub async fn quarantined(server: &Server) -> Result<(), CliError> {
    let mut client = server.connect().await?;
    let list = client
        .list_quarantined(server.request(proto::ListQuarantinedRequest {}))
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for project in &list.projects {
        serde_json::to_writer(&mut out, project).map_err(json_error)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// `release`: make a running service re-load a quarantined project; prints
/// `{"project":…,"eversion":…}`.
pub async fn release(server: &Server, project: &str) -> Result<(), CliError> {
    valid_project(project)?;
    let mut client = server.connect().await?;
    let released = client
        .release_project(server.request(proto::ReleaseProjectRequest {
            project: project.to_string(),
        }))
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", serde_json::to_string(&released).map_err(json_error)?);
    Ok(())
}

/// `logs`: the stored `ProjectLog`s, one JSON line each.
pub async fn logs(url: &StoreUrl, project: &str) -> Result<(), CliError> {
    valid_project(project)?;
    let store = open_store(url)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for event in read::read_all(&store, &log_stream(project)).await? {
        let log: proto::ProjectLog = read::decode(&event).map_err(failed)?;
        serde_json::to_writer(&mut out, &log).map_err(json_error)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// `actions`: the stored actions (of one eversion), one JSON line each.
pub async fn actions(url: &StoreUrl, project: &str, eversion: Option<i64>) -> Result<(), CliError> {
    valid_project(project)?;
    let store = open_store(url)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for event in read::read_all(&store, &action_stream(project)).await? {
        let action: proto::Action = read::decode(&event).map_err(failed)?;
        if eversion.is_some_and(|e| e != action.eversion) {
            continue;
        }
        let line = action_line(&action).map_err(json_error)?;
        serde_json::to_writer(&mut out, &line).map_err(json_error)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// `evaluate`: append an `Evaluated` marker now (or at `--now`).
pub async fn evaluate(
    target: &Via,
    project: &str,
    now: Option<String>,
    allow_any_now: bool,
) -> Result<(), CliError> {
    valid_project(project)?;
    let now = match now {
        Some(text) => Some(
            serde_json::from_value::<crate::proto::Timestamp>(serde_json::Value::String(
                text.clone(),
            ))
            .map_err(|e| CliError::BadInput(format!("invalid --now {text:?}: {e}")))?,
        ),
        None => None,
    };
    let revision = match target {
        Via::Store(url) => {
            let store = store_with_project(url, project).await?;
            let loaded = read::load(&store, project, Target::Latest)
                .await
                .map_err(load_error)?;
            if let Some(now) = &now {
                let skew = (!allow_any_now).then_some(MAX_CLOCK_SKEW);
                let last = loaded.state.update_time.as_ref();
                check_marker_now(now, last, &projector::wall_clock(), skew)
                    .map_err(|e| CliError::BadInput(format!("invalid --now: {e}")))?;
            }
            let (expected, marker) =
                projector::prepare_marker(&loaded.state, now.unwrap_or_else(projector::wall_clock));
            let event =
                streams::input_event(&Event::Evaluated(marker), uuid::Uuid::new_v4(), "cli");
            store
                .append(&project_stream(project), expected, vec![event])
                .await?
                .next_revision
        }
        Via::Server(server) => {
            let mut client = server.connect().await?;
            let request = server.request(proto::EvaluateRequest {
                project: project.to_string(),
                now,
            });
            client
                .evaluate(request)
                .await
                .map_err(rpc_error)?
                .into_inner()
                .revision
        }
    };
    println!(
        "{}",
        serde_json::json!({ "project": project, "revision": revision })
    );
    Ok(())
}
