//! fieldsync's server: the HTTP API devices talk to, and the administration the
//! `fieldsync admin` commands run directly on the main database.

pub mod admin;
mod api;
pub mod audit;
pub mod auth;
mod conn;
mod console;
mod download;
mod download_turns;
pub mod error;
mod estimates;
pub mod files;
mod integrators;
mod kept;
mod metrics;
mod request_log;
mod seen;
mod throttle;
mod tickets;
pub mod tls;
mod upload_body;
mod uploads;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fieldsync_store::Store;
use tokio::net::TcpListener;

pub use api::{AppState, router};

/// What one server lets its clients hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must have arrived this long after the connection opened
    /// (or after the previous response).
    pub header_timeout: Duration,
    /// A connection on which nothing moves either way for this long is closed: an
    /// idle keep-alive, a download the client stopped reading (its database snapshot
    /// and connection are released), a body that stopped coming.
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it the server stops accepting for a while.
    pub max_connections: usize,
    /// Downloads streaming at once on this server (each holds a database connection
    /// and snapshot); beyond it a download waits in line for a while, then is
    /// answered "busy, retry" (`download_turns.rs`).
    pub max_downloads: usize,
    /// Downloads streaming at once for one device.
    pub max_downloads_per_device: usize,
    /// On shutdown, requests in flight are given this long to finish.
    pub shutdown_deadline: Duration,
    /// Change history older than this is pruned (`Slices::prune_history`): a device
    /// whose cursor is older gets the whole slice at its next download.
    pub retention: Duration,
    /// An auto-sync ticket lasts this long after the login that made it, and after
    /// each later request of the pair's user sessions (which renew it).
    pub ticket_ttl: Duration,
    /// The console shows a device as stuck when it had no successful sync for this
    /// long (or failed several times in a row).
    pub stuck_after: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            // Each open connection holds ~16 KB idle and ~35 KB with a request waiting
            // in the server; the work itself is bounded by the turns (downloads, store
            // calls, uploads), so connections past those only wait. Past this they wait
            // in the kernel's backlog, at no cost to the process: on a SQLite main
            // database 200 devices at once peaked the server at 30 MB with 64 against
            // 35 MB with 512, 1,000 at 34 MB against 74 MB, at the same p99
            // (BENCHMARKS.md, "Connections past the turns wait in the kernel").
            max_connections: 64,
            // Below the PostgreSQL pool's 32 connections: logins and sends keep theirs.
            // Each stream in flight holds ~0.8 MB (its connection's pages, compressor,
            // buffers): 16 at once put a 200-device fleet's server at 40 MB, 8 at 33 MB,
            // with the same latency on two cores (BENCHMARKS.md, "A download's buffers").
            max_downloads: 8,
            max_downloads_per_device: 2,
            shutdown_deadline: Duration::from_secs(10),
            retention: Duration::from_secs(30 * 24 * 3600),
            ticket_ttl: Duration::from_secs(24 * 3600),
            stuck_after: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// Connections the kernel holds for the server before it accepts them (capped by the
/// system's `net.core.somaxconn`, 4096 by default). Beyond `--max-connections` new
/// connections wait there. With the 128 of tokio's own `bind`, a round of 1,000 devices
/// docking at once overflowed it 4,346–4,591 times (the kernel's `ListenOverflows`), the
/// likely cause of the "connection reset" on every attempt that failed a device or two
/// in such rounds.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `listen` (each address it resolves to in turn, until one binds) with a
/// backlog of [`LISTEN_BACKLOG`] and returns the listener and the address it got (port
/// 0 picks one).
pub async fn bind(listen: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let mut last = None;
    for addr in tokio::net::lookup_host(listen).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As tokio's own `TcpListener::bind`: a restarted server takes its port back
        // while the old one's connections are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => {
                let addr = listener.local_addr()?;
                return Ok((listener, addr));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Serves the API on `listener` within `limits` until `shutdown` resolves; then
/// waits for requests in flight up to the shutdown deadline.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_files(listener, store, None, None, limits, shutdown).await
}

/// [`serve`] with a file store, whose files the file routes serve, and over TLS
/// when given an acceptor ([`tls::acceptor`]).
pub async fn serve_with_files(
    listener: TcpListener,
    store: Arc<dyn Store>,
    files: Option<Arc<dyn files::FileStore>>,
    tls: Option<tls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let pruner = tokio::spawn(prune_history(store.clone(), limits.retention));
    let secure = tls.is_some();
    let served = conn::serve(
        listener,
        router(
            AppState::new(store, limits)
                .with_files(files)
                .with_secure_cookies(secure),
        ),
        tls,
        limits,
        shutdown,
    )
    .await;
    pruner.abort();
    served
}

/// Prunes the change history past `retention` now and then: at start, then every
/// quarter of the retention (at most hourly, at least every second).
async fn prune_history(store: Arc<dyn Store>, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let before = fieldsync_proto::time::Timestamp::now().plus_ms(ms.saturating_neg());
            store.prune_history(before)
        })
        .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(tombstones = n, "pruned the change history"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the change history"),
            Err(e) => tracing::warn!(error = %e, "pruning the change history"),
        }
    }
}
