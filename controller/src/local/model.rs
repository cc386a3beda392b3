//! The model endpoint: one chat-completions request per model turn, sent **through the
//! proxy** like any egress. Each request connects from a loopback address of its own
//! (127.77.0.0/16, as http tools do), registered at the proxy for the request's duration as
//! session `model:<agent>` with labels naming the local session, agent and model; so the Rego
//! policy decides whether the agent may reach its endpoint, and the proxy injects the model's
//! API key from the secret store. The controller never holds the key, and the prompt is never
//! logged or audited: the audit record says which model, how many tokens, how long, and how
//! it ended.

pub mod answer;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

pub use answer::{Answer, RawCall};

use super::agent::Agent;
use crate::cma::events::SseParser;
use crate::proxy_admin::ProxyAdmin;
use crate::tools::http::{Failure, Opened, ProxyRoute, next_source, open};

/// Largest answer read, streamed or whole (a whole file written by one call fits).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why a model request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("the model endpoint could not be reached: {0}")]
    Unreachable(String),
    /// The proxy refused the request (policy, SSRF guard, credentials): not retried.
    #[error("the proxy refused the model request ({status}, {class}): {body}")]
    Refused {
        status: u16,
        class: String,
        body: String,
    },
    #[error("the model endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the model's answer could not be read: {0}")]
    Response(String),
    #[error("the model did not answer within model.timeout_secs ({0} s)")]
    Timeout(u64),
    #[error("the model request could not be registered with the proxy: {0}")]
    Registration(String),
}

impl ModelError {
    /// Worth another try: it may pass (a 4xx other than 408 and 429, or a refusal, will not).
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Unreachable(_)
            | ModelError::Response(_)
            | ModelError::Timeout(_)
            | ModelError::Registration(_) => true,
            ModelError::Status { status, .. } => matches!(status, 408 | 429 | 500..),
            ModelError::Refused { .. } => false,
        }
    }

    /// `session.error`'s type and the audit outcome.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Unreachable(_) | ModelError::Registration(_) => "model_unreachable",
            ModelError::Refused { .. } => "model_refused_by_proxy",
            ModelError::Status { .. } => "model_status",
            ModelError::Response(_) => "model_response",
            ModelError::Timeout(_) => "model_timeout",
        }
    }
}

/// Who is asking: the proxy identity and labels of one request.
#[derive(Debug, Clone)]
pub struct Asker<'a> {
    pub session: &'a str,
    pub agent: &'a str,
}

impl Asker<'_> {
    /// `model:<agent>`.
    pub fn proxy_id(&self) -> String {
        format!("model:{}", self.agent)
    }

    /// `local:<agent>`: the agent id the proxy sees, apart from CMA's `agent_...` ids.
    pub fn agent_id(&self) -> String {
        format!("local:{}", self.agent)
    }

    fn labels(&self, model: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("session".to_string(), self.session.to_string()),
            ("agent".to_string(), self.agent.to_string()),
            ("model".to_string(), model.to_string()),
        ])
    }
}

/// A request's registration at the proxy; removed when dropped.
struct Registered {
    admin: ProxyAdmin,
    id: String,
    source: std::net::IpAddr,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let (admin, id, source) = (self.admin.clone(), self.id.clone(), self.source);
        // No runtime (it is shutting down): the next `serve` removes leftovers at start.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = admin.unregister_source(&id, source).await {
                tracing::warn!(id, error = %e, "removing a model request's proxy registration");
            }
        });
    }
}

/// Reaches model endpoints through the proxy.
#[derive(Debug, Clone)]
pub struct ModelClient {
    pub route: ProxyRoute,
    pub admin: ProxyAdmin,
}

/// The request body.
pub fn request_body(agent: &Agent, messages: Vec<Value>, tools: Vec<Value>) -> Value {
    let mut body = json!({
        "model": agent.spec.model.name,
        "messages": Value::Array(messages),
        "stream": agent.stream,
    });
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
    }
    if agent.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(max) = agent.spec.model.max_tokens {
        body["max_tokens"] = max.into();
    }
    if let Some(t) = agent.spec.model.temperature {
        body["temperature"] = t.into();
    }
    body
}

impl ModelClient {
    /// One model turn; `Err` after no answer (the caller retries what [`ModelError::is_retryable`]).
    pub async fn complete(
        &self,
        agent: &Agent,
        asker: &Asker<'_>,
        body: &Value,
    ) -> Result<Answer, ModelError> {
        let source = next_source();
        let agent_id = asker.agent_id();
        // Removed however this ends: answered, timed out, or dropped mid-request (an
        // interrupt), so no loopback address stays the agent's at the proxy. Made before the
        // registration: a drop while it is under way must remove it too (removing is
        // idempotent).
        let _registered = Registered {
            admin: self.admin.clone(),
            id: asker.proxy_id(),
            source,
        };
        self.admin
            .register_shared(
                &asker.proxy_id(),
                source,
                Some(&agent_id),
                &asker.labels(&agent.spec.model.name),
            )
            .await
            .map_err(|e| ModelError::Registration(e.to_string()))?;
        let timeout = agent.model_timeout;
        tokio::time::timeout(timeout, self.send(agent, source, body))
            .await
            .unwrap_or(Err(ModelError::Timeout(timeout.as_secs())))
    }

    async fn send(
        &self,
        agent: &Agent,
        source: std::net::IpAddr,
        body: &Value,
    ) -> Result<Answer, ModelError> {
        let Opened {
            mut sender,
            target,
            host_header,
        } = open(&self.route, source, &agent.endpoint)
            .await
            .map_err(failure)?;
        let accept = if agent.stream {
            "text/event-stream, application/json;q=0.9"
        } else {
            "application/json"
        };
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(target)
            .header(http::header::HOST, host_header)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, accept)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| ModelError::Unreachable(format!("building the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ModelError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        if let Some(class) = response
            .headers()
            .get("cordon-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        {
            let body = read_all(response.into_body()).await.unwrap_or_default();
            return Err(refusal(status, class, &body));
        }
        if !(200..300).contains(&status) {
            let body = read_all(response.into_body()).await.unwrap_or_default();
            return Err(ModelError::Status {
                status,
                body: crate::tools::tail(&body, 1024),
            });
        }
        let streamed = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if streamed {
            read_stream(response.into_body()).await
        } else {
            let text = read_all(response.into_body())
                .await
                .map_err(ModelError::Response)?;
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                ModelError::Response(format!(
                    "not JSON ({e}): {}",
                    crate::tools::tail(&text, 200)
                ))
            })?;
            answer::whole(&value).map_err(ModelError::Response)
        }
    }
}

fn failure(f: Failure) -> ModelError {
    match f {
        Failure::Refused(status, class, body) => refusal(status, class, &body),
        Failure::Failed(why) | Failure::TooLarge(why) => ModelError::Unreachable(why),
    }
}

/// An answer the proxy made itself (`cordon-error: <class>`): the endpoint could not be
/// reached (worth a retry), or the request was refused (policy, credentials: it would be
/// refused again).
fn refusal(status: u16, class: String, body: &str) -> ModelError {
    let body = crate::tools::tail(body, 1024);
    match class.as_str() {
        "upstream" | "upstream_timeout" | "resolve" | "internal" => ModelError::Unreachable(
            format!("the proxy could not reach it ({status}, {class}): {body}"),
        ),
        _ => ModelError::Refused {
            status,
            class,
            body,
        },
    }
}

async fn read_all(body: hyper::body::Incoming) -> Result<String, String> {
    let bytes = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// An SSE answer, chunk by chunk, until `[DONE]` or the end of the body.
async fn read_stream(mut body: hyper::body::Incoming) -> Result<Answer, ModelError> {
    let mut parser = SseParser::unnamed_as_message();
    let mut chunks = answer::Chunks::default();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ModelError::Response(format!("the stream broke: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read += data.len();
        if read > MAX_ANSWER_BYTES {
            return Err(ModelError::Response(format!(
                "the streamed answer is larger than {} MiB",
                MAX_ANSWER_BYTES >> 20
            )));
        }
        for frame in parser.push(&data) {
            if frame.event == "error" {
                return Err(ModelError::Response(format!(
                    "the endpoint streamed an error: {}",
                    crate::tools::tail(&frame.data, 1024)
                )));
            }
            chunks.push(&frame.data).map_err(ModelError::Response)?;
        }
        if chunks.finished {
            break;
        }
    }
    if !chunks.ended() {
        return Err(ModelError::Response(
            "the stream ended before [DONE] or a finish_reason".into(),
        ));
    }
    Ok(chunks.finish())
}

/// How long ago `began` was, in whole milliseconds.
pub fn millis_since(began: Instant) -> u64 {
    began.elapsed().as_millis() as u64
}

/// Backoff before retry `n` (1-based): 1 s, 2 s, 4 s ... at most 30 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}
