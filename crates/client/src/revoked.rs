//! A device the office revoked forgets what it held: at its next contact the server
//! answers `403 revoked`, and the device deletes its replicas (their journals with
//! them), its files and its credentials. Its unsent changes go to a backup file
//! first only when the administrator asked for it (`admin device revoke
//! --keep-changes`).

use std::fs;
use std::path::PathBuf;

use crate::error::{ClientError, Result};
use crate::state::{DeviceDir, DeviceState};
use crate::{Device, journal, replica};

/// What stays in a wiped folder besides the backup: the lock (held while wiping).
const KEPT: &[&str] = &["lock"];

impl Device {
    /// `e`, unless it is the server's `revoked`: then the wipe it orders is done
    /// ([`Device::wipe_revoked`]) and its outcome returned instead. For whatever
    /// contacts the server outside a command (the watcher, an app's UI).
    pub fn wiped_if_revoked(&self, e: ClientError) -> ClientError {
        match e.revoked() {
            Some(keep_changes) => self.wipe_revoked(keep_changes),
            None => e,
        }
    }

    /// Does what the server's `revoked` answer ([`ClientError::Revoked`]) orders:
    /// under the folder lock, backs up the unsent changes if `keep_changes`, deletes
    /// the rest and answers [`ClientError::Wiped`]. A folder busy with another
    /// operation is wiped at the next contact.
    pub fn wipe_revoked(&self, keep_changes: bool) -> ClientError {
        let Ok(_lock) = self.dir.lock() else {
            return ClientError::Refused(
                "this device was revoked by the office; its data goes once the operation \
                 holding its folder ends"
                    .into(),
            );
        };
        match wipe(&self.dir, keep_changes) {
            Ok(backup) => ClientError::Wiped { backup },
            Err(w) => ClientError::Refused(format!(
                "this device was revoked by the office, and wiping its data failed: {w}"
            )),
        }
    }
}

/// Deletes everything the device holds; returns the backup of its unsent changes
/// when `keep_changes` (and there were any).
fn wipe(dir: &DeviceDir, keep_changes: bool) -> Result<Option<PathBuf>> {
    let backup = if keep_changes {
        let mut entries = Vec::new();
        for path in replica::all_replicas(dir)? {
            let conn = replica::open_read_only(&path)?;
            entries.extend(journal::read_all(&conn)?);
        }
        if entries.is_empty() {
            None
        } else {
            Some(journal::write_backup(&dir.root, &entries)?)
        }
    } else {
        None
    };
    // The credentials go first: a crash halfway leaves a device paired to nothing.
    let state = DeviceState {
        mode: dir.load().map(|s| s.mode).unwrap_or_default(),
        ..DeviceState::default()
    };
    dir.save(&state)?;
    for entry in fs::read_dir(&dir.root)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if KEPT.contains(&name.as_ref())
            || name == "state.json"
            || backup
                .as_ref()
                .is_some_and(|b| b.file_name() == Some(&entry.file_name()))
        {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type()? {
            t if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        removed.map_err(|e| ClientError::Io(format!("cannot delete {}: {e}", path.display())))?;
    }
    crate::state::sync_dir(&dir.root)?;
    Ok(backup)
}
