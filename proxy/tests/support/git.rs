//! A git smart-HTTP server over TLS on loopback: `git http-backend` (git's own CGI program)
//! behind a hyper server that demands Basic authorization with one exact credential.
//!
//! The CGI glue is hand-rolled (environment in, `Status:`/headers/body out) because it is a
//! dozen lines and no maintained crate hosts CGI programs; it is test-only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut child = cordon_testkit::git_http_backend(
        root,
        parts.method.as_str(),
        uri,
        header,
        body.len(),
        "cordon-test",
    )
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let out = &output.stdout;
    let (head_end, body_start) =
        cordon_testkit::cgi_head_end(out).unwrap_or((out.len(), out.len()));
    let (status, headers) = cordon_testkit::cgi_head(&out[..head_end]);
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::copy_from_slice(&out[body_start..])))
        .unwrap()
}
