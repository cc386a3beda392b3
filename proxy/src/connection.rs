//! What the proxy knows about one accepted connection, shared with its requests.
//!
//! Pingora's HTTP layer gives each request a `Session` that carries the connection's socket
//! digest but no user data. The listener registers a [`ConnectionContext`] under the
//! connection's (peer, local) address pair, a key no two live TCP connections share, before it
//! hands the stream to the HTTP layer, and removes it when the connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use cordon_policy::input::ConnectionDocument;
use cordon_policy::{ConnectionInput, SessionInput};

/// One accepted connection.
#[derive(Debug)]
pub struct ConnectionContext {
    pub id: String,
    /// `input.source` as text, formatted once for every request's audit record.
    pub source: String,
    pub input: ConnectionInput,
    pub session: SessionInput,
    /// The constant part of every request's input document, built once. Requests are decided
    /// by the generation current when they arrive, so a reload applies to open connections
    /// from their next request.
    pub document: ConnectionDocument,
    /// Whether the connection's requests arrive over intercepted TLS.
    pub tls: bool,
    /// Whether `input.connect_target` came from a CONNECT (a tunnel to one host, which pins
    /// every request's host) rather than from an absolute-form request (a plain-HTTP proxy
    /// connection may carry requests for many hosts).
    pub tunnel: bool,
    /// The response scrub table for this connection's host (see `credentials::scrub`).
    pub scrub: crate::credentials::ScrubCache,
}

type Key = (SocketAddr, SocketAddr);

/// Live connections by (peer, local) address.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    inner: RwLock<HashMap<Key, Arc<ConnectionContext>>>,
}

/// Removes the registration when dropped, however the connection ends.
#[derive(Debug)]
pub struct Registration<'a> {
    registry: &'a ConnectionRegistry,
    key: Key,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl ConnectionRegistry {
    pub fn register(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        context: Arc<ConnectionContext>,
    ) -> Registration<'_> {
        let key = (peer, local);
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, context);
        Registration {
            registry: self,
            key,
        }
    }

    pub fn get(&self, peer: SocketAddr, local: SocketAddr) -> Option<Arc<ConnectionContext>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(peer, local))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
