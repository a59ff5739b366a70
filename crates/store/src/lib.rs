//! The main-database interface: fieldsync's own objects (users, devices, tasks,
//! sessions, change tracking) and the slice stream, behind traits by concern
//! ([`Catalog`], [`SourceData`], [`History`]) that [`Store`] unites, with a backend per
//! engine (a folder each, beside the engine-neutral code). Nothing here knows about
//! HTTP.

mod audit;
mod catalog;
mod delta;
mod dialect;
mod files;
mod integrate;
mod keys;
mod plan;
mod postgres;
mod resolve;
pub mod sample;
mod throttle;
pub use audit::{AuditRecord, Audits, NewAudit};
pub use throttle::{Throttle, Throttles};
mod sqlite;

use fieldsync_proto::ColumnType;
use fieldsync_proto::filter::Params;
use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::task::TaskDef;
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{FullReason, Upload, UploadOutcome};

pub use dialect::SqlDialect;
pub use files::{FileRecord, NewFile, is_sha256};
pub use keys::KEY_BLOCK_KEYS;
pub use plan::{SlicePlan, TablePlan, check_task, quote_ident};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The concern traits, for code that calls them on a concrete store (on a `dyn Store`
/// they need no import).
pub mod prelude {
    pub use crate::{
        Audits, Catalog, Files, History, KeyBlocks, Schema, Slices, SourceData, Store, Tickets,
        Tracking, Uploads,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Input the administrator or a device got wrong; the message says what.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// fieldsync's objects are missing: `server init` was not run.
    #[error("the main database has no fieldsync objects; run `fieldsync server init` first")]
    NotInitialized,
    #[error("main database: {0}")]
    Db(String),
    /// Another program holds the main database (an office transaction): the same
    /// request may pass a moment later.
    #[error("the main database is busy (another program holds it); try again in a moment")]
    Busy,
    /// An office transaction held a row an upload writes for longer than uploads wait
    /// (PostgreSQL `lock_timeout`): nothing was applied, no connection is kept, and the
    /// same upload may pass once the office commits.
    #[error(
        "row locked in the office, retry: another transaction (an office program, another \
         upload) holds a row this upload writes; nothing was applied"
    )]
    Locked,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A column of a main-database table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    pub declared_type: String,
    pub column_type: ColumnType,
    pub not_null: bool,
    pub has_default: bool,
}

/// A main-database table as fieldsync sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub name: String,
    pub primary_key: String,
    pub columns: Vec<ColumnInfo>,
    pub tracked: bool,
    /// Where new values of an integer primary key come from, so that devices can be
    /// given blocks of them (`keys.rs`): the name of the column's sequence (serial
    /// or identity) on PostgreSQL, `sqlite_sequence (AUTOINCREMENT)` for an
    /// `INTEGER PRIMARY KEY AUTOINCREMENT` on SQLite. `None`: a key of another type, or one nothing numbers.
    pub key_source: Option<String>,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// What kind of key the table has, as `admin table track` reports it and
    /// `task apply` judges `write = insert` by.
    pub fn key_kind(&self) -> KeyKind {
        match self.column(&self.primary_key).map(|c| c.column_type) {
            Some(ColumnType::Text) => KeyKind::Text,
            Some(ColumnType::Integer) => match &self.key_source {
                Some(source) => KeyKind::Numbered(source.clone()),
                None => KeyKind::Integer,
            },
            _ => KeyKind::Other,
        }
    }
}

/// A table's primary key, as devices can make new ones offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// Text: the replica makes a random UUID.
    Text,
    /// An integer from this key source: devices get blocks of it (`keys.rs`).
    Numbered(String),
    /// An integer nothing numbers (no sequence; on SQLite, no AUTOINCREMENT): devices
    /// cannot insert.
    Integer,
    /// Any other type: devices cannot insert.
    Other,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::Text => f.write_str("text (devices make UUIDs)"),
            KeyKind::Numbered(source) => {
                write!(f, "integer from {source} (devices get blocks of keys)")
            }
            KeyKind::Integer => {
                f.write_str("integer without a sequence or AUTOINCREMENT (devices cannot insert)")
            }
            KeyKind::Other => f.write_str("neither text nor integer (devices cannot insert)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: String,
    pub admin: bool,
    pub disabled: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    pub label: Option<String>,
    /// SHA-256 (hex) of the unused enrollment code; `None` once paired.
    pub code_hash: Option<String>,
    /// SHA-256 (hex) of the device secret; `None` until paired.
    pub secret_hash: Option<String>,
    pub revoked: bool,
    /// Set with `revoked`: the device backs up its unsent changes before it wipes
    /// its data (the administrator's `--keep-changes`).
    pub keep_changes: bool,
    pub created_at: Timestamp,
    pub paired_at: Option<Timestamp>,
}

/// What a device last showed of itself: when, under which user, and the unsent
/// changes it reported (informational: whoever holds a device can say anything).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSeen {
    pub device: String,
    pub user: String,
    pub at: Timestamp,
    /// The task of the replica the device holds, as it reported it.
    pub task: Option<String>,
    /// Journal entries not yet sent, as the device reported them.
    pub pending: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// SHA-256 (hex) of the bearer token; the token itself is never stored.
    pub token_hash: String,
    pub device: String,
    pub user: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub scope: SessionScope,
}

/// What a session may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SessionScope {
    /// A user's login: whatever the user and the device are assigned.
    #[default]
    User,
    /// Made by redeeming a ticket (an automatic synchronization): uploads, and the
    /// download of the ticket's last task only (`None`: no download at all).
    Auto { task: Option<String> },
}

/// An auto-sync ticket (`Tickets`): made at a login, renewed by the pair's requests,
/// redeemed once for an automatic session.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRecord {
    /// SHA-256 (hex) of the ticket; the ticket itself is never stored.
    pub hash: String,
    pub device: String,
    pub user: String,
    /// The last task the pair downloaded while the ticket was unused.
    pub task: Option<String>,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// What redeeming a ticket came to ([`Tickets::ticket_redeem`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Redeemed {
    /// No unused ticket of that hash for that device (never made, another device's,
    /// already used, or replaced by a newer login).
    Unknown,
    /// The ticket expired (by the database's clock); it stays unused.
    Expired,
    /// The ticket's user is disabled (or gone); it stays unused.
    Disabled(String),
    /// The ticket is now used, and this automatic session was stored.
    Session(SessionRecord),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub def: TaskDef,
    /// Identifies this definition (changes when the task file does).
    pub hash: String,
    pub users: Vec<String>,
    pub devices: Vec<String>,
    pub updated_at: Timestamp,
}

/// A task as a device's request sees it ([`Catalog::task_assigned`]): its users (a
/// download's header names them) but not its devices, so that what a request reads
/// does not grow with the fleet the task is assigned to.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignedTask {
    pub def: TaskDef,
    /// Identifies this definition (changes when the task file does).
    pub hash: String,
    pub users: Vec<String>,
    pub updated_at: Timestamp,
}

impl From<TaskRecord> for AssignedTask {
    fn from(t: TaskRecord) -> Self {
        AssignedTask {
            def: t.def,
            hash: t.hash,
            users: t.users,
            updated_at: t.updated_at,
        }
    }
}

/// Who sends an upload, for which task.
pub struct IntegrateContext<'a> {
    pub device: &'a str,
    /// The logged-in user who sends (entries may be other users' of this device).
    pub sender: &'a str,
    /// The task definition the device worked under (the upload's task version): a
    /// write it never allowed refuses the whole upload.
    pub task: &'a TaskDef,
    /// The task as it is today, when still assigned to the sender and the device
    /// (`None`: deleted, renamed or unassigned since). A write the device's version
    /// allowed and today's does not is a conflict, logged and not applied.
    pub today: Option<&'a AssignedTask>,
    pub at: Timestamp,
    /// The upload's replica was cut from another history of the main database (a
    /// restore): its bases mean nothing here, every row is compared by value.
    pub restored: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrateError {
    /// The whole upload is refused; the message names the entry.
    #[error("upload refused: {0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A conflict-log record (`admin conflicts list`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConflictRecord {
    pub id: i64,
    pub at: Timestamp,
    pub device: String,
    pub user: String,
    pub task: String,
    pub table: String,
    pub key: fieldsync_proto::Value,
    /// The device's operation: insert, update or delete.
    pub op: String,
    pub kind: String,
    pub policy: String,
    pub resolution: String,
    pub device_values: std::collections::BTreeMap<String, fieldsync_proto::Value>,
    pub server_values: std::collections::BTreeMap<String, fieldsync_proto::Value>,
    pub base_version: Option<i64>,
    pub server_version: Option<i64>,
    pub resolved_at: Option<Timestamp>,
    pub resolved_take: Option<String>,
}

/// One entry of the sync history: a download, send or sync as the server saw it (`admin history`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryRecord {
    pub device: String,
    pub user: String,
    pub task: Option<String>,
    pub op: fieldsync_proto::wire::SyncOp,
    /// What started it (`kind` in `admin history --json`).
    #[serde(rename = "kind")]
    pub trigger: fieldsync_proto::wire::Trigger,
    /// ok, error or cancelled.
    pub result: String,
    pub message: String,
    pub rows_down: u64,
    pub rows_up: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub conflicts: u64,
    pub started_at: Timestamp,
    pub duration_ms: u64,
    /// A download of the whole slice (false for a delta and for uploads).
    #[serde(default)]
    pub full: bool,
    /// Why the whole slice (`FullReason`'s name), for a full download.
    #[serde(default)]
    pub full_reason: Option<String>,
}

/// Receives a slice as the store reads it, inside one consistent snapshot.
pub trait SliceSink {
    /// Called once before any row: the snapshot's cursor, the row count per table
    /// (zeros in a delta: not counted), and, when the plan asked for a delta the
    /// store cannot serve right, why the whole slice comes instead.
    fn begin(
        &mut self,
        cursor: fieldsync_proto::wire::Cursor,
        rows_per_table: &[u64],
        refused_delta: Option<FullReason>,
    ) -> Result<()>;
    /// One row of a lane: in a full slice a table's row, its values in the plan's
    /// column order; in a delta also lane `tables + i`, the key of a row of table `i`
    /// that changed and is not in the slice now (`SliceHeader::lanes`).
    fn row(
        &mut self,
        table_idx: usize,
        values: &mut dyn Iterator<Item = ValueRef<'_>>,
    ) -> Result<()>;
}

/// The main database, whatever its engine: its three concerns together. Every method
/// is blocking; servers call it from a blocking thread. Callers hold a `dyn Store`,
/// whose methods are the concern traits' (implemented by every type that has all).
pub trait Store:
    Catalog + Tickets + SourceData + History + Files + Throttles + Audits + Send + Sync
{
}

impl<T> Store for T where
    T: Catalog + Tickets + SourceData + History + Files + Throttles + Audits + Send + Sync
{
}

/// fieldsync's own records: users, devices, tasks and their assignments, sessions.
pub trait Catalog {
    fn user_add(&self, user: &UserRecord) -> Result<()>;
    fn user_get(&self, name: &str) -> Result<Option<UserRecord>>;
    fn user_list(&self) -> Result<Vec<UserRecord>>;
    /// A new password ends the user's sessions and deletes their tickets.
    fn user_set_password(&self, name: &str, password_hash: &str) -> Result<()>;
    /// Disabling also ends the user's sessions and deletes their tickets.
    fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<()>;
    fn device_add(&self, device: &DeviceRecord) -> Result<()>;
    fn device_get(&self, id: &str) -> Result<Option<DeviceRecord>>;
    /// Consumes the enrollment code (if `code_hash` still matches) and stores the
    /// secret's hash. `false` when the code was wrong or already used.
    fn device_pair(
        &self,
        id: &str,
        code_hash: &str,
        secret_hash: &str,
        at: Timestamp,
    ) -> Result<bool>;
    fn device_list(&self) -> Result<Vec<DeviceRecord>>;
    /// Revokes a device for good (`NotFound` for an unknown one): every request of
    /// it is refused from then on, and its sessions and tickets go. `keep_changes`:
    /// the device backs up its unsent changes before it wipes its data.
    fn device_revoke(&self, id: &str, keep_changes: bool) -> Result<()>;
    /// Stores a task definition checked against the schema; replaces one of that name.
    fn task_put(&self, def: &TaskDef, hash: &str, at: Timestamp) -> Result<()>;
    fn task_get(&self, name: &str) -> Result<Option<TaskRecord>>;
    /// A definition the task had, by its hash (every applied version is kept).
    fn task_version(&self, hash: &str) -> Result<Option<TaskDef>>;
    /// Every task, for administrators (each with its users and devices).
    fn task_list(&self) -> Result<Vec<TaskRecord>>;
    /// The tasks assigned to both `user` and `device`, by name: one indexed query,
    /// whose cost does not grow with the tasks assigned to others, nor with the
    /// devices assigned to the same task (what a device's request is authorized by).
    fn tasks_assigned(&self, user: &str, device: &str) -> Result<Vec<AssignedTask>>;
    /// Task `name` when it is assigned to both `user` and `device` (`None`: no such
    /// task, or not assigned to both): one indexed query.
    fn task_assigned(&self, name: &str, user: &str, device: &str) -> Result<Option<AssignedTask>>;
    fn task_assign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()>;
    fn task_unassign(&self, name: &str, users: &[String], devices: &[String]) -> Result<()>;
    fn task_delete(&self, name: &str) -> Result<()>;
    fn session_put(&self, session: &SessionRecord) -> Result<()>;
    /// The session, unless it expired by the database's clock (one clock for every
    /// server: a server whose own clock runs fast or slow expires nobody early).
    fn session_get(&self, token_hash: &str) -> Result<Option<SessionRecord>>;
    /// The database's clock, in milliseconds since the Unix epoch: what session
    /// expiry is judged by.
    fn clock_ms(&self) -> Result<i64>;
    fn session_delete(&self, token_hash: &str) -> Result<()>;
}

/// Auto-sync tickets: what lets a device's watcher synchronize after its user logged
/// out, once, within the ticket's time to live. Each engine's `tickets.rs`.
pub trait Tickets {
    /// Stores `ticket` (unused, no task) and deletes the pair's older unused tickets
    /// (and its used ones past their expiry).
    fn ticket_issue(&self, ticket: &TicketRecord) -> Result<()>;
    /// Extends the unused ticket of `device` and `user` to the database's now plus
    /// `ttl_ms`; with `task`, records it as the ticket's last task. One indexed
    /// UPDATE; it gives up soon when another program holds a SQLite main database
    /// (`StoreError::Busy`: a renewal is not worth holding a request).
    fn ticket_renew(&self, device: &str, user: &str, ttl_ms: i64, task: Option<&str>)
    -> Result<()>;
    /// In one transaction: the unused, unexpired ticket `hash` of `device` (by the
    /// database's clock) is marked used and an automatic session (token `token_hash`,
    /// scope [`SessionScope::Auto`] with the ticket's task) is stored, expiring
    /// `session_ttl_ms` from now. A refused ticket is left as it was.
    fn ticket_redeem(
        &self,
        hash: &str,
        device: &str,
        token_hash: &str,
        session_ttl_ms: i64,
    ) -> Result<Redeemed>;
    /// The ticket of that hash, used or not, expired or not.
    fn ticket_get(&self, hash: &str) -> Result<Option<TicketRecord>>;
}

/// The organisation's data: fieldsync's objects and epoch, change tracking, the slice
/// stream and upload integration, each a trait an engine implements in its own file.
pub trait SourceData: Schema + Tracking + Slices + Uploads + KeyBlocks {}

impl<T: Schema + Tracking + Slices + Uploads + KeyBlocks> SourceData for T {}

/// Integer keys reserved for devices from each table's own key source, so that the
/// office's inserts and the devices' never collide (`keys.rs`).
pub trait KeyBlocks {
    /// The blocks of `table` reserved for `device` that still hold keys not known
    /// used, topped up first with a new block of `block_keys` keys when fewer than
    /// half of that remain. A revoked device has none.
    fn key_blocks(
        &self,
        device: &str,
        table: &str,
        block_keys: i64,
    ) -> Result<Vec<fieldsync_proto::wire::KeyBlock>>;
    /// Records that every key of `table` below `next` in `device`'s blocks is used
    /// (what its replica says, `wire::KeysUsed`); a block's next key only moves up.
    fn keys_used(&self, device: &str, table: &str, next: i64) -> Result<()>;
}

/// fieldsync's objects in the main database, and the id of its history.
pub trait Schema {
    /// Creates or upgrades fieldsync's own objects; idempotent.
    fn init(&self) -> Result<()>;
    /// Random id of this main database's history; changes on `epoch reset` (restores).
    fn epoch(&self) -> Result<String>;
    /// Gives the main database a new history id (after restoring it from a backup):
    /// uploads made on replicas of the old history are then judged by value, never
    /// by a base the restored database may hand out again. Returns the new epoch.
    fn epoch_reset(&self) -> Result<String>;
}

/// Change tracking on the organisation's tables.
pub trait Tracking {
    /// A table of the main database (`None`: no such table).
    fn table_info(&self, table: &str) -> Result<Option<TableInfo>>;
    /// Starts change tracking on an existing table; idempotent.
    fn track_table(&self, table: &str) -> Result<TableInfo>;
    /// The row version of a row, `None` when never seen; `(version, deleted)`.
    fn row_version(&self, table: &str, key: &fieldsync_proto::Value)
    -> Result<Option<(i64, bool)>>;
}

/// Slices read in one snapshot, in the engine's SQL.
pub trait Slices {
    /// The SQL dialect the filter language compiles to for this engine.
    fn dialect(&self) -> &'static dyn SqlDialect;
    /// Streams a planned slice in one snapshot: the whole slice, or with
    /// `plan.since` the changes since that cursor (rows that changed or entered the
    /// slice, keys of changed rows that are not in it now; see `delta.rs`). Returns
    /// the rows sent per lane.
    fn stream_slice(&self, plan: &SlicePlan, sink: &mut dyn SliceSink) -> Result<Vec<u64>>;
    /// Forgets change history older than `before` (DESIGN's retention): tombstones
    /// every device whose cursor is younger has seen, and, on PostgreSQL, the
    /// snapshots of older bases. Devices whose cursor is older get the whole slice
    /// (`history-pruned`). Returns the tombstones removed.
    fn prune_history(&self, before: Timestamp) -> Result<u64>;
    /// Whether `cursor` is a download's cursor this database handed to `device` and
    /// within its history; one that is not comes from another history (a restore).
    fn cursor_known(&self, device: &str, cursor: fieldsync_proto::wire::Cursor) -> Result<bool>;
}

/// Uploads checked and integrated, each applied once.
pub trait Uploads {
    /// Checks and integrates an upload in one transaction that also records its id;
    /// an upload id seen before returns the recorded outcome and applies nothing.
    fn integrate(
        &self,
        ctx: &IntegrateContext<'_>,
        upload: &Upload,
    ) -> Result<UploadOutcome, IntegrateError>;
    /// The device, user and outcome (JSON) recorded for an upload id, if any: the
    /// server answers a known upload with it before any other check.
    fn upload_recorded(&self, upload_id: &str) -> Result<Option<(String, String, String)>>;
    /// The engine writes one transaction at a time (SQLite's single writer): uploads
    /// integrated side by side would only wait for each other's lock, so the server
    /// runs them one after another (and keeps one upload's memory, not one per thread).
    fn one_writer(&self) -> bool {
        false
    }
}

/// Files attached to rows (`files.rs`; each engine's `files.rs`). The content lives in
/// the server's file store, named by its SHA-256; these are the attachments.
pub trait Files {
    /// Records an attachment to a row that exists in a tracked table; a file of that
    /// name already attached to that row is `AlreadyExists`.
    fn file_attach(&self, file: &NewFile) -> Result<FileRecord>;
    /// Removes an attachment (the content stays in the file store).
    fn file_detach(&self, id: i64) -> Result<FileRecord>;
    fn file_list(&self) -> Result<Vec<FileRecord>>;
    /// The files attached to rows of the slice `plan` in tables `tables` (a task's
    /// `[files]`), judged by the slice's own conditions in one snapshot; with
    /// `sha256`, only attachments of that content.
    fn slice_files(
        &self,
        plan: &SlicePlan,
        tables: &[String],
        sha256: Option<&str>,
    ) -> Result<Vec<FileRecord>>;
}

/// What happened: the sync history and the conflict log.
pub trait History {
    fn history_record(&self, s: &HistoryRecord) -> Result<()>;
    fn history(&self) -> Result<Vec<HistoryRecord>>;
    fn conflicts_list(&self) -> Result<Vec<ConflictRecord>>;
    /// Applies the logged device or server values of a conflict and marks it resolved.
    fn conflict_resolve(&self, id: i64, take_device: bool, at: Timestamp)
    -> Result<ConflictRecord>;
    /// Records what a device showed of itself at its last request (one row a device).
    fn device_seen(&self, s: &DeviceSeen) -> Result<()>;
    /// Every device's last showing, by device.
    fn devices_seen(&self) -> Result<Vec<DeviceSeen>>;
}

/// A time read from one of fieldsync's TEXT columns, which hold [`Timestamp`]'s text:
/// anything else (a hand edit, another program) is an error naming the column, never a
/// panic.
pub(crate) fn stored_time(column: &str, text: &str) -> Result<Timestamp> {
    text.parse()
        .map_err(|e| StoreError::Db(format!("column `{column}`: {e}")))
}

/// Plans a task's slice for one user and device against the store's schema.
pub fn plan_slice(store: &dyn Store, def: &TaskDef, params: &Params) -> Result<SlicePlan> {
    plan::plan_slice(def, params, store.dialect(), &|t| store.table_info(t))
}

/// Opens the main database named by a URL: `sqlite:PATH` or `postgres://…`.
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(StoreError::Invalid(
                "database URL `sqlite:` needs a path".into(),
            ));
        }
        return Ok(Box::new(SqliteStore::new(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(PgStore::new(url)?));
    }
    Err(StoreError::Invalid(format!(
        "unsupported database URL `{url}`: use sqlite:PATH or postgres://USER@HOST:PORT/DB"
    )))
}

/// Random bytes as lowercase hex (ids, secrets, codes).
pub fn random_hex(n_bytes: usize) -> String {
    let mut buf = vec![0u8; n_bytes];
    getrandom::fill(&mut buf).expect("the OS random source works");
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of a text, as lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(text.as_bytes()))
}
