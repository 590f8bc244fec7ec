//! What one connection may hold of the server: time and a file descriptor.
//!
//! A client that connects and says nothing, dribbles its request head a byte at a time (slowloris) or stalls
//! its body would otherwise keep its connection, and the descriptor under it, for ever; enough of them and
//! the process can open no file: no request is served and running jobs fail. So:
//! - a connection must deliver its first request within [`FIRST_REQUEST_TIMEOUT`] of being accepted, and
//!   every request head (the next one on a kept-alive connection included) within [`HEADER_READ_TIMEOUT`];
//! - a request body that delivers nothing for [`BODY_IDLE_TIMEOUT`] is abandoned ([`idle_bounded`]);
//! - HTTP/1.1 only (set where the server is built): hyper applies neither timeout to HTTP/2 connections;
//! - at most [`connection_cap`] connections are held at once, half of the process's descriptor limit: a
//!   connection beyond it is closed as soon as it is accepted, so the other half always remains for the
//!   repository, the files a backup reads and the hooks it runs.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum_server::accept::Accept;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// From accepting a connection (after TLS) to its first request head.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// For each request head, from the first moment the server waits for it (so also an idle kept-alive
/// connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body that sends nothing for this long is abandoned.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The fewest and most connections held at once, whatever the descriptor limit.
const CAP_RANGE: (usize, usize) = (16, 4096);

/// Connections held at once: half the soft limit on open files (see the module docs).
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
pub fn connection_cap() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft as u64);
    usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .clamp(CAP_RANGE.0, CAP_RANGE.1)
}

/// An acceptor that holds one of a fixed number of permits per connection (wrapping the plain or TLS one).
#[derive(Clone)]
pub struct LimitedAcceptor<A> {
    inner: A,
    permits: Arc<Semaphore>,
}

impl<A> LimitedAcceptor<A> {
    pub fn new(inner: A, cap: usize) -> LimitedAcceptor<A> {
        LimitedAcceptor {
            inner,
            permits: Arc::new(Semaphore::new(cap)),
        }
    }
}

impl<I, S, A> Accept<I, S> for LimitedAcceptor<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Over the cap: the stream is dropped here, which closes it.
            return Box::pin(std::future::ready(Err(io::Error::other(
                "too many connections",
            ))));
        };
        let accepting = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            Ok((
                Counted {
                    inner: stream,
                    _permit: permit,
                },
                service,
            ))
        })
    }
}

/// A connection's stream with its permit, given back when the connection is dropped.
pub struct Counted<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// `body`, failing (and so ending the request) once it has delivered nothing for [`BODY_IDLE_TIMEOUT`].
pub fn idle_bounded(body: Body) -> Body {
    let chunks = body.into_data_stream();
    Body::from_stream(futures_util::stream::unfold(
        Some(chunks),
        |chunks| async move {
            let mut chunks = chunks?;
            match tokio::time::timeout(BODY_IDLE_TIMEOUT, chunks.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(chunks))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(axum::Error::new(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request body stalled",
                    ))),
                    None,
                )),
            }
        },
    ))
}
