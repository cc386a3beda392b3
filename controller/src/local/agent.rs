//! An agent definition for local sessions: which model answers (an OpenAI-compatible
//! chat-completions endpoint), its system prompt, the tools it may call, which of them wait for
//! a person's confirmation, and the limits of one run.
//!
//! Written by operators as TOML (`cordon-controller agents create --file coder.toml`) or sent
//! as the same structure in JSON (`POST /v1/agents`); every problem is reported at once, and a
//! definition that has one is refused whole.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::toolset::TOOLSET;

/// Longest system prompt taken, in bytes.
pub const MAX_SYSTEM_BYTES: usize = 256 * 1024;
/// Model turns per run when the definition names none.
pub const DEFAULT_MAX_TURNS: u32 = 50;
/// Wall-clock bound of one run when the definition names none.
pub const DEFAULT_MAX_RUN_SECS: u64 = 30 * 60;
/// How much conversation (in characters) is sent to the model before old tool results are
/// truncated, when the definition names no bound.
pub const DEFAULT_MAX_CONTEXT_CHARS: usize = 400_000;
/// The longest run a definition may ask for (7 days), and the most turns.
pub const MAX_RUN_SECS: u64 = 7 * 24 * 3600;
pub const MAX_TURNS: u32 = 10_000;
/// One model request's bound when the definition names none.
pub const DEFAULT_MODEL_TIMEOUT_SECS: u64 = 300;
/// Retries of a model request that failed in a way that may pass (unreachable, 408, 429, 5xx,
/// an answer that is not JSON).
pub const DEFAULT_MODEL_RETRIES: u32 = 2;

/// A definition as written (TOML or JSON).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub model: ModelSpec,
    #[serde(default)]
    pub tools: ToolsSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// The sandbox image its sessions run on (`cordon-controller image list`); default
    /// `[sandbox] image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The model endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The API's base URL, `/chat/completions` appended: `http://vllm.internal:8000/v1`.
    pub base_url: String,
    /// The model's name as the endpoint knows it.
    pub name: String,
    /// Ask for a streamed answer (`stream: true`); default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// The tools it may call.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolsSpec {
    /// The CMA toolset's tools, run in the session's sandbox; default all six.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolset: Option<Vec<String>>,
    /// Custom tools by name, from the tools file (`browser_*` when `[builtins] browser`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<String>,
    /// Tools that wait for a `user.tool_confirmation` before they run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ask: Vec<String>,
}

/// The bounds of one run (from a user message to the session's next idle).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_run_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context_chars: Option<usize>,
}

/// A checked definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub spec: AgentSpec,
    /// `<base_url>/chat/completions`.
    pub endpoint: http::Uri,
    pub toolset: Vec<String>,
    pub custom: Vec<String>,
    pub ask: BTreeSet<String>,
    pub stream: bool,
    pub max_turns: u32,
    pub max_run: Duration,
    pub max_context_chars: usize,
    pub model_timeout: Duration,
    pub model_retries: u32,
}

/// Whether `name` may name an agent: 1-64 letters, digits, `_`, `-`, `.`, not starting with
/// `.` or `-` (it appears in proxy identities, `model:<name>`, and on the command line).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with(['.', '-'])
}

impl AgentSpec {
    /// Reads a TOML definition; every problem at once.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        toml::from_str(text).map_err(|e| vec![e.message().to_string()])
    }

    /// Checks the definition; `custom_served` is what the tools file serves now (`None`: no
    /// tools file, so no custom tool can be named).
    pub fn check(self, custom_served: Option<&[String]>) -> Result<Agent, Vec<String>> {
        let mut problems = Vec::new();
        if !valid_name(&self.name) {
            problems.push(format!(
                "name {:?}: use 1-64 letters, digits, '_', '-' or '.', not starting with '.' or '-'",
                self.name
            ));
        }
        if self
            .system
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SYSTEM_BYTES)
        {
            problems.push(format!(
                "system: longer than {MAX_SYSTEM_BYTES} bytes; put long material in the workspace and point to it"
            ));
        }
        let endpoint = endpoint(&self.model.base_url).map_err(|e| problems.push(e));
        if self.model.name.trim().is_empty() {
            problems.push("model.name is empty: the model's name as the endpoint knows it".into());
        }
        if let Some(t) = self.model.temperature
            && !(0.0..=2.0).contains(&t)
        {
            problems.push(format!("model.temperature = {t}: between 0 and 2"));
        }
        if self.model.timeout_secs == Some(0) {
            problems.push("model.timeout_secs = 0: at least 1".into());
        }
        if self.model.retries.is_some_and(|r| r > 10) {
            problems.push("model.retries: at most 10".into());
        }
        let toolset = self
            .tools
            .toolset
            .clone()
            .unwrap_or_else(|| TOOLSET.iter().map(|t| t.name.to_string()).collect());
        for name in &toolset {
            if !TOOLSET.iter().any(|t| t.name == name) {
                problems.push(format!(
                    "tools.toolset: {name:?} is not a toolset tool (bash, read, write, edit, glob, grep)"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for name in toolset.iter().chain(&self.tools.custom) {
            if !seen.insert(name.as_str()) {
                problems.push(format!("tools: {name:?} is named twice"));
            }
        }
        for name in &self.tools.custom {
            match custom_served {
                None => problems.push(format!(
                    "tools.custom: {name:?} is named, but the controller serves no custom tools \
                     ([controller] tools is not set)"
                )),
                Some(served) if !served.iter().any(|s| s == name) => problems.push(format!(
                    "tools.custom: {name:?} is not in the tools file (served: {})",
                    if served.is_empty() {
                        "none".to_string()
                    } else {
                        served.join(", ")
                    }
                )),
                Some(_) => {}
            }
        }
        for name in &self.tools.ask {
            if !seen.contains(name.as_str()) {
                problems.push(format!(
                    "tools.ask: {name:?} is not one of the agent's tools"
                ));
            }
        }
        if self.limits.max_turns == Some(0) {
            problems.push("limits.max_turns = 0: at least 1".into());
        }
        match self.limits.max_run_secs {
            Some(0) => problems.push("limits.max_run_secs = 0: at least 1".into()),
            Some(secs) if secs > MAX_RUN_SECS => problems.push(format!(
                "limits.max_run_secs = {secs}: at most {MAX_RUN_SECS} (7 days)"
            )),
            _ => {}
        }
        if self.limits.max_turns.is_some_and(|t| t > MAX_TURNS) {
            problems.push(format!("limits.max_turns: at most {MAX_TURNS}"));
        }
        if self.model.timeout_secs.is_some_and(|t| t > MAX_RUN_SECS) {
            problems.push(format!("model.timeout_secs: at most {MAX_RUN_SECS}"));
        }
        if self.limits.max_context_chars.is_some_and(|c| c < 4096) {
            problems.push("limits.max_context_chars: at least 4096".into());
        }
        if let Some(image) = &self.image
            && image.trim().is_empty()
        {
            problems
                .push("image is empty: name an image, or leave it out for [sandbox] image".into());
        }
        let Ok(endpoint) = endpoint else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Agent {
            endpoint,
            toolset,
            custom: self.tools.custom.clone(),
            ask: self.tools.ask.iter().cloned().collect(),
            stream: self.model.stream.unwrap_or(true),
            max_turns: self.limits.max_turns.unwrap_or(DEFAULT_MAX_TURNS),
            max_run: Duration::from_secs(self.limits.max_run_secs.unwrap_or(DEFAULT_MAX_RUN_SECS)),
            max_context_chars: self
                .limits
                .max_context_chars
                .unwrap_or(DEFAULT_MAX_CONTEXT_CHARS),
            model_timeout: Duration::from_secs(
                self.model
                    .timeout_secs
                    .unwrap_or(DEFAULT_MODEL_TIMEOUT_SECS),
            ),
            model_retries: self.model.retries.unwrap_or(DEFAULT_MODEL_RETRIES),
            spec: self,
        })
    }
}

/// `<base_url>/chat/completions`, checked: http or https, a host, no credentials, query or
/// fragment (the key is the proxy's to inject, never part of the definition).
fn endpoint(base_url: &str) -> Result<http::Uri, String> {
    // Never echo credentials a URL carries back into an error (and a log).
    let shown = match (base_url.find("://"), base_url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &base_url[..scheme + 3], &base_url[at..])
        }
        _ => base_url.to_string(),
    };
    let bad = |why: &str| format!("model.base_url {shown:?}: {why}");
    let uri: http::Uri = base_url
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("use http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL; the proxy injects the model's key (docs/OPEN-MODELS.md)",
        ));
    }
    if uri.query().is_some() || base_url.contains('#') {
        return Err(bad("no query or fragment: the base URL only"));
    }
    let path = uri.path().trim_end_matches('/');
    format!(
        "{}://{}{path}/chat/completions",
        uri.scheme_str().unwrap_or("http"),
        authority
    )
    .parse()
    .map_err(|e| bad(&format!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> AgentSpec {
        AgentSpec::from_toml(text).unwrap()
    }

    const MINIMAL: &str = r#"
name = "coder"
model = { base_url = "http://llm.internal:8000/v1/", name = "qwen" }
"#;

    #[test]
    fn a_minimal_definition_gets_every_toolset_tool_and_the_defaults() {
        let agent = spec(MINIMAL).check(None).unwrap();
        assert_eq!(
            agent.endpoint.to_string(),
            "http://llm.internal:8000/v1/chat/completions"
        );
        assert_eq!(
            agent.toolset,
            ["bash", "read", "write", "edit", "glob", "grep"]
        );
        assert!(agent.stream);
        assert_eq!(agent.max_turns, DEFAULT_MAX_TURNS);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
name = "-bad name"
model = { base_url = "ftp://user:pw@x/v1?key=1", name = " ", temperature = 3.0 }
tools = { toolset = ["bash", "rm"], custom = ["lookup"], ask = ["write"] }
limits = { max_turns = 0 }
"#;
        let problems = spec(text).check(Some(&["other".to_string()])).unwrap_err();
        let all = problems.join("\n");
        for expected in [
            "name \"-bad name\"",
            "model.base_url",
            "model.name is empty",
            "model.temperature",
            "\"rm\" is not a toolset tool",
            "\"lookup\" is not in the tools file (served: other)",
            "tools.ask: \"write\"",
            "limits.max_turns = 0",
        ] {
            assert!(all.contains(expected), "{expected} missing from:\n{all}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused() {
        let text = r#"
name = "a"
model = { base_url = "https://user:sk-secret@api.example/v1", name = "m" }
"#;
        let problems = spec(text).check(None).unwrap_err();
        assert!(
            problems[0].contains("credentials in the URL"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("sk-secret"), "{problems:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{MINIMAL}\nsystem_prompt = \"x\"\n");
        let problems = AgentSpec::from_toml(&text).unwrap_err();
        assert!(problems[0].contains("system_prompt"), "{problems:?}");
    }

    #[test]
    fn custom_tools_need_a_tools_file() {
        let text = format!("{MINIMAL}\n[tools]\ncustom = [\"lookup\"]\n");
        let problems = spec(&text).check(None).unwrap_err();
        assert!(
            problems[0].contains("serves no custom tools"),
            "{problems:?}"
        );
        let served = ["lookup".to_string()];
        let agent = spec(&text).check(Some(&served)).unwrap();
        assert_eq!(agent.custom, ["lookup"]);
    }
}
