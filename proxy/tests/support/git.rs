//! A git smart-HTTP server over TLS on loopback: `git http-backend` (git's own CGI program)
//! behind a hyper server that demands Basic authorization with one exact credential.
//!
//! The CGI glue is hand-rolled (environment in, `Status:`/headers/body out) because it is a
//! dozen lines and no maintained crate hosts CGI programs; it is test-only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::AsyncWriteExt;

use super::TestPki;

/// Creates a bare repository `name` under `root` with one commit holding `README` = `content`.
pub fn bare_repo(root: &Path, name: &str, content: &str) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("README"), content).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", root)
            .args([
                "-c",
                "user.name=Cordon Test",
                "-c",
                "user.email=test@cordon.invalid",
            ])
            .args(args)
            .output()
            .expect("git is installed by scripts/install-deps.sh");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(root, &["clone", "-q", "--bare", "work", name]);
}

/// Serves the repositories under `root` on a fresh loopback port. Every request must carry
/// `authorization: Basic base64(user:password)`, or gets 401 with a Basic challenge.
pub fn spawn_git_server(pki: &TestPki, root: PathBuf, user: &str, password: &str) -> SocketAddr {
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let state = Arc::new((root, expected));
    super::spawn_tls_server(pki, b"http/1.1", move |tls| {
        let state = state.clone();
        async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(serve(&state.0, &state.1, request).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        }
    })
}

async fn serve(root: &Path, expected: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        return Response::builder()
            .status(401)
            .header("www-authenticate", "Basic realm=\"cordon-test\"")
            .body(Full::new(Bytes::from_static(b"authentication required\n")))
            .unwrap();
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", root)
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "cordon-test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    cgi_response(&output.stdout)
}

/// A CGI program's output (headers, a blank line, the body) as an HTTP response.
fn cgi_response(out: &[u8]) -> Response<Full<Bytes>> {
    let (head_end, body_start) = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, i + 4),
        None => {
            let i = out
                .windows(2)
                .position(|w| w == b"\n\n")
                .unwrap_or(out.len());
            (i, (i + 2).min(out.len()))
        }
    };
    let mut response = Response::builder();
    let mut status = 200;
    for line in String::from_utf8_lossy(&out[..head_end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .status(status)
        .body(Full::new(Bytes::copy_from_slice(&out[body_start..])))
        .unwrap()
}
