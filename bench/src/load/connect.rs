//! Opening one verified TLS connection: TCP, an optional CONNECT through an explicit proxy,
//! then the TLS handshake with the request's host as SNI.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::config::Route;

/// A CONNECT answer's head larger than this is refused (proxies send a few dozen bytes).
const MAX_CONNECT_RESPONSE: usize = 8 * 1024;

pub async fn open_tls(
    route: Route,
    host: &str,
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    open_tls_from(None, route, host, port, tls).await
}

/// [`open_tls`] from the local address `source` (any loopback address is usable on Linux).
pub async fn open_tls_from(
    source: Option<IpAddr>,
    route: Route,
    host: &str,
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let address = match route {
        Route::Direct(a) | Route::Connect(a) => a,
    };
    let mut tcp = connect_from(source, address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    if let Route::Connect(_) = route {
        tunnel(&mut tcp, host, port).await?;
    }
    let name = ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
    TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake for {host}"))
}

async fn connect_from(source: Option<IpAddr>, address: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(address).await;
    };
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(address).await
}

/// Sends `CONNECT host:port` and reads the proxy's answer head; anything but 2xx is an error.
/// The proxy sends nothing after the head until the client speaks, so reading in chunks
/// cannot swallow TLS bytes.
async fn tunnel(tcp: &mut TcpStream, host: &str, port: u16) -> anyhow::Result<()> {
    let request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .context("sending CONNECT")?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp
            .read(&mut buf)
            .await
            .context("reading the CONNECT answer")?;
        if n == 0 {
            bail!("the proxy closed the connection after CONNECT {host}:{port}");
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_CONNECT_RESPONSE {
            bail!("the proxy's CONNECT answer head is over {MAX_CONNECT_RESPONSE} bytes");
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let status = line.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with('2') {
        bail!("CONNECT {host}:{port} refused: {line}");
    }
    Ok(())
}
