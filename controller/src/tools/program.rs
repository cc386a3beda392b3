//! Whether a `run` tool's program will be there: looked up as the sandbox will, in the tool's
//! mounts first, then in the image's unpacked root (symbolic links resolved inside that root,
//! never on the host), on the image's `PATH` for a bare name. Checked when the tools file is
//! loaded, so a typo is a load error rather than a failed call.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::file::Mount;

/// The `PATH` a sandbox has when its image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Symbolic links followed in one lookup before giving up (as Linux's 40).
const MAX_LINKS: usize = 40;

/// Where `program` is inside the sandbox, or why it is not there.
pub fn find(program: &str, root: &Path, mounts: &[Mount], path: &str) -> Result<String, String> {
    if program.contains('/') {
        let absolute = if program.starts_with('/') {
            program.to_string()
        } else {
            return Err(format!(
                "{program:?} is a relative path; give an absolute path or a bare name looked up on PATH"
            ));
        };
        return executable(&absolute, root, mounts)
            .map(|()| absolute.clone())
            .map_err(|why| format!("{absolute}: {why}"));
    }
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{program}", dir.trim_end_matches('/'));
        if executable(&candidate, root, mounts).is_ok() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "{program:?} is not on the image's PATH ({path}); install it in the image or give its absolute path"
    ))
}

fn executable(inside: &str, root: &Path, mounts: &[Mount]) -> Result<(), String> {
    let host = resolve(inside, root, mounts)?;
    let meta = std::fs::metadata(&host).map_err(|_| "does not exist".to_string())?;
    if !meta.is_file() {
        return Err("is not a file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable (chmod +x it)".into());
    }
    Ok(())
}

/// The host path of `inside` (absolute, inside the sandbox).
fn resolve(inside: &str, root: &Path, mounts: &[Mount]) -> Result<PathBuf, String> {
    let mut pending: Vec<String> = components(inside);
    pending.reverse();
    let mut at: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => at.push(part),
        }
        let here = format!("/{}", at.join("/"));
        let host = host_path(&here, root, mounts);
        if let Ok(meta) = std::fs::symlink_metadata(&host)
            && meta.file_type().is_symlink()
        {
            links += 1;
            if links > MAX_LINKS {
                return Err("has too many levels of symbolic links".into());
            }
            let target = std::fs::read_link(&host).map_err(|e| e.to_string())?;
            let target = target.to_string_lossy().into_owned();
            at.pop();
            if target.starts_with('/') {
                at.clear();
            }
            let mut next = components(&target);
            next.reverse();
            pending.extend(next);
        }
    }
    Ok(host_path(&format!("/{}", at.join("/")), root, mounts))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Where sandbox path `inside` (absolute, without links) is on the host: in the longest mount
/// that holds it, else under the image's root.
fn host_path(inside: &str, root: &Path, mounts: &[Mount]) -> PathBuf {
    let mount = mounts
        .iter()
        .filter(|m| inside == m.target || inside.starts_with(&format!("{}/", m.target)))
        .max_by_key(|m| m.target.len());
    match mount {
        Some(m) => {
            let rest = inside[m.target.len()..].trim_start_matches('/');
            if rest.is_empty() {
                m.source.clone()
            } else {
                m.source.join(rest)
            }
        }
        None => root.join(inside.trim_start_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::fs::write(root.join("usr/bin/python3.11"), "").unwrap();
        std::fs::set_permissions(
            root.join("usr/bin/python3.11"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3")).unwrap();
        // A link that points at the host's own /etc/passwd must resolve inside the root.
        std::os::unix::fs::symlink("/etc/passwd", root.join("usr/bin/sneaky")).unwrap();
        std::fs::write(root.join("usr/bin/plain"), "").unwrap();
        std::fs::create_dir(dir.path().join("tool")).unwrap();
        std::fs::write(dir.path().join("tool/run.sh"), "").unwrap();
        std::fs::set_permissions(
            dir.path().join("tool/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        dir
    }

    #[test]
    fn finds_programs_on_path_through_links_and_in_mounts() {
        let dir = tree();
        let root = dir.path().join("root");
        let mounts = [Mount {
            source: dir.path().join("tool"),
            target: "/opt/tool".into(),
            writable: false,
        }];
        assert_eq!(
            find("python3", &root, &[], DEFAULT_PATH).unwrap(),
            "/usr/bin/python3"
        );
        assert!(find("/bin/python3", &root, &[], DEFAULT_PATH).is_ok());
        assert!(find("/opt/tool/run.sh", &root, &mounts, DEFAULT_PATH).is_ok());
        assert!(find("/opt/tool/run.sh", &root, &[], DEFAULT_PATH).is_err());
    }

    #[test]
    fn says_why_a_program_is_not_there() {
        let dir = tree();
        let root = dir.path().join("root");
        let e = find("node", &root, &[], DEFAULT_PATH).unwrap_err();
        assert!(e.contains("not on the image's PATH"), "{e}");
        let e = find("/usr/bin/plain", &root, &[], DEFAULT_PATH).unwrap_err();
        assert!(e.contains("not executable"), "{e}");
        let e = find("tool/run.sh", &root, &[], DEFAULT_PATH).unwrap_err();
        assert!(e.contains("relative path"), "{e}");
        // The host's /etc/passwd exists, but not inside the root.
        let e = find("/usr/bin/sneaky", &root, &[], DEFAULT_PATH).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
