//! A rendered page (the DOM after its scripts ran) as markdown, for a model to read: scripts,
//! styles and other non-content elements dropped, capped at [`MAX_CHARS`].

/// Characters of markdown given back; the rest is cut with a note saying so.
pub const MAX_CHARS: usize = 100_000;

/// Elements whose content is not text a reader sees.
const SKIPPED: [&str; 8] = [
    "script", "style", "noscript", "template", "svg", "canvas", "iframe", "head",
];

/// `html` as markdown, cut at [`MAX_CHARS`].
pub fn render(html: &str) -> Result<String, String> {
    let converter = htmd::HtmlToMarkdown::builder()
        .skip_tags(SKIPPED.to_vec())
        .build();
    let markdown = converter
        .convert(html)
        .map_err(|e| format!("the page could not be turned into markdown: {e}"))?;
    let markdown = markdown.trim();
    if markdown.chars().count() <= MAX_CHARS {
        return Ok(markdown.to_string());
    }
    let mut cut: String = markdown.chars().take(MAX_CHARS).collect();
    cut.push_str(&format!(
        "\n\n[cut at {MAX_CHARS} characters; use browser_evaluate to read a part of the page]"
    ));
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_kept_and_scripts_are_not() {
        let md = render(
            "<html><head><title>T</title><style>p{}</style></head><body><h1>Orders</h1>\
             <script>var secret = 1;</script><p>Two <a href=\"/x\">open</a> orders.</p></body></html>",
        )
        .unwrap();
        assert!(md.contains("# Orders"), "{md}");
        assert!(md.contains("[open](/x)"), "{md}");
        assert!(!md.contains("secret") && !md.contains("p{}"), "{md}");
    }

    #[test]
    fn long_pages_are_cut_with_a_note() {
        let html = format!("<p>{}</p>", "word ".repeat(MAX_CHARS));
        let md = render(&html).unwrap();
        assert!(
            md.ends_with("to read a part of the page]"),
            "{}",
            &md[md.len() - 80..]
        );
        assert!(md.chars().count() < MAX_CHARS + 200);
    }
}
