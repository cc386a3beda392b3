//! The active policy generation, a reload, and "try a request": a request decided by the
//! proxy as the chosen session would send it, without sending anything anywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::super::layout::{csrf, decision, frame, stale_form, time_text};
use super::super::{Dashboard, Operator, Principal};
use super::CsrfForm;
use crate::proxy_admin::{Evaluate, Evaluation, refusal_text};

/// Largest header block the form takes (the proxy has its own limits too).
const MAX_HEADERS_TEXT: usize = 16 * 1024;

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct TryForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    headers: String,
}

/// What the page shows under the form.
enum Outcome {
    None,
    Decided(Evaluation),
    Refused(String),
    Reloaded(String),
}

pub(crate) async fn page(State(dashboard): State<Arc<Dashboard>>, who: Principal) -> Response {
    render(&dashboard, &who, &TryForm::default(), Outcome::None).await
}

pub(crate) async fn try_request(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    Form(form): Form<TryForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form(&who);
    }
    let outcome = match (question(&form), &dashboard.admin.proxy_admin) {
        (Err(e), _) => Outcome::Refused(e),
        (Ok(_), None) => Outcome::Refused(
            "this controller runs without the proxy ([sandbox] is not configured)".into(),
        ),
        (Ok(q), Some(proxy)) => match proxy.evaluate(&q).await {
            Ok(evaluation) => Outcome::Decided(evaluation),
            Err(e) => Outcome::Refused(refusal_text(&e)),
        },
    };
    render(&dashboard, &who, &form, outcome).await
}

pub(crate) async fn reload(
    State(dashboard): State<Arc<Dashboard>>,
    Operator(who): Operator,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form(&who);
    }
    let outcome = match &dashboard.admin.proxy_admin {
        None => Outcome::Refused("this controller runs without the proxy".into()),
        Some(proxy) => match proxy.reload().await {
            Ok(generation) => {
                dashboard.record(&who, "policy_reload", &generation);
                Outcome::Reloaded(generation)
            }
            Err(e) => {
                dashboard.record(&who, "policy_reload_refused", "");
                Outcome::Refused(refusal_text(&e))
            }
        },
    };
    render(&dashboard, &who, &TryForm::default(), outcome).await
}

/// The form as the proxy's question; headers are `Name: value` lines.
fn question(form: &TryForm) -> Result<Evaluate, String> {
    if form.session.trim().is_empty() {
        return Err("choose the session whose identity the request is decided under".into());
    }
    if form.url.trim().is_empty() {
        return Err("give the request's URL, e.g. https://api.example.test/v1/items".into());
    }
    if form.headers.len() > MAX_HEADERS_TEXT {
        return Err("the headers are longer than 16 KiB".into());
    }
    let mut headers = BTreeMap::new();
    for (n, line) in form.headers.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {} is not `Name: value`", n + 1));
        };
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Ok(Evaluate {
        session: form.session.trim().to_string(),
        method: if form.method.is_empty() {
            "GET".into()
        } else {
            form.method.trim().to_ascii_uppercase()
        },
        url: form.url.trim().to_string(),
        headers,
        body: None,
    })
}

async fn render(
    dashboard: &Dashboard,
    who: &Principal,
    form: &TryForm,
    outcome: Outcome,
) -> Response {
    let (policy, sessions) = match &dashboard.admin.proxy_admin {
        Some(proxy) => (
            proxy.policy().await.map_err(|e| refusal_text(&e)),
            proxy.registrations().await,
        ),
        None => (
            Err("this controller runs without the proxy".into()),
            Default::default(),
        ),
    };
    let mut sessions: Vec<&String> = sessions.keys().collect();
    sessions.sort();
    let body = html! {
        @match &outcome {
            Outcome::Reloaded(generation) => p.notice role="status" { "Reloaded: generation " code { (generation) } " is serving." },
            Outcome::Refused(message) => p.error role="alert" { (message) },
            _ => {}
        }
        div.split {
            section {
                h2 { "Active generation" }
                @match &policy {
                    Ok(p) => {
                        dl.kv {
                            dt { "Generation" } dd { code { (p.id) } }
                            dt { "Revision" } dd { (p.revision.as_deref().unwrap_or("—")) }
                            dt { "Loaded at" } dd { (time_text(&p.loaded_at)) " UTC" }
                            dt { "Content hash" } dd { code { (p.content_hash) } }
                            dt { "Modules" } dd { (p.modules) }
                            dt { "Query" } dd { code { (p.query) } }
                            @if let Some(bundle) = &p.bundle { dt { "Bundle" } dd { code { (bundle) } } }
                            @if p.request_body.is_some() { dt { "Request bodies" } dd { "read (manifest opt-in)" } }
                        }
                        h2 { "Files" }
                        table {
                            thead { tr { th { "File" } th.num { "Bytes" } th { "SHA-256" } } }
                            tbody {
                                @for f in &p.files {
                                    tr { td { code { (f.path) } } td.num { (f.bytes) } td { code { (f.sha256.get(..16).unwrap_or(&f.sha256)) "…" } } }
                                }
                            }
                        }
                    }
                    Err(e) => p.error { "The proxy did not say: " (e) },
                }
                @if who.is_operator() {
                    form.inline method="post" action="/policy/reload" data-confirm="Reload the policy from its bundle now?" {
                        (csrf(who))
                        p { button #reload type="submit" { "Reload policy" } }
                    }
                }
            }
            section {
                h2 { "Try a request" }
                p.muted { "The proxy decides it as the session would send it: its registration, labels and the active generation. Nothing is sent, resolved or audited." }
                form.stack #try method="post" action="/policy/try" {
                    (csrf(who))
                    label for="session" { "Session" }
                    select #session name="session" required {
                        @if sessions.is_empty() { option value="" { "no session is registered at the proxy" } }
                        @for s in &sessions {
                            option value=(s) selected[*s == &form.session] { (s) }
                        }
                    }
                    label for="method" { "Method" }
                    select #method name="method" {
                        @for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
                            option value=(m) selected[form.method == m] { (m) }
                        }
                    }
                    label for="url" { "URL" }
                    input #url type="text" name="url" value=(form.url) placeholder="https://api.example.test/v1/items" required;
                    label for="headers" { "Headers (one `Name: value` per line)" }
                    textarea #headers name="headers" { (form.headers) }
                    p { button type="submit" { "Decide" } }
                }
                @if let Outcome::Decided(e) = &outcome { (evaluation(e)) }
            }
        }
    };
    frame(who, "/policy", "Policy", body).into_response()
}

fn evaluation(e: &Evaluation) -> Markup {
    html! {
        div #decision.card {
            div.label { "Decision" }
            div.value { (decision(&e.decision, e.would_deny)) }
            dl.kv {
                dt { "Reason" } dd { (e.reason) }
                dt { "Reason class" } dd { code { (e.reason_class) } }
                @if let Some(status) = e.status { dt { "Status" } dd { (status) } }
                dt { "Generation" } dd { code { (e.policy_generation) } }
                @if !e.credentials.is_empty() {
                    dt { "Would inject" } dd { @for c in &e.credentials { code { (c) } " " } }
                }
                @for (key, value) in &e.other {
                    dt { (key) } dd { code { (value) } }
                }
            }
        }
    }
}
