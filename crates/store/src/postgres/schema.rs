//! fieldsync's own objects in a PostgreSQL main database (schema `fieldsync`), their
//! creation and upgrade (`init`), and the epoch.

use super::{PgStore, in_tx};
use crate::Schema;
use crate::{Result, StoreError};

/// Bumped when fieldsync's own objects change shape; `init` upgrades older ones.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS fieldsync;
CREATE TABLE IF NOT EXISTS fieldsync.meta (key text PRIMARY KEY, value text NOT NULL);
-- `watch`: the columns (a JSON list) whose update counts as a move (tracking.rs).
CREATE TABLE IF NOT EXISTS fieldsync.tracked (
    name text PRIMARY KEY,
    primary_key text NOT NULL,
    tracked_at text NOT NULL,
    watch text NOT NULL DEFAULT '[]'
);
-- `moved`: the transaction of the key's last write that may have moved its row into
-- or out of a slice (a delete, a key change, an update of a watched column).
CREATE TABLE IF NOT EXISTS fieldsync.rows (
    tbl text NOT NULL,
    pk text NOT NULL,
    xid xid8 NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    moved xid8,
    PRIMARY KEY (tbl, pk)
);
CREATE TABLE IF NOT EXISTS fieldsync.bases (
    id bigserial PRIMARY KEY,
    snap pg_snapshot NOT NULL,
    xid xid8,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fieldsync.users (
    name text PRIMARY KEY,
    password_hash text NOT NULL,
    admin boolean NOT NULL DEFAULT false,
    disabled boolean NOT NULL DEFAULT false,
    created_at text NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync.devices (
    id text PRIMARY KEY,
    label text,
    code_hash text,
    secret_hash text,
    revoked boolean NOT NULL DEFAULT false,
    created_at text NOT NULL,
    paired_at text
);
CREATE TABLE IF NOT EXISTS fieldsync.tasks (
    name text PRIMARY KEY,
    definition text NOT NULL,
    hash text NOT NULL,
    updated_at text NOT NULL
);
-- Every definition a task ever had, by hash: an upload is judged against the one the
-- device worked under.
CREATE TABLE IF NOT EXISTS fieldsync.task_versions (
    hash text PRIMARY KEY,
    name text NOT NULL,
    definition text NOT NULL,
    at text NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync.task_users (
    task text NOT NULL REFERENCES fieldsync.tasks (name) ON DELETE CASCADE,
    user_name text NOT NULL REFERENCES fieldsync.users (name) ON DELETE CASCADE,
    PRIMARY KEY (task, user_name)
);
CREATE TABLE IF NOT EXISTS fieldsync.task_devices (
    task text NOT NULL REFERENCES fieldsync.tasks (name) ON DELETE CASCADE,
    device text NOT NULL REFERENCES fieldsync.devices (id) ON DELETE CASCADE,
    PRIMARY KEY (task, device)
);
-- Authorization asks "the tasks of this user and this device": both ways indexed.
CREATE INDEX IF NOT EXISTS task_users_by_user ON fieldsync.task_users (user_name, task);
CREATE INDEX IF NOT EXISTS task_devices_by_device ON fieldsync.task_devices (device, task);
CREATE TABLE IF NOT EXISTS fieldsync.uploads (
    upload_id text PRIMARY KEY,
    device text NOT NULL,
    user_name text NOT NULL,
    task text NOT NULL,
    outcome text NOT NULL,
    at text NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync.conflicts (
    id bigserial PRIMARY KEY,
    at text NOT NULL,
    device text NOT NULL,
    user_name text NOT NULL,
    task text NOT NULL,
    tbl text NOT NULL,
    key text NOT NULL,
    op text NOT NULL,
    kind text NOT NULL,
    policy text NOT NULL,
    resolution text NOT NULL,
    device_values text NOT NULL,
    server_values text NOT NULL,
    base_version bigint,
    server_version bigint,
    resolved_at text,
    resolved_take text
);
CREATE TABLE IF NOT EXISTS fieldsync.sync_sessions (
    id bigserial PRIMARY KEY,
    device text NOT NULL,
    user_name text NOT NULL,
    task text,
    op text NOT NULL,
    kind text NOT NULL,
    result text NOT NULL,
    message text NOT NULL,
    rows_down bigint NOT NULL,
    rows_up bigint NOT NULL,
    bytes_down bigint NOT NULL,
    bytes_up bigint NOT NULL,
    conflicts bigint NOT NULL,
    started_at text NOT NULL,
    duration_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync.devices_seen (
    device text PRIMARY KEY,
    user_name text NOT NULL,
    at text NOT NULL,
    task text,
    pending bigint
);
CREATE TABLE IF NOT EXISTS fieldsync.sessions (
    token_hash text PRIMARY KEY,
    device text NOT NULL,
    user_name text NOT NULL,
    created_at text NOT NULL,
    expires_at text NOT NULL
);
-- Who has logged in on which device: a journal entry's user must be one of them.
CREATE TABLE IF NOT EXISTS fieldsync.device_users (
    device text NOT NULL,
    user_name text NOT NULL,
    first_at text NOT NULL,
    PRIMARY KEY (device, user_name)
);
-- The device a base was handed to (NULL: before this was recorded).
ALTER TABLE fieldsync.bases ADD COLUMN IF NOT EXISTS device text;
-- Retention forgets the snapshots of old bases (a base without one counts every row
-- as changed since it: compared by value).
ALTER TABLE fieldsync.bases ALTER COLUMN snap DROP NOT NULL;
-- Revoked with `--keep-changes`: the device backs up its unsent changes first.
ALTER TABLE fieldsync.devices ADD COLUMN IF NOT EXISTS keep_changes boolean NOT NULL DEFAULT false;
-- Schema 3: a session's scope (automatic sessions, made by redeeming a ticket).
ALTER TABLE fieldsync.sessions ADD COLUMN IF NOT EXISTS scope text NOT NULL DEFAULT 'user';
ALTER TABLE fieldsync.sessions ADD COLUMN IF NOT EXISTS scope_task text;
-- Auto-sync tickets, only as SHA-256: made at a login, renewed by the pair's
-- requests, redeemed once for an automatic session (scope 'auto', its task).
-- Schema 4: integer keys reserved for a device (`keys.rs`), taken from the table's
-- sequence; `next_key`: the first not known used. Never removed.
CREATE TABLE IF NOT EXISTS fieldsync.key_blocks (
    device text NOT NULL,
    tbl text NOT NULL,
    first_key bigint NOT NULL,
    last_key bigint NOT NULL,
    next_key bigint NOT NULL,
    PRIMARY KEY (device, tbl, first_key)
);
-- Failed logins per user and per address (`server/throttle.rs`).
CREATE TABLE IF NOT EXISTS fieldsync.login_failures (
    key text PRIMARY KEY,
    failures bigint NOT NULL,
    since_ms bigint NOT NULL,
    until_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync.tickets (
    hash text PRIMARY KEY,
    device text NOT NULL,
    user_name text NOT NULL,
    task text,
    expires_at text NOT NULL,
    used_at text,
    created_at text NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_by_pair ON fieldsync.tickets (device, user_name);
-- A delta finds a table's rows written since a snapshot's oldest running transaction.
CREATE INDEX IF NOT EXISTS rows_by_xid ON fieldsync.rows (tbl, xid);
-- Whether a download was the whole slice, and why.
ALTER TABLE fieldsync.sync_sessions ADD COLUMN IF NOT EXISTS whole boolean NOT NULL DEFAULT false;
ALTER TABLE fieldsync.sync_sessions ADD COLUMN IF NOT EXISTS full_reason text;
-- Schema 4: files attached to rows (the content is in the file store, by SHA-256).
CREATE TABLE IF NOT EXISTS fieldsync.files (
    id bigserial PRIMARY KEY,
    tbl text NOT NULL,
    pk text NOT NULL,
    name text NOT NULL,
    size int8 NOT NULL,
    sha256 text NOT NULL,
    content_type text NOT NULL,
    added_by text NOT NULL,
    added_at text NOT NULL,
    UNIQUE (tbl, pk, name)
);
CREATE INDEX IF NOT EXISTS files_by_sha256 ON fieldsync.files (sha256);
-- Schema 4: the audit log (`audit.rs`): administrators' changes, refused
-- authentications; `at` is the database's clock (ms). Only the newest entries are kept.
CREATE TABLE IF NOT EXISTS fieldsync.audit (
    id bigserial PRIMARY KEY,
    at bigint NOT NULL,
    kind text NOT NULL,
    actor text NOT NULL,
    subject text NOT NULL,
    address text,
    detail text NOT NULL
);
"#;

impl Schema for PgStore {
    fn init(&self) -> Result<()> {
        let mut c = self.connect()?;
        in_tx(&mut c, |tx| {
            // Two servers starting at once must not race on CREATE … IF NOT EXISTS.
            tx.execute("SELECT pg_advisory_xact_lock(7366836482671)", &[])?;
            tx.batch_execute(SCHEMA)?;
            let existing: Option<String> = tx
                .query_opt(
                    "SELECT value FROM fieldsync.meta WHERE key = 'schema_version'",
                    &[],
                )?
                .map(|r| r.get(0));
            if let Some(v) = existing.and_then(|v| v.parse::<i64>().ok())
                && v > SCHEMA_VERSION
            {
                return Err(StoreError::Invalid(format!(
                    "the main database was set up by a newer fieldsync (schema {v}, this build knows {SCHEMA_VERSION})"
                )));
            }
            // Schema 5: which writes may have moved a row (`moved`, `watch`); rows
            // recorded before count as moved by their writer, and the trigger
            // functions are put right.
            let has_moved = tx
                .query_opt(
                    "SELECT 1 FROM information_schema.columns
                     WHERE table_schema = 'fieldsync' AND table_name = 'rows' AND column_name = 'moved'",
                    &[],
                )?
                .is_some();
            if !has_moved {
                tx.batch_execute(
                    "ALTER TABLE fieldsync.rows ADD COLUMN moved xid8;
                     UPDATE fieldsync.rows SET moved = xid;
                     ALTER TABLE fieldsync.tracked ADD COLUMN IF NOT EXISTS watch text NOT NULL DEFAULT '[]';",
                )?;
                super::tracking::renew_functions(tx)?;
            }
            // A delta read from the slice finds the keys that may have moved since a
            // snapshot (only those ever moved are in it).
            tx.batch_execute(
                "CREATE INDEX IF NOT EXISTS rows_by_moved ON fieldsync.rows (tbl, moved)
                 WHERE moved IS NOT NULL",
            )?;
            tx.execute(
                "INSERT INTO fieldsync.meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&SCHEMA_VERSION.to_string()],
            )?;
            tx.execute(
                "INSERT INTO fieldsync.meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING",
                &[&crate::random_hex(16)],
            )?;
            // Task definitions before versions were kept: the current ones.
            tx.execute(
                "INSERT INTO fieldsync.task_versions (hash, name, definition, at)
                 SELECT hash, name, definition, updated_at FROM fieldsync.tasks ON CONFLICT DO NOTHING",
                &[],
            )?;
            // Logins before they were recorded: the sessions still known.
            tx.execute(
                "INSERT INTO fieldsync.device_users (device, user_name, first_at)
                 SELECT device, user_name, min(created_at) FROM fieldsync.sessions GROUP BY device, user_name
                 ON CONFLICT DO NOTHING",
                &[],
            )?;
            Ok(())
        })
    }

    /// The stored random id plus the cluster's system identifier, timeline, the
    /// database's OID and the OID of `fieldsync.meta`: a restore into another cluster
    /// or database changes it, and so does one back into the same database (a restore
    /// creates the table anew; nothing else does).
    fn epoch(&self) -> Result<String> {
        let mut c = self.conn()?;
        let stored: String = c
            .query_one("SELECT value FROM fieldsync.meta WHERE key = 'epoch'", &[])?
            .get(0);
        let (db, meta): (u32, u32) = c
            .query_one(
                "SELECT oid, 'fieldsync.meta'::regclass::oid FROM pg_database
                 WHERE datname = current_database()",
                &[],
            )
            .map(|r| (r.get(0), r.get(1)))?;
        // pg_control_* need the privileges of a monitoring role; without them the
        // stored id and the database OID still tell restores into a new database.
        let cluster = c
            .query_one(
                "SELECT (SELECT system_identifier FROM pg_control_system())::text || '.' ||
                        (SELECT timeline_id FROM pg_control_checkpoint())::text",
                &[],
            )
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|_| "unknown".into());
        Ok(format!("{stored}-{cluster}-{db}.{meta}"))
    }

    fn epoch_reset(&self) -> Result<String> {
        self.conn()?.execute(
            "UPDATE fieldsync.meta SET value = $1 WHERE key = 'epoch'",
            &[&crate::random_hex(16)],
        )?;
        self.epoch()
    }
}
