//! The controller's one client of the proxy's admin API (docs/PROXY.md): session
//! registrations (the proxy knows a session by its sandbox's source address) and the egress
//! decisions counted for each.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::http::{HttpClient, HttpError};

/// Egress decisions the proxy made for a session while it was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    pub allowed: u64,
    pub denied: u64,
}

/// One registration, as `GET /sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Registration {
    pub id: String,
    pub source: IpAddr,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub egress: Egress,
}

/// `GET /sessions`'s answer.
#[derive(Deserialize)]
struct Listing {
    sessions: Vec<Registration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyAdminError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the proxy's admin API answered {url} with something else than expected: {message}")]
    Protocol { url: String, message: String },
}

/// The proxy's admin API at one address (loopback).
#[derive(Debug, Clone)]
pub struct ProxyAdmin {
    http: HttpClient,
    address: SocketAddr,
}

impl ProxyAdmin {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            http: HttpClient::default(),
            address,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// `PUT /sessions/{id}`: traffic from `source` is session `id`'s (and no longer from any
    /// other source it had).
    pub async fn register(&self, id: &str, source: IpAddr) -> Result<(), ProxyAdminError> {
        self.put(id, source, None, &BTreeMap::new(), false).await
    }

    /// `PUT /sessions/{id}` with `shared`: traffic from `source` is also `id`'s, with these
    /// labels; the id's other sources stay (a custom tool's calls in flight).
    pub async fn register_shared(
        &self,
        id: &str,
        source: IpAddr,
        agent_id: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProxyAdminError> {
        self.put(id, source, agent_id, labels, true).await
    }

    async fn put(
        &self,
        id: &str,
        source: IpAddr,
        agent_id: Option<&str>,
        labels: &BTreeMap<String, String>,
        shared: bool,
    ) -> Result<(), ProxyAdminError> {
        #[derive(Serialize)]
        struct Body<'a> {
            source: IpAddr,
            #[serde(skip_serializing_if = "Option::is_none")]
            agent_id: Option<&'a str>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            labels: &'a BTreeMap<String, String>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            shared: bool,
        }
        let body = serde_json::to_string(&Body {
            source,
            agent_id,
            labels,
            shared,
        })
        .map_err(|e| ProxyAdminError::Protocol {
            url: self.url("/sessions"),
            message: e.to_string(),
        })?;
        self.http
            .call(
                http::Method::PUT,
                &self.url(&format!("/sessions/{id}")),
                None,
                Some(body),
            )
            .await?;
        Ok(())
    }

    /// `DELETE /sessions/{id}?source=..`: only that source of the session; one the proxy does
    /// not know is not an error.
    pub async fn unregister_source(&self, id: &str, source: IpAddr) -> Result<(), ProxyAdminError> {
        let url = self.url(&format!("/sessions/{id}?source={source}"));
        match self.http.call(http::Method::DELETE, &url, None, None).await {
            Ok(_) | Err(HttpError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `DELETE /sessions/{id}`; a session the proxy does not know is not an error.
    pub async fn unregister(&self, id: &str) -> Result<(), ProxyAdminError> {
        match self
            .http
            .call(
                http::Method::DELETE,
                &self.url(&format!("/sessions/{id}")),
                None,
                None,
            )
            .await
        {
            Ok(_) | Err(HttpError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `GET /sessions`: every registration.
    pub async fn sessions(&self) -> Result<Vec<Registration>, ProxyAdminError> {
        let url = self.url("/sessions");
        let text = self.http.call(http::Method::GET, &url, None, None).await?;
        serde_json::from_str::<Listing>(&text)
            .map(|l| l.sessions)
            .map_err(|e| ProxyAdminError::Protocol {
                url,
                message: e.to_string(),
            })
    }

    /// Each registered session's egress counts; empty (and logged) when the proxy cannot
    /// answer, since the counts are a report, not a decision.
    pub async fn egress_counts(&self) -> HashMap<String, Egress> {
        match self.sessions().await {
            Ok(sessions) => sessions.into_iter().map(|s| (s.id, s.egress)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read egress counts from the proxy");
                HashMap::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_as_registrations() {
        let text = r#"{"sessions": [{"id": "s1", "source": "10.200.0.2", "agent_id": null,
            "labels": {"team": "a"}, "egress": {"allowed": 3, "denied": 1}}]}"#;
        let listing: Listing = serde_json::from_str(text).unwrap();
        assert_eq!(listing.sessions[0].id, "s1");
        assert_eq!(
            listing.sessions[0].egress,
            Egress {
                allowed: 3,
                denied: 1
            }
        );
    }
}
