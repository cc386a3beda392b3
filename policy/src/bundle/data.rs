//! Data documents: parsing `data.json`/`data.yaml` and placing them at their directory's path.

use regorus::Value;

/// Parses a data file. JSON goes through serde_json first so a syntax error names its line and
/// column.
pub(super) fn parse(name: &str, bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_string())?;
    if name == "data.json" {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        Ok(Value::from(json))
    } else {
        Value::from_yaml_str(text).map_err(|e| format!("invalid YAML: {e}"))
    }
}

/// `roles/admin/data.json` -> `["roles", "admin"]`; a root-level data file -> `[]`.
pub(super) fn directory_path(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.split('/').map(str::to_string).collect();
    parts.pop();
    parts
}

/// The keys of a root-level data document (empty when it is not an object; the merge reports that).
pub(super) fn top_level_keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(|object| {
            object
                .keys()
                .map(|k| k.as_string().map(|s| s.to_string()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Merges `value` into `data` at `path`. Objects merge key by key; any other clash (a key
/// defined twice with different non-object values) is an error, as in opa, rather than one file
/// silently shadowing another.
pub(super) fn merge_at(data: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut wrapped = value;
    for segment in path.iter().rev() {
        let mut object = Value::new_object();
        object
            .as_object_mut()
            .map_err(|e| e.to_string())?
            .insert(Value::from(segment.as_str()), wrapped);
        wrapped = object;
    }
    if path.is_empty() && wrapped.as_object().is_err() {
        return Err("a data file at the bundle root must hold a JSON/YAML object".to_string());
    }
    merge(data, wrapped, &mut Vec::new())
}

fn merge(into: &mut Value, from: Value, at: &mut Vec<String>) -> Result<(), String> {
    let (Ok(into_object), Ok(from_object)) = (into.as_object_mut(), from.as_object()) else {
        return Err(format!(
            "data.{} is defined by more than one data file",
            at.join(".")
        ));
    };
    for (key, value) in from_object.iter() {
        let name = key
            .as_string()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| key.to_string());
        match into_object.get_mut(key) {
            Some(existing) => {
                at.push(name);
                merge(existing, value.clone(), at)?;
                at.pop();
            }
            None => {
                into_object.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}
