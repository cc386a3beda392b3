//! The web dashboard (docs/DASHBOARD.md): what every session is doing and what leaves it, from
//! one browser tab. Served by `cordon-controller serve` on `[dashboard] listen`, with axum;
//! pages are server-rendered (maud, checked at compile time) with a little JavaScript for live
//! updates (server-sent events), assets embedded in the binary.
//!
//! It reads and changes nothing the CLI and the admin APIs cannot: session rows come from
//! [`crate::admin::rows`], a stop is [`crate::cma::service::SessionStops::stop`], the policy
//! and secrets pages ask the proxy's admin API, egress decisions are the proxy's audit records
//! indexed in the controller's store.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET/POST | /login | anyone | the login form (local users) |
//! | POST | /logout | logged in | ends the login |
//! | GET | / | viewer | overview |
//! | GET | /sessions | viewer | sessions, filtered by `?state=&agent=` |
//! | GET | /sessions/{id} | viewer | one session's timeline: tool calls and their egress |
//! | POST | /sessions/{id}/stop | operator | stop serving the session |
//! | GET | /policy | viewer | the active policy generation and the "try a request" form |
//! | POST | /policy/try | viewer | decide a request without sending it |
//! | POST | /policy/reload | operator | reload the policy |
//! | GET | /secrets | viewer | secret names and bindings, never values |
//! | GET | /webhooks | viewer | recent deliveries and their verification outcome |
//! | GET | /live/... | viewer | server-sent events that re-render a page's live part |

pub mod auth;
pub mod config;
pub mod feed;
pub mod jwt;
mod layout;
mod live;
mod pages;
mod serve;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use auth::{Auth, Authenticator, Principal};
pub use feed::EgressFeed;
pub use serve::{Listening, ServeError, serve};

use crate::admin::Admin;
use crate::cma::deliveries::DeliveryLog;
use crate::tools::audit::AuditLog;

/// What the dashboard reads and acts on.
#[derive(Debug)]
pub struct Dashboard {
    /// The admin API's model: sessions, stops, the store, the proxy's admin API.
    pub admin: Arc<Admin>,
    pub auth: Auth,
    /// The webhook receiver's latest deliveries.
    pub deliveries: Arc<DeliveryLog>,
    /// The proxy's decisions as the controller indexed them, and news of new ones.
    pub egress: EgressFeed,
    /// Where operator actions (stop, reload) are recorded with who did them.
    pub audit: Option<Arc<AuditLog>>,
}

impl Dashboard {
    /// The dashboard `config` describes, over the controller's model.
    pub fn new(
        config: &config::DashboardConfig,
        admin: Arc<Admin>,
        deliveries: Arc<DeliveryLog>,
        egress: EgressFeed,
        audit: Option<Arc<AuditLog>>,
    ) -> Self {
        let authenticator = match &config.auth {
            config::AuthMode::LocalUsers { file } => {
                Authenticator::LocalUsers(users::UsersFile::new(file.clone()))
            }
            config::AuthMode::Jwt(jwt) => Authenticator::Jwt(jwt::JwtVerifier::new(jwt.clone())),
        };
        Self {
            admin,
            auth: Auth::new(
                authenticator,
                config.session_ttl,
                config.secure_cookies(),
                config.login_attempts_per_minute,
            ),
            deliveries,
            egress,
            audit,
        }
    }

    /// Records an operator's action in the controller's audit log and the log.
    fn record(&self, who: &Principal, action: &str, target: &str) {
        tracing::info!(user = %who.user, role = who.role.as_str(), action, target, "dashboard action");
        if let Some(audit) = &self.audit {
            audit.record_action(&who.user, who.role.as_str(), action, target);
        }
    }
}

/// An operator (a viewer is answered 403 with a page saying so).
#[derive(Debug, Clone)]
pub struct Operator(pub Principal);

impl FromRequestParts<Arc<Dashboard>> for Principal {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        dashboard: &Arc<Dashboard>,
    ) -> Result<Self, Response> {
        dashboard
            .auth
            .principal(&parts.headers)
            .ok_or_else(|| pages::login::unauthorized(dashboard))
    }
}

impl FromRequestParts<Arc<Dashboard>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        dashboard: &Arc<Dashboard>,
    ) -> Result<Self, Response> {
        let who = Principal::from_request_parts(parts, dashboard).await?;
        if who.is_operator() {
            Ok(Operator(who))
        } else {
            Err(layout::refusal(
                &who,
                StatusCode::FORBIDDEN,
                "Operators only",
                "Your role is viewer: you can see every page, and an operator can stop \
                 sessions, reload the policy, open terminals and upload files.",
            ))
        }
    }
}

/// The routes.
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/login", get(pages::login::form).post(pages::login::submit))
        .route("/logout", post(pages::login::logout))
        .route("/", get(pages::overview::page))
        .route("/sessions", get(pages::sessions::page))
        .route("/sessions/{id}", get(pages::session::page))
        .route("/sessions/{id}/stop", post(pages::session::stop))
        .route("/policy", get(pages::policy::page))
        .route("/policy/try", post(pages::policy::try_request))
        .route("/policy/reload", post(pages::policy::reload))
        .route("/secrets", get(pages::secrets::page))
        .route("/webhooks", get(pages::webhooks::page))
        .route("/live/overview", get(live::overview))
        .route("/live/sessions", get(live::sessions))
        .route("/live/sessions/{id}", get(live::session))
        .route("/assets/style.css", get(layout::style))
        .route("/assets/app.js", get(layout::script))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(guard))
        .with_state(dashboard)
}

/// Headers every answer carries, and the Origin check on state changes.
///
/// The CSP allows this origin's own scripts and styles only (no inline script), so injected
/// markup could not run even if escaping failed; pages cannot be framed (clickjacking of the
/// stop button); nothing is cached, and no referrer leaves the dashboard's origin (session ids
/// are in URLs).
async fn guard(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let origin = request.headers().get(header::ORIGIN);
        let host = request.headers().get(header::HOST);
        if let Some(origin) = origin {
            let same = match (origin.to_str(), host.and_then(|h| h.to_str().ok())) {
                (Ok(origin), Some(host)) => {
                    origin
                        .strip_prefix("https://")
                        .or(origin.strip_prefix("http://"))
                        == Some(host)
                }
                _ => false,
            };
            if !same {
                return (
                    StatusCode::FORBIDDEN,
                    "cross-origin request refused: the dashboard takes state changes from its own pages only",
                )
                    .into_response();
            }
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it browsers send `Origin: null` on the pages' own form
        // posts, which the Origin check must refuse.
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
