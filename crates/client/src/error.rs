//! What a device operation can fail with, and the exit code each case maps to
//! (DESIGN.md's command-line contract).

use fieldsync_proto::wire::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the device is in offline mode")]
    Offline,
    /// The device folder was never paired with a server.
    #[error("this device is not paired")]
    NotPaired,
    /// Nobody is logged in on the device.
    #[error("nobody is logged in on this device")]
    NotLoggedIn,
    /// A sync needs a task downloaded before.
    #[error("no task downloaded on this device yet")]
    NoTask,
    /// Authentication or permission refused, by the server or locally.
    #[error("{0}")]
    Refused(String),
    #[error("cancelled; previous local database restored")]
    Cancelled,
    /// Cancelled in the files part of a download or sync: its data part stands.
    #[error("cancelled; data synchronized, files incomplete")]
    FilesCancelled,
    /// The files part of a download or sync failed: its data part stands.
    #[error("data synchronized, files failed: {0}")]
    FilesFailed(Box<ClientError>),
    /// The replica holds `unsent` journal entries that a download would lose.
    #[error("the replica has {unsent} local change(s) not sent")]
    LocalChanges { unsent: u64 },
    /// A journal entry too large to send at all; it stays in the journal.
    #[error(
        "journal entry {seq}{detail} is too large to send: {why}. Nothing was sent from it on \
         and it stays in the journal; make the row's change smaller, or set it aside"
    )]
    EntryTooLarge {
        seq: i64,
        detail: String,
        why: String,
    },
    /// A journal entry named for discarding is in several replicas set aside.
    #[error("journal entry {seq} exists in several replicas set aside on this device")]
    EntryInSeveral { seq: i64 },
    #[error("another fieldsync operation holds this device folder ({0})")]
    Busy(String),
    /// The office revoked this device (`403 revoked`); `keep_changes`: back up the
    /// unsent changes before wiping. [`crate::Device::wipe_revoked`] wipes.
    #[error("{message}")]
    Revoked { message: String, keep_changes: bool },
    /// A revoked device's data was wiped (`backup`: its unsent changes, if kept).
    #[error(
        "this device was revoked by the office; its data was wiped{}",
        backup.as_ref().map(|b| format!(" (its unsent changes are in {})", b.display())).unwrap_or_default()
    )]
    Wiped { backup: Option<std::path::PathBuf> },
    /// The server answered with an error that is not a refusal.
    #[error("server: {message}")]
    Server { code: ErrorCode, message: String },
    /// The server is busy (HTTP 503) and asks to be asked again after `retry_after`.
    #[error("server busy: {message}")]
    ServerBusy {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("cannot reach the server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The download stream was damaged or cut; the old replica is kept.
    #[error("download failed: {0}; the previous local database is kept")]
    Stream(String),
    /// Bad input from the user (arguments, files).
    #[error("{0}")]
    Invalid(String),
    #[error("device folder: {0}")]
    Io(String),
    #[error("replica: {0}")]
    Replica(String),
}

impl ClientError {
    /// `Some(keep_changes)` when the office revoked this device.
    pub fn revoked(&self) -> Option<bool> {
        match self {
            ClientError::Revoked { keep_changes, .. } => Some(*keep_changes),
            _ => None,
        }
    }

    /// The process exit code of DESIGN.md for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Offline => 3,
            ClientError::Refused(_)
            | ClientError::Revoked { .. }
            | ClientError::Wiped { .. }
            | ClientError::NotPaired
            | ClientError::NotLoggedIn => 4,
            ClientError::Cancelled | ClientError::FilesCancelled => 5,
            ClientError::LocalChanges { .. } => 6,
            ClientError::Busy(_) => 7,
            ClientError::Server { code, .. } if code.is_refusal() => 4,
            ClientError::FilesFailed(e) => e.exit_code(),
            _ => 1,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Replica(e.to_string())
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
