//! The CMA toolset (`agent_toolset_20260401`): `bash`, `read`, `write`, `edit`, `glob`, `grep`,
//! with the reference semantics and limits of ../shared/CMA.md. File tools are confined to the
//! working directory, symlinks included.

pub mod bash;
pub mod files;
pub mod paths;
pub mod search;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use bash::BashSession;

/// The tools served, for "unknown tool" answers.
pub const TOOLS: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];

/// One tool call, as CMA's `agent.tool_use` carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    #[serde(default)]
    pub input: Value,
}

/// A tool's answer: CMA's `user.tool_result` content (one text block) and whether it is an
/// error. Never empty: "(no output)" stands in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    pub is_error: bool,
    pub text: String,
}

impl ToolResult {
    pub fn ok(text: impl Into<String>) -> Self {
        Self::new(false, text.into())
    }

    pub fn error(text: impl Into<String>) -> Self {
        Self::new(true, text.into())
    }

    fn new(is_error: bool, text: String) -> Self {
        let text = if text.is_empty() {
            "(no output)".to_string()
        } else {
            text
        };
        Self { is_error, text }
    }
}

/// The toolset of one session: its working directory and its persistent shell.
#[derive(Debug)]
pub struct Toolset {
    workdir: PathBuf,
    bash: tokio::sync::Mutex<BashSession>,
}

/// Reads a required string field of a tool's input.
fn string<'a>(input: &'a Value, field: &str) -> Result<&'a str, ToolResult> {
    input
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolResult::error(format!("input.{field} is required and must be a string")))
}

impl Toolset {
    pub fn new(workdir: PathBuf) -> Self {
        Self {
            bash: tokio::sync::Mutex::new(BashSession::new(workdir.clone())),
            workdir,
        }
    }

    /// Runs one call. File tools run on the blocking pool: they do blocking I/O.
    pub async fn call(&self, call: &ToolCall) -> ToolResult {
        if call.name == "bash" {
            return self.bash(&call.input).await;
        }
        let workdir = self.workdir.clone();
        let call = call.clone();
        tokio::task::spawn_blocking(move || file_tool(&workdir, &call))
            .await
            .unwrap_or_else(|e| ToolResult::error(format!("the tool failed: {e}")))
    }

    async fn bash(&self, input: &Value) -> ToolResult {
        let restart = input.get("restart").and_then(Value::as_bool) == Some(true);
        let timeout = input.get("timeout_ms").and_then(Value::as_u64);
        let mut bash = self.bash.lock().await;
        if restart {
            return bash.restart().await;
        }
        match string(input, "command") {
            Ok(command) => bash.run(command, timeout).await,
            Err(e) => e,
        }
    }
}

/// `read`, `write`, `edit`, `glob`, `grep`, and the answer to any other name.
fn file_tool(workdir: &std::path::Path, call: &ToolCall) -> ToolResult {
    let input = &call.input;
    let result = match call.name.as_str() {
        "read" => string(input, "file_path").map(|path| {
            let range = input.get("view_range").and_then(Value::as_array).map(|r| {
                (
                    r.first().and_then(Value::as_i64),
                    r.get(1).and_then(Value::as_i64),
                )
            });
            files::read(workdir, path, range)
        }),
        "write" => string(input, "file_path").and_then(|path| {
            let content = string(input, "content")?;
            Ok(files::write(workdir, path, content))
        }),
        "edit" => string(input, "file_path").and_then(|path| {
            let old = string(input, "old_string")?;
            let new = string(input, "new_string")?;
            let all = input.get("replace_all").and_then(Value::as_bool) == Some(true);
            Ok(files::edit(workdir, path, old, new, all))
        }),
        "glob" => string(input, "pattern").map(|pattern| {
            let path = input.get("path").and_then(Value::as_str);
            search::glob(workdir, pattern, path)
        }),
        "grep" => string(input, "pattern").map(|pattern| {
            let path = input.get("path").and_then(Value::as_str);
            search::grep(workdir, pattern, path)
        }),
        other => Err(ToolResult::error(format!(
            "unknown tool {other:?}; this sandbox serves {}",
            TOOLS.join(", ")
        ))),
    };
    result.unwrap_or_else(|e| e)
}
