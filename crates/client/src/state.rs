//! The device folder: the state file (pairing, session, mode, options, last result),
//! written atomically, and the lock that keeps two operations apart.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{SyncOp, Trigger};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Online,
    Offline,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Online => "online",
            Mode::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    pub user: String,
    pub token: String,
    /// When the server's session ends; `None` for an offline login, which has no
    /// server session (written as `""`, as state files always had it).
    #[serde(with = "expiry_text")]
    pub expires_at: Option<Timestamp>,
}

/// A session's expiry in state.json: the time's text, or `""` for none.
mod expiry_text {
    use fieldsync_proto::time::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(t),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Options {
    pub auto_sync: bool,
    pub download_data: bool,
    pub download_files: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auto_sync: false,
            download_data: true,
            download_files: false,
        }
    }
}

/// The outcome of the last operation, as `device status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastSync {
    pub op: SyncOp,
    /// What started it (`kind` in `device status --json`).
    pub kind: Trigger,
    pub result: String,
    pub message: String,
    pub at: Timestamp,
    pub full: bool,
    pub full_reason: Option<String>,
    pub rows_down: u64,
    pub rows_up: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub duration_ms: u64,
    pub conflicts: u64,
    /// A synchronize's parts: how its send ended (`ok`, `error`, `cancelled`), and its
    /// download (`None` when it did not run). A send has only the first, a download
    /// only the second.
    #[serde(default)]
    pub send_result: Option<String>,
    #[serde(default)]
    pub download_result: Option<String>,
}

/// A value of the crew's that the main database did not keep, as a send's
/// acknowledgement listed it (`device conflicts`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceConflict {
    /// When the device learned it.
    pub at: Timestamp,
    #[serde(flatten)]
    pub value: fieldsync_proto::wire::NotKept,
}

/// How many values not kept the device remembers (the newest).
pub const CONFLICTS_KEPT: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DeviceState {
    pub server: Option<String>,
    pub device_id: Option<String>,
    pub device_secret: Option<String>,
    /// The certificate authority (PEM) given at pairing, trusted beside the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    pub session: Option<Session>,
    /// argon2id hashes of the passwords of users who logged in online here, for
    /// offline login. Not a credential the server accepts.
    #[serde(default)]
    pub verifiers: std::collections::BTreeMap<String, String>,
    /// The last downloaded task.
    pub task: Option<String>,
    pub last_sync: Option<LastSync>,
    #[serde(default)]
    pub options: Options,
    /// The auto-sync rules' state (`autosync.rs`), kept across commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autosync: Option<crate::autosync::AutoSync>,
    /// The secret of the ticket the rules hold (issued at the last online login);
    /// gone whenever they hold none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The values sends did not keep, oldest first (at most `CONFLICTS_KEPT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<DeviceConflict>,
}

/// The device folder (`--dir`).
#[derive(Debug, Clone)]
pub struct DeviceDir {
    pub root: PathBuf,
}

/// Holds the device folder's lock until dropped.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl DeviceDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DeviceDir { root: root.into() }
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// The replica's stable path (a symbolic link to the current generation).
    pub fn replica_path(&self) -> PathBuf {
        self.root.join("replica.sqlite")
    }

    pub fn create(&self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .map_err(|e| ClientError::Io(format!("cannot create {}: {e}", self.root.display())))
    }

    /// Takes the folder's lock without waiting; `Busy` (exit 7) when another holds it.
    pub fn lock(&self) -> Result<FolderLock> {
        self.create()?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(FolderLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(ClientError::Busy(self.root.display().to_string()))
            }
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    pub fn load(&self) -> Result<DeviceState> {
        match fs::read(self.state_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Io(format!("{} is damaged: {e}", self.state_path().display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeviceState::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the state file atomically (write, fsync, rename, fsync folder).
    pub fn save(&self, state: &DeviceState) -> Result<()> {
        self.create()?;
        let json = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomic(&self.state_path(), &json)
    }
}

/// Writes a file so that a crash leaves the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(true).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The state holds the device secret: only the owner may read it.
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State files written before the time type still load, and are written back
    /// byte for byte: an online session's expiry as its text, an offline one's as "".
    #[test]
    fn session_expiry_reads_and_writes_as_before() {
        for json in [
            r#"{"user":"ana","token":"t","expires_at":"2026-11-26T13:48:46.123Z"}"#,
            r#"{"user":"ana","token":"","expires_at":""}"#,
        ] {
            let s: Session = serde_json::from_str(json).expect("loads");
            assert_eq!(serde_json::to_string(&s).expect("writes"), json);
        }
        let online: Session = serde_json::from_str(
            r#"{"user":"ana","token":"t","expires_at":"2026-11-26T13:48:46.123Z"}"#,
        )
        .expect("loads");
        assert_eq!(
            online.expires_at,
            Some(Timestamp::from_unix_ms(1_795_700_926_123))
        );
        assert!(
            serde_json::from_str::<Session>(r#"{"user":"a","token":"t","expires_at":"soon"}"#)
                .is_err()
        );
    }
}
