//! `cordon-controller files ls|get|put`: a session's workspace through the running `serve`'s
//! admin API (docs/CONTROLLER.md, "Files"), the calls the dashboard's file browser makes too.
//! Downloads and uploads are streamed: no file is held whole in memory on either side.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use clap::Subcommand;
use cordon_controller::files::{EntryKind, Listing};
use cordon_controller::http::{HttpClient, HttpError};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncWriteExt;

use crate::Common;

#[derive(Debug, Subcommand)]
pub(crate) enum FilesAction {
    /// Lists a directory of a session's workspace: type, size, last modified (UTC), name;
    /// symbolic links with their target, never followed.
    Ls {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        session: String,
        /// The directory, from the workspace's root (`/src`).
        #[arg(default_value = "/")]
        path: String,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Downloads a regular file of a session's workspace.
    Get {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        session: String,
        /// The file, from the workspace's root (`/src/main.rs`).
        path: String,
        /// Write it here (a directory: under its own name), through FILE.partial renamed when
        /// whole; standard output without it, or with `-`.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Uploads a local file into a session's workspace as PATH. The file appears whole or not
    /// at all; an upload past the workspace's quota is refused and leaves nothing.
    Put {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        session: String,
        /// The local file.
        local: PathBuf,
        /// The file's path in the workspace (`/data/input.csv`); its directory must exist.
        path: String,
        /// Replace a file of that name.
        #[arg(long)]
        replace: bool,
    },
}

pub(crate) async fn run(action: FilesAction) -> Result<ExitCode, ExitCode> {
    match action {
        FilesAction::Ls {
            common,
            session,
            path,
            json,
        } => ls(&Api::new(&common, &session)?, &path, json).await,
        FilesAction::Get {
            common,
            session,
            path,
            output,
        } => get(&Api::new(&common, &session)?, &path, output).await,
        FilesAction::Put {
            common,
            session,
            local,
            path,
            replace,
        } => put(&Api::new(&common, &session)?, &local, &path, replace).await,
    }
}

/// The running `serve`'s admin address and the admin token its state directory holds.
pub(crate) fn admin_and_token(common: &Common) -> Result<(std::net::SocketAddr, String), ExitCode> {
    let admin =
        cordon_controller::config::ServiceConfig::admin_address(&common.config).map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(64)
        })?;
    let token_file = cordon_controller::config::ServiceConfig::admin_token_path(&common.config)
        .map_err(|e| {
            eprintln!("cordon-controller: {e}");
            ExitCode::from(64)
        })?;
    let token = cordon_controller::admin::token::read(&token_file).map_err(|e| {
        eprintln!(
            "cordon-controller: the admin token {}: {e}\n(`serve` makes it when it starts; \
             run this as the user that runs `serve`, usually root)",
            token_file.display()
        );
        ExitCode::from(69)
    })?;
    Ok((admin, token))
}

/// The running `serve`'s files routes for one session.
struct Api {
    http: HttpClient,
    /// `http://<admin_listen>/sessions/<id>/files`.
    base: String,
    session: String,
    /// The admin token the file routes ask for (`<state_dir>/controller/admin-token`).
    token: String,
}

impl Api {
    fn new(common: &Common, session: &str) -> Result<Self, ExitCode> {
        // Checked here so it can be put in the URL as it is.
        if !cordon_controller::sandbox::names::valid_session_id(session) {
            eprintln!(
                "cordon-controller: --session {session:?} is not a session id (letters, digits, \
                 `_` and `.`, at most 64)"
            );
            return Err(ExitCode::from(64));
        }
        let (admin, token) = admin_and_token(common)?;
        Ok(Self {
            http: HttpClient::default(),
            base: format!("http://{admin}/sessions/{session}/files"),
            session: session.to_string(),
            token,
        })
    }

    fn url(&self, route: &str, path: &str, replace: bool) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("path", path);
        if replace {
            query.append_pair("replace", "true");
        }
        format!("{}{route}?{}", self.base, query.finish())
    }
}

impl Api {
    /// `GET` of `route` for `path`: its URL and the response, a success (a refusal is said
    /// and becomes the exit code).
    async fn get(
        &self,
        route: &str,
        path: &str,
    ) -> Result<(String, http::Response<Incoming>), ExitCode> {
        let url = self.url(route, path, false);
        let response = self
            .http
            .send(http::Method::GET, &url, Some(&self.token), None)
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        Ok((url, response))
    }
}

fn unreachable(e: HttpError) -> ExitCode {
    eprintln!("cordon-controller: {e}\n(is `cordon-controller serve` running with this config?)");
    ExitCode::from(69)
}

/// Says why the API refused (its `{"error"}`), and exits as the rest of the CLI does.
async fn refused(response: http::Response<Incoming>) -> ExitCode {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| {
            format!(
                "the admin API answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
        });
    eprintln!("cordon-controller: {message}");
    ExitCode::from(match status.as_u16() {
        400 => 64,
        404 => 66,
        // `serve` runs no sandboxes.
        503 => 69,
        _ => 70,
    })
}

fn failed(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("cordon-controller: {what}: {e}");
    ExitCode::from(70)
}

async fn ls(api: &Api, path: &str, json: bool) -> Result<ExitCode, ExitCode> {
    let (url, response) = api.get("", path).await?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(&url, e))?
        .to_bytes();
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(ExitCode::SUCCESS);
    }
    let listing: Listing = serde_json::from_slice(&body)
        .map_err(|e| failed("the admin API answered something unexpected", e))?;
    print!("{}", table(&listing));
    Ok(ExitCode::SUCCESS)
}

/// A listing as `files ls` prints it.
fn table(listing: &Listing) -> String {
    let mut out = format!(
        "{:<4} {:>12}  {:<19}  NAME\n",
        "TYPE", "SIZE", "MODIFIED (UTC)"
    );
    for entry in &listing.entries {
        let (kind, name) = match &entry.kind {
            EntryKind::Directory => ("d", printable(&entry.name)),
            EntryKind::File => ("-", printable(&entry.name)),
            EntryKind::Symlink { target } => (
                "l",
                format!("{} -> {}", printable(&entry.name), printable(target)),
            ),
            EntryKind::Other => ("?", printable(&entry.name)),
        };
        out.push_str(&format!(
            "{kind:<4} {:>12}  {:<19}  {name}\n",
            entry.size,
            utc(entry.modified)
        ));
    }
    if listing.not_listed > 0 {
        out.push_str(&format!(
            "... and {} more entries, not listed (at most {} are)\n",
            listing.not_listed,
            cordon_controller::files::MAX_LISTED
        ));
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    out.push_str(&format!(
        "used {:.1} MiB of {:.1} MiB {}\n",
        mib(listing.usage.used_bytes),
        mib(listing.usage.total_bytes),
        if listing.usage.quota {
            "quota"
        } else {
            "of the host filesystem"
        }
    ));
    out
}

/// Seconds since the epoch as `2026-01-31 12:00:00`.
fn utc(seconds: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "-".into(),
    }
}

/// `text` as it may reach the operator's terminal ([`cordon_controller::files::shown`]).
fn printable(text: &str) -> String {
    cordon_controller::files::shown(text)
}

async fn get(api: &Api, path: &str, output: Option<PathBuf>) -> Result<ExitCode, ExitCode> {
    use std::io::IsTerminal;
    if output.is_none() && std::io::stdout().is_terminal() {
        // The file's bytes are the sandbox's: escape sequences in them would reach the terminal.
        eprintln!(
            "cordon-controller: not writing a workspace file to a terminal (its bytes come from \
             the sandbox); give --output FILE, or --output - to write it here anyway"
        );
        return Err(ExitCode::from(64));
    }
    let (_, response) = api.get("/content", path).await?;
    let mut body = response.into_body();
    let Some(output) = output.filter(|o| o != Path::new("-")) else {
        let mut stdout = tokio::io::stdout();
        let written = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(std::io::Error::other)?;
                if let Ok(data) = frame.into_data() {
                    stdout.write_all(&data).await?;
                }
            }
            stdout.flush().await
        }
        .await;
        return match written {
            // A reader that stopped early (`files get ... | head`).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
            Err(e) => Err(failed(&format!("{} of session {}", path, api.session), e)),
            Ok(()) => Ok(ExitCode::SUCCESS),
        };
    };
    let target = if output.is_dir() {
        let name = path.rsplit('/').find(|n| !n.is_empty()).unwrap_or("file");
        output.join(name)
    } else {
        output
    };
    let mut partial = OsString::from(target.as_os_str());
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = async {
        let mut file = tokio::fs::File::create(&partial).await?;
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            // A download cut off (or a file shorter than announced) is an error here.
            let frame = frame.map_err(std::io::Error::other)?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).await?;
                bytes += data.len() as u64;
            }
        }
        file.sync_all().await?;
        tokio::fs::rename(&partial, &target).await?;
        Ok::<u64, std::io::Error>(bytes)
    }
    .await;
    match written {
        Ok(bytes) => {
            println!(
                "{} of session {} written to {} ({bytes} bytes)",
                path,
                api.session,
                target.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(failed(
                &format!(
                    "{} of session {} to {}",
                    path,
                    api.session,
                    target.display()
                ),
                e,
            ))
        }
    }
}

async fn put(api: &Api, local: &Path, path: &str, replace: bool) -> Result<ExitCode, ExitCode> {
    let file = tokio::fs::File::open(local).await.map_err(|e| {
        eprintln!("cordon-controller: {}: {e}", local.display());
        ExitCode::from(66)
    })?;
    let is_file = file.metadata().await.map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        eprintln!(
            "cordon-controller: {} is not a regular file",
            local.display()
        );
        return Err(ExitCode::from(64));
    }
    let body = StreamBody::new(
        tokio_util::io::ReaderStream::new(file).map(|chunk| chunk.map(Frame::data)),
    );
    let url = api.url("/content", path, replace);
    let response = api
        .http
        .send_stream(
            http::Method::PUT,
            &url,
            Some(&api.token),
            "application/octet-stream",
            body,
        )
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(refused(response).await);
    }
    #[derive(serde::Deserialize)]
    struct Uploaded {
        path: String,
        bytes: u64,
    }
    let body: Bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(&url, e))?
        .to_bytes();
    let uploaded: Uploaded = serde_json::from_slice(&body)
        .map_err(|e| failed("the admin API answered something unexpected", e))?;
    println!(
        "{} written to {} of session {} ({} bytes)",
        local.display(),
        uploaded.path,
        api.session,
        uploaded.bytes
    );
    Ok(ExitCode::SUCCESS)
}
