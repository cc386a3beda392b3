//! `tools.toml`: the one file that declares every custom tool (docs/TOOLS.md). Read into a
//! checked [`ToolSet`], or into every problem the file has, each naming the tool and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::schema;

/// Defaults and bounds of the per-tool keys.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const MAX_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_MAX_OUTPUT_KB: usize = 256;
pub const MAX_OUTPUT_KB: usize = 16 * 1024;
pub const DEFAULT_CONCURRENCY: u32 = 4;
pub const MAX_CONCURRENCY: u32 = 64;
/// The most sandboxes a run tool keeps started ahead of its calls.
pub const MAX_WARM: u32 = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tool: Vec<RawTool>,
    #[serde(default)]
    builtins: RawBuiltins,
}

/// `[builtins]`: the tools Cordon brings, each turned on by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuiltins {
    /// The session's browser: the `browser_*` tools (docs/BROWSER.md).
    #[serde(default)]
    browser: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: String,
    #[serde(default)]
    description: String,
    input_schema: Option<toml::Value>,
    input_schema_file: Option<PathBuf>,
    timeout_ms: Option<u64>,
    max_output_kb: Option<usize>,
    concurrency: Option<u32>,
    warm: Option<u32>,
    run: Option<RawRun>,
    http: Option<RawHttp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    image: Option<String>,
    command: Vec<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    mounts: Vec<RawMount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    source: PathBuf,
    target: String,
    #[serde(default)]
    writable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: String,
    #[serde(default = "post")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn post() -> String {
    "POST".into()
}

/// One declared tool, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// As CMA receives it.
    pub input_schema: serde_json::Value,
    pub timeout: Duration,
    pub max_output_bytes: usize,
    pub concurrency: u32,
    pub handler: Handler,
}

/// What answers a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// A program run in a short-lived sandbox of its own.
    Run(RunHandler),
    /// A private service reached through the proxy.
    Http(HttpHandler),
    /// The session's browser, in the calling session's own sandbox (`[builtins] browser`).
    Browser,
}

impl Handler {
    pub fn kind(&self) -> &'static str {
        match self {
            Handler::Run(_) => "run",
            Handler::Http(_) => "http",
            Handler::Browser => "browser",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunHandler {
    /// `None`: `[sandbox] image`.
    pub image: Option<String>,
    pub command: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    /// Sandboxes kept started ahead of calls (each serves one call).
    pub warm: u32,
}

/// A host file or directory the tool's sandbox sees.
pub use crate::sandbox::bundle::HostMount as Mount;

#[derive(Debug, Clone, PartialEq)]
pub struct HttpHandler {
    pub url: http::Uri,
    pub method: http::Method,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Every tool of one file, by name.
#[derive(Debug, Clone, Default)]
pub struct ToolSet {
    pub tools: BTreeMap<String, Tool>,
    /// Where they were read from, and when.
    pub path: Option<PathBuf>,
}

/// What the checks compare a file against: what the host has and must not hand out.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `[sandbox] danger_host_rootfs`: sandboxes run on the host's `/`, which run tools refuse.
    pub host_rootfs: bool,
    /// The images in the store, by name (a `run` tool's image must be one of them).
    pub images: BTreeMap<String, ImageInfo>,
    /// `[sandbox] image`, for a run tool that names none.
    pub default_image: String,
    /// Host paths no mount may expose, at or below (the gateway's state, the secret store,
    /// the CA and its key, the controller's state).
    pub forbidden: Vec<PathBuf>,
    /// Whether the proxy has an explicit listener (http tools go through it).
    pub explicit_proxy: bool,
}

/// What the checks need of an image: where its programs are.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    /// The unpacked root filesystem.
    pub root: PathBuf,
    /// Its `PATH` ([`super::program::DEFAULT_PATH`] when it sets none).
    pub path: String,
}

/// CMA's toolset tools that run at Anthropic, not in the environment: names a custom tool may
/// not take either.
const CMA_SERVER_TOOLS: [&str; 2] = ["web_fetch", "web_search"];

/// Targets inside a sandbox that Cordon owns.
const RESERVED_TARGETS: [&str; 11] = [
    "/",
    "/proc",
    "/dev",
    "/sys",
    "/run/cordon",
    "/usr/local/bin/cordon-sandbox-agent",
    "/etc/resolv.conf",
    "/etc/ssl/certs/ca-certificates.crt",
    "/usr/local/share/ca-certificates/cordon.crt",
    "/usr/local/lib/cordon/statx-compat.so",
    "/tmp",
];

/// Reads and checks `path`; every problem at once.
pub fn load(path: &Path, context: &Context) -> Result<ToolSet, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut set = parse(&text, base, context)?;
    set.path = Some(path.to_path_buf());
    Ok(set)
}

/// Checks the text of a tools file whose relative paths are relative to `base`.
pub fn parse(text: &str, base: &Path, context: &Context) -> Result<ToolSet, Vec<String>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut errors = Vec::new();
    let mut tools = BTreeMap::new();
    for (i, raw) in raw.tool.into_iter().enumerate() {
        let label = if raw.name.is_empty() {
            format!("tool #{}", i + 1)
        } else {
            format!("tool {:?}", raw.name)
        };
        let mut problems = Vec::new();
        let tool = check_tool(raw, base, context, &mut problems);
        errors.extend(problems.into_iter().map(|p| format!("{label}: {p}")));
        if let Some(tool) = tool {
            if tools.contains_key(&tool.name) {
                errors.push(format!(
                    "{label}: declared twice; tool names must be unique"
                ));
            } else {
                tools.insert(tool.name.clone(), tool);
            }
        }
    }
    if raw.builtins.browser {
        for tool in super::builtin::browser_tools() {
            if tools.contains_key(&tool.name) {
                errors.push(format!(
                    "tool {:?}: the name is the browser built-in's ([builtins] browser = true); \
                     rename the tool, or turn the built-in off",
                    tool.name
                ));
            } else {
                tools.insert(tool.name.clone(), tool);
            }
        }
    }
    errors.extend(overlapping_writable_mounts(&tools));
    if errors.is_empty() {
        Ok(ToolSet { tools, path: None })
    } else {
        Err(errors)
    }
}

/// A writable mount whose source holds, or is held by, another mount's source (of any tool):
/// a call could swap a path the other mount binds for a link elsewhere on the host.
fn overlapping_writable_mounts(tools: &BTreeMap<String, Tool>) -> Vec<String> {
    let mounts: Vec<(&str, &Mount)> = tools
        .values()
        .filter_map(|t| match &t.handler {
            Handler::Run(run) => Some(run.mounts.iter().map(move |m| (t.name.as_str(), m))),
            Handler::Http(_) | Handler::Browser => None,
        })
        .flatten()
        .collect();
    let mut problems = Vec::new();
    for (i, (tool, writable)) in mounts.iter().enumerate() {
        if !writable.writable {
            continue;
        }
        for (j, (other_tool, other)) in mounts.iter().enumerate() {
            if i != j
                && (other.source.starts_with(&writable.source)
                    || writable.source.starts_with(&other.source))
            {
                problems.push(format!(
                    "tool {tool:?}: the writable mount {} overlaps tool {other_tool:?}'s mount \
                     {}; a call could replace what the other mount binds. Give writable \
                     mounts sources of their own",
                    writable.source.display(),
                    other.source.display()
                ));
            }
        }
    }
    problems
}

/// Whether CMA accepts `name` for a custom tool, and the proxy its identity `tool:<name>`:
/// 1-123 letters, digits, `_` and `-` (CMA takes 128; the proxy's ids are at most 128).
pub fn valid_name(name: &str) -> bool {
    (1..=123).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_tool(
    raw: RawTool,
    base: &Path,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<Tool> {
    if !valid_name(&raw.name) {
        problems.push(format!(
            "name {:?}: use 1-123 letters, digits, '_' and '-' (CMA's rule, less the proxy \
             identity's `tool:` prefix)",
            raw.name
        ));
    }
    if raw.name == "undeclared" {
        problems.push(
            "name \"undeclared\" is the metric label of calls to tools no file declares; \
             choose another"
                .into(),
        );
    }
    if cordon_sandbox_agent::tools::TOOLS.contains(&raw.name.as_str())
        || CMA_SERVER_TOOLS.contains(&raw.name.as_str())
    {
        problems.push(format!(
            "name {:?} is a tool of CMA's own toolset; choose another",
            raw.name
        ));
    }
    if raw.description.trim().is_empty() {
        problems.push(
            "description is missing: the model reads it to decide when to call the tool".into(),
        );
    }
    let input_schema = match (raw.input_schema, raw.input_schema_file) {
        (Some(_), Some(_)) => {
            problems.push("set input_schema or input_schema_file, not both".into());
            None
        }
        (None, None) => {
            problems.push(
                "input_schema is missing: a JSON Schema object (`type = \"object\"`), inline or \
                 in input_schema_file"
                    .into(),
            );
            None
        }
        (Some(value), None) => serde_json::to_value(value)
            .map_err(|e| problems.push(format!("input_schema: {e}")))
            .ok(),
        (None, Some(file)) => {
            let file = base.join(file);
            match std::fs::read_to_string(&file) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| {
                        problems.push(format!("input_schema_file {}: {e}", file.display()))
                    })
                    .ok(),
                Err(e) => {
                    problems.push(format!("input_schema_file {}: {e}", file.display()));
                    None
                }
            }
        }
    };
    if let Some(schema) = &input_schema {
        problems.extend(
            schema::check(schema)
                .into_iter()
                .map(|p| format!("input_schema: {p}")),
        );
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        problems.push(format!(
            "timeout_ms = {timeout_ms}: between 1 and {MAX_TIMEOUT_MS}"
        ));
    }
    let max_output_kb = raw.max_output_kb.unwrap_or(DEFAULT_MAX_OUTPUT_KB);
    if !(1..=MAX_OUTPUT_KB).contains(&max_output_kb) {
        problems.push(format!(
            "max_output_kb = {max_output_kb}: between 1 and {MAX_OUTPUT_KB}"
        ));
    }
    let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        problems.push(format!(
            "concurrency = {concurrency}: between 1 and {MAX_CONCURRENCY}"
        ));
    }
    let warm = raw.warm.unwrap_or(0);
    if warm > MAX_WARM {
        problems.push(format!("warm = {warm}: between 0 and {MAX_WARM}"));
    }
    if warm > concurrency {
        problems.push(format!(
            "warm = {warm} is more than concurrency = {concurrency}: more sandboxes than calls \
             that can run at once"
        ));
    }
    if warm > 0 && raw.http.is_some() {
        problems.push("warm applies to run tools; an http tool has no sandbox".into());
    }
    let handler = match (raw.run, raw.http) {
        (Some(run), None) => check_run(run, base, context, problems).map(|mut run| {
            run.warm = warm;
            Handler::Run(run)
        }),
        (None, Some(http)) => check_http(http, context, problems).map(Handler::Http),
        (Some(_), Some(_)) => {
            problems.push("has both [tool.run] and [tool.http]; give it one handler".into());
            None
        }
        (None, None) => {
            problems.push(
                "has no handler: add [tool.run] (a program in a sandbox) or [tool.http] (a \
                 private service through the proxy)"
                    .into(),
            );
            None
        }
    };
    if !problems.is_empty() {
        return None;
    }
    Some(Tool {
        name: raw.name,
        description: raw.description,
        input_schema: input_schema?,
        timeout: Duration::from_millis(timeout_ms),
        max_output_bytes: max_output_kb * 1024,
        concurrency,
        handler: handler?,
    })
}

fn check_run(
    raw: RawRun,
    base: &Path,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<RunHandler> {
    if context.host_rootfs {
        problems.push(
            "run tools need images, and [sandbox] danger_host_rootfs runs sandboxes on the \
             host's own /: a tool would see the host, not only its mounts. Unset \
             danger_host_rootfs, or use an http tool"
                .into(),
        );
    }
    let image = raw.image.clone().unwrap_or(context.default_image.clone());
    let image_info = context.images.get(&image);
    if image_info.is_none() {
        problems.push(format!(
            "run.image {image:?} is not in the image store; build it (`cordon-controller image \
             build {image} --from-file FILE`) or import it, or name another ({})",
            if context.images.is_empty() {
                "the store is empty".to_string()
            } else {
                context
                    .images
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    if raw.command.first().is_none_or(|p| p.is_empty()) {
        problems.push(
            "run.command is empty: give the program and its arguments, e.g. [\"python3\", \
             \"/tool/main.py\"]"
                .into(),
        );
    }
    let cwd = raw.cwd.unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        problems.push(format!("run.cwd {cwd:?} must be an absolute path"));
    }
    for key in raw.env.keys() {
        if key.is_empty() || key.contains('=') || key.starts_with("ANTHROPIC_") {
            problems.push(format!(
                "run.env {key:?}: not a variable name a tool may set (no '=', no ANTHROPIC_*)"
            ));
        }
    }
    let mut mounts: Vec<Mount> = Vec::new();
    for m in raw.mounts {
        let source = base.join(&m.source);
        let what = format!("run.mounts {}", m.source.display());
        let canonical = match std::fs::canonicalize(&source) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{what}: {}: {e}", source.display()));
                continue;
            }
        };
        if let Some(f) = context.forbidden.iter().find(|f| {
            let f = std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf());
            canonical.starts_with(&f) || f.starts_with(&canonical)
        }) {
            problems.push(format!(
                "{what}: {} is or holds {} (the gateway's own state, secrets or CA), which no \
                 tool may see",
                canonical.display(),
                f.display()
            ));
            continue;
        }
        if canonical == Path::new("/") {
            problems.push(format!("{what}: the host's whole / may not be mounted"));
            continue;
        }
        let target = m.target.trim_end_matches('/').to_string();
        if !m.target.starts_with('/')
            || m.target.split('/').any(|c| c == ".." || c == ".")
            || target.is_empty()
        {
            problems.push(format!(
                "{what}: target {:?} must be an absolute path without '.' or '..'",
                m.target
            ));
            continue;
        }
        // At, below, or above (a mount over /etc would hide resolv.conf and the CA bundle).
        if RESERVED_TARGETS.iter().any(|r| {
            target == *r
                || (*r != "/"
                    && (target.starts_with(&format!("{r}/"))
                        || r.starts_with(&format!("{target}/"))))
        }) {
            problems.push(format!(
                "{what}: target {target} is Cordon's or the kernel's inside the sandbox; \
                 choose another (for example /data or /tool)"
            ));
            continue;
        }
        if mounts.iter().any(|o| o.target == target) {
            problems.push(format!("{what}: target {target} is mounted twice"));
            continue;
        }
        mounts.push(Mount {
            source: canonical,
            target,
            writable: m.writable,
        });
    }
    if let (Some(info), Some(program)) = (image_info, raw.command.first())
        && !program.is_empty()
    {
        let path = raw.env.get("PATH").unwrap_or(&info.path);
        if let Err(why) = super::program::find(program, &info.root, &mounts, path) {
            problems.push(format!(
                "run.command: {why} (image {image:?}, mounts included)"
            ));
        }
    }
    Some(RunHandler {
        image: raw.image,
        command: raw.command,
        cwd,
        env: raw.env,
        mounts,
        warm: 0,
    })
}

fn check_http(raw: RawHttp, context: &Context, problems: &mut Vec<String>) -> Option<HttpHandler> {
    if !context.explicit_proxy {
        problems.push(
            "http tools reach their service through the proxy's explicit listener: set [proxy] \
             explicit_listen in cordon.toml"
                .into(),
        );
    }
    let url = match raw.url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty()) =>
        {
            Some(u)
        }
        _ => {
            problems.push(format!(
                "http.url {:?} is not an http:// or https:// URL with a host",
                raw.url
            ));
            None
        }
    };
    let method = match raw.method.to_ascii_uppercase().as_str() {
        m @ ("POST" | "PUT" | "PATCH") => http::Method::from_bytes(m.as_bytes()).ok(),
        other => {
            problems.push(format!(
                "http.method {other:?}: the input is sent as a JSON body, so POST, PUT or PATCH"
            ));
            None
        }
    };
    let mut headers = Vec::new();
    for (name, value) in raw.headers {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection" | "content-type"
        ) || lower.starts_with("x-cordon-")
        {
            problems.push(format!("http.headers {name:?} is set by Cordon; remove it"));
            continue;
        }
        if matches!(lower.as_str(), "authorization" | "cookie" | "x-api-key") {
            problems.push(format!(
                "http.headers {name:?} would put a credential in tools.toml: bind a secret to \
                 the service's host and let the policy inject it (docs/CREDENTIALS.md)"
            ));
            continue;
        }
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => problems.push(format!("http.headers {name:?}: not a valid header")),
        }
    }
    Some(HttpHandler {
        url: url?,
        method: method?,
        headers,
    })
}

impl ToolSet {
    /// The `tools` entries of a CMA agent definition, one per tool.
    pub fn agent_entries(&self) -> Vec<serde_json::Value> {
        self.tools
            .values()
            .map(|t| {
                serde_json::json!({
                    "type": "custom",
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.input_schema,
                })
            })
            .collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
