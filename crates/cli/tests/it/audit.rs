//! The audit log (issue [security] point 7): `fieldsync admin` changes recorded with
//! the OS user who made them, refused authentications with the client's address,
//! never a password; `admin audit` shows them newest first; the log stays bounded.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use crate::harness::*;

/// The password a device tries and the audit log must never hold.
const WRONG: &str = "Wr0ng-Passw0rd-never-logged";

/// `fieldsync admin ARGS` as OS user `user`, with `env` set.
fn admin_as(office: &Office, user: &str, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Run {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("admin")
        .args(args)
        .args(["--db", &office.db_url])
        .env("USER", user)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().into()
}

/// A device folder paired with `server` by enrollment `code`.
fn paired(server: &Server, id: &str, code: &str) -> DeviceDir {
    let dev = DeviceDir {
        dir: TempDir::new(id),
    };
    let code = code.trim();
    dev.run(
        &[
            "pair",
            "--server",
            &server.url,
            "--device-id",
            id,
            "--code",
            code,
        ],
        "",
    )
    .ok();
    dev
}

/// `curl` of `GET /api/v1/tasks` as device `id` with `secret`: the status.
fn tasks_as(url: &str, id: &str, secret: &str) -> String {
    tasks_with(url, id, secret, &[])
}

/// [`tasks_as`] with more `curl` arguments.
fn tasks_with(url: &str, id: &str, secret: &str, more: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(more)
        .args(["-H", "x-fieldsync-protocol: 1"])
        .args(["-H", &format!("x-fieldsync-device: {id}")])
        .args(["-H", &format!("x-fieldsync-device-secret: {secret}")])
        .arg(format!("{url}/api/v1/tasks"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn secret_of(dev: &DeviceDir) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.path().join("state.json")).unwrap()).unwrap();
    state["device_secret"].as_str().unwrap().to_string()
}

/// `admin audit --json` (newest first).
fn audit(office: &Office, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["audit", "--json"];
    full.extend_from_slice(args);
    let run = office.admin(&full, "").ok();
    serde_json::from_str(&run.stdout).unwrap()
}

/// `admin audit --json` once `ready` holds of it: the server's refusals are written
/// by a thread of their own, after the answer (at most 10 s).
#[track_caller]
fn audit_when(
    office: &Office,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let entries = audit(office, &[]);
        if ready(&entries) {
            return entries;
        }
        assert!(std::time::Instant::now() < deadline, "{entries:#?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The index and entry of kind `kind` about `subject` (the newest of them).
#[track_caller]
fn entry<'a>(
    entries: &'a [serde_json::Value],
    kind: &str,
    subject: &str,
) -> (usize, &'a serde_json::Value) {
    entries
        .iter()
        .enumerate()
        .find(|(_, e)| e["kind"] == kind && e["subject"] == subject)
        .unwrap_or_else(|| panic!("no {kind} of {subject} in {entries:#?}"))
}

#[test]
fn admin_changes_and_refused_authentications_are_recorded() {
    let office = Office::new(10);
    // Throttled at the third failure of one user.
    let mut cmd = Command::new(BIN);
    cmd.env("FIELDSYNC_LOGIN_LIMIT", "2");
    let server = Server::start_by(cmd, &office.db_url);
    let as_auditor = |args: &[&str], stdin: &str| admin_as(&office, "auditor", &[], args, stdin);
    as_auditor(&["user", "add", "carl", "--password-stdin"], "carl-pw\n").ok();
    let code = as_auditor(&["device", "add", "tab1", "--label", "crew 3"], "").ok();
    let tab1 = paired(&server, "tab1", &code.stdout);
    let code = as_auditor(&["device", "add", "tab2"], "").ok();
    let tab2 = paired(&server, "tab2", &code.stdout);
    as_auditor(&["device", "revoke", "tab2", "--keep-changes"], "").ok();
    as_auditor(&["user", "disable", "ben", "--force"], "").ok();

    let login = |user: &str| tab1.run(&["login", user, "--password-stdin"], &format!("{WRONG}\n"));
    for user in ["ana", "nobody-here", "ana"] {
        let run = login(user);
        assert_eq!(run.code, 4, "{run:?}");
        assert_eq!(run.stderr, "error: wrong user name or password\n");
    }
    let throttled = login("ana");
    assert_eq!(throttled.code, 4, "{throttled:?}");
    assert!(
        throttled.stderr.contains("too many attempts"),
        "{throttled:?}"
    );
    assert_eq!(tasks_as(&server.url, "tab1", "0123"), "401");
    assert_eq!(tasks_as(&server.url, "tab2", &secret_of(&tab2)), "403");
    let bad_token = ["-H", "authorization: Bearer 0123"];
    assert_eq!(
        tasks_with(&server.url, "tab1", &secret_of(&tab1), &bad_token),
        "401"
    );
    let stranger = DeviceDir {
        dir: TempDir::new("tab3"),
    };
    let pair = ["pair", "--server", &server.url, "--device-id", "tab3"];
    let run = stranger.run(&[&pair[..], &["--code", "0123"]].concat(), "");
    assert_eq!(run.code, 4, "{run:?}");

    // The last refusal written: every one before it is (one writer, in order).
    let all = audit_when(&office, |all| {
        all.iter()
            .any(|e| e["kind"] == "auth.pair-refused" && e["subject"] == "tab3")
    });
    let keys: BTreeSet<&str> = all[0].as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["at", "kind", "actor", "subject", "address", "detail"])
    );
    // Administrators' changes: by the OS user, from no address.
    for (kind, subject, detail) in [
        ("admin.user.add", "carl", ""),
        ("admin.device.add", "tab1", "label `crew 3`"),
        ("admin.device.add", "tab2", ""),
        ("admin.device.revoke", "tab2", "--keep-changes"),
        ("admin.user.disable", "ben", "--force"),
    ] {
        let (_, e) = entry(&all, kind, subject);
        assert_eq!(e["actor"], "auditor", "{e}");
        assert_eq!(e["address"], serde_json::Value::Null, "{e}");
        assert_eq!(e["detail"], detail, "{e}");
    }
    // The office's own setup is there too, by whoever ran the tests.
    let (_, e) = entry(&all, "admin.task.apply", "north-inspections");
    assert_eq!(
        e["actor"],
        std::env::var("USER").unwrap_or("unknown".into())
    );
    // Refusals: by the device as far as checked, from the client's address.
    for (kind, actor, subject, detail) in [
        ("auth.login-failed", "tab1", "ana", "wrong password"),
        ("auth.login-failed", "tab1", "nobody-here", "unknown user"),
        (
            "auth.login-throttled",
            "tab1",
            "ana",
            "too many failed logins: refused for 30 s",
        ),
        ("auth.device-refused", "-", "tab1", "wrong device secret"),
        ("auth.device-revoked", "tab2", "tab2", "revoked device"),
        (
            "auth.session-refused",
            "tab1",
            "-",
            "unknown or expired session token",
        ),
        (
            "auth.pair-refused",
            "-",
            "tab3",
            "wrong or already used enrollment code",
        ),
    ] {
        let (_, e) = entry(&all, kind, subject);
        assert_eq!(
            (&e["actor"], &e["address"], &e["detail"]),
            (
                &actor.into(),
                &"127.0.0.1".into(),
                &serde_json::Value::from(detail)
            ),
            "{e}"
        );
    }
    let failures = all
        .iter()
        .filter(|e| e["kind"] == "auth.login-failed")
        .count();
    assert_eq!(failures, 3, "{all:#?}");
    // Newest first, at the database's clock.
    let first = entry(&all, "admin.user.add", "carl").0;
    let last = entry(&all, "auth.pair-refused", "tab3").0;
    assert!(last < first, "{all:#?}");
    let at = |i: usize| {
        all[i]["at"]
            .as_str()
            .unwrap()
            .parse::<fieldsync_proto::time::Timestamp>()
            .unwrap()
    };
    assert!(at(last) >= at(first));
    let age_ms = fieldsync_proto::time::Timestamp::now().unix_ms() - at(last).unix_ms();
    assert!((0..60_000).contains(&age_ms), "{}", all[last]);
    // The password tried is nowhere: not in the listing, not in the table.
    let text = office.admin(&["audit", "--limit", "1000"], "").ok().stdout;
    assert!(
        text.starts_with("AT\tKIND\tACTOR\tSUBJECT\tADDRESS\tDETAIL\n"),
        "{text}"
    );
    assert!(
        text.contains("\tauth.device-revoked\ttab2\ttab2\t127.0.0.1\trevoked device\n"),
        "{text}"
    );
    assert!(!text.contains(WRONG) && !serde_json::to_string(&all).unwrap().contains(WRONG));
    let table = office.rows(&format!("SELECT * FROM {}", office.own_table("audit")));
    assert!(!format!("{table:?}").contains(WRONG));
    assert_eq!(
        table.len(),
        all.len(),
        "the default limit is above this test's entries"
    );
    // --limit: the newest N.
    assert_eq!(audit(&office, &["--limit", "2"]), all[..2].to_vec());
}

#[test]
fn the_audit_log_keeps_only_the_newest_entries() {
    let office = Office::new(10);
    let mut cmd = Command::new(BIN);
    cmd.env("FIELDSYNC_AUDIT_KEEP", "5");
    let server = Server::start_by(cmd, &office.db_url);
    for i in 0..12 {
        assert_eq!(tasks_as(&server.url, &format!("probe-{i}"), "0123"), "401");
    }
    let count = || {
        office.value(&format!(
            "SELECT count(*) FROM {}",
            office.own_table("audit")
        ))
    };
    audit_when(&office, |all| all[0]["subject"] == "probe-11");
    assert_eq!(count(), "5");
    let subjects = |entries: Vec<serde_json::Value>| -> Vec<String> {
        entries
            .iter()
            .map(|e| e["subject"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        subjects(audit(&office, &[])),
        ["probe-11", "probe-10", "probe-9", "probe-8", "probe-7"]
    );
    // The administration keeps to the same bound.
    let keep = [("FIELDSYNC_AUDIT_KEEP", "5")];
    for name in ["ana", "ben", "ana"] {
        admin_as(&office, "auditor", &keep, &["user", "enable", name], "").ok();
    }
    assert_eq!(count(), "5");
    assert_eq!(
        subjects(audit(&office, &[])),
        ["ana", "ben", "ana", "probe-11", "probe-10"]
    );
}

crate::also_on_postgres!(
    admin_changes_and_refused_authentications_are_recorded,
    the_audit_log_keeps_only_the_newest_entries,
);
