//! Secrets at rest (issue [security] point 8): after a whole day's scenario, the main
//! database (its files, or a dump of it), the server's log and the device folder hold
//! no password, device secret, session token, ticket or enrollment code in
//! plaintext, except the device's own credentials in `state.json`, which only its
//! owner may read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::harness::*;

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Panics naming each secret found in `bytes` (from `what`).
#[track_caller]
fn assert_none_in(what: &str, bytes: &[u8], secrets: &[(&str, &str)]) {
    for (name, secret) in secrets {
        assert!(
            !contains(bytes, secret),
            "{what} holds the {name} in plaintext"
        );
    }
}

fn no_secret_at_rest() {
    let office = Office::new(20);
    let logs = TempDir::new("logs");
    let log = logs.0.join("server.log");
    let server = Server::start_logged(&office.db_url, &[], &log);
    let code = office
        .admin(&["device", "add", "tab1"], "")
        .ok()
        .stdout
        .trim()
        .to_string();
    office
        .admin(
            &["task", "assign", "north-inspections", "--device", "tab1"],
            "",
        )
        .ok();
    let dev = DeviceDir {
        dir: TempDir::new("tab1"),
    };
    dev.run(
        &[
            "pair",
            "--server",
            &server.url,
            "--device-id",
            "tab1",
            "--code",
            &code,
        ],
        "",
    )
    .ok();
    // A mistyped password, then the right one; a day's work; a second user.
    let wrong = "mistyped-ana-pw-7f3a";
    let run = dev.run(&["login", "ana", "--password-stdin"], &format!("{wrong}\n"));
    assert_eq!(run.code, 4, "{run:?}");
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'checked' WHERE id = (SELECT min(id) FROM assets)",
            [],
        )
        .unwrap();
    dev.run(&["sync"], "").ok();
    office
        .admin(
            &["user", "passwd", "ben", "--password-stdin"],
            "ben-new-pw-91c2\n",
        )
        .ok();

    let state_path = dev.path().join("state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let secret = state["device_secret"].as_str().unwrap().to_string();
    let token = state["session"]["token"].as_str().unwrap().to_string();
    let ticket = state["ticket"].as_str().unwrap().to_string();
    let passwords = [
        ("password", "ana-pw"),
        ("mistyped password", wrong),
        ("changed password", "ben-new-pw-91c2"),
    ];
    let all: Vec<(&str, &str)> = passwords
        .iter()
        .copied()
        .chain([
            ("device secret", secret.as_str()),
            ("session token", token.as_str()),
            ("ticket", ticket.as_str()),
            ("enrollment code", code.as_str()),
        ])
        .collect();
    for path in files_under(&office.dir.0) {
        assert_none_in(
            &path.display().to_string(),
            &std::fs::read(&path).unwrap(),
            &all,
        );
    }
    if office.engine() == Engine::Postgres {
        let dump = std::process::Command::new("pg_dump")
            .args(["--no-owner", "--no-privileges", "--inserts", &office.db_url])
            .output()
            .unwrap();
        assert!(dump.status.success(), "{dump:?}");
        assert!(
            contains(&dump.stdout, "fieldsync.sessions"),
            "the dump is empty"
        );
        assert_none_in("the main database", &dump.stdout, &all);
    }
    drop(server);
    assert_none_in("the server's log", &std::fs::read(&log).unwrap(), &all);

    // The device folder: its credentials only in state.json, which is the owner's.
    for path in files_under(dev.path()) {
        let bytes = std::fs::read(&path).unwrap();
        if path == state_path {
            assert_none_in("state.json", &bytes, &passwords);
        } else {
            assert_none_in(&path.display().to_string(), &bytes, &all);
        }
    }
    let mode = std::fs::metadata(&state_path).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "state.json is readable by others: {mode:o}"
    );
}

#[test]
fn no_password_secret_or_token_is_kept_in_plaintext() {
    no_secret_at_rest();
}

crate::also_on_postgres!(no_password_secret_or_token_is_kept_in_plaintext);
