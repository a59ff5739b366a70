//! The auto-sync rules as a pure state machine: which events arm, disarm, void and use
//! the ticket, and when docking starts the one automatic attempt. No I/O: the device
//! commands and the watcher feed it events and carry out the actions it returns, so
//! the rules are tested on their own (`autosync/tests.rs` runs random event
//! sequences against a reference model).
//!
//! The rules, in the words of the product: a ticket is issued at every online login
//! and kept disarmed while someone is logged in; a logout arms it only while a watcher
//! runs and auto-sync is on, and only the logging-out user's own ticket (a logout that
//! does not arm it deletes it: after a logout nothing but an armed ticket can reach the
//! server as the user); a login (online or offline) disarms it; a watcher that stops or
//! restarts voids what it armed; docking (external power, as a level: a logout while
//! already docked counts) with an armed ticket, a running watcher and auto-sync on
//! starts one attempt, which uses the ticket whatever its outcome; the attempt goes
//! online if needed and the previous mode comes back at its end.

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::state::{Mode, Options};

/// What happens to the device, as the auto-sync rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A login that reached the server: it issues a new ticket for this user.
    LoginOnline(String),
    /// A login against the offline verifier: no new ticket.
    LoginOffline(String),
    Logout,
    /// `device watch` started (a new run: a reboot, a new launch).
    WatcherStarted,
    /// `device watch` stopped.
    WatcherStopped,
    /// External power present or gone.
    Power(bool),
    /// The options as `device options` left them.
    Options(Options),
    /// The user switched the mode.
    Mode(Mode),
    /// The automatic attempt ended.
    AttemptEnded(Outcome),
}

/// How an automatic attempt ended (what `last_sync` records, with kind `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Error,
    Cancelled,
}

/// The one automatic attempt the machine asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Whose ticket the attempt uses.
    pub user: String,
    /// The device was offline: the attempt goes online first.
    pub go_online: bool,
    /// After the send, the last task's new data.
    pub download_data: bool,
    /// After the data, the task's new files (only with `download_data`).
    pub download_files: bool,
    /// The mode to come back to at the end.
    pub restore: Mode,
}

/// What the caller must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the attempt (the ticket is already used).
    Start(Attempt),
    /// The attempt ended: put the mode back and record the outcome.
    Finish { restore: Mode, outcome: Outcome },
}

/// The ticket the device holds, and which watcher run armed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub user: String,
    /// `Some(run)`: armed by that watcher run; `None`: disarmed.
    pub armed_by: Option<u64>,
}

/// The auto-sync state of one device folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoSync {
    /// The logged-in user.
    user: Option<String>,
    ticket: Option<Ticket>,
    /// The running watcher's run number.
    watcher: Option<u64>,
    /// The number the next watcher run gets.
    runs: u64,
    power: bool,
    mode: Mode,
    options: Options,
    /// The attempt in progress.
    attempt: Option<Attempt>,
}

impl AutoSync {
    pub fn new(mode: Mode, options: Options) -> AutoSync {
        AutoSync {
            user: None,
            ticket: None,
            watcher: None,
            runs: 0,
            power: false,
            mode,
            options,
            attempt: None,
        }
    }

    /// Applies one event; returns what the caller must do, if anything.
    ///
    /// Logins, logouts and mode changes take the device folder's lock, which a running
    /// attempt holds: during an attempt they are refused and change nothing here.
    pub fn on(&mut self, event: Event) -> Option<Action> {
        let busy = self.attempt.is_some();
        match event {
            Event::LoginOnline(_) | Event::LoginOffline(_) | Event::Logout | Event::Mode(_)
                if busy =>
            {
                return None;
            }
            Event::LoginOnline(user) => {
                self.ticket = Some(Ticket {
                    user: user.clone(),
                    armed_by: None,
                });
                self.user = Some(user);
            }
            Event::LoginOffline(user) => {
                if let Some(t) = &mut self.ticket {
                    t.armed_by = None;
                }
                self.user = Some(user);
            }
            Event::Logout => {
                // Nobody logged in: nothing to log out.
                let user = self.user.take()?;
                let arm = match (&self.ticket, self.watcher) {
                    (Some(t), Some(run)) if t.user == user && self.options.auto_sync => Some(run),
                    _ => None,
                };
                match arm {
                    Some(run) => self.ticket.as_mut().expect("matched").armed_by = Some(run),
                    None => self.ticket = None,
                }
            }
            Event::WatcherStarted | Event::WatcherStopped => {
                // A watcher that stops (a new one starting means the last one did)
                // cancels its attempt safely before it exits.
                let finish = self.finish(Outcome::Cancelled);
                self.void_armed();
                self.watcher = (event == Event::WatcherStarted).then_some(self.runs);
                self.runs += u64::from(self.watcher.is_some());
                if finish.is_some() {
                    return finish;
                }
            }
            Event::Power(on) => self.power = on,
            Event::Options(options) => self.options = options,
            Event::Mode(mode) => self.mode = mode,
            Event::AttemptEnded(outcome) => return self.finish(outcome),
        }
        self.start()
    }

    /// Whether a ticket is armed (`device status`).
    pub fn ticket_armed(&self) -> bool {
        self.ticket.as_ref().is_some_and(|t| t.armed_by.is_some())
    }

    pub fn ticket(&self) -> Option<&Ticket> {
        self.ticket.as_ref()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn attempt(&self) -> Option<&Attempt> {
        self.attempt.as_ref()
    }

    /// Whether external power was last seen present.
    pub fn power(&self) -> bool {
        self.power
    }

    /// The options as the rules last saw them.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The running watcher's run number, if one runs.
    pub fn watcher(&self) -> Option<u64> {
        self.watcher
    }

    /// A ticket armed by a watcher run is void once that run is over.
    fn void_armed(&mut self) {
        if self.ticket_armed() {
            self.ticket = None;
        }
    }

    fn finish(&mut self, outcome: Outcome) -> Option<Action> {
        let attempt = self.attempt.take()?;
        self.mode = attempt.restore;
        Some(Action::Finish {
            restore: attempt.restore,
            outcome,
        })
    }

    /// Docking with everything in place starts the attempt, using the ticket.
    fn start(&mut self) -> Option<Action> {
        let ready = self.attempt.is_none()
            && self.user.is_none()
            && self.power
            && self.options.auto_sync
            && self.watcher.is_some()
            && self
                .ticket
                .as_ref()
                .is_some_and(|t| t.armed_by.is_some() && t.armed_by == self.watcher);
        if !ready {
            return None;
        }
        let ticket = self.ticket.take().expect("checked");
        let attempt = Attempt {
            user: ticket.user,
            go_online: self.mode == Mode::Offline,
            download_data: self.options.download_data,
            download_files: self.options.download_data && self.options.download_files,
            restore: self.mode,
        };
        self.mode = Mode::Online;
        self.attempt = Some(attempt.clone());
        Some(Action::Start(attempt))
    }
}
