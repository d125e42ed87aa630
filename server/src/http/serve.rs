//! Serving the router over HTTP/1.1 with the bounds `axum::serve` lacks: a
//! cap on open connections (live sockets included), and a deadline for
//! each request's headers.
//!
//! Without the deadline, a client that sends half a request and waits is
//! served for ever, and enough of them use up the file descriptors the
//! MQTT listener shares. hyper's header-read timeout also runs while a
//! kept-alive connection waits for its next request, so it closes idle
//! connections too.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Serves `app` on `listener` until `stop` fires, then lets requests in
/// flight finish. `connect_info` turns a peer address into what handlers
/// read as `ConnectInfo`. `open` holds a permit per connection allowed;
/// it is shared by every listener, so that the cap holds for HTTP and
/// HTTPS together. Clients get `header_timeout` to send each request's
/// headers, counted from when the connection is ready for a request.
pub async fn serve<L, C>(
    mut listener: L,
    app: Router,
    connect_info: fn(L::Addr) -> C,
    open: Arc<Semaphore>,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<()>
where
    L: Listener,
    L::Io: Unpin,
    C: Clone + Send + Sync + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Closing at once frees the descriptor; a client that retries
            // later gets in once others have left.
            Metrics::add(&metrics.http_over_capacity, 1);
            continue;
        };
        let info = connect_info(peer);
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(info.clone()));
                request
            },
        );
        let io = TokioIo::new(Counted {
            io,
            _permit: permit,
        });
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder
                .serve_connection(io, TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("HTTP connection ended: {e}");
                    }
                }
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// A connection's socket together with its place under the connection
/// cap, so that the place is held for as long as the socket, also after a
/// WebSocket upgrade has taken it away from hyper.
struct Counted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
