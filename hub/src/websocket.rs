//! The hub's side of AMQP over WebSockets (the service's port 443): the HTTP upgrade on
//! `/$servicebus/websocket` with subprotocol `AMQPWSB10` (the Python SDK's) or `amqp`
//! (fe2o3-amqp-ws, Go, Rust SDKs), then a byte stream over the binary messages that the
//! AMQP engine reads and writes like a socket.
//!
//! AMQP frames need not line up with messages: a message may hold part of a frame or several
//! frames, and the engine sees only bytes. Ping, pong and the close handshake are
//! tungstenite's; a close or end of stream reads as end of stream.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use fe2o3_amqp_ws::tokio_tungstenite::{
    accept_hdr_async,
    tungstenite::{
        handshake::server::{ErrorResponse, Request, Response},
        http::{HeaderValue, StatusCode},
        Error as WsError, Message,
    },
    WebSocketStream,
};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tcpulse_eventhub::client::WEBSOCKET_PATH;

/// The subprotocols the hub accepts, as Event Hubs does.
pub(crate) const SUBPROTOCOLS: [&str; 2] = ["AMQPWSB10", "amqp"];

const SEC_WEBSOCKET_PROTOCOL: &str = "Sec-WebSocket-Protocol";

fn refusal(status: StatusCode, why: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why));
    *response.status_mut() = status;
    response
}

/// The first subprotocol the client offers that the hub speaks.
fn chosen_subprotocol(request: &Request) -> Option<&'static str> {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|offered| SUBPROTOCOLS.iter().copied().find(|s| *s == offered))
}

/// Answers the upgrade: 404 for another path, 400 without a subprotocol the hub speaks.
#[allow(clippy::result_large_err)] // the shape tungstenite's `Callback` asks for
fn answer(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let path = request.uri().path();
    if path.trim_end_matches('/') != WEBSOCKET_PATH {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("AMQP over WebSocket is served on {WEBSOCKET_PATH}, not {path}\n"),
        ));
    }
    let Some(subprotocol) = chosen_subprotocol(request) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "offer the WebSocket subprotocol {} or {}\n",
                SUBPROTOCOLS[0], SUBPROTOCOLS[1]
            ),
        ));
    };
    response.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol),
    );
    Ok(response)
}

/// Runs the upgrade on `stream` (already TLS); `Err` says why it was refused.
pub(crate) async fn accept<S>(stream: S) -> Result<WsBytes<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = accept_hdr_async(stream, answer)
        .await
        .map_err(|e| match e {
            WsError::Http(response) => format!(
                "WebSocket upgrade refused with HTTP {}: {}",
                response.status(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).trim()
            ),
            other => format!("WebSocket upgrade failed: {other}"),
        })?;
    Ok(WsBytes {
        ws,
        pending: Bytes::new(),
    })
}

/// The binary messages of a WebSocket as a byte stream.
pub(crate) struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last message.
    pending: Bytes,
}

impl<S> std::fmt::Debug for WsBytes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsBytes")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => self.pending = bytes,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message on an AMQP connection",
                    )))
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut ws = Pin::new(&mut self.ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(io_error)?;
        ws.start_send(Message::binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn request(path: &str, protocols: &str) -> Request {
        Request::builder()
            .uri(format!("wss://localhost{path}"))
            .header(SEC_WEBSOCKET_PROTOCOL, protocols)
            .body(())
            .unwrap()
    }

    #[test]
    fn the_upgrade_wants_the_path_and_a_known_subprotocol() {
        let ok = answer(
            &request("/$servicebus/websocket", "AMQPWSB10"),
            Response::new(()),
        )
        .unwrap();
        assert_eq!(ok.headers()[SEC_WEBSOCKET_PROTOCOL], "AMQPWSB10");
        let ok = answer(
            &request("/$servicebus/websocket/", "foo, amqp"),
            Response::new(()),
        )
        .unwrap();
        assert_eq!(ok.headers()[SEC_WEBSOCKET_PROTOCOL], "amqp");
        let e = answer(&request("/other", "amqp"), Response::new(())).unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = answer(
            &request("/$servicebus/websocket", "mqtt"),
            Response::new(()),
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    /// A real upgrade over a loopback socket pair, then bytes both ways split across
    /// messages: the engine sees a plain byte stream.
    #[tokio::test]
    async fn bytes_cross_message_boundaries_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut bytes = accept(tcp).await.unwrap();
            let mut got = [0u8; 8];
            bytes.read_exact(&mut got).await.unwrap();
            bytes.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
            bytes.flush().await.unwrap();
            got
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ws = fe2o3_amqp_ws::WebSocketStream::connect_with_stream(
            format!("ws://localhost{WEBSOCKET_PATH}"),
            tcp,
        )
        .await
        .unwrap();
        let mut ws = ws;
        // Two writes: two messages carrying one 8-byte header.
        ws.write_all(b"AMQP").await.unwrap();
        ws.flush().await.unwrap();
        ws.write_all(b"\x00\x01\x00\x00").await.unwrap();
        ws.flush().await.unwrap();
        let mut back = [0u8; 8];
        ws.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"AMQP\x00\x01\x00\x00");
        assert_eq!(&server.await.unwrap(), b"AMQP\x00\x01\x00\x00");
    }
}
