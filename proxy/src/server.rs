//! Assembling the gateway on a Pingora server: listeners, admin, metrics, signals.

use std::sync::Arc;

use async_trait::async_trait;
use cordon_policy::ListenerMode;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::admin::{AdminApi, MetricsEndpoint};
use crate::authorize::Authorizer;
use crate::gateway::{
    Gateway, OriginalDestination, SocketOriginalDestination, sni_acceptor, sni_acceptor_http1,
};
use crate::relay::Relay;
use crate::state::GatewayState;

/// Why the server could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("pingora: {0}")]
    Pingora(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("DNS stub: cannot listen on {address}: {source}")]
    Dns {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Builds the pingora server for `state`. `original_destination` is the transparent listener's
/// seam (SO_ORIGINAL_DST in production).
pub fn build(
    state: Arc<GatewayState>,
    original_destination: Option<Arc<dyn OriginalDestination>>,
) -> Result<Server, ServeError> {
    let mut server =
        Server::new(Some(Opt::default())).map_err(|e| ServeError::Pingora(e.to_string()))?;
    let conf = ServerConf {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(10),
        ca_file: upstream_roots(&state)?,
        ..ServerConf::default()
    };
    server.configuration = Arc::new(conf);
    server.bootstrap();

    let http = Arc::new(pingora::proxy::http_proxy(
        &server.configuration,
        Authorizer {
            state: state.clone(),
        },
    ));
    let relay = Arc::new(Relay::new(
        Authorizer {
            state: state.clone(),
        },
        TransportConnector::new(Some(ConnectorOptions::from_server_conf(
            &server.configuration,
        ))),
        http.clone(),
    ));
    let acceptor = Arc::new(sni_acceptor(&state).map_err(ServeError::Tls)?);
    let acceptor_http1 = Arc::new(sni_acceptor_http1(&state).map_err(ServeError::Tls)?);
    let original_destination =
        original_destination.unwrap_or_else(|| Arc::new(SocketOriginalDestination));
    let listeners = [
        (ListenerMode::Explicit, state.config.listen.explicit),
        (ListenerMode::Transparent, state.config.listen.transparent),
    ];
    for (mode, address) in listeners {
        let Some(address) = address else { continue };
        let gateway = Gateway {
            state: state.clone(),
            mode,
            http: http.clone(),
            relay: relay.clone(),
            acceptor: acceptor.clone(),
            acceptor_http1: acceptor_http1.clone(),
            original_destination: original_destination.clone(),
        };
        let mut service = Service::new(format!("cordon {}", mode.as_str()), gateway);
        service.add_tcp(&address.to_string());
        server.add_service(service);
    }
    let mut admin = Service::new(
        "cordon admin".to_string(),
        AdminApi {
            state: state.clone(),
        },
    );
    admin.add_tcp(&state.config.listen.admin.to_string());
    server.add_service(admin);
    if let Some(address) = state.config.listen.metrics {
        let mut metrics = Service::new(
            "cordon metrics".to_string(),
            MetricsEndpoint {
                state: state.clone(),
            },
        );
        metrics.add_tcp(&address.to_string());
        server.add_service(metrics);
    }
    if let Some(address) = state.config.dns.listen {
        // Bound here, not in the service, so a taken port fails the start (exit 69).
        let socket = std::net::UdpSocket::bind(address)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| ServeError::Dns { address, source })?;
        server.add_service(background_service(
            "dns stub",
            DnsStub {
                state: state.clone(),
                socket: std::sync::Mutex::new(Some(socket)),
            },
        ));
    }
    if let Some(interval) = state.config.credentials_watch
        && state.config.credentials_store.is_some()
    {
        server.add_service(background_service(
            "secret store watcher",
            WatchSecrets {
                state: state.clone(),
                interval,
            },
        ));
    }
    server.add_service(background_service(
        "policy reload on SIGHUP",
        ReloadOnHangup { state },
    ));
    Ok(server)
}

/// Upstream trust: the system roots plus `tls.upstream_extra_roots`, written as one bundle into
/// the state directory, because pingora's `ca_file` replaces the system roots rather than adding
/// to them.
fn upstream_roots(state: &GatewayState) -> Result<Option<String>, ServeError> {
    let extra = &state.config.tls.upstream_extra_roots;
    if extra.is_empty() {
        return Ok(None);
    }
    let mut bundle = String::new();
    for system in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read_to_string(system) {
            bundle.push_str(&pem);
            bundle.push('\n');
            break;
        }
    }
    for path in extra {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))?;
        bundle.push_str(&pem);
        bundle.push('\n');
    }
    let out = state.config.state_dir.join("upstream-roots.pem");
    std::fs::create_dir_all(&state.config.state_dir)
        .and_then(|()| std::fs::write(&out, bundle))
        .map_err(|e| ServeError::Tls(format!("cannot write {}: {e}", out.display())))?;
    Ok(Some(out.to_string_lossy().into_owned()))
}

/// The sandboxes' DNS stub (`crate::dns`).
struct DnsStub {
    state: Arc<GatewayState>,
    socket: std::sync::Mutex<Option<std::net::UdpSocket>>,
}

#[async_trait]
impl BackgroundService for DnsStub {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let socket = self
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(tokio::net::UdpSocket::from_std);
        let Some(Ok(socket)) = socket else {
            tracing::error!("DNS stub socket unavailable; sandboxes cannot resolve names");
            return;
        };
        tokio::select! {
            () = crate::dns::serve(self.state.clone(), socket) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Reloads the secret store when one of its files changes: a rotated value file, an edited
/// store, a drop-in added to a store directory. A failed reload keeps the previous secrets and
/// is logged once per change.
struct WatchSecrets {
    state: Arc<GatewayState>,
    interval: std::time::Duration,
}

#[async_trait]
impl BackgroundService for WatchSecrets {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.state.secrets.changed_on_disk() {
                        let _ = self.state.reload_secrets();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Reloads the policy and the secret store on SIGHUP.
struct ReloadOnHangup {
    state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::error!("cannot listen for SIGHUP; reload through the admin API instead");
            return;
        };
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    let _ = self.state.reload_policy();
                    let _ = self.state.reload_secrets();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
