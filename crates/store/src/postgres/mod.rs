//! The PostgreSQL backend of the main database. fieldsync's objects live in the schema
//! `fieldsync`; upload integration is in `integrate/`, the type mapping in `types.rs`.
//!
//! Change tracking (docs/protocol.md, "Commit-order-correct versions"): statement
//! triggers on each tracked table record, per row, the id of the transaction that last
//! wrote it (`pg_current_xact_id()`) in `fieldsync.rows`. Transaction ids are assigned
//! when a transaction first writes, not when it commits, so they are not a cursor.
//! A download instead records its snapshot (`pg_current_snapshot()`) in
//! `fieldsync.bases` and hands the device that base's id; "changed since the base"
//! is "written by a transaction the base's snapshot does not see". An upload's own
//! writes get a base too: its snapshot plus its own transaction id.
//!
//! No state lives in server memory: several servers share one database.
//!
//! Files along the store's seams: `pool.rs` the connection pool, `schema.rs`
//! fieldsync's objects and the epoch, `catalog.rs` users, devices, tasks and sessions,
//! `tickets.rs` auto-sync tickets, `tracking.rs` the triggers and table checks, `slice.rs` the slice stream,
//! `integrate/` uploads, `history.rs` the sync history and the conflict log, `audit.rs`
//! the audit log.

mod audit;
mod catalog;
mod files;
mod history;
mod integrate;
mod keys;
mod pool;
mod schema;
mod slice;
mod throttle;
mod tickets;
mod tracking;
pub(crate) mod types;

use postgres::{Client, Transaction};

pub(crate) use tracking::table_info;

use self::pool::{Conn, Pool};
use crate::{Result, StoreError};
use fieldsync_proto::time::Timestamp;

/// A PostgreSQL main database, by URL (`postgres://user@host:port/db`).
pub struct PgStore {
    pool: Pool,
    url: String,
    /// fieldsync's objects were seen: later calls need not look again (one round
    /// trip less per call on the server's hot path).
    ready: std::sync::atomic::AtomicBool,
    /// Slices streaming from this store now: their fetches share one budget
    /// (`slice.rs`).
    streams: std::sync::atomic::AtomicUsize,
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // Only uploads wait with a `lock_timeout` (`integrate/`).
        if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
            return StoreError::Locked;
        }
        StoreError::Db(pg_message(&e))
    }
}

/// The server's own message (with its detail) when there is one.
pub(crate) fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

impl PgStore {
    pub fn new(url: &str) -> Result<Self> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database URL `{url}`: {e}")))?;
        Ok(PgStore {
            pool: Pool::new(config),
            url: url.to_string(),
            ready: std::sync::atomic::AtomicBool::new(false),
            streams: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A connection to an initialised database.
    fn conn(&self) -> Result<Conn> {
        use std::sync::atomic::Ordering;
        let mut c = self.connect()?;
        if self.ready.load(Ordering::Relaxed) {
            return Ok(c);
        }
        let ok: bool = c
            .query_one("SELECT to_regclass('fieldsync.meta') IS NOT NULL", &[])?
            .get(0);
        if !ok {
            return Err(StoreError::NotInitialized);
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(c)
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn now() -> String {
    fieldsync_proto::time::now_rfc3339()
}

/// Column `idx` (named `column`) of a row, a time fieldsync wrote as text; anything
/// else is an error naming the column (see [`crate::stored_time`]).
pub(super) fn time_at(r: &postgres::Row, idx: usize, column: &str) -> Result<Timestamp> {
    crate::stored_time(column, &r.try_get::<_, String>(idx)?)
}

/// [`time_at`] for a column that may be NULL.
pub(super) fn opt_time_at(
    r: &postgres::Row,
    idx: usize,
    column: &str,
) -> Result<Option<Timestamp>> {
    r.try_get::<_, Option<String>>(idx)?
        .map(|t| crate::stored_time(column, &t))
        .transpose()
}

/// Runs `f` in a transaction and commits.
fn in_tx<T>(c: &mut Client, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
    let mut tx = c.transaction()?;
    let out = f(&mut tx)?;
    tx.commit()?;
    Ok(out)
}
