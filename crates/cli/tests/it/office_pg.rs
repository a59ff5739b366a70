//! What the office does to tracked tables of a PostgreSQL main database: rebuilds
//! (create, copy, drop, rename) and renames. Tracking is judged by the triggers on
//! the table itself, not by fieldsync's bookkeeping.

use crate::harness::*;

/// A rebuild ends tracking: uploads and downloads refuse the table, naming the fix,
/// until `table track` repairs it; an office edit made while nothing tracked the
/// table then meets the device's edit of the same row as a logged conflict, and rows
/// inserted meanwhile can be edited by devices.
#[test]
fn a_rebuilt_table_is_refused_until_tracked_again_and_no_change_is_lost() {
    let office = Office::new_pg(10);
    let dev = office.device("tab1", &["north-inspections"]);
    dev.login("ana").ok();
    dev.run(&["download", "north-inspections"], "").ok();
    let id: i64 = dev
        .replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap();
    office.execute_batch(
        "BEGIN;
         CREATE TABLE assets_new (id bigint PRIMARY KEY, name text NOT NULL, category text NOT NULL,
             status text NOT NULL, region text NOT NULL, x double precision, y double precision,
             installed text, notes text, owner text);
         INSERT INTO assets_new (id, name, category, status, region, x, y, installed, notes)
             SELECT id, name, category, status, region, x, y, installed, notes FROM assets;
         DROP TABLE assets CASCADE;
         ALTER TABLE assets_new RENAME TO assets;
         COMMIT;",
    );
    // The office edits a row and adds one while nothing tracks the table.
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'office after rebuild' WHERE id = {id};
         INSERT INTO assets (id, name, category, status, region)
             VALUES (900001, 'added after rebuild', 'pump', 'active', 'north');"
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
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("fieldsync admin table track assets"),
        "{run:?}"
    );
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
        "office after rebuild"
    );
    let run = office.admin(&["table", "track", "assets"], "");
    assert_eq!(run.code, 0, "{run:?}");
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value(&format!("SELECT name FROM assets WHERE id = {id}")),
        "office after rebuild",
        "the office's change is not overwritten"
    );
    let logged = conflicts(&office);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["device_values"]["name"], "device");
    // Tracked again: the row added meanwhile downloads and the device's edit of it
    // is integrated, not refused as never in the slice.
    dev.run(&["download", "north-inspections"], "").ok();
    dev.replica()
        .execute(
            "UPDATE assets SET name = 'device edit' WHERE id = 900001",
            [],
        )
        .unwrap();
    dev.run(&["send"], "").ok();
    assert_eq!(
        office.value("SELECT name FROM assets WHERE id = 900001"),
        "device edit"
    );
    // A second `table track` finds the tracking intact and changes nothing.
    let before = office.rows("SELECT pk, xid::text FROM fieldsync.rows ORDER BY tbl, pk");
    office.admin(&["table", "track", "assets"], "").ok();
    assert_eq!(
        office.rows("SELECT pk, xid::text FROM fieldsync.rows ORDER BY tbl, pk"),
        before
    );
}

/// A renamed table keeps its triggers, which record under the old name: it is not
/// tracked under the new name until `table track NEW`, which replaces them (the
/// same-named triggers no longer block it).
#[test]
fn a_renamed_table_is_tracked_under_its_new_name_only() {
    let office = Office::new_pg(10);
    office.execute_batch("ALTER TABLE work_orders RENAME TO jobs");
    let run = office.admin(&["table", "track", "jobs"], "");
    assert_eq!(run.code, 0, "{run:?}");
    let function =
        office.value("SELECT 'fieldsync.track_' || left(encode(sha256('jobs'), 'hex'), 24)");
    let triggers: Vec<Vec<String>> = office
        .rows(
            "SELECT tgname::text, tgfoid::regproc::text FROM pg_trigger
             WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal ORDER BY tgname",
        )
        .into_iter()
        .map(|r| r.iter().map(|c| c[1..].to_string()).collect())
        .collect();
    let expected: Vec<Vec<String>> = [
        "fieldsync_del",
        "fieldsync_ins",
        "fieldsync_truncate",
        "fieldsync_upd",
    ]
    .iter()
    .map(|t| vec![t.to_string(), function.clone()])
    .collect();
    assert_eq!(
        triggers, expected,
        "the four triggers, calling the function of `jobs`"
    );
    assert_eq!(
        office.value(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'fieldsync'::regnamespace
               AND proname = 'track_' || left(encode(sha256('work_orders'), 'hex'), 24)"
        ),
        "0",
        "the function of the old name is gone"
    );
    assert_eq!(
        office.rows("SELECT name FROM fieldsync.tracked ORDER BY name"),
        office.rows("SELECT unnest(ARRAY['assets', 'inspections', 'jobs']) ORDER BY 1"),
        "the bookkeeping names the table by its new name"
    );
    let key = office.value("SELECT id FROM jobs ORDER BY id LIMIT 1");
    let mut c = office.pg();
    let mut tx = c.transaction().unwrap();
    tx.execute("UPDATE jobs SET title = 'renamed' WHERE id = $1", &[&key])
        .unwrap();
    let xid: String = tx
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    let recorded = office.rows(&format!(
        "SELECT tbl FROM fieldsync.rows WHERE pk = '{key}' AND xid::text = '{xid}'"
    ));
    assert_eq!(
        recorded,
        office.rows("SELECT 'jobs'"),
        "recorded under `jobs` only"
    );
}
