//! Files made on the device (a photo) waiting to be sent: `files/outbox/ID.json` (the
//! attachment: table, key, name, size, SHA-256, content type, user, time) beside
//! `files/outbox/ID.bin` (a copy of the content, so the original may go). The next
//! send uploads the content (resumably) and carries the attachments in its last
//! upload, recorded in the main database with the journal's entries; an
//! acknowledged attachment leaves the queue.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use fieldsync_proto::ColumnType;
use fieldsync_proto::task::WriteOp;
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{
    FileUploadState, HEADER_FILE_OFFSET, HEADER_FILE_SIZE, UploadAttachment,
};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};
use crate::files::sha256_file;
use crate::http::{Api, Credentials};
use crate::{Device, replica};

/// Bytes of content per `PUT` (each a resumable piece; memory stays at one piece).
const PIECE_BYTES: u64 = 4 * 1024 * 1024;

/// A queued attachment, as `files/outbox/ID.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueuedFile {
    pub id: String,
    pub task: String,
    #[serde(flatten)]
    pub attachment: UploadAttachment,
}

/// The device folder's `files/outbox/`.
pub(crate) fn outbox_dir(device_root: &Path) -> PathBuf {
    device_root.join("files").join("outbox")
}

/// The queued files, oldest first.
pub(crate) fn queued(device_root: &Path) -> Result<Vec<QueuedFile>> {
    let dir = outbox_dir(device_root);
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in entries {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = fs::read_to_string(&path)?;
        let q: QueuedFile = serde_json::from_str(&text)
            .map_err(|e| ClientError::Invalid(format!("queued file {}: {e}", path.display())))?;
        out.push(q);
    }
    out.sort_by(|a, b| (a.attachment.added_at, &a.id).cmp(&(b.attachment.added_at, &b.id)));
    Ok(out)
}

/// The content of a queued file.
pub(crate) fn content(device_root: &Path, id: &str) -> PathBuf {
    outbox_dir(device_root).join(format!("{id}.bin"))
}

/// Takes an acknowledged attachment out of the queue.
pub(crate) fn remove(device_root: &Path, id: &str) -> Result<()> {
    let dir = outbox_dir(device_root);
    // The record first: a content file without one is never sent.
    for f in [format!("{id}.json"), format!("{id}.bin")] {
        match fs::remove_file(dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Moves every queued file beside `backup` (a journal backup file): into the folder
/// named like it with `.files` for `.jsonl`, records and content as queued. Returns
/// how many moved.
pub(crate) fn move_to_backup(device_root: &Path, backup: &Path) -> Result<usize> {
    let list = queued(device_root)?;
    if list.is_empty() {
        return Ok(0);
    }
    let dir = backup.with_extension("files");
    fs::create_dir_all(&dir)?;
    let from = outbox_dir(device_root);
    for q in &list {
        // The content first: a record without its content is never left in the queue.
        for f in [format!("{}.bin", q.id), format!("{}.json", q.id)] {
            fs::rename(from.join(&f), dir.join(&f))?;
        }
    }
    crate::state::sync_dir(&dir)?;
    crate::state::sync_dir(&from)?;
    Ok(list.len())
}

impl Device {
    /// Queues `path` as a file of row `key` of `table` (`device file attach`): the
    /// row must be in the replica, its table in the task's `[files]` and writable.
    /// Works offline; the next send uploads it.
    pub fn file_attach(
        &self,
        table: &str,
        key: &str,
        path: &Path,
        name: Option<&str>,
    ) -> Result<QueuedFile> {
        let (_lock, st) = self.begin()?;
        let user = st
            .session
            .as_ref()
            .map(|s| s.user.clone())
            .ok_or(ClientError::NotLoggedIn)?;
        let conn = replica::open_current(&self.dir)?
            .ok_or_else(|| ClientError::Refused("no replica: download a task first".into()))?;
        let header = replica::read_header(&conn)?
            .ok_or_else(|| ClientError::Replica("the replica has no slice header".into()))?;
        let schema = header
            .tables
            .iter()
            .find(|t| t.name == table)
            .ok_or_else(|| {
                ClientError::Refused(format!("table `{table}` is not in task `{}`", header.task))
            })?;
        if !header.file_tables.iter().any(|t| t == table) {
            return Err(ClientError::Refused(format!(
                "table `{table}` is not in the `[files]` of task `{}`: its rows take no files",
                header.task
            )));
        }
        if !schema.write.contains(&WriteOp::Insert) && !schema.write.contains(&WriteOp::Update) {
            return Err(ClientError::Refused(format!(
                "table `{table}` is read-only in task `{}`: its rows take no files from this device",
                header.task
            )));
        }
        let pk_type = schema
            .columns
            .iter()
            .find(|c| c.name == schema.primary_key)
            .map(|c| c.column_type);
        let key_value: rusqlite::types::Value = match pk_type {
            Some(ColumnType::Integer) => {
                rusqlite::types::Value::Integer(key.parse().map_err(|_| {
                    ClientError::Refused(format!("key `{key}`: table `{table}` has an integer key"))
                })?)
            }
            _ => rusqlite::types::Value::Text(key.to_string()),
        };
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {} = ?1",
            crate::triggers::quote(table),
            crate::triggers::quote(&schema.primary_key)
        );
        let n: i64 = conn.query_row(&sql, [key_value], |r| r.get(0))?;
        if n == 0 {
            return Err(ClientError::Refused(format!(
                "table `{table}` has no row with key `{key}` in this device's slice"
            )));
        }
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| ClientError::Invalid(format!("{}: not a file", path.display())))?,
        };
        if name.is_empty() || name.contains(['/', '\\', '\0']) || name.starts_with('.') {
            return Err(ClientError::Invalid(format!(
                "file name `{name}`: a plain name (no folder, not starting with a dot)"
            )));
        }
        let dir = outbox_dir(&self.dir.root);
        fs::create_dir_all(&dir)?;
        let id = format!(
            "{}-{}",
            fieldsync_proto::time::now_unix_ms(),
            crate::random_hex(4)
        );
        // The content first, copied aside and made durable; the record last (a
        // content file without its record is never sent).
        let bin = content(&self.dir.root, &id);
        let tmp = dir.join(format!("{id}.tmp"));
        fs::copy(path, &tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &bin)?;
        let size = fs::metadata(&bin)?.len();
        let q = QueuedFile {
            id: id.clone(),
            task: header.task.clone(),
            attachment: UploadAttachment {
                table: table.to_string(),
                key: key.to_string(),
                content_type: fieldsync_proto::wire::content_type_of(&name).to_string(),
                name,
                size,
                sha256: sha256_file(&bin)?,
                user,
                added_at: Timestamp::now(),
            },
        };
        let json = dir.join(format!("{id}.json"));
        let tmp = dir.join(format!("{id}.json.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&q).expect("serializes"))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &json)?;
        Ok(q)
    }

    /// The files queued for the next send (`device file list`); never waits.
    pub fn files_queued(&self) -> Result<Vec<QueuedFile>> {
        queued(&self.dir.root)
    }
}

impl Api {
    /// Uploads a queued file's content from where the server stands (a cut upload
    /// resumes), in pieces; returns the bytes moved. `tick` hears the offset reached
    /// after each piece; a cancel stops between pieces (the next send resumes there).
    pub(crate) fn file_upload(
        &self,
        creds: &Credentials<'_>,
        q: &QueuedFile,
        path: &Path,
        cancel: &crate::Cancel,
        tick: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let a = &q.attachment;
        let route = format!("/api/v1/files/{}/upload", a.sha256);
        let resp = self.call("GET", &route, Some(creds), Vec::new(), None)?;
        let mut state: FileUploadState = self.json(resp)?;
        let mut moved = 0u64;
        let mut f = fs::File::open(path)?;
        while !state.stored {
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            let offset = state.received.min(a.size);
            tick(offset);
            let len = (a.size - offset).min(PIECE_BYTES);
            let mut piece = Vec::with_capacity(len as usize);
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(offset))?;
            (&mut f).take(len).read_to_end(&mut piece)?;
            if (piece.len() as u64) < len {
                return Err(ClientError::Invalid(format!(
                    "queued file {} changed since it was attached",
                    path.display()
                )));
            }
            let headers = vec![
                (HEADER_FILE_OFFSET, offset.to_string()),
                (HEADER_FILE_SIZE, a.size.to_string()),
            ];
            let resp = self.call("PUT", &route, Some(creds), headers, Some(&piece))?;
            state = self.json(resp)?;
            moved += len;
            tick(state.received.min(a.size));
            if !state.stored && state.received <= offset {
                return Err(ClientError::Io(format!(
                    "the server took none of file `{}` from byte {offset}",
                    a.name
                )));
            }
        }
        Ok(moved)
    }
}
