//! `glob` and `grep`, on the ignore crate's walker (globset and ripgrep's searcher).

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use grep_regex::RegexMatcher;
use grep_searcher::sinks::UTF8;
use grep_searcher::{BinaryDetection, SearcherBuilder};

use super::ToolResult;
use super::paths::confine;

/// At most this many `glob` results.
pub const GLOB_LIMIT: usize = 200;
/// At most this much `grep` output.
pub const GREP_CAP: usize = 100 * 1024;

/// Directories `grep` never enters.
const SKIPPED_DIRS: [&str; 2] = [".git", "node_modules"];

fn base(workdir: &Path, path: Option<&str>) -> Result<PathBuf, ToolResult> {
    confine(workdir, path.unwrap_or(".")).map_err(ToolResult::error)
}

/// `glob {pattern, path?}`: files under `path` (default the workdir) whose path relative to it
/// matches `pattern`, newest first, at most 200.
pub fn glob(workdir: &Path, pattern: &str, path: Option<&str>) -> ToolResult {
    if Path::new(pattern)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return ToolResult::error(format!(
            "pattern {pattern:?} contains '..'; glob searches below its path only"
        ));
    }
    let base = match base(workdir, path) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let matcher = match globset::GlobBuilder::new(pattern.trim_start_matches("./"))
        .literal_separator(true)
        .build()
    {
        Ok(g) => g.compile_matcher(),
        Err(e) => {
            return ToolResult::error(format!("pattern {pattern:?} is not a valid glob: {e}"));
        }
    };
    let mut found: Vec<(SystemTime, PathBuf)> = ignore::WalkBuilder::new(&base)
        .standard_filters(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build()
        .flatten()
        .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
        .filter(|e| {
            e.path()
                .strip_prefix(&base)
                .is_ok_and(|relative| matcher.is_match(relative))
        })
        .map(|e| {
            let modified = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (modified, e.into_path())
        })
        .collect();
    if found.is_empty() {
        return ToolResult::ok(format!("no files match {pattern} under {}", base.display()));
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total = found.len();
    let mut out: Vec<String> = found
        .into_iter()
        .take(GLOB_LIMIT)
        .map(|(_, p)| p.display().to_string())
        .collect();
    if total > GLOB_LIMIT {
        out.push(format!(
            "({} more not shown; narrow the pattern)",
            total - GLOB_LIMIT
        ));
    }
    ToolResult::ok(out.join("\n"))
}

/// `grep {pattern, path?}`: lines matching the regex `pattern` in files under `path`, as
/// `file:line:text`; skips .git, node_modules, symlinks and binary files; output capped at
/// 100 KiB.
pub fn grep(workdir: &Path, pattern: &str, path: Option<&str>) -> ToolResult {
    let matcher = match RegexMatcher::new(pattern) {
        Ok(m) => m,
        Err(e) => {
            return ToolResult::error(format!("pattern {pattern:?} is not a valid regex: {e}"));
        }
    };
    let base = match base(workdir, path) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let mut searcher = SearcherBuilder::new()
        .binary_detection(BinaryDetection::quit(0))
        .line_number(true)
        .build();
    let mut out = String::new();
    let mut truncated = false;
    let walker = ignore::WalkBuilder::new(&base)
        .standard_filters(false)
        .follow_links(false)
        .filter_entry(|e| !SKIPPED_DIRS.iter().any(|d| e.file_name() == *d))
        .build();
    'files: for entry in walker.flatten() {
        if entry.path_is_symlink() || !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let shown = entry.path().display().to_string();
        let result = searcher.search_path(
            &matcher,
            entry.path(),
            UTF8(|line_number, line| {
                let line = format!(
                    "{shown}:{line_number}:{}",
                    line.trim_end_matches(['\n', '\r'])
                );
                if out.len() + line.len() + 1 > GREP_CAP {
                    truncated = true;
                    return Ok(false);
                }
                out.push_str(&line);
                out.push('\n');
                Ok(true)
            }),
        );
        // A file that is not UTF-8 or cannot be read is skipped, like a binary one.
        let _ = result;
        if truncated {
            break 'files;
        }
    }
    if out.is_empty() {
        return ToolResult::ok(format!("no matches for {pattern} under {}", base.display()));
    }
    if truncated {
        out.push_str(&format!(
            "[output truncated at {} KiB; narrow the pattern or path]",
            GREP_CAP / 1024
        ));
    }
    ToolResult::ok(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        for (path, text) in [
            ("src/main.rs", "fn main() {\n    println!(\"hello\");\n}\n"),
            ("src/lib/util.rs", "pub fn hello() {}\n"),
            ("README.md", "hello world\n"),
            (".git/config", "hello from git\n"),
            ("node_modules/x/index.js", "hello from npm\n"),
        ] {
            std::fs::create_dir_all(w.join(path).parent().unwrap()).unwrap();
            std::fs::write(w.join(path), text).unwrap();
        }
        std::fs::write(w.join("blob.bin"), b"hello\0binary").unwrap();
        std::os::unix::fs::symlink("/etc", w.join("etc-link")).unwrap();
        dir
    }

    #[test]
    fn glob_matches_newest_first_and_stays_inside() {
        let dir = tree();
        let w = dir.path();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(w.join("src/new.rs"), "").unwrap();
        let r = glob(w, "**/*.rs", None);
        let lines: Vec<_> = r.text.lines().collect();
        assert_eq!(lines.len(), 3, "{r:?}");
        assert!(lines[0].ends_with("src/new.rs"), "newest first: {r:?}");
        assert_eq!(glob(w, "*.rs", Some("src")).text.lines().count(), 2);
        assert!(
            glob(w, "*.nothing", None)
                .text
                .starts_with("no files match")
        );
        assert!(glob(w, "../*", None).is_error);
        assert!(glob(w, "*", Some("/etc")).is_error);
        for i in 0..250 {
            std::fs::write(w.join(format!("f{i}.txt")), "").unwrap();
        }
        let r = glob(w, "*.txt", None);
        assert_eq!(r.text.lines().count(), GLOB_LIMIT + 1);
        assert!(r.text.ends_with("(50 more not shown; narrow the pattern)"));
    }

    #[test]
    fn grep_finds_lines_and_skips_what_it_should() {
        let dir = tree();
        let w = dir.path();
        let r = grep(w, "hel+o", None);
        assert!(!r.is_error);
        let text = &r.text;
        assert!(
            text.contains("main.rs:2:    println!(\"hello\");"),
            "{text}"
        );
        assert!(text.contains("README.md:1:hello world"));
        assert!(
            !text.contains(".git") && !text.contains("node_modules"),
            "{text}"
        );
        assert!(
            !text.contains("blob.bin") && !text.contains("etc-link"),
            "{text}"
        );
        assert!(
            grep(w, "absent-needle", None)
                .text
                .starts_with("no matches")
        );
        assert!(grep(w, "(unclosed", None).is_error);
        assert!(grep(w, "root", Some("/etc")).is_error);
        std::fs::write(w.join("huge.txt"), "needle line\n".repeat(20_000)).unwrap();
        let r = grep(w, "needle", Some("huge.txt"));
        assert!(r.text.len() <= GREP_CAP + 100);
        assert!(r.text.ends_with("narrow the pattern or path]"));
    }
}
