//! fieldsync's server: the HTTP API devices talk to, and the administration the
//! `fieldsync admin` commands run directly on the main database.

pub mod admin;
mod api;
pub mod auth;
mod download;
pub mod error;
mod integrators;
mod upload_body;

use std::net::SocketAddr;
use std::sync::Arc;

use fieldsync_store::Store;
use tokio::net::TcpListener;

pub use api::{AppState, router};

/// Binds `listen` and returns the listener and the address it got (port 0 picks one).
pub async fn bind(listen: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(AppState { store }))
        .with_graceful_shutdown(shutdown)
        .await
}
