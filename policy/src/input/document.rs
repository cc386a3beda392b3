//! Building the input document (as regorus values, no JSON round trip on the hot path).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::LazyLock;

use regorus::Value;

use super::{
    ConnectionInput, PolicyInput, RequestInput, SessionInput, Stage, parse_path, parse_query,
};

/// `input.version`, the same for every document.
static VERSION: LazyLock<Value> =
    LazyLock::new(|| object([("encoding", key("protojson")), ("ext_authz", key("v3"))]));

pub(super) fn build(input: &PolicyInput) -> Value {
    let cached = ConnectionDocument::new(&input.connection, &input.session);
    match (&input.request, input.stage) {
        (Some(request), Stage::Request) => cached.request(request),
        (request, stage) => cached.document(stage, request.as_ref(), input.destination()),
    }
}

/// The parts of the input document that stay the same for every decision on one connection
/// (addresses, SNI, session, connection facts), built once per connection. A keep-alive
/// connection or an HTTP/2 connection then builds only the request's own parts per decision,
/// which roughly halves the cost of the input document.
#[derive(Debug, Clone)]
pub struct ConnectionDocument {
    attributes: Vec<(&'static str, Value)>,
    session: Value,
    connection_connect: Value,
    connection_request: Value,
    connect_destination: Option<super::Authority>,
}

impl ConnectionDocument {
    pub fn new(conn: &ConnectionInput, session: &SessionInput) -> Self {
        let mut attributes = Vec::with_capacity(4);
        attributes.push(("source", address(conn.source)));
        if let Some(dst) = conn.original_destination {
            attributes.push(("destination", address(dst)));
        }
        if let Some(sni) = &conn.sni {
            attributes.push(("tlsSession", object([("sni", Value::from(sni.as_str()))])));
        }
        let mut session_fields = vec![
            ("id", Value::from(session.id.as_str())),
            (
                "labels",
                Value::from(
                    session
                        .labels
                        .iter()
                        .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                        .collect::<BTreeMap<_, _>>(),
                ),
            ),
        ];
        if let Some(agent) = &session.agent_id {
            session_fields.push(("agent_id", Value::from(agent.as_str())));
        }
        let connection = |stage: Stage| {
            let mut fields = vec![
                ("stage", key(stage.as_str())),
                ("mode", key(conn.mode.as_str())),
                ("transport", key(conn.transport.as_str())),
                ("source", plain_address(conn.source)),
            ];
            if let Some(dst) = conn.original_destination {
                fields.push(("original_destination", plain_address(dst)));
            }
            if let Some(sni) = &conn.sni {
                fields.push(("sni", Value::from(sni.as_str())));
            }
            if let Some(target) = &conn.connect_target {
                fields.push(("connect_target", Value::from(target.as_str())));
            }
            if let Some(name) = &conn.dns_name {
                fields.push(("dns_name", Value::from(name.as_str())));
            }
            object(fields)
        };
        let connect_input = PolicyInput {
            stage: Stage::Connect,
            connection: conn.clone(),
            session: SessionInput::unknown(),
            request: None,
        };
        Self {
            attributes,
            session: object(session_fields),
            connection_connect: connection(Stage::Connect),
            connection_request: connection(Stage::Request),
            connect_destination: connect_input.destination(),
        }
    }

    /// The connect-stage document.
    pub fn connect(&self) -> Value {
        self.document(Stage::Connect, None, self.connect_destination.clone())
    }

    /// The request-stage document for one request on this connection.
    pub fn request(&self, request: &RequestInput) -> Value {
        let default_port = if request.scheme == "http" { 80 } else { 443 };
        let destination = super::parse_authority(&request.authority, default_port);
        self.document(Stage::Request, Some(request), destination)
    }

    fn document(
        &self,
        stage: Stage,
        request: Option<&RequestInput>,
        destination: Option<super::Authority>,
    ) -> Value {
        let mut attributes = self.attributes.clone();
        let mut root = Vec::with_capacity(8);
        if let Some(request) = request {
            attributes.push(("request", object([("http", http(request))])));
            root.push(("parsed_path", strings(parse_path(&request.path))));
            let query = parse_query(&request.path)
                .into_iter()
                .map(|(k, v)| (Value::from(k), strings(v)))
                .collect::<BTreeMap<_, _>>();
            root.push(("parsed_query", Value::from(query)));
        }
        root.push(("attributes", object(attributes)));
        root.push(("version", VERSION.clone()));
        if let Some(dst) = destination {
            root.push((
                "destination",
                object([
                    ("host", Value::from(dst.host)),
                    ("port", Value::from(u32::from(dst.port))),
                ]),
            ));
        }
        root.push(("session", self.session.clone()));
        root.push((
            "connection",
            match stage {
                Stage::Connect => self.connection_connect.clone(),
                Stage::Request => self.connection_request.clone(),
            },
        ));
        object(root)
    }
}

fn http(request: &RequestInput) -> Value {
    let authority = request.authority.to_ascii_lowercase();
    let mut headers: BTreeMap<Value, Value> = BTreeMap::new();
    for (name, value) in &request.headers {
        if name.starts_with(':') {
            continue;
        }
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Value::from(name.to_ascii_lowercase())
        } else {
            Value::from(name.as_str())
        };
        match headers.get_mut(&name) {
            // Repeated fields are joined as Envoy joins them: with a comma, except cookies,
            // whose pairs are joined with "; " (RFC 9113 section 8.2.3).
            Some(existing) => {
                let separator = if name == key("cookie") { "; " } else { "," };
                let joined = format!(
                    "{}{separator}{value}",
                    existing.as_string().map(|s| s.as_ref()).unwrap_or("")
                );
                *existing = Value::from(joined);
            }
            None => {
                headers.insert(name, Value::from(value.as_str()));
            }
        }
    }
    headers.insert(key(":authority"), Value::from(authority.as_str()));
    headers.insert(key(":method"), text(&request.method));
    headers.insert(key(":path"), Value::from(request.path.as_str()));
    headers.insert(key(":scheme"), text(&request.scheme));

    let mut fields = vec![
        ("method", text(&request.method)),
        ("host", Value::from(authority.as_str())),
        ("path", Value::from(request.path.as_str())),
        ("scheme", text(&request.scheme)),
        ("protocol", key(request.protocol.as_str())),
        ("headers", Value::from(headers)),
    ];
    if let Some(id) = &request.id {
        fields.push(("id", Value::from(id.as_str())));
    }
    object(fields)
}

/// Envoy's `address.socketAddress` shape.
fn address(addr: SocketAddr) -> Value {
    object([(
        "address",
        object([(
            "socketAddress",
            object([
                ("address", Value::from(addr.ip().to_string())),
                ("portValue", Value::from(u32::from(addr.port()))),
            ]),
        )]),
    )])
}

/// Cordon's flat `{address, port}` shape.
fn plain_address(addr: SocketAddr) -> Value {
    object([
        ("address", Value::from(addr.ip().to_string())),
        ("port", Value::from(u32::from(addr.port()))),
    ])
}

fn strings(items: Vec<String>) -> Value {
    Value::from(items.into_iter().map(Value::from).collect::<Vec<_>>())
}

fn object<I: IntoIterator<Item = (&'static str, Value)>>(fields: I) -> Value {
    Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (key(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// The document's fixed key names, allocated once: a document has about fifty keys, and
/// allocating each name per decision was a measurable share of building the input. Cloning a
/// cached `Value` is a reference-count increment.
static KEYS: LazyLock<HashMap<&'static str, Value>> = LazyLock::new(|| {
    [
        "address",
        "agent_id",
        "attributes",
        "connect_target",
        "connection",
        "destination",
        "dns_name",
        "encoding",
        "ext_authz",
        "headers",
        "host",
        "http",
        "id",
        "labels",
        "method",
        "mode",
        "original_destination",
        "parsed_path",
        "parsed_query",
        "path",
        "port",
        "portValue",
        "protocol",
        "request",
        "scheme",
        "session",
        "sni",
        "socketAddress",
        "source",
        "stage",
        "tlsSession",
        "transport",
        "version",
        "cookie",
        ":authority",
        ":method",
        ":path",
        ":scheme",
        "protojson",
        "v3",
        "connect",
        "request",
        "transparent",
        "explicit",
        "tls",
        "tcp",
        "https",
        "GET",
        "POST",
        "HEAD",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "HTTP/1.0",
        "HTTP/1.1",
        "HTTP/2",
    ]
    .into_iter()
    .map(|k| (k, Value::from(k)))
    .collect()
});

/// A cached `Value` for a fixed string (key names and the closed sets of values).
fn key(name: &'static str) -> Value {
    KEYS.get(name).cloned().unwrap_or_else(|| Value::from(name))
}

/// A `Value` for a string that is often one of the fixed ones (methods, schemes).
fn text(s: &str) -> Value {
    KEYS.get(s).cloned().unwrap_or_else(|| Value::from(s))
}
