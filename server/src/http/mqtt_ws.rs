//! MQTT over WebSocket (subprotocol `mqtt`) on the HTTP listeners, for
//! browsers and MQTT.js in a web page. Each WebSocket becomes a byte
//! stream that the device edge serves exactly like a TCP socket: the same
//! CONNECT deadline, login, topic rules, rates and connection limits.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::ClientIp;
use super::AppState;
use crate::door::Door;
use crate::edge::Edge;

/// What the route needs of the device edge: the edge itself (closed at
/// shutdown with the MQTT listeners), the tracker its sessions run on, and
/// its stop signal.
#[derive(Clone, Debug)]
pub struct MqttOverWs {
    /// The path it is served on (`--mqtt-ws-path`).
    pub path: String,
    pub edge: Door<Edge>,
    pub sessions: TaskTracker,
    pub stop: CancellationToken,
}

/// `GET /mqtt` (or `--mqtt-ws-path`): upgrades to a WebSocket that carries
/// MQTT 3.1.1 or 5 in binary messages.
pub(super) async fn upgrade(
    State(state): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(edge) = state.mqtt_ws.edge.get() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
            .into_response();
    };
    // A WebSocket message is one or more MQTT packets (or part of one), so
    // the packet limit bounds it; tungstenite's own defaults are 64 MiB.
    let max = edge.max_packet_bytes();
    let peer = SocketAddr::new(ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])), 0);
    let sessions = state.mqtt_ws.sessions.clone();
    let stop = state.mqtt_ws.stop.clone();
    ws.protocols(["mqtt"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            crate::edge::serve_stream(&edge, WsBytes::new(socket), peer, &sessions, &stop);
        })
}

/// A WebSocket as a byte stream: binary messages in, binary messages out.
/// Text messages are not MQTT and end the stream.
struct WsBytes {
    ws: WebSocket,
    pending: Bytes,
}

impl WsBytes {
    fn new(ws: WebSocket) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for WsBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => self.pending = bytes,
                // Pings are answered by the WebSocket itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // End of stream: closed, or not MQTT.
                Some(Ok(Message::Close(_) | Message::Text(_))) | None => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut ws = Pin::new(&mut self.ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(io::Error::other)?;
        ws.start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
