//! The CMA work-queue client (../shared/CMA.md, "Work queue"): poll, ack, heartbeat, stop.
//!
//! Every request carries exactly one credential, `Authorization: Bearer`, plus the API version
//! and beta headers; polls also carry `Anthropic-Worker-ID`. Poll and ack use the environment
//! key; heartbeat and stop use the work item's own sessions token when its `secret` carries
//! one. Errors keep CMA's `error.type`, message and `details.error_code`, and say whether a
//! retry can help (408, 409, 429, 5xx, transport) and whether the lease was lost (412).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// What SDK 2.10 sends.
pub const API_VERSION: &str = "2026-10-21";
pub const BETA: &str = "managed-agents-2026-04-01";
/// The longest block a poll may ask for (the server refuses 0 and anything over 999).
pub const MAX_BLOCK_MS: u32 = 999;

/// A credential. Prints as `<redacted>`.
#[derive(Clone)]
pub struct Key(String);

impl Key {
    pub fn new(key: String) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A work item. Its `Debug` leaves out `secret` (it carries the sessions token).
#[derive(Clone, Deserialize, PartialEq, Eq)]
pub struct Work {
    pub id: String,
    pub data: WorkData,
    #[serde(default)]
    pub state: Option<String>,
    /// Unpadded base64url JSON `{"sessions_token": ...}`, or null. Never logged.
    #[serde(default, skip_serializing)]
    secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WorkData {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("id", &self.id)
            .field("data", &self.data)
            .field("state", &self.state)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Work {
    /// The item as the controller stores it to resume after a restart, secret included (the
    /// state database is readable by root only).
    pub fn to_stored(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "data": {"type": self.data.kind, "id": self.data.id},
            "state": self.state,
            "secret": self.secret,
        })
        .to_string()
    }

    /// An item stored by [`Work::to_stored`].
    pub fn from_stored(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The per-work sessions token, if the item carries one.
    fn sessions_token(&self) -> Option<Key> {
        #[derive(Deserialize)]
        struct Secret {
            sessions_token: String,
        }
        let raw = URL_SAFE_NO_PAD
            .decode(self.secret.as_deref()?.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice::<Secret>(&raw)
            .ok()
            .map(|s| Key(s.sessions_token))
    }
}

/// A heartbeat's answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    pub last_heartbeat: String,
    pub lease_extended: bool,
    pub state: String,
    pub ttl_seconds: u64,
}

impl Heartbeat {
    /// Whether to keep serving: the lease was extended and the item is not stopping.
    pub fn keep_serving(&self) -> bool {
        self.lease_extended && !matches!(self.state.as_str(), "stopping" | "stopped")
    }

    /// When to send the next heartbeat: min(ttl / 2, 30 s).
    pub fn next_in(&self) -> Duration {
        Duration::from_secs((self.ttl_seconds / 2).clamp(1, 30))
    }
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CmaError {
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: {status} {kind}: {message}{}", .code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        url: String,
        status: u16,
        kind: String,
        message: String,
        code: Option<String>,
    },
    #[error("{url}: unexpected answer: {message}")]
    Protocol { url: String, message: String },
}

impl CmaError {
    /// Whether trying again later can help (the SDK retries 408, 409, 429 and 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            CmaError::Transport { .. } => true,
            CmaError::Status { status, .. } => matches!(status, 408 | 409 | 429) || *status >= 500,
            CmaError::Protocol { .. } => false,
        }
    }

    /// A 412 on heartbeat: someone else holds the lease; stop serving, never stop the item.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, CmaError::Status { status: 412, .. })
    }
}

/// Attempts of a call that [`retrying`] makes before it gives up.
pub const ATTEMPTS: u32 = 4;

/// Runs `call` until it succeeds, fails for good, or has been tried [`ATTEMPTS`] times;
/// waits 0.5 s, 1 s, 2 s (each jittered by up to half) between tries. Retried: transport
/// errors, 408, 429 and 5xx. Not 409: for ack and stop it means the item moved on.
pub async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T, CmaError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CmaError>>,
{
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e)
                if attempt < ATTEMPTS
                    && e.is_retryable()
                    && !matches!(e, CmaError::Status { status: 409, .. }) =>
            {
                use rand::Rng as _;
                let jitter = rand::rng().random_range(0..=wait.as_millis() as u64 / 2);
                let pause = wait + Duration::from_millis(jitter);
                tracing::warn!(error = %e, attempt, retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                wait *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The client of one self-hosted environment.
#[derive(Debug, Clone)]
pub struct CmaClient {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    environment: String,
    key: Key,
    worker_id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
    message: String,
    #[serde(default)]
    details: Option<serde_json::Value>,
}

impl CmaClient {
    /// `base` is `https://api.anthropic.com` in production, a simulator's `http://` in tests.
    pub fn new(base: &str, environment: &str, key: Key, worker_id: &str) -> Result<Self, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("cannot load the system's trusted roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(https),
            base: base.trim_end_matches('/').to_string(),
            environment: environment.to_string(),
            key,
            worker_id: worker_id.to_string(),
        })
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        key: &Key,
        body: Option<serde_json::Value>,
        worker: bool,
    ) -> Result<(u16, Bytes), CmaError> {
        let url = format!("{}{path}", self.base);
        let transport = |message: String| CmaError::Transport {
            url: url.clone(),
            message,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", key.0))
            .header("anthropic-version", API_VERSION)
            .header("anthropic-beta", BETA)
            .header("content-type", "application/json");
        if worker {
            request = request.header("anthropic-worker-id", &self.worker_id);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.http.request(request))
            .await
            .map_err(|_| transport("no answer within 30 s".into()))?
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        if (200..300).contains(&status) {
            return Ok((status, bytes));
        }
        let (kind, message, code) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => (
                e.error.kind,
                e.error.message,
                e.error.details.and_then(|d| {
                    d.get("error_code")
                        .and_then(|c| c.as_str())
                        .map(str::to_string)
                }),
            ),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                None,
            ),
        };
        Err(CmaError::Status {
            url,
            status,
            kind,
            message,
            code,
        })
    }

    /// A call of CMA's control-plane API (the Agents API: [`super::agent_tools`]) with this
    /// client's key, which must then be the organization API key: the JSON answer.
    pub async fn api(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CmaError> {
        let (_, bytes) = self.call(method, path, &self.key, body, false).await?;
        serde_json::from_slice(&bytes).map_err(|e| CmaError::Protocol {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    fn work_path(&self, work_id: &str, action: &str) -> String {
        format!(
            "/v1/environments/{}/work/{work_id}/{action}",
            self.environment
        )
    }

    /// Claims the next work item, waiting up to `block_ms` (1..=999) for one; `None` when the
    /// queue is empty.
    pub async fn poll(&self, block_ms: u32) -> Result<Option<Work>, CmaError> {
        let block = block_ms.clamp(1, MAX_BLOCK_MS);
        let path = format!(
            "/v1/environments/{}/work/poll?block_ms={block}",
            self.environment
        );
        let (_, bytes) = self
            .call(http::Method::GET, &path, &self.key, None, true)
            .await?;
        serde_json::from_slice::<Option<Work>>(&bytes).map_err(|e| CmaError::Protocol {
            url: path,
            message: e.to_string(),
        })
    }

    /// Acknowledges a polled item (queued -> starting).
    pub async fn ack(&self, work: &Work) -> Result<(), CmaError> {
        self.call(
            http::Method::POST,
            &self.work_path(&work.id, "ack"),
            &self.key,
            None,
            false,
        )
        .await
        .map(|_| ())
    }

    fn key_for(&self, work: &Work) -> Key {
        work.sessions_token().unwrap_or_else(|| self.key.clone())
    }

    /// Extends the lease. `expected` is the previous answer's `last_heartbeat`, or `None` for
    /// the first heartbeat (which claims the lease with `NO_HEARTBEAT`).
    pub async fn heartbeat(
        &self,
        work: &Work,
        expected: Option<&str>,
        desired_ttl_seconds: u32,
    ) -> Result<Heartbeat, CmaError> {
        let expected = expected.unwrap_or("NO_HEARTBEAT");
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("expected_last_heartbeat", expected)
            .append_pair("desired_ttl_seconds", &desired_ttl_seconds.to_string())
            .finish();
        let path = format!("{}?{query}", self.work_path(&work.id, "heartbeat"));
        let (_, bytes) = self
            .call(http::Method::POST, &path, &self.key_for(work), None, false)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| CmaError::Protocol {
            url: path,
            message: e.to_string(),
        })
    }

    /// Stops the item; one already stopped (409) is not an error.
    pub async fn stop(&self, work: &Work, force: bool) -> Result<(), CmaError> {
        match self
            .call(
                http::Method::POST,
                &self.work_path(&work.id, "stop"),
                &self.key_for(work),
                Some(serde_json::json!({ "force": force })),
                false,
            )
            .await
        {
            Ok(_) | Err(CmaError::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The id of the agent session `session` runs (`GET /v1/sessions/{id}`'s `agent.id`), which
    /// picks its image.
    pub async fn session_agent(
        &self,
        work: &Work,
        session: &str,
    ) -> Result<Option<String>, CmaError> {
        let path = format!("/v1/sessions/{session}");
        let (_, bytes) = self
            .call(http::Method::GET, &path, &self.key_for(work), None, false)
            .await?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| CmaError::Protocol {
                url: path,
                message: e.to_string(),
            })?;
        Ok(value["agent"]["id"]
            .as_str()
            .or_else(|| value["agent"].as_str())
            .map(str::to_string))
    }

    /// One page of a session's events (oldest first) and the cursor of the next, if any.
    pub async fn list_events(
        &self,
        work: &Work,
        session: &str,
        page: Option<&str>,
    ) -> Result<(Vec<serde_json::Value>, Option<String>), CmaError> {
        #[derive(Deserialize)]
        struct Page {
            data: Vec<serde_json::Value>,
            #[serde(default)]
            next_page: Option<String>,
        }
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", "1000");
            if let Some(page) = page {
                query.append_pair("page", page);
            }
            query.finish()
        };
        let path = format!("/v1/sessions/{session}/events?{query}");
        let (_, bytes) = self
            .call(http::Method::GET, &path, &self.key_for(work), None, false)
            .await?;
        let page: Page = serde_json::from_slice(&bytes).map_err(|e| CmaError::Protocol {
            url: path,
            message: e.to_string(),
        })?;
        Ok((page.data, page.next_page))
    }

    /// Every event of a session so far, following `next_page` (the reconcile on each
    /// (re)connect, so a tool call is answered exactly once).
    pub async fn all_events(
        &self,
        work: &Work,
        session: &str,
    ) -> Result<Vec<serde_json::Value>, CmaError> {
        let mut events = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let (mut data, next) = self.list_events(work, session, page.as_deref()).await?;
            events.append(&mut data);
            match next {
                Some(next) if Some(&next) != page.as_ref() => page = Some(next),
                _ => return Ok(events),
            }
        }
    }

    /// Posts events (tool results) to a session.
    pub async fn send_events(
        &self,
        work: &Work,
        session: &str,
        events: Vec<serde_json::Value>,
    ) -> Result<(), CmaError> {
        self.call(
            http::Method::POST,
            &format!("/v1/sessions/{session}/events"),
            &self.key_for(work),
            Some(serde_json::json!({ "events": events })),
            false,
        )
        .await
        .map(|_| ())
    }

    /// Opens a session's event stream and calls `on_item` for each event or error frame until
    /// the stream ends or `on_item` returns `false`. Reconnecting (with backoff, after a
    /// reconcile through [`CmaClient::all_events`]) is the caller's.
    pub async fn stream_events(
        &self,
        work: &Work,
        session: &str,
        mut on_item: impl FnMut(super::events::StreamItem) -> bool,
    ) -> Result<(), CmaError> {
        let url = format!("{}/v1/sessions/{session}/events/stream", self.base);
        let transport = |message: String| CmaError::Transport {
            url: url.clone(),
            message,
        };
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.key_for(work).0))
            .header("anthropic-version", API_VERSION)
            .header("anthropic-beta", BETA)
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))
            .map_err(|e| transport(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(CmaError::Status {
                url,
                status,
                kind: "stream".into(),
                message: "the event stream was refused".into(),
                code: None,
            });
        }
        let mut body = response.into_body();
        let mut parser = super::events::SseParser::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| transport(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for frame in parser.push(&data) {
                if let Some(item) = super::events::interpret(&frame)
                    && !on_item(item)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
