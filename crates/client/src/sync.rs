//! The operations that move data: download, send, synchronize; the journal's listing
//! and discard. Each takes the folder lock and records its outcome as `last_sync`.

use std::path::PathBuf;
use std::time::Instant;

use fieldsync_proto::task::check_name;
use fieldsync_proto::time;
use fieldsync_proto::wire::{
    ErrorCode, SliceHeader, UPLOAD_BODY_MAX_BYTES, UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_ENTRIES,
    UPLOAD_JSON_MAX_BYTES, UPLOAD_MAX_ENTRIES, Upload, UploadOutcome,
};
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::http::Credentials;
use crate::journal::{self, JournalEntry};
use crate::state::{DeviceState, LastSync};
use crate::{Cancel, Device, DownloadOptions, Phase, Progress, replica, triggers};

/// What an operation did (also what `last_sync` records).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub op: &'static str,
    pub task: Option<String>,
    pub rows_down: u64,
    /// Journal entries sent, after compaction.
    pub rows_up: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub conflicts: u64,
    /// Rows per table of the downloaded slice.
    pub tables: Vec<(String, u64)>,
    pub full: bool,
    pub full_reason: Option<String>,
    /// Where discarded local changes were backed up.
    pub backup: Option<PathBuf>,
    pub duration_ms: u64,
}

fn to_sql(v: &fieldsync_proto::Value) -> rusqlite::types::Value {
    use fieldsync_proto::Value as V;
    match v {
        V::Null => rusqlite::types::Value::Null,
        V::Integer(i) => rusqlite::types::Value::Integer(*i),
        V::Real(r) => rusqlite::types::Value::Real(*r),
        V::Text(t) => rusqlite::types::Value::Text(t.clone()),
        V::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

impl Device {
    /// Downloads a task's slice into a new replica and installs it. Until the install,
    /// the previous replica is untouched; any failure or cancel keeps it. Pending local
    /// changes refuse the download (exit 6) unless `discard_local_changes`, which
    /// backs them up first.
    pub fn download(
        &self,
        task: &str,
        opts: &DownloadOptions,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
    ) -> Result<Report> {
        let (_lock, st) = self.begin()?;
        self.recorded("download", |r| {
            self.download_locked(&st, task, opts, "download", progress, cancel, r, None)
        })
    }

    /// Sends the journal as a sequence of uploads (chunks of it, in order), each
    /// compacted, stored before sending, applied by the server at most once, and
    /// acknowledged (its entries leave the journal) before the next is made.
    pub fn send(&self, progress: &mut dyn FnMut(&Progress), cancel: &Cancel) -> Result<Report> {
        let (_lock, st) = self.begin()?;
        self.recorded("send", |r| {
            self.send_locked(&st, "send", progress, cancel, r, None)
        })
    }

    /// Send, then download the new version of the last task. A failed send downloads
    /// nothing and keeps the journal.
    pub fn sync(
        &self,
        opts: &DownloadOptions,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
    ) -> Result<Report> {
        let (_lock, st) = self.begin()?;
        self.recorded("sync", |r| {
            let task = st.task.clone().ok_or(ClientError::NoTask)?;
            // App writers are held off for the whole sync: the journal sent is the
            // journal there is, and the download can replace the replica without an
            // edit slipping in between (an app's write waits, then fails busy).
            let hold = replica::hold_writers(&self.dir)?;
            self.send_locked(&st, "sync", progress, cancel, r, hold.as_ref())?;
            let opts = DownloadOptions {
                discard_local_changes: false,
                ..opts.clone()
            };
            self.download_locked(&st, &task, &opts, "sync", progress, cancel, r, hold)
        })
    }

    /// Records that an operation was cancelled from outside (a signal that had to stop
    /// the process before the operation reached a safe point).
    pub fn note_cancelled(&self, op: &str) -> Result<()> {
        let mut st = self.dir.load()?;
        st.last_sync = Some(LastSync {
            op: op.into(),
            kind: "manual".into(),
            result: "cancelled".into(),
            message: ClientError::Cancelled.to_string(),
            at: time::now_rfc3339(),
            ..LastSync::default()
        });
        self.dir.save(&st)
    }

    /// Runs an operation and records its outcome in the state file.
    fn recorded(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Report) -> Result<()>,
    ) -> Result<Report> {
        let started = Instant::now();
        let mut report = Report {
            op,
            ..Report::default()
        };
        let result = f(&mut report);
        report.duration_ms = started.elapsed().as_millis() as u64;
        let mut st = self.dir.load()?;
        let (word, message) = match &result {
            Ok(()) => ("ok", summary(&report)),
            Err(ClientError::Cancelled) => ("cancelled", ClientError::Cancelled.to_string()),
            Err(e) => ("error", e.to_string()),
        };
        if result.is_ok()
            && let Some(task) = &report.task
            && op != "send"
        {
            st.task = Some(task.clone());
        }
        st.last_sync = Some(LastSync {
            op: op.into(),
            kind: "manual".into(),
            result: word.into(),
            message,
            at: time::now_rfc3339(),
            full: report.full,
            full_reason: report.full_reason.clone(),
            rows_down: report.rows_down,
            rows_up: report.rows_up,
            bytes_down: report.bytes_down,
            bytes_up: report.bytes_up,
            duration_ms: report.duration_ms,
            conflicts: report.conflicts,
        });
        self.dir.save(&st)?;
        result.map(|()| report)
    }

    #[allow(clippy::too_many_arguments)]
    fn download_locked(
        &self,
        st: &DeviceState,
        task: &str,
        opts: &DownloadOptions,
        op: &str,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
        hold: Option<replica::WriterHold>,
    ) -> Result<()> {
        check_name("task", task).map_err(ClientError::Invalid)?;
        Self::online(st)?;
        let (api, id, secret, session) = self.logged_in(st)?;
        // Local changes refuse the download before anything is fetched; they are
        // checked again under the replica's write lock at the install. A sync brings
        // that lock held from its start; a plain download takes it only for the
        // install, so a slow server never blocks an app's writes.
        let mut early_hold = hold;
        let mut journal_max_seq = 0;
        let plain = match &early_hold {
            Some(_) => None,
            None => replica::open_current(&self.dir)?,
        };
        if let Some(conn) = early_hold.as_ref().map(|h| h.conn()).or(plain.as_ref()) {
            let entries = journal::read_all(conn)?;
            if let Some(last) = entries.last() {
                if !opts.discard_local_changes {
                    return Err(ClientError::LocalChanges {
                        unsent: entries.len() as u64,
                    });
                }
                report.backup = Some(journal::write_backup(&self.dir.root, &entries)?);
                journal_max_seq = last.seq;
            }
        }
        let creds = Credentials {
            device_id: &id,
            device_secret: &secret,
            token: Some(&session.token),
        };
        let mut bytes_down = 0;
        let built = with_retries(&self.config, progress, cancel, |progress| {
            progress(&Progress {
                phase: Phase::Prepare,
                done: 0,
                total: 1,
                unit: "steps",
            });
            let body = api.download(&creds, task, op, "manual")?;
            let mut counting = replica::CountingReader {
                inner: body,
                n_bytes: 0,
            };
            let built = replica::build(&self.dir, &mut counting, progress, cancel);
            bytes_down += counting.n_bytes;
            built
        })?;
        // Hold app writers off for the install: a write from here on would land in a
        // replica about to be replaced; it waits, then fails busy, and is never lost.
        let installed = cancel.commit(|| {
            let hold = match early_hold.take() {
                Some(hold) => Some(hold),
                None => replica::hold_writers(&self.dir)?,
            };
            replica::install(&self.dir, &built, hold, journal_max_seq)
        });
        if let Err(e) = installed {
            replica::recover(&self.dir)?;
            return Err(e);
        }
        progress(&Progress {
            phase: Phase::Store,
            done: 3,
            total: 3,
            unit: "steps",
        });
        report.task = Some(built.header.task.clone());
        report.rows_down = built.rows_per_table.iter().sum();
        report.tables = built
            .header
            .tables
            .iter()
            .map(|t| t.name.clone())
            .zip(built.rows_per_table.iter().copied())
            .collect();
        report.bytes_down += bytes_down;
        report.full = true;
        report.full_reason = Some(if opts.full { "requested" } else { "no-cursor" }.to_string());
        Ok(())
    }

    /// Sends the journal of every replica in the folder, each with its own task: those
    /// set aside for other users (and copies' unsent remainders), then the current one
    /// (under `held`, a sync's last round, its journal cannot grow meanwhile, and each
    /// step is committed while the lock stays held).
    #[allow(clippy::too_many_arguments)]
    fn send_locked(
        &self,
        st: &DeviceState,
        op: &str,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
        held: Option<&replica::WriterHold>,
    ) -> Result<()> {
        Self::online(st)?;
        self.logged_in(st)?;
        // Set-aside replicas first: their entries were mostly made before the current
        // user's, and the main database sees the users' edits in that order.
        for path in replica::set_aside_files(&self.dir)? {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            self.send_journal(st, op, progress, cancel, report, None, &conn, &path)?;
        }
        // Then the current replica (the report names its task).
        if let Some(path) = replica::installed_file(&self.dir) {
            let own = match held {
                Some(_) => None,
                None => replica::open_current(&self.dir)?,
            };
            if let Some(conn) = held.map(|h| h.conn()).or(own.as_ref()) {
                self.send_journal(st, op, progress, cancel, report, held, conn, &path)?;
            }
        }
        Ok(())
    }

    /// Sends one replica's journal, as it is now.
    #[allow(clippy::too_many_arguments)]
    fn send_journal(
        &self,
        st: &DeviceState,
        op: &str,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
        held: Option<&replica::WriterHold>,
        conn: &Connection,
        path: &std::path::Path,
    ) -> Result<()> {
        let (api, id, secret, session) = self.logged_in(st)?;
        // The journal as it is now is what this send sends; entries an app adds while
        // it runs wait for the next send.
        let seq_max: i64 = conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM fieldsync_journal",
            [],
            |r| r.get(0),
        )?;
        // Under a hold, a stored upload must be committed before it leaves.
        let durable = || held.map_or(Ok(()), |h| h.commit_and_hold());
        let info = replica::read_info(path)?
            .ok_or_else(|| ClientError::Replica("the replica has no fieldsync record".into()))?;
        report.task = Some(info.task.clone());
        let header = replica::read_header(conn)?;
        let rules = header
            .as_ref()
            .map(journal::CompactRules::from_header)
            .unwrap_or_default();
        let creds = Credentials {
            device_id: &id,
            device_secret: &secret,
            token: Some(&session.token),
        };
        // Progress counts journal entries across the chunks of this send.
        let total: i64 = conn.query_row(
            "SELECT count(*) FROM fieldsync_journal WHERE seq <= ?1",
            [seq_max],
            |r| r.get(0),
        )?;
        let (total, mut done) = (total.max(0) as u64, 0u64);
        // Journal entries per upload: the published chunk size, halved while the
        // server refuses an upload as too large (a server with smaller caps).
        let mut limit = UPLOAD_CHUNK_ENTRIES;
        loop {
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            let Some(pending) = prepare_upload(conn, &info, &rules, seq_max, limit)? else {
                break;
            };
            durable()?;
            // The journal entries this upload stands for: every entry up to its last
            // (the earlier ones left with the earlier uploads' acknowledgements).
            let covers: i64 = conn.query_row(
                "SELECT count(*) FROM fieldsync_journal WHERE seq <= ?1",
                [pending.max_seq],
                |r| r.get(0),
            )?;
            let covers = covers.max(0) as u64;
            progress(&Progress {
                phase: Phase::Send,
                done,
                total: total.max(done + covers),
                unit: "entries",
            });
            // Resending is safe: the upload id makes the server apply it at most once.
            // A failure leaves the stored upload as it is, whatever the server said:
            // an earlier attempt may have been applied with its acknowledgement lost,
            // and only the server's answer to this upload id settles that. The next
            // send sends the same upload again (`device journal discard` drops it).
            let sent = with_retries(&self.config, progress, cancel, |_| {
                api.upload(&creds, &pending.upload_id, &pending.body, op, "manual")
            });
            let outcome = match sent {
                // Too large is the server's answer to this upload id: it answers an id
                // it applied with the recorded outcome before reading any body, so
                // this one was never applied, and may be made again in smaller pieces
                // (an upload stored by an older fieldsync, a server with smaller caps).
                Err(ClientError::Server {
                    code: ErrorCode::PayloadTooLarge,
                    message,
                }) => {
                    if covers <= 1 {
                        return Err(too_large_entry(conn, pending.max_seq, &message));
                    }
                    conn.execute(
                        "DELETE FROM fieldsync_upload WHERE upload_id = ?1",
                        [&pending.upload_id],
                    )?;
                    durable()?;
                    limit = (covers as usize / 2).max(1);
                    continue;
                }
                other => other?,
            };
            cancel.commit(|| {
                acknowledge(conn, header.as_ref(), &pending, &outcome, held.is_none())?;
                durable()
            })?;
            done += covers;
            progress(&Progress {
                phase: Phase::Send,
                done,
                total: total.max(done),
                unit: "entries",
            });
            report.rows_up += pending.n_entries;
            report.bytes_up += pending.body.len() as u64;
            report.conflicts += outcome.conflicts;
        }
        Ok(())
    }

    /// The pending entries of every replica in the folder (the current one's first,
    /// then those set aside for other users); never waits for the folder lock and
    /// writes nothing.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        for path in replica::all_replicas(&self.dir)? {
            out.extend(journal::read_all(&replica::open_read_only(&path)?)?);
        }
        out.extend(replica::stray_entries(&self.dir)?);
        Ok(out)
    }

    /// Moves journal entries (`None`: all, of every replica in the folder) to a new
    /// backup file; returns its path and how many entries moved. An entry number names
    /// an entry of the current replica, or of a set-aside one when only one has it.
    pub fn journal_discard(&self, seqs: Option<&[i64]>) -> Result<(PathBuf, usize)> {
        let (_lock, _st) = self.begin()?;
        let files = replica::all_replicas(&self.dir)?;
        if files.is_empty() {
            return Err(ClientError::Invalid("no replica on this device".into()));
        }
        let mut conns = Vec::new();
        for path in &files {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let all = journal::read_all(&conn)?;
            conns.push((conn, all));
        }
        let current_first = replica::current_file(&self.dir).is_some();
        let mut chosen: Vec<Vec<JournalEntry>> = vec![Vec::new(); conns.len()];
        match seqs {
            None => {
                for (i, (_, all)) in conns.iter().enumerate() {
                    chosen[i] = all.clone();
                }
            }
            Some(wanted) => {
                for s in wanted {
                    let holders: Vec<usize> = (0..conns.len())
                        .filter(|&i| conns[i].1.iter().any(|e| e.seq == *s))
                        .collect();
                    let i = match holders.as_slice() {
                        [] => return Err(ClientError::Invalid(format!("no journal entry {s}"))),
                        [0, ..] if current_first => 0,
                        [i] => *i,
                        _ => {
                            return Err(ClientError::EntryInSeveral { seq: *s });
                        }
                    };
                    if let Some(e) = conns[i].1.iter().find(|e| e.seq == *s)
                        && !chosen[i].iter().any(|c| c.seq == *s)
                    {
                        chosen[i].push(e.clone());
                    }
                }
            }
        }
        let all_chosen: Vec<JournalEntry> = chosen.iter().flatten().cloned().collect();
        if all_chosen.is_empty() {
            return Err(ClientError::Invalid(
                "the journal is empty; nothing to discard".into(),
            ));
        }
        let path = journal::write_backup(&self.dir.root, &all_chosen)?;
        for ((conn, _), entries) in conns.iter().zip(&chosen) {
            if entries.is_empty() {
                conn.execute_batch("ROLLBACK")?;
                continue;
            }
            for e in entries {
                conn.execute("DELETE FROM fieldsync_journal WHERE seq = ?1", [e.seq])?;
            }
            // A prepared upload no longer matches the journal.
            conn.execute("DELETE FROM fieldsync_upload", [])?;
            conn.execute_batch("COMMIT")?;
        }
        Ok((path, all_chosen.len()))
    }
}

/// The error for a journal entry too large to send on its own: it names the entry,
/// stays in the journal, and nothing else is sent after it (uploads go in order).
fn too_large_entry(conn: &Connection, seq: i64, why: &str) -> ClientError {
    let entry = conn
        .query_row(
            "SELECT seq, tbl, pk FROM fieldsync_journal WHERE seq <= ?1 ORDER BY seq LIMIT 1",
            [seq],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, rusqlite::types::Value>(2)?,
                ))
            },
        )
        .optional();
    let (seq, what) = match entry {
        Ok(Some((seq, table, key))) => {
            let key = match key {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => format!("'{t}'"),
                other => format!("{other:?}"),
            };
            (seq, format!(" (table `{table}`, key {key})"))
        }
        _ => (seq, String::new()),
    };
    ClientError::EntryTooLarge {
        seq,
        detail: what,
        why: why.to_string(),
    }
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    n: usize,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An upload stored in the replica before it is sent.
struct PendingUpload {
    upload_id: String,
    max_seq: i64,
    n_entries: u64,
    body: Vec<u8>,
}

/// The stored upload not yet acknowledged, or a new one made from the next chunk of the
/// journal and stored (with its idempotency key) before anything is sent. `None`:
/// nothing to send. Only journal entries up to `seq_max` go (a send ends even while an
/// app keeps writing), at most `limit` of them and about [`UPLOAD_CHUNK_BYTES`] of row
/// values (`journal::read_chunk`): a journal of any length goes as a sequence of
/// uploads, each acknowledged before the next is made, so neither side ever holds more
/// than one chunk. An entry too large for the server's caps on its own is an error
/// naming it; it stays in the journal.
fn prepare_upload(
    conn: &Connection,
    info: &replica::ReplicaInfo,
    rules: &journal::CompactRules,
    seq_max: i64,
    limit: usize,
) -> Result<Option<PendingUpload>> {
    let stored = conn
        .query_row(
            "SELECT upload_id, max_seq, n_entries, body FROM fieldsync_upload LIMIT 1",
            [],
            |r| {
                Ok(PendingUpload {
                    upload_id: r.get(0)?,
                    max_seq: r.get(1)?,
                    n_entries: r.get::<_, i64>(2)? as u64,
                    body: r.get(3)?,
                })
            },
        )
        .optional()?;
    if stored.is_some() {
        return Ok(stored);
    }
    let mut limit = limit.max(1);
    loop {
        let entries = journal::read_chunk(conn, seq_max, limit, UPLOAD_CHUNK_BYTES)?;
        let Some(max_seq) = entries.last().map(|e| e.seq) else {
            return Ok(None);
        };
        let n_read = entries.len();
        let upload = Upload {
            upload_id: crate::random_hex(16),
            task: info.task.clone(),
            epoch: Some(info.epoch.clone()),
            task_hash: Some(info.task_hash.clone()),
            entries: journal::compact(entries, rules),
        };
        if upload.entries.is_empty() {
            // Everything cancelled out (an insert then a delete, say): nothing to send.
            conn.execute("DELETE FROM fieldsync_journal WHERE seq <= ?1", [max_seq])?;
            continue;
        }
        // Serialized straight into the compressor: no copy of the whole JSON in memory.
        let io = |e: std::io::Error| ClientError::Io(format!("compressing the upload: {e}"));
        let encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).map_err(io)?;
        let mut writer = std::io::BufWriter::with_capacity(
            256 * 1024,
            Counting {
                inner: encoder,
                n: 0,
            },
        );
        serde_json::to_writer(&mut writer, &upload).map_err(|e| ClientError::Io(e.to_string()))?;
        let counted = writer.into_inner().map_err(|e| io(e.into_error()))?;
        let json_len = counted.n;
        let body = counted.inner.finish().map_err(io)?;
        // Within the server's caps, or smaller: a chunk the server would refuse is never
        // stored (nothing was sent of it).
        if json_len > UPLOAD_JSON_MAX_BYTES
            || body.len() > UPLOAD_BODY_MAX_BYTES
            || upload.entries.len() > UPLOAD_MAX_ENTRIES
        {
            if n_read > 1 {
                limit = n_read / 2;
                continue;
            }
            return Err(too_large_entry(
                conn,
                max_seq,
                &format!(
                    "its change is {json_len} bytes as sent ({} compressed), over the \
                     server's limit of {UPLOAD_JSON_MAX_BYTES} bytes ({UPLOAD_BODY_MAX_BYTES} \
                     compressed) per upload",
                    body.len()
                ),
            ));
        }
        let pending = PendingUpload {
            upload_id: upload.upload_id,
            max_seq,
            n_entries: upload.entries.len() as u64,
            body,
        };
        conn.execute(
            "INSERT INTO fieldsync_upload (upload_id, max_seq, n_entries, body) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![pending.upload_id, pending.max_seq, pending.n_entries as i64, pending.body],
        )?;
        return Ok(Some(pending));
    }
}

/// Clears exactly the acknowledged entries and records the new row versions as the
/// device's base, in one transaction.
fn acknowledge(
    conn: &Connection,
    header: Option<&SliceHeader>,
    pending: &PendingUpload,
    outcome: &UploadOutcome,
    own_transaction: bool,
) -> Result<()> {
    if outcome.upload_id != pending.upload_id {
        return Err(ClientError::Server {
            code: ErrorCode::Internal,
            message: "the acknowledgement names another upload".into(),
        });
    }
    // One transaction: its own, or the one a hold keeps open (committed by the caller).
    let own = if own_transaction {
        Some(conn.unchecked_transaction()?)
    } else {
        None
    };
    let tx = conn;
    tx.execute(
        "DELETE FROM fieldsync_journal WHERE seq <= ?1",
        [pending.max_seq],
    )?;
    {
        let mut base = tx.prepare(
            "INSERT INTO fieldsync_base (tbl, pk, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version",
        )?;
        // Rows the server wrote other than the device had them, that the journal
        // edits again after this upload (the next chunks, edits made meanwhile):
        // found in one pass over the rest of the journal, not one per row.
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS fieldsync_taken (tbl TEXT NOT NULL, pk NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
             CREATE TEMP TABLE IF NOT EXISTS fieldsync_edited (tbl TEXT NOT NULL, pk NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID;
             DELETE FROM temp.fieldsync_taken; DELETE FROM temp.fieldsync_edited;",
        )?;
        if outcome.versions.iter().any(|v| v.row.is_some()) {
            let mut taken =
                tx.prepare("INSERT OR IGNORE INTO temp.fieldsync_taken (tbl, pk) VALUES (?1, ?2)")?;
            for v in outcome.versions.iter().filter(|v| v.row.is_some()) {
                taken.execute(rusqlite::params![v.table, to_sql(&v.key)])?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO temp.fieldsync_edited (tbl, pk)
                 SELECT j.tbl, j.pk FROM fieldsync_journal AS j
                 WHERE j.seq > ?1 AND EXISTS (
                     SELECT 1 FROM temp.fieldsync_taken AS t WHERE t.tbl = j.tbl AND t.pk = j.pk)",
                [pending.max_seq],
            )?;
        }
        let mut edited_since = tx.prepare(
            "SELECT EXISTS (SELECT 1 FROM temp.fieldsync_edited WHERE tbl = ?1 AND pk = ?2)",
        )?;
        tx.execute(
            "INSERT INTO fieldsync_replica (key, value) VALUES ('applying', '1')
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [],
        )?;
        for v in &outcome.versions {
            let Some(version) = v.version else { continue };
            if let Some(row) = &v.row {
                // The main database's row is not exactly the device's (a conflict, or
                // office changes merged): take it, so that `version` is a true base.
                // An edit made on top meanwhile keeps the old base instead, and is
                // judged against the office's change again.
                let edited: bool = edited_since
                    .query_row(rusqlite::params![v.table, to_sql(&v.key)], |r| r.get(0))?;
                if edited {
                    continue;
                }
                take_row(tx, header, &v.table, &v.key, row)?;
            }
            base.execute(rusqlite::params![v.table, to_sql(&v.key), version])?;
        }
        tx.execute("DELETE FROM fieldsync_replica WHERE key = 'applying'", [])?;
    }
    if let Some(h) = header {
        mark_left(tx, h, outcome)?;
    }
    // Entries left in the journal (edits made while the upload was away, the next
    // chunks of this send) were made on top of the acknowledged ones: they are sent
    // with the row's new base (`journal::read_chunk` takes it as it reads them, so an
    // acknowledgement costs what its upload holds, not what the journal holds).
    tx.execute(
        "DELETE FROM fieldsync_upload WHERE upload_id = ?1",
        [&pending.upload_id],
    )?;
    if let Some(own) = own {
        own.commit()?;
    }
    Ok(())
}

/// Writes the main database's row into the replica (the journal triggers stand aside:
/// see `triggers::NOT_APPLYING`).
fn take_row(
    conn: &Connection,
    header: Option<&SliceHeader>,
    table: &str,
    key: &fieldsync_proto::Value,
    row: &std::collections::BTreeMap<String, fieldsync_proto::Value>,
) -> Result<()> {
    let Some(t) = header.and_then(|h| h.tables.iter().find(|t| t.name == table)) else {
        return Ok(());
    };
    let cols: Vec<(&String, &fieldsync_proto::Value)> = row
        .iter()
        .filter(|(c, _)| **c != t.primary_key && t.columns.iter().any(|x| x.name == **c))
        .collect();
    if cols.is_empty() {
        return Ok(());
    }
    let sets: Vec<String> = cols
        .iter()
        .map(|(c, _)| format!("{} = ?", triggers::quote(c)))
        .collect();
    let sql = format!(
        "UPDATE {} SET {} WHERE {} = ?",
        triggers::quote(table),
        sets.join(", "),
        triggers::quote(&t.primary_key)
    );
    let values: Vec<rusqlite::types::Value> = cols
        .iter()
        .map(|(_, v)| to_sql(v))
        .chain(std::iter::once(to_sql(key)))
        .collect();
    conn.execute(&sql, rusqlite::params_from_iter(values))?;
    Ok(())
}

/// Records the rows this acknowledged send moved out of the slice (by the task's
/// filter, or with a parent that left), so the triggers refuse further edits of them
/// until the next download removes them.
fn mark_left(conn: &Connection, h: &SliceHeader, outcome: &UploadOutcome) -> Result<()> {
    let params = fieldsync_proto::filter::Params {
        user: h.user.clone(),
        device: h.device.clone(),
    };
    for t in &h.tables {
        let Some(expr) = t
            .filter
            .as_deref()
            .and_then(|f| fieldsync_proto::filter::parse(f).ok())
        else {
            continue;
        };
        // Only rows the send wrote: a row the office kept is as the office has it.
        let keys: Vec<&fieldsync_proto::Value> = outcome
            .versions
            .iter()
            .filter(|v| v.version.is_some() && v.table == t.name)
            .map(|v| &v.key)
            .collect();
        if keys.is_empty() {
            continue;
        }
        let cond = expr.to_sql_inline(
            fieldsync_proto::filter::Dialect::Sqlite,
            &|c| format!("r.{}", triggers::quote(c)),
            &params,
        );
        conn.execute(
            &format!(
                "INSERT OR IGNORE INTO fieldsync_left (tbl, pk)
                 SELECT ?1, r.{pk} FROM {table} AS r
                 WHERE r.{pk} IN (SELECT value FROM json_each(?2)) AND NOT coalesce(({cond}), 0)",
                pk = triggers::quote(&t.primary_key),
                table = triggers::quote(&t.name),
            ),
            rusqlite::params![
                t.name,
                serde_json::to_string(&keys).expect("keys serialize")
            ],
        )?;
    }
    // Children of rows that left, down the parent chains.
    for _ in 0..h.tables.len() {
        let mut added = 0;
        for t in &h.tables {
            let Some(p) = &t.parent else { continue };
            added += conn.execute(
                &format!(
                    "INSERT OR IGNORE INTO fieldsync_left (tbl, pk)
                     SELECT ?1, c.{pk} FROM {table} AS c
                     WHERE c.{key} IN (SELECT pk FROM fieldsync_left WHERE tbl = ?2)",
                    pk = triggers::quote(&t.primary_key),
                    table = triggers::quote(&t.name),
                    key = triggers::quote(&p.key),
                ),
                [&t.name, &p.table],
            )?;
        }
        if added == 0 {
            break;
        }
    }
    Ok(())
}

/// Whether a failure may pass if tried again (the network, a damaged stream, a server
/// error); refusals and bad input never do.
fn is_transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable { .. }
            | ClientError::ServerBusy { .. }
            | ClientError::Stream(_)
            | ClientError::Server {
                code: ErrorCode::Internal | ErrorCode::Damaged | ErrorCode::Busy,
                ..
            }
    )
}

/// Runs `attempt` until it succeeds, fails for good, or the attempts run out
/// (`config.attempts`); transient failures wait a doubling backoff, which a cancel
/// cuts short, and show in the progress as phase `retry`.
fn with_retries<T>(
    net: &ClientConfig,
    progress: &mut dyn FnMut(&Progress),
    cancel: &Cancel,
    mut attempt: impl FnMut(&mut dyn FnMut(&Progress)) -> Result<T>,
) -> Result<T> {
    let mut backoff = net.backoff;
    let mut n = 1;
    loop {
        match attempt(progress) {
            Err(e) if n < net.attempts.max(1) && is_transient(&e) && !cancel.is_cancelled() => {
                n += 1;
                progress(&Progress {
                    phase: Phase::Retry,
                    done: u64::from(n),
                    total: u64::from(net.attempts),
                    unit: "attempts",
                });
                // A busy server says how long to wait; the backoff is the least.
                let wait = match &e {
                    ClientError::ServerBusy { retry_after, .. } => backoff.max(*retry_after),
                    _ => backoff,
                };
                cancel.sleep(wait)?;
                backoff *= 2;
            }
            other => return other,
        }
    }
}

fn summary(r: &Report) -> String {
    match r.op {
        "send" => format!("sent {} change(s), {} conflict(s)", r.rows_up, r.conflicts),
        "sync" => format!(
            "sent {} change(s), {} conflict(s); downloaded {} rows",
            r.rows_up, r.conflicts, r.rows_down
        ),
        _ => format!(
            "downloaded {} rows of task {}",
            r.rows_down,
            r.task.as_deref().unwrap_or("?")
        ),
    }
}
