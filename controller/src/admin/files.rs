//! `/sessions/{id}/files`: a session's workspace through the admin API, with the calls the
//! dashboard's file browser makes ([`crate::files`]), so neither reads or changes more than
//! the other.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::{Admin, answer};
use crate::files::{FilesError, Listing, Upload, WorkspacePath, upload_stream};

impl Admin {
    /// The directory at `path` in session `id`'s workspace.
    pub async fn list_files(&self, id: &str, path: WorkspacePath) -> Result<Listing, FilesError> {
        let workspace = self.workspace(id).await?;
        blocking(path.clone(), move || workspace.list(&path)).await
    }

    /// The regular file at `path` in session `id`'s workspace, open, with its length.
    pub async fn open_file(
        &self,
        id: &str,
        path: WorkspacePath,
    ) -> Result<(std::fs::File, u64), FilesError> {
        let workspace = self.workspace(id).await?;
        blocking(path.clone(), move || workspace.read(&path)).await
    }

    /// Starts writing the file at `path` (its parent is the directory it goes into) in session
    /// `id`'s workspace; [`upload_stream`] fills it. Refused once the session ended.
    pub async fn start_upload(
        &self,
        id: &str,
        path: WorkspacePath,
        replace: bool,
    ) -> Result<Upload, FilesError> {
        let Some(name) = path.name().map(str::to_string) else {
            return Err(FilesError::BadPath(
                "`/` is the workspace's root directory: give the path of the file to write".into(),
            ));
        };
        // An ended session's workspace refuses it (FilesError::Ended).
        let workspace = self.workspace(id).await?;
        blocking(path.clone(), move || {
            workspace.upload(&path.parent(), &name, replace)
        })
        .await
    }
}

/// The admin token, or 401 saying where it is ([`super::token`]).
pub(super) async fn token_only(
    State(admin): State<Arc<Admin>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match &admin.files_token {
        Some(token) if super::token::carried(request.headers(), token) => next.run(request).await,
        _ => answer(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "this route needs the admin token: \
                `Authorization: Bearer <token>` with the content of \
                <state_dir>/controller/admin-token (mode 0600; `cordon-controller files`, \
                `agents` and `run` read it)"}),
        ),
    }
}

/// File system work on the blocking pool: a listing or an open can wait on a slow disk.
async fn blocking<T: Send + 'static>(
    path: WorkspacePath,
    work: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Result<T, FilesError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(FilesError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// The query of every files route: `?path=/src/main.rs[&replace=true]`.
#[derive(Debug, Deserialize)]
pub(super) struct At {
    /// The root when absent.
    #[serde(default)]
    path: String,
    /// Uploads only: replace a file of that name.
    #[serde(default)]
    replace: bool,
}

/// The path and `replace` asked for, or why the query is refused (a 400, [`bad_request`]).
fn parse(query: Result<Query<At>, QueryRejection>) -> Result<(WorkspacePath, bool), String> {
    let Query(at) = query.map_err(|e| format!("bad query: {}", e.body_text()))?;
    let path = WorkspacePath::parse(&at.path).map_err(|e| e.to_string())?;
    Ok((path, at.replace))
}

fn bad_request(message: String) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": message }),
    )
}

fn refuse(error: &FilesError) -> Response {
    let status = error.status();
    if status.is_server_error() && status != StatusCode::INSUFFICIENT_STORAGE {
        tracing::warn!(error = %error, "workspace files on the admin API");
    }
    answer(status, serde_json::json!({"error": error.to_string()}))
}

/// `GET /sessions/{id}/files?path=P`: the directory's listing.
pub(super) async fn list(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    query: Result<Query<At>, QueryRejection>,
) -> Response {
    let (path, _) = match parse(query) {
        Ok(at) => at,
        Err(message) => return bad_request(message),
    };
    match admin.list_files(&id, path).await {
        Ok(listing) => (StatusCode::OK, axum::Json(listing)).into_response(),
        Err(e) => refuse(&e),
    }
}

/// `GET /sessions/{id}/files/content?path=P`: the file's bytes, streamed.
pub(super) async fn download(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    query: Result<Query<At>, QueryRejection>,
) -> Response {
    let (path, _) = match parse(query) {
        Ok(at) => at,
        Err(message) => return bad_request(message),
    };
    let (file, len) = match admin.open_file(&id, path.clone()).await {
        Ok(open) => open,
        Err(e) => return refuse(&e),
    };
    tracing::info!(session = %id, path = %path, bytes = len, "workspace file downloaded on the admin API");
    if let Some(actions) = &admin.actions {
        actions.record_admin_action("file_download", &format!("{id}:{path} ({len} bytes)"));
    }
    // The sandbox may still be writing it: what was there at the open is sent, no more (a file
    // cut shorter meanwhile ends the response early, which the client sees as an error).
    let file = tokio::fs::File::from_std(file).take(len);
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, "application/octet-stream".to_string()),
            (CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response()
}

/// `PUT /sessions/{id}/files/content?path=P[&replace=true]`: the request body, whole, as the
/// file at P. The body is streamed into the workspace; only its quota limits it.
pub(super) async fn upload(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    query: Result<Query<At>, QueryRejection>,
    body: Body,
) -> Response {
    let (path, replace) = match parse(query) {
        Ok(at) => at,
        Err(message) => return bad_request(message),
    };
    let upload = match admin.start_upload(&id, path.clone(), replace).await {
        Ok(upload) => upload,
        Err(e) => {
            tracing::info!(session = %id, path = %path, error = %e, "workspace upload refused on the admin API");
            return refuse(&e);
        }
    };
    let mut data = body.into_data_stream();
    match upload_stream(upload, &mut data).await {
        Ok(bytes) => {
            tracing::info!(session = %id, path = %path, bytes, replace, "workspace file uploaded on the admin API");
            if let Some(actions) = &admin.actions {
                let replaced = if replace { ", replacing" } else { "" };
                actions.record_admin_action(
                    "file_upload",
                    &format!("{id}:{path} ({bytes} bytes{replaced})"),
                );
            }
            answer(
                StatusCode::CREATED,
                serde_json::json!({"path": path.to_string(), "bytes": bytes}),
            )
        }
        Err(e) => {
            tracing::info!(session = %id, path = %path, error = %e, "workspace upload failed on the admin API");
            drain(&mut data).await;
            refuse(&e)
        }
    }
}

/// What is read and dropped of an upload's body after it failed part way (a full quota).
const MAX_DRAINED: u64 = 1024 * 1024 * 1024;

/// Reads the rest of a failed upload's body (at most [`MAX_DRAINED`]): a client still sending
/// when the answer comes would otherwise see the connection reset (the server closing on
/// unread bytes), not the answer saying why.
async fn drain(data: &mut axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let mut left = MAX_DRAINED;
    while let Some(Ok(chunk)) = data.next().await {
        left = left.saturating_sub(chunk.len() as u64);
        if left == 0 {
            break;
        }
    }
}
