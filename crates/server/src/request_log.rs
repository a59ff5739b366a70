//! One log line per request: route, device, user, status, duration (`tracing`, target
//! `fieldsync::request`; `fieldsync server run --log-format json` prints it as JSON),
//! and one per sync (a download or an upload, as the sync history records it; target
//! `fieldsync::sync`). A response carrying a refused authentication's note is handed
//! to the audit log's writer here, where the client's address is known (`audit.rs`).
//!
//! The duration runs until the response's headers are ready: a download's stream goes
//! on after it (the sync history records the whole download).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use fieldsync_proto::wire::{HEADER_DEVICE_ID, HEADER_HOLDING};

/// Who a handler found the request to come from, put in its response's extensions.
#[derive(Debug, Clone)]
pub struct Who {
    pub device: String,
    pub user: String,
}

/// Logs a sync (what the sync history records), counts it in the metrics and records
/// it in the history.
pub fn record_sync(
    store: &dyn fieldsync_store::Store,
    metrics: &crate::metrics::Metrics,
    r: &fieldsync_store::HistoryRecord,
) {
    metrics.record(r);
    tracing::info!(
        target: "fieldsync::sync",
        device = %r.device,
        user = %r.user,
        task = r.task.as_deref().unwrap_or("-"),
        op = r.op.as_str(),
        kind = r.trigger.as_str(),
        result = %r.result,
        rows_down = r.rows_down,
        rows_up = r.rows_up,
        bytes_down = r.bytes_down,
        bytes_up = r.bytes_up,
        conflicts = r.conflicts,
        full = r.full,
        full_reason = r.full_reason.as_deref().unwrap_or("-"),
        duration_ms = r.duration_ms,
        message = %r.message,
    );
    if let Err(e) = store.history_record(r) {
        tracing::warn!(error = %e, "recording a sync in the history");
    }
}

/// Logs the request once its response is ready.
pub async fn log_request(
    State(st): State<crate::api::AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_string(),
        None => request.uri().path().to_string(),
    };
    let method = request.method().clone();
    // The device the request claims, for requests refused before anyone was checked.
    let claimed = request
        .headers()
        .get(HEADER_DEVICE_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let holding = request
        .headers()
        .get(HEADER_HOLDING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // The client's address (the TCP peer), for the audit log.
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let mut response = next.run(request).await;
    if let Some(note) = response.extensions_mut().remove::<crate::audit::Note>() {
        st.audit.refused(note, address);
    }
    let who = response.extensions().get::<Who>();
    if let Some(w) = who {
        st.seen.note(&st.store, w, holding.as_deref()).await;
    }
    let device = who.map(|w| w.device.as_str()).or(claimed.as_deref());
    let user = who.map(|w| w.user.as_str());
    tracing::info!(
        target: "fieldsync::request",
        method = %method,
        route = %route,
        device = device.unwrap_or("-"),
        user = user.unwrap_or("-"),
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    response
}
