//! Write coalescing for an AMQP connection's socket.
//!
//! fe2o3-amqp's connection engine writes and flushes every frame on its own, so a consumer
//! link streaming small events costs one TLS record and one `writev` per event. Here the
//! engine writes into an in-memory pipe instead, and a pump task moves whatever has piled up
//! to the socket in one write and one flush. Under load frames coalesce into records of up to
//! [`PUMP_CHUNK`] bytes; when idle a frame goes out as soon as the pump wakes. The bytes on
//! the wire are exactly the same.
//!
//! Failure and shutdown travel both ways: a socket error ends the pump, which closes the
//! pipe, so the engine's next write fails; the engine dropping (or shutting down) its end
//! lets the pump drain the rest, then shut the socket down (TLS `close_notify`).
//!
//! The hub can also cut a connection whatever its peer does: once the `kill` token fires,
//! the engine reads end of stream (so it stops) and the pump stops writing. That is how a
//! connection closed for a missing token goes away even if the peer never answers the Close.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use futures::FutureExt;
use tokio::io::{
    duplex, split, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, Join, ReadBuf,
    ReadHalf,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Bytes the engine may queue ahead of the socket before its writes wait.
pub(crate) const PIPE_CAPACITY: usize = 256 * 1024;
/// At most this much is moved per socket write (a TLS record is at most 16 KiB; rustls
/// splits larger writes itself).
pub(crate) const PUMP_CHUNK: usize = 64 * 1024;

/// The stream the AMQP engine sees: reads straight from the socket, writes into the pipe.
pub(crate) type Coalesced<S> = Join<Killable<ReadHalf<S>>, DuplexStream>;

/// A reader that reads end of stream once its token fires.
pub(crate) struct Killable<R> {
    inner: R,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R: std::fmt::Debug> std::fmt::Debug for Killable<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Killable")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Killable<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Splits `stream`, spawns the pump for its write side, and returns the stream to hand to
/// the AMQP engine. Firing `kill` ends both directions.
pub(crate) fn coalesce<S>(stream: S, kill: CancellationToken) -> Coalesced<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = split(stream);
    let (engine_side, pump_side) = duplex(PIPE_CAPACITY);
    tokio::spawn(pump(pump_side, writer, kill.clone()));
    let reader = Killable {
        inner: reader,
        killed: Box::pin(kill.cancelled_owned()),
    };
    tokio::io::join(reader, engine_side)
}

async fn pump<W>(from: DuplexStream, mut to: W, kill: CancellationToken)
where
    W: AsyncWrite + Unpin,
{
    tokio::select! {
        _ = kill.cancelled() => {}
        () = pump_until_closed(from, &mut to) => {}
    }
    let _ = to.shutdown().await;
}

async fn pump_until_closed<W>(mut from: DuplexStream, to: &mut W)
where
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_CHUNK];
    loop {
        let mut n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Let the engine run once more, then take whatever it queued meanwhile: under load
        // this turns a frame per write into a pipe-full per write.
        tokio::task::yield_now().await;
        while n < buf.len() {
            match from.read(&mut buf[n..]).now_or_never() {
                Some(Ok(m)) if m > 0 => n += m,
                _ => break,
            }
        }
        if let Err(e) = to.write_all(&buf[..n]).await {
            tracing::debug!(error = %e, "socket write failed; closing the connection");
            return;
        }
        if let Err(e) = to.flush().await {
            tracing::debug!(error = %e, "socket flush failed; closing the connection");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_shutdown_reaches_the_peer() {
        let (ours, mut peer) = duplex(1024);
        let mut s = coalesce(ours, CancellationToken::new());
        let mut sent = Vec::new();
        for i in 0..2000u32 {
            let frame = i.to_be_bytes();
            s.write_all(&frame).await.unwrap();
            s.flush().await.unwrap();
            sent.extend_from_slice(&frame);
        }
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn reads_come_from_the_socket() {
        let (ours, mut peer) = duplex(1024);
        let mut s = coalesce(ours, CancellationToken::new());
        peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn kill_ends_reads_and_closes_the_socket() {
        let (ours, mut peer) = duplex(1024);
        let kill = CancellationToken::new();
        let mut s = coalesce(ours, kill.clone());
        kill.cancel();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("read did not end after kill")
            .unwrap();
        assert_eq!(n, 0, "end of stream after kill");
        drop(s);
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            peer.read_to_end(&mut rest),
        )
        .await
        .expect("the peer did not see the socket close")
        .unwrap();
    }

    #[tokio::test]
    async fn a_dead_socket_fails_the_engine_writes() {
        let (ours, peer) = duplex(64);
        let mut s = coalesce(ours, CancellationToken::new());
        drop(peer);
        let mut failed = false;
        for _ in 0..100 {
            if s.write_all(&[0u8; 1024]).await.is_err() || s.flush().await.is_err() {
                failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failed, "writes kept succeeding after the socket died");
    }
}
