//! Installing a built generation: holding the old replica's writers, retiring it,
//! swapping the link, and the file moves and side files (`-wal`, `-shm`) around it.

use super::*;

pub(super) fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Removes a replica file that holds no journal entry, with its side files.
pub(super) fn remove_generation(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(side_file(path, suffix));
    }
}

/// Removes the side files a plain `replica.sqlite` leaves once replaced by a link.
pub(super) fn remove_side_files(path: &Path) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(side_file(path, suffix));
    }
}

/// Folds a replica's `-wal` into the file, so that the file alone holds it and can be
/// renamed. Refused while an app's read keeps the `-wal` from being emptied.
pub(super) fn fold_wal(path: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 || log != done {
        return Err(ClientError::Replica(format!(
            "the replica {} is busy (an app reads it); close the app and try again",
            path.display()
        )));
    }
    Ok(())
}

/// Moves a replica file (with its `-wal` folded in) to `to`, durably.
pub(super) fn move_replica(dir: &DeviceDir, from: &Path, to: &Path) -> Result<()> {
    fold_wal(from)?;
    fs::rename(from, to)?;
    sync_dir(&dir.root)?;
    remove_side_files(from);
    Ok(())
}

/// A free name `PREFIXstem.sqlite` (`PREFIXstem~HEX.sqlite` when taken).
pub(super) fn free_name(dir: &DeviceDir, prefix: &str, stem: &str) -> PathBuf {
    let plain = dir.root.join(format!("{prefix}{stem}.sqlite"));
    if fs::symlink_metadata(&plain).is_err() {
        return plain;
    }
    dir.root
        .join(format!("{prefix}{stem}~{}.sqlite", crate::random_hex(4)))
}

/// Disposes of a replica file that is no longer current: removed when its journal is
/// empty, else kept under a `kept-` name (its entries are never deleted).
pub(super) fn retire_file(dir: &DeviceDir, path: &Path) -> Result<()> {
    if journal_len(path).ok() == Some(0) {
        remove_generation(path);
        return Ok(());
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_prefix(KEPT_PREFIX).unwrap_or(&stem).to_string();
    move_replica(dir, path, &free_name(dir, KEPT_PREFIX, &stem))
}

/// Creates the new link beside the stable path, before anything is retired: a folder
/// whose file system has no symbolic links (FAT) refuses here, loudly, with nothing
/// changed.
pub(super) fn prepare_link(dir: &DeviceDir, file: &Path) -> Result<PathBuf> {
    let tmp = dir.root.join(LINK_TMP);
    let _ = fs::remove_file(&tmp);
    let name = file.file_name().expect("replica files have names");
    std::os::unix::fs::symlink(name, &tmp).map_err(|e| {
        ClientError::Io(format!(
            "cannot make the link {} in the device folder ({e}); the folder's file system \
             needs symbolic links (not FAT): move the device folder to the device's own storage",
            dir.replica_path().display()
        ))
    })?;
    Ok(tmp)
}

/// Points the link at `file` atomically (new link, rename over the old, fsync folder).
/// A plain `replica.sqlite` it replaces must hold nothing unsent (retired first).
pub(super) fn swap_link(dir: &DeviceDir, file: &Path) -> Result<()> {
    let tmp = prepare_link(dir, file)?;
    commit_link(dir, &tmp)
}

/// Makes `file` the current replica: links it, or, on a file system without symbolic
/// links (FAT), renames it to `replica.sqlite` (its `-wal` folded in first).
pub(super) fn adopt(dir: &DeviceDir, file: &Path) -> Result<()> {
    match prepare_link(dir, file) {
        Ok(tmp) => commit_link(dir, &tmp),
        Err(_) => move_replica(dir, file, &dir.replica_path()),
    }
}

pub(super) fn commit_link(dir: &DeviceDir, tmp: &Path) -> Result<()> {
    fs::rename(tmp, dir.replica_path())?;
    sync_dir(&dir.root)
}

/// Sets or clears the retired flag. Retiring refuses (`LocalChanges`) when the
/// journal holds entries past `journal_max_seq`: checked in the same transaction, so
/// no edit can slip in between the check and the retirement. The entries up to it
/// (backed up) leave the journal in that transaction: a retired replica holds none.
pub(super) fn set_retired(path: &Path, retired: bool, journal_max_seq: i64) -> Result<()> {
    let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
    // IMMEDIATE waits for an app's open write transaction: its commit lands before
    // the retirement, and every write after it fails.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| {
            ClientError::Replica(format!(
                "the replica is busy (an app holds a write transaction): {e}"
            ))
        })?;
    if retired {
        refuse_unsent(&tx, journal_max_seq)?;
        forget_backed_up(&tx, journal_max_seq)?;
    }
    tx.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES ('retired', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [if retired { "1" } else { "0" }],
    )?;
    tx.commit()?;
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(())
}

/// Refuses (`LocalChanges`, exit 6) when the journal holds entries past
/// `journal_max_seq` (those up to it were backed up and may be forgotten).
pub(super) fn refuse_unsent(conn: &Connection, journal_max_seq: i64) -> Result<()> {
    let newer: i64 = conn.query_row(
        "SELECT count(*) FROM fieldsync_journal WHERE seq > ?1",
        [journal_max_seq],
        |r| r.get(0),
    )?;
    if newer > 0 {
        return Err(ClientError::LocalChanges {
            unsent: newer as u64,
        });
    }
    Ok(())
}

/// Removes the journal entries a download backed up before replacing the replica, in
/// the retirement's transaction: a file holding journal entries is never deleted, and
/// a retired one holds none.
pub(super) fn forget_backed_up(conn: &Connection, journal_max_seq: i64) -> Result<()> {
    if journal_max_seq > 0 {
        conn.execute(
            "DELETE FROM fieldsync_journal WHERE seq <= ?1",
            [journal_max_seq],
        )?;
    }
    Ok(())
}

/// The installed replica's write lock, held while an operation prepares to replace
/// the replica: an app's writes wait (SQLite's busy handler), then fail with
/// "database is busy"; none lands in a replica about to be replaced. Released
/// (rolled back) when dropped, or turned into the retirement by [`install`].
pub struct WriterHold {
    conn: Connection,
    path: std::path::PathBuf,
    open: bool,
}

impl WriterHold {
    /// The held connection (its transaction sees the journal as it is now).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The held replica file and its connection: what [`super::pending_total_with`]
    /// counts through instead of opening the file again.
    pub fn open_file(&self) -> (&Path, &Connection) {
        (&self.path, &self.conn)
    }
}

impl Drop for WriterHold {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Takes the installed replica's write lock (waiting for an app's write transaction
/// to end); `None` when there is no replica yet.
pub fn hold_writers(dir: &DeviceDir) -> Result<Option<WriterHold>> {
    let Some(path) = installed_file(dir) else {
        return Ok(None);
    };
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    begin_immediate(&conn)?;
    Ok(Some(WriterHold {
        conn,
        path,
        open: true,
    }))
}

/// `BEGIN IMMEDIATE`, retried every millisecond: SQLite's own busy handler backs off
/// ever longer and can lose every time to an app that writes in a tight loop.
pub(super) fn begin_immediate(conn: &Connection) -> Result<()> {
    let deadline = Instant::now() + RETIRE_BUSY_TIMEOUT;
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                return Err(ClientError::Replica(format!(
                    "the replica is busy (an app holds a write transaction): {e}"
                )));
            }
        }
    }
}

impl WriterHold {
    /// Makes what was written under the hold durable and lets writers in again.
    pub fn commit(mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }

    /// Makes what was written under the hold durable, and holds on.
    pub fn commit_and_hold(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        begin_immediate(&self.conn)
    }

    /// Forgets what was written under the hold since its last commit, and holds on.
    pub fn rollback_and_hold(&self) -> Result<()> {
        self.conn.execute_batch("ROLLBACK")?;
        begin_immediate(&self.conn)
    }
}

/// Installs a built generation: retires the current one (the commit point) in the
/// held transaction, swaps the link, removes the old files. `journal_max_seq`:
/// journal entries up to it were backed up and leave the journal with the retirement;
/// any later entry refuses the install with `LocalChanges` (exit 6). The new link is
/// made before the retirement, so a folder without symbolic links refuses with
/// nothing changed.
pub fn install(
    dir: &DeviceDir,
    built: &Built,
    hold: Option<WriterHold>,
    journal_max_seq: i64,
) -> Result<()> {
    let old = installed_file(dir);
    let link = prepare_link(dir, &built.path)?;
    match (hold, &old) {
        (Some(mut hold), Some(_)) => {
            refuse_unsent(&hold.conn, journal_max_seq)?;
            forget_backed_up(&hold.conn, journal_max_seq)?;
            hold.conn.execute(
                "INSERT INTO fieldsync_replica (key, value) VALUES ('retired', '1')
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [],
            )?;
            hold.conn.execute_batch("COMMIT")?;
            hold.open = false;
            let _ = hold
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        (None, Some(old)) => set_retired(old, true, journal_max_seq)?,
        (_, None) => {}
    }
    commit_link(dir, &link)?;
    match &old {
        // The link replaced the plain file (retired, its journal empty).
        Some(old) if *old == dir.replica_path() => remove_side_files(old),
        Some(old) => retire_file(dir, old)?,
        None => {}
    }
    Ok(())
}
