//! Which HTTP/1.1 requests the relay takes itself: the next request's head is parsed from the
//! bytes read so far, and only a plain request in origin form qualifies: a common method, and
//! no body or one framed the one unambiguous way (a single `Content-Length` of plain digits, at
//! most [`MAX_RELAY_BODY`]). More qualify only when the policy reads the body (then up to
//! `max_bytes` of it is read before the decision anyway, and Pingora's path could hold only
//! 64 KiB of it): a longer `Content-Length`, a single `Transfer-Encoding: chunked` with no
//! `Content-Length` (a git push), and either sent with `Expect: 100-continue`
//! ([`Head::IfBodyRead`]). Everything else (other or listed transfer codings, duplicate or odd
//! framing headers, larger bodies, upgrades, other expectations, hop-by-hop headers beyond
//! `Connection: keep-alive|close`, HTTP/1.0, absolute form, anything malformed or large) goes
//! to Pingora's full proxy with the same bytes, so each rule here only ever narrows what the
//! relay sees.
//! That is the request smuggling defence: the relay only frames a body the same way every
//! HTTP/1.1 parser must, and the upstream request carries the client's own framing header
//! (a chunked body is decoded by Pingora's codec and chunked again toward the upstream, as
//! Pingora's own proxy does).

/// A head this large, still incomplete, is Pingora's to read (and refuse if it must).
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Headers parsed at most; a request with more is Pingora's.
const MAX_HEADERS: usize = 64;

/// Digits a `Content-Length` may have here: 18 always fit a `u64`, so no value can wrap in
/// any parser along the way (Pingora's own check then refuses what its `usize` cannot hold).
const MAX_LENGTH_DIGITS: usize = 18;

/// The largest body the relay streams. The relay sends a body before it reads the response;
/// a body this small is absorbed whole by the sockets' buffers (Linux's default TCP receive
/// buffer alone is 128 KiB), so an upstream that answers before reading it, or stops reading,
/// is still heard at once. Larger bodies, and chunked ones of unknown length (a git push), go
/// to Pingora's proxy, which moves both directions at once, unless the policy reads them.
pub(crate) const MAX_RELAY_BODY: u64 = 64 * 1024;

/// How a head says its body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    /// One plain `Content-Length` of this many bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`, alone.
    Chunked,
    /// Either of the above, sent with `Expect: 100-continue`: the client waits for the
    /// proxy's go-ahead before it sends the body.
    Expecting,
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// Not a complete head yet.
    Partial,
    /// A complete head the relay handles.
    Relay,
    /// A complete plain head whose body the relay carries only when the policy reads it (then
    /// up to `max_bytes` of it is read before the decision anyway): a `Content-Length` over
    /// [`MAX_RELAY_BODY`], `Transfer-Encoding: chunked`, or `Expect: 100-continue`. Pingora's
    /// otherwise.
    IfBodyRead,
    /// Pingora's: complete but not plain, malformed, or too large to wait for.
    Proxy,
}

/// Classifies the start of `bytes`.
pub(crate) fn classify(bytes: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => match plain(&request) {
            Some(Declared::Length(length)) if length <= MAX_RELAY_BODY => Head::Relay,
            Some(_) => Head::IfBodyRead,
            None => Head::Proxy,
        },
        Err(_) => Head::Proxy,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => Head::Partial,
        Ok(httparse::Status::Partial) => Head::Proxy,
    }
}

/// How a plain request frames its body; `None` for any other request.
fn plain(request: &httparse::Request<'_, '_>) -> Option<Declared> {
    // Which requests are resent after a stale upstream connection is the relay's business
    // (only bodyless GET and HEAD); here only the framing matters. CONNECT, TRACE and
    // extension methods stay with Pingora.
    let head = match request.method {
        Some("HEAD") => true,
        Some("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => false,
        _ => return None,
    };
    if request.version != Some(1) || !request.path.is_some_and(|p| p.starts_with('/')) {
        return None;
    }
    let (mut hosts, mut lengths, mut body, mut chunked, mut expects) = (0, 0, 0, 0, 0);
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            if !connection_is_plain(header.value) {
                return None;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            let value = header.value.trim_ascii();
            // Plain digits only: no sign, no list ("4, 4"), nothing a parser could read two
            // ways. A HEAD carries no body (Pingora's path judges one that says it has).
            if value.is_empty()
                || value.len() > MAX_LENGTH_DIGITS
                || !value.iter().all(u8::is_ascii_digit)
                || (head && value.iter().any(|b| *b != b'0'))
            {
                return None;
            }
            body = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Exactly `chunked`: no list, no other coding, no parameters. A HEAD has no body.
            if head || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked += 1;
        } else if name.eq_ignore_ascii_case("expect") {
            // Exactly `100-continue`, the one expectation HTTP/1.1 defines.
            if !header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return None;
            }
            expects += 1;
        } else if [
            "upgrade",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "http2-settings",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        {
            return None;
        }
    }
    // One framing, named once: two that disagree (two lengths, a length and a coding) are
    // the classic smuggling shapes.
    if hosts != 1 || lengths + chunked > 1 || expects > 1 {
        return None;
    }
    Some(if expects == 1 {
        // A bodyless request expects nothing worth waiting for; Pingora's path answers it.
        if head || (chunked == 0 && body == 0) {
            return None;
        }
        Declared::Expecting
    } else if chunked == 1 {
        Declared::Chunked
    } else {
        Declared::Length(body)
    })
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
    fn bodies_framed_one_plain_way_are_relayed() {
        for request in [
            "POST /v1/messages HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi",
            "POST / HTTP/1.1\r\nHost: a.test\r\ncontent-length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a.test\r\nContent-Length:  007 \r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi",
            "PATCH / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 65536\r\n\r\n",
            "DELETE / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "OPTIONS / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "HEAD / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(head(request), Head::Relay, "{request:?}");
        }
    }

    #[test]
    fn longer_bodies_are_told_apart_with_their_length() {
        for (length, head_is) in [
            (65536, Head::Relay),
            (65537, Head::IfBodyRead),
            (16 * 1024 * 1024 + 1, Head::IfBodyRead),
        ] {
            let request =
                format!("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: {length}\r\n\r\n");
            assert_eq!(head(&request), head_is, "{length}");
        }
        for request in [
            "POST /git-receive-pack HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a.test\r\ntransfer-encoding:  Chunked \r\n\r\n",
            // the client waits for the go-ahead, whatever the length
            "POST / HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nexpect:  100-Continue\r\n\r\n",
        ] {
            assert_eq!(head(request), Head::IfBodyRead, "{request:?}");
        }
        // Still only the one plain framing.
        assert_eq!(
            head(
                "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 70000\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Head::Proxy
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
            // bodies framed twice or ambiguously (request smuggling shapes)
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2, 2\r\n\r\nhi",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +2\r\n\r\nhi",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0x2\r\n\r\nhi",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1234567890123456789\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "HEAD / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi",
            "HEAD / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            // methods the relay leaves alone
            "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "TRACE / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "PROPFIND / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "post / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            // expectations other than one `100-continue` before a body
            "POST / HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
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
