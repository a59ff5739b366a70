//! The auto-sync machine: the seed's scenarios one by one, then random event
//! sequences checked against a reference model and against properties read off the
//! whole history.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;

fn opts(auto_sync: bool, download_data: bool, download_files: bool) -> Options {
    Options {
        auto_sync,
        download_data,
        download_files,
    }
}

fn on(m: &mut AutoSync, events: &[Event]) -> Vec<Action> {
    events.iter().filter_map(|e| m.on(e.clone())).collect()
}

fn login(user: &str) -> Event {
    Event::LoginOnline(user.into())
}

fn started(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Start(_)))
        .count()
}

/// A watcher runs, auto-sync is on, ana worked and logged out.
fn logged_out_under_a_watcher() -> AutoSync {
    let mut m = AutoSync::new(Mode::Online, opts(true, true, false));
    assert!(
        on(
            &mut m,
            &[Event::WatcherStarted, login("ana"), Event::Logout]
        )
        .is_empty()
    );
    assert!(m.ticket_armed());
    m
}

#[test]
fn login_logout_dock_syncs_once_and_docking_again_does_nothing() {
    let mut m = logged_out_under_a_watcher();
    let actions = on(&mut m, &[Event::Power(true)]);
    assert_eq!(
        actions,
        [Action::Start(Attempt {
            user: "ana".into(),
            go_online: false,
            download_data: true,
            download_files: false,
            restore: Mode::Online,
        })]
    );
    assert!(
        !m.ticket_armed() && m.ticket().is_none(),
        "the ticket is used"
    );
    let end = on(&mut m, &[Event::AttemptEnded(Outcome::Ok)]);
    assert_eq!(
        end,
        [Action::Finish {
            restore: Mode::Online,
            outcome: Outcome::Ok
        }]
    );
    let again = on(
        &mut m,
        &[
            Event::Power(false),
            Event::Power(true),
            Event::Power(false),
            Event::Power(true),
        ],
    );
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn an_offline_device_goes_online_for_the_attempt_and_back_after() {
    let mut m = AutoSync::new(Mode::Offline, opts(true, false, true));
    on(
        &mut m,
        &[Event::WatcherStarted, login("ana"), Event::Logout],
    );
    let [Action::Start(a)] = &on(&mut m, &[Event::Power(true)])[..] else {
        panic!("one start expected");
    };
    assert!(a.go_online && a.restore == Mode::Offline);
    assert!(!a.download_files, "files only in addition to data");
    assert_eq!(m.mode(), Mode::Online);
    on(&mut m, &[Event::AttemptEnded(Outcome::Error)]);
    assert_eq!(m.mode(), Mode::Offline);
}

#[test]
fn never_logged_in_or_still_logged_in_docking_does_nothing() {
    let mut m = AutoSync::new(Mode::Online, opts(true, true, false));
    assert!(on(&mut m, &[Event::WatcherStarted, Event::Power(true)]).is_empty());
    assert!(
        on(
            &mut m,
            &[login("ana"), Event::Power(false), Event::Power(true)]
        )
        .is_empty()
    );
    assert!(!m.ticket_armed());
}

#[test]
fn a_logout_while_already_docked_syncs_once() {
    let mut m = AutoSync::new(Mode::Online, opts(true, true, false));
    on(
        &mut m,
        &[Event::WatcherStarted, Event::Power(true), login("ana")],
    );
    assert_eq!(started(&on(&mut m, &[Event::Logout])), 1);
}

#[test]
fn an_offline_login_then_logout_arms_the_ticket_of_the_last_online_login() {
    let mut m = logged_out_under_a_watcher();
    on(&mut m, &[Event::LoginOffline("ana".into())]);
    assert!(!m.ticket_armed(), "a login disarms");
    on(&mut m, &[Event::Logout]);
    assert!(m.ticket_armed());
    assert_eq!(started(&on(&mut m, &[Event::Power(true)])), 1);
}

#[test]
fn another_users_logout_arms_nothing_and_leaves_no_ticket() {
    let mut m = AutoSync::new(Mode::Online, opts(true, true, false));
    on(
        &mut m,
        &[Event::WatcherStarted, login("ana"), Event::Logout],
    );
    on(&mut m, &[Event::LoginOffline("bo".into()), Event::Logout]);
    assert!(m.ticket().is_none());
    assert!(on(&mut m, &[Event::Power(true)]).is_empty());
}

#[test]
fn a_watcher_restarted_after_the_logout_voids_the_ticket() {
    let mut m = logged_out_under_a_watcher();
    on(&mut m, &[Event::WatcherStopped, Event::WatcherStarted]);
    assert!(m.ticket().is_none());
    assert!(on(&mut m, &[Event::Power(true)]).is_empty());
}

#[test]
fn a_logout_with_no_watcher_running_arms_nothing() {
    let mut m = AutoSync::new(Mode::Online, opts(true, true, false));
    on(
        &mut m,
        &[login("ana"), Event::Logout, Event::WatcherStarted],
    );
    assert!(m.ticket().is_none());
    assert!(on(&mut m, &[Event::Power(true)]).is_empty());
}

#[test]
fn auto_sync_switched_off_after_the_logout_does_nothing_and_keeps_the_ticket_armed() {
    let mut m = logged_out_under_a_watcher();
    assert!(
        on(
            &mut m,
            &[Event::Options(opts(false, true, false)), Event::Power(true)]
        )
        .is_empty()
    );
    assert!(m.ticket_armed());
    // Switched back on while docked: options are read when the attempt starts.
    assert_eq!(
        started(&on(&mut m, &[Event::Options(opts(true, true, true))])),
        1
    );
}

#[test]
fn a_cancelled_attempt_uses_the_ticket_and_restores_the_mode() {
    let mut m = AutoSync::new(Mode::Offline, opts(true, true, false));
    on(
        &mut m,
        &[
            Event::WatcherStarted,
            login("ana"),
            Event::Logout,
            Event::Power(true),
        ],
    );
    assert_eq!(
        on(&mut m, &[Event::AttemptEnded(Outcome::Cancelled)]),
        [Action::Finish {
            restore: Mode::Offline,
            outcome: Outcome::Cancelled
        }]
    );
    assert!(m.ticket().is_none());
    assert!(on(&mut m, &[Event::Power(false), Event::Power(true)]).is_empty());
}

#[test]
fn a_watcher_stopped_during_its_attempt_cancels_it() {
    let mut m = logged_out_under_a_watcher();
    on(&mut m, &[Event::Power(true)]);
    assert_eq!(
        on(&mut m, &[Event::WatcherStopped]),
        [Action::Finish {
            restore: Mode::Online,
            outcome: Outcome::Cancelled
        }]
    );
}

/// The reference: the same rules as plain flags, written from DESIGN.md's sentences
/// without the machine's types.
#[derive(Debug, Default)]
struct Model {
    logged_in: Option<String>,
    /// The user of the ticket the device holds.
    ticket: Option<String>,
    armed: bool,
    watching: bool,
    power: bool,
    offline: bool,
    auto_sync: bool,
    data: bool,
    files: bool,
    /// An attempt runs; the mode to restore (offline?).
    running: Option<bool>,
}

impl Model {
    /// Applies the event; returns `Some(true)` when an attempt starts, `Some(false)`
    /// when one ends.
    fn step(&mut self, e: &Event) -> Option<bool> {
        let locked = self.running.is_some();
        match e {
            Event::LoginOnline(u) if !locked => {
                self.logged_in = Some(u.clone());
                self.ticket = Some(u.clone());
                self.armed = false;
            }
            Event::LoginOffline(u) if !locked => {
                self.logged_in = Some(u.clone());
                self.armed = false;
            }
            Event::Logout if !locked => {
                if let Some(u) = self.logged_in.take() {
                    let own = self.ticket.as_ref() == Some(&u);
                    if own && self.watching && self.auto_sync {
                        self.armed = true;
                    } else {
                        self.ticket = None;
                        self.armed = false;
                    }
                }
            }
            Event::Mode(m) if !locked => self.offline = *m == Mode::Offline,
            Event::LoginOnline(_) | Event::LoginOffline(_) | Event::Logout | Event::Mode(_) => {}
            Event::WatcherStarted | Event::WatcherStopped => {
                let ended = self.end();
                if self.armed {
                    self.armed = false;
                    self.ticket = None;
                }
                self.watching = *e == Event::WatcherStarted;
                if ended.is_some() {
                    return ended;
                }
            }
            Event::Power(p) => self.power = *p,
            Event::Options(o) => {
                self.auto_sync = o.auto_sync;
                self.data = o.download_data;
                self.files = o.download_files;
            }
            Event::AttemptEnded(_) => return self.end(),
        }
        if self.running.is_none()
            && self.armed
            && self.watching
            && self.power
            && self.auto_sync
            && self.logged_in.is_none()
        {
            self.running = Some(self.offline);
            self.offline = false;
            self.armed = false;
            self.ticket = None;
            return Some(true);
        }
        None
    }

    fn end(&mut self) -> Option<bool> {
        self.offline = self.running.take()?;
        Some(false)
    }
}

fn event() -> impl Strategy<Value = Event> {
    let user = prop_oneof![Just("ana".to_string()), Just("bo".to_string())];
    prop_oneof![
        3 => user.clone().prop_map(Event::LoginOnline),
        2 => user.prop_map(Event::LoginOffline),
        4 => Just(Event::Logout),
        1 => Just(Event::WatcherStarted),
        1 => Just(Event::WatcherStopped),
        4 => any::<bool>().prop_map(Event::Power),
        2 => (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(a, d, f)| Event::Options(opts(a, d, f))),
        1 => any::<bool>().prop_map(|o| Event::Mode(if o { Mode::Offline } else { Mode::Online })),
        3 => prop_oneof![Just(Outcome::Ok), Just(Outcome::Error), Just(Outcome::Cancelled)]
            .prop_map(Event::AttemptEnded),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Checks one run: the machine agrees with the model at every step, and the whole
/// history has the properties the seed promises.
fn check(events: &[Event]) -> Result<(), TestCaseError> {
    let mut m = AutoSync::new(Mode::Online, opts(false, true, false));
    let mut model = Model {
        data: true,
        ..Model::default()
    };
    // History facts since the last start: an online login, and an effective logout
    // under the current watcher with no login after it.
    let mut online_login_since_start = false;
    let mut logout_under_watcher = false;
    let mut mode_before_start = None;
    for (i, e) in events.iter().enumerate() {
        let running = m.attempt().is_some();
        let logged_in = model.logged_in.is_some();
        let action = m.on(e.clone());
        let expected = model.step(e);
        let seen = action.as_ref().map(|a| matches!(a, Action::Start(_)));
        prop_assert_eq!(seen, expected, "step {}: {:?}", i, e);
        prop_assert_eq!(m.ticket_armed(), model.armed, "armed after step {}", i);
        prop_assert_eq!(
            m.mode() == Mode::Offline,
            model.offline,
            "mode after step {}",
            i
        );

        match e {
            Event::LoginOnline(_) if !running => {
                online_login_since_start = true;
                logout_under_watcher = false;
            }
            Event::LoginOffline(_) if !running => logout_under_watcher = false,
            Event::Logout if !running && logged_in => logout_under_watcher = model.watching,
            Event::WatcherStarted | Event::WatcherStopped => logout_under_watcher = false,
            _ => {}
        }
        match action {
            Some(Action::Start(a)) => {
                prop_assert!(online_login_since_start, "one attempt per online login");
                prop_assert!(logout_under_watcher, "a logout under this watcher first");
                prop_assert!(model.logged_in.is_none() && model.power && model.auto_sync);
                prop_assert!(!a.download_files || a.download_data);
                prop_assert_eq!(a.go_online, a.restore == Mode::Offline);
                online_login_since_start = false;
                logout_under_watcher = false;
                mode_before_start = Some(a.restore);
            }
            Some(Action::Finish { restore, .. }) => {
                prop_assert_eq!(Some(restore), mode_before_start.take());
                prop_assert_eq!(m.mode(), restore);
            }
            None => {}
        }
    }
    Ok(())
}

/// At least 10,000 random sequences (`PROPTEST_CASES` to change it).
#[test]
fn random_event_sequences_follow_the_model_and_the_seed() {
    let mut config = Config::with_cases(cases());
    config.source_file = Some(file!());
    config.failure_persistence = None;
    let mut runner = TestRunner::new(config);
    let result = runner.run(&vec(event(), 1..80), |events| check(&events));
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
}
