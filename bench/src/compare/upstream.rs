//! The fake upstreams scenarios 9 and 10 need beside nginx (a model API that streams events, a
//! git forge): hyper HTTP/1.1 over TLS with the run's upstream leaf, on a loopback port, inside
//! the bench process. Being in the process is the point for scenario 9: the upstream stamps each
//! event with the same monotonic clock the client reads.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::pki::Pki;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// A running upstream; stops accepting when dropped.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handle` on a fresh loopback port over TLS 1.3 with the upstream leaf, HTTP/1.1.
pub(crate) async fn serve<F, Fut>(pki: &Pki, handle: F) -> anyhow::Result<Upstream>
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(pki)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a fake upstream")?;
    let port = listener.local_addr().context("local address")?.port();
    let handle = Arc::new(handle);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, handle) = (acceptor.clone(), handle.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(Upstream { port, task })
}

fn server_config(pki: &Pki) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(&pki.upstream_cert)
        .context("upstream certificate")?
        .collect::<Result<Vec<_>, _>>()
        .context("upstream certificate")?;
    let key = PrivateKeyDer::from_pem_file(Path::new(&pki.upstream_key)).context("upstream key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .context("TLS 1.3")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("upstream certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A response with a fixed body.
pub(crate) fn fixed(status: u16, body: &'static str) -> Response<Body> {
    use http_body_util::BodyExt;
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response
}
