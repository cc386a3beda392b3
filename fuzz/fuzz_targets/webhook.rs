//! Standard Webhooks verification of CMA deliveries: headers and body are the sender's. A
//! delivery signed with the secret verifies; any other signature, or a changed body, does not.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cordon_controller::cma::webhooks::{Headers, VerifyError, WebhookSecret, verify};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const NOW: i64 = 1_780_000_000;
const KEY: &[u8] = b"cordon-fuzz-webhook-key";

fn sign(id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fuzz_target!(|data: &[u8]| {
    // Lines: secret text, webhook-id, webhook-timestamp, webhook-signature, then the body.
    let mut parts = data.splitn(5, |b| *b == b'\n');
    let mut field = || parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let (Some(secret_text), Some(id), Some(timestamp), Some(signature)) =
        (field(), field(), field(), field())
    else {
        return;
    };
    let body = &data[data
        .len()
        .min(secret_text.len() + id.len() + timestamp.len() + signature.len() + 4)..];
    if let Ok(secret) = WebhookSecret::parse(secret_text) {
        let _ = verify(
            &secret,
            Headers {
                id: Some(id),
                timestamp: Some(timestamp),
                signature: Some(signature),
            },
            body,
            NOW,
        );
    }
    let secret = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode(KEY))).expect("valid");
    let fresh = NOW.to_string();
    let good = sign(id, &fresh, body);
    let headers = |signature| Headers {
        id: Some(id),
        timestamp: Some(&fresh),
        signature: Some(signature),
    };
    assert_eq!(verify(&secret, headers(&good), body, NOW), Ok(()));
    // The sender's signature list, with the right one among its entries, also verifies.
    let listed = format!("{signature} {good}");
    assert_eq!(verify(&secret, headers(&listed), body, NOW), Ok(()));
    if !signature.split_whitespace().any(|s| s == good) {
        assert_eq!(
            verify(&secret, headers(signature), body, NOW),
            Err(VerifyError::NoMatch),
            "a signature not made with the secret verified"
        );
    }
    let mut changed = body.to_vec();
    changed.push(b'x');
    assert_eq!(
        verify(&secret, headers(&good), &changed, NOW),
        Err(VerifyError::NoMatch)
    );
});
