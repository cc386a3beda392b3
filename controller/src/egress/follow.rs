//! Following the audit file: whole lines from where the last stored one ended, across
//! rotation (the name moves to a new file), truncation (the same file starts again) and the
//! proxy cutting off a batch it could not write whole (a full disk).
//!
//! A read proposes a [`Step`]; the position moves only when the caller has stored the step's
//! lines and calls [`Follower::commit`]. A failed store therefore re-reads the same lines, and
//! a crash in between resumes from the position stored with the last lines that were.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::store::egress::AuditPosition;

/// At most this much is read (and stored in one transaction) per step: a backlog is taken in
/// pieces, each followed by the next at once.
pub(super) const MAX_READ: usize = 4 << 20;

/// Polls without anything new in a file whose name now belongs to another before the follower
/// moves on to the new one: a writer that has not yet reopened may still append a batch to
/// the old one (about a second, at the ingester's interval).
const ROTATED_QUIET_POLLS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the audit log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one read found.
#[derive(Debug)]
pub(super) struct Step {
    /// Whole lines, each ending in `\n`.
    pub lines: Vec<u8>,
    /// Lines lost rather than read: longer than [`MAX_READ`], or left unfinished in a file
    /// that was rotated away.
    pub dropped: u64,
    /// Where the file is once `lines` are stored.
    pub next: AuditPosition,
    /// Discarding the rest of a line too long to store when the next read starts.
    skipping: bool,
    /// More can be read at once (the read stopped at [`MAX_READ`], or moved to another file).
    pub more: bool,
}

/// The file being read.
#[derive(Debug)]
struct Current {
    file: File,
    /// What has been stored of it.
    position: AuditPosition,
    skipping: bool,
    /// Polls that found nothing new since the path stopped naming this file.
    quiet_polls: u32,
}

#[derive(Debug)]
pub(super) struct Follower {
    path: PathBuf,
    current: Option<Current>,
    /// Where the stored position says to resume, until the first file is opened.
    saved: Option<AuditPosition>,
    missing_logged: bool,
    max_read: usize,
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn start_of(meta: &std::fs::Metadata) -> AuditPosition {
    let (device, inode) = identity(meta);
    AuditPosition {
        device,
        inode,
        offset: 0,
        head: Vec::new(),
    }
}

impl Follower {
    pub(super) fn new(path: PathBuf, saved: Option<AuditPosition>) -> Self {
        Self {
            path,
            current: None,
            saved,
            missing_logged: false,
            max_read: MAX_READ,
        }
    }

    #[cfg(test)]
    pub(super) fn with_max_read(mut self, max_read: usize) -> Self {
        self.max_read = max_read;
        self
    }

    /// What has been stored of the file being read.
    pub(super) fn position(&self) -> Option<&AuditPosition> {
        self.current.as_ref().map(|c| &c.position)
    }

    /// The step's lines are stored: read on from its end.
    pub(super) fn commit(&mut self, step: &Step) {
        if let Some(current) = &mut self.current
            && (current.position.device, current.position.inode)
                == (step.next.device, step.next.inode)
        {
            current.position = step.next.clone();
            current.skipping = step.skipping;
        }
    }

    fn read_error(&self, source: io::Error) -> FollowError {
        FollowError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// What the file gained since the last commit; `None` when there is nothing to store and
    /// no position to record.
    pub(super) fn read(&mut self) -> Result<Option<Step>, FollowError> {
        if self.current.is_none() {
            self.open_first()?;
        }
        let path_identity = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(identity(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.read_error(e)),
        };
        let Some(current) = self.current.as_mut() else {
            return Ok(None);
        };
        let outcome = if path_identity == Some(current.identity()) {
            read_named(&self.path, current, self.max_read)
        } else {
            read_rotated(&self.path, current, path_identity.is_some(), self.max_read)
        };
        match outcome.map_err(|e| self.read_error(e))? {
            Outcome::Idle => Ok(None),
            Outcome::Read(step) => Ok(Some(step)),
            Outcome::Moved(next, step) => {
                self.current = Some(next);
                Ok(Some(step))
            }
        }
    }

    /// Opens the file the first time, resuming where the stored position says.
    fn open_first(&mut self) -> Result<(), FollowError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Renamed away while the controller was stopped, no new file yet.
                if let Some(saved) = self.saved.take() {
                    if let Some((old, meta)) = predecessor(&self.path, &saved) {
                        self.current = Some(resumed(old, &meta, saved));
                        return Ok(());
                    }
                    self.saved = Some(saved);
                }
                if !self.missing_logged {
                    self.missing_logged = true;
                    tracing::warn!(
                        path = %self.path.display(),
                        "the audit log does not exist (yet): egress decisions are ingested once the proxy writes it"
                    );
                }
                return Ok(());
            }
            Err(source) => {
                return Err(FollowError::Open {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        self.missing_logged = false;
        let meta = file.metadata().map_err(|e| self.read_error(e))?;
        let current = match self.saved.take() {
            Some(saved) if (saved.device, saved.inode) == identity(&meta) => Current {
                file,
                position: saved,
                skipping: false,
                quiet_polls: 0,
            },
            Some(saved) => match predecessor(&self.path, &saved) {
                // Rotated while the controller was stopped: the old file's rest first.
                Some((old, old_meta)) => resumed(old, &old_meta, saved),
                None => {
                    if saved.offset > 0 {
                        tracing::warn!(
                            path = %self.path.display(),
                            "the audit log was replaced while the controller was stopped and the \
                             old file is gone: whatever was written to it after the last ingested \
                             record is not in the database"
                        );
                    }
                    fresh(file, &meta)
                }
            },
            None => fresh(file, &meta),
        };
        self.current = Some(current);
        Ok(())
    }
}

/// What a read of the current file came to.
enum Outcome {
    /// Nothing to store, no position to record.
    Idle,
    Read(Step),
    /// Reading goes on in another file (the step records the move).
    Moved(Current, Step),
}

impl Current {
    fn identity(&self) -> (u64, u64) {
        (self.position.device, self.position.inode)
    }
}

/// Reads on in the file the path still names, after checking it was not truncated.
fn read_named(path: &Path, current: &mut Current, max_read: usize) -> io::Result<Outcome> {
    let size = current.file.metadata()?.len();
    if !head_matches(&current.file, &current.position.head)? {
        // Truncated, and perhaps written again past where we were: its first bytes are
        // another record's. With `copytruncate` the copy holds what was not read yet.
        if let Some((copy, meta)) = predecessor(path, &current.position)
            && identity(&meta) != current.identity()
        {
            tracing::warn!(
                path = %path.display(),
                "the audit log was truncated: reading the rest of its copy, then it from its start"
            );
            let copy = resumed(copy, &meta, current.position.clone());
            let step = Step {
                lines: Vec::new(),
                dropped: 0,
                next: copy.position.clone(),
                skipping: false,
                more: true,
            };
            return Ok(Outcome::Moved(copy, step));
        }
        tracing::warn!(
            path = %path.display(),
            "the audit log was truncated: reading it from its start"
        );
        current.position.offset = 0;
        current.position.head.clear();
        current.skipping = false;
    } else if size < current.position.offset {
        // Same records, fewer bytes: the proxy cut off a batch it could not write whole.
        // What was read of it stays stored; reading goes on from the new end.
        current.position.offset = size;
        current.skipping = size > 0 && !ends_line(&current.file, size)?;
    }
    read_lines(current, max_read).map(Outcome::Read)
}

/// Finishes a file whose name now belongs to another file (`path_taken`) or to none, then
/// moves to the new one.
fn read_rotated(
    path: &Path,
    current: &mut Current,
    path_taken: bool,
    max_read: usize,
) -> io::Result<Outcome> {
    let step = read_lines(current, max_read)?;
    if !step.lines.is_empty() || step.more {
        current.quiet_polls = 0;
        return Ok(Outcome::Read(step));
    }
    if !path_taken || current.quiet_polls < ROTATED_QUIET_POLLS {
        current.quiet_polls += 1;
        return Ok(Outcome::Idle);
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::Idle),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let old_size = current.file.metadata()?.len();
    // A line the writer never finished in the file it left.
    let dropped = u64::from(old_size > current.position.offset && !current.skipping);
    tracing::info!(
        path = %path.display(),
        "the audit log was rotated: the old file was read to its end, the new one is read from its start"
    );
    let next = fresh(file, &meta);
    let step = Step {
        lines: Vec::new(),
        dropped,
        next: next.position.clone(),
        skipping: false,
        more: true,
    };
    Ok(Outcome::Moved(next, step))
}

fn fresh(file: File, meta: &std::fs::Metadata) -> Current {
    Current {
        file,
        position: start_of(meta),
        skipping: false,
        quiet_polls: 0,
    }
}

fn resumed(file: File, meta: &std::fs::Metadata, saved: AuditPosition) -> Current {
    let (device, inode) = identity(meta);
    Current {
        file,
        position: AuditPosition {
            device,
            inode,
            ..saved
        },
        skipping: false,
        quiet_polls: 0,
    }
}

/// The whole lines after the stored position, up to `max_read` bytes.
fn read_lines(current: &Current, max_read: usize) -> io::Result<Step> {
    let start = current.position.offset;
    let size = current.file.metadata()?.len();
    let available = size.saturating_sub(start);
    let want = usize::try_from(available)
        .unwrap_or(usize::MAX)
        .min(max_read);
    let mut buf = vec![0; want];
    let got = read_at_most(&current.file, &mut buf, start)?;
    buf.truncate(got);
    let mut dropped = 0;
    let mut skipping = current.skipping;
    let mut from = 0;
    if skipping {
        match buf.iter().position(|b| *b == b'\n') {
            Some(end) => {
                from = end + 1;
                skipping = false;
                dropped += 1;
            }
            None => from = buf.len(),
        }
    }
    // `end`: past the last whole line; `consumed`: past what is done with.
    let (end, consumed) = match buf[from..].iter().rposition(|b| *b == b'\n') {
        Some(last) => (from + last + 1, from + last + 1),
        // A line as long as a whole read: it cannot be stored; skip to its end.
        None if from == 0 && buf.len() == max_read => {
            skipping = true;
            (0, buf.len())
        }
        // Still skipping a long line: all of this read was its middle.
        None if skipping => (from, buf.len()),
        // The last line is still being written: it is read again, whole, next time.
        None => (from, from),
    };
    let mut next = current.position.clone();
    next.offset = start + consumed as u64;
    let head_len = AuditPosition::HEAD_LEN.min(usize::try_from(next.offset).unwrap_or(usize::MAX));
    if next.head.len() < head_len {
        let mut head = vec![0; head_len];
        let n = read_at_most(&current.file, &mut head, 0)?;
        head.truncate(n);
        next.head = head;
    }
    buf.truncate(end);
    buf.drain(..from.min(end));
    Ok(Step {
        lines: buf,
        dropped,
        next,
        skipping,
        more: got == max_read,
    })
}

/// Reads into `buf` at `offset` until it is full or the file ends; how much was read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The file still starts with `head`.
fn head_matches(file: &File, head: &[u8]) -> io::Result<bool> {
    if head.is_empty() {
        return Ok(true);
    }
    let mut first = vec![0; head.len()];
    let n = read_at_most(file, &mut first, 0)?;
    Ok(n == head.len() && first == head)
}

/// The byte before `offset` ends a line.
fn ends_line(file: &File, offset: u64) -> io::Result<bool> {
    let mut last = [0u8; 1];
    let n = read_at_most(file, &mut last, offset.saturating_sub(1))?;
    Ok(n == 1 && last[0] == b'\n')
}

/// The file that `saved` describes, now under another name beside `path`: the same file
/// renamed (rotation), or else a copy of it (`copytruncate`: its first bytes are `saved`'s
/// head, and it is at least as long as what was read).
fn predecessor(path: &Path, saved: &AuditPosition) -> Option<(File, std::fs::Metadata)> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name()?;
    let mut copy = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.file_name() == name {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if identity(&meta) == (saved.device, saved.inode) {
            let file = File::open(entry.path()).ok()?;
            return Some((file, meta));
        }
        if copy.is_none()
            && !saved.head.is_empty()
            && meta.len() >= saved.offset
            && let Ok(file) = File::open(entry.path())
            && head_matches(&file, &saved.head).unwrap_or(false)
        {
            copy = Some((file, meta));
        }
    }
    copy
}
