//! The replica opener's fuzz entry point (the target `replica_file` in `fuzz/`, and the
//! corpus replay test): a device folder whose replica file holds arbitrary bytes, a
//! file damaged on a card or edited by an app, opened the ways the device opens it. It
//! must answer (a result or an error), never panic (docs/fuzzing.md).

use std::fs;
use std::path::Path;

use crate::error::Result;
use crate::state::DeviceDir;
use crate::{Device, journal, replica};

/// Makes `dir` a device folder whose `replica.sqlite` holds `bytes` (whatever `dir`
/// held before goes), then opens it as the device does: `device status` (read only,
/// every replica's journal counted), the recovery every locked command starts with,
/// the replica's record and header, its position for a delta, its used keys, the
/// journal a send reads and compacts, and the login a `device login` records.
pub fn replica_file(dir: &Path, bytes: &[u8]) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let device_dir = DeviceDir::new(dir);
    device_dir.create()?;
    fs::write(device_dir.replica_path(), bytes)?;
    let _ = Device::new(dir).status();
    replica::recover(&device_dir)?;
    let Some(path) = replica::installed_file(&device_dir) else {
        return Ok(());
    };
    let _ = replica::read_info(&path)?;
    let _ = replica::journal_len(&path);
    let Some(conn) = replica::open_current(&device_dir)? else {
        return Ok(());
    };
    let _ = replica::position(&conn)?;
    let _ = replica::keys_used(&conn)?;
    if let Some(header) = replica::read_header(&conn)? {
        let rules = journal::CompactRules::from_header(&header);
        let entries = journal::read_all(&conn)?;
        let _ = journal::compact(entries, &rules);
    }
    drop(conn);
    replica::set_login(&device_dir, Some("ana"))
}

#[cfg(test)]
mod tests;
