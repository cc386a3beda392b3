//! One verified connection's request handle, over HTTP/1.1 or HTTP/2.

use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::config::{LoadConfig, Protocol};
use super::connect::open_tls_from;

/// One verified connection's request handle.
#[derive(Debug, Clone)]
pub(crate) enum Sender {
    Http1(Arc<tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub(crate) async fn connect(config: &LoadConfig, host: &str) -> anyhow::Result<Self> {
        let tls =
            open_tls_from(config.source, config.route, host, config.port, &config.tls).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        match config.protocol {
            Protocol::Http1 => {
                let (sender, connection) = http1::handshake(io).await.context("HTTP/1.1")?;
                tokio::spawn(connection);
                Ok(Self::Http1(Arc::new(tokio::sync::Mutex::new(sender))))
            }
            Protocol::Http2 => {
                if alpn.as_deref() != Some(b"h2") {
                    bail!("the server did not accept HTTP/2 (ALPN h2) for {host}");
                }
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .context("HTTP/2")?;
                tokio::spawn(connection);
                Ok(Self::Http2(sender))
            }
        }
    }

    /// True once the server has closed the connection (after a `connection: close` answer,
    /// such as a refusal): the next request needs a new connection.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Http1(sender) => sender.try_lock().is_ok_and(|s| s.is_closed()),
            Self::Http2(sender) => sender.is_closed(),
        }
    }

    /// One request (GET, or POST with the body); the status and the body's length once it has been read to the end.
    pub(crate) async fn get(
        &mut self,
        config: &LoadConfig,
        host: &str,
    ) -> anyhow::Result<(u16, u64)> {
        let authority = format!("{host}:{}", config.port);
        let response = match self {
            Self::Http1(sender) => {
                let mut request = Request::builder()
                    .method(config.method.clone())
                    .uri(config.path.as_str())
                    .header(http::header::HOST, &authority);
                for (name, value) in &config.headers {
                    request = request.header(name, value);
                }
                let request = request
                    .body(Full::new(config.body.clone()))
                    .context("building the request")?;
                let mut sender = sender.lock().await;
                sender.ready().await.context("connection closed")?;
                sender
                    .send_request(request)
                    .await
                    .context("HTTP/1.1 request")?
            }
            Self::Http2(sender) => {
                let uri = format!("https://{authority}{}", config.path);
                let mut request = Request::builder().method(config.method.clone()).uri(uri);
                for (name, value) in &config.headers {
                    request = request.header(name, value);
                }
                let request = request
                    .body(Full::new(config.body.clone()))
                    .context("building the request")?;
                sender.ready().await.context("connection closed")?;
                sender
                    .send_request(request)
                    .await
                    .context("HTTP/2 request")?
            }
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut length = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.context("reading the response body")?.data_ref() {
                length += data.len() as u64;
            }
        }
        Ok((status, length))
    }
}
