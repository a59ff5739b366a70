//! The uploads a send is made of: the next chunk of the journal, compacted, encoded and
//! stored with its idempotency key before it leaves; and the chunk after it, made while
//! that one is away.
//!
//! Making a chunk (reading the journal, compacting, serializing, compressing) and
//! applying an acknowledgement are the device's work in a send; the server's
//! integration is most of the wait. They overlap: while an upload is away (on a thread
//! of its own, `send.rs`), the acknowledgement of the one before it is applied and the
//! chunk after it made. A chunk made ahead is only in memory until that upload's
//! acknowledgement arrived; it is then stored and sent only if that acknowledgement
//! changed none of its rows (a row in both goes with the base the acknowledgement
//! gives it, which the chunk made ahead could not know); otherwise it is dropped and
//! made again. So two uploads may be stored at once (the one acknowledged and not yet
//! applied, and the next); they are sent, and applied, in journal order.

use std::collections::HashSet;

use super::*;
use crate::outbox::QueuedFile;

/// An upload stored in the replica before it is sent.
pub(super) struct PendingUpload {
    pub upload_id: String,
    pub max_seq: i64,
    pub n_entries: u64,
    pub body: Vec<u8>,
    /// The queued files (ids) whose attachments it carries; empty for an upload stored
    /// before a restart (its attachments stay queued and ride again: the server records
    /// each (table, key, name) once).
    pub attached: Vec<String>,
    /// Journal entries after it (up to the send's end) may remain: worth making the
    /// next chunk while it is away. True when unknown (an upload stored earlier).
    pub more: bool,
}

/// The journal a send takes its chunks from: the replica's connection and record, the
/// task's compaction rules, and the last entry the send takes (`seq_max`: entries an
/// app adds meanwhile wait for the next send).
pub(super) struct Source<'a> {
    pub conn: &'a Connection,
    pub info: &'a replica::ReplicaInfo,
    pub rules: &'a journal::CompactRules,
    pub seq_max: i64,
}

/// A chunk made while the upload before it was away, not stored yet.
pub(super) struct Ahead {
    pending: PendingUpload,
    /// Its rows, as (table, key in JSON).
    rows: HashSet<(String, String)>,
}

impl Ahead {
    /// Whether the acknowledgement of `outcome` (the upload it was made behind) gave
    /// any of its rows a new base or new values: then it must be made again.
    pub(super) fn touched_by(&self, outcome: &UploadOutcome) -> bool {
        outcome
            .versions
            .iter()
            .any(|v| self.rows.contains(&(v.table.clone(), row_key(&v.key))))
    }

    /// The chunk stored and ready to send, if the files it carries (only a last chunk
    /// carries any) are still those queued; `None`: it must be made again.
    pub(super) fn into_pending(
        self,
        conn: &Connection,
        queued: &[QueuedFile],
    ) -> Result<Option<PendingUpload>> {
        let riding: Vec<&String> = if self.pending.more {
            Vec::new()
        } else {
            queued.iter().map(|q| &q.id).collect()
        };
        if !riding.iter().copied().eq(self.pending.attached.iter()) {
            return Ok(None);
        }
        store(conn, &self.pending)?;
        Ok(Some(self.pending))
    }
}

fn row_key(key: &fieldsync_proto::Value) -> String {
    serde_json::to_string(key).expect("a value serializes")
}

/// The chunk after the journal entries up to `after`, made while the upload carrying
/// them is away (nothing written): `None` when there is none worth making ahead
/// (nothing left, a chunk that cancels out, an upload stored after `after` already,
/// any error: the send then makes it as it always did, and meets the error there).
pub(super) fn make_ahead(
    src: &Source<'_>,
    after: i64,
    limit: usize,
    queued: &[QueuedFile],
) -> Option<Ahead> {
    // An upload stored after it (a send that ended, killed or failing, with one
    // acknowledged and not applied and the next stored) holds these entries already,
    // and may have been committed by the server: it goes next under its own id
    // (`prepare_upload`). A chunk made here would carry the same entries under a new
    // id, which the server would judge a second time.
    let stored_after = src.conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM fieldsync_upload WHERE max_seq > ?1)",
        [after],
        |r| r.get::<_, bool>(0),
    );
    if stored_after.unwrap_or(true) {
        return None;
    }
    let mut rows = HashSet::new();
    let made = make(src, after, limit, queued, &mut |e| {
        rows.insert((e.table.clone(), row_key(&e.key)));
    });
    match made {
        Ok(Made::Upload(pending)) => Some(Ahead { pending, rows }),
        _ => None,
    }
}

/// What the next chunk of the journal came to.
enum Made {
    /// Nothing left to send.
    Nothing,
    /// Entries up to this seq cancelled out (an insert then a delete, say).
    CancelledOut(i64),
    Upload(PendingUpload),
}

/// The stored upload not yet acknowledged, or a new one made from the next chunk of the
/// journal and stored (with its idempotency key) before anything is sent. `None`:
/// nothing to send. Only journal entries up to `seq_max` go (a send ends even while an
/// app keeps writing), at most `limit` of them and about [`UPLOAD_CHUNK_BYTES`] of row
/// values (`journal::read_chunk`): a journal of any length goes as a sequence of
/// uploads, each acknowledged before the next is stored and sent, so neither side ever
/// holds more than two chunks (the device makes the next while one is away; of two
/// stored, the first in the journal goes first). An entry
/// too large for the server's caps on its own is an error naming it; it stays in the
/// journal.
pub(super) fn prepare_upload(
    src: &Source<'_>,
    limit: usize,
    queued: &[QueuedFile],
) -> Result<Option<PendingUpload>> {
    let conn = src.conn;
    let stored = conn
        .query_row(
            "SELECT upload_id, max_seq, n_entries, body FROM fieldsync_upload ORDER BY max_seq LIMIT 1",
            [],
            |r| {
                Ok(PendingUpload {
                    upload_id: r.get(0)?,
                    max_seq: r.get(1)?,
                    n_entries: r.get::<_, i64>(2)? as u64,
                    body: r.get(3)?,
                    attached: Vec::new(),
                    more: true,
                })
            },
        )
        .optional()?;
    if stored.is_some() {
        return Ok(stored);
    }
    loop {
        match make(src, i64::MIN, limit, queued, &mut |_| {})? {
            Made::Nothing => return Ok(None),
            Made::CancelledOut(max_seq) => {
                conn.execute("DELETE FROM fieldsync_journal WHERE seq <= ?1", [max_seq])?;
            }
            Made::Upload(pending) => {
                store(conn, &pending)?;
                return Ok(Some(pending));
            }
        }
    }
}

/// Stores a made upload: from now on it is what the next send sends first.
fn store(conn: &Connection, pending: &PendingUpload) -> Result<()> {
    conn.execute(
        "INSERT INTO fieldsync_upload (upload_id, max_seq, n_entries, body) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![pending.upload_id, pending.max_seq, pending.n_entries as i64, pending.body],
    )?;
    Ok(())
}

/// Makes the upload of the journal entries after `after` (up to `seq_max`), without
/// writing anything; `each` sees every entry it carries.
fn make(
    src: &Source<'_>,
    after: i64,
    limit: usize,
    queued: &[QueuedFile],
    each: &mut dyn FnMut(&fieldsync_proto::wire::UploadEntry),
) -> Result<Made> {
    let Source {
        conn,
        info,
        rules,
        seq_max,
    } = *src;
    let mut limit = limit.max(1);
    loop {
        let entries = journal::read_chunk(conn, after, seq_max, limit, UPLOAD_CHUNK_BYTES)?;
        // Queued files ride with the last chunk of the journal (after the rows they
        // belong to), or alone when the journal is empty.
        let max_seq = match entries.last() {
            Some(e) => e.seq,
            None if queued.is_empty() => return Ok(Made::Nothing),
            None => after.max(0),
        };
        let last_chunk: bool = conn.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM fieldsync_journal WHERE seq > ?1 AND seq <= ?2)",
            [max_seq, seq_max],
            |r| r.get(0),
        )?;
        let riding: &[QueuedFile] = if last_chunk { queued } else { &[] };
        let n_read = entries.len();
        let upload = Upload {
            upload_id: crate::random_hex(16),
            task: info.task.clone(),
            epoch: Some(info.epoch.clone()),
            task_hash: Some(info.task_hash.clone()),
            cursor: Some(info.cursor),
            entries: journal::compact(entries, rules),
            attachments: riding.iter().map(|q| q.attachment.clone()).collect(),
        };
        if upload.entries.is_empty() && upload.attachments.is_empty() {
            return Ok(Made::CancelledOut(max_seq));
        }
        // Serialized straight into the compressor: no copy of the whole JSON in memory.
        let encoded = upload_body::encode(&upload)
            .map_err(|e| ClientError::Io(format!("compressing the upload: {e}")))?;
        // Within the server's caps, or smaller: a chunk the server would refuse is never
        // stored (nothing was sent of it).
        if !encoded.within(&UploadLimits::PUBLISHED, upload.entries.len()) {
            if n_read > 1 {
                limit = n_read / 2;
                continue;
            }
            return Err(super::send::too_large_entry(
                conn,
                max_seq,
                &format!(
                    "its change is {} bytes as sent ({} compressed), over the \
                     server's limit of {UPLOAD_JSON_MAX_BYTES} bytes ({UPLOAD_BODY_MAX_BYTES} \
                     compressed) per upload",
                    encoded.json_len,
                    encoded.body.len()
                ),
            ));
        }
        upload.entries.iter().for_each(&mut *each);
        return Ok(Made::Upload(PendingUpload {
            upload_id: upload.upload_id,
            max_seq,
            n_entries: upload.entries.len() as u64,
            body: encoded.body,
            attached: riding.iter().map(|q| q.id.clone()).collect(),
            more: !last_chunk,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_proto::Value;
    use fieldsync_proto::wire::{Cursor, NewVersion};

    fn replica() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::triggers::REPLICA_TABLES).unwrap();
        conn
    }

    fn info() -> replica::ReplicaInfo {
        replica::ReplicaInfo {
            task: "t".into(),
            task_hash: "h".into(),
            epoch: "e".into(),
            cursor: Cursor::from_raw(1),
            user: "u".into(),
            device: "d".into(),
            retired: false,
            complete: true,
            per_user: false,
        }
    }

    fn whole_journal<'a>(
        conn: &'a Connection,
        info: &'a replica::ReplicaInfo,
        rules: &'a journal::CompactRules,
    ) -> Source<'a> {
        Source {
            conn,
            info,
            rules,
            seq_max: i64::MAX,
        }
    }

    fn outcome(rows: &[(&str, i64)]) -> UploadOutcome {
        UploadOutcome {
            upload_id: "x".into(),
            applied: rows.len() as u64,
            conflicts: 0,
            versions: rows
                .iter()
                .map(|(t, k)| NewVersion {
                    table: t.to_string(),
                    key: Value::Integer(*k),
                    version: Some(7),
                    row: None,
                })
                .collect(),
            repeated: false,
            not_kept: Vec::new(),
        }
    }

    /// Uploads stored in the replica, as (id, last journal entry), in this order.
    fn stored(conn: &Connection, uploads: &[(&str, i64)]) {
        for (id, max_seq) in uploads {
            conn.execute(
                "INSERT INTO fieldsync_upload (upload_id, max_seq, n_entries, body) VALUES (?1, ?2, 1, x'00')",
                rusqlite::params![id, max_seq],
            )
            .unwrap();
        }
    }

    /// Two uploads stored (a kill after the next was stored and before the last
    /// acknowledgement was applied): the first in the journal goes first, whatever
    /// order they were stored in.
    #[test]
    fn of_two_stored_uploads_the_first_in_the_journal_goes_first() {
        let conn = replica();
        stored(&conn, &[("later", 20), ("first", 10)]);
        let (info, rules) = (info(), journal::CompactRules::default());
        let src = whole_journal(&conn, &info, &rules);
        let p = prepare_upload(&src, 10, &[]).unwrap().unwrap();
        assert_eq!((p.upload_id.as_str(), p.max_seq), ("first", 10));
    }

    /// The chunk made ahead takes the entries after the upload away, and only those;
    /// it is dropped when that upload's acknowledgement names any of its rows.
    #[test]
    fn a_chunk_made_ahead_starts_after_the_upload_away_and_yields_to_its_rows() {
        let conn = replica();
        for (pk, op) in [(1, "insert"), (2, "insert"), (3, "insert"), (1, "update")] {
            conn.execute(
                "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
                 VALUES ('t', ?1, ?2, '{}', '{\"a\":1}', NULL, 'u', '')",
                rusqlite::params![pk, op],
            )
            .unwrap();
        }
        let (info, rules) = (info(), journal::CompactRules::default());
        let src = whole_journal(&conn, &info, &rules);
        // The upload away holds entries 1 and 2 (rows 1 and 2).
        let next = make_ahead(&src, 2, 10, &[]).unwrap();
        assert_eq!((next.pending.max_seq, next.pending.n_entries), (4, 2));
        assert!(!next.pending.more);
        assert!(!next.touched_by(&outcome(&[("t", 2)])));
        assert!(!next.touched_by(&outcome(&[("other", 1)])));
        assert!(next.touched_by(&outcome(&[("t", 2), ("t", 1)])));
        // Nothing stored until it is taken.
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM fieldsync_upload", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0);
        let taken = next.into_pending(&conn, &[]).unwrap().unwrap();
        let stored: i64 = conn
            .query_row(
                "SELECT max_seq FROM fieldsync_upload WHERE upload_id = ?1",
                [&taken.upload_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 4);
        // Nothing after the last entry: nothing made ahead.
        assert!(make_ahead(&src, 4, 10, &[]).is_none());
    }

    /// Two uploads stored, the first now away: nothing is made behind it, since the
    /// second holds those entries already (and may be committed by the server); once
    /// the first is acknowledged, the second is the one that goes, under its own id.
    #[test]
    fn nothing_is_made_ahead_of_an_upload_stored_after_the_one_away() {
        let conn = replica();
        for pk in 1..=4 {
            conn.execute(
                "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
                 VALUES ('t', ?1, 'insert', NULL, '{\"a\":1}', NULL, 'u', '')",
                [pk],
            )
            .unwrap();
        }
        stored(&conn, &[("first", 2), ("second", 4)]);
        let (info, rules) = (info(), journal::CompactRules::default());
        let src = whole_journal(&conn, &info, &rules);
        assert!(make_ahead(&src, 2, 10, &[]).is_none());
        conn.execute("DELETE FROM fieldsync_upload WHERE upload_id = 'first'", [])
            .unwrap();
        let p = prepare_upload(&src, 10, &[]).unwrap().unwrap();
        assert_eq!((p.upload_id.as_str(), p.max_seq), ("second", 4));
        // With nothing stored after it, the chunk is made as before.
        assert!(make_ahead(&src, 4, 10, &[]).is_none());
        conn.execute("DELETE FROM fieldsync_upload", []).unwrap();
        assert_eq!(make_ahead(&src, 2, 10, &[]).unwrap().pending.max_seq, 4);
    }
}
