//! The gRPC client side of the commands that can ask a running service
//! (`--server`): where a command sends its work, connecting, the bearer
//! token, and mapping a gRPC status to a command failure.

use std::path::PathBuf;

use crate::proto::project_manager_client::ProjectManagerClient;
use crate::service;
use crate::store::any::StoreUrl;

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
}

impl Server {
    /// A client connected to the service.
    pub async fn connect(
        &self,
    ) -> Result<ProjectManagerClient<tonic::transport::Channel>, CliError> {
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
pub fn target(
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

/// A gRPC status as a command failure (`InvalidArgument` is bad input).
pub fn rpc_error(status: tonic::Status) -> CliError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::InvalidArgument => CliError::BadInput(message),
        _ => CliError::Failed(message),
    }
}
