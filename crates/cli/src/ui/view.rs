//! Drawing the sync tab: the device's state, the buttons, the auto-sync options, the
//! pending changes and the last result; then the open window over it.

use fieldsync_client::{Mode, Status};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::widgets::Block;

use super::app::{App, Hit, Item, Window};
use super::widgets::{Rows, Theme};
use super::windows;

/// Draws the whole screen; returns where the clickable parts are (the window's only,
/// when one is open: it takes the clicks).
pub fn draw(f: &mut Frame, app: &App) -> Vec<(Rect, Hit)> {
    let theme = Theme { color: app.color };
    let area = f.area();
    let device = app
        .status
        .as_ref()
        .and_then(|s| s.device_id.clone())
        .unwrap_or_else(|| "(not paired)".into());
    let block = Block::bordered().title(format!(" fieldsync · device {device} · Sync "));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let inner = Rect::new(
        inner.x + 1,
        inner.y,
        inner.width.saturating_sub(2),
        inner.height,
    );
    let hits = main_rows(app, inner, theme).draw(f);
    match &app.window {
        Window::None => hits,
        w => windows::draw(f, app, w, area, theme),
    }
}

/// A label column, then the value.
fn field(r: &mut Rows, label: &str, value: &str) {
    r.text(format!("{label:<9}"), r.theme.heading())
        .plain(value);
}

fn main_rows(app: &App, area: Rect, theme: Theme) -> Rows {
    let mut r = Rows::new(area, theme);
    let focus = |i: Item| app.focus == i && app.window == Window::None;
    let st = app.status.as_ref();
    let right = 52;
    let user = st.and_then(|s| s.user.clone());
    field(
        &mut r,
        "User",
        user.as_deref().unwrap_or("(nobody logged in)"),
    );
    let login = if user.is_some() { "Log out" } else { "Log in" };
    r.pad_to(right).button(
        &format!("{login} (l)"),
        Hit::Item(Item::Login),
        focus(Item::Login),
    );
    r.newline();
    let mode = st.map(|s| s.mode);
    field(&mut r, "Mode", mode.map_or("-", Mode::as_str));
    let to = match mode {
        Some(Mode::Online) => "Go offline (m)",
        _ => "Go online (m)",
    };
    r.pad_to(right)
        .button(to, Hit::Item(Item::Mode), focus(Item::Mode));
    r.newline();
    field(
        &mut r,
        "Server",
        st.and_then(|s| s.server.as_deref()).unwrap_or("-"),
    );
    r.newline();
    field(
        &mut r,
        "Task",
        st.and_then(|s| s.task.as_deref())
            .unwrap_or("(none downloaded yet)"),
    );
    r.newline().newline();
    for (i, (label, item)) in [
        ("Download (d)", Item::Download),
        ("Send (s)", Item::Send),
        ("Synchronize (y)", Item::Sync),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            r.plain("  ");
        }
        r.button(label, Hit::Item(item), focus(item));
    }
    r.newline().newline();
    r.text(
        "Automatic synchronization when docked, after a logout",
        theme.heading(),
    );
    let options = st.map(|s| s.options.clone()).unwrap_or_default();
    for (on, label, item) in [
        (
            options.auto_sync,
            "Synchronize automatically (a)",
            Item::AutoSync,
        ),
        (
            options.download_data,
            "Download data (t)",
            Item::DownloadData,
        ),
        (
            options.download_files,
            "Download files (f)",
            Item::DownloadFiles,
        ),
    ] {
        r.newline().plain("  ");
        let mark = if on { "[x]" } else { "[ ]" };
        r.clickable(format!("{mark} {label}"), Hit::Item(item), focus(item));
        if item == Item::DownloadFiles && on && !options.download_data {
            r.text(" acts only with Download data on", theme.dim());
        }
    }
    if st.is_some_and(|s| s.ticket_armed) {
        r.newline()
            .plain("  ")
            .text("armed: synchronizes once by itself when docked", theme.ok());
    }
    r.newline().newline();
    r.text(format!("{:<17}", "Pending changes"), theme.heading())
        .plain(pending(st));
    r.newline().newline();
    r.text("Last result", theme.heading()).newline();
    last_result(&mut r, st);
    // After a send that had any: the crew's values the office did not keep.
    if !app.conflicts.is_empty() {
        let n = app.conflicts.len();
        r.newline().text(
            format!("Values not kept ({n}), the main database holds the other:"),
            theme.bad(),
        );
        // What the rows above the notice line leave: the values, or some and a
        // line pointing to the rest.
        let room = (area.height as usize).saturating_sub(r.rows() + 3).max(2);
        let shown = if n > room { room - 1 } else { n };
        for line in &app.conflicts[..shown] {
            let width = (area.width as usize).saturating_sub(6);
            r.newline()
                .plain("  ")
                .text(truncate(line, width), theme.bad());
        }
        if shown < n {
            r.newline().plain("  ").text(
                format!("+{} more: fieldsync device conflicts", n - shown),
                theme.dim(),
            );
        }
    }
    let bottom = area.height.saturating_sub(1);
    while (r.rows() as u16) < bottom {
        r.newline();
    }
    match (&app.status_error, &app.busy, &app.notice) {
        (Some(e), _, _) => {
            r.text("[ERROR] ", theme.bad())
                .plain(format!("status: {e}"));
        }
        (None, Some(what), _) => {
            r.plain(format!("... {what}"));
        }
        (None, None, Some(n)) if n.ok => {
            r.text("[OK] ", theme.ok()).plain(n.text.clone());
        }
        _ => {}
    }
    r.newline();
    r.text("Tab/arrows move, Enter presses, letters in ()", theme.dim());
    r.pad_to(right)
        .button("Quit (q)", Hit::Item(Item::Quit), focus(Item::Quit));
    r
}

/// `3 by ana, 1 by ben`, or `none`.
fn pending(st: Option<&Status>) -> String {
    let Some(s) = st else { return "-".into() };
    if s.pending_by_user.is_empty() {
        return "none".into();
    }
    s.pending_by_user
        .iter()
        .map(|(user, n)| format!("{n} by {user}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The marker of a result: what it says without colour.
pub fn marker(result: &str) -> &'static str {
    match result {
        "ok" => "[OK]",
        "cancelled" => "[CANCELLED]",
        _ => "[ERROR]",
    }
}

fn last_result(r: &mut Rows, st: Option<&Status>) {
    let Some(l) = st.and_then(|s| s.last_sync.as_ref()) else {
        r.plain("(nothing yet)");
        return;
    };
    let style = if l.result == "ok" {
        r.theme.ok()
    } else {
        r.theme.bad()
    };
    r.text(marker(&l.result), style)
        .plain(format!(" {} ({}) at {}", l.op, l.kind, l.at))
        .newline();
    r.wrapped(&l.message, 2, style, 2);
}

/// `s` cut to `width` characters, with an ellipsis when cut.
fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}
