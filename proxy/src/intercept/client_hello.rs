//! Classifying a connection from its first bytes: a TLS ClientHello (with its SNI), plain
//! HTTP/1.x, or anything else. The bytes are only looked at; the caller hands them back to the
//! stream (pingora's `rewind`) so the TLS or HTTP layer reads them again from the start.

/// The largest first flight we read before deciding: a TLS record is at most 16 KiB, and a
/// ClientHello with post-quantum key shares is under 2 KiB. More than this is not a ClientHello
/// we accept.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstBytes {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// A complete TLS ClientHello; `sni` is the server name it asks for, lower-cased;
    /// `http1`: whether it could speak HTTP/1.1 (it offers `http/1.1` in ALPN, or no ALPN).
    Tls { sni: Option<String>, http1: bool },
    /// Bytes that start like TLS but are not a valid ClientHello.
    BadTls(String),
    /// An HTTP/1.x request line (or the HTTP/2 prior-knowledge preface).
    Http,
    /// Anything else.
    Other,
}

/// Classifies the bytes read so far.
pub fn classify(buf: &[u8]) -> FirstBytes {
    let Some(&first) = buf.first() else {
        return FirstBytes::NeedMore;
    };
    // 0x16 = TLS handshake record; SSLv2-style hellos are not TLS 1.2+ and are refused.
    if first == 0x16 {
        return tls(buf);
    }
    http_or_other(buf)
}

fn tls(buf: &[u8]) -> FirstBytes {
    if buf.len() >= 2 && buf[1] != 0x03 {
        return FirstBytes::BadTls("record version is not TLS".into());
    }
    // rustls parses the ClientHello (no hand-rolled TLS parsing): feed it a copy of everything
    // read so far; it reports whether the hello is complete.
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = buf;
    while !reader.is_empty() {
        match acceptor.read_tls(&mut reader) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return FirstBytes::BadTls(e.to_string()),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            FirstBytes::Tls {
                sni: hello.server_name().map(|s| s.to_ascii_lowercase()),
                http1: hello
                    .alpn()
                    .is_none_or(|mut offered| offered.any(|p| p == b"http/1.1")),
            }
        }
        Ok(None) if buf.len() < MAX_CLIENT_HELLO => FirstBytes::NeedMore,
        Ok(None) => FirstBytes::BadTls("ClientHello larger than 16 KiB".into()),
        Err((e, _alert)) => FirstBytes::BadTls(e.to_string()),
    }
}

fn http_or_other(buf: &[u8]) -> FirstBytes {
    // A request line starts with a method token (upper-case letters) and a space.
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == buf.len() {
        // All letters so far: could still be a method.
        return if method_len < 16 {
            FirstBytes::NeedMore
        } else {
            FirstBytes::Other
        };
    }
    if method_len > 0 && buf[method_len] == b' ' {
        FirstBytes::Http
    } else {
        FirstBytes::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, produced by rustls's client for `name`.
    pub(crate) fn client_hello(name: Option<&str>) -> Vec<u8> {
        client_hello_offering(name, &[])
    }

    /// [`client_hello`] offering `alpn` (none when empty).
    pub(crate) fn client_hello_offering(name: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = match name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_string()).unwrap(),
            None => {
                config.enable_sni = false;
                rustls::pki_types::ServerName::try_from("203.0.113.9").unwrap()
            }
        };
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_from_a_complete_client_hello() {
        let hello = client_hello(Some("API.GitHub.com"));
        assert_eq!(
            classify(&hello),
            FirstBytes::Tls {
                sni: Some("api.github.com".into()),
                http1: true,
            }
        );
    }

    #[test]
    fn tells_whether_the_client_could_speak_http1() {
        for (alpn, http1) in [
            (&[][..], true),
            (&[&b"h2"[..], b"http/1.1"][..], true),
            (&[&b"http/1.1"[..]][..], true),
            (&[&b"h2"[..]][..], false),
        ] {
            let hello = client_hello_offering(Some("a.test"), alpn);
            assert_eq!(
                classify(&hello),
                FirstBytes::Tls {
                    sni: Some("a.test".into()),
                    http1
                },
                "{alpn:?}"
            );
        }
    }

    #[test]
    fn asks_for_more_on_a_partial_client_hello() {
        let hello = client_hello(Some("pypi.org"));
        for cut in [1, 5, 40, hello.len() - 1] {
            assert_eq!(
                classify(&hello[..cut]),
                FirstBytes::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn reports_a_client_hello_without_sni() {
        assert_eq!(
            classify(&client_hello(None)),
            FirstBytes::Tls {
                sni: None,
                http1: true
            }
        );
    }

    #[test]
    fn refuses_garbage_that_starts_like_tls() {
        assert!(matches!(
            classify(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0]),
            FirstBytes::BadTls(_)
        ));
        assert!(matches!(classify(&[0x16, 0x99]), FirstBytes::BadTls(_)));
    }

    #[test]
    fn recognises_http_request_lines_and_other_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstBytes::Http);
        assert_eq!(classify(b"CONNECT x:443 HTTP/1.1\r\n"), FirstBytes::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), FirstBytes::Http);
        assert_eq!(classify(b"GE"), FirstBytes::NeedMore);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), FirstBytes::Other);
        assert_eq!(classify(b"\x00\x01binary"), FirstBytes::Other);
        assert_eq!(classify(b"get / HTTP/1.1"), FirstBytes::Other);
    }
}
