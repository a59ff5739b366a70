//! The replica: a plain SQLite file per generation (`replica-<gen>.sqlite`) behind a
//! stable symbolic link (`replica.sqlite`). A download builds a new generation beside
//! the old one and installs it only when complete; crash recovery finishes or undoes an
//! install. An app that keeps an old generation open cannot write into it once it is
//! retired: guard triggers refuse, loudly.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fieldsync_proto::frame::{Frame, FrameReader, RowBatch, ValueRef};
use fieldsync_proto::wire::{SliceHeader, TableSchema};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{ClientError, Result};
use crate::journal;
use crate::state::{DeviceDir, sync_dir};
use crate::{Cancel, Phase, Progress};

const LINK_TMP: &str = "replica.sqlite.tmp";
/// How long an install waits for an app's write transaction on the old replica.
const RETIRE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

use crate::triggers::{self, quote};
use fieldsync_proto::ColumnType;
use fieldsync_proto::task::WriteOp;

/// What a replica records about itself (table `fieldsync_replica`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaInfo {
    pub task: String,
    pub task_hash: String,
    pub epoch: String,
    pub cursor: i64,
    pub user: String,
    pub device: String,
    pub retired: bool,
    pub complete: bool,
    /// The slice depends on its user (a filter uses `$user`): another user logging in
    /// sets this replica aside. Replicas that do not record it count as dependent.
    pub per_user: bool,
}

/// Reads a replica's own record; `None` if the file is not a complete fieldsync replica.
pub fn read_info(path: &Path) -> Result<Option<ReplicaInfo>> {
    let conn = open_read_only(path)?;
    let get = |key: &str| -> Result<Option<String>> {
        Ok(conn
            .query_row(
                "SELECT CAST(value AS TEXT) FROM fieldsync_replica WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    };
    let Ok(Some(task)) = get("task") else {
        return Ok(None);
    };
    let flag = |key: &str| -> Result<bool> { Ok(get(key)?.as_deref() == Some("1")) };
    Ok(Some(ReplicaInfo {
        task,
        task_hash: get("task_hash")?.unwrap_or_default(),
        epoch: get("epoch")?.unwrap_or_default(),
        cursor: get("cursor")?.and_then(|c| c.parse().ok()).unwrap_or(0),
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

/// What `replica.sqlite` is in the folder. fieldsync makes it a symbolic link to the
/// current generation; ordinary tools turn it into other shapes: `cp -rL`, `rsync -L`,
/// `adb pull`, a FAT card or an app that renames a copy into place leave a plain file
/// (a copy of the generation, which may also lie beside it as a plain file); a copy
/// that skipped the target leaves a dangling link; a tool that cannot make links
/// leaves none.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A link to an existing file (its path).
    Link(PathBuf),
    /// A plain file: it is the replica apps open, so it is the current one.
    Plain,
    /// A link whose target is gone.
    Dangling,
    Missing,
}

pub fn shape(dir: &DeviceDir) -> Shape {
    let stable = dir.replica_path();
    match fs::symlink_metadata(&stable) {
        Ok(m) if m.file_type().is_symlink() => match fs::read_link(&stable) {
            Ok(target) => {
                let path = dir.root.join(target);
                if path.is_file() {
                    Shape::Link(path)
                } else {
                    Shape::Dangling
                }
            }
            Err(_) => Shape::Dangling,
        },
        Ok(m) if m.is_file() => Shape::Plain,
        _ => Shape::Missing,
    }
}

/// The file holding the current replica, whatever shape the folder is in: the link's
/// target, the plain `replica.sqlite`, or (link gone or dangling) the generation the
/// next locked command links again (see [`recover`]). Read-only commands see the same
/// replica as the commands that change it.
pub fn current_file(dir: &DeviceDir) -> Option<PathBuf> {
    match shape(dir) {
        Shape::Link(path) => Some(path),
        Shape::Plain => {
            let plain = dir.replica_path();
            Some(ahead_of_plain(dir, &plain).ok().flatten().unwrap_or(plain))
        }
        Shape::Dangling | Shape::Missing => adoptable(dir).ok().flatten(),
    }
}

/// The file `replica.sqlite` opens (the link's target, or the plain file), as the
/// commands holding the folder lock see it after [`recover`]; never a generation a
/// download is building.
pub fn installed_file(dir: &DeviceDir) -> Option<PathBuf> {
    match shape(dir) {
        Shape::Link(path) => Some(path),
        Shape::Plain => Some(dir.replica_path()),
        Shape::Dangling | Shape::Missing => None,
    }
}

/// Prefix of a replica set aside for its user (`user-NAME.sqlite`): another user
/// logged in and the slice depends on the user. Sent with every send, counted as
/// pending, never deleted by fieldsync, shown again when its user logs in.
const USER_PREFIX: &str = "user-";
/// Prefix of a copy kept because it holds journal entries (`kept-…`): found beside the
/// current replica after the folder was copied (the journal is the current replica's
/// too), so never sent, and never deleted by fieldsync.
const KEPT_PREFIX: &str = "kept-";
/// Prefix of a copy's journal entries the current replica lacks (`unsent-…`): a folder
/// copied while the replica's `-wal` held edits, an app that renamed an older copy
/// into place. Sent with every send, counted as pending, removed once empty.
const UNSENT_PREFIX: &str = "unsent-";

/// Replicas beside the current one whose journals are the device's to send: those set
/// aside for their users and the unsent remainders of copies.
pub fn set_aside_files(dir: &DeviceDir) -> Result<Vec<PathBuf>> {
    let current = current_file(dir);
    let mut out = files_named(dir, USER_PREFIX)?;
    out.extend(files_named(dir, UNSENT_PREFIX)?);
    out.retain(|f| Some(f) != current.as_ref());
    Ok(out)
}

/// An entry's identity: a copy of a journal holds equal entries (same number, time,
/// row and values); an entry made after the copy differs at least in its time.
fn entry_id(e: &journal::JournalEntry) -> String {
    format!(
        "{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{}",
        e.seq, e.at, e.table, e.key, e.op, e.old, e.new, e.user
    )
}

fn journal_ids(path: Option<&Path>) -> Result<std::collections::HashSet<String>> {
    let Some(path) = path else {
        return Ok(Default::default());
    };
    Ok(journal::read_all(&open_read_only(path)?)?
        .iter()
        .map(entry_id)
        .collect())
}

/// The journal entries of generation files beside the current replica that it lacks
/// (a copied folder, until the next locked command moves them to `unsent-…`); reads
/// only.
pub fn stray_entries(dir: &DeviceDir) -> Result<Vec<journal::JournalEntry>> {
    let Some(current) = current_file(dir) else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    let mut mine = None;
    for file in generation_files(dir)? {
        if file == current || !read_info(&file).ok().flatten().is_some_and(|i| i.complete) {
            continue;
        }
        let Ok(theirs) = open_read_only(&file).and_then(|c| journal::read_all(&c)) else {
            continue;
        };
        if theirs.is_empty() {
            continue;
        }
        if mine.is_none() {
            mine = Some(journal_ids(Some(&current))?);
        }
        let mine = mine.as_ref().expect("just read");
        out.extend(theirs.into_iter().filter(|e| !mine.contains(&entry_id(e))));
    }
    Ok(out)
}

/// A generation file beside the current replica that no install needs: a copy. Its
/// entries the current replica holds too leave it (they are sent from there, once),
/// and so does an upload the current replica stores too; what remains is kept as
/// `unsent-…` and sent from there. With nothing left, it is removed. A journal that
/// cannot be read is kept as `kept-…`.
fn settle_copy(dir: &DeviceDir, file: &Path, current: Option<&Path>) -> Result<()> {
    let theirs = match open_read_only(file).and_then(|c| journal::read_all(&c)) {
        Ok(entries) => entries,
        Err(_) => return retire_file(dir, file),
    };
    let mine = journal_ids(current)?;
    let (dup, unique): (Vec<_>, Vec<_>) = theirs.iter().partition(|e| mine.contains(&entry_id(e)));
    if unique.is_empty() {
        remove_generation(file);
        return Ok(());
    }
    let current_uploads: Vec<String> = match current {
        Some(c) => open_read_only(c)?
            .prepare("SELECT upload_id FROM fieldsync_upload")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?,
        None => vec![],
    };
    {
        let mut conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
        let tx = conn.transaction()?;
        for e in dup {
            tx.execute("DELETE FROM fieldsync_journal WHERE seq = ?1", [e.seq])?;
        }
        for id in &current_uploads {
            tx.execute("DELETE FROM fieldsync_upload WHERE upload_id = ?1", [id])?;
        }
        // Nobody edits it any more: writes on a connection still open fail loudly.
        tx.execute(
            "INSERT INTO fieldsync_replica (key, value) VALUES ('login', NULL)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [],
        )?;
        tx.commit()?;
    }
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    move_replica(dir, file, &free_name(dir, UNSENT_PREFIX, &stem))
}

/// Every replica whose journal is the device's to send: the current one first, then
/// those set aside for other users.
pub fn all_replicas(dir: &DeviceDir) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = current_file(dir).into_iter().collect();
    out.extend(set_aside_files(dir)?);
    Ok(out)
}

fn files_named(dir: &DeviceDir, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.root.exists() {
        return Ok(out);
    }
    for entry in fs::read_dir(&dir.root)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(".sqlite") {
            out.push(dir.root.join(name.as_ref()));
        }
    }
    out.sort();
    Ok(out)
}

fn generation_files(dir: &DeviceDir) -> Result<Vec<PathBuf>> {
    files_named(dir, "replica-")
}

/// The user logged in on the device, from its state file.
fn session_user(dir: &DeviceDir) -> Option<String> {
    dir.load().ok()?.session.map(|s| s.user)
}

/// With the link gone or dangling: the complete, not retired generation to take as
/// the current replica (one holding journal entries first, then the newest), never
/// another user's replica whose slice depends on its user.
fn adoptable(dir: &DeviceDir) -> Result<Option<PathBuf>> {
    let user = session_user(dir);
    let mut best: Option<((bool, std::time::SystemTime), PathBuf)> = None;
    for file in generation_files(dir)? {
        let Some(info) = read_info(&file).ok().flatten() else {
            continue;
        };
        if !info.complete
            || info.retired
            || (info.per_user && user.as_deref().is_some_and(|u| u != info.user))
        {
            continue;
        }
        let rank = (
            journal_len(&file).unwrap_or(1) > 0,
            fs::metadata(&file)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH),
        );
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, file));
        }
    }
    Ok(best.map(|(_, f)| f))
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

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Removes a replica file that holds no journal entry, with its side files.
fn remove_generation(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(side_file(path, suffix));
    }
}

/// Removes the side files a plain `replica.sqlite` leaves once replaced by a link.
fn remove_side_files(path: &Path) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(side_file(path, suffix));
    }
}

/// Folds a replica's `-wal` into the file, so that the file alone holds it and can be
/// renamed. Refused while an app's read keeps the `-wal` from being emptied.
fn fold_wal(path: &Path) -> Result<()> {
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
fn move_replica(dir: &DeviceDir, from: &Path, to: &Path) -> Result<()> {
    fold_wal(from)?;
    fs::rename(from, to)?;
    sync_dir(&dir.root)?;
    remove_side_files(from);
    Ok(())
}

/// A free name `PREFIXstem.sqlite` (`PREFIXstem~HEX.sqlite` when taken).
fn free_name(dir: &DeviceDir, prefix: &str, stem: &str) -> PathBuf {
    let plain = dir.root.join(format!("{prefix}{stem}.sqlite"));
    if fs::symlink_metadata(&plain).is_err() {
        return plain;
    }
    dir.root
        .join(format!("{prefix}{stem}~{}.sqlite", crate::random_hex(4)))
}

/// Disposes of a replica file that is no longer current: removed when its journal is
/// empty, else kept under a `kept-` name (its entries are never deleted).
fn retire_file(dir: &DeviceDir, path: &Path) -> Result<()> {
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
fn prepare_link(dir: &DeviceDir, file: &Path) -> Result<PathBuf> {
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
fn swap_link(dir: &DeviceDir, file: &Path) -> Result<()> {
    let tmp = prepare_link(dir, file)?;
    commit_link(dir, &tmp)
}

/// Makes `file` the current replica: links it, or, on a file system without symbolic
/// links (FAT), renames it to `replica.sqlite` (its `-wal` folded in first).
fn adopt(dir: &DeviceDir, file: &Path) -> Result<()> {
    match prepare_link(dir, file) {
        Ok(tmp) => commit_link(dir, &tmp),
        Err(_) => move_replica(dir, file, &dir.replica_path()),
    }
}

fn commit_link(dir: &DeviceDir, tmp: &Path) -> Result<()> {
    fs::rename(tmp, dir.replica_path())?;
    sync_dir(&dir.root)
}

/// Sets or clears the retired flag. Retiring refuses (`LocalChanges`) when the
/// journal holds entries past `journal_max_seq`: checked in the same transaction, so
/// no edit can slip in between the check and the retirement. The entries up to it
/// (backed up) leave the journal in that transaction: a retired replica holds none.
fn set_retired(path: &Path, retired: bool, journal_max_seq: i64) -> Result<()> {
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
fn refuse_unsent(conn: &Connection, journal_max_seq: i64) -> Result<()> {
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
fn forget_backed_up(conn: &Connection, journal_max_seq: i64) -> Result<()> {
    if journal_max_seq > 0 {
        conn.execute(
            "DELETE FROM fieldsync_journal WHERE seq <= ?1",
            [journal_max_seq],
        )?;
    }
    Ok(())
}

/// Brings the device folder back to one current replica, whatever a crash or a copy
/// left: finishes or undoes an install a crash interrupted (its commit point is the
/// retirement of the old replica: before it the old replica stays, after it the new
/// one, complete by then, takes its place); links a generation again when the link is
/// gone or dangling; a plain `replica.sqlite` stays the current replica. Other
/// generation files are removed when their journal is empty (an unfinished build has
/// none) and otherwise kept as `kept-…`: no file holding journal entries is deleted.
/// Then shows the logged-in user their own replica ([`settle_user`]).
pub fn recover(dir: &DeviceDir) -> Result<()> {
    if !dir.root.exists() {
        return Ok(());
    }
    let _ = fs::remove_file(dir.root.join(LINK_TMP));
    let current = match shape(dir) {
        Shape::Link(path) => Some(path),
        Shape::Plain => Some(dir.replica_path()),
        gone => {
            let found = adoptable(dir)?;
            match &found {
                Some(file) => adopt(dir, file)?,
                None if gone == Shape::Dangling => {
                    fs::remove_file(dir.replica_path())?;
                    sync_dir(&dir.root)?;
                }
                None => {}
            }
            installed_file(dir)
        }
    };
    let current = match current {
        Some(plain) if plain == dir.replica_path() => Some(prefer_ahead(dir, plain)?),
        other => other,
    };
    let current_retired = match &current {
        Some(c) => read_info(c).ok().flatten().is_some_and(|i| i.retired),
        None => false,
    };
    let mut roll_forward = None;
    for file in generation_files(dir)? {
        if Some(&file) == current.as_ref() {
            continue;
        }
        let Some(info) = read_info(&file).ok().flatten().filter(|i| i.complete) else {
            // An unfinished build: nothing was journaled in it.
            remove_generation(&file);
            continue;
        };
        let empty = journal_len(&file).ok() == Some(0);
        if current_retired && empty && !info.retired && roll_forward.is_none() {
            roll_forward = Some(file);
        } else {
            let live = current.as_deref().filter(|_| !current_retired);
            settle_copy(dir, &file, live)?;
        }
    }
    for file in files_named(dir, UNSENT_PREFIX)? {
        if journal_len(&file).ok() == Some(0) {
            remove_generation(&file);
        }
    }
    match (roll_forward, current) {
        (Some(next), Some(old)) => {
            let plain = old == dir.replica_path();
            if plain && journal_len(&old).ok() != Some(0) {
                move_replica(dir, &old, &free_name(dir, KEPT_PREFIX, "replica"))?;
            }
            swap_link(dir, &next)?;
            if plain {
                remove_side_files(&old);
            } else {
                retire_file(dir, &old)?;
            }
        }
        (None, Some(old)) if current_retired => set_retired(&old, false, 0)?,
        _ => {}
    }
    if let Some(user) = session_user(dir) {
        settle_user(dir, &user)?;
    }
    Ok(())
}

/// A plain `replica.sqlite` copied without its generation's `-wal` (`cp -rL` while an
/// app held the replica open) lacks what the `-wal` held; the generation copied beside
/// it with its `-wal` has it. When a generation of the same download holds every
/// journal entry of the plain file and more, it becomes the current replica: the plain
/// file is retired (an app's writes on it fail loudly) and kept as `kept-…`.
fn prefer_ahead(dir: &DeviceDir, plain: PathBuf) -> Result<PathBuf> {
    let Some(file) = ahead_of_plain(dir, &plain)? else {
        return Ok(plain);
    };
    let conn = Connection::open_with_flags(&plain, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
    conn.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES ('retired', '1')
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [],
    )?;
    drop(conn);
    move_replica(dir, &plain, &free_name(dir, KEPT_PREFIX, "replica"))?;
    swap_link(dir, &file)?;
    Ok(file)
}

/// The generation of the same download whose journal holds the plain file's entries
/// and more (see [`prefer_ahead`]); reads only.
fn ahead_of_plain(dir: &DeviceDir, plain: &Path) -> Result<Option<PathBuf>> {
    let gens = generation_files(dir)?;
    if gens.is_empty() {
        return Ok(None);
    }
    let Some(info) = read_info(plain)? else {
        return Ok(None);
    };
    let mine = journal_ids(Some(plain))?;
    for file in gens {
        let Some(other) = read_info(&file).ok().flatten() else {
            continue;
        };
        if !other.complete
            || other.retired
            || (other.task.as_str(), other.cursor, other.epoch.as_str())
                != (info.task.as_str(), info.cursor, info.epoch.as_str())
        {
            continue;
        }
        let Ok(theirs) = open_read_only(&file).and_then(|c| journal::read_all(&c)) else {
            continue;
        };
        let theirs: std::collections::HashSet<String> = theirs.iter().map(entry_id).collect();
        if theirs.len() > mine.len() && mine.iter().all(|e| theirs.contains(e)) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Shows `user` their own replica. The current replica is set aside when its slice
/// depends on its user and that user is another (its rows are no longer reachable
/// through `replica.sqlite`, its journal stays and is sent with every send); with no
/// current replica, the user's own set-aside replica, if any, becomes current.
pub fn settle_user(dir: &DeviceDir, user: &str) -> Result<()> {
    if let Some(current) = installed_file(dir) {
        let Some(info) = read_info(&current)?.filter(|i| i.complete) else {
            return Ok(());
        };
        if !info.per_user || info.user == user {
            return Ok(());
        }
        set_aside(dir, &current, &info.user)?;
    }
    let mut own: Option<(std::time::SystemTime, PathBuf)> = None;
    for file in files_named(dir, USER_PREFIX)? {
        let Some(info) = read_info(&file).ok().flatten() else {
            continue;
        };
        if info.user != user || !info.complete || info.retired {
            continue;
        }
        let mtime = fs::metadata(&file)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if own.as_ref().is_none_or(|(t, _)| mtime > *t) {
            own = Some((mtime, file));
        }
    }
    if let Some((_, file)) = own {
        adopt(dir, &file)?;
        if let Some(current) = installed_file(dir) {
            write_login(&current, Some(user))?;
        }
    }
    Ok(())
}

/// Sets a replica aside for its user: writes are refused in it from now on (no one is
/// logged in there), its `-wal` is folded in, and it leaves `replica.sqlite`.
fn set_aside(dir: &DeviceDir, current: &Path, owner: &str) -> Result<()> {
    write_login(current, None)?;
    let named = current != dir.replica_path()
        && current
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(USER_PREFIX));
    if !named {
        move_replica(dir, current, &free_name(dir, USER_PREFIX, owner))?;
    }
    if matches!(shape(dir), Shape::Link(_) | Shape::Dangling) {
        fs::remove_file(dir.replica_path())?;
        sync_dir(&dir.root)?;
    }
    Ok(())
}

fn write_login(path: &Path, user: Option<&str>) -> Result<()> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(RETIRE_BUSY_TIMEOUT)?;
    conn.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES ('login', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [user],
    )?;
    Ok(())
}

/// A new generation, complete and durable, not yet installed.
pub struct Built {
    pub path: PathBuf,
    pub header: SliceHeader,
    pub rows_per_table: Vec<u64>,
}

fn check_header(h: &SliceHeader) -> Result<()> {
    let bad = |m: String| Err(ClientError::Stream(format!("bad slice header: {m}")));
    if h.tables.is_empty() {
        return bad("no tables".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for t in &h.tables {
        let lower = t.name.to_ascii_lowercase();
        if t.name.is_empty()
            || lower.starts_with("fieldsync_")
            || lower.starts_with("sqlite_")
            || !names.insert(lower)
        {
            return bad(format!("table name `{}`", t.name.escape_debug()));
        }
        let mut cols = std::collections::BTreeSet::new();
        if t.columns.is_empty() || t.columns[0].name != t.primary_key {
            return bad(format!(
                "table `{}`: the primary key must come first",
                t.name
            ));
        }
        for c in &t.columns {
            if c.name.is_empty() || !cols.insert(c.name.to_ascii_lowercase()) {
                return bad(format!(
                    "table `{}`: column `{}`",
                    t.name,
                    c.name.escape_debug()
                ));
            }
        }
    }
    Ok(())
}

/// Whether the slice depends on the user it was cut for: a table's filter uses
/// `$user` (a child table follows its parent's rows, so its parent's filter counts
/// too, and every table is in the header). An unreadable filter counts as dependent.
fn depends_on_user(h: &SliceHeader) -> bool {
    h.tables.iter().any(|t| {
        t.filter.as_deref().is_some_and(|f| {
            fieldsync_proto::filter::parse(f)
                .map_or(true, |e| e.uses_param(fieldsync_proto::filter::Param::User))
        })
    })
}

fn create_table_sql(t: &TableSchema) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut def = format!("{} {}", quote(&c.name), c.column_type.sql_name());
            if i == 0 {
                def.push_str(" PRIMARY KEY NOT NULL");
                // A plain INSERT without a key works on tables that accept inserts.
                if t.write.contains(&WriteOp::Insert) && c.column_type == ColumnType::Text {
                    def.push_str(&format!(" DEFAULT {}", triggers::UUID_SQL));
                }
            }
            def
        })
        .collect();
    format!("CREATE TABLE {} ({})", quote(&t.name), cols.join(", "))
}

/// Counts the compressed bytes as they arrive.
pub struct CountingReader<R> {
    pub inner: R,
    pub n_bytes: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n_bytes += n as u64;
        Ok(n)
    }
}

fn to_sql(v: ValueRef<'_>) -> rusqlite::types::ValueRef<'_> {
    use rusqlite::types::ValueRef as R;
    match v {
        ValueRef::Null => R::Null,
        ValueRef::Integer(i) => R::Integer(i),
        ValueRef::Real(r) => R::Real(r),
        ValueRef::Text(t) => R::Text(t.as_bytes()),
        ValueRef::Blob(b) => R::Blob(b),
    }
}

/// Streams a slice into a new generation file. On any error the file is removed and
/// the installed replica is untouched.
pub fn build<R: Read>(
    dir: &DeviceDir,
    stream: &mut CountingReader<R>,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Built> {
    let path = dir
        .root
        .join(format!("replica-{}.sqlite", crate::random_hex(8)));
    let result = build_into(&path, dir, stream, progress, cancel);
    if result.is_err() {
        remove_generation(&path);
    }
    result
}

fn build_into<R: Read>(
    path: &Path,
    dir: &DeviceDir,
    stream: &mut CountingReader<R>,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
) -> Result<Built> {
    let decoder =
        zstd::stream::read::Decoder::new(stream).map_err(|e| ClientError::Stream(e.to_string()))?;
    let mut frames = FrameReader::new(decoder);
    let stream_err = |e: fieldsync_proto::frame::FrameError| ClientError::Stream(e.to_string());
    let header = match frames.next_frame().map_err(stream_err)? {
        Some(Frame::Header(h)) => h,
        Some(Frame::Error(e)) => {
            return Err(ClientError::Server {
                code: e.code,
                message: e.message,
            });
        }
        _ => {
            return Err(ClientError::Stream(
                "the stream does not start with a header".into(),
            ));
        }
    };
    check_header(&header)?;
    progress(&Progress {
        phase: Phase::Prepare,
        done: 1,
        total: 1,
        unit: "steps",
    });
    let total_rows: u64 = header.tables.iter().map(|t| t.rows_estimate).sum();

    let mut conn = Connection::open(path)?;
    // A generation is invisible until installed and removed if incomplete, so the bulk
    // load needs no journal; durability comes from the fsync before install.
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536;",
    )?;
    let mut rows_per_table = vec![0u64; header.tables.len()];
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE fieldsync_replica (key TEXT PRIMARY KEY, value)")?;
    tx.execute_batch(triggers::REPLICA_TABLES)?;
    for t in &header.tables {
        tx.execute_batch(&create_table_sql(t))?;
    }
    let trailer = {
        let mut stmts = Vec::with_capacity(header.tables.len());
        for t in &header.tables {
            let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
            let marks = vec!["?"; cols.len()].join(", ");
            stmts.push(tx.prepare(&format!(
                "INSERT INTO {} ({}) VALUES ({marks})",
                quote(&t.name),
                cols.join(", ")
            ))?);
        }
        let mut done = 0u64;
        let mut last_report = Instant::now();
        loop {
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            match frames.next_frame().map_err(stream_err)? {
                Some(Frame::Rows(payload)) => {
                    let mut batch = RowBatch::parse(&payload).map_err(stream_err)?;
                    let idx = batch.table_idx;
                    let Some(stmt) = stmts.get_mut(idx) else {
                        return Err(ClientError::Stream(format!(
                            "row batch for unknown table {idx}"
                        )));
                    };
                    let width = header.tables[idx].columns.len();
                    for _ in 0..batch.n_rows {
                        for col in 0..width {
                            let v = batch.value().map_err(stream_err)?;
                            stmt.raw_bind_parameter(
                                col + 1,
                                rusqlite::types::ToSqlOutput::Borrowed(to_sql(v)),
                            )?;
                        }
                        stmt.raw_execute().map_err(|e| {
                            ClientError::Stream(format!(
                                "row of table `{}` cannot be stored: {e}",
                                header.tables[idx].name
                            ))
                        })?;
                    }
                    if !batch.is_exhausted() {
                        return Err(ClientError::Stream("row batch has trailing bytes".into()));
                    }
                    rows_per_table[idx] += batch.n_rows;
                    done += batch.n_rows;
                    if last_report.elapsed() >= Duration::from_millis(100) {
                        last_report = Instant::now();
                        progress(&Progress {
                            phase: Phase::Transfer,
                            done,
                            total: total_rows.max(done),
                            unit: "rows",
                        });
                    }
                }
                Some(Frame::Trailer(t)) => {
                    progress(&Progress {
                        phase: Phase::Transfer,
                        done,
                        total: total_rows.max(done),
                        unit: "rows",
                    });
                    break t;
                }
                Some(Frame::Error(e)) => {
                    return Err(ClientError::Server {
                        code: e.code,
                        message: e.message,
                    });
                }
                Some(Frame::Header(_)) => {
                    return Err(ClientError::Stream("a second header in the stream".into()));
                }
                None => {
                    return Err(ClientError::Stream(
                        "the stream ended before its trailer".into(),
                    ));
                }
            }
        }
    };
    if trailer.rows != rows_per_table {
        return Err(ClientError::Stream(format!(
            "row counts differ from the trailer (got {rows_per_table:?}, trailer {:?})",
            trailer.rows
        )));
    }
    const STORE_STEPS: u64 = 3;
    progress(&Progress {
        phase: Phase::Store,
        done: 0,
        total: STORE_STEPS,
        unit: "steps",
    });
    // Indexes after the bulk load: the parent keys apps join on.
    for t in &header.tables {
        for c in t.columns.iter().skip(1).filter(|c| c.name.ends_with("_id")) {
            tx.execute_batch(&format!(
                "CREATE INDEX {} ON {} ({})",
                quote(&format!("fieldsync_idx_{}_{}", t.name, c.name)),
                quote(&t.name),
                quote(&c.name)
            ))?;
        }
        tx.execute_batch(&triggers::table_triggers(&header, t, &dir.replica_path()))?;
    }
    {
        let mut put = tx.prepare("INSERT INTO fieldsync_replica (key, value) VALUES (?1, ?2)")?;
        let cursor = trailer.cursor.to_string();
        // The header, for what the device judges later (compaction, rows that left).
        let header_json = serde_json::to_string(&header).expect("a header serializes");
        for (k, v) in [
            ("header", header_json.as_str()),
            ("task", header.task.as_str()),
            ("task_hash", &header.task_hash),
            ("epoch", &header.epoch),
            ("cursor", &cursor),
            ("user", &header.user),
            ("device", &header.device),
            ("login", &header.user),
            ("per_user", if depends_on_user(&header) { "1" } else { "0" }),
            ("retired", "0"),
            ("complete", "1"),
        ] {
            put.execute([k, v])?;
        }
    }
    tx.commit()?;
    progress(&Progress {
        phase: Phase::Store,
        done: 1,
        total: STORE_STEPS,
        unit: "steps",
    });
    if cancel.is_cancelled() {
        return Err(ClientError::Cancelled);
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(ClientError::Replica(format!(
            "cannot switch the replica to WAL (got {mode})"
        )));
    }
    conn.close().map_err(|(_, e)| ClientError::from(e))?;
    fs::File::open(path)?.sync_all()?;
    sync_dir(&dir.root)?;
    progress(&Progress {
        phase: Phase::Store,
        done: 2,
        total: STORE_STEPS,
        unit: "steps",
    });
    Ok(Built {
        path: path.to_path_buf(),
        header,
        rows_per_table,
    })
}

/// The installed replica's write lock, held while an operation prepares to replace
/// the replica: an app's writes wait (SQLite's busy handler), then fail with
/// "database is busy"; none lands in a replica about to be replaced. Released
/// (rolled back) when dropped, or turned into the retirement by [`install`].
pub struct WriterHold {
    conn: Connection,
    open: bool,
}

impl WriterHold {
    /// The held connection (its transaction sees the journal as it is now).
    pub fn conn(&self) -> &Connection {
        &self.conn
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
    Ok(Some(WriterHold { conn, open: true }))
}

/// `BEGIN IMMEDIATE`, retried every millisecond: SQLite's own busy handler backs off
/// ever longer and can lose every time to an app that writes in a tight loop.
fn begin_immediate(conn: &Connection) -> Result<()> {
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
    /// Makes what was written under the hold durable, and holds on.
    pub fn commit_and_hold(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
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

/// Opens the installed replica for the device's own reads and writes.
pub fn open_current(dir: &DeviceDir) -> Result<Option<Connection>> {
    match installed_file(dir) {
        Some(path) => {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            // A send reads and removes the journal one chunk at a time: a 16 MiB page
            // cache holds a chunk's pages (64 MiB took the device of a 2,000,000-entry
            // send to 90 MB, and was no faster).
            conn.execute_batch("PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY;")?;
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
    conn.execute(
        "INSERT INTO fieldsync_replica (key, value) VALUES ('login', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [user],
    )?;
    Ok(())
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
