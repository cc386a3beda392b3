//! A tool call as the model wrote it, read into an `agent.tool_use`: arguments repaired where
//! the intent is unambiguous (an empty string, a Markdown fence, text around one object, an
//! object encoded twice), refused otherwise; unknown tools and inputs that break the tool's
//! schema refused too. A refused call never runs: it is answered with an error the model can
//! read and act on (what was wrong, and the schema it should follow).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::events::{Event, Permission, ToolUse};
use crate::tools::schema::InputCheck;

/// The tools one agent may call.
#[derive(Debug, Default)]
pub struct Catalog {
    pub tools: BTreeMap<String, Entry>,
}

/// One callable tool.
#[derive(Debug)]
pub struct Entry {
    pub description: String,
    pub schema: Value,
    pub custom: bool,
    /// The toolset's schemas are checked here; custom tools are checked where they run
    /// ([`crate::tools::CustomTools::call`]), against the tools file as it is at that moment.
    pub check: Option<InputCheck>,
}

impl Catalog {
    /// The `tools` of a chat-completions request.
    pub fn functions(&self) -> Vec<Value> {
        self.tools
            .iter()
            .map(|(name, entry)| {
                serde_json::json!({"type": "function", "function": {
                    "name": name,
                    "description": entry.description,
                    "parameters": entry.schema,
                }})
            })
            .collect()
    }
}

/// `raw` read as an object, repaired where unambiguous; `Ok((value, repaired))`.
fn parse(raw: &str) -> Result<(Value, bool), String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok((Value::Object(Default::default()), raw != "{}"));
    }
    let first_error = match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(o)) => return Ok((Value::Object(o), trimmed != raw)),
        Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
            Ok(Value::Object(o)) => return Ok((Value::Object(o), true)),
            _ => "a JSON string, not an object".to_string(),
        },
        Ok(other) => format!("JSON {}, not an object", kind(&other)),
        Err(e) => e.to_string(),
    };
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|s| s.trim_end().strip_suffix("```"))
        .map(str::trim);
    let candidate = unfenced.unwrap_or(trimmed);
    if let Some(object) = first_object(candidate)
        && let Ok(Value::Object(o)) = serde_json::from_str::<Value>(object)
    {
        return Ok((Value::Object(o), true));
    }
    Err(first_error)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first balanced `{...}` in `text`, minding strings and escapes.
fn first_object(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text[start..].char_indices() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (false, _, '"') => in_string = true,
            (false, _, '{') => depth += 1,
            (false, _, '}') => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The event for one call the model made.
pub fn read_call(
    id: &str,
    name: &str,
    raw: &str,
    catalog: &Catalog,
    ask: &BTreeSet<String>,
) -> Event {
    let mut call = ToolUse {
        id: id.to_string(),
        name: name.to_string(),
        input: Value::Object(Default::default()),
        evaluated_permission: if ask.contains(name) {
            Permission::Ask
        } else {
            Permission::Allow
        },
        raw_arguments: None,
        refusal: None,
    };
    let Some(entry) = catalog.tools.get(name) else {
        let known: Vec<&str> = catalog.tools.keys().map(String::as_str).collect();
        call.name = name.chars().take(128).collect();
        call.raw_arguments = Some(raw.chars().take(4096).collect());
        call.evaluated_permission = Permission::Allow;
        call.refusal = Some(format!(
            "[cordon] there is no tool named {:?}; nothing ran. The tools are: {}",
            call.name,
            known.join(", ")
        ));
        return Event::ToolUse(call);
    };
    match parse(raw) {
        Ok((input, _)) if super::events::too_deep(&input, super::events::MAX_DEPTH) => {
            call.raw_arguments = Some(raw.chars().take(1024).collect());
            call.refusal = Some(format!(
                "[cordon] the arguments of this {name} call nest deeper than {} levels, so it \
                 did not run",
                super::events::MAX_DEPTH
            ));
        }
        Ok((input, repaired)) => {
            if repaired {
                call.raw_arguments = Some(raw.to_string());
            }
            if let Some(check) = &entry.check {
                let problems = check.problems(&input);
                if !problems.is_empty() {
                    call.refusal = Some(format!(
                        "[cordon] the input of {name} does not match its schema, so it did not run:\n- {}\nThe schema: {}",
                        problems.join("\n- "),
                        entry.schema
                    ));
                }
            }
            call.input = input;
        }
        Err(why) => {
            call.raw_arguments = Some(raw.chars().take(4096).collect());
            call.refusal = Some(format!(
                "[cordon] the arguments of this {name} call are not a JSON object ({why}), so it \
                 did not run. Send one JSON object that matches the schema: {}",
                entry.schema
            ));
        }
    }
    if entry.custom {
        Event::CustomToolUse(call)
    } else {
        Event::ToolUse(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::toolset;

    fn catalog() -> Catalog {
        let bash = toolset::find("bash").unwrap();
        let mut tools = BTreeMap::new();
        tools.insert(
            "bash".to_string(),
            Entry {
                description: bash.description.into(),
                schema: bash.input_schema(),
                custom: false,
                check: Some(InputCheck::new(&bash.input_schema()).unwrap()),
            },
        );
        tools.insert(
            "lookup".to_string(),
            Entry {
                description: "x".into(),
                schema: serde_json::json!({"type": "object"}),
                custom: true,
                check: None,
            },
        );
        Catalog { tools }
    }

    fn use_of(event: Event) -> ToolUse {
        match event {
            Event::ToolUse(c) | Event::CustomToolUse(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clean_arguments_pass_untouched() {
        let c = use_of(read_call(
            "1",
            "bash",
            r#"{"command":"ls"}"#,
            &catalog(),
            &BTreeSet::new(),
        ));
        assert_eq!(c.input["command"], "ls");
        assert_eq!(c.raw_arguments, None);
        assert_eq!(c.refusal, None);
    }

    #[test]
    fn unambiguous_mistakes_are_repaired() {
        for raw in [
            "```json\n{\"command\": \"ls\"}\n```",
            "Here you go: {\"command\": \"ls\"} hope it helps",
            "\"{\\\"command\\\": \\\"ls\\\"}\"",
            " {\"command\": \"ls\"}\n",
            "{\"command\": \"ls\"}}",
        ] {
            let c = use_of(read_call("1", "bash", raw, &catalog(), &BTreeSet::new()));
            assert_eq!(c.input["command"], "ls", "{raw}");
            assert_eq!(c.refusal, None, "{raw}");
            assert_eq!(c.raw_arguments.as_deref(), Some(raw));
        }
        let c = use_of(read_call("1", "lookup", "", &catalog(), &BTreeSet::new()));
        assert_eq!(c.input, serde_json::json!({}));
    }

    #[test]
    fn broken_arguments_are_refused_with_the_schema() {
        let c = use_of(read_call(
            "1",
            "bash",
            "{\"command\": \"ls",
            &catalog(),
            &BTreeSet::new(),
        ));
        let why = c.refusal.unwrap();
        assert!(why.contains("not a JSON object"), "{why}");
        assert!(why.contains("\"required\":[\"command\"]"), "{why}");
        let c = use_of(read_call("1", "bash", "[1]", &catalog(), &BTreeSet::new()));
        assert!(c.refusal.unwrap().contains("an array, not an object"));
    }

    #[test]
    fn schema_mismatches_and_unknown_tools_are_refused() {
        let c = use_of(read_call(
            "1",
            "bash",
            r#"{"cmd": "ls"}"#,
            &catalog(),
            &BTreeSet::new(),
        ));
        assert!(c.refusal.unwrap().contains("does not match its schema"));
        let c = use_of(read_call("1", "rm_rf", "{}", &catalog(), &BTreeSet::new()));
        let why = c.refusal.unwrap();
        assert!(
            why.contains("no tool named \"rm_rf\"") && why.contains("bash, lookup"),
            "{why}"
        );
    }

    #[test]
    fn arguments_nested_too_deep_are_refused() {
        let deep = format!("{{\"command\": {}1{}}}", "[".repeat(100), "]".repeat(100));
        let c = use_of(read_call("1", "bash", &deep, &catalog(), &BTreeSet::new()));
        assert!(c.refusal.unwrap().contains("nest deeper"));
        assert_eq!(c.input, serde_json::json!({}));
    }

    #[test]
    fn custom_tools_and_ask_are_marked() {
        let ask = BTreeSet::from(["lookup".to_string()]);
        let event = read_call("1", "lookup", "{}", &catalog(), &ask);
        let Event::CustomToolUse(c) = event else {
            panic!()
        };
        assert_eq!(c.evaluated_permission, Permission::Ask);
    }
}
