//! The admin API's token: what the workspace file routes ask for (`Authorization: Bearer`).
//!
//! The admin API listens on loopback only, which every local user can reach. Stopping a
//! session or reading metrics there was judged harmless enough; a session's files are not (an
//! agent's code and data, and uploads into a workspace the agent runs). So those routes need
//! this token, which `serve` keeps in `<state_dir>/controller/admin-token` with mode 0600:
//! whoever can read the controller's state (root, as the controller runs) can use them, and
//! `cordon-controller files` reads it from there.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The token's file under the controller's state directory.
pub fn path(controller_state: &Path) -> PathBuf {
    controller_state.join("admin-token")
}

/// The token in `controller_state`, made (32 random bytes, hex, mode 0600) when there is none:
/// kept across restarts, so a `files` command running during one still works.
pub fn ensure(controller_state: &Path) -> std::io::Result<String> {
    let file = path(controller_state);
    if let Ok(token) = read(&file) {
        return Ok(token);
    }
    std::fs::create_dir_all(controller_state)?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let partial = file.with_extension("partial");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    out.write_all(token.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&partial, &file)?;
    Ok(token)
}

/// The token in `file`; refused when others than its owner may read it.
pub fn read(file: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file)?;
    if meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is readable by others than its owner (mode {:o}); `chmod 600` it",
            file.display(),
            meta.mode() & 0o777
        )));
    }
    let token = std::fs::read_to_string(file)?.trim().to_string();
    if token.len() < 32 {
        return Err(std::io::Error::other(format!(
            "{} holds no token",
            file.display()
        )));
    }
    Ok(token)
}

/// Whether `headers` carry `token` as a bearer token (compared in constant time).
pub fn carried(headers: &http::HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_private_and_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let token = ensure(dir.path()).unwrap();
        assert_eq!(ensure(dir.path()).unwrap(), token, "kept across starts");
        use std::os::unix::fs::PermissionsExt;
        let file = path(dir.path());
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut headers = http::HeaderMap::new();
        assert!(!carried(&headers, &token));
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert!(carried(&headers, &token));
        headers.insert(
            "authorization",
            format!("Bearer {}", &token[..20]).parse().unwrap(),
        );
        assert!(!carried(&headers, &token));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&file).unwrap_err().to_string().contains("chmod 600"));
    }
}
