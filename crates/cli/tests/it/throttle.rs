//! Login throttling (issue [security] point 2): failed logins counted per user and per
//! address in the main database; past the limit, `429 throttled` with `Retry-After`
//! without checking the password; a success resets the user's count.

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
    cmd.env("FIELDSYNC_LOGIN_WAIT_MS", "2000");
    let server = Server::start_by(cmd, &office.db_url);
    let dev = office.device("tab1", &[]);
    dev.use_server(&server.url);
    let login =
        |user: &str, pw: &str| dev.run(&["login", user, "--password-stdin"], &format!("{pw}\n"));
    for i in 0..25 {
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
        run.stderr.contains("too many attempts, try again in 2 s"),
        "{run:?}"
    );
    let answer = login_by_hand(&server.url, &dev, "ana", "ana-pw");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_lowercase().contains("retry-after: 2\r\n"),
        "{answer}"
    );
    assert!(answer.contains(r#""code":"throttled""#), "{answer}");
    // Another user on the same address, with the right password, logs in: the
    // address allows five times a user's failures.
    login("ben", "ben-pw").ok();
    std::thread::sleep(Duration::from_millis(2300));
    login("ana", "ana-pw").ok();
    // The success reset ana's count: a wrong password is checked again.
    let run = login("ana", "not-the-password");
    assert_eq!(
        run.stderr, "error: wrong user name or password\n",
        "{run:?}"
    );
}

crate::also_on_postgres!(wrong_passwords_throttle_the_user_until_the_wait_passes);
