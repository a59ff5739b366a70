//! fieldsync's own objects in a SQLite main database, their creation and upgrade
//! (`init`), and the epoch.

use rusqlite::OptionalExtension;

use super::SqliteStore;
use crate::Schema;
use crate::{Result, StoreError};

/// Bumped when fieldsync's own objects change shape; `init` upgrades older ones.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS fieldsync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- `watch`: the columns (a JSON list) whose update counts as a move (tracking.rs).
CREATE TABLE IF NOT EXISTS fieldsync_tracked (name TEXT PRIMARY KEY, primary_key TEXT NOT NULL, tracked_at TEXT NOT NULL, watch TEXT NOT NULL DEFAULT '[]');
-- `moved`: the version of the key's last write that may have moved its row into or
-- out of a slice (a delete, a key change, an update of a watched column).
CREATE TABLE IF NOT EXISTS fieldsync_rows (
    tbl TEXT NOT NULL,
    pk NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    moved INTEGER NOT NULL DEFAULT 0,
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
    duration_ms INTEGER NOT NULL,
    whole INTEGER NOT NULL DEFAULT 0,
    full_reason TEXT
);
CREATE TABLE IF NOT EXISTS fieldsync_sessions (
    token_hash TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    scope TEXT NOT NULL DEFAULT 'user',
    scope_task TEXT
);
-- Auto-sync tickets, only as SHA-256: made at a login, renewed by the pair's
-- requests, redeemed once for an automatic session (scope 'auto', its task).
CREATE TABLE IF NOT EXISTS fieldsync_devices_seen (
    device TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    at TEXT NOT NULL,
    task TEXT,
    pending INTEGER
);
-- Failed logins per user and per address (`server/throttle.rs`).
CREATE TABLE IF NOT EXISTS fieldsync_login_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync_tickets (
    hash TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    user TEXT NOT NULL,
    task TEXT,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fieldsync_tickets_by_pair ON fieldsync_tickets (device, user);
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
    at TEXT,
    PRIMARY KEY (device, high, low)
) WITHOUT ROWID;
-- Schema 4: integer keys reserved for a device (`keys.rs`); `next_key`: the first
-- not known used. Rows are never removed: a block's keys are never given again.
CREATE TABLE IF NOT EXISTS fieldsync_key_blocks (
    device TEXT NOT NULL,
    tbl TEXT NOT NULL,
    first_key INTEGER NOT NULL,
    last_key INTEGER NOT NULL,
    next_key INTEGER NOT NULL,
    PRIMARY KEY (device, tbl, first_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fieldsync_key_blocks_by_tbl ON fieldsync_key_blocks (tbl, last_key);
-- Schema 4: files attached to rows (the content is in the file store, by SHA-256).
CREATE TABLE IF NOT EXISTS fieldsync_files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    pk TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at TEXT NOT NULL,
    UNIQUE (tbl, pk, name)
);
CREATE INDEX IF NOT EXISTS fieldsync_files_by_sha256 ON fieldsync_files (sha256);
-- Schema 4: the audit log (`audit.rs`): administrators' changes, refused
-- authentications; `at` is the database's clock (ms). Only the newest entries are kept.
CREATE TABLE IF NOT EXISTS fieldsync_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    address TEXT,
    detail TEXT NOT NULL
);
"#;

impl Schema for SqliteStore {
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
        // Schema 5: which writes may have moved a row (`moved`, `watch`); rows stamped
        // before count as moved at their version, and the triggers are put right.
        let has_moved: bool = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('fieldsync_rows') WHERE name = 'moved'",
            [],
            |r| r.get(0),
        )?;
        if !has_moved {
            tx.execute_batch(
                "ALTER TABLE fieldsync_rows ADD COLUMN moved INTEGER NOT NULL DEFAULT 0;
                 UPDATE fieldsync_rows SET moved = version;
                 ALTER TABLE fieldsync_tracked ADD COLUMN watch TEXT NOT NULL DEFAULT '[]';",
            )?;
        }
        // A delta finds a table's rows written since a version, and whether each
        // moved, by a range of this index.
        tx.execute_batch(
            "DROP INDEX IF EXISTS fieldsync_rows_by_tbl_version;
             CREATE INDEX IF NOT EXISTS fieldsync_rows_by_tbl_version_moved
                 ON fieldsync_rows (tbl, version, moved);",
        )?;
        if !has_moved {
            super::tracking::renew_triggers(&tx)?;
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
        // Schema 2: when each base was handed out (retention); older ones have none.
        let has_at: bool = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('fieldsync_bases') WHERE name = 'at'",
            [],
            |r| r.get(0),
        )?;
        if !has_at {
            tx.execute_batch("ALTER TABLE fieldsync_bases ADD COLUMN at TEXT")?;
        }
        // Schema 2: whether a download was the whole slice, and why.
        let has_full: bool = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('fieldsync_sync_sessions') WHERE name = 'whole'",
            [],
            |r| r.get(0),
        )?;
        if !has_full {
            tx.execute_batch(
                "ALTER TABLE fieldsync_sync_sessions ADD COLUMN whole INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE fieldsync_sync_sessions ADD COLUMN full_reason TEXT;",
            )?;
        }
        // Revoked with `--keep-changes`: the device backs up its unsent changes first.
        let has_keep: bool = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('fieldsync_devices') WHERE name = 'keep_changes'",
            [],
            |r| r.get(0),
        )?;
        if !has_keep {
            tx.execute_batch(
                "ALTER TABLE fieldsync_devices ADD COLUMN keep_changes INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        // Schema 3: a session's scope (automatic sessions, made by redeeming a ticket).
        let has_scope: bool = tx.query_row(
            "SELECT count(*) FROM pragma_table_info('fieldsync_sessions') WHERE name = 'scope'",
            [],
            |r| r.get(0),
        )?;
        if !has_scope {
            tx.execute_batch(
                "ALTER TABLE fieldsync_sessions ADD COLUMN scope TEXT NOT NULL DEFAULT 'user';
                 ALTER TABLE fieldsync_sessions ADD COLUMN scope_task TEXT;",
            )?;
        }
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
}
