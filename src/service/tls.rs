//! TLS for the gRPC server (`serve --tls-cert --tls-key`) and the client of
//! `--server https://…` (`--tls-ca`), with rustls and its `ring` provider.
//!
//! The server terminates TLS itself (a `tokio-rustls` acceptor in front of
//! tonic) with a provider it passes explicitly, instead of tonic's
//! `ServerTlsConfig`, which would need rustls's process-wide default
//! provider: the EventStoreDB client installs that one on first connect and
//! panics if another is already there. Handshakes run concurrently, each
//! bounded by [`HANDSHAKE_TIMEOUT`]; a failed one is logged and dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's certificate chain and private key, read from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
    };
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "key")?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no PEM certificate", cert.display()));
    }
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?
        .ok_or_else(|| format!("{}: holds no PEM private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)
    .map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate and key: {e}",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The accepted connections of `listener`, after their TLS handshake.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                // The server stopped: stop accepting (and free the port).
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => tracing::info!(%peer, error = %err, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// The client's TLS settings for `--server https://…`: trust the PEM
/// certificates of `ca` (else the system's roots, as tonic's defaults do).
pub fn client_config(ca: Option<&Path>) -> Result<tonic::transport::ClientTlsConfig, String> {
    // The CLI's client process has no EventStoreDB client: installing the
    // default provider here cannot clash with it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = tonic::transport::ClientTlsConfig::new().with_native_roots();
    let Some(ca) = ca else {
        return Ok(config);
    };
    let pem =
        std::fs::read(ca).map_err(|e| format!("cannot read the TLS CA {}: {e}", ca.display()))?;
    Ok(config.ca_certificate(tonic::transport::Certificate::from_pem(pem)))
}
