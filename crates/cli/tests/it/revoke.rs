//! A revoked device (issue [security] point 4): refused everywhere from then on; at
//! its next contact it wipes its replica, journal, files and credentials, backing up
//! its unsent changes first only when the administrator asked `--keep-changes`.

use std::process::Command;

use crate::harness::*;

/// A device of ana's with a downloaded north replica and one unsent change.
fn device_with_a_change(office: &Office) -> (DeviceDir, String) {
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'edited before the revocation' \
             WHERE id = (SELECT min(id) FROM assets)",
            [],
        )
        .unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let secret = state["device_secret"].as_str().unwrap().to_string();
    (dev, secret)
}

/// The names in the device folder, sorted.
fn folder(dev: &DeviceDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dev.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn backups(dev: &DeviceDir) -> Vec<String> {
    folder(dev)
        .into_iter()
        .filter(|n| n.starts_with("backup-"))
        .collect()
}

type Route = (&'static str, &'static str, &'static str);

/// `curl` of `method path` with `body` as device `tab1` with `secret`: the status and body.
fn as_device(url: &str, (method, path, body): Route, secret: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .args(["-H", "x-fieldsync-protocol: 1"])
        .args(["-H", "x-fieldsync-device: tab1"])
        .args(["-H", &format!("x-fieldsync-device-secret: {secret}")])
        .args(["-H", "content-type: application/json"])
        .args(["--data-binary", body])
        .arg(format!("{url}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.to_string(), body.to_string())
}

const TASKS: Route = ("GET", "/api/v1/tasks", "");

fn assert_wiped(dev: &DeviceDir, run: &Run) {
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .contains("this device was revoked by the office; its data was wiped"),
        "{run:?}"
    );
    assert_folder_wiped(dev);
}

/// Nothing left in the folder but the lock, backups and a state without credentials.
fn assert_folder_wiped(dev: &DeviceDir) {
    let left: Vec<String> = folder(dev)
        .into_iter()
        .filter(|n| n != "lock" && n != "state.json" && !n.starts_with("backup-"))
        .collect();
    assert!(left.is_empty(), "left in the folder: {left:?}");
    let state = std::fs::read_to_string(dev.path().join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    for key in ["device_secret", "device_id", "server", "session", "task"] {
        assert!(state[key].is_null(), "state.json keeps {key}: {state}");
    }
    assert_eq!(state["verifiers"], serde_json::json!({}), "{state}");
    // Paired to nothing: the next command says so.
    let again = dev.run(&["tasks"], "");
    assert_eq!(again.code, 4, "{again:?}");
    assert!(again.stderr.contains("not paired"), "{again:?}");
}

#[test]
fn a_revoked_device_wipes_its_data_at_its_next_contact() {
    let office = Office::new(20);
    let (dev, secret) = device_with_a_change(&office);
    let url = office.server.url.clone();
    // Before: the device's credentials pass (the route wants a login besides).
    let before = as_device(&url, TASKS, &secret);
    assert!(before.1.contains("not logged in"), "{before:?}");
    let out = office.admin(&["device", "revoke", "tab1"], "").ok();
    assert!(out.stdout.contains("revoked tab1"), "{out:?}");
    let run = dev.run(&["sync"], "");
    assert_wiped(&dev, &run);
    assert!(backups(&dev).is_empty(), "no backup without --keep-changes");
    // Every route refuses the device from then on, with its right secret.
    for route in [
        TASKS,
        (
            "POST",
            "/api/v1/login",
            r#"{"user":"ana","password":"ana-pw"}"#,
        ),
        ("POST", "/api/v1/logout", ""),
        ("GET", "/api/v1/tasks/north-inspections/download", ""),
        ("POST", "/api/v1/uploads", ""),
        ("POST", "/api/v1/tickets/redeem", r#"{"ticket":"0123"}"#),
        // The file routes too, whether or not this server keeps files.
        ("GET", "/api/v1/tasks/north-inspections/files", ""),
        (
            "GET",
            "/api/v1/files/0000000000000000000000000000000000000000000000000000000000000000",
            "",
        ),
    ] {
        let (status, body) = as_device(&url, route, &secret);
        assert_eq!(status, "403", "{route:?}: {body}");
        assert!(body.contains("\"revoked\""), "{route:?}: {body}");
    }
    // A bad secret still reads like an unknown device.
    assert_eq!(as_device(&url, TASKS, "0123").0, "401");
    let list = office.admin(&["device", "list", "--json"], "").ok();
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list[0]["id"], "tab1", "{list}");
    assert_eq!(list[0]["revoked"], true, "{list}");
    // An unknown device cannot be revoked.
    let unknown = office.admin(&["device", "revoke", "no-such-device"], "");
    assert_ne!(unknown.code, 0, "{unknown:?}");
}

/// The watcher's automatic synchronization meets the revocation: the data goes at
/// once (not at the crew's next command), and the watcher ends, exit 4.
#[test]
fn the_watcher_wipes_a_revoked_device_at_docking() {
    use crate::docking::{Dock, Watcher, crew};
    let office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    dev.run(&["logout"], "").ok();
    assert_eq!(dev.status()["ticket_armed"], true);
    office.admin(&["device", "revoke", "tab1"], "").ok();
    dock.set(true);
    w.expect("automatic synchronization started");
    assert_eq!(w.ended(), Some(4), "the watcher ends as revoked");
    assert_folder_wiped(&dev);
}

#[test]
fn keep_changes_backs_up_the_unsent_changes_before_the_wipe() {
    let office = Office::new(20);
    let (dev, _) = device_with_a_change(&office);
    office
        .admin(&["device", "revoke", "tab1", "--keep-changes"], "")
        .ok();
    let run = dev.run(&["tasks"], "");
    assert_wiped(&dev, &run);
    let backups = backups(&dev);
    assert_eq!(backups.len(), 1, "{:?}", folder(&dev));
    assert!(run.stderr.contains(&backups[0]), "{run:?}");
    let text = std::fs::read_to_string(dev.path().join(&backups[0])).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("edited before the revocation"), "{text}");
}

crate::also_on_postgres!(
    a_revoked_device_wipes_its_data_at_its_next_contact,
    keep_changes_backs_up_the_unsent_changes_before_the_wipe,
);
