//! What the proxy knows about a connection or request, and the input document built from it.
//!
//! The document has the shape of Envoy's ext_authz `CheckRequest` as opa-envoy-plugin presents
//! it (so OPA-Envoy policies run unchanged), plus Cordon's own keys. docs/POLICY.md documents
//! every field with a full example. In brief:
//!
//! ```text
//! input.version                       {"encoding": "protojson", "ext_authz": "v3"}
//! input.attributes.source.address.socketAddress      {address, portValue}: the sandbox side
//! input.attributes.destination.address.socketAddress {address, portValue}: original destination
//! input.attributes.tlsSession.sni     SNI of the intercepted TLS connection
//! input.attributes.request.http       {id, method, host, path, scheme, protocol, headers}
//!                                     (stage `request` only; headers lower-case, pseudo-headers
//!                                     `:authority` `:method` `:path` `:scheme` always present)
//! input.parsed_path                   percent-decoded path segments (stage `request` only)
//! input.parsed_query                  query parameters, values always arrays (stage `request`)
//! input.destination                   {host, port}: the normalised name and port being reached
//! input.session                       {id, agent_id, labels}
//! input.connection                    {stage, mode, transport, source, original_destination,
//!                                      sni, connect_target, dns_name}
//! ```
//!
//! When the bundle asks for request bodies (`metadata.cordon.request_body` in its manifest)
//! and the proxy passes a [`BodyInput`], the request stage also has
//! `attributes.request.http.body`, `parsed_body`, `truncated_body` and `input.cordon`
//! (`body_error`, `jsonrpc`, `graphql`, `git`): see [`body`].

pub mod body;
mod document;
mod uri;

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use body::{BodyInput, BodyLimits, BodyRequest};
pub use document::ConnectionDocument;
pub use uri::{Authority, parse_authority, parse_path, parse_query};

/// Which decision is being asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Once per connection, before any HTTP request is read: decides deny, splice (`mitm:
    /// false`) or intercept. `input.attributes.request` is absent.
    Connect,
    /// Once per HTTP request (each HTTP/1.1 keep-alive request, each HTTP/2 stream).
    Request,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Request => "request",
        }
    }
}

/// How the connection reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Redirected by nftables; the destination comes from SO_ORIGINAL_DST.
    Transparent,
    /// The client asked for the proxy (HTTP CONNECT or an absolute-form request).
    Explicit,
}

impl ListenerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Transparent => "transparent",
            ListenerMode::Explicit => "explicit",
        }
    }
}

/// What the connection carries, as classified from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TLS ClientHello.
    Tls,
    /// Plain HTTP/1.x.
    Http,
    /// Anything else.
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Http => "http",
            Transport::Tcp => "tcp",
        }
    }
}

/// The HTTP version of a request, spelled as Envoy spells it in `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    Http10,
    Http11,
    Http2,
}

impl HttpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpProtocol::Http10 => "HTTP/1.0",
            HttpProtocol::Http11 => "HTTP/1.1",
            HttpProtocol::Http2 => "HTTP/2",
        }
    }
}

/// The session a connection belongs to, found by source address in the proxy's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInput {
    /// The CMA session id, or [`SessionInput::UNKNOWN_ID`] for unregistered sources.
    pub id: String,
    pub agent_id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl SessionInput {
    /// The session id of a source address that no session registered.
    pub const UNKNOWN_ID: &'static str = "unknown";

    pub fn unknown() -> Self {
        Self {
            id: Self::UNKNOWN_ID.to_string(),
            agent_id: None,
            labels: BTreeMap::new(),
        }
    }

    pub fn named(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            agent_id: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Per-connection facts, present at both stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInput {
    pub mode: ListenerMode,
    pub transport: Transport,
    /// The sandbox side of the connection.
    pub source: SocketAddr,
    /// Where the client was going: SO_ORIGINAL_DST in transparent mode, absent in explicit mode
    /// unless the proxy knows it.
    pub original_destination: Option<SocketAddr>,
    /// The TLS server name the client sent, if any.
    pub sni: Option<String>,
    /// The authority of an explicit-mode `CONNECT` request (`host:port`).
    pub connect_target: Option<String>,
    /// Transparent mode: the name the sandbox looked up at Cordon's DNS stub that answered
    /// with `original_destination` (a synthetic address), if it did.
    pub dns_name: Option<String>,
}

/// One HTTP request, as received from the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInput {
    /// The proxy's request id (also the decision id in audit records), if it assigned one.
    pub id: Option<String>,
    pub method: String,
    /// `https` for intercepted TLS, `http` for plaintext.
    pub scheme: String,
    /// Host and optional port, as the client sent them in `Host` or `:authority`.
    pub authority: String,
    /// Path with query string, as received (still percent-encoded).
    pub path: String,
    pub protocol: HttpProtocol,
    /// Header fields in arrival order, any case; repeated names allowed. Pseudo-headers given
    /// here are ignored: the document's pseudo-headers come from the fields above.
    pub headers: Vec<(String, String)>,
}

impl RequestInput {
    /// A request as a client would send it for `url` (`http://` or `https://` only), the way the
    /// proxy builds it: scheme, authority and path with query from the URL, HTTP/1.1.
    pub fn from_url(
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
    ) -> Result<Self, String> {
        let method = method.trim();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("{method:?} is not an HTTP method"));
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an absolute http:// or https:// URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {scheme:?} is not http or https"));
        }
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let default_port = if scheme == "http" { 80 } else { 443 };
        if parse_authority(authority, default_port).is_none() {
            return Err(format!("{authority:?} is not a valid host[:port]"));
        }
        let path = path.split('#').next().unwrap_or("");
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Self {
            id: None,
            method: method.to_ascii_uppercase(),
            scheme,
            authority: authority.to_string(),
            path,
            protocol: HttpProtocol::Http11,
            headers,
        })
    }
}

/// Everything one decision is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInput {
    pub stage: Stage,
    pub connection: ConnectionInput,
    pub session: SessionInput,
    /// Present at [`Stage::Request`], absent at [`Stage::Connect`].
    pub request: Option<RequestInput>,
}

impl PolicyInput {
    /// The input document as regorus values, ready for evaluation.
    pub fn to_value(&self) -> regorus::Value {
        document::build(self, None)
    }

    /// The input document with a request body's fields (request stage only; `None` is
    /// [`PolicyInput::to_value`]).
    pub fn to_value_with_body(&self, body: Option<&BodyInput>) -> regorus::Value {
        document::build(self, body)
    }

    /// The input document as JSON, exactly what the policy sees (for `cordon-policy eval` and
    /// for debugging a policy with `opa eval --input`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_value()).unwrap_or(serde_json::Value::Null)
    }

    /// [`PolicyInput::to_json`] with a request body's fields.
    pub fn to_json_with_body(&self, body: Option<&BodyInput>) -> serde_json::Value {
        serde_json::to_value(self.to_value_with_body(body)).unwrap_or(serde_json::Value::Null)
    }

    /// The host name and port being reached: the request's authority at stage `request`; at
    /// stage `connect` the CONNECT target, else the SNI with the original destination's port,
    /// else the original destination address.
    pub fn destination(&self) -> Option<Authority> {
        if let Some(request) = &self.request {
            let default_port = if request.scheme == "http" { 80 } else { 443 };
            return parse_authority(&request.authority, default_port);
        }
        let conn = &self.connection;
        let original_port = conn.original_destination.map(|a| a.port());
        if let Some(target) = &conn.connect_target {
            return parse_authority(target, 443);
        }
        if let Some(sni) = &conn.sni {
            return parse_authority(sni, original_port.unwrap_or(443));
        }
        if let (Some(name), Some(port)) = (&conn.dns_name, original_port) {
            return Some(Authority {
                host: name.clone(),
                port,
            });
        }
        conn.original_destination.map(|addr| Authority {
            host: addr.ip().to_string(),
            port: addr.port(),
        })
    }
}

#[cfg(test)]
mod tests;
