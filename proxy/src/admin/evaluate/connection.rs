//! The connection an evaluated request is assumed to arrive on: what a sandbox of the session
//! would open for the URL, as the listener would record it (`crate::gateway`), built without
//! opening anything.
//!
//! - **Transparent** (the default when the proxy has that listener, as sandboxes do): the
//!   source is the registration's address; TLS carries the URL's host as SNI. The original
//!   destination is the IP of an IP-literal URL, or the address the DNS stub already handed
//!   out for the name (with `dns_name`). A name the stub has not answered yet has no known
//!   address: the request is then decided as one that reached the listener directly (no
//!   original destination), and the answer says so.
//! - **Explicit**: an `https://` URL is a CONNECT tunnel to `host:port`, an `http://` URL an
//!   absolute-form request whose first target is `host:port`.
//!
//! TLS to an IP-literal host carries no SNI, as real clients send none.

use std::net::{IpAddr, SocketAddr};

use cordon_policy::input::ConnectionDocument;
use cordon_policy::{ConnectionInput, ListenerMode, SessionInput, Transport};

use super::request::{EvaluateError, EvaluateRequest};
use crate::connection::ConnectionContext;
use crate::sessions::SessionRecord;
use crate::state::GatewayState;

/// The assumed connection, and whether its original destination had to be left out.
#[derive(Debug)]
pub(crate) struct Assumed {
    pub(crate) context: ConnectionContext,
    /// Transparent mode, a name the DNS stub has not answered: no original destination.
    pub(crate) destination_unknown: bool,
}

/// The listener a request arrives on when the caller does not say.
pub(crate) fn default_mode(state: &GatewayState) -> ListenerMode {
    if state.config.listen.transparent.is_some() {
        ListenerMode::Transparent
    } else {
        ListenerMode::Explicit
    }
}

pub(crate) fn assume(
    state: &GatewayState,
    record: &SessionRecord,
    mode: ListenerMode,
    request: &EvaluateRequest,
) -> Result<Assumed, EvaluateError> {
    let listener = match mode {
        ListenerMode::Transparent => state.config.listen.transparent,
        ListenerMode::Explicit => state.config.listen.explicit,
    };
    if listener.is_none() {
        return Err(EvaluateError::NoListener(mode));
    }
    let destination = &request.destination;
    let literal = destination.host.parse::<IpAddr>().ok();
    let mut input = ConnectionInput {
        mode,
        transport: if request.tls {
            Transport::Tls
        } else {
            Transport::Http
        },
        // The sandbox's port is ephemeral and unknown: 0.
        source: SocketAddr::new(record.source, 0),
        original_destination: None,
        sni: (request.tls && literal.is_none()).then(|| destination.host.clone()),
        connect_target: None,
        dns_name: None,
    };
    let mut destination_unknown = false;
    let mut tunnel = false;
    match mode {
        ListenerMode::Transparent => match literal {
            Some(ip) => input.original_destination = Some(SocketAddr::new(ip, destination.port)),
            None => {
                let stub = state
                    .config
                    .dns
                    .listen
                    .and_then(|_| state.names.address_of(&destination.host));
                match stub {
                    Some(address) => {
                        input.original_destination =
                            Some(SocketAddr::new(address.into(), destination.port));
                        input.dns_name = Some(destination.host.clone());
                    }
                    None => destination_unknown = true,
                }
            }
        },
        ListenerMode::Explicit => {
            input.connect_target = Some(destination.to_string());
            tunnel = request.tls;
        }
    }
    let session = SessionInput {
        id: record.id.clone(),
        agent_id: record.agent_id.clone(),
        labels: record.labels.clone(),
    };
    let document = ConnectionDocument::new(&input, &session);
    Ok(Assumed {
        context: ConnectionContext {
            id: "evaluate".to_string(),
            source: input.source.to_string(),
            input,
            session,
            document,
            tls: request.tls,
            tunnel,
            scrub: Default::default(),
        },
        destination_unknown,
    })
}

/// The assumed connection as the answer shows it.
pub(crate) fn describe(input: &ConnectionInput) -> serde_json::Value {
    let mut described = serde_json::json!({
        "mode": input.mode.as_str(),
        "transport": input.transport.as_str(),
        "source": input.source.ip(),
    });
    let extra = [
        ("sni", input.sni.clone()),
        ("connect_target", input.connect_target.clone()),
        (
            "original_destination",
            input.original_destination.map(|a| a.to_string()),
        ),
        ("dns_name", input.dns_name.clone()),
    ];
    if let Some(object) = described.as_object_mut() {
        for (key, value) in extra {
            if let Some(value) = value {
                object.insert(key.to_string(), value.into());
            }
        }
    }
    described
}
