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
    /// The name an address stands for, and when it was handed out.
    by_address: HashMap<Ipv4Addr, (String, std::time::Instant)>,
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
    /// name has none. When the range is used up, the oldest name loses its address, but only
    /// once its answer's TTL (`min_age`) has passed, so no cached answer is remapped; `None`
    /// when every address is younger than that.
    pub fn address_for(&self, name: &str, min_age: std::time::Duration) -> Option<Ipv4Addr> {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(address) = table.by_name.get(name) {
            return Some(*address);
        }
        // Skip the network and broadcast addresses of the range (a /24 or wider).
        let usable = (1u32 << (32 - u32::from(self.range.prefix_len()))) - 2;
        let offset = 1 + table.next % usable;
        let address = Ipv4Addr::from(u32::from(self.range.network()) + offset);
        if let Some((_, at)) = table.by_address.get(&address)
            && at.elapsed() < min_age
        {
            return None;
        }
        table.next = table.next.wrapping_add(1);
        let now = std::time::Instant::now();
        if let Some((old, _)) = table.by_address.insert(address, (name.to_string(), now)) {
            table.by_name.remove(&old);
        }
        table.by_name.insert(name.to_string(), address);
        Some(address)
    }

    /// The address the stub handed out for `name`, if it did; never hands one out.
    pub fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        let table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        table.by_name.get(name).copied()
    }

    /// The name `ip` stands for, if the stub handed it out.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
        };
        let table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        table.by_address.get(&v4).map(|(name, _)| name.clone())
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
        let ttl = state.config.dns.ttl_secs;
        match state
            .names
            .address_for(&name, std::time::Duration::from_secs(u64::from(ttl)))
        {
            Some(address) => {
                response.add_answer(Record::from_rdata(
                    query.name().clone(),
                    ttl,
                    RData::A(A(address)),
                ));
                (ResponseCode::NoError, Some(address.to_string()))
            }
            // Every synthetic address is still in some sandbox's cache.
            None => (ResponseCode::ServFail, None),
        }
    } else {
        // AAAA and everything else: the name exists, with no data of that type.
        (ResponseCode::NoError, None)
    };
    response.set_response_code(rcode);
    let session = state.sessions.lookup(source.ip()).id;
    state.audit.write_other(&DnsRecord {
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
            ResponseCode::ServFail => "SERVFAIL",
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

    const NOW: std::time::Duration = std::time::Duration::ZERO;

    #[test]
    fn names_get_stable_addresses_that_map_back() {
        let names = SyntheticNames::new("198.18.0.0/24".parse().unwrap());
        let a = names.address_for("pypi.org", NOW).unwrap();
        assert_eq!(names.address_for("pypi.org", NOW), Some(a));
        assert!(names.contains(IpAddr::V4(a)));
        assert_eq!(names.name_of(IpAddr::V4(a)).as_deref(), Some("pypi.org"));
        let b = names.address_for("crates.io", NOW).unwrap();
        assert_ne!(a, b);
        assert_eq!(names.name_of("198.18.0.200".parse().unwrap()), None);
        assert!(!names.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_full_range_evicts_the_oldest_name_once_its_ttl_has_passed() {
        // A /24 has 254 usable addresses.
        let names = SyntheticNames::new("198.18.0.0/24".parse().unwrap());
        let first = names.address_for("name0.test", NOW).unwrap();
        for i in 1..254 {
            names.address_for(&format!("name{i}.test"), NOW).unwrap();
        }
        let ttl = std::time::Duration::from_secs(60);
        assert_eq!(
            names.address_for("late.test", ttl),
            None,
            "no address is old enough"
        );
        let reused = names.address_for("late.test", NOW).unwrap();
        assert_eq!(reused, first);
        assert_eq!(
            names.name_of(IpAddr::V4(first)).as_deref(),
            Some("late.test")
        );
        assert_ne!(names.address_for("name0.test", NOW), Some(first));
    }
}
