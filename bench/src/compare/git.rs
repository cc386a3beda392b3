//! Scenario 10: `git clone` of a 50 MiB repository over HTTPS, as agents fetch code. The forge is
//! `git http-backend` (git's own smart-HTTP CGI program) behind a fake upstream that demands
//! one exact Basic credential. Through Cordon the client holds only a placeholder, which the
//! proxy swaps for the real token (`[secrets.git]` in bench/peers/cordon/secrets.toml); direct
//! and the peers send the real token themselves, since they have nothing to swap it with.
//!
//! The repository is generated deterministically (seeded bytes, fixed names and dates, so the
//! same commit ids every time) and kept under `~/.cache/cordon/bench-git/<key>/`, the key being
//! a hash of everything that decides its content.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::BytesMut;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pki::Pki;
use super::scenarios::GIT_HOST;
use super::upstream::{self, Body, Upstream};
use crate::load::Route;

pub(crate) const REPO_MIB: u64 = 50;
/// Files of 1 MiB each, spread over this many commits.
const COMMITS: u64 = 5;
const SEED: u64 = 0x636f_7264_6f6e;
/// Changes whenever the generator below would produce other content.
const GENERATOR: &str = "v1";
/// The Basic user git hosts expect with a token, and the token the forge wants.
pub(crate) const GIT_USER: &str = "x-access-token";
pub(crate) const GIT_TOKEN: &str = "bench-git-token";

/// The cached bare repository, generated first if it is not there.
pub(crate) fn repository(cache: &Path) -> anyhow::Result<PathBuf> {
    let recipe = format!("{GENERATOR} mib={REPO_MIB} commits={COMMITS} seed={SEED}");
    let key = recipe.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = cache.join("bench-git").join(format!("{key:016x}"));
    let repo = dir.join("repo.git");
    if dir.join("complete").is_file() {
        return Ok(repo);
    }
    eprintln!(
        "cordon-bench: generating the {REPO_MIB} MiB git repository in {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).context("creating the repository cache")?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).context("work tree")?;
    git(&work, &["init", "-q", "-b", "main"])?;
    let mut state = SEED;
    for commit in 0..COMMITS {
        for file in 0..REPO_MIB / COMMITS {
            // Incompressible (xorshift) bytes, so the pack is as large as the repository.
            let mut bytes = Vec::with_capacity(1 << 20);
            for _ in 0..(1 << 20) / 8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.extend_from_slice(&state.to_le_bytes());
            }
            std::fs::write(work.join(format!("data-{commit}-{file}.bin")), bytes)
                .context("writing the repository")?;
        }
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", &format!("commit {commit}")])?;
    }
    git(
        &dir,
        &["clone", "-q", "--bare", "--no-local", "work", "repo.git"],
    )?;
    git(&repo, &["repack", "-a", "-d", "-q"])?;
    std::fs::remove_dir_all(&work).context("removing the work tree")?;
    std::fs::write(dir.join("complete"), recipe).context("marking the cache complete")?;
    Ok(repo)
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .args([
            "-c",
            "user.name=Cordon Bench",
            "-c",
            "user.email=bench@cordon.invalid",
        ])
        .args(args)
        .output()
        .context("running git (scripts/bench-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Starts the forge serving `repo` as `/repo.git`.
pub(crate) async fn start(pki: &Pki, repo: PathBuf) -> anyhow::Result<Upstream> {
    let root = repo
        .parent()
        .context("the repository has a parent")?
        .to_path_buf();
    let expected = basic(GIT_USER, GIT_TOKEN);
    upstream::serve(pki, move |request: Request<Incoming>| {
        let (root, expected) = (root.clone(), expected.clone());
        async move {
            let authorized = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == expected.as_bytes());
            if !authorized {
                let mut response = upstream::fixed(401, "authentication required\n");
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Basic realm=\"cordon-bench\""),
                );
                return response;
            }
            cgi(&root, request)
                .await
                .unwrap_or_else(|_| upstream::fixed(500, "http-backend failed\n"))
        }
    })
    .await
}

/// Runs `git http-backend` for one request; its output is streamed back as it is produced.
async fn cgi(root: &Path, request: Request<Incoming>) -> anyhow::Result<Response<Body>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.context("request body")?.to_bytes();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut child = cordon_testkit::git_http_backend(
        root,
        parts.method.as_str(),
        uri,
        header,
        body.len(),
        GIT_USER,
    )
    .kill_on_drop(true)
    .spawn()
    .context("git http-backend")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    // The CGI head: lines up to a blank one.
    let mut read = BytesMut::with_capacity(64 * 1024);
    let head_end = loop {
        if let Some(end) = cordon_testkit::cgi_head_end(&read) {
            break end;
        }
        if stdout.read_buf(&mut read).await.context("CGI output")? == 0 {
            bail!("http-backend ended before its head");
        }
    };
    let head = read.split_to(head_end.1);
    let (status, headers) = cordon_testkit::cgi_head(&head[..head_end.0]);
    let mut response = Response::builder();
    for (name, value) in headers {
        response = response.header(name, value);
    }
    let first = read.freeze();
    let rest = futures_util::stream::unfold(
        (Some(first), stdout, child),
        |(first, mut stdout, child)| async move {
            if let Some(first) = first.filter(|b| !b.is_empty()) {
                return Some((Ok(Frame::data(first)), (None, stdout, child)));
            }
            let mut buf = BytesMut::with_capacity(64 * 1024);
            match stdout.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(Frame::data(buf.freeze())), (None, stdout, child))),
                Err(e) => Some((Err(e), (None, stdout, child))),
            }
        },
    );
    let body: Body = BodyExt::boxed(StreamBody::new(rest));
    response
        .status(status)
        .body(body)
        .context("building the response")
}

/// How a clone reaches the forge and what it holds.
pub(crate) struct CloneRoute<'a> {
    pub route: Route,
    pub port: u16,
    /// PEM roots git verifies the forge's certificate (or the interception CA's) against.
    pub roots: &'a Path,
    /// The password git sends: a placeholder through Cordon, the token otherwise.
    pub password: &'a str,
}

/// One `git clone` into a fresh directory; how long it took.
pub(crate) async fn clone_once(via: &CloneRoute<'_>, scratch: &Path) -> anyhow::Result<Duration> {
    let dest = scratch.join("clone");
    let _ = std::fs::remove_dir_all(&dest);
    let mut command = tokio::process::Command::new("git");
    command
        .env("HOME", scratch)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSL_CAINFO", via.roots)
        .args(["-c", "credential.helper=", "-c", "protocol.version=2"])
        .arg("-c")
        .arg(format!(
            "http.extraHeader=Authorization: {}",
            basic(GIT_USER, via.password)
        ));
    match via.route {
        Route::Connect(proxy) => {
            command.arg("-c").arg(format!("http.proxy=http://{proxy}"));
        }
        // Straight to the forge: the name resolves to it without DNS.
        Route::Direct(address) => {
            command.arg("-c").arg(format!(
                "http.curloptResolve={GIT_HOST}:{}:{}",
                via.port,
                address.ip()
            ));
        }
    }
    command
        .args(["clone", "-q"])
        .arg(format!("https://{GIT_HOST}:{}/repo.git", via.port))
        .arg(&dest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = command.output().await.context("running git clone")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "git clone failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let _ = std::fs::remove_dir_all(&dest);
    Ok(took)
}

/// The size of the repository's packs, MiB: what a clone transfers.
pub(crate) fn pack_mib(repo: &Path) -> f64 {
    let packs = std::fs::read_dir(repo.join("objects/pack"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
        .unwrap_or(0);
    packs as f64 / (1024.0 * 1024.0)
}
