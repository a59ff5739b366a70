//! The fleet console (`/admin`) in a real headless Chromium over WebDriver: log in,
//! the fleet with a device that synced and one that failed, a conflict resolved
//! (the main database changes), a task previewed and assigned, a device enrolled
//! whose code pairs with the real binary; CSRF and non-admin refusals; each page's
//! load time with 1,000 devices and 10,000 history rows. Screenshots at laptop and
//! tablet widths go to the test's folder and `target/console-screenshots/`.

mod browser;

use std::time::{Duration, Instant};

use browser::Browser;

use crate::harness::*;

const ADMIN: &str = "olga";
const ADMIN_PW: &str = "olga-pw";
const TASK: &str = "console-cells";
const NORTH_TASK: &str = "north-inspections";

/// An office with an administrator, a device `tab-ok` of ana's that synced (and got
/// a conflict logged, server wins) and a device `tab-bad` whose send failed.
fn office() -> (Office, DeviceDir, DeviceDir) {
    let office = Office::new(30);
    office
        .admin(
            &["user", "add", ADMIN, "--admin", "--password-stdin"],
            &format!("{ADMIN_PW}\n"),
        )
        .ok();
    office.execute_batch(
        "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
         VALUES ('cell-1', 1, 'ana', '2026-05-01T08:00:00.000Z', 'ok', 'routine')",
    );
    let path = office.dir.0.join("cells.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"{TASK}\"\n[[tables]]\nname = \"inspections\"\nfilter = \"inspector = $user\"\n\
             write = [\"insert\", \"update\", \"delete\"]\nconflict = \"server-wins\"\n"
        ),
    )
    .unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    office
        .admin(&["task", "assign", TASK, "--user", "ana"], "")
        .ok();
    let ok = office.device("tab-ok", &[TASK]);
    ok.login("ana").ok();
    ok.run(&["download", TASK], "").ok();
    office.execute_batch("UPDATE inspections SET notes = 'office note' WHERE id = 'cell-1'");
    ok.replica()
        .execute(
            "UPDATE inspections SET notes = 'crew note' WHERE id = 'cell-1'",
            [],
        )
        .unwrap();
    ok.run(&["send"], "").ok();

    let bad = office.device("tab-bad", &[NORTH_TASK]);
    bad.login("ana").ok();
    bad.run(&["download", NORTH_TASK], "").ok();
    // A forged journal entry (a south asset, never in the slice): the send is refused
    // whole and the server records it as an error.
    let c = bad.replica();
    let triggers: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for t in triggers {
        c.execute(&format!("DROP TRIGGER \"{t}\""), []).unwrap();
    }
    c.execute(
        "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
         VALUES ('assets', 2, 'update', '{\"name\":\"x\"}', '{\"name\":\"stolen\"}', 1, 'ana', '2026-11-26T00:00:00.000Z')",
        [],
    )
    .unwrap();
    let refused = bad.run(&["send"], "");
    assert_ne!(refused.code, 0, "{refused:?}");
    (office, ok, bad)
}

fn login(b: &Browser, url: &str, user: &str, pw: &str) {
    b.goto(&format!("{url}/admin/login"));
    b.fill("#user", user);
    b.fill("#password", pw);
    b.click("button[type=submit]");
}

#[test]
fn the_console_shows_the_fleet_resolves_previews_assigns_and_enrolls() {
    let (office, _ok, _bad) = office();
    let url = office.server.url.clone();
    let shots = TempDir::new("console-shots");
    let b = Browser::start(&TempDir::new("chromium").0);

    // Not logged in: every page leads to the login form.
    b.goto(&format!("{url}/admin/conflicts"));
    assert!(b.url().ends_with("/admin/login"), "{}", b.url());
    b.screenshots(&shots.0, "login");

    login(&b, &url, ADMIN, ADMIN_PW);
    assert!(b.url().ends_with("/admin"), "{}", b.url());
    let cookie = b
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "fieldsync_console")
        .expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");

    // The fleet: both devices, with how their last sync went.
    let fleet = b.page_text();
    assert!(
        fleet.contains("tab-ok") && fleet.contains("tab-bad"),
        "{fleet}"
    );
    let ok_row = b.text("tr:has(a[href='/admin/devices/tab-ok'])");
    assert!(
        ok_row.contains("send") && ok_row.contains("ok") && ok_row.contains("ana"),
        "{ok_row}"
    );
    let bad_row = b.text("tr:has(a[href='/admin/devices/tab-bad'])");
    assert!(bad_row.contains("error"), "{bad_row}");
    assert!(bad_row.contains("upload refused: entry 1"), "{bad_row}");
    b.screenshots(&shots.0, "fleet");

    b.click("a[href='/admin/devices/tab-bad']");
    let device = b.page_text();
    assert!(
        device.contains("Sync history") && device.contains("download"),
        "{device}"
    );
    assert_eq!(b.count("tbody tr"), 2, "a download and the failed send");
    b.screenshots(&shots.0, "device");

    // The conflict: crew's and office's values side by side; take the crew's.
    b.click("a[href='/admin/conflicts']");
    let inbox = b.page_text();
    assert!(inbox.contains("1 open"), "{inbox}");
    assert!(
        inbox.contains("crew note") && inbox.contains("office note"),
        "{inbox}"
    );
    assert!(inbox.contains("server-wins"), "{inbox}");
    b.screenshots(&shots.0, "conflicts");
    let in_main = || office.value("SELECT notes FROM inspections WHERE id = 'cell-1'");
    assert_eq!(in_main(), "office note");
    b.click("form[action$='/resolve']:has(input[value=device]) button");
    assert_eq!(
        in_main(),
        "crew note",
        "the main database took the crew's value"
    );
    let after = b.page_text();
    assert!(after.contains("0 open, 1 resolved"), "{after}");
    let resolved = b.text("h2 + div table tbody tr");
    assert!(
        resolved.contains("the crew's values") && resolved.contains(ADMIN),
        "{resolved}"
    );
    b.screenshots(&shots.0, "conflicts-resolved");

    // A task: preview it for ana on tab-bad, then assign it to tab-ok.
    b.goto(&format!("{url}/admin/tasks/{NORTH_TASK}"));
    b.choose("#preview-user", "ana");
    b.choose("#preview-device", "tab-bad");
    b.click("form[method=get] button");
    let assets =
        office.value("SELECT count(*) FROM assets WHERE region = 'north' AND status <> 'retired'");
    let preview = b.text("#preview");
    let assets_row = b.text("#preview tbody tr:first-child");
    assert!(preview.contains("Assigned to both"), "{preview}");
    assert!(
        assets_row.starts_with("assets") && assets_row.contains(&assets),
        "{assets_row} vs {assets}"
    );
    b.screenshots(&shots.0, "task-preview");
    b.choose("#assign-device", "tab-ok");
    b.click("form[action$='/assign'] button");
    let devices_of = |task: &str| -> Vec<String> {
        let show = office
            .admin(&["task", "show", task, "--json"], "")
            .ok()
            .stdout;
        let show: serde_json::Value = serde_json::from_str(&show).unwrap();
        serde_json::from_value(show["devices"].clone()).unwrap()
    };
    assert_eq!(devices_of(NORTH_TASK), ["tab-bad", "tab-ok"]);
    assert!(b.page_text().contains("Unassign tab-ok"));
    b.click("form[action$='/unassign']:has(input[value='tab-ok']) button");
    assert_eq!(devices_of(NORTH_TASK), ["tab-bad"]);

    // Enroll a device; its code pairs with the real binary.
    b.goto(&format!("{url}/admin/people"));
    b.screenshots(&shots.0, "people");
    b.fill("#new-device", "tab-new");
    b.fill("#new-label", "tablet of crew 3");
    b.click("form[action='/admin/devices'] button");
    let code = b.text("#enrollment-code");
    assert_eq!(code.len(), 20, "{code}");
    let shown = b.page_text();
    assert!(
        shown.contains(&format!("--server {url} --device-id tab-new --code {code}")),
        "{shown}"
    );
    b.screenshots(&shots.0, "enrolled");
    let dev = TempDir::new("tab-new");
    let dir = dev.0.to_str().unwrap();
    fieldsync(
        &[
            "device",
            "pair",
            "--server",
            &url,
            "--device-id",
            "tab-new",
            "--code",
            &code,
            "--dir",
            dir,
        ],
        "",
    )
    .ok();
    let again = fieldsync(
        &[
            "device",
            "pair",
            "--server",
            &url,
            "--device-id",
            "tab-new",
            "--code",
            &code,
            "--dir",
            dir,
        ],
        "",
    );
    assert_ne!(again.code, 0, "a code pairs once: {again:?}");

    // Disable a user, revoke the new device.
    let listed = |what: &str, key: &str, name: &str| -> serde_json::Value {
        let out = office.admin(&[what, "list", "--json"], "").ok().stdout;
        let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        all.into_iter().find(|x| x[key] == name).unwrap()
    };
    b.goto(&format!("{url}/admin/people"));
    assert_eq!(listed("user", "name", "ben")["disabled"], false);
    b.click("form[action='/admin/users/ben/state'] button");
    assert_eq!(listed("user", "name", "ben")["disabled"], true);
    assert_eq!(listed("device", "id", "tab-new")["revoked"], false);
    b.click("form[action='/admin/devices/tab-new/revoke'] button");
    assert_eq!(listed("device", "id", "tab-new")["revoked"], true);

    // The audit log names the console's administrator for each change.
    let audit = office.admin(&["audit", "--json"], "").ok().stdout;
    let audit: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    for kind in [
        "admin.conflict.resolve",
        "admin.task.assign",
        "admin.task.unassign",
        "admin.device.add",
        "admin.user.disable",
        "admin.device.revoke",
    ] {
        let entry = audit.iter().find(|e| e["kind"] == kind);
        assert_eq!(
            entry.map(|e| &e["actor"]),
            Some(&ADMIN.into()),
            "{kind}: {audit:?}"
        );
    }

    // Log out: the session is gone.
    b.click("form[action='/admin/logout'] button");
    b.goto(&format!("{url}/admin"));
    assert!(b.url().ends_with("/admin/login"), "{}", b.url());
}

/// A session cookie and its CSRF token, logged in over plain HTTP as a browser would.
fn http_login(url: &str, user: &str, pw: &str) -> (u16, Option<String>) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let form = agent.get(&format!("{url}/admin/login")).call().unwrap();
    let set = form.header("set-cookie").unwrap().to_string();
    let login_cookie = set.split(';').next().unwrap().to_string();
    let csrf = between(&form.into_string().unwrap(), "name=\"csrf\" value=\"", "\"");
    let res = agent
        .post(&format!("{url}/admin/login"))
        .set("cookie", &login_cookie)
        .send_form(&[("csrf", &csrf), ("user", user), ("password", pw)]);
    let res = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let session = res
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("fieldsync_console=") && !c.starts_with("fieldsync_console=;"))
        .map(|c| c.split(';').next().unwrap().to_string());
    (res.status(), session)
}

fn between(text: &str, start: &str, end: &str) -> String {
    let at = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len();
    text[at..][..text[at..].find(end).unwrap()].to_string()
}

/// A console page over plain HTTP with `cookie`: status and body.
fn page(url: &str, cookie: &str) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    match agent.get(url).set("cookie", cookie).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

fn post(url: &str, cookie: &str, form: &[(&str, &str)]) -> u16 {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    match agent.post(url).set("cookie", cookie).send_form(form) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn forms_without_the_csrf_token_and_non_admins_are_refused() {
    let office = Office::new(10);
    office
        .admin(
            &["user", "add", ADMIN, "--admin", "--password-stdin"],
            &format!("{ADMIN_PW}\n"),
        )
        .ok();
    let url = office.server.url.clone();
    let (status, cookie) = http_login(&url, ADMIN, ADMIN_PW);
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session");
    let (_, people) = page(&format!("{url}/admin/people"), &cookie);
    let csrf = between(&people, "name=\"csrf\" value=\"", "\"");
    let users = || office.admin(&["user", "list", "--json"], "").ok().stdout;
    let add = format!("{url}/admin/users");
    fn form(token: Option<&str>) -> Vec<(&'static str, &str)> {
        let mut f = vec![("name", "eve"), ("password", "eve-pw")];
        if let Some(t) = token {
            f.push(("csrf", t));
        }
        f
    }
    assert_eq!(post(&add, &cookie, &form(None)), 403, "no token");
    assert_eq!(
        post(&add, &cookie, &form(Some(&"0".repeat(64)))),
        403,
        "another token"
    );
    assert!(!users().contains("\"eve\""), "nothing was added");
    // The login form is refused without its own token too.
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let bare = agent
        .post(&format!("{url}/admin/login"))
        .send_form(&[("user", ADMIN), ("password", ADMIN_PW)]);
    assert!(matches!(bare, Err(ureq::Error::Status(403, _))), "{bare:?}");
    // With the token, the same form passes.
    assert_eq!(post(&add, &cookie, &form(Some(&csrf))), 303);
    assert!(users().contains("\"eve\""));

    // A user who is not an administrator gets no session, in a browser too.
    let (status, session) = http_login(&url, "ana", "ana-pw");
    assert_eq!((status, session), (403, None));
    let b = Browser::start(&TempDir::new("chromium").0);
    login(&b, &url, "ana", "ana-pw");
    assert!(
        b.page_text().contains("not an administrator"),
        "{}",
        b.page_text()
    );
    assert!(b.cookies().iter().all(|c| c["name"] != "fieldsync_console"));
    b.goto(&format!("{url}/admin"));
    assert!(b.url().ends_with("/admin/login"), "{}", b.url());
    // An administrator disabled while logged in loses the console at once.
    office.admin(&["user", "disable", ADMIN], "").ok();
    assert_eq!(page(&format!("{url}/admin"), &cookie).0, 303);
}

#[test]
fn console_logins_are_throttled_like_devices() {
    let office = Office::new(5);
    office
        .admin(
            &["user", "add", ADMIN, "--admin", "--password-stdin"],
            &format!("{ADMIN_PW}\n"),
        )
        .ok();
    let url = office.server.url.clone();
    for _ in 0..5 {
        assert_eq!(http_login(&url, ADMIN, "wrong").0, 401);
    }
    // The right password is refused unchecked while the user's count holds.
    assert_eq!(http_login(&url, ADMIN, ADMIN_PW), (429, None));
    // The audit log's writer records refusals a moment after the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = office.admin(&["audit", "--json"], "").ok().stdout;
        if audit.contains("auth.login-throttled") {
            break;
        }
        assert!(Instant::now() < deadline, "{audit}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_page_loads_fast_with_1000_devices_and_10000_history_rows() {
    let office = Office::new(50);
    office
        .admin(
            &["user", "add", ADMIN, "--admin", "--password-stdin"],
            &format!("{ADMIN_PW}\n"),
        )
        .ok();
    // 1,000 paired devices and 10,000 syncs (one in seven failed), written in one
    // transaction as the store writes them (the store's calls, one transaction each,
    // took two minutes here).
    let now = fieldsync_proto::time::Timestamp::now();
    let mut sql = office.sql();
    let tx = sql.transaction().unwrap();
    for i in 0..1000 {
        tx.execute(
            "INSERT INTO fieldsync_devices (id, label, secret_hash, revoked, created_at, paired_at)
             VALUES (?1, ?2, 'x', 0, ?3, ?4)",
            rusqlite::params![
                format!("tab-{i:04}"),
                format!("tablet {i}"),
                now.to_string(),
                now.plus_ms(-10 * 86_400_000).to_string()
            ],
        )
        .unwrap();
    }
    for i in 0..10_000_i64 {
        tx.execute(
            "INSERT INTO fieldsync_sync_sessions (device, user, task, op, kind, result, message,
                 rows_down, rows_up, bytes_down, bytes_up, conflicts, started_at, duration_ms, whole)
             VALUES (?1, 'ana', ?2, 'sync', 'manual', ?3, '', 120, 3, 40000, 900, 0, ?4, 350, 0)",
            rusqlite::params![
                format!("tab-{:04}", i % 1000),
                NORTH_TASK,
                if i % 7 == 0 { "error" } else { "ok" },
                now.plus_ms(-(10_000 - i) * 60_000).to_string()
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let url = office.server.url.clone();
    let cookie = http_login(&url, ADMIN, ADMIN_PW).1.unwrap();
    let mut report = vec![];
    for path in [
        "/admin",
        "/admin/devices/tab-0007",
        "/admin/conflicts",
        "/admin/tasks",
        &format!("/admin/tasks/{NORTH_TASK}?user=ana&device=tab-0007"),
        "/admin/people",
    ] {
        let started = Instant::now();
        let (status, body) = page(&format!("{url}{path}"), &cookie);
        let took = started.elapsed();
        assert_eq!(status, 200, "{path}: {body}");
        report.push(format!(
            "{path}: {} ms, {} kB",
            took.as_millis(),
            body.len() / 1000
        ));
        assert!(took < Duration::from_secs(3), "{path} took {took:?}");
        if path == "/admin" {
            assert_eq!(
                body.matches("<tr").count(),
                1001,
                "every device and the header"
            );
        }
    }
    eprintln!(
        "console page loads (1,000 devices, 10,000 history rows):\n  {}",
        report.join("\n  ")
    );

    // A server told a device is stuck after an hour without a successful sync: the
    // devices whose newest `ok` is older, worked out here from what was written, are
    // listed first, and only they. (Sync `i` of device `i % 1000` started `10000 - i`
    // minutes ago; every seventh failed; no device has three failures in a row.)
    let expected = (0..1000)
        .filter(|d| {
            let newest_ok = (0..10)
                .map(|k| d + 1000 * k)
                .filter(|i| i % 7 != 0)
                .max()
                .unwrap();
            10_000 - newest_ok > 60
        })
        .count();
    assert!(expected > 0 && expected < 1000, "{expected}");
    let strict = Server::start_with(&office.db_url, &["--stuck-after", "1h"]);
    let cookie = http_login(&strict.url, ADMIN, ADMIN_PW).1.unwrap();
    let (_, body) = page(&format!("{}/admin", strict.url), &cookie);
    let rows: Vec<&str> = body.split("<tr").skip(2).collect();
    let stuck = rows
        .iter()
        .take_while(|r| r.starts_with(r#" class="stuck""#))
        .count();
    assert_eq!(stuck, expected, "the stuck devices, listed first");
    assert!(rows[stuck..].iter().all(|r| !r.contains("stuck")));
    assert!(
        body.contains(&format!("{expected} stuck")),
        "the count is said"
    );
    assert!(body.contains("within 1 h"), "the setting is said");
}

crate::also_on_postgres!(
    the_console_shows_the_fleet_resolves_previews_assigns_and_enrolls,
    forms_without_the_csrf_token_and_non_admins_are_refused,
);
