//! Sandbox images and workspaces as a user meets them: `image import` of an OCI archive built
//! here (and of bad ones, which leave nothing behind), the host's files invisible from a
//! sandbox on the default image, a workspace quota enforced by the kernel, a missing image
//! refused with what to do, and a config given by a relative path. Root tier (real runsc).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use support::{World, text};

fn controller(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
        .args(args)
        .output()
        .unwrap()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A tar of `(path, entry type, body or link target)`.
fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        // Directories and programs (ELF files) are executable, everything else plain.
        h.set_mode(if kind.is_dir() || body.starts_with(b"\x7fELF") {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if kind.is_symlink() || kind.is_hard_link() {
            h.set_link_name(std::str::from_utf8(body).unwrap()).unwrap();
            h.set_size(0);
        } else {
            h.set_size(body.len() as u64);
        }
        // Raw name bytes: the builder itself would refuse the escaping paths some tests need.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        let data: &[u8] = if kind.is_symlink() || kind.is_hard_link() {
            &[]
        } else {
            body
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `bytes` as zstd, in two frames (as zstd:chunked and concatenating writers make).
fn zstd(bytes: &[u8]) -> Vec<u8> {
    let (a, b) = bytes.split_at(bytes.len() / 2);
    let mut out = zstd::encode_all(a, 3).unwrap();
    out.extend(zstd::encode_all(b, 3).unwrap());
    out
}

/// An OCI archive with `layers` (the first gzipped, the others zstd), named `name`; `corrupt`
/// flips a byte of the first layer after its digest was taken.
fn archive(dir: &Path, file: &str, name: &str, layers: &[Vec<u8>], corrupt: bool) -> PathBuf {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let (blob, media) = if i == 0 {
            (gzip(layer), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (zstd(layer), "application/vnd.oci.image.layer.v1.tar+zstd")
        };
        diff_ids.push(digest(layer));
        layer_descriptors.push(serde_json::json!({
            "mediaType": media, "digest": digest(&blob), "size": blob.len()
        }));
        blobs.push((digest(&blob), blob));
    }
    if corrupt {
        let last = blobs[0].1.len() - 1;
        blobs[0].1[last] ^= 0xff;
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "IMAGE_VAR=from-the-image"], "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": layer_descriptors
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name}
        }]
    }))
    .unwrap();
    blobs.push((digest(&config), config));
    blobs.push((digest(&manifest), manifest));
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion": "1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
    ];
    for (d, bytes) in blobs {
        entries.push((
            format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            bytes,
        ));
    }
    let refs: Vec<(&str, tar::EntryType, &[u8])> = entries
        .iter()
        .map(|(p, b)| (p.as_str(), tar::EntryType::Regular, b.as_slice()))
        .collect();
    let path = dir.join(file);
    std::fs::write(&path, tar_of(&refs)).unwrap();
    path
}

/// Everything under `store` but the lock, as (path, size), to show a refusal changed nothing.
fn snapshot(store: &Path) -> Vec<(String, u64)> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if meta.is_dir() {
                walk(&p, base, out);
            } else if rel != "lock" {
                out.push((rel, meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(store, store, &mut out);
    out.sort();
    out
}

#[test]
fn imports_an_oci_archive_and_refuses_bad_ones_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let base = tar_of(&[
        ("etc/", tar::EntryType::Directory, b""),
        ("etc/os-release", tar::EntryType::Regular, b"ID=test\n"),
        ("etc/old", tar::EntryType::Regular, b"old"),
        ("opt/app/lower", tar::EntryType::Regular, b"l"),
        ("bin", tar::EntryType::Symlink, b"usr/bin"),
    ]);
    let top = tar_of(&[
        ("etc/.wh.old", tar::EntryType::Regular, b""),
        ("opt/app/.wh..wh..opq", tar::EntryType::Regular, b""),
        ("opt/app/upper", tar::EntryType::Regular, b"u"),
        (
            "etc/os-release.link",
            tar::EntryType::Link,
            b"etc/os-release",
        ),
    ]);
    let good = archive(
        dir.path(),
        "good.tar",
        "tiny:1",
        &[base.clone(), top],
        false,
    );
    let out = controller(&["image", "import", "--store", s, good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("image tiny:1 imported"),
        "{out:?}"
    );
    let inspect = controller(&["image", "inspect", "--store", s, "tiny:1"]);
    let image: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let root = PathBuf::from(image["root"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    assert!(
        !root.join("etc/old").exists(),
        "the whiteout removed the lower file"
    );
    assert!(
        !root.join("opt/app/lower").exists(),
        "the opaque directory hid the lower layer"
    );
    assert!(root.join("opt/app/upper").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/os-release.link")).unwrap(),
        "ID=test\n"
    );
    assert_eq!(image["layers"], 2);
    assert!(
        image["env"]
            .to_string()
            .contains("IMAGE_VAR=from-the-image")
    );
    let list = text(&controller(&["image", "list", "--store", s]).stdout);
    assert!(list.contains("tiny:1"), "{list}");

    // Each bad archive is refused with the file and the entry named; the store is unchanged.
    let before = snapshot(&store);
    let not_tar = dir.path().join("not-an-archive.tar");
    std::fs::write(&not_tar, "hello, I am not a tar").unwrap();
    let no_index = dir.path().join("no-index.tar");
    std::fs::write(
        &no_index,
        tar_of(&[("etc/passwd", tar::EntryType::Regular, b"x")]),
    )
    .unwrap();
    let escaping = tar_of(&[("../../escaped", tar::EntryType::Regular, b"x")]);
    let cases: Vec<(PathBuf, &str)> = vec![
        (not_tar.clone(), "not a tar archive"),
        (no_index, "is not part of an OCI image layout"),
        (
            archive(
                dir.path(),
                "corrupt.tar",
                "bad:1",
                std::slice::from_ref(&base),
                true,
            ),
            "is corrupt",
        ),
        (
            archive(dir.path(), "escape.tar", "bad:2", &[escaping], false),
            "\"../../escaped\" has a `..` component",
        ),
        (
            archive(
                dir.path(),
                "device.tar",
                "bad:3",
                &[tar_of(&[("dev/sda", tar::EntryType::Block, b"")])],
                false,
            ),
            "device node",
        ),
    ];
    for (file, expect) in cases {
        let out = controller(&["image", "import", "--store", s, file.to_str().unwrap()]);
        assert!(!out.status.success(), "{file:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{file:?}: {err}");
        assert!(
            err.contains(file.file_name().unwrap().to_str().unwrap()) || err.contains("layer"),
            "{err}"
        );
        assert_eq!(
            snapshot(&store),
            before,
            "{file:?} left something in the store"
        );
    }
    assert!(!dir.path().join("escaped").exists());

    let out = controller(&["image", "rm", "--store", s, "tiny:1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!root.exists(), "the root went with the image");
    let blobs = std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "no blob is left that nothing names");
    let out = controller(&["image", "inspect", "--store", s, "tiny:1"]);
    assert_eq!(out.status.code(), Some(66));
    assert!(text(&out.stderr).contains("no image \"tiny:1\""), "{out:?}");
}

/// A legacy `docker save` archive (no OCI layout) of one image tagged `tag` with one
/// uncompressed layer; `corrupt` changes the layer after the config recorded its diff id.
fn docker_archive(dir: &Path, tag: &str, corrupt: bool) -> PathBuf {
    let layer = tar_of(&[
        ("etc/", tar::EntryType::Directory, b""),
        ("etc/legacy", tar::EntryType::Regular, b"from docker save\n"),
    ]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}
    }))
    .unwrap();
    let config_name = format!("{}.json", digest(&config).trim_start_matches("sha256:"));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": [tag], "Layers": ["0a1b2c/layer.tar"]
    }]))
    .unwrap();
    let mut layer = layer;
    if corrupt {
        let at = layer.len() / 3;
        layer[at] ^= 0x01;
    }
    let archive = tar_of(&[
        ("manifest.json", tar::EntryType::Regular, &manifest),
        (&config_name, tar::EntryType::Regular, &config),
        ("0a1b2c/", tar::EntryType::Directory, b""),
        ("0a1b2c/layer.tar", tar::EntryType::Regular, &layer),
        ("repositories", tar::EntryType::Regular, b"{}"),
    ]);
    let path = dir.join(if corrupt {
        "legacy-bad.tar"
    } else {
        "legacy.tar"
    });
    std::fs::write(&path, archive).unwrap();
    path
}

#[test]
fn imports_a_legacy_docker_save_archive_checking_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let good = docker_archive(dir.path(), "legacy:1", false);
    let out = controller(&["image", "import", "--store", s, good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("image legacy:1 imported"),
        "{out:?}"
    );
    let inspect = controller(&["image", "inspect", "--store", s, "legacy:1"]);
    let image: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let root = PathBuf::from(image["root"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/legacy")).unwrap(),
        "from docker save\n"
    );
    let before = snapshot(&store);
    let bad = docker_archive(dir.path(), "legacy:2", true);
    let out = controller(&["image", "import", "--store", s, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("layer \"0a1b2c/layer.tar\" is corrupt"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before, "a refused import leaves nothing");
}

/// Root-only files on the host, removed when dropped.
struct HostSecrets(Vec<PathBuf>);

impl Drop for HostSecrets {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
            if let Some(parent) = p.parent()
                && parent
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("cordon-test-"))
            {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

#[test]
fn a_sandbox_on_defaults_reads_no_host_file_and_its_workspace_has_a_quota() {
    let pid = std::process::id();
    let places = [
        format!("/etc/cordon-test-{pid}.key"),
        format!("/opt/cordon-test-{pid}/service.env"),
        format!("/var/lib/cordon-test-{pid}/data.db"),
        format!("/srv/cordon-test-{pid}.token"),
        format!("/usr/local/etc/cordon-test-{pid}.pem"),
    ];
    let secrets = HostSecrets(places.iter().map(PathBuf::from).collect());
    for p in &secrets.0 {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(p)
            .unwrap();
        f.write_all(b"host secret").unwrap();
    }
    let mut world = World::new(237, 24, "workspace_max_mb = 16\n");
    world.start("img").unwrap_or_else(|out| panic!("{out:?}"));
    for p in &places {
        let out = world.exec("img", &["cat", p]);
        assert!(!out.status.success(), "{p} is readable inside: {out:?}");
        assert!(!text(&out.stdout).contains("host secret"));
    }
    // The image's own files are there, and the image is the one recorded.
    let out = world.exec("img", &["cat", "/etc/motd"]);
    assert!(text(&out.stdout).contains("default image"), "{out:?}");
    let list = text(&world.controller(&["sandbox", "list"]).stdout);
    assert!(list.contains("default"), "{list}");

    // A write past the workspace quota fails inside with ENOSPC; the tool result says so.
    let out = world.controller(&[
        "sandbox",
        "tool",
        "--session",
        "img",
        "--name",
        "bash",
        "--input",
        r#"{"command": "dd if=/dev/zero of=/workspace/big bs=1M count=32 2>&1"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stdout).contains("No space left on device"),
        "{out:?}"
    );
    let out = world.exec(
        "img",
        &[
            "sh",
            "-c",
            "rm /workspace/big && echo ok > /workspace/small && cat /workspace/small",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "ok\n",
        "after freeing space the workspace works: {out:?}"
    );
    drop(secrets);
}

#[test]
fn a_missing_image_is_refused_and_a_relative_config_path_works() {
    let mut world = World::new(238, 24, "image = \"nosuch\"\n");
    let out = world.start("m").unwrap_err();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(text(&out.stderr).contains("no image \"nosuch\""), "{out:?}");
    assert!(text(&out.stderr).contains("image build"), "{out:?}");
    assert!(!world.netns_exists("m"));

    // From the directory holding cordon.toml, `--config cordon.toml` (state_dir = "state").
    let config = std::fs::read_to_string(world.config()).unwrap();
    std::fs::write(world.config(), config.replace("image = \"nosuch\"\n", "")).unwrap();
    world.sessions.push("rel".into());
    let out = Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
        .current_dir(world.dir.path())
        .args([
            "sandbox",
            "start",
            "--config",
            "cordon.toml",
            "--session",
            "rel",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = world.exec("rel", &["cat", "/etc/motd"]);
    assert!(out.status.success(), "{out:?}");
}

/// An Alpine-style image: no glibc, only a statically linked busybox (Debian's
/// busybox-static). The statically linked agent `make` builds runs there (the dynamic one,
/// `[sandbox] agent`, serves glibc images); the bash tool runs
/// the image's `/bin/sh`, and the file tools work.
#[test]
fn an_image_without_glibc_runs_the_static_agent() {
    let agent = support::agents()
        .1
        .expect("the static agent is not built: run `make test`, which builds it");
    assert!(!cordon_controller::sandbox::bundle::is_dynamic(&agent));
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (make deps installs it)");
    assert!(!cordon_controller::sandbox::bundle::is_dynamic(Path::new(
        "/bin/busybox"
    )));
    let mut entries: Vec<(&str, tar::EntryType, &[u8])> = vec![
        ("bin/", tar::EntryType::Directory, b""),
        ("bin/busybox", tar::EntryType::Regular, &busybox),
        ("etc/", tar::EntryType::Directory, b""),
        ("etc/os-release", tar::EntryType::Regular, b"ID=busybox\n"),
        ("srv/", tar::EntryType::Directory, b""),
        ("tmp/", tar::EntryType::Directory, b""),
    ];
    for tool in ["sh", "cat", "ls", "echo", "kill", "printf", "uname"] {
        let path: &'static str = Box::leak(format!("bin/{tool}").into_boxed_str());
        entries.push((path, tar::EntryType::Symlink, b"busybox"));
    }
    let mut world = World::new(239, 24, "image = \"cordon-test-busybox\"\n");
    let store = world.dir.path().join("images");
    let config = std::fs::read_to_string(world.config()).unwrap();
    let images_line = config
        .lines()
        .find(|l| l.starts_with("images_dir"))
        .unwrap()
        .to_string();
    std::fs::write(
        world.config(),
        config.replace(
            &images_line,
            &format!("images_dir = \"{}\"", store.display()),
        ),
    )
    .unwrap();
    let file = archive(
        world.dir.path(),
        "busybox.tar",
        "cordon-test-busybox",
        &[tar_of(&entries)],
        false,
    );
    let out = controller(&[
        "image",
        "import",
        "--store",
        store.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");

    world.start("musl").unwrap_or_else(|out| panic!("{out:?}"));
    let tool = |name: &str, input: &str| {
        world.controller(&[
            "sandbox",
            "tool",
            "--session",
            "musl",
            "--name",
            name,
            "--input",
            input,
        ])
    };
    let out = tool(
        "bash",
        r#"{"command": "cd /workspace && echo from $(cat /etc/os-release) > made && cat made"}"#,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("from ID=busybox"), "{out:?}");
    let out = tool(
        "write",
        r#"{"file_path": "/workspace/notes.txt", "content": "hi"}"#,
    );
    assert!(out.status.success(), "{out:?}");
    let out = tool("read", r#"{"file_path": "/workspace/notes.txt"}"#);
    assert!(text(&out.stdout).contains("hi"), "{out:?}");
    // A failing command is an error result with its status, as with bash.
    let out = tool("bash", r#"{"command": "ls /nonexistent"}"#);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("exit code"), "{out:?}");
}
