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
//! | GET | /sessions/{id}/terminal | operator | a shell in the session's running sandbox (xterm.js) |
//! | GET | /sessions/{id}/terminal/socket | operator | its WebSocket, relayed to the sandbox agent's PTY |
//! | GET | /sessions/{id}/files?path= | viewer | a directory of the session's workspace |
//! | GET | /sessions/{id}/files/download?path= | viewer | a file of it, as an attachment |
//! | POST | /sessions/{id}/files/upload?path= | operator | a file into that directory (multipart) |
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
    /// The `Host` values answered; `None`: any (TLS, on the listener or in front, already
    /// ties the name to a certificate).
    allowed_hosts: Option<Vec<String>>,
    /// `https` when the browser reaches the dashboard over TLS.
    scheme: &'static str,
    /// Live streams open per user.
    streams: live::Streams,
    /// Renders every live overview and sessions page shares.
    shared_overview: live::Shared<String>,
    shared_rows: live::Shared<Result<Vec<crate::admin::SessionRow>, String>>,
}

impl Dashboard {
    /// The dashboard `config` describes, over the controller's model, listening on `bound`.
    pub fn new(
        config: &config::DashboardConfig,
        bound: std::net::SocketAddr,
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
        // On plain loopback HTTP a DNS-rebound name (evil.test resolving to 127.0.0.1) would
        // make another site same-origin with the dashboard: only its own addresses are answered.
        let allowed_hosts = matches!(config.transport, config::Transport::Loopback).then(|| {
            let port = bound.port();
            let mut hosts = vec![
                bound.to_string(),
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ];
            hosts.dedup();
            hosts
        });
        Self {
            allowed_hosts,
            scheme: if config.secure_cookies() {
                "https"
            } else {
                "http"
            },
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
            streams: live::Streams::default(),
            shared_overview: live::Shared::default(),
            shared_rows: live::Shared::default(),
        }
    }

    /// Whether a request comes from the dashboard's own pages: its `Origin` is this scheme
    /// and this `Host` (browsers send `Origin` on form posts and WebSocket handshakes).
    pub fn same_origin(&self, headers: &axum::http::HeaderMap) -> bool {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        match (origin, host) {
            (Some(origin), Some(host)) => {
                origin
                    .strip_prefix(self.scheme)
                    .and_then(|o| o.strip_prefix("://"))
                    == Some(host)
            }
            _ => false,
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
        .route(
            "/sessions/{id}/calls/{call}/images/{n}",
            get(pages::session::image),
        )
        .route("/sessions/{id}/terminal", get(pages::terminal::page))
        .route(
            "/sessions/{id}/terminal/socket",
            get(pages::terminal::socket),
        )
        .route("/sessions/{id}/files", get(pages::files::page))
        .route("/sessions/{id}/files/download", get(pages::files::download))
        .route(
            "/sessions/{id}/files/upload",
            // Bounded by the workspace's quota, not by a request size.
            post(pages::files::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
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
        .route("/assets/terminal.js", get(layout::terminal_script))
        .route("/assets/xterm.js", get(layout::xterm))
        .route("/assets/xterm.css", get(layout::xterm_css))
        .route("/assets/addon-fit.js", get(layout::xterm_fit))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            guard,
        ))
        .with_state(dashboard)
}

/// Headers every answer carries, and the Origin check on state changes.
///
/// The CSP allows this origin's own scripts and styles only (no inline script), so injected
/// markup could not run even if escaping failed; pages cannot be framed (clickjacking of the
/// stop button); nothing is cached, and no referrer leaves the dashboard's origin (session ids
/// are in URLs).
async fn guard(
    axum::extract::State(dashboard): axum::extract::State<Arc<Dashboard>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(allowed) = &dashboard.allowed_hosts {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if !host.is_some_and(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h))) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this dashboard answers to {} only (a guard against DNS rebinding)",
                    allowed.join(", ")
                ),
            )
                .into_response();
        }
    }
    if request.method() != Method::GET
        && request.method() != Method::HEAD
        && request.headers().contains_key(header::ORIGIN)
        && !dashboard.same_origin(request.headers())
    {
        return (
            StatusCode::FORBIDDEN,
            "cross-origin request refused: the dashboard takes state changes from its own pages only",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // A page may set a policy of its own (the terminal's allows inline styles).
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ));
    for (name, value) in [
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
