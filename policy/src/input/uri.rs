//! Pieces of a request target: authority, path segments and query parameters.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

/// A normalised host and port: the host lower-case, without IPv6 brackets or a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

/// `host:port`, the IPv6 address in brackets: the form [`parse_authority`] reads back.
impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. `None` for anything that is not a plain
/// authority (user info, an empty host, a bad port, an unbracketed IPv6 address, a name with
/// characters other than letters, digits, `-`, `_` and `.`): the caller treats that as a
/// malformed request rather than guessing.
pub fn parse_authority(authority: &str, default_port: u16) -> Option<Authority> {
    if authority.is_empty() || authority.contains(['@', '/', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => default_port,
            _ => after.strip_prefix(':')?.parse().ok()?,
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, default_port),
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || port == 0 {
        return None;
    }
    // An allow-list (found by fuzzing: control characters and `<` passed the old deny-list).
    // Names are compared and matched as text by policy, so nothing may ride along in one.
    // Empty labels (`a..b`, `.a`, `a..`) are not names either: they would print differently
    // from what they parse to.
    if !authority.starts_with('[')
        && (!host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || host.starts_with('.')
            || host.ends_with('.')
            || host.contains(".."))
    {
        return None;
    }
    Some(Authority {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Splits the path part of `path` (the query and fragment dropped) into segments, each
/// percent-decoded on its own. Leading slashes are trimmed as opa-envoy-plugin does, so `/` and
/// the empty path give `[""]` and `/a/b/` gives `["a", "b", ""]`.
///
/// Unlike opa-envoy-plugin, which decodes the whole path before splitting, an encoded slash
/// (`%2F`) stays inside its segment: `/a%2Fb` is one segment `a/b`, never the two segments
/// `a` and `b`, so an encoded slash cannot make a path look deeper or shallower to the policy
/// than it is to the upstream.
pub fn parse_path(path: &str) -> Vec<String> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_start_matches('/')
        .split('/')
        .map(|segment| percent_decode_str(segment).decode_utf8_lossy().into_owned())
        .collect()
}

/// Parses the query string of `path` (`application/x-www-form-urlencoded`: `+` is a space,
/// percent escapes decoded). Every value is an array, in order of appearance; a key without `=`
/// has the value `""`.
pub fn parse_query(path: &str) -> BTreeMap<String, Vec<String>> {
    let mut query = BTreeMap::new();
    let Some((_, rest)) = path.split_once('?') else {
        return query;
    };
    let rest = rest.split('#').next().unwrap_or("");
    for (key, value) in form_urlencoded::parse(rest.as_bytes()) {
        query
            .entry(key.into_owned())
            .or_insert_with(Vec::new)
            .push(value.into_owned());
    }
    query
}
