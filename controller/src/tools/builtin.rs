//! Built-in tools, turned on in the tools file (`[builtins]`) and served like custom tools
//! (listed by `tools schema`, registered by `agents sync`, counted and audited the same way).
//!
//! The browser (`[builtins] browser = true`, docs/BROWSER.md): nine `browser_*` tools answered
//! by the calling session's own sandbox agent, which runs Chromium there. The browser's
//! traffic is the session's: it leaves the sandbox through the gateway under the session's
//! identity, unlike a custom tool's (`tool:<name>`).

use std::time::Duration;

use serde_json::{Value, json};

use super::file::{Handler, Tool};
use super::{Answer, CallContext, Outcome, reply};
use crate::http::{HttpClient, HttpError};
use crate::sandbox::{Runtime, agent_endpoint};

/// How long one browser call may take: the agent's worst case (a start and its first page,
/// 30 s each; the action, 30 s; a stuck page replaced, 30 s), with room to spare.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(150);

/// Content blocks a browser answer may have (the agent sends at most three).
const MAX_BLOCKS: usize = 16;

/// A screenshot's PNG (at most 5 MiB) in base64, and its text.
const BROWSER_MAX_OUTPUT: usize = 8 * 1024 * 1024;

/// Calls of one tool at once, across sessions. Each session's calls run one at a time in its
/// own sandbox, so this only bounds the controller's waiting requests: high, so that slow
/// sandboxes cannot hold up other sessions' calls.
const BROWSER_CONCURRENCY: u32 = 4096;

/// The browser's tools: name, description, input schema.
fn browser_specs() -> Vec<(&'static str, &'static str, Value)> {
    let string = |description: &str| json!({"type": "string", "description": description});
    vec![
        (
            "browser_navigate",
            "Open a URL (http or https) in this session's browser. Returns the page's HTTP status, final URL and title. The browser keeps its cookies and page between calls.",
            json!({"type": "object", "properties": {"url": string("The address to open, e.g. https://docs.example.com/")}, "required": ["url"], "additionalProperties": false}),
        ),
        (
            "browser_screenshot",
            "Take a PNG screenshot of the current page (the 1280x800 viewport, or the whole page).",
            json!({"type": "object", "properties": {"full_page": {"type": "boolean", "description": "The whole page rather than the viewport"}}, "additionalProperties": false}),
        ),
        (
            "browser_markdown",
            "The current page (or the given URL, opened first) as markdown, as rendered after its JavaScript ran.",
            json!({"type": "object", "properties": {"url": string("A URL to open first (optional)")}, "additionalProperties": false}),
        ),
        (
            "browser_click",
            "Click an element, by CSS selector or by the exact text of a link, button or label. Waits for a navigation the click starts.",
            json!({"type": "object", "properties": {"selector": string("A CSS selector"), "text": string("The text of a link, button or label")}, "additionalProperties": false}),
        ),
        (
            "browser_type",
            "Type text into an input found by CSS selector, optionally pressing Enter after it.",
            json!({"type": "object", "properties": {"selector": string("A CSS selector of the input"), "text": string("What to type"), "submit": {"type": "boolean", "description": "Press Enter after typing"}}, "required": ["selector", "text"], "additionalProperties": false}),
        ),
        (
            "browser_scroll",
            "Scroll the page by some pixels in a direction, or to the element a CSS selector matches.",
            json!({"type": "object", "properties": {"direction": {"type": "string", "enum": ["down", "up", "left", "right"]}, "pixels": {"type": "integer", "minimum": 1, "maximum": 100000}, "selector": string("A CSS selector to scroll to")}, "additionalProperties": false}),
        ),
        (
            "browser_evaluate",
            "Run a JavaScript expression in the page and return its result as JSON (a promise is awaited).",
            json!({"type": "object", "properties": {"expression": string("A JavaScript expression")}, "required": ["expression"], "additionalProperties": false}),
        ),
        (
            "browser_back",
            "Go back to the previous page in the browser's history.",
            json!({"type": "object", "additionalProperties": false}),
        ),
        (
            "browser_close",
            "Close the browser (its cookies and pages are gone); the next browser call starts a new one.",
            json!({"type": "object", "additionalProperties": false}),
        ),
    ]
}

/// The browser's tools, as the tools file declares them with `[builtins] browser = true`.
pub fn browser_tools() -> Vec<Tool> {
    browser_specs()
        .into_iter()
        .map(|(name, description, input_schema)| Tool {
            name: name.to_string(),
            description: description.to_string(),
            input_schema,
            timeout: BROWSER_TIMEOUT,
            max_output_bytes: BROWSER_MAX_OUTPUT,
            concurrency: BROWSER_CONCURRENCY,
            handler: Handler::Browser,
        })
        .collect()
}

/// Answers a browser call in the calling session's sandbox.
pub async fn browser_call(
    runtime: &Runtime,
    tool: &Tool,
    context: &CallContext,
    input: &Value,
) -> Answer {
    let (agent, token) = match agent_endpoint(runtime.config(), &context.session) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            return Answer::error(
                Outcome::Failed,
                format!(
                    "[cordon] {} runs in the session's sandbox, and the session {} has none \
                     running ({e})",
                    tool.name, context.session
                ),
            );
        }
    };
    let body = json!({"name": tool.name, "input": input}).to_string();
    let url = format!("http://{agent}/browser");
    let client = HttpClient::default();
    let call = client.call_limited(
        http::Method::POST,
        &url,
        Some(&token),
        Some(body),
        tool.max_output_bytes,
    );
    match tokio::time::timeout(tool.timeout, call).await {
        Err(_) => Answer::error(
            Outcome::Timeout,
            format!(
                "[cordon] {} did not answer within {} s",
                tool.name,
                tool.timeout.as_secs()
            ),
        ),
        Ok(Err(HttpError::Status { status: 404, .. })) => Answer::error(
            Outcome::Failed,
            "[cordon] the session's sandbox agent has no browser (it is older than this \
             controller); start the session again",
        ),
        Ok(Err(HttpError::TooLarge { .. })) => Answer::error(
            Outcome::Error,
            format!(
                "[cordon] {}'s answer is over the {} KiB a browser result may be",
                tool.name,
                tool.max_output_bytes / 1024
            ),
        ),
        Ok(Err(e)) => Answer::error(
            Outcome::Failed,
            format!(
                "[cordon] the session's sandbox did not answer {}: {e}",
                tool.name
            ),
        ),
        Ok(Ok(text)) => {
            let reply = reply::parse(&text);
            if reply.content.len() > MAX_BLOCKS {
                return Answer::error(
                    Outcome::Error,
                    format!(
                        "[cordon] {}'s answer has {} content blocks; a browser result has at \
                         most {MAX_BLOCKS}",
                        tool.name,
                        reply.content.len()
                    ),
                );
            }
            Answer::new(Outcome::Ok, reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_tools_are_the_agents_and_their_schemas_are_valid() {
        let tools = browser_tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, cordon_sandbox_agent::browser::TOOLS);
        for tool in &tools {
            let problems = super::super::schema::check(&tool.input_schema);
            assert!(problems.is_empty(), "{}: {problems:?}", tool.name);
            assert!(tool.description.len() > 20, "{}", tool.name);
        }
    }
}
