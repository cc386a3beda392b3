//! The overview: sessions by state, sandboxes and the warm pool, the proxy's health and policy
//! generation, allowed and denied requests per minute over the last hour, the latest denials.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::super::layout::{decision, frame, time_ms};
use super::super::{Dashboard, Principal};
use super::sessions::rows;
use crate::dashboard::feed::Minute;

/// The live part of the overview.
pub(crate) async fn fragment(dashboard: &Dashboard) -> Markup {
    let rows = rows(dashboard).await;
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    let mut serving = 0;
    for r in rows.iter().flatten() {
        *by_state.entry(r.state.clone()).or_default() += 1;
        serving += usize::from(r.serving);
    }
    let warm = by_state.get("warm").copied().unwrap_or(0);
    let live = by_state.get("running").copied().unwrap_or(0)
        + by_state.get("starting").copied().unwrap_or(0);
    let proxy = match &dashboard.admin.proxy_admin {
        Some(proxy) => proxy
            .ready()
            .await
            .map_err(|e| crate::proxy_admin::refusal_text(&e)),
        None => Err("not configured".into()),
    };
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let rates = dashboard.egress.rates(now_ms - 3_600_000);
    let denials = dashboard.egress.recent_denials(10);
    let (allowed_hour, denied_hour) = rates
        .iter()
        .fold((0, 0), |(a, d), m| (a + m.allowed, d + m.denied));
    let peak = rates
        .iter()
        .map(|m| m.allowed + m.denied)
        .max()
        .unwrap_or(0)
        .max(1);
    html! {
        div.cards {
            div.card #card-sessions {
                div.label { "Sessions" }
                div.value { (serving) " serving" }
                div.sub {
                    (by_state.iter().filter(|(s, _)| *s != "warm").map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(" · "))
                }
            }
            div.card #card-sandboxes {
                div.label { "Sandboxes" }
                div.value { (live) " running" }
                div.sub { (warm) " warm in the pool" }
            }
            div.card #card-proxy {
                div.label { "Proxy" }
                @match &proxy {
                    Ok(generation) => {
                        div.value { span.tag.ok { "ready" } }
                        div.sub { "policy generation " code { (generation) } }
                    }
                    Err(e) => {
                        div.value { span.tag.bad { "unreachable" } }
                        div.sub { (e) }
                    }
                }
            }
            div.card #card-egress {
                div.label { "Egress, last hour" }
                div.value { (allowed_hour) " allowed" }
                div.sub { (denied_hour) " denied" }
            }
        }
        h2 { "Requests per minute, last hour" }
        div.card {
            (chart(&rates, peak))
            div.legend { span.a { "■ allowed" } span.d { "■ denied" } span { "peak " (peak) "/min" } }
        }
        h2 { "Latest denials" }
        @if denials.is_empty() {
            p.muted { "No denied requests recorded." }
        } @else {
            table #denials {
                thead { tr { th { "Time" } th { "Session" } th { "Request" } th { "Decision" } th { "Reason" } } }
                tbody {
                    @for d in &denials {
                        tr {
                            td { (time_ms(d.record.time_ms)) }
                            td { a href={ "/sessions/" (d.record.session) } { code { (d.record.session) } } }
                            td { code { (d.record.method.as_deref().unwrap_or("")) " " (d.record.host.as_deref().unwrap_or("")) (d.record.path.as_deref().unwrap_or("")) } }
                            td { (decision(d.record.decision.as_str(), d.record.would_deny)) }
                            td { (d.record.reason) }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn page(State(dashboard): State<Arc<Dashboard>>, who: Principal) -> Response {
    let body = html! { div #live data-live="/live/overview" { (fragment(&dashboard).await) } };
    frame(&who, "/", "Overview", body).into_response()
}

/// Requests per minute as an SVG bar chart: allowed stacked under denied. Drawn with SVG
/// attributes, not inline styles, which the dashboard's CSP does not allow.
fn chart(rates: &[Minute], peak: u64) -> Markup {
    const HEIGHT: u64 = 80;
    let width = rates.len().max(1) * 10;
    html! {
        svg #rates viewBox={ "0 0 " (width) " " (HEIGHT) } preserveAspectRatio="none" role="img"
            aria-label="allowed and denied requests per minute" {
            @for (i, m) in rates.iter().enumerate() {
                @let allowed = m.allowed * HEIGHT / peak;
                @let denied = m.denied * HEIGHT / peak;
                @let x = i * 10 + 1;
                g {
                    title { (m.allowed) " allowed, " (m.denied) " denied" }
                    @if allowed > 0 {
                        rect.a x=(x) y=(HEIGHT - allowed) width="8" height=(allowed) {}
                    }
                    @if denied > 0 {
                        rect.d x=(x) y=(HEIGHT - allowed - denied) width="8" height=(denied) {}
                    }
                }
            }
        }
    }
}
