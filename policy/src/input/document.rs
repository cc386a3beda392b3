//! Building the input document (as regorus values, no JSON round trip on the hot path).

mod body;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::LazyLock;

use regorus::Value;

use super::{
    BodyInput, ConnectionInput, PolicyInput, RequestInput, SessionInput, Stage, parse_path,
    parse_query,
};

/// `{}`: `parsed_query` of a request without a query string.
static EMPTY_OBJECT: LazyLock<Value> = LazyLock::new(|| Value::from(BTreeMap::new()));

/// `input.version`, the same for every document.
static VERSION: LazyLock<Value> = LazyLock::new(|| {
    let f = &*FIXED;
    object([
        (&f.encoding, f.protojson.clone()),
        (&f.ext_authz, f.v3.clone()),
    ])
});

pub(super) fn build(input: &PolicyInput, body: Option<&BodyInput>) -> Value {
    let cached = ConnectionDocument::new(&input.connection, &input.session);
    match (&input.request, input.stage, body) {
        (Some(request), Stage::Request, Some(body)) => cached.request_with_body(request, body),
        (Some(request), Stage::Request, None) => cached.request(request),
        (request, stage, _) => cached.document(stage, request.as_ref(), input.destination()),
    }
}

/// The parts of the input document that stay the same for every decision on one connection
/// (addresses, SNI, session, connection facts), built once per connection. A keep-alive
/// connection or an HTTP/2 connection then builds only the request's own parts per decision,
/// which roughly halves the cost of the input document.
#[derive(Debug, Clone)]
pub struct ConnectionDocument {
    attributes: Vec<(&'static Value, Value)>,
    session: Value,
    connection_connect: Value,
    connection_request: Value,
    connect_destination: Option<super::Authority>,
    /// `input.destination` for `connect_destination`: in a tunnel or on a TLS connection every
    /// request names that host (anything else is refused as fronting before the policy runs).
    connect_destination_value: Option<Value>,
    /// Templates for the request stage (see [`fill`]): `attributes` with this connection's
    /// fields and an empty `request`, and the root with this connection's `version`, `session`
    /// and `connection` and empty per-request fields.
    request_attributes: Value,
    request_root: Value,
}

impl ConnectionDocument {
    pub fn new(conn: &ConnectionInput, session: &SessionInput) -> Self {
        let f = &*FIXED;
        let mut attributes = Vec::with_capacity(4);
        attributes.push((&f.source, address(conn.source)));
        if let Some(dst) = conn.original_destination {
            attributes.push((&f.destination, address(dst)));
        }
        if let Some(sni) = &conn.sni {
            attributes.push((
                &f.tls_session,
                object([(&f.sni, Value::from(sni.as_str()))]),
            ));
        }
        let mut session_fields = vec![
            (&f.id, Value::from(session.id.as_str())),
            (
                &f.labels,
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
            session_fields.push((&f.agent_id, Value::from(agent.as_str())));
        }
        let connection = |stage: Stage| {
            let mut fields = vec![
                (&f.stage, text(stage.as_str())),
                (&f.mode, text(conn.mode.as_str())),
                (&f.transport, text(conn.transport.as_str())),
                (&f.source, plain_address(conn.source)),
            ];
            if let Some(dst) = conn.original_destination {
                fields.push((&f.original_destination, plain_address(dst)));
            }
            if let Some(sni) = &conn.sni {
                fields.push((&f.sni, Value::from(sni.as_str())));
            }
            if let Some(target) = &conn.connect_target {
                fields.push((&f.connect_target, Value::from(target.as_str())));
            }
            if let Some(name) = &conn.dns_name {
                fields.push((&f.dns_name, Value::from(name.as_str())));
            }
            object(fields)
        };
        let connect_input = PolicyInput {
            stage: Stage::Connect,
            connection: conn.clone(),
            session: SessionInput::unknown(),
            request: None,
        };
        let connect_destination = connect_input.destination();
        let session = object(session_fields);
        let connection_request = connection(Stage::Request);
        let mut request_attributes = attributes.clone();
        request_attributes.push((&f.request, Value::Null));
        let request_root = object([
            (&f.parsed_path, Value::Null),
            (&f.parsed_query, Value::Null),
            (&f.attributes, Value::Null),
            (&f.version, VERSION.clone()),
            (&f.destination, Value::Null),
            (&f.session, session.clone()),
            (&f.connection, connection_request.clone()),
        ]);
        Self {
            attributes,
            session,
            connection_connect: connection(Stage::Connect),
            connection_request,
            connect_destination_value: connect_destination.as_ref().map(destination),
            connect_destination,
            request_attributes: object(request_attributes),
            request_root,
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

    /// The request-stage document for a request whose body the policy asked for
    /// (docs/POLICY.md, "Request bodies"): the same document plus the body's fields.
    pub fn request_with_body(&self, request: &RequestInput, body: &BodyInput) -> Value {
        let mut document = self.request(request);
        body::apply(&mut document, body);
        document
    }

    fn document(
        &self,
        stage: Stage,
        request: Option<&RequestInput>,
        destination: Option<super::Authority>,
    ) -> Value {
        let f = &*FIXED;
        if let (Stage::Request, Some(request), Some(dst)) = (stage, request, &destination) {
            // Every field of the root and of `attributes` is known: fill the templates.
            let request_object = object([(&f.http, http(request))]);
            return fill(
                &self.request_root,
                [
                    (&f.parsed_path, strings(parse_path(&request.path))),
                    (&f.parsed_query, parsed_query(&request.path)),
                    (
                        &f.attributes,
                        fill(&self.request_attributes, [(&f.request, request_object)]),
                    ),
                    (&f.destination, self.destination_value(dst)),
                ],
            );
        }
        let mut attributes = self.attributes.clone();
        let mut root = Vec::with_capacity(8);
        if let Some(request) = request {
            attributes.push((&f.request, object([(&f.http, http(request))])));
            root.push((&f.parsed_path, strings(parse_path(&request.path))));
            root.push((&f.parsed_query, parsed_query(&request.path)));
        }
        root.push((&f.attributes, object(attributes)));
        root.push((&f.version, VERSION.clone()));
        if let Some(dst) = destination {
            root.push((&f.destination, self.destination_value(&dst)));
        }
        root.push((&f.session, self.session.clone()));
        root.push((
            &f.connection,
            match stage {
                Stage::Connect => self.connection_connect.clone(),
                Stage::Request => self.connection_request.clone(),
            },
        ));
        object(root)
    }

    /// `input.destination` for `dst`: the connection's own value when it is the connection's
    /// destination.
    fn destination_value(&self, dst: &super::Authority) -> Value {
        match &self.connect_destination_value {
            Some(value) if self.connect_destination.as_ref() == Some(dst) => value.clone(),
            _ => destination(dst),
        }
    }
}

/// `input.parsed_query`: each parameter's values in order; a shared empty object when there is
/// no query string.
fn parsed_query(path: &str) -> Value {
    if !path.contains('?') {
        return EMPTY_OBJECT.clone();
    }
    Value::from(
        parse_query(path)
            .into_iter()
            .map(|(k, v)| (Value::from(k), strings(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn http(request: &RequestInput) -> Value {
    let f = &*FIXED;
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
                let separator = if name == f.cookie { "; " } else { "," };
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
    headers.insert(f.pseudo_authority.clone(), Value::from(authority.as_str()));
    headers.insert(f.pseudo_method.clone(), text(&request.method));
    headers.insert(f.pseudo_path.clone(), Value::from(request.path.as_str()));
    headers.insert(f.pseudo_scheme.clone(), text(&request.scheme));

    let fields = [
        (&f.method, text(&request.method)),
        (&f.host, Value::from(authority.as_str())),
        (&f.path, Value::from(request.path.as_str())),
        (&f.scheme, text(&request.scheme)),
        (&f.protocol, text(request.protocol.as_str())),
        (&f.headers, Value::from(headers)),
    ];
    match &request.id {
        // The proxy always names the request.
        Some(id) => {
            let [a, b, c, d, e, g] = fields;
            fill(
                &HTTP_TEMPLATE,
                [a, b, c, d, e, g, (&f.id, Value::from(id.as_str()))],
            )
        }
        None => object(fields),
    }
}

/// `attributes.request.http` with every field, for [`fill`].
static HTTP_TEMPLATE: LazyLock<Value> = LazyLock::new(|| {
    let f = &*FIXED;
    object([
        (&f.method, Value::Null),
        (&f.host, Value::Null),
        (&f.path, Value::Null),
        (&f.scheme, Value::Null),
        (&f.protocol, Value::Null),
        (&f.headers, Value::Null),
        (&f.id, Value::Null),
    ])
});

/// `template` (an object) with the values of `fields` put in: every key in `fields` must be
/// one of the template's. regorus keeps an object in a compact sorted slice and replaces a
/// value in place when its key exists, so this costs one copy of the template's slots and a
/// binary search per field, where building the object costs a sort, a tree, and the copy.
fn fill<const N: usize>(template: &Value, fields: [(&'static Value, Value); N]) -> Value {
    let Ok(template) = template.as_object() else {
        return object(fields);
    };
    let mut filled = template.clone();
    for (key, value) in fields {
        debug_assert!(filled.contains_key(key), "{key:?} is not in the template");
        filled.insert(key.clone(), value);
    }
    filled.into_value()
}

/// `input.destination`: `{host, port}`.
fn destination(dst: &super::Authority) -> Value {
    let f = &*FIXED;
    object([
        (&f.host, Value::from(dst.host.as_str())),
        (&f.port, Value::from(u32::from(dst.port))),
    ])
}

/// Envoy's `address.socketAddress` shape.
fn address(addr: SocketAddr) -> Value {
    let f = &*FIXED;
    object([(
        &f.address,
        object([(
            &f.socket_address,
            object([
                (&f.address, Value::from(addr.ip().to_string())),
                (&f.port_value, Value::from(u32::from(addr.port()))),
            ]),
        )]),
    )])
}

/// Cordon's flat `{address, port}` shape.
fn plain_address(addr: SocketAddr) -> Value {
    let f = &*FIXED;
    object([
        (&f.address, Value::from(addr.ip().to_string())),
        (&f.port, Value::from(u32::from(addr.port()))),
    ])
}

fn strings(items: Vec<String>) -> Value {
    Value::from(items.into_iter().map(Value::from).collect::<Vec<_>>())
}

fn object<I: IntoIterator<Item = (&'static Value, Value)>>(fields: I) -> Value {
    Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// The document's fixed strings (key names and the closed sets of values), each allocated
/// once: a document has about fifty keys, and allocating each name per decision, and later
/// looking each up in a hash map, were measurable shares of building the input. Cloning a
/// cached `Value` is a reference-count increment.
macro_rules! fixed_strings {
    ($($field:ident = $text:literal,)*) => {
        struct Fixed {
            $($field: Value,)*
        }

        static FIXED: LazyLock<Fixed> = LazyLock::new(|| Fixed {
            $($field: Value::from($text),)*
        });

        /// A cached `Value` for a string that is often one of the fixed ones (methods,
        /// schemes); a new one otherwise.
        fn text(s: &str) -> Value {
            let fixed = &*FIXED;
            match s {
                $($text => fixed.$field.clone(),)*
                _ => Value::from(s),
            }
        }
    };
}

fixed_strings! {
    address = "address",
    agent_id = "agent_id",
    attributes = "attributes",
    connect_target = "connect_target",
    connection = "connection",
    destination = "destination",
    dns_name = "dns_name",
    encoding = "encoding",
    ext_authz = "ext_authz",
    headers = "headers",
    host = "host",
    http = "http",
    id = "id",
    labels = "labels",
    method = "method",
    mode = "mode",
    original_destination = "original_destination",
    parsed_path = "parsed_path",
    parsed_query = "parsed_query",
    path = "path",
    port = "port",
    port_value = "portValue",
    protocol = "protocol",
    request = "request",
    scheme = "scheme",
    session = "session",
    sni = "sni",
    socket_address = "socketAddress",
    source = "source",
    stage = "stage",
    tls_session = "tlsSession",
    transport = "transport",
    version = "version",
    cookie = "cookie",
    pseudo_authority = ":authority",
    pseudo_method = ":method",
    pseudo_path = ":path",
    pseudo_scheme = ":scheme",
    protojson = "protojson",
    v3 = "v3",
    connect = "connect",
    transparent = "transparent",
    explicit = "explicit",
    tls = "tls",
    tcp = "tcp",
    https = "https",
    get = "GET",
    post = "POST",
    head = "HEAD",
    put = "PUT",
    patch = "PATCH",
    delete = "DELETE",
    options = "OPTIONS",
    http10 = "HTTP/1.0",
    http11 = "HTTP/1.1",
    http2 = "HTTP/2",
    // Request bodies (document/body.rs).
    body = "body",
    body_error = "body_error",
    parsed_body = "parsed_body",
    truncated_body = "truncated_body",
    partial_body_header = "x-envoy-auth-partial-body",
    true_ = "true",
    false_ = "false",
    cordon = "cordon",
    kind = "kind",
    message = "message",
    jsonrpc = "jsonrpc",
    graphql = "graphql",
    git = "git",
    params = "params",
    notification = "notification",
    response = "response",
    invalid = "invalid",
    operation = "operation",
    operations = "operations",
    type_ = "type",
    fields = "fields",
    name = "name",
    query = "query",
    mutation = "mutation",
    subscription = "subscription",
    commands = "commands",
    old = "old",
    new = "new",
    ref_ = "ref",
    action = "action",
    create = "create",
    update = "update",
    delete_ref = "delete",
}
