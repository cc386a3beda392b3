//! The ref updates of a git push: the command list at the start of a smart-HTTP
//! `POST .../git-receive-pack` body (gitprotocol-pack(5), "Reference Update Request"):
//!
//! ```text
//! pkt-line("<old-oid> <new-oid> <refname>\0<capabilities>\n")
//! pkt-line("<old-oid> <new-oid> <refname>\n") ...
//! flush-pkt ("0000")
//! [push options, flush-pkt] packfile
//! ```
//!
//! Only the command list is read; the packfile behind it is not. A signed push
//! (`push-cert`) carries its commands inside the certificate, and they are read from there.

/// `input.cordon.git`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitPush {
    pub commands: Vec<GitCommand>,
}

/// One ref update: `{old, new, ref, action}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCommand {
    /// The object id the client believes the ref has; all zeros when creating it.
    pub old: String,
    /// The object id the ref is to have; all zeros when deleting it.
    pub new: String,
    /// The full ref name (`refs/heads/main`).
    pub reference: String,
}

/// What a command does to its ref, from which ids are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitRefAction {
    Create,
    Delete,
    Update,
}

impl GitRefAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GitRefAction::Create => "create",
            GitRefAction::Delete => "delete",
            GitRefAction::Update => "update",
        }
    }
}

impl GitCommand {
    pub fn action(&self) -> GitRefAction {
        let zero = |oid: &str| oid.bytes().all(|b| b == b'0');
        if zero(&self.old) {
            GitRefAction::Create
        } else if zero(&self.new) {
            GitRefAction::Delete
        } else {
            GitRefAction::Update
        }
    }
}

/// Whether a request is a smart-HTTP push (`POST .../git-receive-pack`).
pub fn is_receive_pack(method: &str, path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    method.eq_ignore_ascii_case("POST") && path.ends_with("/git-receive-pack")
}

/// The command list at the start of `body`. `Ok(None)` when `body` ends before the list's
/// flush-pkt (a prefix of a push whose commands did not fit).
pub(super) fn commands(body: &[u8]) -> Result<Option<GitPush>, String> {
    let mut rest = body;
    let mut commands = Vec::new();
    let mut in_certificate = false;
    loop {
        let Some(header) = rest.get(..4) else {
            return Ok(None);
        };
        let length = std::str::from_utf8(header)
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .filter(|_| header.iter().all(u8::is_ascii_hexdigit))
            .ok_or_else(|| {
                format!(
                    "{:?} is not a pkt-line length",
                    String::from_utf8_lossy(header)
                )
            })?;
        if length == 0 {
            return Ok(Some(GitPush { commands }));
        }
        if length < 4 {
            return Err(format!(
                "pkt-line length {length:04x} has no place in a push's command list"
            ));
        }
        let Some(payload) = rest.get(4..length) else {
            return Ok(None);
        };
        rest = rest.get(length..).unwrap_or_default();
        let line = payload.strip_suffix(b"\n").unwrap_or(payload);
        // The first command carries the capabilities after a NUL.
        let line = line.split(|&b| b == 0).next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        if in_certificate {
            if line == "push-cert-end" {
                in_certificate = false;
            } else if let Some(command) = command(&line) {
                // Headers, push options and signature lines are not commands.
                commands.push(command);
            }
            continue;
        }
        if line == "push-cert" {
            in_certificate = true;
            continue;
        }
        if line.starts_with("shallow ") {
            continue;
        }
        commands
            .push(command(&line).ok_or_else(|| format!("{line:?} is not a ref update command"))?);
    }
}

fn command(line: &str) -> Option<GitCommand> {
    let mut parts = line.splitn(3, ' ');
    let (old, new, reference) = (parts.next()?, parts.next()?, parts.next()?);
    let oid = |s: &str| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    (oid(old) && oid(new) && !reference.is_empty()).then(|| GitCommand {
        old: old.to_ascii_lowercase(),
        new: new.to_ascii_lowercase(),
        reference: reference.to_string(),
    })
}
