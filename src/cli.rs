//! The `prjmanager` command line: argument parsing and every command. Most
//! commands work on a store directly (`--store`); `notify`, `state` and
//! `evaluate` can instead ask a running service (`--server`).
//!
//! Exit codes: 0 success, 1 failure (store trouble, not found), 2 bad input.

use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::events;
use crate::jsonl;
use crate::notifier::{self, Notifier, NotifyError};
use crate::projector::derived::{action_stream, action_type, log_stream};
use crate::projector::load::{load, LoadError, Target};
use crate::projector::{self, ProjectorConfig};
use crate::proto::input_event::Event;
use crate::proto::{self, project_manager_client::ProjectManagerClient};
use crate::service::{self, ServeConfig, ServeError, DEFAULT_LISTEN};
use crate::store::any::{AnyStore, StoreUrl, DEFAULT_STORE_URL};
use crate::store::{Direction, EventStore, ExpectedRevision, ReadFrom, StoreError};

/// How many events `import` appends per atomic batch.
pub const IMPORT_CHUNK_EVENTS: usize = 5_000;

/// How many events `export` and `events` read per page.
pub const EXPORT_PAGE_EVENTS: usize = 1_000;

/// The `prjmanager` command line.
#[derive(Debug, Parser)]
#[command(
    name = "prjmanager",
    version,
    about = "Event-sourced LUCI CV Project Manager"
)]
pub struct Cli {
    /// Store URL: sqlite://PATH (embedded, the default) or memory://.
    #[arg(long, global = true, env = "PRJMANAGER_STORE", default_value = DEFAULT_STORE_URL)]
    pub store: StoreUrl,
    /// A file holding the bearer token: `serve` requires it on every RPC but
    /// health; `--server` calls present it (else `PRJMANAGER_TOKEN`).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `prjmanager` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate an event and append it to the project's stream.
    Notify {
        /// Which Notifier call.
        kind: NotifyKind,
        /// The LUCI project (run events are routed by their run id; if given it must match).
        #[arg(long)]
        project: Option<String>,
        /// The event payload as proto3 JSON (the `data` of a replay line); `-` reads stdin.
        #[arg(long)]
        json: Option<String>,
        /// Send through a running service (`host:port`) instead of the store.
        #[arg(long)]
        server: Option<String>,
    },
    /// Run the service: gRPC, projector and scheduler.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Keep at most this many project states in memory.
        #[arg(long, default_value_t = 10_000)]
        max_cached_projects: usize,
        /// Append no markers on a timer: markers come only from `Evaluate`
        /// (`prjmanager evaluate P --now T --server ADDR`), for recordings.
        #[arg(long)]
        no_scheduler: bool,
    },
    /// Print a project's state (the `ProjectLog` shape) as JSON.
    State {
        /// The LUCI project.
        project: String,
        /// The eversion to rebuild (default: the latest).
        #[arg(long)]
        eversion: Option<i64>,
        /// Ask a running service (`host:port`) instead of folding the store.
        #[arg(long)]
        server: Option<String>,
    },
    /// List a project's stored ProjectLogs, one JSON line each.
    Logs {
        /// The LUCI project.
        project: String,
    },
    /// List a project's actions as JSON lines `{"eversion":N,"type":…,"data":{…}}`.
    Actions {
        /// The LUCI project.
        project: String,
        /// Only the actions of this eversion.
        #[arg(long)]
        eversion: Option<i64>,
    },
    /// Append an `Evaluated` marker for a project now.
    Evaluate {
        /// The LUCI project.
        project: String,
        /// The marker's clock (RFC 3339; default: now).
        #[arg(long)]
        now: Option<String>,
        /// Ask a running service (`host:port`) instead of appending to the store.
        #[arg(long)]
        server: Option<String>,
    },
    /// Validate a whole replay file, then append its events to the store.
    Import {
        /// The JSONL replay file (`-` reads stdin).
        file: String,
    },
    /// Write a project's stream as a replay file.
    Export {
        /// The LUCI project.
        project: String,
        /// Stop after this revision.
        #[arg(long)]
        to_revision: Option<u64>,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// List a project's events, one JSON line each.
    Events {
        /// The LUCI project.
        project: String,
        /// First revision to list.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most events to list.
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// The Notifier calls available from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NotifyKind {
    /// `ConfigUpdated`: `{"config": ProjectConfig}`.
    Config,
    /// `Poked`: no payload.
    Poke,
    /// `ClsUpdated`: `{"cls": [ChangeList, …]}`.
    ClsUpdated,
    /// `RunCreated`: `{"run": Run}`.
    RunCreated,
    /// `RunFinished`: `{"runId": …, "status": …, "endTime": …}`.
    RunFinished,
    /// `PurgeCompleted`: `{"operationId": …, "clid": …}`.
    PurgeCompleted,
    /// `TriggeringClDepsCompleted`: `{"operationId": …, "origin": …, …}`.
    DepsCompleted,
}

impl NotifyKind {
    fn event_type(self) -> &'static str {
        match self {
            Self::Config => "ConfigUpdated",
            Self::Poke => "Poked",
            Self::ClsUpdated => "ClsUpdated",
            Self::RunCreated => "RunCreated",
            Self::RunFinished => "RunFinished",
            Self::PurgeCompleted => "PurgeCompleted",
            Self::DepsCompleted => "TriggeringClDepsCompleted",
        }
    }
}

/// A command failure, classified for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: exit code 2, nothing written.
    #[error("{0}")]
    BadInput(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::BadInput(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<NotifyError> for CliError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Invalid(v) => Self::BadInput(v.to_string()),
            NotifyError::Store(s) => s.into(),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve { .. }));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Structured logs on stderr, filtered by `RUST_LOG` (default: `info` for
/// the service, `warn` for the other commands).
fn init_logging(service: bool) {
    let default = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Notify {
            kind,
            project,
            json,
            server,
        } => {
            let target = target(&cli.store, server, cli.token_file)?;
            notify(&target, kind, project, json).await
        }
        Command::Serve {
            listen,
            max_cached_projects,
            no_scheduler,
        } => {
            let config = ServeConfig {
                store: cli.store,
                listen,
                token_file: cli.token_file,
                projector: ProjectorConfig {
                    max_cached_projects,
                    schedule_markers: !no_scheduler,
                },
            };
            service::serve(config, service::shutdown_signal())
                .await
                .map_err(|e| match e {
                    ServeError::Config(m) => CliError::BadInput(m),
                    ServeError::Failed(m) => CliError::Failed(m),
                })
        }
        Command::State {
            project,
            eversion,
            server,
        } => {
            let target = target(&cli.store, server, cli.token_file)?;
            state(&target, &project, eversion).await
        }
        Command::Logs { project } => logs(&cli.store, &project).await,
        Command::Actions { project, eversion } => actions(&cli.store, &project, eversion).await,
        Command::Evaluate {
            project,
            now,
            server,
        } => {
            let target = target(&cli.store, server, cli.token_file)?;
            evaluate(&target, &project, now).await
        }
        Command::Import { file } => import(&cli.store, &file).await,
        Command::Export {
            project,
            to_revision,
            output,
        } => export(&cli.store, &project, to_revision, output).await,
        Command::Events {
            project,
            from,
            limit,
        } => list_events(&cli.store, &project, from, limit).await,
    }
}

fn open_store(url: &StoreUrl) -> Result<AnyStore, CliError> {
    AnyStore::open(url).map_err(|e| CliError::Failed(format!("cannot open the store: {e}")))
}

fn read_input(path: &str) -> Result<String, CliError> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::BadInput(format!("cannot read stdin: {e}")))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| CliError::BadInput(format!("cannot read {path}: {e}")))?;
    }
    Ok(text)
}

async fn notify(
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

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} events ({per_sec}, {eta})")
            .expect("static progress template"),
    );
    bar.set_message(what.to_string());
    bar
}

async fn import(url: &StoreUrl, file: &str) -> Result<(), CliError> {
    let parsed = if file == "-" {
        jsonl::parse(BufReader::new(std::io::stdin().lock()), "<stdin>")
    } else {
        let handle = std::fs::File::open(file)
            .map_err(|e| CliError::BadInput(format!("cannot open {file}: {e}")))?;
        jsonl::parse(BufReader::new(handle), file)
    }
    .map_err(|e| CliError::BadInput(e.to_string()))?;
    let store = open_store(url)?;
    let stream = notifier::project_stream(&parsed.header.project);
    let bar = progress(parsed.events.len() as u64, "importing");
    let mut last = None;
    for chunk in parsed.events.chunks(IMPORT_CHUNK_EVENTS) {
        let expected = match chunk[0].revision {
            Some(0) => ExpectedRevision::NoStream,
            Some(r) => ExpectedRevision::Exact(r - 1),
            None => ExpectedRevision::Any,
        };
        let batch = chunk.iter().map(jsonl::FileEvent::to_new_event).collect();
        let result = store
            .append(&stream, expected, batch)
            .await
            .map_err(|e| match e {
                StoreError::WrongExpectedVersion { .. } | StoreError::DuplicateEventId { .. } => {
                    CliError::BadInput(format!(
                        "{file}:{}: the stream {stream} does not continue as the file expects: {e}",
                        chunk[0].line
                    ))
                }
                other => other.into(),
            })?;
        last = Some(result.next_revision);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    eprintln!(
        "imported {} events into {stream}{}",
        parsed.events.len(),
        last.map_or(String::new(), |r| format!(" (last revision {r})"))
    );
    Ok(())
}

async fn export(
    url: &StoreUrl,
    project: &str,
    to_revision: Option<u64>,
    output: Option<PathBuf>,
) -> Result<(), CliError> {
    notifier::validate_project(project).map_err(|e| CliError::BadInput(e.to_string()))?;
    let store = open_store(url)?;
    let stream = notifier::project_stream(project);
    let Some(head) = store.stream_revision(&stream).await? else {
        return Err(CliError::Failed(format!(
            "project {project:?} has no events in this store"
        )));
    };
    let last = to_revision.map_or(head, |r| r.min(head));
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    jsonl::write_header(&mut out, project)?;
    let bar = progress(last + 1, "exporting");
    copy_events(&store, &stream, 0, last, &mut out, &bar).await?;
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}

async fn copy_events(
    store: &AnyStore,
    stream: &str,
    from: u64,
    last: u64,
    out: &mut impl Write,
    bar: &ProgressBar,
) -> Result<(), CliError> {
    let mut next = from;
    while next <= last {
        let page = store
            .read_stream(
                stream,
                ReadFrom::Revision(next),
                Direction::Forwards,
                EXPORT_PAGE_EVENTS,
            )
            .await?;
        if page.is_empty() {
            break;
        }
        for event in page.iter().take_while(|e| e.revision <= last) {
            jsonl::write_event(out, event).map_err(|e| CliError::Failed(e.to_string()))?;
            next = event.revision + 1;
            bar.inc(1);
        }
        if page.last().is_some_and(|e| e.revision >= last) {
            break;
        }
    }
    Ok(())
}

async fn list_events(
    url: &StoreUrl,
    project: &str,
    from: u64,
    limit: Option<usize>,
) -> Result<(), CliError> {
    notifier::validate_project(project).map_err(|e| CliError::BadInput(e.to_string()))?;
    let store = open_store(url)?;
    let stream = notifier::project_stream(project);
    let Some(head) = store.stream_revision(&stream).await? else {
        return Err(CliError::Failed(format!(
            "project {project:?} has no events in this store"
        )));
    };
    let last = match limit {
        Some(0) => return Ok(()),
        Some(n) => head.min(from.saturating_add(n as u64 - 1)),
        None => head,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    copy_events(
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

/// Where a command sends its work: a store, or a running service.
#[derive(Debug)]
enum Via {
    Store(StoreUrl),
    Server(Server),
}

/// A running service and the token to present to it.
#[derive(Debug)]
struct Server {
    address: String,
    token: Option<String>,
}

impl Server {
    async fn connect(&self) -> Result<ProjectManagerClient<tonic::transport::Channel>, CliError> {
        let uri = if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("http://{}", self.address)
        };
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| CliError::BadInput(format!("invalid --server {:?}: {e}", self.address)))?;
        let channel = endpoint.connect().await.map_err(|e| {
            CliError::Failed(format!("cannot reach the service at {}: {e}", self.address))
        })?;
        Ok(ProjectManagerClient::new(channel))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert("authorization", value);
            }
        }
        request
    }
}

fn target(
    store: &StoreUrl,
    server: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<Via, CliError> {
    let Some(address) = server else {
        return Ok(Via::Store(store.clone()));
    };
    let token = match token_file {
        Some(path) => Some(service::auth::read_token(&path).map_err(CliError::BadInput)?),
        None => std::env::var("PRJMANAGER_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
    };
    Ok(Via::Server(Server { address, token }))
}

fn rpc_error(status: tonic::Status) -> CliError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::InvalidArgument => CliError::BadInput(message),
        _ => CliError::Failed(message),
    }
}

fn load_error(err: LoadError) -> CliError {
    match err {
        LoadError::NoSuchEversion { .. } => CliError::BadInput(err.to_string()),
        other => CliError::Failed(other.to_string()),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

async fn state(target: &Via, project: &str, eversion: Option<i64>) -> Result<(), CliError> {
    notifier::validate_project(project).map_err(|e| CliError::BadInput(e.to_string()))?;
    let log = match target {
        Via::Store(url) => {
            let store = open_store(url)?;
            if store
                .stream_revision(&notifier::project_stream(project))
                .await?
                .is_none()
            {
                return Err(CliError::Failed(format!(
                    "project {project:?} has no events in this store"
                )));
            }
            let loaded = load(
                &store,
                project,
                eversion.map_or(Target::Latest, Target::Eversion),
            )
            .await
            .map_err(load_error)?;
            let reasons = match (eversion, &loaded.last_outcome) {
                (Some(_), Some(outcome)) => outcome.evaluation.reasons.clone(),
                _ => Vec::new(),
            };
            service::rpc_project_log(&loaded.state, &reasons)
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
    print_json(&log)
}

async fn read_stream_all(
    store: &AnyStore,
    stream: &str,
) -> Result<Vec<crate::store::RecordedEvent>, CliError> {
    let mut events = Vec::new();
    loop {
        let page = store
            .read_stream(
                stream,
                ReadFrom::Revision(
                    events
                        .last()
                        .map_or(0, |e: &crate::store::RecordedEvent| e.revision + 1),
                ),
                Direction::Forwards,
                EXPORT_PAGE_EVENTS,
            )
            .await?;
        if page.is_empty() {
            return Ok(events);
        }
        events.extend(page);
    }
}

fn decode_derived<M: prost::Message + Default>(
    event: &crate::store::RecordedEvent,
) -> Result<M, CliError> {
    M::decode(event.data.as_slice()).map_err(|e| {
        CliError::Failed(format!(
            "{} revision {} does not decode: {e}",
            event.stream, event.revision
        ))
    })
}

async fn logs(url: &StoreUrl, project: &str) -> Result<(), CliError> {
    notifier::validate_project(project).map_err(|e| CliError::BadInput(e.to_string()))?;
    let store = open_store(url)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for event in read_stream_all(&store, &log_stream(project)).await? {
        let log: proto::ProjectLog = decode_derived(&event)?;
        serde_json::to_writer(&mut out, &log).map_err(|e| CliError::Failed(e.to_string()))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// One line of `actions` output, fields in this order.
#[derive(serde::Serialize)]
pub struct ActionLine {
    /// The eversion that produced the action.
    pub eversion: i64,
    /// The action's type name.
    #[serde(rename = "type")]
    pub action_type: &'static str,
    /// The action message in proto3 JSON.
    pub data: serde_json::Value,
}

/// One action as the JSON line `{"eversion":N,"type":"CreateRun","data":{…}}`.
pub fn action_line(action: &proto::Action) -> ActionLine {
    use proto::action::Action as A;
    let Some(kind) = &action.action else {
        return ActionLine {
            eversion: action.eversion,
            action_type: "Unknown",
            data: serde_json::json!({}),
        };
    };
    let data = match kind {
        A::CreateRun(m) => serde_json::to_value(m),
        A::PurgeCl(m) => serde_json::to_value(m),
        A::TriggerClDeps(m) => serde_json::to_value(m),
        A::CancelRuns(m) => serde_json::to_value(m),
        A::UpdateRunsConfig(m) => serde_json::to_value(m),
        A::PokeRuns(m) => serde_json::to_value(m),
        A::PokePoller(m) => serde_json::to_value(m),
    }
    .expect("generated proto3 JSON serialisation cannot fail");
    ActionLine {
        eversion: action.eversion,
        action_type: action_type(kind),
        data,
    }
}

async fn actions(url: &StoreUrl, project: &str, eversion: Option<i64>) -> Result<(), CliError> {
    notifier::validate_project(project).map_err(|e| CliError::BadInput(e.to_string()))?;
    let store = open_store(url)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for event in read_stream_all(&store, &action_stream(project)).await? {
        let action: proto::Action = decode_derived(&event)?;
        if eversion.is_some_and(|e| e != action.eversion) {
            continue;
        }
        serde_json::to_writer(&mut out, &action_line(&action))
            .map_err(|e| CliError::Failed(e.to_string()))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

async fn evaluate(target: &Via, project: &str, now: Option<String>) -> Result<(), CliError> {
    notifier::validate_project(project).map_err(|e| CliError::BadInput(e.to_string()))?;
    let now = match now {
        Some(text) => Some(
            serde_json::from_value::<pbjson_types::Timestamp>(serde_json::Value::String(
                text.clone(),
            ))
            .map_err(|e| CliError::BadInput(format!("invalid --now {text:?}: {e}")))?,
        ),
        None => None,
    };
    let revision = match target {
        Via::Store(url) => {
            let store = open_store(url)?;
            let stream = notifier::project_stream(project);
            if store.stream_revision(&stream).await?.is_none() {
                return Err(CliError::Failed(format!(
                    "project {project:?} has no events in this store"
                )));
            }
            let loaded = load(&store, project, Target::Latest)
                .await
                .map_err(load_error)?;
            let (expected, marker) =
                projector::prepare_marker(&loaded.state, now.unwrap_or_else(projector::wall_clock));
            let event = notifier::new_event(
                &proto::input_event::Event::Evaluated(marker),
                uuid::Uuid::new_v4(),
                "cli",
            );
            store
                .append(&stream, expected, vec![event])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
