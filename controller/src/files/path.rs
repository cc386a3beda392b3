//! A path inside a workspace as an operator types it (`/src/main.rs`, `src/main.rs`): checked
//! for what could never name a file beneath the workspace before the kernel is asked.

use super::FilesError;

/// Longest path taken (the kernel's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// Longest name of one entry (ext4's).
const MAX_NAME: usize = 255;
/// What uploads in flight are called in their directory, so they are never taken for a file.
pub const UPLOAD_PREFIX: &str = ".cordon-upload-";

/// A relative path beneath a workspace's root: no `.` or `..`, no empty names, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkspacePath {
    names: Vec<String>,
}

impl WorkspacePath {
    /// The workspace's root.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses `text`; leading, trailing and repeated `/` are ignored (`""` and `/` are the root).
    pub fn parse(text: &str) -> Result<Self, FilesError> {
        if text.len() > MAX_PATH {
            return Err(FilesError::BadPath(format!(
                "the path is {} bytes long; at most {MAX_PATH}",
                text.len()
            )));
        }
        let mut names = Vec::new();
        for name in text.split('/').filter(|n| !n.is_empty()) {
            check_name(name)?;
            names.push(name.to_string());
        }
        Ok(Self { names })
    }

    pub fn is_root(&self) -> bool {
        self.names.is_empty()
    }

    /// The last name (`None` for the root).
    pub fn name(&self) -> Option<&str> {
        self.names.last().map(String::as_str)
    }

    /// The directory holding this path (the root holds itself).
    pub fn parent(&self) -> Self {
        let mut names = self.names.clone();
        names.pop();
        Self { names }
    }

    /// This path with `name` (checked like any other) below it.
    pub fn join(&self, name: &str) -> Result<Self, FilesError> {
        check_name(name)?;
        let mut names = self.names.clone();
        names.push(name.to_string());
        Ok(Self { names })
    }

    /// The path given to `openat2` beneath the workspace's directory (`.` for the root).
    pub fn relative(&self) -> String {
        if self.is_root() {
            ".".into()
        } else {
            self.names.join("/")
        }
    }

    /// Each directory from the root down to this path, with its name: breadcrumbs.
    pub fn ancestors(&self) -> Vec<(String, Self)> {
        (0..=self.names.len())
            .map(|n| {
                let path = Self {
                    names: self.names[..n].to_vec(),
                };
                let label = if n == 0 {
                    "/workspace".to_string()
                } else {
                    self.names[n - 1].clone()
                };
                (label, path)
            })
            .collect()
    }
}

impl std::fmt::Display for WorkspacePath {
    /// As the sandbox sees it, from `/workspace`'s root: `/src/main.rs`, `/`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.names.join("/"))
    }
}

fn check_name(name: &str) -> Result<(), FilesError> {
    let bad = |why: &str| Err(FilesError::BadPath(why.to_string()));
    match name {
        "" => bad("an empty name"),
        "." | ".." => {
            bad("`.` and `..` are not taken: paths are written from the workspace's root")
        }
        _ if name.contains('/') => bad("a name cannot contain `/`"),
        _ if name.contains('\0') => bad("a name cannot contain a NUL byte"),
        _ if name.len() > MAX_NAME => bad("a name is at most 255 bytes long"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_to_the_root_whatever_slashes_they_carry() {
        assert!(WorkspacePath::parse("").unwrap().is_root());
        assert!(WorkspacePath::parse("/").unwrap().is_root());
        let path = WorkspacePath::parse("//src//main.rs/").unwrap();
        assert_eq!(path.relative(), "src/main.rs");
        assert_eq!(path.to_string(), "/src/main.rs");
        assert_eq!(path.name(), Some("main.rs"));
        assert_eq!(path.parent().to_string(), "/src");
        assert_eq!(WorkspacePath::root().relative(), ".");
        let crumbs: Vec<String> = path.ancestors().into_iter().map(|(l, _)| l).collect();
        assert_eq!(crumbs, ["/workspace", "src", "main.rs"]);
    }

    #[test]
    fn dot_dot_nul_and_overlong_names_are_refused_with_the_reason() {
        for (text, why) in [
            ("../etc/passwd", "`..`"),
            ("a/./b", "`.`"),
            ("a\0b", "NUL"),
            (&"x".repeat(256), "255 bytes"),
            (&"a/".repeat(2100), "4096"),
        ] {
            let error = WorkspacePath::parse(text).unwrap_err().to_string();
            assert!(error.contains(why), "{text:?}: {error}");
        }
        assert!(WorkspacePath::root().join("..").is_err());
        assert!(WorkspacePath::root().join("a/b").is_err());
    }
}
