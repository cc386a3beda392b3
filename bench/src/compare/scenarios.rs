//! The scenarios: what load each sends and which figure it reports. Scenarios 8 to 10 are the
//! traffic agents send most: POSTs, streamed model answers (`stream.rs`) and git clones
//! (`git.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::load::{ConnectionReuse, LoadConfig, LoadReport, Protocol, Route};

use super::results::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    KeepAlive,
    NewConnection,
    UniqueHosts,
    LargeDownload,
    PolicyInjection,
    Http2,
    Idle,
    PostSmall,
    LlmStream,
    GitClone,
    PostBodyPolicy,
}

pub const ALL: [Scenario; 11] = [
    Scenario::KeepAlive,
    Scenario::NewConnection,
    Scenario::UniqueHosts,
    Scenario::LargeDownload,
    Scenario::PolicyInjection,
    Scenario::Http2,
    Scenario::Idle,
    Scenario::PostSmall,
    Scenario::LlmStream,
    Scenario::GitClone,
    Scenario::PostBodyPolicy,
];

/// Bench names; the unique hosts of scenario 3 are `h<n>.bench.test`.
pub const BENCH_HOST: &str = "bench.test";
pub const UNIQUE_HOST: &str = "h{n}.bench.test";
pub const API_HOST: &str = "api.github.com";
pub const API_PATH: &str = "/repos/rust-lang/rust";
pub const LARGE_PATH: &str = "/10m";
pub const LARGE_BYTES: u64 = 10 * 1024 * 1024;
/// Scenario 8's request body: about a model API call's JSON.
pub const POST_BYTES: usize = 4096;
/// Scenario 11's host: the bench bundle's manifest asks for the bodies of requests to it
/// (`bench/peers/cordon/policy/.manifest`), and its rule reads `parsed_body.model`.
pub const BODY_HOST: &str = "body.bench.test";
/// Scenarios 9 and 10 have upstreams of their own (`stream.rs`, `git.rs`), on their own ports.
pub const LLM_HOST: &str = "llm.bench.test";
pub const GIT_HOST: &str = "git.bench.test";

impl Scenario {
    pub fn number(self) -> u8 {
        self as u8 + 1
    }

    pub fn from_number(n: u8) -> Option<Self> {
        ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::KeepAlive => "keepalive_small",
            Self::NewConnection => "new_connection",
            Self::UniqueHosts => "unique_hosts",
            Self::LargeDownload => "large_download",
            Self::PolicyInjection => "policy_injection",
            Self::Http2 => "http2_multiplexed",
            Self::Idle => "idle_connections",
            Self::PostSmall => "post_small",
            Self::LlmStream => "llm_stream",
            Self::GitClone => "git_clone",
            Self::PostBodyPolicy => "post_body_policy",
        }
    }

    pub fn title(self, s: &Settings) -> String {
        match self {
            Self::KeepAlive => format!(
                "Small HTTPS requests, {} keep-alive connections",
                s.connections
            ),
            Self::NewConnection => format!(
                "A new TLS connection per request, warm certificate cache, {} at a time",
                s.connections
            ),
            Self::UniqueHosts => format!(
                "A new host name per connection (cold certificate minting), up to {}",
                s.unique_hosts
            ),
            Self::LargeDownload => "10 MiB bodies streamed over one keep-alive connection".into(),
            Self::PolicyInjection => format!(
                "Realistic policy with a credential injection, {} keep-alive connections",
                s.connections
            ),
            Self::Http2 => format!(
                "HTTP/2: {} connections x {} concurrent streams",
                s.h2_connections, s.h2_streams
            ),
            Self::Idle => format!("{} idle keep-alive connections held", s.idle_connections),
            Self::PostSmall => format!(
                "POSTs with a 4 KiB body, {} keep-alive connections",
                s.connections
            ),
            Self::LlmStream => format!(
                "Streamed model answers (SSE): {} streams of an event every {} ms for {} s, and \
                 time to first event",
                s.connections,
                super::stream::INTERVAL.as_millis(),
                super::stream::STREAM.as_secs()
            ),
            Self::GitClone => format!(
                "git clone of a {} MiB repository with a placeholder credential",
                super::git::REPO_MIB
            ),
            Self::PostBodyPolicy => format!(
                "4 KiB JSON POSTs decided on their body (parsed_body.model), {} keep-alive \
                 connections",
                s.connections
            ),
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::KeepAlive
            | Self::PolicyInjection
            | Self::Http2
            | Self::PostSmall
            | Self::PostBodyPolicy => "req/s",
            Self::LlmStream => "us event delay p99",
            Self::GitClone => "MiB/s",
            Self::NewConnection | Self::UniqueHosts => "connections/s",
            Self::LargeDownload => "MiB/s",
            Self::Idle => "KiB/connection",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Self::Idle | Self::LlmStream)
    }

    /// The load for this scenario along `route`, to the upstream's `port`.
    pub fn load(self, route: Route, port: u16, s: &Settings, tls: &Tls) -> LoadConfig {
        let mut config = LoadConfig {
            route,
            source: None,
            host: BENCH_HOST.into(),
            port,
            path: "/".into(),
            method: http::Method::GET,
            body: bytes::Bytes::new(),
            headers: Vec::new(),
            protocol: Protocol::Http1,
            reuse: ConnectionReuse::KeepAlive,
            connections: s.connections,
            streams: 1,
            duration: Duration::from_secs_f64(s.duration_s),
            requests: None,
            tls: tls.http1.clone(),
        };
        match self {
            Self::KeepAlive | Self::Idle | Self::LlmStream | Self::GitClone => {}
            Self::PostSmall => {
                config.method = http::Method::POST;
                config.body = bytes::Bytes::from(vec![b'x'; POST_BYTES]);
                config.headers = vec![(
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                )];
            }
            Self::PostBodyPolicy => {
                config.host = BODY_HOST.into();
                config.method = http::Method::POST;
                config.body = bytes::Bytes::from(model_call(POST_BYTES));
                config.headers = vec![(
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                )];
            }
            Self::NewConnection => config.reuse = ConnectionReuse::PerRequest,
            Self::UniqueHosts => {
                config.reuse = ConnectionReuse::PerRequest;
                config.host = UNIQUE_HOST.into();
                config.requests = Some(s.unique_hosts);
            }
            Self::LargeDownload => {
                config.path = LARGE_PATH.into();
                config.connections = 1;
            }
            Self::PolicyInjection => {
                config.host = API_HOST.into();
                config.path = API_PATH.into();
                config.headers = vec![(
                    HeaderName::from_static("accept"),
                    HeaderValue::from_static("application/vnd.github+json"),
                )];
            }
            Self::Http2 => {
                config.protocol = Protocol::Http2;
                config.connections = s.h2_connections;
                config.streams = s.h2_streams;
                config.tls = tls.http2.clone();
            }
        }
        config
    }

    /// The scenario's figure from a load report, and the amount of work it counts (for the
    /// per-CPU-second figure).
    pub fn figure(self, report: &LoadReport) -> f64 {
        match self {
            Self::NewConnection | Self::UniqueHosts => report.connections_per_s,
            Self::LargeDownload => report.body_bytes_per_s / (1024.0 * 1024.0),
            _ => report.requests_per_s,
        }
    }

    pub fn work(self, report: &LoadReport) -> f64 {
        match self {
            Self::NewConnection | Self::UniqueHosts => report.connections as f64,
            Self::LargeDownload => report.body_bytes as f64 / (1024.0 * 1024.0),
            _ => report.ok as f64,
        }
    }
}

/// The client TLS configs for one route's roots.
#[derive(Debug, Clone)]
pub struct Tls {
    pub http1: Arc<rustls::ClientConfig>,
    pub http2: Arc<rustls::ClientConfig>,
}

/// A model API call's JSON of exactly `len` bytes, naming the model scenario 11's policy lists.
pub fn model_call(len: usize) -> Vec<u8> {
    let head =
        br#"{"model":"bench-model","max_tokens":1024,"messages":[{"role":"user","content":""#;
    let tail = br#""}]}"#;
    let mut body = head.to_vec();
    body.resize(len.saturating_sub(tail.len()).max(head.len()), b'x');
    body.extend_from_slice(tail);
    body
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn scenarios_are_numbered_from_one() {
        for s in ALL {
            assert_eq!(Scenario::from_number(s.number()), Some(s));
        }
        assert_eq!(Scenario::from_number(0), None);
        assert_eq!(Scenario::from_number(12), None);
    }

    #[test]
    fn the_model_call_is_json_of_the_asked_length() {
        let body = super::model_call(super::POST_BYTES);
        assert_eq!(body.len(), super::POST_BYTES);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["model"], "bench-model");
    }
}
