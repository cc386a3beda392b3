//! The request and connection record's JSON line, written field by field.
//!
//! Hand-written rather than `serde_json::to_writer` on the derived `Serialize`: serde_json
//! escapes each of the record's twenty-odd keys like a value and goes through `io::Write` for
//! every piece, which made encoding about a tenth of the proxy's user-space instructions per
//! small request (`make bench-instructions`). Here the keys are literals and each value is one
//! escape scan and one copy. The output is byte for byte what serde_json writes for the same
//! record (the tests below hold it to that), so docs/AUDIT.md's schema is unchanged.

use std::net::SocketAddr;

use super::AuditRecord;

/// Appends `record` as one JSON object (no newline).
pub(super) fn record(r: &AuditRecord<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":");
    string(out, &r.time);
    key_str(out, b",\"kind\":", r.kind);
    key_str(out, b",\"decision_id\":", r.decision_id);
    if let Some(v) = r.connection_id {
        key_str(out, b",\"connection_id\":", v);
    }
    key_str(out, b",\"session\":", r.session);
    if let Some(labels) = r.labels.filter(|l| !l.is_empty()) {
        out.extend_from_slice(b",\"labels\":{");
        for (n, (key, value)) in labels.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            string(out, key);
            out.push(b':');
            string(out, value);
        }
        out.push(b'}');
    }
    key_str(out, b",\"source\":", r.source);
    if let Some(v) = r.original_destination {
        out.extend_from_slice(b",\"original_destination\":");
        address(out, v);
    }
    key_str(out, b",\"mode\":", r.mode);
    if let Some(v) = r.sni {
        key_str(out, b",\"sni\":", v);
    }
    if let Some(v) = r.method {
        key_str(out, b",\"method\":", v);
    }
    if let Some(v) = r.host {
        key_str(out, b",\"host\":", v);
    }
    if let Some(v) = r.port {
        key_number(out, b",\"port\":", v);
    }
    if let Some(v) = r.path {
        key_str(out, b",\"path\":", v);
    }
    if let Some(v) = r.protocol {
        key_str(out, b",\"protocol\":", v);
    }
    key_str(out, b",\"decision\":", r.decision);
    if r.would_deny {
        out.extend_from_slice(b",\"would_deny\":true");
    }
    key_str(out, b",\"reason_class\":", r.reason_class);
    key_str(out, b",\"reason\":", r.reason);
    key_str(out, b",\"policy_generation\":", &r.policy_generation);
    if let Some(v) = r.status {
        key_number(out, b",\"status\":", v);
    }
    if let Some(v) = r.upstream_address {
        out.extend_from_slice(b",\"upstream_address\":");
        address(out, v);
    }
    if !r.credentials.is_empty() {
        out.extend_from_slice(b",\"credentials\":");
        array(out, &r.credentials);
    }
    if !r.placeholders.is_empty() {
        out.extend_from_slice(b",\"placeholders\":");
        array(out, r.placeholders);
    }
    if r.secrets_scrubbed != 0 {
        key_number(out, b",\"secrets_scrubbed\":", r.secrets_scrubbed);
    }
    if let Some(v) = r.body_read {
        key_number(out, b",\"body_read\":", v);
    }
    if r.body_truncated {
        out.extend_from_slice(b",\"body_truncated\":true");
    }
    key_number(out, b",\"bytes_up\":", r.bytes_up);
    key_number(out, b",\"bytes_down\":", r.bytes_down);
    key_number(out, b",\"policy_us\":", r.policy_us);
    key_number(out, b",\"duration_ms\":", r.duration_ms);
    out.push(b'}');
}

fn key_str(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    string(out, value);
}

fn key_number(out: &mut Vec<u8>, key: &[u8], value: impl itoa::Integer) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn array(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        string(out, item);
    }
    out.push(b']');
}

/// A socket address as a JSON string, as `Display` writes it (an IPv4 one without going
/// through `core::fmt`, which cost more than the rest of the record).
fn address(out: &mut Vec<u8>, address: SocketAddr) {
    let SocketAddr::V4(v4) = address else {
        string(out, &address.to_string());
        return;
    };
    let mut digits = itoa::Buffer::new();
    out.push(b'"');
    for (n, octet) in v4.ip().octets().into_iter().enumerate() {
        if n > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
    out.push(b':');
    out.extend_from_slice(digits.format(v4.port()).as_bytes());
    out.push(b'"');
}

/// A JSON string (RFC 8259), escaped as serde_json escapes: `"` and `\`, the five control
/// characters with short forms, other control characters as `\u00xx`; everything else as is.
fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every value needs no escape: check that first, in one tight loop, and copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_serde(r: &AuditRecord<'_>) {
        let mut ours = Vec::new();
        record(r, &mut ours);
        let theirs = serde_json::to_vec(r).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }

    #[test]
    fn a_bare_record_matches_serde_json() {
        same_as_serde(&AuditRecord::default());
    }

    #[test]
    fn a_full_record_matches_serde_json() {
        let placeholders = vec!["github->authorization".to_string()];
        let labels = [
            ("session".to_string(), "sesn_01".to_string()),
            ("tool".to_string(), "quote \" here".to_string()),
        ]
        .into();
        same_as_serde(&AuditRecord {
            time: "2026-11-27T08:12:03.123456789Z".into(),
            kind: "request",
            decision_id: "a1b2-7",
            connection_id: Some("a1b2-1"),
            session: "tool:lookup",
            labels: Some(&labels),
            source: "10.0.0.2:40000",
            original_destination: Some("192.0.2.1:443".parse().unwrap()),
            mode: "transparent",
            sni: Some("api.github.com"),
            method: Some("GET"),
            host: Some("api.github.com"),
            port: Some(443),
            path: Some("/repos/x/y"),
            protocol: Some("http1"),
            decision: "allow",
            would_deny: true,
            reason_class: "policy",
            reason: "listed",
            policy_generation: "gen-3".into(),
            status: Some(200),
            upstream_address: Some("[2001:db8::1]:8443".parse().unwrap()),
            credentials: vec!["github->authorization".into(), "npm->x".into()],
            placeholders: &placeholders,
            secrets_scrubbed: 2,
            body_read: Some(12),
            body_truncated: true,
            bytes_up: 12,
            bytes_down: u64::MAX,
            policy_us: 41,
            duration_ms: 3,
        });
    }

    #[test]
    fn addresses_match_serde_json() {
        for address in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.20.3:80",
            "[::1]:443",
        ] {
            same_as_serde(&AuditRecord {
                upstream_address: Some(address.parse().unwrap()),
                original_destination: Some(address.parse().unwrap()),
                ..AuditRecord::default()
            });
        }
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        let every_ascii: String = (0u8..=0x7f).map(char::from).collect();
        for reason in [
            every_ascii.as_str(),
            "quote \" backslash \\ slash / tab \t",
            "ünïcödé ✓ and \u{2028} \u{1F600}",
            "",
        ] {
            same_as_serde(&AuditRecord {
                reason,
                path: Some(reason),
                ..AuditRecord::default()
            });
        }
    }
}
