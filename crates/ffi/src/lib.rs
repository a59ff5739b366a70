//! fieldsync's device library for apps in Kotlin, Swift and Python: UniFFI bindings of
//! `fieldsync_client::Device` (docs/embedding.md). A thin layer: it converts the
//! client's types to records and enums an app's language has, turns progress into a
//! callback the app implements, and errors into [`FieldsyncError`]; the rules all
//! live in the client.
//!
//! Every call blocks the calling thread until done: an app calls from a background
//! thread (never its UI thread) and cancels from any thread with a [`CancelToken`].

use std::sync::Arc;

mod error;
mod replica;
mod types;
mod watch;

pub use error::{FieldsyncError, Result};
pub use replica::{Replica, Rows, SqlValue};
pub use types::*;
pub use watch::{PowerSource, WatchListener, WatchNote, Watcher};

uniffi::setup_scaffolding!();

/// Receives an operation's progress, on the thread that runs the operation.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    fn on_progress(&self, progress: Progress);
}

/// Cancels a running operation from any thread (a Cancel button). The operation
/// stops at its next safe point and fails with `Cancelled`: a download keeps the
/// previous replica, a send keeps what was not acknowledged. Once an operation has
/// begun its commit, the cancel waits for it and the operation's result stands. A
/// token stays cancelled: make a new one for the next operation.
#[derive(uniffi::Object, Default)]
pub struct CancelToken {
    cancel: fieldsync_client::Cancel,
}

#[uniffi::export]
impl CancelToken {
    #[uniffi::constructor]
    pub fn new() -> Self {
        CancelToken::default()
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// A device: its folder (one per device, kept by the app in its private storage)
/// and the operations on it. Operations on one folder take its lock: a second one
/// at the same time fails with `Busy` (exit code 7), whatever process runs it.
#[derive(uniffi::Object)]
pub struct Device {
    inner: Arc<fieldsync_client::Device>,
}

impl Device {
    /// The client's result, with the server's `revoked` turned into the wipe it
    /// orders (as the command line does).
    fn done<T>(&self, r: fieldsync_client::Result<T>) -> Result<T> {
        r.map_err(|e| self.inner.wiped_if_revoked(e).into())
    }
}

/// Calls `listener` (if any) with each progress report.
fn progress_fn(
    listener: &Option<Arc<dyn ProgressListener>>,
) -> impl FnMut(&fieldsync_client::Progress) + '_ {
    move |p| {
        if let Some(l) = listener {
            l.on_progress(p.into());
        }
    }
}

fn cancel_of(token: &Option<Arc<CancelToken>>) -> fieldsync_client::Cancel {
    token.as_ref().map(|t| t.cancel.clone()).unwrap_or_default()
}

#[uniffi::export]
impl Device {
    /// The device in folder `dir` (created at pairing), with the default network
    /// limits.
    #[uniffi::constructor]
    pub fn open(dir: String) -> Self {
        Device {
            inner: Arc::new(fieldsync_client::Device::new(dir)),
        }
    }

    /// Pairs the device with the server using the administrator's enrollment code;
    /// `ca_pem`: a certificate authority to trust for an `https://` server beside the
    /// system's.
    pub fn pair(
        &self,
        server: String,
        device_id: String,
        code: String,
        ca_pem: Option<String>,
    ) -> Result<()> {
        self.done(
            self.inner
                .pair_with_ca(&server, &device_id, &code, ca_pem.as_deref()),
        )
    }

    /// Logs a user in: online against the server, offline against the password
    /// kept at that user's last online login on this device.
    pub fn login(&self, user: String, password: String) -> Result<()> {
        self.done(self.inner.login(&user, &password))
    }

    /// Logs out; returns a warning to show when the server could not be told.
    pub fn logout(&self) -> Result<Option<String>> {
        self.done(self.inner.logout())
    }

    pub fn mode(&self) -> Result<Mode> {
        self.done(self.inner.mode()).map(Into::into)
    }

    pub fn set_mode(&self, mode: Mode) -> Result<()> {
        self.done(self.inner.set_mode(mode.into()))
    }

    /// The auto-sync options.
    pub fn options(&self) -> Result<Options> {
        self.done(self.inner.options()).map(Into::into)
    }

    pub fn set_options(&self, change: OptionsChange) -> Result<Options> {
        self.done(self.inner.set_options(&change.into()))
            .map(Into::into)
    }

    /// The tasks the server offers this user on this device.
    pub fn tasks(&self) -> Result<Vec<TaskSummary>> {
        let tasks = self.done(self.inner.tasks())?;
        Ok(tasks
            .into_iter()
            .map(|t| TaskSummary {
                name: t.name,
                description: t.description,
                tables: t.tables,
            })
            .collect())
    }

    /// Downloads a task's slice into a new replica and installs it; until then the
    /// previous replica is untouched, and any failure or cancel keeps it.
    pub fn download(
        &self,
        task: String,
        options: DownloadOptions,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Report> {
        let r = self.inner.download(
            &task,
            &options.into(),
            &mut progress_fn(&listener),
            &cancel_of(&cancel),
        );
        self.done(r).map(Into::into)
    }

    /// Sends the journal (the crew's changes) to the server.
    pub fn send(
        &self,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Report> {
        let r = self
            .inner
            .send(&mut progress_fn(&listener), &cancel_of(&cancel));
        self.done(r).map(Into::into)
    }

    /// Sends, then downloads the last task's changes.
    pub fn sync(
        &self,
        options: DownloadOptions,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Report> {
        let r = self.inner.sync(
            &options.into(),
            &mut progress_fn(&listener),
            &cancel_of(&cancel),
        );
        self.done(r).map(Into::into)
    }

    /// Fetches the files of the last task's slice the device lacks.
    pub fn files(
        &self,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Report> {
        let r = self
            .inner
            .files(&mut progress_fn(&listener), &cancel_of(&cancel));
        self.done(r).map(Into::into)
    }

    /// The device's state; never waits for the folder lock (a UI may poll it while
    /// an operation runs: `running` shows its progress).
    pub fn status(&self) -> Result<Status> {
        self.done(self.inner.status()).map(Into::into)
    }

    /// The unsent changes of every replica in the folder.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        let entries = self.done(self.inner.journal())?;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    /// The crew's values that sends did not keep, oldest first.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        let conflicts = self.done(self.inner.conflicts())?;
        Ok(conflicts.into_iter().map(Into::into).collect())
    }

    /// The installed replica, for the app's own queries and edits.
    pub fn replica(&self) -> Replica {
        Replica::new(self.inner.clone())
    }

    /// The auto-sync service for this device (docs/embedding.md).
    pub fn watcher(&self, power: Arc<dyn PowerSource>, poll_ms: u64) -> Watcher {
        Watcher::new(self.inner.clone(), power, poll_ms)
    }
}
