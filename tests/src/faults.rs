//! Faults in front of a real service: [`FaultProxy`] forwards TCP connections from a
//! loopback port to a real upstream (e.g. VictoriaMetrics) and, when told, behaves like a
//! store that is restarting: it drops the connections it carries and then accepts and
//! immediately closes the next `n` connections (no response), counting them, before it
//! forwards again. A client sees each of those as one failed request, so a test knows
//! exactly how many write attempts failed without asking the client.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Debug, Default)]
struct State {
    /// Connections still to refuse.
    refuse: AtomicUsize,
    /// Connections refused so far.
    refused: AtomicUsize,
    /// Connections forwarded so far.
    forwarded: AtomicUsize,
    stop: AtomicBool,
    /// Client sides of the forwarded connections (to drop them on a fault).
    live: Mutex<Vec<TcpStream>>,
}

/// A TCP forwarder on `127.0.0.1:<port>` that can refuse connections. Stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the fault proxy")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let refuse = st
                    .refuse
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if refuse {
                    st.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                st.forwarded.fetch_add(1, Ordering::SeqCst);
                if let (Ok(c2), Ok(s2), Ok(keep)) =
                    (client.try_clone(), server.try_clone(), client.try_clone())
                {
                    if let Ok(mut live) = st.live.lock() {
                        live.push(keep);
                    }
                    std::thread::spawn(move || pump(client, s2));
                    std::thread::spawn(move || pump(server, c2));
                }
            }
        });
        Ok(FaultProxy {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every forwarded connection now and refuses the next `n` new ones.
    pub fn refuse_next(&self, n: usize) {
        self.state.refuse.store(n, Ordering::SeqCst);
        if let Ok(mut live) = self.state.live.lock() {
            for c in live.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Connections still to be refused.
    pub fn pending_refusals(&self) -> usize {
        self.state.refuse.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.refuse.store(0, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Ok(mut live) = self.state.live.lock() {
            for c in live.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` → `to` until either side closes, then closes both directions.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
