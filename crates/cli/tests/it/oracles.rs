//! No oracles (issue [security] point 3, the parts built): a login for an unknown user
//! costs what a wrong password costs and reads the same; an unknown device id, a bad
//! secret and a revoked device's id with a bad secret get the same answer; an upload
//! entry on a key outside the slice is refused alike whether the key exists there or
//! not, and whatever base version it claims.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn an_unknown_user_costs_what_a_wrong_password_costs() {
    let office = Office::new(10);
    // Many wrong logins on purpose: a server that throttles none of them.
    let mut cmd = Command::new(BIN);
    cmd.env("FIELDSYNC_LOGIN_LIMIT", "1000");
    let server = Server::start_by(cmd, &office.db_url);
    let dev = office.device("tab1", &[]);
    dev.use_server(&server.url);
    let login = |user: &str| {
        let t = Instant::now();
        let run = dev.run(&["login", user, "--password-stdin"], "not-the-password\n");
        (t.elapsed(), run)
    };
    // Warm both paths (the unknown user's hash is made once, at the first).
    login("ana");
    login("nobody-here");
    // A shared machine's load lands on one login or the other at random, so one round
    // can read uneven; a real oracle (the unknown user skipping the hash) reads uneven
    // in every round. Up to three rounds, one even round passes.
    let mut rounds = vec![];
    for _ in 0..3 {
        let (mut unknown, mut wrong) = (vec![], vec![]);
        for _ in 0..15 {
            let (t, run) = login("nobody-here");
            assert_eq!(run.code, 4, "{run:?}");
            assert_eq!(run.stderr, "error: wrong user name or password\n");
            unknown.push(t);
            let (t, run) = login("ana");
            assert_eq!(run.code, 4, "{run:?}");
            assert_eq!(run.stderr, "error: wrong user name or password\n");
            wrong.push(t);
        }
        let (u, w) = (median(unknown), median(wrong));
        let ratio = u.as_secs_f64() / w.as_secs_f64();
        eprintln!("medians: unknown user {u:?}, wrong password {w:?}, ratio {ratio:.2}");
        if (0.8..=1.25).contains(&ratio) {
            return;
        }
        rounds.push(format!("{u:?} against {w:?}"));
    }
    panic!("an unknown user's login against a wrong password's, in each round: {rounds:?}");
}

/// `curl` of `GET /api/v1/tasks` as device `id` with `secret`: status and body.
fn tasks_as(url: &str, id: &str, secret: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", "x-fieldsync-protocol: 1"])
        .args(["-H", &format!("x-fieldsync-device: {id}")])
        .args(["-H", &format!("x-fieldsync-device-secret: {secret}")])
        .arg(format!("{url}/api/v1/tasks"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.to_string(), body.to_string())
}

#[test]
fn a_revoked_device_and_an_unknown_one_read_alike_until_the_secret_checks() {
    let office = Office::new(10);
    let dev = office.device("tab1", &[]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let secret = state["device_secret"].as_str().unwrap().to_string();
    let url = &office.server.url;
    let unknown = tasks_as(url, "no-such-device", "0123");
    assert_eq!(unknown.0, "401", "{unknown:?}");
    assert_eq!(tasks_as(url, "tab1", "0123"), unknown, "a bad secret");
    match office.engine() {
        Engine::Sqlite => {
            office.execute_batch("UPDATE fieldsync_devices SET revoked = 1 WHERE id = 'tab1'")
        }
        Engine::Postgres => {
            office.execute_batch("UPDATE fieldsync.devices SET revoked = true WHERE id = 'tab1'")
        }
    }
    assert_eq!(
        tasks_as(url, "tab1", "0123"),
        unknown,
        "revoked, with a bad secret"
    );
    let revoked = tasks_as(url, "tab1", &secret);
    assert_eq!(revoked.0, "403", "{revoked:?}");
    assert!(revoked.1.contains("revoked"), "{revoked:?}");
}

const EDIT_URGENT: &str = r#"
name = "urgent-edits"
[[tables]]
name = "work_orders"
filter = "priority >= 5"
write = ["update", "delete"]
"#;

/// What `device send` answers for one forged journal entry `op` on work order `key`
/// claiming `base` (SQL: a number or NULL), with the key itself blanked out; the
/// forged entry and its stored upload are dropped afterwards.
fn send_forged(dev: &DeviceDir, op: &str, key: &str, base: &str) -> (i32, String) {
    let new = format!(
        r#"{{"id":"{key}","asset_id":1,"title":"probe","priority":9,"status":"open","due":null}}"#
    );
    let (old, new) = match op {
        "update" => (new.replace("probe", "was"), new),
        _ => (new, "NULL".to_string()),
    };
    let q = |s: &str| match s {
        "NULL" => s.to_string(),
        _ => format!("'{s}'"),
    };
    let sql = format!(
        "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at) \
         VALUES ('work_orders', '{key}', '{op}', {}, {}, {base}, 'ana', '2026-12-02T10:00:00.000Z')",
        q(&old),
        q(&new)
    );
    let shell = |sql: &str| {
        let out = Command::new("sqlite3")
            .arg(dev.replica_path())
            .arg(sql)
            .output()
            .expect("sqlite3 runs");
        assert!(out.status.success(), "{out:?}");
    };
    shell(&sql);
    let run = dev.run(&["send"], "");
    shell("DELETE FROM fieldsync_journal; DELETE FROM fieldsync_upload");
    // The journal's numbering goes on from probe to probe: not the server's answer.
    let stderr = run.stderr.replace(key, "KEY");
    let stderr = match stderr.split_once("journal #") {
        Some((head, tail)) => {
            format!(
                "{head}journal #N{}",
                tail.trim_start_matches(|c: char| c.is_ascii_digit())
            )
        }
        None => stderr,
    };
    (run.code, stderr)
}

#[test]
fn upload_entries_outside_the_slice_tell_nothing_of_the_key() {
    let office = Office::new(5);
    // Outside the crew's slice: a row of another task's, and one the office deleted.
    office.execute_batch(
        "INSERT INTO work_orders (id, asset_id, title, priority, status) \
         VALUES ('wo-in', 1, 'urgent', 7, 'open'), ('wo-out', 1, 'routine', 1, 'open'), \
                ('wo-gone', 1, 'scrapped', 8, 'open')",
    );
    office.execute_batch("UPDATE work_orders SET title = 'routine, twice' WHERE id = 'wo-out'");
    office.execute_batch("DELETE FROM work_orders WHERE id = 'wo-gone'");
    office.apply_task("urgent.toml", EDIT_URGENT, "urgent-edits", "ana");
    let dev = office.device("tab1", &["urgent-edits"]);
    dev.login("ana").ok();
    dev.run(&["download", "urgent-edits"], "").ok();
    // Bases: one below every row's version, the device's own cursor (a base it was
    // handed), and one it never was.
    let cursor: String = dev
        .replica()
        .query_row(
            "SELECT value FROM fieldsync_replica WHERE key = 'cursor'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // A base below every version is taken as not recorded for this device: rows
    // outside the slice are refused by value. (A row deleted since such a base is
    // judged as the deletion it may have been, DESIGN's "changed since": not probed.)
    let probes = [
        ("1", &["wo-out"][..]),
        (cursor.as_str(), &["wo-out", "wo-gone"][..]),
        ("999999999", &["wo-out", "wo-gone"][..]),
    ];
    for op in ["update", "delete"] {
        for (base, keys) in probes {
            let nowhere = send_forged(&dev, op, "wo-nowhere", base);
            assert_eq!(nowhere.0, 4, "{op} base {base}: {nowhere:?}");
            for key in keys {
                let answer = send_forged(&dev, op, key, base);
                assert_eq!(
                    answer, nowhere,
                    "{op} {key} base {base}: reads unlike no key"
                );
            }
        }
    }
    // Changed by the office since the device's base, the row is judged moved out of
    // the slice (a conflict, not applied): the device hears none of its values.
    office.execute_batch("UPDATE work_orders SET title = 'office secret' WHERE id = 'wo-out'");
    let (code, stderr) = send_forged(&dev, "update", "wo-out", &cursor);
    assert_eq!(code, 0, "{stderr}");
    let conflicts = dev.run(&["conflicts", "--json"], "").ok().stdout;
    assert!(conflicts.contains("wo-out"), "{conflicts}");
    for path in [dev.path().join("state.json"), dev.replica_path()] {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w == b"office secret"),
            "{} holds another task's value",
            path.display()
        );
    }
    // Nothing was written.
    assert_eq!(
        office.value("SELECT title FROM work_orders WHERE id = 'wo-out'"),
        "office secret"
    );
    assert_eq!(
        office.value("SELECT count(*) FROM work_orders WHERE id IN ('wo-nowhere', 'wo-gone')"),
        "0"
    );
}

crate::also_on_postgres!(
    an_unknown_user_costs_what_a_wrong_password_costs,
    a_revoked_device_and_an_unknown_one_read_alike_until_the_secret_checks,
    upload_entries_outside_the_slice_tell_nothing_of_the_key,
);
