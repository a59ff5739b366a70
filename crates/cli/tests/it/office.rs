//! What office tools do to the main database: every write form an office app uses
//! gets a row version, and none of them fails because of fieldsync.

use std::process::{Command, Stdio};

use crate::harness::*;

/// Runs SQL with the `sqlite3` shell on the main database, as an office tool would.
fn office_sqlite3(office: &Office, sql: &str) -> Run {
    // As office programs do, the shell waits for a moment a server holds the database.
    Command::new("sqlite3")
        .arg("-bail")
        .args(["-cmd", ".timeout 5000"])
        .arg(&office.db_path)
        .arg(format!("PRAGMA foreign_keys = ON; {sql}"))
        .stdin(Stdio::null())
        .output()
        .expect("the sqlite3 shell runs")
        .into()
}

/// Runs one dot command of the `sqlite3` shell (`.backup`, `.restore`) on the main
/// database.
fn sqlite3_dot(office: &Office, command: &str) -> Run {
    Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(&office.db_path)
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("the sqlite3 shell runs")
        .into()
}

fn version(office: &Office, table: &str, key: &str) -> i64 {
    office
        .value(&format!(
            "SELECT version FROM fieldsync_rows WHERE tbl = {table} AND pk = {key}"
        ))
        .parse()
        .unwrap()
}

/// A statement in a trigger takes the outer statement's conflict clause: the tracking
/// triggers used `INSERT OR REPLACE`, so `UPDATE OR IGNORE` skipped the version stamp
/// (a device edit then overwrote the office's change silently) and upserts,
/// `UPDATE OR ABORT|FAIL|ROLLBACK` and foreign-key actions failed on fieldsync's own
/// table.
#[test]
fn every_sqlite_write_form_of_the_office_is_stamped() {
    let office = Office::new(10);
    let mut last = version(&office, "'assets'", "1");
    let forms = [
        "UPDATE OR IGNORE assets SET name = 'or ignore' WHERE id = 1",
        "UPDATE OR ABORT assets SET name = 'or abort' WHERE id = 1",
        "UPDATE OR FAIL assets SET name = 'or fail' WHERE id = 1",
        "UPDATE OR ROLLBACK assets SET name = 'or rollback' WHERE id = 1",
        "UPDATE OR REPLACE assets SET name = 'or replace' WHERE id = 1",
        "INSERT INTO assets (id, name, category, status, region) VALUES (1, 'upsert', 'pump', 'active', 'north')
           ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        "INSERT OR REPLACE INTO assets (id, name, category, status, region) VALUES (1, 'replaced', 'pump', 'active', 'north')",
    ];
    for sql in forms {
        let run = office_sqlite3(&office, sql);
        assert_eq!(run.code, 0, "{sql}: {run:?}");
        let now = version(&office, "'assets'", "1");
        assert!(now > last, "{sql}: version {now} not above {last}");
        last = now;
    }
}

/// Foreign-key actions write the children through the tracking triggers too.
#[test]
fn foreign_key_actions_of_the_office_are_stamped() {
    let office = Office::new(10);
    office.execute_batch(
        "CREATE TABLE sites (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE visits (id TEXT PRIMARY KEY,
             site_id INTEGER REFERENCES sites (id) ON UPDATE CASCADE ON DELETE SET NULL,
             note TEXT);
         INSERT INTO sites VALUES (1, 'a'), (2, 'b');
         INSERT INTO visits VALUES ('v1', 1, 'x'), ('v2', 2, 'y');",
    );
    for t in ["sites", "visits"] {
        office.admin(&["table", "track", t], "").ok();
    }
    let v1 = version(&office, "'visits'", "'v1'");
    let v2 = version(&office, "'visits'", "'v2'");
    let run = office_sqlite3(&office, "UPDATE sites SET id = 10 WHERE id = 1");
    assert_eq!(run.code, 0, "{run:?}");
    let run = office_sqlite3(&office, "DELETE FROM sites WHERE id = 2");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        version(&office, "'visits'", "'v1'") > v1,
        "the cascaded update"
    );
    assert!(version(&office, "'visits'", "'v2'") > v2, "the SET NULL");
    assert_eq!(
        office.value("SELECT deleted FROM fieldsync_rows WHERE tbl = 'sites' AND pk = 1"),
        "1",
        "the old key is a tombstone"
    );
}

/// SQLite's usual way to change a column: a new table, a copy, drop, rename. The
/// triggers go with the old table; fieldsync must see that tracking is gone, refuse to
/// serve or integrate the table until `table track` repairs it, and the repair must
/// make every change of the meantime count (a device edit of a row the office changed
/// meanwhile is a conflict, not an overwrite).
#[test]
fn a_rebuilt_table_is_refused_until_tracked_again_and_no_change_is_lost() {
    let office = Office::new(10);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let id: i64 = dev
        .replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    let run = office_sqlite3(
        &office,
        "PRAGMA foreign_keys = OFF;
         BEGIN;
         CREATE TABLE assets_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,
             status TEXT NOT NULL, region TEXT NOT NULL, x REAL, y REAL, installed TEXT, notes TEXT, owner TEXT);
         INSERT INTO assets_new (id, name, category, status, region, x, y, installed, notes)
             SELECT id, name, category, status, region, x, y, installed, notes FROM assets;
         DROP TABLE assets;
         ALTER TABLE assets_new RENAME TO assets;
         COMMIT;",
    );
    assert_eq!(run.code, 0, "{run:?}");
    // The office edits a row while nothing tracks the table.
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'office after rebuild' WHERE id = {id}"
    ));
    dev.replica()
        .execute("UPDATE assets SET name = 'device' WHERE id = ?1", [id])
        .unwrap();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("change tracking is missing or stale")
            && run.stderr.contains("fieldsync admin table track assets"),
        "{run:?}"
    );
    let run = dev.run(
        &["download", "north-inspections", "--discard-local-changes"],
        "",
    );
    assert!(run.stderr.contains("table track assets"), "{run:?}");
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
        "office after rebuild"
    );
    office.admin(&["table", "track", "assets"], "").ok();
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
        "office after rebuild",
        "the office's change is not overwritten"
    );
    let logged = conflicts(&office);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["device_values"]["name"], "device");
    // Tracked again: office writes are stamped, devices download.
    dev.run(&["download", "north-inspections"], "").ok();
}

/// A SQLite main database restored from a backup has forgotten the versions it
/// handed out after the backup: a device that downloaded since holds bases the
/// restored database never handed out, and its sends were refused. `admin epoch
/// reset` (docs/operations-sqlite.md) makes its pending changes judged by value: the
/// send goes through, and where the restore changed what the device saw, the
/// difference is a logged conflict, never a silent overwrite.
#[test]
fn after_a_restore_and_an_epoch_reset_pending_edits_are_judged_by_value() {
    let office = Office::new(10);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    let backup = office.dir.0.join("backup.sqlite");
    let run = sqlite3_dot(&office, &format!(".backup '{}'", backup.display()));
    assert_eq!(run.code, 0, "{run:?}");
    // After the backup: an office edit, then the device's download.
    let id: i64 = office
        .value("SELECT min(id) FROM assets WHERE region = 'north'")
        .parse()
        .unwrap();
    let original = office.value(&format!("SELECT name FROM assets WHERE id = {id}"));
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'office before the restore' WHERE id = {id}"
    ));
    dev.run(&["download", "north-inspections"], "").ok();
    let run = sqlite3_dot(&office, &format!(".restore '{}'", backup.display()));
    assert_eq!(run.code, 0, "{run:?}");
    let before = office.value("SELECT value FROM fieldsync_meta WHERE key = 'epoch'");
    let run = office.admin(&["epoch", "reset"], "").ok();
    assert!(run.stdout.starts_with("epoch reset: "), "{run:?}");
    assert_ne!(
        office.value("SELECT value FROM fieldsync_meta WHERE key = 'epoch'"),
        before
    );
    dev.replica()
        .execute("UPDATE assets SET name = 'device' WHERE id = ?1", [id])
        .unwrap();
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
        original,
        "the restored value is kept (field-merge: the colliding value)"
    );
    let logged = conflicts(&office);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["device_values"]["name"], "device");
    // The device's next download takes the restored history.
    dev.run(&["download", "north-inspections"], "").ok();
    assert_eq!(
        dev.replica()
            .query_row("SELECT name FROM assets WHERE id = ?1", [id], |r| r
                .get::<_, String>(0))
            .unwrap(),
        original
    );
}

/// A renamed table keeps its triggers, which record under the old name: it is not
/// tracked under the new name until `table track NEW`, which replaces them.
#[test]
fn a_renamed_table_is_tracked_under_its_new_name_only() {
    let office = Office::new(10);
    office.execute_batch("ALTER TABLE work_orders RENAME TO jobs");
    let run = office.admin(&["table", "track", "jobs"], "");
    assert_eq!(run.code, 0, "{run:?}");
    let triggers = office.rows(
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'jobs' ORDER BY name",
    );
    assert_eq!(
        triggers,
        vec![
            vec!["tfieldsync_jobs_del".to_string()],
            vec!["tfieldsync_jobs_ins".to_string()],
            vec!["tfieldsync_jobs_upd".to_string()],
        ]
    );
    let key = office.value("SELECT id FROM jobs LIMIT 1");
    office.execute_batch(&format!(
        "UPDATE jobs SET title = 'renamed' WHERE id = '{key}'"
    ));
    assert_eq!(
        office.value(&format!(
            "SELECT count(*) FROM fieldsync_rows WHERE tbl = 'work_orders' AND pk = '{key}' AND version > (SELECT min(version) FROM fieldsync_rows WHERE tbl = 'jobs')"
        )),
        "0",
        "nothing recorded under the old name"
    );
}

/// `fieldsync server run` on `db_url` with libfaketime's clock `offset` away (e.g.
/// `+13h`), killed on drop. The library is preloaded into the server itself, not run
/// through the `faketime` program: that one forks the server and waits, so killing it
/// left the server running after the test.
fn server_with_clock(db_url: &str, offset: &str) -> Server {
    let mut server = Command::new(BIN);
    server
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    Server::start_by(server, db_url)
}

/// How many hours the server at `url` is away from this machine's clock, by the
/// `Date` header of its answer (`Fri, 04 Dec 2026 08:58:28 GMT`).
fn clock_offset_hours(url: &str) -> f64 {
    let answer = ureq::get(&format!("{url}/health")).call().unwrap();
    let date = answer
        .header("date")
        .expect("the server sends a Date header");
    let parts: Vec<&str> = date.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2]).expect("a month") + 1;
    let rfc3339 = format!("{}-{month:02}-{}T{}Z", parts[3], parts[1], parts[4]);
    let server_ms = fieldsync_proto::time::parse_rfc3339(&rfc3339).expect("an HTTP date");
    (server_ms - fieldsync_proto::time::now_unix_ms()) as f64 / 3_600_000.0
}

/// Where Debian's libfaketime (package `faketime`, which scripts/test installs) keeps
/// its library.
fn libfaketime() -> std::path::PathBuf {
    let multiarch = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"));
    let plain = ["/usr/lib/faketime", "/usr/local/lib/faketime"]
        .map(|d| std::path::Path::new(d).join("libfaketime.so.1"));
    multiarch
        .chain(plain)
        .find(|p| p.is_file())
        .expect("libfaketime.so.1 is not installed (scripts/test installs the faketime package)")
}

/// Sessions expire by one clock, the database's: a server whose clock runs 13 hours
/// fast logged every device out, on every server, when it judged by its own.
#[test]
fn a_server_with_a_wrong_clock_logs_nobody_out() {
    let office = Office::new_pg(10);
    let fast = server_with_clock(&office.db_url, "+13h");
    let slow = server_with_clock(&office.db_url, "-13h");
    // The servers' own clocks are that far off (the library took).
    let (fast_h, slow_h) = (clock_offset_hours(&fast.url), clock_offset_hours(&slow.url));
    assert!((12.9..13.1).contains(&fast_h), "fast server {fast_h} h");
    assert!((-13.1..-12.9).contains(&slow_h), "slow server {slow_h} h");
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    for server in [&fast, &slow] {
        dev.use_server(&server.url);
        let run = dev.run(&["tasks"], "");
        assert_eq!(run.code, 0, "through {}: {run:?}", server.url);
    }
    // Logged in through the slow server: the session still lasts from the
    // database's now, not 13 hours less.
    dev.login("ana").ok();
    dev.use_server(&office.server.url);
    let run = dev.run(&["tasks"], "");
    assert_eq!(run.code, 0, "{run:?}");
}

/// An office transaction holding a SQLite main database is a retryable "busy", not
/// an internal server error; the send passes once the office is done.
#[test]
fn a_busy_main_database_is_said_so_and_retried() {
    let office = Office::new(10);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'device' WHERE id = (SELECT min(id) FROM assets)",
            [],
        )
        .unwrap();
    let holder = office.sql();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let one_try = [
        ("FIELDSYNC_RETRIES", "1"),
        ("FIELDSYNC_BUSY_PATIENCE_MS", "0"),
    ];
    let run = dev.run_env(&["send"], &one_try);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("the main database is busy"), "{run:?}");
    holder.execute_batch("COMMIT").unwrap();
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value("SELECT count(*) FROM assets WHERE name = 'device'"),
        "1"
    );
}

/// A column the office dropped is named as the office's schema change, not as a
/// column "not in the task".
#[test]
fn a_column_the_office_dropped_is_named_as_such() {
    let office = Office::new(10);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    dev.replica()
        .execute(
            "UPDATE assets SET y = 1.5 WHERE id = (SELECT min(id) FROM assets)",
            [],
        )
        .unwrap();
    let run = office_sqlite3(&office, "ALTER TABLE assets DROP COLUMN y");
    assert_eq!(run.code, 0, "{run:?}");
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("column `y` no longer exists in table `assets`")
            && run
                .stderr
                .contains("ask the office to update task `north-inspections`"),
        "{run:?}"
    );
}

const CREW: &str = r#"name = "crew"
[[tables]]
name = "assets"
write = ["update"]
[[tables]]
name = "work_orders"
filter = "status IN ('open', 'in-progress')"
write = ["update"]
"#;

/// Applies a task file as the administrator does.
fn apply(office: &Office, toml: &str) {
    let path = office.dir.0.join(format!("task-{}.toml", toml.len()));
    std::fs::write(&path, toml).unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
}

/// A change the administrator makes, and whether the unrelated asset edit still lands.
type Variant<'a> = (&'a str, &'a dyn Fn(&Office), bool);

/// The administrator changes a task while a device holds edits made under it: an
/// edit the device's version allowed and today's does not is a conflict (logged,
/// not applied, visible to the office), never a refusal of the whole upload; the
/// device's other edits go through.
fn task_changes_while_edits_are_pending_are_conflicts_not_refusals() {
    let variants: [Variant<'_>; 6] = [
        (
            "filter narrowed",
            &|o| {
                apply(
                    o,
                    &CREW.replace("IN ('open', 'in-progress')", "= 'in-progress'"),
                )
            },
            true,
        ),
        (
            "table removed",
            &|o| {
                apply(
                    o,
                    &CREW[..CREW.find("[[tables]]\nname = \"work_orders\"").unwrap()],
                )
            },
            true,
        ),
        (
            "column removed",
            &|o| {
                apply(o, &CREW.replace("filter = \"status IN ('open', 'in-progress')\"", "filter = \"status IN ('open', 'in-progress')\"\ncolumns = [\"id\", \"asset_id\", \"status\"]"))
            },
            true,
        ),
        (
            "write removed",
            &|o| {
                apply(
                    o,
                    &format!(
                        "{}\n",
                        CREW.trim_end().trim_end_matches("write = [\"update\"]")
                    ),
                )
            },
            true,
        ),
        (
            "task deleted",
            &|o| {
                o.admin(&["task", "delete", "crew"], "").ok();
            },
            false,
        ),
        (
            "task renamed",
            &|o| {
                apply(o, &CREW.replace("name = \"crew\"", "name = \"crew-2\""));
                o.admin(
                    &[
                        "task", "assign", "crew-2", "--user", "ana", "--device", "tab1",
                    ],
                    "",
                )
                .ok();
                o.admin(&["task", "delete", "crew"], "").ok();
            },
            false,
        ),
    ];
    for (what, change, assets_still_allowed) in variants {
        let office = Office::new(10);
        office.execute_batch(
            "INSERT INTO work_orders (id, asset_id, title, priority, status) VALUES ('wo-a', 1, 'office title', 3, 'open')",
        );
        apply(&office, CREW);
        office
            .admin(&["task", "assign", "crew", "--user", "ana"], "")
            .ok();
        let dev = office.device("tab1", &["crew"]);
        dev.login("ana").ok();
        dev.run(&["download", "crew"], "").ok();
        let app = dev.replica();
        app.execute(
            "UPDATE work_orders SET title = 'device' WHERE id = 'wo-a'",
            [],
        )
        .unwrap();
        app.execute("UPDATE assets SET name = 'device asset' WHERE id = 1", [])
            .unwrap();
        change(&office);
        let run = dev.run(&["send"], "");
        assert_eq!(run.code, 0, "{what}: {run:?}");
        assert_eq!(
            office.value("SELECT title FROM work_orders WHERE id = 'wo-a'"),
            "office title",
            "{what}: not applied"
        );
        let logged = conflicts(&office);
        assert!(
            logged.iter().any(|c| c["kind"] == "task-changed"
                && c["resolution"] == "not-applied"
                && c["device_values"]["title"] == "device"),
            "{what}: {logged:?}"
        );
        let asset = office.value("SELECT name FROM assets WHERE id = 1");
        assert_eq!(
            asset == "device asset",
            assets_still_allowed,
            "{what}: {asset}"
        );
        assert_eq!(dev.status()["pending"], 0, "{what}: the journal is settled");
    }
}

#[test]
fn task_changes_while_edits_are_pending_are_conflicts_not_refusals_sqlite() {
    task_changes_while_edits_are_pending_are_conflicts_not_refusals();
}

/// Found by the convergence test: a row the device's own send wrote (its base an
/// upload's), edited again, then the task narrowed so the row is no longer in the
/// slice: the edit was logged as `left-slice` ("your own send moved it out"), as if
/// the device had moved it; it is the task that changed, so `task-changed`.
fn a_row_sent_then_outside_a_narrowed_task_is_task_changed() {
    let office = Office::new(10);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let app = dev.replica();
    let id: i64 = app
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    // Two rows, so that the upload's versions are a range (an upload's base).
    app.execute("UPDATE assets SET name = 'sent' WHERE id = ?1", [id])
        .unwrap();
    app.execute(
        "UPDATE inspections SET result = 'sent' WHERE id = (SELECT min(id) FROM inspections)",
        [],
    )
    .unwrap();
    dev.run(&["send"], "").ok();
    app.execute("UPDATE assets SET name = 'pending' WHERE id = ?1", [id])
        .unwrap();
    let filter = "filter = \"region = 'north' AND status <> 'retired'\"";
    assert!(NORTH.contains(filter));
    apply(
        &office,
        &NORTH.replace(
            filter,
            &format!("filter = \"region = 'north' AND status <> 'retired' AND id <> {id}\""),
        ),
    );
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
        "sent",
        "not applied"
    );
    let logged = conflicts(&office);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["kind"], "task-changed", "{logged:?}");
    assert_eq!(logged[0]["resolution"], "not-applied", "{logged:?}");
    assert_eq!(logged[0]["device_values"]["name"], "pending", "{logged:?}");
    assert_eq!(dev.status()["pending"], 0);
}

#[test]
fn a_row_sent_then_outside_a_narrowed_task_is_task_changed_sqlite() {
    a_row_sent_then_outside_a_narrowed_task_is_task_changed();
}

crate::also_on_postgres!(
    task_changes_while_edits_are_pending_are_conflicts_not_refusals,
    a_row_sent_then_outside_a_narrowed_task_is_task_changed,
);

/// An office trigger that inserts a row of its own as a device's row is written: a
/// later entry of the same upload inserting that key is judged against the row the
/// trigger made (a conflict logged with both sides), never taken for a key the
/// main database has not seen (its insert would be refused, and the whole upload with
/// it). The store reads each insert's row ahead only where no office trigger exists
/// (`store/sqlite/fresh.rs`).
#[test]
fn an_office_triggers_insert_is_seen_by_the_later_entries_of_the_same_upload() {
    let office = Office::new(20);
    office_sqlite3(
        &office,
        "CREATE TRIGGER office_shadow AFTER INSERT ON inspections WHEN NEW.id = 'zz-crew'
         BEGIN
             INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes)
             VALUES (NEW.id || '-shadow', NEW.asset_id, NEW.inspector, NEW.inspected_at,
                     'office', 'made by the office');
         END;",
    )
    .ok();
    let dev = office.device("shadow", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let conn = dev.replica();
    let asset: i64 = conn
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result, notes) VALUES
             ('zz-crew', {asset}, 'ana', '2026-12-06T09:00:00.000Z', 'ok', 'crew'),
             ('zz-crew-shadow', {asset}, 'ana', '2026-12-06T09:00:00.000Z', 'ok', 'crew');"
    ))
    .unwrap();
    drop(conn);
    let sent = dev.run(&["send"], "").ok();
    assert!(sent.stdout.contains("sent 2 change(s)"), "{sent:?}");
    assert_eq!(
        office.value("SELECT notes FROM inspections WHERE id = 'zz-crew'"),
        "crew"
    );
    let logged = conflicts(&office);
    assert!(
        logged
            .iter()
            .any(|c| c.to_string().contains("zz-crew-shadow")),
        "{logged:?}"
    );
}
