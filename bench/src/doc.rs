//! Sections of docs/BENCHMARKS.md that a measurement rewrites in place: what is between
//! `<!-- cordon-bench NAME: begin -->` and `<!-- cordon-bench NAME: end -->`. `cordon-bench
//! report`, which writes the rest of the document, keeps them.

use std::path::Path;

/// The sections other runs write, in the order they are kept.
pub const SECTIONS: [&str; 5] = ["sandboxes", "tools", "local-loop", "browser", "soak"];

pub fn begin(name: &str) -> String {
    format!("<!-- cordon-bench {name}: begin -->")
}

pub fn end(name: &str) -> String {
    format!("<!-- cordon-bench {name}: end -->")
}

/// Writes a run's figures to `<out>/<name>-<date>.json`; that file's path.
pub fn write_figures(
    out: &Path,
    name: &str,
    json: &serde_json::Value,
) -> Result<std::path::PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let date = time::OffsetDateTime::now_utc().date();
    let file = out.join(format!("{name}-{date}.json"));
    std::fs::write(
        &file,
        serde_json::to_string_pretty(json).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(file)
}

/// Section `name` of a document, markers included.
pub fn section<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
    let (begin, end) = (begin(name), end(name));
    let start = doc.find(&begin)?;
    let stop = doc[start..].find(&end)? + start + end.len();
    Some(&doc[start..stop])
}

/// Puts `text` (markers included) into the document at `doc` as section `name`, in place of
/// the old one or at its end.
pub fn write_section(doc: &Path, name: &str, text: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    let new = match section(&old, name) {
        Some(existing) => old.replacen(existing, text, 1),
        None => format!("{}\n\n{text}\n", old.trim_end()),
    };
    std::fs::write(doc, new).map_err(|e| format!("{}: {e}", doc.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place_or_appended() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("B.md");
        std::fs::write(&doc, "# B\n").unwrap();
        let text = |n: &str| format!("{}\nfigures {n}\n{}", begin("tools"), end("tools"));
        write_section(&doc, "tools", &text("1")).unwrap();
        write_section(&doc, "tools", &text("2")).unwrap();
        let written = std::fs::read_to_string(&doc).unwrap();
        assert_eq!(written.matches("cordon-bench tools: begin").count(), 1);
        assert!(written.starts_with("# B\n") && written.contains("figures 2"));
        assert_eq!(section(&written, "tools"), Some(text("2").as_str()));
        assert_eq!(section(&written, "sandboxes"), None);
    }
}
