//! `application/x-www-form-urlencoded` bodies, as opa-envoy-plugin parses them (Go's
//! `url.ParseQuery`): every value of a name, in order, `+` and percent escapes decoded.

use std::collections::BTreeMap;

/// The fields of a form body. Go refuses a `;` separator and a `%` not followed by two hex
/// digits, and opa-envoy-plugin then fails the request; here the body is left unparsed with the
/// reason, so the policy can still decide.
pub(super) fn parse(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    for pair in text.split('&') {
        if pair.contains(';') {
            return Err("invalid semicolon separator in form body".to_string());
        }
        let bytes = pair.as_bytes();
        for (i, _) in pair.match_indices('%') {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                let escape: String = pair[i..].chars().take(3).collect();
                return Err(format!("invalid URL escape {escape:?} in form body"));
            }
        }
    }
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(text.as_bytes()) {
        fields
            .entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    Ok(fields)
}
