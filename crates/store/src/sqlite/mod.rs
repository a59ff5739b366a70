//! The SQLite backend of the main database (the embedded default).
//! Upload integration lives in `integrate.rs`.
//!
//! Change tracking: triggers on each tracked table stamp every row written with the
//! next row version (one past the highest in `fieldsync_rows`; deletes leave a
//! tombstone). SQLite has one writer at a time, so versions are assigned in commit
//! order and a snapshot's highest version is a correct cursor.
//!
//! Files along the store's seams: `schema.rs` fieldsync's objects and the epoch,
//! `catalog.rs` users, devices, tasks and sessions, `tickets.rs` auto-sync tickets,
//! `tracking.rs` the triggers and table checks, `slice.rs` the slice stream,
//! `integrate.rs` uploads (`batch.rs` its inserts in runs, `parents.rs` its parent
//! checks), `history.rs` the sync history and the conflict log,
//! `audit.rs` the audit log.

use std::time::Duration;

use fieldsync_proto::Value;
use fieldsync_proto::filter::Dialect;
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::time::Timestamp;
use rusqlite::{Connection, OpenFlags};

mod audit;
mod batch;
mod catalog;
mod files;
mod history;
mod integrate;
mod keys;
mod parents;
mod schema;
mod slice;
mod throttle;
mod tickets;
mod tracking;

pub(crate) use catalog::user_enabled;
pub(crate) use tracking::table_info;

use crate::dialect::SqlDialect;
use crate::{IntegrateError, Result, StoreError};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                StoreError::Busy
            }
            _ => StoreError::Db(e.to_string()),
        }
    }
}

impl From<rusqlite::Error> for IntegrateError {
    fn from(e: rusqlite::Error) -> Self {
        IntegrateError::Store(e.into())
    }
}

/// A SQLite main database. Holds only its path: each call opens a connection (cheap
/// for SQLite), so the store is `Send + Sync` and calls never share a transaction.
/// The one exception is the integration's thread, which keeps its connection from one
/// upload to the next (`integrate.rs`, `kept`), each upload its own transaction.
pub struct SqliteStore {
    path: String,
}

impl SqliteStore {
    pub fn new(path: impl Into<String>) -> Self {
        SqliteStore { path: path.into() }
    }

    /// Opens a connection; `create` allows creating the file (only `init` does).
    fn connect(&self, create: bool) -> Result<Connection> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&self.path, flags)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", self.path)))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    /// A connection to an initialised database.
    pub(crate) fn conn(&self) -> Result<Connection> {
        let conn = self.connect(false)?;
        let ok: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'fieldsync_meta'",
            [],
            |r| r.get(0),
        )?;
        if !ok {
            return Err(StoreError::NotInitialized);
        }
        Ok(conn)
    }
}

/// Binds a value without copying it.
pub(crate) fn to_sql_value(v: &Value) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::{ToSqlOutput, ValueRef as R};
    ToSqlOutput::Borrowed(match v {
        Value::Null => R::Null,
        Value::Integer(i) => R::Integer(*i),
        Value::Real(r) => R::Real(*r),
        Value::Text(t) => R::Text(t.as_bytes()),
        Value::Blob(b) => R::Blob(b),
    })
}

fn value_ref(v: rusqlite::types::ValueRef<'_>) -> ValueRef<'_> {
    use rusqlite::types::ValueRef as R;
    match v {
        R::Null => ValueRef::Null,
        R::Integer(i) => ValueRef::Integer(i),
        R::Real(r) => ValueRef::Real(r),
        // SQLite does not enforce UTF-8; text that is not travels as a blob.
        R::Text(t) => std::str::from_utf8(t)
            .map(ValueRef::Text)
            .unwrap_or(ValueRef::Blob(t)),
        R::Blob(b) => ValueRef::Blob(b),
    }
}

fn now() -> String {
    fieldsync_proto::time::now_rfc3339()
}

/// Column `idx` (named `column`) of a row, a time fieldsync wrote as text; anything
/// else fails the read with an error naming the column (see [`crate::stored_time`]).
pub(crate) fn time_at(
    r: &rusqlite::Row<'_>,
    idx: usize,
    column: &str,
) -> rusqlite::Result<Timestamp> {
    let text: String = r.get(idx)?;
    text.parse().map_err(|e| bad_time(idx, column, e))
}

/// [`time_at`] for a column that may be NULL.
pub(crate) fn opt_time_at(
    r: &rusqlite::Row<'_>,
    idx: usize,
    column: &str,
) -> rusqlite::Result<Option<Timestamp>> {
    let text: Option<String> = r.get(idx)?;
    text.map(|t| t.parse().map_err(|e| bad_time(idx, column, e)))
        .transpose()
}

fn bad_time(idx: usize, column: &str, e: fieldsync_proto::time::TimestampError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        rusqlite::types::Type::Text,
        format!("column `{column}`: {e}").into(),
    )
}

/// SQLite's SQL: values read and compared as stored, numbered placeholders, and no
/// row locks (an upload's or a resolution's IMMEDIATE transaction holds the database).
pub(crate) struct SqliteDialect;

impl SqlDialect for SqliteDialect {
    fn filter_dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn param(&self, n: usize, _declared: &str) -> String {
        format!("?{n}")
    }

    fn lock_row(&self) -> &'static str {
        ""
    }
}

#[cfg(test)]
mod tests {
    /// The workspace's `.cargo/config.toml` builds SQLite without its memory
    /// statistics (a global mutex per allocation); a build that lost the setting
    /// fails here.
    #[test]
    fn sqlite_is_built_without_memory_statistics() {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory database");
        let mut stmt = conn.prepare("PRAGMA compile_options").expect("pragma");
        let options: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .expect("compile options")
            .collect::<Result<_, _>>()
            .expect("compile options");
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }
}
