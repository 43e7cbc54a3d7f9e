//! The gRPC client side of the commands that can ask a running service
//! (`--server`): where a command sends its work, connecting, the bearer
//! token, and mapping a gRPC status to a command failure.

use std::time::Duration;

use crate::limits::MAX_RESPONSE_BYTES;
use crate::proto::project_manager_client::ProjectManagerClient;
use crate::service;
use crate::store::any::StoreUrl;

use super::args::ClientArgs;
use super::CliError;

/// Where a command sends its work: a store, or a running service.
#[derive(Debug)]
pub enum Via {
    /// The store named by `--store`.
    Store(StoreUrl),
    /// The service named by `--server`.
    Server(Server),
}

/// A running service and the token to present to it.
#[derive(Debug)]
pub struct Server {
    address: String,
    token: Option<String>,
    tls_ca: Option<std::path::PathBuf>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Server {
    /// A client connected to the service.
    pub async fn connect(
        &self,
    ) -> Result<ProjectManagerClient<tonic::transport::Channel>, CliError> {
        let uri = match (self.address.contains("://"), &self.tls_ca) {
            (true, _) => self.address.clone(),
            (false, Some(_)) => format!("https://{}", self.address),
            (false, None) => format!("http://{}", self.address),
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
            .map_err(|e| CliError::BadInput(format!("invalid --server {:?}: {e}", self.address)))?;
        if uri.starts_with("https://") {
            let tls =
                service::tls::client_config(self.tls_ca.as_deref()).map_err(CliError::BadInput)?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| CliError::BadInput(format!("TLS setup failed: {e}")))?;
        }
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .connect()
            .await
            .map_err(|e| {
                CliError::Failed(format!("cannot reach the service at {}: {e}", self.address))
            })?;
        Ok(ProjectManagerClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
    }

    /// A request carrying the bearer token, if any.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert("authorization", value);
            }
        }
        request
    }
}

/// Where a command goes: the service if `--server` is given (with the token
/// of `--token-file`, else `PRJMANAGER_TOKEN`), else the store.
pub fn target(store: &StoreUrl, cli: &ClientArgs, server: Option<String>) -> Result<Via, CliError> {
    let Some(address) = server else {
        return Ok(Via::Store(store.clone()));
    };
    let seconds = |value: f64, flag: &str| {
        Duration::try_from_secs_f64(value)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                CliError::BadInput(format!(
                    "invalid {flag} {value}: a positive number of seconds"
                ))
            })
    };
    let connect_timeout = seconds(cli.connect_timeout, "--connect-timeout")?;
    let request_timeout = seconds(cli.request_timeout, "--request-timeout")?;
    let token_file = cli.token_file.clone();
    let token = match token_file {
        Some(path) => Some(service::auth::read_token(&path).map_err(CliError::BadInput)?),
        None => std::env::var("PRJMANAGER_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
    };
    Ok(Via::Server(Server {
        address,
        token,
        tls_ca: cli.tls_ca.clone(),
        connect_timeout,
        request_timeout,
    }))
}

/// A gRPC status as a command failure (`InvalidArgument` is bad input).
pub fn rpc_error(status: tonic::Status) -> CliError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::InvalidArgument => CliError::BadInput(message),
        _ => CliError::Failed(message),
    }
}
