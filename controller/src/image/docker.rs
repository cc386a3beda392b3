//! Docker's legacy `docker save` archive (before Docker 25: no OCI layout, a `manifest.json`
//! naming each image's config file and layer tars by path), turned into the same parts an OCI
//! import gives.
//!
//! Nothing in a legacy archive is named by its digest but the config (`<sha256 hex>.json`),
//! so integrity is checked the other way round: the config must hash to its name, and each
//! layer's uncompressed content must hash to the config's `rootfs.diff_ids` entry for it.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType};
use serde::Deserialize;

use super::store::copy_hashing;
use super::{ImageError, Parts};

/// A file of a legacy archive, hashed as it was extracted.
#[derive(Debug)]
pub(super) struct LegacyFile {
    pub(super) path: PathBuf,
    pub(super) digest: String,
    pub(super) size: u64,
}

/// `manifest.json`: one entry per saved image.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

fn invalid(file: &Path, why: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        file: file.display().to_string(),
        why: why.into(),
    }
}

/// Keeps archive entry `name` (a legacy file: `manifest.json`, a config, a layer) in scratch.
pub(super) fn keep(
    entry: impl Read,
    scratch: &Path,
    n: usize,
    name: &str,
    files: &mut HashMap<String, LegacyFile>,
) -> Result<(), ImageError> {
    let path = scratch.join(format!("legacy-{n}"));
    let (digest, size) = copy_hashing(entry, &path)?;
    files.insert(name.to_string(), LegacyFile { path, digest, size });
    Ok(())
}

/// The image `name` (a `RepoTags` entry; default: the archive's only image) of a legacy
/// archive whose files were kept, as the parts to commit, with the name the archive gives it.
pub(super) fn parts(
    file: &Path,
    files: &HashMap<String, LegacyFile>,
    name: Option<&str>,
) -> Result<(Option<String>, Parts), ImageError> {
    let manifest = files
        .get("manifest.json")
        .ok_or_else(|| invalid(file, "has neither index.json nor manifest.json"))?;
    let text = std::fs::read(&manifest.path).map_err(|source| ImageError::Io {
        path: manifest.path.clone(),
        source,
    })?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&text).map_err(|e| invalid(file, format!("manifest.json: {e}")))?;
    let tags = |e: &Entry| e.repo_tags.clone().unwrap_or_default();
    let entry = match (entries.as_slice(), name) {
        ([], _) => return Err(invalid(file, "manifest.json names no image")),
        ([one], _) => one,
        (many, Some(wanted)) => many
            .iter()
            .find(|e| tags(e).iter().any(|t| t == wanted))
            .ok_or_else(|| invalid(file, format!("holds no image tagged {wanted:?}")))?,
        (many, None) => {
            let all: Vec<String> = many.iter().flat_map(tags).collect();
            return Err(invalid(
                file,
                format!(
                    "holds {} images ({}); import one with --name set to its tag",
                    many.len(),
                    all.join(", ")
                ),
            ));
        }
    };
    let member = |path: &str, what: &str| {
        files.get(path).ok_or_else(|| {
            invalid(
                file,
                format!("the {what} {path:?} is missing from the archive"),
            )
        })
    };
    let config_file = member(&entry.config, "config")?;
    let named = entry
        .config
        .trim_end_matches(".json")
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if config_file.digest != format!("sha256:{named}") {
        return Err(invalid(
            file,
            format!(
                "entry {:?} is corrupt: its content hashes to {}, not the digest its name claims",
                entry.config, config_file.digest
            ),
        ));
    }
    let config = std::fs::read(&config_file.path).map_err(|source| ImageError::Io {
        path: config_file.path.clone(),
        source,
    })?;
    let parsed: Config = serde_json::from_slice(&config)
        .map_err(|e| invalid(file, format!("config {:?}: {e}", entry.config)))?;
    oci_spec::image::ImageConfiguration::from_reader(&config[..])
        .map_err(|e| invalid(file, format!("config {:?}: {e}", entry.config)))?;
    if parsed.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(invalid(
            file,
            format!(
                "manifest.json names {} layers, but the config's rootfs has {}",
                entry.layers.len(),
                parsed.rootfs.diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (path, diff_id) in entry.layers.iter().zip(&parsed.rootfs.diff_ids) {
        let layer = member(path, "layer")?;
        let mut magic = [0u8; 2];
        let gzip = std::fs::File::open(&layer.path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && magic == [0x1f, 0x8b];
        let content = if gzip {
            let opened = std::fs::File::open(&layer.path).map_err(|source| ImageError::Io {
                path: layer.path.clone(),
                source,
            })?;
            hash_reader(flate2::read::MultiGzDecoder::new(opened), &layer.path)?
        } else {
            layer.digest.clone()
        };
        if &content != diff_id {
            return Err(invalid(
                file,
                format!(
                    "layer {path:?} is corrupt: its content hashes to {content}, but the config \
                     says {diff_id}"
                ),
            ));
        }
        let media = if gzip {
            MediaType::ImageLayerGzip
        } else {
            MediaType::ImageLayer
        };
        let digest: oci_spec::image::Digest = layer
            .digest
            .parse()
            .map_err(|e: oci_spec::OciSpecError| invalid(file, format!("layer {path:?}: {e}")))?;
        layers.push((
            Descriptor::new(media, layer.size, digest),
            layer.path.clone(),
        ));
    }
    let name = tags(entry).into_iter().next();
    Ok((
        name,
        Parts {
            layers,
            config,
            annotations: HashMap::new(),
        },
    ))
}

fn hash_reader(mut reader: impl Read, path: &Path) -> Result<String, ImageError> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut reader, &mut hasher).map_err(|source| ImageError::Io {
        path: path.into(),
        source,
    })?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
