//! Reading an OPA bundle archive (`.tar.gz`), as `opa build` writes it.

use std::io::Read;
use std::path::{Component, Path};

use super::{BundleLoadError, MAX_BUNDLE_BYTES, RawFile, is_bundle_file};

pub(super) fn read(path: &Path) -> Result<Vec<RawFile>, BundleLoadError> {
    let io = |source| BundleLoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // The limit applies to decompressed bytes: `take` stops a decompression bomb early.
    let decoder = flate2::read::GzDecoder::new(file).take(MAX_BUNDLE_BYTES + 1);
    let mut archive = tar::Archive::new(decoder);
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw_path = entry.path().map_err(io)?.into_owned();
        let entry_name = raw_path.to_string_lossy().into_owned();
        let mut parts = Vec::new();
        for component in raw_path.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(BundleLoadError::UnsafeArchivePath {
                        path: path.to_path_buf(),
                        entry: entry_name,
                    });
                }
            }
        }
        let Some(name) = parts.last() else { continue };
        if !is_bundle_file(name) || (name.starts_with('.') && parts.len() > 1) {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io)?;
        total = total.saturating_add(bytes.len() as u64);
        if total > MAX_BUNDLE_BYTES {
            return Err(BundleLoadError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_BUNDLE_BYTES,
            });
        }
        files.push(RawFile {
            path: parts.join("/"),
            bytes,
        });
    }
    Ok(files)
}
