//! Login throttling (issue [security] point 2): failed logins counted per user and per
//! device in the main database; past the limit, `429 throttled` with `Retry-After`
//! without checking the password; a success resets the user's count; a fleet behind
//! one address is never refused for other devices' or users' failures.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// `curl -i` of a login as `dev`: the status line and headers, and the body.
fn login_by_hand(url: &str, dev: &DeviceDir, user: &str, password: &str) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-i", "-X", "POST"])
        .args(["-H", "x-fieldsync-protocol: 1"])
        .args([
            "-H",
            &format!(
                "x-fieldsync-device: {}",
                state["device_id"].as_str().unwrap()
            ),
        ])
        .args([
            "-H",
            &format!(
                "x-fieldsync-device-secret: {}",
                state["device_secret"].as_str().unwrap()
            ),
        ])
        .args(["-H", "content-type: application/json"])
        .args([
            "--data-binary",
            &format!(r#"{{"user":"{user}","password":"{password}"}}"#),
        ])
        .arg(format!("{url}/api/v1/login"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn wrong_passwords_throttle_the_user_until_the_wait_passes() {
    let office = Office::new(10);
    let mut cmd = Command::new(BIN);
    cmd.env("FIELDSYNC_LOGIN_WAIT_MS", "3000");
    let server = Server::start_by(cmd, &office.db_url);
    let dev = office.device("tab1", &[]);
    dev.use_server(&server.url);
    let login =
        |user: &str, pw: &str| dev.run(&["login", user, "--password-stdin"], &format!("{pw}\n"));
    // Five checked, then refused: quick enough that the first wait has not passed.
    for i in 0..8 {
        let run = login("ana", "not-the-password");
        assert_eq!(run.code, 4, "{run:?}");
        if i < 5 {
            assert_eq!(
                run.stderr, "error: wrong user name or password\n",
                "attempt {i}"
            );
        } else {
            assert!(
                run.stderr
                    .starts_with("error: too many attempts, try again in "),
                "attempt {i}: {run:?}"
            );
        }
    }
    // The right password is not even checked.
    let run = login("ana", "ana-pw");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("too many attempts, try again in 3 s"),
        "{run:?}"
    );
    let answer = login_by_hand(&server.url, &dev, "ana", "ana-pw");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_lowercase().contains("retry-after: 3\r\n")
            || answer.to_lowercase().contains("retry-after: 2\r\n"),
        "{answer}"
    );
    assert!(answer.contains(r#""code":"throttled""#), "{answer}");
    // Another user on the same device, with the right password, logs in: the device
    // allows five times a user's failures.
    login("ben", "ben-pw").ok();
    std::thread::sleep(Duration::from_millis(3300));
    login("ana", "ana-pw").ok();
    // The success reset ana's count: a wrong password is checked again.
    let run = login("ana", "not-the-password");
    assert_eq!(
        run.stderr, "error: wrong user name or password\n",
        "{run:?}"
    );
}

/// Users `crew1`..`crewN` (password `crewI-pw`) on devices `dev1`..`devN`.
fn crews(office: &Office, n: usize) -> Vec<(String, DeviceDir)> {
    (1..=n)
        .map(|i| {
            let user = format!("crew{i}");
            office
                .admin(
                    &["user", "add", &user, "--password-stdin"],
                    &format!("{user}-pw\n"),
                )
                .ok();
            (user, office.device(&format!("dev{i}"), &[]))
        })
        .collect()
}

fn login_as(dev: &DeviceDir, user: &str, pw: &str) -> Run {
    dev.run(&["login", user, "--password-stdin"], &format!("{pw}\n"))
}

#[test]
fn a_fleet_behind_one_address_is_not_refused_for_others_failures() {
    let office = Office::new(1);
    let crews = crews(&office, 7);
    // Every crew mistypes four times on its own tablet, all from one address: 28
    // failures there, more than five times a user's limit.
    for (user, dev) in &crews {
        for _ in 0..4 {
            let run = login_as(dev, user, "typo");
            assert_eq!(
                run.stderr, "error: wrong user name or password\n",
                "{run:?}"
            );
        }
    }
    for (user, dev) in &crews {
        login_as(dev, user, &format!("{user}-pw")).ok();
    }
}

#[test]
fn one_device_guessing_many_users_is_refused_on_that_device_only() {
    let office = Office::new(1);
    let crews = crews(&office, 7);
    let thief = &crews[0].1;
    // Four guesses per user, under each user's limit, 25 on the device in all.
    let mut refused = 0;
    for (user, _) in &crews {
        for _ in 0..4 {
            let run = login_as(thief, user, "guess");
            assert_eq!(run.code, 4, "{run:?}");
            refused += usize::from(run.stderr.contains("too many attempts"));
        }
    }
    assert_eq!(refused, 28 - 25, "refused after the device's 25th failure");
    let run = login_as(thief, "crew1", "crew1-pw");
    assert!(
        run.stderr.contains("too many attempts, try again in"),
        "{run:?}"
    );
    // The users themselves, on their own tablets, log in.
    for (user, dev) in &crews[1..] {
        login_as(dev, user, &format!("{user}-pw")).ok();
    }
}

crate::also_on_postgres!(
    wrong_passwords_throttle_the_user_until_the_wait_passes,
    a_fleet_behind_one_address_is_not_refused_for_others_failures,
    one_device_guessing_many_users_is_refused_on_that_device_only
);
