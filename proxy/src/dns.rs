//! The sandboxes' DNS stub: every A query gets a synthetic address that stands for the name,
//! and nothing is ever forwarded.
//!
//! A sandbox has no route to any resolver: nftables sends its UDP port 53 here. The stub
//! answers `A` with an address from `dns.synthetic_range` that the proxy maps back to the name
//! when the sandbox connects to it (`input.connection.dns_name`), so even a client that sends
//! no SNI (or speaks plaintext) is known by name. The proxy then resolves the name itself, with
//! its own resolver and SSRF guard: the sandbox never learns a real address. `AAAA` gets an
//! empty answer (sandboxes have no IPv6), so does every other type. A name that carries data
//! (`<secret>.attacker.example`) reaches only this stub and the audit log.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::audit::now_rfc3339;
use crate::state::GatewayState;

/// Longest name accepted (RFC 1035: 255 octets on the wire, 253 as text).
const MAX_NAME: usize = 253;

/// Names and the synthetic addresses that stand for them, both ways.
#[derive(Debug)]
pub struct SyntheticNames {
    range: Ipv4Net,
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<String, Ipv4Addr>,
    by_address: HashMap<Ipv4Addr, String>,
    /// Offset of the next address to hand out; wraps, evicting the oldest name.
    next: u32,
}

impl SyntheticNames {
    pub fn new(range: Ipv4Net) -> Self {
        Self {
            range,
            inner: Mutex::default(),
        }
    }

    /// Whether `ip` is in the synthetic range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.range.contains(&v4),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.range.contains(&v4)),
        }
    }

    /// The address standing for `name` (lower-case, no trailing dot), handing one out if the
    /// name has none. When the range is used up, the oldest name loses its address.
    pub fn address_for(&self, name: &str) -> Ipv4Addr {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(address) = table.by_name.get(name) {
            return *address;
        }
        // Skip the network and broadcast addresses of the range.
        let usable = (self.range.hosts().count() as u32).max(1);
        let offset = 1 + table.next % usable;
        table.next = table.next.wrapping_add(1);
        let address = Ipv4Addr::from(u32::from(self.range.network()) + offset);
        if let Some(old) = table.by_address.insert(address, name.to_string()) {
            table.by_name.remove(&old);
        }
        table.by_name.insert(name.to_string(), address);
        address
    }

    /// The name `ip` stands for, if the stub handed it out.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
        };
        let table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        table.by_address.get(&v4).cloned()
    }
}

/// One audited query.
#[derive(Debug, Serialize)]
struct DnsRecord<'a> {
    time: String,
    kind: &'static str,
    session: String,
    source: String,
    name: &'a str,
    qtype: String,
    rcode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
}

/// Answers one query packet; `None` when it is not worth an answer (not a query at all).
pub fn answer(state: &GatewayState, source: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let Some(query) = request.queries().first().cloned() else {
        response.set_response_code(ResponseCode::FormErr);
        return response.to_vec().ok();
    };
    response.add_query(query.clone());
    // Mapped lower-case; audited as sent (letter case can carry data too).
    let sent = query.name().to_ascii().trim_end_matches('.').to_string();
    let name = sent.to_ascii_lowercase();
    let (rcode, answer) = if request.op_code() != OpCode::Query || request.queries().len() != 1 {
        (ResponseCode::NotImp, None)
    } else if query.query_class() != DNSClass::IN {
        (ResponseCode::Refused, None)
    } else if name.is_empty() || name.len() > MAX_NAME {
        (ResponseCode::NXDomain, None)
    } else if query.query_type() == RecordType::A {
        let address = state.names.address_for(&name);
        response.add_answer(Record::from_rdata(
            query.name().clone(),
            state.config.dns.ttl_secs,
            RData::A(A(address)),
        ));
        (ResponseCode::NoError, Some(address.to_string()))
    } else {
        // AAAA and everything else: the name exists, with no data of that type.
        (ResponseCode::NoError, None)
    };
    response.set_response_code(rcode);
    let session = state.sessions.lookup(source.ip()).id;
    state.audit.write(&DnsRecord {
        time: now_rfc3339(),
        kind: "dns",
        session,
        source: source.to_string(),
        name: &sent,
        qtype: query.query_type().to_string(),
        rcode: match rcode {
            ResponseCode::NoError => "NOERROR",
            ResponseCode::NXDomain => "NXDOMAIN",
            ResponseCode::Refused => "REFUSED",
            ResponseCode::NotImp => "NOTIMP",
            _ => "FORMERR",
        },
        answer,
    });
    state
        .metrics
        .dns_queries
        .with_label_values(&[if rcode == ResponseCode::NoError {
            "answered"
        } else {
            "refused"
        }])
        .inc();
    response.to_vec().ok()
}

/// Serves the stub on `socket` until the task is dropped.
pub async fn serve(state: Arc<GatewayState>, socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, source) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "DNS stub receive failed");
                continue;
            }
        };
        if let Some(reply) = answer(&state, source, &buf[..n])
            && let Err(e) = socket.send_to(&reply, source).await
        {
            tracing::debug!(error = %e, %source, "DNS stub reply not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_stable_addresses_that_map_back() {
        let names = SyntheticNames::new("198.18.0.0/24".parse().unwrap());
        let a = names.address_for("pypi.org");
        assert_eq!(names.address_for("pypi.org"), a);
        assert!(names.contains(IpAddr::V4(a)));
        assert_eq!(names.name_of(IpAddr::V4(a)).as_deref(), Some("pypi.org"));
        let b = names.address_for("crates.io");
        assert_ne!(a, b);
        assert_eq!(names.name_of("198.18.0.200".parse().unwrap()), None);
        assert!(!names.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_full_range_evicts_the_oldest_name() {
        let names = SyntheticNames::new("198.18.0.0/30".parse().unwrap());
        let first = names.address_for("one.test");
        names.address_for("two.test");
        let third = names.address_for("three.test");
        assert_eq!(
            third, first,
            "two usable addresses; the third name reuses the first"
        );
        assert_eq!(
            names.name_of(IpAddr::V4(first)).as_deref(),
            Some("three.test")
        );
        assert_ne!(names.address_for("one.test"), first);
    }
}
