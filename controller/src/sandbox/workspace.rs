//! Session workspaces: `/workspace` inside the sandbox, kept on the host across the session's
//! sandboxes (an idle teardown keeps it; the next work item mounts it again) and removed
//! `workspace_retention_hours` after the session ends.
//!
//! The quota is the kernel's: each workspace is its own ext4 filesystem in a sparse file
//! (`<workspace_root>/<id>.img`, `workspace_max_mb` long), loop-mounted at
//! `<workspace_root>/<id>` while the session lives. A write past it fails with ENOSPC inside
//! the sandbox and touches nothing else on the host. Chosen over project quotas, which need the
//! state directory's filesystem mounted with `prjquota`: measured here, `mkfs.ext4` of a 2 GiB
//! sparse file takes about 25 ms and the mount about 70 ms, paid once per session (the mount
//! stays while the session lives, so a resume after idle mounts nothing). The loop device is
//! allocated by `mount -o loop` (util-linux), which also frees it on unmount.

use std::path::{Path, PathBuf};

use crate::command::{CommandError, run};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspace {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workspace: {0}")]
    Command(#[from] CommandError),
}

/// The workspaces under one root.
#[derive(Debug, Clone)]
pub struct Workspaces {
    pub root: PathBuf,
    /// 0: plain directories, no quota.
    pub max_mb: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.into(),
        source,
    }
}

/// Whether `dir` is a mount point (its device differs from its parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(own), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata))
    else {
        return false;
    };
    own.dev() != parent.dev()
}

impl Workspaces {
    /// The directory the sandbox binds as `/workspace`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn image(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.img"))
    }

    /// The length of workspace `id`'s image (its quota), when it is its own filesystem.
    pub fn image_len(&self, id: &str) -> Option<u64> {
        std::fs::metadata(self.image(id)).ok().map(|m| m.len())
    }

    /// Whether session `id` has a workspace (mounted or not).
    pub fn exists(&self, id: &str) -> bool {
        self.image(id).exists() || self.dir(id).exists()
    }

    /// Makes session `id`'s workspace ready at [`Workspaces::dir`]: created on first use,
    /// mounted if it is not; what an earlier sandbox wrote is there.
    pub fn attach(&self, id: &str) -> Result<PathBuf, WorkspaceError> {
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let image = self.image(id);
        if self.max_mb == 0 && !image.exists() {
            return Ok(dir);
        }
        if is_mount_point(&dir) {
            return Ok(dir);
        }
        let fresh = !image.exists();
        if fresh {
            self.create_image(&image)?;
        }
        self.mount(&image, &dir)?;
        if fresh {
            // mkfs's lost+found would be the agent's first sight of its workspace.
            let _ = std::fs::remove_dir(dir.join("lost+found"));
        }
        Ok(dir)
    }

    /// Makes workspace `id` readable at [`Workspaces::dir`] as it is, creating nothing: its
    /// image mounted if it has one (whatever `max_mb` says now), its plain directory otherwise.
    /// The file browser's attach: browsing must not give an old plain-directory workspace an
    /// empty image over its files after `workspace_max_mb` was raised.
    pub fn attach_existing(&self, id: &str) -> Result<PathBuf, WorkspaceError> {
        let dir = self.dir(id);
        let image = self.image(id);
        if !image.exists() || is_mount_point(&dir) {
            return Ok(dir);
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        self.mount(&image, &dir)?;
        Ok(dir)
    }

    fn mount(&self, image: &Path, dir: &Path) -> Result<(), WorkspaceError> {
        run(
            "mount",
            [
                "-t".into(),
                "ext4".into(),
                "-o".into(),
                "loop,nosuid,nodev".into(),
                image.display().to_string(),
                dir.display().to_string(),
            ],
        )?;
        Ok(())
    }

    fn create_image(&self, image: &Path) -> Result<(), WorkspaceError> {
        let partial = image.with_extension("img.partial");
        let made = (|| {
            let file = std::fs::File::create(&partial).map_err(io(&partial))?;
            file.set_len(self.max_mb * 1024 * 1024)
                .map_err(io(&partial))?;
            drop(file);
            run(
                "mkfs.ext4",
                [
                    "-q".into(),
                    "-F".into(),
                    "-m".into(),
                    "0".into(),
                    "-E".into(),
                    "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0".into(),
                    partial.display().to_string(),
                ],
            )?;
            std::fs::rename(&partial, image).map_err(io(image))
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        made
    }

    /// Unmounts session `id`'s workspace, keeping its content in the image file.
    pub fn detach(&self, id: &str) -> Result<(), WorkspaceError> {
        let dir = self.dir(id);
        if is_mount_point(&dir) {
            // Lazily when busy (a stale shell in a dying sandbox): the data is flushed when the
            // last user goes, and the mount point is free now.
            if run("umount", [dir.display().to_string()]).is_err() {
                run("umount", ["-l".to_string(), dir.display().to_string()])?;
            }
        }
        Ok(())
    }

    /// Removes session `id`'s workspace and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), WorkspaceError> {
        self.detach(id)?;
        let dir = self.dir(id);
        if dir.exists() && !is_mount_point(&dir) {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let image = self.image(id);
        if image.exists() {
            std::fs::remove_file(&image).map_err(io(&image))?;
        }
        Ok(())
    }

    /// The workspaces here, by name (a session id, or the pool id of a warm sandbox).
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .map(|n| n.strip_suffix(".img").map(str::to_string).unwrap_or(n))
                    .filter(|n| super::names::valid_sandbox_id(n))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids.dedup();
        ids
    }
}
