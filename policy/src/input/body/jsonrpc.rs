//! JSON-RPC 2.0 messages in a JSON body: MCP's streamable HTTP transport, and most other
//! JSON-RPC APIs. A batch is every message of it, so a policy can require every call in a batch
//! to be allowed rather than the first.

use regorus::Value;

/// `input.cordon.jsonrpc`: one message, or a batch (a JSON array) as a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonRpc {
    Single(JsonRpcMessage),
    Batch(Vec<JsonRpcMessage>),
}

/// What a message is, by the members it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonRpcKind {
    /// `method` and `id`: a call that expects an answer.
    Request,
    /// `method` without `id`.
    Notification,
    /// `result` or `error` with `id`: a client answering the server (MCP sampling, elicitation).
    Response,
    /// A batch element that is none of these (the server answers it with an error).
    Invalid,
}

impl JsonRpcKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JsonRpcKind::Request => "request",
            JsonRpcKind::Notification => "notification",
            JsonRpcKind::Response => "response",
            JsonRpcKind::Invalid => "invalid",
        }
    }
}

/// One message: `{kind, method, id, params}`, each member only when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonRpcMessage {
    pub kind: JsonRpcKind,
    pub method: Option<String>,
    pub id: Option<Value>,
    /// Shared with `parsed_body`, not copied.
    pub params: Option<Value>,
}

/// The JSON-RPC 2.0 messages of `document`, or `None` when it is not JSON-RPC: a single
/// object must say `"jsonrpc": "2.0"`, and a batch must have at least one element that does.
pub(super) fn messages(document: &Value) -> Option<JsonRpc> {
    match document {
        Value::Object(_) => message(document).map(JsonRpc::Single),
        Value::Array(items) => {
            let batch: Vec<_> = items
                .iter()
                .map(|item| {
                    message(item).unwrap_or(JsonRpcMessage {
                        kind: JsonRpcKind::Invalid,
                        method: None,
                        id: None,
                        params: None,
                    })
                })
                .collect();
            batch
                .iter()
                .any(|m| m.kind != JsonRpcKind::Invalid)
                .then_some(JsonRpc::Batch(batch))
        }
        _ => None,
    }
}

fn message(value: &Value) -> Option<JsonRpcMessage> {
    if value["jsonrpc"].as_string().ok()?.as_ref() != "2.0" {
        return None;
    }
    let present = |member: &str| match &value[member] {
        Value::Undefined => None,
        v => Some(v.clone()),
    };
    let id = present("id");
    let method = match &value["method"] {
        Value::Undefined => None,
        Value::String(s) => Some(s.to_string()),
        // A method that is not a string is not a call the server will run.
        _ => return Some(invalid(id)),
    };
    let kind = match (&method, &id) {
        (Some(_), Some(_)) => JsonRpcKind::Request,
        (Some(_), None) => JsonRpcKind::Notification,
        (None, Some(_)) if present("result").is_some() || present("error").is_some() => {
            JsonRpcKind::Response
        }
        (None, _) => return Some(invalid(id)),
    };
    Some(JsonRpcMessage {
        kind,
        method,
        id,
        params: present("params"),
    })
}

fn invalid(id: Option<Value>) -> JsonRpcMessage {
    JsonRpcMessage {
        kind: JsonRpcKind::Invalid,
        method: None,
        id,
        params: None,
    }
}
