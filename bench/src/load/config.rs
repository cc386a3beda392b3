//! What a load run does: where it connects, what it asks for, how hard and for how long.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use http::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How a connection reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// TCP to this address, then TLS with the request's host as SNI: the upstream itself, or a
    /// transparent listener reached directly (it decides by SNI, so no nftables is needed).
    Direct(SocketAddr),
    /// TCP to this explicit proxy, `CONNECT host:port`, then TLS through the tunnel.
    Connect(SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionReuse {
    /// Each worker keeps its connection for as many requests as it can send.
    KeepAlive,
    /// Each request opens (and verifies) a new TLS connection.
    PerRequest,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub route: Route,
    /// The local address connections are made from (a session's source address, which the
    /// proxy maps to the session); None lets the kernel choose.
    pub source: Option<IpAddr>,
    /// The request's host. `{n}` is replaced by a number unique to each connection, so every
    /// connection names a host never seen before (cold certificate minting).
    pub host: String,
    /// The port in the CONNECT target and `:authority`/`Host`.
    pub port: u16,
    pub path: String,
    /// GET, or POST with `body` (sent with a `Content-Length`).
    pub method: http::Method,
    pub body: bytes::Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub protocol: Protocol,
    pub reuse: ConnectionReuse,
    /// Concurrent connections (keep-alive) or concurrent connect-and-request loops.
    pub connections: usize,
    /// Concurrent requests on each HTTP/2 connection (1 for HTTP/1.1).
    pub streams: usize,
    /// The run stops at this duration, or earlier when `requests` have been sent.
    pub duration: Duration,
    pub requests: Option<u64>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl LoadConfig {
    pub fn host_for(&self, n: u64) -> String {
        self.host.replace("{n}", &n.to_string())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 {
            bail!("connections must be at least 1");
        }
        if self.streams == 0 {
            bail!("streams must be at least 1");
        }
        if self.streams > 1 && self.protocol == Protocol::Http1 {
            bail!("several streams per connection need HTTP/2");
        }
        if self.duration.is_zero() {
            bail!("duration must be greater than 0");
        }
        if !self.path.starts_with('/') {
            bail!("path {:?} must start with /", self.path);
        }
        if self.host.is_empty() {
            bail!("host must not be empty");
        }
        Ok(())
    }
}

/// A TLS client trusting only the PEM roots in `roots`, offering the protocol's ALPN.
/// Session resumption is off: "a new TLS connection" means a full handshake, for every system.
pub fn client_tls(roots: &Path, protocol: Protocol) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(roots).with_context(|| format!("reading {}", roots.display()))?;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("{} is not PEM", roots.display()))?;
        store
            .add(cert)
            .with_context(|| format!("a certificate in {} is not a valid root", roots.display()))?;
    }
    if store.is_empty() {
        bail!("{} holds no certificate", roots.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = match protocol {
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
        Protocol::Http2 => vec![b"h2".to_vec()],
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}
