//! `POST /webhooks`: verify, dedupe, persist, answer in milliseconds (axum).
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"status":"accepted"}` | verified and recorded |
//! | 200 `{"status":"duplicate"}` | verified, its event id was recorded before |
//! | 400 `{"error"}` | not a JSON event, or over the size limit (413) |
//! | 401 `{"error"}` | a Standard Webhooks header is missing, the timestamp is off, no signature matches |
//! | 503 `{"error"}` | the state disk is full: nothing of it was recorded (CMA retries) |
//! | 500 `{"error"}` | it could not be recorded (CMA retries) |
//!
//! An answer of 200 means the delivery and its effect on the records (a terminated or deleted
//! session's workspace retention clock) are committed together.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::deliveries::{DeliveryLog, DeliveryOutcome, DeliveryRecord};
use super::service::{SessionStops, StopReason};
use super::webhooks::{Delivery, Headers, WebhookSecret, verify};
use crate::metrics::ControllerMetrics;
use crate::store::Store;

/// What the receiver needs.
#[derive(Debug)]
pub struct Receiver {
    /// `None`: no webhook secret is set (local sessions only), every delivery is refused.
    pub secret: Option<WebhookSecret>,
    pub store: Mutex<Store>,
    /// Unix seconds now; a field so tests can move time.
    pub clock: fn() -> i64,
    /// Woken on `session.status_run_started`: the work queue has something.
    pub wake: Arc<tokio::sync::Notify>,
    /// Sessions being served; `session.status_terminated` stops its session's.
    pub stops: Arc<SessionStops>,
    pub metrics: ControllerMetrics,
    /// The latest deliveries and their answers (the dashboard's webhooks page).
    pub deliveries: Arc<DeliveryLog>,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Receiver {
    pub fn new(secret: Option<WebhookSecret>, store: Store, metrics: ControllerMetrics) -> Self {
        store.report_to(metrics.store.clone());
        Self {
            secret,
            store: Mutex::new(store),
            clock: unix_now,
            wake: Arc::new(tokio::sync::Notify::new()),
            stops: Arc::default(),
            metrics,
            deliveries: Arc::default(),
        }
    }

    /// Counts a delivery's outcome and keeps it for the dashboard; `verified` carries the
    /// event's id, type and session once its signature checked out.
    fn count(&self, outcome: DeliveryOutcome, verified: Option<&Delivery>, detail: Option<String>) {
        self.metrics
            .webhook_deliveries
            .with_label_values(&[outcome.as_str()])
            .inc();
        self.deliveries.push(DeliveryRecord {
            received_at: crate::store::now(),
            outcome,
            event_id: verified.map(|d| d.id.clone()),
            kind: verified.map(|d| d.data.kind.clone()),
            session: verified.and_then(|d| d.data.id.clone()),
            detail,
        });
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The routes: `POST /webhooks`, `GET /healthz`.
pub fn router(receiver: Arc<Receiver>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/webhooks", post(webhook))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(receiver)
}

async fn webhook(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = Headers {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    let Some(secret) = &receiver.secret else {
        let why = "no webhook secret is set (controller.webhook_secret_env or \
                   webhook_secret_file): this controller serves no CMA environment and takes no \
                   webhooks";
        receiver.count(DeliveryOutcome::Unauthorized, None, Some(why.into()));
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": why}),
        );
    };
    if let Err(e) = verify(secret, signed, &body, (receiver.clock)()) {
        tracing::warn!(error = %e, "webhook refused");
        receiver.count(DeliveryOutcome::Unauthorized, None, Some(e.to_string()));
        return answer(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": e.to_string()}),
        );
    }
    let delivery: Delivery = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            receiver.count(
                DeliveryOutcome::BadRequest,
                None,
                Some(format!("not a CMA event: {e}")),
            );
            return answer(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("the body is not a CMA event: {e}")}),
            );
        }
    };
    if delivery.kind != "event" || Some(delivery.id.as_str()) != signed.id {
        receiver.count(
            DeliveryOutcome::BadRequest,
            None,
            Some("not {\"type\":\"event\"} with an id equal to webhook-id".into()),
        );
        return answer(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "expected {\"type\":\"event\"} whose id equals webhook-id"}),
        );
    }
    // The session gets no more work: its workspace's retention clock starts, whether or not a
    // sandbox of it is running now.
    let ends_session = matches!(
        delivery.data.kind.as_str(),
        "session.status_terminated" | "session.deleted"
    );
    let recorded = {
        let store = receiver.store.lock().unwrap_or_else(|e| e.into_inner());
        store.record_webhook(
            &delivery.id,
            &delivery.data.kind,
            delivery.data.id.as_deref(),
            delivery.created_at.as_deref(),
            ends_session,
        )
    };
    match recorded {
        Ok(true) => {
            tracing::info!(event = %delivery.id, kind = %delivery.data.kind, session = ?delivery.data.id, "webhook accepted");
            receiver.count(DeliveryOutcome::Accepted, Some(&delivery), None);
            match (delivery.data.kind.as_str(), delivery.data.id.as_deref()) {
                ("session.status_run_started", _) => receiver.wake.notify_one(),
                ("session.status_terminated", Some(session))
                    if receiver.stops.stop(session, StopReason::Terminated) =>
                {
                    tracing::info!(session = %session, "session terminated; stopping its sandbox");
                }
                _ => {}
            }
            answer(StatusCode::OK, serde_json::json!({"status": "accepted"}))
        }
        Ok(false) => {
            receiver.count(DeliveryOutcome::Duplicate, Some(&delivery), None);
            answer(StatusCode::OK, serde_json::json!({"status": "duplicate"}))
        }
        Err(e) if e.is_disk_full() => {
            // Logged once per episode by the store; each refusal is counted there.
            receiver.count(
                DeliveryOutcome::Error,
                Some(&delivery),
                Some("the state disk is full".into()),
            );
            tracing::debug!(event = %delivery.id, "webhook not recorded: the state disk is full");
            let mut response = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "the state disk is full: the delivery was not recorded; retry later"}),
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("30"),
            );
            response
        }
        Err(e) => {
            receiver.count(
                DeliveryOutcome::Error,
                Some(&delivery),
                Some("could not be recorded".into()),
            );
            tracing::error!(error = %e, "webhook not recorded");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": "the delivery could not be recorded; retry"}),
            )
        }
    }
}
