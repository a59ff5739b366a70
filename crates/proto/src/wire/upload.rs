//! The upload side of the wire: what a device sends (operation and trigger names,
//! upload limits, entries) and what the server answers (new versions, values not
//! kept).

use serde::{Deserialize, Serialize};

use crate::row::Row;
use crate::task::WriteOp;
use crate::value::Value;
use crate::wire::Cursor;

/// Largest upload body (zstd-compressed JSON) the server reads: a body past it is
/// refused (413 `payload_too_large`) as soon as its bytes pass it, or at once when its
/// `Content-Length` says so.
pub const UPLOAD_BODY_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Largest upload once decompressed (its JSON text): decompression stops there (413).
pub const UPLOAD_JSON_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Most entries one upload may carry: parsing stops at the next one (413).
pub const UPLOAD_MAX_ENTRIES: usize = 50_000;
/// How long an upload body may take: this grace, plus one second for every
/// [`UPLOAD_BODY_MIN_RATE`] bytes received; a body trickled slower is cut (400).
pub const UPLOAD_BODY_GRACE_SECS: u64 = 30;
pub const UPLOAD_BODY_MIN_RATE: u64 = 32 * 1024;
/// What a device puts in one upload (a chunk of its journal): at most this many
/// journal entries, and entries up to about this many bytes of row values (at least
/// one entry, so a single big row still goes). Far below the server's caps above, so
/// that a chunk is never refused for its size unless one row's change alone is. The
/// server holds one upload's parsed entries per integration thread (about 1.7 KB each
/// at its peak): with 5,000 a 100,000-entry send peaks at 25-26 MB on the server
/// (34-35 MB with 10,000), for 4% more time on SQLite and 3-10% on PostgreSQL
/// (BENCHMARKS.md, "PostgreSQL's plans, and uploads of 5,000 entries").
pub const UPLOAD_CHUNK_ENTRIES: usize = 5_000;
pub const UPLOAD_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Requests say which operation they belong to (the server's sync history).
pub const HEADER_OP: &str = "x-fieldsync-op";
/// CRC-32 (hex) of an upload's body as sent, so the server refuses a damaged one.
pub const HEADER_BODY_CRC32: &str = "x-fieldsync-body-crc32";
/// Requests say what started them ([`Trigger`]).
pub const HEADER_KIND: &str = "x-fieldsync-kind";

/// The operation a request belongs to, as the sync history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncOp {
    Download,
    Send,
    Sync,
    Files,
}

/// What started an operation: the user (manual) or the device by itself (auto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Manual,
    Auto,
}

impl SyncOp {
    pub const ALL: [SyncOp; 4] = [SyncOp::Download, SyncOp::Send, SyncOp::Sync, SyncOp::Files];

    /// Its name on the wire and in the sync history.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOp::Download => "download",
            SyncOp::Send => "send",
            SyncOp::Sync => "sync",
            SyncOp::Files => "files",
        }
    }

    pub fn parse(name: &str) -> Option<SyncOp> {
        SyncOp::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

impl Trigger {
    /// Its name on the wire and in the sync history.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Auto => "auto",
        }
    }

    pub fn parse(name: &str) -> Option<Trigger> {
        [Trigger::Manual, Trigger::Auto]
            .into_iter()
            .find(|t| t.as_str() == name)
    }
}

impl std::fmt::Display for SyncOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
/// The upload id of an upload body, so the server can answer a known upload with its
/// recorded outcome before anything else (an expired session, an unassigned task).
pub const HEADER_UPLOAD_ID: &str = "x-fieldsync-upload-id";

/// One net change of one row by one user (the journal compacted per upload).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadEntry {
    /// Journal sequence numbers this entry stands for (first and last).
    pub seq_first: i64,
    pub seq_last: i64,
    pub table: String,
    pub key: Value,
    pub op: WriteOp,
    /// The row version the device based the change on (`None` for inserts).
    pub base_version: Option<i64>,
    pub user: String,
    /// Values the device saw before its change: the changed columns for an update,
    /// the whole row for a delete, nothing for an insert.
    #[serde(default)]
    pub old: Row,
    /// New values: the changed columns for an update, the whole row for an insert.
    #[serde(default)]
    pub new: Row,
}

/// A device's journal, compacted, sent as one unit. `upload_id` is the idempotency key:
/// the device stores it before sending; the server records it in the transaction that
/// applies the upload and answers a repeat with the recorded outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Upload {
    pub upload_id: String,
    pub task: String,
    /// The epoch of the replica the entries were made on (the main database's history
    /// its bases belong to); absent from older devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The hash of the task definition the entries were made under (the replica's);
    /// absent from older devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_hash: Option<String>,
    /// The cursor of the replica the entries were made on: one the main database
    /// never handed out (a restore without `admin epoch reset`) gets the entries
    /// judged by value, as another epoch does; absent from older devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    pub entries: Vec<UploadEntry>,
    /// Files the device attached to rows (`device file attach`), their content already
    /// in the server's file store: recorded after the entries, in the same
    /// transaction; absent from older devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<UploadAttachment>,
}

/// Most attachments one upload may carry (413 past it).
pub const UPLOAD_MAX_ATTACHMENTS: usize = 1_000;

/// A file a device attached to a row, as an upload carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadAttachment {
    pub table: String,
    /// The row's primary key as text (an integer key in decimal).
    pub key: String,
    pub name: String,
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    pub content_type: String,
    /// The device user who attached it.
    pub user: String,
    /// When it was attached.
    pub added_at: crate::time::Timestamp,
}

/// The row version a row has after an entry was integrated (`None`: the row is gone,
/// or the entry was not applied and the device keeps its base).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewVersion {
    pub table: String,
    pub key: Value,
    pub version: Option<i64>,
    /// The row's values in the task's columns as written, when they are not exactly
    /// the device's (a conflict or merged office changes): the device takes them, so
    /// that `version` is a true base for its next edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<Row>,
}

/// The server's answer to an upload (also what it recorded for repeats).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadOutcome {
    pub upload_id: String,
    /// Entries applied (fully or merged).
    pub applied: u64,
    /// Entries that produced a conflict-log record.
    pub conflicts: u64,
    pub versions: Vec<NewVersion>,
    /// True when this answer is the recorded outcome of an earlier, identical upload.
    #[serde(default)]
    pub repeated: bool,
    /// The device's values the main database did not keep (conflicts settled for the
    /// office, changes not applied), so that the crew learns which.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_kept: Vec<NotKept>,
}

/// One value of the device's that the main database did not keep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NotKept {
    pub table: String,
    pub key: Value,
    /// The user whose journal entry it was.
    pub user: String,
    /// The column; `None` for the row as a whole (the device's delete, or a change
    /// the server did not apply at all).
    pub column: Option<String>,
    /// The device's value (`None` for the row as a whole).
    pub device: Option<Value>,
    /// The value the main database holds (`None`: the row is not there, or the record
    /// is for the row as a whole).
    pub kept: Option<Value>,
    /// The table's conflict policy (`server-wins`, `device-wins`, `field-merge`), or
    /// empty when no policy decided (the task changed, the row left the slice).
    pub policy: String,
    /// The conflict's kind and resolution, as the server's conflict log names them.
    pub kind: String,
    pub resolution: String,
}
