//! Registering the custom tools file's tools on a CMA agent through the Agents API
//! (`cordon-controller agents sync`; ../shared/CMA.md, "Custom tools and the Agents API").
//!
//! An update replaces the agent's whole `tools` list, so Cordon reads the agent, plans the new
//! list and sends it with the `version` it read: an edit someone made in between makes the
//! update fail (409) instead of being overwritten, and Cordon reads again and replans.
//!
//! The plan keeps every tool Cordon does not manage as it was, in its place (the CMA toolset,
//! MCP toolsets, custom tools added by hand); replaces in place the custom tools the file
//! declares; appends those the agent lacks; and removes the custom tools Cordon added before
//! that the file no longer declares. Which ones Cordon added is recorded on the agent itself,
//! in the metadata key `cordon_tools` (comma-separated names).

use serde_json::{Value, json};

use super::client::{CmaClient, CmaError};

/// The agent metadata key naming the tools Cordon manages.
pub const MANAGED_KEY: &str = "cordon_tools";
/// The longest metadata value CMA accepts.
const METADATA_VALUE_MAX: usize = 512;
/// Read-plan-update rounds before giving up on an agent others keep editing.
pub const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Cma(#[from] CmaError),
    #[error("agent {0} is archived: new sessions cannot use it; sync another agent")]
    Archived(String),
    #[error(
        "the names of Cordon's tools take {0} characters in the agent's metadata ({MANAGED_KEY}), \
         more than the {METADATA_VALUE_MAX} CMA allows; declare fewer tools or shorter names"
    )]
    TooManyNames(usize),
    #[error(
        "agent {0} changed under every one of {ATTEMPTS} updates (409): another client keeps editing it; try again"
    )]
    Conflict(String),
    #[error("agent {0}: the answer has no tools list")]
    Malformed(String),
}

impl SyncError {
    /// Whether the credentials or the connection are at fault (exit 69), not the request.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SyncError::Cma(CmaError::Transport { .. }) => true,
            SyncError::Cma(CmaError::Status { status, .. }) => {
                matches!(status, 401 | 403) || *status >= 500
            }
            _ => false,
        }
    }

    /// A 401 or 403: the key is wrong, or not the organization's.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            SyncError::Cma(CmaError::Status {
                status: 401 | 403,
                ..
            })
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, SyncError::Cma(CmaError::Status { status: 404, .. }))
    }
}

/// What an update changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The agent's version the plan was made from.
    pub version: Option<u64>,
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Custom tools of the file's names that someone else had put on the agent: replaced.
    pub taken_over: Vec<String>,
    /// Tools left as they were (toolsets, MCP toolsets, custom tools Cordon does not manage).
    pub kept: usize,
    /// The whole new `tools` list.
    pub tools: Vec<Value>,
    /// The metadata patch, when the managed names change.
    pub metadata: Option<Value>,
}

impl Plan {
    /// Whether the agent already has exactly these tools.
    pub fn is_noop(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.metadata.is_none()
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (mark, names) in [
            ("+", &self.added),
            ("~", &self.updated),
            ("-", &self.removed),
            ("=", &self.unchanged),
        ] {
            for name in names {
                let note = if self.taken_over.contains(name) {
                    " (was not added by Cordon; replaced by the file's definition)"
                } else {
                    ""
                };
                writeln!(f, "  {mark} {name}{note}")?;
            }
        }
        write!(f, "  {} other tool(s) kept as they are", self.kept)
    }
}

fn name(tool: &Value) -> Option<&str> {
    (tool["type"] == "custom")
        .then(|| tool["name"].as_str())
        .flatten()
}

/// The same tool as the model sees it (other keys the API may add are not compared).
fn same(a: &Value, b: &Value) -> bool {
    ["name", "description", "input_schema"]
        .iter()
        .all(|k| a[k] == b[k])
}

/// Plans putting `entries` (the file's `{"type": "custom", ...}` entries) on `agent`.
pub fn plan(agent: &Value, entries: &[Value]) -> Result<Plan, SyncError> {
    let id = agent["id"].as_str().unwrap_or("?").to_string();
    let current = agent["tools"]
        .as_array()
        .ok_or_else(|| SyncError::Malformed(id.clone()))?;
    let managed: Vec<&str> = agent["metadata"][MANAGED_KEY]
        .as_str()
        .map(|v| v.split(',').filter(|n| !n.is_empty()).collect())
        .unwrap_or_default();
    let wanted = |n: &str| entries.iter().find(|e| name(e) == Some(n));
    let mut plan = Plan {
        version: agent["version"].as_u64(),
        ..Plan::default()
    };
    let mut placed = Vec::new();
    for tool in current {
        match name(tool) {
            Some(n) if wanted(n).is_some() && !placed.contains(&n) => {
                let entry = wanted(n).unwrap_or(tool);
                if same(tool, entry) {
                    plan.unchanged.push(n.to_string());
                } else {
                    plan.updated.push(n.to_string());
                }
                if !managed.contains(&n) {
                    plan.taken_over.push(n.to_string());
                }
                placed.push(n);
                plan.tools.push(entry.clone());
            }
            // A duplicate of a placed name, or a tool Cordon added that the file dropped.
            Some(n) if placed.contains(&n) || managed.contains(&n) => {
                plan.removed.push(n.to_string())
            }
            _ => {
                plan.kept += 1;
                plan.tools.push(tool.clone());
            }
        }
    }
    for entry in entries {
        if let Some(n) = name(entry)
            && !placed.contains(&n)
        {
            plan.added.push(n.to_string());
            plan.tools.push(entry.clone());
        }
    }
    let mut names: Vec<&str> = entries.iter().filter_map(name).collect();
    names.sort_unstable();
    let value = names.join(",");
    if value.len() > METADATA_VALUE_MAX {
        return Err(SyncError::TooManyNames(value.len()));
    }
    let recorded = agent["metadata"][MANAGED_KEY].as_str();
    plan.metadata = match (recorded, value.is_empty()) {
        (Some(old), false) if old == value => None,
        (None, true) => None,
        (_, true) => Some(json!({ MANAGED_KEY: null })),
        (_, false) => Some(json!({ MANAGED_KEY: value })),
    };
    Ok(plan)
}

/// Reads agent `id`, plans, and (unless `dry_run` or nothing changes) updates it with the
/// version read, reading again after a conflict. Returns the plan applied and the agent's
/// version after it.
pub async fn sync(
    client: &CmaClient,
    id: &str,
    entries: &[Value],
    dry_run: bool,
) -> Result<(Plan, Option<u64>), SyncError> {
    let path = format!("/v1/agents/{id}");
    for _ in 0..ATTEMPTS {
        let agent = client.api(http::Method::GET, &path, None).await?;
        if !agent["archived_at"].is_null() {
            return Err(SyncError::Archived(id.to_string()));
        }
        let plan = plan(&agent, entries)?;
        if dry_run || plan.is_noop() {
            let version = plan.version;
            return Ok((plan, version));
        }
        let mut body = json!({"tools": plan.tools});
        if let Some(version) = plan.version {
            body["version"] = json!(version);
        }
        if let Some(metadata) = &plan.metadata {
            body["metadata"] = metadata.clone();
        }
        match client.api(http::Method::POST, &path, Some(body)).await {
            Ok(updated) => {
                let version = updated["version"].as_u64();
                return Ok((plan, version));
            }
            Err(CmaError::Status { status: 409, .. }) => {
                tracing::info!(
                    agent = id,
                    "the agent changed since it was read; reading it again"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(SyncError::Conflict(id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(name: &str, description: &str) -> Value {
        json!({"type": "custom", "name": name, "description": description, "input_schema": {"type": "object"}})
    }

    fn agent(tools: Vec<Value>, managed: Option<&str>) -> Value {
        let mut metadata = json!({"team": "infra"});
        if let Some(m) = managed {
            metadata[MANAGED_KEY] = json!(m);
        }
        json!({"id": "agent_1", "version": 4, "tools": tools, "metadata": metadata, "archived_at": null})
    }

    fn toolset() -> Value {
        json!({"type": "agent_toolset_20260401", "default_config": {"enabled": true}})
    }

    #[test]
    fn adds_updates_and_removes_only_what_cordon_manages() {
        let agent = agent(
            vec![
                toolset(),
                custom("lookup", "old words"),
                custom("by_hand", "someone's"),
                custom("dropped", "was in the file"),
                custom("chart", "same"),
            ],
            Some("chart,dropped,lookup"),
        );
        let entries = [
            custom("lookup", "new words"),
            custom("chart", "same"),
            custom("search", "new"),
        ];
        let plan = plan(&agent, &entries).unwrap();
        assert_eq!(plan.version, Some(4));
        assert_eq!(plan.added, ["search"]);
        assert_eq!(plan.updated, ["lookup"]);
        assert_eq!(plan.removed, ["dropped"]);
        assert_eq!(plan.unchanged, ["chart"]);
        assert!(plan.taken_over.is_empty());
        assert_eq!(plan.kept, 2);
        let names: Vec<&str> = plan
            .tools
            .iter()
            .map(|t| t["name"].as_str().unwrap_or("toolset"))
            .collect();
        assert_eq!(names, ["toolset", "lookup", "by_hand", "chart", "search"]);
        assert_eq!(plan.tools[0], toolset());
        assert_eq!(
            plan.metadata,
            Some(json!({MANAGED_KEY: "chart,lookup,search"}))
        );
        let shown = plan.to_string();
        assert!(
            shown.contains("+ search") && shown.contains("- dropped"),
            "{shown}"
        );
    }

    #[test]
    fn a_second_plan_is_a_noop_and_an_empty_file_removes_cordons_tools() {
        let agent = agent(vec![toolset(), custom("lookup", "d")], Some("lookup"));
        let plan_same = plan(&agent, &[custom("lookup", "d")]).unwrap();
        assert!(plan_same.is_noop(), "{plan_same:?}");
        let emptied = plan(&agent, &[]).unwrap();
        assert_eq!(emptied.removed, ["lookup"]);
        assert_eq!(emptied.tools, [toolset()]);
        assert_eq!(emptied.metadata, Some(json!({MANAGED_KEY: null})));
    }

    #[test]
    fn a_hand_made_tool_of_a_declared_name_is_taken_over() {
        let agent = agent(vec![custom("lookup", "by hand")], None);
        let plan = plan(&agent, &[custom("lookup", "from the file")]).unwrap();
        assert_eq!(plan.updated, ["lookup"]);
        assert_eq!(plan.taken_over, ["lookup"]);
        assert!(plan.to_string().contains("was not added by Cordon"));
    }

    #[test]
    fn too_many_names_for_the_metadata_is_an_error() {
        let entries: Vec<Value> = (0..40)
            .map(|n| custom(&format!("a_rather_long_tool_name_{n:02}"), "d"))
            .collect();
        let e = plan(&agent(vec![], None), &entries).unwrap_err();
        assert!(e.to_string().contains("fewer tools"), "{e}");
    }
}
