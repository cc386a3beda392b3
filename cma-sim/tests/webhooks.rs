//! Webhook delivery as CMA does it: signed, retried on non-2xx with backoff, re-stamped on each
//! attempt, dropped after 3 retries; a 3xx disables the endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use cordon_cma_sim::Sim;
use cordon_cma_sim::scenario::Scenario;
use cordon_cma_sim::webhook::{Delivery, SigningKey};
use cordon_cma_sim::world::WorldConfig;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A receiver answering `statuses` in turn (then 200), recording each delivery's headers.
async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let statuses = Arc::new(Mutex::new(statuses));
    let app = Router::new().route(
        "/webhooks",
        post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            let statuses = statuses.clone();
            async move {
                let key = SigningKey::parse(SECRET).unwrap();
                let id = headers["webhook-id"].to_str().unwrap();
                let ts: i64 = headers["webhook-timestamp"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(
                    headers["webhook-signature"].to_str().unwrap(),
                    key.sign(id, ts, body.as_bytes())
                );
                let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(event["id"].as_str(), Some(id));
                log.lock().unwrap().push(headers);
                let mut statuses = statuses.lock().unwrap();
                let status = if statuses.is_empty() {
                    200
                } else {
                    statuses.remove(0)
                };
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/webhooks"), seen)
}

async fn deliver(statuses: Vec<u16>) -> (cordon_cma_sim::report::Report, Vec<HeaderMap>) {
    let (url, seen) = receiver(statuses).await;
    let scenario =
        Scenario::parse("[[sessions]]\nid = \"s1\"\n[[sessions.steps]]\ntool = \"bash\"\n")
            .unwrap();
    let sim = Sim::start(
        &scenario,
        WorldConfig::default(),
        Some(Delivery {
            url,
            key: SigningKey::parse(SECRET).unwrap(),
            backoff: Duration::from_millis(20),
        }),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sim.open_sessions();
    // Nobody works the queue: wait for the one webhook to settle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = sim.world.report();
        if !report.webhooks.is_empty() || tokio::time::Instant::now() > deadline {
            let seen = seen.lock().unwrap().clone();
            return (report, seen);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failed_delivery_is_retried_and_then_delivered() {
    let (report, seen) = deliver(vec![500, 503]).await;
    let hook = &report.webhooks[0];
    assert_eq!(
        (hook.kind.as_str(), hook.outcome.as_str(), hook.attempts),
        ("session.status_run_started", "delivered", 3)
    );
    assert_eq!(seen.len(), 3);
    let ids: Vec<&str> = seen
        .iter()
        .map(|h| h["webhook-id"].to_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one event id across retries: {ids:?}"
    );
}

#[tokio::test]
async fn a_delivery_is_dropped_after_three_retries() {
    let (report, seen) = deliver(vec![500; 10]).await;
    assert_eq!(report.webhooks[0].outcome, "failed");
    assert_eq!(report.webhooks[0].attempts, 4);
    assert_eq!(seen.len(), 4);
    assert!(!report.passed);
}

#[tokio::test]
async fn a_redirect_disables_the_endpoint() {
    let (report, seen) = deliver(vec![301]).await;
    assert_eq!(report.webhooks[0].outcome, "disabled");
    assert_eq!(seen.len(), 1);
}
