//! The operations that move data: download, send, synchronize; the journal's listing
//! and discard. Each takes the folder lock and records its outcome as `last_sync`.

use std::path::PathBuf;
use std::time::Instant;

use fieldsync_proto::task::check_name;
use fieldsync_proto::time;
use fieldsync_proto::upload_body::{self, UploadLimits};
use fieldsync_proto::wire::{
    ErrorCode, SliceHeader, UPLOAD_BODY_MAX_BYTES, UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_ENTRIES,
    UPLOAD_JSON_MAX_BYTES, Upload, UploadOutcome,
};
pub use fieldsync_proto::wire::{SyncOp, Trigger};
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

mod chunk;
mod download;
mod files;
mod retry;
mod send;

use retry::with_retries;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::http::Credentials;
use crate::journal::{self, JournalEntry};
use crate::running::Publisher;
use crate::state::{DeviceState, LastSync};
use crate::{Cancel, Device, DownloadOptions, Phase, Progress, replica, triggers};

/// What an operation did (also what `last_sync` records).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub op: SyncOp,
    /// Who started it: the user, or the device by itself.
    pub trigger: Trigger,
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
    /// What a delta did (rows changed, entered, left); `None` for a whole slice.
    pub delta: Option<replica::Applied>,
    /// Where discarded local changes were backed up.
    pub backup: Option<PathBuf>,
    pub duration_ms: u64,
    /// The device's values the main database did not keep (from the sends'
    /// acknowledgements).
    pub not_kept: Vec<fieldsync_proto::wire::NotKept>,
    /// A synchronize's send completed (its download may still fail).
    pub sent: bool,
    /// What the files part did (`device files`, `--files`).
    pub files: FilesReport,
}

/// The files part of an operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FilesReport {
    /// Files fetched (content the device lacked).
    pub fetched: u64,
    /// Files of the slice (attachments to its rows).
    pub in_slice: u64,
    /// Bytes of files received (also counted in `bytes_down`).
    pub bytes: u64,
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
        let mut publish = Publisher::start(&self.dir, SyncOp::Download, Trigger::Manual);
        let progress = &mut publish.forwarding(progress);
        self.recorded(SyncOp::Download, |r| {
            self.download_locked(&st, task, opts, progress, cancel, r, None)?;
            if opts.files {
                self.files_after_data(&st, task, progress, cancel, r)?;
            }
            Ok(())
        })
    }

    /// Sends the journal as a sequence of uploads (chunks of it, in order), each
    /// compacted, stored before sending, applied by the server at most once, and
    /// acknowledged (its entries leave the journal) before the next is made.
    pub fn send(&self, progress: &mut dyn FnMut(&Progress), cancel: &Cancel) -> Result<Report> {
        let (_lock, st) = self.begin()?;
        let mut publish = Publisher::start(&self.dir, SyncOp::Send, Trigger::Manual);
        let progress = &mut publish.forwarding(progress);
        self.recorded(SyncOp::Send, |r| {
            self.send_locked(&st, progress, cancel, r, None)
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
        let mut publish = Publisher::start(&self.dir, SyncOp::Sync, Trigger::Manual);
        let progress = &mut publish.forwarding(progress);
        self.recorded(SyncOp::Sync, |r| {
            let task = st.task.clone().ok_or(ClientError::NoTask)?;
            // App writers are held off for the whole sync: the journal sent is the
            // journal there is, and the download can replace the replica without an
            // edit slipping in between (an app's write waits, then fails busy).
            let hold = replica::hold_writers(&self.dir)?;
            self.send_locked(&st, progress, cancel, r, hold.as_ref())?;
            r.sent = true;
            let opts = DownloadOptions {
                discard_local_changes: false,
                ..opts.clone()
            };
            self.download_locked(&st, &task, &opts, progress, cancel, r, hold)?;
            if opts.files {
                self.files_after_data(&st, &task, progress, cancel, r)?;
            }
            Ok(())
        })
    }

    /// Records that an operation was cancelled from outside (a signal that had to stop
    /// the process before the operation reached a safe point).
    pub fn note_cancelled(&self, op: SyncOp) -> Result<()> {
        let mut st = self.dir.load()?;
        st.last_sync = Some(LastSync {
            op,
            kind: Trigger::Manual,
            result: "cancelled".into(),
            message: ClientError::Cancelled.to_string(),
            at: time::Timestamp::now(),
            full: false,
            full_reason: None,
            rows_down: 0,
            rows_up: 0,
            bytes_down: 0,
            bytes_up: 0,
            duration_ms: 0,
            conflicts: 0,
            send_result: (op != SyncOp::Download).then(|| "cancelled".into()),
            download_result: (op != SyncOp::Send).then(|| "cancelled".into()),
        });
        self.dir.save(&st)
    }

    /// Runs an operation and records its outcome in the state file.
    fn recorded(&self, op: SyncOp, f: impl FnOnce(&mut Report) -> Result<()>) -> Result<Report> {
        self.recorded_as(op, Trigger::Manual, f)
    }

    /// Runs an operation started by `trigger` and records its outcome.
    pub(crate) fn recorded_as(
        &self,
        op: SyncOp,
        trigger: Trigger,
        f: impl FnOnce(&mut Report) -> Result<()>,
    ) -> Result<Report> {
        let started = Instant::now();
        let mut report = Report {
            op,
            trigger,
            task: None,
            rows_down: 0,
            rows_up: 0,
            bytes_down: 0,
            bytes_up: 0,
            conflicts: 0,
            tables: vec![],
            full: false,
            full_reason: None,
            delta: None,
            backup: None,
            duration_ms: 0,
            not_kept: Vec::new(),
            sent: false,
            files: FilesReport::default(),
        };
        let result = f(&mut report);
        report.duration_ms = started.elapsed().as_millis() as u64;
        let mut st = self.dir.load()?;
        let (word, mut message) = match &result {
            Ok(()) => ("ok", summary(&report)),
            Err(ClientError::Cancelled) => ("cancelled", ClientError::Cancelled.to_string()),
            Err(e @ ClientError::FilesCancelled) => ("cancelled", e.to_string()),
            Err(e) => ("error", e.to_string()),
        };
        // The data part of a download or sync stands when only its files did not.
        let data_done = result.is_ok()
            || matches!(
                result,
                Err(ClientError::FilesCancelled | ClientError::FilesFailed(_))
            );
        // A synchronize whose send completed says so, whatever its download did.
        if report.sent && !data_done {
            let download = match &result {
                Err(ClientError::Cancelled) => "download cancelled, previous local data kept",
                _ => "download failed",
            };
            let why = match word {
                "error" => format!(": {}", message.trim_start_matches("download failed: ")),
                _ => String::new(),
            };
            message = format!(
                "sent {} change(s), {} conflict(s); {download}{why}",
                report.rows_up, report.conflicts,
            );
        }
        let (send_result, download_result) = match op {
            SyncOp::Send => (Some(word), None),
            SyncOp::Sync if report.sent => (Some("ok"), Some(word)),
            SyncOp::Files => (None, Some(word)),
            SyncOp::Sync => (Some(word), None),
            _ => (None, Some(word)),
        };
        let now = time::Timestamp::now();
        st.conflicts.extend(
            report
                .not_kept
                .iter()
                .map(|n| crate::state::DeviceConflict {
                    at: now,
                    value: n.clone(),
                }),
        );
        let excess = st
            .conflicts
            .len()
            .saturating_sub(crate::state::CONFLICTS_KEPT);
        st.conflicts.drain(..excess);
        if data_done
            && let Some(task) = &report.task
            && op != SyncOp::Send
        {
            st.task = Some(task.clone());
        }
        st.last_sync = Some(LastSync {
            op,
            kind: report.trigger,
            result: word.into(),
            message,
            at: now,
            full: report.full,
            full_reason: report.full_reason.clone(),
            rows_down: report.rows_down,
            rows_up: report.rows_up,
            bytes_down: report.bytes_down,
            bytes_up: report.bytes_up,
            duration_ms: report.duration_ms,
            conflicts: report.conflicts,
            send_result: send_result.map(str::to_string),
            download_result: download_result.map(str::to_string),
        });
        self.dir.save(&st)?;
        result.map(|()| report)
    }
}

impl Device {
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

    /// Makes the entries of a backup file (`journal discard`, a discarding download)
    /// again, as edits of the current replica by the logged-in user, in one
    /// transaction: each is checked as any edit is (the task's writes, the slice),
    /// and the first that cannot be made leaves everything as it was. Returns how many.
    pub fn journal_restore(&self, file: &std::path::Path) -> Result<usize> {
        let (_lock, st) = self.begin()?;
        if st.session.is_none() {
            return Err(ClientError::NotLoggedIn);
        }
        let entries = journal::read_backup(file)?;
        let conn = replica::open_current(&self.dir)?.ok_or_else(|| {
            ClientError::Invalid("no replica on this device: download the task first".into())
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let header = replica::read_header(&conn)?.ok_or_else(|| {
            ClientError::Replica("the replica keeps no header; download it again".into())
        })?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match journal::redo(&conn, &header, &entries) {
            Ok(n) => {
                conn.execute_batch("COMMIT")?;
                Ok(n)
            }
            Err(e) => {
                conn.execute_batch("ROLLBACK")?;
                Err(e)
            }
        }
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
        if seqs.is_none() {
            // Every change discarded: the files queued on the device go with them.
            crate::outbox::move_to_backup(&self.dir.root, &path)?;
        }
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

fn summary(r: &Report) -> String {
    let files = format!(
        "files: {} fetched ({} bytes), {} in the slice",
        r.files.fetched, r.files.bytes, r.files.in_slice
    );
    if r.op == SyncOp::Files {
        return files;
    }
    let data = data_summary(r);
    if r.files.in_slice > 0 || r.files.fetched > 0 {
        return format!("{data}; {files}");
    }
    data
}

fn data_summary(r: &Report) -> String {
    let sent = format!("sent {} change(s), {} conflict(s)", r.rows_up, r.conflicts);
    if let Some(d) = &r.delta {
        let changes = format!(
            "changes since the last download: {} changed, {} entered, {} left",
            d.changed, d.entered, d.left
        );
        return match r.op {
            SyncOp::Sync => format!("{sent}; {changes}"),
            _ => changes,
        };
    }
    match r.op {
        SyncOp::Send => format!("sent {} change(s), {} conflict(s)", r.rows_up, r.conflicts),
        SyncOp::Sync => format!(
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
