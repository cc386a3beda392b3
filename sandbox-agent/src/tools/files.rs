//! `read`, `write` and `edit`.

use std::path::Path;

use super::ToolResult;
use super::paths::confine;

/// Largest file `read` returns whole, and largest answer it gives.
pub const READ_CAP: usize = 256 * 1024;

fn text_of(path: &Path, shown: &str) -> Result<String, ToolResult> {
    let bytes = std::fs::read(path).map_err(|e| ToolResult::error(format!("{shown}: {e}")))?;
    if bytes.contains(&0) {
        return Err(ToolResult::error(format!(
            "{shown} is a binary file; read handles UTF-8 text"
        )));
    }
    String::from_utf8(bytes).map_err(|_| ToolResult::error(format!("{shown} is not UTF-8 text")))
}

/// `read {file_path, view_range?: [start, end]}`: lines `start..=end` (1-based; `end` -1 or
/// absent: to the end), or the whole file when it is at most 256 KiB.
pub fn read(
    workdir: &Path,
    file_path: &str,
    range: Option<(Option<i64>, Option<i64>)>,
) -> ToolResult {
    let path = match confine(workdir, file_path) {
        Ok(p) => p,
        Err(e) => return ToolResult::error(e),
    };
    if path.is_dir() {
        return ToolResult::error(format!("{file_path} is a directory; use glob to list it"));
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if range.is_none() && size as usize > READ_CAP {
        return ToolResult::error(format!(
            "{file_path} is {size} bytes, over the {} KiB limit: read part of it with view_range [start, end]",
            READ_CAP / 1024
        ));
    }
    let text = match text_of(&path, file_path) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let Some((start, end)) = range else {
        return ToolResult::ok(text);
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = start.unwrap_or(1);
    let end = match end {
        None | Some(-1) => lines.len() as i64,
        Some(e) => e,
    };
    if start < 1 || end < start || start as usize > lines.len().max(1) {
        return ToolResult::error(format!(
            "view_range [{start}, {end}] is not within the file's {} line(s) (lines count from 1; end -1 means the last)",
            lines.len()
        ));
    }
    let end = (end as usize).min(lines.len());
    let mut out = String::new();
    for line in &lines[start as usize - 1..end] {
        if out.len() + line.len() > READ_CAP {
            out.push_str(&format!("\n[output truncated at {} KiB]", READ_CAP / 1024));
            break;
        }
        out.push_str(line);
    }
    ToolResult::ok(out)
}

/// `write {file_path, content}`: creates parent directories, replaces the file.
pub fn write(workdir: &Path, file_path: &str, content: &str) -> ToolResult {
    let path = match confine(workdir, file_path) {
        Ok(p) => p,
        Err(e) => return ToolResult::error(e),
    };
    if let Some(parent) = path.parent()
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        return ToolResult::error(format!("{file_path}: cannot create its directory: {e}"));
    }
    match std::fs::write(&path, content) {
        Ok(()) => ToolResult::ok(format!(
            "wrote {} bytes to {}",
            content.len(),
            path.display()
        )),
        Err(e) => ToolResult::error(format!("{file_path}: {e}")),
    }
}

/// `edit {file_path, old_string, new_string, replace_all?}`: exact match; refused when
/// `old_string` is absent, or found more than once without `replace_all`.
pub fn edit(
    workdir: &Path,
    file_path: &str,
    old: &str,
    new: &str,
    replace_all: bool,
) -> ToolResult {
    let path = match confine(workdir, file_path) {
        Ok(p) => p,
        Err(e) => return ToolResult::error(e),
    };
    if old.is_empty() {
        return ToolResult::error("old_string is empty; give the exact text to replace");
    }
    let text = match text_of(&path, file_path) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let count = text.matches(old).count();
    let updated = match count {
        0 => {
            return ToolResult::error(format!(
                "old_string was not found in {file_path}; it must match exactly, whitespace included"
            ));
        }
        1 => text.replacen(old, new, 1),
        n if replace_all => {
            let _ = n;
            text.replace(old, new)
        }
        n => {
            return ToolResult::error(format!(
                "old_string occurs {n} times in {file_path}; add surrounding text to make it unique, or set replace_all"
            ));
        }
    };
    match std::fs::write(&path, updated) {
        Ok(()) => ToolResult::ok(format!(
            "replaced {count} occurrence(s) in {}",
            path.display()
        )),
        Err(e) => ToolResult::error(format!("{file_path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_and_edit() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let r = write(work, "a/b/c.txt", "one\ntwo\nthree\ntwo\n");
        assert!(!r.is_error, "{r:?}");
        assert_eq!(read(work, "a/b/c.txt", None).text, "one\ntwo\nthree\ntwo\n");
        assert_eq!(
            read(work, "a/b/c.txt", Some((Some(2), Some(3)))).text,
            "two\nthree\n"
        );
        assert_eq!(
            read(work, "a/b/c.txt", Some((Some(3), Some(-1)))).text,
            "three\ntwo\n"
        );
        assert!(read(work, "a/b/c.txt", Some((Some(9), None))).is_error);
        assert!(read(work, "missing.txt", None).is_error);
        assert!(read(work, "a", None).text.contains("is a directory"));

        let r = edit(work, "a/b/c.txt", "two", "2", false);
        assert!(r.is_error && r.text.contains("occurs 2 times"), "{r:?}");
        let r = edit(work, "a/b/c.txt", "four", "4", false);
        assert!(r.is_error && r.text.contains("not found"), "{r:?}");
        assert!(!edit(work, "a/b/c.txt", "three", "3", false).is_error);
        assert!(!edit(work, "a/b/c.txt", "two", "2", true).is_error);
        assert_eq!(read(work, "a/b/c.txt", None).text, "one\n2\n3\n2\n");

        // Binary and oversized files, and escapes.
        std::fs::write(work.join("bin"), [0u8, 159, 146, 150]).unwrap();
        assert!(read(work, "bin", None).text.contains("binary"));
        std::fs::write(work.join("big"), "x\n".repeat(READ_CAP)).unwrap();
        let r = read(work, "big", None);
        assert!(r.is_error && r.text.contains("view_range"), "{r:?}");
        let r = read(work, "big", Some((Some(1), Some(-1))));
        assert!(r.text.ends_with("[output truncated at 256 KiB]"));
        assert!(write(work, "../escape.txt", "x").is_error);
        assert!(!dir.path().parent().unwrap().join("escape.txt").exists());
        assert!(edit(work, "/etc/hostname", "a", "b", false).is_error);
    }
}
