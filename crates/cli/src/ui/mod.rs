//! `fieldsync device ui`: the device app's sync tab in a terminal (ratatui over
//! crossterm). The state and its event handling ([`app`]) are apart from the drawing
//! ([`view`], [`windows`]), so every screen is tested without a terminal; this file
//! runs the loop: terminal in and out, keys and clicks, the device's status, the
//! worker's answers, and the requests.

mod app;
mod keys;
mod progress;
mod view;
mod widgets;
mod windows;
mod worker;

#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::Context;
use fieldsync_client::{Cancel, Device};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, DisableMouseCapture, EnableMouseCapture, Event, MouseButton, MouseEventKind,
};
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute};

use app::{App, Hit, Request};

/// How often the device's status (and another process's progress) is read.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// What a signal asks of the UI.
enum Signal {
    /// SIGUSR1 (`device cancel` from elsewhere): cancel this UI's operation.
    Cancel,
    /// SIGINT or SIGTERM: cancel, then quit.
    Quit,
}

/// Runs the sync tab until the user quits.
pub fn run(device: &Device) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::io::stdout().is_terminal() && std::io::stdin().is_terminal(),
        "`device ui` needs a terminal"
    );
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let root = device.dir().root.clone();
    let (reply_tx, replies) = channel();
    let jobs = worker::spawn(
        Device::open(root.clone(), crate::device_cmd::client_config()),
        reply_tx,
    );
    let signals = on_signals();
    let mut app = App::new(root.display().to_string(), color, std::process::id());
    app.closed_auto = closed_auto(&root);
    app.on_status(device.status().map_err(|e| e.to_string()), Instant::now());
    let mut term = Term::enter().context("setting up the terminal")?;
    let mut hits: Vec<(ratatui::layout::Rect, Hit)> = vec![];
    let mut cancel = Cancel::default();
    let mut status_at = Instant::now();
    loop {
        term.0.draw(|f| hits = view::draw(f, &app))?;
        if app.quit && !app.own_op {
            return Ok(());
        }
        if event::poll(Duration::from_millis(50))? {
            match event::read()? {
                Event::Key(k) => app.key(k),
                Event::Mouse(m) if m.kind == MouseEventKind::Down(MouseButton::Left) => {
                    let hit = hits
                        .iter()
                        .find(|(r, _)| r.contains(ratatui::layout::Position::new(m.column, m.row)));
                    if let Some((_, hit)) = hit {
                        app.click(*hit);
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        let mut refresh = now.duration_since(status_at) >= STATUS_EVERY;
        for reply in replies.try_iter() {
            // An answer changed the device: show its state now.
            refresh |= !matches!(reply, app::Reply::Progress(_));
            app.on_reply(reply, now);
        }
        if let Some(rx) = &signals {
            for s in rx.try_iter() {
                if matches!(s, Signal::Quit) {
                    app.quit = true;
                }
                if app.own_op {
                    cancel.cancel();
                }
            }
        }
        if refresh {
            status_at = now;
            app.on_status(device.status().map_err(|e| e.to_string()), now);
        }
        for request in std::mem::take(&mut app.requests) {
            match request {
                Request::CancelOwn => cancel.cancel(),
                Request::RememberClosed(at) => remember_closed(&root, at),
                Request::CancelOther(r) => {
                    if let Err(e) = crate::auto_cmd::signal_cancel(&r) {
                        app.window = app::Window::Error {
                            title: "Cancel".into(),
                            message: format!("{e:#}"),
                        };
                    }
                }
                request => {
                    cancel = Cancel::default();
                    // The worker lives as long as `jobs`: a send fails only if it
                    // panicked, and the panic hook has ended the process then.
                    let _ = jobs.send((request, cancel.clone()));
                }
            }
        }
    }
}

/// SIGUSR1, SIGINT and SIGTERM, as messages to the loop (raw mode turns Ctrl-C into
/// a key, so SIGINT comes only from elsewhere).
fn on_signals() -> Option<Receiver<Signal>> {
    let (rt, mut int, mut term, mut usr1) = crate::device_cmd::cancel_signals()?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        rt.block_on(async {
            loop {
                let s = tokio::select! {
                    _ = int.recv() => Signal::Quit,
                    _ = term.recv() => Signal::Quit,
                    _ = usr1.recv() => Signal::Cancel,
                };
                if tx.send(s).is_err() {
                    return;
                }
            }
        });
    });
    Some(rx)
}

/// The terminal in raw mode on the alternate screen with mouse reports; put back as
/// it was when dropped (a return, an error) and by the panic hook (a panic).
struct Term(ratatui::Terminal<CrosstermBackend<std::io::Stdout>>);

impl Term {
    fn enter() -> std::io::Result<Term> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
            // A panic off the UI thread leaves nothing to draw with: end here.
            if std::thread::current().name() != Some("main") {
                std::process::exit(101);
            }
        }));
        enable_raw_mode()?;
        let setup = || {
            let mut out = std::io::stdout();
            execute!(out, EnterAlternateScreen, EnableMouseCapture)?;
            ratatui::Terminal::new(CrosstermBackend::new(out))
        };
        // Half set up is put back too.
        setup().map(Term).inspect_err(|_| restore())
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        restore();
    }
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        DisableMouseCapture,
        LeaveAlternateScreen,
        cursor::Show
    );
}

/// The UI's own memory in the device folder: which red automatic result the crew
/// closed (`ui.json`); nothing else reads it.
const UI_FILE: &str = "ui.json";

fn closed_auto(root: &std::path::Path) -> Option<fieldsync_proto::time::Timestamp> {
    let bytes = std::fs::read(root.join(UI_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["closed_auto_result"].as_str()?.parse().ok()
}

/// Best effort: a folder that cannot be written shows the window again next time.
fn remember_closed(root: &std::path::Path, at: fieldsync_proto::time::Timestamp) {
    let json = serde_json::json!({ "closed_auto_result": at.to_string() });
    let tmp = root.join(format!("{UI_FILE}.tmp"));
    if std::fs::write(&tmp, json.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, root.join(UI_FILE));
    }
}
