//! Snapshot tests of every screen and window state (ratatui's `TestBackend`, 80×24,
//! compared with the text in `snapshots/`; `UPDATE_SNAPSHOTS=1` rewrites them), and
//! the behaviour of keys, clicks, replies and status readings that shows on them
//! (`behaviour.rs`: the rest).

mod behaviour;

use std::time::{Duration, Instant};

use fieldsync_client::running::Running;
use fieldsync_client::{
    ClientError, LastSync, Mode, Options, Phase, Progress, Status, SyncOp, Trigger,
};
use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::TaskSummary;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier};

use super::app::{App, Hit, Item, Notice, Reply, Request, Window};
use super::progress::RunState;
use super::view;

const PID: u32 = 4242;
const AT: &str = "2026-12-03T14:05:00.000Z";

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn last(result: &str, kind: Trigger, message: &str) -> LastSync {
    LastSync {
        op: SyncOp::Sync,
        kind,
        result: result.into(),
        message: message.into(),
        at: at(AT),
        full: false,
        full_reason: None,
        rows_down: 0,
        rows_up: 0,
        bytes_down: 0,
        bytes_up: 0,
        duration_ms: 0,
        conflicts: 0,
        send_result: None,
        download_result: None,
    }
}

/// A paired device, nobody logged in, offline, nothing downloaded.
fn fresh() -> Status {
    Status {
        device_id: Some("tab1".into()),
        server: Some("http://127.0.0.1:8080".into()),
        mode: Mode::Offline,
        user: None,
        task: None,
        replica: None,
        pending: 0,
        pending_by_user: Default::default(),
        last_sync: None,
        options: Options::default(),
        ticket_armed: false,
        running: None,
    }
}

/// Ana at work: online, a task, changes by two users, a green last result.
fn working() -> Status {
    let mut s = fresh();
    s.mode = Mode::Online;
    s.user = Some("ana".into());
    s.task = Some("north-inspections".into());
    s.pending = 4;
    s.pending_by_user = [("ana".to_string(), 3), ("ben".to_string(), 1)].into();
    s.options.auto_sync = true;
    s.last_sync = Some(last(
        "ok",
        Trigger::Manual,
        "sent 2 change(s); downloaded 40 rows",
    ));
    s
}

fn app(status: Status) -> App {
    let mut a = App::new("/data/tab1".into(), true, PID);
    a.on_status(Ok(status), Instant::now());
    a
}

fn key(a: &mut App, code: KeyCode) {
    a.key(KeyEvent::from(code));
}

fn keys(a: &mut App, text: &str) {
    for c in text.chars() {
        key(a, KeyCode::Char(c));
    }
}

fn render(a: &App) -> (Buffer, Vec<(Rect, Hit)>) {
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut hits = vec![];
    let frame = term.draw(|f| hits = view::draw(f, a)).unwrap();
    (frame.buffer.clone(), hits)
}

fn text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let row: String = (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect();
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

/// The screen equals `snapshots/NAME.txt`.
#[track_caller]
fn snapshot(name: &str, a: &App) -> Buffer {
    let (buf, _) = render(a);
    let got = text(&buf);
    let path = format!("{}/src/ui/snapshots/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "screen {name} differs from {path}:\n--- got\n{got}--- want\n{want}"
    );
    buf
}

/// Where on screen `needle` is (first occurrence).
fn find(buf: &Buffer, needle: &str) -> (u16, u16) {
    let screen = text(buf);
    for (y, line) in screen.lines().enumerate() {
        if let Some(i) = line.find(needle) {
            let x = line[..i].chars().count();
            return (x as u16, y as u16);
        }
    }
    panic!("`{needle}` not on screen:\n{screen}")
}

fn running(pid: u32, phase: Phase, done: u64, total: u64) -> Running {
    Running {
        op: SyncOp::Sync,
        kind: Trigger::Auto,
        phase: Some(phase),
        done,
        total,
        unit: "entries".into(),
        bytes: None,
        started: at("2026-12-03T14:00:00.000Z"),
        pid,
    }
}

fn tasks() -> Vec<TaskSummary> {
    ["north-inspections", "south-work-orders"]
        .iter()
        .map(|n| TaskSummary {
            name: n.to_string(),
            description: Some(format!("the {} slice", &n[..5])),
            tables: vec!["assets".into()],
        })
        .collect()
}

#[test]
fn main_screen_logged_out() {
    snapshot("main_logged_out", &app(fresh()));
}

#[test]
fn main_screen_armed_after_a_logout() {
    let mut s = fresh();
    s.options.auto_sync = true;
    s.options.download_data = false;
    s.options.download_files = true;
    s.ticket_armed = true;
    snapshot("main_armed", &app(s));
}

#[test]
fn main_screen_at_work_with_a_green_result() {
    let a = app(working());
    let buf = snapshot("main_working", &a);
    let (x, y) = find(&buf, "[OK]");
    assert_eq!(buf[(x + 1, y)].fg, Color::Green, "the result is green");
    let (x, y) = find(&buf, "[ Download (d) ]");
    assert!(
        buf[(x, y)].modifier.contains(Modifier::REVERSED),
        "focus in reverse video"
    );
}

#[test]
fn main_screen_with_a_red_result_and_a_notice() {
    let mut s = working();
    s.last_sync = Some(last(
        "error",
        Trigger::Manual,
        "cannot reach the server at http://127.0.0.1:8080: connection refused (os error 111)",
    ));
    let mut a = app(s);
    a.notice = Some(Notice {
        ok: true,
        text: "logged in as ana".into(),
    });
    let buf = snapshot("main_error", &a);
    let (x, y) = find(&buf, "[ERROR]");
    assert_eq!(buf[(x + 1, y)].fg, Color::Red, "the result is red");
}

#[test]
fn main_screen_after_a_send_whose_values_the_office_did_not_keep() {
    use fieldsync_proto::Value;
    use fieldsync_proto::wire::NotKept;
    let value = |col: &str, mine: &str, kept: &str| NotKept {
        table: "inspections".into(),
        key: Value::Text("i-7".into()),
        user: "ana".into(),
        column: Some(col.into()),
        device: Some(Value::Text(mine.into())),
        kept: Some(Value::Text(kept.into())),
        policy: "server-wins".into(),
        kind: "update-update".into(),
        resolution: "server-kept".into(),
    };
    let mut not_kept: Vec<NotKept> = (0..6)
        .map(|i| value(&format!("c{i}"), "worn", "ok"))
        .collect();
    not_kept[0] = value("result", "worn", "failed");
    not_kept[1] = NotKept {
        column: None,
        device: None,
        kept: None,
        policy: String::new(),
        kind: "task-changed".into(),
        resolution: "not-applied".into(),
        ..value("", "", "")
    };
    let mut a = app(working());
    a.on_reply(
        Reply::Finished(SyncOp::Send, Ok(sent_report(not_kept))),
        Instant::now(),
    );
    let buf = snapshot("main_conflicts", &a);
    let (x, y) = find(&buf, "Values not kept (6)");
    assert_eq!(buf[(x, y)].fg, Color::Red, "shown as the office's win: red");
    // The next send without any clears them.
    a.on_reply(
        Reply::Finished(SyncOp::Send, Ok(sent_report(vec![]))),
        Instant::now(),
    );
    assert!(a.conflicts.is_empty());
}

fn sent_report(not_kept: Vec<fieldsync_proto::wire::NotKept>) -> fieldsync_client::Report {
    fieldsync_client::Report {
        op: SyncOp::Send,
        trigger: Trigger::Manual,
        task: None,
        rows_down: 0,
        rows_up: 7,
        bytes_down: 0,
        bytes_up: 100,
        conflicts: not_kept.len() as u64,
        tables: vec![],
        full: false,
        full_reason: None,
        delta: None,
        backup: None,
        duration_ms: 5,
        not_kept,
        sent: true,
        files: Default::default(),
    }
}

#[test]
fn without_colour_the_same_text_and_no_colour_at_all() {
    let mut a = app(working());
    a.color = false;
    let buf = snapshot("main_working", &a);
    assert!(
        buf.content
            .iter()
            .all(|c| c.fg == Color::Reset && c.bg == Color::Reset),
        "NO_COLOR: no colours"
    );
    let (x, y) = find(&buf, "[ Download (d) ]");
    assert!(buf[(x, y)].modifier.contains(Modifier::REVERSED));
}

#[test]
fn busy_line_while_a_short_request_runs() {
    let mut a = app(fresh());
    key(&mut a, KeyCode::Char('m'));
    assert!(matches!(
        a.requests.as_slice(),
        [Request::SetMode(Mode::Online)]
    ));
    snapshot("main_busy", &a);
    a.on_reply(Reply::Done(Ok("online".into())), Instant::now());
    assert_eq!(a.busy, None);
}

#[test]
fn login_window_masks_the_password() {
    let mut a = app(fresh());
    key(&mut a, KeyCode::Char('l'));
    keys(&mut a, "ana");
    key(&mut a, KeyCode::Tab);
    keys(&mut a, "secret");
    let buf = snapshot("login", &a);
    assert!(!text(&buf).contains("secret"));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.window, Window::None);
    assert!(matches!(
        a.requests.as_slice(),
        [Request::Login { user, password }] if user == "ana" && password == "secret"
    ));
}

#[test]
fn task_picker_loading_then_listed_then_download() {
    let mut a = app(working());
    a.status.as_mut().unwrap().pending_by_user.clear();
    key(&mut a, KeyCode::Char('d'));
    assert!(matches!(a.requests.as_slice(), [Request::Tasks]));
    a.requests.clear();
    snapshot("tasks_loading", &a);
    a.on_reply(Reply::Tasks(Ok(tasks())), Instant::now());
    key(&mut a, KeyCode::Down);
    snapshot("tasks", &a);
    key(&mut a, KeyCode::Enter);
    assert!(matches!(
        a.requests.as_slice(),
        [Request::Download { task, discard: false }] if task == "south-work-orders"
    ));
    assert!(matches!(a.window, Window::Progress(_)));
}

#[test]
fn send_shows_what_would_be_sent_then_execute_sends() {
    let mut a = app(working());
    key(&mut a, KeyCode::Char('s'));
    assert!(a.requests.is_empty(), "nothing sent before Execute");
    snapshot("send", &a);
    key(&mut a, KeyCode::Char('e'));
    assert!(matches!(a.requests.as_slice(), [Request::Send]));
    assert!(a.own_op);
}

#[test]
fn a_download_that_would_discard_changes_asks_first() {
    let mut a = app(working());
    key(&mut a, KeyCode::Char('d'));
    a.on_reply(Reply::Tasks(Ok(tasks())), Instant::now());
    a.requests.clear();
    key(&mut a, KeyCode::Enter);
    assert!(a.requests.is_empty(), "nothing downloaded yet");
    snapshot("discard", &a);
    key(&mut a, KeyCode::Char('n'));
    assert_eq!(a.window, Window::None, "kept");
    assert!(a.requests.is_empty());
    key(&mut a, KeyCode::Char('d'));
    a.on_reply(Reply::Tasks(Ok(tasks())), Instant::now());
    a.requests.clear();
    key(&mut a, KeyCode::Enter);
    key(&mut a, KeyCode::Char('y'));
    assert!(matches!(
        a.requests.as_slice(),
        [Request::Download { task, discard: true }] if task == "north-inspections"
    ));
}

#[test]
fn progress_window_with_numbers_rate_and_time_left() {
    let mut a = app(working());
    key(&mut a, KeyCode::Char('y'));
    assert!(matches!(a.requests.as_slice(), [Request::Sync]));
    snapshot("progress_starting", &a);
    let t0 = Instant::now();
    let p = |done| Progress {
        phase: Phase::Transfer,
        done,
        total: 5000,
        unit: "rows",
        bytes: None,
    };
    a.on_reply(Reply::Progress(p(0)), t0);
    a.on_reply(Reply::Progress(p(1250)), t0 + Duration::from_secs(5));
    snapshot("progress_running", &a);
    key(&mut a, KeyCode::Char('c'));
    assert!(matches!(a.requests.last(), Some(Request::CancelOwn)));
    snapshot("progress_cancelling", &a);
    a.on_reply(
        Reply::Finished(SyncOp::Sync, Err(ClientError::Cancelled)),
        t0 + Duration::from_secs(6),
    );
    snapshot("progress_cancelled", &a);
    key(&mut a, KeyCode::Char('c'));
    assert_eq!(a.window, Window::None);
}

#[test]
fn a_failure_stays_open_in_red_until_closed() {
    let mut a = app(working());
    key(&mut a, KeyCode::Char('y'));
    let err = ClientError::Unreachable {
        url: "http://127.0.0.1:8080".into(),
        detail: "connection refused".into(),
    };
    a.on_reply(Reply::Finished(SyncOp::Sync, Err(err)), Instant::now());
    let buf = snapshot("progress_error", &a);
    let (x, y) = find(&buf, "[ERROR]");
    assert_eq!(buf[(x + 1, y)].fg, Color::Red);
    // Status readings do not close it; Close does.
    a.on_status(Ok(working()), Instant::now());
    assert!(matches!(a.window, Window::Progress(_)));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.window, Window::None);
}

#[test]
fn an_automatic_synchronization_shows_and_cancels_from_here() {
    let mut a = app(fresh());
    let t0 = Instant::now();
    let mut s = fresh();
    s.running = Some(running(777, Phase::Send, 0, 40_000));
    a.on_status(Ok(s.clone()), t0);
    s.running = Some(running(777, Phase::Send, 10_000, 40_000));
    a.on_status(Ok(s.clone()), t0 + Duration::from_secs(2));
    snapshot("progress_auto", &a);
    key(&mut a, KeyCode::Char('c'));
    assert!(matches!(
        a.requests.as_slice(),
        [Request::CancelOther(r)] if r.pid == 777
    ));
    // Its result is recorded, then its progress goes.
    s.running = None;
    s.last_sync = Some(last(
        "cancelled",
        Trigger::Auto,
        "cancelled; previous local database restored",
    ));
    a.on_status(Ok(s), t0 + Duration::from_secs(3));
    let Window::Progress(w) = &a.window else {
        panic!("the window stays: {:?}", a.window)
    };
    assert!(matches!(
        w.state,
        RunState::Ended {
            cancelled: true,
            ..
        }
    ));
    snapshot("progress_auto_cancelled", &a);
}

#[test]
fn a_red_automatic_result_opens_as_an_error_window() {
    let mut s = fresh();
    s.last_sync = Some(last(
        "error",
        Trigger::Auto,
        "cannot reach the server at http://127.0.0.1:8080: timed out",
    ));
    let mut a = app(s);
    snapshot("error_auto", &a);
    key(&mut a, KeyCode::Char('c'));
    assert_eq!(a.window, Window::None);
}

#[test]
fn a_refused_request_shows_in_the_error_window() {
    let mut a = app(fresh());
    key(&mut a, KeyCode::Char('l'));
    keys(&mut a, "ana");
    key(&mut a, KeyCode::Enter);
    keys(&mut a, "wrong");
    key(&mut a, KeyCode::Enter);
    a.on_reply(
        Reply::Done(Err("offline login refused for `ana`: wrong password".into())),
        Instant::now(),
    );
    snapshot("error_refused", &a);
}

#[test]
fn clicks_press_buttons() {
    let mut a = app(working());
    let (_, hits) = render(&a);
    let (rect, _) = hits
        .iter()
        .find(|(_, h)| *h == Hit::Item(Item::Send))
        .unwrap();
    let (buf, _) = render(&a);
    assert_eq!(
        find(&buf, "[ Send (s) ]"),
        (rect.x, rect.y),
        "the click area is where the button is drawn"
    );
    a.click(Hit::Item(Item::Send));
    assert!(matches!(a.window, Window::Send { .. }));
    let (_, hits) = render(&a);
    assert!(
        hits.iter().all(|(_, h)| !matches!(h, Hit::Item(_))),
        "a window takes the clicks"
    );
    a.click(Hit::Button(0));
    assert!(matches!(a.requests.as_slice(), [Request::Send]));
}
