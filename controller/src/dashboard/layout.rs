//! The frame every page shares (navigation, who is logged in, logout), small shared pieces of
//! markup, and the embedded assets.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::Principal;

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");
const TERMINAL: &str = include_str!("assets/terminal.js");
const XTERM: &str = include_str!("assets/vendor/xterm/xterm.js");
const XTERM_CSS: &str = include_str!("assets/vendor/xterm/xterm.css");
const XTERM_FIT: &str = include_str!("assets/vendor/xterm/addon-fit.js");

/// The pages in the navigation, as (path, label).
const NAV: [(&str, &str); 5] = [
    ("/", "Overview"),
    ("/sessions", "Sessions"),
    ("/policy", "Policy"),
    ("/secrets", "Secrets"),
    ("/webhooks", "Webhooks"),
];

/// A whole page for a logged-in user; `active` is its navigation path.
pub(crate) fn frame(who: &Principal, active: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) script src="/assets/app.js" defer {} }
            body {
                header.top {
                    a.brand href="/" { "Cordon" }
                    nav {
                        @for (path, label) in NAV {
                            a href=(path) class=[(path == active).then_some("active")] { (label) }
                        }
                    }
                    div.who {
                        span { (who.user) }
                        span.role { (who.role.as_str()) }
                        form method="post" action="/logout" {
                            (csrf(who))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// What every page's `<head>` holds.
fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · Cordon" }
        link rel="stylesheet" href="/assets/style.css";
    }
}

/// A page outside the login (the login form itself).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body.bare { main { (body) } }
        }
    }
}

/// The hidden CSRF field every form that changes something carries.
pub(crate) fn csrf(who: &Principal) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf); }
}

/// A refusal as a page (403 for a viewer's operator action, 404, a bad CSRF token).
pub(crate) fn refusal(who: &Principal, status: StatusCode, title: &str, message: &str) -> Response {
    (
        status,
        frame(
            who,
            "",
            title,
            html! { p.notice { (message) } p { a href="/" { "Overview" } } },
        ),
    )
        .into_response()
}

/// The refusal of a form whose CSRF token is missing or wrong (stale, or from elsewhere).
pub(crate) fn stale_form(who: &Principal) -> Response {
    refusal(
        who,
        StatusCode::FORBIDDEN,
        "Refused",
        "The form was stale or not from this dashboard; reload the page and try again.",
    )
}

/// A decision as a coloured tag.
pub(crate) fn decision(decision: &str, would_deny: bool) -> Markup {
    let class = match (decision, would_deny) {
        (_, true) => "tag warn",
        ("allow", _) => "tag ok",
        ("deny", _) => "tag bad",
        _ => "tag warn",
    };
    html! { span class=(class) { (decision) @if would_deny { " (would deny)" } } }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn time_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn time_text(rfc3339: &str) -> String {
    rfc3339.get(..19).unwrap_or(rfc3339).replace('T', " ")
}

pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(crate) async fn terminal_script() -> Response {
    asset("text/javascript; charset=utf-8", TERMINAL)
}

pub(crate) async fn xterm() -> Response {
    asset("text/javascript; charset=utf-8", XTERM)
}

pub(crate) async fn xterm_css() -> Response {
    asset("text/css; charset=utf-8", XTERM_CSS)
}

pub(crate) async fn xterm_fit() -> Response {
    asset("text/javascript; charset=utf-8", XTERM_FIT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}
