//! `read`, `write` and `edit`.

use std::path::Path;

use super::ToolResult;
use super::paths::confine;

/// Largest file `read` returns whole, and largest answer it gives.
pub const READ_CAP: usize = 256 * 1024;

/// Only regular files: a FIFO or device would block or never end.
fn regular(path: &Path, shown: &str) -> Result<(), ToolResult> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(ToolResult::error(format!(
            "{shown} is a directory; use glob to list it"
        ))),
        Ok(_) => Err(ToolResult::error(format!(
            "{shown} is not a regular file (a pipe, socket or device)"
        ))),
        Err(e) => Err(ToolResult::error(format!("{shown}: {e}"))),
    }
}

fn text_of(path: &Path, shown: &str) -> Result<String, ToolResult> {
    regular(path, shown)?;
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
    if let Err(e) = regular(&path, file_path) {
        return e;
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let Some((start, end)) = range else {
        if size as usize > READ_CAP {
            return ToolResult::error(format!(
                "{file_path} is {size} bytes, over the {} KiB limit: read part of it with view_range [start, end]",
                READ_CAP / 1024
            ));
        }
        return match text_of(&path, file_path) {
            Ok(t) => ToolResult::ok(t),
            Err(e) => e,
        };
    };
    // A range is read line by line: a file of any size costs only the lines returned.
    let start = start.unwrap_or(1);
    let end = match end {
        None | Some(-1) => i64::MAX,
        Some(e) => e,
    };
    if start < 1 || end < start {
        return ToolResult::error(format!(
            "view_range [{start}, {end}] is not a range of lines (they count from 1; end -1 means the last)"
        ));
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return ToolResult::error(format!("{file_path}: {e}")),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut out = String::new();
    let mut line = Vec::new();
    let mut number: i64 = 0;
    loop {
        line.clear();
        match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return ToolResult::error(format!("{file_path}: {e}")),
        }
        number += 1;
        if number < start {
            continue;
        }
        if number > end {
            break;
        }
        if line.contains(&0) {
            return ToolResult::error(format!(
                "{file_path} is a binary file; read handles UTF-8 text"
            ));
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            return ToolResult::error(format!("{file_path} is not UTF-8 text"));
        };
        if out.len() + text.len() > READ_CAP {
            out.push_str(&format!("\n[output truncated at {} KiB]", READ_CAP / 1024));
            return ToolResult::ok(out);
        }
        out.push_str(text);
    }
    if number < start {
        return ToolResult::error(format!(
            "view_range starts at line {start}, but {file_path} has {number} line(s)"
        ));
    }
    ToolResult::ok(out)
}

/// `write {file_path, content}`: creates parent directories, replaces the file.
pub fn write(workdir: &Path, file_path: &str, content: &str) -> ToolResult {
    let path = match confine(workdir, file_path) {
        Ok(p) => p,
        Err(e) => return ToolResult::error(e),
    };
    if path.exists()
        && let Err(e) = regular(&path, file_path)
    {
        return e;
    }
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
        // A pipe would block the reader forever: refused before it is opened.
        assert!(
            std::process::Command::new("mkfifo")
                .arg(work.join("pipe"))
                .status()
                .unwrap()
                .success()
        );
        let r = read(work, "pipe", None);
        assert!(r.is_error && r.text.contains("not a regular file"), "{r:?}");
        assert!(read(work, "pipe", Some((Some(1), Some(2)))).is_error);
        assert!(write(work, "pipe", "x").is_error);
        assert!(write(work, "../escape.txt", "x").is_error);
        assert!(!dir.path().parent().unwrap().join("escape.txt").exists());
        assert!(edit(work, "/etc/hostname", "a", "b", false).is_error);
    }
}
