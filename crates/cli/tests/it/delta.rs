//! Deltas (DESIGN.md "Full or delta"): a download or sync from a replica brings only
//! what changed since its cursor, applied in place, and the replica then equals a
//! fresh full download; the whole slice comes in each case the contract lists, with
//! `full_reason` saying which.

use std::path::Path;

use crate::harness::*;

const TASK: &str = "north-inspections";

/// `last_sync`'s `full` and `full_reason`.
fn last(dev: &DeviceDir) -> (bool, Option<String>) {
    let s = dev.status();
    let l = &s["last_sync"];
    assert_eq!(l["result"], "ok", "{s}");
    (
        l["full"].as_bool().unwrap(),
        l["full_reason"].as_str().map(str::to_string),
    )
}

#[track_caller]
fn assert_full(dev: &DeviceDir, reason: &str) {
    assert_eq!(last(dev), (true, Some(reason.to_string())));
}

#[track_caller]
fn assert_delta(dev: &DeviceDir) {
    assert_eq!(last(dev), (false, None));
}

/// The data tables of a device's replica, as text.
fn content(dev: &DeviceDir) -> Vec<Vec<String>> {
    let c = dev.replica();
    let mut all = rows(&c, "SELECT * FROM assets ORDER BY id");
    all.extend(rows(&c, "SELECT * FROM inspections ORDER BY id"));
    all
}

/// What a fresh full download of `user`'s slice holds: a new device downloads it.
fn fresh(office: &Office, user: &str, id: &str) -> Vec<Vec<String>> {
    let dev = office.device(id, &[TASK]);
    dev.login(user).ok();
    dev.run(&["download", TASK], "").ok();
    content(&dev)
}

/// A north asset with inspections by `user` (the `n`th such, by id).
fn north_asset_with_inspections(office: &Office, user: &str, n: usize) -> String {
    office.value(&format!(
        "SELECT a.id FROM assets a WHERE a.region = 'north' AND a.status <> 'retired'
           AND EXISTS (SELECT 1 FROM inspections i WHERE i.asset_id = a.id AND i.inspector = '{user}')
         ORDER BY a.id LIMIT 1 OFFSET {n}"
    ))
}

fn sync_changes_only_and_match_a_fresh_download() {
    let office = Office::new(300);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    assert_full(&dev, "no-cursor");
    let full_bytes = dev.status()["last_sync"]["bytes_down"].as_u64().unwrap();

    // An app holds the replica open across the sync.
    let app = dev.replica();
    let renamed = north_asset_with_inspections(&office, "ana", 0);
    let leaving = north_asset_with_inspections(&office, "ana", 1);
    let entering = office.value(
        "SELECT a.id FROM assets a WHERE a.region = 'south'
           AND EXISTS (SELECT 1 FROM inspections i WHERE i.asset_id = a.id AND i.inspector = 'ana')
         ORDER BY a.id LIMIT 1",
    );
    let deleted = office.value(&format!(
        "SELECT id FROM inspections WHERE asset_id = {renamed} AND inspector = 'ana' ORDER BY id LIMIT 1"
    ));
    let leaving_inspections: i64 = rows(
        &app,
        &format!("SELECT count(*) FROM inspections WHERE asset_id = {leaving}"),
    )[0][0][1..]
        .parse()
        .unwrap();
    assert!(leaving_inspections > 0);
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'renamed by the office' WHERE id = {renamed};
         UPDATE assets SET region = 'south' WHERE id = {leaving};
         UPDATE assets SET region = 'north', status = 'active' WHERE id = {entering};
         DELETE FROM inspections WHERE id = '{deleted}';
         INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
         VALUES ('office-new', {renamed}, 'ana', '2026-12-01T08:00:00.000Z', 'ok', 'new');
         INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
         VALUES ('not-anas', {renamed}, 'ben', '2026-12-01T08:00:00.000Z', 'ok', 'ben''s');"
    ));
    let out = dev.run(&["sync"], "").ok().stdout;
    assert!(
        out.contains("only the changes since the last download"),
        "{out}"
    );
    assert_delta(&dev);
    let s = dev.status();
    let bytes = s["last_sync"]["bytes_down"].as_u64().unwrap();
    assert!(
        bytes > 0 && bytes < full_bytes / 4,
        "delta {bytes} B, full {full_bytes} B"
    );

    // The same as a fresh download, and the app saw it without reopening.
    assert_eq!(content(&dev), fresh(&office, "ana", "ref1"));
    let name: String = app
        .query_row(
            &format!("SELECT name FROM assets WHERE id = {renamed}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(name, "renamed by the office");
    let gone: i64 = app
        .query_row(
            &format!(
                "SELECT count(*) FROM inspections WHERE asset_id = {leaving} OR id = '{deleted}'"
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        gone, 0,
        "the leaving asset's inspections and the deleted one went"
    );
    let entered: i64 = app
        .query_row(
            &format!("SELECT count(*) FROM inspections WHERE asset_id = {entering}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(entered > 0, "the entering asset came with its inspections");
    assert_eq!(integrity(&app), "ok");

    // The app's own edit after the delta is journaled on the new base and sent.
    app.execute(
        &format!("UPDATE assets SET status = 'checked' WHERE id = {renamed}"),
        [],
    )
    .unwrap();
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {renamed}")),
        "checked"
    );
    assert!(
        conflicts(&office).is_empty(),
        "no conflict with its own edit"
    );

    // The server's history says which downloads were whole, and why.
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&office.admin(&["history", "--json"], "").ok().stdout).unwrap();
    let downloads: Vec<(bool, Option<&str>)> = history
        .iter()
        .filter(|h| h["device"] == "tab1" && h["bytes_down"].as_u64() > Some(0))
        .map(|h| (h["full"].as_bool().unwrap(), h["full_reason"].as_str()))
        .collect();
    assert_eq!(
        downloads,
        [(true, Some("no-cursor")), (false, None), (false, None)],
        "{history:?}"
    );

    // Nothing changed: almost nothing moves.
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    let s = dev.status();
    assert_eq!(s["last_sync"]["rows_down"], 0, "{s}");
    let idle = s["last_sync"]["bytes_down"].as_u64().unwrap();
    assert!(
        idle < 2048,
        "a sync with nothing changed moved {idle} bytes"
    );
}

#[test]
fn a_sync_brings_only_the_changes_and_matches_a_fresh_download() {
    sync_changes_only_and_match_a_fresh_download();
}

/// Copies the SQLite main database as a backup would.
fn backup(office: &Office, to: &Path) {
    let _ = std::fs::remove_file(to);
    office
        .sql()
        .execute("VACUUM INTO ?1", [to.to_str().unwrap()])
        .unwrap();
}

/// Stops the server, puts a backup in place of the main database, starts a server on
/// it and points the device at it.
fn restore(office: &mut Office, from: &Path, devices: &[&DeviceDir]) {
    office.server.child.kill().unwrap();
    office.server.child.wait().unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", office.db_path.display()));
    }
    std::fs::copy(from, &office.db_path).unwrap();
    office.server = Server::start(&office.db_url);
    for d in devices {
        d.use_server(&office.server.url);
    }
}

#[test]
fn each_full_reason_says_why_the_whole_slice_came() {
    let mut office = Office::new(120);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    assert_full(&dev, "no-cursor");
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    dev.run(&["sync", "--full"], "").ok();
    assert_full(&dev, "requested");
    dev.run(&["download", TASK, "--full"], "").ok();
    assert_full(&dev, "requested");

    // The task's definition changed.
    let changed = NORTH.replace(
        "Assets of the north region and their inspections",
        "North assets, reworded",
    );
    let path = office.dir.0.join("north2.toml");
    std::fs::write(&path, changed).unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    dev.run(&["sync"], "").ok();
    assert_full(&dev, "task-changed");

    // The office added a column to a table the slice takes whole, while the device
    // had an edit pending: the edit is sent first and integrated.
    let inspection = office.value(
        "SELECT i.id FROM inspections i JOIN assets a ON a.id = i.asset_id
         WHERE a.region = 'north' AND a.status <> 'retired' AND i.inspector = 'ana' ORDER BY i.id LIMIT 1",
    );
    dev.replica()
        .execute(
            "UPDATE inspections SET notes = 'device note' WHERE id = ?1",
            [&inspection],
        )
        .unwrap();
    office.execute_batch("ALTER TABLE inspections ADD COLUMN weather TEXT");
    dev.run(&["sync"], "").ok();
    assert_full(&dev, "schema-changed");
    assert_eq!(
        office.value(&format!(
            "SELECT notes FROM inspections WHERE id = '{inspection}'"
        )),
        "device note"
    );
    let weather: i64 = dev
        .replica()
        .query_row(
            "SELECT count(*) FROM pragma_table_info('inspections') WHERE name = 'weather'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(weather, 1, "the new column is on the device");

    // The replica holds another task.
    office
        .admin(
            &[
                "task", "assign", SOUTH_NAME, "--user", "ana", "--device", "tab1",
            ],
            "",
        )
        .ok();
    dev.run(&["download", SOUTH_NAME], "").ok();
    assert_full(&dev, "other-task");
    dev.run(&["download", TASK], "").ok();
    assert_full(&dev, "other-task");

    // The slice depends on the user ($user) and the replica is another user's: a
    // replica that says it does not depend on its user (made so by hand) is kept at
    // ben's login, and the server still judges by the task.
    dev.replica()
        .execute(
            "UPDATE fieldsync_replica SET value = '0' WHERE key = 'per_user'",
            [],
        )
        .unwrap();
    office
        .admin(&["task", "assign", TASK, "--user", "ben"], "")
        .ok();
    dev.run(&["logout"], "").ok();
    dev.login("ben").ok();
    dev.run(&["download", TASK], "").ok();
    assert_full(&dev, "other-user");
    assert_eq!(content(&dev), fresh(&office, "ben", "ref-ben"));
    dev.run(&["logout"], "").ok();
    dev.login("ana").ok();
    dev.run(&["download", TASK, "--full"], "").ok();

    // A restore from a backup older than the device's cursor, without `epoch reset`:
    // the cursor is ahead of the history.
    let copy = office.dir.0.join("backup-1.sqlite");
    backup(&office, &copy);
    office.execute_batch("UPDATE assets SET name = 'after the backup' WHERE region = 'north'");
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    // An edit pending across the restore is still sent, judged by value.
    let edited = north_asset_with_inspections(&office, "ana", 2);
    dev.replica()
        .execute(
            &format!("UPDATE assets SET status = 'seen after the restore' WHERE id = {edited}"),
            [],
        )
        .unwrap();
    restore(&mut office, &copy, &[&dev]);
    dev.run(&["sync"], "").ok();
    assert_full(&dev, "cursor-ahead");
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {edited}")),
        "seen after the restore"
    );
    assert_eq!(content(&dev), fresh(&office, "ana", "ref2"));

    // A restore followed by `admin epoch reset`, as the operator runs it.
    office.execute_batch("UPDATE assets SET name = 'before backup 2' WHERE region = 'north'");
    dev.run(&["sync"], "").ok();
    let copy = office.dir.0.join("backup-2.sqlite");
    backup(&office, &copy);
    office.execute_batch("UPDATE assets SET name = 'lost with the restore' WHERE region = 'north'");
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    restore(&mut office, &copy, &[&dev]);
    office.admin(&["epoch", "reset"], "").ok();
    dev.run(&["sync"], "").ok();
    assert_full(&dev, "epoch-changed");
    assert_eq!(content(&dev), fresh(&office, "ana", "ref3"));
    assert_eq!(integrity(&dev.replica()), "ok");
}

const SOUTH_NAME: &str = "south-work-orders";

/// Waits until the server pruned its history through `cursor` (a replica's); panics
/// after 20 s.
fn wait_pruned(office: &Office, cursor: i64) {
    let table = office.own_table("meta");
    for _ in 0..200 {
        let rows = office.rows(&format!(
            "SELECT value FROM {table} WHERE key = 'pruned_through'"
        ));
        if rows
            .first()
            .is_some_and(|v| v[0][1..].parse::<i64>().unwrap() >= cursor)
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the server never pruned its history through {cursor}");
}

/// The cursor a device's replica records.
fn cursor(dev: &DeviceDir) -> i64 {
    dev.replica()
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM fieldsync_replica WHERE key = 'cursor'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

fn pruned_history_sends_the_whole_slice() {
    let mut office = Office::new(60);
    office.server = Server::start_with(&office.db_url, &["--retention", "1s"]);
    let old = office.device("old", &[TASK]);
    let young = office.device("young", &[TASK]);
    for d in [&old, &young] {
        d.use_server(&office.server.url);
        d.login("ana").ok();
    }
    old.run(&["download", TASK], "").ok();
    let victim = north_asset_with_inspections(&office, "ana", 0);
    // The old device edits a row the office then deletes, and sends it only after
    // the deletion's tombstone was pruned.
    let edited = office.value(&format!(
        "SELECT id FROM inspections WHERE asset_id = {victim} AND inspector = 'ana' ORDER BY id LIMIT 1"
    ));
    old.replica()
        .execute(
            "UPDATE inspections SET notes = 'edited offline' WHERE id = ?1",
            [&edited],
        )
        .unwrap();
    office.execute_batch(&format!(
        "DELETE FROM inspections WHERE asset_id = {victim} AND inspector = 'ana';
         UPDATE assets SET name = 'later' WHERE id = {victim};"
    ));
    young.run(&["download", TASK], "").ok();
    let tombstones = format!(
        "SELECT count(*) FROM {} WHERE deleted = {}",
        office.own_table("rows"),
        if office.engine() == Engine::Postgres {
            "true"
        } else {
            "1"
        }
    );
    assert_ne!(office.value(&tombstones), "0");
    wait_pruned(&office, cursor(&young));
    assert_eq!(office.value(&tombstones), "0", "the tombstones went");
    // The old cursor is before the horizon; the young one is the horizon.
    // Not refused: the edit of a row deleted since is the conflict it always was.
    old.run(&["sync"], "").ok();
    assert_full(&old, "history-pruned");
    let logged = conflicts(&office);
    assert!(
        logged.iter().any(|c| c["key"] == serde_json::json!(edited)),
        "{logged:?}"
    );
    young.run(&["sync"], "").ok();
    assert_delta(&young);
    let expected = fresh(&office, "ana", "ref");
    assert_eq!(content(&old), expected);
    assert_eq!(content(&young), expected);
}

#[test]
fn history_older_than_the_retention_is_pruned_and_sends_the_whole_slice() {
    pruned_history_sends_the_whole_slice();
}

crate::also_on_postgres!(
    a_sync_brings_only_the_changes_and_matches_a_fresh_download,
    history_older_than_the_retention_is_pruned_and_sends_the_whole_slice,
    a_delta_names_gone_only_the_keys_that_may_have_left,
    a_move_by_a_nocase_value_or_by_a_later_tasks_filter_is_named,
    a_main_database_of_schema_4_upgraded_by_init_keeps_its_devices_deltas_right,
    a_watched_column_dropped_by_the_office_is_refused_or_leaves_its_writes_working,
);

#[test]
fn a_postgres_database_restored_from_pg_dump_is_another_history() {
    let mut office = Office::new_pg(80);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    office.execute_batch("UPDATE assets SET name = 'before the dump' WHERE region = 'north'");
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    let restored = fieldsync_testkit::pg::PgDb::new_tagged("restored");
    let dump = std::process::Command::new("pg_dump")
        .args(["--no-owner", "--no-privileges", &office.db_url])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut psql = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &restored.url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    psql.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    assert!(psql.wait().unwrap().success());
    office.server.child.kill().unwrap();
    office.server.child.wait().unwrap();
    office.server = Server::start(&restored.url);
    dev.use_server(&office.server.url);
    dev.run(&["sync"], "").ok();
    assert_full(&dev, "epoch-changed");
    office.db_url = restored.url.clone();
    office.pg = Some(restored);
    assert_eq!(content(&dev), fresh(&office, "ana", "ref"));
}

#[test]
fn a_table_of_its_key_alone_takes_its_changes_as_deltas() {
    // The device updates a held row by key, and inserts one it finds no row for; a
    // table with no column but its key has nothing to update.
    let office = Office::new(20);
    office.execute_batch(
        "CREATE TABLE tags (code TEXT PRIMARY KEY NOT NULL);
         INSERT INTO tags (code) VALUES ('a'), ('b'), ('c');",
    );
    office.admin(&["table", "track", "tags"], "").ok();
    let toml = "name = \"tags\"\n[[tables]]\nname = \"tags\"\n";
    office.apply_task("tags.toml", toml, "tags", "ana");
    let dev = office.device("tab1", &["tags"]);
    dev.login("ana").ok();
    dev.run(&["download", "tags"], "").ok();
    // One touched (sent again), one new, one deleted.
    office.execute_batch(
        "UPDATE tags SET code = code WHERE code = 'b';
         INSERT INTO tags (code) VALUES ('d');
         DELETE FROM tags WHERE code = 'a';",
    );
    let out = dev.run(&["sync"], "").ok().stdout;
    assert_delta(&dev);
    assert!(out.contains("1 row(s) changed, 1 entered, 1 left"), "{out}");
    let held = rows(&dev.replica(), "SELECT code FROM tags ORDER BY code");
    let main = rows(&office.sql(), "SELECT code FROM tags ORDER BY code");
    assert_eq!(held, main);
    assert_eq!(held.len(), 3);
}

/// The keys a device's last sync received: rows sent and keys named gone.
fn rows_down(dev: &DeviceDir) -> u64 {
    dev.status()["last_sync"]["rows_down"].as_u64().unwrap()
}

#[test]
fn a_delta_names_gone_only_the_keys_that_may_have_left() {
    let office = Office::new(300);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    // The office edits rows outside the slice and moves none of them: south assets'
    // names, other inspectors' results, new south assets. Nothing reaches the device.
    let south: u64 = office
        .value("SELECT count(*) FROM assets WHERE region = 'south'")
        .parse()
        .unwrap();
    assert!(south > 50, "{south}");
    office.execute_batch(
        "UPDATE assets SET name = name || '+' WHERE region = 'south';
         UPDATE inspections SET result = 'redo' WHERE inspector <> 'ana';
         INSERT INTO assets (id, name, category, status, region) VALUES
             (900001, 'new-1', 'pump', 'active', 'south'),
             (900002, 'new-2', 'pump', 'active', 'south');",
    );
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    assert_eq!(rows_down(&dev), 0);
    // A north asset moved south (its inspections leave with it, on the device), a
    // south asset's key changed and another one deleted: three keys named; the asset
    // and its inspections left the replica.
    let leaving = north_asset_with_inspections(&office, "ana", 0);
    office.execute_batch(&format!(
        "UPDATE assets SET region = 'south' WHERE id = {leaving};
         UPDATE assets SET id = 1000000 WHERE id = 900001;
         DELETE FROM assets WHERE id = 900002;"
    ));
    let out = dev.run(&["sync"], "").ok().stdout;
    assert_delta(&dev);
    let with_it: u64 = office
        .value(&format!(
            "SELECT count(*) FROM inspections WHERE asset_id = {leaving} AND inspector = 'ana'"
        ))
        .parse()
        .unwrap();
    let left = format!("0 row(s) changed, 0 entered, {} left", 1 + with_it);
    assert!(out.contains(&left), "{out}");
    assert_eq!(rows_down(&dev), 3);
    assert_eq!(content(&dev), fresh(&office, "ana", "tab9"));
}

/// A task of table `crews` alone, filtered by `filter`.
fn crews_task(name: &str, filter: &str) -> String {
    format!("name = \"{name}\"\n[[tables]]\nname = \"crews\"\nfilter = \"{filter}\"\n")
}

/// An office with a tracked table `crews` (`area`, of collation `collate` where the
/// engine has it, and `shift`) holding `rows`, and task `crews` (`area = 'north'`)
/// assigned to ana.
fn crews_office(collate: &str, rows: &str) -> Office {
    let office = Office::new(20);
    let collate = match office.engine() {
        Engine::Sqlite => collate,
        Engine::Postgres => "",
    };
    office.execute_batch(&format!(
        "CREATE TABLE crews (id INTEGER PRIMARY KEY, area TEXT{collate} NOT NULL, shift TEXT NOT NULL);
         INSERT INTO crews (id, area, shift) VALUES {rows};"
    ));
    office.admin(&["table", "track", "crews"], "").ok();
    let task = crews_task("crews", "area = 'north'");
    office.apply_task("crews.toml", &task, "crews", "ana");
    office
}

#[test]
fn a_move_by_a_nocase_value_or_by_a_later_tasks_filter_is_named() {
    // SQLite compares a NOCASE column's values without case; PostgreSQL has no such
    // collation by default.
    let office = crews_office(
        " COLLATE NOCASE",
        "(1, 'north', 'day'), (2, 'north', 'day'), (3, 'north', 'night'), (4, 'south', 'day')",
    );
    let held = |dev: &DeviceDir| rows(&dev.replica(), "SELECT id FROM crews ORDER BY id");
    let ids =
        |ids: &[i64]| -> Vec<Vec<String>> { ids.iter().map(|i| vec![format!("i{i}")]).collect() };
    let north = office.device("tab1", &["crews"]);
    north.login("ana").ok();
    north.run(&["download", "crews"], "").ok();
    assert_eq!(held(&north), ids(&[1, 2, 3]));
    // 'North' is not 'north' to a filter, though the column's NOCASE says equal.
    office.execute_batch("UPDATE crews SET area = 'North' WHERE id = 1");
    north.run(&["sync"], "").ok();
    assert_delta(&north);
    assert_eq!(held(&north), ids(&[2, 3]));
    // A task applied later filters by `shift`: from then on a shift change moves rows.
    office.apply_task(
        "day.toml",
        &crews_task("day-crews", "shift = 'day'"),
        "day-crews",
        "ana",
    );
    let day = office.device("tab2", &["day-crews"]);
    day.login("ana").ok();
    day.run(&["download", "day-crews"], "").ok();
    assert_eq!(held(&day), ids(&[1, 2, 4]));
    office.execute_batch("UPDATE crews SET shift = 'night' WHERE id = 2");
    day.run(&["sync"], "").ok();
    assert_delta(&day);
    assert_eq!(held(&day), ids(&[1, 4]));
    north.run(&["sync"], "").ok();
    assert_delta(&north);
    assert_eq!(held(&north), ids(&[2, 3]));
    // Deleted, `area` leaves the watch: a move then is a plain change. Applied again
    // as it was (the same hash: the device's cursor still counts), every change since
    // counts as a move, so row 3, moved south meanwhile, still leaves the device.
    office.admin(&["task", "delete", "crews"], "").ok();
    office.execute_batch("UPDATE crews SET area = 'south' WHERE id = 3");
    office.apply_task(
        "crews.toml",
        &crews_task("crews", "area = 'north'"),
        "crews",
        "ana",
    );
    office
        .admin(&["task", "assign", "crews", "--device", "tab1"], "")
        .ok();
    north.run(&["sync"], "").ok();
    assert_delta(&north);
    assert_eq!(held(&north), ids(&[2]));
}

#[test]
fn a_watched_column_dropped_by_the_office_is_refused_or_leaves_its_writes_working() {
    let office = crews_office(
        "",
        "(1, 'north', 'day'), (2, 'north', 'night'), (3, 'south', 'day')",
    );
    office.apply_task(
        "day.toml",
        &crews_task("day-crews", "shift = 'day'"),
        "day-crews",
        "ana",
    );
    let north = office.device("tab1", &["crews"]);
    north.login("ana").ok();
    north.run(&["download", "crews"], "").ok();
    // `shift` is watched (a task filters by it). SQLite refuses to drop it (the
    // trigger reads it); PostgreSQL drops it, and its trigger counts every update as a
    // move from then on.
    let drop = "ALTER TABLE crews DROP COLUMN shift";
    match office.engine() {
        Engine::Sqlite => {
            let err = office.sql().execute_batch(drop).unwrap_err().to_string();
            assert!(err.contains("fieldsync_crews_upd"), "{err}");
        }
        Engine::Postgres => office.execute_batch(drop),
    }
    office.execute_batch("UPDATE crews SET area = 'south' WHERE id = 2");
    north.run(&["sync"], "").ok();
    let held = rows(&north.replica(), "SELECT id FROM crews ORDER BY id");
    assert_eq!(held, vec![vec!["i1".to_string()]]);
}

/// A tracked table's triggers as fieldsync before schema 5 made them (no `moved`).
fn schema_4_triggers(table: &str, pk: &str) -> String {
    let next = "(SELECT coalesce(max(version), 0) + 1 FROM fieldsync_rows)";
    let upsert = "ON CONFLICT (tbl, pk) DO UPDATE SET version = excluded.version, deleted = excluded.deleted";
    let stamp = |key: &str, deleted: u8| {
        format!(
            "INSERT INTO fieldsync_rows (tbl, pk, version, deleted) VALUES ('{table}', {key}, {next}, {deleted}) {upsert};"
        )
    };
    let old_gone = format!(
        "INSERT INTO fieldsync_rows (tbl, pk, version, deleted) SELECT '{table}', OLD.\"{pk}\", {next}, 1 WHERE OLD.\"{pk}\" IS NOT NEW.\"{pk}\" {upsert};"
    );
    let (new, old) = (
        stamp(&format!("NEW.\"{pk}\""), 0),
        stamp(&format!("OLD.\"{pk}\""), 1),
    );
    format!(
        "DROP TRIGGER \"fieldsync_{table}_ins\"; DROP TRIGGER \"fieldsync_{table}_upd\"; DROP TRIGGER \"fieldsync_{table}_del\";
         CREATE TRIGGER \"fieldsync_{table}_ins\" AFTER INSERT ON \"{table}\" BEGIN {new} END;
         CREATE TRIGGER \"fieldsync_{table}_upd\" AFTER UPDATE ON \"{table}\" BEGIN {old_gone} {new} END;
         CREATE TRIGGER \"fieldsync_{table}_del\" AFTER DELETE ON \"{table}\" BEGIN {old} END;"
    )
}

#[test]
fn a_main_database_of_schema_4_upgraded_by_init_keeps_its_devices_deltas_right() {
    let office = Office::new(300);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    // The main database as the fieldsync before schema 5 left it (on SQLite with its
    // triggers, the office writing through them: a north asset moved south; on
    // PostgreSQL the functions stay this build's, and init runs before any write).
    let leaving = north_asset_with_inspections(&office, "ana", 0);
    let moved = format!("UPDATE assets SET region = 'south' WHERE id = {leaving}");
    match office.engine() {
        Engine::Sqlite => {
            let mut downgrade = String::new();
            for (table, pk) in [
                ("assets", "id"),
                ("inspections", "id"),
                ("work_orders", "id"),
            ] {
                downgrade.push_str(&schema_4_triggers(table, pk));
            }
            downgrade.push_str(
                "DROP INDEX fieldsync_rows_by_tbl_version_moved;
                 CREATE INDEX fieldsync_rows_by_tbl_version ON fieldsync_rows (tbl, version);
                 ALTER TABLE fieldsync_rows DROP COLUMN moved;
                 ALTER TABLE fieldsync_tracked DROP COLUMN watch;
                 UPDATE fieldsync_meta SET value = '4' WHERE key = 'schema_version';",
            );
            office.execute_batch(&downgrade);
            office.execute_batch(&moved);
            fieldsync(&["server", "init", "--db", &office.db_url], "").ok();
        }
        Engine::Postgres => {
            office.execute_batch(
                "ALTER TABLE fieldsync.rows DROP COLUMN moved;
                 ALTER TABLE fieldsync.tracked DROP COLUMN watch;
                 UPDATE fieldsync.meta SET value = '4' WHERE key = 'schema_version';",
            );
            fieldsync(&["server", "init", "--db", &office.db_url], "").ok();
            office.execute_batch(&moved);
        }
    }
    // Still tracked, the old stamps kept: a delta, and the move reaches the device.
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    assert_eq!(content(&dev), fresh(&office, "ana", "tab9"));
    // From now on a change that moves nothing outside the slice names nothing.
    office.execute_batch("UPDATE assets SET name = name || '+' WHERE region = 'south'");
    dev.run(&["sync"], "").ok();
    assert_delta(&dev);
    assert_eq!(rows_down(&dev), 0);
}
