//! The policy's answer, read into a typed [`Decision`].
//!
//! A policy answers with a boolean (`true` allows) or an object in OPA-Envoy's shape with
//! Cordon's extensions:
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `allowed` | boolean, required | allow or deny |
//! | `headers` | object of string or array of strings | on allow: set on the upstream request (overwriting); on deny: added to the refusal |
//! | `request_headers_to_remove` | array of strings | on allow: removed from the upstream request |
//! | `response_headers_to_add` | object of string or array of strings | on allow: added to the response to the sandbox |
//! | `http_status` | integer 100-599 | on deny: the refusal's status (default 403) |
//! | `body` | string | on deny: replaces the default JSON refusal body |
//! | `reason` | string | why; carried to the audit log and the refusal |
//! | `inject` | array of `{secret, header}` | on allow: credentials the proxy resolves and sets |
//! | `mitm` | boolean | stage `connect`: `false` splices the TLS bytes uninspected |
//!
//! Unknown keys are ignored (OPA-Envoy's `dynamic_metadata`, for instance). A known key of the
//! wrong type, an undefined result or an evaluation error is a deny whose reason says which:
//! Cordon fails closed.

use std::sync::{Arc, LazyLock};

use regorus::Value;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
}

/// What the proxy does with a TLS connection the policy allows at stage `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandling {
    /// Terminate TLS with a minted leaf and decide every request (the default).
    Intercept,
    /// Splice the bytes to the upstream uninspected (`mitm: false`).
    Passthrough,
}

/// A credential the decision asks the proxy to inject: the secret's name, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    pub secret: String,
    /// Lower-case header name.
    pub header: String,
}

/// Why a decision is a deny that the policy did not itself choose. The names are a closed set,
/// usable as metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionFailure {
    /// The query has no value for this input (no rule body matched and there is no default).
    Undefined,
    /// The policy answered, but not with a boolean or a well-formed decision object.
    InvalidDecision,
    /// Evaluation failed: a runtime error, or the time or instruction limit was hit.
    EvaluationError,
}

impl DecisionFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionFailure::Undefined => "undefined",
            DecisionFailure::InvalidDecision => "invalid_decision",
            DecisionFailure::EvaluationError => "evaluation_error",
        }
    }
}

/// A header value given by a decision, kept as the policy wrote it. Arrays mean the header is
/// sent once per element.
pub type HeaderValue = String;

/// A normalised decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The policy's reason, or one Cordon supplies ("allowed by policy", the failure).
    pub reason: String,
    /// The status the policy chose for a refusal; see [`Decision::deny_status`].
    pub http_status: Option<u16>,
    /// Lower-case name, value; a name may repeat.
    pub headers: Vec<(String, HeaderValue)>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<(String, HeaderValue)>,
    pub body: Option<String>,
    pub inject: Vec<CredentialRef>,
    pub tls: TlsHandling,
    /// Set when the deny is Cordon's, not the policy's.
    pub failure: Option<DecisionFailure>,
    /// The policy generation that decided (bundle revision or content hash).
    pub generation: Arc<str>,
}

/// The refusal status when a deny does not set `http_status`.
pub const DEFAULT_DENY_STATUS: u16 = 403;

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// The status a refusal is answered with.
    pub fn deny_status(&self) -> u16 {
        self.http_status.unwrap_or(DEFAULT_DENY_STATUS)
    }

    /// A fail-closed deny.
    pub fn failed(failure: DecisionFailure, reason: String, generation: Arc<str>) -> Self {
        Self {
            outcome: Outcome::Deny,
            reason,
            http_status: None,
            headers: Vec::new(),
            request_headers_to_remove: Vec::new(),
            response_headers_to_add: Vec::new(),
            body: None,
            inject: Vec::new(),
            tls: TlsHandling::Intercept,
            failure: Some(failure),
            generation,
        }
    }

    /// Reads a query result. `query` is named in the reason of an undefined result.
    pub fn from_value(value: &Value, query: &str, generation: Arc<str>) -> Self {
        match parse(value, &generation) {
            Ok(decision) => decision,
            Err(Invalid::Undefined) => Self::failed(
                DecisionFailure::Undefined,
                format!("policy decision {query} is undefined for this input (fail closed)"),
                generation,
            ),
            Err(Invalid::Shape(message)) => Self::failed(
                DecisionFailure::InvalidDecision,
                format!("policy decision {query} is invalid: {message} (fail closed)"),
                generation,
            ),
        }
    }

    /// The normalised decision as JSON (what `cordon-policy eval` prints).
    pub fn to_json(&self) -> serde_json::Value {
        let headers = |pairs: &[(String, String)]| {
            let mut map = serde_json::Map::new();
            for (name, value) in pairs {
                match map.get_mut(name) {
                    Some(serde_json::Value::Array(values)) => values.push(value.clone().into()),
                    Some(existing) => {
                        let first = existing.take();
                        *existing = serde_json::Value::Array(vec![first, value.clone().into()]);
                    }
                    None => {
                        map.insert(name.clone(), value.clone().into());
                    }
                }
            }
            serde_json::Value::Object(map)
        };
        serde_json::json!({
            "allowed": self.is_allowed(),
            "reason": self.reason,
            "http_status": if self.is_allowed() { None } else { Some(self.deny_status()) },
            "headers": headers(&self.headers),
            "request_headers_to_remove": self.request_headers_to_remove,
            "response_headers_to_add": headers(&self.response_headers_to_add),
            "body": self.body,
            "inject": self.inject.iter().map(|c| serde_json::json!({
                "secret": c.secret, "header": c.header,
            })).collect::<Vec<_>>(),
            // Only an allow has a TLS handling to speak of.
            "mitm": self.is_allowed().then_some(self.tls == TlsHandling::Intercept),
            "failure": self.failure.map(DecisionFailure::as_str),
            "generation": &*self.generation,
        })
    }
}

enum Invalid {
    Undefined,
    Shape(String),
}

/// The decision object's keys, allocated once: looking a field up takes a `Value` key, and
/// building ten of them per decision was a measurable share of reading the result.
struct Keys {
    allowed: Value,
    reason: Value,
    http_status: Value,
    headers: Value,
    response_headers_to_add: Value,
    request_headers_to_remove: Value,
    body: Value,
    mitm: Value,
    inject: Value,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    allowed: Value::from("allowed"),
    reason: Value::from("reason"),
    http_status: Value::from("http_status"),
    headers: Value::from("headers"),
    response_headers_to_add: Value::from("response_headers_to_add"),
    request_headers_to_remove: Value::from("request_headers_to_remove"),
    body: Value::from("body"),
    mitm: Value::from("mitm"),
    inject: Value::from("inject"),
});

fn parse(value: &Value, generation: &Arc<str>) -> Result<Decision, Invalid> {
    let allowed = |outcome: Outcome, reason: Option<String>| Decision {
        outcome,
        reason: reason.unwrap_or_else(|| match outcome {
            Outcome::Allow => "allowed by policy".to_string(),
            Outcome::Deny => "denied by policy".to_string(),
        }),
        http_status: None,
        headers: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_add: Vec::new(),
        body: None,
        inject: Vec::new(),
        tls: TlsHandling::Intercept,
        failure: None,
        generation: generation.clone(),
    };
    let object = match value {
        Value::Undefined => return Err(Invalid::Undefined),
        Value::Bool(true) => return Ok(allowed(Outcome::Allow, None)),
        Value::Bool(false) => return Ok(allowed(Outcome::Deny, None)),
        Value::Object(object) => object,
        other => {
            return Err(Invalid::Shape(format!(
                "expected a boolean or an object with `allowed`, got {}",
                type_name(other)
            )));
        }
    };
    let keys = &*KEYS;
    let field = |key: &Value| object.get(key);
    let outcome = match field(&keys.allowed) {
        Some(Value::Bool(true)) => Outcome::Allow,
        Some(Value::Bool(false)) => Outcome::Deny,
        Some(other) => {
            return Err(Invalid::Shape(format!(
                "`allowed` must be a boolean, got {}",
                type_name(other)
            )));
        }
        None => {
            return Err(Invalid::Shape(
                "the object has no `allowed` key".to_string(),
            ));
        }
    };
    let reason = field(&keys.reason)
        .map(|v| string(v, "reason"))
        .transpose()?;
    let mut decision = allowed(outcome, reason);
    if let Some(v) = field(&keys.http_status) {
        let status = v
            .as_u64()
            .ok()
            .filter(|s| (100..=599).contains(s))
            .ok_or_else(|| {
                Invalid::Shape(format!(
                    "`http_status` must be an integer from 100 to 599, got {}",
                    describe(v)
                ))
            })?;
        decision.http_status = u16::try_from(status).ok();
    }
    if let Some(v) = field(&keys.headers) {
        decision.headers = header_map(v, "headers")?;
    }
    if let Some(v) = field(&keys.response_headers_to_add) {
        decision.response_headers_to_add = header_map(v, "response_headers_to_add")?;
    }
    if let Some(v) = field(&keys.request_headers_to_remove) {
        decision.request_headers_to_remove = string_array(v, "request_headers_to_remove")?
            .into_iter()
            .map(|name| header_name(name, "request_headers_to_remove"))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = field(&keys.body) {
        decision.body = Some(string(v, "body")?);
    }
    if let Some(v) = field(&keys.mitm) {
        decision.tls = match v {
            Value::Bool(true) => TlsHandling::Intercept,
            Value::Bool(false) => TlsHandling::Passthrough,
            other => {
                return Err(Invalid::Shape(format!(
                    "`mitm` must be a boolean, got {}",
                    type_name(other)
                )));
            }
        };
    }
    if let Some(v) = field(&keys.inject) {
        decision.inject = credential_refs(v)?;
    }
    Ok(decision)
}

fn credential_refs(value: &Value) -> Result<Vec<CredentialRef>, Invalid> {
    let shape = || {
        Invalid::Shape(
            "`inject` must be an array of objects {\"secret\": string, \"header\": string}"
                .to_string(),
        )
    };
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        // A policy that builds `inject` as a partial set (`inject contains {...} if ...`)
        // gives a set; accept it as the natural Rego spelling.
        Value::Set(items) => items.iter().collect(),
        _ => return Err(shape()),
    };
    items
        .into_iter()
        .map(|item| {
            let object = item.as_object().map_err(|_| shape())?;
            let secret = object
                .get(&Value::from("secret"))
                .ok_or_else(shape)
                .and_then(|v| string(v, "inject[].secret"))?;
            let header = object
                .get(&Value::from("header"))
                .ok_or_else(shape)
                .and_then(|v| string(v, "inject[].header"))?;
            if secret.is_empty() {
                return Err(Invalid::Shape("`inject[].secret` is empty".to_string()));
            }
            Ok(CredentialRef {
                secret,
                header: header_name(header, "inject[].header")?,
            })
        })
        .collect()
}

fn header_map(value: &Value, key: &str) -> Result<Vec<(String, String)>, Invalid> {
    let object = value.as_object().map_err(|_| {
        Invalid::Shape(format!(
            "`{key}` must be an object of header names to strings or arrays of strings, got {}",
            type_name(value)
        ))
    })?;
    let mut headers = Vec::with_capacity(object.len());
    for (name, v) in object.iter() {
        let name = header_name(string(name, key)?, key)?;
        let values = match v {
            Value::String(s) => vec![s.to_string()],
            Value::Array(_) => string_array(v, key)?,
            other => {
                return Err(Invalid::Shape(format!(
                    "`{key}.{name}` must be a string or an array of strings, got {}",
                    type_name(other)
                )));
            }
        };
        for value in values {
            check_header_value(&value, key, &name)?;
            headers.push((name.clone(), value));
        }
    }
    Ok(headers)
}

/// A header name must be an RFC 9110 token; it is lower-cased as HTTP/2 requires.
fn header_name(name: String, key: &str) -> Result<String, Invalid> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(Invalid::Shape(format!(
            "`{key}` names an invalid header {name:?}"
        )));
    }
    Ok(name.to_ascii_lowercase())
}

/// Refuses control characters: a CR or LF in a header value would let a policy (or data fed to
/// it) split the request or response.
fn check_header_value(value: &str, key: &str, name: &str) -> Result<(), Invalid> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Invalid::Shape(format!(
            "`{key}.{name}` has a control character in its value"
        )));
    }
    Ok(())
}

fn string(value: &Value, key: &str) -> Result<String, Invalid> {
    match value {
        Value::String(s) => Ok(s.to_string()),
        other => Err(Invalid::Shape(format!(
            "`{key}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

fn string_array(value: &Value, key: &str) -> Result<Vec<String>, Invalid> {
    let bad = || Invalid::Shape(format!("`{key}` must be an array of strings"));
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Set(items) => items.iter().collect(),
        _ => return Err(bad()),
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.to_string()),
            _ => Err(bad()),
        })
        .collect()
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Number(_) => value.to_string(),
        other => type_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests;
