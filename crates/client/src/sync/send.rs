//! A send under the folder lock: the journal of every replica goes up in bounded
//! chunks; each acknowledged upload is applied to the replica (bases, rows that left
//! the slice) and removed from its journal.

use super::chunk::{self, Ahead, PendingUpload};
use super::*;
use crate::outbox::{self, QueuedFile};

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
    /// Sends the journal of every replica in the folder, each with its own task: those
    /// set aside for other users (and copies' unsent remainders), then the current one
    /// (under `held`, a sync's last round, its journal cannot grow meanwhile, and each
    /// step is committed while the lock stays held).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_locked(
        &self,
        st: &DeviceState,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
        held: Option<&replica::WriterHold>,
    ) -> Result<()> {
        Self::online(st)?;
        self.logged_in_with(st, held.map(|h| h.open_file()))?;
        // Set-aside replicas first: their entries were mostly made before the current
        // user's, and the main database sees the users' edits in that order.
        for path in replica::set_aside_files(&self.dir)? {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            self.send_journal(st, progress, cancel, report, None, &conn, false)?;
        }
        // Then the current replica (the report names its task).
        if replica::installed_file(&self.dir).is_some() {
            let own = match held {
                Some(_) => None,
                None => replica::open_current(&self.dir)?,
            };
            if let Some(conn) = held.map(|h| h.conn()).or(own.as_ref()) {
                self.send_journal(st, progress, cancel, report, held, conn, true)?;
            }
        }
        Ok(())
    }

    /// Sends one replica's journal, as it is now.
    #[allow(clippy::too_many_arguments)]
    fn send_journal(
        &self,
        st: &DeviceState,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
        held: Option<&replica::WriterHold>,
        conn: &Connection,
        current: bool,
    ) -> Result<()> {
        let (api, id, secret, session) = self.logged_in_with(st, held.map(|h| h.open_file()))?;
        // The journal as it is now is what this send sends; entries an app adds while
        // it runs wait for the next send.
        let seq_max: i64 = conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM fieldsync_journal",
            [],
            |r| r.get(0),
        )?;
        // Under a hold, a stored upload must be committed before it leaves.
        let durable = || held.map_or(Ok(()), |h| h.commit_and_hold());
        let info = replica::read_info_in(conn)?
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
        let total = total.max(0) as u64;
        // Journal entries per upload: the published chunk size, halved while the
        // server refuses an upload as too large (a server with smaller caps).
        let mut limit = UPLOAD_CHUNK_ENTRIES;
        // Files queued on the device for this task (`device file attach`): their
        // content first, so that the upload carrying the attachments finds it there.
        let root = &self.dir.root;
        let queued_now = || -> Result<Vec<QueuedFile>> {
            if !current {
                return Ok(Vec::new());
            }
            let all = outbox::queued(root)?;
            Ok(all.into_iter().filter(|q| q.task == info.task).collect())
        };
        // Their progress in bytes of content, before the entries'.
        let files = queued_now()?;
        let content_bytes: u64 = files.iter().map(|q| q.attachment.size).sum();
        let mut content_done = 0u64;
        for q in files {
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            let content = outbox::content(root, &q.id);
            let moved = with_retries(&self.config, progress, cancel, |progress| {
                let mut tick = |offset: u64| {
                    progress(&Progress {
                        phase: Phase::Send,
                        done: content_done + offset,
                        total: content_bytes,
                        unit: "bytes",
                        bytes: None,
                    })
                };
                api.file_upload(&creds, &q, &content, cancel, &mut tick)
            })?;
            content_done += q.attachment.size;
            report.bytes_up += moved;
        }
        // The last upload, acknowledged by the server, its acknowledgement not applied
        // here yet (it is applied while the next upload is away); and the chunk made
        // meanwhile, to go next if that acknowledgement changed none of its rows.
        let mut acks = Acks {
            conn,
            header: header.as_ref(),
            held,
            root,
            cancel,
            total,
            done: 0,
        };
        let source = chunk::Source {
            conn,
            info: &info,
            rules: &rules,
            seq_max,
        };
        let mut unapplied: Option<Acknowledged> = None;
        let mut ahead: Option<Ahead> = None;
        loop {
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            let mut queued = queued_now()?;
            let made_ahead = match ahead.take() {
                Some(next) => next.into_pending(conn, &queued)?,
                None => None,
            };
            let pending = match made_ahead {
                Some(p) => p,
                None => {
                    // Made from the journal as the last acknowledgement leaves it.
                    if let Some(a) = unapplied.take() {
                        acks.apply(a, report, progress)?;
                        // Files it carried left the queue.
                        queued = queued_now()?;
                    }
                    match chunk::prepare_upload(&source, limit, &queued)? {
                        Some(p) => p,
                        None => break,
                    }
                }
            };
            durable()?;
            // The journal entries this upload stands for: every entry up to its last
            // after the last upload's (the earlier ones leave with the earlier
            // uploads' acknowledgements).
            let after = unapplied.as_ref().map_or(i64::MIN, |a| a.pending.max_seq);
            let covers: i64 = conn.query_row(
                "SELECT count(*) FROM fieldsync_journal WHERE seq > ?1 AND seq <= ?2",
                [after, pending.max_seq],
                |r| r.get(0),
            )?;
            let covers = covers.max(0) as u64;
            progress(&Progress {
                phase: Phase::Send,
                done: acks.done,
                total: total.max(acks.done + covers),
                unit: "entries",
                bytes: Some(report.bytes_up),
            });
            // Resending is safe: the upload id makes the server apply it at most once.
            // A failure leaves the stored upload as it is, whatever the server said:
            // an earlier attempt may have been applied with its acknowledgement lost,
            // and only the server's answer to this upload id settles that. The next
            // send sends the same upload again (`device journal discard` drops it).
            let (op, trigger) = (report.op, report.trigger);
            // Away on a thread of its own (its retries' progress comes back here);
            // meanwhile the last acknowledgement is applied and the next chunk made.
            let (sent, applied, next) = std::thread::scope(|s| {
                let (tx, rx) = std::sync::mpsc::channel::<Progress>();
                let (api, creds, pending) = (&api, &creds, &pending);
                let config = &self.config;
                let away = s.spawn(move || {
                    let mut tell = |p: &Progress| {
                        let _ = tx.send(p.clone());
                    };
                    with_retries(config, &mut tell, cancel, |_| {
                        api.upload(creds, &pending.upload_id, &pending.body, op, trigger)
                    })
                });
                let applied = match unapplied.take() {
                    Some(a) => acks.apply(a, report, progress),
                    None => Ok(()),
                };
                let next = (applied.is_ok() && pending.more)
                    .then(|| chunk::make_ahead(&source, pending.max_seq, limit, &queued))
                    .flatten();
                for p in rx {
                    progress(&p);
                }
                let sent = away.join().unwrap_or_else(|_| {
                    Err(ClientError::Io("the upload's thread panicked".into()))
                });
                (sent, applied, next)
            });
            applied?;
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
            ahead = next.filter(|n| !n.touched_by(&outcome));
            unapplied = Some(Acknowledged {
                pending,
                outcome,
                covers,
            });
        }
        Ok(())
    }
}

/// An upload the server acknowledged, its acknowledgement not yet applied.
struct Acknowledged {
    pending: PendingUpload,
    outcome: UploadOutcome,
    /// Journal entries it stands for (progress).
    covers: u64,
}

/// What applying a send's acknowledgements needs, and the entries done so far.
struct Acks<'a> {
    conn: &'a Connection,
    header: Option<&'a SliceHeader>,
    held: Option<&'a replica::WriterHold>,
    root: &'a std::path::Path,
    cancel: &'a Cancel,
    total: u64,
    done: u64,
}

impl Acks<'_> {
    /// Applies an acknowledgement (its entries out of the journal, the new bases in,
    /// committed), takes the files it carried out of the queue, and counts it.
    fn apply(
        &mut self,
        a: Acknowledged,
        report: &mut Report,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<()> {
        let (conn, header, held) = (self.conn, self.header, self.held);
        self.cancel.commit(|| {
            acknowledge(conn, header, &a.pending, &a.outcome, held.is_none())?;
            held.map_or(Ok(()), |h| h.commit_and_hold())
        })?;
        // Recorded with the upload: out of the queue.
        for id in &a.pending.attached {
            outbox::remove(self.root, id)?;
        }
        self.done += a.covers;
        report.rows_up += a.pending.n_entries;
        report.bytes_up += a.pending.body.len() as u64;
        progress(&Progress {
            phase: Phase::Send,
            done: self.done,
            total: self.total.max(self.done),
            unit: "entries",
            bytes: Some(report.bytes_up),
        });
        report.conflicts += a.outcome.conflicts;
        report.not_kept.extend(a.outcome.not_kept);
        Ok(())
    }
}

/// The error for a journal entry too large to send on its own: it names the entry,
/// stays in the journal, and nothing else is sent after it (uploads go in order).
pub(super) fn too_large_entry(conn: &Connection, seq: i64, why: &str) -> ClientError {
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
    row: &fieldsync_proto::Row,
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
