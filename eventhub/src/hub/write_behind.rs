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

use futures::FutureExt;
use tokio::io::{
    duplex, split, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, Join, ReadHalf,
};

/// Bytes the engine may queue ahead of the socket before its writes wait.
pub(crate) const PIPE_CAPACITY: usize = 256 * 1024;
/// At most this much is moved per socket write (a TLS record is at most 16 KiB; rustls
/// splits larger writes itself).
pub(crate) const PUMP_CHUNK: usize = 64 * 1024;

/// The stream the AMQP engine sees: reads straight from the socket, writes into the pipe.
pub(crate) type Coalesced<S> = Join<ReadHalf<S>, DuplexStream>;

/// Splits `stream`, spawns the pump for its write side, and returns the stream to hand to
/// the AMQP engine.
pub(crate) fn coalesce<S>(stream: S) -> Coalesced<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = split(stream);
    let (engine_side, pump_side) = duplex(PIPE_CAPACITY);
    tokio::spawn(pump(pump_side, writer));
    tokio::io::join(reader, engine_side)
}

async fn pump<W>(mut from: DuplexStream, mut to: W)
where
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_CHUNK];
    loop {
        let mut n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
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
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_shutdown_reaches_the_peer() {
        let (ours, mut peer) = duplex(1024);
        let mut s = coalesce(ours);
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
        let mut s = coalesce(ours);
        peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn a_dead_socket_fails_the_engine_writes() {
        let (ours, peer) = duplex(64);
        let mut s = coalesce(ours);
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
