use std::fs;
use std::path::Path;

use super::*;

fn write(root: &Path, path: &str, content: &str) {
    let full = root.join(path);
    fs::create_dir_all(full.parent().unwrap()).unwrap();
    fs::write(full, content).unwrap();
}

const MODULE: &str = "package cordon.egress\nimport rego.v1\ndecision := true\n";

#[test]
fn places_data_files_at_their_directory_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cordon/egress.rego", MODULE);
    write(dir.path(), "data.json", r#"{"top": 1}"#);
    write(dir.path(), "cordon/hosts/data.json", r#"{"allow": ["a"]}"#);
    write(dir.path(), "cordon/hosts/extra/data.yaml", "more: [b, c]\n");
    let bundle = Bundle::load(dir.path()).unwrap();
    let data = serde_json::to_value(&bundle.data).unwrap();
    assert_eq!(data["top"], 1);
    assert_eq!(data["cordon"]["hosts"]["allow"], serde_json::json!(["a"]));
    assert_eq!(
        data["cordon"]["hosts"]["extra"]["more"],
        serde_json::json!(["b", "c"])
    );
}

#[test]
fn skips_hidden_entries_and_unrelated_files_but_reads_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), ".git/x.rego", "not rego at all");
    write(dir.path(), "README.md", "# hi");
    write(
        dir.path(),
        ".manifest",
        r#"{"revision": "r42", "metadata": {"x": 1}}"#,
    );
    let bundle = Bundle::load(dir.path()).unwrap();
    assert_eq!(bundle.modules.len(), 1);
    assert_eq!(bundle.generation_id(), "r42");
}

#[test]
fn generation_id_falls_back_to_a_content_hash_that_tracks_content() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    let first = Bundle::load(dir.path()).unwrap();
    assert!(first.generation_id().starts_with("sha256:"));
    assert_eq!(
        first.generation_id(),
        Bundle::load(dir.path()).unwrap().generation_id()
    );
    write(dir.path(), "p.rego", &format!("{MODULE}\n# changed\n"));
    assert_ne!(
        first.generation_id(),
        Bundle::load(dir.path()).unwrap().generation_id()
    );
}

#[test]
fn data_defined_twice_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), "data.json", r#"{"a": {"b": 1}}"#);
    write(dir.path(), "a/data.json", r#"{"b": 2}"#);
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("data.a.b is defined by more than one"),
        "{err}"
    );
}

#[test]
fn bad_json_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), "x/data.json", "{\n  \"a\": [1,\n}");
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("x/data.json"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn root_data_must_be_an_object() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), "data.json", "[1]");
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("must hold a JSON/YAML object"), "{err}");
}

#[test]
fn data_outside_manifest_roots_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), ".manifest", r#"{"roots": ["cordon"]}"#);
    write(dir.path(), "other/data.json", "{}");
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("outside the manifest roots"), "{err}");

    write(dir.path(), "other/data.json", "{}");
    fs::remove_file(dir.path().join("other/data.json")).unwrap();
    write(dir.path(), "data.json", r#"{"elsewhere": 1}"#);
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("outside the manifest roots"), "{err}");
}

#[test]
fn manifest_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), ".manifest", r#"{"rego_version": 2}"#);
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("rego_version must be 0 or 1"), "{err}");
    write(dir.path(), ".manifest", "{not json");
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(".manifest: not a valid manifest"), "{err}");
}

#[test]
fn a_bundle_without_modules_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data.json", "{}");
    let err = Bundle::load(dir.path()).unwrap_err();
    assert!(matches!(err, BundleLoadError::NoModules { .. }), "{err}");
}

#[test]
fn a_single_rego_file_is_a_bundle_and_other_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "policy.rego", MODULE);
    write(dir.path(), "policy.txt", MODULE);
    let bundle = Bundle::load(&dir.path().join("policy.rego")).unwrap();
    assert_eq!(bundle.modules[0].path, "policy.rego");
    let err = Bundle::load(&dir.path().join("policy.txt")).unwrap_err();
    assert!(
        matches!(err, BundleLoadError::UnsupportedSource(_)),
        "{err}"
    );
    let err = Bundle::load(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, BundleLoadError::Io { .. }), "{err}");
}

fn tar_gz(path: &Path, entries: &[(&str, &str)]) {
    let file = fs::File::create(path).unwrap();
    let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    for (name, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name so the traversal test can build a hostile
        // archive.
        let name_bytes = name.as_bytes();
        header.as_old_mut().name[..name_bytes.len()].copy_from_slice(name_bytes);
        header.set_cksum();
        builder.append(&header, content.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

#[test]
fn reads_opa_bundle_archives() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bundle.tar.gz");
    tar_gz(
        &archive,
        &[
            ("/.manifest", r#"{"revision": "v7", "roots": ["cordon"]}"#),
            ("/cordon/egress/policy.rego", MODULE),
            ("./cordon/hosts/data.json", r#"{"h": ["x"]}"#),
        ],
    );
    let bundle = Bundle::load(&archive).unwrap();
    assert_eq!(bundle.generation_id(), "v7");
    assert_eq!(bundle.modules[0].path, "cordon/egress/policy.rego");
    let data = serde_json::to_value(&bundle.data).unwrap();
    assert_eq!(data["cordon"]["hosts"]["h"], serde_json::json!(["x"]));
}

#[test]
fn refuses_archive_entries_that_escape_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("evil.tgz");
    tar_gz(&archive, &[("../evil.rego", MODULE)]);
    let err = Bundle::load(&archive).unwrap_err();
    assert!(
        matches!(err, BundleLoadError::UnsafeArchivePath { .. }),
        "{err}"
    );
}

#[test]
fn test_modules_are_recognised_by_name() {
    let module = |path: &str| BundleModule {
        path: path.into(),
        source: String::new(),
    };
    assert!(module("cordon/egress_test.rego").is_test());
    assert!(!module("cordon/egress.rego").is_test());
}

fn manifest_error(manifest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), ".manifest", manifest);
    Bundle::load(dir.path()).unwrap_err().to_string()
}

fn request_body(manifest: &str) -> Option<RequestBodyConfig> {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.rego", MODULE);
    write(dir.path(), ".manifest", manifest);
    Bundle::load(dir.path()).unwrap().manifest.request_body
}

#[test]
fn bundles_do_not_read_bodies_unless_the_manifest_asks() {
    assert_eq!(request_body(r#"{"revision": "r1"}"#), None);
    assert_eq!(request_body(r#"{"metadata": {"team": "x"}}"#), None);
    assert_eq!(request_body(r#"{"metadata": {"cordon": {}}}"#), None);
}

#[test]
fn request_body_defaults_and_settings_are_read_from_metadata_cordon() {
    let defaults = request_body(r#"{"metadata": {"cordon": {"request_body": {}}}}"#).unwrap();
    assert_eq!(defaults, RequestBodyConfig::default());
    assert_eq!(defaults.max_bytes, DEFAULT_MAX_BODY_BYTES);
    assert_eq!(defaults.over_limit, OverLimit::Deny);

    let config = request_body(
        r#"{"revision": "r2", "metadata": {"owner": "sec", "cordon": {"request_body": {
            "max_bytes": 16384, "max_decoded_bytes": 65536, "over_limit": "truncate",
            "hosts": ["MCP.example.com", "*.openai.com"]}}}}"#,
    )
    .unwrap();
    assert_eq!(config.max_bytes, 16384);
    assert_eq!(config.max_decoded_bytes, 65536);
    assert_eq!(config.over_limit, OverLimit::Truncate);
    assert!(config.wants("mcp.example.com"));
    assert!(config.wants("api.openai.com"));
    assert!(!config.wants("openai.com"));
    assert!(!config.wants("evilopenai.com"));
    assert!(!config.wants("pypi.org"));
    assert!(defaults.wants("pypi.org"));
    assert_eq!(
        defaults.over_limit_for("POST", "/v1/messages"),
        OverLimit::Deny
    );
    assert_eq!(
        defaults.over_limit_for("POST", "/acme/app.git/git-receive-pack"),
        OverLimit::Truncate
    );

    // A max_bytes above the decoded default raises the decoded default with it.
    let big = request_body(r#"{"metadata": {"cordon": {"request_body": {"max_bytes": 2097152}}}}"#);
    assert_eq!(big.unwrap().max_decoded_bytes, 2097152);
}

#[test]
fn request_body_mistakes_name_the_key_and_the_fix() {
    let err = manifest_error(r#"{"metadata": {"cordon": {"request_body": {"max_byte": 1}}}}"#);
    assert!(
        err.contains("metadata.cordon") && err.contains("max_byte"),
        "{err}"
    );
    assert!(err.contains("max_bytes"), "expected the known keys: {err}");

    let err = manifest_error(r#"{"metadata": {"cordon": {"requestbody": {}}}}"#);
    assert!(err.contains("requestbody"), "{err}");

    let err =
        manifest_error(r#"{"metadata": {"cordon": {"request_body": {"over_limit": "allow"}}}}"#);
    assert!(err.contains("deny") && err.contains("truncate"), "{err}");

    let err = manifest_error(r#"{"metadata": {"cordon": {"request_body": {"max_bytes": 0}}}}"#);
    assert!(
        err.contains("metadata.cordon.request_body.max_bytes must be between 1"),
        "{err}"
    );

    let err = manifest_error(
        r#"{"metadata": {"cordon": {"request_body": {"max_bytes": 8192, "max_decoded_bytes": 4096}}}}"#,
    );
    assert!(
        err.contains("max_decoded_bytes (4096) is less than max_bytes"),
        "{err}"
    );

    let err = manifest_error(
        r#"{"metadata": {"cordon": {"request_body": {"hosts": ["https://x.example/"]}}}}"#,
    );
    assert!(
        err.contains("hosts") && err.contains("is not a host name"),
        "{err}"
    );

    let err = manifest_error(r#"{"metadata": ["not", "an", "object"]}"#);
    assert!(err.contains("metadata must be a JSON object"), "{err}");
}

#[test]
fn keeps_every_file_read_with_its_kind_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cordon/egress.rego", MODULE);
    write(dir.path(), "cordon/egress_test.rego", MODULE);
    write(dir.path(), "cordon/hosts/data.json", r#"{"allow": ["a"]}"#);
    write(dir.path(), ".manifest", r#"{"revision": "r1"}"#);
    write(dir.path(), "README.md", "# not part of the bundle");
    let bundle = Bundle::load(dir.path()).unwrap();
    let listed: Vec<(&str, BundleFileKind, usize)> = bundle
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.kind, f.len()))
        .collect();
    assert_eq!(
        listed,
        [
            (".manifest", BundleFileKind::Manifest, 18),
            ("cordon/egress.rego", BundleFileKind::Module, MODULE.len()),
            (
                "cordon/egress_test.rego",
                BundleFileKind::Test,
                MODULE.len()
            ),
            ("cordon/hosts/data.json", BundleFileKind::Data, 16),
        ]
    );
    // sha256 of the module text, as `sha256sum` prints it.
    let module = &bundle.files[1];
    assert_eq!(module.contents(), MODULE.as_bytes());
    assert_eq!(
        module.sha256,
        "7152917b913c9f692b6cd9a0656a93a86b3f7b9eddbe91b09dbb63f3e7cf7fb3"
    );
    // Its description names the file, never its contents.
    assert!(!format!("{module:?}").contains("package"));
}
