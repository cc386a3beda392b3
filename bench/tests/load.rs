#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The load generator against local TLS servers: it counts what it sends, verifies
//! certificates, and reports refusals. No timed assertions.

use std::time::Duration;

use cordon_bench::load::{ConnectionReuse, LoadConfig, Protocol, Route, client_tls, hold, run};
use cordon_testkit::{spawn_upstream, test_pki};
use tokio::io::AsyncWriteExt;

fn config(route: Route, port: u16, ca_pem: &str, dir: &tempfile::TempDir) -> LoadConfig {
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    LoadConfig {
        route,
        source: None,
        host: "bench.test".into(),
        port,
        path: "/small".into(),
        method: http::Method::GET,
        body: bytes::Bytes::new(),
        headers: Vec::new(),
        protocol: Protocol::Http1,
        reuse: ConnectionReuse::KeepAlive,
        connections: 2,
        streams: 1,
        duration: Duration::from_secs(30),
        requests: Some(20),
        tls: client_tls(&ca, Protocol::Http1).unwrap(),
    }
}

#[tokio::test]
async fn sends_exactly_the_requests_asked_for_over_keep_alive() {
    let pki = test_pki(&["bench.test"]);
    let upstream = spawn_upstream(&pki);
    let dir = tempfile::tempdir().unwrap();
    let report = run(&config(
        Route::Direct(upstream),
        upstream.port(),
        &pki.ca_pem,
        &dir,
    ))
    .await
    .unwrap();
    assert_eq!(report.ok, 20, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.connections, 2);
    assert_eq!(report.statuses.get(&200), Some(&20));
    assert!(report.body_bytes > 0);
}

#[tokio::test]
async fn opens_a_connection_per_request_when_asked() {
    let pki = test_pki(&["bench.test"]);
    let upstream = spawn_upstream(&pki);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(Route::Direct(upstream), upstream.port(), &pki.ca_pem, &dir);
    config.reuse = ConnectionReuse::PerRequest;
    config.requests = Some(6);
    let report = run(&config).await.unwrap();
    assert_eq!(
        (report.ok, report.connections, report.errors),
        (6, 6, 0),
        "{report:?}"
    );
}

#[tokio::test]
async fn refuses_a_server_whose_certificate_another_ca_signed() {
    let pki = test_pki(&["bench.test"]);
    let upstream = spawn_upstream(&pki);
    let other = test_pki(&["bench.test"]);
    let dir = tempfile::tempdir().unwrap();
    let report = run(&config(
        Route::Direct(upstream),
        upstream.port(),
        &other.ca_pem,
        &dir,
    ))
    .await
    .unwrap();
    assert_eq!(report.ok, 0);
    assert!(report.errors > 0);
    assert!(
        report
            .error_samples
            .iter()
            .any(|e| e.contains("certificate") || e.contains("UnknownIssuer")),
        "{:?}",
        report.error_samples
    );
}

#[tokio::test]
async fn reports_a_refused_connect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = cordon_testkit::read_head(&mut tcp).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let pki = test_pki(&["bench.test"]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(Route::Connect(proxy), 443, &pki.ca_pem, &dir);
    config.reuse = ConnectionReuse::PerRequest;
    config.requests = Some(3);
    let report = run(&config).await.unwrap();
    assert_eq!((report.ok, report.errors), (0, 3), "{report:?}");
    assert!(
        report.error_samples[0].contains("403"),
        "{:?}",
        report.error_samples
    );
}

#[tokio::test]
async fn holds_idle_connections_until_dropped() {
    let pki = test_pki(&["bench.test"]);
    let upstream = spawn_upstream(&pki);
    let dir = tempfile::tempdir().unwrap();
    let held = hold(
        &config(Route::Direct(upstream), upstream.port(), &pki.ca_pem, &dir),
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        (held.count(), held.failed),
        (10, 0),
        "{:?}",
        held.error_samples
    );
}

#[test]
fn rejects_impossible_settings() {
    let pki = test_pki(&["bench.test"]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(
        Route::Direct("127.0.0.1:1".parse().unwrap()),
        1,
        &pki.ca_pem,
        &dir,
    );
    config.streams = 4;
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("HTTP/2")
    );
    config.streams = 1;
    config.connections = 0;
    assert!(config.validate().is_err());
}
