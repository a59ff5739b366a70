//! fieldsync's device side, as a library a mobile app embeds: pairing, login, the
//! replica and the operations on it. The `fieldsync device` commands are a thin layer
//! over [`Device`].

mod auto;
pub mod autosync;
mod config;
mod error;
mod files;
#[doc(hidden)]
pub mod fuzz;
mod http;
mod journal;
mod outbox;
pub mod power;
mod replica;
mod revoked;
pub mod running;
mod state;
mod sync;
pub mod tls;
pub mod transport;
mod triggers;

pub use auto::WatchNote;
pub use journal::JournalEntry;
pub use outbox::QueuedFile;
pub use sync::{FilesReport, Report, SyncOp, Trigger};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fieldsync_proto::task::check_name;
use fieldsync_proto::wire::{LoginRequest, PairRequest, TaskSummary};
use serde::Serialize;

pub use config::ClientConfig;
pub use error::{ClientError, Result};
use http::{Api, Credentials};
pub use state::{DeviceConflict, DeviceDir, DeviceState, LastSync, Mode, Options};
pub use transport::Transport;

/// A change of the auto-sync options: `None` leaves an option as it is.
#[derive(Debug, Clone, Default)]
pub struct OptionsChange {
    pub auto_sync: Option<bool>,
    pub download_data: Option<bool>,
    pub download_files: Option<bool>,
}

impl OptionsChange {
    /// Changes nothing.
    pub fn is_empty(&self) -> bool {
        self.auto_sync.is_none() && self.download_data.is_none() && self.download_files.is_none()
    }
}

/// The phases of an operation, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The server prepares the slice.
    Prepare,
    /// Rows arrive and are written to the new replica.
    Transfer,
    /// The new replica is indexed, made durable and installed.
    Store,
    /// The journal goes to the server (done/total: entries).
    Send,
    /// A transient failure; attempt `done` of `total` follows after a backoff.
    Retry,
    /// Files of the slice arrive (done/total: files; `bytes` received).
    Files,
}

/// One progress report: `done` of `total` `unit`s in `phase`.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
    pub unit: &'static str,
    /// Bytes moved so far in this operation, where known (received by a download,
    /// sent by a send).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// Cancels a running operation from another thread (a signal handler, a UI button).
/// Operations check it at safe points; the commit of an operation (installing a new
/// replica, acknowledging an upload) runs in a commit zone that a cancel waits for.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    /// Held while committing; `true` once the operation committed.
    commit: Arc<std::sync::Mutex<bool>>,
}

impl Cancel {
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Runs the commit of an operation: refused (`Cancelled`) if cancelled before,
    /// never interrupted once begun.
    pub fn commit<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut committed = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_cancelled() {
            return Err(ClientError::Cancelled);
        }
        let out = f()?;
        *committed = true;
        Ok(out)
    }

    /// For a process that must stop now (a signal): waits for a running commit, then
    /// tells whether the operation had committed (then its result stands).
    pub fn wait_commit(&self) -> bool {
        *self.commit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `d`, waking early (with `Cancelled`) if cancelled.
    pub fn sleep(&self, d: std::time::Duration) -> Result<()> {
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until {
            if self.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            std::thread::sleep(
                std::time::Duration::from_millis(20).min(until - std::time::Instant::now()),
            );
        }
        Ok(())
    }
}

pub(crate) fn random_hex(n_bytes: usize) -> String {
    let mut buf = vec![0u8; n_bytes];
    getrandom::fill(&mut buf).expect("the OS random source works");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Default)]
pub struct DownloadOptions {
    pub discard_local_changes: bool,
    pub full: bool,
    pub files: bool,
}

/// `device status --json`, key for key as DESIGN.md names them.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub device_id: Option<String>,
    pub server: Option<String>,
    pub mode: Mode,
    pub user: Option<String>,
    pub task: Option<String>,
    pub replica: Option<String>,
    pub pending: u64,
    pub pending_by_user: std::collections::BTreeMap<String, u64>,
    pub last_sync: Option<LastSync>,
    pub options: Options,
    pub ticket_armed: bool,
    /// The operation running now (its published progress), or `None`.
    pub running: Option<running::Running>,
}

/// A device: its folder and the operations on it.
pub struct Device {
    dir: DeviceDir,
    config: ClientConfig,
    /// The app's HTTP stack; `None`: a fresh [`transport::UreqTransport`] per operation.
    transport: Option<Arc<dyn Transport>>,
}

fn hash_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS random source works");
    fieldsync_proto::password::hash(password, &salt)
}

fn check_verifier(password: &str, hash: &str) -> bool {
    fieldsync_proto::password::verify(password, hash)
}

impl Device {
    /// The device in folder `dir`, calling the server with the limits of `config`.
    pub fn open(dir: impl Into<std::path::PathBuf>, config: ClientConfig) -> Device {
        Device {
            dir: DeviceDir::new(dir),
            config,
            transport: None,
        }
    }

    /// The device in folder `dir`, calling the server through the app's own HTTP
    /// stack; `config`'s retries and backoff still apply, its timeouts are the
    /// transport's to keep.
    pub fn open_with_transport(
        dir: impl Into<std::path::PathBuf>,
        config: ClientConfig,
        transport: Arc<dyn Transport>,
    ) -> Device {
        Device {
            transport: Some(transport),
            ..Device::open(dir, config)
        }
    }

    /// The device in folder `dir` with the default [`ClientConfig`].
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Device {
        Device::open(dir, ClientConfig::default())
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub fn dir(&self) -> &DeviceDir {
        &self.dir
    }

    /// Takes the folder lock and finishes any operation a crash interrupted.
    pub(crate) fn begin(&self) -> Result<(state::FolderLock, DeviceState)> {
        let lock = self.dir.lock()?;
        replica::recover(&self.dir)?;
        let st = self.dir.load()?;
        Ok((lock, st))
    }

    pub(crate) fn paired(&self, st: &DeviceState) -> Result<(Api, String, String)> {
        self.paired_with(st, None)
    }

    /// [`Self::paired`], the pending entries of replica file `open.0` counted through
    /// the connection `open.1` already open on it (a sync's writer hold).
    pub(crate) fn paired_with(
        &self,
        st: &DeviceState,
        open: Option<(&std::path::Path, &rusqlite::Connection)>,
    ) -> Result<(Api, String, String)> {
        match (&st.server, &st.device_id, &st.device_secret) {
            (Some(server), Some(id), Some(secret)) => {
                // Best effort: a replica that cannot be read reports nothing.
                let api = Api::new(
                    server,
                    &self.config,
                    self.transport.as_ref(),
                    st.ca_cert.as_deref(),
                )?;
                let api = match replica::pending_total_with(&self.dir, open) {
                    Ok(pending) => api.holding(pending, st.task.as_deref()),
                    Err(_) => api,
                };
                Ok((api, id.clone(), secret.clone()))
            }
            _ => Err(ClientError::NotPaired),
        }
    }

    pub(crate) fn online(st: &DeviceState) -> Result<()> {
        match st.mode {
            Mode::Online => Ok(()),
            Mode::Offline => Err(ClientError::Offline),
        }
    }

    /// Pairs the device with the server using the administrator's enrollment code.
    pub fn pair(&self, server: &str, device_id: &str, code: &str) -> Result<()> {
        self.pair_with_ca(server, device_id, code, None)
    }

    /// [`Device::pair`], trusting also the certificate authority `ca_pem` (PEM
    /// text) for an `https://` server whose certificate the system's authorities did
    /// not sign. The folder keeps it for every later call.
    pub fn pair_with_ca(
        &self,
        server: &str,
        device_id: &str,
        code: &str,
        ca_pem: Option<&str>,
    ) -> Result<()> {
        check_name("device", device_id).map_err(ClientError::Invalid)?;
        if let Some(pem) = ca_pem {
            tls::parse_ca(pem)
                .map_err(|e| ClientError::Invalid(format!("the CA certificate: {e}")))?;
        }
        let (_lock, mut st) = self.begin()?;
        Self::online(&st)?;
        if st.device_id.is_some() {
            return Err(ClientError::Invalid(format!(
                "this folder is already paired as device `{}`; use a new folder",
                st.device_id.as_deref().unwrap_or_default()
            )));
        }
        let api = Api::new(server, &self.config, self.transport.as_ref(), ca_pem)?;
        let resp = api.pair(&PairRequest {
            device_id: device_id.to_string(),
            code: code.to_string(),
        })?;
        st.server = Some(server.trim_end_matches('/').to_string());
        st.device_id = Some(device_id.to_string());
        st.device_secret = Some(resp.device_secret);
        st.ca_cert = ca_pem.map(str::to_string);
        self.dir.save(&st)
    }

    /// Logs a user in: online against the server, offline against the verifier kept
    /// at that user's last online login on this device.
    pub fn login(&self, user: &str, password: &str) -> Result<()> {
        let (_lock, mut st) = self.begin()?;
        let (api, id, secret) = self.paired(&st)?;
        match st.mode {
            Mode::Online => {
                let creds = Credentials {
                    device_id: &id,
                    device_secret: &secret,
                    token: None,
                };
                let resp = api.login(
                    &creds,
                    &LoginRequest {
                        user: user.to_string(),
                        password: password.to_string(),
                    },
                )?;
                st.verifiers
                    .insert(resp.user.clone(), hash_verifier(password));
                // A server that issues tickets gives one with every online login; one
                // that does not leaves the device as an offline login would.
                match resp.ticket {
                    Some(ticket) => {
                        st.auto_event(autosync::Event::LoginOnline(resp.user.clone()));
                        st.ticket = Some(ticket);
                    }
                    None => st.auto_event(autosync::Event::LoginOffline(resp.user.clone())),
                }
                st.session = Some(state::Session {
                    user: resp.user,
                    token: resp.token,
                    expires_at: Some(resp.expires_at),
                });
            }
            Mode::Offline => {
                let ok = st
                    .verifiers
                    .get(user)
                    .is_some_and(|h| check_verifier(password, h));
                if !ok {
                    return Err(ClientError::Refused(format!(
                        "offline login refused for `{user}`: wrong password, or no online login of this user on this device yet"
                    )));
                }
                st.session = Some(state::Session {
                    user: user.to_string(),
                    token: String::new(),
                    expires_at: None,
                });
                st.auto_event(autosync::Event::LoginOffline(user.to_string()));
            }
        }
        // Before the session is saved: a crash never leaves the new user looking at
        // another user's slice (recovery settles it again for the saved user).
        if let Some(session) = &st.session {
            replica::settle_user(&self.dir, &session.user)?;
        }
        self.dir.save(&st)?;
        replica::set_login(&self.dir, st.session.as_ref().map(|s| s.user.as_str()))
    }

    /// Logs out: the local session goes at once; online, the server revokes it too.
    /// Returns a warning when the server could not be told.
    pub fn logout(&self) -> Result<Option<String>> {
        let (_lock, mut st) = self.begin()?;
        let Some(session) = st.session.take() else {
            return Ok(None);
        };
        // Arms the ticket when a watcher runs and auto-sync is on; otherwise nothing
        // that can reach the server as the user stays behind.
        st.auto_event(autosync::Event::Logout);
        // Writes on the replica are refused from here on, until the next login.
        replica::set_login(&self.dir, None)?;
        self.dir.save(&st)?;
        if st.mode == Mode::Online && !session.token.is_empty() {
            let (api, id, secret) = self.paired(&st)?;
            let creds = Credentials {
                device_id: &id,
                device_secret: &secret,
                token: Some(&session.token),
            };
            match api.logout(&creds) {
                Ok(()) | Err(ClientError::Refused(_)) => {}
                Err(e) => {
                    return Ok(Some(format!(
                        "the server was not told ({e}); the session expires by itself"
                    )));
                }
            }
        }
        Ok(None)
    }

    pub fn set_mode(&self, mode: Mode) -> Result<()> {
        let (_lock, mut st) = self.begin()?;
        st.mode = mode;
        st.auto_event(autosync::Event::Mode(mode));
        self.dir.save(&st)
    }

    /// The auto-sync options (read-only: never waits for the folder lock).
    pub fn options(&self) -> Result<Options> {
        Ok(self.dir.load()?.options)
    }

    /// Changes the auto-sync options named in `change` (under the folder lock, as a
    /// running operation may be saving the folder's state); returns them all.
    pub fn set_options(&self, change: &OptionsChange) -> Result<Options> {
        let (_lock, mut st) = self.begin()?;
        let o = &mut st.options;
        o.auto_sync = change.auto_sync.unwrap_or(o.auto_sync);
        o.download_data = change.download_data.unwrap_or(o.download_data);
        o.download_files = change.download_files.unwrap_or(o.download_files);
        let options = st.options.clone();
        st.auto_event(autosync::Event::Options(options.clone()));
        self.dir.save(&st)?;
        Ok(options)
    }

    /// The session's credentials, or the refusal a logged-out device gets.
    pub(crate) fn logged_in(
        &self,
        st: &DeviceState,
    ) -> Result<(Api, String, String, state::Session)> {
        self.logged_in_with(st, None)
    }

    /// [`Self::logged_in`], counting pending entries as [`Self::paired_with`] does.
    pub(crate) fn logged_in_with(
        &self,
        st: &DeviceState,
        open: Option<(&std::path::Path, &rusqlite::Connection)>,
    ) -> Result<(Api, String, String, state::Session)> {
        let (api, id, secret) = self.paired_with(st, open)?;
        match &st.session {
            Some(s) if !s.token.is_empty() => Ok((api, id, secret, s.clone())),
            Some(_) => Err(ClientError::Refused(
                "logged in offline only; log in again while online to reach the server".into(),
            )),
            None => Err(ClientError::NotLoggedIn),
        }
    }

    /// Tasks the server offers to this user on this device.
    pub fn tasks(&self) -> Result<Vec<TaskSummary>> {
        let st = self.dir.load()?;
        Self::online(&st)?;
        let (api, id, secret, session) = self.logged_in(&st)?;
        api.tasks(&Credentials {
            device_id: &id,
            device_secret: &secret,
            token: Some(&session.token),
        })
    }

    /// The mode; reads the state file only (never waits, never writes).
    pub fn mode(&self) -> Result<Mode> {
        Ok(self.dir.load()?.mode)
    }

    /// The device's state; never waits for the folder lock.
    pub fn status(&self) -> Result<Status> {
        let st = self.dir.load()?;
        let pending_by_user = replica::pending_by_user(&self.dir)?;
        // The stable path, or, while the link is gone (a copied folder, until the next
        // locked command links it again), the file that holds the replica.
        let replica = replica::current_file(&self.dir).map(|file| {
            let p = match replica::shape(&self.dir) {
                replica::Shape::Link(_) | replica::Shape::Plain => self.dir.replica_path(),
                _ => file,
            };
            std::path::absolute(&p).unwrap_or(p).display().to_string()
        });
        Ok(Status {
            device_id: st.device_id.clone(),
            server: st.server.clone(),
            mode: st.mode,
            user: st.session.as_ref().map(|s| s.user.clone()),
            task: st.task.clone(),
            replica,
            pending: pending_by_user.values().sum(),
            pending_by_user,
            last_sync: st.last_sync.clone(),
            options: st.options.clone(),
            ticket_armed: st.ticket_armed(),
            running: running::running(&self.dir),
        })
    }

    /// The crew's values that sends did not keep, oldest first (the newest
    /// `CONFLICTS_KEPT`); never waits for the folder lock.
    pub fn conflicts(&self) -> Result<Vec<state::DeviceConflict>> {
        Ok(self.dir.load()?.conflicts)
    }

    /// The installed replica, opened for an app's reads and writes through this
    /// library's own SQLite (an app need not load a second one). The replica carries
    /// its triggers: every write is checked and journaled as any SQLite client's is.
    /// Never waits for the folder lock. A later download retires the generation this
    /// connection has open (writes on it are then refused): open again after one.
    pub fn open_replica(&self) -> Result<rusqlite::Connection> {
        replica::open_current(&self.dir)?.ok_or_else(|| {
            ClientError::Invalid("no replica on this device: download a task first".into())
        })
    }
}
