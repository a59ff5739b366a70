//! Auto-sync on the device: the rules' events from the commands that cause them, the
//! watcher (`device watch`) that feeds them power, options and mode, and the one
//! automatic attempt it runs when they say so. The rules themselves are
//! `autosync.rs`, a pure state machine.

use std::time::Duration;

use fieldsync_proto::wire::{SyncOp, Trigger};

use crate::autosync::{Action, Attempt, AutoSync, Event, Outcome};
use crate::error::{ClientError, Result};
use crate::http::Credentials;
use crate::power::PowerSource;
use crate::state::{self, DeviceState};
use crate::sync::Report;
use crate::{Cancel, Device, DownloadOptions, Progress, replica};

impl DeviceState {
    /// The auto-sync rules' state, made from the folder's mode and options the
    /// first time.
    fn rules(&mut self) -> &mut AutoSync {
        let (mode, options) = (self.mode, self.options.clone());
        self.autosync
            .get_or_insert_with(|| AutoSync::new(mode, options))
    }

    /// Feeds the rules one event a command caused (a login, a logout, a mode or an
    /// option change). A command never starts the attempt: it takes power as absent,
    /// and the watcher asserts power again at its next poll, so a logout while docked
    /// still counts (power is a level).
    pub(crate) fn auto_event(&mut self, event: Event) {
        let rules = self.rules();
        rules.on(Event::Power(false));
        rules.on(event);
        self.drop_unheld_ticket();
    }

    /// The ticket's secret goes with the ticket.
    fn drop_unheld_ticket(&mut self) {
        if self.autosync.as_ref().is_none_or(|r| r.ticket().is_none()) {
            self.ticket = None;
        }
    }

    /// Whether an armed ticket waits for docking (`device status`).
    pub(crate) fn ticket_armed(&self) -> bool {
        self.autosync.as_ref().is_some_and(|r| r.ticket_armed())
    }
}

/// What the watcher tells its caller.
#[derive(Debug, Clone)]
pub enum WatchNote {
    /// The watcher's run began: from now on a logout arms the ticket.
    Watching,
    /// External power came or went.
    Power(bool),
    /// The automatic attempt starts.
    Started(Attempt),
    /// The attempt ended (its `last_sync` is recorded).
    Ended(Outcome, String),
}

impl Device {
    /// The background service: polls `power` every `poll` and runs the one automatic
    /// attempt when the rules say so, until `stop` is cancelled. `attempt_cancel`
    /// makes the cancel of each attempt (a UI's Cancel, `device cancel`, and `stop`
    /// itself all cancel it safely). A folder another command holds is tried again at
    /// the next poll; a server that is down ends the attempt red, not the watcher.
    pub fn watch(
        &self,
        power: &dyn PowerSource,
        poll: Duration,
        stop: &Cancel,
        attempt_cancel: &mut dyn FnMut() -> Cancel,
        progress: &mut dyn FnMut(&Progress),
        notes: &mut dyn FnMut(&WatchNote),
    ) -> Result<()> {
        self.watcher_event(Event::WatcherStarted, stop)?;
        notes(&WatchNote::Watching);
        let mut last_power = None;
        let watched = loop {
            if stop.is_cancelled() {
                break Ok(());
            }
            let present = power.external().unwrap_or(false);
            let announce = last_power != Some(present);
            match self.poll_once(present, announce, stop, attempt_cancel, progress, notes) {
                Ok(()) => last_power = Some(present),
                // A command holds the folder: the next poll tries again.
                Err(ClientError::Busy(_)) => {}
                Err(e) => break Err(e),
            }
            if stop.sleep(poll).is_err() {
                break Ok(());
            }
        };
        if let Err(wiped @ ClientError::Wiped { .. }) = watched {
            // A wiped folder keeps no rules to disarm.
            return Err(wiped);
        }
        // The watcher's run ends: what it armed is void.
        let stopped = self.watcher_event(Event::WatcherStopped, &Cancel::default());
        watched.and(stopped)
    }

    /// One look: brings the rules up to date with power, options and mode and runs
    /// the attempt if they start it. The folder lock is taken only when the rules
    /// must change (the watcher stays out of the crew's way); `announce` tells the
    /// power seen, once it is in the rules.
    fn poll_once(
        &self,
        present: bool,
        announce: bool,
        stop: &Cancel,
        attempt_cancel: &mut dyn FnMut() -> Cancel,
        progress: &mut dyn FnMut(&Progress),
        notes: &mut dyn FnMut(&WatchNote),
    ) -> Result<()> {
        if Self::pending_events(&mut self.dir.load()?, present).is_empty() {
            if announce {
                notes(&WatchNote::Power(present));
            }
            return Ok(());
        }
        let lock = self.dir.lock()?;
        let mut st = self.dir.load()?;
        let events = Self::pending_events(&mut st, present);
        let secret = st.ticket.clone();
        let mut start = None;
        for e in events {
            if let Some(Action::Start(a)) = st.rules().on(e) {
                start = Some(a);
            }
        }
        st.drop_unheld_ticket();
        // The ticket leaves the device before the server sees it: single use.
        self.dir.save(&st)?;
        let (Some(attempt), Some(secret)) = (start, secret) else {
            // Let go before saying so: whoever acts on the note finds the folder free.
            drop(lock);
            if announce {
                notes(&WatchNote::Power(present));
            }
            return Ok(());
        };
        if announce {
            notes(&WatchNote::Power(present));
        }
        notes(&WatchNote::Started(attempt.clone()));
        replica::recover(&self.dir)?;
        let cancel = attempt_cancel();
        if stop.is_cancelled() {
            cancel.cancel();
        }
        let result = self.attempt(&st, &attempt, &secret, progress, &cancel);
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(ClientError::Cancelled) => Outcome::Cancelled,
            Err(_) => Outcome::Error,
        };
        // Nobody is logged in: whatever replica the attempt left refuses edits.
        replica::set_login(&self.dir, None)?;
        let mut st = self.dir.load()?;
        if let Some(Action::Finish { restore, .. }) = st.rules().on(Event::AttemptEnded(outcome)) {
            st.mode = restore;
        }
        self.dir.save(&st)?;
        drop(lock);
        let message = st.last_sync.as_ref().map(|l| l.message.clone());
        notes(&WatchNote::Ended(outcome, message.unwrap_or_default()));
        // The office revoked this device: its data goes now, and the watcher ends
        // (nothing is left to synchronize).
        match result {
            Err(e) if e.revoked().is_some() => Err(self.wiped_if_revoked(e)),
            _ => Ok(()),
        }
    }

    /// The events that bring the rules up to date with the power seen and the folder's
    /// options and mode.
    fn pending_events(st: &mut DeviceState, present: bool) -> Vec<Event> {
        let (mode, options) = (st.mode, st.options.clone());
        let rules = st.rules();
        let mut events = Vec::new();
        if rules.power() != present {
            events.push(Event::Power(present));
        }
        if *rules.options() != options {
            events.push(Event::Options(options));
        }
        if rules.mode() != mode {
            events.push(Event::Mode(mode));
        }
        events
    }

    /// The automatic attempt, under the folder lock the caller holds: the ticket
    /// redeemed for a session that may only send and download the last task; send;
    /// with `download_data` the task's changes, and with `download_files` then its
    /// files. Online whatever the saved mode (the
    /// mode in the folder is left as it was). Recorded as `last_sync` with kind auto.
    fn attempt(
        &self,
        st: &DeviceState,
        attempt: &Attempt,
        ticket: &str,
        progress: &mut dyn FnMut(&Progress),
        cancel: &Cancel,
    ) -> Result<Report> {
        let op = if attempt.download_data {
            SyncOp::Sync
        } else {
            SyncOp::Send
        };
        let mut publish = crate::running::Publisher::start(&self.dir, op, Trigger::Auto);
        let progress = &mut publish.forwarding(progress);
        self.recorded_as(op, Trigger::Auto, |report| {
            let (api, id, secret) = self.paired(st)?;
            let creds = Credentials {
                device_id: &id,
                device_secret: &secret,
                token: None,
            };
            let redeemed = api.redeem(&creds, ticket)?;
            let mut online = st.clone();
            online.mode = state::Mode::Online;
            online.session = Some(state::Session {
                user: redeemed.user,
                token: redeemed.token,
                expires_at: Some(redeemed.expires_at),
            });
            let hold = replica::hold_writers(&self.dir)?;
            self.send_locked(&online, progress, cancel, report, hold.as_ref())?;
            if attempt.download_data {
                let task = redeemed
                    .task
                    .or_else(|| st.task.clone())
                    .ok_or(ClientError::NoTask)?;
                self.download_locked(
                    &online,
                    &task,
                    &DownloadOptions::default(),
                    progress,
                    cancel,
                    report,
                    hold,
                )?;
                // The seed's "in addition to downloading data": files only after it.
                if attempt.download_files {
                    self.files_after_data(&online, &task, progress, cancel, report)?;
                }
            }
            Ok(())
        })
    }

    /// Applies a watcher's start or stop under the folder lock, waiting for a command
    /// that holds it (up to a minute; a stop that cannot wait gives up sooner).
    fn watcher_event(&self, event: Event, stop: &Cancel) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.dir.lock() {
                Ok(_lock) => {
                    let mut st = self.dir.load()?;
                    st.rules().on(event);
                    st.drop_unheld_ticket();
                    return self.dir.save(&st);
                }
                Err(ClientError::Busy(_)) if std::time::Instant::now() < deadline => {
                    stop.sleep(Duration::from_millis(100))?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
