//! What a call can fail with, for an app: one variant per case of the client's
//! `ClientError`, each carrying the message to show the crew and `exit_code`, the
//! meaning the command line gives the same case (docs/cli.md's exit codes, from
//! `ClientError::exit_code`: 3 offline, 4 refused, 5 cancelled, 6 local changes would
//! be lost, 7 the folder is busy, 1 anything else).

use fieldsync_client::ClientError;

#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum FieldsyncError {
    /// The device is in offline mode (3).
    #[error("{message}")]
    Offline { message: String, exit_code: i32 },
    /// The device folder was never paired (4).
    #[error("{message}")]
    NotPaired { message: String, exit_code: i32 },
    /// Nobody is logged in (4).
    #[error("{message}")]
    NotLoggedIn { message: String, exit_code: i32 },
    /// A synchronize needs a task downloaded before (1).
    #[error("{message}")]
    NoTask { message: String, exit_code: i32 },
    /// Authentication or permission refused, by the server or on the device (4).
    #[error("{message}")]
    Refused { message: String, exit_code: i32 },
    /// Cancelled: the previous replica is kept (5).
    #[error("{message}")]
    Cancelled { message: String, exit_code: i32 },
    /// Cancelled in the files part: the data part stands (5).
    #[error("{message}")]
    FilesCancelled { message: String, exit_code: i32 },
    /// The files part failed: the data part stands (the cause's code).
    #[error("{message}")]
    FilesFailed { message: String, exit_code: i32 },
    /// A download would lose `unsent` local changes (6).
    #[error("{message}")]
    LocalChanges {
        message: String,
        exit_code: i32,
        unsent: u64,
    },
    /// A journal entry too large to send; it stays in the journal (1).
    #[error("{message}")]
    EntryTooLarge {
        message: String,
        exit_code: i32,
        seq: i64,
    },
    /// A journal entry named for discarding is in several replicas set aside (1).
    #[error("{message}")]
    EntryInSeveral {
        message: String,
        exit_code: i32,
        seq: i64,
    },
    /// Another operation holds the device folder (7): try again later.
    #[error("{message}")]
    Busy { message: String, exit_code: i32 },
    /// The office revoked this device (4); `Device.wipe_revoked` wipes.
    #[error("{message}")]
    Revoked {
        message: String,
        exit_code: i32,
        keep_changes: bool,
    },
    /// The revoked device's data was wiped (4); `backup`: its unsent changes.
    #[error("{message}")]
    Wiped {
        message: String,
        exit_code: i32,
        backup: Option<String>,
    },
    /// The server answered with an error (`code`: its machine-readable code; 4 when
    /// it is a refusal, else 1).
    #[error("{message}")]
    Server {
        message: String,
        exit_code: i32,
        code: String,
    },
    /// The server is busy and asks to be asked again after `retry_after_ms` (1).
    #[error("{message}")]
    ServerBusy {
        message: String,
        exit_code: i32,
        retry_after_ms: u64,
    },
    /// The server cannot be reached (1).
    #[error("{message}")]
    Unreachable { message: String, exit_code: i32 },
    /// The download stream was damaged or cut; the previous replica is kept (1).
    #[error("{message}")]
    Stream { message: String, exit_code: i32 },
    /// Bad input: an argument, a file, SQL the replica refused (1).
    #[error("{message}")]
    Invalid { message: String, exit_code: i32 },
    /// The device folder could not be read or written (1).
    #[error("{message}")]
    Io { message: String, exit_code: i32 },
    /// The replica: SQLite's error, including the refusals of its triggers (1).
    #[error("{message}")]
    Replica { message: String, exit_code: i32 },
}

impl From<ClientError> for FieldsyncError {
    fn from(e: ClientError) -> Self {
        let message = e.to_string();
        let exit_code = e.exit_code();
        match e {
            ClientError::Offline => FieldsyncError::Offline { message, exit_code },
            ClientError::NotPaired => FieldsyncError::NotPaired { message, exit_code },
            ClientError::NotLoggedIn => FieldsyncError::NotLoggedIn { message, exit_code },
            ClientError::NoTask => FieldsyncError::NoTask { message, exit_code },
            ClientError::Refused(_) => FieldsyncError::Refused { message, exit_code },
            ClientError::Cancelled => FieldsyncError::Cancelled { message, exit_code },
            ClientError::FilesCancelled => FieldsyncError::FilesCancelled { message, exit_code },
            ClientError::FilesFailed(_) => FieldsyncError::FilesFailed { message, exit_code },
            ClientError::LocalChanges { unsent } => FieldsyncError::LocalChanges {
                message,
                exit_code,
                unsent,
            },
            ClientError::EntryTooLarge { seq, .. } => FieldsyncError::EntryTooLarge {
                message,
                exit_code,
                seq,
            },
            ClientError::EntryInSeveral { seq } => FieldsyncError::EntryInSeveral {
                message,
                exit_code,
                seq,
            },
            ClientError::Busy(_) => FieldsyncError::Busy { message, exit_code },
            ClientError::Revoked { keep_changes, .. } => FieldsyncError::Revoked {
                message,
                exit_code,
                keep_changes,
            },
            ClientError::Wiped { backup } => FieldsyncError::Wiped {
                message,
                exit_code,
                backup: backup.map(|b| b.display().to_string()),
            },
            ClientError::Server { code, .. } => FieldsyncError::Server {
                message,
                exit_code,
                code: json_word(&code),
            },
            ClientError::ServerBusy { retry_after, .. } => FieldsyncError::ServerBusy {
                message,
                exit_code,
                retry_after_ms: retry_after.as_millis() as u64,
            },
            ClientError::Unreachable { .. } => FieldsyncError::Unreachable { message, exit_code },
            ClientError::Stream(_) => FieldsyncError::Stream { message, exit_code },
            ClientError::Invalid(_) => FieldsyncError::Invalid { message, exit_code },
            ClientError::Io(_) => FieldsyncError::Io { message, exit_code },
            ClientError::Replica(_) => FieldsyncError::Replica { message, exit_code },
        }
    }
}

impl From<rusqlite::Error> for FieldsyncError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::from(e).into()
    }
}

/// A serde enum's word (`ErrorCode`, `SyncOp`, …), as the wire and the JSON show it.
pub(crate) fn json_word(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

pub type Result<T, E = FieldsyncError> = std::result::Result<T, E>;
