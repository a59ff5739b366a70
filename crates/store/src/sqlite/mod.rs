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
mod fresh;
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

/// A SQLite main database: its path, and the connections of calls that ended, kept
/// idle for the next calls (`Conn`): opening one reads the whole schema again, which
/// was ~8% of the server's CPU under a fleet of devices (BENCHMARKS.md, "Idle
/// connections kept"). A call has a connection to itself while it runs, so the store
/// is `Send + Sync` and calls never share a transaction. The integration's thread keeps
/// one of its own from one upload to the next (`integrate.rs`, `kept`), each upload its
/// own transaction.
pub struct SqliteStore {
    path: String,
    idle: std::sync::Mutex<Vec<(FileId, Connection)>>,
}

/// Connections kept idle at most; more are closed when their call ends.
const IDLE_MAX: usize = 4;
/// How long a call waits for the write lock unless it says otherwise.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// The file a path names now (device and inode), where the system says: a connection
/// is used again only for the same file, never for a file put in place of it.
pub(crate) type FileId = (u64, u64);

pub(crate) fn file_id(path: &str) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// A call's connection: given back to the store's idle ones when dropped, if no
/// transaction is left open on it and its file is still the one at the path.
pub(crate) struct Conn<'s> {
    conn: Option<Connection>,
    /// The file it was opened on (`None`: not known for sure, never used again).
    file: Option<FileId>,
    store: &'s SqliteStore,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Conn<'_> {
    /// The connection, never given back: for a call that changes its settings.
    pub(crate) fn into_inner(self) -> Connection {
        self.into_parts().0
    }

    /// The connection, never given back, and the file it was opened on.
    pub(crate) fn into_parts(mut self) -> (Connection, Option<FileId>) {
        (self.conn.take().expect("held until dropped"), self.file)
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.store.give_back(conn, self.file);
        }
    }
}

impl SqliteStore {
    pub fn new(path: impl Into<String>) -> Self {
        SqliteStore {
            path: path.into(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
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
        conn.busy_timeout(BUSY_WAIT)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    /// A connection to an initialised database: an idle one to the same file, or a
    /// new one.
    pub(crate) fn conn(&self) -> Result<Conn<'_>> {
        if let Some(file) = file_id(&self.path) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            // Connections to a file no longer at the path are closed.
            idle.retain(|(f, _)| *f == file);
            if let Some((_, conn)) = idle.pop() {
                return Ok(Conn {
                    conn: Some(conn),
                    file: Some(file),
                    store: self,
                });
            }
        }
        // The file it opens: the one at the path before and after (else not known).
        let before = file_id(&self.path);
        let conn = self.connect(false)?;
        let file = before.filter(|b| file_id(&self.path) == Some(*b));
        let ok: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'fieldsync_meta'",
            [],
            |r| r.get(0),
        )?;
        if !ok {
            return Err(StoreError::NotInitialized);
        }
        Ok(Conn {
            conn: Some(conn),
            file,
            store: self,
        })
    }

    /// Keeps `conn`, opened on `file`, idle for a later call, its page cache let go (an
    /// idle connection holds its schema, not the pages its call read); closes it if a
    /// transaction is left open on it, if the path names another file now, or if
    /// enough are idle.
    fn give_back(&self, conn: Connection, file: Option<FileId>) {
        if !conn.is_autocommit() {
            return;
        }
        // A call that waits less for the write lock (a record that may be skipped)
        // leaves the next call the usual wait.
        if conn.busy_timeout(BUSY_WAIT).is_err() {
            return;
        }
        let Some(file) = file.filter(|f| file_id(&self.path) == Some(*f)) else {
            return;
        };
        if conn.execute_batch("PRAGMA shrink_memory").is_err() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_MAX {
            idle.push((file, conn));
        }
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
pub(super) mod tests {
    /// The workspace's `.cargo/config.toml` builds SQLite without its memory
    /// statistics (a global mutex per allocation) and with a page cache per connection
    /// (not one shared behind a mutex); a build that lost either setting fails here.
    #[test]
    fn sqlite_is_built_without_memory_statistics_and_a_cache_per_connection() {
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
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    use super::{Conn, IDLE_MAX, SqliteStore};
    use crate::{Audits, NewAudit, Schema};
    use fieldsync_testkit::TempDir;

    /// A fresh main database at `dir/name` with fieldsync's tables.
    pub(super) fn initialised(dir: &TempDir, name: &str) -> SqliteStore {
        let path = dir.path().join(name);
        rusqlite::Connection::open(&path).unwrap();
        let store = SqliteStore::new(path.to_str().unwrap());
        store.init().unwrap();
        store
    }

    /// Marks a connection: a TEMP table lives on one connection only.
    pub(super) fn mark(conn: &rusqlite::Connection) {
        conn.execute_batch("CREATE TEMP TABLE marker (x)").unwrap();
    }

    pub(super) fn marked(conn: &rusqlite::Connection) -> bool {
        conn.query_row(
            "SELECT count(*) FROM temp.sqlite_schema WHERE name = 'marker'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    }

    /// Puts a fresh database in place of `store`'s file (a new inode under its path).
    pub(super) fn put_a_copy_in_place(dir: &TempDir, store: &SqliteStore) {
        let copy = initialised(dir, "copy.sqlite");
        std::fs::rename(&copy.path, &store.path).unwrap();
    }

    /// `conn` is not a connection marked before, and it writes into the file now at
    /// `store`'s path (a probe row it writes, a new connection sees).
    pub(super) fn assert_a_new_connection_to_the_file_at_the_path(
        store: &SqliteStore,
        conn: &rusqlite::Connection,
    ) {
        assert!(
            !marked(conn),
            "a new connection for the file copied in place"
        );
        conn.execute_batch(
            "DELETE FROM fieldsync_meta WHERE key = 'probe';
             INSERT INTO fieldsync_meta (key, value) VALUES ('probe', 'x')",
        )
        .unwrap();
        let seen: i64 = rusqlite::Connection::open(&store.path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM fieldsync_meta WHERE key = 'probe'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seen, 1, "the write reached the file now at the path");
    }

    fn idle(store: &SqliteStore) -> usize {
        store.idle.lock().unwrap().len()
    }

    /// A call's connection is used again by the next call, but not for a file copied
    /// in place under the same path (its writes would go to the old file), not with a
    /// transaction left open on it, and not past `IDLE_MAX` idle at once.
    #[test]
    fn idle_connections_serve_the_next_calls_of_the_same_file_only() {
        let dir = TempDir::new("idle");
        let store = initialised(&dir, "main.sqlite");
        let conn = store.conn().unwrap();
        mark(&conn);
        drop(conn);
        let conn = store.conn().unwrap();
        assert!(marked(&conn), "the same connection again");

        // A transaction left open: closed, not kept.
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        drop(conn);
        assert_eq!(idle(&store), 0);
        let conn = store.conn().unwrap();
        assert!(!marked(&conn));
        assert!(
            conn.is_autocommit(),
            "the write lock went with the connection"
        );
        mark(&conn);
        drop(conn);

        // A copy put in place of the file (a new inode under the same path).
        put_a_copy_in_place(&dir, &store);
        let conn = store.conn().unwrap();
        assert_a_new_connection_to_the_file_at_the_path(&store, &conn);
        drop(conn);

        // A file put in place while a call holds its connection: not kept for it.
        let conn = store.conn().unwrap();
        mark(&conn);
        put_a_copy_in_place(&dir, &store);
        drop(conn);
        let conn = store.conn().unwrap();
        assert_a_new_connection_to_the_file_at_the_path(&store, &conn);
        drop(conn);

        // Many at once: at most IDLE_MAX stay.
        let many: Vec<Conn<'_>> = (0..IDLE_MAX + 3).map(|_| store.conn().unwrap()).collect();
        drop(many);
        assert_eq!(idle(&store), IDLE_MAX);
    }

    /// The audit log writes with `synchronous = NORMAL`, the record of a device seen
    /// waits 200 ms for the write lock; neither setting reaches the next call's
    /// connection (an upload's commit flushes to disk, a ticket's redeem waits its 10 s).
    #[test]
    fn a_calls_own_settings_do_not_reach_the_next_call() {
        let dir = TempDir::new("idle-settings");
        let store = initialised(&dir, "main.sqlite");
        let entry = NewAudit {
            kind: "auth.refused",
            actor: "tab1",
            subject: "ana",
            address: None,
            detail: "test",
        };
        store.audit_record(&entry, 100).unwrap();
        let settings = |store: &SqliteStore| -> (i64, i64) {
            let conn = store.conn().unwrap();
            let get = |pragma: &str| {
                conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
                    .unwrap()
            };
            (get("synchronous"), get("busy_timeout"))
        };
        assert_eq!(settings(&store), (2, 10_000), "FULL, SQLite's default");
        // A record that waits 200 ms for the write lock, on an idle connection.
        assert_eq!(idle(&store), 1);
        let seen = crate::DeviceSeen {
            device: "tab1".into(),
            user: "ana".into(),
            at: fieldsync_proto::time::Timestamp::now(),
            task: None,
            pending: None,
        };
        crate::History::device_seen(&store, &seen).unwrap();
        assert_eq!(idle(&store), 1, "given back");
        assert_eq!(settings(&store), (2, 10_000));
    }
}
