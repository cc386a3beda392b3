//! The latest webhook deliveries (since the controller started) and how each was answered.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::super::layout::{frame, time_text};
use super::super::{Dashboard, Principal};
use crate::cma::deliveries::{DeliveryOutcome, KEPT};

pub(crate) async fn page(State(dashboard): State<Arc<Dashboard>>, who: Principal) -> Response {
    let deliveries = dashboard.deliveries.latest();
    let body = html! {
        p.muted { "The last " (KEPT) " verified and " (KEPT) " refused deliveries to POST /webhooks since the controller started, newest first. An event's id, type and session are shown once its signature verified." }
        @if deliveries.is_empty() {
            p.notice { "No deliveries yet." }
        } @else {
            table #deliveries {
                thead { tr { th { "Received" } th { "Outcome" } th { "Event" } th { "Type" } th { "Session" } th { "Detail" } } }
                tbody {
                    @for d in &deliveries {
                        tr {
                            td { (time_text(&d.received_at)) }
                            td {
                                span class=(match d.outcome {
                                    DeliveryOutcome::Accepted => "tag ok",
                                    DeliveryOutcome::Duplicate => "tag muted",
                                    DeliveryOutcome::Unauthorized | DeliveryOutcome::BadRequest => "tag bad",
                                    DeliveryOutcome::Error => "tag warn",
                                }) { (d.outcome.as_str()) }
                            }
                            td { code { (d.event_id.as_deref().unwrap_or("—")) } }
                            td { (d.kind.as_deref().unwrap_or("—")) }
                            td {
                                @match &d.session {
                                    Some(s) => a href={ "/sessions/" (s) } { code { (s) } },
                                    None => "—",
                                }
                            }
                            td.muted { (d.detail.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    frame(&who, "/webhooks", "Webhooks", body).into_response()
}
