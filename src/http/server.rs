//! Serving the router over TCP, plain or TLS, with limits against slow and hostile clients.
//!
//! - at most [`WebLimits::max_connections`] connections are served at once; further ones wait in
//!   the listen backlog, unanswered, until a slot frees;
//! - a TLS handshake must finish within [`WebLimits::tls_handshake_timeout`]; plain HTTP sent to
//!   the TLS port gets a `400` saying so and the connection is closed;
//! - request headers must arrive within [`WebLimits::header_read_timeout`] (this also closes
//!   keep-alive connections idle for that long) and fit in [`WebLimits::max_header_bytes`]
//!   (else `431`);
//! - a handler answers within [`WebLimits::request_timeout`] (else `503`);
//! - a response write that makes no progress for [`WebLimits::write_timeout`] closes the
//!   connection (a client that stops reading).
//!
//! Connections are served on their own tasks, apart from the pollers: a slow client holds at
//! most one connection slot, never a poller.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Limits that keep slow or hostile HTTP clients from holding the server (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebLimits {
    /// Connections served at once (`--web.max-connections`).
    pub max_connections: usize,
    /// Time for a client to send its request headers; also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// Time for a client to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time for a handler to answer (then 503).
    pub request_timeout: Duration,
    /// Time a response write may make no progress before the connection is closed.
    pub write_timeout: Duration,
    /// Size of the request line and headers (larger: 431).
    pub max_header_bytes: usize,
}

impl Default for WebLimits {
    fn default() -> Self {
        WebLimits {
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// What Go's servers answer to plain HTTP on a TLS port; clients show it to the user.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and
/// waits for open connections to finish their current request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: WebLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let tls = tls.map(TlsAcceptor::from);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(Connection {
            stream,
            peer,
            tls: tls.clone(),
            builder: builder.clone(),
            router: router.clone(),
            limits,
            watcher: graceful.watcher(),
            shutdown: shutdown.clone(),
            _permit: permit,
        }));
    }
    drop(listener);
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    builder: http1::Builder,
    router: Router,
    limits: WebLimits,
    watcher: Watcher,
    shutdown: CancellationToken,
    /// Frees the connection slot when the connection ends.
    _permit: OwnedSemaphorePermit,
}

async fn connection(c: Connection) {
    let _ = c.stream.set_nodelay(true);
    let Some(acceptor) = c.tls.clone() else {
        return serve_io(c.stream, c.peer, &c.builder, c.router, c.limits, c.watcher).await;
    };
    let mut stream = c.stream;
    let handshake = async {
        if looks_like_plain_http(&stream).await {
            refuse_plain_http(&mut stream).await;
            return Err(io::Error::other("plain HTTP request on the TLS port"));
        }
        acceptor.accept(stream).await
    };
    let accepted = tokio::select! {
        _ = c.shutdown.cancelled() => return,
        r = tokio::time::timeout(c.limits.tls_handshake_timeout, handshake) => r,
    };
    match accepted {
        Ok(Ok(tls)) => serve_io(tls, c.peer, &c.builder, c.router, c.limits, c.watcher).await,
        Ok(Err(e)) => tracing::debug!(peer = %c.peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %c.peer, "TLS handshake timed out"),
    }
}

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    builder: &http1::Builder,
    router: Router,
    limits: WebLimits,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        async move {
            let req = req.map(axum::body::Body::new);
            let response = match tokio::time::timeout(request_timeout, router.oneshot(req)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::warn!("a request took longer than {request_timeout:?}; answered 503");
                    (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(WriteDeadline::new(io, limits.write_timeout));
    let conn = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %peer, error = %e, "HTTP connection closed with an error");
    }
}

/// Whether the first byte is an ASCII letter (an HTTP method) rather than a TLS record.
async fn looks_like_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_alphabetic())
}

/// Answers 400, closes our side, and reads what the client sent so it sees the answer rather
/// than a reset.
async fn refuse_plain_http(stream: &mut TcpStream) {
    if stream.write_all(PLAIN_HTTP_ON_TLS).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let drain = async {
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// An IO whose writes fail once they make no progress for `timeout`: a client that stops
/// reading cannot hold a connection forever.
struct WriteDeadline<I> {
    inner: I,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteDeadline<I> {
    fn new(inner: I, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when a write is pending: arms the deadline, or fails if it passed.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.after_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.after_write(cx, r)
    }
}

impl<I> WriteDeadline<I> {
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_fail_once_the_peer_stops_reading() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(near, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let e = io
            .write_all(&[b'x'; 1024])
            .await
            .expect_err("the peer never reads");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));

        // A peer that keeps reading, however slowly, is never cut off.
        let mut io = WriteDeadline::new(io.inner, Duration::from_secs(30));
        let mut sink = vec![0u8; 64];
        let reader = tokio::spawn(async move {
            let mut total = 0;
            while total < 64 + 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += far.read(&mut sink).await.expect("read");
            }
        });
        io.write_all(&[b'y'; 1024]).await.expect("progressing peer");
        drop(io);
        reader.await.expect("reader");
    }
}
