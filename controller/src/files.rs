//! Files in a session's workspace, read and written from the host: what the dashboard's file
//! browser and the admin API's `/sessions/{id}/files` serve (docs/DASHBOARD.md, "Files").
//! [`crate::sandbox::Runtime::open_workspace`] hands out a [`Workspace`]; everything here
//! works on its open directory.
//!
//! Nothing in a workspace is trusted: the sandbox wrote it, and may still be writing it. So
//! every path is resolved by the kernel, beneath the workspace's directory, with `openat2`'s
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: a link
//! the agent made to `/etc/shadow`, a `..` or a rename racing the request cannot lead out, and
//! symbolic links are listed (with their target) but never followed. Only regular files are
//! read: located with `O_PATH` (which opens nothing: no FIFO blocks, no device driver runs),
//! checked with `fstat` on that descriptor, not on the name, and only then opened through it.

mod path;
mod upload;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

pub use path::{UPLOAD_PREFIX, WorkspacePath};
pub use upload::{MAX_UPLOADS, Upload, upload_stream};

/// Entries listed from one directory, at most; the rest are counted.
pub const MAX_LISTED: usize = 5000;
/// Names read from one directory to choose those listed; beyond, they are only counted.
pub const MAX_READ: usize = 200_000;

/// `text` (a name the sandbox chose) safe to show to a person: control characters and the
/// Unicode controls that reorder text (`report\u{202e}fdp.exe` would read `reportexe.pdf`)
/// escaped as `\u{...}`.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let reorders = matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        );
        if c.is_control() || reorders {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a file operation did nothing. Each says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("bad path: {0}")]
    BadPath(String),
    #[error(
        "session {0:?} has no workspace on this gateway (it never started a sandbox, or its workspace was removed after `workspace_retention_hours`)"
    )]
    NoWorkspace(String),
    #[error(
        "file browsing needs `cordon-controller serve` to run sandboxes (`[controller] environment_id` and `[sandbox]`)"
    )]
    NoSandboxes,
    #[error(
        "session {session:?} ended at {ended_at}: its workspace is kept for reading until it is removed, and takes no uploads"
    )]
    Ended { session: String, ended_at: String },
    #[error("{0} is not in the workspace")]
    NotFound(WorkspacePath),
    #[error("{0} is not a directory")]
    NotADirectory(WorkspacePath),
    #[error("{path} is {kind}, not a regular file: only regular files are downloaded")]
    NotAFile { path: WorkspacePath, kind: String },
    #[error(
        "{0} passes through a symbolic link or another mount: links in a workspace are not followed, as they could lead outside it"
    )]
    Link(WorkspacePath),
    #[error(
        "{0} already exists: choose another name, or replace it (`files put --replace`, or \
         \"Replace a file of the same name\" in the dashboard)"
    )]
    Exists(WorkspacePath),
    #[error("{0} is a directory: an upload cannot take its place; choose another name")]
    IsADirectory(WorkspacePath),
    #[error("the workspace is full ({quota}): the upload was removed and nothing changed")]
    Full { quota: String },
    #[error("the upload was cut off ({0}): it was removed and nothing changed")]
    Interrupted(String),
    #[error("{0} uploads are being written already: try again when one has finished")]
    Busy(usize),
    #[error("{path}: {source}")]
    Io {
        path: WorkspacePath,
        source: io::Error,
    },
}

impl FilesError {
    /// The HTTP status that says it.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::BadPath(_) | Self::NotADirectory(_) | Self::NotAFile { .. } | Self::Link(_) => {
                S::BAD_REQUEST
            }
            Self::NoWorkspace(_) | Self::NotFound(_) => S::NOT_FOUND,
            Self::Ended { .. } | Self::Exists(_) | Self::IsADirectory(_) => S::CONFLICT,
            Self::NoSandboxes | Self::Busy(_) => S::SERVICE_UNAVAILABLE,
            Self::Full { .. } => S::INSUFFICIENT_STORAGE,
            Self::Interrupted(_) => S::BAD_REQUEST,
            Self::Io { .. } => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What one entry of a directory is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EntryKind {
    File,
    Directory,
    /// Shown with its target, never followed.
    Symlink {
        target: String,
    },
    /// A FIFO, socket or device node: listed, never opened.
    Other,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub name: String,
    #[serde(flatten)]
    pub kind: EntryKind,
    pub size: u64,
    /// Last modified, seconds since the epoch.
    pub modified: i64,
}

/// One directory's entries: directories first, then by name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<Entry>,
    /// Entries beyond [`MAX_LISTED`], not listed.
    pub not_listed: usize,
    pub usage: Usage,
    /// Whether the workspace takes uploads (false once its session ended).
    pub writable: bool,
}

/// How full the workspace's filesystem is.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub total_bytes: u64,
    /// Whether `total_bytes` is the workspace's own quota (`workspace_max_mb`) rather than the
    /// host filesystem the workspaces share.
    pub quota: bool,
}

/// A session's workspace, open: every operation resolves beneath this directory.
#[derive(Debug)]
pub struct Workspace {
    dir: OwnedFd,
    /// Its own filesystem with a quota (`workspace_max_mb`), or a plain directory.
    quota: bool,
    /// Whether it takes uploads (the session has not ended).
    pub writable: bool,
    /// The session and when it ended, when it did.
    ended: Option<(String, String)>,
    /// The quota's size as configured (the image's length); the filesystem in it reports a
    /// little less, its own metadata taken.
    quota_bytes: Option<u64>,
}

/// How every path beneath a workspace is resolved.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

impl Workspace {
    /// Opens the workspace at `dir` (a trusted host path: `<workspace_root>/<name>`).
    pub fn open(dir: &Path, quota: bool, writable: bool) -> io::Result<Self> {
        let dir = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir,
            quota,
            writable,
            ended: None,
            quota_bytes: None,
        })
    }

    /// Says the quota is `bytes` long (the workspace image's length).
    pub fn quota_bytes(mut self, bytes: u64) -> Self {
        self.quota_bytes = Some(bytes);
        self
    }

    /// Marks it read only: `session` ended at `ended_at` (RFC 3339).
    pub fn ended(mut self, session: &str, ended_at: &str) -> Self {
        self.writable = false;
        self.ended = Some((session.to_string(), ended_at.to_string()));
        self
    }

    /// Opens `path` beneath the workspace with `flags`, retrying the kernel's EAGAIN (a rename
    /// elsewhere in the workspace raced the resolution).
    fn open_beneath(
        &self,
        path: &WorkspacePath,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, FilesError> {
        // openat2 refuses O_PATH with any flag but O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(&self.dir, path.relative(), flags, mode, beneath()) {
                Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
                Err(e) => return Err(self.error(path, e.into())),
                Ok(fd) => return Ok(fd),
            }
        }
    }

    /// What an error of the kernel's means for `path`.
    fn error(&self, path: &WorkspacePath, error: io::Error) -> FilesError {
        match error.raw_os_error() {
            Some(libc_errno::ENOENT) => FilesError::NotFound(path.clone()),
            Some(libc_errno::ENOTDIR) => FilesError::NotADirectory(path.clone()),
            // RESOLVE_NO_SYMLINKS, O_NOFOLLOW and RESOLVE_NO_XDEV.
            Some(libc_errno::ELOOP | libc_errno::EXDEV) => FilesError::Link(path.clone()),
            Some(libc_errno::ENOSPC | libc_errno::EDQUOT) => FilesError::Full {
                quota: self.quota_text(),
            },
            _ => FilesError::Io {
                path: path.clone(),
                source: error,
            },
        }
    }

    /// The quota, in words, for a message.
    fn quota_text(&self) -> String {
        let usage = self.usage();
        let mib = usage.total_bytes / (1024 * 1024);
        if self.quota {
            format!("its quota is {mib} MiB, `[sandbox] workspace_max_mb`")
        } else {
            format!("the host filesystem of the workspaces, {mib} MiB, has no space left")
        }
    }

    /// How full the workspace's filesystem is.
    pub fn usage(&self) -> Usage {
        let (used_bytes, total_bytes) = rustix::fs::fstatvfs(&self.dir)
            .map(|s| {
                let total = s.f_blocks * s.f_frsize;
                (total - s.f_bfree.min(s.f_blocks) * s.f_frsize, total)
            })
            .unwrap_or((0, 0));
        Usage {
            used_bytes,
            total_bytes: self.quota_bytes.unwrap_or(total_bytes),
            quota: self.quota,
        }
    }

    /// The directory at `path`: its entries, directories first then by name, at most
    /// [`MAX_LISTED`] of them (the first in that order, whatever order the directory keeps;
    /// names beyond [`MAX_READ`] are only counted).
    pub fn list(&self, path: &WorkspacePath) -> Result<Listing, FilesError> {
        let fd = self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| self.error(path, e.into()))?;
        // Names and types first (no stat: the directory's own record), sorted, then only the
        // entries shown are looked at.
        let mut names = Vec::new();
        let mut not_listed = 0;
        for entry in dir {
            let entry = entry.map_err(|e| self.error(path, e.into()))?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if names.len() >= MAX_READ {
                not_listed += 1;
                continue;
            }
            names.push((entry.file_type() != FileType::Directory, name.to_owned()));
        }
        names.sort_unstable();
        not_listed += names.len().saturating_sub(MAX_LISTED);
        names.truncate(MAX_LISTED);
        let mut entries = Vec::with_capacity(names.len());
        for (_, name) in names {
            // Gone since it was read (the sandbox is live): not listed.
            let Ok(stat) = rustix::fs::statat(&fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let name = name.to_bytes();
            let kind = match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => EntryKind::File,
                FileType::Directory => EntryKind::Directory,
                FileType::Symlink => EntryKind::Symlink {
                    target: rustix::fs::readlinkat(&fd, name, Vec::new())
                        .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
                        .unwrap_or_default(),
                },
                _ => EntryKind::Other,
            };
            entries.push(Entry {
                name: String::from_utf8_lossy(name).into_owned(),
                kind,
                size: stat.st_size.max(0) as u64,
                modified: stat.st_mtime,
            });
        }
        Ok(Listing {
            path: path.to_string(),
            entries,
            not_listed,
            usage: self.usage(),
            writable: self.writable,
        })
    }

    /// Opens the regular file at `path` for reading; returns it with its length.
    ///
    /// Located with `O_PATH` first, which opens nothing (no FIFO blocks, no device driver
    /// runs), checked to be a regular file on that descriptor, and only then opened for
    /// reading through it (`/proc/self/fd/N`), so the file checked is the file read.
    pub fn read(&self, path: &WorkspacePath) -> Result<(std::fs::File, u64), FilesError> {
        use std::os::fd::AsRawFd;
        let located = self.open_beneath(path, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?;
        let stat = rustix::fs::fstat(&located).map_err(|e| self.error(path, e.into()))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind == FileType::Symlink {
            // O_PATH with O_NOFOLLOW locates a link itself rather than failing.
            return Err(FilesError::Link(path.clone()));
        }
        if kind != FileType::RegularFile {
            return Err(FilesError::NotAFile {
                path: path.clone(),
                kind: kind_text(kind).into(),
            });
        }
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", located.as_raw_fd()),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| self.error(path, e.into()))?;
        Ok((std::fs::File::from(fd), stat.st_size.max(0) as u64))
    }

    /// Starts writing a file called `name` into the directory at `dir`; nothing appears there
    /// until [`Upload::commit`]. With `replace`, a file of that name is replaced then.
    pub fn upload(
        &self,
        dir: &WorkspacePath,
        name: &str,
        replace: bool,
    ) -> Result<Upload, FilesError> {
        let target = dir.join(name)?;
        if name.starts_with(UPLOAD_PREFIX) {
            return Err(FilesError::BadPath(format!(
                "names starting with {UPLOAD_PREFIX} are the uploads in flight"
            )));
        }
        let parent = self.open_beneath(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        // Owned like the workspace's root, so the sandbox's user can use it.
        let owner = rustix::fs::fstat(&self.dir).map_err(|e| self.error(dir, e.into()))?;
        Upload::start(self, parent, target, replace, (owner.st_uid, owner.st_gid))
    }

    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// A file type in words.
fn kind_text(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        _ => "not a regular file",
    }
}

/// The errno values told apart above (rustix's `Errno` is converted to `io::Error`).
mod libc_errno {
    use rustix::io::Errno;
    pub(super) const ENOENT: i32 = Errno::NOENT.raw_os_error();
    pub(super) const ENOTDIR: i32 = Errno::NOTDIR.raw_os_error();
    pub(super) const ELOOP: i32 = Errno::LOOP.raw_os_error();
    pub(super) const EXDEV: i32 = Errno::XDEV.raw_os_error();
    pub(super) const ENOSPC: i32 = Errno::NOSPC.raw_os_error();
    pub(super) const EDQUOT: i32 = Errno::DQUOT.raw_os_error();
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn names_shown_to_people_carry_no_controls_and_no_reordering() {
        assert_eq!(shown("notes.txt"), "notes.txt");
        assert_eq!(shown("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(shown("report\u{202e}fdp.exe"), "report\\u{202e}fdp.exe");
        assert_eq!(shown("tab\there"), "tab\\u{9}here");
        assert_eq!(shown("C1\u{9b}x"), "C1\\u{9b}x");
        assert_eq!(shown("résumé"), "résumé");
    }
}
