//! HTTP request and response bodies, header names and the stable error codes.

use serde::{Deserialize, Serialize};

use crate::task::{ParentRef, WriteOp};
use crate::value::ColumnType;

mod upload;
pub use upload::*;

/// The protocol version this build speaks. Requests carry it in [`HEADER_PROTOCOL`];
/// the major version is the only part so far.
pub const PROTOCOL_VERSION: u32 = 1;
pub const HEADER_PROTOCOL: &str = "x-fieldsync-protocol";
/// The paired device's id and secret, sent with every request after pairing.
pub const HEADER_DEVICE_ID: &str = "x-fieldsync-device";
pub const HEADER_DEVICE_SECRET: &str = "x-fieldsync-device-secret";
/// The refusal of a task that is not assigned to both the user and the device: one
/// message whether or not the task exists, so that names cannot be probed.
pub fn not_assigned(task: &str, user: &str, device: &str) -> String {
    format!("task `{task}` is not assigned to both user `{user}` and device `{device}`")
}

/// Whether a refusal is [`not_assigned`]'s.
pub fn is_not_assigned(message: &str) -> bool {
    message.starts_with("task `") && message.contains("` is not assigned to both user `")
}

/// What a device holds, reported with every request it makes as a paired device:
/// `N` or `N TASK` — its journal entries not yet sent, and the task of its replica.
/// Informational (the operator's device list), never trusted for anything else.
pub const HEADER_HOLDING: &str = "x-fieldsync-holding";

/// The `HEADER_HOLDING` value: pending entries and the task, if any.
pub fn holding_header(pending: u64, task: Option<&str>) -> String {
    match task {
        Some(t) => format!("{pending} {t}"),
        None => pending.to_string(),
    }
}

/// Reads a `HEADER_HOLDING` value; `None` for anything not of its form (a count,
/// then a name of at most 200 characters without spaces or control characters).
pub fn parse_holding(v: &str) -> Option<(u64, Option<String>)> {
    let (n, task) = match v.split_once(' ') {
        Some((n, t)) => (n, Some(t)),
        None => (v, None),
    };
    let n = n.parse().ok()?;
    match task {
        None => Some((n, None)),
        Some(t)
            if !t.is_empty()
                && t.len() <= 200
                && !t.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Some((n, Some(t.to_string())))
        }
        Some(_) => None,
    }
}
/// Largest JSON request body the server reads.
/// Seconds a `busy` answer (HTTP 503) asks the device to wait, in its `Retry-After`
/// header.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;

pub const JSON_BODY_MAX_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRequest {
    pub device_id: String,
    pub code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairResponse {
    pub device_secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub user: String,
    /// Bearer token of the session, bound to this device.
    pub token: String,
    pub expires_at: crate::time::Timestamp,
    /// The auto-sync ticket this login made (sent once; the server keeps only its
    /// hash): redeemed by [`RedeemRequest`] for one automatic synchronization after
    /// the user logged out. Absent from servers that make none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// `POST /api/v1/tickets/redeem`, with the device's credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemRequest {
    pub ticket: String,
}

/// A redeemed ticket: an automatic session, which may only upload and download
/// `task`, the last task downloaded under the ticket (none: no download).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemResponse {
    pub user: String,
    /// Bearer token of the automatic session, bound to this device.
    pub token: String,
    pub expires_at: crate::time::Timestamp,
    pub task: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskSummary {
    pub name: String,
    pub description: Option<String>,
    pub tables: Vec<String>,
}

/// A file of a task's slice (`GET /api/v1/tasks/{name}/files`): attached to row `key`
/// of `table`; its content is fetched by `sha256` (`GET /api/v1/files/{sha256}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub table: String,
    /// The row's primary key as text (an integer key in decimal).
    pub key: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
}

/// Where a device's upload of one file's content stands
/// (`GET`/`PUT /api/v1/files/{sha256}/upload`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileUploadState {
    /// Bytes of the content the server holds from this device (the next `PUT` starts
    /// there).
    pub received: u64,
    /// The whole content arrived, matched its SHA-256 and is in the file store.
    pub stored: bool,
}

/// The byte of the content a `PUT /api/v1/files/{sha256}/upload` body starts at.
pub const HEADER_FILE_OFFSET: &str = "x-fieldsync-file-offset";
/// The whole content's size, with every `PUT /api/v1/files/{sha256}/upload`.
pub const HEADER_FILE_SIZE: &str = "x-fieldsync-file-size";

/// A file's content type from its name's extension: what an attachment records,
/// whether the administrator or a device attaches it.
pub fn content_type_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        Some("csv") => "text/csv",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("zip") => "application/zip",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// A column of a slice table, as the stream header describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// A table of the slice: its columns (task order, primary key included) and key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableSchema {
    pub name: String,
    pub primary_key: String,
    pub columns: Vec<ColumnDef>,
    /// Rows the server expects to send (an estimate for progress only).
    pub rows_estimate: u64,
    /// What the device may write (checked again by the server).
    #[serde(default)]
    pub write: Vec<WriteOp>,
    /// The task's filter, for the device's write-time courtesy check of inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
}

/// First frame of a download stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SliceHeader {
    pub protocol: u32,
    pub epoch: String,
    pub task: String,
    /// Identifies the task definition the slice was cut from.
    pub task_hash: String,
    pub user: String,
    pub device: String,
    pub tables: Vec<TableSchema>,
    /// `Some(cursor)`: the stream is a delta, the changes since the device's `cursor`
    /// (see [`SliceHeader::lanes`]); `None`: the whole slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Cursor>,
    /// Why a stream is the whole slice (`None` in a delta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<FullReason>,
    /// The users the task is assigned to as the slice is cut: the replica refuses
    /// edits by a logged-in user not among them (empty: no such check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned: Vec<String>,
    /// The integer keys this device may give new rows, per table that accepts
    /// inserts and has an integer key: the blocks the server reserved for it from
    /// the table's own key source, each from the next key not yet known used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_blocks: Vec<KeyBlock>,
    /// The task's `[files]` tables in the slice: rows a device may attach files to
    /// (`device file attach`) when the table is also writable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_tables: Vec<String>,
}

/// Keys `first..=last` of `table`, reserved for one device: the office never uses
/// them, and no other device gets them. `next`: the first not known used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyBlock {
    pub table: String,
    pub first: i64,
    pub last: i64,
    pub next: i64,
}

impl SliceHeader {
    /// The stream's lanes, each with the width of its rows: one per table (the rows
    /// of the slice, or in a delta the rows that changed or entered it) and, in a
    /// delta, one more per table after them (lane `tables.len() + i`: the keys, width
    /// 1, of table `i`'s rows that changed and are not in the slice now).
    pub fn lanes(&self) -> Vec<usize> {
        let widths = self.tables.iter().map(|t| t.columns.len());
        match self.since {
            None => widths.collect(),
            Some(_) => widths.chain(self.tables.iter().map(|_| 1)).collect(),
        }
    }

    /// A digest of the tables' shapes (names, keys, columns and their types): the
    /// device names its replica's, and a server whose slice has another shape (the
    /// office added or dropped a column) sends the whole slice.
    pub fn shape_digest(&self) -> String {
        shape_digest(&self.tables)
    }

    /// Whether the slice depends on the user it was cut for: a table's filter uses
    /// `$user` (a child table follows its parent's rows, so its parent's filter counts
    /// too, and every table is in the header). An unreadable filter counts as
    /// dependent.
    pub fn depends_on_user(&self) -> bool {
        self.tables.iter().any(|t| {
            t.filter.as_deref().is_some_and(|f| {
                crate::filter::parse(f).map_or(true, |e| e.uses_param(crate::filter::Param::User))
            })
        })
    }
}

/// See [`SliceHeader::shape_digest`].
pub fn shape_digest(tables: &[TableSchema]) -> String {
    let mut crc = crc32fast::Hasher::new();
    for t in tables {
        for part in [&t.name, &t.primary_key] {
            crc.update(part.as_bytes());
            crc.update(&[0]);
        }
        for c in &t.columns {
            crc.update(c.name.as_bytes());
            crc.update(&[0]);
            crc.update(c.column_type.sql_name().as_bytes());
            crc.update(&[1]);
        }
        crc.update(&[2]);
    }
    format!("{:08x}", crc.finalize())
}

/// Why a download is the whole slice rather than the changes since the device's
/// cursor (DESIGN's "Full or delta"); its name is what `full_reason` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullReason {
    /// The device has no replica (or no cursor) for the task.
    NoCursor,
    /// The device's replica holds another task.
    OtherTask,
    /// The slice depends on the user (`$user`) and the replica is another user's.
    OtherUser,
    /// The task's definition changed since the replica was made.
    TaskChanged,
    /// A table's shape in the slice changed (a column added, dropped or retyped).
    SchemaChanged,
    /// The main database's history is another one (a restore, `admin epoch reset`).
    EpochChanged,
    /// The device's cursor is past anything this server handed out (a restore).
    CursorAhead,
    /// The change history the delta needs was pruned (retention).
    HistoryPruned,
    /// The user asked for it (`--full`, or local changes discarded).
    Requested,
}

impl FullReason {
    pub const ALL: [FullReason; 9] = [
        FullReason::NoCursor,
        FullReason::OtherTask,
        FullReason::OtherUser,
        FullReason::TaskChanged,
        FullReason::SchemaChanged,
        FullReason::EpochChanged,
        FullReason::CursorAhead,
        FullReason::HistoryPruned,
        FullReason::Requested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FullReason::NoCursor => "no-cursor",
            FullReason::OtherTask => "other-task",
            FullReason::OtherUser => "other-user",
            FullReason::TaskChanged => "task-changed",
            FullReason::SchemaChanged => "schema-changed",
            FullReason::EpochChanged => "epoch-changed",
            FullReason::CursorAhead => "cursor-ahead",
            FullReason::HistoryPruned => "history-pruned",
            FullReason::Requested => "requested",
        }
    }

    pub fn parse(name: &str) -> Option<FullReason> {
        FullReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device's replica holds, sent with a download (header
/// [`HEADER_REPLICA`], JSON) so the server can send only what changed since. The
/// server trusts none of it beyond choosing full or delta: a delta holds only rows
/// of the slice the user and device may have now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaPosition {
    pub task: String,
    pub task_hash: String,
    /// [`SliceHeader::shape_digest`] of the replica's header.
    pub shape: String,
    pub epoch: String,
    /// The user the replica's slice was cut for.
    pub user: String,
    pub cursor: Cursor,
}

/// The replica a download starts from ([`ReplicaPosition`] as JSON); absent: none.
pub const HEADER_REPLICA: &str = "x-fieldsync-replica";
/// The integer keys the device's replica used ([`KeysUsed`] as a JSON array), sent
/// with every download from a replica that has key blocks; absent: none.
pub const HEADER_KEYS_USED: &str = "x-fieldsync-keys-used";

/// Every key of `table` below `next` in the device's blocks is used, whether the
/// server saw it or not (rows deleted before a send, changes discarded): a download
/// never hands those out again, and tops the blocks up by what is really left. The
/// server trusts it only for this device's own blocks: a device can waste its own
/// keys, nothing more.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysUsed {
    pub table: String,
    pub next: i64,
}

/// `1`: the device asks for the whole slice (`--full`).
pub const HEADER_FULL: &str = "x-fieldsync-full";

/// Last frame of a download stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SliceTrailer {
    /// Rows sent, per lane of the header ([`SliceHeader::lanes`]), in lane order.
    pub rows: Vec<u64>,
    /// CRC-32 of every frame (kind, length and payload) before the trailer, then of
    /// `rows` and `cursor` (little-endian), so the trailer's own numbers are covered.
    pub checksum: u32,
    /// The main database's change position the slice reflects.
    pub cursor: Cursor,
}

/// Where a download's snapshot stands in the main database's history: what the device
/// keeps with its replica and sends back as the base of the rows it edits. Opaque
/// outside the store: the engine that made it is the only one that reads it (a version
/// on SQLite, a snapshot id on PostgreSQL; an engine with timestamp cursors fits the
/// same 64 bits). It travels as a JSON number; devices never compare two cursors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct Cursor(i64);

impl Cursor {
    /// The cursor an engine made from its own position.
    pub const fn from_raw(raw: i64) -> Cursor {
        Cursor(raw)
    }

    /// The engine's own position; only the engine that made the cursor reads it.
    pub const fn raw(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Cursor {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Cursor, Self::Err> {
        s.parse().map(Cursor)
    }
}

/// Stable, machine-readable error codes. The client maps them to exit codes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request, bad identifier, bad body.
    BadRequest,
    /// Wrong password, unknown or expired session, bad device credentials, bad code.
    Unauthorized,
    /// Authenticated, but the task is not assigned to this user and device.
    Forbidden,
    /// The device was revoked by the administrator.
    Revoked,
    /// Too many failed attempts; try again later.
    Throttled,
    NotFound,
    /// The route exists, not with this HTTP method.
    MethodNotAllowed,
    PayloadTooLarge,
    /// The device speaks a protocol this server cannot serve.
    UpdateRequired,
    /// The request body was damaged in transit (its checksum does not match); the
    /// same request may be sent again.
    Damaged,
    /// The main database is busy (another program holds it); the same request may
    /// pass a moment later.
    Busy,
    Internal,
}

impl ErrorCode {
    /// Authentication or permission refusals (exit code 4 on the device).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ErrorCode::Unauthorized
                | ErrorCode::Forbidden
                | ErrorCode::Revoked
                | ErrorCode::Throttled
        )
    }
}

/// The body of every error response, and of an error frame inside a stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// With `revoked`: the administrator asked the device to back up its unsent
    /// changes before it wipes its data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_changes: bool,
}

#[cfg(test)]
mod tests {
    use super::{SyncOp, Trigger};

    #[test]
    fn holding_round_trips_and_refuses_other_forms() {
        use super::{holding_header, parse_holding};
        let v = holding_header(3, Some("north-inspections"));
        assert_eq!(
            parse_holding(&v),
            Some((3, Some("north-inspections".into())))
        );
        assert_eq!(parse_holding(&holding_header(0, None)), Some((0, None)));
        for bad in [
            "",
            "x",
            "-1",
            "3 ",
            "3 a b",
            "3 a\u{7}",
            &format!("1 {}", "a".repeat(201)),
        ] {
            assert_eq!(parse_holding(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn op_and_trigger_names_round_trip_and_nothing_else_parses() {
        for op in SyncOp::ALL {
            assert_eq!(SyncOp::parse(op.as_str()), Some(op));
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(json, format!("\"{op}\""));
        }
        for t in [Trigger::Manual, Trigger::Auto] {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
        }
        assert_eq!(SyncOp::parse("Download"), None);
        assert_eq!(SyncOp::parse(""), None);
        assert_eq!(Trigger::parse("cron"), None);
    }
}
