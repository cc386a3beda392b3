//! Logging in and out. A failed login answers 401 with the form again and says only that the
//! name or password was wrong; too many failures answer 429.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::super::auth::{Authenticator, LoginRefusal};
use super::super::layout::bare;
use super::super::{Dashboard, Principal};
use super::CsrfForm;

#[derive(serde::Deserialize)]
pub(crate) struct LoginForm {
    user: String,
    password: String,
}

fn form_page(message: Option<&str>) -> Markup {
    bare(
        "Log in",
        html! {
            h1 { "Cordon" }
            @if let Some(message) = message { p.error role="alert" { (message) } }
            form.stack method="post" action="/login" {
                label for="user" { "User" }
                input #user type="text" name="user" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                p { button type="submit" { "Log in" } }
            }
        },
    )
}

/// The answer to a request without a valid login: 401, with the login form for local users,
/// or a note that the authenticating proxy must be passed first.
pub(crate) fn unauthorized(dashboard: &Dashboard) -> Response {
    let body = match dashboard.auth.authenticator {
        Authenticator::LocalUsers(_) => form_page(None),
        Authenticator::Jwt(_) => bare(
            "Not signed in",
            html! {
                h1 { "401" }
                p { "This dashboard is reached through an authenticating proxy; sign in there." }
            },
        ),
    };
    (StatusCode::UNAUTHORIZED, body).into_response()
}

pub(crate) async fn form(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if dashboard.auth.principal(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    match dashboard.auth.authenticator {
        Authenticator::LocalUsers(_) => form_page(None).into_response(),
        Authenticator::Jwt(_) => unauthorized(&dashboard),
    }
}

pub(crate) async fn submit(
    State(dashboard): State<Arc<Dashboard>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    let outcome = dashboard
        .auth
        .login(client.ip(), &form.user, &form.password)
        .await;
    let counted = match &outcome {
        Ok(_) => "ok",
        Err(LoginRefusal::Wrong) => "wrong",
        Err(LoginRefusal::TooMany) => "limited",
        Err(LoginRefusal::NotLocal) => "wrong",
    };
    dashboard
        .admin
        .metrics
        .dashboard_logins
        .with_label_values(&[counted])
        .inc();
    match outcome {
        Ok(cookie) => {
            tracing::info!(user = %form.user, client = %client.ip(), "dashboard login");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(LoginRefusal::Wrong) => {
            tracing::info!(client = %client.ip(), "dashboard login refused");
            (
                StatusCode::UNAUTHORIZED,
                form_page(Some("Wrong user name or password.")),
            )
                .into_response()
        }
        Err(LoginRefusal::TooMany) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "60")],
            form_page(Some("Too many failed logins. Wait a minute and try again.")),
        )
            .into_response(),
        Err(LoginRefusal::NotLocal) => unauthorized(&dashboard),
    }
}

pub(crate) async fn logout(
    State(dashboard): State<Arc<Dashboard>>,
    who: Principal,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return super::super::layout::stale_form(&who);
    }
    let cookie = dashboard.auth.logout(&headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
