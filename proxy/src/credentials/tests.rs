use std::os::unix::fs::PermissionsExt;

use super::*;

fn write_private(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn store(text: &str) -> Result<SecretStore, SecretsLoadError> {
    let dir = tempfile::tempdir().unwrap();
    write_private(dir.path(), "token", "ghp_value_from_file\n");
    let path = write_private(dir.path(), "secrets.toml", text);
    let store = SecretStore::load(&path);
    drop(dir);
    store
}

fn to(host: &str, method: &str, path: &str, tls: bool) -> Destination<'static> {
    Destination {
        host: Box::leak(host.to_string().into_boxed_str()),
        method: Box::leak(method.to_string().into_boxed_str()),
        path: Box::leak(path.to_string().into_boxed_str()),
        tls,
        upgrade: false,
    }
}

const STORE: &str = r#"
[secrets.github]
value_file = "token"
hosts = ["api.github.com", "*.githubusercontent.com"]
format = "bearer"
methods = ["GET", "POST"]
path_prefixes = ["/repos/"]

[secrets.git]
value_file = "token"
hosts = ["github.com"]
format = "basic"
basic_user = "x-access-token"
"#;

#[test]
fn resolves_bound_secrets_and_presents_them() {
    let store = store(STORE).unwrap();
    let set = store.current();
    let github = set
        .resolve("github", to("api.github.com", "get", "/repos/o/r", true))
        .unwrap();
    assert_eq!(github.header_value(), "Bearer ghp_value_from_file");
    assert!(
        set.resolve(
            "github",
            to("raw.githubusercontent.com", "GET", "/repos/x", true)
        )
        .is_ok()
    );
    let git = set
        .resolve(
            "git",
            to("github.com", "POST", "/o/r/git-upload-pack", true),
        )
        .unwrap();
    // base64("x-access-token:ghp_value_from_file")
    assert_eq!(
        git.header_value(),
        "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX3ZhbHVlX2Zyb21fZmlsZQ=="
    );
}

#[test]
fn refuses_outside_the_binding_naming_the_secret_never_the_value() {
    let store = store(STORE).unwrap();
    let set = store.current();
    let cases = [
        (
            to("evil.example", "GET", "/repos/x", true),
            "not bound to host evil.example",
        ),
        (
            to("githubusercontent.com", "GET", "/repos/x", true),
            "not bound to host",
        ),
        (
            to("api.github.com.evil.example", "GET", "/repos/x", true),
            "not bound to host",
        ),
        (
            to("api.github.com", "DELETE", "/repos/x", true),
            "not bound to method DELETE",
        ),
        (
            to("api.github.com", "GET", "/user/keys", true),
            "not bound to this path",
        ),
        (to("api.github.com", "GET", "/repos/x", false), "plaintext"),
        (
            to("api.github.com", "TRACE", "/repos/x", true),
            "TRACE echoes",
        ),
    ];
    for (destination, needle) in cases {
        let err = set.resolve("github", destination).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("ghp_value"), "{err}");
    }
    assert_eq!(
        set.resolve("nope", to("api.github.com", "GET", "/", true))
            .unwrap_err(),
        InjectError::Unknown("nope".into())
    );
}

#[test]
fn values_come_from_the_environment_too() {
    // Setting a variable needs `unsafe` (the workspace forbids it), so read one every process has.
    let home = std::env::var("HOME").expect("HOME is set");
    let store =
        store("[secrets.anthropic]\nvalue_env = \"HOME\"\nhosts = [\"api.anthropic.com\"]\n")
            .unwrap();
    let set = store.current();
    let secret = set
        .resolve(
            "anthropic",
            to("api.anthropic.com", "POST", "/v1/messages", true),
        )
        .unwrap();
    assert_eq!(secret.header_value(), home);
    assert_eq!(format!("{:?}", secret.value), "<redacted>");
}

#[test]
fn refuses_a_store_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SecretStore::load(&path).unwrap_err().to_string();
    assert!(err.contains("chmod go-rwx"), "{err}");
}

#[test]
fn lists_every_bad_secret_at_once() {
    let err = store(
        "[secrets.a]\nhosts = [\"x\"]\n\
         [secrets.b]\nvalue_env = \"CORDON_TEST_UNSET_VARIABLE\"\nhosts = [\"x\"]\n\
         [secrets.c]\nvalue_file = \"token\"\nhosts = []\n\
         [secrets.d]\nvalue_file = \"token\"\nhosts = [\"X.com\"]\n\
         [secrets.e]\nvalue_file = \"token\"\nhosts = [\"x\"]\nformat = \"basic\"\n",
    )
    .err()
    .unwrap()
    .to_string();
    for needle in [
        "secrets.a",
        "secrets.b",
        "secrets.c",
        "secrets.d",
        "secrets.e: format",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn reload_picks_up_rotation_and_keeps_the_last_good_set_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_private(dir.path(), "token", "first");
    let path = write_private(
        dir.path(),
        "secrets.toml",
        "[secrets.t]\nvalue_file = \"token\"\nhosts = [\"h.example\"]\n",
    );
    let store = SecretStore::load(&path).unwrap();
    let value = |store: &SecretStore| {
        store
            .current()
            .resolve("t", to("h.example", "GET", "/", true))
            .unwrap()
            .header_value()
    };
    assert_eq!(value(&store), "first");
    std::fs::write(&token, "second").unwrap();
    store.reload().unwrap();
    assert_eq!(value(&store), "second");
    std::fs::write(&path, "[secrets.t]\nhosts = []\n").unwrap();
    assert!(store.reload().is_err());
    assert_eq!(value(&store), "second");
}

#[test]
fn a_store_directory_merges_its_files_and_refuses_double_declarations() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store.d");
    std::fs::create_dir(&store_dir).unwrap();
    std::fs::set_permissions(&store_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    write_private(&store_dir, "token", "ghp_value_from_file\n");
    write_private(
        &store_dir,
        "github.toml",
        "[secrets.github]\nvalue_file = \"token\"\nhosts = [\"api.github.com\"]\n",
    );
    write_private(
        &store_dir,
        "git.toml",
        "[secrets.git]\nvalue_file = \"token\"\nhosts = [\"github.com\"]\n",
    );
    let store = SecretStore::load(&store_dir).unwrap();
    assert_eq!(store.current().len(), 2);

    // A drop-in added later is picked up by the watcher's check and a reload.
    assert!(!store.changed_on_disk());
    write_private(
        &store_dir,
        "npm.toml",
        "[secrets.npm]\nvalue_file = \"token\"\nhosts = [\"registry.npmjs.org\"]\n",
    );
    assert!(store.changed_on_disk());
    assert_eq!(store.reload().unwrap(), 3);
    assert!(!store.changed_on_disk());

    // The same name in two files is refused, naming both; the last good set stays.
    write_private(
        &store_dir,
        "zz-dup.toml",
        "[secrets.git]\nvalue_file = \"token\"\nhosts = [\"example.com\"]\n",
    );
    let err = store.reload().unwrap_err().to_string();
    assert!(err.contains("secrets.git: declared in both"), "{err}");
    assert!(
        err.contains("git.toml") && err.contains("zz-dup.toml"),
        "{err}"
    );
    assert_eq!(store.current().len(), 3);
    // The failure is remembered: no change, no new attempt.
    assert!(!store.changed_on_disk());

    // An open directory is refused like an open file.
    std::fs::set_permissions(&store_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = SecretStore::load(&store_dir).unwrap_err().to_string();
    assert!(err.contains("chmod go-rwx"), "{err}");
}

#[test]
fn a_rewritten_value_file_is_a_change() {
    let dir = tempfile::tempdir().unwrap();
    write_private(dir.path(), "token", "first-value");
    let path = write_private(
        dir.path(),
        "secrets.toml",
        "[secrets.a]\nvalue_file = \"token\"\nhosts = [\"a.test\"]\n",
    );
    let store = SecretStore::load(&path).unwrap();
    assert!(!store.changed_on_disk());
    // Rotation by atomic rename, as secret volumes do it.
    write_private(dir.path(), "token.new", "second-value");
    std::fs::rename(dir.path().join("token.new"), dir.path().join("token")).unwrap();
    assert!(store.changed_on_disk());
    store.reload().unwrap();
    let set = store.current();
    assert_eq!(set.get("a").unwrap().value.expose(), "second-value");
}

#[test]
fn path_prefixes_judge_only_plain_paths() {
    assert!(plain_path("/repos/acme/app/issues"));
    assert!(plain_path("/repos/acme/"));
    assert!(plain_path("/"));
    for unclear in [
        "/repos/acme/../../evil/x",
        "/repos/acme/./x",
        "/repos/acme/%2e%2e/x",
        "/repos/acme%2F..%2Fevil",
        "/repos//acme/x",
        "/repos/acme\\..\\x",
    ] {
        assert!(!plain_path(unclear), "{unclear}");
    }
    let store = store(STORE).unwrap();
    let set = store.current();
    let err = set
        .resolve(
            "github",
            to("api.github.com", "GET", "/repos/acme/../../user/keys", true),
        )
        .unwrap_err();
    assert!(matches!(err, InjectError::UnclearPath { .. }), "{err}");
}
