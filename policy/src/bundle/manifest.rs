//! The bundle `.manifest`: revision, roots and Rego version, as OPA defines them, and Cordon's
//! own settings under `metadata.cordon`.

mod request_body;

use serde::Deserialize;

pub use request_body::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DECODED_BODY_BYTES, MAX_BODY_BYTES_CEILING,
    MAX_DECODED_BODY_BYTES_CEILING, OverLimit, RequestBodyConfig,
};

/// What a bundle's `.manifest` says. Keys Cordon does not use (`wasm`, `metadata` other than
/// `metadata.cordon`) are ignored, as opa ignores keys it does not know.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Manifest {
    /// Names the policy generation in decisions, audit records and metrics.
    #[serde(default)]
    pub revision: Option<String>,
    /// Path prefixes (`cordon/egress`) the bundle owns; every package and data document must sit
    /// under one of them. Absent means the bundle owns everything.
    #[serde(default)]
    pub roots: Option<Vec<String>>,
    /// `0` for pre-1.0 Rego syntax (`allow { ... }` without `if`), `1` (the default) for Rego v1.
    #[serde(default)]
    pub rego_version: Option<u8>,
    /// OPA's free-form object; Cordon reads `metadata.cordon` and nothing else of it.
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    /// `metadata.cordon.request_body`: the policy wants request bodies, with these limits.
    /// `None`: requests are decided without their bodies.
    #[serde(skip)]
    pub request_body: Option<RequestBodyConfig>,
}

impl Manifest {
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        if let Some(version) = manifest.rego_version
            && version > 1
        {
            return Err(format!("rego_version must be 0 or 1, not {version}"));
        }
        manifest.request_body = request_body::parse(manifest.metadata.as_ref())?;
        Ok(manifest)
    }

    /// Whether modules are parsed as Rego v0 (OPA before 1.0).
    pub fn rego_v0(&self) -> bool {
        self.rego_version == Some(0)
    }

    /// Checks that a data document at `path` (segments below `data`) sits under a root.
    pub(super) fn check_data_path(&self, path: &[String]) -> Result<(), String> {
        self.check_path(&path.join("/"), "data document")
    }

    /// Checks that a package (`data.cordon.egress` or `cordon.egress`) sits under a root.
    pub fn check_package(&self, package: &str) -> Result<(), String> {
        let path = package
            .strip_prefix("data.")
            .unwrap_or(package)
            .replace('.', "/");
        self.check_path(&path, "package")
    }

    fn check_path(&self, path: &str, what: &str) -> Result<(), String> {
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        let inside = roots.iter().any(|root| {
            let root = root.trim_matches('/');
            root.is_empty() || path == root || path.starts_with(&format!("{root}/"))
        });
        if inside {
            Ok(())
        } else {
            let shown = if path.is_empty() { "/" } else { path };
            Err(format!(
                "{what} at {shown} is outside the manifest roots {roots:?}; add its path to roots"
            ))
        }
    }
}
