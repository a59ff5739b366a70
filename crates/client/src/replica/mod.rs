//! The replica: a plain SQLite file per generation (`replica-<gen>.sqlite`) behind a
//! stable symbolic link (`replica.sqlite`). A download builds a new generation beside
//! the old one and installs it only when complete; crash recovery finishes or undoes an
//! install. An app that keeps an old generation open cannot write into it once it is
//! retired: guard triggers refuse, loudly.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fieldsync_proto::frame::ValueRef;
use fieldsync_proto::wire::{Cursor, SliceHeader, TableSchema};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{ClientError, Result};
use crate::journal;
use crate::state::{DeviceDir, sync_dir};
use crate::{Cancel, Phase, Progress};

const LINK_TMP: &str = "replica.sqlite.tmp";
/// How long an install waits for an app's write transaction on the old replica.
const RETIRE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

mod aside;
mod build;
mod delta;
mod install;
mod recover;
mod shape;

use aside::*;
use install::*;
use recover::*;

pub use aside::{all_replicas, set_aside_files, stray_entries};
pub use build::{Built, CountingReader, build, open_stream};
pub use delta::{Applied, apply_delta, keys_used, position};
pub use install::{WriterHold, hold_writers, install};
pub use recover::{recover, settle_user};
pub use shape::{Shape, current_file, installed_file, shape};

use crate::triggers::{self, quote};
use fieldsync_proto::ColumnType;
use fieldsync_proto::task::WriteOp;

/// What a replica records about itself (table `fieldsync_replica`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaInfo {
    pub task: String,
    pub task_hash: String,
    pub epoch: String,
    pub cursor: Cursor,
    pub user: String,
    pub device: String,
    pub retired: bool,
    pub complete: bool,
    /// The slice depends on its user (a filter uses `$user`): another user logging in
    /// sets this replica aside. Replicas that do not record it count as dependent.
    pub per_user: bool,
}

/// One entry of a replica's own record (`fieldsync_replica`), as text.
pub(crate) fn record_value(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT CAST(value AS TEXT) FROM fieldsync_replica WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?)
}

/// Reads a replica's own record; `None` if the file is not a complete fieldsync replica.
pub fn read_info(path: &Path) -> Result<Option<ReplicaInfo>> {
    read_info_in(&open_read_only(path)?)
}

/// [`read_info`] through a connection the caller already holds to the replica.
pub fn read_info_in(conn: &Connection) -> Result<Option<ReplicaInfo>> {
    let get = |key: &str| record_value(conn, key);
    let Ok(Some(task)) = get("task") else {
        return Ok(None);
    };
    let flag = |key: &str| -> Result<bool> { Ok(get(key)?.as_deref() == Some("1")) };
    Ok(Some(ReplicaInfo {
        task,
        task_hash: get("task_hash")?.unwrap_or_default(),
        epoch: get("epoch")?.unwrap_or_default(),
        cursor: get("cursor")?
            .and_then(|c| c.parse().ok())
            .unwrap_or(Cursor::from_raw(0)),
        user: get("user")?.unwrap_or_default(),
        device: get("device")?.unwrap_or_default(),
        retired: flag("retired")?,
        complete: flag("complete")?,
        per_user: get("per_user")?.as_deref() != Some("0"),
    }))
}

/// The slice header the replica was built from (`None` for replicas made before it
/// was kept).
pub fn read_header(conn: &Connection) -> Result<Option<SliceHeader>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM fieldsync_replica WHERE key = 'header'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| ClientError::Replica(format!("the replica's header is unreadable: {e}")))
    })
    .transpose()
}

/// Number of journal entries in a replica file.
pub fn journal_len(path: &Path) -> Result<i64> {
    let conn = open_read_only(path)?;
    Ok(conn.query_row("SELECT count(*) FROM fieldsync_journal", [], |r| r.get(0))?)
}

/// Opens a replica file for reading without writing anything: not the file, and not
/// its `-wal`/`-shm` where that is impossible (a read-only folder, a full disk). SQLite
/// needs the `-shm` to read a WAL database; when it can neither use nor create it, and
/// no `-wal` holds data, the file alone is the whole database and is opened
/// `immutable` (no locks, no side files). A `-wal` with data that cannot be read is an
/// error, never a silent stale answer.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let probe = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()));
    match probe {
        Ok(()) => Ok(conn),
        // A writer at work: wait for it, never read around its locks.
        Err(
            e @ rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code: rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked,
                    ..
                },
                _,
            ),
        ) => Err(e.into()),
        Err(e) => {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            let wal_empty = fs::metadata(PathBuf::from(wal)).map_or(true, |m| m.len() == 0);
            if !wal_empty {
                return Err(e.into());
            }
            drop(conn);
            let conn = Connection::open_with_flags(
                format!("file:{}?immutable=1", uri_path(path)),
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
            Ok(conn)
        }
    }
}

/// A path as the path part of an SQLite URI (`%`, `?` and `#` escaped).
fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::new();
    for c in abs.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Opens the installed replica for the device's own reads and writes.
pub fn open_current(dir: &DeviceDir) -> Result<Option<Connection>> {
    match installed_file(dir) {
        Some(path) => {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            // A send reads and removes the journal one chunk at a time: an 8 MiB page
            // cache holds most of a chunk's pages. 64 MiB took the device of a
            // 2,000,000-entry send to 90 MB and was no faster; 16 MiB took a
            // 100,000-update send to 50 MB, past the device's 48 MB target, 8 MiB to
            // 42 MB (4 MiB: 37 MB, its device CPU a few percent higher).
            conn.execute_batch("PRAGMA cache_size = -8192; PRAGMA temp_store = MEMORY;")?;
            Ok(Some(conn))
        }
        None => Ok(None),
    }
}

/// Records who is logged in, for the journal triggers (`None`: writes are refused).
pub fn set_login(dir: &DeviceDir, user: Option<&str>) -> Result<()> {
    let Some(conn) = open_current(dir)? else {
        return Ok(());
    };
    record_login(&conn, user)
}

/// Writes who is logged in into one replica file's record.
pub(super) fn record_login(conn: &Connection, user: Option<&str>) -> Result<()> {
    conn.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES ('login', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [user],
    )?;
    Ok(())
}

/// Pending journal entries of every replica in the folder, all users together, as
/// [`pending_by_user`] counts them: what every request tells the server the device
/// holds, so a plain count (no grouping: a sort of the whole journal took 20 ms at
/// 100,000 entries, more than the count's page walk).
///
/// The replica file `open.0`, if given, is counted through the connection `open.1`
/// the caller holds to it (a sync's writer hold) instead of a new one: each new
/// connection reads and parses the replica's whole schema (a quarter of a small sync's
/// CPU went to seven of them).
pub fn pending_total_with(dir: &DeviceDir, open: Option<(&Path, &Connection)>) -> Result<u64> {
    let count = |conn: &Connection| -> Result<u64> {
        let n: i64 = conn.query_row("SELECT count(*) FROM fieldsync_journal", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    };
    let mut total = 0u64;
    for path in all_replicas(dir)? {
        total += match open {
            Some((held, conn)) if held == path => count(conn)?,
            _ => count(&open_read_only(&path)?)?,
        };
    }
    Ok(total + stray_entries(dir)?.len() as u64)
}

/// Pending journal entries per user, of every replica in the folder (the current
/// one and those set aside for their users), without taking any lock or writing.
pub fn pending_by_user(dir: &DeviceDir) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for path in all_replicas(dir)? {
        let conn = open_read_only(&path)?;
        let mut stmt = conn
            .prepare("SELECT user, count(*) FROM fieldsync_journal GROUP BY user ORDER BY user")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        for row in rows {
            let (user, n) = row?;
            *out.entry(user).or_insert(0) += n;
        }
    }
    for e in stray_entries(dir)? {
        *out.entry(e.user).or_insert(0) += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
