//! Which HTTP version to speak to a TLS upstream.
//!
//! The upstream leg mirrors the client's leg, as mitmproxy does: an HTTP/1.1 request goes
//! upstream over HTTP/1.1 and an HTTP/2 request offers `h2` first. HTTP/1.1 upstream is the
//! cheaper relay in Pingora: its HTTP/2 client hands every request to a separate connection
//! task, which cost about 10% of the proxy's CPU per small request in `cordon-bench` scenario 1.
//!
//! An upstream that speaks only HTTP/2 refuses an HTTP/1.1-only ALPN offer during the
//! handshake. The request is then retried once offering `h2` first, and the host is
//! remembered here, so later HTTP/1.1 requests to it offer `h2` from the start instead of
//! failing a handshake each time.

use std::collections::HashSet;
use std::sync::RwLock;

/// Hosts remembered at most; past this the memo starts over (a forgotten host costs one failed
/// handshake the next time).
const MAX_REMEMBERED: usize = 4096;

/// `host:port` pairs known to refuse HTTP/1.1.
#[derive(Debug, Default)]
pub struct Http2Only {
    hosts: RwLock<HashSet<(String, u16)>>,
}

impl Http2Only {
    pub fn contains(&self, host: &str, port: u16) -> bool {
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
        // Empty almost always: skip building the key.
        !hosts.is_empty() && hosts.contains(&(host.to_string(), port))
    }

    /// Whether the host a TLS request names in `Host` (port 443 unless given) is remembered.
    pub fn contains_authority(&self, request: &pingora::http::RequestHeader) -> bool {
        if self
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return false;
        }
        request
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| cordon_policy::input::parse_authority(h, 443))
            .is_some_and(|a| self.contains(&a.host, a.port))
    }

    pub fn remember(&self, host: &str, port: u16) {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if hosts.len() >= MAX_REMEMBERED {
            hosts.clear();
        }
        hosts.insert((host.to_string(), port));
    }
}

/// Whether a failed TLS connect is the upstream refusing every protocol offered by ALPN.
pub fn refused_alpn(error: &pingora::Error) -> bool {
    matches!(error.etype(), pingora::ErrorType::TLSHandshakeFailure)
        && error.to_string().contains("NoApplicationProtocol")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_hosts_and_starts_over_when_full() {
        let memo = Http2Only::default();
        assert!(!memo.contains("grpc.test", 443));
        memo.remember("grpc.test", 443);
        assert!(memo.contains("grpc.test", 443));
        assert!(!memo.contains("grpc.test", 8443));
        for n in 0..MAX_REMEMBERED {
            memo.remember(&format!("h{n}.test"), 443);
        }
        assert!(!memo.contains("grpc.test", 443));
        assert!(memo.contains(&format!("h{}.test", MAX_REMEMBERED - 1), 443));
    }
}
