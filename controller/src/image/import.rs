//! `image import FILE`: an OCI image archive (a tar, optionally gzipped, holding an OCI image
//! layout) into the store; a legacy `docker save` archive is read too (docker.rs).
//!
//! The archive is extracted into scratch space on the store's filesystem, hashing every blob
//! as it is written, so each descriptor is checked against what was actually read (digest and
//! size) before anything is unpacked. Only the layout's own files are accepted: any other
//! entry, or one that escapes, is refused by name.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use super::store::{self, REF_NAME, copy_hashing};
use super::{Image, ImageError, ImageStore, Parts, valid_name};

/// What was read from the archive: blob digests (as computed) to their files and sizes.
struct Extracted {
    blobs: HashMap<String, (PathBuf, u64)>,
    index: Option<Vec<u8>>,
    has_layout: bool,
    /// A `manifest.json` without an `index.json`: Docker's legacy `docker save`.
    docker_legacy: bool,
    /// The legacy archive's files (`manifest.json`, configs, layers), by path.
    legacy: HashMap<String, super::docker::LegacyFile>,
}

fn invalid(file: &Path, why: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        file: file.display().to_string(),
        why: why.into(),
    }
}

/// The archive's entry `raw` as layout components, or why it is not one.
fn layout_path(raw: &Path) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a `..` component".into()),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path".into()),
        }
    }
    Ok(parts)
}

fn extract(file: &Path, scratch: &Path) -> Result<Extracted, ImageError> {
    let mut opened = std::fs::File::open(file).map_err(|source| ImageError::Io {
        path: file.into(),
        source,
    })?;
    let mut magic = [0u8; 2];
    let gzip = opened.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let opened = std::fs::File::open(file).map_err(|source| ImageError::Io {
        path: file.into(),
        source,
    })?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            opened,
        )))
    } else {
        Box::new(std::io::BufReader::new(opened))
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Extracted {
        blobs: HashMap::new(),
        index: None,
        has_layout: false,
        docker_legacy: false,
        legacy: HashMap::new(),
    };
    let mut saw_docker_manifest = false;
    let not_an_archive = |e: std::io::Error| {
        invalid(
            file,
            format!("is not a tar archive ({e}); expected an OCI image archive"),
        )
    };
    let entries = archive.entries().map_err(not_an_archive)?;
    let mut n = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(not_an_archive)?;
        n += 1;
        let raw = entry.path().map_err(not_an_archive)?.into_owned();
        let shown = raw.display().to_string();
        let parts =
            layout_path(&raw).map_err(|why| invalid(file, format!("entry {shown:?} {why}")))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let refuse = |why: &str| invalid(file, format!("entry {shown:?} {why}"));
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            if matches!(parts.as_slice(), ["blobs", ..]) || parts.len() == 1 {
                return Err(refuse("is not a regular file"));
            }
            return Err(refuse(
                "is not part of an OCI image layout (oci-layout, index.json, blobs/sha256/...)",
            ));
        }
        match parts.as_slice() {
            ["oci-layout"] => {
                let mut text = String::new();
                entry
                    .by_ref()
                    .take(4096)
                    .read_to_string(&mut text)
                    .map_err(|e| refuse(&e.to_string()))?;
                if !text.contains("imageLayoutVersion") {
                    return Err(refuse("is not an OCI layout header"));
                }
                out.has_layout = true;
            }
            ["index.json"] => {
                let mut bytes = Vec::new();
                entry
                    .by_ref()
                    .take(16 << 20)
                    .read_to_end(&mut bytes)
                    .map_err(|e| refuse(&e.to_string()))?;
                out.index = Some(bytes);
            }
            // Docker writes these beside the layout; Cordon reads the layout, or manifest.json
            // when there is none (a legacy archive).
            ["manifest.json"] => {
                saw_docker_manifest = true;
                super::docker::keep(&mut entry, scratch, n, "manifest.json", &mut out.legacy)?;
            }
            ["repositories"] => {}
            ["blobs", "sha256", hex]
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                let dst = scratch.join(format!("blob-{n}"));
                let (digest, size) = copy_hashing(&mut entry, &dst)?;
                if digest != format!("sha256:{hex}") {
                    return Err(refuse(&format!(
                        "is corrupt: its content hashes to {digest}, not the digest its name \
                         claims"
                    )));
                }
                out.blobs.insert(digest, (dst, size));
            }
            ["blobs", alg, _] if *alg != "sha256" => {
                return Err(refuse(
                    "uses a digest algorithm other than sha256, which is not supported",
                ));
            }
            _ if (parts.len() == 2 && parts[1] == "layer.tar")
                || (parts.len() == 1 && parts[0].ends_with(".json")) =>
            {
                out.docker_legacy = true;
                super::docker::keep(&mut entry, scratch, n, &parts.join("/"), &mut out.legacy)?;
            }
            _ => {
                return Err(refuse(
                    "is not part of an OCI image layout (oci-layout, index.json, blobs/sha256/...)",
                ));
            }
        }
    }
    if out.index.is_none() && saw_docker_manifest {
        out.docker_legacy = true;
    }
    Ok(out)
}

/// A blob as the archive held it, checked against `descriptor`.
fn blob<'a>(
    file: &Path,
    extracted: &'a Extracted,
    descriptor: &Descriptor,
    what: &str,
) -> Result<&'a (PathBuf, u64), ImageError> {
    store::sha256_hex(descriptor.digest())?;
    let found = extracted
        .blobs
        .get(descriptor.digest().as_ref())
        .ok_or_else(|| {
            invalid(
                file,
                format!(
                    "the {what} {} is missing from the archive",
                    descriptor.digest()
                ),
            )
        })?;
    if found.1 != descriptor.size() {
        return Err(invalid(
            file,
            format!(
                "the {what} {} is {} bytes, but its descriptor says {}",
                descriptor.digest(),
                found.1,
                descriptor.size()
            ),
        ));
    }
    Ok(found)
}

fn is_index(media: &MediaType) -> bool {
    matches!(media, MediaType::ImageIndex)
        || media.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn is_manifest(media: &MediaType) -> bool {
    matches!(media, MediaType::ImageManifest)
        || media.to_string() == "application/vnd.docker.distribution.manifest.v2+json"
}

/// The image manifests the index names, nested indexes resolved to linux/amd64; each with
/// the name the archive gives it.
fn manifests(
    file: &Path,
    extracted: &Extracted,
    index: &ImageIndex,
    depth: u8,
) -> Result<Vec<(Option<String>, Descriptor)>, ImageError> {
    let mut out = Vec::new();
    for d in index.manifests() {
        let name = d.annotations().as_ref().and_then(|a| {
            a.get(REF_NAME)
                .or_else(|| a.get("io.containerd.image.name"))
                .cloned()
        });
        if let Some(p) = d.platform()
            && (p.os().to_string() != "linux" || p.architecture().to_string() != "amd64")
        {
            continue;
        }
        if is_index(d.media_type()) && depth < 4 {
            let (path, _) = blob(file, extracted, d, "index")?;
            let nested = ImageIndex::from_file(path)
                .map_err(|e| invalid(file, format!("index {}: {e}", d.digest())))?;
            for (inner_name, inner) in manifests(file, extracted, &nested, depth + 1)? {
                out.push((inner_name.or_else(|| name.clone()), inner));
            }
        } else if is_manifest(d.media_type()) {
            out.push((name, d.clone()));
        }
    }
    Ok(out)
}

impl ImageStore {
    /// Imports the OCI image archive at `file` as `name` (default: the name the archive gives
    /// its one image).
    pub fn import(&self, file: &Path, name: Option<&str>) -> Result<Image, ImageError> {
        if let Some(name) = name
            && !valid_name(name)
        {
            return Err(ImageError::InvalidName(name.to_string()));
        }
        let file = std::path::absolute(file).map_err(|source| ImageError::Io {
            path: file.into(),
            source,
        })?;
        let _lock = self.layout.lock()?;
        self.layout.clean_scratch()?;
        let scratch = self.layout.scratch()?;
        let extracted = extract(&file, scratch.path())?;
        let Some(index_bytes) = &extracted.index else {
            if !extracted.docker_legacy {
                return Err(invalid(
                    &file,
                    "is not an OCI image archive: it has no index.json (expected oci-layout, \
                     index.json and blobs/sha256/..., or a `docker save` archive)",
                ));
            }
            let (archive_name, mut parts) = super::docker::parts(&file, &extracted.legacy, name)?;
            let name = match (name, archive_name) {
                (Some(n), _) => n.to_string(),
                (None, Some(n)) if valid_name(&n) => n,
                (None, _) => {
                    return Err(invalid(
                        &file,
                        "does not name its image validly; give --name",
                    ));
                }
            };
            parts.annotations.insert(
                store::SOURCE.into(),
                format!("import {} (docker save)", file.display()),
            );
            return self.commit(&name, scratch.path(), parts);
        };
        if !extracted.has_layout {
            return Err(invalid(
                &file,
                "is not an OCI image archive: it has no oci-layout file",
            ));
        }
        let index = ImageIndex::from_reader(&index_bytes[..])
            .map_err(|e| invalid(&file, format!("index.json: {e}")))?;
        let found = manifests(&file, &extracted, &index, 0)?;
        let (archive_name, descriptor) = match found.as_slice() {
            [] => {
                return Err(invalid(&file, "holds no linux/amd64 image manifest"));
            }
            [one] => one.clone(),
            many => {
                let wanted = name.ok_or_else(|| {
                    invalid(
                        &file,
                        format!(
                            "holds {} images ({}); import one with --name set to its name",
                            many.len(),
                            many.iter()
                                .map(|(n, d)| n.clone().unwrap_or_else(|| d.digest().to_string()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                many.iter()
                    .find(|(n, _)| n.as_deref() == Some(wanted))
                    .cloned()
                    .ok_or_else(|| {
                        invalid(
                            &file,
                            format!("holds several images, none named {wanted:?}"),
                        )
                    })?
            }
        };
        let name = match (name, archive_name) {
            (Some(n), _) => n.to_string(),
            (None, Some(n)) if valid_name(&n) => n,
            (None, Some(n)) => {
                return Err(invalid(
                    &file,
                    format!("names its image {n:?}, which is not a valid image name; give --name"),
                ));
            }
            (None, None) => {
                return Err(invalid(&file, "does not name its image; give --name"));
            }
        };
        let (manifest_path, _) = blob(&file, &extracted, &descriptor, "manifest")?;
        let manifest = ImageManifest::from_file(manifest_path)
            .map_err(|e| invalid(&file, format!("manifest {}: {e}", descriptor.digest())))?;
        let (config_path, _) = blob(&file, &extracted, manifest.config(), "config")?;
        let config = std::fs::read(config_path).map_err(|source| ImageError::Io {
            path: config_path.clone(),
            source,
        })?;
        oci_spec::image::ImageConfiguration::from_reader(&config[..])
            .map_err(|e| invalid(&file, format!("config {}: {e}", manifest.config().digest())))?;
        let mut layers = Vec::new();
        for layer in manifest.layers() {
            let (path, _) = blob(&file, &extracted, layer, "layer")?;
            layers.push((layer.clone(), path.clone()));
        }
        let mut annotations = HashMap::new();
        annotations.insert(store::SOURCE.into(), format!("import {}", file.display()));
        self.commit(
            &name,
            scratch.path(),
            Parts {
                layers,
                config,
                annotations,
            },
        )
    }
}
