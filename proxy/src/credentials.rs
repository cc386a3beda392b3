//! The secret store and credential injection.
//!
//! A decision names a secret (`inject: [{"secret": "github", "header": "authorization"}]`); the
//! proxy resolves it here. Each secret carries its own binding (the hosts it may be sent to,
//! optionally methods and path prefixes, and whether a plaintext leg is acceptable), which is a
//! second lock: a policy that asks for a secret outside its binding is refused, not obeyed.
//!
//! Values are read from the environment or from files named in the store file, never from
//! Rego data, and never appear in errors, logs, metrics or audit records: [`SecretValue`] has
//! no `Debug` or `Display` that shows it.

mod placeholders;
mod scrub;
mod store_file;
mod swap;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use placeholders::{MintError, PlaceholderIndex, Placeholders};
pub use scrub::{ScrubCache, ScrubPattern, ScrubTable, Scrubber, patterns_for};
pub use store_file::SecretsLoadError;
pub use swap::{SwapError, SwapPlan, plan_swaps};

/// A secret's value. Deliberately opaque: it prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a secret is written into its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presentation {
    /// `Bearer <value>`
    Bearer,
    /// `token <value>` (GitHub's classic form)
    Token,
    /// `Basic base64(<user>:<value>)` (git over HTTPS)
    Basic { user: String },
    /// The value as is (`x-api-key`).
    Raw,
}

/// Where a secret may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Exact host names, or `*.suffix` for any subdomain of `suffix` (not `suffix` itself).
    pub hosts: Vec<String>,
    /// Upper-case methods; empty means any method except TRACE and TRACK.
    pub methods: Vec<String>,
    /// Path prefixes; empty means any path.
    pub path_prefixes: Vec<String>,
    /// Allow injection on a plaintext (non-intercepted-TLS) leg. Off by default: a token on
    /// plain HTTP is readable by anything on the path.
    pub allow_plaintext: bool,
    /// Allow the secret on a request that upgrades the connection (WebSocket). Off by default:
    /// an upgraded stream is not scrubbed, so an echo there would reach the sandbox.
    pub allow_upgrade: bool,
}

impl Binding {
    /// Whether `host` is one this secret may be sent to.
    pub fn host_matches(&self, host: &str) -> bool {
        self.hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
                None => pattern == host,
            })
    }
}

/// One secret: value, binding, presentation.
#[derive(Debug, Clone)]
pub struct Secret {
    pub name: String,
    pub value: SecretValue,
    pub binding: Binding,
    pub presentation: Presentation,
    /// What this secret's placeholders start with, so tools that check a token's shape accept
    /// them (`ghp_`, `npm_`, `sk-ant-`). Not secret.
    pub placeholder_prefix: String,
    /// The request headers (lower-case) a placeholder of this secret is swapped in; one found
    /// in any other header is refused as exfiltration. Default: `authorization`.
    pub swap_headers: Vec<String>,
}

impl Secret {
    /// The header value to send.
    pub fn header_value(&self) -> String {
        let value = self.value.expose();
        match &self.presentation {
            Presentation::Bearer => format!("Bearer {value}"),
            Presentation::Token => format!("token {value}"),
            Presentation::Basic { user } => {
                use base64::Engine as _;
                let pair = format!("{user}:{value}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Presentation::Raw => value.to_string(),
        }
    }
}

/// What a request looks like to the binding check.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// Whether the leg to the sandbox is intercepted TLS.
    pub tls: bool,
    /// Whether the request asks to upgrade the connection (`Upgrade:`, a WebSocket).
    pub upgrade: bool,
}

/// Why a credential was not injected. Messages name the secret and the destination, never the
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("secret {0:?} is not in the secret store")]
    Unknown(String),
    #[error("secret {secret:?} is not bound to host {host}")]
    HostNotBound { secret: String, host: String },
    #[error("secret {secret:?} is not bound to method {method}")]
    MethodNotBound { secret: String, method: String },
    #[error("secret {secret:?} is not bound to this path")]
    PathNotBound { secret: String },
    #[error("secret {secret:?} would travel over plaintext HTTP; its binding does not allow that")]
    Plaintext { secret: String },
    #[error(
        "secret {secret:?} would travel on a request that upgrades the connection (WebSocket), \
         whose stream Cordon does not scrub; set allow_upgrade = true on the secret to accept that"
    )]
    Upgrade { secret: String },
    #[error("{method} echoes request headers back; no credential is injected into it")]
    EchoingMethod { method: String },
    #[error(
        "a placeholder for secret {secret:?} inside Basic credentials is swapped only in \
         `authorization`, for a `basic` secret, as exactly `<basic_user>:<placeholder>`"
    )]
    BasicShape { secret: String },
    #[error(
        "secret {secret:?} is bound to path prefixes; this path has dot segments or encoded separators"
    )]
    UnclearPath { secret: String },
}

/// The secrets loaded now.
#[derive(Debug, Default)]
pub struct SecretSet {
    secrets: HashMap<String, Secret>,
}

impl SecretSet {
    pub fn new(secrets: Vec<Secret>) -> Self {
        Self {
            secrets: secrets.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Every secret, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.values()
    }

    /// The secret `name`, without a binding check.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    /// The secrets whose binding names `host`: the only ones its responses could echo.
    pub fn bound_to<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Secret> + 'a {
        self.secrets
            .values()
            .filter(move |s| s.binding.host_matches(host))
    }

    /// The secret `name`, if its binding admits `destination`.
    pub fn resolve(
        &self,
        name: &str,
        destination: Destination<'_>,
    ) -> Result<&Secret, InjectError> {
        let secret = self
            .secrets
            .get(name)
            .ok_or_else(|| InjectError::Unknown(name.to_string()))?;
        let method = destination.method.to_ascii_uppercase();
        if method == "TRACE" || method == "TRACK" {
            return Err(InjectError::EchoingMethod { method });
        }
        let binding = &secret.binding;
        if !binding.host_matches(destination.host) {
            return Err(InjectError::HostNotBound {
                secret: name.to_string(),
                host: destination.host.to_string(),
            });
        }
        if !binding.methods.is_empty() && !binding.methods.contains(&method) {
            return Err(InjectError::MethodNotBound {
                secret: name.to_string(),
                method,
            });
        }
        // A prefix is compared with the path as sent; one the upstream would read differently
        // (`/repos/acme/../../other`, `%2e%2e`, `%2f`, `//`) cannot be judged by it.
        if !binding.path_prefixes.is_empty() && !plain_path(destination.path) {
            return Err(InjectError::UnclearPath {
                secret: name.to_string(),
            });
        }
        if !binding.path_prefixes.is_empty()
            && !binding
                .path_prefixes
                .iter()
                .any(|p| destination.path.starts_with(p.as_str()))
        {
            return Err(InjectError::PathNotBound {
                secret: name.to_string(),
            });
        }
        if !destination.tls && !binding.allow_plaintext {
            return Err(InjectError::Plaintext {
                secret: name.to_string(),
            });
        }
        if destination.upgrade && !binding.allow_upgrade {
            return Err(InjectError::Upgrade {
                secret: name.to_string(),
            });
        }
        Ok(secret)
    }
}

/// Whether `path` means what it says: no `.` or `..` segment, no empty segment, and no
/// percent-encoded dot, slash or backslash.
fn plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !lower.contains("%2e")
        && !lower.contains("%2f")
        && !lower.contains("%5c")
        && !path.contains('\\')
        && {
            let segments: Vec<&str> = path.split('/').skip(1).collect();
            let last = segments.len().saturating_sub(1);
            segments
                .iter()
                .enumerate()
                .all(|(i, s)| *s != "." && *s != ".." && (!s.is_empty() || i == last))
        }
}

/// The store: the current set, reloadable from its file. A reload that fails keeps the last
/// good set.
#[derive(Debug)]
pub struct SecretStore {
    path: Option<PathBuf>,
    current: ArcSwap<SecretSet>,
    /// What the files the set came from looked like when they were read.
    seen: std::sync::Mutex<Fingerprint>,
}

/// (path, modification time, size, inode) of every source file; a missing file is `None`.
/// Rotation by an atomic rename (as Kubernetes secret volumes do) changes the inode.
type Fingerprint = Vec<(PathBuf, Option<(std::time::SystemTime, u64, u64)>)>;

fn fingerprint(sources: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    sources
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
            (p.clone(), meta)
        })
        .collect()
}

impl SecretStore {
    /// No secrets at all (no `[credentials] store` configured): every injection is refused.
    pub fn empty() -> Self {
        Self {
            path: None,
            current: ArcSwap::from_pointee(SecretSet::default()),
            seen: Default::default(),
        }
    }

    /// Loads the store file (see docs/CREDENTIALS.md).
    pub fn load(path: &Path) -> Result<Self, SecretsLoadError> {
        let loaded = store_file::load(path)?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            current: ArcSwap::from_pointee(loaded.set),
            seen: std::sync::Mutex::new(fingerprint(&loaded.sources)),
        })
    }

    /// Reads the file (and the environment and value files it names) again.
    pub fn reload(&self) -> Result<usize, SecretsLoadError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        // The fingerprint is taken before reading, so a change during the read is seen again.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let before = fingerprint(&seen.iter().map(|s| s.0.clone()).collect::<Vec<_>>());
        let result = store_file::load(path);
        match result {
            Ok(loaded) => {
                let count = loaded.set.len();
                // Files known before the read keep their pre-read fingerprint: one rewritten
                // while it was read differs from it, and is read again on the next check.
                *seen = fingerprint(&loaded.sources)
                    .into_iter()
                    .map(|(path, now)| {
                        let earlier = before.iter().find(|(p, _)| *p == path).map(|(_, f)| *f);
                        (path, earlier.unwrap_or(now))
                    })
                    .collect();
                self.current.store(Arc::new(loaded.set));
                Ok(count)
            }
            Err(e) => {
                // Remember the broken state, so the watcher reports it once, not every tick.
                *seen = before;
                Err(e)
            }
        }
    }

    /// Whether any file the store was read from changed (or appeared, or vanished) since the
    /// last load. A new file in a store directory changes the directory's own time.
    pub fn changed_on_disk(&self) -> bool {
        if self.path.is_none() {
            return false;
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let paths: Vec<_> = seen.iter().map(|s| s.0.clone()).collect();
        fingerprint(&paths) != *seen
    }

    pub fn current(&self) -> Arc<SecretSet> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests;
