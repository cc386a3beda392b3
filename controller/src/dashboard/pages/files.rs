//! Files: browse, download and upload in a session's workspace, while the session lives and
//! after it ended (read only then) until `workspace_retention_hours` remove it. Every path is
//! resolved beneath the workspace by the kernel, symbolic links listed and never followed
//! ([`crate::files`]); uploads are whole or absent, within the workspace's quota. Downloads
//! and uploads are recorded in the controller's audit log with who made them. Viewers browse
//! and download; operators upload.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::super::layout::{csrf, frame, stale_form, time_ms};
use super::super::{Dashboard, Operator, Principal};
use crate::files::{EntryKind, FilesError, Listing, WorkspacePath, shown, upload_stream};

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct At {
    #[serde(default)]
    path: String,
    /// Set by the redirect after an upload: the name just uploaded.
    #[serde(default)]
    uploaded: Option<String>,
}

/// `/sessions/{id}/files?path=...` (URL-encoded).
fn link(id: &str, path: &WorkspacePath, action: &str) -> String {
    let encoded: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("path", &path.to_string())
        .finish();
    format!("/sessions/{id}/files{action}?{encoded}")
}

/// Bytes in the unit that reads best.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What happened, above the listing.
enum Notice {
    /// The file of this name was uploaded into the directory shown.
    Uploaded(String),
    Failed(String),
}

fn listing_markup(who: &Principal, id: &str, listing: &Listing, writable: bool) -> Markup {
    let here = WorkspacePath::parse(&listing.path).unwrap_or_default();
    let usage = listing.usage;
    html! {
        p.muted #usage {
            (size(usage.used_bytes)) " used of " (size(usage.total_bytes))
            @if usage.quota { " (the workspace's quota)" } @else { " (the host filesystem; no quota)" }
        }
        @if !writable {
            p.notice { "The session ended: its workspace is kept for reading until workspace_retention_hours remove it, and takes no uploads." }
        }
        table #files {
            thead { tr { th { "Name" } th.num { "Size" } th { "Modified (UTC)" } } }
            tbody {
                @if !here.is_root() {
                    tr { td { a href=(link(id, &here.parent(), "")) { ".." } } td {} td {} }
                }
                @for entry in &listing.entries {
                    @let path = here.join(&entry.name).unwrap_or_default();
                    tr data-name=(entry.name) {
                        td {
                            @match &entry.kind {
                                EntryKind::Directory => a href=(link(id, &path, "")) { (shown(&entry.name)) "/" },
                                EntryKind::File => a.file href=(link(id, &path, "/download")) download=(entry.name) { (shown(&entry.name)) },
                                EntryKind::Symlink { target } => {
                                    code { (shown(&entry.name)) } " → " code { (shown(target)) } " " span.tag.muted title="links are not followed: they could lead outside the workspace" { "link" }
                                },
                                EntryKind::Other => { code { (shown(&entry.name)) } " " span.tag.muted { "special file" } },
                            }
                        }
                        td.num { @if entry.kind == EntryKind::File { (size(entry.size)) } }
                        td { (time_ms(entry.modified.saturating_mul(1000))) }
                    }
                }
                @if listing.entries.is_empty() {
                    tr { td colspan="3" .muted { "Empty." } }
                }
            }
        }
        @if listing.not_listed > 0 {
            p.muted { (listing.not_listed) " more entries are not listed." }
        }
        @if writable && who.is_operator() {
            h2 { "Upload into " code { "/workspace" @if !here.is_root() { (shown(&here.to_string())) } } }
            // Fields in this order: the token is checked before any byte of the file is taken.
            form.stack #upload method="post" enctype="multipart/form-data" action=(link(id, &here, "/upload")) {
                (csrf(who))
                label { input type="checkbox" name="replace" value="on"; " Replace a file of the same name" }
                input #file type="file" name="file" required;
                p { button type="submit" { "Upload" } }
            }
        }
    }
}

/// The page for directory `path` of session `id`'s workspace, with `notice` above it.
async fn render(
    dashboard: &Dashboard,
    who: &Principal,
    id: &str,
    path: &str,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let opened = match WorkspacePath::parse(path) {
        Ok(here) => dashboard.admin.list_files(id, here).await,
        Err(e) => Err(e),
    };
    let (status, notice, listing) = match opened {
        Ok(listing) => {
            let writable = listing.writable;
            // "Uploaded x." only about a file that is there (the notice comes from the URL).
            let notice = notice.filter(|n| match n {
                Notice::Uploaded(name) => listing
                    .entries
                    .iter()
                    .any(|e| &e.name == name && e.kind == EntryKind::File),
                _ => true,
            });
            (status, notice, Some((listing, writable)))
        }
        Err(e) => (
            if status.is_success() {
                e.status()
            } else {
                status
            },
            Some(notice.unwrap_or(Notice::Failed(e.to_string()))),
            None,
        ),
    };
    let here = WorkspacePath::parse(path).unwrap_or_default();
    let body = html! {
        p { a href={ "/sessions/" (id) } { "← Session " (id) } }
        nav.crumbs {
            @for (label, crumb) in here.ancestors() {
                a href=(link(id, &crumb, "")) { (shown(&label)) } " / "
            }
        }
        @match &notice {
            Some(Notice::Uploaded(name)) => p.notice #outcome { "Uploaded " (shown(name)) "." },
            Some(Notice::Failed(text)) => p.error #outcome { (text) },
            None => {},
        }
        @if let Some((listing, writable)) = &listing { (listing_markup(who, id, listing, *writable)) }
    };
    (
        status,
        frame(who, "/sessions", &format!("Files: {id}"), body),
    )
        .into_response()
}

pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    Path(id): Path<String>,
    Query(at): Query<At>,
) -> Response {
    let notice = at.uploaded.map(Notice::Uploaded);
    render(&dashboard, &who, &id, &at.path, notice, StatusCode::OK).await
}

/// A file of the workspace, as an attachment (never shown inline: its content is the
/// sandbox's, and must not run as the dashboard's page).
pub(crate) async fn download(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    Path(id): Path<String>,
    Query(at): Query<At>,
) -> Response {
    let opened = async {
        let path = WorkspacePath::parse(&at.path)?;
        let (file, length) = dashboard.admin.open_file(&id, path.clone()).await?;
        Ok::<_, FilesError>((path, file, length))
    }
    .await;
    let (path, file, length) = match opened {
        Ok(o) => o,
        Err(e) => {
            let parent = WorkspacePath::parse(&at.path)
                .map(|p| p.parent().to_string())
                .unwrap_or_default();
            let status = e.status();
            return render(
                &dashboard,
                &who,
                &id,
                &parent,
                Some(Notice::Failed(e.to_string())),
                status,
            )
            .await;
        }
    };
    dashboard.record(&who, "file_download", &format!("{id}:{path}"));
    let name = path.name().unwrap_or("file");
    // What was there at the open is sent, no more: the sandbox may still be writing it.
    use tokio::io::AsyncReadExt;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file).take(length));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(value) = HeaderValue::from_str(&disposition(name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    response
}

/// `attachment` with the name twice: plain ASCII for old clients, RFC 5987 for the rest.
fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Why an upload form could not be taken, before anything was written.
fn form_error(text: impl Into<String>) -> FilesError {
    FilesError::BadPath(text.into())
}

pub(crate) async fn upload(
    State(dashboard): State<Arc<Dashboard>>,
    Operator(who): Operator,
    Path(id): Path<String>,
    Query(at): Query<At>,
    mut form: Multipart,
) -> Response {
    let mut token_ok = false;
    let mut replace = false;
    let mut outcome: Option<Result<(WorkspacePath, u64), FilesError>> = None;
    while outcome.is_none() {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                outcome = Some(Err(FilesError::Interrupted(e.body_text())));
                break;
            }
        };
        match field.name() {
            Some("csrf") => {
                token_ok = small_text(field).await.is_some_and(|t| who.csrf_ok(&t));
            }
            Some("replace") => replace = small_text(field).await.is_some_and(|v| v == "on"),
            Some("file") if !token_ok => {
                drop(field);
                drain(&mut form).await;
                return stale_form(&who);
            }
            Some("file") => {
                // Browsers send the bare name; anything before a separator is dropped.
                let name = field
                    .file_name()
                    .unwrap_or_default()
                    .rsplit(['/', '\\'])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let written = async {
                    if name.is_empty() {
                        return Err(form_error("choose a file to upload"));
                    }
                    let target = WorkspacePath::parse(&at.path)?.join(&name)?;
                    let upload = dashboard.admin.start_upload(&id, target, replace).await?;
                    let target = upload.target().clone();
                    let bytes = upload_stream(upload, field).await?;
                    Ok((target, bytes))
                }
                .await;
                if written.is_err() {
                    drain(&mut form).await;
                }
                outcome = Some(written);
            }
            _ => {}
        }
    }
    match outcome {
        None if !token_ok => stale_form(&who),
        None => {
            render(
                &dashboard,
                &who,
                &id,
                &at.path,
                Some(Notice::Failed("choose a file to upload".into())),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Some(Ok((target, bytes))) => {
            let replaced = if replace { ", replacing" } else { "" };
            dashboard.record(
                &who,
                "file_upload",
                &format!("{id}:{target} ({bytes} bytes{replaced})"),
            );
            let mut next = link(&id, &target.parent(), "");
            next.push('&');
            next.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .append_pair("uploaded", target.name().unwrap_or_default())
                    .finish(),
            );
            Redirect::to(&next).into_response()
        }
        Some(Err(e)) => {
            let status = e.status();
            render(
                &dashboard,
                &who,
                &id,
                &at.path,
                Some(Notice::Failed(format!("Nothing was uploaded: {e}"))),
                status,
            )
            .await
        }
    }
}

/// A short form field (the token, the checkbox), or `None` when it is longer than any of them
/// can be: the upload route takes bodies of any size, its small fields must not.
async fn small_text(mut field: axum::extract::multipart::Field<'_>) -> Option<String> {
    const MAX: usize = 256;
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = field.chunk().await {
        if text.len() + chunk.len() > MAX {
            return None;
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).ok()
}

/// Reads the rest of a refused upload's form (for at most half a minute): a browser still
/// sending when the answer comes would otherwise see the connection reset, not the page that
/// says why nothing was uploaded.
async fn drain(form: &mut Multipart) {
    let rest = async {
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), rest).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_the_best_unit() {
        assert_eq!(size(12), "12 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(5 * 1024 * 1024 + 1), "5.0 MiB");
    }

    #[test]
    fn a_download_names_the_file_safely_for_every_client() {
        assert_eq!(
            disposition("report \"final\".txt"),
            "attachment; filename=\"report__final_.txt\"; filename*=UTF-8''report%20%22final%22.txt"
        );
        assert!(
            disposition("résumé\r\n.pdf").contains("filename*=UTF-8''r%C3%A9sum%C3%A9%0D%0A.pdf")
        );
    }
}
