//! A download under the folder lock: fetch the slice (with retries), build a new
//! generation, back up the journal and install it.

use super::*;

impl Device {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn download_locked(
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
            let body = api.download(&creds, task, report.op, report.trigger)?;
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
}
