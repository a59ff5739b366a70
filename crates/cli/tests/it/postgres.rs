//! The end-to-end flows on a PostgreSQL main database: a real server process on
//! loopback, the real binary, one fresh database per test. Also what PostgreSQL
//! brings: types, transactions that commit late, several servers on one database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The north task's name (the sample task ana is assigned to).
const TASK: &str = "north-inspections";
const NORTH_ASSETS: &str = "SELECT id, name, category, status, region, x, y FROM assets
     WHERE region = 'north' AND status <> 'retired' ORDER BY id";
const ANA_INSPECTIONS: &str = "SELECT * FROM inspections WHERE inspector = 'ana' AND asset_id IN
     (SELECT id FROM assets WHERE region = 'north' AND status <> 'retired') ORDER BY id COLLATE \"C\"";

fn north_device(office: &Office, id: &str) -> DeviceDir {
    let dev = office.device(id, &[TASK]);
    dev.login("ana").ok();
    dev
}

#[track_caller]
fn assert_north_slice(office: &Office, dev: &DeviceDir) {
    let mut main = office.pg();
    let replica = dev.replica();
    let assets = pg_rows(&mut main, NORTH_ASSETS);
    assert!(!assets.is_empty());
    assert_eq!(rows(&replica, "SELECT * FROM assets ORDER BY id"), assets);
    let insp = pg_rows(&mut main, ANA_INSPECTIONS);
    assert!(!insp.is_empty());
    assert_eq!(
        rows(&replica, "SELECT * FROM inspections ORDER BY id"),
        insp
    );
}

#[test]
fn a_download_from_postgres_is_exactly_the_slice() {
    let office = Office::new_pg(60);
    let dev = north_device(&office, "tab-pg-1");
    dev.run(&["download", TASK], "").ok();
    assert_north_slice(&office, &dev);
    // Office writes arrive at the next download.
    office
        .pg()
        .batch_execute(
            "UPDATE assets SET name = 'renamed' WHERE id = 1;
             UPDATE assets SET status = 'retired' WHERE id = 3;
             INSERT INTO inspections VALUES ('office-new', 5, 'ana', '2026-06-01', 'ok', NULL);",
        )
        .unwrap();
    dev.run(&["download", TASK], "").ok();
    assert_north_slice(&office, &dev);
    let replica = dev.replica();
    assert_eq!(
        rows(&replica, "SELECT count(*) FROM assets WHERE id = 3"),
        vec![vec!["i0".to_string()]]
    );
}

/// The first value of the first row of a replica query, as text.
fn first(conn: &rusqlite::Connection, sql: &str) -> String {
    conn.query_row(sql, [], |r| {
        Ok(match r.get_ref(0)? {
            rusqlite::types::ValueRef::Integer(i) => i.to_string(),
            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            other => panic!("{other:?}"),
        })
    })
    .unwrap()
}

/// The lowest and highest asset ids of a replica.
fn first_and_last_asset(replica: &rusqlite::Connection) -> (i64, i64) {
    let id = |sql: &str| first(replica, sql).parse().unwrap();
    (
        id("SELECT min(id) FROM assets"),
        id("SELECT max(id) FROM assets"),
    )
}

#[test]
fn edits_reach_postgres_and_conflicts_are_logged_not_lost() {
    let office = Office::new_pg(60);
    let dev = north_device(&office, "tab-pg-2");
    dev.run(&["download", TASK], "").ok();
    let replica = dev.replica();
    let (a1, a2) = first_and_last_asset(&replica);
    let i1 = first(&replica, "SELECT min(id) FROM inspections");
    replica
        .execute_batch(&format!(
            "UPDATE assets SET name = 'device name' WHERE id = {a1};
             UPDATE assets SET name = 'device name 2' WHERE id = {a2};
             UPDATE inspections SET result = 'worn', notes = 'device note' WHERE id = '{i1}';
             INSERT INTO inspections (asset_id, inspector, inspected_at, result)
                 VALUES ({a1}, 'ana', '2026-07-01', 'failed');"
        ))
        .unwrap();
    // The office changes the same rows meanwhile: another column of a1 (no
    // collision), the same column of a2 (field-merge keeps the office's), and it
    // deletes the inspection the device edited.
    let mut main = office.pg();
    main.batch_execute(&format!(
        "UPDATE assets SET x = 99.5 WHERE id = {a1};
         UPDATE assets SET name = 'office name 2' WHERE id = {a2};
         DELETE FROM inspections WHERE id = '{i1}';"
    ))
    .unwrap();
    dev.run(&["sync"], "").ok();

    assert_eq!(
        pg_rows(
            &mut main,
            &format!("SELECT name, x FROM assets WHERE id IN ({a1}, {a2}) ORDER BY id")
        )
        .into_iter()
        .map(|r| r[0].clone())
        .collect::<Vec<_>>(),
        vec!["tdevice name", "toffice name 2"]
    );
    assert_eq!(
        pg_rows(&mut main, &format!("SELECT x FROM assets WHERE id = {a1}")),
        vec![vec!["r99.5"]]
    );
    assert_eq!(
        pg_rows(
            &mut main,
            "SELECT asset_id, inspector, result FROM inspections WHERE inspected_at = '2026-07-01'"
        ),
        vec![vec![format!("i{a1}"), "tana".into(), "tfailed".into()]]
    );
    let conflicts = conflicts(&office);
    let kinds: Vec<(String, String)> = conflicts
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_string(),
                c["resolution"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("update-update".into(), "merged".into())),
        "{conflicts:?}"
    );
    assert!(
        kinds.contains(&("update-delete".into(), "stays-deleted".into())),
        "{conflicts:?}"
    );
    assert_eq!(kinds.len(), 2, "{conflicts:?}");
    // After the sync the device holds the office's state.
    assert_north_slice(&office, &dev);
}

#[test]
fn a_refused_upload_changes_nothing_in_postgres() {
    let office = Office::new_pg(30);
    let dev = north_device(&office, "tab-pg-3");
    dev.run(&["download", TASK], "").ok();
    dev.replica()
        .execute_batch("UPDATE assets SET name = 'never applied' WHERE id = 1;")
        .unwrap();
    let before = pg_rows(&mut office.pg(), NORTH_ASSETS);
    let uploads_before = pg_rows(&mut office.pg(), "SELECT count(*) FROM fieldsync.uploads");
    // (An unassigned task no longer refuses: its edits are logged conflicts. A
    // disabled user still is refused.)
    office.admin(&["user", "disable", "ana"], "").ok();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(pg_rows(&mut office.pg(), NORTH_ASSETS), before);
    assert_eq!(
        pg_rows(&mut office.pg(), "SELECT count(*) FROM fieldsync.uploads"),
        uploads_before
    );
}

/// Every supported type travels down and back; an unsupported one is refused at
/// `table track` naming the column.
#[test]
fn postgres_types_travel_as_documented() {
    let office = Office::new_pg(2);
    let mut main = office.pg();
    main.batch_execute(
        r#"CREATE TABLE kinds (
               id text PRIMARY KEY,
               small smallint, whole integer, big bigint, exact numeric(12,3), single real,
               double double precision, flag boolean, label varchar(20), code char(3),
               day date, at_time time, stamp timestamp, stamptz timestamptz,
               ident uuid, doc json, docb jsonb, raw bytea);
           SET TIME ZONE 'UTC';
           INSERT INTO kinds VALUES ('k1', -3, 42, 9007199254740993, 1234.5, 0.5, 2.25, true,
               'label', 'abc', '2026-11-26', '08:30:00', '2026-11-26 08:30:00', '2026-11-26 08:30:00+00',
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}', '{"b": [1, 2]}', '\x00ff10');
           INSERT INTO kinds (id) VALUES ('k2');
           CREATE TABLE odd (id integer PRIMARY KEY, span interval);"#,
    )
    .unwrap();
    let refused = office.admin(&["table", "track", "odd"], "");
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("`span` (interval)"), "{refused:?}");
    office.admin(&["table", "track", "kinds"], "").ok();
    let toml = "name = \"kinds\"\n[[tables]]\nname = \"kinds\"\nwrite = [\"update\"]\nconflict = \"device-wins\"\n";
    office.apply_task("kinds.toml", toml, "kinds", "ana");
    let dev = office.device("tab-kinds", &["kinds"]);
    dev.login("ana").ok();
    dev.run(&["download", "kinds"], "").ok();
    let replica = dev.replica();
    assert_eq!(
        rows(&replica, "SELECT * FROM kinds WHERE id = 'k1'"),
        vec![vec![
            "tk1",
            "i-3",
            "i42",
            "i9007199254740993",
            "t1234.500",
            "r0.5",
            "r2.25",
            "i1",
            "tlabel",
            "tabc",
            "t2026-11-26",
            "t08:30:00.000000",
            "t2026-11-26T08:30:00.000000Z",
            "t2026-11-26T08:30:00.000000Z",
            "ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "t{\"a\": 1}",
            "t{\"b\": [1, 2]}",
            "b[0, 255, 16]",
        ]]
    );
    assert_eq!(
        rows(&replica, "SELECT * FROM kinds WHERE id = 'k2'")[0][1..],
        vec!["NULL"; 17]
    );
    // Back up: every column written from the device, read again in PostgreSQL.
    replica
        .execute_batch(
            "UPDATE kinds SET small = 7, whole = -1, big = 5, exact = 2.125, single = 1.5, double = -0.25,
                 flag = 0, label = 'changed', code = 'xyz', day = '2027-01-02', at_time = '23:59:58',
                 stamp = '2027-01-02T03:04:05', stamptz = '2027-01-02T03:04:05+02:00',
                 ident = '00000000-0000-0000-0000-000000000001', doc = '[true]', docb = '{\"c\": null}',
                 raw = X'0102' WHERE id = 'k1';
             UPDATE kinds SET whole = 1 WHERE id = 'k2';",
        )
        .unwrap();
    dev.run(&["sync"], "").ok();
    main.batch_execute("SET TIME ZONE 'UTC'").unwrap();
    assert_eq!(
        pg_rows(
            &mut main,
            "SELECT small::int8, whole::int8, big, exact::text, single::float8, double, flag::text, label, code,
                    day::text, at_time::text, stamp::text, stamptz::text, ident::text, doc::text, docb::text, raw
             FROM kinds ORDER BY id"
        ),
        vec![
            vec![
                "i7",
                "i-1",
                "i5",
                "t2.125",
                "r1.5",
                "r-0.25",
                "tfalse",
                "tchanged",
                "txyz",
                "t2027-01-02",
                "t23:59:58",
                "t2027-01-02 03:04:05",
                "t2027-01-02 01:04:05+00",
                "t00000000-0000-0000-0000-000000000001",
                "t[true]",
                "t{\"c\": null}",
                "b[1, 2]",
            ],
            vec![
                "NULL", "i1", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL",
                "NULL", "NULL", "NULL", "NULL", "NULL", "NULL"
            ],
        ]
    );
    // A value the column cannot take refuses the upload, naming the entry.
    replica
        .execute_batch("UPDATE kinds SET whole = 'not a number' WHERE id = 'k2';")
        .ok();
    let journal_has_it = dev.status()["pending_changes"].as_u64().unwrap_or(0) > 0;
    if journal_has_it {
        let run = dev.run(&["send"], "");
        assert_eq!(run.code, 4, "{run:?}");
        assert!(run.stderr.contains("entry 1"), "{run:?}");
        assert_eq!(
            pg_rows(&mut main, "SELECT whole FROM kinds WHERE id = 'k2'"),
            vec![vec!["i1"]]
        );
    }
}

/// How many rounds of the concurrent-writers test run (`FIELDSYNC_PG_ROUNDS`).
fn rounds() -> usize {
    std::env::var("FIELDSYNC_PG_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Four office writers (two with short transactions, two that keep theirs open for
/// hundreds of milliseconds, so they commit after downloads that began later) while
/// two devices sync in a loop. After the writers stop and a last sync, every row a
/// writer committed is on both devices with its last value. Repeated.
#[test]
fn every_committed_row_reaches_the_devices_with_concurrent_writers() {
    let office = Office::new_pg(40);
    let devs = [
        north_device(&office, "tab-cw-1"),
        north_device(&office, "tab-cw-2"),
    ];
    for d in &devs {
        d.run(&["download", TASK], "").ok();
    }
    for round in 0..rounds() {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(Mutex::new(0u64));
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let (stop, committed) = (stop.clone(), committed.clone());
            let mut c = office.pg();
            writers.push(std::thread::spawn(move || {
                let long = w >= 2;
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = 100_000 + (round as i64) * 10_000 + (w as i64) * 1_000 + n as i64;
                    let mut tx = c.transaction().unwrap();
                    tx.execute(
                        "INSERT INTO assets (id, name, category, status, region) VALUES ($1, $2, 'pump', 'active', 'north')",
                        &[&id, &format!("w{w}-{n}")],
                    )
                    .unwrap();
                    // An existing row too: the last committed name must arrive.
                    tx.execute(
                        "UPDATE assets SET name = $1 WHERE id = $2",
                        &[&format!("r{round}-w{w}-{n}"), &(1 + 2 * (w as i64 + 4 * (n as i64 % 3)))],
                    )
                    .unwrap();
                    if long {
                        std::thread::sleep(Duration::from_millis(150 + 100 * (n % 3)));
                    }
                    tx.commit().unwrap();
                    *committed.lock().unwrap() += 1;
                    if !long {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }));
        }
        let until = Instant::now() + Duration::from_millis(1500);
        let mut syncs = 0;
        while Instant::now() < until {
            for d in &devs {
                d.run(&["sync"], "").ok();
                syncs += 1;
            }
        }
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        assert!(
            *committed.lock().unwrap() >= 4,
            "round {round}: writers ran"
        );
        assert!(syncs >= 2, "round {round}: devices synced");
        let expected = pg_rows(&mut office.pg(), NORTH_ASSETS);
        for d in &devs {
            d.run(&["sync"], "").ok();
            assert_eq!(
                rows(&d.replica(), "SELECT * FROM assets ORDER BY id"),
                expected,
                "round {round}: device {} after the last sync",
                d.path().display()
            );
        }
    }
}

#[test]
fn two_servers_on_one_database_behave_as_one() {
    let office = Office::new_pg(60);
    let second = Server::start(&office.db_url);
    let servers = [office.server.url.clone(), second.url.clone()];
    let dev = north_device(&office, "tab-two");
    // Logged in through the first server; every later request alternates.
    let mut turn = 0;
    let mut next = |dev: &DeviceDir| {
        turn += 1;
        dev.use_server(&servers[turn % 2]);
    };
    next(&dev);
    dev.run(&["download", TASK], "").ok();
    assert_north_slice(&office, &dev);
    for i in 0..6 {
        dev.replica()
            .execute(
                "UPDATE assets SET name = ?1 WHERE id = (SELECT min(id) FROM assets)",
                [format!("edit {i}")],
            )
            .unwrap();
        dev.replica()
            .execute(
                "INSERT INTO inspections (asset_id, inspector, inspected_at, result) VALUES (1, 'ana', ?1, 'ok')",
                [format!("2031-08-{:02}", i + 1)],
            )
            .unwrap();
        next(&dev);
        dev.run(&["sync"], "").ok();
    }
    let mut main = office.pg();
    assert_eq!(
        pg_rows(&mut main, "SELECT name FROM assets WHERE id = 1"),
        vec![vec!["tedit 5"]]
    );
    assert_eq!(
        pg_rows(
            &mut main,
            "SELECT count(*)::int8 FROM inspections WHERE inspected_at LIKE '2031-08-%'"
        ),
        vec![vec!["i6"]]
    );
    assert!(conflicts(&office).is_empty());
    // Both servers recorded their sessions in the one database: the download, then
    // each sync's send and download, all ok.
    let sessions: serde_json::Value =
        serde_json::from_str(&office.admin(&["sessions", "--json"], "").ok().stdout).unwrap();
    let ops: Vec<(&str, &str)> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["op"].as_str().unwrap(), s["result"].as_str().unwrap()))
        .collect();
    assert_eq!(ops.len(), 13, "{ops:?}");
    assert!(ops.iter().all(|(_, result)| *result == "ok"), "{ops:?}");
    assert_north_slice(&office, &dev);
}

#[test]
fn admin_on_an_uninitialised_or_unreachable_postgres_fails_clearly() {
    let db = PgDb::new();
    db.client()
        .batch_execute("CREATE TABLE t (id integer PRIMARY KEY)")
        .unwrap();
    let run = fieldsync(&["admin", "table", "track", "t", "--db", &db.url], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("server init"), "{run:?}");
    let no_triggers = pg_rows(
        &mut db.client(),
        "SELECT count(*)::int8 FROM pg_trigger WHERE tgrelid = 't'::regclass",
    );
    assert_eq!(no_triggers, vec![vec!["i0"]], "nothing installed");
    // A server that is not there: the URL (without its password) and the cause.
    let run = fieldsync(
        &[
            "admin",
            "task",
            "list",
            "--db",
            "postgres://someone:secret@127.0.0.1:1/x",
        ],
        "",
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("cannot connect to postgres://someone:***@127.0.0.1:1/x"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("secret"), "{run:?}");
}

/// Inserts travel in multi-row statements; one the database refuses (a constraint of
/// the office's) refuses the whole upload, naming that entry, and nothing is applied.
#[test]
fn a_refused_insert_among_many_names_its_entry_and_applies_nothing() {
    let office = Office::new_pg(30);
    office.execute_batch(
        "ALTER TABLE inspections ADD CONSTRAINT result_known
             CHECK (result IN ('ok', 'worn', 'failed'))",
    );
    let dev = north_device(&office, "tab-batch");
    dev.run(&["download", TASK], "").ok();
    let asset = first(&dev.replica(), "SELECT min(id) FROM assets");
    let app = dev.replica();
    for i in 0..40 {
        let result = if i == 25 { "bogus" } else { "ok" };
        app.execute(
            &format!(
                "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result)
                 VALUES ('batch-{i:02}', {asset}, 'ana', '2026-09-01', '{result}')"
            ),
            [],
        )
        .unwrap();
    }
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("key \"batch-25\""), "{run:?}");
    assert!(run.stderr.contains("result_known"), "{run:?}");
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'batch-%'"),
        "0"
    );
}

/// docs/operations-postgres.md: after a data-only restore the operator runs `admin
/// epoch reset`; the changes devices send against older bases are then compared by
/// value: applied where the office still holds what the device saw, logged where it
/// does not.
#[test]
fn after_an_epoch_reset_pending_changes_are_compared_by_value() {
    let office = Office::new_pg(40);
    let dev = north_device(&office, "tab-restore");
    dev.run(&["download", TASK], "").ok();
    let replica = dev.replica();
    let (a1, a2) = first_and_last_asset(&replica);
    replica
        .execute_batch(&format!(
            "UPDATE assets SET name = 'device 1' WHERE id = {a1};
             UPDATE assets SET name = 'device 2' WHERE id = {a2};"
        ))
        .unwrap();
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'office 2' WHERE id = {a2}"
    ));
    office.admin(&["epoch", "reset"], "").ok();
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {a1}")),
        "device 1"
    );
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {a2}")),
        "office 2"
    );
    let log = conflicts(&office);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["device_values"]["name"], "device 2");
    assert_eq!(log[0]["server_values"]["name"], "office 2");
}

/// Updates too travel in batches; one the database refuses refuses the whole upload,
/// naming that entry, and no update of the batch is applied.
#[test]
fn a_refused_update_among_many_names_its_entry_and_applies_nothing() {
    let office = Office::new_pg(80);
    office.execute_batch(
        "ALTER TABLE inspections ADD CONSTRAINT result_known
             CHECK (result IN ('ok', 'worn', 'failed'))",
    );
    let dev = north_device(&office, "tab-batch-upd");
    dev.run(&["download", TASK], "").ok();
    let replica = dev.replica();
    let ids: Vec<String> = rows(&replica, "SELECT id FROM inspections ORDER BY id")
        .into_iter()
        .map(|r| r[0][1..].to_string())
        .collect();
    assert!(ids.len() >= 10, "{ids:?}");
    let bad = &ids[ids.len() / 2];
    replica
        .execute_batch(&format!(
            "UPDATE inspections SET result = CASE WHEN id = '{bad}' THEN 'bogus' ELSE 'worn' END"
        ))
        .unwrap();
    let before = office.rows("SELECT id, result FROM inspections ORDER BY id");
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains(&format!("key \"{bad}\"")), "{run:?}");
    assert!(run.stderr.contains("result_known"), "{run:?}");
    assert_eq!(
        office.rows("SELECT id, result FROM inspections ORDER BY id"),
        before
    );
}

/// docs/operations-postgres.md: a `pg_dump` of the whole database restored with
/// `pg_restore` into a new database serves the devices: tracking triggers, bases,
/// users and sessions came along; an office write after the restore is tracked and
/// a pending device change goes in.
#[test]
fn a_dump_restored_into_a_new_database_serves_the_devices() {
    let office = Office::new_pg(40);
    let dev = north_device(&office, "tab-dump");
    dev.run(&["download", TASK], "").ok();
    let (asset, _) = first_and_last_asset(&dev.replica());
    dev.replica()
        .execute(
            &format!("UPDATE assets SET name = 'after the restore' WHERE id = {asset}"),
            [],
        )
        .unwrap();
    let dump = office.dir.0.join("main.dump");
    let source = &office.db_url;
    tool(
        "pg_dump",
        &["--format=custom", "--file", dump.to_str().unwrap(), source],
    );
    let restored = PgDb::new();
    tool(
        "pg_restore",
        &["--dbname", &restored.url, dump.to_str().unwrap()],
    );
    let server = Server::start(&restored.url);
    dev.use_server(&server.url);
    // The office writes the restored database; the device's pending edit goes in.
    restored
        .client()
        .batch_execute("UPDATE assets SET category = 'restored office' WHERE region = 'north'")
        .unwrap();
    dev.run(&["sync"], "").ok();
    let mut main = restored.client();
    assert_eq!(
        pg_rows(
            &mut main,
            &format!("SELECT name, category FROM assets WHERE id = {asset}")
        ),
        vec![vec!["tafter the restore", "trestored office"]]
    );
    let replica = dev.replica();
    assert_eq!(
        rows(
            &replica,
            &format!("SELECT category FROM assets WHERE id = {asset}")
        ),
        vec![vec!["trestored office"]]
    );
    // The original database did not get the edit.
    assert_ne!(
        office.value(&format!("SELECT name FROM assets WHERE id = {asset}")),
        "after the restore"
    );
}

/// Runs a PostgreSQL client tool (`pg_dump`, `pg_restore`); it must succeed.
fn tool(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sql` on the main database, then its table tracked and a task of it (`rest`: the
/// task table's TOML after its name) applied and assigned to ana and a new device.
fn own_task(office: &Office, sql: &str, table: &str, rest: &str, device: &str) -> DeviceDir {
    office.pg().batch_execute(sql).unwrap();
    office.admin(&["table", "track", table], "").ok();
    let path = office.dir.0.join(format!("{table}.toml"));
    std::fs::write(
        &path,
        format!("name = \"{table}\"\n[[tables]]\nname = \"{table}\"\n{rest}\n"),
    )
    .unwrap();
    office
        .admin(&["task", "apply", path.to_str().unwrap()], "")
        .ok();
    office
        .admin(&["task", "assign", table, "--user", "ana"], "")
        .ok();
    let dev = office.device(device, &[table]);
    dev.login("ana").ok();
    dev
}

/// The database's default session settings, as `initdb` or an administrator may leave
/// them; every new session starts with them, and the server is restarted so that all
/// of its sessions are new.
fn set_database_defaults(office: &mut Office, settings: &[(&str, &str)]) {
    let mut main = office.pg();
    for (name, value) in settings {
        main.batch_execute(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {name} = %L', current_database(), '{value}'); END $$;"
        ))
        .unwrap();
    }
    office.server = Server::start(&office.db_url);
}

const VISITS: &str = "CREATE TABLE visits (id text PRIMARY KEY, at timestamptz, day date,
        local timestamp, note text);
    INSERT INTO visits VALUES
        ('v1', '2026-11-26 02:30:00+00', '2026-11-26', '2026-11-26 02:30:00', 'a'),
        ('v2', '2026-11-26 23:30:00+00', '2026-11-26', '2026-11-26 23:30:00', 'b'),
        ('v3', '2026-11-25 23:00:00+00', '2026-11-25', '2026-11-25 23:00:00', 'c'),
        ('v4', '2026-11-26 00:00:00.5+00', '2026-11-26', '2026-11-26 00:00:00.5', 'd'),
        ('v5', 'infinity', 'infinity', 'infinity', 'e');";

/// Timestamps travel as fixed-width UTC text whatever the database's `TimeZone` and
/// `DateStyle`: a filter on them selects every row of the slice, and a row the device
/// inserts lands as the instant it names and stays in the slice.
fn times_travel_in_utc(settings: &[(&str, &str)]) {
    let mut office = Office::new_pg(2);
    set_database_defaults(&mut office, settings);
    let dev = own_task(
        &office,
        VISITS,
        "visits",
        "filter = \"at >= '2026-11-26'\"\nwrite = [\"insert\", \"update\"]\nconflict = \"field-merge\"",
        "tab-times",
    );
    dev.run(&["download", "visits"], "").ok();
    let replica = dev.replica();
    let text = |v: &str| format!("t{v}");
    let row = |id: &str, at: &str, day: &str, local: &str, note: &str| {
        vec![text(id), text(at), text(day), text(local), text(note)]
    };
    assert_eq!(
        rows(&replica, "SELECT * FROM visits ORDER BY id"),
        vec![
            row(
                "v1",
                "2026-11-26T02:30:00.000000Z",
                "2026-11-26",
                "2026-11-26T02:30:00.000000Z",
                "a"
            ),
            row(
                "v2",
                "2026-11-26T23:30:00.000000Z",
                "2026-11-26",
                "2026-11-26T23:30:00.000000Z",
                "b"
            ),
            row(
                "v4",
                "2026-11-26T00:00:00.500000Z",
                "2026-11-26",
                "2026-11-26T00:00:00.500000Z",
                "d"
            ),
            row("v5", "infinity", "infinity", "infinity", "e"),
        ]
    );
    // The device's own row, in the fixed-width form and in other RFC 3339 forms.
    replica
        .execute_batch(
            "INSERT INTO visits (id, at, local, note) VALUES
                 ('d1', '2026-11-26T01:00:00.000000Z', '2026-11-26T01:00:00Z', 'mine'),
                 ('d2', '2026-11-27T09:00:00+09:00', '2026-11-27T09:00:00+09:00', 'tokyo');
             UPDATE visits SET at = '2026-11-28T00:00:00.250Z', day = '2026-11-28' WHERE id = 'v2';",
        )
        .unwrap();
    drop(replica);
    dev.run(&["sync"], "").ok();
    let replica = dev.replica();
    assert_eq!(
        rows(
            &replica,
            "SELECT id, at, local FROM visits WHERE id IN ('d1', 'd2', 'v2') ORDER BY id"
        ),
        vec![
            vec![
                text("d1"),
                text("2026-11-26T01:00:00.000000Z"),
                text("2026-11-26T01:00:00.000000Z")
            ],
            vec![
                text("d2"),
                text("2026-11-27T00:00:00.000000Z"),
                text("2026-11-27T00:00:00.000000Z")
            ],
            vec![
                text("v2"),
                text("2026-11-28T00:00:00.250000Z"),
                text("2026-11-26T23:30:00.000000Z")
            ],
        ]
    );
    // Read in another session zone: the instants the device named.
    let mut other = office.pg();
    other
        .batch_execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'German, DMY'")
        .unwrap();
    assert_eq!(
        pg_rows(
            &mut other,
            "SELECT id, (at = '2026-11-26 01:00:00+00')::text, (local = '2026-11-26 01:00:00')::text
             FROM visits WHERE id = 'd1'
             UNION ALL
             SELECT id, (at = '2026-11-27 00:00:00+00')::text, (local = '2026-11-27 00:00:00')::text
             FROM visits WHERE id = 'd2'
             UNION ALL
             SELECT id, (at = '2026-11-28 00:00:00.25+00')::text, (day = make_date(2026, 11, 28))::text
             FROM visits WHERE id = 'v2'
             ORDER BY 1"
        ),
        vec![
            vec!["td1", "ttrue", "ttrue"],
            vec!["td2", "ttrue", "ttrue"],
            vec!["tv2", "ttrue", "ttrue"],
        ]
    );
    assert!(conflicts(&office).is_empty());
}

#[test]
fn times_travel_in_utc_whatever_the_database_time_zone() {
    times_travel_in_utc(&[("TimeZone", "America/New_York")]);
}

#[test]
fn times_travel_in_utc_whatever_the_database_date_style() {
    times_travel_in_utc(&[("TimeZone", "Pacific/Chatham"), ("DateStyle", "SQL, DMY")]);
}

/// `numeric` travels as its exact text, and back; filters compare it as a number.
#[test]
fn numerics_travel_as_exact_text() {
    let office = Office::new_pg(2);
    let dev = own_task(
        &office,
        "CREATE TABLE prices (id text PRIMARY KEY, price numeric(6,2), big numeric(40,10),
             plain numeric, note text);
         INSERT INTO prices VALUES
             ('p1', 5.10, 123456789012345678901234567890.1234567890, 0.10, 'a'),
             ('p2', 0.10, -0.0000000001, 1, 'b'),
             ('p3', 4.99, 1, 2, 'c'),
             ('p4', 5, 0, 12345678901234567890123456789012345678901234567890, 'd'),
             ('p5', 9999.99, NULL, 'NaN', 'e'),
             ('p6', NULL, NULL, NULL, 'f');",
        "prices",
        "filter = \"price >= 5\"\nwrite = [\"insert\", \"update\"]\nconflict = \"field-merge\"",
        "tab-prices",
    );
    dev.run(&["download", "prices"], "").ok();
    let replica = dev.replica();
    let all = "SELECT id, price, big, plain FROM prices ORDER BY id";
    let t = |v: &str| format!("t{v}");
    assert_eq!(
        rows(&replica, all),
        vec![
            vec![
                t("p1"),
                t("5.10"),
                t("123456789012345678901234567890.1234567890"),
                t("0.10")
            ],
            vec![
                t("p4"),
                t("5.00"),
                t("0.0000000000"),
                t("12345678901234567890123456789012345678901234567890")
            ],
            vec![t("p5"), t("9999.99"), "NULL".into(), t("NaN")],
        ]
    );
    // The device writes text, a number and an exponent; the column takes each exactly.
    replica
        .execute_batch(
            "UPDATE prices SET big = '98765432109876543210987654321.0123456789', plain = '1.50',
                 price = '7.5' WHERE id = 'p4';
             UPDATE prices SET plain = 0.25, big = '-1e-10' WHERE id = 'p1';
             INSERT INTO prices (id, price, big, plain) VALUES ('d1', '10', '0.1000000000', '0.10');",
        )
        .unwrap();
    drop(replica);
    dev.run(&["sync"], "").ok();
    let mut main = office.pg();
    main.batch_execute("SET extra_float_digits = -15").unwrap();
    assert_eq!(
        pg_rows(
            &mut main,
            "SELECT id, price::text, big::text, plain::text FROM prices WHERE id IN ('d1', 'p1', 'p4') ORDER BY id"
        ),
        vec![
            vec![t("d1"), t("10.00"), t("0.1000000000"), t("0.10")],
            vec![t("p1"), t("5.10"), t("-0.0000000001"), t("0.25")],
            vec![
                t("p4"),
                t("7.50"),
                t("98765432109876543210987654321.0123456789"),
                t("1.50")
            ],
        ]
    );
    let replica = dev.replica();
    assert_eq!(
        rows(
            &replica,
            "SELECT id, price, big, plain FROM prices WHERE id IN ('d1', 'p4') ORDER BY id"
        ),
        vec![
            vec![t("d1"), t("10.00"), t("0.1000000000"), t("0.10")],
            vec![
                t("p4"),
                t("7.50"),
                t("98765432109876543210987654321.0123456789"),
                t("1.50")
            ],
        ]
    );
    // The device's check compares the number too: 4.99 is outside the slice.
    let refused = replica.execute_batch("INSERT INTO prices (id, price) VALUES ('d2', '4.99')");
    assert!(refused.is_err(), "{refused:?}");
    assert!(conflicts(&office).is_empty());
}

/// A value nobody changed is no conflict: what the device saw compares equal to the
/// row as read now, though the server's sessions changed zone in between.
#[test]
fn unchanged_times_and_numerics_are_no_conflict() {
    let mut office = Office::new_pg(2);
    set_database_defaults(&mut office, &[("TimeZone", "Europe/Berlin")]);
    let dev = own_task(
        &office,
        "CREATE TABLE jobs (id text PRIMARY KEY, due timestamptz, cost numeric(12,2),
             done time, note text);
         INSERT INTO jobs VALUES ('j1', '2026-11-26 08:30:00+00', 0.10, '08:30', 'office');",
        "jobs",
        "write = [\"update\"]\nconflict = \"field-merge\"",
        "tab-jobs",
    );
    dev.run(&["download", "jobs"], "").ok();
    // The administrator moves the database to another zone; the server restarts.
    set_database_defaults(&mut office, &[("TimeZone", "America/Los_Angeles")]);
    dev.use_server(&office.server.url);
    office
        .pg()
        .batch_execute("UPDATE jobs SET note = 'office changed'")
        .unwrap();
    dev.replica()
        .execute_batch(
            "UPDATE jobs SET due = '2026-11-27T08:30:00.000000Z', cost = '0.20',
                 done = '09:00:00.000000' WHERE id = 'j1'",
        )
        .unwrap();
    dev.run(&["sync"], "").ok();
    assert_eq!(conflicts(&office), Vec::<serde_json::Value>::new());
    assert_eq!(
        pg_rows(
            &mut office.pg(),
            "SELECT (due = '2026-11-27 08:30:00+00')::text, cost::text, done::text, note FROM jobs"
        ),
        vec![vec!["ttrue", "t0.20", "t09:00:00", "toffice changed"]]
    );
}

/// A device's own values written in another form than the canonical one (a time
/// without fraction or with an offset, a numeric with fewer decimals) compare equal to
/// the row as the main database holds them: no conflict when the device edits them
/// again after the office changed another column.
#[test]
fn a_devices_own_values_in_another_form_are_no_conflict() {
    let office = Office::new_pg(2);
    let dev = own_task(
        &office,
        "CREATE TABLE jobs (id text PRIMARY KEY, due timestamptz, cost numeric(12,2), note text);",
        "jobs",
        "filter = \"due >= '2026'\"\nwrite = [\"insert\", \"update\"]\nconflict = \"field-merge\"",
        "tab-own-forms",
    );
    dev.run(&["download", "jobs"], "").ok();
    dev.replica()
        .execute_batch(
            "INSERT INTO jobs (id, due, cost, note) VALUES
                 ('j1', '2026-11-26T09:30:00+01:00', '0.2', 'device'),
                 ('j2', '2026-11-26T08:30:00Z', 7, 'device');",
        )
        .unwrap();
    // Sent, not downloaded: the replica keeps the device's forms.
    dev.run(&["send"], "").ok();
    office
        .pg()
        .batch_execute("UPDATE jobs SET note = 'office changed'")
        .unwrap();
    dev.replica()
        .execute_batch("UPDATE jobs SET due = '2026-11-27T08:30:00Z', cost = '0.30';")
        .unwrap();
    dev.run(&["sync"], "").ok();
    assert_eq!(conflicts(&office), Vec::<serde_json::Value>::new());
    assert_eq!(
        pg_rows(
            &mut office.pg(),
            "SELECT id, (due = '2026-11-27 08:30:00+00')::text, cost::text, note FROM jobs ORDER BY id"
        ),
        vec![
            vec!["tj1", "ttrue", "t0.30", "toffice changed"],
            vec!["tj2", "ttrue", "t0.30", "toffice changed"],
        ]
    );
    assert_eq!(
        rows(&dev.replica(), "SELECT id, due, cost FROM jobs ORDER BY id"),
        vec![
            vec!["tj1", "t2026-11-27T08:30:00.000000Z", "t0.30"],
            vec!["tj2", "t2026-11-27T08:30:00.000000Z", "t0.30"],
        ]
    );
}

/// A time as the primary key: the key the device gets (the canonical text) names the
/// row the office's triggers recorded, whatever the office session's `TimeZone` and
/// `DateStyle`, so the device's updates land.
#[test]
fn time_keys_name_their_rows_whatever_the_office_session() {
    let mut office = Office::new_pg(2);
    set_database_defaults(
        &mut office,
        &[("TimeZone", "America/New_York"), ("DateStyle", "SQL, DMY")],
    );
    office
        .pg()
        .batch_execute(
            "CREATE TABLE slots (at timestamptz PRIMARY KEY, note text);
             CREATE TABLE days (day date PRIMARY KEY, note text);",
        )
        .unwrap();
    office.admin(&["table", "track", "days"], "").ok();
    let dev = own_task(
        &office,
        "SELECT 1",
        "slots",
        "write = [\"update\"]\n[[tables]]\nname = \"days\"\nwrite = [\"update\"]",
        "tab-keys",
    );
    // Written by the office after tracking: its triggers record the keys.
    office
        .pg()
        .batch_execute(
            "INSERT INTO slots VALUES ('2026-11-26 08:30:00+00', 'office');
             INSERT INTO days VALUES ('2026-11-26', 'office');",
        )
        .unwrap();
    dev.run(&["download", "slots"], "").ok();
    let replica = dev.replica();
    assert_eq!(
        rows(&replica, "SELECT * FROM slots"),
        vec![vec!["t2026-11-26T08:30:00.000000Z", "toffice"]]
    );
    replica
        .execute_batch("UPDATE slots SET note = 'device'; UPDATE days SET note = 'device';")
        .unwrap();
    drop(replica);
    dev.run(&["sync"], "").ok();
    assert_eq!(
        pg_rows(
            &mut office.pg(),
            "SELECT note FROM slots UNION ALL SELECT note FROM days"
        ),
        vec![vec!["tdevice"], vec!["tdevice"]]
    );
}

/// Bases are never confused across databases: base ids come back with a `pg_dump`
/// restore, and the restored database hands the same ids out again, for newer
/// snapshots. A device's base from before the restore must not be matched to such a
/// snapshot, whether the dump went into a new database or back into the same one.
#[test]
fn a_base_from_before_a_restore_is_never_matched_to_a_newer_snapshot() {
    base_from_before_a_restore(false);
}

/// The same, restored in place (`pg_restore --clean` into the database the dump came
/// from: same OID, same stored epoch id).
#[test]
fn a_base_from_before_a_restore_in_place_is_never_matched_to_a_newer_snapshot() {
    base_from_before_a_restore(true);
}

fn base_from_before_a_restore(in_place: bool) {
    let office = Office::new_pg(40);
    // Paired and logged in before the backup (the restore knows the device).
    let dev = north_device(&office, "tab-a");
    let dump = office.dir.0.join("before.dump");
    tool(
        "pg_dump",
        &[
            "--format=custom",
            "--file",
            dump.to_str().unwrap(),
            &office.db_url,
        ],
    );
    // After the dump: the device downloads (a base the restore will not have).
    dev.run(&["download", TASK], "").ok();
    let (asset, _) = first_and_last_asset(&dev.replica());
    let new_db;
    let (url, mut main) = if in_place {
        tool(
            "pg_restore",
            &[
                "--clean",
                "--if-exists",
                "--dbname",
                &office.db_url,
                dump.to_str().unwrap(),
            ],
        );
        let client = office.pg.as_ref().unwrap().client();
        (office.db_url.clone(), client)
    } else {
        new_db = PgDb::new();
        tool(
            "pg_restore",
            &["--dbname", &new_db.url, dump.to_str().unwrap()],
        );
        (new_db.url.clone(), new_db.client())
    };
    let server = Server::start(&url);
    // In the restored database the office changes the row, then another download
    // takes the next base id: the same id the device holds, for a newer snapshot.
    main.batch_execute(&format!(
        "UPDATE assets SET name = 'office after the restore' WHERE id = {asset}"
    ))
    .unwrap();
    let other = DeviceDir {
        dir: TempDir::new("tab-b"),
    };
    let code = fieldsync(&["admin", "device", "add", "tab-b", "--db", &url], "")
        .ok()
        .stdout
        .trim()
        .to_string();
    fieldsync(
        &[
            "admin", "task", "assign", TASK, "--device", "tab-b", "--db", &url,
        ],
        "",
    )
    .ok();
    other
        .run(
            &[
                "pair",
                "--server",
                &server.url,
                "--device-id",
                "tab-b",
                "--code",
                &code,
            ],
            "",
        )
        .ok();
    other.login("ana").ok();
    other.run(&["download", TASK], "").ok();
    dev.use_server(&server.url);
    dev.replica()
        .execute(
            &format!("UPDATE assets SET name = 'device' WHERE id = {asset}"),
            [],
        )
        .unwrap();
    dev.run(&["send"], "").ok();
    assert_eq!(
        pg_rows(
            &mut main,
            &format!("SELECT name FROM assets WHERE id = {asset}")
        ),
        vec![vec!["toffice after the restore"]],
        "the office's change is kept (field-merge: the colliding value)"
    );
    let logged = pg_rows(
        &mut main,
        "SELECT device_values, server_values FROM fieldsync.conflicts",
    );
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0][0].contains("device"), "{logged:?}");
}

/// Refusals of the main database say why: a key out of its column's range is a
/// refusal naming the entry (it was a server error), and a constraint the office
/// set names the constraint (not "current transaction is aborted").
#[test]
fn refused_writes_on_postgres_name_their_cause() {
    let office = Office::new_pg(5);
    let dev = own_task(
        &office,
        "CREATE TABLE gauges (id integer PRIMARY KEY, reading integer NOT NULL CONSTRAINT reading_positive CHECK (reading > 0));
         INSERT INTO gauges VALUES (1, 10), (2, 20);",
        "gauges",
        "write = [\"update\"]",
        "tab1",
    );
    dev.run(&["download", "gauges"], "").ok();
    // A key beyond `integer`'s range, in a hand-edited journal.
    let base: i64 = dev
        .replica()
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM fieldsync_replica WHERE key = 'cursor'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    dev.replica()
        .execute(
            &format!(
                "INSERT INTO fieldsync_journal (tbl, pk, op, old, new, base_version, user, at)
                 VALUES ('gauges', 3000000000, 'update', '{{\"reading\":1}}', '{{\"reading\":2}}', {base}, 'ana', '2026-12-02T10:00:00.000Z')"
            ),
            [],
        )
        .unwrap();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("key 3000000000"), "{run:?}");
    dev.run(&["journal", "discard", "--all"], "").ok();
    // A value the office's CHECK constraint refuses, with other entries around it.
    let app = dev.replica();
    app.execute("UPDATE gauges SET reading = 11 WHERE id = 1", [])
        .unwrap();
    app.execute("UPDATE gauges SET reading = -5 WHERE id = 2", [])
        .unwrap();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("reading_positive")
            && !run.stderr.contains("current transaction is aborted"),
        "{run:?}"
    );
    assert_eq!(
        pg_rows(&mut office.pg(), "SELECT reading FROM gauges ORDER BY id"),
        vec![vec!["i10"], vec!["i20"]],
        "nothing of the upload applied"
    );
}

/// A time written with an offset compares as text in the replica's check and as an
/// instant on the server: the device accepts an insert the server judges outside
/// the slice. That row is logged (`outside-slice`), not applied, and the rest of the
/// upload goes through instead of the whole upload being refused (found by
/// `pg_values.rs`).
#[test]
fn an_insert_the_device_judged_inside_and_the_server_outside_is_logged_not_a_refusal() {
    let office = Office::new_pg(5);
    let dev = own_task(
        &office,
        "CREATE TABLE visits (id text PRIMARY KEY, due timestamptz NOT NULL);
         INSERT INTO visits VALUES ('v0', '2026-03-01T00:00:00Z');",
        "visits",
        "filter = \"due >= '2026-01-01T00:00:00.000000Z'\"\nwrite = [\"insert\"]",
        "tab1",
    );
    dev.run(&["download", "visits"], "").ok();
    let app = dev.replica();
    // 04:00 at +05:30 is 22:30 the day before: outside, though its text sorts after.
    app.execute(
        "INSERT INTO visits (id, due) VALUES ('early', '2026-01-01T04:00:00+05:30')",
        [],
    )
    .unwrap();
    app.execute(
        "INSERT INTO visits (id, due) VALUES ('inside', '2026-02-01T00:00:00.000000Z')",
        [],
    )
    .unwrap();
    let run = dev.run(&["send"], "");
    assert_eq!(run.code, 0, "{run:?}");
    let mut main = office.pg();
    assert_eq!(
        pg_rows(&mut main, "SELECT id FROM visits ORDER BY id"),
        vec![vec!["tinside"], vec!["tv0"]]
    );
    let logged = pg_rows(
        &mut main,
        "SELECT kind, resolution, key FROM fieldsync.conflicts",
    );
    assert_eq!(
        logged,
        vec![vec!["toutside-slice", "tnot-applied", "t\"early\""]]
    );
}
