//! The `prjmanager` command line's arguments (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::service::DEFAULT_LISTEN;
use crate::store::any::{StoreUrl, DEFAULT_STORE_URL};

/// The `prjmanager` command line.
#[derive(Debug, Parser)]
#[command(
    name = "prjmanager",
    version,
    about = "Event-sourced LUCI CV Project Manager"
)]
pub struct Cli {
    /// Store URL: sqlite://PATH (embedded, the default), memory:// or an
    /// EventStoreDB connection string (esdb://HOST:PORT?tls=false).
    #[arg(long, global = true, env = "PRJMANAGER_STORE", default_value = DEFAULT_STORE_URL)]
    pub store: StoreUrl,
    /// EventStoreDB stores: the largest append the server accepts, in
    /// bytes (its MaxAppendSize: 1 MiB by default up to 24.10 / KurrentDB
    /// 25.0, 256 MiB from 25.1); `import` and derived writes split larger
    /// batches into several appends.
    #[arg(
        long,
        global = true,
        env = "PRJMANAGER_MAX_APPEND_BYTES",
        default_value_t = crate::store::esdb::DEFAULT_MAX_APPEND_BYTES,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_append_bytes: u64,
    /// The token and the client's timeouts.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Log lines on stderr as text (no colour codes unless stderr is a
    /// terminal) or as one JSON object per line, for log shippers.
    #[arg(long, global = true, env = "PRJMANAGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The bearer token (`serve` requires it, `--server` calls present it) and
/// the timeouts of `--server` calls.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// A file holding the bearer token: `serve` requires it on every RPC but
    /// health; `--server` calls present it (else `PRJMANAGER_TOKEN`).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// `--server` calls: trust this PEM CA certificate and use TLS
    /// (`https://`); without it an `https://` address uses the system roots.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// `--server` calls: seconds to wait for the connection.
    #[arg(long, global = true, default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// `--server` calls: seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub request_timeout: f64,
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
        /// Serve a non-loopback `--listen` address without `--token-file`
        /// (refused otherwise).
        #[arg(long)]
        allow_unauthenticated: bool,
        /// Serve TLS with this PEM certificate chain (needs `--tls-key`).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Accept a marker `now` any time ahead of the wall clock (else at
        /// most 5 minutes ahead), for offline work and recordings.
        #[arg(long)]
        allow_any_now: bool,
        /// Serve Prometheus metrics (`GET /metrics`) on this address; without
        /// a value, on 127.0.0.1:9464. Off by default.
        #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
        metrics_listen: Option<SocketAddr>,
        /// Retry a failing store call this many seconds before the projector
        /// restarts.
        #[arg(long, default_value_t = 30)]
        retry_deadline_secs: u64,
        /// Exit non-zero when the projector has kept failing (restarted with
        /// backoff) for this many seconds.
        #[arg(long, default_value_t = 120)]
        give_up_after_secs: u64,
    },
    /// List the projects a running service found quarantined (their stream
    /// holds an event the fold rejects), one JSON line each.
    Quarantined {
        /// The service (`host:port`).
        #[arg(long)]
        server: String,
    },
    /// Make a running service forget a project's quarantine and re-load it
    /// from its stream (after a fix); fails if the stream is still rejected.
    Release {
        /// The LUCI project.
        project: String,
        /// The service (`host:port`).
        #[arg(long)]
        server: String,
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
        /// Accept a marker `now` any time ahead of the wall clock (else at
        /// most 5 minutes ahead), for offline work and recordings.
        #[arg(long)]
        allow_any_now: bool,
    },
    /// Validate a whole replay file, then append its events to the store.
    Import {
        /// The JSONL replay file (`-` reads stdin).
        file: String,
        /// Accept a marker `now` any time ahead of the wall clock (else at
        /// most 5 minutes ahead), for offline work and recordings.
        #[arg(long)]
        allow_any_now: bool,
    },
    /// Write a project's stream as a replay file.
    Export {
        /// The LUCI project.
        project: String,
        /// Stop after this revision.
        #[arg(long)]
        to_revision: Option<u64>,
        /// Write to this file instead of stdout (`-` is stdout). The file
        /// appears only once every event is written.
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
    /// The event type name this call appends.
    pub fn event_type(self) -> &'static str {
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
