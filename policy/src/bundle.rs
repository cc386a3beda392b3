//! Policy bundles: Rego modules, data documents and an optional manifest.
//!
//! A bundle is read from one of three sources, chosen by what the path is:
//! - a directory, walked recursively (hidden entries such as `.git` are skipped, except the
//!   `.manifest` file at the bundle root);
//! - an OPA bundle archive (`.tar.gz` / `.tgz`), as `opa build` writes it;
//! - a single `.rego` file, a bundle of one module.
//!
//! Within a bundle, `*.rego` files are modules; `data.json`, `data.yaml` and `data.yml` are data
//! documents placed at their directory's path (`roles/data.json` becomes `data.roles`); `.manifest`
//! carries `revision`, `roots`, `rego_version` and, under `metadata.cordon.request_body`, the
//! policy's opt-in to request bodies ([`RequestBodyConfig`]). Everything else is ignored. Every
//! problem is reported at load time with the file it is in; nothing is deferred to evaluation.

mod archive;
mod data;
mod files;
mod manifest;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use files::{BundleFile, BundleFileKind};
pub use manifest::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DECODED_BODY_BYTES, MAX_BODY_BYTES_CEILING,
    MAX_DECODED_BODY_BYTES_CEILING, Manifest, OverLimit, RequestBodyConfig,
};

/// Upper bound on the bytes a bundle may hold, so a hostile archive (a decompression bomb)
/// cannot exhaust memory at load time. Real egress bundles are kilobytes.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;

/// One Rego source file of a bundle.
#[derive(Debug, Clone)]
pub struct BundleModule {
    /// Path inside the bundle, `/`-separated (what errors and `opa test` output name).
    pub path: String,
    pub source: String,
}

impl BundleModule {
    /// Test modules (`*_test.rego`) are loaded by `cordon-policy test` and `check`, but never
    /// served: test rules may use `with` and fixtures that have no place on the hot path.
    pub fn is_test(&self) -> bool {
        self.path.ends_with("_test.rego")
    }
}

/// A loaded, syntactically unchecked bundle: files read and data merged. Rego parsing and query
/// compilation happen in [`crate::engine`].
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Where the bundle was read from.
    pub origin: PathBuf,
    pub modules: Vec<BundleModule>,
    /// The merged data document (`data.*` below the policies' rules).
    pub data: regorus::Value,
    pub manifest: Manifest,
    /// `sha256:<hex>` over every file's path and bytes, in path order: names the generation when
    /// the manifest has no revision, and tells two revisions with equal names apart.
    pub content_hash: String,
    /// Every file read (modules, test modules, data documents, the manifest), in path order.
    pub files: Vec<BundleFile>,
}

/// Why a bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleLoadError {
    #[error("cannot read policy bundle {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "policy bundle {0} is neither a directory, a .tar.gz/.tgz archive nor a .rego file; \
         point [policy] bundle at one of those"
    )]
    UnsupportedSource(PathBuf),
    #[error("policy bundle {path}: {file} is not valid UTF-8")]
    NotUtf8 { path: PathBuf, file: String },
    #[error("policy bundle {path}: archive entry {entry:?} escapes the bundle root")]
    UnsafeArchivePath { path: PathBuf, entry: String },
    #[error("policy bundle {path} holds more than {limit} bytes; refusing to load it")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("policy bundle {path}: {file}: {message}")]
    BadData {
        path: PathBuf,
        file: String,
        message: String,
    },
    #[error("policy bundle {path}: .manifest: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("policy bundle {path} has no .rego modules")]
    NoModules { path: PathBuf },
}

/// A file read from a bundle source, before it is sorted into modules, data and manifest.
struct RawFile {
    path: String,
    bytes: Vec<u8>,
}

impl Bundle {
    /// Reads a bundle from a directory, a `.tar.gz`/`.tgz` archive or a single `.rego` file.
    pub fn load(path: &Path) -> Result<Self, BundleLoadError> {
        let io = |source| BundleLoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let files = if meta.is_dir() {
            read_directory(path)?
        } else if is_archive(path) {
            archive::read(path)?
        } else if path.extension().is_some_and(|e| e == "rego") {
            let bytes = std::fs::read(path).map_err(io)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "policy.rego".to_string());
            vec![RawFile { path: name, bytes }]
        } else {
            return Err(BundleLoadError::UnsupportedSource(path.to_path_buf()));
        };
        Self::from_files(path, files)
    }

    fn from_files(origin: &Path, mut files: Vec<RawFile>) -> Result<Self, BundleLoadError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let content_hash = hash_files(&files);

        let manifest = match files.iter().find(|f| f.path == ".manifest") {
            Some(f) => {
                Manifest::parse(&f.bytes).map_err(|message| BundleLoadError::BadManifest {
                    path: origin.to_path_buf(),
                    message,
                })?
            }
            None => Manifest::default(),
        };

        let mut modules = Vec::new();
        let mut data = regorus::Value::new_object();
        for file in &files {
            let name = file.path.rsplit('/').next().unwrap_or(&file.path);
            if name.ends_with(".rego") {
                let source = String::from_utf8(file.bytes.clone()).map_err(|_| {
                    BundleLoadError::NotUtf8 {
                        path: origin.to_path_buf(),
                        file: file.path.clone(),
                    }
                })?;
                modules.push(BundleModule {
                    path: file.path.clone(),
                    source,
                });
            } else if matches!(name, "data.json" | "data.yaml" | "data.yml") {
                let bad = |message: String| BundleLoadError::BadData {
                    path: origin.to_path_buf(),
                    file: file.path.clone(),
                    message,
                };
                let value = data::parse(name, &file.bytes).map_err(bad)?;
                let at = data::directory_path(&file.path);
                if at.is_empty() {
                    // A root-level data file owns each of its top-level keys.
                    for key in data::top_level_keys(&value) {
                        manifest.check_data_path(&[key]).map_err(bad)?;
                    }
                } else {
                    manifest.check_data_path(&at).map_err(bad)?;
                }
                data::merge_at(&mut data, &at, value).map_err(bad)?;
            }
        }
        if modules.is_empty() {
            return Err(BundleLoadError::NoModules {
                path: origin.to_path_buf(),
            });
        }
        let files = files
            .into_iter()
            .map(|f| BundleFile::new(f.path, f.bytes))
            .collect();
        Ok(Self {
            origin: origin.to_path_buf(),
            modules,
            data,
            manifest,
            content_hash,
            files,
        })
    }

    /// The name decisions and audit records carry: the manifest revision when there is one,
    /// otherwise the content hash.
    pub fn generation_id(&self) -> String {
        match &self.manifest.revision {
            Some(revision) if !revision.is_empty() => revision.clone(),
            _ => self.content_hash.clone(),
        }
    }
}

fn is_archive(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

fn read_directory(root: &Path) -> Result<Vec<RawFile>, BundleLoadError> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let io = |source| BundleLoadError::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = relative_path(root, &path);
            // Hidden entries (.git, editor swap files) are not part of a bundle; the manifest is.
            if name.starts_with('.') && relative != ".manifest" {
                continue;
            }
            // metadata() follows symlinks, so a linked data file or module directory is read as
            // what it points to, as opa does.
            let meta = std::fs::metadata(&path).map_err(|source| BundleLoadError::Io {
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !is_bundle_file(&name) {
                continue;
            }
            total = total.saturating_add(meta.len());
            if total > MAX_BUNDLE_BYTES {
                return Err(BundleLoadError::TooLarge {
                    path: root.to_path_buf(),
                    limit: MAX_BUNDLE_BYTES,
                });
            }
            let bytes = std::fs::read(&path).map_err(|source| BundleLoadError::Io {
                path: path.clone(),
                source,
            })?;
            files.push(RawFile {
                path: relative,
                bytes,
            });
        }
    }
    Ok(files)
}

/// The files a bundle is made of; everything else in the tree (READMEs, scripts) is ignored.
fn is_bundle_file(name: &str) -> bool {
    name.ends_with(".rego") || matches!(name, "data.json" | "data.yaml" | "data.yml" | ".manifest")
}

fn relative_path(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn hash_files(files: &[RawFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.path.as_bytes());
        hasher.update([0]);
        hasher.update((file.bytes.len() as u64).to_le_bytes());
        hasher.update(&file.bytes);
    }
    format!("sha256:{}", hex::encode(&hasher.finalize()[..8]))
}

#[cfg(test)]
mod tests;
