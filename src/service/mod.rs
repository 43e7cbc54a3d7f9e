//! The imperative shell: the gRPC server (`prjmanager.v1.ProjectManager` and
//! the standard health service), bearer-token auth and graceful shutdown.
//!
//! `serve` opens the store, starts the projector, listens, and on SIGINT or
//! SIGTERM stops accepting, finishes in-flight appends and folds, and
//! returns.

pub mod auth;
mod rpc;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::notifier::Notifier;
use crate::projector::{self, ProjectorConfig};
use crate::proto::project_manager_server::ProjectManagerServer;
use crate::store::any::{AnyStore, StoreUrl};

pub use rpc::PmService;

/// After SIGINT/SIGTERM, in-flight RPCs get this long to finish before the
/// remaining connections are closed.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The address the service listens on by default (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50551";

/// Settings of `prjmanager serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the events are stored.
    pub store: StoreUrl,
    /// Where to listen.
    pub listen: SocketAddr,
    /// A file holding the bearer token every RPC but health must carry.
    pub token_file: Option<PathBuf>,
    /// Projector settings.
    pub projector: ProjectorConfig,
    /// `Evaluate` may take any `now` (else at most `limits::MAX_CLOCK_SKEW`
    /// past the wall clock).
    pub allow_any_now: bool,
    /// Listen on a non-loopback address without a token (else refused).
    pub allow_unauthenticated: bool,
    /// Serve TLS with this PEM certificate chain and private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    pub metrics_listen: Option<SocketAddr>,
}

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is wrong (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The service failed while running (exit code 1).
    #[error("{0}")]
    Failed(String),
}

/// Resolves when SIGINT or SIGTERM arrives. The handlers are installed when
/// this is called (not when the future is first polled), so a signal sent
/// as soon as `serve` says it is listening is not missed.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        #[cfg(unix)]
        {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                (terminate, interrupt) => {
                    if let Err(err) = terminate.and(interrupt) {
                        tracing::warn!(error = %err, "cannot listen for SIGTERM/SIGINT; waiting for Ctrl-C");
                    }
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the service until `shutdown` resolves.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let token = match &config.token_file {
        Some(path) => Some(auth::read_token(path).map_err(ServeError::Config)?),
        None => None,
    };
    if token.is_none() && !config.listen.ip().is_loopback() && !config.allow_unauthenticated {
        return Err(ServeError::Config(format!(
            "refusing to serve {} without a token: anyone who reaches it could write events; \
             pass --token-file FILE, or --allow-unauthenticated to serve it open",
            config.listen
        )));
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key).map_err(ServeError::Config)?),
        None => None,
    };
    let store = AnyStore::open(&config.store)
        .map_err(|e| ServeError::Failed(format!("cannot open the store: {e}")))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Failed(e.to_string()))?;
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(address) = config.metrics_listen {
        let metrics_listener = TcpListener::bind(address).await.map_err(|e| {
            ServeError::Config(format!("cannot listen on {address} for metrics: {e}"))
        })?;
        let bound = metrics_listener
            .local_addr()
            .map_err(|e| ServeError::Failed(e.to_string()))?;
        tokio::spawn(async move {
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            if let Err(err) = crate::metrics::serve_metrics(metrics_listener, stopped).await {
                tracing::error!(error = %err, "the metrics endpoint failed");
            }
        });
        tracing::info!(address = %bound, "metrics on /metrics");
        eprintln!("prjmanager metrics on {bound}");
    }

    let (handle, requests) = projector::channel();
    let (stop_projector, projector_stopped) = watch::channel(false);
    let (status_sender, status) = watch::channel(projector::Status::Starting);
    let mut projector_task = tokio::spawn(projector::supervise(
        store.clone(),
        config.projector.clone(),
        requests,
        projector_stopped,
        status_sender,
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(status, health_reporter));
    let service = PmService::new(Notifier::new(store.clone(), "grpc"), handle, store.clone())
        .allow_any_now(config.allow_any_now);
    let interceptor = auth::BearerAuth::new(token);
    tracing::info!(address = %local, store = ?config.store, auth = interceptor.enabled(), tls = tls.is_some(), "prjmanager listening");
    // The line tests and scripts wait for; the address is the bound one.
    eprintln!("prjmanager listening on {local}");

    // Server reflection (v1 and the v1alpha older tools use) needs no token,
    // like health: it describes the API, it reads no data.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Failed(format!("cannot build gRPC reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Failed(format!("cannot build gRPC reflection: {e}")))?;
    let (stop_accepting, stopped_accepting) = tokio::sync::oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            ProjectManagerServer::new(service)
                .max_decoding_message_size(crate::limits::MAX_REQUEST_BYTES),
            interceptor,
        ));
    let stopped = async {
        let _ = stopped_accepting.await;
    };
    let mut server: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(tls) => {
            Box::pin(router.serve_with_incoming_shutdown(tls::incoming(listener, tls), stopped))
        }
        None => {
            Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped))
        }
    };
    let mut projector_result = None;
    let result = tokio::select! {
        result = &mut server => result,
        ended = &mut projector_task => {
            // It only ends by itself when it gave up.
            projector_result = Some(ended);
            let _ = stop_accepting.send(());
            tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.unwrap_or(Ok(()))
        }
        () = shutdown => {
            let _ = stop_accepting.send(());
            // Graceful shutdown waits for every connection to close; a client
            // that keeps an idle connection open must not hold the service.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_metrics.send(());
    tracing::info!("no longer accepting requests; finishing folds");
    let _ = stop_projector.send(true);
    let projector_result = match projector_result {
        Some(ended) => ended,
        None => projector_task.await,
    };
    let projector_failure = match projector_result {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(err) => Some(format!("the projector task failed: {err}")),
    };
    if let AnyStore::Embedded(embedded) = &store {
        if let Err(err) = embedded.close().await {
            tracing::error!(error = %err, "closing the store failed");
        }
    }
    result.map_err(|e| ServeError::Failed(format!("gRPC server failed: {e}")))?;
    if let Some(reason) = projector_failure {
        return Err(ServeError::Failed(format!(
            "the projector did not stop cleanly: {reason}"
        )));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps the health status of `prjmanager.v1.ProjectManager` in step with
/// the projector: `SERVING` while it runs, `NOT_SERVING` otherwise.
async fn report_health(
    mut status: watch::Receiver<projector::Status>,
    mut reporter: tonic_health::server::HealthReporter,
) {
    loop {
        let running = matches!(*status.borrow_and_update(), projector::Status::Running);
        if running {
            reporter
                .set_serving::<ProjectManagerServer<PmService<AnyStore>>>()
                .await;
        } else {
            reporter
                .set_not_serving::<ProjectManagerServer<PmService<AnyStore>>>()
                .await;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
