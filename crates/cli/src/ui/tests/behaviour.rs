//! What keys, replies and status readings do to the sync tab's state, and that no
//! terminal size makes drawing panic.

use std::time::Instant;

use fieldsync_client::{ClientError, Mode, Phase, Progress, SyncOp, Trigger};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent};

use super::*;
use crate::ui::app::{App, Item, Reply, Request, Window};
use crate::ui::progress::{ProgressWin, RunState};
use crate::ui::view;

#[test]
fn tab_moves_the_focus_and_enter_presses() {
    let mut a = app(working());
    assert_eq!(a.focus, Item::Download);
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.focus, Item::Send);
    key(&mut a, KeyCode::BackTab);
    key(&mut a, KeyCode::BackTab);
    assert_eq!(a.focus, Item::Mode);
    key(&mut a, KeyCode::Enter);
    assert!(matches!(
        a.requests.as_slice(),
        [Request::SetMode(Mode::Offline)]
    ));
}

#[test]
fn options_toggle_the_one_pressed() {
    let mut a = app(working());
    key(&mut a, KeyCode::Char('a'));
    let [Request::SetOptions(c)] = a.requests.as_slice() else {
        panic!("{:?}", a.requests)
    };
    assert_eq!(
        (c.auto_sync, c.download_data, c.download_files),
        (Some(false), None, None)
    );
}

#[test]
fn quitting_during_an_operation_cancels_it_first() {
    let mut a = app(working());
    key(&mut a, KeyCode::Char('y'));
    a.requests.clear();
    key(&mut a, KeyCode::Char('q'));
    // In the progress window `q` is no shortcut; Ctrl-C quits from anywhere.
    assert!(!a.quit);
    a.key(KeyEvent::new(
        KeyCode::Char('c'),
        ratatui::crossterm::event::KeyModifiers::CONTROL,
    ));
    assert!(a.quit);
    assert!(matches!(a.requests.as_slice(), [Request::CancelOwn]));
    let ProgressWin { state, .. } = match &a.window {
        Window::Progress(w) => w.clone(),
        w => panic!("{w:?}"),
    };
    assert_eq!(state, RunState::Cancelling);
}

#[test]
fn success_closes_the_progress_window() {
    let mut a = app(working());
    key(&mut a, KeyCode::Char('s'));
    key(&mut a, KeyCode::Char('e'));
    assert!(matches!(a.window, Window::Progress(_)));
    let report = fieldsync_client::Report {
        op: SyncOp::Send,
        trigger: Trigger::Manual,
        task: None,
        rows_down: 0,
        rows_up: 3,
        bytes_down: 0,
        bytes_up: 100,
        conflicts: 0,
        tables: vec![],
        full: false,
        full_reason: None,
        delta: None,
        backup: None,
        duration_ms: 5,
        not_kept: vec![],
        sent: false,
        files: Default::default(),
    };
    a.on_reply(Reply::Finished(SyncOp::Send, Ok(report)), Instant::now());
    assert_eq!(a.window, Window::None);
    assert!(!a.own_op);
}

#[test]
fn an_automatic_synchronization_that_succeeds_closes_its_window() {
    let mut a = app(fresh());
    let mut s = fresh();
    s.last_sync = Some(last("ok", Trigger::Auto, "older"));
    s.last_sync.as_mut().unwrap().at = at("2026-12-03T13:00:00.000Z");
    s.running = Some(running(777, Phase::Send, 0, 10));
    a.on_status(Ok(s.clone()), Instant::now());
    // A reading between the end and the new result: still open.
    s.running = None;
    a.on_status(Ok(s.clone()), Instant::now());
    assert!(matches!(a.window, Window::Progress(_)));
    s.last_sync = Some(last("ok", Trigger::Auto, "sent 10 change(s)"));
    a.on_status(Ok(s), Instant::now());
    assert_eq!(a.window, Window::None);
}

#[test]
fn this_uis_own_operation_is_not_taken_for_another() {
    let mut a = app(working());
    let mut s = working();
    s.running = Some(running(PID, Phase::Send, 0, 10));
    a.on_status(Ok(s), Instant::now());
    assert_eq!(a.window, Window::None);
}

/// Every state drawn on terminals too small for it: cut, never a panic.
#[test]
fn small_terminals_never_panic() {
    let mut states = vec![app(fresh()), app(working())];
    let mut a = app(working());
    key(&mut a, KeyCode::Char('l'));
    states.push(a);
    for setup in [
        |a: &mut App| key(a, KeyCode::Char('d')),
        |a: &mut App| {
            key(a, KeyCode::Char('d'));
            a.on_reply(Reply::Tasks(Ok(tasks())), Instant::now());
        },
        |a: &mut App| key(a, KeyCode::Char('s')),
        |a: &mut App| {
            key(a, KeyCode::Char('d'));
            a.on_reply(Reply::Tasks(Ok(tasks())), Instant::now());
            key(a, KeyCode::Enter);
        },
        |a: &mut App| {
            key(a, KeyCode::Char('y'));
            let p = Progress {
                phase: Phase::Transfer,
                done: 5,
                total: 10,
                unit: "rows",
                bytes: None,
            };
            a.on_reply(Reply::Progress(p), Instant::now());
        },
        |a: &mut App| {
            key(a, KeyCode::Char('y'));
            a.on_reply(
                Reply::Finished(SyncOp::Sync, Err(ClientError::Cancelled)),
                Instant::now(),
            );
        },
        |a: &mut App| a.on_reply(Reply::Done(Err("no".into())), Instant::now()),
    ] {
        let mut a = app(working());
        setup(&mut a);
        states.push(a);
    }
    for a in &states {
        for (w, h) in [(1, 1), (12, 4), (30, 8), (50, 15), (200, 60)] {
            let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
            term.draw(|f| drop(view::draw(f, a))).unwrap();
        }
    }
}

#[test]
fn a_red_automatic_result_closed_once_stays_closed_at_the_next_launch() {
    let mut s = fresh();
    s.last_sync = Some(last(
        "cancelled",
        Trigger::Auto,
        "cancelled; previous local database restored",
    ));
    let closed = s.last_sync.as_ref().unwrap().at;
    let mut a = app(s.clone());
    assert!(matches!(a.window, Window::Error { .. }), "opens at launch");
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.window, Window::None);
    assert!(
        a.requests
            .iter()
            .any(|r| matches!(r, Request::RememberClosed(t) if *t == closed)),
        "remembered: {:?}",
        a.requests
    );
    // The next launch, remembering it: no window; a newer red result opens again.
    let mut next = App::new("/data/tab1".into(), true, PID);
    next.closed_auto = Some(closed);
    next.on_status(Ok(s.clone()), Instant::now());
    assert_eq!(next.window, Window::None);
    let mut newer = s;
    newer.last_sync.as_mut().unwrap().at = at("2026-12-03T15:00:00.000Z");
    let mut again = App::new("/data/tab1".into(), true, PID);
    again.closed_auto = Some(closed);
    again.on_status(Ok(newer), Instant::now());
    assert!(matches!(again.window, Window::Error { .. }));
}
