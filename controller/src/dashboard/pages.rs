//! One module per page group.

pub(crate) mod files;
pub(crate) mod login;
pub(crate) mod overview;
pub(crate) mod policy;
pub(crate) mod secrets;
pub(crate) mod session;
pub(crate) mod sessions;
pub(crate) mod terminal;
pub(crate) mod webhooks;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::Dashboard;

/// A form that changes something and carries nothing but the login's CSRF token (logout,
/// stop, reload).
#[derive(serde::Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: String,
}

/// Any other path: 404 for a logged-in user, the login page otherwise.
pub(crate) async fn not_found(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
) -> Response {
    match dashboard.auth.principal(&headers) {
        Some(who) => super::layout::refusal(
            &who,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such page.",
        ),
        None => login::unauthorized(&dashboard),
    }
}
