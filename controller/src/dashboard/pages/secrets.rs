//! Secret names, their bindings and which policy files name them; never a value.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::super::layout::frame;
use super::super::{Dashboard, Principal};
use crate::proxy_admin::refusal_text;

pub(crate) async fn page_handler(dashboard: &Dashboard, who: &Principal) -> Response {
    let secrets = match &dashboard.admin.proxy_admin {
        Some(proxy) => proxy.secrets().await.map_err(|e| refusal_text(&e)),
        None => Err("this controller runs without the proxy".into()),
    };
    let body = html! {
        p.muted { "The proxy's secret store as names and bindings. Values never leave the proxy: not to this page, the sandboxes, the logs or the policy." }
        @match &secrets {
            Err(e) => p.error { "The proxy did not say: " (e) },
            Ok(list) if list.is_empty() => p.notice { "No secrets: [credentials] store is not set, or it is empty." },
            Ok(list) => table #secrets {
                thead { tr { th { "Name" } th { "Bindings" } th { "Named by policy files" } } }
                tbody {
                    @for s in list {
                        tr {
                            td { code { (s.name) } }
                            td {
                                @for b in &s.bindings {
                                    div { (binding(b)) }
                                }
                            }
                            td { @for f in &s.policy_files { code { (f) } " " } @if s.policy_files.is_empty() { span.muted { "none" } } }
                        }
                    }
                }
            },
        }
    };
    frame(who, "/secrets", "Secrets", body).into_response()
}

/// A binding as `key: value` pairs (its shape is the proxy's).
fn binding(b: &serde_json::Value) -> String {
    match b.as_object() {
        Some(object) => object
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                serde_json::Value::Array(items) => format!(
                    "{k}: {}",
                    items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join(" · "),
        None => b.to_string(),
    }
}

pub(crate) async fn page(State(dashboard): State<Arc<Dashboard>>, who: Principal) -> Response {
    page_handler(&dashboard, &who).await
}
