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
}

/// Reads a replica's own record; `None` if the file is not a complete fieldsync replica.
pub fn read_info(path: &Path) -> Result<Option<ReplicaInfo>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
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

/// The generation file the link points to, if any.
pub fn current_file(dir: &DeviceDir) -> Option<PathBuf> {
    let target = fs::read_link(dir.replica_path()).ok()?;
    let path = dir.root.join(target);
    path.exists().then_some(path)
}

fn generation_files(dir: &DeviceDir) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir.root)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("replica-") && name.ends_with(".sqlite") {
            out.push(dir.root.join(name.as_ref()));
        }
    }
    Ok(out)
}

fn remove_generation(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

/// Points the link at `file` atomically (new link, rename over the old, fsync folder).
fn swap_link(dir: &DeviceDir, file: &Path) -> Result<()> {
    let tmp = dir.root.join(LINK_TMP);
    let _ = fs::remove_file(&tmp);
    let name = file.file_name().expect("generation files have names");
    std::os::unix::fs::symlink(name, &tmp)?;
    fs::rename(&tmp, dir.replica_path())?;
    sync_dir(&dir.root)
}

/// Sets or clears the retired flag. Retiring refuses (`LocalChanges`) when the
/// journal holds entries past `journal_max_seq`: checked in the same transaction, so
/// no edit can slip in between the check and the retirement.
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
        return Err(ClientError::LocalChanges(format!(
            "the replica has {newer} local change(s) not sent; send them first (`fieldsync device send`), \
             or download with --discard-local-changes to back them up and forget them"
        )));
    }
    Ok(())
}

/// Finishes or undoes an install that a crash interrupted, and removes leftovers.
/// The install's commit point is the retirement of the old generation: before it, the
/// old replica stays; after it, the new one (complete by then) takes its place.
pub fn recover(dir: &DeviceDir) -> Result<()> {
    if !dir.root.exists() {
        return Ok(());
    }
    let _ = fs::remove_file(dir.root.join(LINK_TMP));
    let current = current_file(dir);
    let current_retired = match &current {
        Some(c) => read_info(c).ok().flatten().is_some_and(|i| i.retired),
        None => false,
    };
    let mut roll_forward = None;
    for file in generation_files(dir)? {
        if Some(&file) == current.as_ref() {
            continue;
        }
        let complete = read_info(&file)
            .ok()
            .flatten()
            .is_some_and(|i| i.complete && !i.retired);
        if current_retired && complete && roll_forward.is_none() {
            roll_forward = Some(file);
        } else {
            remove_generation(&file);
        }
    }
    match (roll_forward, current) {
        (Some(next), Some(old)) => {
            swap_link(dir, &next)?;
            remove_generation(&old);
        }
        (None, Some(old)) if current_retired => set_retired(&old, false, 0)?,
        _ => {}
    }
    Ok(())
}

/// A new generation, complete and durable, not yet installed.
pub struct Built {
    pub path: PathBuf,
    pub header: SliceHeader,
    pub rows_per_table: Vec<u64>,
    pub cursor: i64,
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
        cursor: trailer.cursor,
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
    let Some(path) = current_file(dir) else {
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
/// journal entries up to it were backed up and may be forgotten; any later entry
/// refuses the install with `LocalChanges` (exit 6).
pub fn install(
    dir: &DeviceDir,
    built: &Built,
    hold: Option<WriterHold>,
    journal_max_seq: i64,
) -> Result<()> {
    let old = current_file(dir);
    match (hold, &old) {
        (Some(mut hold), Some(_)) => {
            refuse_unsent(&hold.conn, journal_max_seq)?;
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
    swap_link(dir, &built.path)?;
    if let Some(old) = &old {
        remove_generation(old);
    }
    Ok(())
}

/// Opens the installed replica for the device's own reads and writes.
pub fn open_current(dir: &DeviceDir) -> Result<Option<Connection>> {
    match current_file(dir) {
        Some(_) => {
            let conn = Connection::open(dir.replica_path())?;
            conn.busy_timeout(Duration::from_secs(10))?;
            // Sends read and rewrite the whole journal: keep its pages in memory.
            conn.execute_batch("PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;")?;
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

/// Pending journal entries per user, without taking any lock (read-only).
pub fn pending_by_user(dir: &DeviceDir) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    if current_file(dir).is_none() {
        return Ok(out);
    }
    let conn = Connection::open_with_flags(dir.replica_path(), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt =
        conn.prepare("SELECT user, count(*) FROM fieldsync_journal GROUP BY user ORDER BY user")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    for row in rows {
        let (user, n) = row?;
        out.insert(user, n);
    }
    Ok(out)
}
