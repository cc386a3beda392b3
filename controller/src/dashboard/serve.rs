//! The dashboard's listener: plain HTTP on loopback or behind a TLS terminator, or TLS on the
//! listener itself (rustls, the certificate and key from `[dashboard] tls_cert`/`tls_key`).

use std::net::SocketAddr;
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

/// Serves `app` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    listening: Listening,
    app: Router,
) -> Result<(), ServeError> {
    let Some(acceptor) = listening.tls else {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await?;
        return Ok(());
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        // Each connection's handshake in its own task: a slow client holds up nobody else.
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "dashboard TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
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
