//! Fetching the files of the last task's slice under the folder lock: each one the
//! device lacks (by SHA-256) streamed into `files/partial/`, resumed there with a range
//! request after an interruption or a cancel, verified, then renamed into
//! `files/objects/`; the by-row view made to match (`crate::files`).

use std::fs;
use std::io::{Read, Write};

use super::*;
use crate::files::{FilesDir, sha256_file};
use crate::http::Api;

/// Bytes read from the network at a time.
const BLOCK_BYTES: usize = 64 * 1024;

impl Device {
    /// `device files`: the files of the last task's slice that the device lacks;
    /// those of rows that left the slice are removed.
    pub fn files(&self, progress: &mut dyn FnMut(&Progress), cancel: &Cancel) -> Result<Report> {
        let (_lock, st) = self.begin()?;
        let mut publish = Publisher::start(&self.dir, SyncOp::Files, Trigger::Manual);
        let progress = &mut publish.forwarding(progress);
        self.recorded(SyncOp::Files, |r| {
            let task = st.task.clone().ok_or(ClientError::NoTask)?;
            r.task = Some(task.clone());
            self.files_locked(&st, &task, progress, cancel, r)
        })
    }

    /// The files part of an operation, after its data part completed: a cancel here
    /// keeps the data (`FilesCancelled`).
    pub(crate) fn files_after_data(
        &self,
        st: &DeviceState,
        task: &str,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
    ) -> Result<()> {
        match self.files_locked(st, task, progress, cancel, report) {
            Err(ClientError::Cancelled) => Err(ClientError::FilesCancelled),
            Err(e) => Err(ClientError::FilesFailed(Box::new(e))),
            Ok(()) => Ok(()),
        }
    }

    pub(crate) fn files_locked(
        &self,
        st: &DeviceState,
        task: &str,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
        report: &mut Report,
    ) -> Result<()> {
        check_name("task", task).map_err(ClientError::Invalid)?;
        Self::online(st)?;
        let (api, id, secret, session) = self.logged_in(st)?;
        let creds = Credentials {
            device_id: &id,
            device_secret: &secret,
            token: Some(&session.token),
        };
        let dir = FilesDir::new(&self.dir.root)?;
        let list = with_retries(&self.config, progress, cancel, |_| api.files(&creds, task))?;
        let mut missing: Vec<(&str, u64)> = Vec::new();
        for f in &list {
            if !missing.iter().any(|(s, _)| *s == f.sha256) && !dir.object(&f.sha256).exists() {
                if !fieldsync_proto_is_sha256(&f.sha256) {
                    return Err(ClientError::Server {
                        code: ErrorCode::Internal,
                        message: format!("bad file list: `{}` is not a SHA-256", f.sha256),
                    });
                }
                missing.push((&f.sha256, f.size));
            }
        }
        report.files.in_slice = list.len() as u64;
        let n_files = missing.len() as u64;
        let mut moved = 0u64;
        let trigger = report.trigger;
        for (i, (sha256, size)) in missing.iter().enumerate() {
            if cancel.is_cancelled() {
                report.bytes_down += moved;
                report.files.bytes += moved;
                return Err(ClientError::Cancelled);
            }
            let fetched = with_retries(&self.config, progress, cancel, |progress| {
                let mut tick = |n: u64| {
                    progress(&Progress {
                        phase: Phase::Files,
                        done: i as u64,
                        total: n_files,
                        unit: "files",
                        bytes: Some(n),
                    })
                };
                fetch_one(
                    &api, &creds, &dir, sha256, *size, trigger, cancel, &mut moved, &mut tick,
                )
            });
            if let Err(e) = fetched {
                report.bytes_down += moved;
                report.files.bytes += moved;
                return Err(e);
            }
            report.files.fetched += 1;
        }
        report.bytes_down += moved;
        report.files.bytes += moved;
        progress(&Progress {
            phase: Phase::Files,
            done: n_files,
            total: n_files,
            unit: "files",
            bytes: Some(moved),
        });
        dir.settle(&list)
    }
}

fn fieldsync_proto_is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One file into `files/partial/`, from where an earlier attempt stopped, then
/// verified and renamed into `files/objects/`. `moved` counts the bytes received.
#[allow(clippy::too_many_arguments)]
fn fetch_one(
    api: &Api,
    creds: &Credentials<'_>,
    dir: &FilesDir,
    sha256: &str,
    size: u64,
    trigger: Trigger,
    cancel: &Cancel,
    moved: &mut u64,
    tick: &mut dyn FnMut(u64),
) -> Result<()> {
    let partial = dir.partial(sha256);
    let mut have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if have > size {
        fs::remove_file(&partial)?;
        have = 0;
    }
    if have < size || size == 0 {
        let resp = api.file_fetch(creds, sha256, have, trigger)?;
        let mut out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)?;
        if resp.status != 206 {
            // The whole content comes: start the partial file over.
            out.set_len(0)?;
        }
        let mut body = resp.body;
        let mut buf = vec![0u8; BLOCK_BYTES];
        loop {
            if cancel.is_cancelled() {
                out.flush()?;
                return Err(ClientError::Cancelled);
            }
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    out.flush()?;
                    return Err(ClientError::Stream(format!(
                        "file {sha256}: the transfer broke off: {e}"
                    )));
                }
            };
            out.write_all(&buf[..n])?;
            *moved += n as u64;
            tick(*moved);
        }
        out.sync_all()?;
    }
    if sha256_file(&partial)? != sha256 {
        fs::remove_file(&partial)?;
        return Err(ClientError::Stream(format!(
            "file {sha256}: the content received does not match its SHA-256"
        )));
    }
    fs::rename(&partial, dir.object(sha256))?;
    if let Ok(d) = fs::File::open(dir.root.join("objects")) {
        let _ = d.sync_all();
    }
    Ok(())
}
