//! A fault-injecting TCP proxy on loopback for the network-fault tests: cut, stall,
//! throttle or corrupt the bytes of either direction of a connection.
//!
//! It runs a single-threaded tokio runtime on its own thread, so blocking tests (which
//! run the `fieldsync` binary) can use it; dropping the proxy stops the runtime and
//! closes every connection, stalled ones included.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Which way the bytes a fault acts on travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: the request, an upload.
    Up,
    /// Server to client: the response, a download or an acknowledgement.
    Down,
}

/// What happens to the bytes of the faulty direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward everything unchanged.
    Pass,
    /// Forward the first N bytes, then close the connection (both directions).
    Cut(u64),
    /// Forward the first N bytes, then forward nothing more, keeping the socket open.
    Stall(u64),
    /// Forward at most this many bytes per second.
    Throttle(u64),
    /// Forward everything, but the byte at offset N XOR 0xFF.
    Flip(u64),
}

/// A fault: an action on one direction, for the next K connections or for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub direction: Direction,
    pub action: Action,
    /// `Some(k)`: only the first k connections accepted after the fault was set;
    /// `None`: every connection.
    pub connections: Option<u64>,
}

impl Fault {
    /// No fault at all.
    pub const PASS: Fault = Fault {
        direction: Direction::Down,
        action: Action::Pass,
        connections: None,
    };

    /// `action` on the server→client bytes of every connection.
    pub fn down(action: Action) -> Fault {
        Fault {
            direction: Direction::Down,
            action,
            connections: None,
        }
    }

    /// `action` on the client→server bytes of every connection.
    pub fn up(action: Action) -> Fault {
        Fault {
            direction: Direction::Up,
            action,
            connections: None,
        }
    }

    /// The same fault, for the first `k` connections only (later ones pass).
    pub fn first(self, k: u64) -> Fault {
        Fault {
            connections: Some(k),
            ..self
        }
    }
}

/// What went through the proxy so far (bytes as forwarded, after faults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Connections on which the fault acted (a cut, a stall or a flipped byte
    /// happened; a connection that ended first was spared).
    pub faulted: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    faulted: AtomicU64,
}

/// The current fault and how many more connections it applies to.
struct Plan {
    fault: Fault,
    remaining: Option<u64>,
}

impl Plan {
    /// The fault for a newly accepted connection.
    fn next_connection(&mut self) -> Fault {
        match &mut self.remaining {
            Some(0) => Fault::PASS,
            Some(k) => {
                *k -= 1;
                self.fault
            }
            None => self.fault,
        }
    }
}

struct Shared {
    plan: Mutex<Plan>,
    counters: Counters,
}

/// A running proxy from `127.0.0.1:PORT` to one upstream address; stopped on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr, fault: Fault) -> FaultProxy {
        let listener = StdListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            plan: Mutex::new(Plan {
                fault,
                remaining: fault.connections,
            }),
            counters: Counters::default(),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                // Dropping the runtime at the end of this thread drops every
                // connection task, and with it its sockets.
                rt.block_on(accept_loop(listener, upstream, shared, stopped));
            })
        };
        FaultProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for a device's `server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the fault for connections accepted from now on (and restarts the count
    /// of a `first(k)` fault).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.plan.lock().unwrap() = Plan {
            fault,
            remaining: fault.connections,
        };
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            connections: c.connections.load(Ordering::SeqCst),
            bytes_up: c.bytes_up.load(Ordering::SeqCst),
            bytes_down: c.bytes_down.load(Ordering::SeqCst),
            faulted: c.faulted.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: StdListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.counters.connections.fetch_add(1, Ordering::SeqCst);
                let fault = shared.plan.lock().unwrap().next_connection();
                tokio::spawn(connection(client, upstream, fault, shared.clone()));
            }
        }
    }
}

/// Relays one connection until either side closes or a fault cuts it; then both
/// sockets close (an HTTP client does not half-close).
async fn connection(client: TcpStream, upstream: SocketAddr, fault: Fault, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let action = |d: Direction| {
        if fault.direction == d {
            fault.action
        } else {
            Action::Pass
        }
    };
    let c = &shared.counters;
    tokio::select! {
        _ = pump(&client, &server, action(Direction::Up), &c.bytes_up, &c.faulted) => {}
        _ = pump(&server, &client, action(Direction::Down), &c.bytes_down, &c.faulted) => {}
    }
}

/// Copies `from` to `to` applying `action`, until EOF, an error or a cut.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    action: Action,
    forwarded: &AtomicU64,
    faulted: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let started = Instant::now();
    let mut pos: u64 = 0; // bytes of this direction forwarded so far
    loop {
        // A throttled pump reads a tenth of a second's worth at a time.
        let want = match action {
            Action::Throttle(rate) => (rate / 10).clamp(1, buf.len() as u64) as usize,
            _ => buf.len(),
        };
        let n = match read_some(from, &mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let end = pos + n as u64;
        let limit = match action {
            Action::Cut(at) | Action::Stall(at) => at.min(end),
            _ => end,
        };
        if let Action::Flip(at) = action
            && (pos..end).contains(&at)
        {
            chunk[(at - pos) as usize] ^= 0xFF;
            faulted.fetch_add(1, Ordering::SeqCst);
        }
        let keep = (limit - pos) as usize;
        // Counted before the write, so a reader who got the bytes sees them counted.
        forwarded.fetch_add(keep as u64, Ordering::SeqCst);
        if write_all(to, &chunk[..keep]).await.is_err() {
            return;
        }
        pos += keep as u64;
        match action {
            Action::Cut(at) if pos >= at => {
                faulted.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Action::Stall(at) if pos >= at => {
                faulted.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await
            }
            Action::Throttle(rate) => {
                let due = started + Duration::from_secs_f64(pos as f64 / rate.max(1) as f64);
                tokio::time::sleep_until(due).await;
            }
            _ => {}
        }
    }
}

/// Reads what is there (at least one byte, or 0 at EOF).
async fn read_some(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn write_all(s: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    /// An echo server on loopback, one thread per connection.
    fn echo_server() -> SocketAddr {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Sends `data` through the proxy and reads the echo until EOF or a timeout.
    fn round_trip(proxy: &FaultProxy, data: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // A cut may close the socket before everything is written.
        let _ = s.write_all(data);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < data.len() {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn passes_bytes_through_and_counts_them() {
        let proxy = FaultProxy::start(echo_server(), Fault::PASS);
        let data = sample(10_000);
        assert_eq!(round_trip(&proxy, &data), data);
        let stats = proxy.stats();
        assert_eq!(
            stats,
            Stats {
                connections: 1,
                bytes_up: 10_000,
                bytes_down: 10_000,
                faulted: 0,
            }
        );
    }

    #[test]
    fn cuts_after_n_bytes_in_either_direction() {
        let data = sample(10_000);
        let proxy = FaultProxy::start(echo_server(), Fault::down(Action::Cut(1234)));
        let got = round_trip(&proxy, &data);
        // The closing side may reset the connection, which can drop unread bytes:
        // the client sees at most the first 1234, the proxy forwarded exactly those.
        assert!(got.len() <= 1234 && got[..] == data[..got.len()]);
        assert_eq!(proxy.stats().bytes_down, 1234);
        proxy.set_fault(Fault::up(Action::Cut(777)));
        let before = proxy.stats();
        let got = round_trip(&proxy, &data);
        assert!(got.len() <= 777 && got[..] == data[..got.len()]);
        assert_eq!(proxy.stats().bytes_up - before.bytes_up, 777);
    }

    #[test]
    fn flips_one_byte_at_an_offset() {
        let data = sample(10_000);
        let proxy = FaultProxy::start(echo_server(), Fault::down(Action::Flip(5000)));
        let got = round_trip(&proxy, &data);
        let mut expected = data.clone();
        expected[5000] ^= 0xFF;
        assert_eq!(got, expected);
    }

    #[test]
    fn a_fault_for_the_first_connection_only_lets_the_second_pass() {
        let data = sample(3000);
        let proxy = FaultProxy::start(echo_server(), Fault::down(Action::Cut(10)).first(1));
        assert_eq!(round_trip(&proxy, &data).len(), 10);
        assert_eq!(round_trip(&proxy, &data), data);
        assert_eq!(proxy.stats().connections, 2);
        assert_eq!(proxy.stats().faulted, 1);
    }

    #[test]
    fn stalls_and_throttles() {
        let data = sample(3000);
        let proxy = FaultProxy::start(echo_server(), Fault::down(Action::Stall(100)));
        // The read timeout of round_trip ends the wait; the socket stays open.
        assert_eq!(round_trip(&proxy, &data), data[..100]);
        // 3000 bytes at 10 kB/s: read 1000 at a time, the last 1000 after 0.2 s.
        proxy.set_fault(Fault::down(Action::Throttle(10_000)));
        let started = Instant::now();
        assert_eq!(round_trip(&proxy, &data), data);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    }
}
