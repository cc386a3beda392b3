//! `image build NAME`: an image from Debian packages, made with mmdebstrap, described by an
//! image file:
//!
//! ```toml
//! suite = "bookworm"                       # default
//! mirror = "http://deb.debian.org/debian"  # default: mmdebstrap's (the host's apt sources)
//! packages = ["bash", "coreutils", "python3", "git", "curl", "ca-certificates", "ripgrep"]
//! workdir = "/workspace"
//! [env]
//! LANG = "C.UTF-8"
//! [[files]]
//! path = "/etc/motd"
//! content = "Built by Cordon\n"              # or source = "motd.txt" (relative to the file)
//! mode = "0644"
//! ```
//!
//! The image is two layers: mmdebstrap's root (minbase variant, no /dev, no docs) and the
//! extra files. The image file's content hash is kept on the image, so building an unchanged
//! file again is a no-op (`--force` rebuilds, say to pick up package updates).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfigurationBuilder, MediaType, RootFsBuilder,
};
use serde::{Deserialize, Serialize};

use super::store::{self, hash_file, sha256_digest};
use super::{Image, ImageError, ImageStore, Parts, valid_name};

/// Bumped when what `build` makes from the same file changes, so old builds are redone.
const RECIPE_VERSION: &str = "cordon-image-build/1";

const DEFAULT_SUITE: &str = "bookworm";

/// An image file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    #[serde(default)]
    pub suite: Option<String>,
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub files: Vec<ImageFile>,
}

/// One file added on top of the packages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFile {
    pub path: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub mode: Option<String>,
}

/// What `build` did.
#[derive(Debug)]
pub enum BuildOutcome {
    Built(Image),
    /// The image was built from this same file before; nothing was done.
    UpToDate(Image),
}

fn valid_package(p: &str) -> bool {
    // Debian package names, with an optional `=version` or `/release`.
    !p.is_empty()
        && p.len() <= 200
        && p.starts_with(|c: char| c.is_ascii_alphanumeric())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.=:~/_".contains(&b))
}

impl ImageSpec {
    /// Reads an image file, listing every problem at once.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
            path: path.into(),
            source,
        })?;
        let mut spec: ImageSpec = toml::from_str(&text).map_err(|e| ImageError::Invalid {
            file: path.display().to_string(),
            why: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in &mut spec.files {
            if let Some(source) = &f.source
                && source.is_relative()
            {
                f.source = Some(base.join(source));
            }
        }
        spec.validate().map_err(|errors| ImageError::Invalid {
            file: path.display().to_string(),
            why: format!("{} error(s):\n  {}", errors.len(), errors.join("\n  ")),
        })?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        for p in &self.packages {
            if !valid_package(p) {
                errors.push(format!("packages: {p:?} is not a Debian package name"));
            }
        }
        if let Some(suite) = &self.suite
            && !suite
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            errors.push(format!(
                "suite = {suite:?}: a Debian suite name such as \"bookworm\""
            ));
        }
        if let Some(mirror) = &self.mirror
            && !(mirror.starts_with("http://")
                || mirror.starts_with("https://")
                || mirror.starts_with("file://"))
        {
            errors.push(format!(
                "mirror = {mirror:?}: an http://, https:// or file:// URL"
            ));
        }
        if let Some(w) = &self.workdir
            && !w.starts_with('/')
        {
            errors.push(format!("workdir = {w:?}: an absolute path"));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                errors.push(format!("env: {k:?} is not a variable name"));
            }
        }
        for f in &self.files {
            if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
                errors.push(format!(
                    "files: path {:?} must be absolute, without `..`",
                    f.path
                ));
            }
            match (&f.content, &f.source) {
                (Some(_), None) => {}
                (None, Some(s)) if s.is_file() => {}
                (None, Some(s)) => errors.push(format!(
                    "files: {}: source {} is not a file",
                    f.path,
                    s.display()
                )),
                _ => errors.push(format!(
                    "files: {}: give exactly one of content or source",
                    f.path
                )),
            }
            if let Some(m) = &f.mode
                && u32::from_str_radix(m, 8).map_or(true, |m| m > 0o7777)
            {
                errors.push(format!(
                    "files: {}: mode {m:?} is not an octal mode such as \"0644\"",
                    f.path
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The file contents, resolved (sources read).
    fn contents(&self) -> Result<Vec<(String, Vec<u8>, u32)>, ImageError> {
        self.files
            .iter()
            .map(|f| {
                let bytes = match (&f.content, &f.source) {
                    (Some(c), _) => c.clone().into_bytes(),
                    (None, Some(s)) => std::fs::read(s).map_err(|source| ImageError::Io {
                        path: s.clone(),
                        source,
                    })?,
                    (None, None) => Vec::new(),
                };
                let mode = f
                    .mode
                    .as_deref()
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .unwrap_or(0o644);
                Ok((f.path.clone(), bytes, mode))
            })
            .collect()
    }

    /// The content hash a build of this spec is known by.
    fn recipe(&self, contents: &[(String, Vec<u8>, u32)]) -> String {
        let mut text = String::from(RECIPE_VERSION);
        text.push('\n');
        text.push_str(
            &serde_json::to_string(&(
                &self.suite,
                &self.mirror,
                &self.packages,
                &self.env,
                &self.workdir,
                contents
                    .iter()
                    .map(|(p, b, m)| (p, sha256_digest(b), m))
                    .collect::<Vec<_>>(),
            ))
            .unwrap_or_default(),
        );
        sha256_digest(text.as_bytes())
    }
}

/// The reason in mmdebstrap's output: the package apt could not find, or its error lines.
pub fn build_failure(output: &str) -> String {
    for line in output.lines() {
        for marker in ["Unable to locate package ", "has no installation candidate"] {
            if let Some(at) = line.find(marker) {
                let package = if marker.starts_with("Unable") {
                    line[at + marker.len()..].trim().to_string()
                } else {
                    line.split('\'').nth(1).unwrap_or(line).to_string()
                };
                return format!("unknown package {package:?} (apt: {})", line.trim());
            }
        }
    }
    let network: Vec<&str> = output
        .lines()
        .filter(|l| {
            l.contains("Failed to fetch")
                || l.contains("Temporary failure resolving")
                || l.contains("Could not resolve")
        })
        .collect();
    if let Some(first) = network.first() {
        return format!(
            "the Debian mirror could not be reached (is there network access to it, or set \
             `mirror` in the image file): {}",
            first.trim()
        );
    }
    let errors: Vec<&str> = output.lines().filter(|l| l.starts_with("E: ")).collect();
    if errors.is_empty() {
        let tail: Vec<&str> = output.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    } else {
        errors.join("\n")
    }
}

fn files_layer(contents: &[(String, Vec<u8>, u32)]) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in contents {
        let rel = path.trim_start_matches('/');
        let mut at = PathBuf::new();
        if let Some(parent) = Path::new(rel).parent() {
            for c in parent.components() {
                at.push(c);
                dirs.insert(at.clone());
            }
        }
    }
    let fail = |e: std::io::Error| ImageError::Internal(format!("writing the files layer: {e}"));
    for dir in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        builder
            .append_data(&mut h, &dir, std::io::empty())
            .map_err(fail)?;
    }
    for (path, bytes, mode) in contents {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(bytes.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        builder
            .append_data(&mut h, path.trim_start_matches('/'), &bytes[..])
            .map_err(fail)?;
    }
    builder.into_inner().map_err(fail)
}

impl ImageStore {
    /// Builds `name` from `spec` (`source` says where the spec came from, for `inspect`).
    pub fn build(
        &self,
        name: &str,
        spec: &ImageSpec,
        source: &str,
        force: bool,
    ) -> Result<BuildOutcome, ImageError> {
        if !valid_name(name) {
            return Err(ImageError::InvalidName(name.to_string()));
        }
        spec.validate().map_err(|errors| ImageError::Invalid {
            file: source.to_string(),
            why: errors.join("; "),
        })?;
        if spec.packages.is_empty() {
            return Err(ImageError::Invalid {
                file: source.to_string(),
                why: "no packages: list them in the image file's `packages` or give --packages"
                    .into(),
            });
        }
        let contents = spec.contents()?;
        let recipe = spec.recipe(&contents);
        let _lock = self.layout.lock()?;
        if !force
            && let Ok(existing) = self.get(name)
            && existing.recipe.as_deref() == Some(recipe.as_str())
        {
            return Ok(BuildOutcome::UpToDate(existing));
        }
        self.layout.clean_scratch()?;
        let scratch = self.layout.scratch()?;
        let base = scratch.path().join("base.tar");
        let mut command = Command::new("mmdebstrap");
        command
            .arg("--variant=minbase")
            .arg("--mode=root")
            .arg("--format=tar")
            .arg("--skip=output/dev")
            .arg(format!("--include={}", spec.packages.join(",")))
            .arg("--aptopt=Acquire::Retries \"3\"")
            .args([
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/info/*",
            ])
            .arg(spec.suite.as_deref().unwrap_or(DEFAULT_SUITE))
            .arg(&base);
        if let Some(mirror) = &spec.mirror {
            command.arg(mirror);
        }
        let output = command.output().map_err(|e| ImageError::Build {
            name: name.to_string(),
            why: if e.kind() == std::io::ErrorKind::NotFound {
                "mmdebstrap is not installed: run `apt-get install mmdebstrap` (make deps does)"
                    .into()
            } else {
                format!("mmdebstrap could not be started: {e}")
            },
        })?;
        if !output.status.success() {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return Err(ImageError::Build {
                name: name.to_string(),
                why: build_failure(&text),
            });
        }
        let (base_digest, base_size) = hash_file(&base)?;
        let parse = |d: &str| {
            d.parse::<oci_spec::image::Digest>()
                .map_err(|e| ImageError::Internal(e.to_string()))
        };
        let base_descriptor =
            Descriptor::new(MediaType::ImageLayer, base_size, parse(&base_digest)?);
        let files = files_layer(&contents)?;
        let files_path = scratch.path().join("files.tar");
        std::fs::write(&files_path, &files).map_err(|source| ImageError::Io {
            path: files_path.clone(),
            source,
        })?;
        let files_digest = sha256_digest(&files);
        let files_descriptor = Descriptor::new(
            MediaType::ImageLayer,
            files.len() as u64,
            parse(&files_digest)?,
        );
        let mut env: Vec<String> =
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut inner = ConfigBuilder::default().env(env);
        if let Some(w) = &spec.workdir {
            inner = inner.working_dir(w.clone());
        }
        let config = ImageConfigurationBuilder::default()
            .architecture(oci_spec::image::Arch::Amd64)
            .os(oci_spec::image::Os::Linux)
            .config(
                inner
                    .build()
                    .map_err(|e| ImageError::Internal(e.to_string()))?,
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![base_digest.clone(), files_digest.clone()])
                    .build()
                    .map_err(|e| ImageError::Internal(e.to_string()))?,
            )
            .build()
            .map_err(|e| ImageError::Internal(e.to_string()))?;
        let config = config
            .to_string()
            .map_err(|e| ImageError::Internal(e.to_string()))?
            .into_bytes();
        let mut annotations = HashMap::new();
        annotations.insert(store::RECIPE.into(), recipe);
        annotations.insert(store::SOURCE.into(), format!("build {source}"));
        let image = self.commit(
            name,
            scratch.path(),
            Parts {
                layers: vec![(base_descriptor, base), (files_descriptor, files_path)],
                config,
                annotations,
            },
        )?;
        Ok(BuildOutcome::Built(image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_build_names_the_package_or_the_mirror() {
        let apt = "I: running apt-get update...\nE: Unable to locate package nosuchpkg\nE: apt-get --yes install failed";
        assert!(
            build_failure(apt).contains("unknown package \"nosuchpkg\""),
            "{}",
            build_failure(apt)
        );
        let net = "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'\nE: apt-get update failed";
        assert!(build_failure(net).contains("could not be reached"));
    }

    #[test]
    fn image_files_are_checked_all_at_once() {
        let spec: ImageSpec = toml::from_str(
            "packages = [\"bash\", \"bad pkg\"]\nworkdir = \"rel\"\n[[files]]\npath = \"etc/x\"\n",
        )
        .unwrap_or_default();
        let errors = spec.validate().unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(toml::from_str::<ImageSpec>("pakages = []").is_err());
    }
}
