//! Which HTTP/1.1 requests the relay takes itself: the next request's head is parsed from the
//! bytes read so far, and only a plain, bodyless, idempotent request in origin form qualifies.
//! Everything else (bodies, upgrades, `Expect`, hop-by-hop headers beyond `Connection:
//! keep-alive|close`, HTTP/1.0, absolute form, anything malformed or large) goes to Pingora's
//! full proxy with the same bytes, so each rule here only ever narrows what the relay sees.

/// A head this large, still incomplete, is Pingora's to read (and refuse if it must).
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Headers parsed at most; a request with more is Pingora's.
const MAX_HEADERS: usize = 64;

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Not a complete head yet.
    Partial,
    /// A complete head the relay handles.
    Relay,
    /// Pingora's: complete but not plain, malformed, or too large to wait for.
    Proxy,
}

/// Classifies the start of `bytes`.
pub(super) fn classify(bytes: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) if plain(&request) => Head::Relay,
        Ok(httparse::Status::Complete(_)) | Err(_) => Head::Proxy,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => Head::Partial,
        Ok(httparse::Status::Partial) => Head::Proxy,
    }
}

fn plain(request: &httparse::Request<'_, '_>) -> bool {
    // GET and HEAD carry no body and may be resent on a fresh upstream connection when a
    // kept-alive one turns out to be closed.
    if !matches!(request.method, Some("GET" | "HEAD")) || request.version != Some(1) {
        return false;
    }
    if !request.path.is_some_and(|p| p.starts_with('/')) {
        return false;
    }
    let mut hosts = 0;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            if !connection_is_plain(header.value) {
                return false;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if header.value.trim_ascii() != b"0" {
                return false;
            }
        } else if [
            "transfer-encoding",
            "upgrade",
            "expect",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "http2-settings",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        {
            return false;
        }
    }
    hosts == 1
}

/// `Connection` naming only `keep-alive` or `close`: no other header is hop-by-hop.
fn connection_is_plain(value: &[u8]) -> bool {
    value.split(|b| *b == b',').all(|token| {
        let token = token.trim_ascii();
        token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        classify(text.as_bytes())
    }

    #[test]
    fn plain_get_and_head_are_relayed() {
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), Head::Relay);
        assert_eq!(
            head(
                "HEAD /x?y=1 HTTP/1.1\r\nhost: a.test\r\nConnection: Keep-Alive\r\nAccept: */*\r\n\r\n"
            ),
            Head::Relay
        );
        assert_eq!(
            head(
                "GET / HTTP/1.1\r\nHost: a.test\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            ),
            Head::Relay
        );
    }

    #[test]
    fn incomplete_heads_wait_until_too_large() {
        assert_eq!(head(""), Head::Partial);
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a.test\r\n"), Head::Partial);
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long), Head::Proxy);
    }

    #[test]
    fn anything_else_goes_to_pingora() {
        for request in [
            // a body, or a method that may carry one
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi",
            "GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi",
            "GET / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            "DELETE / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            // upgrades and interim responses
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\n\r\n",
            // hop-by-hop headers the relay would have to strip
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.test\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.test\r\nProxy-Connection: keep-alive\r\n\r\n",
            // other versions and forms, and ambiguous hosts
            "GET / HTTP/1.0\r\nHost: a.test\r\n\r\n",
            "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            // malformed
            "GET / HTTP/1.1\r\nHo st: a.test\r\n\r\n",
        ] {
            assert_eq!(head(request), Head::Proxy, "{request:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|n| format!("x-{n}: 1\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}\r\n")),
            Head::Proxy
        );
    }
}
