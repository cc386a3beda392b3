//! The listeners' connection handling: read what the client wants (CONNECT target, ClientHello,
//! HTTP), make the connect-stage decision, then deny, splice or intercept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use cordon_policy::input::{ConnectionDocument, parse_authority};
use cordon_policy::{ConnectionInput, Decision, ListenerMode, TlsHandling, Transport};
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audit::{AuditRecord, now_rfc3339};
use crate::authorize::Authorizer;
use crate::coalesce::Coalesced;
use crate::config::{ConnectStage, NoSniAction};
use crate::connection::ConnectionContext;
use crate::intercept::client_hello::{FirstBytes, MAX_CLIENT_HELLO, classify};
use crate::intercept::leaf_cache::{FixedResolver, SniResolver};
use crate::relay::Relay;
use crate::state::GatewayState;
use preamble::Preamble;

pub(crate) mod preamble;

/// Where a transparent connection was going. A seam: production reads SO_ORIGINAL_DST from the
/// socket; tests without root substitute a fixed address.
pub trait OriginalDestination: Send + Sync + std::fmt::Debug {
    fn original_destination(&self, stream: &Stream) -> Option<SocketAddr>;
}

/// SO_ORIGINAL_DST, as recorded by pingora's socket digest.
#[derive(Debug)]
pub struct SocketOriginalDestination;

impl OriginalDestination for SocketOriginalDestination {
    fn original_destination(&self, stream: &Stream) -> Option<SocketAddr> {
        let digest = stream.get_socket_digest()?;
        digest.original_dst()?.as_inet().copied()
    }
}

/// One listener (explicit or transparent).
pub struct Gateway {
    pub state: Arc<GatewayState>,
    pub mode: ListenerMode,
    /// HTTP/2 client connections.
    pub http: Arc<HttpProxy<Authorizer>>,
    /// HTTP/1.x client connections.
    pub relay: Arc<Relay>,
    pub acceptor: Arc<Acceptor>,
    /// The same, offering only HTTP/1.1 (see [`Gateway::reads_bodies`]).
    pub acceptor_http1: Arc<Acceptor>,
    pub original_destination: Arc<dyn OriginalDestination>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Why a connection was refused before any request.
struct Refused {
    class: &'static str,
    reason: String,
}

impl Refused {
    fn new(class: &'static str, reason: impl Into<String>) -> Self {
        Self {
            class,
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl ServerApp for Gateway {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let metrics = &self.state.metrics;
        metrics.active_connections.inc();
        let outcome = self.handle(stream, shutdown).await;
        metrics.active_connections.dec();
        metrics
            .connections
            .with_label_values(&[self.mode.as_str(), outcome])
            .inc();
        None
    }
}

impl Gateway {
    /// Handles a connection to its end; returns the outcome label.
    async fn handle(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> &'static str {
        let started = Instant::now();
        let Some(digest) = stream.get_socket_digest() else {
            return "failed";
        };
        let (Some(peer), Some(local)) = (
            digest.peer_addr().and_then(|a| a.as_inet().copied()),
            digest.local_addr().and_then(|a| a.as_inet().copied()),
        ) else {
            return "failed";
        };
        let original_destination = match self.mode {
            ListenerMode::Transparent => self.original_destination.original_destination(&stream),
            ListenerMode::Explicit => None,
        };
        // An address the DNS stub handed out stands for a name.
        let dns_name = original_destination.and_then(|d| self.state.names.name_of(d.ip()));
        let Ok(stream) = stream.into_any().downcast::<L4Stream>() else {
            tracing::error!("listener stream is not a TCP stream");
            return "failed";
        };
        let mut stream = *stream;
        let mut connection = ConnectionInput {
            mode: self.mode,
            transport: Transport::Tcp,
            source: peer,
            original_destination,
            sni: None,
            connect_target: None,
            dns_name,
        };
        let session = self.state.sessions.lookup(peer.ip());
        let timeout = self.state.config.listen.handshake_timeout;

        let mut tunnel = false;
        let prepared = tokio::time::timeout(
            timeout,
            self.read_preamble(&mut stream, &mut connection, &mut tunnel),
        )
        .await;
        let first = match prepared {
            Ok(Ok(first)) => first,
            Ok(Err(refused)) => {
                self.audit_connection(
                    &connection,
                    &session.id,
                    "deny",
                    refused.class,
                    &refused.reason,
                    started,
                );
                return "denied";
            }
            Err(_) => {
                self.audit_connection(
                    &connection,
                    &session.id,
                    "deny",
                    "timeout",
                    "the client sent no complete request or ClientHello in time",
                    started,
                );
                return "denied";
            }
        };
        let mut client_http1 = false;
        connection.transport = match &first {
            FirstBytes::Tls { sni, http1 } => {
                connection.sni = sni.clone();
                client_http1 = *http1;
                Transport::Tls
            }
            FirstBytes::Http => Transport::Http,
            _ => Transport::Tcp,
        };

        let document = ConnectionDocument::new(&connection, &session);
        let generation = self.state.policy.generation();
        let decision = match self.state.config.connect_stage {
            ConnectStage::Evaluate => Some(generation.decide_value(document.connect())),
            ConnectStage::Intercept => None,
        };
        if let Some(d) = &decision
            && !d.is_allowed()
            && self.state.config.reports(&session)
        {
            // Report mode: recorded, counted, and the connection goes on to the request stage.
            self.state
                .metrics
                .would_deny
                .with_label_values(&["connect"])
                .inc();
            let class = if d.failure.is_some() {
                "policy_failure"
            } else {
                "policy"
            };
            self.audit_reported_connection(&connection, &session, class, &d.reason, started);
        } else if let Some(d) = &decision
            && !d.is_allowed()
        {
            let class = if d.failure.is_some() {
                "policy_failure"
            } else {
                "policy"
            };
            let id =
                self.audit_connection(&connection, &session.id, "deny", class, &d.reason, started);
            // A plaintext HTTP client can be told why, like a refused request; a TLS client
            // cannot without a handshake the policy just refused.
            if connection.transport == Transport::Http {
                let refusal = crate::respond::Refusal::new(
                    d.deny_status(),
                    if d.failure.is_some() {
                        crate::respond::RefusalClass::PolicyFailure
                    } else {
                        crate::respond::RefusalClass::Policy
                    },
                    d.reason.clone(),
                );
                let _ = stream.write_all(&refusal.http1_bytes(&id)).await;
                let _ = stream.shutdown().await;
            }
            return "denied";
        }
        let passthrough = decision
            .as_ref()
            .is_some_and(|d: &Decision| d.tls == TlsHandling::Passthrough);

        match connection.transport {
            Transport::Tcp if decision.is_none() => {
                self.audit_connection(&connection, &session.id, "deny", "raw_tcp", "raw TCP needs a connect-stage policy decision; policy.connect_stage is \"intercept\"", started);
                "denied"
            }
            Transport::Tcp => self.splice(stream, &connection, &session.id, started).await,
            Transport::Tls if passthrough => {
                self.splice(stream, &connection, &session.id, started).await
            }
            Transport::Tls => {
                let acceptor = match (
                    &connection.sni,
                    self.state.config.tls.no_sni,
                    connection.original_destination,
                ) {
                    (Some(sni), _, _) if client_http1 && self.reads_bodies(sni) => {
                        self.acceptor_http1.clone()
                    }
                    (Some(_), _, _) => self.acceptor.clone(),
                    (None, NoSniAction::OriginalDestination, Some(dst)) => {
                        match self.fixed_acceptor(&dst.ip().to_string()) {
                            Ok(a) => Arc::new(a),
                            Err(reason) => {
                                self.audit_connection(
                                    &connection,
                                    &session.id,
                                    "deny",
                                    "internal",
                                    &reason,
                                    started,
                                );
                                return "failed";
                            }
                        }
                    }
                    (None, _, _) => {
                        self.audit_connection(&connection, &session.id, "deny", "no_sni", "the TLS client sent no server name (SNI); without one the upstream cannot be verified", started);
                        return "denied";
                    }
                };
                let handshake_started = Instant::now();
                let tls = match tokio::time::timeout(timeout, acceptor.tls_handshake(stream)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        self.audit_connection(
                            &connection,
                            &session.id,
                            "deny",
                            "tls_handshake",
                            &format!("TLS handshake with the client failed: {e}"),
                            started,
                        );
                        return "failed";
                    }
                    Err(_) => {
                        self.audit_connection(
                            &connection,
                            &session.id,
                            "deny",
                            "timeout",
                            "TLS handshake timed out",
                            started,
                        );
                        return "failed";
                    }
                };
                self.state
                    .metrics
                    .tls_handshake
                    .observe(handshake_started.elapsed().as_secs_f64());
                self.serve_http(
                    Box::new(tls),
                    connection,
                    session,
                    document,
                    (true, tunnel),
                    peer,
                    local,
                    shutdown,
                )
                .await;
                "intercepted"
            }
            Transport::Http => {
                self.serve_http(
                    Box::new(stream),
                    connection,
                    session,
                    document,
                    (false, tunnel),
                    peer,
                    local,
                    shutdown,
                )
                .await;
                "intercepted"
            }
        }
    }

    /// Explicit mode: reads the CONNECT head and answers it. Then (both modes) reads the first
    /// bytes of the traffic, and puts every byte back for the layer that parses it.
    async fn read_preamble(
        &self,
        stream: &mut L4Stream,
        connection: &mut ConnectionInput,
        tunnel: &mut bool,
    ) -> Result<FirstBytes, Refused> {
        if self.mode == ListenerMode::Explicit {
            let mut head = Vec::with_capacity(1024);
            let (target, consumed) = loop {
                let mut buf = [0u8; 2048];
                let n = stream
                    .read(&mut buf)
                    .await
                    .map_err(|e| Refused::new("bad_request", format!("read failed: {e}")))?;
                if n == 0 {
                    return Err(Refused::new(
                        "bad_request",
                        "the client closed before sending a request",
                    ));
                }
                head.extend_from_slice(&buf[..n]);
                match preamble::parse(&head) {
                    Preamble::Partial => continue,
                    Preamble::Connect { target, consumed } => break (target, consumed),
                    Preamble::Plain { target } => {
                        // The HTTP layer reads the request again.
                        stream.rewind(&head);
                        connection.connect_target = target;
                        return Ok(FirstBytes::Http);
                    }
                    Preamble::BadTarget(reason) => {
                        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncordon-error: bad_request\r\ncontent-length: 0\r\n\r\n").await;
                        let _ = stream.flush().await;
                        return Err(Refused::new("bad_request", reason));
                    }
                    Preamble::Malformed(reason) => return Err(Refused::new("bad_request", reason)),
                }
            };
            connection.connect_target = Some(target);
            *tunnel = true;
            // pingora's TCP stream buffers writes: flush, or the client waits for the answer.
            stream
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .and(stream.flush().await)
                .map_err(|e| Refused::new("bad_request", format!("write failed: {e}")))?;
            if head.len() > consumed {
                // Bytes the client sent after the CONNECT head already belong to the tunnel.
                let early = head.split_off(consumed);
                return self.classify(stream, early).await;
            }
        }
        self.classify(stream, Vec::new()).await
    }

    async fn classify(
        &self,
        stream: &mut L4Stream,
        mut seen: Vec<u8>,
    ) -> Result<FirstBytes, Refused> {
        loop {
            match classify(&seen) {
                FirstBytes::NeedMore => {}
                FirstBytes::BadTls(reason) => {
                    return Err(Refused::new(
                        "bad_client_hello",
                        format!("malformed TLS ClientHello: {reason}"),
                    ));
                }
                first => {
                    stream.rewind(&seen);
                    return Ok(first);
                }
            }
            if seen.len() >= MAX_CLIENT_HELLO {
                return Err(Refused::new(
                    "bad_client_hello",
                    "first flight larger than 16 KiB",
                ));
            }
            let mut buf = vec![0u8; 4096];
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| Refused::new("bad_request", format!("read failed: {e}")))?;
            if n == 0 {
                if seen.is_empty() {
                    return Err(Refused::new(
                        "bad_request",
                        "the client closed without sending anything",
                    ));
                }
                // A short first flight that never completes: whatever it is, it is not TLS or HTTP.
                stream.rewind(&seen);
                return Ok(FirstBytes::Other);
            }
            seen.extend_from_slice(&buf[..n]);
        }
    }

    /// Whether the policy reads bodies to `host`. Such connections are offered HTTP/1.1 only
    /// (a client that speaks only HTTP/2 keeps it): there the relay reads a body whole up to
    /// `max_bytes` whatever its framing (a length, chunks, an `Expect: 100-continue`) and sends
    /// it on from memory, while an HTTP/2 client's bodies go through Pingora's proxy, which
    /// holds at most 64 KiB of one. It also keeps git off HTTP/2 uploads, where Debian 12's
    /// git and libcurl 7.88 can stall a large push (tests/git_push.rs, measured here: 2 to 5
    /// runs in 150 under load over HTTP/2, none in 210 over HTTP/1.1).
    fn reads_bodies(&self, host: &str) -> bool {
        self.state
            .policy
            .generation()
            .request_body()
            .is_some_and(|config| config.wants(host))
    }

    fn fixed_acceptor(&self, name: &str) -> Result<Acceptor, String> {
        let leaf = self.state.leaves.leaf(name).map_err(|e| e.to_string())?;
        let config = server_config(Arc::new(FixedResolver(leaf)))?;
        Ok(Acceptor::from_server_config(Arc::new(config)))
    }

    #[allow(clippy::too_many_arguments)] // one call site, each value distinct
    async fn serve_http(
        self: &Arc<Self>,
        stream: Stream,
        input: ConnectionInput,
        session: cordon_policy::SessionInput,
        document: ConnectionDocument,
        (tls, tunnel): (bool, bool),
        peer: SocketAddr,
        local: SocketAddr,
        shutdown: &ShutdownWatch,
    ) {
        let context = Arc::new(ConnectionContext {
            id: self.state.next_decision_id(),
            source: input.source.to_string(),
            input,
            session,
            document,
            tls,
            tunnel,
            scrub: Default::default(),
        });
        let _registration = self
            .state
            .connections
            .register(peer, local, context.clone());
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            pingora::apps::ServerApp::process_new(&self.http, stream, shutdown).await;
        } else {
            let stream: Stream = Box::new(Coalesced::new(stream));
            self.relay.serve(stream, &context, shutdown).await;
        }
    }

    /// Connects the client to the upstream byte for byte (`mitm: false` or allowed raw TCP).
    async fn splice(
        &self,
        mut stream: L4Stream,
        connection: &ConnectionInput,
        session: &str,
        started: Instant,
    ) -> &'static str {
        let target = connection
            .connect_target
            .as_deref()
            .and_then(|t| parse_authority(t, 443))
            .or_else(|| {
                let port = connection.original_destination.map_or(443, |a| a.port());
                connection
                    .sni
                    .as_deref()
                    .and_then(|s| parse_authority(s, port))
            })
            .or_else(|| {
                let port = connection.original_destination?.port();
                let host = connection.dns_name.clone()?;
                Some(cordon_policy::input::Authority { host, port })
            })
            .or_else(|| {
                connection
                    .original_destination
                    .map(|a| cordon_policy::input::Authority {
                        host: a.ip().to_string(),
                        port: a.port(),
                    })
            });
        let Some(target) = target else {
            self.audit_connection(
                connection,
                session,
                "deny",
                "bad_request",
                "no destination to splice to",
                started,
            );
            return "denied";
        };
        let address = match self.state.resolver.resolve(&target.host, target.port).await {
            Ok((address, _)) => address,
            Err(e) => {
                let (decision, class) = match e {
                    crate::upstream::UpstreamError::Forbidden { .. } => ("deny", "ssrf"),
                    crate::upstream::UpstreamError::Resolve { .. } => ("error", "resolve"),
                };
                self.audit_connection(
                    connection,
                    session,
                    decision,
                    class,
                    &e.to_string(),
                    started,
                );
                return "denied";
            }
        };
        let connect = tokio::time::timeout(
            self.state.config.upstream.connect_timeout,
            tokio::net::TcpStream::connect(address),
        )
        .await;
        let mut upstream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.audit_connection(
                    connection,
                    session,
                    "error",
                    "upstream",
                    &format!("connect to {address} failed: {e}"),
                    started,
                );
                return "failed";
            }
            Err(_) => {
                self.audit_connection(
                    connection,
                    session,
                    "error",
                    "upstream_timeout",
                    &format!("connect to {address} timed out"),
                    started,
                );
                return "failed";
            }
        };
        let (up, down) = tokio::io::copy_bidirectional(&mut stream, &mut upstream)
            .await
            .unwrap_or((0, 0));
        self.state.metrics.bytes_upstream.inc_by(up);
        self.state.metrics.bytes_downstream.inc_by(down);
        self.audit_connection(
            connection,
            session,
            "allow",
            "policy",
            &format!("spliced to {address} uninspected"),
            started,
        );
        "spliced"
    }

    /// Writes a connection record; returns its decision id.
    fn audit_connection(
        &self,
        connection: &ConnectionInput,
        session: &str,
        decision: &'static str,
        class: &'static str,
        reason: &str,
        started: Instant,
    ) -> String {
        self.connection_record(connection, session, decision, false, class, reason, started)
    }

    /// Records a connection the policy denied and report mode let through.
    fn audit_reported_connection(
        &self,
        connection: &ConnectionInput,
        session: &cordon_policy::SessionInput,
        class: &'static str,
        reason: &str,
        started: Instant,
    ) {
        self.connection_record(
            connection,
            &session.id,
            "allow",
            true,
            class,
            reason,
            started,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn connection_record(
        &self,
        connection: &ConnectionInput,
        session: &str,
        decision: &'static str,
        would_deny: bool,
        class: &'static str,
        reason: &str,
        started: Instant,
    ) -> String {
        let id = self.state.next_decision_id();
        let destination = cordon_policy::PolicyInput {
            stage: cordon_policy::Stage::Connect,
            connection: connection.clone(),
            session: cordon_policy::SessionInput::unknown(),
            request: None,
        }
        .destination();
        // An allowed connection's requests are counted one by one; a refused one counts here.
        if decision != "allow" {
            self.state.sessions.count_decision(session, false);
        }
        self.state.audit.write(&AuditRecord {
            time: now_rfc3339(),
            kind: "connection",
            decision_id: &id,
            session,
            source: &connection.source.to_string(),
            original_destination: connection.original_destination,
            mode: connection.mode.as_str(),
            sni: connection.sni.as_deref(),
            host: destination.as_ref().map(|d| d.host.as_str()),
            port: destination.as_ref().map(|d| d.port),
            decision,
            would_deny,
            reason_class: class,
            reason,
            policy_generation: self.state.policy.generation().info().id.to_string().into(),
            duration_ms: started.elapsed().as_millis() as u64,
            ..AuditRecord::default()
        });
        id
    }
}

/// The interception TLS configuration: TLS 1.2 and 1.3, ALPN h2 and http/1.1.
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, String> {
    server_config_offering(resolver, &[b"h2", b"http/1.1"])
}

/// [`server_config`] with the ALPN protocols `alpn`, in the server's order of preference.
fn server_config_offering(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The shared interception acceptor (leaves by SNI from the cache).
pub fn sni_acceptor(state: &GatewayState) -> Result<Acceptor, String> {
    let config = server_config(Arc::new(SniResolver {
        cache: state.leaves.clone(),
    }))?;
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

/// [`sni_acceptor`] offering HTTP/1.1 only.
pub fn sni_acceptor_http1(state: &GatewayState) -> Result<Acceptor, String> {
    let config = server_config_offering(
        Arc::new(SniResolver {
            cache: state.leaves.clone(),
        }),
        &[b"http/1.1"],
    )?;
    Ok(Acceptor::from_server_config(Arc::new(config)))
}
