//! The one client of the proxy's admin API (docs/PROXY.md "Admin API") the benchmarks use:
//! registering sessions, minting placeholders, listing sessions; and a scrape of the metrics
//! endpoint. Plain HTTP/1.1 over loopback, one connection per call: the calls are few.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The admin API at one address.
#[derive(Debug, Clone, Copy)]
pub struct AdminClient {
    pub address: SocketAddr,
}

impl AdminClient {
    /// `PUT /sessions/{id}`: registers (or updates) session `id` on `source`.
    pub async fn register(&self, id: &str, source: &str, agent_id: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"source": source, "agent_id": agent_id}).to_string();
        self.call("PUT", &format!("/sessions/{id}"), &body).await?;
        Ok(())
    }

    /// `DELETE /sessions/{id}`: the session and its placeholders are forgotten.
    pub async fn deregister(&self, id: &str) -> anyhow::Result<()> {
        self.call("DELETE", &format!("/sessions/{id}"), "").await?;
        Ok(())
    }

    /// `POST /sessions/{id}/placeholders`: the session's placeholder for each of `secrets`.
    pub async fn placeholders(
        &self,
        id: &str,
        secrets: &[&str],
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let body = serde_json::json!({ "secrets": secrets }).to_string();
        let answer = self
            .call("POST", &format!("/sessions/{id}/placeholders"), &body)
            .await?;
        let value: serde_json::Value = serde_json::from_str(&answer)
            .with_context(|| format!("minting placeholders: {answer}"))?;
        let minted = value["placeholders"]
            .as_object()
            .with_context(|| format!("minting placeholders: {answer}"))?;
        Ok(minted
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect())
    }

    /// `GET /sessions`: how many sessions are registered.
    pub async fn session_count(&self) -> anyhow::Result<usize> {
        let answer = self.call("GET", "/sessions", "").await?;
        let value: serde_json::Value =
            serde_json::from_str(&answer).with_context(|| format!("listing sessions: {answer}"))?;
        value["sessions"]
            .as_array()
            .map(Vec::len)
            .with_context(|| format!("listing sessions: {answer}"))
    }

    /// One call; the body of its answer, which must be a 200.
    async fn call(&self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let (status, answer) = plain_http(self.address, method, path, body).await?;
        if status != 200 {
            bail!("{method} {path} on the admin API answered {status}: {answer}");
        }
        Ok(answer)
    }
}

/// The value of the unlabelled series `name` in a Prometheus text exposition scraped from
/// `address` (the proxy's `metrics_listen`; every path answers).
pub async fn scrape_gauge(address: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (status, text) = plain_http(address, "GET", "/metrics", "").await?;
    if status != 200 {
        bail!("the metrics endpoint answered {status}");
    }
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} in the metrics"))
}

/// One HTTP/1.1 request with `connection: close`; the status and the body.
async fn plain_http(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    tcp.write_all(request.as_bytes())
        .await
        .with_context(|| format!("{method} {path}"))?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)
        .await
        .with_context(|| format!("{method} {path}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: no HTTP answer"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
