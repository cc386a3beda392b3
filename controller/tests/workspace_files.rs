//! A session's workspace read and written from the host (`crate::files`): what the sandbox left
//! there (links out, FIFOs, `..`) never leads the controller outside it or hangs it, uploads
//! appear whole or not at all and stay within the quota; and the admin API and
//! `cordon-controller files` serve all of it. Runs without root, but for the quota test, which
//! mounts a workspace of its own and says so when it is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cordon_controller::files::{
    EntryKind, FilesError, UPLOAD_PREFIX, Workspace, WorkspacePath, upload_stream,
};
use futures_util::StreamExt;

fn path(text: &str) -> WorkspacePath {
    WorkspacePath::parse(text).unwrap()
}

/// Names of uploads in flight left in `dir` (none may outlive an upload).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(UPLOAD_PREFIX))
        .collect()
}

fn body(parts: &[&'static [u8]]) -> impl futures_util::Stream<Item = Result<Bytes, String>> {
    futures_util::stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    )
}

/// A workspace in a temporary directory (no quota, taking uploads), and a directory beside
/// it that links in the workspace point to.
fn workspace() -> (tempfile::TempDir, tempfile::TempDir, Workspace) {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "outside").unwrap();
    let workspace = Workspace::open(dir.path(), false, true).unwrap();
    (dir, outside, workspace)
}

#[test]
fn links_are_listed_with_their_target_and_never_followed() {
    let (dir, outside, workspace) = workspace();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("real/deeper")).unwrap();

    let listing = workspace.list(&WorkspacePath::root()).unwrap();
    let kind = |name: &str| {
        listing
            .entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.kind.clone())
    };
    assert_eq!(
        kind("passwd"),
        Some(EntryKind::Symlink {
            target: "/etc/passwd".into()
        })
    );
    assert_eq!(
        kind("out"),
        Some(EntryKind::Symlink {
            target: outside.path().display().to_string()
        })
    );
    assert_eq!(kind("real"), Some(EntryKind::Directory));
    assert_eq!(listing.entries[0].name, "real", "directories first");

    for (text, error) in [
        ("passwd", workspace.read(&path("passwd")).unwrap_err()),
        (
            "out/secret",
            workspace.read(&path("out/secret")).unwrap_err(),
        ),
        (
            "real/deeper/secret",
            workspace.read(&path("real/deeper/secret")).unwrap_err(),
        ),
        ("out", workspace.list(&path("out")).unwrap_err()),
        (
            "real/deeper",
            workspace.list(&path("real/deeper")).unwrap_err(),
        ),
    ] {
        assert!(matches!(error, FilesError::Link(_)), "{text}: {error:?}");
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
        assert!(error.to_string().contains("symbolic link"), "{error}");
    }
}

#[test]
fn dot_dot_is_a_bad_path_before_the_kernel_is_asked() {
    for text in ["..", "../etc/passwd", "/a/../../b", "a/./b"] {
        let error = WorkspacePath::parse(text).unwrap_err();
        assert!(matches!(error, FilesError::BadPath(_)), "{text}: {error:?}");
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
    }
}

#[test]
fn a_fifo_is_listed_and_refused_without_hanging_the_reader() {
    let (dir, _outside, workspace) = workspace();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.path().join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let listing = workspace.list(&WorkspacePath::root()).unwrap();
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].kind, EntryKind::Other);

    // On a thread of its own: a read that blocked on the FIFO (no writer ever comes) fails
    // the test instead of hanging it.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(workspace.read(&path("pipe")).map(|(_, len)| len));
    });
    let error = result
        .recv_timeout(Duration::from_secs(5))
        .expect("reading a FIFO hung")
        .unwrap_err();
    assert!(
        matches!(&error, FilesError::NotAFile { kind, .. } if kind == "a FIFO"),
        "{error:?}"
    );
    assert!(error.to_string().contains("only regular files"), "{error}");
}

#[tokio::test]
async fn an_upload_cut_off_leaves_nothing() {
    let (dir, _outside, workspace) = workspace();
    let upload = workspace
        .upload(&WorkspacePath::root(), "cut.bin", false)
        .unwrap();
    let stream = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"the first part")),
        Err("the client went away"),
    ]);
    let error = upload_stream(upload, stream).await.unwrap_err();
    assert!(
        matches!(&error, FilesError::Interrupted(why) if why.contains("went away")),
        "{error:?}"
    );
    assert!(!dir.path().join("cut.bin").exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn an_upload_abandoned_before_its_end_leaves_nothing() {
    // The request's future dropped mid-body (a timeout, a shutdown): not an end of the file.
    let (dir, _outside, workspace) = workspace();
    let upload = workspace
        .upload(&WorkspacePath::root(), "half.bin", false)
        .unwrap();
    let stream =
        futures_util::stream::iter(vec![Ok::<_, String>(Bytes::from_static(b"the first part"))])
            .chain(futures_util::stream::pending());
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        upload_stream(upload, stream),
    )
    .await;
    assert!(abandoned.is_err(), "still waiting for the rest");
    // The writer notices the closed channel on the blocking pool.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !leftovers(dir.path()).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!dir.path().join("half.bin").exists());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn an_upload_replaces_a_file_only_when_asked() {
    let (dir, _outside, workspace) = workspace();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "old").unwrap();

    let error = workspace
        .upload(&WorkspacePath::root(), "notes.txt", false)
        .unwrap_err();
    assert!(matches!(error, FilesError::Exists(_)), "{error:?}");
    assert_eq!(error.status(), http::StatusCode::CONFLICT);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "old");

    let upload = workspace
        .upload(&WorkspacePath::root(), "notes.txt", true)
        .unwrap();
    let written = upload_stream(upload, body(&[b"new ", b"content"]))
        .await
        .unwrap();
    assert_eq!(written, 11);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "new content");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());

    // A directory is never replaced, asked or not, and the message says so.
    std::fs::create_dir(dir.path().join("src")).unwrap();
    for replace in [false, true] {
        let error = workspace
            .upload(&WorkspacePath::root(), "src", replace)
            .unwrap_err();
        assert!(matches!(error, FilesError::IsADirectory(_)), "{error:?}");
        assert!(error.to_string().contains("is a directory"), "{error}");
    }
    assert!(error_names_the_flag());
}

/// The refusal of an existing name says how to replace it, in the CLI's and the page's words.
fn error_names_the_flag() -> bool {
    let text = FilesError::Exists(WorkspacePath::parse("/a").unwrap()).to_string();
    text.contains("--replace") && text.contains("Replace a file of the same name")
}

#[tokio::test]
async fn a_file_made_during_an_upload_is_not_overwritten() {
    let (dir, _outside, workspace) = workspace();
    let upload = workspace
        .upload(&WorkspacePath::root(), "race.txt", false)
        .unwrap();
    // The sandbox wrote the name after the upload started: the rename refuses, atomically.
    std::fs::write(dir.path().join("race.txt"), "the sandbox's").unwrap();
    let error = upload_stream(upload, body(&[b"the upload's"]))
        .await
        .unwrap_err();
    assert!(matches!(error, FilesError::Exists(_)), "{error:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("race.txt")).unwrap(),
        "the sandbox's"
    );
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn an_upload_through_a_linked_directory_is_refused() {
    let (dir, outside, workspace) = workspace();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("real/out")).unwrap();
    for parent in ["out", "real/out"] {
        let error = workspace
            .upload(&path(parent), "dropped", false)
            .unwrap_err();
        assert!(matches!(error, FilesError::Link(_)), "{parent}: {error:?}");
    }
    assert!(!outside.path().join("dropped").exists());
    // A name of the uploads in flight is not taken.
    let error = workspace
        .upload(&WorkspacePath::root(), &format!("{UPLOAD_PREFIX}x"), false)
        .unwrap_err();
    assert!(matches!(error, FilesError::BadPath(_)), "{error:?}");
}

#[tokio::test]
async fn an_uploaded_file_belongs_to_the_workspaces_owner() {
    let (dir, _outside, _) = workspace();
    // As root, the workspace belongs to another user (the sandbox's), as in production.
    let owner = if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(dir.path(), Some(4242), Some(4343)).unwrap();
        (4242, 4343)
    } else {
        let meta = std::fs::metadata(dir.path()).unwrap();
        (meta.uid(), meta.gid())
    };
    let workspace = Workspace::open(dir.path(), false, true).unwrap();
    let upload = workspace
        .upload(&WorkspacePath::root(), "owned", false)
        .unwrap();
    upload_stream(upload, body(&[b"x"])).await.unwrap();
    let meta = std::fs::metadata(dir.path().join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), owner);
}

#[test]
fn an_ended_sessions_workspace_takes_no_upload() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = Workspace::open(dir.path(), false, false).unwrap();
    assert!(
        workspace
            .upload(&WorkspacePath::root(), "late", false)
            .is_err()
    );
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// Removes a test workspace (unmounted, its image deleted) whether or not the test passed.
struct Mounted {
    workspaces: cordon_controller::sandbox::workspace::Workspaces,
    name: String,
    _root: tempfile::TempDir,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.workspaces.remove(&self.name) {
            eprintln!("could not remove the test workspace {}: {e}", self.name);
        }
    }
}

/// Root tier: a workspace with a quota is its own loop-mounted ext4 filesystem.
#[tokio::test]
async fn an_upload_past_the_quota_is_refused_and_leaves_the_rest() {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "skipped an_upload_past_the_quota_is_refused_and_leaves_the_rest: it mounts a \
             workspace with a quota, which needs root"
        );
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("cordon-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mounted = Mounted {
        workspaces: cordon_controller::sandbox::workspace::Workspaces {
            root: root.path().to_path_buf(),
            max_mb: 8,
        },
        name: format!("cordon-test-{}-files-quota", std::process::id()),
        _root: root,
    };
    let dir = mounted.workspaces.attach(&mounted.name).unwrap();
    let workspace = Workspace::open(&dir, true, true).unwrap();
    let usage = workspace.usage();
    assert!(usage.quota);
    assert!(usage.total_bytes <= 8 * 1024 * 1024, "{usage:?}");

    let earlier = workspace
        .upload(&WorkspacePath::root(), "earlier.txt", false)
        .unwrap();
    upload_stream(earlier, body(&[b"kept"])).await.unwrap();

    let big = workspace
        .upload(&WorkspacePath::root(), "big.bin", false)
        .unwrap();
    let chunks = futures_util::stream::iter(
        (0..20).map(|_| Ok::<_, std::convert::Infallible>(Bytes::from(vec![7u8; 1024 * 1024]))),
    );
    let error = upload_stream(big, chunks).await.unwrap_err();
    assert!(matches!(error, FilesError::Full { .. }), "{error:?}");
    assert_eq!(error.status(), http::StatusCode::INSUFFICIENT_STORAGE);
    assert!(error.to_string().contains("workspace_max_mb"), "{error}");
    assert!(!dir.join("big.bin").exists());
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    assert_eq!(
        std::fs::read_to_string(dir.join("earlier.txt")).unwrap(),
        "kept"
    );
    drop(workspace);
}

/// The admin API of a controller served in this process, and a cordon.toml that points the
/// CLI at it. With `workspace_max_mb = 0` the workspaces are plain directories (no root, no
/// mount, no runsc): sessions `sesn_files` and `sesn_ended` (ended) have files. Otherwise
/// session `sesn_quota` has an empty workspace with that quota, mounted at the first call
/// (root), and removed on drop.
struct Served {
    dir: tempfile::TempDir,
    workspaces: PathBuf,
    max_mb: u64,
}

impl Served {
    fn start(max_mb: u64) -> Served {
        let dir = tempfile::Builder::new()
            .prefix("cordon-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        std::fs::write(
            dir.path().join("cordon.toml"),
            format!(
                "[proxy]\ntransparent_listen = \"0.0.0.0:{}\"\nstate_dir = \"state\"\n\
                 [dns]\nlisten = \"0.0.0.0:{}\"\n\
                 [sandbox]\nworkspace_max_mb = {max_mb}\n\
                 [controller]\nadmin_listen = \"{address}\"\n",
                cordon_testkit::free_port(),
                cordon_testkit::free_port()
            ),
        )
        .unwrap();
        let config =
            cordon_controller::config::SandboxConfig::load(&dir.path().join("cordon.toml"))
                .unwrap();
        let workspaces = config.workspace_root.clone();
        let state = config.state_dir.join("state.db");
        let token = cordon_controller::admin::token::ensure(&config.state_dir).unwrap();
        let runtime = cordon_controller::sandbox::Runtime::open(config).unwrap();
        let sessions: &[(&str, &[(&str, &str)])] = if max_mb == 0 {
            &[
                (
                    "sesn_files",
                    &[("notes.txt", "hello\n"), ("src/main.rs", "fn main() {}\n")],
                ),
                ("sesn_ended", &[("report.txt", "done\n")]),
            ]
        } else {
            &[("sesn_quota", &[])]
        };
        for (session, files) in sessions {
            runtime.store().workspace_used(session, session).unwrap();
            std::fs::create_dir_all(workspaces.join(session)).unwrap();
            for (name, content) in *files {
                let file = workspaces.join(session).join(name);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, content).unwrap();
            }
        }
        if max_mb != 0 {
            // Mounted as the session's first sandbox start does, before any file call.
            cordon_controller::sandbox::workspace::Workspaces {
                root: workspaces.clone(),
                max_mb,
            }
            .attach("sesn_quota")
            .unwrap();
        } else {
            runtime.store().workspace_ended("sesn_ended").unwrap();
            std::os::unix::fs::symlink("/etc/passwd", workspaces.join("sesn_files/escape"))
                .unwrap();
        }
        let admin = Arc::new(cordon_controller::admin::Admin {
            store: cordon_controller::store::Store::open(&state).unwrap(),
            metrics: cordon_controller::metrics::ControllerMetrics::new().unwrap(),
            stops: Arc::default(),
            sandbox: None,
            proxy_admin: None,
            runtime: Some(Arc::new(runtime)),
            files_token: Some(token),
            local: None,
            actions: Some(Arc::new(
                cordon_controller::tools::audit::AuditLog::open(&dir.path().join("audit.jsonl"))
                    .unwrap(),
            )),
        });
        // Its own runtime on its own thread: the CLI runs as a child process meanwhile.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, cordon_controller::admin::router(admin)).await
                })
        });
        Served {
            dir,
            workspaces,
            max_mb,
        }
    }

    /// `cordon-controller files <args> --config <cordon.toml>`.
    fn files(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .arg("files")
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join("cordon.toml"))
            .output()
            .unwrap()
    }

    fn local(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.max_mb != 0 {
            let workspaces = cordon_controller::sandbox::workspace::Workspaces {
                root: self.workspaces.clone(),
                max_mb: self.max_mb,
            };
            if let Err(e) = workspaces.remove("sesn_quota") {
                eprintln!("could not remove the test workspace: {e}");
            }
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn fails(out: &Output, code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
}

#[test]
fn the_cli_lists_downloads_and_uploads_through_the_admin_api() {
    let served = Served::start(0);
    let session = ["--session", "sesn_files"];

    let out = served.files(&[&["ls"], &session[..]].concat());
    assert!(out.status.success(), "{out:?}");
    let table = text(&out.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{table}"))
            .to_string()
    };
    assert!(row(" src").starts_with("d "), "{table}");
    assert!(row(" notes.txt").starts_with("- "), "{table}");
    assert!(row(" notes.txt").contains(" 6 "), "{table}");
    assert!(row("escape -> /etc/passwd").starts_with("l "), "{table}");
    assert!(
        table.trim_end().ends_with("of the host filesystem"),
        "{table}"
    );
    let out = served.files(&[&["ls", "/src", "--json"], &session[..]].concat());
    let listing: cordon_controller::files::Listing = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing.path, "/src");
    assert_eq!(listing.entries[0].name, "main.rs");

    // Downloads: to standard output, and to a file through FILE.partial.
    let out = served.files(&[&["get", "/notes.txt"], &session[..]].concat());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "hello\n");
    let copy = served.local("copy.txt");
    let out = served.files(
        &[
            &["get", "src/main.rs", "--output", copy.to_str().unwrap()],
            &session[..],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "fn main() {}\n");
    assert!(!served.local("copy.txt.partial").exists());

    // Uploads: streamed, larger than any default body limit, and back again whole.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    std::fs::write(served.local("big.bin"), &big).unwrap();
    let local = served.local("big.bin");
    let local = local.to_str().unwrap();
    let out = served.files(&[&["put", local, "/src/big.bin"], &session[..]].concat());
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains(&format!("({} bytes)", big.len())));
    assert_eq!(
        std::fs::read(served.workspaces.join("sesn_files/src/big.bin")).unwrap(),
        big
    );
    let back = served.local("back.bin");
    let out = served.files(
        &[
            &["get", "/src/big.bin", "-o", back.to_str().unwrap()],
            &session[..],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&back).unwrap(), big);

    // A file of that name is replaced only when asked, however large the upload.
    let notes = served.workspaces.join("sesn_files/notes.txt");
    let out = served.files(&[&["put", local, "/notes.txt"], &session[..]].concat());
    fails(&out, 70, "/notes.txt already exists");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "hello\n");
    std::fs::write(served.local("new.txt"), "replaced\n").unwrap();
    let new = served.local("new.txt");
    let new = new.to_str().unwrap();
    let out = served.files(&[&["put", new, "/notes.txt", "--replace"], &session[..]].concat());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "replaced\n");

    // Refusals, with the API's reason and the CLI's exit codes.
    let out = served.files(&[&["get", "/escape"], &session[..]].concat());
    fails(&out, 64, "symbolic link");
    let out = served.files(&[&["get", "../etc/passwd"], &session[..]].concat());
    fails(&out, 64, "`..` are not taken");
    let out = served.files(&[&["put", new, "/../x"], &session[..]].concat());
    fails(&out, 64, "`..` are not taken");
    let out = served.files(&[&["put", new, "/"], &session[..]].concat());
    fails(&out, 64, "root directory");
    let out = served.files(&[&["get", "/src"], &session[..]].concat());
    fails(&out, 64, "not a regular file");
    let out = served.files(&[&["get", "/missing"], &session[..]].concat());
    fails(&out, 66, "/missing is not in the workspace");
    let out = served.files(&["ls", "--session", "sesn_nothing"]);
    fails(&out, 66, "has no workspace");
    let out = served.files(&["ls", "--session", "../sesn_files"]);
    fails(&out, 64, "not a session id");
    let out = served.files(&[&["put", "/nonexistent/local"], &["/x"][..], &session[..]].concat());
    fails(&out, 66, "/nonexistent/local");
    assert_eq!(
        leftovers(&served.workspaces.join("sesn_files")),
        Vec::<String>::new()
    );

    // An ended session's workspace is read, never written.
    let ended = ["--session", "sesn_ended"];
    let out = served.files(&[&["get", "/report.txt"], &ended[..]].concat());
    assert_eq!(text(&out.stdout), "done\n", "{out:?}");
    let out = served.files(&[&["put", new, "/late.txt"], &ended[..]].concat());
    fails(&out, 70, "takes no uploads");
    assert!(!served.workspaces.join("sesn_ended/late.txt").exists());

    // Reads and writes through the API are in the controller's audit log.
    let audit = std::fs::read_to_string(served.dir.path().join("audit.jsonl")).unwrap();
    for (action, target) in [
        ("file_download", "sesn_ended:/report.txt"),
        ("file_upload", "sesn_files:"),
    ] {
        assert!(
            audit.lines().any(|l| l.contains("\"kind\":\"admin\"")
                && l.contains(&format!("\"action\":\"{action}\""))
                && l.contains(target)),
            "{action} {target} in {audit}"
        );
    }
}

#[test]
fn a_client_gone_mid_upload_leaves_nothing() {
    use std::io::Write;
    let served = Served::start(0);
    let address = cordon_controller::config::ServiceConfig::admin_address(
        &served.dir.path().join("cordon.toml"),
    )
    .unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "PUT /sessions/sesn_files/files/content?path=/gone.bin HTTP/1.1\r\nhost: {address}\r\n\
         content-length: 1000000\r\n\r\nthe first part"
    )
    .unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let dir = served.workspaces.join("sesn_files");
    assert!(!dir.join("gone.bin").exists());
    assert_eq!(leftovers(&dir), Vec::<String>::new());
}

/// Root tier: the workspace is mounted with its quota on the first call.
#[test]
fn the_cli_says_the_workspace_is_full() {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "skipped the_cli_says_the_workspace_is_full: it mounts a workspace with a quota, \
             which needs root"
        );
        return;
    }
    let served = Served::start(16);
    let session = ["--session", "sesn_quota"];
    std::fs::write(served.local("small.txt"), "kept\n").unwrap();
    let small = served.local("small.txt");
    let out = served.files(
        &[
            &["put", small.to_str().unwrap(), "/small.txt"],
            &session[..],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{out:?}");
    let out = served.files(&[&["ls"], &session[..]].concat());
    assert!(text(&out.stdout).contains("MiB quota"), "{out:?}");

    // Refused part way: the rest of the body is still being sent when the answer comes.
    let big = std::fs::File::create(served.local("big.bin")).unwrap();
    big.set_len(40 * 1024 * 1024).unwrap();
    let big = served.local("big.bin");
    let out = served.files(&[&["put", big.to_str().unwrap(), "/big.bin"], &session[..]].concat());
    fails(&out, 70, "the workspace is full");
    assert!(text(&out.stderr).contains("workspace_max_mb"), "{out:?}");
    let mounted = served.workspaces.join("sesn_quota");
    assert!(!mounted.join("big.bin").exists());
    assert_eq!(leftovers(&mounted), Vec::<String>::new());
    assert_eq!(
        std::fs::read_to_string(mounted.join("small.txt")).unwrap(),
        "kept\n"
    );
}

#[test]
fn the_cli_says_when_serve_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cordon.toml");
    std::fs::write(
        &config,
        format!(
            "[controller]\nadmin_listen = \"127.0.0.1:{}\"\n",
            cordon_testkit::free_port()
        ),
    )
    .unwrap();
    let ls = || {
        Command::new(env!("CARGO_BIN_EXE_cordon-controller"))
            .args(["files", "ls", "--session", "sesn_x", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    // No state yet: no token, which serve would have made.
    fails(&ls(), 69, "serve` makes it when it starts");
    cordon_controller::admin::token::ensure(&dir.path().join("state/controller")).unwrap();
    fails(&ls(), 69, "is `cordon-controller serve` running");
}

#[test]
fn the_file_routes_need_the_admin_token() {
    let served = Served::start(0);
    let admin = cordon_controller::config::ServiceConfig::admin_address(
        &served.dir.path().join("cordon.toml"),
    )
    .unwrap();
    let status = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("http://{admin}/sessions/sesn_files/files?path=/"))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert_eq!(status(&[]), "401", "no token");
    assert_eq!(
        status(&["-H", "authorization: Bearer not-the-token"]),
        "401"
    );
    let token_file = cordon_controller::config::ServiceConfig::admin_token_path(
        &served.dir.path().join("cordon.toml"),
    )
    .unwrap();
    let token = std::fs::read_to_string(token_file).unwrap();
    assert_eq!(
        status(&["-H", &format!("authorization: Bearer {token}")]),
        "200"
    );
    // The rest of the admin API is as it was.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{admin}/healthz"))
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "200");
}
