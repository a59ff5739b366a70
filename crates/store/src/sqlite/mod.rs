//! The SQLite backend of the main database (the embedded default).
//! Upload integration lives in `integrate.rs`.
//!
//! Change tracking: triggers on each tracked table stamp every row written with the
//! next row version (one past the highest in `fieldsync_rows`; deletes leave a
//! tombstone). SQLite has one writer at a time, so versions are assigned in commit
//! order and a snapshot's highest version is a correct cursor.

use fieldsync_proto::wire::{SyncOp, Trigger};
use std::time::Duration;

use fieldsync_proto::filter::Dialect;
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::task::TaskDef;
use fieldsync_proto::{ColumnType, Value};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

mod integrate;

use crate::plan::{self, SlicePlan, quote_ident};
use fieldsync_proto::wire::{Upload, UploadOutcome};

use crate::{
    ConflictRecord, DeviceRecord, HistoryRecord, IntegrateContext, IntegrateError, Result,
    SessionRecord, SliceSink, Store, StoreError, TableInfo, TaskRecord, UserRecord,
};

/// Bumped when fieldsync's own objects change shape; `init` upgrades older ones.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS fieldsync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fieldsync_tracked (name TEXT PRIMARY KEY, primary_key TEXT NOT NULL, tracked_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fieldsync_rows (
    tbl TEXT NOT NULL,
    pk NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fieldsync_rows_by_version ON fieldsync_rows (version);
CREATE TABLE IF NOT EXISTS fieldsync_users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync_devices (
    id TEXT PRIMARY KEY,
    label TEXT,
    code_hash TEXT,
    secret_hash TEXT,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    paired_at TEXT
);
CREATE TABLE IF NOT EXISTS fieldsync_tasks (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    hash TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- Every definition a task ever had, by hash: an upload is judged against the one the
-- device worked under.
CREATE TABLE IF NOT EXISTS fieldsync_task_versions (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    definition TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync_task_users (
    task TEXT NOT NULL REFERENCES fieldsync_tasks (name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES fieldsync_users (name) ON DELETE CASCADE,
    PRIMARY KEY (task, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fieldsync_task_devices (
    task TEXT NOT NULL REFERENCES fieldsync_tasks (name) ON DELETE CASCADE,
    device TEXT NOT NULL REFERENCES fieldsync_devices (id) ON DELETE CASCADE,
    PRIMARY KEY (task, device)
) WITHOUT ROWID;
-- Authorization asks "the tasks of this user and this device": both ways indexed.
CREATE INDEX IF NOT EXISTS fieldsync_task_users_by_user ON fieldsync_task_users (user, task);
CREATE INDEX IF NOT EXISTS fieldsync_task_devices_by_device ON fieldsync_task_devices (device, task);
CREATE TABLE IF NOT EXISTS fieldsync_uploads (
    upload_id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    task TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync_conflicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    task TEXT NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    kind TEXT NOT NULL,
    policy TEXT NOT NULL,
    resolution TEXT NOT NULL,
    device_values TEXT NOT NULL,
    server_values TEXT NOT NULL,
    base_version INTEGER,
    server_version INTEGER,
    resolved_at TEXT,
    resolved_take TEXT
);
CREATE TABLE IF NOT EXISTS fieldsync_sync_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    task TEXT,
    op TEXT NOT NULL,
    kind TEXT NOT NULL,
    result TEXT NOT NULL,
    message TEXT NOT NULL,
    rows_down INTEGER NOT NULL,
    rows_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    bytes_up INTEGER NOT NULL,
    conflicts INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync_sessions (
    token_hash TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
-- Who has logged in on which device: a journal entry's user must be one of them.
CREATE TABLE IF NOT EXISTS fieldsync_device_users (
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    first_at TEXT NOT NULL,
    PRIMARY KEY (device, user)
) WITHOUT ROWID;
-- The bases handed to each device: a download's cursor (low = high), or the range of
-- versions an upload's writes were stamped with. A device may base a change only on
-- one of its own.
CREATE TABLE IF NOT EXISTS fieldsync_bases (
    device TEXT NOT NULL,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL,
    PRIMARY KEY (device, high, low)
) WITHOUT ROWID;
"#;

/// A SQLite main database. Holds only its path: each call opens a connection (cheap
/// for SQLite), so the store is `Send + Sync` and calls never share a transaction.
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

    /// Records a download's cursor as a base `device` may send changes on, by a second
    /// connection (the download's read snapshot stays open). An office transaction
    /// holding the write lock must not stall the download: then a thread records it
    /// as soon as the lock is free (the device needs the base only at its next send).
    fn record_base(&self, device: &str, cursor: i64) -> Result<()> {
        const SQL: &str =
            "INSERT OR IGNORE INTO fieldsync_bases (device, low, high) VALUES (?1, ?2, ?2)";
        let conn = self.conn()?;
        conn.busy_timeout(Duration::from_millis(200))?;
        match conn.execute(SQL, params![device, cursor]) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                let (store, device) = (SqliteStore::new(self.path.clone()), device.to_string());
                std::thread::spawn(move || {
                    let recorded = store.conn().and_then(|c| {
                        c.busy_timeout(Duration::from_secs(600))?;
                        Ok(c.execute(SQL, params![device, cursor])?)
                    });
                    if let Err(e) = recorded {
                        eprintln!("fieldsync server: recording the base of a download: {e}");
                    }
                });
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
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

/// The tracking triggers of a table, each as its name and its `CREATE TRIGGER`
/// statement (the text SQLite keeps in `sqlite_schema`, so a table's tracking can be
/// checked by comparison: a rebuilt table has none, a renamed one stale ones).
fn tracking_triggers(info: &TableInfo) -> Vec<(String, String)> {
    let t = quote_ident(&info.name);
    let pk = quote_ident(&info.primary_key);
    let name_lit = format!("'{}'", info.name.replace('\'', "''"));
    let trig = |suffix: &str| format!("fieldsync_{}_{suffix}", info.name);
    // The next version is one past the highest ever given (an index seek on
    // `fieldsync_rows_by_version`); rows are only ever restamped upwards.
    let next = "(SELECT coalesce(max(version), 0) + 1 FROM fieldsync_rows)";
    // An upsert, not `INSERT OR REPLACE`: a statement in a trigger takes the outer
    // statement's conflict clause instead of its own `OR …` (so `UPDATE OR IGNORE`
    // skipped the stamp, and an office upsert, `UPDATE OR ABORT` or a foreign-key
    // action failed on fieldsync's own key); an upsert clause is its own.
    const UPSERT: &str = "ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version, deleted = excluded.deleted";
    let stamp = |key: &str, deleted: u8| {
        format!(
            "INSERT INTO fieldsync_rows (tbl, pk, version, deleted) VALUES ({name_lit}, {key}, {next}, {deleted}) {UPSERT};"
        )
    };
    // A key change retires the old key (a tombstone) before stamping the new one.
    let s_old_gone = format!(
        "INSERT INTO fieldsync_rows (tbl, pk, version, deleted) SELECT {name_lit}, OLD.{pk}, {next}, 1 WHERE OLD.{pk} IS NOT NEW.{pk} {UPSERT};"
    );
    let (s_new, s_old) = (
        stamp(&format!("NEW.{pk}"), 0),
        stamp(&format!("OLD.{pk}"), 1),
    );
    vec![
        (
            trig("ins"),
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN {s_new} END",
                quote_ident(&trig("ins"))
            ),
        ),
        (
            trig("upd"),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE ON {t} BEGIN {s_old_gone} {s_new} END",
                quote_ident(&trig("upd"))
            ),
        ),
        (
            trig("del"),
            format!(
                "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN {s_old} END",
                quote_ident(&trig("del"))
            ),
        ),
    ]
}

/// Whether a table's tracking is in place: recorded, and its triggers exactly the
/// current ones.
fn tracking_intact(conn: &Connection, info: &TableInfo) -> Result<bool> {
    let recorded: bool = conn
        .query_row(
            "SELECT count(*) FROM fieldsync_tracked WHERE name = ?1 AND primary_key = ?2",
            [&info.name, &info.primary_key],
            |r| r.get(0),
        )
        .unwrap_or(false);
    if !recorded || info.primary_key.is_empty() {
        return Ok(false);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?1 AND tbl_name = ?2",
    )?;
    for (name, sql) in tracking_triggers(info) {
        let found: Option<String> = stmt
            .query_row([&name, &info.name], |r| r.get(0))
            .optional()?;
        if found.as_deref() != Some(sql.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn table_info(conn: &Connection, table: &str) -> Result<Option<TableInfo>> {
    // The name is only ever a bound value here; quoted identifiers are built from the
    // schema's own spelling.
    let name: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(name) = name else { return Ok(None) };
    let mut stmt = conn.prepare("SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let mut columns = Vec::new();
    let mut pks = Vec::new();
    let rows = stmt.query_map([&name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, bool>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (col, declared, not_null, has_default, pk) = row?;
        if pk > 0 {
            pks.push(col.clone());
        }
        let column_type = ColumnType::from_declared(&declared);
        // An INTEGER PRIMARY KEY is the rowid: SQLite assigns it when omitted.
        let rowid_alias = pk > 0 && declared.eq_ignore_ascii_case("INTEGER");
        columns.push(crate::ColumnInfo {
            name: col,
            declared_type: declared,
            column_type,
            not_null: not_null || (pk > 0 && !rowid_alias),
            has_default: has_default || rowid_alias,
        });
    }
    let primary_key = if pks.len() == 1 {
        pks.remove(0)
    } else {
        String::new()
    };
    let mut info = TableInfo {
        name,
        primary_key,
        columns,
        tracked: false,
    };
    info.tracked = tracking_intact(conn, &info)?;
    Ok(Some(info))
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

fn task_record(
    conn: &Connection,
    name: &str,
    definition: &str,
    hash: String,
    updated_at: String,
) -> Result<TaskRecord> {
    let def: TaskDef = serde_json::from_str(definition)
        .map_err(|e| StoreError::Db(format!("stored task `{name}` is unreadable: {e}")))?;
    let list = |sql: &str| -> Result<Vec<String>> {
        let mut stmt = conn.prepare(sql)?;
        let v = stmt
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(v)
    };
    Ok(TaskRecord {
        users: list("SELECT user FROM fieldsync_task_users WHERE task = ?1 ORDER BY user")?,
        devices: list("SELECT device FROM fieldsync_task_devices WHERE task = ?1 ORDER BY device")?,
        def,
        hash,
        updated_at,
    })
}

/// The tasks assigned to both `user` and `device` (only `name`, when given), with
/// their users and devices, in one query: the user's assignments by index
/// (`fieldsync_task_users_by_user`), each checked against the device's by primary key.
fn assigned_tasks(
    conn: &Connection,
    name: Option<&str>,
    user: &str,
    device: &str,
) -> Result<Vec<TaskRecord>> {
    // One task by its key, or all of the user's: each its own plan.
    let which = if name.is_some() {
        "u.task = ?3"
    } else {
        "?3 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT t.name, t.definition, t.hash, t.updated_at,
                (SELECT json_group_array(x.user ORDER BY x.user) FROM fieldsync_task_users x WHERE x.task = t.name),
                (SELECT json_group_array(x.device ORDER BY x.device) FROM fieldsync_task_devices x WHERE x.task = t.name)
         FROM fieldsync_task_users u
         JOIN fieldsync_task_devices d ON d.task = u.task AND d.device = ?2
         JOIN fieldsync_tasks t ON t.name = u.task
         WHERE u.user = ?1 AND {which}
         ORDER BY t.name"
    ))?;
    let rows = stmt
        .query_map(params![user, device, name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(name, definition, hash, updated_at, users, devices)| {
            let list = |json: &str| -> Result<Vec<String>> {
                serde_json::from_str(json).map_err(|e| {
                    StoreError::Db(format!("assignments of task `{name}` unreadable: {e}"))
                })
            };
            Ok(TaskRecord {
                def: serde_json::from_str(&definition).map_err(|e| {
                    StoreError::Db(format!("stored task `{name}` is unreadable: {e}"))
                })?,
                users: list(&users)?,
                devices: list(&devices)?,
                hash,
                updated_at,
            })
        })
        .collect()
}

impl Store for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn init(&self) -> Result<()> {
        let mut conn = self.connect(true)?;
        // WAL lets the slice stream read a snapshot while the office keeps writing.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(format!(
                "cannot switch the main database to WAL (got {mode})"
            )));
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM fieldsync_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(v) = existing
            && v > SCHEMA_VERSION
        {
            return Err(StoreError::Invalid(format!(
                "the main database was set up by a newer fieldsync (schema {v}, this build knows {SCHEMA_VERSION})"
            )));
        }
        tx.execute(
            "INSERT INTO fieldsync_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [SCHEMA_VERSION.to_string()],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO fieldsync_meta (key, value) VALUES ('epoch', ?1)",
            [crate::random_hex(16)],
        )?;
        // Task definitions before versions were kept: the current ones.
        tx.execute(
            "INSERT OR IGNORE INTO fieldsync_task_versions (hash, name, definition, at)
             SELECT hash, name, definition, updated_at FROM fieldsync_tasks",
            [],
        )?;
        // Logins before they were recorded: the sessions still known.
        tx.execute(
            "INSERT OR IGNORE INTO fieldsync_device_users (device, user, first_at)
             SELECT device, user, min(created_at) FROM fieldsync_sessions GROUP BY device, user",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn epoch(&self) -> Result<String> {
        let conn = self.conn()?;
        Ok(conn.query_row(
            "SELECT value FROM fieldsync_meta WHERE key = 'epoch'",
            [],
            |r| r.get(0),
        )?)
    }

    fn epoch_reset(&self) -> Result<String> {
        self.conn()?.execute(
            "UPDATE fieldsync_meta SET value = ?1 WHERE key = 'epoch'",
            [crate::random_hex(16)],
        )?;
        self.epoch()
    }

    fn table_info(&self, table: &str) -> Result<Option<TableInfo>> {
        table_info(&self.conn()?, table)
    }

    fn track_table(&self, table: &str) -> Result<TableInfo> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let info = table_info(&tx, table)?.ok_or_else(|| {
            StoreError::NotFound(format!(
                "no table `{}` in the main database",
                table.escape_debug()
            ))
        })?;
        let lower = info.name.to_ascii_lowercase();
        if lower.starts_with("fieldsync_") || lower.starts_with("sqlite_") {
            return Err(StoreError::Invalid(format!(
                "`{}` is an internal table and cannot be tracked",
                info.name
            )));
        }
        if info.primary_key.is_empty() {
            return Err(StoreError::Invalid(format!(
                "table `{}` cannot be tracked: it needs a single-column primary key",
                info.name
            )));
        }
        if info.tracked {
            return Ok(info);
        }
        // Missing or stale tracking (first time, a table rebuilt or renamed since, an
        // older fieldsync's triggers): whatever fieldsync triggers the table has go,
        // the current ones come, and every row is stamped anew, so changes made while
        // nothing stamped them count as changed for every device (compared by value).
        let stale: Vec<String> = tx
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1
                   AND name LIKE 'fieldsync\\_%' ESCAPE '\\'",
            )?
            .query_map([&info.name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in stale {
            tx.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&name)))?;
        }
        for (_, sql) in tracking_triggers(&info) {
            tx.execute_batch(&sql)?;
        }
        let t = quote_ident(&info.name);
        let pk = quote_ident(&info.primary_key);
        let next = "(SELECT coalesce(max(version), 0) + 1 FROM fieldsync_rows)";
        tx.execute(
            &format!(
                "INSERT INTO fieldsync_rows (tbl, pk, version, deleted)
                 SELECT ?1, {pk}, {next}, 0 FROM {t} WHERE true
                 ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version, deleted = 0"
            ),
            [&info.name],
        )?;
        // Rows deleted while nothing stamped them leave tombstones now.
        tx.execute(
            &format!(
                "UPDATE fieldsync_rows SET deleted = 1, version = {next}
                 WHERE tbl = ?1 AND deleted = 0 AND pk NOT IN (SELECT {pk} FROM {t})"
            ),
            [&info.name],
        )?;
        tx.execute(
            "DELETE FROM fieldsync_tracked WHERE name = ?1",
            [&info.name],
        )?;
        tx.execute(
            "INSERT INTO fieldsync_tracked (name, primary_key, tracked_at) VALUES (?1, ?2, ?3)",
            params![info.name, info.primary_key, now()],
        )?;
        tx.commit()?;
        Ok(TableInfo {
            tracked: true,
            ..info
        })
    }

    fn row_version(&self, table: &str, key: &Value) -> Result<Option<(i64, bool)>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT version, deleted FROM fieldsync_rows WHERE tbl = ?1 AND pk = ?2",
                params![table, to_sql_value(key)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn user_add(&self, user: &UserRecord) -> Result<()> {
        let conn = self.conn()?;
        let n = conn.execute(
            "INSERT OR IGNORE INTO fieldsync_users (name, password_hash, admin, disabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![user.name, user.password_hash, user.admin, user.disabled, user.created_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "user `{}` exists",
                user.name
            )));
        }
        Ok(())
    }

    fn user_get(&self, name: &str) -> Result<Option<UserRecord>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM fieldsync_users WHERE name = ?1"),
                [name],
                user_row,
            )
            .optional()?)
    }

    fn device_add(&self, d: &DeviceRecord) -> Result<()> {
        let conn = self.conn()?;
        let n = conn.execute(
            "INSERT OR IGNORE INTO fieldsync_devices (id, label, code_hash, secret_hash, revoked, created_at, paired_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![d.id, d.label, d.code_hash, d.secret_hash, d.revoked, d.created_at, d.paired_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "device `{}` exists",
                d.id
            )));
        }
        Ok(())
    }

    fn device_get(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM fieldsync_devices WHERE id = ?1"),
                [id],
                device_row,
            )
            .optional()?)
    }

    fn device_pair(&self, id: &str, code_hash: &str, secret_hash: &str, at: &str) -> Result<bool> {
        let conn = self.conn()?;
        // One statement: the code is consumed exactly once even if two devices race.
        let n = conn.execute(
            "UPDATE fieldsync_devices SET code_hash = NULL, secret_hash = ?3, paired_at = ?4
             WHERE id = ?1 AND code_hash = ?2 AND revoked = 0",
            params![id, code_hash, secret_hash, at],
        )?;
        Ok(n == 1)
    }

    fn task_put(&self, def: &TaskDef, hash: &str, at: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        plan::check_task(def, &|t| table_info(&tx, t))?;
        let json = serde_json::to_string(def).expect("task serializes");
        tx.execute(
            "INSERT INTO fieldsync_tasks (name, definition, hash, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, hash = excluded.hash, updated_at = excluded.updated_at",
            params![def.name, json, hash, at],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO fieldsync_task_versions (hash, name, definition, at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, def.name, json, at],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn task_version(&self, hash: &str) -> Result<Option<TaskDef>> {
        let def: Option<String> = self
            .conn()?
            .query_row(
                "SELECT definition FROM fieldsync_task_versions WHERE hash = ?1",
                [hash],
                |r| r.get(0),
            )
            .optional()?;
        def.map(|d| {
            serde_json::from_str(&d)
                .map_err(|e| StoreError::Db(format!("stored task version unreadable: {e}")))
        })
        .transpose()
    }

    fn task_get(&self, name: &str) -> Result<Option<TaskRecord>> {
        let conn = self.conn()?;
        let row: Option<(String, String, String)> = conn
            .query_row(
                "SELECT definition, hash, updated_at FROM fieldsync_tasks WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(d, h, u)| task_record(&conn, name, &d, h, u))
            .transpose()
    }

    fn task_list(&self) -> Result<Vec<TaskRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT name, definition, hash, updated_at FROM fieldsync_tasks ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<Vec<(String, String, String, String)>>>()?;
        rows.into_iter()
            .map(|(n, d, h, u)| task_record(&conn, &n, &d, h, u))
            .collect()
    }

    fn tasks_assigned(&self, user: &str, device: &str) -> Result<Vec<TaskRecord>> {
        assigned_tasks(&self.conn()?, None, user, device)
    }

    fn task_assigned(&self, name: &str, user: &str, device: &str) -> Result<Option<TaskRecord>> {
        Ok(assigned_tasks(&self.conn()?, Some(name), user, device)?
            .into_iter()
            .next())
    }

    fn task_assign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists =
            |sql: &str, v: &str| -> Result<bool> { Ok(tx.query_row(sql, [v], |r| r.get(0))?) };
        if !exists("SELECT count(*) FROM fieldsync_tasks WHERE name = ?1", name)? {
            return Err(StoreError::NotFound(format!("no task `{name}`")));
        }
        for u in users {
            if !exists("SELECT count(*) FROM fieldsync_users WHERE name = ?1", u)? {
                return Err(StoreError::NotFound(format!("no user `{u}`")));
            }
            tx.execute(
                "INSERT OR IGNORE INTO fieldsync_task_users (task, user) VALUES (?1, ?2)",
                [name, u],
            )?;
        }
        for d in devices {
            if !exists("SELECT count(*) FROM fieldsync_devices WHERE id = ?1", d)? {
                return Err(StoreError::NotFound(format!("no device `{d}`")));
            }
            tx.execute(
                "INSERT OR IGNORE INTO fieldsync_task_devices (task, device) VALUES (?1, ?2)",
                [name, d],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn session_put(&self, s: &SessionRecord) -> Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO fieldsync_sessions (token_hash, device, user, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.token_hash, s.device, s.user, s.created_at, s.expires_at],
        )?;
        conn.execute(
            "INSERT OR IGNORE INTO fieldsync_device_users (device, user, first_at) VALUES (?1, ?2, ?3)",
            params![s.device, s.user, s.created_at],
        )?;
        // Expired sessions are of no use to anyone; drop them while we are here.
        conn.execute(
            "DELETE FROM fieldsync_sessions WHERE expires_at < ?1",
            [&s.created_at],
        )?;
        Ok(())
    }

    /// SQLite's clock is the clock of the process running the query: with a SQLite
    /// main database, every server runs on the one machine that holds the file.
    fn clock_ms(&self) -> Result<i64> {
        Ok(self.conn()?.query_row(
            "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
            [],
            |r| r.get(0),
        )?)
    }

    fn session_get(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT token_hash, device, user, created_at, expires_at FROM fieldsync_sessions
                 WHERE token_hash = ?1 AND expires_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                [token_hash],
                |r| {
                    Ok(SessionRecord {
                        token_hash: r.get(0)?,
                        device: r.get(1)?,
                        user: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn session_delete(&self, token_hash: &str) -> Result<()> {
        self.conn()?.execute(
            "DELETE FROM fieldsync_sessions WHERE token_hash = ?1",
            [token_hash],
        )?;
        Ok(())
    }

    fn stream_slice(&self, plan: &SlicePlan, sink: &mut dyn SliceSink) -> Result<Vec<u64>> {
        let mut conn = self.conn()?;
        // One read transaction: counts, rows and cursor all come from one snapshot.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
        let cursor: i64 = tx.query_row(
            "SELECT coalesce(max(version), 0) FROM fieldsync_rows",
            [],
            |r| r.get(0),
        )?;
        let mut counts = Vec::with_capacity(plan.tables.len());
        for t in &plan.tables {
            let binds: Vec<_> = t.binds.iter().map(to_sql_value).collect();
            let n: i64 = tx.query_row(
                &t.count_sql,
                rusqlite::params_from_iter(binds.iter()),
                |r| r.get(0),
            )?;
            counts.push(n as u64);
        }
        self.record_base(&plan.device, cursor)?;
        sink.begin(cursor, &counts)?;
        let mut sent = Vec::with_capacity(plan.tables.len());
        for (idx, t) in plan.tables.iter().enumerate() {
            let binds: Vec<_> = t.binds.iter().map(to_sql_value).collect();
            let mut stmt = tx.prepare(&t.select_sql)?;
            let width = t.schema.columns.len();
            let mut rows = stmt.query(rusqlite::params_from_iter(binds.iter()))?;
            let mut n = 0u64;
            while let Some(row) = rows.next()? {
                // Columns 0..width exist: the statement selects exactly them.
                sink.row(
                    idx,
                    &mut (0..width).map(|i| value_ref(row.get_ref_unwrap(i))),
                )?;
                n += 1;
            }
            sent.push(n);
        }
        tx.commit()?;
        Ok(sent)
    }

    fn integrate(
        &self,
        ctx: &IntegrateContext<'_>,
        upload: &Upload,
    ) -> Result<UploadOutcome, IntegrateError> {
        integrate::integrate(self, ctx, upload)
    }

    fn upload_recorded(&self, upload_id: &str) -> Result<Option<(String, String, String)>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT device, user, outcome FROM fieldsync_uploads WHERE upload_id = ?1",
                [upload_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn conflicts_list(&self) -> Result<Vec<ConflictRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("{CONFLICT_SELECT} ORDER BY id"))?;
        let rows = stmt
            .query_map([], conflict_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn conflict_resolve(&self, id: i64, take_device: bool, at: &str) -> Result<ConflictRecord> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let c = tx
            .query_row(
                &format!("{CONFLICT_SELECT} WHERE id = ?1"),
                [id],
                conflict_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("no conflict {id}")))?;
        if let Some(when) = &c.resolved_at {
            return Err(StoreError::Invalid(format!(
                "conflict {id} was resolved at {when}"
            )));
        }
        let info = table_info(&tx, &c.table)?
            .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", c.table)))?;
        let table = quote_ident(&info.name);
        let pk = quote_ident(&info.primary_key);
        let exists: bool = tx.query_row(
            &format!("SELECT count(*) FROM {table} WHERE {pk} = ?1"),
            [to_sql_value(&c.key)],
            |r| r.get(0),
        )?;
        if !exists && take_device && c.op != "insert" && c.op != "delete" {
            return Err(StoreError::Invalid(format!(
                "conflict {id}: the row was deleted in the main database; the device's logged values are an \
                 update of some columns and cannot re-create it (re-enter the row if it is still needed)"
            )));
        }
        let (values, delete) = if take_device {
            (&c.device_values, c.op == "delete")
        } else {
            (&c.server_values, false)
        };
        let refuse = |e: rusqlite::Error| {
            StoreError::Invalid(format!(
                "conflict {id}: the main database refused the values: {e}"
            ))
        };
        if delete {
            tx.execute(
                &format!("DELETE FROM {table} WHERE {pk} = ?1"),
                [to_sql_value(&c.key)],
            )
            .map_err(refuse)?;
        } else if !values.is_empty() {
            let cols: Vec<&String> = values.keys().filter(|k| **k != info.primary_key).collect();
            if exists {
                if !cols.is_empty() {
                    let sets: Vec<String> = cols
                        .iter()
                        .map(|k| format!("{} = ?", quote_ident(k)))
                        .collect();
                    let binds: Vec<_> = cols
                        .iter()
                        .map(|k| to_sql_value(&values[*k]))
                        .chain([to_sql_value(&c.key)])
                        .collect();
                    tx.execute(
                        &format!("UPDATE {table} SET {} WHERE {pk} = ?", sets.join(", ")),
                        rusqlite::params_from_iter(binds),
                    )
                    .map_err(refuse)?;
                }
            } else {
                let names: Vec<String> = std::iter::once(pk.clone())
                    .chain(cols.iter().map(|k| quote_ident(k)))
                    .collect();
                let binds: Vec<_> = std::iter::once(to_sql_value(&c.key))
                    .chain(cols.iter().map(|k| to_sql_value(&values[*k])))
                    .collect();
                let marks = vec!["?"; names.len()].join(", ");
                tx.execute(
                    &format!(
                        "INSERT INTO {table} ({}) VALUES ({marks})",
                        names.join(", ")
                    ),
                    rusqlite::params_from_iter(binds),
                )
                .map_err(refuse)?;
            }
        }
        let take = if take_device { "device" } else { "server" };
        tx.execute(
            "UPDATE fieldsync_conflicts SET resolved_at = ?1, resolved_take = ?2 WHERE id = ?3",
            params![at, take, id],
        )?;
        tx.commit()?;
        Ok(ConflictRecord {
            resolved_at: Some(at.to_string()),
            resolved_take: Some(take.to_string()),
            ..c
        })
    }

    fn history_record(&self, s: &HistoryRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync_sync_sessions (device, user, task, op, kind, result, message, rows_down, rows_up,
                 bytes_down, bytes_up, conflicts, started_at, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                s.device, s.user, s.task, s.op.as_str(), s.trigger.as_str(), s.result, s.message, s.rows_down as i64, s.rows_up as i64,
                s.bytes_down as i64, s.bytes_up as i64, s.conflicts as i64, s.started_at, s.duration_ms as i64
            ],
        )?;
        Ok(())
    }

    fn history(&self) -> Result<Vec<HistoryRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT device, user, task, op, kind, result, message, rows_down, rows_up, bytes_down, bytes_up, conflicts,
                    started_at, duration_ms FROM fieldsync_sync_sessions ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(HistoryRecord {
                    device: r.get(0)?,
                    user: r.get(1)?,
                    task: r.get(2)?,
                    op: history_name(r, 3, SyncOp::parse)?,
                    trigger: history_name(r, 4, Trigger::parse)?,
                    result: r.get(5)?,
                    message: r.get(6)?,
                    rows_down: r.get::<_, i64>(7)? as u64,
                    rows_up: r.get::<_, i64>(8)? as u64,
                    bytes_down: r.get::<_, i64>(9)? as u64,
                    bytes_up: r.get::<_, i64>(10)? as u64,
                    conflicts: r.get::<_, i64>(11)? as u64,
                    started_at: r.get(12)?,
                    duration_ms: r.get::<_, i64>(13)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn user_list(&self) -> Result<Vec<UserRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {USER_COLUMNS} FROM fieldsync_users ORDER BY name"
        ))?;
        let rows = stmt
            .query_map([], user_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// A new password ends the user's sessions, as disabling does: whoever knew the
    /// old one is logged out everywhere.
    fn user_set_password(&self, name: &str, password_hash: &str) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE fieldsync_users SET password_hash = ?2 WHERE name = ?1",
            [name, password_hash],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no user `{name}`")));
        }
        tx.execute("DELETE FROM fieldsync_sessions WHERE user = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE fieldsync_users SET disabled = ?2 WHERE name = ?1",
            params![name, disabled],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no user `{name}`")));
        }
        if disabled {
            tx.execute("DELETE FROM fieldsync_sessions WHERE user = ?1", [name])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn device_list(&self) -> Result<Vec<DeviceRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM fieldsync_devices ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([], device_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn task_delete(&self, name: &str) -> Result<()> {
        let n = self
            .conn()?
            .execute("DELETE FROM fieldsync_tasks WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no task `{name}`")));
        }
        Ok(())
    }

    fn task_unassign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT count(*) FROM fieldsync_tasks WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(StoreError::NotFound(format!("no task `{name}`")));
        }
        for u in users {
            tx.execute(
                "DELETE FROM fieldsync_task_users WHERE task = ?1 AND user = ?2",
                [name, u],
            )?;
        }
        for d in devices {
            tx.execute(
                "DELETE FROM fieldsync_task_devices WHERE task = ?1 AND device = ?2",
                [name, d],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

const CONFLICT_SELECT: &str = "SELECT id, at, device, user, task, tbl, key, op, kind, policy, resolution,
    device_values, server_values, base_version, server_version, resolved_at, resolved_take FROM fieldsync_conflicts";

fn conflict_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConflictRecord> {
    let json = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let bad = |i: usize, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(ConflictRecord {
        id: r.get(0)?,
        at: r.get(1)?,
        device: r.get(2)?,
        user: r.get(3)?,
        task: r.get(4)?,
        table: r.get(5)?,
        key: serde_json::from_str(&json(6)?).map_err(|e| bad(6, e))?,
        op: r.get(7)?,
        kind: r.get(8)?,
        policy: r.get(9)?,
        resolution: r.get(10)?,
        device_values: serde_json::from_str(&json(11)?).map_err(|e| bad(11, e))?,
        server_values: serde_json::from_str(&json(12)?).map_err(|e| bad(12, e))?,
        base_version: r.get(13)?,
        server_version: r.get(14)?,
        resolved_at: r.get(15)?,
        resolved_take: r.get(16)?,
    })
}

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_at";
const DEVICE_COLUMNS: &str = "id, label, code_hash, secret_hash, revoked, created_at, paired_at";

/// A `fieldsync_users` row selected as [`USER_COLUMNS`].
fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        name: r.get(0)?,
        password_hash: r.get(1)?,
        admin: r.get(2)?,
        disabled: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// A `fieldsync_devices` row selected as [`DEVICE_COLUMNS`].
fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: r.get(0)?,
        label: r.get(1)?,
        code_hash: r.get(2)?,
        secret_hash: r.get(3)?,
        revoked: r.get(4)?,
        created_at: r.get(5)?,
        paired_at: r.get(6)?,
    })
}

/// Whether a user exists and is not disabled.
pub(crate) fn user_enabled(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT disabled FROM fieldsync_users WHERE name = ?1",
            [name],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .is_some_and(|disabled| !disabled))
}

/// A sync-history name column read back as its type; a name fieldsync never writes is
/// a conversion error.
fn history_name<T>(
    row: &rusqlite::Row<'_>,
    i: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let name: String = row.get(i)?;
    parse(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("`{name}` is not a sync-history name").into(),
        )
    })
}
