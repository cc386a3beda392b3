//! An upload into a workspace: written to a hidden file beside its target and renamed into
//! place when whole (`renameat2`, `RENAME_NOREPLACE` unless replacing), so the directory holds
//! either the old file or the new one, never a part. An upload that fails (the quota is
//! reached, the client goes away) removes its hidden file: nothing changed.

use std::io::Write;
use std::os::fd::OwnedFd;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::{FilesError, UPLOAD_PREFIX, Workspace, WorkspacePath, beneath, libc_errno};

/// On a workspace without a quota (`workspace_max_mb = 0`, plain directories on the host's
/// filesystem) an upload stops before leaving less than this free for everything else.
const HOST_RESERVE: u64 = 1024 * 1024 * 1024;

/// Uploads written at once, across every workspace: each holds a thread of the blocking pool
/// while it lasts, which sandbox starts and mounts need too.
pub const MAX_UPLOADS: usize = 16;
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UPLOADS);

/// How long an upload may send nothing before it is dropped.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// On a workspace without a quota, the host's free space is looked at again after this much.
const RECHECK_EVERY: u64 = 64 * 1024 * 1024;

/// A file being written into a workspace.
#[derive(Debug)]
pub struct Upload {
    parent: OwnedFd,
    temporary: String,
    file: Option<std::fs::File>,
    target: WorkspacePath,
    replace: bool,
    written: u64,
    /// Bytes it may still take on a workspace without a quota.
    allowance: Option<u64>,
    quota_text: String,
    committed: bool,
}

fn io_error(target: &WorkspacePath, error: std::io::Error, quota: &str) -> FilesError {
    match error.raw_os_error() {
        Some(libc_errno::ENOSPC | libc_errno::EDQUOT) => FilesError::Full {
            quota: quota.to_string(),
        },
        _ => FilesError::Io {
            path: target.clone(),
            source: error,
        },
    }
}

impl Upload {
    pub(super) fn start(
        workspace: &Workspace,
        parent: OwnedFd,
        target: WorkspacePath,
        replace: bool,
        (uid, gid): (u32, u32),
    ) -> Result<Self, FilesError> {
        if !workspace.writable {
            return Err(match &workspace.ended {
                Some((session, ended_at)) => FilesError::Ended {
                    session: session.clone(),
                    ended_at: ended_at.clone(),
                },
                None => FilesError::BadPath("this workspace is open for reading only".into()),
            });
        }
        let name = target.name().unwrap_or_default().to_string();
        // Said before any byte is sent; the rename checks again, atomically.
        match rustix::fs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat)
                if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                    == rustix::fs::FileType::Directory =>
            {
                return Err(FilesError::IsADirectory(target));
            }
            Ok(_) if !replace => return Err(FilesError::Exists(target)),
            _ => {}
        }
        let quota_text = workspace.quota_text();
        let allowance = (!workspace.quota).then(|| {
            rustix::fs::fstatvfs(workspace.as_fd())
                .map(|s| (s.f_bavail * s.f_frsize).saturating_sub(HOST_RESERVE))
                .unwrap_or(0)
        });
        let temporary = format!("{UPLOAD_PREFIX}{}", random_suffix());
        let fd = rustix::fs::openat2(
            &parent,
            temporary.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
            beneath(),
        )
        .map_err(|e| io_error(&target, e.into(), &quota_text))?;
        let upload = Self {
            parent,
            temporary,
            file: Some(std::fs::File::from(fd)),
            target,
            replace,
            written: 0,
            allowance,
            quota_text,
            committed: false,
        };
        if let Some(file) = &upload.file {
            rustix::fs::fchown(
                file,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| io_error(&upload.target, e.into(), &upload.quota_text))?;
        }
        if upload.allowance == Some(0) {
            return Err(upload.full());
        }
        Ok(upload)
    }

    fn full(&self) -> FilesError {
        FilesError::Full {
            quota: format!(
                "{}; uploads leave {} MiB free on it",
                self.quota_text,
                HOST_RESERVE / (1024 * 1024)
            ),
        }
    }

    /// Where it will be.
    pub fn target(&self) -> &WorkspacePath {
        &self.target
    }

    /// Appends `chunk`.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), FilesError> {
        let before = self.written;
        self.written += chunk.len() as u64;
        if self.allowance.is_some_and(|a| self.written > a) {
            return Err(self.full());
        }
        // Other uploads and the sandboxes write to the same filesystem meanwhile.
        if self.allowance.is_some()
            && before / RECHECK_EVERY != self.written / RECHECK_EVERY
            && rustix::fs::fstatvfs(&self.parent)
                .is_ok_and(|s| s.f_bavail * s.f_frsize < HOST_RESERVE)
        {
            return Err(self.full());
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(chunk)
            .map_err(|e| io_error(&self.target, e, &self.quota_text))
    }

    /// Puts the whole file in place; returns its length.
    pub fn commit(mut self) -> Result<u64, FilesError> {
        // Closed first: a delayed write error shows here, not after the rename.
        if let Some(file) = self.file.take() {
            file.sync_data()
                .map_err(|e| io_error(&self.target, e, &self.quota_text))?;
        }
        let flags = if self.replace {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        let name = self.target.name().unwrap_or_default().to_string();
        match rustix::fs::renameat_with(
            &self.parent,
            self.temporary.as_str(),
            &self.parent,
            name.as_str(),
            flags,
        ) {
            Ok(()) => {
                self.committed = true;
                Ok(self.written)
            }
            Err(rustix::io::Errno::EXIST) => Err(FilesError::Exists(self.target.clone())),
            Err(rustix::io::Errno::ISDIR) => Err(FilesError::IsADirectory(self.target.clone())),
            Err(e) => Err(io_error(&self.target, e.into(), &self.quota_text)),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.parent, self.temporary.as_str(), AtFlags::empty());
        }
    }
}

fn random_suffix() -> String {
    crate::sandbox::names::random_alphanumeric(16)
}

/// What the writer is told.
enum Piece {
    Bytes(Bytes),
    /// The body ended whole: commit.
    End,
    /// The body failed: remove it.
    Failed(String),
}

/// Writes `body` into `upload` on the blocking pool and commits it once the body has ended
/// whole. At most [`MAX_UPLOADS`] run at once (more are refused: [`FilesError::Busy`]), and
/// one that sends nothing for a minute is dropped. On any failure (a write, or the body itself: the client went away), and when this
/// future is dropped before the end (a timeout, a shutdown), the partial file is removed.
pub async fn upload_stream<E: std::fmt::Display>(
    upload: Upload,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<u64, FilesError> {
    let Ok(_slot) = UPLOADS.try_acquire() else {
        return Err(FilesError::Busy(MAX_UPLOADS));
    };
    let (pieces, mut received) = tokio::sync::mpsc::channel::<Piece>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = upload;
        // A channel closed without `End` is a body that never ended: nothing is committed.
        while let Some(piece) = received.blocking_recv() {
            match piece {
                Piece::Bytes(bytes) => upload.write(&bytes)?,
                Piece::End => return upload.commit(),
                Piece::Failed(why) => return Err(FilesError::Interrupted(why)),
            }
        }
        Err(FilesError::Interrupted("the upload was abandoned".into()))
    });
    let mut body = std::pin::pin!(body);
    loop {
        let piece = match tokio::time::timeout(IDLE, body.next()).await {
            Ok(Some(Ok(bytes))) => Piece::Bytes(bytes),
            Ok(Some(Err(e))) => Piece::Failed(e.to_string()),
            Ok(None) => Piece::End,
            Err(_) => Piece::Failed(format!("nothing arrived for {} s", IDLE.as_secs())),
        };
        let last = !matches!(piece, Piece::Bytes(_));
        // The writer stopped (a full workspace): its error is the answer.
        if pieces.send(piece).await.is_err() || last {
            break;
        }
    }
    drop(pieces);
    match writer.await {
        Ok(result) => result,
        Err(e) => Err(FilesError::Interrupted(format!("the writer failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Workspace;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_sixteen_uploads_are_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = Workspace::open(dir.path(), true, true).unwrap();
        let root = WorkspacePath::root();
        let stalled = || {
            futures_util::stream::iter([Ok::<_, String>(Bytes::from_static(b"part"))])
                .chain(futures_util::stream::pending())
        };
        let held: Vec<_> = (0..MAX_UPLOADS)
            .map(|n| {
                let upload = workspace.upload(&root, &format!("f{n}"), false).unwrap();
                tokio::spawn(upload_stream(upload, stalled()))
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while UPLOADS.available_permits() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let one_more = workspace.upload(&root, "f-more", false).unwrap();
        let refused = upload_stream(one_more, stalled()).await.unwrap_err();
        assert!(matches!(refused, FilesError::Busy(16)), "{refused:?}");
        assert!(refused.to_string().contains("try again"), "{refused}");
        for task in held {
            task.abort();
        }
        // Every slot comes back and nothing is left in the directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (UPLOADS.available_permits() < MAX_UPLOADS
            || std::fs::read_dir(dir.path()).unwrap().next().is_some())
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(UPLOADS.available_permits(), MAX_UPLOADS);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
