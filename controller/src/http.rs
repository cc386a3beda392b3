//! The controller's HTTP clients (hyper): the proxy's admin API and the sandbox agents.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a streamed body waits for `100 Continue` before it is sent anyway (curl's wait).
pub const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// An HTTP/1.1 client for plain-HTTP peers on the host and the sandbox links.
#[derive(Debug, Clone)]
pub struct HttpClient {
    /// Boxed bodies: whole ones ([`HttpClient::send`]) and streamed ones
    /// ([`HttpClient::send_stream`]) share one connection pool.
    inner: Client<HttpConnector, UnsyncBoxBody<Bytes, std::io::Error>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

impl Default for HttpClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl HttpClient {
    /// Sends a request; returns the response with its body still streaming.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> Result<http::Response<hyper::body::Incoming>, HttpError> {
        let transport = |message: String| HttpError::Transport {
            url: url.to_string(),
            message,
        };
        let mut request = http::Request::builder().method(method).uri(url);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(
                Full::new(Bytes::from(body.unwrap_or_default()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|e| transport(e.to_string()))?;
        self.inner
            .request(request)
            .await
            .map_err(|e| transport(e.to_string()))
    }

    /// Sends a request whose body is sent as it is produced (a file being uploaded), never
    /// held whole in memory; returns the response with its body still streaming.
    ///
    /// With `Expect: 100-continue`: the body waits for the server's `100 Continue` (or
    /// [`CONTINUE_WAIT`], for a server that sends none), so a request refused from its head
    /// alone (a file that exists, a bad path) is answered before any of the body is sent, and
    /// its answer is not lost to a connection the server closed on unread bytes.
    pub async fn send_stream<B>(
        &self,
        method: http::Method,
        url: &str,
        bearer: Option<&str>,
        content_type: &str,
        body: B,
    ) -> Result<http::Response<hyper::body::Incoming>, HttpError>
    where
        B: hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
    {
        use futures_util::StreamExt;
        let transport = |message: String| HttpError::Transport {
            url: url.to_string(),
            message,
        };
        let (go, proceed) = tokio::sync::oneshot::channel::<()>();
        let go = std::sync::Mutex::new(Some(go));
        let wait = async move {
            let _ = tokio::time::timeout(CONTINUE_WAIT, proceed).await;
        };
        let body = futures_util::stream::once(wait)
            .filter_map(|()| std::future::ready(None))
            .chain(http_body_util::BodyStream::new(body));
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", content_type)
            .header("expect", "100-continue");
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut request = request
            .body(http_body_util::StreamBody::new(body).boxed_unsync())
            .map_err(|e| transport(e.to_string()))?;
        hyper::ext::on_informational(&mut request, move |response| {
            if response.status() == http::StatusCode::CONTINUE
                && let Some(go) = go.lock().ok().and_then(|mut go| go.take())
            {
                let _ = go.send(());
            }
        });
        self.inner
            .request(request)
            .await
            .map_err(|e| transport(e.to_string()))
    }

    /// [`HttpClient::call`] for a peer that may not be trusted with the controller's memory:
    /// an answer over `limit` bytes is an error as soon as it passes the limit, and an error
    /// status carries at most 1 KiB of its body.
    pub async fn call_limited(
        &self,
        method: http::Method,
        url: &str,
        bearer: Option<&str>,
        body: Option<String>,
        limit: usize,
    ) -> Result<String, HttpError> {
        let response = self.send(method, url, bearer, body).await?;
        read_answer(url, response, limit, 1024).await
    }

    /// Sends a request and reads the whole answer; a status outside 2xx is an error.
    pub async fn call(
        &self,
        method: http::Method,
        url: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> Result<String, HttpError> {
        let response = self.send(method, url, bearer, body).await?;
        read_answer(url, response, usize::MAX, usize::MAX).await
    }
}

/// The body of `response` as text, at most `limit` bytes; a status outside 2xx is an error
/// carrying the first `excerpt` characters of it.
async fn read_answer(
    url: &str,
    response: http::Response<hyper::body::Incoming>,
    limit: usize,
    excerpt: usize,
) -> Result<String, HttpError> {
    let status = response.status();
    let bytes = http_body_util::Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge {
                    url: url.to_string(),
                    limit,
                }
            } else {
                HttpError::Transport {
                    url: url.to_string(),
                    message: e.to_string(),
                }
            }
        })?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() {
        Ok(text)
    } else {
        Err(HttpError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body: crate::store::clip(&text, excerpt),
        })
    }
}
