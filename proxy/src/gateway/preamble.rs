//! What an explicit listener's client asks for first: a CONNECT head (a tunnel to one
//! `host:port`) or an absolute-form plain HTTP request. Sans-IO, so the bytes a client sends can
//! be checked (and fuzzed) without a socket; `Gateway::read_preamble` does the reading.

use cordon_policy::input::parse_authority;

/// Largest CONNECT head accepted.
pub(crate) const MAX_CONNECT_HEAD: usize = 8 * 1024;

/// Headers parsed at most in a CONNECT head.
const MAX_HEADERS: usize = 64;

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Preamble {
    /// Not a complete head yet: read more.
    Partial,
    /// A CONNECT to `target` (`host:port`, normalised); the head is `consumed` bytes long and
    /// what follows already belongs to the tunnel.
    Connect { target: String, consumed: usize },
    /// Absolute-form plain HTTP, which the HTTP layer reads again from the first byte;
    /// `target` is its `host:port` when the request line names one.
    Plain { target: Option<String> },
    /// A CONNECT whose target is not `host:port`: answered 400.
    BadTarget(String),
    /// Not a request at all, or a head larger than [`MAX_CONNECT_HEAD`]: the connection is
    /// refused with this reason.
    Malformed(String),
}

/// Classifies the start of what an explicit-listener client sent.
pub(crate) fn parse(head: &[u8]) -> Preamble {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(consumed)) => {
            if request.method != Some("CONNECT") {
                let target = request
                    .path
                    .and_then(|p| p.split_once("://"))
                    .and_then(|(_, rest)| rest.split(['/', '?']).next())
                    .and_then(|t| parse_authority(t, 80))
                    .map(|a| a.to_string());
                return Preamble::Plain { target };
            }
            let target = request.path.unwrap_or("");
            match parse_authority(target, 0).filter(|a| a.port != 0) {
                Some(a) => Preamble::Connect {
                    target: a.to_string(),
                    consumed,
                },
                None => Preamble::BadTarget(format!("CONNECT target {target:?} is not host:port")),
            }
        }
        Ok(httparse::Status::Partial) if head.len() < MAX_CONNECT_HEAD => Preamble::Partial,
        Ok(httparse::Status::Partial) => {
            Preamble::Malformed("CONNECT request head larger than 8 KiB".into())
        }
        Err(e) => Preamble::Malformed(format!("malformed proxy request: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_connect_head_names_its_target_and_length() {
        let head = b"CONNECT Example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01";
        assert_eq!(
            parse(head),
            Preamble::Connect {
                target: "example.com:443".into(),
                consumed: head.len() - 3,
            }
        );
    }

    #[test]
    fn an_ipv6_target_keeps_its_brackets() {
        assert_eq!(
            parse(b"CONNECT [2001:DB8::1]:8443 HTTP/1.1\r\n\r\n"),
            Preamble::Connect {
                target: "[2001:db8::1]:8443".into(),
                consumed: 39,
            }
        );
    }

    #[test]
    fn absolute_form_http_is_read_again_by_the_http_layer() {
        assert_eq!(
            parse(b"GET http://pypi.org/simple/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
            Preamble::Plain {
                target: Some("pypi.org:80".into())
            }
        );
        assert_eq!(
            parse(b"GET /origin-form HTTP/1.1\r\nHost: pypi.org\r\n\r\n"),
            Preamble::Plain { target: None }
        );
    }

    #[test]
    fn bad_targets_partial_heads_and_garbage_are_told_apart() {
        assert!(matches!(
            parse(b"CONNECT example.com HTTP/1.1\r\n\r\n"),
            Preamble::BadTarget(m) if m.contains("not host:port")
        ));
        assert!(matches!(
            parse(b"CONNECT example.com:0 HTTP/1.1\r\n\r\n"),
            Preamble::BadTarget(_)
        ));
        assert_eq!(
            parse(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Preamble::Partial
        );
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00"),
            Preamble::Malformed(_)
        ));
        let mut huge = b"CONNECT example.com:443 HTTP/1.1\r\nx: ".to_vec();
        huge.resize(MAX_CONNECT_HEAD, b'a');
        assert!(matches!(
            parse(&huge),
            Preamble::Malformed(m) if m.contains("8 KiB")
        ));
    }
}
