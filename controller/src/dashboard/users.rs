//! The dashboard's local users: a TOML file of names, roles and argon2id password hashes, mode
//! 0600, managed by `cordon-controller dashboard user add|remove|list` and read by the running
//! dashboard whenever it changes (a removed user's logins end at their next request).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees every page; changes nothing.
    Viewer,
    /// Also stops sessions, reloads the policy, opens terminals, uploads files.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("role {other:?} is not viewer or operator")),
        }
    }
}

/// One user as the file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// PHC string (`$argon2id$...`).
    pub password_hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersDoc {
    #[serde(default, rename = "user")]
    users: Vec<User>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is readable by group or others; run `chmod 600 {path}`")]
    Permissions { path: PathBuf },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "user name {0:?} is not allowed: use 1 to 64 letters, digits and . _ @ - (an email address works)"
    )]
    BadName(String),
    #[error("user {0:?} exists; remove it first, or add with --replace")]
    Exists(String),
    #[error("no user {0:?}; `cordon-controller dashboard user list` shows them")]
    Unknown(String),
    #[error("the password is too short: use at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Shortest password `user add` takes.
pub const MIN_PASSWORD: usize = 12;

/// Whether `name` may name a user (it appears in audit lines and pages).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Reads the users file; a missing file is no users.
pub fn read(path: &Path) -> Result<Vec<User>, UsersError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(UsersError::Read {
                path: path.into(),
                source,
            });
        }
    };
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(UsersError::Permissions { path: path.into() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
        path: path.into(),
        source,
    })?;
    let doc: UsersDoc = toml::from_str(&text).map_err(|e| UsersError::Syntax {
        path: path.into(),
        message: e.to_string(),
    })?;
    for user in &doc.users {
        if !valid_name(&user.name) || PasswordHash::new(&user.password_hash).is_err() {
            return Err(UsersError::Syntax {
                path: path.into(),
                message: format!(
                    "user {:?}: a bad name or password_hash (not a PHC string)",
                    user.name
                ),
            });
        }
    }
    Ok(doc.users)
}

/// Writes the users file whole (a temporary file renamed over it), mode 0600.
fn write(path: &Path, users: Vec<User>) -> Result<(), UsersError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let failed = |source| UsersError::Write {
        path: path.into(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let text = format!(
        "# Cordon dashboard users: `cordon-controller dashboard user add|remove|list`.\n\
         # argon2id password hashes; keep this file mode 0600.\n\n{}",
        toml::to_string(&UsersDoc { users }).map_err(|e| UsersError::Hash(e.to_string()))?
    );
    // A new file of our own (O_EXCL, mode 0600) in the same directory, renamed over the old:
    // never a name another user could have prepared.
    let mut out = tempfile::Builder::new()
        .prefix(".dashboard-users")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(failed)?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.as_file().sync_all())
        .map_err(failed)?;
    out.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// An argon2id hash of `password` (the crate's default parameters: 19 MiB, 2 passes).
pub fn hash(password: &str) -> Result<String, UsersError> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Adds (or with `replace`, replaces) a user.
pub fn add(
    path: &Path,
    name: &str,
    role: Role,
    password: &str,
    replace: bool,
) -> Result<(), UsersError> {
    if !valid_name(name) {
        return Err(UsersError::BadName(name.into()));
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(UsersError::ShortPassword);
    }
    let mut users = read(path)?;
    if users.iter().any(|u| u.name == name) {
        if !replace {
            return Err(UsersError::Exists(name.into()));
        }
        users.retain(|u| u.name != name);
    }
    users.push(User {
        name: name.into(),
        role,
        password_hash: hash(password)?,
    });
    write(path, users)
}

/// Removes a user.
pub fn remove(path: &Path, name: &str) -> Result<(), UsersError> {
    let mut users = read(path)?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Err(UsersError::Unknown(name.into()));
    }
    write(path, users)
}

/// What a login is bound to: the SHA-256 of the password hash it was made with.
fn credential(password_hash: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(password_hash.as_bytes()).into()
}

/// A password for `user add` without one: 20 characters from a 62-letter alphabet (119 bits).
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A file's modification time and size, when it has them.
type Stamp = Option<(SystemTime, u64)>;

/// The users file as the running dashboard sees it: read again whenever its modification time
/// or size changes, so `user add|remove` take effect without a restart.
#[derive(Debug)]
pub struct UsersFile {
    path: PathBuf,
    cached: Mutex<Option<(Stamp, Vec<User>)>>,
    /// A hash to verify against when the name is unknown, so that a wrong name takes as long
    /// as a wrong password (no telling which users exist by timing).
    decoy: String,
}

impl UsersFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
            decoy: hash("cordon-decoy-password").unwrap_or_default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stamp(&self) -> Stamp {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// The users now; an unreadable file is logged and counts as no users (fail closed).
    pub fn users(&self) -> Vec<User> {
        let stamp = self.stamp();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, users)) = cached.as_ref()
            && *seen == stamp
        {
            return users.clone();
        }
        let users = match read(&self.path) {
            Ok(users) => users,
            Err(e) => {
                tracing::error!(error = %e, "dashboard users file unusable; nobody can log in");
                Vec::new()
            }
        };
        *cached = Some((stamp, users.clone()));
        users
    }

    /// The role of `name`, if it is a user now.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.current(name).map(|(role, _)| role)
    }

    /// The role of `name` and the SHA-256 of its password hash (what a login is bound to), if
    /// it is a user now.
    pub fn current(&self, name: &str) -> Option<(Role, [u8; 32])> {
        self.users()
            .into_iter()
            .find(|u| u.name == name)
            .map(|u| (u.role, credential(&u.password_hash)))
    }

    /// Checks a password (slow by design: call off the async threads); the user's role and
    /// credential (see [`UsersFile::current`]).
    pub fn verify(&self, name: &str, password: &str) -> Option<(Role, [u8; 32])> {
        let users = self.users();
        let user = users.iter().find(|u| u.name == name);
        let phc = user.map_or(self.decoy.as_str(), |u| u.password_hash.as_str());
        let ok = PasswordHash::new(phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        match user {
            Some(u) if ok => Some((u.role, credential(&u.password_hash))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_replace_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        add(
            &path,
            "alice@example.com",
            Role::Operator,
            "correct horse battery",
            false,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("correct horse"));
        let file = UsersFile::new(path.clone());
        assert_eq!(
            file.verify("alice@example.com", "correct horse battery")
                .map(|v| v.0),
            Some(Role::Operator)
        );
        assert_eq!(file.verify("alice@example.com", "wrong password!"), None);
        assert_eq!(file.verify("bob", "correct horse battery"), None);
        assert!(matches!(
            add(
                &path,
                "alice@example.com",
                Role::Viewer,
                "another password",
                false
            ),
            Err(UsersError::Exists(_))
        ));
        add(
            &path,
            "alice@example.com",
            Role::Viewer,
            "another password",
            true,
        )
        .unwrap();
        assert_eq!(file.role("alice@example.com"), Some(Role::Viewer));
        remove(&path, "alice@example.com").unwrap();
        assert_eq!(file.role("alice@example.com"), None);
        assert!(matches!(
            remove(&path, "alice@example.com"),
            Err(UsersError::Unknown(_))
        ));
    }

    #[test]
    fn bad_names_short_passwords_and_open_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        assert!(matches!(
            add(&path, "a b", Role::Viewer, "long enough password", false),
            Err(UsersError::BadName(_))
        ));
        assert!(matches!(
            add(&path, "a", Role::Viewer, "short", false),
            Err(UsersError::ShortPassword)
        ));
        add(&path, "a", Role::Viewer, "long enough password", false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&path), Err(UsersError::Permissions { .. })));
        // The running dashboard fails closed on a file it must not trust.
        assert_eq!(
            UsersFile::new(path).verify("a", "long enough password"),
            None
        );
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
