//! A scripted OpenAI-compatible chat-completions server for the local sessions' tests and
//! benchmarks: each `POST .../chat/completions` takes the next [`Reply`] of the script and
//! answers it whole or streamed (SSE chunks, tool calls split across several, usage last), as
//! the request's `stream` asks. Every request is kept ([`Seen`]) for the test to read: the
//! conversation it carried and the credential it arrived with.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// What the model answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Text, no tool calls: the turn ends.
    Text(String),
    /// Tool calls (name, arguments as written), with optional text before them.
    Calls(String, Vec<(String, String)>),
    /// An HTTP error with this body.
    Status(u16, String),
    /// A 200 whose body is not JSON.
    NotJson,
    /// The reply after a delay.
    Delay(Duration, Box<Reply>),
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The `Authorization` header as it arrived (the proxy's injection).
    pub authorization: Option<String>,
    pub body: Value,
}

/// The script, and what was asked.
#[derive(Debug, Default)]
pub struct ModelScript {
    replies: Mutex<VecDeque<Reply>>,
    pub seen: Mutex<Vec<Seen>>,
}

impl ModelScript {
    pub fn new(replies: impl IntoIterator<Item = Reply>) -> Arc<Self> {
        Arc::new(Self {
            replies: Mutex::new(replies.into_iter().collect()),
            seen: Mutex::default(),
        })
    }

    /// Adds replies to the end of the script.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.replies.lock().unwrap().extend(replies);
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Answers one request (its `Authorization` and body).
    pub async fn answer(
        &self,
        authorization: Option<String>,
        body: Value,
    ) -> http::Response<Full<Bytes>> {
        // A conversation a strict server would refuse is refused with 400, as they do.
        if let Err(problem) = strict(&body) {
            self.seen.lock().unwrap().push(Seen {
                authorization,
                body,
            });
            return respond(
                400,
                "application/json",
                json!({"error": {"message": problem}}).to_string(),
            );
        }
        let stream = body["stream"] == true;
        self.seen.lock().unwrap().push(Seen {
            authorization,
            body,
        });
        let next = self.replies.lock().unwrap().pop_front();
        let mut reply = next.unwrap_or(Reply::Status(500, "the script is exhausted".into()));
        while let Reply::Delay(wait, inner) = reply {
            tokio::time::sleep(wait).await;
            reply = *inner;
        }
        match reply {
            Reply::Status(status, body) => respond(
                status,
                "application/json",
                json!({"error": {"message": body}}).to_string(),
            ),
            Reply::NotJson => respond(
                200,
                "application/json",
                "<html>upstream error</html>".into(),
            ),
            Reply::Text(text) => answer_with(stream, &text, &[]),
            Reply::Calls(text, calls) => answer_with(stream, &text, &calls),
            Reply::Delay(..) => unreachable!("unwrapped above"),
        }
    }
}

/// What strict servers check of a conversation: replayed calls whose arguments are a JSON
/// object (vLLM), names in `[A-Za-z0-9_-]{1,64}` (OpenAI), ids of 9 letters and digits
/// (Mistral), no result for a call not made before it.
fn strict(body: &Value) -> Result<(), String> {
    let mut calls = std::collections::HashSet::new();
    for message in body["messages"].as_array().into_iter().flatten() {
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let id = call["id"].as_str().unwrap_or_default();
            if id.len() != 9 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("tool call id {id:?} is not 9 letters and digits"));
            }
            let name = call["function"]["name"].as_str().unwrap_or_default();
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                return Err(format!(
                    "tool call name {name:?} does not match ^[a-zA-Z0-9_-]+$"
                ));
            }
            let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
            match serde_json::from_str::<Value>(arguments) {
                Ok(Value::Object(_)) => {}
                _ => {
                    return Err(format!(
                        "tool call arguments {arguments:?} are not a JSON object"
                    ));
                }
            }
            calls.insert(id.to_string());
        }
        if message["role"] == "tool" {
            let id = message["tool_call_id"].as_str().unwrap_or_default();
            if !calls.contains(id) {
                return Err(format!("tool message for {id:?}, which no call made"));
            }
        }
    }
    Ok(())
}

pub fn respond(status: u16, content_type: &str, body: String) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

const USAGE: (u64, u64) = (120, 30);

fn answer_with(
    stream: bool,
    text: &str,
    calls: &[(String, String)],
) -> http::Response<Full<Bytes>> {
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if !stream {
        let tool_calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (name, arguments))| {
                json!({"id": format!("call_{i}"), "type": "function",
                       "function": {"name": name, "arguments": arguments}})
            })
            .collect();
        let mut message = json!({"role": "assistant", "content": text});
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": USAGE.0, "completion_tokens": USAGE.1, "total_tokens": USAGE.0 + USAGE.1}});
        return respond(200, "application/json", body.to_string());
    }
    let mut chunks = vec![json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})];
    let split = text.len() / 2;
    let split = (0..=split)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    for piece in [&text[..split], &text[split..]] {
        if !piece.is_empty() {
            chunks.push(json!({"choices": [{"index": 0, "delta": {"content": piece}}]}));
        }
    }
    for (i, (name, arguments)) in calls.iter().enumerate() {
        chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": i, "id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": ""}}]}}]}));
        let half = arguments.len() / 2;
        let half = (0..=half)
            .rev()
            .find(|j| arguments.is_char_boundary(*j))
            .unwrap_or(0);
        for piece in [&arguments[..half], &arguments[half..]] {
            chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "function": {"arguments": piece}}]}}]}));
        }
    }
    chunks.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}));
    chunks.push(
        json!({"choices": [], "usage": {"prompt_tokens": USAGE.0, "completion_tokens": USAGE.1}}),
    );
    let mut body = String::new();
    for chunk in chunks {
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    respond(200, "text/event-stream", body)
}

/// Serves HTTP/1.1 on `io` (one connection): `POST .../chat/completions` is answered by the
/// script `scripts` picks for the request's `model`; anything else by `other`.
pub async fn serve_connection<IO, S, F, Fut>(io: IO, scripts: S, other: F)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Fn(&str) -> Arc<ModelScript> + Clone + Send + Sync + 'static,
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let scripts = scripts.clone();
            let other = other.clone();
            async move {
                if !request.uri().path().ends_with("/chat/completions") {
                    return Ok::<_, std::convert::Infallible>(other(request).await);
                }
                let authorization = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let script = scripts(body["model"].as_str().unwrap_or_default());
                Ok(script.answer(authorization, body).await)
            }
        });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

/// A plain HTTP/1.1 model server on a fresh loopback port, every model answered from
/// `script` (benchmarks reach it directly).
pub fn spawn_plain(script: Arc<ModelScript>) -> std::net::SocketAddr {
    crate::spawn_loopback_server(move |tcp| {
        let _ = tcp.set_nodelay(true);
        let script = script.clone();
        serve_connection(
            tcp,
            move |_: &str| script.clone(),
            |_| async { respond(404, "text/plain", "not found".into()) },
        )
    })
}
