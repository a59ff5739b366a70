//! Auto-sync for an app: the client's watcher (`Device::watch`, the service behind
//! `device watch`) run on a thread of the app's, fed power by the app. The rules
//! themselves (the ticket, docking, the one automatic attempt) are the client's pure
//! state machine (`fieldsync_client::autosync`); logins, logouts, the mode and the
//! options feed it through the `Device` calls, power through [`PowerSource`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldsync_client::Cancel;

use crate::Progress;
use crate::error::Result;

/// Tells whether the device has external power now (it sits in its dock): on
/// Android, say, the last `ACTION_POWER_CONNECTED`/`DISCONNECTED` seen. Called from
/// the watcher's thread at every poll.
#[uniffi::export(with_foreign)]
pub trait PowerSource: Send + Sync {
    fn external(&self) -> bool;
}

/// What the watcher tells the app.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum WatchNote {
    /// The watcher runs: from now on a logout with auto-sync on arms the ticket.
    Watching,
    /// External power came or went.
    Power { present: bool },
    /// The automatic attempt starts, as `user`.
    Started {
        user: String,
        go_online: bool,
        download_data: bool,
        download_files: bool,
    },
    /// The attempt ended: `outcome` is `ok`, `error` or `cancelled`; `message` is
    /// what to show the crew (also the status's `last_sync`).
    Ended { outcome: String, message: String },
}

/// Receives the watcher's notes and its attempt's progress, on the watcher's thread.
#[uniffi::export(with_foreign)]
pub trait WatchListener: Send + Sync {
    fn on_note(&self, note: WatchNote);
    fn on_progress(&self, progress: Progress);
}

/// The auto-sync service of one device (`Device.watcher`): `run` blocks its thread
/// until `stop`; at most one per device folder.
#[derive(uniffi::Object)]
pub struct Watcher {
    device: Arc<fieldsync_client::Device>,
    power: Arc<dyn PowerSource>,
    poll: Duration,
    stop: Cancel,
    /// The running attempt's cancel (a new one per attempt).
    attempt: Mutex<Cancel>,
}

impl Watcher {
    pub(crate) fn new(
        device: Arc<fieldsync_client::Device>,
        power: Arc<dyn PowerSource>,
        poll_ms: u64,
    ) -> Watcher {
        Watcher {
            device,
            power,
            poll: Duration::from_millis(poll_ms.max(10)),
            stop: Cancel::default(),
            attempt: Mutex::new(Cancel::default()),
        }
    }
}

/// The app's power source as the client's.
struct Power(Arc<dyn PowerSource>);

impl fieldsync_client::power::PowerSource for Power {
    fn external(&self) -> std::io::Result<bool> {
        Ok(self.0.external())
    }
}

#[uniffi::export]
impl Watcher {
    /// Runs until `stop` (call it from a background thread). A stop voids a ticket
    /// this run armed and cancels a running attempt safely.
    pub fn run(&self, listener: Arc<dyn WatchListener>) -> Result<()> {
        let r = self.device.watch(
            &Power(self.power.clone()),
            self.poll,
            &self.stop,
            &mut || {
                let fresh = Cancel::default();
                *self.attempt.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                fresh
            },
            &mut |p| listener.on_progress(p.into()),
            &mut |note| listener.on_note(note_of(note)),
        );
        r.map_err(Into::into)
    }

    /// Stops `run` (from any thread).
    pub fn stop(&self) {
        self.stop.cancel();
        self.cancel_attempt();
    }

    /// Cancels the running automatic attempt, if any (the crew's Cancel).
    pub fn cancel_attempt(&self) {
        self.attempt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
    }
}

fn note_of(note: &fieldsync_client::WatchNote) -> WatchNote {
    use fieldsync_client::WatchNote as N;
    match note {
        N::Watching => WatchNote::Watching,
        N::Power(present) => WatchNote::Power { present: *present },
        N::Started(a) => WatchNote::Started {
            user: a.user.clone(),
            go_online: a.go_online,
            download_data: a.download_data,
            download_files: a.download_files,
        },
        N::Ended(outcome, message) => WatchNote::Ended {
            outcome: crate::error::json_word(outcome),
            message: message.clone(),
        },
    }
}
