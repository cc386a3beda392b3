//! Every session: state, agent, image, started, tool calls, egress; filtered by state and
//! agent; kept live by server-sent events (`/live/sessions`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::super::layout::{frame, time_text};
use super::super::{Dashboard, Principal};
use crate::admin::SessionRow;

/// `?state=&agent=`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct Filters {
    #[serde(default)]
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) agent: String,
}

impl Filters {
    fn keeps(&self, row: &SessionRow) -> bool {
        (self.state.is_empty() || row.state == self.state)
            && (self.agent.is_empty() || row.agent_id.as_deref() == Some(self.agent.as_str()))
    }

    fn query(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("state", &self.state)
            .append_pair("agent", &self.agent)
            .finish()
    }
}

/// The sessions' rows, or why they cannot be read.
pub(crate) async fn rows(dashboard: &Dashboard) -> Result<Vec<SessionRow>, String> {
    let mut rows = crate::admin::rows(&dashboard.admin).await?;
    rows.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    Ok(rows)
}

/// The live part: the table.
pub(crate) fn table(rows: &Result<Vec<SessionRow>, String>, filters: &Filters) -> Markup {
    html! {
        @match rows {
            Err(e) => p.error { "Sessions cannot be read: " (e) },
            Ok(rows) => {
                @let shown: Vec<&SessionRow> = rows.iter().filter(|r| filters.keeps(r)).collect();
                @if shown.is_empty() {
                    p.notice { "No sessions" @if !filters.state.is_empty() || !filters.agent.is_empty() { " match the filters" } "." }
                } @else {
                    table #sessions {
                        thead { tr {
                            th { "Session" } th { "State" } th { "Serving" } th { "Agent" } th { "Image" }
                            th { "Started" } th.num { "Tool calls" } th.num { "Allowed" } th.num { "Denied" } th { "End" }
                        } }
                        tbody {
                            @for r in shown {
                                tr data-session=(r.id) {
                                    td { a href={ "/sessions/" (r.id) } { code { (r.id) } } }
                                    td { (state(&r.state)) }
                                    td { @if r.serving { "yes" } @else { span.muted { "no" } } }
                                    td { (r.agent_id.as_deref().unwrap_or("—")) }
                                    td { (r.image.as_deref().unwrap_or("—")) }
                                    td { (time_text(&r.created_at)) }
                                    td.num { (r.work.as_ref().map_or(0, |w| w.tool_calls)) }
                                    td.num { (r.egress.map_or_else(|| "—".to_string(), |e| e.allowed.to_string())) }
                                    td.num { (r.egress.map_or_else(|| "—".to_string(), |e| e.denied.to_string())) }
                                    td.muted { (r.work.as_ref().and_then(|w| w.end_reason.clone()).unwrap_or_default()) @if let Some(e) = &r.error { " " (e) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A session or sandbox state as a tag.
pub(crate) fn state(state: &str) -> Markup {
    let class = match state {
        "running" => "tag ok",
        "starting" | "warm" => "tag warn",
        "failed" => "tag bad",
        _ => "tag muted",
    };
    html! { span class=(class) { (state) } }
}

pub(crate) async fn page(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    Query(filters): Query<Filters>,
) -> Response {
    let rows = rows(&dashboard).await;
    let mut agents: Vec<String> = rows
        .iter()
        .flatten()
        .filter_map(|r| r.agent_id.clone())
        .collect();
    agents.sort();
    agents.dedup();
    let body = html! {
        form.filters method="get" action="/sessions" {
            div {
                label for="state" { "State" }
                select #state name="state" {
                    option value="" { "any" }
                    @for s in ["running", "starting", "warm", "stopped", "failed", "none"] {
                        option value=(s) selected[filters.state == s] { (s) }
                    }
                }
            }
            div {
                label for="agent" { "Agent" }
                select #agent name="agent" {
                    option value="" { "any" }
                    @for a in &agents { option value=(a) selected[&filters.agent == a] { (a) } }
                }
            }
            button type="submit" { "Filter" }
        }
        div #live data-live={ "/live/sessions?" (filters.query()) } { (table(&rows, &filters)) }
    };
    frame(&who, "/sessions", "Sessions", body).into_response()
}
