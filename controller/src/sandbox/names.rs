//! Names and addresses of one session's host resources, all derived from the configured
//! prefixes, the session id and its slot in the address pool.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::config::SandboxConfig;

/// Session ids become parts of host resource names. No `-`: a namespace is this
/// controller's when it is `<prefix>-<id>` with no `-` after the prefix, so a controller whose
/// prefix is `cordon` never takes `cordon-test-1-a` (another prefix's) for its own.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
        && !id.starts_with('.')
}

/// `len` random letters and digits: the random part of every id the controller makes.
pub fn random_alphanumeric(len: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A warm sandbox's pool id: `.warm` and 12 random letters and digits. Session ids cannot
/// start with `.`, so no session id is ever taken for a pool id or the other way round.
pub fn new_warm_id() -> String {
    format!(".warm{}", random_alphanumeric(12))
}

/// Whether `id` is a warm sandbox's pool id.
pub fn is_warm_id(id: &str) -> bool {
    id.strip_prefix(".warm")
        .is_some_and(|rest| !rest.is_empty() && valid_session_id(rest))
}

/// A custom tool call's sandbox id: `.tool` and 12 random letters and digits (apart from
/// session ids, as pool ids are).
pub fn new_tool_id() -> String {
    format!(".tool{}", random_alphanumeric(12))
}

/// Whether `id` is a custom tool call's sandbox id.
pub fn is_tool_id(id: &str) -> bool {
    id.strip_prefix(".tool")
        .is_some_and(|rest| !rest.is_empty() && valid_session_id(rest))
}

/// Whether `id` may name a sandbox's host resources: a session id, a pool id or a tool
/// call's id.
pub fn valid_sandbox_id(id: &str) -> bool {
    valid_session_id(id) || is_warm_id(id) || is_tool_id(id)
}

/// How many /30s the pool holds.
pub fn slot_count(pool: Ipv4Net) -> u32 {
    1u32 << (30 - u32::from(pool.prefix_len()).min(30))
}

/// One session's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionNames {
    /// `<prefix>-<id>`, under /var/run/netns.
    pub netns: String,
    /// runsc container id: `<prefix>-<slot, five digits>`. runsc resolves ids by prefix and
    /// refuses an ambiguous one (`s1` would match `s11`), so live ids all have one length.
    pub container: String,
    /// The host end of the veth pair: `<interface_prefix><slot>`.
    pub host_if: String,
    /// The sandbox end, inside the netns.
    pub sandbox_if: &'static str,
    /// The host end's address (the sandbox's gateway, DNS server and proxy address).
    pub host_addr: Ipv4Addr,
    /// The sandbox's own address: how the proxy knows the session.
    pub sandbox_addr: Ipv4Addr,
}

impl SessionNames {
    pub fn new(config: &SandboxConfig, id: &str, slot: u32) -> Self {
        let base = u32::from(config.address_pool.network()) + slot * 4;
        Self {
            netns: format!("{}-{id}", config.name_prefix),
            container: format!("{}-{slot:05}", config.name_prefix),
            host_if: format!("{}{slot}", config.interface_prefix),
            sandbox_if: "eth0",
            host_addr: Ipv4Addr::from(base + 1),
            sandbox_addr: Ipv4Addr::from(base + 2),
        }
    }

    /// The netns file `ip netns` and `nsenter` use.
    pub fn netns_path(&self) -> std::path::PathBuf {
        std::path::Path::new("/var/run/netns").join(&self.netns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_slots_counted() {
        assert!(valid_session_id("sesn_01HZX_a.b"));
        for bad in ["", "a/b", "a b", ".hidden", "a-b", &"x".repeat(65)] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
        assert_eq!(slot_count("10.200.0.0/16".parse().unwrap()), 16384);
        assert_eq!(slot_count("10.200.0.0/29".parse().unwrap()), 2);
        let warm = new_warm_id();
        assert!(is_warm_id(&warm) && valid_sandbox_id(&warm), "{warm}");
        assert!(!valid_session_id(&warm), "no session may take a pool id");
        assert!(!is_warm_id(".warm") && !is_warm_id("warm1") && !is_warm_id(".warm-x"));
    }
}
