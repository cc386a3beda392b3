//! An `http` tool call: the input JSON sent to a private service through the proxy's explicit
//! listener, as session `tool:<name>` (with labels naming the calling session), so the Rego
//! policy decides, `allow_private` and `connect_to` apply, and the proxy injects the service's
//! credentials. The response body is the result.
//!
//! The proxy tells sessions apart by source address; each call connects from an address of its
//! own in 127.77.0.0/16, registered for the call's duration. `http://` URLs are sent in
//! absolute form; `https://` ones through a CONNECT tunnel, with TLS to the proxy's
//! interception (Cordon's CA is the only root trusted), so the proxy sees and governs the
//! request as it does a sandbox's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::file::{HttpHandler, Tool};
use super::{Answer, CallContext, Outcome, reply, tail};
use crate::proxy_admin::ProxyAdmin;

/// How the controller reaches the proxy for http tools.
#[derive(Debug, Clone)]
pub struct ProxyRoute {
    /// The proxy's explicit listener.
    pub explicit: SocketAddr,
    /// TLS to the proxy's interception: Cordon's CA is the only root trusted. Built once.
    pub tls: Arc<rustls::ClientConfig>,
}

impl ProxyRoute {
    /// Reads the CA certificate at `ca_cert`.
    pub fn new(explicit: SocketAddr, ca_cert: &std::path::Path) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(ca_cert).map_err(|e| {
            format!(
                "cannot read the interception CA {} (start cordon-proxy once to make it): {e}",
                ca_cert.display()
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", ca_cert.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_cert.display()))?;
        }
        // A listener on every address is reached on loopback.
        let explicit = if explicit.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), explicit.port())
        } else {
            explicit
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            explicit,
            tls: Arc::new(tls),
        })
    }
}

/// The next source address for a call: 127.77.0.1 .. 127.77.255.254, in turn from a random
/// start (a restarted controller does not begin where a crashed one left registrations).
/// Concurrent calls never share one: 65 534 calls would have to start within one call's
/// `timeout_ms`.
pub fn next_source() -> IpAddr {
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(rand::random::<u32>() % 65_534));
    let n = next.fetch_add(1, Ordering::Relaxed) % 65_534 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 77, (n >> 8) as u8, (n & 0xff) as u8))
}

/// Whether `source` is one [`next_source`] hands out.
pub fn is_call_source(source: IpAddr) -> bool {
    matches!(source, IpAddr::V4(v4) if v4.octets()[..2] == [127, 77])
}

/// Why a request through the proxy did not get an answer.
#[derive(Debug)]
pub enum Failure {
    /// The proxy refused (policy, SSRF guard, credentials): its status and body.
    Refused(u16, String, String),
    /// Cordon could not make the request.
    Failed(String),
    /// The service answered more than `max_output_kb`.
    TooLarge(String),
}

/// Makes one call of `tool`.
pub async fn call(
    admin: &ProxyAdmin,
    route: &ProxyRoute,
    tool: &Tool,
    handler: &HttpHandler,
    context: &CallContext,
    input: &Value,
) -> Answer {
    let source = next_source();
    if let Err(e) = context.register(admin, &tool.name, source).await {
        tracing::error!(tool = %tool.name, error = %e, "registering an http tool call with the proxy");
        return Answer::error(
            Outcome::Failed,
            "[cordon] the tool's call could not be registered with the proxy (the operator's \
             log says why)",
        );
    }
    let sent = tokio::time::timeout(
        tool.timeout,
        send(route, source, tool, handler, context, input),
    )
    .await;
    CallContext::unregister(admin, &tool.name, source).await;
    match sent {
        Err(_) => Answer::error(
            Outcome::Timeout,
            format!(
                "[cordon] tool {}: {} did not answer within timeout_ms ({} ms)",
                tool.name,
                handler.url,
                tool.timeout.as_millis()
            ),
        ),
        Ok(Err(Failure::TooLarge(why))) => Answer::error(
            Outcome::Error,
            format!("[cordon] tool {}: {why}", tool.name),
        ),
        Ok(Err(Failure::Failed(why))) => Answer::error(
            Outcome::Failed,
            format!("[cordon] tool {}: {why}", tool.name),
        ),
        Ok(Err(Failure::Refused(status, class, body))) => Answer::error(
            Outcome::Refused,
            format!(
                "[cordon] tool {}: the proxy refused the call to {} ({status}, {class}): {}",
                tool.name,
                handler.url,
                tail(&body, 1024)
            ),
        ),
        Ok(Ok((status, body))) if (200..300).contains(&status) => {
            Answer::new(Outcome::Ok, reply::parse(&body))
        }
        Ok(Ok((status, body))) => Answer::error(
            Outcome::Error,
            format!(
                "[cordon] tool {}: {} answered {status}:\n{}",
                tool.name,
                handler.url,
                tail(&body, 4096)
            ),
        ),
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A connection to a URL's server through the proxy, ready for requests.
#[derive(Debug)]
pub struct Opened {
    pub sender: Sender,
    /// The request target: absolute for `http://`, the path in the tunnel for `https://`.
    pub target: String,
    /// As clients send it: the port only when it is not the scheme's.
    pub host_header: String,
}

/// Connects to `url`'s server through the proxy's explicit listener from `source` (which
/// the caller registered): `http://` in absolute form, `https://` in a CONNECT tunnel with TLS
/// to the proxy's interception.
pub async fn open(route: &ProxyRoute, source: IpAddr, url: &http::Uri) -> Result<Opened, Failure> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Failure::Failed(format!("{what} ({}): {e}", route.explicit))
    };
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| failed("socket", &e))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| failed("binding the call's source address", &e))?;
    let stream = socket
        .connect(route.explicit)
        .await
        .map_err(|e| failed("cannot reach the proxy's explicit listener", &e))?;
    stream.set_nodelay(true).ok();
    let host = url.host().unwrap_or_default();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let authority = format!("{bracketed}:{port}");
    let host_header = if url.port_u16().is_some() {
        authority.clone()
    } else {
        bracketed
    };
    let (sender, target) = if https {
        let tunnel = connect_tunnel(stream, &authority).await?;
        let server = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Failure::Failed(format!("{host} is not a TLS server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(route.tls.clone())
            .connect(server, tunnel)
            .await
            .map_err(|e| failed(&format!("TLS to {authority} through the proxy"), &e))?;
        let sender = handshake(TokioIo::new(tls)).await?;
        let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
        (sender, path)
    } else {
        (handshake(TokioIo::new(stream)).await?, url.to_string())
    };
    Ok(Opened {
        sender,
        target,
        host_header,
    })
}

async fn send(
    route: &ProxyRoute,
    source: IpAddr,
    tool: &Tool,
    handler: &HttpHandler,
    context: &CallContext,
    input: &Value,
) -> Result<(u16, String), Failure> {
    let Opened {
        mut sender,
        target,
        host_header,
    } = open(route, source, &handler.url).await?;
    let mut request = http::Request::builder()
        .method(handler.method.clone())
        .uri(target)
        .header(http::header::HOST, &host_header)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::ACCEPT,
            "application/json, text/plain;q=0.9, */*;q=0.1",
        )
        .header("x-cordon-session", &context.session)
        .header("x-cordon-tool", &tool.name)
        .header("x-cordon-tool-use-id", &context.tool_use_id);
    if let Some(agent) = &context.agent_id {
        request = request.header("x-cordon-agent-id", agent);
    }
    for (name, value) in &handler.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(input.to_string())))
        .map_err(|e| Failure::Failed(format!("building the request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Failed(format!("the request failed ({}): {e}", route.explicit)))?;
    let status = response.status().as_u16();
    let refusal = response
        .headers()
        .get("cordon-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(response.into_body(), tool.max_output_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Failure::TooLarge(format!(
                    "the answer is larger than max_output_kb ({} KiB); raise it in the tools file",
                    tool.max_output_bytes / 1024
                ))
            } else {
                Failure::Failed(format!("reading the answer: {e}"))
            }
        })?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    match refusal {
        Some(class) => Err(Failure::Refused(status, class, body)),
        None => Ok((status, body)),
    }
}

async fn handshake<T>(io: T) -> Result<Sender, Failure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Failed(format!("HTTP to the proxy: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "http tool connection ended");
        }
    });
    Ok(sender)
}

/// `CONNECT authority` on `stream`; the tunnel once the proxy accepts it.
async fn connect_tunnel(
    stream: tokio::net::TcpStream,
    authority: &str,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, Failure> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Failed(format!("HTTP to the proxy: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "http tool tunnel ended");
        }
    });
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .header(http::header::HOST, authority)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Failure::Failed(format!("building the CONNECT: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Failed(format!("CONNECT {authority} through the proxy: {e}")))?;
    if response.status() != http::StatusCode::OK {
        let status = response.status().as_u16();
        let class = response
            .headers()
            .get("cordon-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("refused")
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(Failure::Refused(status, class, body));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| Failure::Failed(format!("the CONNECT tunnel to {authority}: {e}")))?;
    Ok(TokioIo::new(upgraded))
}
