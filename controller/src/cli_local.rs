//! `cordon-controller agents create|update|list|show|archive` and `cordon-controller run`:
//! local sessions (docs/OPEN-MODELS.md) through the running controller's `/v1` API, with the
//! admin token from its state directory.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cordon_controller::cma::events::SseParser;
use cordon_controller::http::{HttpClient, HttpError};
use cordon_controller::local::agent::AgentSpec;
use cordon_controller::local::events::content_text;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::Common;

/// The running `serve`'s `/v1` API.
pub(crate) struct LocalApi {
    http: HttpClient,
    base: String,
    token: String,
}

impl LocalApi {
    pub(crate) fn new(common: &Common) -> Result<Self, ExitCode> {
        let (admin, token) = crate::cli_files::admin_and_token(common)?;
        Ok(Self {
            http: HttpClient::default(),
            base: format!("http://{admin}"),
            token,
        })
    }

    /// A call whose answer is JSON; a refusal is said and becomes the exit code.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ExitCode> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .send(method, &url, Some(&self.token), body.map(|b| b.to_string()))
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| json!({"error": {"message": String::from_utf8_lossy(&bytes).into_owned()}}),
        );
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value
            .pointer("/error/message")
            .or_else(|| value.get("error"))
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_string);
        match value
            .pointer("/error/details/problems")
            .and_then(Value::as_array)
        {
            Some(problems) => {
                eprintln!("cordon-controller: refused, {} problem(s):", problems.len());
                for problem in problems {
                    eprintln!("  - {}", problem.as_str().unwrap_or_default());
                }
            }
            None => eprintln!("cordon-controller: {message}"),
        }
        Err(ExitCode::from(match status {
            400 => 65,
            401 => 69,
            404 => 66,
            409 => 65,
            503 => 69,
            _ => 70,
        }))
    }
}

fn unreachable(e: HttpError) -> ExitCode {
    eprintln!("cordon-controller: {e}\n(is `cordon-controller serve` running with this config?)");
    ExitCode::from(69)
}

/// A definition file (TOML), read and parsed; every problem at once.
fn definition(file: &Path) -> Result<Value, ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        eprintln!("cordon-controller: cannot read {}: {e}", file.display());
        ExitCode::from(66)
    })?;
    let spec = AgentSpec::from_toml(&text).map_err(|problems| {
        eprintln!(
            "cordon-controller: {} is not an agent definition:\n  {}",
            file.display(),
            problems.join("\n  ")
        );
        ExitCode::from(65)
    })?;
    serde_json::to_value(&spec).map_err(|e| {
        eprintln!("cordon-controller: {e}");
        ExitCode::from(70)
    })
}

fn print_agent(agent: &Value) {
    let d = &agent["definition"];
    let archived = if agent["archived_at"].is_null() {
        String::new()
    } else {
        "  (archived)".into()
    };
    println!(
        "{:<24} v{:<4} {:<40} {}{archived}",
        agent["name"].as_str().unwrap_or_default(),
        agent["version"],
        d["model"]["name"].as_str().unwrap_or_default(),
        d["model"]["base_url"].as_str().unwrap_or_default(),
    );
}

pub(crate) async fn create(common: &Common, file: &Path) -> Result<ExitCode, ExitCode> {
    let api = LocalApi::new(common)?;
    let body = definition(file)?;
    let agent = api
        .call(http::Method::POST, "/v1/agents", Some(body))
        .await?;
    print_agent(&agent);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn update(
    common: &Common,
    file: &Path,
    version: Option<i64>,
) -> Result<ExitCode, ExitCode> {
    let api = LocalApi::new(common)?;
    let body = definition(file)?;
    let name = body["name"].as_str().unwrap_or_default().to_string();
    if !cordon_controller::local::agent::valid_name(&name) {
        eprintln!("cordon-controller: the definition's name {name:?} is not an agent name");
        return Err(ExitCode::from(65));
    }
    let query = version.map_or(String::new(), |v| format!("?version={v}"));
    let agent = api
        .call(
            http::Method::POST,
            &format!("/v1/agents/{name}{query}"),
            Some(body),
        )
        .await?;
    print_agent(&agent);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn list(common: &Common, as_json: bool) -> Result<ExitCode, ExitCode> {
    let api = LocalApi::new(common)?;
    let agents = api.call(http::Method::GET, "/v1/agents", None).await?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&agents["data"]).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let list = agents["data"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no agents; create one: cordon-controller agents create --file agent.toml");
    }
    for agent in &list {
        print_agent(agent);
    }
    Ok(ExitCode::SUCCESS)
}

fn checked_name(name: &str) -> Result<(), ExitCode> {
    if cordon_controller::local::agent::valid_name(name) {
        Ok(())
    } else {
        eprintln!("cordon-controller: {name:?} is not an agent name");
        Err(ExitCode::from(64))
    }
}

pub(crate) async fn show(common: &Common, name: &str) -> Result<ExitCode, ExitCode> {
    checked_name(name)?;
    let api = LocalApi::new(common)?;
    let agent = api
        .call(http::Method::GET, &format!("/v1/agents/{name}"), None)
        .await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&agent).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn archive(common: &Common, name: &str) -> Result<ExitCode, ExitCode> {
    checked_name(name)?;
    let api = LocalApi::new(common)?;
    let agent = api
        .call(
            http::Method::POST,
            &format!("/v1/agents/{name}/archive"),
            None,
        )
        .await?;
    print_agent(&agent);
    Ok(ExitCode::SUCCESS)
}

/// How `run` answers a call that asks for confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// Ask on the terminal (deny when there is none).
    Ask,
    Allow,
    Deny,
}

/// `cordon-controller run --agent NAME "task"`: one session, its events printed as they
/// happen; exits 0 when the agent ends its turn, 1 when the run stopped for another reason
/// (a limit, the model failing), 130 when interrupted.
pub(crate) async fn run(
    common: &Common,
    agent: &str,
    task: &str,
    confirm: Confirm,
    as_json: bool,
    archive: bool,
) -> Result<ExitCode, ExitCode> {
    checked_name(agent)?;
    if task.trim().is_empty() {
        eprintln!("cordon-controller: the task is empty: say what the agent should do");
        return Err(ExitCode::from(64));
    }
    let api = LocalApi::new(common)?;
    let title: String = task.chars().take(80).collect();
    let session = api
        .call(
            http::Method::POST,
            "/v1/sessions",
            Some(json!({"agent": agent, "title": title})),
        )
        .await?;
    let id = session["id"].as_str().unwrap_or_default().to_string();
    eprintln!("session {id} (agent {agent})");
    // The stream first, so nothing the loop does is missed.
    let url = format!("{}/v1/sessions/{id}/events/stream", api.base);
    let response = api
        .http
        .send(http::Method::GET, &url, Some(&api.token), None)
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        eprintln!(
            "cordon-controller: the event stream answered {}",
            response.status()
        );
        return Err(ExitCode::from(70));
    }
    let message =
        json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": task}]}]});
    api.call(
        http::Method::POST,
        &format!("/v1/sessions/{id}/events"),
        Some(message),
    )
    .await?;
    let mut body = response.into_body();
    let mut parser = SseParser::default();
    let mut printer = Printer::default();
    let mut interrupted = false;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    eprintln!("\nleaving session {id} as it is");
                    return Ok(ExitCode::from(130));
                }
                interrupted = true;
                eprintln!("\ninterrupting (Ctrl-C again to leave the session as it is)");
                api.call(http::Method::POST, &format!("/v1/sessions/{id}/events"),
                    Some(json!({"events": [{"type": "user.interrupt"}]}))).await?;
                continue;
            }
        };
        let Some(Ok(frame)) = frame else {
            eprintln!("cordon-controller: the event stream ended (the session was archived?)");
            return Err(ExitCode::from(70));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for frame in parser.push(&data) {
            let Ok(event) = serde_json::from_str::<Value>(&frame.data) else {
                continue;
            };
            printer.remember(&event);
            if as_json {
                println!("{event}");
            } else {
                printer.print(&event);
            }
            if let Some(code) = idle(&api, &id, &event, confirm, &printer).await? {
                if archive {
                    api.call(
                        http::Method::POST,
                        &format!("/v1/sessions/{id}/archive"),
                        None,
                    )
                    .await?;
                    eprintln!("session {id} archived");
                } else {
                    eprintln!(
                        "session {id} is idle: continue it with POST /v1/sessions/{id}/events, \
                         archive it with POST /v1/sessions/{id}/archive (docs/OPEN-MODELS.md)"
                    );
                }
                return Ok(code);
            }
        }
    }
}

/// At a `session.status_idle`: the exit code, or `None` to go on (confirmations answered).
async fn idle(
    api: &LocalApi,
    id: &str,
    event: &Value,
    confirm: Confirm,
    printer: &Printer,
) -> Result<Option<ExitCode>, ExitCode> {
    if event["type"] != "session.status_idle" {
        return Ok(None);
    }
    let reason = event["stop_reason"]["type"].as_str().unwrap_or_default();
    match reason {
        "end_turn" => Ok(Some(ExitCode::SUCCESS)),
        "interrupted" => Ok(Some(ExitCode::from(130))),
        "requires_action" => {
            let ids: Vec<String> = event["stop_reason"]["event_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let mut verdicts = Vec::new();
            for call in ids {
                let allow = match confirm {
                    Confirm::Allow => true,
                    Confirm::Deny => false,
                    Confirm::Ask => match ask(&call, printer.inputs.get(&call)).await {
                        Some(allow) => allow,
                        // Ctrl-C at the prompt: the run is interrupted (the waiting calls are
                        // answered as not run) and the stream goes on to its end.
                        None => {
                            api.call(
                                http::Method::POST,
                                &format!("/v1/sessions/{id}/events"),
                                Some(json!({"events": [{"type": "user.interrupt"}]})),
                            )
                            .await?;
                            return Ok(None);
                        }
                    },
                };
                let mut verdict = json!({"type": "user.tool_confirmation", "tool_use_id": call,
                    "result": if allow { "allow" } else { "deny" }});
                if !allow {
                    verdict["deny_message"] = "denied at the terminal".into();
                }
                verdicts.push(verdict);
            }
            api.call(
                http::Method::POST,
                &format!("/v1/sessions/{id}/events"),
                Some(json!({"events": verdicts})),
            )
            .await?;
            Ok(None)
        }
        other => {
            eprintln!("the run stopped: {other}");
            Ok(Some(ExitCode::from(1)))
        }
    }
}

/// Asks on the terminal whether call `id` may run, showing all of it (escaped: it is the
/// model's text); no terminal: no.
async fn ask(id: &str, call: Option<&(String, Value)>) -> Option<bool> {
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "  {id} asks for confirmation and there is no terminal: denied (pass --yes to allow)"
        );
        return Some(false);
    }
    match call {
        Some((name, input)) => {
            eprintln!("  {} wants to run, with this input:", escape(name));
            let pretty = serde_json::to_string_pretty(input).unwrap_or_default();
            for line in pretty.lines() {
                eprintln!("    {}", escape(line));
            }
        }
        None => eprintln!("  call {id} wants to run"),
    }
    eprint!("  allow it? [y/N] ");
    let _ = std::io::stderr().flush();
    // The answer is read off the runtime so that Ctrl-C still interrupts while it waits.
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        line
    });
    tokio::select! {
        line = line => Some(matches!(line.unwrap_or_default().trim(), "y" | "Y" | "yes")),
        _ = tokio::signal::ctrl_c() => {
            eprintln!();
            None
        }
    }
}

/// Prints events as progress lines: the agent's words, one line per tool call and result.
/// Everything printed comes from the model or the sandbox, so control characters are shown
/// escaped: a call's text must not be able to redraw the terminal (a `\r` rewriting the line
/// a person confirms).
#[derive(Default)]
struct Printer {
    /// Calls in flight: name, one-line input and when they started.
    calls: std::collections::HashMap<String, (String, Instant)>,
    /// Each call's name and whole input, for the confirmation prompt.
    inputs: std::collections::HashMap<String, (String, Value)>,
}

/// `text` with control characters (but newlines and tabs) and the invisible formatting ones
/// (bidirectional overrides and isolates, zero-width characters: what reorders or hides text
/// on a terminal) escaped.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() || is_invisible_format(c) => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

impl Printer {
    /// Keeps each call's name and input, for the confirmation prompt (also with `--json`).
    fn remember(&mut self, event: &Value) {
        if matches!(
            event["type"].as_str(),
            Some("agent.tool_use" | "agent.custom_tool_use")
        ) {
            let id = event["id"].as_str().unwrap_or_default().to_string();
            let name = event["name"].as_str().unwrap_or_default().to_string();
            self.inputs.insert(id, (name, event["input"].clone()));
        }
    }

    fn print(&mut self, event: &Value) {
        let blocks =
            |key: &str| content_text(event[key].as_array().map(Vec::as_slice).unwrap_or_default());
        match event["type"].as_str().unwrap_or_default() {
            "agent.message" => println!("{}", escape(&blocks("content"))),
            "agent.tool_use" | "agent.custom_tool_use" => {
                let name = event["name"].as_str().unwrap_or_default();
                let input = one_line(&event["input"]);
                let ask = if event["evaluated_permission"] == "ask" {
                    " (asks for confirmation)"
                } else {
                    ""
                };
                println!("→ {} {input}{ask}", escape(name));
                let id = event["id"].as_str().unwrap_or_default().to_string();
                self.calls.insert(id, (name.to_string(), Instant::now()));
            }
            "user.tool_result" | "user.custom_tool_result" => {
                let id = event["tool_use_id"]
                    .as_str()
                    .or(event["custom_tool_use_id"].as_str())
                    .unwrap_or_default();
                let (name, since) = self
                    .calls
                    .remove(id)
                    .unwrap_or_else(|| ("?".into(), Instant::now()));
                let text = blocks("content");
                let first = text.lines().next().unwrap_or_default();
                let mark = if event["is_error"] == true {
                    "✗"
                } else {
                    "✓"
                };
                println!(
                    "{mark} {} ({:.1} s) {}",
                    escape(&name),
                    since.elapsed().as_secs_f64(),
                    escape(&clip(first, 100))
                );
            }
            "session.error" => eprintln!(
                "error: {}: {}",
                escape(event["error"]["type"].as_str().unwrap_or_default()),
                escape(event["error"]["message"].as_str().unwrap_or_default())
            ),
            _ => {}
        }
    }
}

fn one_line(input: &Value) -> String {
    let text = cordon_controller::cma::service::input_summary(input);
    escape(&clip(&text.replace(['\n', '\t'], " "), 100))
}

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
