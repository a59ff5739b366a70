//! The sync tab's state and what keys, clicks, the device's status and the worker's
//! answers do to it. No terminal and no IO here: what should happen on the device is
//! queued as [`Request`]s that the runner (`ui/mod.rs`) carries out.

use std::time::Instant;

use fieldsync_client::running::Running;
use fieldsync_client::{
    ClientError, Mode, OptionsChange, Progress, Report, Status, SyncOp, Trigger,
};
use fieldsync_proto::wire::TaskSummary;

use super::progress::{ProgressWin, RunState};

/// What the UI asks of the device (carried out by the runner, off the UI thread).
#[derive(Debug)]
pub enum Request {
    Login {
        user: String,
        password: String,
    },
    Logout,
    SetMode(Mode),
    SetOptions(OptionsChange),
    Tasks,
    Download {
        task: String,
        discard: bool,
    },
    Send,
    Sync,
    /// Cancel the operation this UI runs.
    CancelOwn,
    /// Cancel the operation another process runs (as `device cancel` does).
    CancelOther(Running),
    /// The crew closed the window of the red automatic result recorded at this time:
    /// remember it, so that the next launch does not open it again.
    RememberClosed(fieldsync_proto::time::Timestamp),
}

/// The worker's answers.
#[derive(Debug)]
pub enum Reply {
    /// A short request ended: a message to show, or the error.
    Done(Result<String, String>),
    Tasks(Result<Vec<TaskSummary>, String>),
    Progress(Progress),
    Finished(SyncOp, Result<Report, ClientError>),
}

/// The parts of the sync tab that take the focus, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Login,
    Mode,
    Download,
    Send,
    Sync,
    AutoSync,
    DownloadData,
    DownloadFiles,
    Quit,
}

impl Item {
    pub const ALL: [Item; 9] = [
        Item::Login,
        Item::Mode,
        Item::Download,
        Item::Send,
        Item::Sync,
        Item::AutoSync,
        Item::DownloadData,
        Item::DownloadFiles,
        Item::Quit,
    ];

    /// The letter that presses it (shown on screen).
    pub fn key(self) -> char {
        match self {
            Item::Login => 'l',
            Item::Mode => 'm',
            Item::Download => 'd',
            Item::Send => 's',
            Item::Sync => 'y',
            Item::AutoSync => 'a',
            Item::DownloadData => 't',
            Item::DownloadFiles => 'f',
            Item::Quit => 'q',
        }
    }
}

/// What a click landed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    Item(Item),
    /// A window's button or field, by its focus index.
    Button(usize),
    /// A row of the task picker.
    Row(usize),
}

/// The window over the sync tab, if any (one at a time).
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    None,
    /// Focus: 0 user, 1 password, 2 Log in, 3 Back.
    Login {
        user: String,
        password: String,
        focus: usize,
    },
    /// `tasks` is `None` while they are asked of the server.
    Tasks {
        tasks: Option<Vec<TaskSummary>>,
        selected: usize,
    },
    /// What a send would send; focus: 0 Execute, 1 Back.
    Send {
        focus: usize,
    },
    /// A download would discard local changes; focus: 0 discard and download, 1 keep.
    Discard {
        task: String,
        unsent: u64,
        focus: usize,
    },
    Progress(ProgressWin),
    /// A request failed; stays until closed.
    Error {
        title: String,
        message: String,
    },
}

/// A line in the footer about the last short request.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

pub struct App {
    pub status: Option<Status>,
    /// Why the status could not be read, when it could not.
    pub status_error: Option<String>,
    pub focus: Item,
    pub window: Window,
    /// A short request under way (its description).
    pub busy: Option<&'static str>,
    pub notice: Option<Notice>,
    /// The crew's values the office did not keep, from this UI's last send or
    /// synchronize, one line each (shown under the last result).
    pub conflicts: Vec<String>,
    /// Colours (off with NO_COLOR: markers and reverse video carry the meaning).
    pub color: bool,
    /// The device folder (where the discard backup is written).
    pub dir: String,
    pub quit: bool,
    pub requests: Vec<Request>,
    /// This process (its own operation shows in running.json too).
    own_pid: u32,
    /// An operation of this UI runs in the worker.
    pub own_op: bool,
    /// The red automatic result whose window the crew closed (its time), from an
    /// earlier launch or this one.
    pub closed_auto: Option<fieldsync_proto::time::Timestamp>,
    /// The task of the download under way (asked again if it meets new changes).
    last_task: Option<String>,
}

/// The title of the automatic synchronization's result window.
const AUTO_TITLE: &str = "Automatic synchronization";

impl App {
    pub fn new(dir: String, color: bool, own_pid: u32) -> App {
        App {
            status: None,
            status_error: None,
            focus: Item::Download,
            window: Window::None,
            busy: None,
            notice: None,
            conflicts: Vec::new(),
            color,
            dir,
            quit: false,
            requests: Vec::new(),
            own_pid,
            own_op: false,
            last_task: None,
            closed_auto: None,
        }
    }

    /// The automatic synchronization's red result, if it is the last one.
    fn red_auto_result(&self) -> Option<&fieldsync_client::LastSync> {
        self.status
            .as_ref()
            .and_then(|s| s.last_sync.as_ref())
            .filter(|l| l.kind == Trigger::Auto && l.result != "ok")
    }

    /// Closes an error or ended progress window; one that showed the automatic
    /// synchronization's red result stays closed across launches.
    pub(super) fn close_result_window(&mut self) {
        let auto = match &self.window {
            Window::Error { title, .. } => title.starts_with(AUTO_TITLE),
            Window::Progress(w) => w.kind == Trigger::Auto,
            _ => false,
        };
        self.window = Window::None;
        if let Some(at) = self.red_auto_result().map(|l| l.at)
            && auto
            && self.closed_auto != Some(at)
        {
            self.closed_auto = Some(at);
            self.requests.push(Request::RememberClosed(at));
        }
    }

    fn logged_in(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.user.is_some())
    }

    /// The current user's changes not sent (what a download would discard).
    pub(super) fn own_pending(&self) -> u64 {
        self.status
            .as_ref()
            .and_then(|s| s.user.as_ref().and_then(|u| s.pending_by_user.get(u)))
            .copied()
            .unwrap_or(0)
    }

    /// A new reading of the device's status: shows an operation another process runs
    /// (the watcher's automatic synchronization) and how it ended.
    pub fn on_status(&mut self, status: Result<Status, String>, now: Instant) {
        let first = self.status.is_none() && self.status_error.is_none();
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                self.status_error = Some(e);
                return;
            }
        };
        self.status_error = None;
        let running = status.running.clone().filter(|r| r.pid != self.own_pid);
        let last = status.last_sync.clone();
        self.status = Some(status);
        if first
            && let Some(l) = &last
            && l.kind == Trigger::Auto
            && l.result != "ok"
            && running.is_none()
            && self.closed_auto != Some(l.at)
        {
            // A red automatic result stays as an open window until closed here.
            self.window = Window::Error {
                title: format!("{AUTO_TITLE}: {}", l.result),
                message: l.message.clone(),
            };
        }
        if self.own_op {
            return;
        }
        match (&mut self.window, running) {
            (Window::Progress(w), Some(r)) if w.shows(&r) && w.running() => w.observe(&r, now),
            (Window::Progress(w), Some(r)) if w.shows(&r) => {}
            (_, Some(r)) => self.window = Window::Progress(ProgressWin::other(&r, now)),
            (Window::Progress(w), None) if w.running() => {
                let started = w.other.as_ref().map(|o| o.started);
                // The result is recorded before the progress goes; an older one means
                // this reading came in between: the next one tells.
                let Some(l) = last.filter(|l| started.is_some_and(|s| l.at >= s)) else {
                    return;
                };
                if l.result == "ok" {
                    self.window = Window::None;
                } else {
                    w.state = RunState::Ended {
                        cancelled: l.result == "cancelled",
                        message: l.message,
                    };
                }
            }
            _ => {}
        }
    }

    pub fn on_reply(&mut self, reply: Reply, now: Instant) {
        match reply {
            Reply::Done(result) => {
                let what = self.busy.take().unwrap_or("the request");
                match result {
                    Ok(text) => self.notice = Some(Notice { ok: true, text }),
                    Err(message) => self.fail(&format!("Failed: {what}"), message),
                }
            }
            Reply::Tasks(Ok(tasks)) => {
                if let Window::Tasks { tasks: t, .. } = &mut self.window {
                    *t = Some(tasks);
                }
            }
            Reply::Tasks(Err(message)) => self.fail("Download", message),
            Reply::Progress(p) => {
                if let Window::Progress(w) = &mut self.window {
                    w.report(&p, now);
                }
            }
            Reply::Finished(op, result) => {
                self.own_op = false;
                let state = match result {
                    Ok(report) => {
                        self.window = Window::None;
                        if op != SyncOp::Download {
                            self.conflicts = report.not_kept.iter().map(not_kept_short).collect();
                        }
                        let text = match &report.backup {
                            Some(b) => format!(
                                "{} done; local changes backed up to {}",
                                op_title(op),
                                b.display()
                            ),
                            None => format!("{} done", op_title(op)),
                        };
                        self.notice = Some(Notice { ok: true, text });
                        return;
                    }
                    Err(ClientError::LocalChanges { unsent }) => {
                        // Changes made since the download was asked for.
                        let task = match &self.window {
                            Window::Progress(_) => self.last_task.take(),
                            _ => None,
                        };
                        if let Some(task) = task {
                            self.window = Window::Discard {
                                task,
                                unsent,
                                focus: 1,
                            };
                            return;
                        }
                        RunState::Ended {
                            cancelled: false,
                            message: ClientError::LocalChanges { unsent }.to_string(),
                        }
                    }
                    Err(e) => RunState::Ended {
                        cancelled: matches!(e, ClientError::Cancelled),
                        message: e.to_string(),
                    },
                };
                match &mut self.window {
                    Window::Progress(w) => w.state = state,
                    _ => {
                        let mut w = ProgressWin::own(op);
                        w.state = state;
                        self.window = Window::Progress(w);
                    }
                }
            }
        }
    }

    fn fail(&mut self, title: &str, message: String) {
        self.window = Window::Error {
            title: title.to_string(),
            message,
        };
    }

    /// Starts an operation of this UI in the worker, with its progress window.
    pub(super) fn start(&mut self, op: SyncOp, request: Request) {
        self.own_op = true;
        self.notice = None;
        self.window = Window::Progress(ProgressWin::own(op));
        self.requests.push(request);
    }

    pub(super) fn download(&mut self, task: String, discard: bool) {
        self.last_task = Some(task.clone());
        self.start(SyncOp::Download, Request::Download { task, discard });
    }

    /// A short request: one at a time.
    pub(super) fn ask(&mut self, what: &'static str, request: Request) {
        if self.busy.is_none() {
            self.busy = Some(what);
            self.notice = None;
            self.requests.push(request);
        }
    }

    pub fn activate(&mut self, item: Item) {
        self.focus = item;
        if self.busy.is_some() && item != Item::Quit {
            return;
        }
        let options = self.status.as_ref().map(|s| s.options.clone());
        match item {
            Item::Login if self.logged_in() => self.ask("logging out", Request::Logout),
            Item::Login => {
                self.window = Window::Login {
                    user: String::new(),
                    password: String::new(),
                    focus: 0,
                }
            }
            Item::Mode => {
                let to = match self.status.as_ref().map(|s| s.mode) {
                    Some(Mode::Online) => Mode::Offline,
                    _ => Mode::Online,
                };
                self.ask("switching mode", Request::SetMode(to));
            }
            Item::Download => {
                self.window = Window::Tasks {
                    tasks: None,
                    selected: 0,
                };
                self.requests.push(Request::Tasks);
            }
            Item::Send => self.window = Window::Send { focus: 0 },
            Item::Sync => self.start(SyncOp::Sync, Request::Sync),
            Item::AutoSync | Item::DownloadData | Item::DownloadFiles => {
                let Some(o) = options else { return };
                let mut change = OptionsChange::default();
                match item {
                    Item::AutoSync => change.auto_sync = Some(!o.auto_sync),
                    Item::DownloadData => change.download_data = Some(!o.download_data),
                    _ => change.download_files = Some(!o.download_files),
                }
                self.ask("changing the options", Request::SetOptions(change));
            }
            Item::Quit => self.quit(),
        }
    }

    pub(super) fn quit(&mut self) {
        if self.own_op {
            self.cancel();
        }
        self.quit = true;
    }

    pub(super) fn cancel(&mut self) {
        let Window::Progress(w) = &mut self.window else {
            return;
        };
        if w.state != RunState::Running {
            return;
        }
        w.state = RunState::Cancelling;
        match &w.other {
            Some(r) => self.requests.push(Request::CancelOther(r.clone())),
            None => self.requests.push(Request::CancelOwn),
        }
    }
}

/// What the seed calls each operation.
pub fn op_title(op: SyncOp) -> &'static str {
    match op {
        SyncOp::Download => "Download",
        SyncOp::Send => "Send",
        SyncOp::Sync => "Synchronize",
        SyncOp::Files => "Download files",
    }
}

/// One value not kept, short enough for a line of the tab: where, the crew's value
/// and the one kept (values as JSON), and how it was settled.
pub fn not_kept_short(n: &fieldsync_proto::wire::NotKept) -> String {
    let json = |v: &Option<fieldsync_proto::Value>| match v {
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
        None => "(no row)".into(),
    };
    let key = serde_json::to_string(&n.key).unwrap_or_default();
    let how = if n.policy.is_empty() {
        n.resolution.clone()
    } else {
        n.policy.clone()
    };
    match &n.column {
        Some(col) => format!(
            "{} {key} {col}: yours {}, kept {} ({how})",
            n.table,
            json(&n.device),
            json(&n.kept)
        ),
        None => format!(
            "{} {key}: your change not applied ({}, {how})",
            n.table, n.kind
        ),
    }
}
