//! The secret store file: TOML naming each secret's value source, binding and presentation.
//!
//! ```toml
//! [secrets.github]
//! value_env = "CORDON_SECRET_GITHUB"      # or value_file = "/run/secrets/github"
//! hosts = ["api.github.com", "github.com"]
//! format = "bearer"                       # bearer | token | basic | raw
//! # basic_user = "x-access-token"         # for format = "basic"
//! # methods = ["GET", "POST"]
//! # path_prefixes = ["/repos/acme/"]
//! # allow_plaintext = false
//! # allow_upgrade = false
//! ```
//!
//! The file holds no values itself, but it says where they are, so it must not be readable by
//! group or others: the proxy refuses to start (or reload) otherwise. Value files are held to the
//! same rule. The store may also be a directory (mode 0700) of such files, merged.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Binding, Presentation, Secret, SecretSet, SecretValue};

/// Why the secret store could not be loaded. Never includes a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by group or others (mode {mode:o}); run `chmod go-rwx {path}` so \
         only the proxy's user can read where secrets come from"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has {} error(s):\n  {}", .errors.len(), .errors.join("\n  "))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    secrets: BTreeMap<String, SecretEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretEntry {
    value_env: Option<String>,
    value_file: Option<PathBuf>,
    hosts: Vec<String>,
    #[serde(default = "default_format")]
    format: String,
    basic_user: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    path_prefixes: Vec<String>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    allow_upgrade: bool,
    #[serde(default = "default_placeholder_prefix")]
    placeholder_prefix: String,
    /// The headers placeholders are swapped in; default `["authorization"]`.
    headers: Option<Vec<String>>,
}

fn default_placeholder_prefix() -> String {
    "cordon_ph_".into()
}

fn default_format() -> String {
    "raw".into()
}

/// A loaded store and every file it was read from (store files, value files, and the store
/// directory itself), for the change watcher.
pub(super) struct Loaded {
    pub(super) set: SecretSet,
    pub(super) sources: Vec<PathBuf>,
}

/// Loads a store file, or a directory whose `*.toml` files together make the store (drop-in
/// files, one per secret or team, as configuration management writes them).
pub(super) fn load(path: &Path) -> Result<Loaded, SecretsLoadError> {
    check_private(path)?;
    let mut sources = vec![path.to_path_buf()];
    let files = if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| SecretsLoadError::Read {
            path: path.into(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        sources.extend(files.iter().cloned());
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut errors = Vec::new();
    let mut secrets: Vec<Secret> = Vec::new();
    let mut declared_in: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in &files {
        check_private(file)?;
        let text = std::fs::read_to_string(file).map_err(|source| SecretsLoadError::Read {
            path: file.clone(),
            source,
        })?;
        let parsed: StoreFile = toml::from_str(&text).map_err(|e| SecretsLoadError::Syntax {
            path: file.clone(),
            message: e.to_string(),
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        for (name, entry) in parsed.secrets {
            if let Some(first) = declared_in.get(&name) {
                errors.push(format!(
                    "secrets.{name}: declared in both {} and {}; a secret has one declaration",
                    first.display(),
                    file.display()
                ));
                continue;
            }
            declared_in.insert(name.clone(), file.clone());
            if let Some(value_file) = &entry.value_file {
                sources.push(base.join(value_file));
            }
            match secret(&name, entry, base) {
                Ok(secret) => secrets.push(secret),
                Err(message) => errors.push(format!("secrets.{name}: {message}")),
            }
        }
    }
    if errors.is_empty() {
        Ok(Loaded {
            set: SecretSet::new(secrets),
            sources,
        })
    } else {
        Err(SecretsLoadError::Invalid {
            path: path.into(),
            errors,
        })
    }
}

fn secret(name: &str, entry: SecretEntry, base: &Path) -> Result<Secret, String> {
    let value = match (&entry.value_env, &entry.value_file) {
        (Some(var), None) => std::env::var(var)
            .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)"))?,
        (None, Some(file)) => {
            let file = if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            };
            check_private(&file).map_err(|e| e.to_string())?;
            std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        }
        _ => return Err("give exactly one of value_env or value_file".into()),
    };
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("the value has control characters (a CR or LF would split the request)".into());
    }
    if entry.hosts.is_empty() {
        return Err("hosts is empty; a secret must be bound to the hosts it may be sent to".into());
    }
    let mut hosts = Vec::with_capacity(entry.hosts.len());
    for host in &entry.hosts {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if bare.is_empty()
            || bare.contains(['*', '/', ':', ' '])
            || host.to_ascii_lowercase() != *host
        {
            return Err(format!(
                "host {host:?} must be a lower-case name, or *.name for its subdomains"
            ));
        }
        hosts.push(host.clone());
    }
    let presentation = match entry.format.as_str() {
        "bearer" => Presentation::Bearer,
        "token" => Presentation::Token,
        "raw" => Presentation::Raw,
        "basic" => Presentation::Basic {
            user: entry
                .basic_user
                .clone()
                .ok_or("format = \"basic\" needs basic_user")?,
        },
        other => {
            return Err(format!(
                "format {other:?}: expected bearer, token, basic or raw"
            ));
        }
    };
    let prefix = &entry.placeholder_prefix;
    if prefix.len() > 32
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "placeholder_prefix {prefix:?} must be at most 32 letters, digits, '_', '-' or '.'"
        ));
    }
    let swap_headers = match &entry.headers {
        // Every format Cordon presents is an authorization scheme, or (raw) most often one.
        None => vec!["authorization".to_string()],
        Some(list) if list.is_empty() => {
            return Err(
                "headers is empty: name the headers its placeholders may be sent in, or leave \
                 it out for [\"authorization\"]"
                    .into(),
            );
        }
        Some(list) => {
            let mut names = Vec::with_capacity(list.len());
            for header in list {
                let lower = header.to_ascii_lowercase();
                if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
                    || matches!(
                        lower.as_str(),
                        "host" | "cookie" | "content-length" | "transfer-encoding" | "connection"
                    )
                    || lower.starts_with("proxy-")
                {
                    return Err(format!(
                        "headers: {header:?} is not a header a credential may be sent in"
                    ));
                }
                names.push(lower);
            }
            names
        }
    };
    Ok(Secret {
        name: name.to_string(),
        swap_headers,
        placeholder_prefix: entry.placeholder_prefix,
        value: SecretValue::new(value),
        binding: Binding {
            hosts,
            methods: entry
                .methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            path_prefixes: entry.path_prefixes,
            allow_plaintext: entry.allow_plaintext,
            allow_upgrade: entry.allow_upgrade,
        },
        presentation,
    })
}

fn check_private(path: &Path) -> Result<(), SecretsLoadError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretsLoadError::Read {
        path: path.into(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretsLoadError::TooOpen {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}
