//! Reaching upstreams: resolving the host name at the proxy, refusing internal addresses (the
//! SSRF guard), and naming the exact address that will be dialled.
//!
//! The proxy never dials the address the sandbox chose for a named host: it resolves the name
//! itself (a sandbox's own DNS answers are not trusted), checks every candidate address, and
//! dials the checked one, so a name cannot be rebound between check and connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_resolver::TokioResolver;
use ipnet::IpNet;

use crate::config::UpstreamConfig;

pub mod protocols;

/// Where an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `[upstream] connect_to`: operator-configured, exempt from the guard.
    Override,
    /// The host is an IP literal.
    Literal,
    /// Resolved by DNS at the proxy.
    Dns,
}

/// Why an upstream cannot be reached.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error(
        "{host} resolves to {address}, a {class} address; refused (add it to [upstream] allow_private to permit)"
    )]
    Forbidden {
        host: String,
        address: IpAddr,
        class: &'static str,
    },
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
}

/// Resolves and guards upstream addresses.
pub struct UpstreamResolver {
    config: UpstreamConfig,
    dns: Option<TokioResolver>,
}

impl std::fmt::Debug for UpstreamResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResolver")
            .field("overrides", &self.config.connect_to.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamError {
    /// What the sandbox is told: the class of the problem, without internal addresses or
    /// resolver details (those go to the audit log).
    pub fn public_reason(&self) -> String {
        match self {
            UpstreamError::Forbidden { host, class, .. } => {
                format!("{host} resolves to a {class} address; refused")
            }
            UpstreamError::Resolve { host, .. } => format!("{host} could not be resolved"),
        }
    }
}

impl UpstreamResolver {
    /// A resolver using the system's DNS configuration. If it cannot be read, only overrides
    /// and IP literals resolve (and every other name is refused with the reason).
    pub fn new(config: UpstreamConfig) -> Self {
        let dns = match TokioResolver::builder_tokio() {
            Ok(builder) => Some(builder.build()),
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration; only [upstream] connect_to overrides and IP literals will resolve");
                None
            }
        };
        Self { config, dns }
    }

    /// The address to dial for `host:port` (host normalised: lower-case, IPv6 unbracketed).
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(SocketAddr, Resolution), UpstreamError> {
        if let Some(known) = self.resolve_without_dns(host, port) {
            return known;
        }
        let Some(dns) = &self.dns else {
            return Err(UpstreamError::Resolve {
                host: host.into(),
                message: "the proxy has no DNS configuration".into(),
            });
        };
        let lookup =
            dns.lookup_ip(format!("{host}."))
                .await
                .map_err(|e| UpstreamError::Resolve {
                    host: host.into(),
                    message: e.to_string(),
                })?;
        let mut refused = None;
        for ip in lookup.iter() {
            match self.check(host, ip) {
                Ok(()) => return Ok((SocketAddr::new(ip, port), Resolution::Dns)),
                Err(e) => refused = refused.or(Some(e)),
            }
        }
        Err(refused.unwrap_or_else(|| UpstreamError::Resolve {
            host: host.into(),
            message: "no addresses".into(),
        }))
    }

    /// [`UpstreamResolver::resolve`] for what needs no lookup: an override, or an IP literal
    /// (guarded). `None` for a name, which only a DNS lookup can answer.
    pub fn resolve_without_dns(
        &self,
        host: &str,
        port: u16,
    ) -> Option<Result<(SocketAddr, Resolution), UpstreamError>> {
        if let Some(addr) = self.config.connect_to.get(&(host.to_string(), port)) {
            return Some(Ok((*addr, Resolution::Override)));
        }
        let ip = host.parse::<IpAddr>().ok()?;
        Some(
            self.check(host, ip)
                .map(|()| (SocketAddr::new(ip, port), Resolution::Literal)),
        )
    }

    fn check(&self, host: &str, ip: IpAddr) -> Result<(), UpstreamError> {
        let Some(class) = internal_class(ip) else {
            return Ok(());
        };
        if self
            .config
            .allow_private
            .iter()
            .any(|net: &IpNet| net.contains(&ip))
        {
            return Ok(());
        }
        Err(UpstreamError::Forbidden {
            host: host.into(),
            address: ip,
            class,
        })
    }
}

/// The kind of internal address `ip` is, or `None` for a public one.
pub fn internal_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => {
            // IPv6 forms that carry an IPv4 address reach that address: judge it instead.
            if let Some(v4) = embedded_v4(v6) {
                return v4_class(v4).or_else(|| v6_class(v6));
            }
            v6_class(v6)
        }
    }
}

/// The IPv4 address inside IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`) addresses.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if (s[..6] == [0, 0, 0, 0, 0, 0] && (s[6] != 0 || s[7] > 1))
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        Some(tail(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(tail(s[1], s[2]))
    } else {
        None
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("broadcast, multicast or reserved")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique-local")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("broadcast, multicast or reserved")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn resolver(allow: &[&str], overrides: &[(&str, u16, &str)]) -> UpstreamResolver {
        UpstreamResolver {
            config: UpstreamConfig {
                connect_to: overrides
                    .iter()
                    .map(|(h, p, a)| ((h.to_string(), *p), a.parse().unwrap()))
                    .collect::<HashMap<_, _>>(),
                allow_private: allow.iter().map(|c| c.parse().unwrap()).collect(),
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
            },
            dns: None,
        }
    }

    #[test]
    fn classifies_internal_addresses() {
        for (ip, class) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fc00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:c0a8:0101::1", "private"),
            ("::10.0.0.1", "private"),
        ] {
            assert_eq!(internal_class(ip.parse().unwrap()), Some(class), "{ip}");
        }
        for ip in ["192.0.2.7", "198.51.100.1", "8.8.8.8", "2001:db8::1"] {
            assert_eq!(internal_class(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn overrides_win_and_are_exempt_from_the_guard() {
        let r = resolver(&[], &[("pypi.org", 443, "127.0.0.1:8443")]);
        assert_eq!(
            r.resolve("pypi.org", 443).await.unwrap(),
            ("127.0.0.1:8443".parse().unwrap(), Resolution::Override)
        );
    }

    #[tokio::test]
    async fn refuses_internal_literals_unless_allowed() {
        let r = resolver(&["10.0.0.0/8"], &[]);
        let err = r.resolve("127.0.0.1", 80).await.unwrap_err();
        assert!(
            matches!(
                err,
                UpstreamError::Forbidden {
                    class: "loopback",
                    ..
                }
            ),
            "{err}"
        );
        assert!(r.resolve("169.254.169.254", 80).await.is_err());
        assert!(r.resolve("10.9.9.9", 80).await.is_ok());
        assert_eq!(
            r.resolve("192.0.2.1", 443).await.unwrap().1,
            Resolution::Literal
        );
    }

    #[tokio::test]
    async fn names_without_dns_are_refused_with_the_reason() {
        let r = resolver(&[], &[]);
        let err = r.resolve("pypi.org", 443).await.unwrap_err();
        assert!(err.to_string().contains("no DNS configuration"), "{err}");
    }
}
