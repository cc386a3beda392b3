//! `cordon-bench load`: one load run from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use cordon_bench::load::{ConnectionReuse, LoadConfig, Protocol, Route, client_tls};
use http::{HeaderName, HeaderValue, Uri};

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// `https://host:port/path`; `{n}` in the host makes every connection's host unique.
    url: String,
    /// Connect straight to this address (an upstream, or a transparent listener: SNI decides).
    #[arg(long, conflicts_with = "proxy")]
    connect: Option<SocketAddr>,
    /// Go through this explicit proxy with CONNECT.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// PEM roots the server certificates are verified against.
    #[arg(long)]
    ca: PathBuf,
    /// Concurrent connections (or connect-and-request loops with --new-connection).
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,
    /// Concurrent streams per connection (HTTP/2 only).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    #[arg(long)]
    http2: bool,
    /// A new TLS connection for every request.
    #[arg(long)]
    new_connection: bool,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many requests (or at --duration, whichever comes first).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Send POSTs with a body of this many bytes (`x` repeated) instead of GETs.
    #[arg(long)]
    post_bytes: Option<usize>,
    /// Extra request header, `name: value` (repeatable).
    #[arg(long, short = 'H')]
    header: Vec<String>,
}

impl LoadArgs {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let config = self.config()?;
        let report = cordon_bench::load::run(&config).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    }

    fn config(&self) -> anyhow::Result<LoadConfig> {
        // `{n}` is not valid in a URI host, so it is swapped out for parsing and back after.
        let uri: Uri = self
            .url
            .replace("{n}", "n-placeholder")
            .parse()
            .with_context(|| format!("{:?} is not a URL", self.url))?;
        if uri.scheme_str() != Some("https") {
            bail!("{} must be an https:// URL", self.url);
        }
        let host = uri
            .host()
            .context("the URL has no host")?
            .replace("n-placeholder", "{n}");
        let route = match (self.connect, self.proxy) {
            (Some(a), None) => Route::Direct(a),
            (None, Some(a)) => Route::Connect(a),
            _ => bail!("give exactly one of --connect and --proxy"),
        };
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            bail!("--duration must be a positive number of seconds");
        }
        let protocol = if self.http2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let headers = self
            .header
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = LoadConfig {
            route,
            source: None,
            host,
            port: uri.port_u16().unwrap_or(443),
            path: uri
                .path_and_query()
                .map_or("/".into(), |p| p.as_str().into()),
            method: if self.post_bytes.is_some() {
                http::Method::POST
            } else {
                http::Method::GET
            },
            body: bytes::Bytes::from(vec![b'x'; self.post_bytes.unwrap_or(0)]),
            headers,
            protocol,
            reuse: if self.new_connection {
                ConnectionReuse::PerRequest
            } else {
                ConnectionReuse::KeepAlive
            },
            connections: self.connections,
            streams: self.streams,
            duration: Duration::from_secs_f64(self.duration),
            requests: self.requests,
            tls: client_tls(&self.ca, protocol)?,
        };
        config.validate()?;
        Ok(config)
    }
}

fn parse_header(text: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = text
        .split_once(':')
        .with_context(|| format!("header {text:?} is not `name: value`"))?;
    Ok((
        HeaderName::try_from(name.trim())
            .with_context(|| format!("bad header name in {text:?}"))?,
        HeaderValue::try_from(value.trim())
            .with_context(|| format!("bad header value in {text:?}"))?,
    ))
}
