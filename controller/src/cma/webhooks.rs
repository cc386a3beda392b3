//! CMA webhooks: Standard Webhooks verification and the delivery body (../shared/CMA.md).
//!
//! The signed string is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 keyed with
//! the base64 part of `whsec_...`; `webhook-signature` is a space-separated list of
//! `v1,<base64 mac>` (several during key rotation) and any match accepts. Timestamps more than
//! 300 s from now are refused. The raw body is verified, never re-serialised JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// How far a delivery's timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;

/// The signing secret. Prints as `<redacted>`.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional, as the Standard Webhooks libraries
    /// accept).
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "the webhook secret is not whsec_<base64>".to_string())?;
        if key.is_empty() {
            return Err("the webhook secret is empty".into());
        }
        Ok(Self(key))
    }
}

/// Why a delivery was refused. The texts go back to the sender (they name no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s from now; at most 300 s is accepted")]
    Stale(i64),
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

/// The three Standard Webhooks headers of a delivery.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies a delivery at `now` (unix seconds).
pub fn verify(
    secret: &WebhookSecret,
    headers: Headers<'_>,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let id = headers.id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let timestamp = headers
        .timestamp
        .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let signatures = headers
        .signature
        .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    // Checked: the timestamp is the sender's, read before anything is authenticated.
    let skew = now.checked_sub(at).ok_or(VerifyError::BadTimestamp)?;
    if skew.checked_abs().is_none_or(|s| s > TOLERANCE_SECS) {
        return Err(VerifyError::Stale(skew));
    }
    let mac = || {
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).ok()?;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.trim().as_bytes());
        mac.update(b".");
        mac.update(body);
        Some(mac)
    };
    let matched = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        // `verify_slice` compares in constant time.
        .any(|given| mac().is_some_and(|m| m.verify_slice(&given).is_ok()));
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// A delivery body: `{"type":"event","id","created_at","data":{"type","id",...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Delivery {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub created_at: Option<String>,
    pub data: DeliveryData,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DeliveryData {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn accepts_any_matching_signature_within_the_window() {
        let key = b"0123456789abcdef0123456789abcdef";
        let secret = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode(key))).unwrap();
        let body = br#"{"type":"event","id":"evt_1","data":{"type":"session.status_run_started","id":"sesn_1"}}"#;
        let good = sign(key, "evt_1", "1000", body);
        let rotated = format!("v1,{} {good}", STANDARD.encode([0u8; 32]));
        let headers = |sig: &'static str| Headers {
            id: Some("evt_1"),
            timestamp: Some("1000"),
            signature: Some(sig),
        };
        let rotated: &'static str = Box::leak(rotated.into_boxed_str());
        let good: &'static str = Box::leak(good.into_boxed_str());
        assert_eq!(verify(&secret, headers(good), body, 1000), Ok(()));
        assert_eq!(verify(&secret, headers(rotated), body, 1299), Ok(()));
        assert_eq!(
            verify(&secret, headers(good), body, 1301),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(&secret, headers(good), b"{}", 1000),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secret, headers("v2,abc"), body, 1000),
            Err(VerifyError::NoMatch)
        );
        let missing = Headers {
            id: None,
            timestamp: Some("1000"),
            signature: Some(good),
        };
        assert_eq!(
            verify(&secret, missing, body, 1000),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
        let extreme = Headers {
            id: Some("evt_1"),
            timestamp: Some("-9223372036854775808"),
            signature: Some(good),
        };
        assert!(
            verify(&secret, extreme, body, 1000).is_err(),
            "no overflow panic"
        );
        assert!(!format!("{secret:?}").contains("MDEy"));
        let delivery: Delivery = serde_json::from_slice(body).unwrap();
        assert_eq!(delivery.data.id.as_deref(), Some("sesn_1"));
    }
}
