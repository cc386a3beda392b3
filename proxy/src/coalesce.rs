//! Write coalescing for a client connection's HTTP/1 traffic.
//!
//! Pingora's HTTP/1 writer hands the response header and each piece of the body to the stream
//! as separate writes, and on an intercepted connection every write becomes its own TLS record:
//! a small response cost two records (header, body), and a chunked one three per chunk (size
//! line, data, CRLF). Each record is a seal, a record header and a pass through rustls' send
//! path, on the proxy and again on the client. [`Coalesced`] collects small writes and passes
//! them on at the next flush, so a small response leaves as one record.
//!
//! Data reaches the peer no later than before: Pingora's TCP stream already buffers writes until
//! a flush (the same layering as tokio's `BufStream`), so anything written without a flush was
//! already waiting; this buffer sits above TLS instead of below it. A write that would take the
//! buffer past [`LIMIT`] sends what is buffered first, and a large write goes straight through
//! without a copy. Reads are not touched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes collected at most before they are passed on: one full TLS record's worth.
pub const LIMIT: usize = 16 * 1024;

/// A stream whose small writes are passed on together at the next flush (see the module docs).
#[derive(Debug)]
pub struct Coalesced {
    inner: Stream,
    buf: Vec<u8>,
    /// How much of `buf` the inner stream has taken.
    sent: usize,
}

impl Coalesced {
    pub fn new(inner: Stream) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Passes the buffered bytes to the inner stream (without flushing it).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() + data.len() > LIMIT {
            ready!(this.poll_drain(cx))?;
            if data.len() >= LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[async_trait]
impl Shutdown for Coalesced {
    async fn shutdown(&mut self) {
        // What is buffered goes out first, as on a flush; a failure is the inner stream's.
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        self.inner.shutdown().await;
    }
}

#[async_trait]
impl Peek for Coalesced {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl UniqueID for Coalesced {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Coalesced {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Coalesced {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Coalesced {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Coalesced {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// An inner stream that records each write it is given.
    #[derive(Debug, Default)]
    struct Recorder {
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        flushes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Takes at most 5000 bytes at a time, as a busy socket would.
            let n = data.len().min(5000);
            self.writes.lock().unwrap().push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    #[async_trait]
    impl Shutdown for Recorder {
        async fn shutdown(&mut self) {}
    }
    #[async_trait]
    impl Peek for Recorder {}
    impl UniqueID for Recorder {
        fn id(&self) -> UniqueIDType {
            7
        }
    }
    impl Ssl for Recorder {}
    impl GetTimingDigest for Recorder {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            Vec::new()
        }
    }
    impl GetProxyDigest for Recorder {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            None
        }
    }
    impl GetSocketDigest for Recorder {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            None
        }
    }

    fn recorder() -> (Coalesced, Recorder) {
        let recorder = Recorder::default();
        let view = Recorder {
            writes: recorder.writes.clone(),
            flushes: recorder.flushes.clone(),
        };
        (Coalesced::new(Box::new(recorder)), view)
    }

    fn written(view: &Recorder) -> Vec<u8> {
        view.writes.lock().unwrap().concat()
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_the_flush() {
        let (mut stream, view) = recorder();
        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        stream.write_all(b"body").await.unwrap();
        assert!(
            view.writes.lock().unwrap().is_empty(),
            "nothing before the flush"
        );
        stream.flush().await.unwrap();
        assert_eq!(
            *view.writes.lock().unwrap(),
            vec![b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()]
        );
        assert_eq!(view.flushes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(stream.id(), 7);
    }

    #[tokio::test]
    async fn large_writes_pass_through_in_order_and_whole() {
        let (mut stream, view) = recorder();
        let big: Vec<u8> = (0..3 * LIMIT).map(|n| n as u8).collect();
        stream.write_all(b"head").await.unwrap();
        stream.write_all(&big).await.unwrap();
        stream.write_all(b"tail").await.unwrap();
        let all = [b"head".as_slice(), &big, b"tail"].concat();
        // Before the flush: what was buffered went first and the large write went on without
        // waiting (all but a last piece smaller than the limit), in order.
        let before = written(&view);
        assert!(before.len() > 2 * LIMIT, "{}", before.len());
        assert_eq!(before, all[..before.len()]);
        stream.flush().await.unwrap();
        assert_eq!(written(&view), all);
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_buffered() {
        let (mut stream, view) = recorder();
        stream.write_all(b"last words").await.unwrap();
        Shutdown::shutdown(&mut stream).await;
        assert_eq!(written(&view), b"last words");
        let (mut stream, view) = recorder();
        stream.write_all(b"bye").await.unwrap();
        AsyncWriteExt::shutdown(&mut stream).await.unwrap();
        assert_eq!(written(&view), b"bye");
    }
}
