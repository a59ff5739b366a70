//! Drawing the windows over the sync tab: login, task picker, send (what would be
//! sent, then Execute), the discard confirmation, the progress window, the error.

use fieldsync_client::Status;
use ratatui::Frame;
use ratatui::layout::Rect;

use super::app::{App, Hit, Window, op_title};
use super::progress::{ProgressWin, RunState, human, phase_name, phase_text, phases};
use super::view::marker;
use super::widgets::{Rows, Theme, window};

pub fn draw(f: &mut Frame, app: &App, w: &Window, area: Rect, theme: Theme) -> Vec<(Rect, Hit)> {
    let st = app.status.as_ref();
    match w {
        Window::None => vec![],
        Window::Login {
            user,
            password,
            focus,
        } => {
            let inner = window(f, area, 52, 9, "Log in");
            let mut r = Rows::new(inner, theme);
            let mode = st.map_or("-", |s| s.mode.as_str());
            r.plain(format!("Logging in {mode}."));
            r.newline().newline();
            input(&mut r, "User", user, 0, *focus == 0);
            r.newline();
            input(
                &mut r,
                "Password",
                &"*".repeat(password.chars().count()),
                1,
                *focus == 1,
            );
            r.newline().newline();
            r.button("Log in (Enter)", Hit::Button(2), *focus == 2)
                .plain("  ")
                .button("Back (Esc)", Hit::Button(3), *focus == 3);
            r.draw(f)
        }
        Window::Tasks { tasks, selected } => {
            let inner = window(f, area, 64, 12, "Download: pick a task");
            let mut r = Rows::new(inner, theme);
            match tasks {
                None => {
                    r.plain("Asking the server for this user's tasks...");
                }
                Some(t) if t.is_empty() => {
                    r.plain("No task for this user on this device.");
                }
                Some(t) => {
                    for (i, task) in t.iter().enumerate().take(6) {
                        if i > 0 {
                            r.newline();
                        }
                        let mark = if i == *selected { "> " } else { "  " };
                        let text = format!(
                            "{mark}{:<24} {}",
                            task.name,
                            task.description.as_deref().unwrap_or("")
                        );
                        let width = inner.width as usize;
                        let text: String = text.chars().take(width).collect();
                        r.clickable(text, Hit::Row(i), i == *selected);
                    }
                }
            }
            r.at_bottom();
            r.button("Download (Enter)", Hit::Button(0), false)
                .plain("  ")
                .button("Back (Esc)", Hit::Button(1), false);
            r.draw(f)
        }
        Window::Send { focus } => {
            let inner = window(f, area, 64, 11, "Send");
            let mut r = Rows::new(inner, theme);
            r.plain("Local changes go to the server and are integrated into");
            r.newline().plain("the main database. Pending changes:");
            r.newline();
            pending_lines(&mut r, st, 4);
            r.at_bottom();
            r.button("Execute (e)", Hit::Button(0), *focus == 0)
                .plain("  ")
                .button("Back (Esc)", Hit::Button(1), *focus == 1);
            r.draw(f)
        }
        Window::Discard {
            task,
            unsent,
            focus,
        } => {
            let inner = window(f, area, 70, 12, "Local changes would be lost");
            let mut r = Rows::new(inner, theme);
            r.plain(format!("Downloading {task} replaces the local database."));
            r.newline().text(
                format!("{unsent} local change(s) not sent will be forgotten."),
                theme.bad(),
            );
            r.newline()
                .plain("They are first written to a backup file in the device folder,");
            r.newline().plain("named backup-<time>-<id>.jsonl:");
            r.newline();
            r.wrapped(&app.dir, 2, theme.heading(), 2);
            r.newline().plain("To keep them, send them first (Send).");
            r.at_bottom();
            r.button("Discard and download (y)", Hit::Button(0), *focus == 0)
                .plain("  ")
                .button("Keep my changes (n)", Hit::Button(1), *focus == 1);
            r.draw(f)
        }
        Window::Progress(p) => progress(f, p, area, theme),
        Window::Error { title, message } => {
            let inner = window(f, area, 70, 10, title);
            let mut r = Rows::new(inner, theme);
            r.text("[ERROR]", theme.bad()).newline();
            r.wrapped(message, 0, theme.bad(), 5);
            r.at_bottom();
            r.button("Close (c)", Hit::Button(0), true);
            r.draw(f)
        }
    }
}

/// `Label     [value              ]`, a click focuses it.
fn input(r: &mut Rows, label: &str, value: &str, i: usize, focused: bool) {
    r.text(format!("{label:<10}"), r.theme.heading());
    let shown: String = value
        .chars()
        .rev()
        .take(24)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    r.clickable(format!("[{shown:<24}]"), Hit::Button(i), focused);
}

fn pending_lines(r: &mut Rows, st: Option<&Status>, max: usize) {
    let by_user = st.map(|s| s.pending_by_user.clone()).unwrap_or_default();
    if by_user.is_empty() {
        r.newline().plain("  none: nothing to send");
    }
    for (user, n) in by_user.iter().take(max) {
        r.newline().plain(format!("  {n:>7} by {user}"));
    }
}

fn progress(f: &mut Frame, p: &ProgressWin, area: Rect, theme: Theme) -> Vec<(Rect, Hit)> {
    let title = match &p.other {
        None => op_title(p.op).to_string(),
        Some(o) => format!(
            "{} ({}, process {})",
            op_title(p.op),
            if p.kind == fieldsync_client::Trigger::Auto {
                "automatic"
            } else {
                "another program"
            },
            o.pid
        ),
    };
    let inner = window(f, area, 66, 12, &title);
    let mut r = Rows::new(inner, theme);
    for (i, ph) in phases(p.op).iter().enumerate() {
        if i > 0 {
            r.plain(" > ");
        }
        if p.phase == Some(*ph) {
            r.text(format!("[{}]", phase_name(*ph)), theme.focus());
        } else {
            r.plain(phase_name(*ph));
        }
    }
    if p.phase == Some(fieldsync_client::Phase::Retry) {
        r.plain("  ").text("[retry]", theme.focus());
    }
    r.newline();
    match p.phase {
        Some(ph) => r.plain(phase_text(ph)),
        None => r.plain("starting"),
    };
    r.newline().newline();
    let unit = &p.unit;
    match p.ratio() {
        Some(ratio) => {
            r.plain(format!(
                "{} of {} {unit} ({:.0}%)",
                p.done,
                p.total,
                ratio * 100.0
            ));
            let width = inner.width.saturating_sub(2) as usize;
            let filled = (ratio * width as f64) as usize;
            r.newline().plain("[").text("#".repeat(filled), theme.ok());
            r.plain("-".repeat(width - filled)).plain("]");
        }
        None if p.phase.is_some() => {
            r.plain(format!("{} {unit}", p.done)).newline();
        }
        None => {
            r.newline();
        }
    }
    r.newline();
    if let Some(rate) = p.meter.rate_per_s {
        r.plain(format!("{rate:.0} {unit}/s"));
        if let Some(left) = p.left() {
            r.plain(format!(", about {} left", human(left)));
        }
    }
    r.newline();
    match &p.state {
        RunState::Running => {}
        RunState::Cancelling => {
            r.plain("Cancelling: waiting for a safe point...");
        }
        RunState::Ended { cancelled, message } => {
            let word = if *cancelled { "cancelled" } else { "error" };
            r.text(marker(word), theme.bad()).newline();
            r.wrapped(message, 0, theme.bad(), 2);
        }
    }
    r.at_bottom();
    match p.state {
        RunState::Ended { .. } => r.button("Close (c)", Hit::Button(0), true),
        _ => r.button("Cancel (c)", Hit::Button(0), true),
    };
    r.draw(f)
}
