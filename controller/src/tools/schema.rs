//! A custom tool's `input_schema`: what CMA accepts for one, and checking a call's input
//! against it before anything runs.
//!
//! CMA takes a JSON Schema whose root has `type: "object"` (the SDK's
//! `BetaManagedAgentsCustomToolInputSchemaParam`). The reference template strips `$ref`/`$defs`
//! and lookaround patterns before registering a tool because the API refused them, so they are
//! refused here at load, each with the schema path it was found at; the rest is checked by
//! compiling the schema with the `jsonschema` crate.

use serde_json::Value;

/// Keywords CMA refuses: references, and the definitions they point into.
const REFUSED_KEYWORDS: [&str; 6] = [
    "$ref",
    "$defs",
    "definitions",
    "$dynamicRef",
    "$recursiveRef",
    "$anchor",
];

/// Keywords whose value is a schema.
const SCHEMA_KEYWORDS: [&str; 12] = [
    "items",
    "additionalProperties",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentSchema",
];

/// Keywords whose value is an array of schemas.
const SCHEMA_LIST_KEYWORDS: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];

/// Keywords whose value maps names to schemas.
const SCHEMA_MAP_KEYWORDS: [&str; 3] = ["properties", "patternProperties", "dependentSchemas"];

/// Every problem `schema` has as a custom tool's input schema, each with its path
/// (`/properties/id/pattern: ...`). Empty: CMA should accept it.
pub fn check(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    match schema.get("type") {
        Some(Value::String(t)) if t == "object" => {}
        _ => problems.push(
            "the root must have \"type\": \"object\" (CMA passes a tool's input as an object)"
                .into(),
        ),
    }
    walk(schema, "", &mut problems);
    if problems.is_empty()
        && let Err(e) = jsonschema::validator_for(schema)
    {
        problems.push(format!(
            "{}: not a valid JSON Schema: {e}",
            pointer(e.instance_path().as_str())
        ));
    }
    problems
}

fn pointer(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

/// Escapes a key for a JSON pointer.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Value::Object(map) = schema else {
        // `true`/`false` are schemas too; anything else is for the compiler to refuse.
        return;
    };
    for (key, value) in map {
        let here = format!("{path}/{}", escape(key));
        if REFUSED_KEYWORDS.contains(&key.as_str()) {
            problems.push(format!(
                "{here}: CMA refuses {key} in a tool's schema; write the referenced schema \
                 inline"
            ));
            continue;
        }
        if key == "pattern"
            && let Value::String(pattern) = value
        {
            check_pattern(pattern, &here, problems);
        }
        if SCHEMA_KEYWORDS.contains(&key.as_str()) {
            match value {
                Value::Array(list) => {
                    for (i, s) in list.iter().enumerate() {
                        walk(s, &format!("{here}/{i}"), problems);
                    }
                }
                other => walk(other, &here, problems),
            }
        } else if SCHEMA_LIST_KEYWORDS.contains(&key.as_str()) {
            if let Value::Array(list) = value {
                for (i, s) in list.iter().enumerate() {
                    walk(s, &format!("{here}/{i}"), problems);
                }
            }
        } else if SCHEMA_MAP_KEYWORDS.contains(&key.as_str())
            && let Value::Object(entries) = value
        {
            for (name, s) in entries {
                let at = format!("{here}/{}", escape(name));
                if key == "patternProperties" {
                    check_pattern(name, &at, problems);
                }
                walk(s, &at, problems);
            }
        }
    }
}

/// Lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`) is refused by CMA.
fn check_pattern(pattern: &str, at: &str, problems: &mut Vec<String>) {
    if ["(?=", "(?!", "(?<=", "(?<!"]
        .iter()
        .any(|l| pattern.contains(l))
    {
        problems.push(format!(
            "{at}: the pattern {pattern:?} uses lookaround, which CMA refuses; rewrite it \
             without (?=, (?!, (?<= or (?<!"
        ));
    }
}

/// A compiled schema that checks call inputs.
#[derive(Debug)]
pub struct InputCheck {
    validator: jsonschema::Validator,
}

impl InputCheck {
    /// Compiles `schema` (already accepted by [`check`]).
    pub fn new(schema: &Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
            .map(|validator| Self { validator })
            .map_err(|e| e.to_string())
    }

    /// Every way `input` breaks the schema, each naming the field (`/order_id: ...`); at most
    /// ten. Empty: valid.
    pub fn problems(&self, input: &Value) -> Vec<String> {
        self.validator
            .iter_errors(input)
            .take(10)
            .map(|e| format!("{}: {e}", pointer(e.instance_path().as_str())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_an_ordinary_object_schema() {
        let schema = json!({"type": "object", "properties": {
            "id": {"type": "string", "pattern": "^ord_[0-9]+$"},
            "$ref": {"type": "string"}
        }, "required": ["id"]});
        assert_eq!(check(&schema), Vec::<String>::new());
    }

    #[test]
    fn names_every_problem_with_its_path() {
        let schema = json!({"type": "object",
            "$defs": {"x": {"type": "string"}},
            "properties": {
                "a": {"$ref": "#/$defs/x"},
                "b": {"type": "string", "pattern": "^(?!admin).*"},
                "c": {"type": "array", "items": {"anyOf": [{"$ref": "#"}]}}
            },
            "patternProperties": {"^(?<=x)y": {}}
        });
        let problems = check(&schema);
        for expected in [
            "/$defs:",
            "/properties/a/$ref:",
            "/properties/b/pattern:",
            "/properties/c/items/anyOf/0/$ref:",
            "/patternProperties/^(?<=x)y:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }

    #[test]
    fn the_root_must_be_an_object_schema_and_valid() {
        assert!(check(&json!({"type": "string"}))[0].contains("\"type\": \"object\""));
        assert!(check(&json!([]))[0].contains("\"type\": \"object\""));
        let bad = check(&json!({"type": "object", "properties": {"a": {"type": 7}}}));
        assert!(bad[0].contains("not a valid JSON Schema"), "{bad:?}");
        assert!(bad[0].starts_with("/properties/a/type"), "{bad:?}");
    }

    #[test]
    fn input_problems_name_the_field() {
        let check = InputCheck::new(&json!({"type": "object",
            "properties": {"n": {"type": "integer", "maximum": 5}}, "required": ["n"]}))
        .unwrap();
        assert!(check.problems(&json!({"n": 3})).is_empty());
        let p = check.problems(&json!({"n": 9}));
        assert!(p[0].starts_with("/n:"), "{p:?}");
        let p = check.problems(&json!({}));
        assert!(p[0].contains("\"n\" is a required property"), "{p:?}");
    }
}
