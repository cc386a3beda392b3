//! The image store on disk: an OCI image layout (`oci-layout`, `index.json`, content-addressed
//! `blobs/sha256/`) whose index names each image with the `org.opencontainers.image.ref.name`
//! annotation, plus each image's unpacked root under `roots/<manifest digest>`, which sandboxes
//! run on (read-only, under runsc's in-memory overlay).
//!
//! Writers take `lock` (an exclusive flock) and publish with renames: a blob, a root or the
//! index appears whole or not at all, so a failed import or build leaves nothing a sandbox or
//! `image list` could see.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageIndexBuilder, ImageManifest,
    MediaType, OciLayoutBuilder,
};
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// The annotation OCI layouts name images with.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const CREATED: &str = "org.opencontainers.image.created";
/// What an image was built from (the image file's content hash), so a rebuild of an unchanged
/// file is skipped.
pub const RECIPE: &str = "dev.cordon.image.recipe";
/// Bytes of file content in the unpacked root.
pub const UNPACKED_BYTES: &str = "dev.cordon.image.unpacked-bytes";
/// Where the image came from: `build FILE` or `import FILE`.
pub const SOURCE: &str = "dev.cordon.image.source";

/// The layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.into(),
        source,
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a sha256 digest, or an error naming it.
pub fn sha256_hex(digest: &Digest) -> Result<&str, ImageError> {
    let hex = digest.digest();
    if digest.algorithm().as_ref() != "sha256"
        || hex.len() != 64
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ImageError::Invalid {
            file: digest.to_string(),
            why: "only sha256 digests are supported".into(),
        });
    }
    Ok(hex)
}

/// Copies `reader` to `dst`, returning its sha256 digest and size.
pub fn copy_hashing(mut reader: impl Read, dst: &Path) -> Result<(String, u64), ImageError> {
    let mut out = File::create(dst).map_err(io(dst))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(io(dst))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(dst))?;
        size += n as u64;
    }
    out.sync_all().map_err(io(dst))?;
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// The sha256 digest and size of the file at `path`.
pub fn hash_file(path: &Path) -> Result<(String, u64), ImageError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

impl Layout {
    /// Opens the layout at `dir`, creating an empty one.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        for sub in ["blobs/sha256", "roots", "tmp"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let layout = Self {
            dir: dir.to_path_buf(),
        };
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            let header = OciLayoutBuilder::default()
                .image_layout_version("1.0.0")
                .build()
                .map_err(|e| ImageError::internal(e.to_string()))?;
            let text = header
                .to_string()
                .map_err(|e| ImageError::internal(e.to_string()))?;
            layout.publish(&marker, text.as_bytes())?;
        }
        if !dir.join("index.json").exists() {
            layout.write_index(&empty_index()?)?;
        }
        Ok(layout)
    }

    /// An exclusive lock on the store, held while the returned file lives.
    pub fn lock(&self) -> Result<File, ImageError> {
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(file)
    }

    /// A fresh scratch directory on the store's filesystem (so its files can be renamed into
    /// place), removed when dropped.
    pub fn scratch(&self) -> Result<tempfile::TempDir, ImageError> {
        let tmp = self.dir.join("tmp");
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(&tmp)
            .map_err(io(&tmp))
    }

    /// Writes `bytes` to `path` whole: a temporary file beside it, renamed over it.
    fn publish(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let tmp = self.dir.join("tmp");
        let mut file = tempfile::NamedTempFile::new_in(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(path))?;
        file.as_file().sync_all().map_err(io(path))?;
        file.persist(path).map_err(|e| ImageError::Io {
            path: path.into(),
            source: e.error,
        })?;
        Ok(())
    }

    pub fn index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.dir.join("index.json");
        ImageIndex::from_file(&path).map_err(|e| ImageError::Invalid {
            file: path.display().to_string(),
            why: e.to_string(),
        })
    }

    pub fn write_index(&self, index: &ImageIndex) -> Result<(), ImageError> {
        let text = index
            .to_string_pretty()
            .map_err(|e| ImageError::internal(e.to_string()))?;
        self.publish(&self.dir.join("index.json"), text.as_bytes())
    }

    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs/sha256").join(sha256_hex(digest)?))
    }

    /// Stores `bytes` as a blob; its descriptor.
    pub fn put_blob(&self, media_type: MediaType, bytes: &[u8]) -> Result<Descriptor, ImageError> {
        let digest = sha256_digest(bytes);
        let parsed: Digest = digest
            .parse()
            .map_err(|e: oci_spec::OciSpecError| ImageError::internal(e.to_string()))?;
        let path = self.blob_path(&parsed)?;
        if !path.exists() {
            self.publish(&path, bytes)?;
        }
        Ok(Descriptor::new(media_type, bytes.len() as u64, parsed))
    }

    /// Moves the file at `file` (on the store's filesystem) into the blobs as `digest`.
    pub fn adopt_blob(&self, file: &Path, digest: &Digest) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        std::fs::rename(file, &path).map_err(io(&path))
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(io(&path))
    }

    pub fn manifest(&self, digest: &Digest) -> Result<ImageManifest, ImageError> {
        let bytes = self.read_blob(digest)?;
        ImageManifest::from_reader(&bytes[..]).map_err(|e| ImageError::Invalid {
            file: format!("manifest {digest}"),
            why: e.to_string(),
        })
    }

    pub fn config(&self, manifest: &ImageManifest) -> Result<ImageConfiguration, ImageError> {
        let bytes = self.read_blob(manifest.config().digest())?;
        ImageConfiguration::from_reader(&bytes[..]).map_err(|e| ImageError::Invalid {
            file: format!("config {}", manifest.config().digest()),
            why: e.to_string(),
        })
    }

    /// The unpacked root of the image whose manifest is `digest`.
    pub fn root(&self, digest: &Digest) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("roots").join(sha256_hex(digest)?))
    }

    /// Names to manifest descriptors.
    pub fn names(&self) -> Result<Vec<(String, Descriptor)>, ImageError> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .filter_map(|d| {
                let name = d.annotations().as_ref()?.get(REF_NAME)?.clone();
                Some((name, d.clone()))
            })
            .collect())
    }

    /// Points `name` at `descriptor` (replacing what it named), then removes what nothing
    /// names any more.
    pub fn set_name(&self, name: &str, mut descriptor: Descriptor) -> Result<(), ImageError> {
        let mut index = self.index()?;
        let mut annotations = descriptor.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.into(), name.into());
        descriptor.set_annotations(Some(annotations));
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| name_of(d) != Some(name))
            .cloned()
            .collect();
        manifests.push(descriptor);
        index.set_manifests(manifests);
        self.write_index(&index)?;
        self.collect_garbage()
    }

    /// Removes `name` from the index; `false` if it was not there.
    pub fn remove_name(&self, name: &str) -> Result<bool, ImageError> {
        let mut index = self.index()?;
        let before = index.manifests().len();
        let manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| name_of(d) != Some(name))
            .cloned()
            .collect();
        if manifests.len() == before {
            return Ok(false);
        }
        index.set_manifests(manifests);
        self.write_index(&index)?;
        self.collect_garbage()?;
        Ok(true)
    }

    /// Removes blobs and roots no named manifest references. Called with the lock held.
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        let mut keep_blobs = std::collections::HashSet::new();
        let mut keep_roots = std::collections::HashSet::new();
        for descriptor in self.index()?.manifests() {
            let hex = sha256_hex(descriptor.digest())?.to_string();
            keep_roots.insert(hex.clone());
            keep_blobs.insert(hex);
            if let Ok(manifest) = self.manifest(descriptor.digest()) {
                keep_blobs.insert(sha256_hex(manifest.config().digest())?.to_string());
                for layer in manifest.layers() {
                    keep_blobs.insert(sha256_hex(layer.digest())?.to_string());
                }
            }
        }
        sweep(&self.dir.join("blobs/sha256"), |name| {
            keep_blobs.contains(name)
        })?;
        sweep(&self.dir.join("roots"), |name| keep_roots.contains(name))
    }

    /// Removes what an interrupted import or build left in the scratch directory. Called with
    /// the lock held, before a write starts its own scratch work.
    pub fn clean_scratch(&self) -> Result<(), ImageError> {
        sweep(&self.dir.join("tmp"), |_| false)
    }
}

/// Removes every entry of `dir` (file or tree) whose name `keep` does not keep.
fn sweep(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), ImageError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        if keep(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.map_err(io(&path))?;
    }
    Ok(())
}

pub fn name_of(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()?
        .get(REF_NAME)
        .map(String::as_str)
}

pub fn annotation<'a>(descriptor: &'a Descriptor, key: &str) -> Option<&'a str> {
    descriptor
        .annotations()
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn empty_index() -> Result<ImageIndex, ImageError> {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .annotations(HashMap::new())
        .build()
        .map_err(|e| ImageError::internal(e.to_string()))
}
