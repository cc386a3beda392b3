//! Standard-Webhooks-signed deliveries, as CMA sends them (../shared/CMA.md, "Webhooks"):
//! `webhook-id`, `webhook-timestamp` (re-stamped on each retry) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`); any 2xx acknowledges, other
//! answers are retried at most 3 times with backoff and then dropped, a 3xx disables the
//! endpoint.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::report::WebhookReport;
use crate::world::{Outgoing, World, now, random_token};

/// Retries after the first attempt.
pub const RETRIES: u32 = 3;

/// A `whsec_<base64>` signing secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = text.trim().strip_prefix("whsec_").ok_or(
            "a webhook secret starts with whsec_ followed by base64 (as CMA's console shows it)",
        )?;
        let key = STANDARD
            .decode(b64)
            .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
        if key.is_empty() {
            return Err("the webhook secret is empty".into());
        }
        Ok(Self(key))
    }

    /// The `webhook-signature` header value for a delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC-SHA256 accepts any key length; new_from_slice cannot fail for it.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// Where and how deliveries go.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: String,
    pub key: SigningKey,
    /// The first retry waits this long; each later one twice as long (CMA: 5 s to 120 s).
    pub backoff: Duration,
}

/// Delivers every queued webhook; records each outcome in the world. Without a `delivery`
/// the webhooks are recorded as not sent.
pub async fn deliver_all(
    world: Arc<World>,
    delivery: Option<Delivery>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    let settle = |world: &World| {
        world
            .webhooks_pending
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        world.progress.notify_waiters();
    };
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut disabled = false;
    let mut n = 0u64;
    while let Some((kind, session)) = queue.recv().await {
        n += 1;
        // Unique across runs: a receiver deduplicates on this id.
        let id = format!("{}_{n}", random_token("wevt_"));
        let Some(delivery) = &delivery else {
            settle(&world);
            continue;
        };
        let body = json!({
            "type": "event",
            "id": id,
            "created_at": now(),
            "data": {"type": kind, "id": session, "organization_id": "org_sim", "workspace_id": "wrkspc_sim"},
        })
        .to_string();
        let mut report = WebhookReport {
            id: id.clone(),
            kind: kind.clone(),
            session_id: session.clone(),
            attempts: 0,
            outcome: "failed".into(),
            last: String::new(),
        };
        if disabled {
            report.outcome = "disabled".into();
            report.last = "the endpoint was disabled by an earlier 3xx".into();
        } else {
            let mut wait = delivery.backoff;
            for attempt in 0..=RETRIES {
                if attempt > 0 {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                report.attempts += 1;
                match send(&client, delivery, &id, &body).await {
                    Ok(status) if (200..300).contains(&status) => {
                        report.outcome = "delivered".into();
                        report.last = status.to_string();
                        break;
                    }
                    Ok(status) if (300..400).contains(&status) => {
                        report.outcome = "disabled".into();
                        report.last = status.to_string();
                        disabled = true;
                        break;
                    }
                    Ok(status) => report.last = status.to_string(),
                    Err(e) => report.last = e,
                }
            }
        }
        tracing::info!(webhook = %id, kind = %kind, outcome = %report.outcome, attempts = report.attempts, "webhook settled");
        world.record_webhook(report);
        settle(&world);
    }
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    delivery: &Delivery,
    id: &str,
    body: &str,
) -> Result<u16, String> {
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let request = http::Request::post(&delivery.url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            delivery.key.sign(id, timestamp, body.as_bytes()),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(15), client.request(request))
        .await
        .map_err(|_| "no answer within 15 s".to_string())?
        .map_err(|e| format!("cannot reach {}: {e}", delivery.url))?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_spec_example() {
        // The example in the Standard Webhooks specification.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_!!").is_err());
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }
}
