//! The `prjmanager` command line: [`args`] defines the arguments, [`commands`]
//! runs them, [`client`] talks to a running service. Most commands work on
//! a store directly (`--store`); `notify`, `state` and `evaluate` can instead
//! ask a running service (`--server`).
//!
//! Exit codes: 0 success, 1 failure (store trouble, not found), 2 bad input.

pub mod args;
pub mod client;
pub mod commands;

use clap::Parser;

use crate::notifier::NotifyError;
use std::time::Duration;

use crate::projector::{ProjectorConfig, RestartPolicy};
use crate::service::{self, ServeConfig, ServeError};
use crate::store::StoreError;

pub use args::{Cli, Command, LogFormat, NotifyKind};
use client::{target, Via};

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
            NotifyError::UnknownProject(_) => Self::Failed(e.to_string()),
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
    init_logging(matches!(cli.command, Command::Serve { .. }), cli.log_format);
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
/// the service, `warn` for the other commands): text, with colour codes only
/// when stderr is a terminal, or JSON lines.
fn init_logging(service: bool, format: LogFormat) {
    use std::io::IsTerminal;
    let default = if service { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs one parsed command.
pub async fn run(mut cli: Cli) -> Result<(), CliError> {
    cli.store = cli.store.with_max_append_bytes(cli.max_append_bytes);
    match cli.command {
        Command::Notify {
            kind,
            project,
            json,
            server,
        } => {
            let target = target(&cli.store, &cli.client, server)?;
            commands::notify(&target, kind, project, json).await
        }
        Command::Serve {
            listen,
            max_cached_projects,
            no_scheduler,
            allow_any_now,
            allow_unauthenticated,
            tls_cert,
            tls_key,
            retry_deadline_secs,
            give_up_after_secs,
            metrics_listen,
        } => {
            let config = ServeConfig {
                store: cli.store,
                listen,
                token_file: cli.client.token_file,
                projector: ProjectorConfig {
                    max_cached_projects,
                    schedule_markers: !no_scheduler,
                    retry_deadline: Duration::from_secs(retry_deadline_secs),
                    restart: RestartPolicy {
                        give_up_after: Duration::from_secs(give_up_after_secs),
                        ..RestartPolicy::default()
                    },
                },
                allow_any_now,
                allow_unauthenticated,
                tls: tls_cert.zip(tls_key),
                metrics_listen,
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
            let target = target(&cli.store, &cli.client, server)?;
            commands::state(&target, &project, eversion).await
        }
        Command::Quarantined { server } => {
            let Via::Server(server) = target(&cli.store, &cli.client, Some(server))? else {
                unreachable!("a --server address makes a server target");
            };
            commands::quarantined(&server).await
        }
        Command::Release { project, server } => {
            let Via::Server(server) = target(&cli.store, &cli.client, Some(server))? else {
                unreachable!("a --server address makes a server target");
            };
            commands::release(&server, &project).await
        }
        Command::Logs { project } => commands::logs(&cli.store, &project).await,
        Command::Actions { project, eversion } => {
            commands::actions(&cli.store, &project, eversion).await
        }
        Command::Evaluate {
            project,
            now,
            server,
            allow_any_now,
        } => {
            let target = target(&cli.store, &cli.client, server)?;
            commands::evaluate(&target, &project, now, allow_any_now).await
        }
        Command::Import {
            file,
            allow_any_now,
        } => commands::import(&cli.store, &file, allow_any_now).await,
        Command::Export {
            project,
            to_revision,
            output,
        } => commands::export(&cli.store, &project, to_revision, output).await,
        Command::Events {
            project,
            from,
            limit,
        } => commands::list_events(&cli.store, &project, from, limit).await,
    }
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
