//! One session: its state, a stop button, and its timeline: tool calls newest first, each with
//! the egress decisions made while it ran (from the session's source address at the proxy),
//! and decisions made between calls on their own. Live through `/live/sessions/{id}`.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::super::feed::EgressRow;
use super::super::layout::{csrf, decision, frame, refusal, stale_form, time_ms, time_text};
use super::super::{Dashboard, Operator, Principal};
use super::CsrfForm;
use super::sessions::{rows, state};
use crate::cma::service::StopReason;
use crate::store::ToolCallRecord;

/// Tool calls and decisions shown (the newest); older ones stay in the store.
const CALLS_SHOWN: u32 = 200;
const DECISIONS_SHOWN: u32 = 500;
/// A decision belongs to a call when made between its start and its end plus this much (the
/// proxy stamps a request's record when the response has been sent).
const SLACK_MS: i64 = 500;

enum Item<'a> {
    Call(&'a ToolCallRecord, Vec<&'a EgressRow>),
    Decision(&'a EgressRow),
}

impl Item<'_> {
    fn time(&self) -> i64 {
        match self {
            Item::Call(c, _) => c.started_ms,
            Item::Decision(d) => d.record.time_ms,
        }
    }
}

/// The live part: the timeline.
pub(crate) fn timeline(dashboard: &Dashboard, id: &str) -> Markup {
    let calls = dashboard.admin.store.tool_calls(id, CALLS_SHOWN);
    let decisions = dashboard.egress.for_session(id, DECISIONS_SHOWN);
    let calls = match calls {
        Ok(c) => c,
        Err(e) => return html! { p.error { "Tool calls cannot be read: " (e) } },
    };
    // Images of calls the store no longer has (past its bounds) are simply not shown.
    let images = dashboard
        .admin
        .store
        .tool_image_positions(id)
        .unwrap_or_default();
    let mut taken = vec![false; decisions.len()];
    let mut items: Vec<Item<'_>> = calls
        .iter()
        .map(|c| {
            let end = c.started_ms + c.duration_ms + SLACK_MS;
            let mine = decisions
                .iter()
                .enumerate()
                .filter(|(i, d)| {
                    !taken[*i] && d.record.time_ms >= c.started_ms && d.record.time_ms <= end
                })
                .collect::<Vec<_>>();
            for (i, _) in &mine {
                taken[*i] = true;
            }
            Item::Call(c, mine.into_iter().map(|(_, d)| d).collect())
        })
        .collect();
    items.extend(
        decisions
            .iter()
            .zip(&taken)
            .filter(|(_, t)| !**t)
            .map(|(d, _)| Item::Decision(d)),
    );
    items.sort_by_key(|i| std::cmp::Reverse(i.time()));
    html! {
        @if items.is_empty() {
            p.muted { "No tool calls or egress yet." }
        }
        @for item in &items {
            @match item {
                Item::Call(c, egress) => div.call data-tool-use=(c.tool_use_id) {
                    div.head {
                        span.name { (c.name) }
                        @if c.custom { span.tag.muted { "custom" } }
                        @if c.is_error { span.tag.bad { "error" } } @else { span.tag.ok { "ok" } }
                        span.muted { (c.duration_ms) " ms" }
                        span.when { (time_ms(c.started_ms)) }
                    }
                    pre.mono.input { (c.input_summary) }
                    pre.mono.result { (c.result_excerpt) }
                    @if let Some(positions) = images.get(&c.tool_use_id) {
                        div.images {
                            @for n in positions {
                                @let url = image_url(id, &c.tool_use_id, *n);
                                a href=(url) target="_blank" rel="noopener" {
                                    img src=(url) loading="lazy" alt={ "image " (n + 1) " of " (c.name) };
                                }
                            }
                        }
                    }
                    @if !egress.is_empty() { (decisions_table(egress)) }
                },
                Item::Decision(d) => div.call.loose {
                    div.head { span.muted { "egress outside a tool call" } span.when { (time_ms(d.record.time_ms)) } }
                    (decisions_table(&[*d]))
                },
            }
        }
    }
}

/// Where image `n` of call `call` of session `id` is served.
fn image_url(id: &str, call: &str, n: u32) -> String {
    // Form encoding but for the space, which a path segment keeps as %20 (a `+` would stay
    // a `+`).
    let part = |s: &str| {
        form_urlencoded::byte_serialize(s.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    };
    format!("/sessions/{}/calls/{}/images/{n}", part(id), part(call))
}

/// An image a tool call answered with (a browser screenshot), as kept in the store. Served
/// as the image it says it is (one of the four types CMA takes, checked when it was kept),
/// never sniffed, and sandboxed should it be opened as a document.
pub(crate) async fn image(
    State(dashboard): State<Arc<Dashboard>>,
    _who: Principal,
    Path((id, call, n)): Path<(String, String, u32)>,
) -> Response {
    use axum::http::{HeaderValue, header};
    match dashboard.admin.store.tool_image(&id, &call, n) {
        Ok(Some((media_type, data))) => {
            let mut response = data.into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&media_type) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox; default-src 'none'"),
            );
            response
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "no such image: the call had none, or it is past the store's bounds",
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the image cannot be read: {e}"),
        )
            .into_response(),
    }
}

fn decisions_table(rows: &[&EgressRow]) -> Markup {
    html! {
        table.egress {
            thead { tr { th { "Time" } th { "Method" } th { "Host" } th { "Path" } th { "Decision" } th { "Reason" } th { "Credentials" } } }
            tbody {
                @for d in rows {
                    tr class={ "decision " (d.record.decision.as_str()) } {
                        td { (time_ms(d.record.time_ms)) }
                        td { (d.record.method.as_deref().unwrap_or(d.record.kind.as_str())) }
                        td { code { (d.record.host.as_deref().unwrap_or("")) } }
                        td { code { (d.record.path.as_deref().unwrap_or("")) } }
                        td { (decision(d.record.decision.as_str(), d.record.would_deny)) }
                        td { (d.record.reason) }
                        td { @for c in &d.record.credentials { code { (c) } " " } }
                    }
                }
            }
        }
    }
}

pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    Path(id): Path<String>,
) -> Response {
    let rows = rows(&dashboard).await.unwrap_or_default();
    let row = rows.iter().find(|r| r.id == id);
    // A session the controller keeps no row for (its records ended) may still have a history.
    let known = row.is_some()
        || dashboard
            .admin
            .store
            .tool_calls(&id, 1)
            .is_ok_and(|c| !c.is_empty())
        || !dashboard.egress.for_session(&id, 1).is_empty();
    if !known {
        return refusal(
            &who,
            StatusCode::NOT_FOUND,
            "No such session",
            "The controller has no record of this session.",
        );
    }
    let body = html! {
        @match row {
            None => {
                p.muted { "No sandbox or work item is recorded for this session any more; its history follows." }
                p.actions { a.button #files href={ "/sessions/" (id) "/files" } { "Files" } }
            },
            Some(row) => {
                dl.kv {
                    dt { "State" } dd { (state(&row.state)) @if row.serving { " serving" } }
                    dt { "Agent" } dd { (row.agent_id.as_deref().unwrap_or("—")) }
                    dt { "Image" } dd { (row.image.as_deref().unwrap_or("—")) }
                    dt { "Address" } dd { code { (row.address.as_deref().unwrap_or("—")) } }
                    dt { "Started" } dd { (time_text(&row.created_at)) " UTC" }
                    dt { "Tool calls" } dd { (row.work.as_ref().map_or(0, |w| w.tool_calls)) }
                    dt { "Egress" } dd {
                        @match row.egress { Some(e) => { (e.allowed) " allowed, " (e.denied) " denied" }, None => "—" }
                    }
                    @if let Some(e) = &row.error { dt { "Error" } dd.error { (e) } }
                }
                p.actions {
                    a.button #files href={ "/sessions/" (row.id) "/files" } { "Files" }
                    @if who.is_operator() && row.state == "running" {
                        " " a.button #terminal href={ "/sessions/" (row.id) "/terminal" } { "Open terminal" }
                    }
                }
                @if row.serving && who.is_operator() {
                    form method="post" action={ "/sessions/" (row.id) "/stop" } data-confirm="Stop this session? Its sandbox is torn down." {
                        (csrf(&who))
                        p { button.danger #stop type="submit" { "Stop session" } }
                    }
                }
            }
        }
        h2 { "Timeline" }
        div #live data-live={ "/live/sessions/" (id) } { (timeline(&dashboard, &id)) }
    };
    frame(&who, "/sessions", &format!("Session {id}"), body).into_response()
}

pub(crate) async fn stop(
    State(dashboard): State<Arc<Dashboard>>,
    Operator(who): Operator,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form(&who);
    }
    if dashboard.admin.stops.stop(&id, StopReason::Operator) {
        dashboard.record(&who, "session_stop", &id);
        let path: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        Redirect::to(&format!("/sessions/{path}")).into_response()
    } else {
        refusal(
            &who,
            StatusCode::CONFLICT,
            "Not being served",
            "This session is not being served now, so there is nothing to stop.",
        )
    }
}
