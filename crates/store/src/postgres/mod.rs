//! The PostgreSQL backend of the main database. fieldsync's objects live in the schema
//! `fieldsync`; upload integration is in `integrate.rs`, the type mapping in `types.rs`.
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

mod integrate;
pub(crate) mod types;

use fieldsync_proto::wire::{SyncOp, Trigger};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use fieldsync_proto::Value;
use fieldsync_proto::filter::Dialect;
use fieldsync_proto::task::TaskDef;
use fieldsync_proto::wire::{Upload, UploadOutcome};
use postgres::{Client, IsolationLevel, NoTls, Transaction};

use self::types::{Bind, Kind};
use crate::plan::{self, SlicePlan, quote_ident};
use crate::{
    ColumnInfo, ConflictRecord, DeviceRecord, HistoryRecord, IntegrateContext, IntegrateError,
    Result, SessionRecord, SliceSink, Store, StoreError, TableInfo, TaskRecord, UserRecord,
};

/// Bumped when fieldsync's own objects change shape; `init` upgrades older ones.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS fieldsync;
CREATE TABLE IF NOT EXISTS fieldsync.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS fieldsync.tracked (
    name text PRIMARY KEY,
    primary_key text NOT NULL,
    tracked_at text NOT NULL
);
CREATE TABLE IF NOT EXISTS fieldsync.rows (
    tbl text NOT NULL,
    pk text NOT NULL,
    xid xid8 NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
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
"#;

/// Connections kept for reuse; a broken one is dropped, not returned.
struct Pool {
    config: postgres::Config,
    /// Idle connections, and how many are out.
    state: Mutex<PoolState>,
    returned: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Client>,
    out: usize,
}

/// The settings every pooled connection starts with, whatever the database's or the
/// role's defaults (`ALTER DATABASE … SET TimeZone`, initdb's OS zone): text a device
/// sends without a zone is UTC, dates are read year-month-day, and nothing the server
/// formats in SQL follows the office's locale. What travels is formatted explicitly
/// anyway (`types.rs`); these settings steer what PostgreSQL parses. Given last, so
/// they win over `options` in the URL. A backstop for what the server's idle timeout
/// already cuts: a session idle inside a transaction for 10 minutes (a download whose
/// client trickles a byte a minute, a bug) is ended by PostgreSQL, so nothing pins
/// VACUUM for longer; the pool drops the broken connection.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres \
    -c extra_float_digits=1 -c standard_conforming_strings=on \
    -c idle_in_transaction_session_timeout=600000";

/// Connections one store holds at most (each request holds one; PostgreSQL's own
/// limit is 100 by default, shared by every server and the office).
const POOL_MAX: usize = 32;
/// How long a request waits for a connection before it fails as busy.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// A pooled connection, back in the pool when dropped.
struct Conn<'p> {
    pool: &'p Pool,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let client = self.client.take();
        if let Ok(mut state) = self.pool.state.lock() {
            state.out -= 1;
            if let Some(c) = client
                && !c.is_closed()
            {
                state.idle.push(c);
            }
        }
        self.pool.returned.notify_one();
    }
}

/// A PostgreSQL main database, by URL (`postgres://user@host:port/db`).
pub struct PgStore {
    pool: Pool,
    url: String,
    /// fieldsync's objects were seen: later calls need not look again (one round
    /// trip less per call on the server's hot path).
    ready: std::sync::atomic::AtomicBool,
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // Only uploads wait with a `lock_timeout` (`integrate.rs`).
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
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database URL `{url}`: {e}")))?;
        let options = match config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        config.options(&options);
        Ok(PgStore {
            pool: Pool {
                config,
                state: Mutex::new(PoolState::default()),
                returned: Condvar::new(),
            },
            url: url.to_string(),
            ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn connect(&self) -> Result<Conn<'_>> {
        fn poisoned<T>(_: T) -> StoreError {
            StoreError::Db("connection pool poisoned".into())
        }
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut state = self.pool.state.lock().map_err(poisoned)?;
        while state.idle.is_empty() && state.out >= POOL_MAX {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Db(format!(
                    "main database busy: all {POOL_MAX} connections in use for {} s",
                    POOL_WAIT.as_secs()
                )));
            }
            state = self
                .pool
                .returned
                .wait_timeout(state, left)
                .map_err(poisoned)?
                .0;
        }
        let idle = state.idle.pop();
        state.out += 1;
        drop(state);
        // From here the slot is ours: a failed connect gives it back.
        let mut conn = Conn {
            pool: &self.pool,
            client: None,
        };
        let client = match idle {
            Some(c) => c,
            None => {
                let mut config = self.pool.config.clone();
                config.connect_timeout(Duration::from_secs(10));
                config.connect(NoTls).map_err(|e| {
                    StoreError::Db(format!(
                        "cannot connect to {}: {}",
                        redact(&self.url),
                        pg_message(&e)
                    ))
                })?
            }
        };
        conn.client = Some(client);
        Ok(conn)
    }

    /// A connection to an initialised database.
    fn conn(&self) -> Result<Conn<'_>> {
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

pub(crate) fn table_info(
    c: &mut impl postgres::GenericClient,
    table: &str,
) -> Result<Option<TableInfo>> {
    // Tables of the search path only (the organisation's schema), never fieldsync's.
    let Some(row) = c.query_opt(
        "SELECT c.oid, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = $1 AND c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false))
           AND n.nspname <> 'fieldsync'
         ORDER BY array_position(current_schemas(false), n.nspname::name) LIMIT 1",
        &[&table],
    )?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let name: String = row.get(1);
    let rows = c.query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                coalesce(a.attnum = ANY (i.indkey::int2[]), false) AND i.indnatts = 1
         FROM pg_attribute a
         LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
        &[&oid],
    )?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut primary_key = String::new();
    for r in rows {
        let col: String = r.get(0);
        let declared: String = r.get(1);
        if r.get::<_, bool>(4) {
            primary_key = col.clone();
        }
        columns.push(ColumnInfo {
            column_type: types::kind(&declared)
                .map_or(fieldsync_proto::ColumnType::Text, Kind::column_type),
            name: col,
            declared_type: declared,
            not_null: r.get(2),
            has_default: r.get(3),
        });
    }
    let key_type = columns
        .iter()
        .find(|c| c.name == primary_key)
        .map(|c| c.declared_type.as_str())
        .unwrap_or_default();
    let tracked = tracking_intact(c, oid, &name, &primary_key, key_type)?;
    Ok(Some(TableInfo {
        name,
        primary_key,
        columns,
        tracked,
    }))
}

/// The statement triggers every tracked table has: name, event, `pg_trigger.tgtype`
/// (AFTER, FOR EACH STATEMENT, the event) and the transition tables they reference.
type TriggerShape = (
    &'static str,
    &'static str,
    i16,
    Option<&'static str>,
    Option<&'static str>,
);
const TRACKING_TRIGGERS: [TriggerShape; 4] = [
    ("fieldsync_ins", "INSERT", 4, None, Some("new_rows")),
    (
        "fieldsync_upd",
        "UPDATE",
        16,
        Some("old_rows"),
        Some("new_rows"),
    ),
    ("fieldsync_del", "DELETE", 8, Some("old_rows"), None),
    ("fieldsync_truncate", "TRUNCATE", 32, None, None),
];

/// The name (in schema `fieldsync`) of a table's trigger function: one function per
/// table, named by a digest of the table's name (names are limited to 63 bytes).
fn tracking_function(table: &str) -> String {
    format!("track_{}", &crate::sha256_hex(table)[..24])
}

/// The source (`pg_proc.prosrc`) of a table's trigger function as this build creates
/// it: what `table_info` compares the installed function with. It records under the
/// table's name, so a function left from before a rename is stale.
fn tracking_body(table: &str, primary_key: &str, key_type: &str) -> String {
    let pk = quote_ident(primary_key);
    let name_lit = format!("'{}'", table.replace('\'', "''"));
    let upsert = |source: &str, alias: &str, deleted: bool, filter: &str| {
        let key = types::key_text(&format!("{alias}.{pk}"), key_type);
        format!(
            "INSERT INTO fieldsync.rows (tbl, pk, xid, deleted)
             SELECT {name_lit}, {key}, pg_current_xact_id(), {deleted} FROM {source} {alias} {filter}
             ON CONFLICT (tbl, pk) DO UPDATE SET xid = excluded.xid, deleted = {deleted};"
        )
    };
    let inserted = upsert("new_rows", "n", false, "");
    // A key change retires the old key (a tombstone).
    let rekeyed = upsert(
        "old_rows",
        "o",
        true,
        &format!("WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.{pk} = o.{pk})"),
    );
    let deleted = upsert("old_rows", "o", true, "");
    format!(
        "
         BEGIN
             IF TG_OP = 'INSERT' THEN
                 {inserted}
             ELSIF TG_OP = 'UPDATE' THEN
                 {rekeyed}
                 {inserted}
             ELSIF TG_OP = 'DELETE' THEN
                 {deleted}
             ELSIF TG_OP = 'TRUNCATE' THEN
                 UPDATE fieldsync.rows SET xid = pg_current_xact_id(), deleted = true
                 WHERE tbl = {name_lit} AND NOT deleted;
             END IF;
             RETURN NULL;
         END
         "
    )
}

/// The trigger function and triggers that track a table: a function of its own with
/// static SQL (PL/pgSQL caches its plans; a shared function would have to build the
/// SQL per statement, three times slower per office statement), and statement
/// triggers with transition tables: one upsert per office statement, not per row.
fn tracking_sql(table: &str, primary_key: &str, key_type: &str) -> String {
    let t = quote_ident(table);
    let function = format!("fieldsync.{}", quote_ident(&tracking_function(table)));
    // A dollar-quote tag no table name can end the body with.
    let tag = format!("$fs{}$", crate::random_hex(6));
    let body = tracking_body(table, primary_key, key_type);
    let mut sql = format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {tag}{body}{tag};"
    );
    for (name, event, _, old, new) in TRACKING_TRIGGERS {
        let mut referencing = String::new();
        if let Some(o) = old {
            referencing.push_str(&format!(" OLD TABLE AS {o}"));
        }
        if let Some(n) = new {
            referencing.push_str(&format!(" NEW TABLE AS {n}"));
        }
        if !referencing.is_empty() {
            referencing = format!(" REFERENCING{referencing}");
        }
        sql.push_str(&format!(
            "\nCREATE TRIGGER {} AFTER {event} ON {t}{referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}();",
            quote_ident(name)
        ));
    }
    sql
}

/// Whether a table's tracking is in place: recorded under its name with its primary
/// key, and on the table itself (by oid) the four triggers, enabled, calling the
/// function this build would create now (its source compared). One query, as
/// `table_info` runs per download and per upload.
fn tracking_intact(
    c: &mut impl postgres::GenericClient,
    oid: u32,
    table: &str,
    primary_key: &str,
    key_type: &str,
) -> Result<bool> {
    if primary_key.is_empty() {
        return Ok(false);
    }
    let names: Vec<&str> = TRACKING_TRIGGERS.iter().map(|t| t.0).collect();
    let kinds: Vec<i16> = TRACKING_TRIGGERS.iter().map(|t| t.2).collect();
    let olds: Vec<&str> = TRACKING_TRIGGERS
        .iter()
        .map(|t| t.3.unwrap_or_default())
        .collect();
    let news: Vec<&str> = TRACKING_TRIGGERS
        .iter()
        .map(|t| t.4.unwrap_or_default())
        .collect();
    let body = tracking_body(table, primary_key, key_type);
    let row = c.query_one(
        "SELECT EXISTS (SELECT 1 FROM fieldsync.tracked WHERE name = $2 AND primary_key = $3)
            AND (SELECT count(*) FROM pg_trigger tg
                 JOIN unnest($5::text[], $6::int2[], $7::text[], $8::text[]) AS w (name, kind, old_rows, new_rows)
                   ON tg.tgname::text = w.name AND tg.tgtype = w.kind
                  AND coalesce(tg.tgoldtable::text, '') = w.old_rows
                  AND coalesce(tg.tgnewtable::text, '') = w.new_rows
                 JOIN pg_proc p ON p.oid = tg.tgfoid
                 WHERE tg.tgrelid = $1 AND tg.tgenabled IN ('O', 'A') AND tg.tgnargs = 0
                   AND p.pronamespace = 'fieldsync'::regnamespace AND p.proname::text = $4
                   AND p.pronargs = 0 AND p.prosrc = $9) = 4",
        &[
            &oid,
            &table,
            &primary_key,
            &tracking_function(table),
            &names,
            &kinds,
            &olds,
            &news,
            &body,
        ],
    )?;
    Ok(row.get(0))
}

fn now() -> String {
    fieldsync_proto::time::now_rfc3339()
}

/// Runs `f` in a transaction and commits.
fn in_tx<T>(c: &mut Client, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
    let mut tx = c.transaction()?;
    let out = f(&mut tx)?;
    tx.commit()?;
    Ok(out)
}

fn task_record(
    c: &mut impl postgres::GenericClient,
    name: &str,
    definition: &str,
    hash: String,
    updated_at: String,
) -> Result<TaskRecord> {
    let def: TaskDef = serde_json::from_str(definition)
        .map_err(|e| StoreError::Db(format!("stored task `{name}` is unreadable: {e}")))?;
    let mut list = |sql: &str| -> Result<Vec<String>> {
        Ok(c.query(sql, &[&name])?.iter().map(|r| r.get(0)).collect())
    };
    Ok(TaskRecord {
        users: list(
            "SELECT user_name FROM fieldsync.task_users WHERE task = $1 ORDER BY user_name COLLATE \"C\"",
        )?,
        devices: list(
            "SELECT device FROM fieldsync.task_devices WHERE task = $1 ORDER BY device COLLATE \"C\"",
        )?,
        def,
        hash,
        updated_at,
    })
}

/// The tasks assigned to both `user` and `device` (only `name`, when given), with
/// their users and devices, in one query: the user's assignments by index
/// (`task_users_by_user`), each checked against the device's by primary key.
fn assigned_tasks(
    c: &mut Client,
    name: Option<&str>,
    user: &str,
    device: &str,
) -> Result<Vec<TaskRecord>> {
    // One task by its key, or all of the user's: each its own plan.
    let which = if name.is_some() {
        "u.task = $3"
    } else {
        "$3::text IS NULL"
    };
    let rows = c.query(
        &format!(
            "SELECT t.name, t.definition, t.hash, t.updated_at,
                    array(SELECT x.user_name FROM fieldsync.task_users x WHERE x.task = t.name
                          ORDER BY x.user_name COLLATE \"C\"),
                    array(SELECT x.device FROM fieldsync.task_devices x WHERE x.task = t.name
                          ORDER BY x.device COLLATE \"C\")
             FROM fieldsync.task_users u
             JOIN fieldsync.task_devices d ON d.task = u.task AND d.device = $2
             JOIN fieldsync.tasks t ON t.name = u.task
             WHERE u.user_name = $1 AND {which}
             ORDER BY t.name COLLATE \"C\""
        ),
        &[&user, &device, &name],
    )?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let definition: String = r.get(1);
            Ok(TaskRecord {
                def: serde_json::from_str(&definition).map_err(|e| {
                    StoreError::Db(format!("stored task `{name}` is unreadable: {e}"))
                })?,
                hash: r.get(2),
                updated_at: r.get(3),
                users: r.get(4),
                devices: r.get(5),
            })
        })
        .collect()
}

impl Store for PgStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

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

    fn table_info(&self, table: &str) -> Result<Option<TableInfo>> {
        table_info(&mut *self.conn()?, table)
    }

    fn track_table(&self, table: &str) -> Result<TableInfo> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            tx.execute("SELECT pg_advisory_xact_lock(7366836482672)", &[])?;
            let info = table_info(tx, table)?.ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no table `{}` in the main database",
                    table.escape_debug()
                ))
            })?;
            if info.primary_key.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "table `{}` cannot be tracked: it needs a single-column primary key",
                    info.name
                )));
            }
            let unsupported: Vec<String> = info
                .columns
                .iter()
                .filter(|c| types::kind(&c.declared_type).is_none())
                .map(|c| format!("`{}` ({})", c.name, c.declared_type))
                .collect();
            if !unsupported.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "table `{}` cannot be tracked: column {} of a type fieldsync does not carry \
                     (supported: integer types, numeric, real/double precision, text/varchar/char, \
                     boolean, date/time/timestamp, uuid, bytea, json/jsonb)",
                    info.name,
                    unsupported.join(", ")
                )));
            }
            if info.tracked {
                return Ok(info);
            }
            // Missing or stale tracking (first time, a table rebuilt or renamed since, an
            // older fieldsync's function): whatever fieldsync triggers the table has go
            // (after a rename they still call the function recording under the old
            // name), the current ones come, and every row is stamped anew, so changes
            // made while nothing stamped them count as changed for every device
            // (compared by value, never overwritten silently).
            let oid: u32 = tx
                .query_one(
                    "SELECT $1::text::regclass::oid",
                    &[&quote_ident(&info.name)],
                )?
                .get(0);
            let stale = tx.query(
                "SELECT tg.tgname::text, tg.tgfoid, p.proname::text FROM pg_trigger tg
                 JOIN pg_proc p ON p.oid = tg.tgfoid
                 WHERE tg.tgrelid = $1 AND NOT tg.tgisinternal
                   AND (tg.tgname LIKE 'fieldsync\\_%' OR p.pronamespace = 'fieldsync'::regnamespace)",
                &[&oid],
            )?;
            let t = quote_ident(&info.name);
            let mut functions: Vec<(u32, String)> = Vec::new();
            for r in &stale {
                let name: String = r.get(0);
                tx.batch_execute(&format!("DROP TRIGGER {} ON {t}", quote_ident(&name)))?;
                let f = (r.get(1), r.get(2));
                if !functions.contains(&f) {
                    functions.push(f);
                }
            }
            // A function no trigger calls any more goes too, with the bookkeeping of
            // the name it recorded under (the table's old name after a rename).
            let current = tracking_function(&info.name);
            let recorded: Vec<String> = tx
                .query("SELECT name FROM fieldsync.tracked", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (foid, proname) in functions {
                if proname == current {
                    continue;
                }
                let unused: bool = tx
                    .query_one(
                        "SELECT NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = $1)
                            AND EXISTS (SELECT 1 FROM pg_proc WHERE oid = $1
                                        AND pronamespace = 'fieldsync'::regnamespace)",
                        &[&foid],
                    )?
                    .get(0);
                if !unused {
                    continue;
                }
                tx.batch_execute(&format!(
                    "DROP FUNCTION fieldsync.{}()",
                    quote_ident(&proname)
                ))?;
                for old in recorded.iter().filter(|n| tracking_function(n) == proname) {
                    tx.execute("DELETE FROM fieldsync.tracked WHERE name = $1", &[old])?;
                }
            }
            let key_type = info
                .column(&info.primary_key)
                .map(|c| c.declared_type.clone())
                .unwrap_or_default();
            let sql = tracking_sql(&info.name, &info.primary_key, &key_type);
            tx.batch_execute(&sql)?;
            let key = types::key_text(&format!("s.{}", quote_ident(&info.primary_key)), &key_type);
            tx.execute(
                &format!(
                    "INSERT INTO fieldsync.rows (tbl, pk, xid, deleted)
                     SELECT $1, {key}, pg_current_xact_id(), false FROM {t} s
                     ON CONFLICT (tbl, pk) DO UPDATE SET xid = excluded.xid, deleted = false"
                ),
                &[&info.name],
            )?;
            // Rows deleted while nothing stamped them leave tombstones now.
            tx.execute(
                &format!(
                    "UPDATE fieldsync.rows r SET xid = pg_current_xact_id(), deleted = true
                     WHERE r.tbl = $1 AND NOT r.deleted
                       AND NOT EXISTS (SELECT 1 FROM {t} s WHERE {key} = r.pk)"
                ),
                &[&info.name],
            )?;
            tx.execute(
                "INSERT INTO fieldsync.tracked (name, primary_key, tracked_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET primary_key = excluded.primary_key,
                     tracked_at = excluded.tracked_at",
                &[&info.name, &info.primary_key, &now()],
            )?;
            Ok(TableInfo {
                tracked: true,
                ..info
            })
        })
    }

    /// The id of the last transaction that wrote the row (a version only equality
    /// can compare; see the module comment).
    fn row_version(&self, table: &str, key: &Value) -> Result<Option<(i64, bool)>> {
        let mut c = self.conn()?;
        Ok(c.query_opt(
            "SELECT xid::text::int8, deleted FROM fieldsync.rows WHERE tbl = $1 AND pk = $2",
            &[&table, &types::text_of(key)],
        )?
        .map(|r| (r.get(0), r.get(1))))
    }

    fn user_add(&self, u: &UserRecord) -> Result<()> {
        let n = self.conn()?.execute(
            "INSERT INTO fieldsync.users (name, password_hash, admin, disabled, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
            &[
                &u.name,
                &u.password_hash,
                &u.admin,
                &u.disabled,
                &u.created_at,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "user `{}` exists",
                u.name
            )));
        }
        Ok(())
    }

    fn user_get(&self, name: &str) -> Result<Option<UserRecord>> {
        Ok(self
            .conn()?
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM fieldsync.users WHERE name = $1"),
                &[&name],
            )?
            .map(|r| user_row(&r)))
    }

    fn device_add(&self, d: &DeviceRecord) -> Result<()> {
        let n = self.conn()?.execute(
            "INSERT INTO fieldsync.devices (id, label, code_hash, secret_hash, revoked, created_at, paired_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            &[&d.id, &d.label, &d.code_hash, &d.secret_hash, &d.revoked, &d.created_at, &d.paired_at],
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
        Ok(self
            .conn()?
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM fieldsync.devices WHERE id = $1"),
                &[&id],
            )?
            .map(|r| device_row(&r)))
    }

    fn device_pair(&self, id: &str, code_hash: &str, secret_hash: &str, at: &str) -> Result<bool> {
        // One statement: the code is consumed exactly once even if two devices race.
        let n = self.conn()?.execute(
            "UPDATE fieldsync.devices SET code_hash = NULL, secret_hash = $3, paired_at = $4
             WHERE id = $1 AND code_hash = $2 AND NOT revoked",
            &[&id, &code_hash, &secret_hash, &at],
        )?;
        Ok(n == 1)
    }

    fn task_put(&self, def: &TaskDef, hash: &str, at: &str) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let mut infos = std::collections::HashMap::new();
            for t in &def.tables {
                infos.insert(t.name.clone(), table_info(tx, &t.name)?);
                if let Some(p) = &t.parent {
                    infos.insert(p.table.clone(), table_info(tx, &p.table)?);
                }
            }
            plan::check_task(def, &|t| Ok(infos.get(t).cloned().flatten()))?;
            let json = serde_json::to_string(def).expect("task serializes");
            tx.execute(
                "INSERT INTO fieldsync.tasks (name, definition, hash, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, hash = excluded.hash,
                     updated_at = excluded.updated_at",
                &[&def.name, &json, &hash, &at],
            )?;
            tx.execute(
                "INSERT INTO fieldsync.task_versions (hash, name, definition, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&hash, &def.name, &json, &at],
            )?;
            Ok(())
        })
    }

    fn task_version(&self, hash: &str) -> Result<Option<TaskDef>> {
        self.conn()?
            .query_opt(
                "SELECT definition FROM fieldsync.task_versions WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| {
                serde_json::from_str(&r.get::<_, String>(0))
                    .map_err(|e| StoreError::Db(format!("stored task version unreadable: {e}")))
            })
            .transpose()
    }

    fn task_get(&self, name: &str) -> Result<Option<TaskRecord>> {
        let mut c = self.conn()?;
        let row = c.query_opt(
            "SELECT definition, hash, updated_at FROM fieldsync.tasks WHERE name = $1",
            &[&name],
        )?;
        row.map(|r| task_record(&mut *c, name, r.get(0), r.get(1), r.get(2)))
            .transpose()
    }

    fn task_list(&self) -> Result<Vec<TaskRecord>> {
        let mut c = self.conn()?;
        let rows = c.query(
            "SELECT name, definition, hash, updated_at FROM fieldsync.tasks ORDER BY name COLLATE \"C\"",
            &[],
        )?;
        rows.iter()
            .map(|r| task_record(&mut *c, r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    fn tasks_assigned(&self, user: &str, device: &str) -> Result<Vec<TaskRecord>> {
        assigned_tasks(&mut *self.conn()?, None, user, device)
    }

    fn task_assigned(&self, name: &str, user: &str, device: &str) -> Result<Option<TaskRecord>> {
        Ok(
            assigned_tasks(&mut *self.conn()?, Some(name), user, device)?
                .into_iter()
                .next(),
        )
    }

    fn task_assign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let mut exists =
                |sql: &str, v: &str| -> Result<bool> { Ok(tx.query_opt(sql, &[&v])?.is_some()) };
            if !exists("SELECT 1 FROM fieldsync.tasks WHERE name = $1", name)? {
                return Err(StoreError::NotFound(format!("no task `{name}`")));
            }
            for u in users {
                if !exists("SELECT 1 FROM fieldsync.users WHERE name = $1", u)? {
                    return Err(StoreError::NotFound(format!("no user `{u}`")));
                }
            }
            for d in devices {
                if !exists("SELECT 1 FROM fieldsync.devices WHERE id = $1", d)? {
                    return Err(StoreError::NotFound(format!("no device `{d}`")));
                }
            }
            for u in users {
                tx.execute(
                    "INSERT INTO fieldsync.task_users (task, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, u],
                )?;
            }
            for d in devices {
                tx.execute(
                    "INSERT INTO fieldsync.task_devices (task, device) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, d],
                )?;
            }
            Ok(())
        })
    }

    fn session_put(&self, s: &SessionRecord) -> Result<()> {
        let mut c = self.conn()?;
        c.execute(
            "INSERT INTO fieldsync.sessions (token_hash, device, user_name, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &s.token_hash,
                &s.device,
                &s.user,
                &s.created_at,
                &s.expires_at,
            ],
        )?;
        c.execute(
            "INSERT INTO fieldsync.device_users (device, user_name, first_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&s.device, &s.user, &s.created_at],
        )?;
        // Expired sessions are of no use to anyone; drop them while we are here.
        c.execute(
            "DELETE FROM fieldsync.sessions WHERE expires_at < $1",
            &[&s.created_at],
        )?;
        Ok(())
    }

    fn clock_ms(&self) -> Result<i64> {
        Ok(self
            .conn()?
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                &[],
            )?
            .get(0))
    }

    fn session_get(&self, token_hash: &str) -> Result<Option<SessionRecord>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT token_hash, device, user_name, created_at, expires_at FROM fieldsync.sessions
                 WHERE token_hash = $1
                   AND expires_at > to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                &[&token_hash],
            )?
            .map(|r| SessionRecord {
                token_hash: r.get(0),
                device: r.get(1),
                user: r.get(2),
                created_at: r.get(3),
                expires_at: r.get(4),
            }))
    }

    fn session_delete(&self, token_hash: &str) -> Result<()> {
        self.conn()?.execute(
            "DELETE FROM fieldsync.sessions WHERE token_hash = $1",
            &[&token_hash],
        )?;
        Ok(())
    }

    fn stream_slice(&self, plan: &SlicePlan, sink: &mut dyn SliceSink) -> Result<Vec<u64>> {
        let mut c = self.conn()?;
        // One REPEATABLE READ transaction: counts, rows and the base all come from one
        // snapshot; its first statement records that snapshot as the device's base.
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()?;
        let cursor: i64 = tx
            .query_one(
                "INSERT INTO fieldsync.bases (snap, device) VALUES (pg_current_snapshot(), $1) RETURNING id",
                &[&plan.device],
            )?
            .get(0);
        let mut counts = Vec::with_capacity(plan.tables.len());
        for t in &plan.tables {
            let binds: Vec<Bind<'_>> = t.binds.iter().map(Bind).collect();
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                binds.iter().map(|b| b as _).collect();
            let n: i64 = tx.query_one(&t.count_sql, &refs)?.get(0);
            counts.push(n as u64);
        }
        sink.begin(cursor, &counts)?;
        let mut sent = Vec::with_capacity(plan.tables.len());
        for (idx, t) in plan.tables.iter().enumerate() {
            let kinds: Vec<Option<Kind>> = t
                .schema
                .columns
                .iter()
                .zip(&t.declared)
                .map(|(_, d)| types::kind(d))
                .collect();
            let binds: Vec<Bind<'_>> = t.binds.iter().map(Bind).collect();
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                binds.iter().map(|b| b as _).collect();
            // A portal read in batches: memory stays flat whatever the slice's size.
            let portal = tx.bind(&t.select_sql, &refs)?;
            let mut n = 0u64;
            loop {
                let batch = tx.query_portal(&portal, 2000)?;
                if batch.is_empty() {
                    break;
                }
                for row in &batch {
                    let mut values = (0..kinds.len()).map(|i| types::value_ref(row, i, kinds[i]));
                    sink.row(idx, &mut values)?;
                    n += 1;
                }
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
        let mut c = self.conn()?;
        integrate::integrate(&mut c, ctx, upload)
    }

    fn upload_recorded(&self, upload_id: &str) -> Result<Option<(String, String, String)>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT device, user_name, outcome FROM fieldsync.uploads WHERE upload_id = $1",
                &[&upload_id],
            )?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    fn conflicts_list(&self) -> Result<Vec<ConflictRecord>> {
        let rows = self
            .conn()?
            .query(&format!("{CONFLICT_SELECT} ORDER BY id"), &[])?;
        rows.iter().map(conflict_row).collect()
    }

    fn conflict_resolve(&self, id: i64, take_device: bool, at: &str) -> Result<ConflictRecord> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let row = tx
                .query_opt(
                    &format!("{CONFLICT_SELECT} WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )?
                .ok_or_else(|| StoreError::NotFound(format!("no conflict {id}")))?;
            let c = conflict_row(&row)?;
            if let Some(when) = &c.resolved_at {
                return Err(StoreError::Invalid(format!(
                    "conflict {id} was resolved at {when}"
                )));
            }
            let info = table_info(tx, &c.table)?
                .ok_or_else(|| StoreError::NotFound(format!("table `{}` is gone", c.table)))?;
            let table = quote_ident(&info.name);
            let pk_col = info
                .column(&info.primary_key)
                .expect("primary key is a column");
            let pk = quote_ident(&info.primary_key);
            let key_param = types::write_param(1, &pk_col.declared_type);
            let key = types::write_value(&c.key, &pk_col.declared_type);
            let exists = tx
                .query_opt(
                    &format!("SELECT 1 FROM {table} WHERE {pk} = {key_param} FOR UPDATE"),
                    &[&key],
                )?
                .is_some();
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
            let refuse = |e: postgres::Error| {
                StoreError::Invalid(format!(
                    "conflict {id}: the main database refused the values: {}",
                    pg_message(&e)
                ))
            };
            if delete {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE {pk} = {key_param}"),
                    &[&key],
                )
                .map_err(refuse)?;
            } else if !values.is_empty() {
                let cols: Vec<&String> =
                    values.keys().filter(|k| **k != info.primary_key).collect();
                let declared = |k: &str| {
                    info.column(k)
                        .map(|c| c.declared_type.clone())
                        .ok_or_else(|| {
                            StoreError::Invalid(format!("conflict {id}: no column `{k}` any more"))
                        })
                };
                let mut params = vec![key];
                let mut exprs = Vec::new();
                for k in &cols {
                    let d = declared(k)?;
                    params.push(types::write_value(&values[*k], &d));
                    exprs.push((quote_ident(k), types::write_param(params.len(), &d)));
                }
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as _).collect();
                if exists {
                    if !cols.is_empty() {
                        let sets: Vec<String> =
                            exprs.iter().map(|(c, p)| format!("{c} = {p}")).collect();
                        tx.execute(
                            &format!(
                                "UPDATE {table} SET {} WHERE {pk} = {key_param}",
                                sets.join(", ")
                            ),
                            &refs,
                        )
                        .map_err(refuse)?;
                    }
                } else {
                    let names: Vec<String> = std::iter::once(pk.clone())
                        .chain(exprs.iter().map(|(c, _)| c.clone()))
                        .collect();
                    let marks: Vec<String> = std::iter::once(key_param.clone())
                        .chain(exprs.iter().map(|(_, p)| p.clone()))
                        .collect();
                    tx.execute(
                        &format!(
                            "INSERT INTO {table} ({}) VALUES ({})",
                            names.join(", "),
                            marks.join(", ")
                        ),
                        &refs,
                    )
                    .map_err(refuse)?;
                }
            }
            let take = if take_device { "device" } else { "server" };
            tx.execute(
                "UPDATE fieldsync.conflicts SET resolved_at = $1, resolved_take = $2 WHERE id = $3",
                &[&at, &take, &id],
            )?;
            Ok(ConflictRecord {
                resolved_at: Some(at.to_string()),
                resolved_take: Some(take.to_string()),
                ..c
            })
        })
    }

    fn history_record(&self, s: &HistoryRecord) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO fieldsync.sync_sessions (device, user_name, task, op, kind, result, message, rows_down,
                 rows_up, bytes_down, bytes_up, conflicts, started_at, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &s.device,
                &s.user,
                &s.task,
                &s.op.as_str(),
                &s.trigger.as_str(),
                &s.result,
                &s.message,
                &(s.rows_down as i64),
                &(s.rows_up as i64),
                &(s.bytes_down as i64),
                &(s.bytes_up as i64),
                &(s.conflicts as i64),
                &s.started_at,
                &(s.duration_ms as i64),
            ],
        )?;
        Ok(())
    }

    fn history(&self) -> Result<Vec<HistoryRecord>> {
        let rows = self.conn()?.query(
            "SELECT device, user_name, task, op, kind, result, message, rows_down, rows_up, bytes_down,
                    bytes_up, conflicts, started_at, duration_ms FROM fieldsync.sync_sessions ORDER BY id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let name = |i: usize| r.get::<_, String>(i);
                let op = name(3);
                let trigger = name(4);
                Ok(HistoryRecord {
                    device: r.get(0),
                    user: r.get(1),
                    task: r.get(2),
                    op: SyncOp::parse(&op).ok_or_else(|| bad_history_name(&op))?,
                    trigger: Trigger::parse(&trigger).ok_or_else(|| bad_history_name(&trigger))?,
                    result: r.get(5),
                    message: r.get(6),
                    rows_down: r.get::<_, i64>(7) as u64,
                    rows_up: r.get::<_, i64>(8) as u64,
                    bytes_down: r.get::<_, i64>(9) as u64,
                    bytes_up: r.get::<_, i64>(10) as u64,
                    conflicts: r.get::<_, i64>(11) as u64,
                    started_at: r.get(12),
                    duration_ms: r.get::<_, i64>(13) as u64,
                })
            })
            .collect()
    }

    fn user_list(&self) -> Result<Vec<UserRecord>> {
        Ok(self
            .conn()?
            .query(
                &format!("SELECT {USER_COLUMNS} FROM fieldsync.users ORDER BY name COLLATE \"C\""),
                &[],
            )?
            .iter()
            .map(user_row)
            .collect())
    }

    /// A new password ends the user's sessions, as disabling does.
    fn user_set_password(&self, name: &str, password_hash: &str) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let n = tx.execute(
                "UPDATE fieldsync.users SET password_hash = $2 WHERE name = $1",
                &[&name, &password_hash],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no user `{name}`")));
            }
            tx.execute(
                "DELETE FROM fieldsync.sessions WHERE user_name = $1",
                &[&name],
            )?;
            Ok(())
        })
    }

    fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            let n = tx.execute(
                "UPDATE fieldsync.users SET disabled = $2 WHERE name = $1",
                &[&name, &disabled],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no user `{name}`")));
            }
            if disabled {
                tx.execute(
                    "DELETE FROM fieldsync.sessions WHERE user_name = $1",
                    &[&name],
                )?;
            }
            Ok(())
        })
    }

    fn device_list(&self) -> Result<Vec<DeviceRecord>> {
        Ok(self
            .conn()?
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM fieldsync.devices ORDER BY id COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(device_row)
            .collect())
    }

    fn task_delete(&self, name: &str) -> Result<()> {
        let n = self
            .conn()?
            .execute("DELETE FROM fieldsync.tasks WHERE name = $1", &[&name])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no task `{name}`")));
        }
        Ok(())
    }

    fn task_unassign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()> {
        let mut c = self.conn()?;
        in_tx(&mut c, |tx| {
            if tx
                .query_opt("SELECT 1 FROM fieldsync.tasks WHERE name = $1", &[&name])?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("no task `{name}`")));
            }
            for u in users {
                tx.execute(
                    "DELETE FROM fieldsync.task_users WHERE task = $1 AND user_name = $2",
                    &[&name, u],
                )?;
            }
            for d in devices {
                tx.execute(
                    "DELETE FROM fieldsync.task_devices WHERE task = $1 AND device = $2",
                    &[&name, d],
                )?;
            }
            Ok(())
        })
    }
}

const CONFLICT_SELECT: &str = "SELECT id, at, device, user_name, task, tbl, key, op, kind, policy, resolution,
    device_values, server_values, base_version, server_version, resolved_at, resolved_take FROM fieldsync.conflicts";

fn conflict_row(r: &postgres::Row) -> Result<ConflictRecord> {
    fn json<T: serde::de::DeserializeOwned>(r: &postgres::Row, i: usize) -> Result<T> {
        serde_json::from_str(r.get(i))
            .map_err(|e| StoreError::Db(format!("conflict log: unreadable column {i}: {e}")))
    }
    Ok(ConflictRecord {
        id: r.get(0),
        at: r.get(1),
        device: r.get(2),
        user: r.get(3),
        task: r.get(4),
        table: r.get(5),
        key: json(r, 6)?,
        op: r.get(7),
        kind: r.get(8),
        policy: r.get(9),
        resolution: r.get(10),
        device_values: json(r, 11)?,
        server_values: json(r, 12)?,
        base_version: r.get(13),
        server_version: r.get(14),
        resolved_at: r.get(15),
        resolved_take: r.get(16),
    })
}

const USER_COLUMNS: &str = "name, password_hash, admin, disabled, created_at";
const DEVICE_COLUMNS: &str = "id, label, code_hash, secret_hash, revoked, created_at, paired_at";

fn user_row(r: &postgres::Row) -> UserRecord {
    UserRecord {
        name: r.get(0),
        password_hash: r.get(1),
        admin: r.get(2),
        disabled: r.get(3),
        created_at: r.get(4),
    }
}

fn device_row(r: &postgres::Row) -> DeviceRecord {
    DeviceRecord {
        id: r.get(0),
        label: r.get(1),
        code_hash: r.get(2),
        secret_hash: r.get(3),
        revoked: r.get(4),
        created_at: r.get(5),
        paired_at: r.get(6),
    }
}

fn bad_history_name(name: &str) -> StoreError {
    StoreError::Db(format!(
        "`{name}` in the sync history is not a name fieldsync writes"
    ))
}
