//! A download under the folder lock: fetch the slice (with retries), build a new
//! generation, back up the journal and install it.

use std::io::Read;

use fieldsync_proto::wire::FullReason;

use super::*;
use crate::http::DownloadFrom;

impl Device {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn download_locked(
        &self,
        st: &DeviceState,
        task: &str,
        opts: &DownloadOptions,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
        hold: Option<replica::WriterHold>,
    ) -> Result<()> {
        check_name("task", task).map_err(ClientError::Invalid)?;
        Self::online(st)?;
        let (api, id, secret, session) =
            self.logged_in_with(st, hold.as_ref().map(|h| h.open_file()))?;
        // Local changes refuse the download before anything is fetched; they are
        // checked again under the replica's write lock at the install. A sync brings
        // that lock held from its start; a plain download takes it only for the
        // install, so a slow server never blocks an app's writes.
        let early_hold = hold;
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
                let backup = journal::write_backup(&self.dir.root, &entries)?;
                // Files queued on the device go with the changes they belong to.
                crate::outbox::move_to_backup(&self.dir.root, &backup)?;
                report.backup = Some(backup);
                journal_max_seq = last.seq;
            }
        }
        // Where the replica stands, so the server may send only what changed since:
        // not when the user asks for the whole slice or local changes are discarded
        // (the database is then replaced, as the user asked).
        let from = if opts.full || journal_max_seq > 0 {
            DownloadFrom::Full
        } else {
            let position = match early_hold.as_ref().map(|h| h.conn()).or(plain.as_ref()) {
                Some(conn) => replica::position(conn)?,
                None => None,
            };
            position.map_or(DownloadFrom::Nothing, DownloadFrom::Replica)
        };
        // The keys the replica used, whatever the download: a replica replaced, or
        // changes discarded, never give a key again.
        let keys_used = match early_hold.as_ref().map(|h| h.conn()).or(plain.as_ref()) {
            Some(conn) => replica::keys_used(conn)?,
            None => Vec::new(),
        };
        drop(plain);
        let creds = Credentials {
            device_id: &id,
            device_secret: &secret,
            token: Some(&session.token),
        };
        let mut bytes_down = 0;
        let mut hold = early_hold;
        // The task this device holds, refused now: the office deleted or unassigned
        // it. Said plainly, with what becomes of the local data.
        let held_task_gone = |e: ClientError| match e {
            ClientError::Refused(m)
                if st.task.as_deref() == Some(task)
                    && fieldsync_proto::wire::is_not_assigned(&m) =>
            {
                ClientError::Refused(format!(
                    "the task `{task}` this device holds is no longer assigned to this user and \
                     device (the office deleted or unassigned it; ask the office): {m}. The local \
                     data stays as it is; changes not sent stay on this device (`device \
                     journal`), and those the server kept aside are listed by `device conflicts`"
                ))
            }
            e => e,
        };
        let received = with_retries(&self.config, progress, cancel, |progress| {
            progress(&Progress {
                phase: Phase::Prepare,
                done: 0,
                total: 1,
                unit: "steps",
                bytes: None,
            });
            let body = api.download(&creds, task, report.op, report.trigger, &from, &keys_used)?;
            let counted = std::rc::Rc::new(std::cell::Cell::new(0));
            let mut counting = replica::CountingReader {
                inner: body,
                n_bytes: counted.clone(),
            };
            // Each report says how many bytes arrived so far.
            let mut with_bytes = |p: &Progress| {
                progress(&Progress {
                    bytes: Some(counted.get()),
                    ..p.clone()
                })
            };
            let received = self.receive(&mut counting, &from, &mut hold, &mut with_bytes, cancel);
            bytes_down += counted.get();
            received
        })
        .map_err(held_task_gone)?;
        report.bytes_down += bytes_down;
        let (header, applied) = match received {
            Received::Whole(built) => {
                // Hold app writers off for the install: a write from here on would land
                // in a replica about to be replaced; it waits, then fails busy, and is
                // never lost.
                let installed = cancel.commit(|| {
                    let hold = match hold.take() {
                        Some(hold) => Some(hold),
                        None => replica::hold_writers(&self.dir)?,
                    };
                    replica::install(&self.dir, &built, hold, journal_max_seq)
                });
                if let Err(e) = installed {
                    replica::recover(&self.dir)?;
                    return Err(e);
                }
                report.rows_down = built.rows_per_table.iter().sum();
                report.full = true;
                report.full_reason = Some(
                    built
                        .header
                        .full_reason
                        .unwrap_or(FullReason::NoCursor)
                        .to_string(),
                );
                report.tables = built
                    .header
                    .tables
                    .iter()
                    .map(|t| t.name.clone())
                    .zip(built.rows_per_table.iter().copied())
                    .collect();
                (built.header, None)
            }
            Received::Delta(header, applied) => {
                let hold = hold.take().expect("a delta is applied under a hold");
                cancel.commit(|| hold.commit())?;
                report.rows_down = applied.rows_per_lane.iter().sum();
                report.full = false;
                report.full_reason = None;
                (header, Some(applied))
            }
        };
        progress(&Progress {
            phase: Phase::Store,
            done: 3,
            total: 3,
            unit: "steps",
            bytes: None,
        });
        report.task = Some(header.task.clone());
        report.delta = applied;
        Ok(())
    }

    /// Takes a download's stream: the whole slice into a new generation, or a delta
    /// applied to the installed replica under `hold` (taken here when the caller holds
    /// none), its transaction left open for the caller to commit.
    fn receive<R: Read>(
        &self,
        stream: &mut replica::CountingReader<R>,
        from: &DownloadFrom,
        hold: &mut Option<replica::WriterHold>,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
    ) -> Result<Received> {
        let (mut reader, header) = replica::open_stream(stream)?;
        let Some(since) = header.since else {
            let built = replica::build(&self.dir, &mut reader, header, progress, cancel)?;
            return Ok(Received::Whole(built));
        };
        match from {
            DownloadFrom::Replica(p) if p.cursor == since => {}
            _ => {
                return Err(ClientError::Stream(
                    "the server sent changes since a cursor this replica does not have".into(),
                ));
            }
        }
        if hold.is_none() {
            *hold = replica::hold_writers(&self.dir)?;
        }
        let held = hold
            .as_ref()
            .ok_or_else(|| ClientError::Replica("no replica to apply the changes to".into()))?;
        let applied = replica::apply_delta(held, &mut reader, &header, progress, cancel)?;
        Ok(Received::Delta(header, applied))
    }
}

/// A download's stream, taken.
enum Received {
    Whole(replica::Built),
    Delta(SliceHeader, replica::Applied),
}
