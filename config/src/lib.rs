//! `cordon.toml`, the one file the gateway's two programs read: `cordon-proxy` its proxy
//! sections, `cordon-controller` `[sandbox]` and `[controller]` and the few proxy values it
//! needs (the state directory, the admin API, the ports sandboxes are redirected to, the CA).
//!
//! This crate is the file's shape and nothing else: serde types for every section with
//! unknown keys refused (so a misspelt key is an error naming it, in either program), the
//! defaults that do not belong to another crate, reading the file, and anchoring its relative
//! paths at the file's directory. Checking values is each program's business (the proxy's
//! `config` module, the controller's); neither pulls the other's dependencies in to read the
//! file.
//!
//! ```
//! let file = cordon_config::parse("[proxy]\nstate_dir = \"state\"\n", "/etc/cordon/cordon.toml".as_ref()).unwrap();
//! assert_eq!(file.state_dir(), std::path::Path::new("/etc/cordon/state"));
//! assert_eq!(file.ca_cert(), std::path::Path::new("/etc/cordon/state/ca.pem"));
//! ```

pub mod controller;
pub mod dashboard;
pub mod proxy;
pub mod sandbox;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every section, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    #[serde(default)]
    pub proxy: proxy::ProxySection,
    #[serde(default)]
    pub policy: proxy::PolicySection,
    #[serde(default)]
    pub tls: proxy::TlsSection,
    #[serde(default)]
    pub upstream: proxy::UpstreamSection,
    #[serde(default)]
    pub audit: proxy::AuditSection,
    #[serde(default)]
    pub credentials: proxy::CredentialsSection,
    #[serde(default)]
    pub dns: proxy::DnsSection,
    #[serde(default)]
    pub sandbox: sandbox::SandboxSection,
    #[serde(default)]
    pub controller: controller::ControllerSection,
    #[serde(default)]
    pub dashboard: dashboard::DashboardSection,
}

/// A read config file: its sections and where it is.
#[derive(Debug)]
pub struct ConfigFile {
    /// The path as given (for messages).
    pub path: PathBuf,
    /// The file's directory, absolute: relative paths in the file are relative to it, so a
    /// config works wherever a program is started from, and every path derived from it is
    /// absolute (paths are handed to other programs: runsc resolves a relative mount source
    /// against its bundle directory).
    pub base: PathBuf,
    pub sections: Sections,
}

/// Why the file cannot be read as a config file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
}

/// Reads and parses the file at `path`.
pub fn read(path: &Path) -> Result<ConfigFile, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text, path)
}

/// Parses config text; `path` names the file in errors and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, FileError> {
    let sections: Sections = toml::from_str(text).map_err(|e| FileError::Syntax {
        path: path.into(),
        message: e.to_string(),
    })?;
    let base = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    Ok(ConfigFile {
        path: path.into(),
        base,
        sections,
    })
}

/// `key = value` as an address, with the message both programs give for a bad one.
pub fn address(key: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{key} = {value:?} is not an address:port"))
}

/// Whether a request's `Host` names this machine: a loopback address or `localhost`, with any
/// port. The loopback-only admin APIs (the proxy's, the controller's) answer nothing else, so a
/// web page whose name an attacker made resolve to 127.0.0.1 (DNS rebinding) cannot become
/// same-origin with them in a browser on the gateway host.
///
/// ```
/// assert!(cordon_config::is_local_host("127.0.0.1:9901"));
/// assert!(cordon_config::is_local_host("[::1]:9901") && cordon_config::is_local_host("localhost"));
/// assert!(!cordon_config::is_local_host("rebound.example.test:9901"));
/// ```
pub fn is_local_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ConfigFile {
    /// `path` made absolute against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// `[proxy] state_dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.sections.proxy.state_dir)
    }

    /// The interception CA's certificate: `[tls] ca_cert`, default `<state_dir>/ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.sections
            .tls
            .ca_cert
            .as_ref()
            .map_or_else(|| self.state_dir().join("ca.pem"), |p| self.resolve(p))
    }

    /// The CA's key: `[tls] ca_key`, default `<state_dir>/ca-key.pem`.
    pub fn ca_key(&self) -> PathBuf {
        self.sections
            .tls
            .ca_key
            .as_ref()
            .map_or_else(|| self.state_dir().join("ca-key.pem"), |p| self.resolve(p))
    }

    /// `[credentials] store`, if set.
    pub fn credentials_store(&self) -> Option<PathBuf> {
        self.sections
            .credentials
            .store
            .as_ref()
            .map(|p| self.resolve(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_anchor_at_the_file_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cordon.toml");
        std::fs::write(
            &path,
            "[proxy]\nstate_dir = \"st\"\n[tls]\nca_key = \"/k.pem\"\n[sandbox]\nwarm = 2\n",
        )
        .unwrap();
        let file = read(&path).unwrap();
        assert_eq!(file.state_dir(), dir.path().join("st"));
        assert_eq!(file.ca_cert(), dir.path().join("st/ca.pem"));
        assert_eq!(file.ca_key(), Path::new("/k.pem"));
        assert_eq!(file.sections.sandbox.warm, 2);
        assert_eq!(file.sections.sandbox.image, sandbox::DEFAULT_IMAGE);

        let bad = parse("[sandbox]\nwram = 2\n", &path)
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("unknown field `wram`") && bad.contains("warm"),
            "{bad}"
        );
        assert!(
            parse("[nope]\n", &path)
                .unwrap_err()
                .to_string()
                .contains("unknown field `nope`")
        );
        assert!(matches!(
            read(&dir.path().join("missing.toml")),
            Err(FileError::Read { .. })
        ));
        assert_eq!(
            address("proxy.admin_listen", "here").unwrap_err(),
            "proxy.admin_listen = \"here\" is not an address:port"
        );
    }
}
