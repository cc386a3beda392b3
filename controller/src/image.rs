//! Sandbox images: the read-only root filesystems sandboxes run on, kept in an OCI image layout
//! under the state directory so images built anywhere can be brought in.
//!
//! `build` makes one from Debian packages with mmdebstrap; `import` takes an OCI image archive
//! (`docker save` from Docker 25 on, `podman save --format oci-archive`, `skopeo copy ...
//! oci-archive:`). Both verify every blob against its digest, unpack the layers into the
//! image's root with [`unpack`]'s rules (nothing may land outside it), and only then name the
//! image; a failure leaves nothing behind. What a sandbox needs from Cordon (the interception
//! CA, the resolver, the agent) is mounted at start, so no image is rebuilt for it.

pub mod build;
mod docker;
pub mod import;
pub mod store;
pub mod unpack;

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType};

use self::store::{Layout, annotation};
use self::unpack::LayerWriter;

/// Why an image operation failed; every message names the file, entry or image involved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image name {0:?} is not valid: use 1-128 letters, digits and '.', '_', '-', ':', '/' \
         (starting with a letter or digit)"
    )]
    InvalidName(String),
    #[error(
        "no image {name:?} in {store}; build it (`cordon-controller image build {name} \
         --from-file images/default.toml`) or import one (`cordon-controller image import FILE \
         --name {name}`); `cordon-controller image list` shows what there is"
    )]
    NotFound { name: String, store: PathBuf },
    #[error("image {name:?} is in use by live session(s) {}; stop them first", .sessions.join(", "))]
    InUse { name: String, sessions: Vec<String> },
    #[error("{file}: {why}")]
    Invalid { file: String, why: String },
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error("building image {name:?} failed: {why}")]
    Build { name: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("internal error in the image store: {0}")]
    Internal(String),
}

impl ImageError {
    fn internal(why: String) -> Self {
        ImageError::Internal(why)
    }
}

/// Whether `name` may name an image.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
}

/// One stored image, resolved to what a sandbox needs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    pub name: String,
    /// The manifest's digest: what a session records, so a renamed image never changes a
    /// running sandbox's root.
    pub digest: String,
    /// The unpacked root filesystem.
    pub root: PathBuf,
    /// `KEY=VALUE` from the image's config.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub created: Option<String>,
    pub layers: usize,
    /// Sum of the layer blobs' sizes.
    pub size_bytes: u64,
    /// File content in the unpacked root.
    pub unpacked_bytes: Option<u64>,
    /// `build <file>` or `import <file>`.
    pub source: Option<String>,
    /// The content hash of what `build` was given (unset for imports).
    pub recipe: Option<String>,
}

/// The image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    layout: Layout,
}

/// What [`ImageStore::commit`] is given: the parts of an image, verified, in scratch space.
struct Parts {
    /// (descriptor, file in scratch holding the blob)
    layers: Vec<(Descriptor, PathBuf)>,
    config: Vec<u8>,
    annotations: std::collections::HashMap<String, String>,
}

impl ImageStore {
    /// Opens the store at `dir`, creating an empty one.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        Ok(Self {
            layout: Layout::open(dir)?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    fn describe(&self, name: &str, descriptor: &Descriptor) -> Result<Image, ImageError> {
        let manifest = self.layout.manifest(descriptor.digest())?;
        let config = self.layout.config(&manifest)?;
        let inner = config.config().as_ref();
        Ok(Image {
            name: name.to_string(),
            digest: descriptor.digest().to_string(),
            root: self.layout.root(descriptor.digest())?,
            env: inner.and_then(|c| c.env().clone()).unwrap_or_default(),
            workdir: inner
                .and_then(|c| c.working_dir().clone())
                .filter(|w| !w.is_empty()),
            created: annotation(descriptor, store::CREATED)
                .map(str::to_string)
                .or_else(|| config.created().clone()),
            layers: manifest.layers().len(),
            size_bytes: manifest.layers().iter().map(|l| l.size()).sum(),
            unpacked_bytes: annotation(descriptor, store::UNPACKED_BYTES)
                .and_then(|b| b.parse().ok()),
            source: annotation(descriptor, store::SOURCE).map(str::to_string),
            recipe: annotation(descriptor, store::RECIPE).map(str::to_string),
        })
    }

    /// Every named image, by name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images = self
            .layout
            .names()?
            .iter()
            .map(|(name, d)| self.describe(name, d))
            .collect::<Result<Vec<_>, _>>()?;
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The image named `name`, with its root checked to be there.
    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        if !valid_name(name) {
            return Err(ImageError::InvalidName(name.to_string()));
        }
        let Some((_, descriptor)) = self.layout.names()?.into_iter().find(|(n, _)| n == name)
        else {
            return Err(ImageError::NotFound {
                name: name.to_string(),
                store: self.layout.dir.clone(),
            });
        };
        let image = self.describe(name, &descriptor)?;
        if !image.root.is_dir() {
            return Err(ImageError::Invalid {
                file: image.root.display().to_string(),
                why: format!("image {name:?}'s unpacked root is missing; import or build it again"),
            });
        }
        Ok(image)
    }

    /// The image whose manifest digest is `digest`, under any name (a session's recorded
    /// image after a rename).
    pub fn by_digest(&self, digest: &str) -> Result<Option<Image>, ImageError> {
        for (name, d) in self.layout.names()? {
            if d.digest().as_ref() == digest {
                return self.describe(&name, &d).map(Some);
            }
        }
        Ok(None)
    }

    /// Removes `name` and whatever only it used. `live_users` are the live sessions running
    /// on it: any refuses the removal.
    pub fn remove(&self, name: &str, live_users: Vec<String>) -> Result<(), ImageError> {
        if !valid_name(name) {
            return Err(ImageError::InvalidName(name.to_string()));
        }
        if !live_users.is_empty() {
            return Err(ImageError::InUse {
                name: name.to_string(),
                sessions: live_users,
            });
        }
        let _lock = self.layout.lock()?;
        if self.layout.remove_name(name)? {
            Ok(())
        } else {
            Err(ImageError::NotFound {
                name: name.to_string(),
                store: self.layout.dir.clone(),
            })
        }
    }

    /// Unpacks `parts` into a root, moves the blobs in, and names the image. Called with the
    /// lock held; `scratch` is the operation's own scratch directory.
    fn commit(&self, name: &str, scratch: &Path, parts: Parts) -> Result<Image, ImageError> {
        let root_tmp = scratch.join("root");
        std::fs::create_dir(&root_tmp).map_err(|source| ImageError::Io {
            path: root_tmp.clone(),
            source,
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root_tmp, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| ImageError::Io {
                    path: root_tmp.clone(),
                    source,
                },
            )?;
        }
        let mut writer = LayerWriter::new(&root_tmp, "");
        for (i, (descriptor, file)) in parts.layers.iter().enumerate() {
            writer.next_layer(format!("layer {} ({})", i + 1, descriptor.digest()));
            let reader = layer_reader(descriptor, file)?;
            writer.apply(reader)?;
        }
        let applied = writer.applied;
        let config_descriptor = self
            .layout
            .put_blob(MediaType::ImageConfig, &parts.config)?;
        for (descriptor, file) in &parts.layers {
            self.layout.adopt_blob(file, descriptor.digest())?;
        }
        let manifest = oci_spec::image::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor)
            .layers(
                parts
                    .layers
                    .iter()
                    .map(|(d, _)| d.clone())
                    .collect::<Vec<_>>(),
            )
            .build()
            .map_err(|e| ImageError::internal(e.to_string()))?;
        let manifest_bytes = manifest
            .to_string()
            .map_err(|e| ImageError::internal(e.to_string()))?;
        let mut descriptor = self
            .layout
            .put_blob(MediaType::ImageManifest, manifest_bytes.as_bytes())?;
        let root = self.layout.root(descriptor.digest())?;
        if root.exists() {
            // The same manifest under another name: its root is already there.
            std::fs::remove_dir_all(&root_tmp).map_err(|source| ImageError::Io {
                path: root_tmp.clone(),
                source,
            })?;
        } else {
            std::fs::rename(&root_tmp, &root).map_err(|source| ImageError::Io {
                path: root.clone(),
                source,
            })?;
        }
        let mut annotations = parts.annotations;
        annotations.insert(store::UNPACKED_BYTES.into(), applied.bytes.to_string());
        annotations
            .entry(store::CREATED.into())
            .or_insert_with(crate::store::now);
        descriptor.set_annotations(Some(annotations));
        self.layout.set_name(name, descriptor)?;
        self.get(name)
    }
}

/// The decompressed tar stream of a layer blob.
fn layer_reader(
    descriptor: &Descriptor,
    file: &Path,
) -> Result<Box<dyn std::io::Read>, ImageError> {
    let open = std::fs::File::open(file).map_err(|source| ImageError::Io {
        path: file.into(),
        source,
    })?;
    let reader = std::io::BufReader::with_capacity(1 << 20, open);
    let media = descriptor.media_type().to_string();
    match media.as_str() {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Box::new(reader)),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
        }
        // Every frame, skippable ones (zstd:chunked's metadata) skipped.
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            zstd::stream::read::Decoder::with_buffer(reader)
                .map(|d| Box::new(d) as Box<dyn std::io::Read>)
                .map_err(|source| ImageError::Io {
                    path: file.into(),
                    source,
                })
        }
        other => Err(ImageError::Invalid {
            file: format!("layer {}", descriptor.digest()),
            why: format!(
                "media type {other:?} is not supported (tar, tar+gzip and tar+zstd layers are; \
                 re-save the image with gzip compression, e.g. `skopeo copy \
                 --dest-compress-format gzip`)"
            ),
        }),
    }
}
