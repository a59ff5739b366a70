//! Local changes: the journal, send, sync, refusals at write time and on the server,
//! idempotent uploads, the backup of discarded changes.

use rusqlite::Connection;

use crate::harness::*;

/// A device of ana's with a downloaded north replica.
fn north_device(office: &Office, id: &str) -> DeviceDir {
    let dev = office.device(id, &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev
}

fn journal(dev: &DeviceDir) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&dev.run(&["journal", "--json"], "").ok().stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A north asset in ana's slice.
fn some_asset(dev: &DeviceDir) -> i64 {
    dev.replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap()
}

/// The first `n` asset ids of the replica.
fn first_assets(dev: &DeviceDir, n: i64) -> Vec<i64> {
    dev.replica()
        .prepare("SELECT id FROM assets ORDER BY id LIMIT ?1")
        .unwrap()
        .query_map([n], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// An asset's name in the main database.
fn main_name(office: &Office, id: i64) -> String {
    office.value(&format!("SELECT name FROM assets WHERE id = {id}"))
}

fn asset_name(conn: &Connection, id: i64) -> String {
    conn.query_row("SELECT name FROM assets WHERE id = ?1", [id], |r| r.get(0))
        .unwrap()
}

#[track_caller]
fn assert_refused(run: &Run, code: i32, fragment: &str) {
    assert_eq!(run.code, code, "{run:?}");
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains(fragment),
        "expected {fragment:?}: {run:?}"
    );
}

#[test]
fn edits_by_a_plain_sqlite_client_reach_the_main_database_with_send() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    let app = dev.replica();
    app.execute(
        "UPDATE assets SET name = 'edited on the tablet', category = 'tested' WHERE id = ?1",
        [id],
    )
    .unwrap();
    // A plain INSERT without a key: the replica makes a UUID.
    app.execute(
        "INSERT INTO inspections (asset_id, inspector, inspected_at, result) VALUES (?1, 'ana', '2026-11-26T09:00:00.000Z', 'ok')",
        [id],
    )
    .unwrap();
    let new_id: String = app
        .query_row(
            "SELECT id FROM inspections WHERE inspected_at = '2026-11-26T09:00:00.000Z'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(new_id.len(), 36, "a UUID: {new_id}");
    let entries = journal(&dev);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["op"], "update");
    assert_eq!(entries[0]["user"], "ana");
    assert_eq!(entries[0]["new"]["name"], "edited on the tablet");
    let category_before = office.value(&format!("SELECT category FROM assets WHERE id = {id}"));
    assert_eq!(
        entries[0]["old"]["category"],
        category_before.as_str(),
        "old values as the device saw them"
    );
    assert!(
        entries[0]["old"].get("status").is_none(),
        "only the changed columns"
    );
    assert_eq!(entries[1]["op"], "insert");
    let st = dev.status();
    assert_eq!(st["pending"], 2);
    assert_eq!(st["pending_by_user"]["ana"], 2);

    // Not sent until a send: the main database still has the old values.
    assert_ne!(main_name(&office, id), "edited on the tablet");
    let out = dev.run(&["send"], "").ok();
    assert!(out.stdout.contains("sent 2 change(s)"), "{out:?}");
    assert_eq!(main_name(&office, id), "edited on the tablet");
    let inspector = office.value(&format!(
        "SELECT inspector FROM inspections WHERE id = '{new_id}'"
    ));
    assert_eq!(inspector, "ana");
    assert!(journal(&dev).is_empty());
    let st = dev.status();
    assert_eq!(st["pending"], 0);
    assert_eq!(st["last_sync"]["op"], "send");
    assert_eq!(st["last_sync"]["result"], "ok");
    assert_eq!(st["last_sync"]["rows_up"], 2);

    // A second edit of the same row and a second send: not a conflict with itself.
    app.execute(
        "UPDATE assets SET name = 'edited twice' WHERE id = ?1",
        [id],
    )
    .unwrap();
    app.execute(
        "UPDATE inspections SET result = 'worn' WHERE id = ?1",
        [&new_id],
    )
    .unwrap();
    dev.run(&["send"], "").ok();
    assert_eq!(main_name(&office, id), "edited twice");
    assert!(conflicts(&office).is_empty(), "{:?}", conflicts(&office));

    // The sync history has the download and both sends; `admin history` and its alias
    // `admin sessions` print the same.
    let history_out = office.admin(&["history", "--json"], "").ok().stdout;
    assert_eq!(
        office.admin(&["sessions", "--json"], "").ok().stdout,
        history_out
    );
    let sessions: serde_json::Value = serde_json::from_str(&history_out).unwrap();
    let ops: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["download", "send", "send"]);
    let first_send = &sessions[1];
    assert_eq!(
        (first_send["device"].as_str(), first_send["user"].as_str()),
        (Some("tab1"), Some("ana"))
    );
    assert_eq!(first_send["rows_up"], 2);
    assert!(first_send["bytes_up"].as_u64().unwrap() > 0);
    assert_eq!(first_send["result"], "ok");
    assert!(sessions[0]["rows_down"].as_u64().unwrap() > 0);
}

#[test]
fn forbidden_writes_are_refused_at_write_time() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    let app = dev.replica();
    let refused = |sql: &str, fragment: &str| {
        let err = app.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains(fragment), "{sql}: {err}");
    };
    refused(
        &format!("DELETE FROM assets WHERE id = {id}"),
        "does not allow delete on table assets",
    );
    refused(
        "INSERT INTO assets (id, name, category, status, region) VALUES (999999, 'x', 'pump', 'active', 'north')",
        "does not allow insert",
    );
    refused(
        &format!("UPDATE assets SET id = 999999 WHERE id = {id}"),
        "primary-key values cannot be updated",
    );
    refused(
        &format!(
            "INSERT INTO inspections (asset_id, inspector, inspected_at) VALUES ({id}, 'ben', '2026-11-26T09:00:00.000Z')"
        ),
        "outside the slice",
    );
    refused(
        "INSERT INTO inspections (asset_id, inspector, inspected_at) VALUES (2, 'ana', '2026-11-26T09:00:00.000Z')",
        "parent assets row is not in the slice",
    );
    refused(
        "DELETE FROM inspections",
        "does not allow delete on table inspections",
    );
    assert!(
        journal(&dev).is_empty(),
        "refused writes leave no journal entry"
    );

    // Nobody logged in: every write is refused.
    dev.run(&["logout"], "").ok();
    refused(
        &format!("UPDATE assets SET name = 'x' WHERE id = {id}"),
        "log in on this device to edit",
    );
    dev.login("ana").ok();
    app.execute(&format!("UPDATE assets SET name = 'x' WHERE id = {id}"), [])
        .unwrap();
    assert_eq!(journal(&dev).len(), 1);
}

/// Drops the replica's triggers, as a tampering app could, and writes a forged entry.
fn tamper(dev: &DeviceDir, forged_sql: &str) {
    let c = dev.replica();
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
    c.execute(forged_sql, []).unwrap();
}

#[test]
fn a_tampered_replica_gets_the_whole_upload_refused_and_discard_unblocks_it() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    // A legitimate edit first, then forged entries: one for a south asset (never in the
    // slice), one deleting from a table the task makes read-only.
    dev.replica()
        .execute(
            &format!("UPDATE assets SET name = 'legit' WHERE id = {id}"),
            [],
        )
        .unwrap();
    tamper(
        &dev,
        "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
         VALUES ('assets', 2, 'update', '{\"name\":\"x\"}', '{\"name\":\"stolen\"}', 1, 'ana', '2026-11-26T00:00:00.000Z')",
    );
    let before = office.rows("SELECT * FROM assets ORDER BY id");
    let run = dev.run(&["send"], "");
    assert_refused(&run, 4, "entry 2 (update of `assets` key 2");
    assert!(
        run.stderr.contains("the row is not in the task's slice"),
        "{run:?}"
    );
    assert_eq!(
        office.rows("SELECT * FROM assets ORDER BY id"),
        before,
        "nothing of the upload applied"
    );
    assert_eq!(journal(&dev).len(), 2, "the journal stays");
    assert_eq!(dev.status()["last_sync"]["result"], "error");

    let forged_seq = journal(&dev)[1]["seq"].as_i64().unwrap();
    let out = dev
        .run(&["journal", "discard", &forged_seq.to_string()], "")
        .ok();
    let backup = out.stdout.trim().rsplit(' ').next().unwrap().to_string();
    let backed_up = std::fs::read_to_string(&backup).unwrap();
    assert_eq!(backed_up.lines().count(), 1);
    let entry: serde_json::Value = serde_json::from_str(backed_up.lines().next().unwrap()).unwrap();
    assert_eq!(
        (
            entry["table"].as_str(),
            entry["key"].as_i64(),
            entry["new"]["name"].as_str()
        ),
        (Some("assets"), Some(2), Some("stolen"))
    );
    dev.run(&["send"], "").ok();
    assert_eq!(main_name(&office, id), "legit");
    assert_ne!(main_name(&office, 2), "stolen");
}

#[test]
fn a_forged_write_to_a_read_only_table_is_refused_naming_the_entry() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    tamper(
        &dev,
        &format!(
            "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
             VALUES ('assets', {id}, 'delete', '{{}}', NULL, 1, 'ana', '2026-11-26T00:00:00.000Z')"
        ),
    );
    let run = dev.run(&["send"], "");
    assert_refused(&run, 4, "does not allow delete on table `assets`");
    assert_eq!(
        office.value(&format!("SELECT count(*) FROM assets WHERE id = {id}")),
        "1"
    );
    dev.run(&["journal", "discard", "--all"], "").ok();
    assert!(journal(&dev).is_empty());
}

#[test]
fn a_forged_key_of_the_wrong_type_is_refused_naming_the_entry() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let before = office.rows("SELECT * FROM assets ORDER BY id");
    tamper(
        &dev,
        "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
         VALUES ('assets', 'not-a-number', 'update', '{\"name\":\"a\"}', '{\"name\":\"b\"}', 1, 'ana',
                 '2026-11-26T00:00:00.000Z')",
    );
    let run = dev.run(&["send"], "");
    assert_refused(&run, 4, "entry 1 (update of `assets` key \"not-a-number\"");
    assert!(
        run.stderr.contains("the row is not in the task's slice"),
        "{run:?}"
    );
    assert_eq!(office.rows("SELECT * FROM assets ORDER BY id"), before);
}

#[test]
fn the_same_upload_sent_ten_times_at_once_is_applied_once() {
    let mut office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    dev.replica()
        .execute(
            "INSERT INTO inspections (id, asset_id, inspector, inspected_at) VALUES ('once', ?1, 'ana', '2026-11-26T09:00:00.000Z')",
            [id],
        )
        .unwrap();
    dev.replica()
        .execute("UPDATE assets SET name = 'once' WHERE id = ?1", [id])
        .unwrap();
    // The first send fails (the server is down) after the upload was stored.
    office.server.child.kill().unwrap();
    office.server.child.wait().unwrap();
    assert_eq!(dev.run(&["send"], "").code, 1);
    let stored: i64 = dev
        .replica()
        .query_row("SELECT count(*) FROM fieldsync_upload", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stored, 1,
        "the upload and its key were stored before sending"
    );
    office.server = Server::start(&office.db_url);

    // Ten copies of the device folder send the same stored upload at once.
    let copies: Vec<TempDir> = (0..10)
        .map(|i| {
            let copy = TempDir::new(&format!("copy{i}"));
            for entry in std::fs::read_dir(dev.path()).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name();
                let target = copy.0.join(&name);
                if entry.file_type().unwrap().is_symlink() {
                    std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target)
                        .unwrap();
                } else {
                    std::fs::copy(entry.path(), &target).unwrap();
                }
            }
            let state_path = copy.0.join("state.json");
            let mut state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
            state["server"] = serde_json::Value::String(office.server.url.clone());
            std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
            copy
        })
        .collect();
    let children: Vec<_> = copies
        .iter()
        .map(|c| {
            std::process::Command::new(BIN)
                .args(["device", "send", "--dir", c.0.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(office.uploads_recorded(), 1);
    assert!(
        conflicts(&office).is_empty(),
        "a second application would have logged insert-exists"
    );
    let sessions: serde_json::Value =
        serde_json::from_str(&office.admin(&["sessions", "--json"], "").ok().stdout).unwrap();
    let repeated = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["message"].as_str().unwrap().contains("repeated"))
        .count();
    assert_eq!(repeated, 9);
    assert_eq!(main_name(&office, id), "once");
}

#[test]
fn offline_send_and_sync_exit_3_and_change_nothing() {
    let office = Office::new(30);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'offline edit' WHERE id = ?1",
            [id],
        )
        .unwrap();
    dev.run(&["mode", "offline"], "").ok();
    let before = replica_content(&dev);
    assert_refused(&dev.run(&["send"], ""), 3, "offline mode");
    assert_refused(&dev.run(&["sync"], ""), 3, "offline mode");
    // Offline before local changes: exit 3, not 6.
    assert_refused(
        &dev.run(&["download", "north-inspections"], ""),
        3,
        "offline mode",
    );
    assert_eq!(replica_content(&dev), before);
    assert_eq!(journal(&dev).len(), 1);
    assert_ne!(main_name(&office, id), "offline edit");
}

#[test]
fn download_with_pending_changes_exits_6_unless_discarding_to_a_backup() {
    let office = Office::new(30);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    dev.replica()
        .execute("UPDATE assets SET name = 'pending' WHERE id = ?1", [id])
        .unwrap();
    let before = replica_content(&dev);
    let run = dev.run(&["download", "north-inspections"], "");
    assert_refused(&run, 6, "local change");
    assert_eq!(replica_content(&dev), before);
    assert_eq!(journal(&dev).len(), 1);

    let out = dev
        .run(
            &["download", "north-inspections", "--discard-local-changes"],
            "",
        )
        .ok();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("local changes backed up to "))
        .unwrap();
    let backup = line.trim_start_matches("local changes backed up to ");
    let entry: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(backup)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(entry["new"]["name"], "pending");
    assert!(journal(&dev).is_empty());
    assert_ne!(
        asset_name(&dev.replica(), id),
        "pending",
        "the replica is the server's again"
    );
    assert_ne!(main_name(&office, id), "pending");
}

#[test]
fn sync_sends_then_downloads_and_a_failed_send_downloads_nothing() {
    let office = Office::new(30);
    let dev = north_device(&office, "tab1");
    let ids = first_assets(&dev, 2);
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'from the tablet' WHERE id = ?1",
            [ids[0]],
        )
        .unwrap();
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'from the office' WHERE id = {}",
        ids[1]
    ));
    let out = dev.run(&["sync", "--progress", "json"], "").ok();
    assert!(out.stderr.contains("\"phase\":\"send\""), "{out:?}");
    let replica = dev.replica();
    assert_eq!(asset_name(&replica, ids[0]), "from the tablet");
    assert_eq!(asset_name(&replica, ids[1]), "from the office");
    assert_eq!(main_name(&office, ids[0]), "from the tablet");
    assert_eq!(dev.status()["last_sync"]["op"], "sync");

    // A refused send: nothing downloaded, the journal stays.
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'office again' WHERE id = {}",
        ids[1]
    ));
    tamper(
        &dev,
        "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
         VALUES ('assets', 2, 'update', '{}', '{\"name\":\"x\"}', 1, 'ana', '2026-11-26T00:00:00.000Z')",
    );
    assert_refused(&dev.run(&["sync"], ""), 4, "entry 1");
    assert_eq!(
        asset_name(&dev.replica(), ids[1]),
        "from the office",
        "nothing downloaded"
    );
    assert_eq!(journal(&dev).len(), 1);
}

#[test]
fn a_disabled_user_is_refused_and_an_unassigned_devices_edits_are_logged_not_applied() {
    let office = Office::new(30);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    dev.replica()
        .execute("UPDATE assets SET name = 'x' WHERE id = ?1", [id])
        .unwrap();
    office.admin(&["user", "disable", "ana"], "").ok();
    assert_refused(
        &dev.run(&["send"], ""),
        4,
        "user `ana` is disabled by the office",
    );
    let users: serde_json::Value =
        serde_json::from_str(&office.admin(&["user", "list", "--json"], "").ok().stdout).unwrap();
    assert_eq!(users[0]["name"], "ana");
    assert_eq!(users[0]["disabled"], true);
    office.admin(&["user", "enable", "ana"], "").ok();
    dev.login("ana").ok();
    office
        .admin(
            &[
                "task",
                "unassign",
                "north-inspections",
                "--device",
                "tab1",
                "--force",
            ],
            "",
        )
        .ok();
    // The edit was allowed under the task the device worked with: unassigned since, it
    // is a conflict (logged, not applied, visible to the office), not a refusal.
    let before = main_name(&office, id);
    dev.run(&["send"], "").ok();
    assert_eq!(main_name(&office, id), before, "not applied");
    let logged = conflicts(&office);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(
        (logged[0]["kind"].as_str(), logged[0]["resolution"].as_str()),
        (Some("task-changed"), Some("not-applied"))
    );
    assert_eq!(logged[0]["device_values"]["name"], "x");
    assert!(journal(&dev).is_empty(), "settled by the server");
    assert_refused(
        &dev.run(
            &["download", "north-inspections", "--discard-local-changes"],
            "",
        ),
        4,
        "not assigned",
    );
    let devices: serde_json::Value =
        serde_json::from_str(&office.admin(&["device", "list", "--json"], "").ok().stdout).unwrap();
    assert_eq!(devices[0]["id"], "tab1");
    assert_eq!(devices[0]["paired"], true);
    // A new password works at the next login; the old one does not.
    office
        .admin(&["user", "passwd", "ana", "--password-stdin"], "new-pw\n")
        .ok();
    assert_refused(
        &dev.run(&["login", "ana", "--password-stdin"], "ana-pw\n"),
        4,
        "wrong user name or password",
    );
    dev.run(&["login", "ana", "--password-stdin"], "new-pw\n")
        .ok();
    office
        .admin(&["task", "delete", "south-work-orders"], "")
        .ok();
    assert!(
        !office
            .admin(&["task", "list"], "")
            .ok()
            .stdout
            .contains("south-work-orders")
    );
}

/// The size comes from FIELDSYNC_TEST_SEND_ENTRIES (small in CI; 100000 to measure).
#[test]
fn a_large_journal_is_sent_in_one_upload_and_integrated_once() {
    let n: i64 = std::env::var("FIELDSYNC_TEST_SEND_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let office = Office::new(20);
    let dev = north_device(&office, "tab1");
    let id = some_asset(&dev);
    dev.replica()
        .execute(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?2)
             INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             SELECT printf('bulk-%08d', i), ?1, 'ana', '2026-11-26T09:00:00.000Z', 'ok', 'bulk inspection ' || i FROM k",
            [id, n],
        )
        .unwrap();
    assert_eq!(dev.status()["pending"], n);
    let started = std::time::Instant::now();
    dev.run(&["send"], "").ok();
    let elapsed = started.elapsed();
    let sessions: serde_json::Value =
        serde_json::from_str(&office.admin(&["sessions", "--json"], "").ok().stdout).unwrap();
    let server_ms = sessions.as_array().unwrap().last().unwrap()["duration_ms"]
        .as_u64()
        .unwrap()
        .max(1);
    eprintln!(
        "sent {n} entries: {elapsed:?} on the device ({:.0} entries/s), integrated in {server_ms} ms on the server ({:.0} entries/s)",
        n as f64 / elapsed.as_secs_f64(),
        n as f64 * 1000.0 / server_ms as f64
    );
    let got = office.value("SELECT count(*) FROM inspections WHERE id LIKE 'bulk-%'");
    assert_eq!(got, n.to_string());
    assert_eq!(dev.status()["pending"], 0);
}

#[test]
fn an_insert_under_a_parent_the_office_moved_out_is_a_conflict_not_a_refusal() {
    let office = Office::new(40);
    let dev = north_device(&office, "tab1");
    let ids = first_assets(&dev, 2);
    let app = dev.replica();
    app.execute(
        "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result) VALUES ('under-retired', ?1, 'ana', '2026-11-26T09:00:00.000Z', 'ok')",
        [ids[0]],
    )
    .unwrap();
    app.execute(
        "UPDATE assets SET name = 'unrelated edit' WHERE id = ?1",
        [ids[1]],
    )
    .unwrap();
    office.execute_batch(&format!(
        "UPDATE assets SET status = 'retired' WHERE id = {}",
        ids[0]
    ));
    dev.run(&["send"], "").ok();
    let n = office.value("SELECT count(*) FROM inspections WHERE id = 'under-retired'");
    assert_eq!(n, "0", "not applied: its parent left the slice");
    assert_eq!(
        main_name(&office, ids[1]),
        "unrelated edit",
        "the rest of the upload applied"
    );
    let log = conflicts(&office);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0]["kind"].as_str(), log[0]["resolution"].as_str()),
        (Some("left-slice"), Some("not-applied"))
    );
    assert_eq!(log[0]["device_values"]["id"], "under-retired");
    assert!(journal(&dev).is_empty());

    // An insert under a parent that never was in the slice is still refused whole.
    tamper(
        &dev,
        "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
         VALUES ('inspections', 'forged', 'insert', NULL,
                 '{\"id\":\"forged\",\"asset_id\":2,\"inspector\":\"ana\",\"inspected_at\":\"2026-11-26T09:00:00.000Z\",\"result\":null,\"notes\":null}',
                 (SELECT CAST(value AS INTEGER) FROM fieldsync_replica WHERE key = 'cursor'),
                 'ana', '2026-11-26T00:00:00.000Z')",
    );
    assert_refused(
        &dev.run(&["send"], ""),
        4,
        "parent `assets` row is not in the task's slice",
    );
}

crate::also_on_postgres!(
    edits_by_a_plain_sqlite_client_reach_the_main_database_with_send,
    forbidden_writes_are_refused_at_write_time,
    a_tampered_replica_gets_the_whole_upload_refused_and_discard_unblocks_it,
    a_forged_write_to_a_read_only_table_is_refused_naming_the_entry,
    a_forged_key_of_the_wrong_type_is_refused_naming_the_entry,
    the_same_upload_sent_ten_times_at_once_is_applied_once,
    offline_send_and_sync_exit_3_and_change_nothing,
    download_with_pending_changes_exits_6_unless_discarding_to_a_backup,
    sync_sends_then_downloads_and_a_failed_send_downloads_nothing,
    a_disabled_user_is_refused_and_an_unassigned_devices_edits_are_logged_not_applied,
    a_large_journal_is_sent_in_one_upload_and_integrated_once,
    an_insert_under_a_parent_the_office_moved_out_is_a_conflict_not_a_refusal,
);
