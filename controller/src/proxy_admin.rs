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
        self.registrations()
            .await
            .into_iter()
            .map(|(id, r)| (id, r.egress))
            .collect()
    }

    /// Every registration by session id; empty (and logged) when the proxy cannot answer.
    pub async fn registrations(&self) -> HashMap<String, Registration> {
        match self.sessions().await {
            Ok(sessions) => sessions.into_iter().map(|s| (s.id.clone(), s)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registrations from the proxy");
                HashMap::new()
            }
        }
    }
}

/// `GET /policy`: the generation serving now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub id: String,
    #[serde(default)]
    pub revision: Option<String>,
    pub content_hash: String,
    pub loaded_at: String,
    pub modules: usize,
    pub query: String,
    #[serde(default)]
    pub bundle: Option<String>,
    #[serde(default)]
    pub files: Vec<PolicyFile>,
    #[serde(default)]
    pub request_body: Option<serde_json::Value>,
}

/// One file of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `POST /evaluate`'s question: a request as a session would send it.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluate {
    pub session: String,
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// `POST /evaluate`'s answer: the decision and its reason, nothing sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub decision: String,
    #[serde(default)]
    pub reason_class: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub policy_generation: String,
    /// `secret->header` of what would be injected.
    #[serde(default)]
    pub credentials: Vec<String>,
    #[serde(default)]
    pub would_deny: bool,
    /// Anything else the proxy says (checks it could not make without sending).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One secret of `GET /secrets`: its name, bindings and the policy files naming it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    #[serde(default)]
    pub bindings: Vec<serde_json::Value>,
    #[serde(default)]
    pub policy_files: Vec<String>,
}

#[derive(Deserialize)]
struct Secrets {
    secrets: Vec<SecretInfo>,
}

impl ProxyAdmin {
    fn parse<T: serde::de::DeserializeOwned>(
        url: String,
        text: &str,
    ) -> Result<T, ProxyAdminError> {
        serde_json::from_str(text).map_err(|e| ProxyAdminError::Protocol {
            url,
            message: e.to_string(),
        })
    }

    /// `GET /readyz`: the id of the policy generation serving, if the proxy is ready.
    pub async fn ready(&self) -> Result<String, ProxyAdminError> {
        let url = self.url("/readyz");
        let text = self.http.call(http::Method::GET, &url, None, None).await?;
        let ready: serde_json::Value = Self::parse(url.clone(), &text)?;
        ready["policy_generation"]
            .as_str()
            .map(str::to_string)
            .ok_or(ProxyAdminError::Protocol {
                url,
                message: "no policy_generation".into(),
            })
    }

    /// `GET /policy`.
    pub async fn policy(&self) -> Result<PolicyInfo, ProxyAdminError> {
        let url = self.url("/policy");
        let text = self.http.call(http::Method::GET, &url, None, None).await?;
        Self::parse(url, &text)
    }

    /// `POST /reload`: the new generation's id, or the proxy's reason for refusing it (the
    /// previous generation keeps serving).
    pub async fn reload(&self) -> Result<String, ProxyAdminError> {
        let url = self.url("/reload");
        let text = self.http.call(http::Method::POST, &url, None, None).await?;
        let answer: serde_json::Value = Self::parse(url.clone(), &text)?;
        Ok(answer["policy_generation"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// `POST /evaluate`.
    pub async fn evaluate(&self, question: &Evaluate) -> Result<Evaluation, ProxyAdminError> {
        let url = self.url("/evaluate");
        let body = serde_json::to_string(question).map_err(|e| ProxyAdminError::Protocol {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let text = self
            .http
            .call(http::Method::POST, &url, None, Some(body))
            .await?;
        Self::parse(url, &text)
    }

    /// `GET /secrets`.
    pub async fn secrets(&self) -> Result<Vec<SecretInfo>, ProxyAdminError> {
        let url = self.url("/secrets");
        let text = self.http.call(http::Method::GET, &url, None, None).await?;
        Self::parse::<Secrets>(url, &text).map(|s| s.secrets)
    }
}

/// The `error` text of an admin API refusal, for showing to the operator.
pub fn refusal_text(e: &ProxyAdminError) -> String {
    match e {
        ProxyAdminError::Http(HttpError::Status { status, body, .. }) => {
            match serde_json::from_str::<serde_json::Value>(body) {
                Ok(v) if v["error"].is_string() => {
                    format!("{status}: {}", v["error"].as_str().unwrap_or_default())
                }
                _ => format!("the proxy answered {status}"),
            }
        }
        ProxyAdminError::Http(HttpError::Transport { message, .. }) => {
            format!("the proxy's admin API cannot be reached: {message}")
        }
        other => other.to_string(),
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
