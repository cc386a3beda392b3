//! The controller's audit log: one JSON line per custom tool call (docs/AUDIT.md,
//! "Controller"), with who called what, how it ended and how big it was; never the input
//! values or the result's content.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One custom tool call, as recorded.
#[derive(Debug, Serialize)]
pub struct ToolCallRecord<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: &'static str,
    pub session: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<&'a str>,
    pub tool: &'a str,
    pub tool_use_id: &'a str,
    /// `run`, `http`, or `none` (undeclared, or refused before a handler was chosen).
    pub handler: &'a str,
    pub outcome: &'a str,
    pub duration_ms: f64,
    pub input_bytes: usize,
    pub output_bytes: usize,
    pub images: usize,
}

/// One dashboard action, as recorded.
#[derive(Debug, Serialize)]
pub struct ActionRecord<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: &'static str,
    pub user: &'a str,
    pub role: &'a str,
    pub action: &'a str,
    pub target: &'a str,
}

/// One model request of a local session, as recorded: which model, how it ended, the tokens
/// its `usage` reported; never the prompt or the answer.
#[derive(Debug, Serialize)]
pub struct ModelCallRecord<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: &'static str,
    pub session: &'a str,
    pub agent: &'a str,
    pub model: &'a str,
    /// The endpoint's host.
    pub host: &'a str,
    /// `ok`, or the failure's kind (`model_status`, ...).
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub attempt: u32,
    pub duration_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub tool_calls: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the controller's audit log {path}: {source}")]
pub struct AuditOpenError {
    path: PathBuf,
    source: std::io::Error,
}

/// The log file, appended to (mode 0600).
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, AuditOpenError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |source| AuditOpenError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends `record` as one line. A write that fails (a full disk) is logged, never
    /// fatal to the call: the call already happened.
    pub fn record(&self, record: &ToolCallRecord<'_>) {
        self.append(record);
    }

    /// Appends a dashboard user's action (`kind: "dashboard"`): who, with which role, did
    /// what to which target (a stop of a session, a policy reload, a terminal opened).
    pub fn record_action(&self, user: &str, role: &str, action: &str, target: &str) {
        self.append(&ActionRecord {
            time: now(),
            kind: "dashboard",
            user,
            role,
            action,
            target,
        });
    }

    /// Appends an action taken through the admin API with its token (`kind: "admin"`, user
    /// `admin-token`: whoever could read the token file): a workspace file read or written.
    pub fn record_admin_action(&self, action: &str, target: &str) {
        self.append(&ActionRecord {
            time: now(),
            kind: "admin",
            user: "admin-token",
            role: "admin",
            action,
            target,
        });
    }

    /// Appends a local session's model request (`kind: "model_call"`).
    pub fn record_model_call(&self, record: &ModelCallRecord<'_>) {
        self.append(record);
    }

    fn append(&self, record: &impl Serialize) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::error!(path = %self.path.display(), error = %e, "writing the audit log");
        }
    }
}

/// Now, as RFC 3339 (UTC).
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
