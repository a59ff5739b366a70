//! Automatic synchronization on docking (DESIGN.md "Auto-sync (normative)", the seed's
//! "Automatic synchronization"), end to end: a real server, the real binary's
//! `device watch` on a fake `/sys/class/power_supply` folder, and the crew's commands.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::*;

const TASK: &str = "north-inspections";

/// A power supply folder in the Linux layout, with one `Mains` supply.
pub(crate) struct Dock {
    dir: TempDir,
}

impl Dock {
    pub(crate) fn new() -> Dock {
        let dir = TempDir::new("power");
        let ac = dir.0.join("AC");
        std::fs::create_dir_all(&ac).unwrap();
        std::fs::write(ac.join("type"), "Mains\n").unwrap();
        std::fs::write(ac.join("online"), "0\n").unwrap();
        let bat = dir.0.join("BAT0");
        std::fs::create_dir_all(&bat).unwrap();
        std::fs::write(bat.join("type"), "Battery\n").unwrap();
        std::fs::write(bat.join("online"), "1\n").unwrap();
        Dock { dir }
    }

    pub(crate) fn set(&self, docked: bool) {
        let online = if docked { "1\n" } else { "0\n" };
        std::fs::write(self.dir.0.join("AC").join("online"), online).unwrap();
    }

    fn path(&self) -> PathBuf {
        self.dir.0.clone()
    }
}

/// A running `device watch`, stopped with SIGTERM on drop.
pub(crate) struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    pub(crate) fn start(dev: &DeviceDir, dock: &Dock) -> Watcher {
        let mut child = Command::new(BIN)
            .args(["device", "watch", "--poll-ms", "50", "--power-supply"])
            .arg(dock.path())
            .arg("--dir")
            .arg(dev.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let w = Watcher { child, lines };
        w.expect("watching");
        w
    }

    /// Waits (10 s at most) for an output line containing `text`; returns it.
    pub(crate) fn expect(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("the watcher never said `{text}`"),
            }
        }
    }

    /// Lines printed so far that contain `text`.
    fn said(&self, text: &str) -> usize {
        self.lines.try_iter().filter(|l| l.contains(text)).count()
    }

    /// Waits (20 s at most) for the watcher to end by itself; its exit code.
    pub(crate) fn ended(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the watcher did not end");
    }

    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the watcher stops cleanly: {status:?}");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device of `ana` with the north task downloaded and auto-sync on.
pub(crate) fn crew(office: &Office, id: &str) -> DeviceDir {
    let dev = office.device(id, &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    dev.run(&["options", "--auto-sync", "on"], "").ok();
    dev
}

pub(crate) fn first_asset(dev: &DeviceDir) -> i64 {
    dev.replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap()
}

fn edit(dev: &DeviceDir, asset: i64, status: &str) {
    dev.replica()
        .execute(
            "UPDATE assets SET status = ?1 WHERE id = ?2",
            rusqlite::params![status, asset],
        )
        .unwrap();
}

/// An asset's name in the device's replica.
fn name_on(dev: &DeviceDir, asset: i64) -> String {
    dev.replica()
        .query_row("SELECT name FROM assets WHERE id = ?1", [asset], |r| {
            r.get(0)
        })
        .unwrap()
}

/// `last_sync` as `device status` shows it.
fn last(dev: &DeviceDir) -> serde_json::Value {
    dev.status()["last_sync"].clone()
}

/// Nothing happens for a while (many polls): `last_sync` stays as it was.
fn nothing_happens(dev: &DeviceDir, w: &Watcher) {
    let before = last(dev);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(last(dev), before, "nothing ran");
    assert_eq!(w.said("automatic synchronization started"), 0);
}

#[test]
fn a_logout_then_docking_synchronizes_once_and_restores_the_mode() {
    let office = Office::new(40);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    let asset = first_asset(&dev);

    // Logged in and docked (charging in an emergency): nothing.
    dock.set(true);
    w.expect("external power: docked");
    nothing_happens(&dev, &w);
    dock.set(false);
    w.expect("external power: none");

    edit(&dev, asset, "fixed in the field");
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'renamed before docking' WHERE id = {asset}"
    ));
    dev.run(&["mode", "offline"], "").ok();
    dev.run(&["logout"], "").ok();
    assert_eq!(dev.status()["ticket_armed"], true);
    dock.set(true);
    w.expect("automatic synchronization started for ana (online for it)");
    w.expect("automatic synchronization ok");
    let l = last(&dev);
    assert_eq!(
        (l["kind"].as_str(), l["result"].as_str()),
        (Some("auto"), Some("ok")),
        "{l}"
    );
    assert_eq!(l["op"], "sync");
    let s = dev.status();
    assert_eq!(s["ticket_armed"], false);
    assert_eq!(s["mode"], "offline", "the mode the user left");
    assert_eq!(s["pending"], 0);
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {asset}")),
        "fixed in the field"
    );
    // download-data (on by default): the office's change came down.
    let name = name_on(&dev, asset);
    assert_eq!(name, "renamed before docking");
    // Nobody is logged in: the replica still refuses edits.
    let refused = dev
        .replica()
        .execute("UPDATE assets SET status = 'x' WHERE id = ?1", [asset])
        .unwrap_err();
    assert!(refused.to_string().contains("log in"), "{refused}");

    // Docked again: nothing (once per logout).
    dock.set(false);
    w.expect("external power: none");
    dock.set(true);
    w.expect("external power: docked");
    nothing_happens(&dev, &w);
    w.stop();
}

#[test]
fn docking_does_nothing_without_an_armed_ticket() {
    let office = Office::new(20);
    let dock = Dock::new();
    dock.set(true);
    // Never logged in.
    let fresh = office.device("tab0", &[TASK]);
    fresh.run(&["options", "--auto-sync", "on"], "").ok();
    let w = Watcher::start(&fresh, &dock);
    nothing_happens(&fresh, &w);
    assert!(fresh.status()["last_sync"].is_null());
    w.stop();

    // Logged out while no watcher ran: nothing armed, and a new watcher finds nothing.
    let dev = crew(&office, "tab1");
    dev.run(&["logout"], "").ok();
    assert_eq!(dev.status()["ticket_armed"], false);
    let w = Watcher::start(&dev, &dock);
    nothing_happens(&dev, &w);
    // The watcher restarted after a logout (a reboot): what the old one armed is void.
    dev.login("ana").ok();
    let w2 = {
        w.stop();
        Watcher::start(&dev, &dock)
    };
    dock.set(false);
    w2.expect("external power: none");
    dev.run(&["logout"], "").ok();
    assert_eq!(dev.status()["ticket_armed"], true);
    w2.stop();
    assert_eq!(
        dev.status()["ticket_armed"],
        false,
        "void once its watcher stops"
    );
    let w3 = Watcher::start(&dev, &dock);
    dock.set(true);
    w3.expect("external power: docked");
    nothing_happens(&dev, &w3);
    w3.stop();
}

#[test]
fn logging_out_while_docked_synchronizes_once_and_send_only_without_download_data() {
    let office = Office::new(30);
    let dev = crew(&office, "tab1");
    dev.run(&["options", "--download-data", "off"], "").ok();
    let dock = Dock::new();
    dock.set(true);
    let w = Watcher::start(&dev, &dock);
    w.expect("external power: docked");
    let asset = first_asset(&dev);
    edit(&dev, asset, "sent only");
    // An office change to another row (the edited row's acknowledgement would bring
    // its own office changes along).
    let other: i64 = dev
        .replica()
        .query_row("SELECT max(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'not downloaded' WHERE id = {other}"
    ));
    dev.run(&["logout"], "").ok();
    w.expect("automatic synchronization ok");
    let l = last(&dev);
    assert_eq!(
        (l["op"].as_str(), l["kind"].as_str()),
        (Some("send"), Some("auto")),
        "{l}"
    );
    assert_eq!(dev.status()["mode"], "online", "the mode the user left");
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {asset}")),
        "sent only"
    );
    let name = name_on(&dev, other);
    assert_ne!(name, "not downloaded", "send only");
    nothing_happens(&dev, &w);
    w.stop();
}

#[test]
fn auto_sync_switched_off_after_the_logout_keeps_the_ticket_armed() {
    let office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    dev.run(&["logout"], "").ok();
    dev.run(&["options", "--auto-sync", "off"], "").ok();
    dock.set(true);
    w.expect("external power: docked");
    nothing_happens(&dev, &w);
    assert_eq!(dev.status()["ticket_armed"], true);
    w.stop();
}

#[test]
fn an_offline_login_then_logout_arms_the_ticket_of_the_last_online_login() {
    let office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    dev.run(&["mode", "offline"], "").ok();
    dev.run(&["logout"], "").ok();
    dev.login("ana").ok();
    assert_eq!(dev.status()["ticket_armed"], false, "a login disarms it");
    let asset = first_asset(&dev);
    edit(&dev, asset, "offline work");
    dev.run(&["logout"], "").ok();
    assert_eq!(dev.status()["ticket_armed"], true);
    dock.set(true);
    w.expect("automatic synchronization ok");
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {asset}")),
        "offline work"
    );
    assert_eq!(dev.status()["mode"], "offline");
    w.stop();
}

#[test]
fn a_server_down_at_docking_ends_red_keeps_the_journal_and_tries_no_more() {
    let mut office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    edit(&dev, first_asset(&dev), "waiting");
    dev.run(&["logout"], "").ok();
    office.server.child.kill().unwrap();
    office.server.child.wait().unwrap();
    dock.set(true);
    w.expect("automatic synchronization error");
    let s = dev.status();
    assert_eq!(s["last_sync"]["result"], "error", "{s}");
    assert_eq!(s["last_sync"]["kind"], "auto");
    assert_eq!(s["pending"], 1, "the journal is intact");
    assert_eq!(s["ticket_armed"], false, "used");
    // The server comes back: no second attempt.
    office.server = Server::start(&office.db_url);
    dev.use_server(&office.server.url);
    nothing_happens(&dev, &w);
    assert_eq!(dev.status()["pending"], 1);
    w.stop();
}

#[test]
fn an_expired_ticket_is_refused_and_nothing_is_sent() {
    let mut office = Office::new(20);
    office.server = Server::start_with(&office.db_url, &["--ticket-ttl", "1s"]);
    let dev = office.device("tab1", &[TASK]);
    dev.use_server(&office.server.url);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    dev.run(&["options", "--auto-sync", "on"], "").ok();
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    let asset = first_asset(&dev);
    edit(&dev, asset, "too late");
    dev.run(&["logout"], "").ok();
    std::thread::sleep(Duration::from_millis(2500));
    dock.set(true);
    w.expect("automatic synchronization error");
    let l = last(&dev);
    assert!(l["message"].as_str().unwrap().contains("expired"), "{l}");
    assert_ne!(
        office.value(&format!("SELECT status FROM assets WHERE id = {asset}")),
        "too late"
    );
    assert_eq!(dev.status()["pending"], 1);
    w.stop();
}

#[test]
fn a_used_ticket_replayed_by_hand_is_refused() {
    let office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    dev.run(&["logout"], "").ok();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let ticket = state["ticket"]
        .as_str()
        .expect("an armed ticket's secret")
        .to_string();
    dock.set(true);
    w.expect("automatic synchronization ok");
    w.stop();
    let replay = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "content-type: application/json"])
        .args(["-H", "x-fieldsync-protocol: 1"])
        .args(["-H", &format!("x-fieldsync-device: {}", "tab1")])
        .args([
            "-H",
            &format!(
                "x-fieldsync-device-secret: {}",
                state["device_secret"].as_str().unwrap()
            ),
        ])
        .args(["-d", &format!("{{\"ticket\":\"{ticket}\"}}")])
        .arg(format!("{}/api/v1/tickets/redeem", office.server.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&replay.stdout), "401");
}

#[test]
fn device_cancel_stops_an_automatic_synchronization_safely() {
    let office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    // A long journal: the send takes a while.
    let n = 40_000;
    long_journal(&dev, n);
    dev.run(&["logout"], "").ok();
    dock.set(true);
    w.expect("automatic synchronization started");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.status()["running"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the attempt never showed its progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = dev.status()["running"].clone();
    assert_eq!(
        (running["op"].as_str(), running["kind"].as_str()),
        (Some("sync"), Some("auto"))
    );
    let out = dev.run(&["cancel"], "").ok();
    assert!(out.stdout.contains("cancelled the sync (auto)"), "{out:?}");
    w.expect("automatic synchronization cancelled");
    let s = dev.status();
    assert_eq!(s["last_sync"]["result"], "cancelled", "{s}");
    assert!(s["running"].is_null());
    assert_eq!(s["ticket_armed"], false, "used");
    assert_eq!(integrity(&dev.replica()), "ok");
    w.stop();
    all_sent_once(&office, &dev, n);
}

/// Nothing lost, nothing twice: the next send (an upload whose acknowledgement the
/// cancel cut off is sent again and answered by its recorded outcome) leaves every
/// one of the `n` long-journal entries in the main database, once.
fn all_sent_once(office: &Office, dev: &DeviceDir, n: i64) {
    dev.login("ana").ok();
    dev.run(&["send"], "").ok();
    let sent: i64 = office
        .value("SELECT count(*) FROM inspections WHERE id LIKE 'long-%'")
        .parse()
        .unwrap();
    assert_eq!(sent, n);
    assert_eq!(dev.status()["pending"], 0);
}

/// `n` new inspections in the replica, in one statement: a long journal to send.
pub(crate) fn long_journal(dev: &DeviceDir, n: i64) {
    let asset = first_asset(dev);
    dev.replica()
        .execute(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?2)
             INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             SELECT printf('long-%06d', i), ?1, 'ana', '2026-12-03T09:00:00.000Z', 'ok', 'x' FROM k",
            rusqlite::params![asset, n],
        )
        .unwrap();
}

#[test]
fn the_watcher_waits_out_a_busy_folder_and_stops_safely_on_sigterm_mid_attempt() {
    let office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    dev.run(&["logout"], "").ok();
    // Another program holds the folder while the device is docked: the watcher tries
    // again at its next polls and synchronizes once it is free.
    let mut holder = Command::new("flock")
        .arg(dev.path().join("lock"))
        .args(["sleep", "1.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let docked = Instant::now();
    dock.set(true);
    w.expect("automatic synchronization ok");
    assert!(
        docked.elapsed() >= Duration::from_millis(900),
        "it waited for the folder"
    );
    assert!(holder.wait().unwrap().success());
    w.stop();

    // SIGTERM while an attempt runs: it is cancelled safely, the watcher exits 0.
    dev.login("ana").ok();
    let n = 40_000;
    long_journal(&dev, n);
    dock.set(false);
    let w = Watcher::start(&dev, &dock);
    dev.run(&["logout"], "").ok();
    dock.set(true);
    w.expect("automatic synchronization started");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.status()["running"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the attempt never showed its progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w.stop();
    let s = dev.status();
    let result = s["last_sync"]["result"].as_str().unwrap();
    assert!(["cancelled", "ok"].contains(&result), "{s}");
    assert!(s["running"].is_null());
    assert_eq!(integrity(&dev.replica()), "ok");
    all_sent_once(&office, &dev, n);
}
