//! The CMA toolset (`agent_toolset_20260401`) as the model sees it: a name, a description and
//! a JSON Schema per tool, the inputs the sandbox agent takes (../shared/CMA.md, "The tools a
//! sandbox must implement").

use serde_json::{Value, json};

/// One toolset tool.
#[derive(Debug)]
pub struct ToolsetTool {
    pub name: &'static str,
    pub description: &'static str,
    schema: fn() -> Value,
}

impl ToolsetTool {
    pub fn input_schema(&self) -> Value {
        (self.schema)()
    }
}

/// The six tools, in the order a definition lists them by default.
pub const TOOLSET: [ToolsetTool; 6] = [
    ToolsetTool {
        name: "bash",
        description: "Run a command in a persistent bash shell in the sandbox (working \
                      directory, environment and background jobs persist between calls). \
                      Output is capped at 100 KiB; a non-zero exit is an error result.",
        schema: || {
            json!({"type": "object", "properties": {
                "command": {"type": "string", "description": "The command to run."},
                "restart": {"type": "boolean", "description": "Restart the shell first."},
                "timeout_ms": {"type": "integer", "minimum": 1, "description": "Kill the command after this long (default 120000)."}
            }, "required": ["command"]})
        },
    },
    ToolsetTool {
        name: "read",
        description: "Read a UTF-8 text file in the workspace (/workspace), optionally a range \
                      of lines.",
        schema: || {
            json!({"type": "object", "properties": {
                "file_path": {"type": "string"},
                "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                               "description": "[first line, last line], 1-based"}
            }, "required": ["file_path"]})
        },
    },
    ToolsetTool {
        name: "write",
        description: "Write a file in the workspace, creating parent directories.",
        schema: || {
            json!({"type": "object", "properties": {
                "file_path": {"type": "string"},
                "content": {"type": "string"}
            }, "required": ["file_path", "content"]})
        },
    },
    ToolsetTool {
        name: "edit",
        description: "Replace an exact string in a file: it must match once, or set \
                      replace_all.",
        schema: || {
            json!({"type": "object", "properties": {
                "file_path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
                "replace_all": {"type": "boolean"}
            }, "required": ["file_path", "old_string", "new_string"]})
        },
    },
    ToolsetTool {
        name: "glob",
        description: "Find files by glob pattern (newest first, at most 200).",
        schema: || {
            json!({"type": "object", "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string"}
            }, "required": ["pattern"]})
        },
    },
    ToolsetTool {
        name: "grep",
        description: "Search file contents with a regular expression (skips .git and \
                      node_modules).",
        schema: || {
            json!({"type": "object", "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string"}
            }, "required": ["pattern"]})
        },
    },
];

/// The toolset tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolsetTool> {
    TOOLSET.iter().find(|t| t.name == name)
}
