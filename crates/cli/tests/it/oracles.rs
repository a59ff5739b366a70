//! No oracles (issue [security] point 3, the parts built): a login for an unknown user
//! costs what a wrong password costs and reads the same; an unknown device id, a bad
//! secret and a revoked device's id with a bad secret get the same answer.

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
    assert!(
        (0.8..=1.25).contains(&ratio),
        "an unknown user's login takes {u:?}, a wrong password's {w:?}"
    );
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

crate::also_on_postgres!(
    an_unknown_user_costs_what_a_wrong_password_costs,
    a_revoked_device_and_an_unknown_one_read_alike_until_the_secret_checks,
);
