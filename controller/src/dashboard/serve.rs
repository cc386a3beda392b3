//! The dashboard's listener: plain HTTP on loopback or behind a TLS terminator, or TLS on the
//! listener itself (rustls, the certificate and key from `[dashboard] tls_cert`/`tls_key`).

use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::config::Transport;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the dashboard's TLS certificate or key: {0}")]
    Tls(String),
    #[error("the dashboard: {0}")]
    Io(#[from] std::io::Error),
}

/// A rustls server configuration from PEM files.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The listener's TLS, loaded now: a certificate or key that does not load stops the
/// controller at start, not at the first browser.
#[derive(Clone)]
pub struct Listening {
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listening {
    pub fn new(transport: &Transport) -> Result<Self, ServeError> {
        let tls = match transport {
            Transport::Tls { cert, key } => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                tls_config(cert, key)?,
            ))),
            Transport::Loopback | Transport::TerminatedInFront => None,
        };
        Ok(Self { tls })
    }
}

/// How long a client may take to send a request's head: a slow client holds a connection,
/// not the dashboard.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Connections served at once; past it, new ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 512;

/// Serves `app` on `listener` until the process ends: HTTP/1.1 with upgrades (the terminal's
/// WebSocket), TLS when configured, each connection in its own task.
pub async fn serve(
    listener: TcpListener,
    listening: Listening,
    app: Router,
) -> Result<(), ServeError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let tls = listening.tls.clone();
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        // The handshake in the connection's task: a slow client holds up nobody else.
        tokio::spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            match tls {
                None => {
                    let _ = http
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "dashboard TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let _ = http
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_bad_tls_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = tls_config(&cert, &dir.path().join("key.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert.pem"), "{e}");
    }
}
