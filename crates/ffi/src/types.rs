//! The values an app sees, as UniFFI records and enums made from the client's types.
//! The client's types stay free of UniFFI; JSON values (row keys, journal rows) go
//! as JSON text, as `device journal --json` shows them.

use std::collections::HashMap;

use crate::error::json_word;

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Mode {
    Online,
    Offline,
}

impl From<fieldsync_client::Mode> for Mode {
    fn from(m: fieldsync_client::Mode) -> Self {
        match m {
            fieldsync_client::Mode::Online => Mode::Online,
            fieldsync_client::Mode::Offline => Mode::Offline,
        }
    }
}

impl From<Mode> for fieldsync_client::Mode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Online => fieldsync_client::Mode::Online,
            Mode::Offline => fieldsync_client::Mode::Offline,
        }
    }
}

/// The auto-sync options (`device options`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Options {
    pub auto_sync: bool,
    pub download_data: bool,
    pub download_files: bool,
}

impl From<fieldsync_client::Options> for Options {
    fn from(o: fieldsync_client::Options) -> Self {
        Options {
            auto_sync: o.auto_sync,
            download_data: o.download_data,
            download_files: o.download_files,
        }
    }
}

/// A change of the options: `None` leaves one as it is.
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct OptionsChange {
    #[uniffi(default = None)]
    pub auto_sync: Option<bool>,
    #[uniffi(default = None)]
    pub download_data: Option<bool>,
    #[uniffi(default = None)]
    pub download_files: Option<bool>,
}

impl From<OptionsChange> for fieldsync_client::OptionsChange {
    fn from(c: OptionsChange) -> Self {
        fieldsync_client::OptionsChange {
            auto_sync: c.auto_sync,
            download_data: c.download_data,
            download_files: c.download_files,
        }
    }
}

/// How a download goes (`device download` flags).
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct DownloadOptions {
    /// Back up and drop unsent local changes instead of refusing (exit code 6).
    #[uniffi(default = false)]
    pub discard_local_changes: bool,
    /// The whole slice, never a delta.
    #[uniffi(default = false)]
    pub full: bool,
    /// The slice's files too, after its data.
    #[uniffi(default = false)]
    pub files: bool,
}

impl From<DownloadOptions> for fieldsync_client::DownloadOptions {
    fn from(o: DownloadOptions) -> Self {
        fieldsync_client::DownloadOptions {
            discard_local_changes: o.discard_local_changes,
            full: o.full,
            files: o.files,
        }
    }
}

/// The phases of an operation, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Phase {
    /// The server prepares the slice.
    Prepare,
    /// Rows arrive and are written to the new replica.
    Transfer,
    /// The new replica is indexed, made durable and installed.
    Store,
    /// The journal goes to the server.
    Send,
    /// A transient failure; attempt `done` of `total` follows after a backoff.
    Retry,
    /// Files of the slice arrive.
    Files,
}

impl From<fieldsync_client::Phase> for Phase {
    fn from(p: fieldsync_client::Phase) -> Self {
        use fieldsync_client::Phase as P;
        match p {
            P::Prepare => Phase::Prepare,
            P::Transfer => Phase::Transfer,
            P::Store => Phase::Store,
            P::Send => Phase::Send,
            P::Retry => Phase::Retry,
            P::Files => Phase::Files,
        }
    }
}

/// One progress report: `done` of `total` `unit`s in `phase`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
    pub unit: String,
    /// Bytes moved so far in this operation, where known.
    pub bytes: Option<u64>,
}

impl From<&fieldsync_client::Progress> for Progress {
    fn from(p: &fieldsync_client::Progress) -> Self {
        Progress {
            phase: p.phase.into(),
            done: p.done,
            total: p.total,
            unit: p.unit.to_string(),
            bytes: p.bytes,
        }
    }
}

/// What an operation did.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Report {
    /// `download`, `send`, `sync` or `files`.
    pub op: String,
    /// `manual` or `auto`.
    pub trigger: String,
    pub task: Option<String>,
    pub rows_down: u64,
    /// Journal entries sent, after compaction.
    pub rows_up: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    /// Values of the crew's the main database did not keep (`Device.conflicts`).
    pub conflicts: u64,
    /// The whole slice came (not a delta), and why.
    pub full: bool,
    pub full_reason: Option<String>,
    pub duration_ms: u64,
    /// A synchronize's send completed.
    pub sent: bool,
    pub files_fetched: u64,
    pub files_in_slice: u64,
    /// Where discarded local changes were backed up.
    pub backup: Option<String>,
}

impl From<fieldsync_client::Report> for Report {
    fn from(r: fieldsync_client::Report) -> Self {
        Report {
            op: r.op.as_str().to_string(),
            trigger: r.trigger.as_str().to_string(),
            task: r.task,
            rows_down: r.rows_down,
            rows_up: r.rows_up,
            bytes_down: r.bytes_down,
            bytes_up: r.bytes_up,
            conflicts: r.conflicts,
            full: r.full,
            full_reason: r.full_reason,
            duration_ms: r.duration_ms,
            sent: r.sent,
            files_fetched: r.files.fetched,
            files_in_slice: r.files.in_slice,
            backup: r.backup.map(|b| b.display().to_string()),
        }
    }
}

/// The outcome of the last operation (`device status`'s `last_sync`).
#[derive(Debug, Clone, uniffi::Record)]
pub struct LastSync {
    pub op: String,
    /// `manual` or `auto`.
    pub kind: String,
    /// `ok`, `error` or `cancelled`.
    pub result: String,
    /// What to show the crew.
    pub message: String,
    /// UTC, RFC 3339.
    pub at: String,
    pub rows_down: u64,
    pub rows_up: u64,
    pub conflicts: u64,
    pub send_result: Option<String>,
    pub download_result: Option<String>,
}

impl From<fieldsync_client::LastSync> for LastSync {
    fn from(l: fieldsync_client::LastSync) -> Self {
        LastSync {
            op: l.op.as_str().to_string(),
            kind: l.kind.as_str().to_string(),
            result: l.result,
            message: l.message,
            at: l.at.to_string(),
            rows_down: l.rows_down,
            rows_up: l.rows_up,
            conflicts: l.conflicts,
            send_result: l.send_result,
            download_result: l.download_result,
        }
    }
}

/// The operation running now, in any process (its published progress).
#[derive(Debug, Clone, uniffi::Record)]
pub struct Running {
    pub op: String,
    pub kind: String,
    pub phase: Option<Phase>,
    pub done: u64,
    pub total: u64,
    pub unit: String,
    pub pid: u32,
}

/// The device's state (`device status --json`).
#[derive(Debug, Clone, uniffi::Record)]
pub struct Status {
    pub device_id: Option<String>,
    pub server: Option<String>,
    pub mode: Mode,
    pub user: Option<String>,
    pub task: Option<String>,
    /// The replica's path, for a tool that opens it itself.
    pub replica: Option<String>,
    /// Journal entries not sent yet, in all.
    pub pending: u64,
    pub pending_by_user: HashMap<String, u64>,
    pub last_sync: Option<LastSync>,
    pub options: Options,
    pub ticket_armed: bool,
    pub running: Option<Running>,
}

impl From<fieldsync_client::Status> for Status {
    fn from(s: fieldsync_client::Status) -> Self {
        Status {
            device_id: s.device_id,
            server: s.server,
            mode: s.mode.into(),
            user: s.user,
            task: s.task,
            replica: s.replica,
            pending: s.pending,
            pending_by_user: s.pending_by_user.into_iter().collect(),
            last_sync: s.last_sync.map(Into::into),
            options: s.options.into(),
            ticket_armed: s.ticket_armed,
            running: s.running.map(|r| Running {
                op: r.op.as_str().to_string(),
                kind: r.kind.as_str().to_string(),
                phase: r.phase.map(Into::into),
                done: r.done,
                total: r.total,
                unit: r.unit,
                pid: r.pid,
            }),
        }
    }
}

/// A task the server offers this user on this device.
#[derive(Debug, Clone, uniffi::Record)]
pub struct TaskSummary {
    pub name: String,
    pub description: Option<String>,
    pub tables: Vec<String>,
}

/// One unsent change (`device journal`); the key and rows as JSON text.
#[derive(Debug, Clone, uniffi::Record)]
pub struct JournalEntry {
    pub seq: i64,
    pub table: String,
    pub key_json: String,
    /// `insert`, `update` or `delete`.
    pub op: String,
    pub old_json: String,
    pub new_json: String,
    pub user: String,
    pub at: String,
}

impl From<fieldsync_client::JournalEntry> for JournalEntry {
    fn from(e: fieldsync_client::JournalEntry) -> Self {
        JournalEntry {
            seq: e.seq,
            table: e.table,
            key_json: json_text(&e.key),
            op: json_word(&e.op),
            old_json: json_text(&e.old),
            new_json: json_text(&e.new),
            user: e.user,
            at: e.at,
        }
    }
}

/// A value of the crew's that a send did not keep (`device conflicts`): what to show
/// so the crew knows their value lost, and which one the office holds.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Conflict {
    /// When the device learned it (UTC, RFC 3339).
    pub at: String,
    pub table: String,
    pub key_json: String,
    /// Whose change it was.
    pub user: String,
    /// `None`: the row as a whole.
    pub column: Option<String>,
    pub device_json: Option<String>,
    pub kept_json: Option<String>,
    /// `server-wins`, `device-wins`, `field-merge`, or empty.
    pub policy: String,
    pub kind: String,
    pub resolution: String,
}

impl From<fieldsync_client::DeviceConflict> for Conflict {
    fn from(c: fieldsync_client::DeviceConflict) -> Self {
        let v = c.value;
        Conflict {
            at: c.at.to_string(),
            table: v.table,
            key_json: json_text(&v.key),
            user: v.user,
            column: v.column,
            device_json: v.device.as_ref().map(json_text),
            kept_json: v.kept.as_ref().map(json_text),
            policy: v.policy,
            kind: v.kind,
            resolution: v.resolution,
        }
    }
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
