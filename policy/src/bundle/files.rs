//! The files a bundle was made of, as read: what an operator is shown of the generation that
//! serves (the proxy's `GET /policy`), each with its own digest so one file can be checked
//! against its source without the bundle's combined hash.

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// What a bundle file is to the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFileKind {
    /// A Rego module that is served.
    Module,
    /// A `*_test.rego` module: loaded by `cordon-policy test`, never served.
    Test,
    /// `data.json`, `data.yaml` or `data.yml`.
    Data,
    /// The `.manifest`.
    Manifest,
}

impl BundleFileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BundleFileKind::Module => "module",
            BundleFileKind::Test => "test",
            BundleFileKind::Data => "data",
            BundleFileKind::Manifest => "manifest",
        }
    }

    fn of(path: &str) -> Self {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name == ".manifest" {
            BundleFileKind::Manifest
        } else if name.ends_with("_test.rego") {
            BundleFileKind::Test
        } else if name.ends_with(".rego") {
            BundleFileKind::Module
        } else {
            BundleFileKind::Data
        }
    }
}

/// One file of a bundle, exactly as it was read when the bundle loaded (later edits on disk do
/// not change it).
#[derive(Clone)]
pub struct BundleFile {
    /// Path inside the bundle, `/`-separated.
    pub path: String,
    pub kind: BundleFileKind,
    /// Lower-case hex SHA-256 of [`BundleFile::contents`].
    pub sha256: String,
    contents: Arc<[u8]>,
}

impl BundleFile {
    pub(super) fn new(path: String, contents: Vec<u8>) -> Self {
        Self {
            kind: BundleFileKind::of(&path),
            sha256: hex::encode(Sha256::digest(&contents)),
            path,
            contents: contents.into(),
        }
    }

    /// The file's bytes as loaded.
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.contents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contents.is_empty()
    }
}

// By hand: a derived `Debug` would print every byte of the file wherever a generation's
// description is logged.
impl std::fmt::Debug for BundleFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleFile")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("bytes", &self.contents.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}
