//! Confining file tools to the working directory, symlinks included.

use std::path::{Component, Path, PathBuf};

/// Resolves `path` (absolute, or relative to `workdir`) to a real path inside `workdir`.
///
/// Every existing component is resolved through its symlinks (a link that leads out is
/// refused, as is a dangling one); components that do not exist yet (a file to write, its new
/// parent directories) are appended as written and may not contain `..`.
pub fn confine(workdir: &Path, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("file_path is empty".into());
    }
    let root = workdir.canonicalize().map_err(|e| {
        format!(
            "the working directory {} is unusable: {e}",
            workdir.display()
        )
    })?;
    let candidate = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        workdir.join(path)
    };
    // The longest ancestor that exists (as a link or otherwise).
    let mut existing = candidate.as_path();
    let mut rest = Vec::new();
    while existing.symlink_metadata().is_err() {
        let Some(name) = existing.file_name() else {
            break;
        };
        rest.push(name.to_owned());
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let mut real = existing.canonicalize().map_err(|e| {
        format!(
            "{path}: {} cannot be resolved ({e}); a dangling symlink?",
            existing.display()
        )
    })?;
    for name in rest.iter().rev() {
        match Path::new(name).components().next() {
            Some(Component::Normal(_)) => real.push(name),
            _ => {
                return Err(format!(
                    "{path}: '..' is not allowed in a path that does not exist yet"
                ));
            }
        }
    }
    if real.starts_with(&root) {
        Ok(real)
    } else {
        Err(format!(
            "{path} is outside the working directory {}",
            root.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_workdir() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("src")).unwrap();
        std::fs::write(work.join("src/a.rs"), "x").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), work.join("out")).unwrap();
        std::os::unix::fs::symlink("src", work.join("inner")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), work.join("dangling")).unwrap();
        let root = work.canonicalize().unwrap();

        assert_eq!(confine(&work, "src/a.rs").unwrap(), root.join("src/a.rs"));
        assert_eq!(
            confine(&work, &root.join("src/a.rs").display().to_string()).unwrap(),
            root.join("src/a.rs")
        );
        assert_eq!(confine(&work, "inner/a.rs").unwrap(), root.join("src/a.rs"));
        assert_eq!(
            confine(&work, "new/dir/f.txt").unwrap(),
            root.join("new/dir/f.txt")
        );
        assert_eq!(
            confine(&work, "src/../src/a.rs").unwrap(),
            root.join("src/a.rs")
        );
        for escape in [
            "../secret",
            "/etc/passwd",
            "out",
            "src/../../secret",
            "new/../../x",
            "dangling",
            "",
        ] {
            assert!(
                confine(&work, escape).is_err(),
                "{escape:?} must be refused"
            );
        }
    }
}
