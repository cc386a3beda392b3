//! Scenario files: what the simulated agent does in each session, and what it expects back.
//!
//! ```toml
//! environment_id = "env_demo"          # optional (default "env_sim")
//!
//! [[agents]]                           # optional: agents the Agents API starts with
//! id = "agent_demo"                    # optional (default agent_sim_<n>)
//! name = "demo"                        # the rest is a POST /v1/agents body
//! model = "claude-sonnet-4-5"
//! tools = [{ type = "agent_toolset_20260401" }]
//!
//! [[sessions]]
//! id = "sesn_demo"                     # optional (default sesn_sim_<n>)
//! agent = "agent_demo"                 # optional: GET /v1/sessions/{id} shows this agent
//! prompt = "check the API"             # optional: the user.message that opens the session
//! end = "terminate"                    # "terminate" (default) or "idle"
//!
//! [[sessions.steps]]
//! tool = "bash"
//! input = { command = "curl -s https://api.example.test/user" }
//! ask = "allow"                        # optional: evaluated_permission "ask", then this verdict
//! custom = false                       # optional: an agent.custom_tool_use instead
//! after_idle = false                   # optional: end the turn first (session.status_idle),
//!                                      # wait until the worker lets go of the work item, then
//!                                      # a new user.message and work item bring this step
//! expect = { is_error = false, contains = ["login"], not_contains = ["ghp_"], matches = "^\\{" }
//!
//! [faults]                             # optional, each the count of first occurrences
//! poll_errors = 1                      # polls answered 503
//! send_errors = 1                      # event posts answered 500
//! stream_drops = 1                     # event streams closed after their first event
//! outage_after_results = 2             # after 2 tool results, every call answers 503 ...
//! outage_ms = 60000                    # ... for this long (default a minute)
//! ```
//!
//! Steps run one after another, as an agent would issue them: the next tool call is emitted
//! when the previous one has been answered (or denied).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_environment")]
    pub environment_id: String,
    /// Agent definitions: `POST /v1/agents` bodies with an `id` (filled in by
    /// [`Scenario::parse`]).
    #[serde(default)]
    pub agents: Vec<Value>,
    pub sessions: Vec<SessionScript>,
    /// Faults to inject, to exercise a worker's retries and reconnects.
    #[serde(default)]
    pub faults: crate::world::Faults,
}

fn default_environment() -> String {
    "env_sim".into()
}

/// One session's script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionScript {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    /// The id of one of the scenario's `[[agents]]`, which the session pins when it opens.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub end: End,
    pub steps: Vec<Step>,
}

/// How a session ends once its steps are done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// `session.status_idle` (end_turn), then `session.status_terminated`.
    #[default]
    Terminate,
    /// `session.status_idle` (end_turn) only: the worker is expected to idle out.
    Idle,
}

/// A confirmation verdict for an `ask` tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// One tool call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub tool: String,
    #[serde(default = "empty_object")]
    pub input: Value,
    #[serde(default)]
    pub ask: Option<Verdict>,
    #[serde(default)]
    pub custom: bool,
    /// A new turn: the session idles before this step and resumes with a second user message
    /// (and a second work item) once the worker has stopped the first.
    #[serde(default)]
    pub after_idle: bool,
    #[serde(default)]
    pub expect: Expect,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Predicates on a tool result; all that are given must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub is_error: Option<bool>,
    #[serde(default)]
    pub contains: Vec<String>,
    #[serde(default)]
    pub not_contains: Vec<String>,
    /// A regular expression (Rust `regex` syntax) the result text must match.
    #[serde(default)]
    pub matches: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path} is not valid TOML for a scenario: {message}")]
    Parse { path: String, message: String },
    #[error("scenario {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Scenario {
    /// Reads and validates a scenario file; every problem is reported with where it is.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Parse { message, .. } => ScenarioError::Parse {
                path: shown.clone(),
                message,
            },
            ScenarioError::Invalid { message, .. } => ScenarioError::Invalid {
                path: shown.clone(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: String::new(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ScenarioError::Invalid {
            path: String::new(),
            message,
        };
        if scenario.sessions.is_empty() {
            return Err(invalid("it has no [[sessions]]; add at least one".into()));
        }
        let mut problems = Vec::new();
        let mut agents = std::collections::HashSet::new();
        for (n, agent) in scenario.agents.iter_mut().enumerate() {
            let Some(fields) = agent.as_object_mut() else {
                problems.push(format!("agent {} is not a table", n + 1));
                continue;
            };
            let id = fields
                .entry("id")
                .or_insert_with(|| Value::String(format!("agent_sim_{}", n + 1)))
                .as_str()
                .unwrap_or_default()
                .to_string();
            if id.is_empty() || !agents.insert(id.clone()) {
                problems.push(format!("agent id {id:?} is empty or used twice"));
            }
            if let Err(e) = crate::agents::check_definition(agent) {
                problems.push(format!("agent {id}: {e}"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (n, session) in scenario.sessions.iter_mut().enumerate() {
            let id = session
                .id
                .get_or_insert_with(|| format!("sesn_sim_{}", n + 1))
                .clone();
            if !seen.insert(id.clone()) {
                problems.push(format!("session id {id:?} is used twice"));
            }
            if session.steps.is_empty() {
                problems.push(format!("session {id} has no [[sessions.steps]]"));
            }
            if let Some(agent) = &session.agent
                && !agents.contains(agent)
            {
                problems.push(format!(
                    "session {id} names agent {agent:?}, which [[agents]] does not define"
                ));
            }
            for (i, step) in session.steps.iter().enumerate() {
                let at = format!("session {id} step {}", i + 1);
                if step.tool.is_empty() {
                    problems.push(format!("{at}: tool is empty"));
                }
                if !step.input.is_object() {
                    problems.push(format!("{at}: input must be a table"));
                }
                if let Some(re) = &step.expect.matches
                    && let Err(e) = regex::Regex::new(re)
                {
                    problems.push(format!("{at}: expect.matches is not a regex: {e}"));
                }
                if step.ask == Some(Verdict::Deny)
                    && (step.expect.is_error.is_some()
                        || !step.expect.contains.is_empty()
                        || step.expect.matches.is_some())
                {
                    problems.push(format!(
                        "{at}: a denied call gets no result, so it cannot expect one"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(invalid(problems.join("; ")))
        }
    }
}

impl SessionScript {
    /// The session's id (filled in by [`Scenario::parse`]).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("")
    }
}

impl Expect {
    /// What is wrong with a result, if anything.
    pub fn check(&self, is_error: bool, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(want) = self.is_error
            && want != is_error
        {
            problems.push(format!("expected is_error = {want}, got {is_error}"));
        }
        for needle in &self.contains {
            if !text.contains(needle.as_str()) {
                problems.push(format!("expected the result to contain {needle:?}"));
            }
        }
        for needle in &self.not_contains {
            if text.contains(needle.as_str()) {
                problems.push(format!("expected the result not to contain {needle:?}"));
            }
        }
        if let Some(re) = &self.matches
            && let Ok(re) = regex::Regex::new(re)
            && !re.is_match(text)
        {
            problems.push(format!("expected the result to match /{re}/"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_defaults_and_checks_results() {
        let s = Scenario::parse(
            r#"
            [[sessions]]
            [[sessions.steps]]
            tool = "bash"
            input = { command = "echo hi" }
            expect = { is_error = false, contains = ["hi"], not_contains = ["secret"], matches = "^hi" }
            "#,
        )
        .unwrap();
        assert_eq!(s.environment_id, "env_sim");
        assert_eq!(s.sessions[0].id(), "sesn_sim_1");
        assert_eq!(s.sessions[0].end, End::Terminate);
        let expect = &s.sessions[0].steps[0].expect;
        assert!(expect.check(false, "hi there").is_empty());
        let problems = expect.check(true, "oh secret");
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn every_problem_is_named() {
        let e = Scenario::parse(
            r#"
            [[sessions]]
            id = "a"
            steps = []
            [[sessions]]
            id = "a"
            [[sessions.steps]]
            tool = "bash"
            ask = "deny"
            expect = { matches = "(" , is_error = false }
            "#,
        )
        .unwrap_err()
        .to_string();
        for part in [
            "used twice",
            "session a has no",
            "not a regex",
            "cannot expect one",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
        let e = Scenario::parse("sessions = []").unwrap_err().to_string();
        assert!(e.contains("no [[sessions]]"), "{e}");
        let e = Scenario::parse("[[sessions]]\nbogus = 1\nsteps = []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
