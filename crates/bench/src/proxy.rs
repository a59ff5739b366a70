//! A byte-counting TCP relay on loopback, for the peers' bytes on the wire
//! (`peers.rs`): ogr2ogr talks to PostgreSQL and PouchDB to pouchdb-server through it,
//! and it counts what each direction carried. fieldsync counts its own
//! (`last_sync.bytes_down`), so it does not go through the relay.
//!
//! The relay copies every byte once more in this process, a cost the peers pay and
//! fieldsync does not; on loopback it is small beside theirs (a 64 KiB buffer per read).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::Context;

const BUF: usize = 64 * 1024;

/// Bytes carried so far, by direction.
#[derive(Default)]
pub(crate) struct Counts {
    /// From the server to the client: what a download moves.
    pub(crate) down: AtomicU64,
    /// From the client to the server: requests.
    pub(crate) up: AtomicU64,
}

impl Counts {
    /// (down, up) so far.
    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.down.load(Ordering::SeqCst),
            self.up.load(Ordering::SeqCst),
        )
    }
}

/// A listening relay to one target; stops accepting when dropped (connections still
/// open run to their end).
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    pub(crate) counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target`.
    pub(crate) fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the relay")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone())
                    else {
                        continue;
                    };
                    let down = Arc::clone(&counts);
                    std::thread::spawn(move || pump(server, client, &down.down));
                    let up = Arc::clone(&counts);
                    std::thread::spawn(move || pump(client2, server2, &up.up));
                }
            })
        };
        Ok(Relay {
            addr,
            counts,
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Copies `from` to `to`, counting, until either side closes; then closes the write
/// half of `to` so the other side sees the end.
fn pump(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64) {
    let mut buf = vec![0u8; BUF];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
