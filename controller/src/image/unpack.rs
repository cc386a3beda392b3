//! Applying an image layer (a tar stream) to a root directory on the host, as the OCI image
//! spec's "Applying changesets" says: whiteouts remove what lower layers made, opaque
//! directories hide a lower directory's contents.
//!
//! The layer is untrusted input written by root on the host, so nothing in it may reach outside
//! the root: absolute paths and `..` are refused, no entry is written through a symlink (every
//! ancestor of a target must be a real directory inside the root), hard links must name a path
//! inside the root, relative symlinks may not climb above it, and device nodes are refused
//! (an image has no business shipping `/dev`; the sandbox gets its own). Absolute symlink
//! targets are kept: they resolve inside the sandbox's root, never on the host, because nothing
//! on the host follows them (the controller never reads an image's files).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Why a layer could not be applied. `entry` is the path as the archive spells it.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{layer}: entry {entry:?} {why}")]
    Refused {
        layer: String,
        entry: String,
        why: String,
    },
    #[error("{layer}: {what}: {source}")]
    Io {
        layer: String,
        what: String,
        source: std::io::Error,
    },
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// What applying layers wrote, for the image's record.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    pub entries: u64,
    pub bytes: u64,
}

/// The path of an entry inside the root, or why it may not be one: relative, no `..`.
fn inside(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// Whether a relative symlink at `link` (a path inside the root) pointing at `target` stays
/// inside the root when resolved lexically.
fn relative_target_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth: i64 = link.parent().map_or(0, |p| p.components().count() as i64);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// Applies layers to roots, remembering what the current layer wrote (an opaque whiteout hides
/// lower layers' entries only, not the ones its own layer put there before it).
#[derive(Debug)]
pub struct LayerWriter<'a> {
    root: &'a Path,
    layer: String,
    written: HashSet<PathBuf>,
    pub applied: Applied,
}

impl<'a> LayerWriter<'a> {
    pub fn new(root: &'a Path, layer: impl Into<String>) -> Self {
        Self {
            root,
            layer: layer.into(),
            written: HashSet::new(),
            applied: Applied::default(),
        }
    }

    fn refused(&self, entry: &Path, why: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            layer: self.layer.clone(),
            entry: entry.display().to_string(),
            why: why.into(),
        }
    }

    fn io(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
        let what = what.into();
        move |source| UnpackError::Io {
            layer: self.layer.clone(),
            what,
            source,
        }
    }

    /// Makes every ancestor of `rel` a real directory inside the root (creating missing ones);
    /// refuses one that is a symlink or a file.
    fn ensure_parents(&self, raw: &Path, rel: &Path) -> Result<(), UnpackError> {
        let mut at = self.root.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for component in parent.components() {
            at.push(component);
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(self.refused(
                        raw,
                        format!(
                            "would be written through the symlink {}",
                            at.strip_prefix(self.root).unwrap_or(&at).display()
                        ),
                    ));
                }
                Ok(_) => {
                    return Err(self.refused(
                        raw,
                        format!(
                            "is below {}, which is not a directory",
                            at.strip_prefix(self.root).unwrap_or(&at).display()
                        ),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&at)
                        .map_err(self.io(format!("creating {}", at.display())))?;
                }
                Err(e) => return Err(self.io(format!("reading {}", at.display()))(e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `path` (never following a symlink); nothing there is fine.
    fn remove(&self, path: &Path) -> Result<(), UnpackError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(self.io(format!("removing {}", path.display())))
    }

    /// Applies one layer's tar stream.
    pub fn apply(&mut self, reader: impl Read) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(false);
        let entries = archive.entries().map_err(self.io("reading the layer"))?;
        for entry in entries {
            let mut entry = entry.map_err(self.io("reading the layer"))?;
            let raw = entry
                .path()
                .map_err(self.io("reading an entry's path"))?
                .into_owned();
            self.entry(&raw, &mut entry)?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        raw: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let rel = inside(raw).map_err(|why| self.refused(raw, why))?;
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            // The root itself (`./`): its attributes are the sandbox's, not the layer's.
            return Ok(());
        }
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        self.ensure_parents(raw, &rel)?;
        if name == OPAQUE {
            // Hide what lower layers put in this directory; keep this layer's own entries.
            let dir = self.root.join(rel.parent().unwrap_or(Path::new("")));
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let children =
                std::fs::read_dir(&dir).map_err(self.io(format!("listing {}", dir.display())))?;
            for child in children {
                let child = child.map_err(self.io(format!("listing {}", dir.display())))?;
                let child_rel = parent.join(child.file_name());
                if !self.written.contains(&child_rel) {
                    self.remove(&child.path())?;
                }
            }
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(self.refused(raw, "is a whiteout of nothing"));
            }
            let target = self.root.join(rel.with_file_name(hidden));
            self.remove(&target)?;
            return Ok(());
        }
        let target = self.root.join(&rel);
        match kind {
            tar::EntryType::Block | tar::EntryType::Char => {
                return Err(self.refused(
                    raw,
                    "is a device node; images may not carry devices (the sandbox has its own /dev)",
                ));
            }
            tar::EntryType::Directory => {
                if let Ok(meta) = std::fs::symlink_metadata(&target)
                    && !meta.file_type().is_dir()
                {
                    self.remove(&target)?;
                }
            }
            tar::EntryType::Link => {
                let source_raw = entry
                    .link_name()
                    .map_err(self.io("reading a hard link's target"))?
                    .ok_or_else(|| self.refused(raw, "is a hard link without a target"))?
                    .into_owned();
                let source_rel = inside(&source_raw).map_err(|why| {
                    self.refused(
                        raw,
                        format!("is a hard link whose target {} {why}", source_raw.display()),
                    )
                })?;
                self.ensure_parents(raw, &source_rel)?;
                let source = self.root.join(&source_rel);
                match std::fs::symlink_metadata(&source) {
                    Ok(meta) if !meta.file_type().is_dir() => {}
                    _ => {
                        return Err(self.refused(
                            raw,
                            format!(
                                "is a hard link to {}, which is not a file an earlier entry made",
                                source_raw.display()
                            ),
                        ));
                    }
                }
                self.remove(&target)?;
                std::fs::hard_link(&source, &target)
                    .map_err(self.io(format!("linking {}", target.display())))?;
                self.note(rel, 0);
                return Ok(());
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(self.io("reading a symlink's target"))?
                    .ok_or_else(|| self.refused(raw, "is a symlink without a target"))?
                    .into_owned();
                if link.is_relative() && !relative_target_stays_inside(&rel, &link) {
                    return Err(self.refused(
                        raw,
                        format!(
                            "is a symlink to {}, which climbs out of the image's root",
                            link.display()
                        ),
                    ));
                }
                self.remove(&target)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Fifo => {
                self.remove(&target)?
            }
            // GNU and PAX extension headers are folded into the entries that follow them by
            // the tar crate; anything else is not filesystem content.
            _ => return Ok(()),
        }
        let size = entry.header().size().unwrap_or(0);
        entry
            .unpack(&target)
            .map_err(self.io(format!("writing {}", target.display())))?;
        self.note(rel, size);
        Ok(())
    }

    fn note(&mut self, rel: PathBuf, bytes: u64) {
        self.applied.entries += 1;
        self.applied.bytes += bytes;
        self.written.insert(rel);
    }

    /// Starts the next layer: what the previous one wrote is now a lower layer's.
    pub fn next_layer(&mut self, layer: impl Into<String>) {
        self.layer = layer.into();
        self.written.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, body).unwrap();
    }

    fn special(
        b: &mut tar::Builder<Vec<u8>>,
        path: &str,
        kind: tar::EntryType,
        link: Option<&str>,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        // Written raw: the builder's own path checks would refuse what these tests need to send.
        let bytes = path.as_bytes();
        let name = &mut h.as_old_mut().name;
        name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<(), UnpackError> {
        let mut w = LayerWriter::new(root, "layer 0");
        for (i, l) in layers.iter().enumerate() {
            w.next_layer(format!("layer {i}"));
            w.apply(&l[..])?;
        }
        Ok(())
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let dir = tempfile::tempdir().unwrap();
        let lower = layer(|b| {
            file(b, "etc/keep", b"k");
            file(b, "etc/gone", b"g");
            file(b, "opt/old/a", b"a");
            special(b, "bin", tar::EntryType::Symlink, Some("usr/bin"));
        });
        let upper = layer(|b| {
            file(b, "opt/old/new", b"n");
            special(b, "opt/old/.wh..wh..opq", tar::EntryType::Regular, None);
            special(b, "etc/.wh.gone", tar::EntryType::Regular, None);
            special(b, "etc/keep2", tar::EntryType::Link, Some("etc/keep"));
        });
        apply(dir.path(), &[lower, upper]).unwrap();
        let root = dir.path();
        assert!(root.join("etc/keep").is_file());
        assert!(!root.join("etc/gone").exists());
        assert!(
            !root.join("opt/old/a").exists(),
            "the opaque directory hides the lower file"
        );
        assert!(
            root.join("opt/old/new").is_file(),
            "but keeps its own layer's"
        );
        assert_eq!(std::fs::read(root.join("etc/keep2")).unwrap(), b"k");
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
    }

    #[test]
    fn refuses_entries_that_escape_the_root() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "absolute",
                layer(|b| special(b, "/etc/evil", tar::EntryType::Regular, None)),
                "absolute",
            ),
            (
                "dotdot",
                layer(|b| special(b, "a/../../evil", tar::EntryType::Regular, None)),
                "`..`",
            ),
            (
                "through a symlink",
                layer(|b| {
                    special(b, "out", tar::EntryType::Symlink, Some("/"));
                    special(b, "out/evil", tar::EntryType::Regular, None);
                }),
                "through the symlink out",
            ),
            (
                "hard link out",
                layer(|b| special(b, "h", tar::EntryType::Link, Some("../../etc/shadow"))),
                "hard link",
            ),
            (
                "symlink climbing out",
                layer(|b| special(b, "a/l", tar::EntryType::Symlink, Some("../../etc"))),
                "climbs out",
            ),
            (
                "device",
                layer(|b| special(b, "dev/sda", tar::EntryType::Block, None)),
                "device node",
            ),
        ];
        for (what, bytes, expect) in cases {
            let dir = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            std::fs::create_dir(&root).unwrap();
            let err = apply(&root, &[bytes]).unwrap_err().to_string();
            assert!(err.contains(expect), "{what}: {err}");
            assert!(!dir.path().join("evil").exists(), "{what}");
            assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        }
    }

    #[test]
    fn a_file_replaces_a_lower_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "host file").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let lower = layer(|b| {
            special(
                b,
                "x",
                tar::EntryType::Symlink,
                Some(victim.to_str().unwrap()),
            )
        });
        let upper = layer(|b| file(b, "x", b"image file"));
        apply(&root, &[lower, upper]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        assert_eq!(
            std::fs::read_to_string(root.join("x")).unwrap(),
            "image file"
        );
    }
}
