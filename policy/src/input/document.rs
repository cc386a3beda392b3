//! Building the input document (as regorus values, no JSON round trip on the hot path).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use regorus::Value;

use super::{PolicyInput, RequestInput, parse_path, parse_query};

pub(super) fn build(input: &PolicyInput) -> Value {
    let conn = &input.connection;
    let mut attributes = Vec::with_capacity(4);
    attributes.push(("source", address(conn.source)));
    if let Some(dst) = conn.original_destination {
        attributes.push(("destination", address(dst)));
    }
    if let Some(sni) = &conn.sni {
        attributes.push(("tlsSession", object([("sni", Value::from(sni.as_str()))])));
    }

    let mut root = Vec::with_capacity(8);
    if let Some(request) = &input.request {
        attributes.push(("request", object([("http", http(request))])));
        root.push(("parsed_path", strings(parse_path(&request.path))));
        let query = parse_query(&request.path)
            .into_iter()
            .map(|(k, v)| (Value::from(k), strings(v)))
            .collect::<BTreeMap<_, _>>();
        root.push(("parsed_query", Value::from(query)));
    }
    root.push(("attributes", object(attributes)));
    root.push((
        "version",
        object([
            ("encoding", Value::from("protojson")),
            ("ext_authz", Value::from("v3")),
        ]),
    ));
    if let Some(dst) = input.destination() {
        root.push((
            "destination",
            object([
                ("host", Value::from(dst.host)),
                ("port", Value::from(u32::from(dst.port))),
            ]),
        ));
    }
    let session = &input.session;
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
    root.push(("session", object(session_fields)));

    let mut connection = vec![
        ("stage", Value::from(input.stage.as_str())),
        ("mode", Value::from(conn.mode.as_str())),
        ("transport", Value::from(conn.transport.as_str())),
        ("source", plain_address(conn.source)),
    ];
    if let Some(dst) = conn.original_destination {
        connection.push(("original_destination", plain_address(dst)));
    }
    if let Some(sni) = &conn.sni {
        connection.push(("sni", Value::from(sni.as_str())));
    }
    if let Some(target) = &conn.connect_target {
        connection.push(("connect_target", Value::from(target.as_str())));
    }
    root.push(("connection", object(connection)));
    object(root)
}

fn http(request: &RequestInput) -> Value {
    let authority = request.authority.to_ascii_lowercase();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &request.headers {
        if name.starts_with(':') {
            continue;
        }
        let name = name.to_ascii_lowercase();
        match headers.get_mut(&name) {
            // Repeated fields are joined as Envoy joins them: with a comma, except cookies,
            // whose pairs are joined with "; " (RFC 9113 section 8.2.3).
            Some(existing) => {
                existing.push_str(if name == "cookie" { "; " } else { "," });
                existing.push_str(value);
            }
            None => {
                headers.insert(name, value.clone());
            }
        }
    }
    headers.insert(":authority".into(), authority.clone());
    headers.insert(":method".into(), request.method.clone());
    headers.insert(":path".into(), request.path.clone());
    headers.insert(":scheme".into(), request.scheme.clone());
    let headers = headers
        .into_iter()
        .map(|(k, v)| (Value::from(k), Value::from(v)))
        .collect::<BTreeMap<_, _>>();

    let mut fields = vec![
        ("method", Value::from(request.method.as_str())),
        ("host", Value::from(authority)),
        ("path", Value::from(request.path.as_str())),
        ("scheme", Value::from(request.scheme.as_str())),
        ("protocol", Value::from(request.protocol.as_str())),
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
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}
