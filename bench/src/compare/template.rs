//! Fills `@NAME@` placeholders in the peer configs under bench/peers/.

use std::path::Path;

use anyhow::{Context, bail};

/// Reads `template`, replaces every `@NAME@` from `values`, and fails if one is left over
/// (a config with a placeholder in it would fail later, and less clearly).
pub(crate) fn render(template: &Path, values: &[(&str, String)]) -> anyhow::Result<String> {
    let mut text = std::fs::read_to_string(template)
        .with_context(|| format!("reading {}", template.display()))?;
    for (name, value) in values {
        text = text.replace(&format!("@{name}@"), value);
    }
    let pieces: Vec<&str> = text.split('@').collect();
    if let Some(name) = pieces
        .windows(3)
        .map(|w| w[1])
        .find(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    {
        bail!("{} uses @{name}@, which was not given", template.display());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn fills_placeholders_and_refuses_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.conf");
        std::fs::write(&path, "port @PORT@; user@example; @MISSING@").unwrap();
        let error = render(&path, &[("PORT", "1".into())]).unwrap_err();
        assert!(error.to_string().contains("@MISSING@"), "{error}");
        std::fs::write(&path, "port @PORT@; mail user@example").unwrap();
        assert_eq!(
            render(&path, &[("PORT", "1".into())]).unwrap(),
            "port 1; mail user@example"
        );
    }
}
