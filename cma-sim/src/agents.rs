//! The Agents API (../shared/CMA.md, "Custom tools and the Agents API"): create, retrieve,
//! update, list and archive agents, on the organization API key.
//!
//! Agents are stored as the JSON objects the API returns. Requests are checked the way the
//! API checks them, so a client bug shows here rather than in production: unknown fields,
//! malformed tools (custom tool names, `input_schema` without `type: "object"` or with
//! `$ref`/`$defs`, which the API rejected), MCP servers no `mcp_toolset` references. Toolset
//! entries are resolved as the API resolves them (`configs`, `default_config` filled in), so
//! what a client reads back differs from what it sent. An update that names `version` fails
//! with 409 `conflict_error` unless it is the current one; an update that changes something
//! bumps the version. A session pins a snapshot of its agent when it opens.
//!
//! Not simulated: agent versions history (`/v1/agents/{id}/versions`), skills and model
//! validation, workspaces.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::queue::BETA;
use crate::world::{ApiError, Inner, World, now, random_token};

/// The most tools an agent may have.
pub const MAX_TOOLS: usize = 256;
/// The most MCP servers an agent may have.
const MAX_MCP_SERVERS: usize = 20;
/// The largest page `GET /v1/agents` returns.
const MAX_PAGE: usize = 100;
const TOOLSET: &str = "agent_toolset_20260401";

type Shared = Arc<World>;

/// The Agents API routes.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/agents", get(list).post(create))
        .route("/v1/agents/{id}", get(retrieve).post(update))
        .route("/v1/agents/{id}/archive", post(archive))
}

fn check(world: &World, headers: &HeaderMap, route: &str) -> Result<(), ApiError> {
    world.count_call(route);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    world.authorize_org(
        header("authorization"),
        header("x-api-key"),
        header("anthropic-beta"),
        header("anthropic-version"),
    )
}

fn body(bytes: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))
}

async fn create(
    State(w): State<Shared>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, "create agent")?;
    w.create_agent(&body(&bytes)?).map(axum::Json)
}

async fn retrieve(
    State(w): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, "get agent")?;
    w.agent(&id).map(axum::Json)
}

async fn update(
    State(w): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, "update agent")?;
    w.update_agent(&id, &body(&bytes)?).map(axum::Json)
}

async fn list(
    State(w): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, "list agents")?;
    let limit = match q.get("limit") {
        None => 20,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}")))?,
    };
    let archived = q.get("include_archived").is_some_and(|v| v == "true");
    w.list_agents(limit, q.get("page").map(String::as_str), archived)
        .map(axum::Json)
}

async fn archive(
    State(w): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    check(&w, &headers, "archive agent")?;
    w.archive_agent(&id).map(axum::Json)
}

impl World {
    /// Checks an Agents API call: exactly one credential, which must be the organization API
    /// key (not the environment key), and the beta and version headers.
    pub fn authorize_org(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
        beta: Option<&str>,
        version: Option<&str>,
    ) -> Result<(), ApiError> {
        self.outage()?;
        let unauthorized = |message: &str| ApiError::new(401, "authentication_error", message);
        let bearer = authorization.and_then(|v| v.strip_prefix("Bearer "));
        let key = match (bearer, api_key) {
            (Some(_), Some(_)) => {
                return Err(unauthorized(
                    "send one credential: Authorization: Bearer or x-api-key, not both",
                ));
            }
            (Some(key), None) | (None, Some(key)) => key,
            (None, None) => {
                return Err(unauthorized(
                    "missing Authorization: Bearer <organization API key>",
                ));
            }
        };
        if !beta.is_some_and(|b| b.split(',').any(|b| b.trim() == BETA)) {
            return Err(ApiError::invalid(format!(
                "this endpoint needs the anthropic-beta header {BETA}"
            )));
        }
        if version.is_none() {
            return Err(ApiError::invalid("missing the anthropic-version header"));
        }
        if key == self.config.api_key {
            Ok(())
        } else if key == self.config.environment_key {
            Err(unauthorized(
                "the Agents API takes the organization API key, not an environment key",
            ))
        } else {
            Err(unauthorized("invalid API key"))
        }
    }

    /// `POST /v1/agents`: a new agent at version 1.
    pub fn create_agent(&self, body: &Value) -> Result<Value, ApiError> {
        let agent = new_agent(random_token("agent_"), body)?;
        self.lock().agents.push(agent.clone());
        Ok(agent)
    }

    /// `GET /v1/agents/{id}`. With the `agent_edit_races` fault, another client edits the
    /// agent right after this read (a custom tool `sim_concurrent_edit_<n>` is appended and
    /// the version moves on), so an update based on the answer conflicts.
    pub fn agent(&self, id: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let answer = find(&mut inner, id)?.clone();
        if inner.faults.agent_edit_races > 0 && answer["archived_at"].is_null() {
            inner.faults.agent_edit_races -= 1;
            inner.next_id += 1;
            let name = format!("sim_concurrent_edit_{}", inner.next_id);
            let agent = find(&mut inner, id)?;
            let mut next = agent.clone();
            if let Some(tools) = next["tools"].as_array_mut() {
                tools.push(json!({"type": "custom", "name": name, "description": "Added by another client during a read.", "input_schema": {"type": "object"}}));
            }
            commit(agent, next);
        }
        Ok(answer)
    }

    /// `POST /v1/agents/{id}`: every field optional; `tools`, `mcp_servers` and `skills` are
    /// full replacements, `metadata` a patch. With `version`, only the current one is accepted.
    pub fn update_agent(&self, id: &str, body: &Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let agent = find(&mut inner, id)?;
        if !agent["archived_at"].is_null() {
            return Err(ApiError::invalid(format!(
                "agent {id} is archived and cannot be modified"
            )));
        }
        let fields = object(body, "the body")?;
        let current = agent["version"].as_u64().unwrap_or(1);
        if let Some(version) = fields.get("version") {
            let version = version
                .as_u64()
                .filter(|v| *v >= 1)
                .ok_or_else(|| ApiError::invalid("version must be an integer of at least 1"))?;
            if version != current {
                return Err(ApiError::new(
                    409,
                    "conflict_error",
                    format!(
                        "agent {id} is at version {current}, not {version}: retrieve it again and reapply the change"
                    ),
                ));
            }
        }
        let mut next = agent.clone();
        apply(&mut next, fields)?;
        commit(agent, next);
        Ok(agent.clone())
    }

    /// `GET /v1/agents?limit=&page=&include_archived=`: oldest first; `page` is a cursor a
    /// previous page returned.
    pub fn list_agents(
        &self,
        limit: usize,
        page: Option<&str>,
        include_archived: bool,
    ) -> Result<Value, ApiError> {
        let start = crate::world::page_start(page)?;
        let inner = self.lock();
        let agents: Vec<&Value> = inner
            .agents
            .iter()
            .filter(|a| include_archived || a["archived_at"].is_null())
            .collect();
        let end = (start + limit).min(agents.len());
        let data: Vec<Value> = agents
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .map(|a| (*a).clone())
            .collect();
        let next = (end < agents.len()).then(|| format!("page_{end}"));
        Ok(json!({"data": data, "next_page": next}))
    }

    /// `POST /v1/agents/{id}/archive`: new sessions can no longer use it; it stays readable.
    pub fn archive_agent(&self, id: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let agent = find(&mut inner, id)?;
        if agent["archived_at"].is_null() {
            agent["archived_at"] = Value::String(now());
        }
        Ok(agent.clone())
    }

    /// The agent snapshot a session pinned when it opened, if its script names an agent.
    pub fn session_agent(&self, session: &str) -> Option<Value> {
        self.lock().sessions.get(session)?.agent.clone()
    }
}

/// The current agent `id`, if it exists (for a session to pin).
pub(crate) fn snapshot(inner: &Inner, id: &str) -> Option<Value> {
    inner.agents.iter().find(|a| a["id"] == id).cloned()
}

/// The agents a scenario defines (already checked by [`check_definition`]).
pub(crate) fn seed(definitions: &[Value]) -> Vec<Value> {
    definitions
        .iter()
        .filter_map(|definition| {
            let id = definition["id"].as_str()?.to_string();
            let mut body = definition.clone();
            body.as_object_mut()?.remove("id");
            new_agent(id, &body)
                .inspect_err(|e| tracing::warn!(error = %e.message, "scenario agent skipped"))
                .ok()
        })
        .collect()
}

/// What is wrong with a scenario's agent definition (a create body plus an `id`), if anything.
pub fn check_definition(definition: &Value) -> Result<(), String> {
    let mut body = definition.clone();
    if let Some(fields) = body.as_object_mut() {
        fields.remove("id");
    }
    new_agent(String::new(), &body)
        .map(|_| ())
        .map_err(|e| e.message)
}

fn find<'a>(inner: &'a mut Inner, id: &str) -> Result<&'a mut Value, ApiError> {
    inner
        .agents
        .iter_mut()
        .find(|a| a["id"] == id)
        .ok_or_else(|| ApiError::not_found(&format!("agent {id}")))
}

/// Stores `next` as the new state of `agent`, at the next version if anything changed.
fn commit(agent: &mut Value, mut next: Value) {
    if next != *agent {
        next["version"] = json!(agent["version"].as_u64().unwrap_or(1) + 1);
        next["updated_at"] = Value::String(now());
        *agent = next;
    }
}

fn new_agent(id: String, body: &Value) -> Result<Value, ApiError> {
    let fields = object(body, "the body")?;
    for required in ["name", "model"] {
        if !fields.contains_key(required) {
            return Err(ApiError::invalid(format!("{required} is required")));
        }
    }
    if fields.contains_key("version") {
        return Err(ApiError::invalid("version is not a create parameter"));
    }
    let created = now();
    let mut agent = json!({
        "type": "agent", "id": id, "name": "", "description": null, "system": null,
        "model": null, "tools": [], "mcp_servers": [], "skills": [], "metadata": {},
        "execution_identity": {"type": "service_account"}, "multiagent": null,
        "version": 1, "created_at": created, "updated_at": created, "archived_at": null,
    });
    apply(&mut agent, fields)?;
    Ok(agent)
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value
        .as_object()
        .ok_or_else(|| ApiError::invalid(format!("{what} must be a JSON object")))
}

/// Applies create or update fields to `agent`, then checks the result as a whole.
fn apply(agent: &mut Value, fields: &Map<String, Value>) -> Result<(), ApiError> {
    for (key, value) in fields {
        let cleared = value.is_null() || value.as_str() == Some("");
        agent[key.as_str()] = match key.as_str() {
            "version" => continue,
            "name" => match value.as_str() {
                Some(name) if !name.is_empty() && name.len() <= 256 => value.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        "name must be a string of 1 to 256 characters",
                    ));
                }
            },
            "description" | "system" if cleared => Value::Null,
            "description" | "system" if value.is_string() => value.clone(),
            "model" => match value {
                Value::String(id) => json!({"id": id, "speed": "standard"}),
                Value::Object(config) if config.get("id").is_some_and(Value::is_string) => {
                    value.clone()
                }
                _ => {
                    return Err(ApiError::invalid(
                        "model must be a model name or {\"id\": ...}",
                    ));
                }
            },
            "tools" | "mcp_servers" | "skills" if value.is_null() => json!([]),
            "tools" => Value::Array(resolve_tools(array(value, "tools")?)?),
            "mcp_servers" => Value::Array(check_servers(array(value, "mcp_servers")?)?),
            "skills" => Value::Array(array(value, "skills")?.to_vec()),
            "metadata" => patch_metadata(&agent["metadata"], value)?,
            "execution_identity" if value.is_null() => json!({"type": "service_account"}),
            "execution_identity" | "multiagent" => value.clone(),
            "description" | "system" => {
                return Err(ApiError::invalid(format!("{key} must be a string or null")));
            }
            other => return Err(ApiError::invalid(format!("unknown field {other:?}"))),
        };
    }
    check_mcp_references(agent)
}

fn array<'a>(value: &'a Value, what: &str) -> Result<&'a [Value], ApiError> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| ApiError::invalid(format!("{what} must be an array or null")))
}

fn patch_metadata(current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut metadata = current.as_object().cloned().unwrap_or_default();
    for (key, value) in object(patch, "metadata")? {
        match value {
            Value::Null => metadata.remove(key),
            Value::String(_) => metadata.insert(key.clone(), value.clone()),
            _ => return Err(ApiError::invalid("metadata values must be strings or null")),
        };
    }
    if metadata.len() > 16 {
        return Err(ApiError::invalid("metadata holds at most 16 keys"));
    }
    Ok(Value::Object(metadata))
}

fn check_servers(servers: &[Value]) -> Result<Vec<Value>, ApiError> {
    if servers.len() > MAX_MCP_SERVERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_MCP_SERVERS} mcp_servers"
        )));
    }
    let mut names = HashSet::new();
    for server in servers {
        let name = server["name"].as_str().unwrap_or_default();
        if server["type"] != "url" || !server["url"].is_string() || name.is_empty() {
            return Err(ApiError::invalid(
                "each mcp_servers entry is {\"type\": \"url\", \"name\", \"url\"}",
            ));
        }
        if !names.insert(name) {
            return Err(ApiError::invalid(format!(
                "mcp server name {name:?} is used twice"
            )));
        }
    }
    Ok(servers.to_vec())
}

/// Every MCP server is referenced by an `mcp_toolset`, and every `mcp_toolset` names one.
fn check_mcp_references(agent: &Value) -> Result<(), ApiError> {
    let names = |list: &Value, kind: Option<&str>, key: &str| -> HashSet<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|t| kind.is_none_or(|k| t["type"] == k))
            .filter_map(|t| t[key].as_str().map(str::to_string))
            .collect()
    };
    let servers = names(&agent["mcp_servers"], None, "name");
    let toolsets = names(&agent["tools"], Some("mcp_toolset"), "mcp_server_name");
    if let Some(name) = servers.difference(&toolsets).next() {
        return Err(ApiError::invalid(format!(
            "mcp server {name:?} is not referenced by an mcp_toolset in tools"
        )));
    }
    if let Some(name) = toolsets.difference(&servers).next() {
        return Err(ApiError::invalid(format!(
            "an mcp_toolset names server {name:?}, which mcp_servers does not define"
        )));
    }
    Ok(())
}

/// Checks tool entries and fills in what the API resolves (toolset `configs` and
/// `default_config`).
fn resolve_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid(format!("at most {MAX_TOOLS} tools")));
    }
    let mut names = HashSet::new();
    let mut toolsets = 0;
    let mut resolved = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let fields = object(tool, &at)?;
        let kind = fields.get("type").and_then(Value::as_str).unwrap_or("");
        let allowed: &[&str] = match kind {
            TOOLSET => &["type", "configs", "default_config"],
            "mcp_toolset" => &["type", "mcp_server_name", "configs", "default_config"],
            "custom" => &["type", "name", "description", "input_schema"],
            _ => {
                return Err(ApiError::invalid(format!(
                    "{at}.type must be {TOOLSET}, mcp_toolset or custom"
                )));
            }
        };
        if let Some(extra) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::invalid(format!("{at}: unknown field {extra:?}")));
        }
        let mut entry = tool.clone();
        match kind {
            "custom" => check_custom(tool, &at, &mut names)?,
            _ => {
                let policy = if kind == TOOLSET {
                    toolsets += 1;
                    "always_allow"
                } else if entry["mcp_server_name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                {
                    "always_ask"
                } else {
                    return Err(ApiError::invalid(format!(
                        "{at}.mcp_server_name is required"
                    )));
                };
                if entry["configs"].is_null() {
                    entry["configs"] = json!([]);
                }
                if entry["default_config"].is_null() {
                    entry["default_config"] =
                        json!({"enabled": true, "permission_policy": {"type": policy}});
                }
            }
        }
        resolved.push(entry);
    }
    if toolsets > 1 {
        return Err(ApiError::invalid(format!("at most one {TOOLSET} entry")));
    }
    Ok(resolved)
}

fn check_custom<'a>(
    tool: &'a Value,
    at: &str,
    names: &mut HashSet<&'a str>,
) -> Result<(), ApiError> {
    let name = tool["name"].as_str().unwrap_or_default();
    let name_ok = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(ApiError::invalid(format!(
            "{at}.name must be 1-128 letters, digits, _ and -"
        )));
    }
    if !names.insert(name) {
        return Err(ApiError::invalid(format!(
            "custom tool name {name:?} is used twice"
        )));
    }
    if !tool["description"].is_string() {
        return Err(ApiError::invalid(format!("{at}.description is required")));
    }
    let schema = &tool["input_schema"];
    if schema["type"] != "object" {
        return Err(ApiError::invalid(format!(
            "{at}.input_schema must be a JSON Schema with type \"object\""
        )));
    }
    if uses_references(schema) {
        return Err(ApiError::invalid(format!(
            "{at}.input_schema uses $ref or $defs, which are not supported: inline them"
        )));
    }
    Ok(())
}

fn uses_references(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "$ref" || k == "$defs" || uses_references(v)),
        Value::Array(items) => items.iter().any(uses_references),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::scenario::Scenario;
    use crate::world::WorldConfig;

    const SCENARIO: &str = r#"
        [[agents]]
        id = "agent_1"
        name = "support"
        model = "claude-sonnet-4-5"
        mcp_servers = [{ type = "url", name = "docs", url = "https://mcp.example.test" }]
        tools = [
            { type = "agent_toolset_20260401" },
            { type = "mcp_toolset", mcp_server_name = "docs" },
            { type = "custom", name = "mine", description = "d", input_schema = { type = "object" } },
        ]
        [[sessions]]
        id = "s1"
        agent = "agent_1"
        [[sessions.steps]]
        tool = "bash"
        [faults]
        agent_edit_races = 1
    "#;

    fn world() -> Arc<World> {
        let scenario = Scenario::parse(SCENARIO).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        World::new(&scenario, WorldConfig::default(), tx)
    }

    fn custom(name: &str) -> Value {
        json!({"type": "custom", "name": name, "description": "d", "input_schema": {"type": "object"}})
    }

    #[test]
    fn updates_need_the_current_version_and_bump_it_once_per_change() {
        let w = world();
        let agent = w
            .create_agent(&json!({"name": "a", "model": "m", "tools": [{"type": TOOLSET}]}))
            .unwrap();
        let id = agent["id"].as_str().unwrap();
        assert_eq!(agent["version"], 1);
        assert_eq!(agent["model"]["id"], "m");
        assert_eq!(
            agent["tools"][0]["default_config"]["permission_policy"]["type"], "always_allow",
            "toolsets come back resolved"
        );
        let tools = json!([agent["tools"][0], custom("x")]);
        let next = w
            .update_agent(id, &json!({"tools": tools, "version": 1}))
            .unwrap();
        assert_eq!(next["version"], 2);
        assert_eq!(next["tools"][1]["name"], "x");
        let stale = w
            .update_agent(id, &json!({"tools": [], "version": 1}))
            .unwrap_err();
        assert_eq!((stale.status, stale.kind), (409, "conflict_error"));
        let same = w.update_agent(id, &json!({"tools": tools})).unwrap();
        assert_eq!(
            same["version"], 2,
            "an update that changes nothing keeps the version"
        );
        w.archive_agent(id).unwrap();
        assert!(w.update_agent(id, &json!({"name": "b"})).is_err());
        assert_eq!(
            w.list_agents(20, None, false).unwrap()["data"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            w.list_agents(20, None, true).unwrap()["data"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn refuses_what_the_api_refuses() {
        let w = world();
        for (tools, needle) in [
            (json!([custom("bad name")]), "letters, digits"),
            (json!([custom("x"), custom("x")]), "used twice"),
            (
                json!([{"type": "custom", "name": "x", "description": "d", "input_schema": {"type": "object", "$defs": {}}}]),
                "$ref",
            ),
            (
                json!([{"type": "custom", "name": "x", "description": "d", "input_schema": {"type": "string"}}]),
                "type \"object\"",
            ),
            (json!([{"type": TOOLSET}, {"type": TOOLSET}]), "at most one"),
            (
                json!([{"type": "mcp_toolset", "mcp_server_name": "nowhere"}]),
                "does not define",
            ),
            (json!([{"type": "web"}]), "must be"),
        ] {
            let e = w
                .create_agent(&json!({"name": "a", "model": "m", "tools": tools}))
                .unwrap_err();
            assert!(e.message.contains(needle), "{needle} in {}", e.message);
        }
        let e = w
            .update_agent("agent_1", &json!({"tools": []}))
            .unwrap_err();
        assert!(e.message.contains("not referenced"), "{}", e.message);
        let e = w
            .create_agent(&json!({"name": "a", "model": "m", "colour": 1}))
            .unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
        assert!(w.create_agent(&json!({"model": "m"})).is_err());
    }

    #[test]
    fn takes_only_the_organization_key() {
        let w = world();
        let (api, env) = (w.config.api_key.clone(), w.config.environment_key.clone());
        let call = |auth: Option<&str>, x: Option<&str>| {
            w.authorize_org(auth, x, Some(BETA), Some("2026-10-21"))
        };
        assert!(call(Some(&format!("Bearer {api}")), None).is_ok());
        assert!(call(None, Some(&api)).is_ok());
        let e = call(Some(&format!("Bearer {env}")), None).unwrap_err();
        assert!(
            e.message.contains("not an environment key"),
            "{}",
            e.message
        );
        assert_eq!(
            call(Some(&format!("Bearer {api}")), Some(&api))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(call(Some("Bearer nope"), None).unwrap_err().status, 401);
        assert_eq!(call(None, None).unwrap_err().status, 401);
    }

    #[test]
    fn seeds_scenario_agents_and_sessions_pin_a_snapshot() {
        let w = world();
        let seeded = w.agent("agent_1").unwrap();
        assert_eq!(seeded["version"], 1);
        assert_eq!(seeded["tools"].as_array().unwrap().len(), 3);
        // The race fault: someone else edited the agent right after that read.
        let now = w.agent("agent_1").unwrap();
        assert_eq!(now["version"], 2);
        assert!(
            now["tools"][3]["name"]
                .as_str()
                .unwrap()
                .starts_with("sim_concurrent_edit_")
        );
        let e = w
            .update_agent("agent_1", &json!({"name": "x", "version": 1}))
            .unwrap_err();
        assert_eq!(e.status, 409);
        w.open_sessions();
        w.update_agent("agent_1", &json!({"name": "renamed"}))
            .unwrap();
        let pinned = w.session_agent("s1").unwrap();
        assert_eq!(
            (pinned["version"].as_u64(), pinned["name"].as_str()),
            (Some(2), Some("support"))
        );
        let e =
            Scenario::parse("[[sessions]]\nagent = \"nope\"\n[[sessions.steps]]\ntool = \"bash\"")
                .unwrap_err()
                .to_string();
        assert!(e.contains("does not define"), "{e}");
        let e = Scenario::parse(
            "[[agents]]\nname = \"a\"\n[[sessions]]\n[[sessions.steps]]\ntool = \"bash\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("agent agent_sim_1: model is required"), "{e}");
    }
}
